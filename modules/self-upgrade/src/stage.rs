//! Staging and verifying a release: download, SHA-256 pin, release signature, install,
//! and the new binary's `version --json` and `self-test`.

use std::path::Path;
use std::time::Duration;

use fleet_module_api::{AgentSelf, Context};

use crate::request::signature_of;
use crate::{fetch, layout, Error, Layout, Phase, Request, SelfUpgrade};

impl SelfUpgrade {
    pub(crate) async fn stage_and_verify(
        &self,
        ctx: &Context,
        layout: &Layout,
        req: &Request,
    ) -> Result<(), Error> {
        let v = req.version.as_str();
        self.set(
            ctx,
            Phase::Staging,
            Some(v),
            format!("downloading {}", req.artifact),
        );
        let loc = fetch::Location::parse(&req.artifact)?;
        layout.clean_staging(Some(v));
        let staging = layout.staging_dir(v);
        std::fs::create_dir_all(&staging).map_err(Error::io(&staging))?;
        let part = staging.join(layout::BINARY);
        let agent = ctx.ext.get::<dyn AgentSelf>();
        let size = fetch::fetch(&loc, &part, self.cfg.max_artifact_bytes, agent.as_deref()).await?;
        let digest = {
            let part = part.clone();
            tokio::task::spawn_blocking(move || fetch::sha256_file(&part))
                .await
                .map_err(|e| Error::Download(format!("hash task: {e}")))??
        };
        if digest != req.sha256 {
            // Not resumable: start from scratch next time.
            let _ = std::fs::remove_dir_all(&staging);
            return Err(Error::Refused(format!(
                "sha256 mismatch: artifact has {digest}, the request pins {}",
                req.sha256
            )));
        }
        // The signature covers version + digest; checked again right before install.
        let key = self
            .cfg
            .release_keys
            .iter()
            .find(|k| k.name == req.key)
            .ok_or_else(|| Error::Refused(format!("unknown release key {:?}", req.key)))?;
        let pk = fleet_contract::decode_public_key(&key.public_key)
            .map_err(|e| Error::Refused(format!("release key {:?}: {e}", key.name)))?;
        signature_of(req)
            .verify(&pk)
            .map_err(|e| Error::Refused(e.to_string()))?;
        let bin = layout.install(v)?;
        tracing::info!(version = v, bytes = size, "release verified and installed");
        self.set(
            ctx,
            Phase::Verifying,
            Some(v),
            "running the new version's self-test",
        );
        let timeout = Duration::from_secs(self.cfg.self_test_timeout_secs);
        verify_binary(&bin, v, &self.cfg.config_path, timeout).await
    }
}

/// The new binary must report version `v` (`version --json`) and pass
/// `--config <config> self-test`, each within `timeout`. The self-upgrade's Verifying phase
/// and the package's cutover (`fleet-agent package-cutover`) both run it.
pub async fn verify_binary(
    bin: &Path,
    v: &str,
    config: &Path,
    timeout: Duration,
) -> Result<(), Error> {
    let out = run_with_timeout(bin, &["version", "--json"], timeout).await?;
    let reported = serde_json::from_slice::<serde_json::Value>(&out.1)
        .ok()
        .and_then(|j| j["version"].as_str().map(ToOwned::to_owned));
    if reported.as_deref() != Some(v) {
        return Err(Error::SelfTest {
            version: v.into(),
            detail: format!("the binary reports version {reported:?}, not {v:?}"),
        });
    }
    let cfg = config.to_string_lossy().into_owned();
    let (ok, stdout) = run_with_timeout(bin, &["--config", &cfg, "self-test"], timeout).await?;
    if !ok {
        let text = String::from_utf8_lossy(&stdout);
        let failed: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
        return Err(Error::SelfTest {
            version: v.into(),
            detail: if failed.is_empty() {
                tail(&text)
            } else {
                failed.join("; ")
            },
        });
    }
    Ok(())
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("; ")
}

/// Runs `bin args`, killing it at `timeout`; returns (success, stdout).
async fn run_with_timeout(
    bin: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<(bool, Vec<u8>), Error> {
    let child = tokio::process::Command::new(bin)
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(Error::io(bin))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok((out.status.success(), out.stdout)),
        Ok(Err(e)) => Err(Error::io(bin)(e)),
        Err(_) => Err(Error::SelfTest {
            version: bin.display().to_string(),
            detail: format!(
                "{} {} did not finish within {} s",
                bin.display(),
                args.join(" "),
                timeout.as_secs()
            ),
        }),
    }
}

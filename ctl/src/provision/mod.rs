//! `fleetctl provision`: install fleet-agent on a device (or a fleet) over SSH, write its
//! config, enable the service and wait for its first heartbeat.
//!
//! One device runs: probe (one SSH round trip, reads only) → rules (root or sudo, Debian 12+
//! / glibc 2.34+, a package for the architecture) → plan (compare the package version and
//! the files' sha256 with what the probe saw) → apply only what differs → heartbeat. Every
//! failure before "apply" leaves the device untouched. File contents travel on ssh's stdin,
//! never in an argv on the device.

mod fleet;
mod plan;
mod ssh;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;

use fleet_contract::release::sha256_hex;

use crate::transport::Transport;
use crate::{now, Conn};
use plan::{ConfigInputs, HostLine, Plane, Probe, Target, TrustedKey, CREDS_DIR};
use ssh::{shell_quote, Ssh};

/// Arguments of `fleetctl provision`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    fleetctl provision --set control.plane=nats --set 'control.nats.servers=[\"nats://10.0.0.1:4222\"]' pi@10.0.0.7\n  \
    fleetctl provision --dry-run --config site.toml root@pi-7.lan:2222\n  \
    fleetctl provision --hosts fleet.txt --parallel 8 --config site.toml --json\n\n\
    A hosts file has one `user@host[:port] [key=value]...` per line (`#` comments); the\n\
    key=value words override --set for that host, e.g. `pi@10.0.0.7 device_id=pi-7`.\n\
    The host key must already be in known_hosts (StrictHostKeyChecking=yes, BatchMode=yes).\n\
    Exit codes: 0 every host provisioned (or planned), 1 a host failed, 2 usage.")]
pub(crate) struct ProvisionArgs {
    /// The device as user@host[:port] (user root, or one with passwordless sudo).
    #[arg(required_unless_present = "hosts", conflicts_with = "hosts")]
    target: Option<String>,
    /// Fleet mode: a file of user@host[:port] lines, each with optional key=value overrides.
    #[arg(long, value_name = "FILE")]
    hosts: Option<PathBuf>,
    /// Fleet mode: hosts provisioned at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    parallel: u16,
    /// Base config (TOML, as /etc/fleet-agent/config.toml); --set values go on top.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A config value as a dotted TOML key, e.g. device_id=pi-7, control.plane=nats,
    /// control.nats.servers=["nats://10.0.0.1:4222"]. Values that are not TOML are strings.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Credentials file (NATS .creds or MQTT password file), installed as
    /// /etc/fleet-agent/creds/<name> (0600) and named in the config for the plane.
    #[arg(long, value_name = "FILE")]
    credentials: Option<PathBuf>,
    /// An operator public key file (as `fleetctl keygen` prints) for [[trust.operators]],
    /// named after the file; role admin unless `:viewer` or `:operator` follows.
    #[arg(long = "trusted-key", value_name = "FILE[:ROLE]")]
    trusted_keys: Vec<String>,
    /// Directory holding fleet-agent_<version>_<arch>.deb (from packaging/build).
    #[arg(long, value_name = "DIR", default_value = "target/packages")]
    deb_dir: PathBuf,
    /// An ssh option passed as `-o OPT` (e.g. IdentityFile=~/.ssh/fleet); repeatable.
    #[arg(long = "ssh-option", value_name = "OPT")]
    ssh_options: Vec<String>,
    /// known_hosts file to check host keys against instead of the user's.
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// Probe and print the plan; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the result as JSON (an array in fleet mode).
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the first heartbeat.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// What every host's run shares.
pub(crate) struct Shared {
    args: ProvisionArgs,
    conn_nats: Option<String>,
    conn_mqtt: Option<String>,
    base: Option<toml::Table>,
    credentials: Option<(String, Vec<u8>)>,
    trusted: Vec<TrustedKey>,
    deb_names: Vec<String>,
    /// Unix time the run started; a heartbeat must be at least this new.
    started: u64,
}

/// One host's outcome (a row of the summary, an element of `--json`).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct HostResult {
    pub host: String,
    pub arch: Option<String>,
    pub device: Option<String>,
    /// `changed`, `no change`, `planned` (dry run) or `failed`.
    pub result: &'static str,
    pub changes: Vec<String>,
    pub error: Option<String>,
    pub heartbeat: Option<serde_json::Value>,
    pub seconds: f64,
}

/// `fleetctl provision`.
pub(crate) async fn provision(conn: &Conn, args: ProvisionArgs) -> Result<ExitCode> {
    let shared = Shared::load(conn, args)?;
    let lines = match (&shared.args.hosts, &shared.args.target) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("--hosts {}", file.display()))?;
            plan::parse_hosts(&file.display().to_string(), &text)?
        }
        (None, Some(t)) => vec![HostLine {
            target: Target::parse(t)?,
            sets: Vec::new(),
        }],
        (None, None) => bail!("give user@host[:port] or --hosts FILE"),
    };
    let fleet_mode = shared.args.hosts.is_some();
    let results = fleet::run_all(&shared, lines).await;
    if shared.args.json {
        if fleet_mode {
            println!("{}", serde_json::to_string_pretty(&results)?);
        } else if let Some(r) = results.first() {
            println!("{}", serde_json::to_string_pretty(r)?);
        }
    } else if fleet_mode {
        print!("{}", fleet::summary_table(&results));
    } else if let Some(r) = results.first() {
        print_one(r);
    }
    let failed = results.iter().any(|r| r.result == "failed");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_one(r: &HostResult) {
    match r.result {
        "failed" => eprintln!("fleetctl: {}", r.error.as_deref().unwrap_or("failed")),
        "planned" => {
            println!("{}: plan (dry run; nothing was changed):", r.host);
            if r.changes.is_empty() {
                println!("  no change");
            }
            for c in &r.changes {
                println!("  - {c}");
            }
        }
        _ => {
            let what = if r.changes.is_empty() {
                "no change".to_owned()
            } else {
                r.changes.join("; ")
            };
            println!(
                "{}: {what}; heartbeat: {}",
                r.host,
                r.heartbeat.as_ref().map_or("-".into(), heartbeat_line)
            );
        }
    }
}

/// One line from a heartbeat (a `fleet-agent status --json` or a plane's info document).
pub(crate) fn heartbeat_line(v: &serde_json::Value) -> String {
    let device = v["device"].as_str().unwrap_or("?");
    let version = v["version"].as_str().unwrap_or("?");
    let plane = v["control_plane"].as_str().unwrap_or("?");
    let modules = v["modules"].as_array().map_or(0, Vec::len);
    format!("device {device} fleet-agent {version} running, plane {plane}, {modules} module(s)")
}

impl Shared {
    fn load(conn: &Conn, args: ProvisionArgs) -> Result<Self> {
        let base = args
            .config
            .as_ref()
            .map(|p| -> Result<toml::Table> {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("--config {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("--config {}", p.display()))
            })
            .transpose()?;
        // Check the --set words once, before any host is touched.
        plan::apply_sets(&mut toml::Table::new(), &args.sets)?;
        let credentials = args
            .credentials
            .as_ref()
            .map(|p| -> Result<(String, Vec<u8>)> {
                let name = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .filter(|n| !n.starts_with('.') && !n.contains(['\'', '/']))
                    .ok_or_else(|| anyhow!("--credentials {}: unusable file name", p.display()))?;
                let bytes =
                    std::fs::read(p).with_context(|| format!("--credentials {}", p.display()))?;
                Ok((name.to_owned(), bytes))
            })
            .transpose()?;
        let trusted = args
            .trusted_keys
            .iter()
            .map(|s| {
                TrustedKey::parse(s, |p| {
                    std::fs::read_to_string(p)
                        .with_context(|| format!("--trusted-key {}", p.display()))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let deb_names = match std::fs::read_dir(&args.deb_dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
            Err(e) => bail!(
                "--deb-dir {}: {e} (build the packages with `packaging/build`)",
                args.deb_dir.display()
            ),
        };
        Ok(Shared {
            conn_nats: conn.nats.clone(),
            conn_mqtt: conn.mqtt.clone(),
            args,
            base,
            credentials,
            trusted,
            deb_names,
            started: now(),
        })
    }

    fn ssh(&self, target: &Target) -> Ssh {
        Ssh {
            target: target.clone(),
            options: self.args.ssh_options.clone(),
            known_hosts: self.args.known_hosts.clone(),
        }
    }
}

/// Reports a host's progress (the fleet's live lines).
pub(crate) trait Report {
    fn state(&self, state: &str);
}

/// Provisions one host; never returns an error, the result says.
pub(crate) async fn provision_one(
    shared: &Shared,
    line: HostLine,
    report: &dyn Report,
) -> HostResult {
    let t0 = Instant::now();
    let mut r = HostResult {
        host: line.target.to_string(),
        arch: None,
        device: None,
        result: "failed",
        changes: Vec::new(),
        error: None,
        heartbeat: None,
        seconds: 0.0,
    };
    match run_host(shared, &line, report, &mut r).await {
        Ok(result) => {
            r.result = result;
            report.state(result);
        }
        Err(e) => {
            let msg = format!("{e:#}");
            let host = r.host.clone();
            let msg = if msg.starts_with(&host) {
                msg
            } else {
                format!("{host}: {msg}")
            };
            report.state(&format!("failed: {msg}"));
            r.error = Some(msg);
        }
    }
    r.seconds = (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    r
}

async fn run_host(
    shared: &Shared,
    line: &HostLine,
    report: &dyn Report,
    r: &mut HostResult,
) -> Result<&'static str> {
    let ssh = shared.ssh(&line.target);
    report.state("probing");
    let creds_name = shared.credentials.as_ref().map(|(n, _)| n.as_str());
    let out = ssh
        .run("probe", &plan::probe_script(creds_name), b"")
        .await?;
    let probe = Probe::parse(&out.stdout);
    probe.check()?;
    r.arch = Some(probe.arch.clone());
    let deb = plan::choose_deb(&shared.args.deb_dir, &shared.deb_names, &probe.arch)?;

    let mut sets = shared.args.sets.clone();
    sets.extend(line.sets.iter().cloned());
    let inputs = ConfigInputs {
        base: shared.base.clone(),
        sets,
        credentials: creds_name.map(str::to_owned),
        trusted: shared.trusted.clone(),
    };
    let plan::Rendered {
        text: config,
        plane,
        device,
    } = plan::render_config(&inputs, &probe.hostname)?;
    r.device = Some(device.clone());
    let creds_sha = shared.credentials.as_ref().map(|(_, b)| sha256_hex(b));
    let changes = plan::decide(
        &probe,
        &deb,
        &sha256_hex(config.as_bytes()),
        creds_sha.as_deref(),
    );
    r.changes = changes.lines(&deb);
    if shared.args.dry_run {
        return Ok("planned");
    }

    let sudo = probe.needs_sudo();
    if let (true, Some((name, bytes))) = (changes.write_credentials, &shared.credentials) {
        report.state("writing credentials");
        let script = plan::write_file_script(CREDS_DIR, name, "0600", "077");
        ssh.run("writing credentials", &privileged(&script, sudo), bytes)
            .await?;
    }
    if changes.write_config {
        report.state("writing config");
        let script = plan::write_file_script("/etc/fleet-agent", "config.toml", "0640", "027");
        ssh.run(
            "writing config",
            &privileged(&script, sudo),
            config.as_bytes(),
        )
        .await?;
    }
    if let Some(v) = &changes.install {
        report.state(&format!("installing fleet-agent {v}"));
        let bytes = tokio::fs::read(&deb.path)
            .await
            .with_context(|| format!("reading {}", deb.path.display()))?;
        let script = plan::INSTALL_SCRIPT;
        ssh.run("dpkg -i", &privileged(script, sudo), &bytes)
            .await?;
    }
    if changes.restart {
        report.state("restarting");
        ssh.run(
            "systemctl restart",
            &privileged("systemctl restart fleet-agent.service", sudo),
            b"",
        )
        .await?;
    }
    if changes.enable || (changes.install.is_some() && probe.has_systemd) {
        report.state("enabling");
        ssh.run(
            "systemctl enable --now",
            &privileged("systemctl enable --now fleet-agent.service", sudo),
            b"",
        )
        .await?;
    }

    report.state("waiting for heartbeat");
    r.heartbeat = Some(wait_heartbeat(shared, &ssh, sudo, &plane, &device).await?);
    Ok(if changes.none() {
        "no change"
    } else {
        "changed"
    })
}

/// `script` as root: through `sudo -n sh -c` when the login user is not root.
fn privileged(script: &str, sudo: bool) -> String {
    if sudo {
        format!("sudo -n sh -c {}", shell_quote(script))
    } else {
        script.to_owned()
    }
}

/// Waits until the device reports a running agent: `fleet-agent status --json` over SSH on
/// the local plane, the device's info document (newer than the run's start) on NATS/MQTT.
async fn wait_heartbeat(
    shared: &Shared,
    ssh: &Ssh,
    sudo: bool,
    plane: &Plane,
    device: &str,
) -> Result<serde_json::Value> {
    let limit = Duration::from_secs(shared.args.timeout);
    let deadline = Instant::now() + limit;
    let mut last: String;
    // --nats / --mqtt (or FLEETCTL_*) name where to read heartbeats; else the device's plane.
    let transport = match (plane, &shared.conn_nats, &shared.conn_mqtt) {
        (Plane::Local, _, _) => None,
        (_, Some(u), _) => Some(Transport::nats(u).await?),
        (_, None, Some(a)) => Some(Transport::mqtt(a)?),
        (Plane::Nats { url }, None, None) => {
            Some(Transport::nats(url).await.with_context(|| {
                format!("reading the heartbeat from {url} (or pass --nats URL)")
            })?)
        }
        (Plane::Mqtt { addr }, None, None) => Some(Transport::mqtt(addr)?),
    };
    loop {
        match &transport {
            None => {
                let script = privileged("fleet-agent status --json", sudo);
                match ssh.run("fleet-agent status", &script, b"").await {
                    Ok(out) => match serde_json::from_str::<serde_json::Value>(&out.stdout) {
                        Ok(v) if v["running"] == true => return Ok(v),
                        Ok(_) => last = "fleet-agent status: not running".into(),
                        Err(e) => last = format!("fleet-agent status --json: {e}"),
                    },
                    Err(e) => last = without_host(ssh, &format!("{e:#}")),
                }
            }
            Some(t) => match t.status(Some(device)).await {
                Ok(views) => {
                    let info = views.get(device).and_then(|v| v.info.clone());
                    match info {
                        Some(i)
                            if i["stopped"] != true
                                && i["at"].as_u64().is_some_and(|at| at >= shared.started) =>
                        {
                            return Ok(i)
                        }
                        Some(_) => last = "only a heartbeat from before this run".into(),
                        None => last = format!("no heartbeat from device {device} yet"),
                    }
                }
                Err(e) => last = format!("{e:#}"),
            },
        }
        if Instant::now() >= deadline {
            bail!("no heartbeat within {} s: {last}", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// `msg` without a leading `<host>: ` (the result adds it once).
fn without_host(ssh: &Ssh, msg: &str) -> String {
    let prefix = format!("{}: ", ssh.target);
    msg.strip_prefix(&prefix).unwrap_or(msg).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileged_scripts_survive_both_levels_of_quoting() {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        // What the device runs for a non-root login: sh -c '<sudo -n sh -c '<script>'>',
        // here with `env` standing in for `sudo -n`; the path has a space and a quote.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("etc 'fleet'");
        let script = plan::write_file_script(dir.to_str().unwrap(), "config.toml", "0640", "027");
        let remote = format!("sh -c {}", shell_quote(&privileged(&script, true)));
        assert!(remote.starts_with("sh -c 'sudo -n sh -c '"), "{remote}");
        let remote = remote.replacen("sudo -n ", "env ", 1);
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&remote)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"device_id = \"it's\"\n")
            .unwrap();
        assert!(child.wait().unwrap().success());
        let f = dir.join("config.toml");
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "device_id = \"it's\"\n"
        );
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(privileged("true", false), "true");
    }

    #[test]
    fn heartbeat_lines_name_device_version_and_plane() {
        let v = serde_json::json!({
            "device": "pi-7", "version": "0.1.0", "control_plane": "nats",
            "running": true, "modules": [{}, {}]
        });
        assert_eq!(
            heartbeat_line(&v),
            "device pi-7 fleet-agent 0.1.0 running, plane nats, 2 module(s)"
        );
    }
}

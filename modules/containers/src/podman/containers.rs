//! Container calls: list, run, create, start, stop, rm, wait, logs; and the storage-level
//! calls that repair a container a killed podman left half-made.

use std::path::Path;
use std::time::Duration;

use fleet_contract::{quote, NetworkMode};

use super::{check_name, Call, CreateSpec, HostOptions, Podman, PsEntry, QUICK};
use crate::error::Error;

impl Podman {
    /// Every container (any state) carrying `label` (`key=value`).
    pub async fn list(&self, label: &str) -> Result<Vec<PsEntry>, Error> {
        let call = Call::new(&["ps"])
            .opts(["-a".to_owned(), "--format=json".to_owned()])
            .opts([format!("--filter=label={label}")]);
        let out = self.run(&call).await?;
        if out.trim().is_empty() {
            return Ok(Vec::new());
        }
        self.decode(&call, &out)
    }

    /// Creates (does not start) a container; returns its id. Refuses, naming the field, a
    /// spec podman would misread (see [`create_call`]).
    pub async fn create(&self, spec: &CreateSpec) -> Result<String, Error> {
        let call = create_call(spec)?;
        Ok(self.run(&call).await?.trim().to_owned())
    }

    /// Creates and starts a container in one call (`podman run --detach`, never pulling:
    /// pulls go through [`Podman::pull`] with the configured credentials); returns its id.
    /// A start that fails leaves the container created, as `create` then `start` would.
    pub async fn run_detached(&self, spec: &CreateSpec) -> Result<String, Error> {
        let call = run_call(spec)?;
        Ok(self.run(&call).await?.trim().to_owned())
    }

    /// Starts a created or exited container; `secrets` (its env values and arguments) are
    /// redacted from podman's error, which may quote the command it could not run.
    pub async fn start(&self, name: &str, secrets: &[String]) -> Result<(), Error> {
        self.start_in(name, secrets, None).await
    }

    /// [`Podman::start`] with podman (and the container's new conmon) working in `dir` (see
    /// [`CreateSpec::conmon_dir`]).
    pub async fn start_in(
        &self,
        name: &str,
        secrets: &[String],
        dir: Option<&Path>,
    ) -> Result<(), Error> {
        let call = Call::new(&["start"])
            .name("container", name)
            .secrets(secrets.iter().cloned())
            .cwd(dir);
        self.run(&call).await.map(drop)
    }

    /// Stops a container the way it was created to be stopped: its stop signal, then
    /// SIGKILL after its stop timeout. A container that is not running is fine.
    pub async fn stop(&self, name: &str, grace: u32) -> Result<(), Error> {
        let call = Call::new(&["stop"])
            .opts(["--ignore"])
            .name("container", name)
            .limit(QUICK + Duration::from_secs(u64::from(grace)));
        self.run(&call).await.map(drop)
    }

    /// Removes a container (killing it if it still runs); a missing one is fine.
    pub async fn rm(&self, name: &str) -> Result<(), Error> {
        let call = Call::new(&["rm"])
            .opts(["--force", "--ignore", "--time", "0"])
            .name("container", name);
        self.run(&call).await.map(drop)
    }

    /// Is there a container `name` in podman's database?
    pub async fn exists(&self, name: &str) -> Result<bool, Error> {
        let call = Call::new(&["container", "exists"]).name("container", name);
        match self.run(&call).await {
            Ok(_) => Ok(true),
            Err(Error::Command { code: Some(1), .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Is `name` a storage-only container: in containers/storage (`podman ps --external`)
    /// but unknown to podman's database? A podman killed mid-create leaves one; it holds
    /// the name, so every later create fails with "the container name … is already in use".
    pub async fn storage_only(&self, name: &str) -> Result<bool, Error> {
        if self.exists(name).await? {
            return Ok(false);
        }
        let call = Call::new(&["container", "exists"])
            .opts(["--external"])
            .name("container", name);
        match self.run(&call).await {
            Ok(_) => Ok(true),
            Err(Error::Command { code: Some(1), .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes a storage-only container (`podman rm --storage`).
    pub async fn rm_storage(&self, name: &str) -> Result<(), Error> {
        let call = Call::new(&["rm"])
            .opts(["--storage"])
            .name("container", name);
        self.run(&call).await.map(drop)
    }

    /// The container's state as podman's database has it now (`created`, `running`, ...);
    /// `None` when there is no such container.
    pub async fn state(&self, name: &str) -> Result<Option<String>, Error> {
        if !self.exists(name).await? {
            return Ok(None);
        }
        let call = Call::new(&["container", "inspect"])
            .opts(["--format", "{{.State.Status}}"])
            .name("container", name);
        Ok(Some(self.run(&call).await?.trim().to_owned()))
    }

    /// Did the kernel OOM-kill the container's last run, as podman recorded it? (podman
    /// 4.3 mostly does not: see `engine::oom`.)
    pub async fn oom_killed(&self, name: &str) -> Result<bool, Error> {
        let call = Call::new(&["container", "inspect"])
            .opts(["--format", "{{.State.OOMKilled}}"])
            .name("container", name);
        Ok(self.run(&call).await?.trim() == "true")
    }

    /// Waits for a container to exit; `Ok(None)` when `limit` passes first.
    pub async fn wait(&self, name: &str, limit: Duration) -> Result<Option<i32>, Error> {
        let call = Call::new(&["wait"]).name("container", name).limit(limit);
        match self.run(&call).await {
            Ok(out) => out.trim().parse().map(Some).map_err(|e| Error::Decode {
                what: call.what.clone(),
                message: format!("exit code {}: {e}", quote(out.trim())),
            }),
            Err(Error::Timeout { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The last `n` lines a container logged (stdout and stderr).
    pub async fn logs(&self, name: &str, n: usize) -> Result<Vec<String>, Error> {
        let call = Call::new(&["logs"])
            .opts(["--tail".to_owned(), n.to_string()])
            .name("container", name);
        let (out, err) = self.output(&call).await?;
        // Container stderr comes back on podman's stderr; order between the two is lost.
        let mut lines: Vec<String> = out.lines().chain(err.lines()).map(str::to_owned).collect();
        let keep = lines.len().saturating_sub(n);
        lines.drain(..keep);
        Ok(lines)
    }
}

/// The `podman create` call for `spec` (see [`container_call`]).
pub(crate) fn create_call(spec: &CreateSpec) -> Result<Call, Error> {
    container_call("create", &[], spec)
}

/// The `podman run --detach --pull=never` call for `spec` (see [`container_call`]).
pub(crate) fn run_call(spec: &CreateSpec) -> Result<Call, Error> {
    container_call("run", &["--detach", "--pull=never"], spec)
}

/// `podman <verb> <flags> <options> -- <image> <command>` for `spec`. Refused before podman runs,
/// naming the field: an image that starts with `-` or is empty, a NUL byte in any value, an
/// env key that is empty or holds `=`. Env values and the command are secrets: they never
/// appear in a message.
fn container_call(verb: &str, flags: &[&str], spec: &CreateSpec) -> Result<Call, Error> {
    let refused = |field: String, reason: &str| Error::Refused {
        field,
        reason: reason.to_owned(),
    };
    // The image first: a refused reference is named before any other field.
    check_name("container.image", &spec.image)?;
    for (i, a) in spec.command.iter().enumerate() {
        if a.contains('\0') {
            return Err(refused(
                format!("container.command[{i}]"),
                "contains a NUL byte",
            ));
        }
    }
    for (k, v) in &spec.env {
        let field = || format!("container.env.{}", quote(k));
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(refused(
                field(),
                "is not a usable variable name (empty, '=' or NUL)",
            ));
        }
        if v.contains('\0') {
            return Err(refused(field(), "value contains a NUL byte"));
        }
    }
    for (k, v) in &spec.labels {
        if k.contains('\0') || v.contains('\0') {
            return Err(refused(
                format!("label {}", quote(k)),
                "contains a NUL byte",
            ));
        }
    }
    // `--flag=value`, one argument each: no value can be taken for a flag of its own.
    let mut opts: Vec<String> = vec![
        format!("--name={}", spec.name),
        format!("--stop-signal={}", spec.stop_signal),
        format!("--stop-timeout={}", spec.stop_timeout),
        // The agent restarts containers itself (with backoff); podman must not.
        "--restart=no".into(),
    ];
    if let Some(mib) = spec.log_max_mib {
        // k8s-file, not journald: a per-container cap that conmon enforces by truncating the
        // file before a write would pass it (measured in the README, "Containers": never
        // over the cap; ~0.1 s of conmon CPU per 100 MB over discarding the output, against
        // ~75 s of conmon plus journald CPU and 416 MB of journal for journald, which has
        // no per-container cap and lets one chatty container evict the system's own logs).
        opts.push("--log-driver=k8s-file".into());
        opts.push(format!("--log-opt=max-size={}", u64::from(mib) * MIB));
    }
    opts.extend(spec.labels.iter().map(|(k, v)| format!("--label={k}={v}")));
    opts.extend(spec.env.iter().map(|(k, v)| format!("--env={k}={v}")));
    opts.extend(
        spec.volumes
            .iter()
            .map(|(vol, at)| format!("--volume={vol}:{at}")),
    );
    host_options(&spec.host, &mut opts)?;
    Ok(Call::new(&[verb])
        .opts(flags.iter().copied())
        .target(&spec.name)
        .opts(opts)
        .name("container.image", &spec.image)
        .rest(&spec.command)
        .secrets(spec.env.values().cloned())
        .cwd(spec.conmon_dir.as_deref()))
}

const MIB: u64 = 1024 * 1024;

/// The podman options of `h`, appended to `opts`. Refused before podman runs, naming the
/// manifest field: a NUL byte anywhere, and a `:` or `,` in a path (podman's separators
/// in `--volume`, `--device` and `--tmpfs`), which would make podman read another mount.
fn host_options(h: &HostOptions, opts: &mut Vec<String>) -> Result<(), Error> {
    let refused = |field: String, reason: String| Error::Refused { field, reason };
    let text = |field: &dyn Fn() -> String, v: &str| {
        if v.contains('\0') {
            return Err(refused(field(), "contains a NUL byte".into()));
        }
        Ok(())
    };
    let path = |field: &dyn Fn() -> String, v: &str| {
        text(field, v)?;
        if v.contains([':', ',']) {
            return Err(refused(
                field(),
                format!("{} holds ':' or ',', which podman would split", quote(v)),
            ));
        }
        Ok(())
    };
    match h.network {
        NetworkMode::Bridge => {}
        other => opts.push(format!("--network={}", other.as_str())),
    }
    for (i, p) in h.ports.iter().enumerate() {
        let host = match &p.host_ip {
            Some(ip) => {
                text(&|| format!("container.ports[{i}].hostIp"), ip)?;
                if ip.contains(':') {
                    format!("[{ip}]:")
                } else {
                    format!("{ip}:")
                }
            }
            None => String::new(),
        };
        opts.push(format!(
            "--publish={host}{}:{}/{}",
            p.host_port,
            p.container_port,
            p.protocol.as_str()
        ));
    }
    let ro = |read_only: bool| if read_only { ":ro" } else { "" };
    for (i, (volume, at, read_only)) in h.volumes.iter().enumerate() {
        path(&|| format!("container.volumes[{i}].name"), volume)?;
        path(&|| format!("container.volumes[{i}].mountPath"), at)?;
        opts.push(format!("--volume={volume}:{at}{}", ro(*read_only)));
    }
    for (i, b) in h.binds.iter().enumerate() {
        path(&|| format!("container.binds[{i}].hostPath"), &b.host_path)?;
        path(&|| format!("container.binds[{i}].mountPath"), &b.mount_path)?;
        if !b.host_path.starts_with('/') {
            // podman would take it for a named volume.
            return Err(refused(
                format!("container.binds[{i}].hostPath"),
                format!("{} is not an absolute path", quote(&b.host_path)),
            ));
        }
        opts.push(format!(
            "--volume={}:{}{}",
            b.host_path,
            b.mount_path,
            ro(b.read_only)
        ));
    }
    for (i, d) in h.devices.iter().enumerate() {
        path(&|| format!("container.devices[{i}].hostPath"), &d.host_path)?;
        let mut arg = format!("--device={}", d.host_path);
        let inside = d.container_path.as_deref();
        if let Some(p) = inside {
            path(&|| format!("container.devices[{i}].containerPath"), p)?;
        }
        if inside.is_some() || d.permissions.is_some() {
            arg.push(':');
            arg.push_str(inside.unwrap_or(&d.host_path));
        }
        if let Some(perm) = &d.permissions {
            path(&|| format!("container.devices[{i}].permissions"), perm)?;
            arg.push(':');
            arg.push_str(perm);
        }
        opts.push(arg);
    }
    for (i, t) in h.tmpfs.iter().enumerate() {
        path(&|| format!("container.tmpfs[{i}].mountPath"), &t.mount_path)?;
        opts.push(match t.size_mib {
            Some(mib) => format!("--tmpfs={}:size={mib}m", t.mount_path),
            None => format!("--tmpfs={}", t.mount_path),
        });
    }
    if h.privileged {
        opts.push("--privileged".into());
    }
    if h.read_only_root {
        opts.push("--read-only".into());
    }
    for (field, flag, caps) in [
        ("container.capAdd", "--cap-add", &h.cap_add),
        ("container.capDrop", "--cap-drop", &h.cap_drop),
    ] {
        for (i, cap) in caps.iter().enumerate() {
            text(&|| format!("{field}[{i}]"), cap)?;
            opts.push(format!("{flag}={cap}"));
        }
    }
    if let Some(user) = &h.user {
        path(&|| "container.user".into(), user)?;
        match &h.group {
            Some(group) => {
                path(&|| "container.group".into(), group)?;
                opts.push(format!("--user={user}:{group}"));
            }
            None => opts.push(format!("--user={user}")),
        }
    }
    if let Some(dir) = &h.working_dir {
        text(&|| "container.workingDir".into(), dir)?;
        opts.push(format!("--workdir={dir}"));
    }
    let r = &h.resources;
    if let Some(mib) = r.memory_mib {
        // Swap equal to memory: no swap on top, so the limit is what the kernel enforces.
        opts.push(format!("--memory={mib}m"));
        opts.push(format!("--memory-swap={mib}m"));
    }
    if let Some(m) = r.cpu_millis {
        opts.push(format!("--cpus={}.{:03}", m / 1000, m % 1000));
    }
    if let Some(n) = r.pids {
        opts.push(format!("--pids-limit={n}"));
    }
    Ok(())
}

/// `podman create` arguments for `spec` (pure, unit-tested): options, `--`, image, command.
pub fn create_args(spec: &CreateSpec) -> Result<Vec<String>, Error> {
    create_call(spec)?.argv()
}

/// `podman run --detach` arguments for `spec` (pure, unit-tested), as [`create_args`].
pub fn run_args(spec: &CreateSpec) -> Result<Vec<String>, Error> {
    run_call(spec)?.argv()
}

//! Command line: `fleet-agent run | status | check-config | self-test | version | completions`.
//!
//! Exit codes (a contract with systemd's `RestartPreventExitStatus=2`):
//! 0 success; 1 runtime failure; 2 bad config or usage; 3 restart requested (self-upgrade
//! cutover or a missed probation deadline: systemd's `Restart=always` starts the current link);
//! 4 start refused: the time guard found the clock skewed past its limit (under systemd after
//! a hold that starts the agent as soon as the clock is fixed; systemd restarts it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use fleet_module_api::CancellationToken;

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::runtime::{Agent, AgentError};
use crate::store::Store;
use crate::{logging, modules, status, VERSION};

/// fleet-agent keeps this device converged with its desired state, observable, and safely
/// upgradable.
///
/// Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage, 3 restart
/// requested (self-upgrade), 4 start refused (clock skewed past the time guard's limit).
#[derive(Debug, Parser)]
#[command(name = "fleet-agent", version = VERSION, propagate_version = true)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, env = "FLEET_AGENT_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the agent (what the systemd unit starts). SIGTERM or SIGINT stops it cleanly.
    Run,
    /// Show the agent's state: modules, deployments, store. Works whether it runs or not.
    Status {
        /// Print the machine-readable JSON document (the stable interface).
        #[arg(long)]
        json: bool,
    },
    /// Validate the config file and every module section; exit 2 naming the key if bad.
    CheckConfig,
    /// Check that this build can run here: config, store (on a copy), module probes, control
    /// plane. Exit 0 when all pass, 1 otherwise.
    SelfTest {
        /// Print results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the version and the compiled-in modules.
    Version {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script.
    Completions {
        /// Target shell.
        shell: clap_complete::Shell,
    },
    /// Plumbing for tests and tooling; not a stable interface.
    #[command(hide = true, subcommand)]
    Internals(Internals),
    /// Self-upgrade guard, run by systemd as `ExecStartPre=` from the confirmed binary: counts
    /// start attempts of a version on probation and reverts when they run out or the deadline
    /// passed. Exit 0 when the start may proceed.
    #[cfg(feature = "self-upgrade")]
    #[command(hide = true)]
    Guard,
    /// Run by the Debian package's postinst from the newly unpacked binary
    /// (`/usr/lib/fleet-agent/versions/<v>/fleet-agent`): points the self-upgrade layout at
    /// this version. With `--restart` (the service runs and the postinst restarts it next) it
    /// self-tests this binary, writes the probation record from the confirmed version and
    /// swaps the current link, so the guard reverts unless this version checks in; without,
    /// both links move at once. Exit 1 (nothing moved) when the self-test fails.
    #[cfg(feature = "self-upgrade")]
    #[command(hide = true)]
    PackageCutover {
        /// The package version being replaced (the preinst kept its binary).
        #[arg(long, value_name = "VERSION")]
        from: Option<String>,
        /// The service is running and will be restarted: go through probation.
        #[arg(long)]
        restart: bool,
    },
}

/// Hidden plumbing subcommands.
#[derive(Debug, Subcommand)]
pub enum Internals {
    /// Commit increments of a counter in the store, printing `committed <n>` after each
    /// COMMIT returns (power-cut tests compare this with what survives).
    StoreStress {
        /// Counter key (module area `internals`).
        #[arg(long)]
        key: String,
        /// Stop after this many commits (default: until killed).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Print a counter written by `store-stress`; exit 1 when absent.
    KvGet {
        /// Counter key.
        #[arg(long)]
        key: String,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap exits 2 for usage errors and 0 for --help/--version.
            e.exit();
        }
    };
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(Failure { code, error }) => {
            eprintln!("fleet-agent: {error:#}");
            ExitCode::from(code)
        }
    }
}

/// An error with its exit code.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn config_error(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: e.into(),
    }
}

fn runtime_error(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 1,
        error: e.into(),
    }
}

/// Loads the config: an explicit path must exist; a missing default means all defaults.
fn load_config(path: Option<&Path>) -> Result<(Config, PathBuf), Failure> {
    match path {
        Some(p) => Config::load(p)
            .map(|c| (c, p.to_owned()))
            .map_err(config_error),
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG_PATH);
            if p.exists() {
                Config::load(&p).map(|c| (c, p)).map_err(config_error)
            } else {
                Config::parse("")
                    .map(|c| (c, p))
                    .map_err(|e| config_error(anyhow::anyhow!("{e}")))
            }
        }
    }
}

fn dispatch(cli: Cli) -> Result<u8, Failure> {
    match cli.command {
        Cmd::Run => run(cli.config.as_deref()),
        Cmd::Status { json } => {
            let (cfg, _) = load_config(cli.config.as_deref())?;
            let report = status::read(
                &cfg.state_db(),
                Duration::from_millis(cfg.store.busy_timeout_ms),
            )
            .map_err(runtime_error)?;
            if json {
                print_json(&report)?;
            } else {
                print!("{}", status::render(&report));
            }
            Ok(0)
        }
        Cmd::CheckConfig => {
            let (cfg, path) = load_config(cli.config.as_deref())?;
            let modules = Agent::builder(cfg.clone())
                .build_modules()
                .map_err(|e| config_error(anyhow::anyhow!("{}: {e}", path.display())))?;
            let device = cfg
                .device_id()
                .map_err(|e| config_error(anyhow::anyhow!("{}: {e}", path.display())))?;
            println!(
                "{}: OK (device {device}, {} module(s) configured)",
                path.display(),
                modules.len()
            );
            Ok(0)
        }
        Cmd::SelfTest { json } => self_test(cli.config.as_deref(), json),
        Cmd::Version { json } => {
            let mods = modules::compiled_in_names();
            if json {
                print_json(&serde_json::json!({ "version": VERSION, "modules": mods }))?;
            } else {
                println!("fleet-agent {VERSION}");
                println!(
                    "modules: {}",
                    if mods.is_empty() {
                        "(none)".to_owned()
                    } else {
                        mods.join(", ")
                    }
                );
            }
            Ok(0)
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "fleet-agent",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Cmd::Internals(i) => internals(cli.config.as_deref(), i),
        #[cfg(feature = "self-upgrade")]
        Cmd::Guard => guard(cli.config.as_deref()),
        #[cfg(feature = "self-upgrade")]
        Cmd::PackageCutover { from, restart } => {
            let (cfg, _) = load_config(cli.config.as_deref())?;
            let su = fleet_mod_self_upgrade::config_from_section(cfg.modules.get("self-upgrade"))
                .map_err(config_error)?;
            let line = crate::packaging::package_cutover(&cfg, &su, from.as_deref(), restart)
                .map_err(runtime_error)?;
            println!("fleet-agent package-cutover: {line}");
            Ok(0)
        }
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<(), Failure> {
    let s = serde_json::to_string_pretty(v).map_err(runtime_error)?;
    println!("{s}");
    Ok(())
}

/// Test builds only: the fault named by `FLEET_TEST_FAULT`, if it is `which`.
fn test_fault(which: &str) -> bool {
    #[cfg(feature = "test-faults")]
    {
        std::env::var("FLEET_TEST_FAULT").is_ok_and(|f| f == which)
    }
    #[cfg(not(feature = "test-faults"))]
    {
        let _ = which;
        false
    }
}

#[cfg(feature = "self-upgrade")]
fn guard(config: Option<&Path>) -> Result<u8, Failure> {
    use fleet_mod_self_upgrade::{guard, Layout};
    let (cfg, _) = load_config(config)?;
    let su = fleet_mod_self_upgrade::config_from_section(cfg.modules.get("self-upgrade"))
        .map_err(config_error)?;
    let layout = Layout::new(&su, &cfg.state_dir);
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let outcome = guard::run(&layout, &guard::Now::read(unix)).map_err(runtime_error)?;
    match outcome {
        guard::GuardOutcome::NoProbation => {}
        other => eprintln!("fleet-agent guard: {other:?}"),
    }
    Ok(0)
}

fn run(config: Option<&Path>) -> Result<u8, Failure> {
    if test_fault("exit-on-start") {
        eprintln!("fleet-agent {VERSION}: FLEET_TEST_FAULT=exit-on-start");
        return Ok(1);
    }
    let (cfg, path) = load_config(config)?;
    logging::init(&cfg.log.level);
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "panic (contained by the supervisor when inside a module)");
    }));
    tracing::info!(config = %path.display(), "config loaded");
    crate::memory::fix_mmap_threshold();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(runtime_error)?;
    rt.block_on(async move {
        let agent = Agent::builder(cfg).build().map_err(agent_failure)?;
        let stop = CancellationToken::new();
        spawn_signal_handler(stop.clone()).map_err(runtime_error)?;
        agent.run(stop).await.map_err(agent_failure)?;
        Ok(0)
    })
}

fn agent_failure(e: AgentError) -> Failure {
    Failure {
        code: e.exit_code(),
        error: e.into(),
    }
}

fn spawn_signal_handler(stop: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        stop.cancel();
    });
    Ok(())
}

#[derive(serde::Serialize)]
struct Check {
    check: String,
    ok: bool,
    detail: String,
}

fn self_test(config: Option<&Path>, json: bool) -> Result<u8, Failure> {
    let (cfg, path) = load_config(config)?;
    let mut checks = vec![Check {
        check: "config".into(),
        ok: true,
        detail: format!("{} parses", path.display()),
    }];
    let device = cfg.device_id();
    checks.push(Check {
        check: "device-id".into(),
        ok: device.is_ok(),
        detail: device.map_or_else(|e| e, |d| d.to_string()),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(runtime_error)?;
    let tmp = tempfile_dir().map_err(runtime_error)?;
    checks.push(store_on_copy(&cfg, &tmp));
    // Modules are built from config and probed against the copy, never the live store.
    let mut probe_cfg = cfg.clone();
    probe_cfg.state_dir = tmp.clone();
    match Agent::builder(probe_cfg).build() {
        Ok(agent) => {
            for (name, probe) in rt.block_on(agent.probe_all()) {
                // Unavailable is a fact about the device, not a defect of the build; a probe
                // that hangs is (it is reported as unavailable with "did not answer").
                let (ok, detail) = match probe {
                    fleet_module_api::Probe::Available { detail } => (true, detail),
                    fleet_module_api::Probe::Unavailable { reason } => (
                        !reason.contains("did not answer"),
                        format!("unavailable: {reason}"),
                    ),
                };
                checks.push(Check {
                    check: format!("module {name}"),
                    ok,
                    detail,
                });
            }
        }
        Err(e) => checks.push(Check {
            check: "modules".into(),
            ok: false,
            detail: e.to_string(),
        }),
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let reach = match cfg.device_id() {
        Ok(dev) => rt.block_on(crate::runtime::plane_for(&cfg, &dev).check()),
        Err(e) => Err(crate::control::ControlError::Setup {
            plane: "any",
            message: e,
        }),
    };
    checks.push(Check {
        check: "control-plane".into(),
        ok: reach.is_ok(),
        detail: reach.unwrap_or_else(|e| e.to_string()),
    });
    if test_fault("fail-self-test") {
        checks.push(Check {
            check: "test-fault".into(),
            ok: false,
            detail: "FLEET_TEST_FAULT=fail-self-test".into(),
        });
    }
    let all_ok = checks.iter().all(|c| c.ok);
    if json {
        print_json(&serde_json::json!({ "ok": all_ok, "checks": checks }))?;
    } else {
        for c in &checks {
            println!(
                "{:<4} {:<14} {}",
                if c.ok { "ok" } else { "FAIL" },
                c.check,
                c.detail
            );
        }
    }
    Ok(if all_ok { 0 } else { 1 })
}

/// Opens and migrates a copy of the store, so a new version can prove it reads the current
/// state without touching it.
fn store_on_copy(cfg: &Config, tmp: &Path) -> Check {
    let result = (|| -> anyhow::Result<String> {
        let copy = tmp.join("state.db");
        let db = cfg.state_db();
        if db.exists() {
            std::fs::copy(&db, &copy)?;
            let wal = PathBuf::from(format!("{}-wal", db.display()));
            if wal.exists() {
                std::fs::copy(&wal, tmp.join("state.db-wal"))?;
            }
        }
        let (store, report) =
            Store::open(&copy, Duration::from_secs(5), cfg.store.audit_max_entries)?;
        let integrity = store.integrity()?;
        drop(store);
        anyhow::ensure!(report.recovered_from.is_none(), "the store copy is corrupt");
        Ok(format!(
            "{} opens on a copy, schema v{}, integrity {integrity}",
            db.display(),
            report.schema_version
        ))
    })();
    Check {
        check: "store".into(),
        ok: result.is_ok(),
        detail: result.unwrap_or_else(|e| format!("{e:#}")),
    }
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("fleet-agent-selftest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn internals(config: Option<&Path>, cmd: Internals) -> Result<u8, Failure> {
    let (cfg, _) = load_config(config)?;
    let busy = Duration::from_millis(cfg.store.busy_timeout_ms);
    match cmd {
        Internals::StoreStress { key, count } => {
            let (store, _) = Store::open(&cfg.state_db(), busy, cfg.store.audit_max_entries)
                .map_err(runtime_error)?;
            let mut out = std::io::stdout().lock();
            let mut done = 0u64;
            while count.is_none_or(|c| done < c) {
                let n = store
                    .kv_increment("internals", &key, 1)
                    .map_err(runtime_error)?;
                writeln!(out, "committed {n}")
                    .and_then(|()| out.flush())
                    .map_err(runtime_error)?;
                done += 1;
            }
            Ok(0)
        }
        Internals::KvGet { key } => {
            let store = Store::open_existing(&cfg.state_db(), busy).map_err(runtime_error)?;
            match store.kv_get("internals", &key).map_err(runtime_error)? {
                Some(v) => {
                    println!("{}", String::from_utf8_lossy(&v));
                    Ok(0)
                }
                None => {
                    eprintln!("fleet-agent: key {key:?} not found");
                    Ok(1)
                }
            }
        }
    }
}

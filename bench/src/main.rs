//! `fleet-bench`: measures the real release `fleet-agent` binary and prints each figure next
//! to a raw baseline measured in the same run, as a ratio. Never asserts on timings.
//!
//! Usage: `fleet-bench [AGENT_BINARY] [--runs N] [--idle-secs S] [--manifests M]`
//! (default binary: target/release/fleet-agent). `scripts/bench` builds and runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet_testkit::{NotifySocket, TempRoot};

struct Args {
    agent: PathBuf,
    runs: usize,
    idle_secs: u64,
    manifests: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        agent: PathBuf::from("target/release/fleet-agent"),
        runs: 10,
        idle_secs: 60,
        manifests: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--runs" => args.runs = num("--runs")? as usize,
            "--idle-secs" => args.idle_secs = num("--idle-secs")?,
            "--manifests" => args.manifests = num("--manifests")? as usize,
            "-h" | "--help" => {
                return Err(
                    "usage: fleet-bench [AGENT_BINARY] [--runs N] [--idle-secs S] [--manifests M]"
                        .into(),
                )
            }
            other if !other.starts_with('-') => args.agent = PathBuf::from(other),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if !args.agent.exists() {
        return Err(format!(
            "{} not found; build it with `cargo build --release -p fleet-agent`",
            args.agent.display()
        ));
    }
    Ok(args)
}

fn config(root: &TempRoot) -> PathBuf {
    root.write_config(&format!(
        "device_id = \"bench\"\nstate_dir = {:?}\nrun_dir = {:?}\n[control]\ndeployments_dir = {:?}\n",
        root.state(),
        root.run(),
        root.deployments()
    ))
}

fn manifest(i: usize) -> String {
    format!(
        "apiVersion = \"fleet/v1\"\nname = \"app-{i}\"\nrevision = 1\n[container]\nimage = \"localhost/app:{i}\"\ncommand = [\"sleep\", \"3600\"]\n"
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// exec -> READY=1 of the agent, SIGTERM'd after each run.
fn time_to_ready(agent: &Path) -> Result<Duration, String> {
    let root = TempRoot::new().map_err(|e| e.to_string())?;
    let cfg = config(&root);
    let notify = NotifySocket::new().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut child = Command::new(agent)
        .args(["--config".as_ref(), cfg.as_os_str(), "run".as_ref()])
        .env("NOTIFY_SOCKET", notify.path())
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", agent.display()))?;
    let ready = notify.wait_for("READY=1", Duration::from_secs(30));
    let took = start.elapsed();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    ready.map_err(|e| e.to_string())?;
    Ok(took)
}

/// exec -> exit of `true`: the cost of starting any process here.
fn time_true() -> Result<Duration, String> {
    let start = Instant::now();
    Command::new("true")
        .status()
        .map_err(|e| format!("spawn true: {e}"))?;
    Ok(start.elapsed())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fleet-bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let size = std::fs::metadata(&args.agent)
        .map_err(|e| e.to_string())?
        .len();
    println!(
        "binary       {}: {:.2} MiB ({size} bytes)",
        args.agent.display(),
        size as f64 / 1048576.0
    );

    let mut ready = Vec::new();
    let mut baseline = Vec::new();
    for _ in 0..args.runs {
        baseline.push(time_true()?);
        ready.push(time_to_ready(&args.agent)?);
    }
    let (r, b) = (median(ready), median(baseline));
    println!(
        "exec->READY  median of {}: {:.1} ms   baseline exec->exit of `true`: {:.2} ms   ratio {:.1}x",
        args.runs,
        r.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        r.as_secs_f64() / b.as_secs_f64()
    );

    let root = TempRoot::new().map_err(|e| e.to_string())?;
    let cfg = config(&root);
    for i in 0..args.manifests {
        std::fs::write(
            root.deployments().join(format!("app-{i}.toml")),
            manifest(i),
        )
        .map_err(|e| e.to_string())?;
    }
    let notify = NotifySocket::new().map_err(|e| e.to_string())?;
    let mut agent = Command::new(&args.agent)
        .args(["--config".as_ref(), cfg.as_os_str(), "run".as_ref()])
        .env("NOTIFY_SOCKET", notify.path())
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut sleeper = Command::new("sleep")
        .arg((args.idle_secs + 30).to_string())
        .spawn()
        .map_err(|e| e.to_string())?;
    notify
        .wait_for("READY=1", Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(args.idle_secs));
    let rss = rss_kib(agent.id()).ok_or("agent exited during the idle period")?;
    let base = rss_kib(sleeper.id()).ok_or("sleep exited early")?;
    let _ = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status();
    let _ = agent.wait();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    println!(
        "idle RSS     after {} s with {} manifests: {:.1} MiB   baseline `sleep`: {:.1} MiB   ratio {:.1}x",
        args.idle_secs,
        args.manifests,
        rss as f64 / 1024.0,
        base as f64 / 1024.0,
        rss as f64 / base as f64
    );
    Ok(())
}

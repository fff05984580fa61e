//! `fleet-bench`: measures the real release `fleet-agent` and prints each figure beside a raw
//! baseline measured in the same run, as `figure | value | baseline | ratio` (or, with
//! `--markdown`, the README's table with the targets). Never asserts on timings.
//!
//! Usage: `fleet-bench [AGENT_BINARY] [--quick] [--markdown] [--runs N] [--idle-secs S]
//! [--puts P] [--only size,ready,nats,running,probe,idle]` (default binary:
//! target/release/fleet-agent). `scripts/bench` builds both and runs it.

mod agent;
mod idle;
mod nats;
mod probe;
mod procs;
mod ready;
mod report;
mod running;
mod size;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use report::Figure;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file or program could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The file or program.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A daemon, podman or the agent failed.
    #[error("{0}")]
    Failed(String),
}

impl BenchError {
    fn io(path: &Path, source: std::io::Error) -> BenchError {
        BenchError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    fn kit(e: fleet_testkit::Error) -> BenchError {
        BenchError::Failed(e.to_string())
    }
}

const PARTS: &[&str] = &["size", "ready", "nats", "running", "probe", "idle"];

struct Args {
    agent: PathBuf,
    markdown: bool,
    runs: usize,
    idle_secs: u64,
    puts: usize,
    only: Vec<String>,
}

const USAGE: &str = "usage: fleet-bench [AGENT_BINARY] [--quick] [--markdown] [--runs N] \
                     [--idle-secs S] [--puts P] [--only size,ready,nats,running,probe,idle]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        agent: PathBuf::from("target/release/fleet-agent"),
        markdown: false,
        runs: 10,
        idle_secs: 60,
        puts: 300,
        only: PARTS.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--quick" => {
                args.runs = 3;
                args.idle_secs = 10;
                args.puts = 50;
            }
            "--markdown" => args.markdown = true,
            "--runs" => args.runs = usize::try_from(num("--runs")?.max(1)).unwrap_or(1),
            "--idle-secs" => args.idle_secs = num("--idle-secs")?.max(1),
            "--puts" => args.puts = usize::try_from(num("--puts")?.max(1)).unwrap_or(1),
            "--only" => {
                let list = it.next().ok_or("--only needs a list")?;
                args.only = list.split(',').map(str::to_owned).collect();
                if let Some(bad) = args.only.iter().find(|p| !PARTS.contains(&p.as_str())) {
                    return Err(format!("--only: unknown part {bad:?} (one of {PARTS:?})"));
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other if !other.starts_with('-') => args.agent = PathBuf::from(other),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
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

/// Median (upper middle).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fleet-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn want(args: &Args, part: &str) -> bool {
    args.only.iter().any(|p| p == part)
}

/// Prints each figure's line as it is measured (to stderr with `--markdown`, whose table
/// comes on stdout at the end).
fn run(args: &Args) -> Result<(), BenchError> {
    let mut figures: Vec<Figure> = Vec::new();
    let mut notes = Vec::new();
    let markdown = args.markdown;
    let mut step = |figs: Vec<Figure>| {
        if markdown {
            eprint!("{}", report::lines(&figs));
        } else {
            print!("{}", report::lines(&figs));
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
        figures.extend(figs);
    };
    if want(args, "size") {
        step(vec![size::measure(&args.agent)?]);
    }
    if want(args, "ready") {
        step(ready::measure(&args.agent, args.runs)?);
    }
    let image = if want(args, "running") || want(args, "probe") || want(args, "idle") {
        fleet_testkit::busybox_image("testkit").map_err(BenchError::kit)?
    } else {
        String::new()
    };
    if want(args, "idle") {
        let settle = Duration::from_secs(if args.idle_secs < 30 { 3 } else { 10 });
        let idle = idle::measure(
            &args.agent,
            &image,
            10,
            settle,
            Duration::from_secs(args.idle_secs),
        )?;
        if markdown {
            eprintln!("{}", idle.detail);
        } else {
            println!("{}", idle.detail);
        }
        notes.push(idle.detail);
        step(idle.figures);
    }
    if want(args, "running") {
        step(running::measure(&args.agent, &image, args.runs.min(5))?);
    }
    if want(args, "probe") {
        step(probe::measure(&args.agent, &image, args.runs.min(5))?);
    }
    if want(args, "nats") {
        step(nats::measure(args.puts)?);
    }
    if args.markdown {
        print!(
            "{}",
            report::markdown(&figures, &commit(), &today(), &machine())
        );
        for n in notes {
            println!("\n{n}.");
        }
    }
    Ok(())
}

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn commit() -> String {
    output("git", &["describe", "--always", "--dirty", "--abbrev=7"])
        .unwrap_or_else(|| "unknown".into())
}

fn today() -> String {
    output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "unknown date".into())
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let podman = output("podman", &["--version"]).unwrap_or_default();
    format!("{} {cores} cores, {podman}", std::env::consts::ARCH)
}

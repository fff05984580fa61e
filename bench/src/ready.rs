//! exec -> READY=1 of the agent (local plane, no deployments) beside exec -> exit of `true`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fleet_testkit::{NotifySocket, PodmanScope, TempRoot};

use crate::agent::{local_config, AgentProc};
use crate::report::{ms, Figure};
use crate::{median, BenchError};

/// One start of the agent on `root` (its store created by the first start, reused after).
fn to_ready(agent: &Path, cfg: &Path, root: &TempRoot) -> Result<Duration, BenchError> {
    let notify = NotifySocket::new().map_err(BenchError::kit)?;
    let start = Instant::now();
    let mut proc = AgentProc::spawn(agent, cfg, root, Some(&notify))?;
    proc.wait_ready(&notify, Duration::from_secs(30))?;
    Ok(start.elapsed())
}

fn true_exit() -> Result<Duration, BenchError> {
    let start = Instant::now();
    Command::new("true")
        .status()
        .map_err(|e| BenchError::io(Path::new("true"), e))?;
    Ok(start.elapsed())
}

/// exec -> READY=1 of a restart (the store exists: every boot but the first), median of
/// `runs`, and of a first start (the store is created: SQLite's file creation and fsyncs),
/// median of `runs` fresh state directories; both beside exec -> exit of `true`.
pub fn measure(agent: &Path, runs: usize) -> Result<Vec<Figure>, BenchError> {
    let scope = PodmanScope::new("bench-ready").map_err(BenchError::kit)?;
    let mut base = Vec::new();
    let mut fresh = Vec::new();
    for _ in 0..runs {
        let root = TempRoot::new().map_err(BenchError::kit)?;
        let cfg = local_config(&root, &scope);
        base.push(true_exit()?);
        fresh.push(to_ready(agent, &cfg, &root)?);
    }
    let root = TempRoot::new().map_err(BenchError::kit)?;
    let cfg = local_config(&root, &scope);
    to_ready(agent, &cfg, &root)?;
    let mut restart = Vec::new();
    for _ in 0..runs {
        base.push(true_exit()?);
        restart.push(to_ready(agent, &cfg, &root)?);
    }
    let b = median(base);
    let figure = |what: &str, d: Duration, target: &'static str| {
        Figure::with_ratio(
            format!("exec -> READY=1, {what} (median of {runs})"),
            ms(d),
            format!("exec -> exit of `true`: {}", ms(b)),
            (d.as_secs_f64(), b.as_secs_f64()),
            target,
        )
    };
    Ok(vec![
        figure("restart, store exists", median(restart), "<= 10 ms"),
        figure("first start, store created", median(fresh), "-"),
    ])
}

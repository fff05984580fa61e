//! exec -> READY=1 of the agent (local plane, no deployments) beside exec -> exit of `true`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fleet_testkit::{NotifySocket, PodmanScope, TempRoot};

use crate::agent::{local_config, AgentProc};
use crate::report::{ms, Figure};
use crate::{median, BenchError};

fn to_ready(agent: &Path) -> Result<Duration, BenchError> {
    let scope = PodmanScope::new("bench-ready").map_err(BenchError::kit)?;
    let root = TempRoot::new().map_err(BenchError::kit)?;
    let cfg = local_config(&root, &scope);
    let notify = NotifySocket::new().map_err(BenchError::kit)?;
    let start = Instant::now();
    let mut proc = AgentProc::spawn(agent, &cfg, &root, Some(&notify))?;
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

pub fn measure(agent: &Path, runs: usize) -> Result<Figure, BenchError> {
    let mut ready = Vec::new();
    let mut base = Vec::new();
    for _ in 0..runs {
        base.push(true_exit()?);
        ready.push(to_ready(agent)?);
    }
    let (r, b) = (median(ready), median(base));
    Ok(Figure::with_ratio(
        format!("exec -> READY=1 (median of {runs})"),
        ms(r),
        format!("exec -> exit of `true`: {}", ms(b)),
        (r.as_secs_f64(), b.as_secs_f64()),
        "<= 10 ms",
    ))
}

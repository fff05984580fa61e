//! An idle agent with 10 running deployments over a window: RSS of its whole process tree
//! (the agent and every descendant, e.g. a resident `podman events`) and of the agent alone,
//! wakeups per second (context switches of every thread of every process in the tree) and
//! CPU %, each beside a `sleep` sampled over the same window.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet_testkit::{NotifySocket, PodmanScope, TempRoot};

use crate::agent::{local_config, write_manifest, AgentProc};
use crate::procs::{self, Window, TICKS_PER_SEC};
use crate::report::{mib, Figure};
use crate::BenchError;

/// How often the tree is read during the window (to see children born inside it).
const SAMPLE: Duration = Duration::from_millis(100);

/// Kills the baseline `sleep` on every path out.
struct Sleeper(std::process::Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Idle {
    pub figures: Vec<Figure>,
    /// What ran in the tree, e.g. `fleet-agent x1, podman x1`; children spawned in the window.
    pub detail: String,
}

pub fn measure(
    agent: &Path,
    image: &str,
    deployments: usize,
    settle: Duration,
    window: Duration,
) -> Result<Idle, BenchError> {
    let scope = PodmanScope::new("bench-idle").map_err(BenchError::kit)?;
    let root = TempRoot::new().map_err(BenchError::kit)?;
    let cfg = local_config(&root, &scope);
    let names: Vec<String> = (0..deployments).map(|i| format!("app-{i}")).collect();
    for name in &names {
        write_manifest(&root, name, image)?;
    }
    let notify = NotifySocket::new().map_err(BenchError::kit)?;
    let mut proc = AgentProc::spawn(agent, &cfg, &root, Some(&notify))?;
    proc.wait_ready(&notify, Duration::from_secs(60))?;
    proc.wait_running(&names, Duration::from_secs(300), Duration::from_millis(200))?;
    // Let the start-up work (first resync, first heartbeat) pass before the window opens.
    std::thread::sleep(settle);
    let sleeper = Sleeper(
        Command::new("sleep")
            .arg(
                (settle + window + Duration::from_secs(60))
                    .as_secs()
                    .to_string(),
            )
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::io(Path::new("sleep"), e))?,
    );
    let mut agent_w = Window::start(proc.pid());
    let sleep_w = Window::start(sleeper.0.id());
    let end = Instant::now() + window;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(SAMPLE.min(left));
        proc.check_alive()?;
        // The baseline needs no sampling in between: it spawns nothing.
        agent_w.sample();
    }
    let agent_rss = procs::rss_kib(proc.pid()).unwrap_or(0);
    let agent_anon = procs::rss_anon_kib(proc.pid()).unwrap_or(0);
    let tree = agent_w.finish();
    let base = sleep_w.finish();
    drop(sleeper);
    drop(proc);
    drop(scope);

    let secs = tree.span.as_secs_f64();
    let per_sec = |switches: u64, span: Duration| switches as f64 / span.as_secs_f64();
    let cpu_pct =
        |ticks: u64, span: Duration| ticks as f64 / TICKS_PER_SEC / span.as_secs_f64() * 100.0;
    let (w_tree, w_base) = (
        per_sec(tree.switches, tree.span),
        per_sec(base.switches, base.span),
    );
    let w_agent = per_sec(tree.root_switches, tree.span);
    let (c_tree, c_base) = (
        cpu_pct(tree.cpu_ticks, tree.span),
        cpu_pct(base.cpu_ticks, base.span),
    );
    let members = tree
        .processes
        .iter()
        .map(|(comm, (n, kib))| {
            let times = if *n > 1 {
                format!(" x{n}")
            } else {
                String::new()
            };
            format!("{comm}{times} {}", mib(*kib))
        })
        .collect::<Vec<_>>()
        .join(" + ");
    let figures = vec![
        Figure::with_ratio(
            format!("idle RSS, process tree, {deployments} running deployments"),
            format!("{} ({members})", mib(tree.rss_kib)),
            format!("`sleep`: {}", mib(base.rss_kib)),
            (tree.rss_kib as f64, base.rss_kib as f64),
            "<= 12 MiB",
        ),
        Figure::with_ratio(
            format!("idle RSS, agent alone (RssAnon {})", mib(agent_anon)),
            mib(agent_rss),
            format!("`sleep`: {}", mib(base.rss_kib)),
            (agent_rss as f64, base.rss_kib as f64),
            "-",
        ),
        Figure::with_ratio(
            format!("idle wakeups/s of the tree ({secs:.0} s window, all threads)"),
            format!("{w_tree:.2}/s"),
            format!("`sleep`: {w_base:.2}/s"),
            (w_tree, w_base),
            "<= 0.2/s",
        ),
        Figure::with_ratio(
            "idle wakeups/s of the agent alone",
            format!("{w_agent:.2}/s"),
            format!("`sleep`: {w_base:.2}/s"),
            (w_agent, w_base),
            "-",
        ),
        Figure::with_ratio(
            "idle CPU of the tree",
            format!("{c_tree:.3} %"),
            format!("`sleep`: {c_base:.3} %"),
            (c_tree, c_base),
            "-",
        ),
    ];
    Ok(Idle {
        figures,
        detail: format!(
            "idle tree: {members}; {} process(es) spawned during the window, {} context switches, {} CPU ticks",
            tree.spawned, tree.switches, tree.cpu_ticks
        ),
    })
}

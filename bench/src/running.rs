//! Time to Running through the agent (manifests written into a running, idle agent's
//! deployments dir, until its store shows every one Running: the deployment status
//! `fleet-agent status --json` prints) beside plain `podman run -d` of the same image and
//! command, `PARALLELISM` at a time. The agent is started once and warmed up by one
//! deployment first, so its own start-up is not in the figure.

use std::path::Path;
use std::time::{Duration, Instant};

use fleet_testkit::{podman, PodmanScope, TempRoot};

use crate::agent::{local_config, write_manifest, AgentProc, RUN_LABEL, SERVE};
use crate::report::{ms, Figure};
use crate::{median, BenchError};

/// The agent's default `parallelism`, and the baseline's.
const PARALLELISM: usize = 4;
/// How often the store is read while waiting.
const POLL: Duration = Duration::from_millis(5);

/// `podman run -d` of `n` containers, `PARALLELISM` at a time; removed again afterwards.
fn plain(image: &str, n: usize) -> Result<Duration, BenchError> {
    let scope = PodmanScope::new("bench-plain").map_err(BenchError::kit)?;
    let label = scope.label();
    let run_label = format!("{RUN_LABEL}={}", crate::agent::run_id());
    let names: Vec<String> = (0..n).map(|i| scope.name(&format!("p{i}"))).collect();
    let started = Instant::now();
    std::thread::scope(|s| {
        let per = n.div_ceil(PARALLELISM);
        let handles: Vec<_> = names
            .chunks(per)
            .map(|chunk| {
                let (label, run_label) = (&label, &run_label);
                s.spawn(move || {
                    for name in chunk {
                        podman(&[
                            "run", "-d", "--name", name, "--label", label, "--label", run_label,
                            image, "sh", "-c", SERVE,
                        ])
                        .map_err(BenchError::kit)?;
                    }
                    Ok::<(), BenchError>(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| BenchError::Failed("a podman run thread panicked".into()))?
        })
    })?;
    let took = started.elapsed();
    scope.cleanup().map_err(BenchError::kit)?;
    Ok(took)
}

/// The agent, started once on the local plane, with its scope and root.
struct Bed {
    root: TempRoot,
    agent: AgentProc,
    // Declared last: the scope removes what the agent left once the agent has stopped.
    _scope: PodmanScope,
}

impl Bed {
    fn start(agent: &Path) -> Result<Bed, BenchError> {
        let scope = PodmanScope::new("bench-running").map_err(BenchError::kit)?;
        let root = TempRoot::new().map_err(BenchError::kit)?;
        let cfg = local_config(&root, &scope);
        let agent = AgentProc::spawn(agent, &cfg, &root, None)?;
        Ok(Bed {
            root,
            agent,
            _scope: scope,
        })
    }

    /// Writes `n` manifests at once; the time until all are Running. Then removes them.
    fn deploy(&mut self, image: &str, n: usize, tag: &str) -> Result<Duration, BenchError> {
        let names: Vec<String> = (0..n).map(|i| format!("{tag}{i:02}")).collect();
        let started = Instant::now();
        for name in &names {
            write_manifest(&self.root, name, image)?;
        }
        let at = self
            .agent
            .wait_running(&names, Duration::from_secs(300), POLL)?;
        let took = at.saturating_duration_since(started);
        for name in &names {
            let path = self.root.deployments().join(format!("{name}.toml"));
            std::fs::remove_file(&path).map_err(|e| BenchError::io(&path, e))?;
        }
        self.agent.wait_none(Duration::from_secs(300))?;
        Ok(took)
    }
}

/// 1 deployment (median of `reps`) and 20 deployments (once), each beside plain podman.
pub fn measure(agent: &Path, image: &str, reps: usize) -> Result<Vec<Figure>, BenchError> {
    let mut bed = Bed::start(agent)?;
    // Warm-up: the first deployment after start also waits for the agent's own start-up.
    bed.deploy(image, 1, "warm")?;
    let mut one = Vec::new();
    let mut one_plain = Vec::new();
    for r in 0..reps {
        one_plain.push(plain(image, 1)?);
        one.push(bed.deploy(image, 1, &format!("one{r}-"))?);
    }
    let twenty_plain = plain(image, 20)?;
    let twenty = bed.deploy(image, 20, "many")?;
    let (a, b) = (median(one), median(one_plain));
    Ok(vec![
        Figure::with_ratio(
            format!("1 deployment to Running (median of {reps})"),
            ms(a),
            format!("`podman run -d`: {}", ms(b)),
            (a.as_secs_f64(), b.as_secs_f64()),
            "<= 1.5x",
        ),
        Figure::with_ratio(
            format!("20 deployments to Running (parallelism {PARALLELISM})"),
            ms(twenty),
            format!(
                "20 x `podman run -d`, {PARALLELISM} at a time: {}",
                ms(twenty_plain)
            ),
            (twenty.as_secs_f64(), twenty_plain.as_secs_f64()),
            "<= 1.2x",
        ),
    ])
}

//! Time to Running of one deployment with a health probe beside the same deployment without
//! one, through the same idle agent in the same run (alternating, median of N): what waiting
//! for the first check costs. The probe is an `exec` of `true` with no initial delay, so the
//! figure is the probe machinery (the pass that starts it, one `podman exec`), not a wait the
//! manifest asked for.

use std::path::Path;
use std::time::{Duration, Instant};

use fleet_testkit::{PodmanScope, TempRoot};

use crate::agent::{local_config, manifest, AgentProc};
use crate::report::{ms, Figure};
use crate::{median, BenchError};

/// How often the store is read while waiting.
const POLL: Duration = Duration::from_millis(5);

/// The probe added to [`manifest`].
const PROBE: &str = "[[container.probes]]\nname = \"up\"\nexec = { command = [\"true\"] }\n\
                     periodSecs = 1\n";

/// Writes one manifest (with or without the probe) into the idle agent, waits until it is
/// Running, removes it again; the time to Running.
fn deploy(
    root: &TempRoot,
    agent: &mut AgentProc,
    name: &str,
    image: &str,
    probe: bool,
) -> Result<Duration, BenchError> {
    let path = root.deployments().join(format!("{name}.toml"));
    let mut text = manifest(name, image);
    if probe {
        text.push_str(PROBE);
    }
    let started = Instant::now();
    std::fs::write(&path, text).map_err(|e| BenchError::io(&path, e))?;
    let at = agent.wait_running(&[name.to_owned()], Duration::from_secs(120), POLL)?;
    let took = at.saturating_duration_since(started);
    std::fs::remove_file(&path).map_err(|e| BenchError::io(&path, e))?;
    agent.wait_none(Duration::from_secs(120))?;
    Ok(took)
}

/// 1 deployment with an exec probe to Running beside the same one without, median of `reps`.
pub fn measure(agent_bin: &Path, image: &str, reps: usize) -> Result<Vec<Figure>, BenchError> {
    let scope = PodmanScope::new("bench-probe").map_err(BenchError::kit)?;
    let root = TempRoot::new().map_err(BenchError::kit)?;
    let cfg = local_config(&root, &scope);
    let mut agent = AgentProc::spawn(agent_bin, &cfg, &root, None)?;
    // Warm-up: the first deployment after start also waits for the agent's own start-up.
    deploy(&root, &mut agent, "warm", image, true)?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for r in 0..reps {
        without.push(deploy(
            &root,
            &mut agent,
            &format!("plain{r}"),
            image,
            false,
        )?);
        with.push(deploy(
            &root,
            &mut agent,
            &format!("probed{r}"),
            image,
            true,
        )?);
    }
    drop(agent);
    drop(scope);
    let (a, b) = (median(with), median(without));
    Ok(vec![Figure::with_ratio(
        format!("1 deployment with an exec probe to Running (median of {reps})"),
        ms(a),
        format!("the same without a probe: {}", ms(b)),
        (a.as_secs_f64(), b.as_secs_f64()),
        "-",
    )])
}

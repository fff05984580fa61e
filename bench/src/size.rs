//! Stripped size of the agent binary (a stripped copy when the build left symbols in).

use std::path::Path;
use std::process::Command;

use crate::report::Figure;
use crate::BenchError;

pub fn measure(agent: &Path) -> Result<Figure, BenchError> {
    let dir = tempfile::tempdir().map_err(|e| BenchError::io(Path::new("/tmp"), e))?;
    let copy = dir.path().join("fleet-agent");
    let out = Command::new("strip")
        .arg("-o")
        .arg(&copy)
        .arg(agent)
        .output()
        .map_err(|e| BenchError::io(Path::new("strip"), e))?;
    if !out.status.success() {
        return Err(BenchError::Failed(format!(
            "strip {}: {}",
            agent.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let size = std::fs::metadata(&copy)
        .map_err(|e| BenchError::io(&copy, e))?
        .len();
    let built = std::fs::metadata(agent)
        .map_err(|e| BenchError::io(agent, e))?
        .len();
    let note = if built == size {
        String::new()
    } else {
        format!(", {built} before strip")
    };
    Ok(Figure {
        name: "stripped binary, all modules".into(),
        value: format!("{:.2} MiB ({size} bytes{note})", size as f64 / 1_048_576.0),
        baseline: "-".into(),
        ratio: None,
        target: "<= 6 MiB",
    })
}

//! `fleetctl import`: docker-compose services into fleet/v1 manifests (the conversion is
//! `fleet-compose`; this is the file handling and the report).
//!
//! Exit codes: 0 every selected service converted (keys not carried are warned about on
//! stderr); 1 the file could not be read or parsed, a selected service could not be
//! converted (the others are still written), a manifest could not be written, or with
//! `--strict` any key was not carried (then nothing is printed or written); 2 usage.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use fleet_compose::{Severity, MAX_COMPOSE_BYTES};

/// The options of `fleetctl import`.
#[derive(Debug, clap::Args)]
pub(crate) struct ImportArgs {
    /// The compose file (`-` reads standard input).
    file: PathBuf,
    /// Convert only this service (repeatable); every service when absent.
    #[arg(long = "service", value_name = "NAME")]
    services: Vec<String>,
    /// Write DIR/<deployment>.toml for each service (DIR is created; an existing file is
    /// replaced) instead of printing the manifests.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Fail if any compose key is not carried: exit 1 and print or write nothing.
    #[arg(long)]
    strict: bool,
}

fn read_source(file: &Path) -> Result<(String, String)> {
    let (name, mut reader): (String, Box<dyn std::io::Read>) = if file == Path::new("-") {
        ("<stdin>".into(), Box::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("read {}", file.display()))?;
        (file.display().to_string(), Box::new(f))
    };
    let mut bytes = Vec::new();
    (&mut reader)
        .take(MAX_COMPOSE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("read {name}"))?;
    if bytes.len() > MAX_COMPOSE_BYTES {
        bail!("{name}: larger than {MAX_COMPOSE_BYTES} bytes, the limit of a compose file");
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{name}: not UTF-8 text (first bad byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok((name, text))
}

/// Writes `text` to `dir/name.toml` through a temporary file in `dir`, so the agent's
/// directory watcher never reads half a manifest.
fn write_manifest(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    let tmp = dir.join(format!(".{name}.toml.fleetctl-import"));
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(path)
}

/// `fleetctl import`.
pub(crate) fn import(args: ImportArgs) -> Result<ExitCode> {
    let (name, src) = read_source(&args.file)?;
    let import = fleet_compose::convert(&src, &name).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let known: Vec<&str> = import.services.iter().map(|s| s.name.as_str()).collect();
    for want in &args.services {
        if !known.contains(&want.as_str()) {
            bail!(
                "{name}: no service {want:?}; the file has {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            );
        }
    }
    let selected: Vec<&fleet_compose::Service> = import
        .services
        .iter()
        .filter(|s| args.services.is_empty() || args.services.contains(&s.name))
        .collect();
    let findings = import
        .findings
        .iter()
        .chain(selected.iter().flat_map(|s| s.findings.iter()));
    let mut dropped = 0;
    for f in findings {
        if f.severity == Severity::Unsupported {
            dropped += 1;
        }
        eprintln!("{name}: {f}");
    }
    let mut failed = 0;
    for s in &selected {
        if let Err(e) = &s.result {
            failed += 1;
            eprintln!("{name}: service {}: {e}", s.name);
        }
    }
    if args.strict && dropped > 0 {
        eprintln!("{name}: {dropped} compose key(s) not carried; nothing converted (--strict)");
        return Ok(ExitCode::FAILURE);
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let mut first = true;
    for s in &selected {
        let Ok(c) = &s.result else { continue };
        match &args.out {
            Some(dir) => {
                let path = write_manifest(dir, &c.deployment.name, &c.toml)?;
                println!("{}: wrote {}", s.name, path.display());
            }
            None => {
                if !first {
                    println!();
                }
                print!("{}", c.toml);
            }
        }
        first = false;
    }
    let converted = selected.len() - failed;
    eprintln!(
        "{name}: {converted} of {} service(s) converted, {dropped} key(s) not carried",
        selected.len()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

//! `fleetctl`: the operator's CLI. Today it validates manifests offline; the broker verbs
//! (init, apply, delete, status, devices, cmd, keygen) arrive with the NATS/MQTT control
//! planes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use fleet_contract::Deployment;

/// fleetctl drives a fleet of fleet-agent devices.
///
/// Exit codes: 0 success, 1 the checked input is invalid or an operation failed, 2 usage.
#[derive(Debug, Parser)]
#[command(name = "fleetctl", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Validate deployment manifests (TOML) exactly as the agent will decode them.
    Validate {
        /// Manifest files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a shell completion script.
    Completions {
        /// Target shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Validate { files } => {
            let mut bad = 0;
            for f in &files {
                let result = std::fs::read_to_string(f)
                    .map_err(|e| format!("{}: {e}", f.display()))
                    .and_then(|src| {
                        Deployment::from_toml_str(&src)
                            .map_err(|e| e.with_source(f.display().to_string()).to_string())
                    });
                match result {
                    Ok(d) => println!(
                        "{}: ok (deployment {} revision {})",
                        f.display(),
                        d.name,
                        d.revision
                    ),
                    Err(e) => {
                        bad += 1;
                        eprintln!("{e}");
                    }
                }
            }
            if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "fleetctl",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}

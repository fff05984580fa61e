//! `fleet-clidocs --out DIR`: writes the man pages and shell completions of `fleet-agent` and
//! `fleetctl` (from their clap trees) under `DIR/man` and `DIR/completions`;
//! `packaging/build` puts them into the Debian packages. Generating them here keeps
//! clap_mangen out of the two binaries.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let out = match (args.next(), args.next(), args.next()) {
        (Some(flag), Some(dir), None) if flag == "--out" => PathBuf::from(dir),
        _ => {
            eprintln!("usage: fleet-clidocs --out DIR");
            return ExitCode::from(2);
        }
    };
    let trees = [
        (fleet_agent::cli::Cli::command(), "fleet-agent"),
        (fleetctl::command(), "fleetctl"),
    ];
    for (cmd, bin) in trees {
        if let Err(e) = fleet_clidocs::write_docs(cmd, bin, &out) {
            eprintln!("fleet-clidocs: {bin}: {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

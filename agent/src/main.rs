//! The `fleet-agent` binary: everything lives in the library; this maps results to exit codes.

fn main() -> std::process::ExitCode {
    fleet_agent::cli::main()
}

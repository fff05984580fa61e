//! The `fleetctl` binary; everything is in the library (`fleetctl::main`).

fn main() -> std::process::ExitCode {
    fleetctl::main()
}

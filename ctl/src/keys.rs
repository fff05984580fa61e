//! `fleetctl keygen`: operator and release keys.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context as _, Result};
use base64::Engine;

/// Writes a new private key to `out` (mode 0600) and prints its public key.
pub(crate) fn keygen(out: PathBuf) -> Result<ExitCode> {
    let der = fleet_contract::generate_key_pkcs8().map_err(|e| anyhow!(e))?;
    let text = base64::engine::general_purpose::STANDARD.encode(&der);
    write_private(&out, &text)?;
    let kp = fleet_contract::key_pair_from_b64(&text).map_err(|e| anyhow!(e))?;
    println!("{}", fleet_contract::public_key_b64(&kp));
    eprintln!(
        "private key written to {} (mode 0600); the line above is the public key",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &PathBuf, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "create {} (refusing to overwrite an existing key)",
                path.display()
            )
        })?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(())
}

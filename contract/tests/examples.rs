//! The shipped example manifests must decode exactly as the agent decodes them.
#![allow(clippy::unwrap_used)] // test code

use fleet_contract::Deployment;

#[test]
fn example_manifests_decode() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/deployments");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let src = std::fs::read_to_string(&path).unwrap();
            Deployment::from_toml_str(&src).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 1, "no example manifests in {}", dir.display());
}

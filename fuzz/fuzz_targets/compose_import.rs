//! Compose files (`fleetctl import`, an operator's file from anywhere): any text must convert
//! or be refused, never panic or blow up (aliases, nesting); every manifest handed out must
//! be what the agent's decoder accepts, and every finding must point into the file.
#![no_main]

use fleet_contract::Deployment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(import) = fleet_compose::convert(src, "fuzz.yaml") else {
        return;
    };
    // YAML's line breaks: LF, CR LF and a lone CR.
    let lines = src.replace("\r\n", "\n").matches(['\n', '\r']).count() + 2;
    for f in import.all_findings() {
        assert!(
            f.mark.line >= 1 && f.mark.line <= lines && f.mark.column >= 1,
            "finding outside the file: {f}"
        );
        assert!(!f.path.is_empty() && !f.path.contains('\n'), "{f}");
    }
    for s in &import.services {
        let Ok(c) = &s.result else { continue };
        match Deployment::from_toml_str(&c.toml) {
            Ok(d) => assert_eq!(d, c.deployment, "the text decodes to another manifest"),
            Err(e) => panic!("a converted manifest is refused: {e}\n{}", c.toml),
        }
        assert_eq!(c.deployment.revision, 1);
        let back = Deployment::from_json_slice(&c.deployment.to_json()).expect("JSON form");
        assert_eq!(back, c.deployment);
    }
});

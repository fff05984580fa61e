//! Decode cost of a typical manifest (printed, not asserted): `cargo test -p fleet-contract
//! --release --test decode_cost -- --ignored --nocapture`.
use std::time::Instant;

const MANIFEST: &str = r#"{"apiVersion":"fleet/v1","name":"web","revision":3,"container":{"image":"registry.local:5000/team/web:1.2.3","command":["httpd","-f","-p","8080","-h","/srv/www"],"env":{"PORT":"8080","TOKEN":"s3cr3t","LOG_LEVEL":"info","DATA_DIR":"/data","TZ":"UTC"},"restart":"on-failure"},"lifecycle":{"stopSignal":"SIGINT","gracePeriodSecs":5},"init":[{"name":"prep","command":["mkdir","-p","/data"]},{"name":"seed","image":"localhost/seed:2","command":["cp","-r","/seed","/data"],"timeoutSecs":60}]}"#;

#[test]
#[ignore = "prints timings; run on demand"]
fn decode_cost() {
    let toml = "apiVersion = \"fleet/v1\"\nname = \"web\"\nrevision = 3\n\n[container]\nimage = \"registry.local:5000/team/web:1.2.3\"\ncommand = [\"httpd\", \"-f\", \"-p\", \"8080\"]\nenv = { PORT = \"8080\", TOKEN = \"s3cr3t\", TZ = \"UTC\" }\n\n[lifecycle]\nstopSignal = \"SIGINT\"\n\n[[init]]\nname = \"prep\"\ncommand = [\"mkdir\", \"-p\", \"/data\"]\n";
    for (what, f) in [
        (
            "json",
            &(|| fleet_contract::Deployment::from_json_slice(MANIFEST.as_bytes()).map(drop))
                as &dyn Fn() -> Result<(), fleet_contract::DecodeError>,
        ),
        ("toml", &|| {
            fleet_contract::Deployment::from_toml_str(toml).map(drop)
        }),
    ] {
        f().unwrap();
        let n = 20_000;
        let t = Instant::now();
        for _ in 0..n {
            f().unwrap();
        }
        println!(
            "{what}: {:.1} µs per decode ({} bytes)",
            t.elapsed().as_secs_f64() * 1e6 / f64::from(n),
            if what == "json" {
                MANIFEST.len()
            } else {
                toml.len()
            }
        );
    }
}

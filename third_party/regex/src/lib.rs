//! `regex` for this workspace: a re-export of `regex-lite`, whose API is the same for the
//! patterns and calls async-nats makes (subject, bucket and key validation, the server
//! version, the credentials file): `Regex::new`, `is_match`, `captures`, `captures_iter`.
//! regex-lite matches the same strings for these patterns; `\w` and `\d` are ASCII-only,
//! which is what NATS names and credentials are. It leaves out regex's Unicode tables,
//! literal optimisations and DFA engines, which were a fifth of the agent's code.

pub use regex_lite::*;

#[cfg(test)]
mod tests {
    use super::Regex;

    // The patterns of async-nats 0.46 (client.rs, auth_utils.rs, jetstream/kv,
    // jetstream/object_store, service), with the strings they must and must not match.
    #[test]
    fn async_nats_patterns_match_as_before() {
        let key = Regex::new(r"\A[-/_=\.a-zA-Z0-9]+\z").expect("key");
        assert!(key.is_match("dev-1.desired.web_1=x/y"));
        assert!(!key.is_match("a b") && !key.is_match("") && !key.is_match("a*"));
        let bucket = Regex::new(r"\A[a-zA-Z0-9_-]+\z").expect("bucket");
        assert!(bucket.is_match("fleet_desired-1") && !bucket.is_match("a.b"));
        let version = Regex::new(r"\Av?([0-9]+)\.?([0-9]+)?\.?([0-9]+)?").expect("version");
        let c = version.captures("v2.9.10").expect("captures");
        let parts: Vec<_> = (1..4).map(|i| c.get(i).map(|m| m.as_str())).collect();
        assert_eq!(parts, [Some("2"), Some("9"), Some("10")]);
        let creds = Regex::new(
            r"\s*(?:(?:[-]{3,}.*[-]{3,}\r?\n)([\w\-.=]+)(?:\r?\n[-]{3,}.*[-]{3,}\r?\n))",
        )
        .expect("creds");
        let file = "-----BEGIN NATS USER JWT-----\neyJ0eXAi.eyJqdGk=\n------END NATS USER JWT------\n\n\
                    ************************* IMPORTANT *************************\n\
                    -----BEGIN USER NKEY SEED-----\nSUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY\n\
                    ------END USER NKEY SEED------\n";
        let found: Vec<_> = creds
            .captures_iter(file)
            .filter_map(|c| c.get(1).map(|m| m.as_str().to_owned()))
            .collect();
        assert_eq!(
            found,
            [
                "eyJ0eXAi.eyJqdGk=",
                "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY"
            ]
        );
        let semver = Regex::new(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$")
            .expect("semver");
        assert!(semver.is_match("1.2.3-rc.1+b5") && !semver.is_match("01.2.3"));
    }
}

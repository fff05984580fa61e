//! Seeded random mutations of the table's base documents: truncations, bit flips and hostile
//! tokens spliced in at random places. Deterministic for a seed (`FLEET_BAD_INPUT_SEED`
//! overrides the default), so a failure names a case that can be reproduced.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::table::{Case, Expect, Kind};

pub const DEFAULT_SEED: u64 = 0x1212_2026;

/// The seed in use (printed by every test that uses it).
pub fn seed() -> u64 {
    std::env::var("FLEET_BAD_INPUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

/// Tokens of the classes, spliced into documents at random byte offsets.
const TOKENS: &[&[u8]] = &[
    b"xyz",
    b"\0",
    b"[]",
    b"[",
    b"]",
    b"}{",
    b"\",\"revision\":9223372036854775808,\"",
    b"18446744073709551616",
    b"1e309",
    b"-0",
    b"--privileged",
    b"-h",
    b"../../etc/passwd",
    b"file:///x",
    "\u{200b}".as_bytes(),
    b"\xff\xfe",
    b"\\u0000",
    b"\\ud800",
    b"\"lifecycle\":[],",
    b"\"env\":{\"A\":\"1\",\"A\":\"2\"},",
    b"\n[[container]]\n",
    b"\nlifecycle = []\n",
];

/// `per_base` random mutations of every base document; `bases` is (kind, id prefix, bytes).
pub fn mutations(seed: u64, bases: &[(Kind, &str, Vec<u8>)], per_base: usize) -> Vec<Case> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (kind, prefix, base) in bases {
        let json = !matches!(kind, Kind::ManifestToml | Kind::SystemToml);
        for n in 0..per_base {
            let (what, bytes, expect) = match n % 3 {
                0 => {
                    let cut = rng.gen_range(0..base.len());
                    // Every strict prefix of a JSON object is incomplete; TOML may stay valid.
                    let expect = if json {
                        Expect::Refused
                    } else {
                        Expect::Either
                    };
                    (
                        format!("truncated to {cut} of {} bytes", base.len()),
                        base[..cut].to_vec(),
                        expect,
                    )
                }
                1 => {
                    let mut b = base.clone();
                    let flips = rng.gen_range(1..=3);
                    let mut at = Vec::new();
                    for _ in 0..flips {
                        let i = rng.gen_range(0..b.len());
                        let bit = rng.gen_range(0..8);
                        b[i] ^= 1 << bit;
                        at.push(format!("{i}.{bit}"));
                    }
                    (
                        format!("bits flipped at {}", at.join(", ")),
                        b,
                        Expect::Either,
                    )
                }
                _ => {
                    let token = TOKENS[rng.gen_range(0..TOKENS.len())];
                    let i = rng.gen_range(0..=base.len());
                    let b = [&base[..i], token, &base[i..]].concat();
                    (
                        format!("{:?} spliced in at {i}", String::from_utf8_lossy(token)),
                        b,
                        Expect::Either,
                    )
                }
            };
            out.push(Case {
                id: format!("{prefix}-rnd-{n:03}"),
                class: "random mutation (seeded)",
                what,
                kind: *kind,
                name: "hostile".into(),
                bytes,
                expect,
            });
        }
    }
    out
}

//! `initramfs/decision-table` is the one specification of the initramfs decision
//! (CONTRACT.md §6). Every combination of inputs is checked against the Rust `decide()` and
//! against the shell `fleet_decide` of `initramfs/lib/fleet-bootstate.sh` (all rows in one
//! `sh` process). The shell half fails, not skips, while that file is missing.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;

use fleet_mod_system_upgrade::bootstate::State;
use fleet_mod_system_upgrade::decide::{decide, Action, Reason};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One table row: patterns (None = `*`) and the outcome.
struct Row {
    line: usize,
    state: Option<String>,
    trial: Option<bool>,
    over: Option<bool>,
    snapshot: Option<bool>,
    action: Action,
    reason: Reason,
}

const STATES: [&str; 9] = [
    "none",
    "idle",
    "upgrading",
    "trial",
    "committing",
    "committed",
    "rollback",
    "rolled-back",
    "failed",
];

fn table() -> Vec<Row> {
    let path = repo().join("initramfs/decision-table");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let yes_no = |s: &str, line: usize| match s {
        "*" => None,
        "yes" => Some(true),
        "no" => Some(false),
        other => panic!("decision-table line {line}: {other:?} is not yes/no/*"),
    };
    let mut rows = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(
            f.len(),
            6,
            "decision-table line {line}: six columns: {raw:?}"
        );
        let state = (f[0] != "*").then(|| f[0].to_owned());
        if let Some(s) = &state {
            assert!(
                STATES.contains(&s.as_str()),
                "decision-table line {line}: unknown state {s:?}"
            );
        }
        rows.push(Row {
            line,
            state,
            trial: yes_no(f[1], line),
            over: yes_no(f[2], line),
            snapshot: yes_no(f[3], line),
            action: Action::parse(f[4])
                .unwrap_or_else(|| panic!("decision-table line {line}: unknown action {:?}", f[4])),
            reason: Reason::parse(f[5])
                .unwrap_or_else(|| panic!("decision-table line {line}: unknown reason {:?}", f[5])),
        });
    }
    rows
}

/// Every input combination with the table's answer (first matching row).
fn cases() -> Vec<(String, bool, bool, bool, Action, Reason, usize)> {
    let rows = table();
    let mut out = Vec::new();
    for state in STATES {
        for trial in [false, true] {
            for over in [false, true] {
                for snapshot in [false, true] {
                    let row = rows
                        .iter()
                        .find(|r| {
                            r.state.as_deref().is_none_or(|s| s == state)
                                && r.trial.is_none_or(|t| t == trial)
                                && r.over.is_none_or(|o| o == over)
                                && r.snapshot.is_none_or(|n| n == snapshot)
                        })
                        .unwrap_or_else(|| {
                            panic!(
                                "decision-table has no row for {state} {trial} {over} {snapshot}"
                            )
                        });
                    out.push((
                        state.to_owned(),
                        trial,
                        over,
                        snapshot,
                        row.action,
                        row.reason,
                        row.line,
                    ));
                }
            }
        }
    }
    out
}

fn yn(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

#[test]
fn rust_decide_matches_every_row_of_the_table() {
    let cases = cases();
    assert_eq!(cases.len(), 72);
    for (state, trial, over, snapshot, action, reason, line) in cases {
        let st = if state == "none" {
            None
        } else {
            Some(State::parse(&state).unwrap())
        };
        assert_eq!(
            decide(st, trial, over, snapshot),
            (action, reason),
            "decide({state}, trial={trial}, over={over}, snapshot={snapshot}) vs decision-table line {line}"
        );
    }
}

#[test]
fn every_row_of_the_table_is_reachable() {
    let cases = cases();
    for row in table() {
        assert!(
            cases.iter().any(|c| c.6 == row.line),
            "decision-table line {} is shadowed by earlier rows",
            row.line
        );
    }
}

#[test]
fn shell_fleet_decide_matches_every_row_of_the_table() {
    let lib = repo().join("initramfs/lib/fleet-bootstate.sh");
    assert!(
        lib.is_file(),
        "{} is missing: the shell half of the OS upgrade (fleet_decide) is not on this branch yet; \
         this test must fail until it is (it comes with the initramfs side of issue #7)",
        lib.display()
    );
    let cases = cases();
    let mut script = format!(". '{}'\n", lib.display());
    for (state, trial, over, snapshot, ..) in &cases {
        script.push_str(&format!(
            "r=$(fleet_decide {state} {} {} {}); echo \"$r\"\n",
            yn(*trial),
            yn(*over),
            yn(*snapshot)
        ));
    }
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sh failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), cases.len(), "one line per case:\n{stdout}");
    for (got, (state, trial, over, snapshot, action, reason, line)) in lines.iter().zip(&cases) {
        assert_eq!(
            got.split_whitespace().collect::<Vec<_>>(),
            [action.as_str(), reason.as_str()],
            "fleet_decide {state} {} {} {} vs decision-table line {line}",
            yn(*trial),
            yn(*over),
            yn(*snapshot)
        );
    }
}

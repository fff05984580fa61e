//! Fleet mode: many hosts with bounded parallelism, a live progress line per host (redrawn on
//! a terminal, one line per state change otherwise, on stderr) and the summary table.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use futures::StreamExt;

use super::plan::HostLine;
use super::{provision_one, HostResult, Report, Shared};

/// The progress lines of every host.
struct Board {
    tty: bool,
    /// Host and its latest state, in hosts-file order.
    rows: Mutex<(Vec<(String, String)>, usize)>,
}

impl Board {
    fn new(hosts: &[HostLine]) -> Self {
        let rows = hosts
            .iter()
            .map(|h| (h.target.to_string(), "queued".to_owned()))
            .collect();
        Board {
            tty: std::io::stderr().is_terminal(),
            rows: Mutex::new((rows, 0)),
        }
    }

    fn set(&self, i: usize, state: &str) {
        let Ok(mut g) = self.rows.lock() else {
            return;
        };
        let (rows, drawn) = &mut *g;
        let Some(row) = rows.get_mut(i) else {
            return;
        };
        row.1 = state.to_owned();
        let mut err = std::io::stderr().lock();
        if self.tty {
            let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
            if *drawn > 0 {
                let _ = write!(err, "\x1b[{}A", *drawn);
            }
            for (host, st) in rows.iter() {
                let _ = writeln!(err, "\x1b[2K{host:<width$}  {st}");
            }
            *drawn = rows.len();
        } else {
            let _ = writeln!(err, "{}: {state}", row.0);
        }
    }
}

struct Row<'a> {
    board: &'a Board,
    i: usize,
}

impl Report for Row<'_> {
    fn state(&self, state: &str) {
        self.board.set(self.i, state);
    }
}

/// Provisions every host, at most `--parallel` at once; results in hosts-file order.
pub(crate) async fn run_all(shared: &Shared, hosts: Vec<HostLine>) -> Vec<HostResult> {
    let board = Board::new(&hosts);
    let parallel = usize::from(shared.args.parallel).max(1);
    let mut results: Vec<(usize, HostResult)> =
        futures::stream::iter(hosts.into_iter().enumerate())
            .map(|(i, line)| {
                let board = &board;
                async move {
                    let row = Row { board, i };
                    (i, provision_one(shared, line, &row).await)
                }
            })
            .buffer_unordered(parallel)
            .collect()
            .await;
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// The summary: host, arch, result, seconds; then each failure's message.
pub(crate) fn summary_table(results: &[HostResult]) -> String {
    use std::fmt::Write as _;
    let hw = results
        .iter()
        .map(|r| r.host.len())
        .chain(std::iter::once(4))
        .max()
        .unwrap_or(4);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<hw$}  {:<8}  {:<10}  {:>7}",
        "HOST", "ARCH", "RESULT", "SECONDS"
    );
    for r in results {
        let _ = writeln!(
            out,
            "{:<hw$}  {:<8}  {:<10}  {:>7.1}",
            r.host,
            r.arch.as_deref().unwrap_or("-"),
            r.result,
            r.seconds
        );
    }
    let failed: Vec<&HostResult> = results.iter().filter(|r| r.result == "failed").collect();
    let _ = writeln!(
        out,
        "{} host(s): {} ok, {} failed",
        results.len(),
        results.len() - failed.len(),
        failed.len()
    );
    for r in failed {
        let _ = writeln!(out, "  {}", r.error.as_deref().unwrap_or("failed"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_every_host_and_the_failures() {
        let ok = HostResult {
            host: "pi@10.0.0.7".into(),
            arch: Some("arm64".into()),
            device: Some("pi-7".into()),
            result: "no change",
            changes: vec![],
            error: None,
            heartbeat: None,
            seconds: 3.25,
        };
        let bad = HostResult {
            host: "pi@10.0.0.8:2222".into(),
            arch: None,
            result: "failed",
            error: Some("pi@10.0.0.8:2222: unreachable: connection refused".into()),
            ..ok.clone()
        };
        let t = summary_table(&[ok, bad]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("HOST"), "{t}");
        assert!(
            lines[1].contains("arm64") && lines[1].contains("no change"),
            "{t}"
        );
        assert!(
            lines[2].contains("failed") && lines[2].contains(" - "),
            "{t}"
        );
        assert_eq!(lines[3], "2 host(s): 1 ok, 1 failed");
        assert!(lines[4].contains("connection refused"), "{t}");
    }
}

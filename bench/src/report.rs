//! One line per figure, `figure | value | baseline | ratio`, or the same as a Markdown table
//! with the target beside each (the README's footprint section).

use std::fmt::Write as _;

/// One measured figure beside its raw baseline from the same run.
pub struct Figure {
    /// What was measured, e.g. `exec -> READY=1 (median of 10)`.
    pub name: String,
    /// The measured value, with its unit.
    pub value: String,
    /// The baseline and its value, e.g. `` `true`: 1.0 ms ``; `-` when there is none.
    pub baseline: String,
    /// value / baseline, when both are numbers and the baseline is not zero.
    pub ratio: Option<f64>,
    /// The target from the issue, e.g. `<= 10 ms`.
    pub target: &'static str,
}

impl Figure {
    /// A figure with a numeric baseline; the ratio is `value / base` (none when `base` is 0).
    pub fn with_ratio(
        name: impl Into<String>,
        value: String,
        baseline: String,
        (v, base): (f64, f64),
        target: &'static str,
    ) -> Figure {
        Figure {
            name: name.into(),
            value,
            baseline,
            ratio: (base > 0.0).then(|| v / base),
            target,
        }
    }

    fn ratio_text(&self) -> String {
        self.ratio
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"))
    }
}

/// `figure | value | baseline | ratio`, one line per figure.
pub fn lines(figures: &[Figure]) -> String {
    let mut out = String::new();
    for f in figures {
        let _ = writeln!(
            out,
            "{} | {} | {} | {}",
            f.name,
            f.value,
            f.baseline,
            f.ratio_text()
        );
    }
    out
}

/// The Markdown table, headed by where and when it was measured.
pub fn markdown(figures: &[Figure], commit: &str, date: &str, machine: &str) -> String {
    let mut out = format!(
        "Measured by `scripts/bench --markdown` at commit `{commit}` on {date} ({machine}).\n\n\
         | figure | value | baseline | ratio | target |\n|---|---|---|---|---|\n"
    );
    for f in figures {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            f.name,
            f.value,
            f.baseline,
            f.ratio_text(),
            f.target
        );
    }
    out
}

/// Mebibytes from kibibytes, one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Milliseconds, with more decimals for short times.
pub fn ms(d: std::time::Duration) -> String {
    let m = d.as_secs_f64() * 1e3;
    if m < 10.0 {
        format!("{m:.2} ms")
    } else {
        format!("{m:.1} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_baseline_has_no_ratio() {
        let f = Figure::with_ratio("w", "1".into(), "0".into(), (1.0, 0.0), "t");
        assert_eq!(lines(&[f]), "w | 1 | 0 | -\n");
    }

    #[test]
    fn markdown_carries_commit_date_and_target() {
        let f = Figure::with_ratio(
            "x",
            "2 ms".into(),
            "`true`: 1 ms".into(),
            (2.0, 1.0),
            "<= 3",
        );
        let md = markdown(&[f], "abc1234", "2026-12-01", "2 cores");
        assert!(md.contains("`abc1234` on 2026-12-01"), "{md}");
        assert!(
            md.contains("| x | 2 ms | `true`: 1 ms | 2.00x | <= 3 |"),
            "{md}"
        );
    }
}

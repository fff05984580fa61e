//! What the probes of one container start say, as a pure state machine: fed each check's
//! outcome, it gives the deployment's verdict (`Starting` until every probe passed once, then
//! `Running`; a probe failing `failureThreshold` times in a row fails it), the probe the
//! status carries, and whether anything worth publishing changed. No I/O, no clock.

use fleet_contract::{Probe, ProbeStatus};

/// Longest probe result kept in a status (bytes).
pub const MAX_RESULT: usize = 200;

/// What the probes say about the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Probe `.0` (the first in manifest order) has not passed yet.
    Starting(usize),
    /// Every probe passed since the container started, none failed past its threshold.
    Running,
    /// Probe `.0` never passed and failed its threshold in a row.
    NeverPassed(usize),
    /// Probe `.0` had passed, then failed its threshold in a row.
    Unhealthy(usize),
}

impl Verdict {
    /// Has a probe failed past its threshold (the container is to be restarted)?
    pub fn failed(self) -> Option<usize> {
        match self {
            Verdict::NeverPassed(i) | Verdict::Unhealthy(i) => Some(i),
            Verdict::Starting(_) | Verdict::Running => None,
        }
    }
}

/// The last check of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Last {
    passing: bool,
    result: String,
    checked_at: u64,
}

#[derive(Debug, Clone)]
struct Slot {
    name: String,
    threshold: u32,
    ever_passed: bool,
    failures: u32,
    last: Option<Last>,
}

/// The probes of one container start.
#[derive(Debug, Clone)]
pub struct Machine {
    slots: Vec<Slot>,
}

/// What is published: the verdict and (probe, passing, failures in a row) of the probe the
/// status carries. A new check that changes none of these is not published.
type Key = (Verdict, Option<(usize, bool, u32)>);

impl Machine {
    /// A machine for `probes`, none checked yet.
    pub fn new(probes: &[Probe]) -> Self {
        Self {
            slots: probes
                .iter()
                .map(|p| Slot {
                    name: p.display_name().to_owned(),
                    threshold: p.failure_threshold.max(1),
                    ever_passed: false,
                    failures: 0,
                    last: None,
                })
                .collect(),
        }
    }

    /// Records a check of probe `i` at unix second `now`; true when what is published
    /// changed (see [`Key`]). An index out of range changes nothing.
    pub fn record(&mut self, i: usize, passed: bool, result: &str, now: u64) -> bool {
        let before = self.key();
        let Some(s) = self.slots.get_mut(i) else {
            return false;
        };
        if passed {
            s.ever_passed = true;
            s.failures = 0;
        } else {
            s.failures = s.failures.saturating_add(1);
        }
        s.last = Some(Last {
            passing: passed,
            result: cap(result).to_owned(),
            checked_at: now,
        });
        self.key() != before
    }

    /// The verdict: a probe past its threshold first, then one that has not passed yet.
    pub fn verdict(&self) -> Verdict {
        if let Some(i) = self.slots.iter().position(|s| s.failures >= s.threshold) {
            return if self.slots[i].ever_passed {
                Verdict::Unhealthy(i)
            } else {
                Verdict::NeverPassed(i)
            };
        }
        match self.slots.iter().position(|s| !s.ever_passed) {
            Some(i) => Verdict::Starting(i),
            None => Verdict::Running,
        }
    }

    /// The probe the status carries: the one that failed, else the one waited for, else the
    /// first one failing (below its threshold), else the first.
    pub fn reported(&self) -> Option<usize> {
        match self.verdict() {
            Verdict::NeverPassed(i) | Verdict::Unhealthy(i) | Verdict::Starting(i) => Some(i),
            Verdict::Running => Some(self.slots.iter().position(|s| s.failures > 0).unwrap_or(0))
                .filter(|_| !self.slots.is_empty()),
        }
    }

    /// The reported probe's name.
    pub fn name(&self, i: usize) -> &str {
        self.slots.get(i).map_or("?", |s| s.name.as_str())
    }

    /// The status of the reported probe; `None` before its first check.
    pub fn status(&self) -> Option<ProbeStatus> {
        let s = self.slots.get(self.reported()?)?;
        let last = s.last.as_ref()?;
        Some(ProbeStatus {
            name: s.name.clone(),
            passing: last.passing,
            result: last.result.clone(),
            consecutive_failures: s.failures,
            checked_at: last.checked_at,
        })
    }

    /// Probe `i` in words: `not checked yet`, `passing: HTTP 200`, `failing 2x: HTTP 503`.
    pub fn summary(&self, i: usize) -> String {
        let Some(s) = self.slots.get(i) else {
            return "no such probe".into();
        };
        match &s.last {
            None => "not checked yet".into(),
            Some(l) if l.passing => format!("passing: {}", l.result),
            Some(l) => format!("failing {}x: {}", s.failures, l.result),
        }
    }

    fn key(&self) -> Key {
        let reported = self.reported().and_then(|i| {
            let s = self.slots.get(i)?;
            let passing = s.last.as_ref().is_some_and(|l| l.passing);
            Some((i, passing, s.failures))
        });
        (self.verdict(), reported)
    }
}

/// `text` cut to at most [`MAX_RESULT`] bytes, at a character boundary.
pub fn cap(text: &str) -> &str {
    if text.len() <= MAX_RESULT {
        return text;
    }
    let mut end = MAX_RESULT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(name: &str, threshold: u32) -> Probe {
        let mut p: Probe = serde_json::from_value(serde_json::json!({
            "name": name, "exec": { "command": ["true"] }
        }))
        .unwrap();
        p.failure_threshold = threshold;
        p
    }

    #[test]
    fn starting_until_every_probe_passed_then_running() {
        let mut m = Machine::new(&[probe("a", 3), probe("b", 3)]);
        assert_eq!(m.verdict(), Verdict::Starting(0));
        assert_eq!(m.status(), None, "nothing checked yet");
        assert_eq!(m.summary(0), "not checked yet");
        assert!(m.record(0, false, "connection refused", 10));
        assert_eq!(m.verdict(), Verdict::Starting(0));
        assert_eq!(m.summary(0), "failing 1x: connection refused");
        assert!(m.record(0, true, "HTTP 200", 11));
        assert_eq!(m.verdict(), Verdict::Starting(1), "b has not passed yet");
        assert!(m.record(1, true, "exit 0", 11));
        assert_eq!(m.verdict(), Verdict::Running);
        let s = m.status().unwrap();
        assert_eq!(
            (s.name.as_str(), s.passing, s.consecutive_failures),
            ("a", true, 0)
        );
        assert_eq!(s.result, "HTTP 200");
        // The same outcome again publishes nothing.
        assert!(!m.record(0, true, "HTTP 200", 12));
        assert!(!m.record(1, true, "exit 0", 12));
        assert_eq!(
            m.status().unwrap().checked_at,
            12,
            "the last check is still kept"
        );
    }

    #[test]
    fn a_probe_that_never_passes_fails_at_its_threshold() {
        let mut m = Machine::new(&[probe("web", 3)]);
        for n in 1..=2 {
            assert!(m.record(0, false, "HTTP 503", n), "each failure counts");
            assert_eq!(m.verdict(), Verdict::Starting(0));
        }
        assert!(m.record(0, false, "HTTP 503", 3));
        assert_eq!(m.verdict(), Verdict::NeverPassed(0));
        assert_eq!(m.verdict().failed(), Some(0));
        let s = m.status().unwrap();
        assert_eq!((s.passing, s.consecutive_failures), (false, 3));
        assert_eq!(m.name(0), "web");
    }

    #[test]
    fn a_probe_failing_after_it_passed_makes_it_unhealthy_and_a_pass_resets_the_count() {
        let mut m = Machine::new(&[probe("a", 2), probe("b", 2)]);
        m.record(0, true, "ok", 1);
        m.record(1, true, "ok", 1);
        assert!(m.record(1, false, "exit 1", 2));
        assert_eq!(m.verdict(), Verdict::Running, "below the threshold");
        assert_eq!(
            m.reported(),
            Some(1),
            "the failing probe is the one reported"
        );
        assert!(m.record(1, true, "exit 0", 3), "passing again is published");
        assert_eq!(m.status().unwrap().consecutive_failures, 0);
        assert_eq!(m.reported(), Some(0));
        m.record(1, false, "exit 1", 4);
        assert!(m.record(1, false, "exit 1", 5));
        assert_eq!(m.verdict(), Verdict::Unhealthy(1));
        assert_eq!(m.summary(1), "failing 2x: exit 1");
    }

    #[test]
    fn results_are_capped_and_bad_indices_ignored() {
        let mut m = Machine::new(&[probe("a", 1)]);
        assert!(!m.record(7, false, "x", 1));
        let long = "é".repeat(300);
        m.record(0, false, &long, 1);
        let r = m.status().unwrap().result;
        assert!(
            r.len() <= MAX_RESULT && r.len() >= MAX_RESULT - 1,
            "{}",
            r.len()
        );
        assert_eq!(m.verdict(), Verdict::NeverPassed(0), "threshold 1");
        assert_eq!(Machine::new(&[]).verdict(), Verdict::Running);
        assert_eq!(Machine::new(&[]).reported(), None);
    }
}

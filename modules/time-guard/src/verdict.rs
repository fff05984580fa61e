//! What a round of SNTP answers means for the agent: trusted, skewed past the limit, or
//! unverified (nobody answered: an offline Pi without an RTC must still run its containers).

use crate::client::Round;

/// The clock's standing after a check.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// |offset| within the limit.
    Trusted { offset_secs: f64 },
    /// |offset| past the limit.
    Skewed { offset_secs: f64, limit_secs: f64 },
    /// No server answered validly; `why` lists each one's failure.
    Unverified { why: String },
}

impl Verdict {
    /// Judges a round against `limit_secs`.
    pub fn of(round: &Round, limit_secs: f64) -> Verdict {
        match round.offset_secs() {
            Some(o) if o.abs() > limit_secs => Verdict::Skewed {
                offset_secs: o,
                limit_secs,
            },
            Some(o) => Verdict::Trusted { offset_secs: o },
            None => Verdict::Unverified {
                why: if round.failures.is_empty() {
                    "no SNTP server configured".to_owned()
                } else {
                    round
                        .failures
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                },
            },
        }
    }

    /// The refusal message (issue 16's exact wording), for a skewed clock.
    pub fn refusal(&self) -> Option<String> {
        match self {
            Verdict::Skewed {
                offset_secs,
                limit_secs,
            } => Some(format!(
                "clock skew {}s exceeds {}s: signature and token validation would fail; \
                 enable systemd-timesyncd or chrony",
                offset_secs.abs().round() as u64,
                limit_secs.round() as u64
            )),
            _ => None,
        }
    }

    /// Whether time-bound work (command expiry, secret fetch) may go ahead.
    pub fn is_trusted(&self) -> bool {
        matches!(self, Verdict::Trusted { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sntp::Sample;

    fn round(offsets: &[f64]) -> Round {
        Round {
            samples: offsets
                .iter()
                .map(|&o| {
                    (
                        "s".to_owned(),
                        Sample {
                            offset_secs: o,
                            delay_secs: 0.01,
                            stratum: 2,
                        },
                    )
                })
                .collect(),
            failures: Vec::new(),
        }
    }

    #[test]
    fn within_past_and_without_answers() {
        assert!(Verdict::of(&round(&[0.2]), 30.0).is_trusted());
        assert!(Verdict::of(&round(&[-29.9]), 30.0).is_trusted());
        let v = Verdict::of(&round(&[45.2]), 30.0);
        assert_eq!(
            v.refusal().unwrap(),
            "clock skew 45s exceeds 30s: signature and token validation would fail; \
             enable systemd-timesyncd or chrony"
        );
        let v = Verdict::of(&round(&[-300.0]), 30.0);
        assert!(v
            .refusal()
            .unwrap()
            .starts_with("clock skew 300s exceeds 30s"));
        let v = Verdict::of(&Round::default(), 30.0);
        assert!(
            matches!(v, Verdict::Unverified { .. }) && !v.is_trusted() && v.refusal().is_none()
        );
    }
}

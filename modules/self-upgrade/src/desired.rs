//! The desired-state document `<device>.agent`: when it asks for an upgrade, and when it is
//! reported and not acted on.

use fleet_contract::quote;
use fleet_module_api::{Context, DesiredAgent};

use crate::{Layout, Outcome, Request, SelfUpgrade};

/// How a refusal of the desired document starts; earlier agents recorded it as a revert.
const REFUSED: &str = "desired agent release refused";

impl SelfUpgrade {
    /// A desired-state document that is not acted on (invalid, a downgrade, an unknown release
    /// key, a bad signature): a refusal, not an outcome of an upgrade. It is shown in status
    /// (`details.self-upgrade.refused`) and logged once per refusal; nothing is recorded on the
    /// state volume and the phase stays as it is, so the next document (the corrected one) is
    /// looked at afresh.
    fn refuse_desired(&self, ctx: &Context, reason: String) -> Option<Request> {
        let reason = fleet_contract::cap_message(&reason);
        let changed = {
            let mut s = self.lock();
            let changed = s.refused.as_deref() != Some(reason.as_str());
            s.refused = Some(reason.clone());
            s.message = reason.clone();
            changed
        };
        if changed {
            tracing::warn!(%reason, "desired agent release refused");
            self.report(ctx);
        }
        None
    }

    /// The desired state no longer holds a refused document: the refusal leaves the status.
    fn clear_refusal(&self, ctx: &Context) {
        if self.lock().refused.take().is_some() {
            self.report(ctx);
        }
    }

    /// The upgrade the desired state `<device>.agent` asks for now, if any. Level-triggered:
    /// nothing when the running version is the desired one, during probation, or when this
    /// very version was already reverted (it is retried only after the desired state names
    /// another version). A document that cannot be used is refused and reported; it is looked
    /// at again when it changes.
    pub(crate) fn desired_request(
        &self,
        ctx: &Context,
        layout: &Layout,
        running: &str,
        agent: Option<&DesiredAgent>,
    ) -> Option<Request> {
        let Some(agent) = agent else {
            self.clear_refusal(ctx);
            return None;
        };
        let rel = match agent {
            DesiredAgent::Valid(rel) => rel,
            DesiredAgent::Invalid { source_name, error } => {
                return self.refuse_desired(
                    ctx,
                    format!(
                        "desired agent release {} is invalid: {error}",
                        quote(source_name)
                    ),
                );
            }
        };
        if rel.version == running || layout.read_probation().ok().flatten().is_some() {
            self.clear_refusal(ctx);
            return None;
        }
        if let Ok(Some(Outcome::Reverted { to, reason, .. })) = layout.read_outcome() {
            // An earlier agent recorded a refusal as a revert; that record is no outcome of
            // an upgrade and does not block the version.
            if to == rel.version && !is_refusal_record(&reason) {
                self.clear_refusal(ctx);
                tracing::info!(version = %rel.version, "desired agent version was reverted before; not retried");
                return None;
            }
        }
        if !self.cfg.allow_desired_downgrade {
            if let Err(why) = forward_only(running, &rel.version) {
                return self
                    .refuse_desired(ctx, format!("{REFUSED} {}: {why}", quote(&rel.version)));
            }
        }
        match self.check_request(&rel.command_args()) {
            Ok(req) => {
                tracing::info!(version = %rel.version, "desired state asks for another agent version");
                self.clear_refusal(ctx);
                Some(req)
            }
            Err(e) => self.refuse_desired(ctx, format!("{REFUSED} {}: {e}", quote(&rel.version))),
        }
    }
}

/// A `Reverted` record an earlier agent wrote for a refused desired document (not an
/// outcome of an upgrade).
pub(crate) fn is_refusal_record(reason: &str) -> bool {
    reason.starts_with(REFUSED)
}

/// Desired state may only move the agent forward: `target` must be a semantic version newer
/// than `running`.
pub(crate) fn forward_only(running: &str, target: &str) -> Result<(), String> {
    const HOW: &str = "the desired state only moves the agent forward; downgrade with the signed \
                       agent-upgrade command (or set allow_desired_downgrade)";
    let parse = |v: &str| {
        semver::Version::parse(v)
            .map_err(|e| format!("{} is not a semantic version ({e}); {HOW}", quote(v)))
    };
    let (from, to) = (parse(running)?, parse(target)?);
    if to <= from {
        return Err(format!(
            "{running} -> {} is a downgrade; {HOW}",
            quote(target)
        ));
    }
    Ok(())
}

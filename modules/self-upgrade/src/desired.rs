//! The desired-state document `<device>.agent`: when it asks for an upgrade, and when it is
//! reported and not acted on.

use fleet_module_api::{Context, DesiredAgent};

use crate::{Layout, Outcome, Phase, Request, SelfUpgrade};

impl SelfUpgrade {
    /// A desired-state document that is not acted on: logged and shown in status, once per
    /// change of the document; the phase stays as it is.
    fn ignore_desired(&self, ctx: &Context, msg: String) -> Option<Request> {
        tracing::warn!(%msg);
        self.lock().message = msg;
        self.report(ctx);
        None
    }

    /// The upgrade the desired state `<device>.agent` asks for now, if any. Level-triggered:
    /// nothing when the running version is the desired one, during probation, or when this
    /// very version was already reverted (it is retried only after the desired state names
    /// another version); a document that cannot be used is reported and not retried.
    pub(crate) fn desired_request(
        &self,
        ctx: &Context,
        layout: &Layout,
        running: &str,
        agent: Option<&DesiredAgent>,
    ) -> Option<Request> {
        let rel = match agent? {
            DesiredAgent::Valid(rel) => rel,
            DesiredAgent::Invalid { source_name, error } => {
                return self.ignore_desired(
                    ctx,
                    format!("desired agent release {source_name} is invalid: {error}"),
                );
            }
        };
        if rel.version == running || layout.read_probation().ok().flatten().is_some() {
            return None;
        }
        if let Ok(Some(Outcome::Reverted { to, .. })) = layout.read_outcome() {
            if to == rel.version {
                tracing::info!(version = %rel.version, "desired agent version was reverted before; not retried");
                return None;
            }
        }
        if !self.cfg.allow_desired_downgrade {
            if let Err(why) = forward_only(running, &rel.version) {
                return self.ignore_desired(
                    ctx,
                    format!("desired agent release {} refused: {why}", rel.version),
                );
            }
        }
        match self.check_request(&rel.command_args()) {
            Ok(req) => {
                tracing::info!(version = %rel.version, "desired state asks for another agent version");
                Some(req)
            }
            Err(e) => {
                let reason = format!("desired agent release refused: {e}");
                tracing::warn!(%reason);
                if let Ok((_, from)) = layout.check() {
                    let _ = layout.revert(&from, &rel.version, &reason, ctx.clock.unix_secs());
                }
                self.set(ctx, Phase::Reverted, Some(&rel.version), reason);
                None
            }
        }
    }
}

/// Desired state may only move the agent forward: `target` must be a semantic version newer
/// than `running`.
pub(crate) fn forward_only(running: &str, target: &str) -> Result<(), String> {
    const HOW: &str = "the desired state only moves the agent forward; downgrade with the signed \
                       agent-upgrade command (or set allow_desired_downgrade)";
    let parse = |v: &str| {
        semver::Version::parse(v)
            .map_err(|e| format!("{v:?} is not a semantic version ({e}); {HOW}"))
    };
    let (from, to) = (parse(running)?, parse(target)?);
    if to <= from {
        return Err(format!("{running} -> {target} is a downgrade; {HOW}"));
    }
    Ok(())
}

//! Routes an authorised command to the one module serving its verb.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use fleet_module_api::{Command, CommandError, Context, Reply};
use futures::FutureExt;

use crate::supervisor::{panic_message, Slot};

/// Verbs the runtime answers itself.
pub(crate) const BUILTIN_VERBS: &[&str] = &["ping", "status", "reconcile-now"];

/// Verb → module, built once at start; duplicate verbs are a wiring error.
pub(crate) struct Router {
    routes: BTreeMap<&'static str, (Arc<Slot>, Context)>,
}

impl Router {
    pub fn new(slots: &[(Arc<Slot>, Context)]) -> Result<Self, String> {
        let mut routes: BTreeMap<&'static str, (Arc<Slot>, Context)> = BTreeMap::new();
        for (slot, ctx) in slots {
            for &verb in slot.module.verbs() {
                if BUILTIN_VERBS.contains(&verb) {
                    return Err(format!(
                        "module {} claims the built-in verb {verb:?}",
                        slot.name()
                    ));
                }
                if let Some((other, _)) = routes.get(verb) {
                    return Err(format!(
                        "verb {verb:?} is served by both {} and {}",
                        other.name(),
                        slot.name()
                    ));
                }
                routes.insert(verb, (slot.clone(), ctx.clone()));
            }
        }
        Ok(Self { routes })
    }

    /// Every routable verb, built-ins included.
    pub fn verbs(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = BUILTIN_VERBS.to_vec();
        v.extend(self.routes.keys().copied());
        v
    }

    /// Dispatches a module verb. A module that is unavailable or not running refuses; a panic
    /// inside `handle` becomes a `Failed` reply.
    pub async fn dispatch(&self, cmd: Command) -> Result<Reply, CommandError> {
        let Some((slot, ctx)) = self.routes.get(cmd.verb.as_str()) else {
            return Err(CommandError::Unsupported { verb: cmd.verb });
        };
        let state = slot.state();
        if let Some(probe) = &state.probe {
            if !probe.is_available() {
                return Err(CommandError::Unavailable(format!(
                    "module {} is unavailable on this device",
                    slot.name()
                )));
            }
        }
        match AssertUnwindSafe(slot.module.handle(cmd, ctx))
            .catch_unwind()
            .await
        {
            Ok(r) => r,
            Err(p) => Err(CommandError::Failed(format!(
                "module {} panicked: {}",
                slot.name(),
                panic_message(p.as_ref())
            ))),
        }
    }
}

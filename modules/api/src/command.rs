use serde::{Deserialize, Serialize};

/// An authorised command routed to a module (signature and idempotency already checked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Idempotency key chosen by the sender.
    pub id: String,
    /// The verb, one of the module's [`crate::Capability::verbs`].
    pub verb: String,
    /// Verb-specific arguments.
    #[serde(default)]
    pub args: serde_json::Value,
    /// Who sent it (operator key name, or `local` for the CLI).
    pub actor: String,
}

/// A module's successful answer to a [`Command`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Verb-specific result document.
    pub body: serde_json::Value,
}

impl Reply {
    /// A reply carrying a JSON document.
    pub fn json(body: serde_json::Value) -> Self {
        Self { body }
    }
}

//! The command gate: every command from any control plane passes here before a module sees
//! it. It fails closed — no trust configured, unknown key, bad signature, another device's
//! id, a clock the time guard found skewed, expired, issued too far in the future, too
//! long-lived, or a role too weak means
//! denied — journals executed ids so a repeat returns the recorded reply, and audits every
//! decision (store + audit stream).

use std::future::Future;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use fleet_contract::{CommandReply, DeviceId, Role, SignedCommand};
use fleet_module_api::{Clock, Command, CommandError, Reply};
use tokio::sync::broadcast;

use crate::config::{CommandsConfig, TrustConfig};
use crate::store::Store;

/// A trusted operator key.
#[derive(Debug, Clone)]
struct Trusted {
    name: String,
    key: Vec<u8>,
    role: Role,
}

/// The minimum role a verb needs. Unknown (module) verbs need `operator`; verbs that change
/// software, run code or destroy data need `admin`.
pub fn required_role(verb: &str) -> Role {
    match verb {
        "ping" | "status" => Role::Viewer,
        // `purge` removes a deleted deployment's named volumes: its data, for good.
        "exec" | "agent-upgrade" | "system-upgrade" | "secrets-refresh" | "purge" => Role::Admin,
        _ => Role::Operator,
    }
}

/// Checks, journals and audits commands.
pub struct CommandGate {
    device: DeviceId,
    trusted: Vec<Trusted>,
    limits: CommandsConfig,
    store: Arc<Store>,
    audit: broadcast::Sender<serde_json::Value>,
}

impl CommandGate {
    /// A gate for `device` trusting the keys in `trust` (config validation already checked
    /// that every key decodes).
    pub fn new(
        device: DeviceId,
        trust: &TrustConfig,
        limits: CommandsConfig,
        store: Arc<Store>,
        audit: broadcast::Sender<serde_json::Value>,
    ) -> Self {
        let trusted = trust
            .operators
            .iter()
            .filter_map(|op| {
                fleet_contract::decode_public_key(&op.public_key)
                    .ok()
                    .map(|key| Trusted {
                        name: op.name.clone(),
                        key,
                        role: op.role,
                    })
            })
            .collect();
        Self {
            device,
            trusted,
            limits,
            store,
            audit,
        }
    }

    /// Decides on one signed command and, when allowed, runs it through `exec`.
    pub async fn process<F, Fut>(&self, bytes: &[u8], clock: &dyn Clock, exec: F) -> CommandReply
    where
        F: FnOnce(Command) -> Fut,
        Fut: Future<Output = Result<Reply, CommandError>>,
    {
        let deny = |id: Option<String>, actor: &str, verb: &str, code: &str, reason: String| {
            self.record(actor, verb, "denied", &reason, id.as_deref(), code);
            CommandReply {
                id,
                ok: false,
                code: code.to_owned(),
                message: reason,
                body: serde_json::Value::Null,
                replayed: false,
            }
        };
        if self.trusted.is_empty() {
            return deny(
                None,
                "unknown",
                "unknown",
                "denied",
                "no operator keys are trusted on this device; every command is refused".into(),
            );
        }
        let signed = match SignedCommand::decode(bytes) {
            Ok(s) => s,
            Err(e) => return deny(None, "unknown", "unknown", "bad-request", e.to_string()),
        };
        let key = match signed.public_key() {
            Ok(k) => k,
            Err(e) => return deny(None, "unknown", "unknown", "bad-request", e.to_string()),
        };
        let Some(who) = self.trusted.iter().find(|t| t.key == key) else {
            return deny(
                None,
                "unknown",
                "unknown",
                "denied",
                format!("unknown key {}", fingerprint(&key)),
            );
        };
        let env = match signed.verify(&who.key) {
            Ok(env) => env,
            Err(e) => {
                let code = if matches!(e, fleet_contract::CommandDecodeError::BadSignature) {
                    "denied"
                } else {
                    "bad-request"
                };
                return deny(None, &who.name, "unknown", code, e.to_string());
            }
        };
        let id = Some(env.id.clone());
        let denied =
            |code: &str, reason: String| deny(id.clone(), &who.name, &env.verb, code, reason);
        if env.device != self.device.as_str() {
            return denied(
                "denied",
                format!(
                    "addressed to device {:?}, this is {:?}",
                    env.device,
                    self.device.as_str()
                ),
            );
        }
        // Expiry means nothing on a clock known to be wrong: refuse until it is fixed.
        if let Some(why) = clock.status().untrusted_reason() {
            return denied(
                "clock-untrusted",
                format!("{why}: the command's validity period cannot be checked; retry once the device's clock is fixed"),
            );
        }
        let now = clock.unix_secs();
        if now > env.expires_at {
            return denied(
                "denied",
                format!("expired at {} (now {now})", env.expires_at),
            );
        }
        if env.issued_at > now + self.limits.max_clock_skew_secs {
            return denied(
                "denied",
                format!(
                    "issued at {} is more than {} s in the future (now {now})",
                    env.issued_at, self.limits.max_clock_skew_secs
                ),
            );
        }
        if env.expires_at - env.issued_at > self.limits.max_lifetime_secs {
            return denied(
                "denied",
                format!(
                    "valid for {} s; the limit is {} s",
                    env.expires_at - env.issued_at,
                    self.limits.max_lifetime_secs
                ),
            );
        }
        let needed = required_role(&env.verb);
        if who.role < needed {
            return denied(
                "denied",
                format!(
                    "role {} may not run {:?} (needs {})",
                    who.role.as_str(),
                    env.verb,
                    needed.as_str()
                ),
            );
        }
        match self.store.journal_get(&env.id) {
            Ok(Some(recorded)) => {
                if let Ok(mut reply) = serde_json::from_str::<CommandReply>(&recorded) {
                    reply.replayed = true;
                    self.record(
                        &who.name,
                        &env.verb,
                        "allowed",
                        "repeated id: recorded reply returned, not executed again",
                        id.as_deref(),
                        &reply.code,
                    );
                    return reply;
                }
            }
            Ok(None) => {}
            Err(e) => {
                return denied("unavailable", format!("command journal unreadable: {e}"));
            }
        }
        let cmd = Command {
            id: env.id.clone(),
            verb: env.verb.clone(),
            args: env.args.clone(),
            actor: who.name.clone(),
        };
        let reply = match exec(cmd).await {
            Ok(r) => CommandReply {
                id: id.clone(),
                ok: true,
                code: "ok".into(),
                message: String::new(),
                body: r.body,
                replayed: false,
            },
            Err(e) => CommandReply {
                id: id.clone(),
                ok: false,
                code: e.code().into(),
                message: e.to_string(),
                body: serde_json::Value::Null,
                replayed: false,
            },
        };
        let recorded = serde_json::to_string(&reply).unwrap_or_default();
        if let Err(e) = self
            .store
            .journal_put(&env.id, &env.verb, &recorded, env.expires_at)
        {
            tracing::error!(error = %e, id = %env.id, "cannot journal command reply");
        }
        self.record(
            &who.name,
            &env.verb,
            "allowed",
            if reply.ok {
                "executed"
            } else {
                "executed with an error"
            },
            id.as_deref(),
            &reply.code,
        );
        reply
    }

    fn record(
        &self,
        actor: &str,
        verb: &str,
        decision: &str,
        reason: &str,
        id: Option<&str>,
        code: &str,
    ) {
        let detail = serde_json::json!({ "id": id, "code": code, "device": self.device.as_str() });
        if decision == "denied" {
            tracing::warn!(%actor, %verb, %reason, "command denied");
        } else {
            tracing::info!(%actor, %verb, %reason, "command");
        }
        if let Err(e) = self
            .store
            .audit(actor, verb, decision, reason, detail.clone())
        {
            tracing::error!(error = %e, "cannot write audit entry");
        }
        let _ = self.audit.send(serde_json::json!({
            "device": self.device.as_str(),
            "actor": actor,
            "action": verb,
            "decision": decision,
            "reason": reason,
            "detail": detail,
        }));
    }
}

/// Short printable id of a public key (never the whole key in logs).
fn fingerprint(key: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, key);
    B64.encode(&d.as_ref()[..9])
}

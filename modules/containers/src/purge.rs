//! The `purge` verb (role admin): removes the named volumes of a deployment that was
//! deleted, i.e. its data for good. Args `{ "deployment": "<name>" }`; the reply lists the
//! volumes removed (`{ "deployment", "removed": [...] }`), none when there were none, so
//! purging again succeeds and removes nothing.
//!
//! Refused (`unavailable`, retrying may help) while the deployment is still desired ("delete
//! it first"), while its deletion is not confirmed (the desired state was rebuilt from the
//! cache: an absence is not a deletion), and while its container still exists (the removal
//! is in flight). A volume some other container uses is not removed (`podman volume
//! rm` without `-f`): the reply fails naming it and what was removed before.

use fleet_module_api::{CommandError, Context, Reply};
use serde_json::{json, Value};

use crate::runtime::PodmanRuntime;
use crate::volumes::{named_in, Detail};

/// The verb.
pub const VERB: &str = "purge";

/// Runs one `purge` command for `actor`.
pub async fn purge(
    rt: &PodmanRuntime,
    detail: &Detail,
    ctx: &Context,
    args: &Value,
    actor: &str,
) -> Result<Reply, CommandError> {
    let name = deployment_arg(args)?;
    let _volumes = detail.volumes.lock().await;
    deleted(ctx, &name)?;
    let podman = |e: crate::Error| CommandError::Unavailable(format!("podman: {e}"));
    // Its main container (what a removal stops and removes) still exists: in flight.
    let container = rt.naming.container(&name);
    if rt.podman.exists(&container).await.map_err(podman)? {
        return Err(CommandError::Unavailable(format!(
            "deployment {name} is still being removed ({container} still exists); try again"
        )));
    }
    let volumes = rt
        .podman
        .volumes(&rt.naming.selector())
        .await
        .map_err(podman)?;
    let mut left = named_in(&rt.naming, &volumes);
    left.retain(|(d, _)| *d == name);
    let mut removed = Vec::new();
    while let Some((_, volume)) = left.first().cloned() {
        // Desired again meanwhile: stop here, the engine creates or uses them.
        if let Err(e) = deleted(ctx, &name) {
            detail.retain(ctx, &name, &[]);
            return Err(e);
        }
        if let Err(e) = rt.podman.volume_rm_unused(&volume).await {
            detail.retain(ctx, &name, &left);
            return Err(CommandError::Failed(format!(
                "cannot remove volume {volume}: {e}{}",
                if removed.is_empty() {
                    String::new()
                } else {
                    format!(" (removed before: {})", removed.join(", "))
                }
            )));
        }
        left.remove(0);
        removed.push(volume);
    }
    detail.retain(ctx, &name, &[]);
    tracing::info!(deployment = %name, %actor, removed = ?removed, "purged named volumes");
    Ok(Reply::json(
        json!({ "deployment": name, "removed": removed }),
    ))
}

/// `args.deployment`, a deployment name; anything else in `args` is refused naming it.
fn deployment_arg(args: &Value) -> Result<String, CommandError> {
    let bad = |field: &str, message: String| CommandError::BadRequest {
        field: field.to_owned(),
        message,
    };
    let Some(obj) = args.as_object() else {
        return Err(bad(
            "args",
            "must be an object {\"deployment\": \"<name>\"}".into(),
        ));
    };
    if let Some(other) = obj.keys().find(|k| *k != "deployment") {
        return Err(bad(
            &format!("args.{}", fleet_contract::quote(other)),
            "unknown field; expected only `deployment`".into(),
        ));
    }
    let Some(name) = obj.get("deployment").and_then(Value::as_str) else {
        return Err(bad(
            "deployment",
            "missing: the name of the deleted deployment, as a string".into(),
        ));
    };
    if let Some(why) = name_problem(name) {
        return Err(bad("deployment", why));
    }
    Ok(name.to_owned())
}

/// Why `name` is not a deployment name (`[a-z0-9][a-z0-9-]{0,62}`), if it is not.
fn name_problem(name: &str) -> Option<String> {
    let n = name.chars().count();
    if n == 0 || n > 63 {
        return Some(format!("is {n} characters; a deployment name has 1 to 63"));
    }
    let (pos, ch) = name.chars().enumerate().find(|&(pos, ch)| {
        !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || (ch == '-' && pos > 0))
    })?;
    Some(format!(
        "{} has {ch:?} at position {pos}; allowed: a-z, 0-9 and '-' (not first)",
        fleet_contract::quote(name)
    ))
}

/// Is `name`'s deletion received (not desired, and not merely absent from a state that may
/// be partial)?
fn deleted(ctx: &Context, name: &str) -> Result<(), CommandError> {
    let state = ctx.desired.borrow();
    if state.deployments.contains_key(name) {
        return Err(CommandError::Unavailable(format!(
            "deployment {name} is still desired on this device; delete it first"
        )));
    }
    if !state.removal_received(name) {
        return Err(CommandError::Unavailable(format!(
            "the deletion of deployment {name} is not confirmed: this device's desired state \
             was rebuilt from its cache and may be partial; try again once the control plane's \
             complete state arrived"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_are_one_deployment_name_and_anything_else_names_the_field() {
        assert_eq!(
            deployment_arg(&json!({ "deployment": "web-1" })),
            Ok("web-1".to_owned())
        );
        let field = |args: Value| match deployment_arg(&args) {
            Err(CommandError::BadRequest { field, message }) => (field, message),
            other => panic!("{args}: {other:?}"),
        };
        assert_eq!(field(Value::Null).0, "args");
        assert_eq!(field(json!(["web"])).0, "args");
        assert_eq!(field(json!({})).0, "deployment");
        assert_eq!(field(json!({ "deployment": 7 })).0, "deployment");
        assert_eq!(
            field(json!({ "deployment": "web", "force": true })).0,
            "args.\"force\""
        );
        let (f, m) = field(json!({ "deployment": "Web" }));
        assert_eq!(f, "deployment");
        assert!(m.contains("position 0"), "{m}");
        let (_, m) = field(json!({ "deployment": "-web" }));
        assert!(m.contains("position 0"), "{m}");
        let (_, m) = field(json!({ "deployment": "a".repeat(64) }));
        assert!(m.contains("64 characters"), "{m}");
        let (_, m) = field(json!({ "deployment": "" }));
        assert!(m.contains("0 characters"), "{m}");
    }
}

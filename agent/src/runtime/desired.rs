//! Desired state between the control plane and the modules: the start-up state rebuilt from
//! the cache, and the task that caches each update and hands it on.

use std::collections::BTreeSet;
use std::sync::Arc;

use fleet_contract::{cap_message, quote, Deployment, DeploymentStatus, Phase};
use fleet_module_api::{
    CancellationToken, DesiredDeployment, DesiredState, DesiredSystem, StatusSink,
};
use tokio::sync::watch;

use super::{unix_now, Shared};
use crate::control::{DesiredUpdate, IgnoredInput, Refusal};
use crate::heartbeat::IgnoredReport;
use crate::store::{DesiredRecord, Store};

/// Desired state cached in the store, for converging before the control plane answers.
pub(super) fn initial_desired(store: &Store) -> DesiredState {
    let records = match store.desired() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot read cached desired state; starting empty");
            return DesiredState::default();
        }
    };
    // Rebuilt from the cache, so maybe partial: only a deletion that was received (a
    // tombstone) lets a module remove what it runs; any other absence keeps it.
    let mut state = DesiredState {
        complete: false,
        ..DesiredState::default()
    };
    match store.desired_deleted() {
        Ok(keys) => {
            state.deleted = keys
                .iter()
                .filter_map(|k| k.strip_prefix("deploy."))
                .map(str::to_owned)
                .collect();
        }
        Err(e) => tracing::error!(error = %e, "cannot read cached deletions; none are assumed"),
    }
    for rec in records {
        if rec.key == crate::control::SYSTEM_RECORD_KEY {
            state.system = Some(match &rec.refused {
                None => crate::control::decode_system(&rec.source, &rec.body),
                Some(why) => DesiredSystem::Invalid {
                    source_name: rec.source.clone(),
                    error: Refusal::from_cached(why, &rec.source),
                },
            });
            continue;
        }
        let Some(name) = rec.key.strip_prefix("deploy.") else {
            continue;
        };
        state
            .deployments
            .insert(name.to_owned(), decode_cached(&rec));
    }
    state
}

fn decode_cached(rec: &DesiredRecord) -> DesiredDeployment {
    if let Some(why) = &rec.refused {
        return DesiredDeployment::Invalid {
            source_name: rec.source.clone(),
            error: Refusal::from_cached(why, &rec.source),
        };
    }
    let decoded = if rec.source.ends_with(".toml") {
        Deployment::from_toml_bytes(&rec.body)
    } else {
        Deployment::from_json_slice(&rec.body)
    };
    match decoded {
        Ok(d) => DesiredDeployment::Valid(Box::new(d)),
        Err(error) => DesiredDeployment::Invalid {
            source_name: rec.source.clone(),
            error: error.with_source(&rec.source),
        },
    }
}

/// Applies each desired-state update: caches it, reports what only the runtime can (invalid
/// documents; valid ones when no module handles deployments), and hands it to the modules.
pub(super) async fn apply_desired(
    shared: Arc<Shared>,
    mut rx: watch::Receiver<DesiredUpdate>,
    shutdown: CancellationToken,
) {
    // Whether deployments are blocked is known once the container runtime's probe answered.
    tokio::select! {
        () = shutdown.cancelled() => return,
        () = shared.providers_probed.cancelled() => {}
    }
    // Statuses the runtime reported; after a restart without a deployment module, that is
    // every stored one (so deployments deleted while the agent was down are cleaned up).
    let blocked = shared
        .deployments_blocked
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut owned: BTreeSet<String> = if blocked.is_none() {
        BTreeSet::new()
    } else {
        shared
            .store
            .statuses()
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.name)
            .collect()
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        let update = rx.borrow_and_update().clone();
        shared
            .checkin
            .send_if_modified(|c| !std::mem::replace(&mut c.plane_reached, true));
        // Record by record: one the cache cannot store is reported and keeps its previous
        // version; the others are written.
        let mut ignored = update.ignored.clone();
        match shared
            .store
            .replace_desired(&update.records, update.state.complete)
        {
            Ok(report) => {
                for (key, reason) in report.refused {
                    tracing::error!(key = %quote(&key), %reason, "desired document not cached; its previous cached version is kept");
                    ignored.push(IgnoredInput::new(
                        format!("cache {}", quote(&key)),
                        &format!("not cached: {reason}"),
                    ));
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot cache desired state"),
        }
        // Cached (committed) first, then handed on: a module never acts on a document a
        // power cut could take back. What only the runtime reports follows.
        shared.to_modules.send_replace(update.state.clone());
        shared.set_ignored(IgnoredReport::bounded(ignored, update.ignored_overflow));
        let now = unix_now();
        let mut now_owned = BTreeSet::new();
        for (name, d) in &update.state.deployments {
            let status = match d {
                DesiredDeployment::Invalid { error, .. } => Some(DeploymentStatus {
                    name: name.clone(),
                    revision: None,
                    phase: Phase::Failed,
                    message: cap_message(&error.to_string()),
                    restarts: 0,
                    last_exit_code: None,
                    image_digest: None,
                    exit_reason: None,
                    probe: None,
                    updated_at: now,
                }),
                DesiredDeployment::Valid(dep) if blocked.is_some() => {
                    let (phase, why) = blocked.clone().unwrap_or((Phase::Pending, String::new()));
                    Some(DeploymentStatus {
                        name: name.clone(),
                        revision: Some(dep.revision),
                        phase,
                        message: format!("accepted revision {}; {why}", dep.revision),
                        restarts: 0,
                        last_exit_code: None,
                        image_digest: None,
                        exit_reason: None,
                        probe: None,
                        updated_at: now,
                    })
                }
                DesiredDeployment::Valid(_) => None,
            };
            if let Some(st) = status {
                now_owned.insert(name.clone());
                shared.sink.deployment(st);
            }
        }
        // Remove what the runtime reported for deployments that are no longer desired.
        for name in owned
            .iter()
            .filter(|n| !update.state.deployments.contains_key(*n))
        {
            shared.sink.deployment_removed(name);
        }
        owned = now_owned;
    }
}

//! Publishing status within the broker's limits: what a plane could not publish, documents
//! cut to fit, and the one diff-and-publish loop both network planes use.

use std::collections::BTreeMap;

use async_trait::async_trait;
use fleet_contract::DeploymentStatus;
use serde::{Deserialize, Serialize};

use super::StatusSnapshot;

/// Most publish failures listed in status at once.
pub const MAX_PUBLISH_FAILURES: usize = 16;

/// One document the plane could not publish, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishFailure {
    /// Which document (`info`, `deploy.<name>`).
    pub document: String,
    /// Why (capped).
    pub reason: String,
}

/// Documents a plane could not publish, by document; cleared when one goes out.
#[derive(Debug, Default)]
pub struct PublishFailures {
    failed: std::sync::Mutex<BTreeMap<String, String>>,
}

impl PublishFailures {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `document` could not be published: logged and kept for status.
    pub fn failed(&self, document: &str, reason: &str) {
        let reason = fleet_contract::cap_message(reason);
        tracing::warn!(document, %reason, "cannot publish; the plane goes on");
        let mut map = self.map();
        if map.len() < MAX_PUBLISH_FAILURES || map.contains_key(document) {
            map.insert(document.to_owned(), reason);
        }
    }

    /// `document` went out.
    pub fn ok(&self, document: &str) {
        self.map().remove(document);
    }

    /// Every recorded failure.
    pub fn list(&self) -> Vec<PublishFailure> {
        self.map()
            .iter()
            .map(|(d, r)| PublishFailure {
                document: d.clone(),
                reason: r.clone(),
            })
            .collect()
    }
}

/// `body` if it fits in `limit` bytes, else a small document saying it was cut.
pub(crate) fn fit_document(body: Vec<u8>, limit: usize, what: &str) -> Vec<u8> {
    if body.len() <= limit {
        return body;
    }
    tracing::warn!(
        document = what,
        length = body.len(),
        limit,
        "document cut to fit the broker's limit"
    );
    serde_json::to_vec(&serde_json::json!({
        "cut": true,
        "document": what,
        "length": body.len(),
        "limit": limit,
        "message": format!("{what} of {} bytes cut to fit the broker's limit of {limit} bytes", body.len()),
    }))
    .unwrap_or_default()
}

/// Where a network plane writes status documents; each call returns the failure in words
/// (naming what could not be published).
#[async_trait]
pub(crate) trait StatusOut: Sync {
    /// The info document (the heartbeat, also sent as the heartbeat message).
    async fn info(&self, body: Vec<u8>) -> Result<(), String>;
    /// Deployment `name`'s status document.
    async fn deployment(&self, name: &str, body: Vec<u8>) -> Result<(), String>;
    /// Deployment `name` has no status any more.
    async fn deployment_gone(&self, name: &str) -> Result<(), String>;
}

/// Publishes through `out` what differs between `published` and `new` (info + heartbeat,
/// changed deployment statuses, removals), each document within `limit` bytes, and records
/// in `published` what went out. A failure is logged and reported in `failures`, never ends
/// the session; the document is tried again with the next change.
pub(crate) async fn publish_changes(
    out: &impl StatusOut,
    limit: usize,
    failures: &PublishFailures,
    published: &mut StatusSnapshot,
    new: &StatusSnapshot,
) {
    if let Some(hb) = &new.heartbeat {
        if published.heartbeat.as_ref() != Some(hb) {
            match out.info(hb.to_json_within(limit)).await {
                Ok(()) => {
                    failures.ok("info");
                    published.heartbeat = Some(hb.clone());
                }
                Err(e) => failures.failed("info", &e),
            }
        }
    }
    for (name, st) in &new.deployments {
        if published.deployments.get(name) != Some(st) {
            let what = format!("deploy.{name}");
            match out.deployment(name, status_within(st, limit)).await {
                Ok(()) => {
                    failures.ok(&what);
                    published.deployments.insert(name.clone(), st.clone());
                }
                Err(e) => failures.failed(&what, &e),
            }
        }
    }
    let gone: Vec<String> = published
        .deployments
        .keys()
        .filter(|n| !new.deployments.contains_key(*n))
        .cloned()
        .collect();
    for name in gone {
        let what = format!("deploy.{name}");
        match out.deployment_gone(&name).await {
            Ok(()) => {
                failures.ok(&what);
                published.deployments.remove(&name);
            }
            Err(e) => failures.failed(&what, &e),
        }
    }
}

/// A deployment status as JSON within `limit` bytes: its message is capped, and a status
/// still too large keeps its fields but says it was cut.
pub(crate) fn status_within(st: &DeploymentStatus, limit: usize) -> Vec<u8> {
    let body = serde_json::to_vec(st).unwrap_or_default();
    if body.len() <= limit {
        return body;
    }
    let cut = DeploymentStatus {
        message: format!(
            "status of {} bytes cut to fit the broker's limit of {limit} bytes",
            body.len()
        ),
        image_digest: None,
        ..st.clone()
    };
    fit_document(
        serde_json::to_vec(&cut).unwrap_or_default(),
        limit,
        "deployment status",
    )
}

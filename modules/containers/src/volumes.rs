//! Named volumes (`container.volumes`): created labelled before the container runs, kept
//! across upgrades and the deployment's deletion, removed only by the `purge` verb
//! ([`crate::purge`]). And the module's status detail, which lists them once their
//! deployment is gone (`retained`), beside the deployments the engine holds (`held`).
//!
//! | | upgrade | deletion | purge |
//! |---|---|---|---|
//! | data volume `fleet-<d>-data` | kept | removed | — |
//! | named volume `fleet-<d>.<name>` | kept | kept (`retained`) | removed |

use std::sync::Mutex;

use fleet_contract::Deployment;
use fleet_module_api::Context;
use serde_json::{json, Value};

use crate::error::Error;
use crate::podman::VolumeEntry;
use crate::reconcile::{Naming, LABEL_DEPLOYMENT, LABEL_MANAGED_BY, MANAGER};
use crate::runtime::PodmanRuntime;

/// Label: the volume's name within its deployment (`container.volumes[].name`). Only named
/// volumes carry it (the data volume does not).
pub const LABEL_VOLUME: &str = "fleet.volume";

/// Named volumes as `(deployment, podman volume name)`, sorted. A plain list: a device has
/// a handful, and the agent's size budget prefers it to a map of sets.
pub type Named = Vec<(String, String)>;

impl PodmanRuntime {
    /// Creates the deployment's named volumes that are missing, labelled (managed-by,
    /// instance, deployment, volume), so that `podman run` never creates one unlabelled. One
    /// `volume create` per volume; nothing for a manifest without volumes.
    pub async fn ensure_named_volumes(&self, d: &Deployment) -> Result<(), Error> {
        for v in &d.container.volumes {
            let mut labels = self.naming.base_labels();
            labels.insert(LABEL_DEPLOYMENT.into(), d.name.clone());
            labels.insert(LABEL_VOLUME.into(), v.name.clone());
            let volume = self.naming.named_volume(&d.name, &v.name);
            self.podman.volume_ensure(&volume, &labels).await?;
        }
        Ok(())
    }

    /// This instance's named volumes: one `volume ls`.
    pub async fn named_volumes(&self) -> Result<Named, Error> {
        let listed = self.podman.volumes(&self.naming.selector()).await?;
        Ok(named_in(&self.naming, &listed))
    }
}

/// The named volumes among `listed` (this instance's volumes): ours (managed-by), labelled
/// with a deployment and a volume name, and named exactly as [`Naming::named_volume`] names
/// them — a volume that merely carries the labels is not one of ours to remove.
pub(crate) fn named_in(naming: &Naming, listed: &[VolumeEntry]) -> Named {
    let mut out = Named::new();
    for v in listed {
        if v.label(LABEL_MANAGED_BY) != Some(MANAGER) {
            continue;
        }
        let (Some(d), Some(name)) = (v.label(LABEL_DEPLOYMENT), v.label(LABEL_VOLUME)) else {
            continue;
        };
        if v.name == naming.named_volume(d, name) {
            insert_sorted(&mut out, (d.to_owned(), v.name.clone()));
        }
    }
    out
}

/// Inserts `entry` into the sorted `list` unless it is there (no sort instantiated: the
/// agent's size budget).
fn insert_sorted(list: &mut Named, entry: (String, String)) {
    if let Err(i) = list.binary_search(&entry) {
        list.insert(i, entry);
    }
}

/// The module's status detail, shared by the engine and the `purge` verb: the deployments
/// the engine holds, and the named volumes kept after their deployment's deletion (what a
/// purge would remove). Published as one document `{ held: [...], retained: [...] }`
/// whenever either changes.
#[derive(Debug, Default)]
pub struct Detail {
    state: Mutex<DetailState>,
    /// Taken around "list the named volumes, then record what is retained" and around a
    /// purge, so that a listing made before a purge never records what the purge removed.
    pub(crate) volumes: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct DetailState {
    held: Vec<Value>,
    retained: Named,
}

impl Detail {
    /// Replaces the held deployments' entries.
    pub fn set_held(&self, ctx: &Context, held: Vec<Value>) {
        self.update(ctx, |s| s.held = held);
    }

    /// Replaces every retained entry (from a full listing, as [`named_in`] sorts it).
    pub fn set_retained(&self, ctx: &Context, retained: Named) {
        self.update(ctx, |s| s.retained = retained);
    }

    /// Sets the retained volumes of one deployment from `named` (its entries there; none:
    /// it has none, or is desired again).
    pub fn retain(&self, ctx: &Context, deployment: &str, named: &[(String, String)]) {
        self.update(ctx, |s| {
            s.retained.retain(|(d, _)| d != deployment);
            for e in named.iter().filter(|(d, _)| d == deployment) {
                insert_sorted(&mut s.retained, e.clone());
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DetailState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `f`; publishes the document when anything changed (under the lock, so two
    /// updates never publish out of order) and logs the volumes newly retained.
    fn update(&self, ctx: &Context, f: impl FnOnce(&mut DetailState)) {
        let mut s = self.lock();
        let (held, retained) = (s.held.clone(), s.retained.clone());
        f(&mut s);
        if s.held == held && s.retained == retained {
            return;
        }
        let mut entries = Vec::with_capacity(s.retained.len());
        for (d, v) in &s.retained {
            if !retained.iter().any(|(od, ov)| od == d && ov == v) {
                tracing::info!(deployment = %d, volume = %v,
                    "named volume kept after its deployment's removal; the purge verb removes it");
            }
            entries.push(json!({ "deployment": d, "volume": v }));
        }
        ctx.status
            .detail(crate::NAME, json!({ "held": s.held, "retained": entries }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeMap;

    fn entry(name: &str, labels: &[(&str, &str)]) -> VolumeEntry {
        VolumeEntry {
            name: name.to_owned(),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn only_our_labelled_and_canonically_named_volumes_are_named_volumes() {
        let naming = Naming::new("t1", BTreeMap::new());
        fn ours<'a>(d: &'a str, v: &'a str) -> Vec<(&'a str, &'a str)> {
            vec![
                (LABEL_MANAGED_BY, MANAGER),
                (LABEL_DEPLOYMENT, d),
                (LABEL_VOLUME, v),
            ]
        }
        let web_cache = naming.named_volume("web", "cache");
        let web_db = naming.named_volume("web", "db");
        let listed = vec![
            entry(&web_cache, &ours("web", "cache")),
            entry(&web_db, &ours("web", "db")),
            // The data volume: no fleet.volume label.
            entry(
                &naming.volume("web"),
                &[(LABEL_MANAGED_BY, MANAGER), (LABEL_DEPLOYMENT, "web")],
            ),
            // Our labels on a volume not named as we name them.
            entry("someone-elses", &ours("web", "cache")),
            // Labels naming another deployment than the name does.
            entry(&web_cache, &ours("api", "cache")),
            // Not managed by the agent.
            entry(
                &naming.named_volume("api", "x"),
                &[(LABEL_DEPLOYMENT, "api"), (LABEL_VOLUME, "x")],
            ),
        ];
        let got = named_in(&naming, &listed);
        let want = [("web".to_owned(), web_cache), ("web".to_owned(), web_db)];
        assert_eq!(got, want);
    }
}

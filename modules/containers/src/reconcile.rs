//! Pure reconcile logic: container naming and labels, the spec hash, and the plan that turns
//! (desired deployments, observed containers) into actions. No I/O; unit-tested below.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fleet_contract::{Deployment, RestartPolicy};

/// `fleet.managed-by` = this value on everything the agent creates.
pub const MANAGER: &str = "fleet-agent";
/// Label keys.
pub const LABEL_MANAGED_BY: &str = "fleet.managed-by";
/// Label: the agent instance (namespace) that owns the container.
pub const LABEL_INSTANCE: &str = "fleet.instance";
/// Label: deployment name.
pub const LABEL_DEPLOYMENT: &str = "fleet.deployment";
/// Label: hash of the spec the container was created from.
pub const LABEL_SPEC_HASH: &str = "fleet.spec-hash";
/// Label: desired revision when the container was created.
pub const LABEL_REVISION: &str = "fleet.revision";
/// Label: `main` or `init`.
pub const LABEL_ROLE: &str = "fleet.role";

/// How this agent instance names and labels what it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    instance: String,
    extra: BTreeMap<String, String>,
}

impl Naming {
    /// Naming for `instance` plus `extra` labels on everything.
    pub fn new(instance: &str, extra: BTreeMap<String, String>) -> Self {
        Self {
            instance: instance.to_owned(),
            extra,
        }
    }

    fn prefix(&self) -> String {
        if self.instance == "default" {
            "fleet-".to_owned()
        } else {
            format!("fleet-{}-", self.instance)
        }
    }

    /// Main container of `deployment`: `fleet-<deployment>` (or `fleet-<instance>-<deployment>`).
    pub fn container(&self, deployment: &str) -> String {
        format!("{}{deployment}", self.prefix())
    }

    /// A one-shot container run for `deployment` (init containers).
    pub fn run_container(&self, deployment: &str, name: &str) -> String {
        format!("{}{deployment}-{name}", self.prefix())
    }

    /// The deployment's data volume, mounted in its main and init containers.
    pub fn volume(&self, deployment: &str) -> String {
        format!("{}{deployment}-data", self.prefix())
    }

    /// A named volume of `deployment` (`container.volumes[].name`): `fleet-<deployment>.<name>`.
    /// The `.` appears in no deployment or instance name, so no named volume can take the
    /// name of another deployment's data volume.
    pub fn named_volume(&self, deployment: &str, name: &str) -> String {
        format!("{}{deployment}.{name}", self.prefix())
    }

    /// `key=value` selecting everything this instance owns.
    pub fn selector(&self) -> String {
        format!("{LABEL_INSTANCE}={}", self.instance)
    }

    /// Labels common to everything this instance creates.
    pub fn base_labels(&self) -> BTreeMap<String, String> {
        let mut l = self.extra.clone();
        l.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
        l.insert(LABEL_INSTANCE.into(), self.instance.clone());
        l
    }

    /// Labels of a deployment's container with `role`.
    pub fn labels(&self, deployment: &str, role: &str) -> BTreeMap<String, String> {
        let mut l = self.base_labels();
        l.insert(LABEL_DEPLOYMENT.into(), deployment.into());
        l.insert(LABEL_ROLE.into(), role.into());
        l
    }

    /// Labels of a deployment's main container at `hash`.
    pub fn main_labels(&self, d: &Deployment, hash: &str) -> BTreeMap<String, String> {
        let mut l = self.labels(&d.name, "main");
        l.insert(LABEL_SPEC_HASH.into(), hash.into());
        l.insert(LABEL_REVISION.into(), d.revision.to_string());
        l
    }
}

/// Hash of everything that requires a new container when it changes: the container spec,
/// the lifecycle policy and the init containers. The revision is left out, so bumping it
/// without a change recreates nothing. FNV-1a 64 over canonical JSON (maps are sorted).
pub fn spec_hash(d: &Deployment) -> String {
    let doc = serde_json::json!({
        "container": d.container,
        "lifecycle": d.lifecycle,
        "init": d.init,
    });
    let bytes = serde_json::to_vec(&doc).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A container as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Container name.
    pub name: String,
    /// `fleet.deployment` label.
    pub deployment: String,
    /// `fleet.role` label.
    pub role: String,
    /// `fleet.spec-hash` label.
    pub spec_hash: String,
    /// podman state (`running`, `exited`, `created`, ...).
    pub state: String,
    /// Last exit code.
    pub exit_code: i32,
    /// Seconds it ran before its last exit (0 when unknown).
    pub ran_secs: u64,
}

/// What one deployment wants.
#[derive(Debug, Clone, PartialEq)]
pub enum Want<'a> {
    /// Run this manifest.
    Run(&'a Deployment),
    /// The document is invalid: leave whatever runs untouched.
    Untouched,
}

/// One step towards convergence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No container: pull, init, create, start.
    Create {
        /// Deployment name.
        deployment: String,
    },
    /// A container from another spec: pull, stop it gracefully, remove, init, create, start.
    Replace {
        /// Deployment name.
        deployment: String,
        /// The old container.
        old: String,
    },
    /// The right container exists but is not running, and its restart policy wants it up.
    Restart {
        /// Deployment name.
        deployment: String,
        /// The container.
        container: String,
        /// Its last exit code.
        exit_code: i32,
        /// How long it ran before it exited.
        ran_secs: u64,
        /// True when it never ran (created but not started).
        never_started: bool,
    },
    /// The right container runs: report it.
    Keep {
        /// Deployment name.
        deployment: String,
    },
    /// The right container exited and its restart policy keeps it down.
    Exited {
        /// Deployment name.
        deployment: String,
        /// Its exit code.
        exit_code: i32,
    },
    /// The container is between states (stopping, removing); look again soon.
    Settle {
        /// Deployment name.
        deployment: String,
    },
    /// Containers of a deployment that is no longer desired: stop, remove, drop its volume.
    Remove {
        /// Deployment name.
        deployment: String,
        /// Its containers.
        containers: Vec<String>,
    },
    /// Containers of a deployment absent from a desired state that is not known complete
    /// (rebuilt from the cache): kept and reported until a deletion is received.
    Hold {
        /// Deployment name.
        deployment: String,
        /// Its containers.
        containers: Vec<String>,
    },
    /// Stray containers of a desired deployment (a duplicate main, a left-over init).
    Clean {
        /// Deployment name.
        deployment: String,
        /// The containers to remove.
        containers: Vec<String>,
    },
}

impl Action {
    /// The deployment the action is about.
    pub fn deployment(&self) -> &str {
        match self {
            Action::Create { deployment }
            | Action::Replace { deployment, .. }
            | Action::Restart { deployment, .. }
            | Action::Keep { deployment }
            | Action::Exited { deployment, .. }
            | Action::Settle { deployment }
            | Action::Remove { deployment, .. }
            | Action::Hold { deployment, .. }
            | Action::Clean { deployment, .. } => deployment,
        }
    }
}

/// Does `policy` restart a container that exited with `code`?
pub fn wants_restart(policy: RestartPolicy, code: i32) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => code != 0,
        RestartPolicy::Never => false,
    }
}

/// Plans one pass. `hashes` holds the spec hash of every `Want::Run`. Deployments in `busy`
/// (an operation is in flight) are skipped entirely. The containers of a deployment absent
/// from `desired` are removed only when `removal_received` says its deletion was received
/// (`DesiredState::removal_received`), never for an absence alone; else they are held.
pub fn plan(
    desired: &BTreeMap<String, Want<'_>>,
    hashes: &BTreeMap<String, String>,
    observed: &[Observed],
    busy: &BTreeSet<String>,
    removal_received: &(dyn Fn(&str) -> bool + Sync),
) -> Vec<Action> {
    let mut by_dep: BTreeMap<&str, Vec<&Observed>> = BTreeMap::new();
    for o in observed {
        by_dep.entry(o.deployment.as_str()).or_default().push(o);
    }
    let mut out = Vec::new();
    for (name, want) in desired {
        if busy.contains(name) {
            continue;
        }
        let d = match want {
            Want::Untouched => continue,
            Want::Run(d) => d,
        };
        let hash = hashes.get(name).map(String::as_str).unwrap_or_default();
        let mine = by_dep.get(name.as_str()).cloned().unwrap_or_default();
        let mains: Vec<&Observed> = mine.iter().copied().filter(|o| o.role == "main").collect();
        let mut stray: Vec<String> = mine
            .iter()
            .filter(|o| o.role != "main")
            .map(|o| o.name.clone())
            .collect();
        // The main container is the one with the canonical name; others are strays.
        let canonical = mains
            .iter()
            .find(|o| mains.len() == 1 || o.spec_hash == hash)
            .copied();
        for o in &mains {
            if Some(o.name.as_str()) != canonical.map(|c| c.name.as_str()) {
                stray.push(o.name.clone());
            }
        }
        if !stray.is_empty() {
            out.push(Action::Clean {
                deployment: name.clone(),
                containers: stray,
            });
            continue;
        }
        let action = match canonical {
            None => Action::Create {
                deployment: name.clone(),
            },
            Some(c) if c.spec_hash != hash => Action::Replace {
                deployment: name.clone(),
                old: c.name.clone(),
            },
            Some(c) => match c.state.as_str() {
                "running" | "paused" => Action::Keep {
                    deployment: name.clone(),
                },
                "stopping" | "removing" => Action::Settle {
                    deployment: name.clone(),
                },
                "created" | "configured" | "initialized" => Action::Restart {
                    deployment: name.clone(),
                    container: c.name.clone(),
                    exit_code: c.exit_code,
                    ran_secs: 0,
                    never_started: true,
                },
                _ if wants_restart(d.container.restart, c.exit_code) => Action::Restart {
                    deployment: name.clone(),
                    container: c.name.clone(),
                    exit_code: c.exit_code,
                    ran_secs: c.ran_secs,
                    never_started: false,
                },
                _ => Action::Exited {
                    deployment: name.clone(),
                    exit_code: c.exit_code,
                },
            },
        };
        out.push(action);
    }
    for (name, containers) in by_dep {
        if desired.contains_key(name) || busy.contains(name) {
            continue;
        }
        let containers = containers.iter().map(|o| o.name.clone()).collect();
        out.push(if removal_received(name) {
            Action::Remove {
                deployment: name.to_owned(),
                containers,
            }
        } else {
            Action::Hold {
                deployment: name.to_owned(),
                containers,
            }
        });
    }
    out
}

/// Crash-loop backoff: how long to wait before restarting a container that ran `ran` and
/// exited, given the current backoff; returns (delay, next backoff).
pub fn restart_delay(
    ran: Duration,
    current: Duration,
    initial: Duration,
    max: Duration,
    healthy_after: Duration,
) -> (Duration, Duration) {
    if ran >= healthy_after {
        // It ran long enough: not a crash loop. Restart now, start the backoff over.
        (Duration::ZERO, initial)
    } else {
        let delay = current.max(initial).min(max);
        (delay, (delay * 2).min(max))
    }
}

/// The next retry backoff after a failed attempt (pull, init, create).
pub fn next_backoff(current: Duration, initial: Duration, max: Duration) -> Duration {
    if current.is_zero() {
        initial
    } else {
        (current * 2).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(name: &str, image: &str) -> Deployment {
        Deployment::from_toml_str(&format!(
            "apiVersion = \"fleet/v1\"\nname = \"{name}\"\nrevision = 1\n[container]\nimage = \"{image}\"\n"
        ))
        .unwrap()
    }

    fn obs(dep: &str, hash: &str, state: &str, code: i32) -> Observed {
        Observed {
            name: format!("fleet-{dep}"),
            deployment: dep.into(),
            role: "main".into(),
            spec_hash: hash.into(),
            state: state.into(),
            exit_code: code,
            ran_secs: 3,
        }
    }

    fn plan_for(
        deps: &[&Deployment],
        untouched: &[&str],
        observed: &[Observed],
        busy: &[&str],
    ) -> Vec<Action> {
        let mut desired = BTreeMap::new();
        let mut hashes = BTreeMap::new();
        for d in deps {
            desired.insert(d.name.clone(), Want::Run(d));
            hashes.insert(d.name.clone(), spec_hash(d));
        }
        for u in untouched {
            desired.insert((*u).to_owned(), Want::Untouched);
        }
        let busy = busy.iter().map(|s| (*s).to_owned()).collect();
        plan(&desired, &hashes, observed, &busy, &|_| true)
    }

    #[test]
    fn spec_hash_ignores_revision_but_not_image_env_or_lifecycle() {
        let a = dep("web", "img:1");
        let mut b = a.clone();
        b.revision = 9;
        assert_eq!(spec_hash(&a), spec_hash(&b));
        b.container.image = "img:2".into();
        assert_ne!(spec_hash(&a), spec_hash(&b));
        let mut c = a.clone();
        c.container.env.insert("X".into(), "1".into());
        assert_ne!(spec_hash(&a), spec_hash(&c));
        let mut l = a.clone();
        l.lifecycle.grace_period_secs = 1;
        assert_ne!(spec_hash(&a), spec_hash(&l));
        assert_eq!(spec_hash(&a).len(), 16);
    }

    #[test]
    fn missing_container_is_created_and_matching_running_one_kept() {
        let a = dep("a", "img:1");
        let b = dep("b", "img:1");
        let h = spec_hash(&b);
        let p = plan_for(&[&a, &b], &[], &[obs("b", &h, "running", 0)], &[]);
        assert_eq!(
            p,
            vec![
                Action::Create {
                    deployment: "a".into()
                },
                Action::Keep {
                    deployment: "b".into()
                }
            ]
        );
    }

    #[test]
    fn changed_spec_is_replaced() {
        let a = dep("a", "img:2");
        let p = plan_for(&[&a], &[], &[obs("a", "old", "running", 0)], &[]);
        assert_eq!(
            p,
            vec![Action::Replace {
                deployment: "a".into(),
                old: "fleet-a".into()
            }]
        );
    }

    #[test]
    fn undesired_containers_are_removed_but_invalid_documents_leave_them_alone() {
        let p = plan_for(
            &[],
            &["kept"],
            &[
                obs("gone", "h", "running", 0),
                obs("kept", "h", "running", 0),
            ],
            &[],
        );
        assert_eq!(
            p,
            vec![Action::Remove {
                deployment: "gone".into(),
                containers: vec!["fleet-gone".into()]
            }]
        );
    }

    #[test]
    fn an_absence_without_a_received_deletion_holds_the_containers() {
        let desired = BTreeMap::new();
        let observed = [
            obs("gone", "h", "running", 0),
            obs("kept", "h", "exited", 0),
        ];
        let deleted = |n: &str| n == "gone";
        let p = plan(
            &desired,
            &BTreeMap::new(),
            &observed,
            &BTreeSet::new(),
            &deleted,
        );
        assert_eq!(
            p,
            vec![
                Action::Remove {
                    deployment: "gone".into(),
                    containers: vec!["fleet-gone".into()]
                },
                Action::Hold {
                    deployment: "kept".into(),
                    containers: vec!["fleet-kept".into()]
                }
            ]
        );
    }

    #[test]
    fn exited_containers_follow_the_restart_policy() {
        let mut a = dep("a", "img:1");
        let h = spec_hash(&a);
        let exited = [obs("a", &h, "exited", 0)];
        assert!(matches!(
            plan_for(&[&a], &[], &exited, &[])[0],
            Action::Restart { exit_code: 0, .. }
        ));
        a.container.restart = RestartPolicy::OnFailure;
        let h = spec_hash(&a);
        assert_eq!(
            plan_for(&[&a], &[], &[obs("a", &h, "exited", 0)], &[]),
            vec![Action::Exited {
                deployment: "a".into(),
                exit_code: 0
            }]
        );
        assert!(matches!(
            plan_for(&[&a], &[], &[obs("a", &h, "exited", 2)], &[])[0],
            Action::Restart { exit_code: 2, .. }
        ));
        a.container.restart = RestartPolicy::Never;
        let h = spec_hash(&a);
        assert!(matches!(
            plan_for(&[&a], &[], &[obs("a", &h, "exited", 2)], &[])[0],
            Action::Exited { .. }
        ));
        // Created but never started (agent died in between): start it whatever the policy.
        assert!(matches!(
            plan_for(&[&a], &[], &[obs("a", &h, "created", 0)], &[])[0],
            Action::Restart {
                never_started: true,
                ..
            }
        ));
    }

    #[test]
    fn busy_deployments_and_strays() {
        let a = dep("a", "img:1");
        let h = spec_hash(&a);
        assert!(plan_for(&[&a], &[], &[], &["a"]).is_empty());
        assert!(plan_for(&[], &[], &[obs("x", &h, "running", 0)], &["x"]).is_empty());
        let mut init = obs("a", "", "exited", 0);
        init.name = "fleet-a-prepare".into();
        init.role = "init".into();
        assert_eq!(
            plan_for(&[&a], &[], &[obs("a", &h, "running", 0), init], &[]),
            vec![Action::Clean {
                deployment: "a".into(),
                containers: vec!["fleet-a-prepare".into()]
            }]
        );
    }

    #[test]
    fn crash_loop_backoff_doubles_and_resets_after_a_healthy_run() {
        let s = Duration::from_secs;
        let (i, m, h) = (s(1), s(60), s(10));
        assert_eq!(restart_delay(s(0), s(0), i, m, h), (s(1), s(2)));
        assert_eq!(restart_delay(s(0), s(2), i, m, h), (s(2), s(4)));
        assert_eq!(restart_delay(s(0), s(60), i, m, h), (s(60), s(60)));
        assert_eq!(restart_delay(s(30), s(60), i, m, h), (s(0), s(1)));
        assert_eq!(next_backoff(s(0), i, m), s(1));
        assert_eq!(next_backoff(s(40), i, m), s(60));
    }

    #[test]
    fn names_and_labels() {
        let n = Naming::new("default", BTreeMap::new());
        assert_eq!(n.container("web"), "fleet-web");
        assert_eq!(n.volume("web"), "fleet-web-data");
        let n = Naming::new(
            "t1",
            [("fleet.test.scope".to_owned(), "t1".to_owned())].into(),
        );
        assert_eq!(n.container("web"), "fleet-t1-web");
        assert_eq!(n.run_container("web", "init-a"), "fleet-t1-web-init-a");
        let d = dep("web", "img:1");
        let l = n.main_labels(&d, "abc");
        assert_eq!(l["fleet.managed-by"], "fleet-agent");
        assert_eq!(l["fleet.instance"], "t1");
        assert_eq!(l["fleet.deployment"], "web");
        assert_eq!(l["fleet.spec-hash"], "abc");
        assert_eq!(l["fleet.revision"], "1");
        assert_eq!(l["fleet.test.scope"], "t1");
        assert_eq!(n.selector(), "fleet.instance=t1");
    }
}

//! Extension points: narrow traits one module implements and others consume.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fleet_contract::Deployment;
use serde::Serialize;

/// The extension points that exist, for [`crate::Needs`] and status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExtensionKind {
    /// [`ContainerRuntime`], provided by `containers`.
    ContainerRuntime,
    /// [`LifecycleHook`], provided by `init-containers` and `secrets`.
    LifecycleHook,
    /// [`AgentSelf`], provided by the runtime itself (not by a module).
    AgentSelf,
    /// [`crate::ClockAuthority`], provided by the runtime itself (not by a module).
    ClockAuthority,
}

impl ExtensionKind {
    fn type_id(self) -> TypeId {
        match self {
            ExtensionKind::ContainerRuntime => TypeId::of::<dyn ContainerRuntime>(),
            ExtensionKind::LifecycleHook => TypeId::of::<dyn LifecycleHook>(),
            ExtensionKind::AgentSelf => TypeId::of::<dyn AgentSelf>(),
            ExtensionKind::ClockAuthority => TypeId::of::<dyn crate::ClockAuthority>(),
        }
    }
}

/// A one-shot container to run to completion (init containers, jobs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// Container name on the host.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Command and arguments.
    pub command: Vec<String>,
    /// Labels to put on the container.
    pub labels: Vec<(String, String)>,
    /// Killed and reported as timed out after this long.
    pub timeout: Duration,
    /// Run as part of this deployment: the runtime mounts the deployment's data volume (the
    /// one its main container gets), labels the container as the deployment's and makes
    /// `name` unique under the deployment's container name. `None`: a standalone container.
    pub deployment: Option<String>,
}

/// How a [`RunSpec`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// Exit code; `None` when killed at the timeout.
    pub exit_code: Option<i32>,
    /// The last lines it logged (for error messages).
    pub last_log_lines: Vec<String>,
}

/// Error from a [`ContainerRuntime`] call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RuntimeError(pub String);

/// Container operations other modules may call. Deliberately narrow: only what consumers use.
#[async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Runs a container to completion (or its timeout) and removes it.
    async fn run_to_completion(&self, spec: &RunSpec) -> Result<RunOutcome, RuntimeError>;
    /// The last `tail` log lines of a container.
    async fn logs(&self, container: &str, tail: usize) -> Result<Vec<String>, RuntimeError>;
}

/// Hooks around a deployment's main container (init containers, secret delivery).
#[async_trait]
pub trait LifecycleHook: Send + Sync + 'static {
    /// Hook name for status messages.
    fn name(&self) -> &'static str;
    /// Runs before the main container is created; an error fails the deployment.
    async fn before_start(&self, deployment: &Deployment) -> Result<(), RuntimeError>;
    /// Runs after the main container was stopped for good (removal or replacement).
    async fn after_stop(&self, _deployment: &Deployment) -> Result<(), RuntimeError> {
        Ok(())
    }
}

/// What the runtime tells modules about the agent process itself (self-upgrade): its
/// version, artifact downloads through the configured control plane, the check-in (control
/// plane reached, modules healthy) and a way to ask for a clean exit so systemd restarts it.
#[async_trait]
pub trait AgentSelf: Send + Sync + 'static {
    /// The running agent's version (`fleet-agent version`).
    fn version(&self) -> &str;
    /// Downloads object `name` from the control plane's artifact store into `dest`, at most
    /// `max_bytes`; returns the bytes written.
    async fn fetch_artifact(
        &self,
        name: &str,
        dest: &std::path::Path,
        max_bytes: u64,
    ) -> Result<u64, RuntimeError>;
    /// Is the control plane reachable now and is every available module other than
    /// `except` healthy? `Ok` carries a one-line summary, `Err` the first reason why not.
    async fn check_in(&self, except: &str) -> Result<String, String>;
    /// Asks the runtime to drain and exit non-zero (systemd then starts the current link).
    fn request_restart(&self, reason: String);
}

/// Collects extension points while modules are wired; frozen into [`Extensions`].
#[derive(Default)]
pub struct ExtensionsBuilder {
    map: HashMap<TypeId, Vec<Box<dyn Any + Send + Sync>>>,
}

impl ExtensionsBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first provider of `T` registered so far, i.e. by a module earlier in start order.
    /// Lets a module that consumes an extension point (declared in its `needs`) take hold of
    /// it while wiring, before any module runs.
    pub fn get<T: ?Sized + Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.map
            .get(&TypeId::of::<T>())
            .and_then(|v| v.iter().find_map(|b| b.downcast_ref::<Arc<T>>().cloned()))
    }

    /// Registers an implementation of extension point `T` (e.g. `dyn ContainerRuntime`).
    pub fn provide<T: ?Sized + Send + Sync + 'static>(&mut self, imp: Arc<T>) {
        self.map
            .entry(TypeId::of::<T>())
            .or_default()
            .push(Box::new(imp));
    }

    /// Freezes the registry.
    pub fn build(self) -> Extensions {
        Extensions {
            map: Arc::new(self.map),
        }
    }
}

/// Typed, read-only registry of extension points, shared by every module's [`crate::Context`].
#[derive(Clone, Default)]
pub struct Extensions {
    map: Arc<HashMap<TypeId, Vec<Box<dyn Any + Send + Sync>>>>,
}

impl Extensions {
    /// The first provider of `T`, if any module provides it.
    pub fn get<T: ?Sized + Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.all::<T>().into_iter().next()
    }

    /// Every provider of `T`, in module start order.
    pub fn all<T: ?Sized + Send + Sync + 'static>(&self) -> Vec<Arc<T>> {
        self.map
            .get(&TypeId::of::<T>())
            .map(|v| {
                v.iter()
                    .filter_map(|b| b.downcast_ref::<Arc<T>>().cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// True when some module provides `kind`.
    pub fn has(&self, kind: ExtensionKind) -> bool {
        self.map.get(&kind.type_id()).is_some_and(|v| !v.is_empty())
    }
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extensions")
            .field("types", &self.map.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Hook(&'static str);

    #[async_trait]
    impl LifecycleHook for Hook {
        fn name(&self) -> &'static str {
            self.0
        }
        async fn before_start(&self, _d: &Deployment) -> Result<(), RuntimeError> {
            Ok(())
        }
    }

    #[test]
    fn typed_lookup_returns_providers_in_order() {
        let mut b = ExtensionsBuilder::new();
        b.provide::<dyn LifecycleHook>(Arc::new(Hook("init")));
        b.provide::<dyn LifecycleHook>(Arc::new(Hook("secrets")));
        assert_eq!(b.get::<dyn LifecycleHook>().map(|h| h.name()), Some("init"));
        assert!(b.get::<dyn ContainerRuntime>().is_none());
        let ext = b.build();
        let names: Vec<_> = ext
            .all::<dyn LifecycleHook>()
            .iter()
            .map(|h| h.name())
            .collect();
        assert_eq!(names, ["init", "secrets"]);
        assert!(ext.has(ExtensionKind::LifecycleHook));
        assert!(!ext.has(ExtensionKind::ContainerRuntime));
        assert!(ext.get::<dyn ContainerRuntime>().is_none());
    }
}

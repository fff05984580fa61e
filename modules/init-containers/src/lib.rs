//! Module `init-containers`: runs a deployment's `[[init]]` containers, in order and each to
//! completion, before its main container is created — on **every fresh creation** (first
//! start, upgrade, re-creation after a hand removal), never when an existing container is
//! merely restarted. **Init containers must therefore be idempotent.**
//!
//! It consumes the [`ContainerRuntime`] (declared in [`Capability::needs`]) and provides a
//! [`LifecycleHook`] that the containers module calls before creating the main container.
//! Each init container runs on the deployment's data volume (mounted at `/data` in init and
//! main containers alike), with its image (or the main image), its command and its
//! `timeoutSecs`. A non-zero exit or a timeout fails the deployment with a status naming the
//! init container, its exit code (or the timeout) and its last log lines.

mod config;
mod error;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fleet_contract::Deployment;
use fleet_module_api::{
    async_trait, Capability, ConfigError, ContainerRuntime, Context, Descriptor, ExtensionKind,
    ExtensionsBuilder, Health, LifecycleHook, ModuleError, Needs, Probe, RunSpec, RuntimeError,
};

pub use config::Config;
pub use error::InitError;

/// The module's name, cargo feature, config section and hook name.
pub const NAME: &str = "init-containers";

/// Registration entry for the agent's module list.
pub const DESCRIPTOR: Descriptor = Descriptor { name: NAME, build };

fn build(section: Option<&toml::Value>) -> Result<Arc<dyn Capability>, ConfigError> {
    let config: Config = fleet_module_api::parse_section(NAME, section)?;
    if !(1..=50).contains(&config.log_lines) {
        return Err(ConfigError {
            module: NAME,
            message: format!("log_lines {} is outside 1..=50", config.log_lines),
        });
    }
    Ok(Arc::new(InitContainers::new(config)))
}

/// The init-containers module.
pub struct InitContainers {
    hook: Arc<Hook>,
}

impl InitContainers {
    /// A module with `config`.
    pub fn new(config: Config) -> Self {
        Self {
            hook: Arc::new(Hook {
                config,
                runtime: OnceLock::new(),
            }),
        }
    }
}

/// The lifecycle hook: runs the init containers of a deployment.
pub struct Hook {
    config: Config,
    runtime: OnceLock<Arc<dyn ContainerRuntime>>,
}

impl Hook {
    /// A hook running init containers through `runtime`.
    pub fn with_runtime(config: Config, runtime: Arc<dyn ContainerRuntime>) -> Self {
        let hook = Self {
            config,
            runtime: OnceLock::new(),
        };
        let _ = hook.runtime.set(runtime);
        hook
    }

    /// Runs every init container of `d` in order; the first failure stops the sequence.
    pub async fn run_all(&self, d: &Deployment) -> Result<(), InitError> {
        if d.init.is_empty() {
            return Ok(());
        }
        let runtime = self.runtime.get().ok_or(InitError::NoRuntime)?;
        for init in &d.init {
            let spec = RunSpec {
                name: format!("init-{}", init.name),
                image: init
                    .image
                    .clone()
                    .unwrap_or_else(|| d.container.image.clone()),
                command: init.command.clone(),
                labels: vec![("fleet.init".into(), init.name.clone())],
                timeout: Duration::from_secs(u64::from(init.timeout_secs)),
                deployment: Some(d.name.clone()),
            };
            tracing::info!(deployment = %d.name, init = %init.name, "running init container");
            let outcome =
                runtime
                    .run_to_completion(&spec)
                    .await
                    .map_err(|e| InitError::Runtime {
                        name: init.name.clone(),
                        message: e.0,
                    })?;
            let logs = last_lines(&outcome.last_log_lines, self.config.log_lines);
            match outcome.exit_code {
                Some(0) => {}
                Some(code) => {
                    return Err(InitError::Exit {
                        name: init.name.clone(),
                        code,
                        logs,
                    })
                }
                None => {
                    return Err(InitError::Timeout {
                        name: init.name.clone(),
                        secs: init.timeout_secs,
                        logs,
                    })
                }
            }
        }
        Ok(())
    }
}

fn last_lines(lines: &[String], n: usize) -> String {
    let start = lines.len().saturating_sub(n);
    let text = lines[start..].join(" | ");
    if text.is_empty() {
        "(none)".into()
    } else {
        text
    }
}

#[async_trait]
impl LifecycleHook for Hook {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn before_start(&self, deployment: &Deployment) -> Result<(), RuntimeError> {
        self.run_all(deployment)
            .await
            .map_err(|e| RuntimeError(e.to_string()))
    }
}

#[async_trait]
impl Capability for InitContainers {
    fn name(&self) -> &'static str {
        NAME
    }

    fn needs(&self) -> Needs {
        Needs::none().consumes(ExtensionKind::ContainerRuntime)
    }

    fn provide(&self, ext: &mut ExtensionsBuilder) {
        // The runtime is provided by a module earlier in start order (containers); take
        // hold of it now, because the hook can be called before this module's `run`.
        if let Some(rt) = ext.get::<dyn ContainerRuntime>() {
            let _ = self.hook.runtime.set(rt);
        }
        ext.provide::<dyn LifecycleHook>(self.hook.clone());
    }

    async fn probe(&self, _ctx: &Context) -> Probe {
        if self.hook.runtime.get().is_some() {
            Probe::available("runs init containers through the container runtime")
        } else {
            Probe::unavailable("no container runtime is built in")
        }
    }

    async fn run(self: Arc<Self>, ctx: Context) -> Result<(), ModuleError> {
        // Nothing to loop over: the hook runs in the containers module's jobs.
        ctx.progress.during(ctx.shutdown.cancelled()).await;
        Ok(())
    }

    fn health(&self) -> Health {
        if self.hook.runtime.get().is_some() {
            Health::Healthy
        } else {
            Health::unhealthy("no container runtime")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_module_api::RunOutcome;
    use std::sync::Mutex;

    /// Records the specs it is asked to run and answers with canned outcomes.
    struct Scripted {
        ran: Mutex<Vec<RunSpec>>,
        outcomes: Mutex<Vec<RunOutcome>>,
    }

    #[async_trait]
    impl ContainerRuntime for Scripted {
        async fn run_to_completion(&self, spec: &RunSpec) -> Result<RunOutcome, RuntimeError> {
            self.ran.lock().unwrap().push(spec.clone());
            Ok(self.outcomes.lock().unwrap().remove(0))
        }
        async fn logs(&self, _c: &str, _t: usize) -> Result<Vec<String>, RuntimeError> {
            Ok(Vec::new())
        }
    }

    fn manifest() -> Deployment {
        Deployment::from_toml_str(
            "apiVersion = \"fleet/v1\"\nname = \"web\"\nrevision = 1\n[container]\nimage = \"img:1\"\n\
             [[init]]\nname = \"a\"\ncommand = [\"true\"]\n\
             [[init]]\nname = \"b\"\nimage = \"other:2\"\ncommand = [\"false\"]\ntimeoutSecs = 7\n\
             [[init]]\nname = \"c\"\ncommand = [\"true\"]\n",
        )
        .unwrap()
    }

    fn outcome(code: Option<i32>, logs: &[&str]) -> RunOutcome {
        RunOutcome {
            exit_code: code,
            last_log_lines: logs.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[tokio::test]
    async fn runs_in_order_and_stops_at_the_first_failure() {
        let rt = Arc::new(Scripted {
            ran: Mutex::new(Vec::new()),
            outcomes: Mutex::new(vec![
                outcome(Some(0), &[]),
                outcome(Some(3), &["x", "boom"]),
            ]),
        });
        let hook = Hook::with_runtime(Config::default(), rt.clone());
        let err = hook.run_all(&manifest()).await.unwrap_err().to_string();
        assert!(err.contains("\"b\""), "{err}");
        assert!(err.contains("exit 3"), "{err}");
        assert!(err.contains("x | boom"), "{err}");
        let ran = rt.ran.lock().unwrap();
        assert_eq!(ran.len(), 2, "c must not run after b failed");
        assert_eq!(ran[0].image, "img:1");
        assert_eq!(ran[1].image, "other:2");
        assert_eq!(ran[1].timeout, Duration::from_secs(7));
        assert_eq!(ran[1].deployment.as_deref(), Some("web"));
        assert_eq!(ran[1].name, "init-b");
    }

    #[tokio::test]
    async fn a_timeout_is_named() {
        let rt = Arc::new(Scripted {
            ran: Mutex::new(Vec::new()),
            outcomes: Mutex::new(vec![outcome(Some(0), &[]), outcome(None, &[])]),
        });
        let hook = Hook::with_runtime(Config::default(), rt);
        let err = hook.run_all(&manifest()).await.unwrap_err().to_string();
        assert!(err.contains("timed out after 7 s"), "{err}");
    }

    #[test]
    fn config_is_strict() {
        let v: toml::Value = toml::from_str("log_line = 3\n").unwrap();
        assert!(build(Some(&v))
            .err()
            .unwrap()
            .to_string()
            .contains("log_line"));
        let v: toml::Value = toml::from_str("log_lines = 0\n").unwrap();
        assert!(build(Some(&v)).is_err());
    }
}

//! A device for the OS upgrade tests: a temp root laid out like the VM's boot partition,
//! `/proc` stand-ins, one fake LVM for all its boots, and agent runs over it (see
//! `system_upgrade.rs`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleet_agent::config::Config;
use fleet_agent::{Agent, AgentHandle};
use fleet_mod_system_upgrade::bootstate::{BootState, State, StateFiles};
use fleet_mod_system_upgrade::fake_lvm::FakeLvm;
use fleet_mod_system_upgrade::fake_units::FakeUnits;
use fleet_mod_system_upgrade::selector::VmSelector;
use fleet_mod_system_upgrade::{Config as ModConfig, SelectorKind, SystemUpgradeModule};
use fleet_module_api::{
    async_trait, CancellationToken, Capability, Context, Health, ModuleError, Probe,
};
use fleet_testkit::TempRoot;
use tokio::task::JoinHandle;

pub const OLD_CONFIG: &str = "kernel=vmlinuz\ninitramfs initrd.img followkernel\n";

/// A device: temp root, boot partition, /proc stand-ins, one fake LVM for all its boots.
pub struct Device {
    pub root: TempRoot,
    pub lvm: Arc<FakeLvm>,
    /// systemd's transient units (state under the root: they outlive an agent run).
    pub units: Arc<FakeUnits>,
    pub command: String,
    pub command_timeout_secs: u64,
}

impl Device {
    pub fn new(command: &str) -> Self {
        let root = TempRoot::new().unwrap();
        let d = Device {
            lvm: Arc::new(FakeLvm::default()),
            units: Arc::new(FakeUnits::new(root.path().join("units"))),
            command: command.to_owned(),
            command_timeout_secs: ModConfig::default().command_timeout_secs,
            root,
        };
        std::fs::create_dir_all(d.boot()).unwrap();
        std::fs::write(d.boot().join("vmlinuz"), "old-kernel").unwrap();
        std::fs::write(d.boot().join("initrd.img"), "old-initrd").unwrap();
        std::fs::write(
            d.boot().join("cmdline.txt"),
            "console=ttyS0 root=/dev/vg0/root\n",
        )
        .unwrap();
        std::fs::write(d.boot().join("config.txt"), OLD_CONFIG).unwrap();
        std::fs::write(d.p("cmdline"), "console=ttyS0 root=/dev/vg0/root\n").unwrap();
        std::fs::write(d.p("boot_id"), "boot-1\n").unwrap();
        std::fs::write(d.p("uptime"), "42.0 10.0\n").unwrap();
        for hook in ["hook", "local-top"] {
            std::fs::write(d.p(hook), "#!/bin/sh\n").unwrap();
        }
        std::fs::write(
            d.p("mountinfo"),
            format!(
                "22 1 253:1 / / rw,relatime - ext4 /dev/mapper/vg0-root rw\n27 22 8:1 / {} rw,relatime - vfat /dev/vda1 rw\n",
                d.boot().display()
            ),
        )
        .unwrap();
        d
    }

    pub fn p(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    pub fn boot(&self) -> PathBuf {
        self.root.path().join("boot/firmware")
    }

    pub fn state(&self) -> Option<BootState> {
        StateFiles::new(self.boot().join("fleet"))
            .current()
            .unwrap()
    }

    pub fn module(&self) -> Arc<SystemUpgradeModule> {
        let cfg = ModConfig {
            boot_dir: self.boot(),
            selector: SelectorKind::Vm,
            command: self.command.clone(),
            command_timeout_secs: self.command_timeout_secs,
            reboot_command: format!("echo reboot >> {}", self.p("reboots").display()),
            initramfs_hook_files: vec![self.p("hook"), self.p("local-top")],
            cmdline_file: self.p("cmdline"),
            mountinfo_file: self.p("mountinfo"),
            ..ModConfig::default()
        };
        Arc::new(
            SystemUpgradeModule::with_parts(
                cfg,
                self.lvm.clone(),
                Arc::new(VmSelector::new(self.boot())),
            )
            .with_proc_files(self.p("boot_id"), self.p("uptime"))
            .with_units(self.units.clone()),
        )
    }

    /// One agent run (one "boot" of the device, or a restart within it).
    pub fn start(&self) -> Running {
        self.start_with(None)
    }

    /// As [`start`], with one more module beside system-upgrade.
    pub fn start_with(&self, extra: Option<Arc<dyn Capability>>) -> Running {
        // Heartbeats only hourly: status must still show every phase change at once.
        let path = self.root.write_config(&format!(
            "device_id = \"test-dev\"\nstate_dir = {:?}\nrun_dir = {:?}\nheartbeat_interval_secs = 3600\n[control]\ndeployments_dir = {:?}\n",
            self.root.state(),
            self.root.run(),
            self.root.deployments()
        ));
        let config = Config::load(&path).unwrap();
        let mut builder = Agent::builder(config)
            .without_compiled_in()
            .module(self.module());
        if let Some(m) = extra {
            builder = builder.module(m);
        }
        let agent = builder.build().unwrap();
        let handle = agent.handle();
        let stop = CancellationToken::new();
        let task = tokio::spawn(agent.run(stop.clone()));
        Running { handle, stop, task }
    }

    pub fn request(&self, id: &str) {
        std::fs::write(
            self.root.etc().join("system.toml"),
            format!("apiVersion = \"fleet/v1\"\nid = \"{id}\"\ndeadlineSecs = 300\nmaxBoots = 2\n"),
        )
        .unwrap();
    }

    pub fn lines(&self, name: &str) -> usize {
        std::fs::read_to_string(self.p(name))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// What the firmware and kernel do on a reboot into the trial.
    pub fn reboot_into_trial(&self, n: u32, id: &str) {
        std::fs::write(self.p("boot_id"), format!("boot-{n}\n")).unwrap();
        std::fs::write(
            self.p("cmdline"),
            format!("console=ttyS0 root=/dev/vg0/root fleet.upgrade={id}\n"),
        )
        .unwrap();
        assert!(
            self.boot().join("tryboot.flag").exists(),
            "the trial was armed"
        );
        std::fs::remove_file(self.boot().join("tryboot.flag")).unwrap();
        // The initramfs counts the trial boot and arms the trial again (CONTRACT §6 `count`).
        let mut st = self.state().unwrap();
        st.bootcount += 1;
        st.trials += 1;
        StateFiles::new(self.boot().join("fleet"))
            .write(&st)
            .unwrap();
        std::fs::write(self.boot().join("tryboot.flag"), "").unwrap();
    }

    /// What fleet-boot-good does once userspace is reached: arm, then bootcount=0.
    pub fn good_boot(&self) {
        std::fs::write(self.boot().join("tryboot.flag"), "").unwrap();
        let mut st = self.state().unwrap();
        st.bootcount = 0;
        StateFiles::new(self.boot().join("fleet"))
            .write(&st)
            .unwrap();
    }

    /// What the initramfs leaves after a rollback (CONTRACT §6): old set back, merged.
    pub fn initramfs_rolled_back(&self, n: u32, reason: &str, boots: u32) {
        std::fs::write(self.p("boot_id"), format!("boot-{n}\n")).unwrap();
        std::fs::write(self.p("cmdline"), "console=ttyS0 root=/dev/vg0/root\n").unwrap();
        let saved = self.boot().join("fleet/preupgrade");
        for f in ["vmlinuz", "initrd.img", "config.txt", "cmdline.txt"] {
            std::fs::copy(saved.join(f), self.boot().join(f)).unwrap();
        }
        std::fs::remove_dir_all(&saved).unwrap();
        let _ = std::fs::remove_file(self.boot().join("tryboot.txt"));
        let _ = std::fs::remove_file(self.boot().join("tryboot.flag"));
        let mut st = self.state().unwrap();
        st.state = State::RolledBack;
        st.reason = reason.into();
        st.boots = boots;
        StateFiles::new(self.boot().join("fleet"))
            .write(&st)
            .unwrap();
    }
}

pub struct Running {
    pub handle: AgentHandle,
    pub stop: CancellationToken,
    pub task: JoinHandle<Result<(), fleet_agent::AgentError>>,
}

impl Running {
    pub fn detail(&self) -> serde_json::Value {
        self.handle
            .heartbeat()
            .details
            .get("system-upgrade")
            .cloned()
            .unwrap_or_default()
    }

    pub async fn wait_phase(&self, phase: &str) -> serde_json::Value {
        let what = format!("phase {phase}");
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let d = self.detail();
                if d["phase"] == phase {
                    return d;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what} not reached; last detail: {:#}", self.detail()))
    }

    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("agent stops")
            .unwrap()
            .unwrap();
    }
}

pub async fn wait_file(path: &Path) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} never appeared", path.display()));
}

pub fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Healthy only while `healthy` is set: holds the check-in back.
pub struct Gate {
    pub healthy: AtomicBool,
}

#[async_trait]
impl Capability for Gate {
    fn name(&self) -> &'static str {
        "gate"
    }
    async fn probe(&self, _ctx: &Context) -> Probe {
        Probe::available("test module")
    }
    async fn run(self: Arc<Self>, ctx: Context) -> Result<(), ModuleError> {
        ctx.shutdown.cancelled().await;
        Ok(())
    }
    fn health(&self) -> Health {
        if self.healthy.load(Ordering::SeqCst) {
            Health::Healthy
        } else {
            Health::unhealthy("held back by the test")
        }
    }
}

//! **A fake of LVM**, for tests on hosts without device-mapper (this build host has none; the
//! real `lvm` CLI is exercised in the VM harness). It keeps a list of LVs in memory and
//! behaves like `lvcreate -s` / `lvremove` on it, and can be told to fail. Compiled only with
//! the `fake-lvm` feature, which only dev-dependencies enable.

use std::sync::Mutex;

use async_trait::async_trait;

use crate::lvm::{LvInfo, Lvm, LvmError};

/// In-memory LVM: a thin pool `pool` and a thin `root` in `vg0` to start with.
#[derive(Debug)]
pub struct FakeLvm {
    lvs: Mutex<Vec<LvInfo>>,
    fail: Mutex<Option<&'static str>>,
    /// Every operation, for assertions (`create vg0/root_preupgrade`, `remove ...`).
    pub calls: Mutex<Vec<String>>,
}

impl Default for FakeLvm {
    fn default() -> Self {
        Self::thin_root(31.0)
    }
}

impl FakeLvm {
    /// `vg0/pool` (thin pool, `pool_used_percent` used, 1.75 GiB) holding thin `vg0/root`.
    pub fn thin_root(pool_used_percent: f64) -> Self {
        let lv = |name: &str, pool: &str, segtype: &str, pct: Option<f64>, size: u64| LvInfo {
            name: name.into(),
            vg: "vg0".into(),
            pool: pool.into(),
            segtype: segtype.into(),
            data_percent: pct,
            size,
        };
        Self {
            lvs: Mutex::new(vec![
                lv(
                    "pool",
                    "",
                    "thin-pool",
                    Some(pool_used_percent),
                    1_879_048_192,
                ),
                lv("root", "pool", "thin", Some(27.0), 2_147_483_648),
                lv("agent-state", "", "linear", None, 134_217_728),
            ]),
            fail: Mutex::new(None),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Makes the next operation named `op` (`lvs`, `create`, `remove`) fail.
    pub fn fail_next(&self, op: &'static str) {
        *self.fail.lock().unwrap_or_else(|p| p.into_inner()) = Some(op);
    }

    /// Does `vg/name` exist?
    pub fn exists(&self, vg: &str, name: &str) -> bool {
        self.lvs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|l| l.vg == vg && l.name == name)
    }

    fn check(&self, op: &'static str, call: String) -> Result<(), LvmError> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call.clone());
        let mut fail = self.fail.lock().unwrap_or_else(|p| p.into_inner());
        if *fail == Some(op) {
            *fail = None;
            return Err(LvmError::Command {
                command: format!("fake lvm {call}"),
                message: "failure injected by the test".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Lvm for FakeLvm {
    async fn lvs(&self) -> Result<Vec<LvInfo>, LvmError> {
        self.check("lvs", "lvs".into())?;
        Ok(self.lvs.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    async fn create_snapshot(&self, vg: &str, origin: &str, name: &str) -> Result<(), LvmError> {
        self.check("create", format!("create {vg}/{name} of {origin}"))?;
        let mut lvs = self.lvs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(o) = lvs.iter().find(|l| l.vg == vg && l.name == origin).cloned() else {
            return Err(LvmError::Command {
                command: format!("fake lvm create {vg}/{name}"),
                message: format!("origin {vg}/{origin} not found"),
            });
        };
        if lvs.iter().any(|l| l.vg == vg && l.name == name) {
            return Err(LvmError::Command {
                command: format!("fake lvm create {vg}/{name}"),
                message: format!("logical volume {name} already exists"),
            });
        }
        lvs.push(LvInfo {
            name: name.into(),
            ..o
        });
        Ok(())
    }

    async fn remove(&self, vg: &str, name: &str) -> Result<(), LvmError> {
        self.check("remove", format!("remove {vg}/{name}"))?;
        let mut lvs = self.lvs.lock().unwrap_or_else(|p| p.into_inner());
        let before = lvs.len();
        lvs.retain(|l| !(l.vg == vg && l.name == name));
        if lvs.len() == before {
            return Err(LvmError::Command {
                command: format!("fake lvm remove {vg}/{name}"),
                message: format!("failed to find logical volume \"{vg}/{name}\""),
            });
        }
        Ok(())
    }
}

//! Can this device take an OS upgrade? Root must be a thin LV (named VG and pool) that `/`
//! is really mounted from, the pool needs headroom, the boot partition must be mounted
//! read-write, and lvm2 plus the initramfs hook must be installed. Anything else is
//! Unavailable with the exact reason.

use std::path::Path;

use fleet_module_api::Probe;

use crate::config::Config;
use crate::lvm::{LvInfo, Lvm};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the mounted device.
    pub dev: String,
    /// Mount point (octal escapes decoded).
    pub point: String,
    /// Per-mount options (`rw`, `ro`, ...).
    pub options: Vec<String>,
    /// File system type.
    pub fstype: String,
    /// Mount source.
    pub source: String,
}

/// Parses mountinfo (skipping lines it does not understand).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(Mount {
                dev: (*l.get(2)?).to_owned(),
                point: unescape(l.get(4)?),
                options: l.get(5)?.split(',').map(str::to_owned).collect(),
                fstype: (*r.first()?).to_owned(),
                source: unescape(r.get(1)?),
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|_| b[i] == b'\\')
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The root LV must be thin, in a pool with enough headroom. Returns a description.
pub fn thin_root(cfg: &Config, lvs: &[LvInfo]) -> Result<String, String> {
    let name = format!("{}/{}", cfg.vg, cfg.root_lv);
    let root = lvs
        .iter()
        .find(|l| l.vg == cfg.vg && l.name == cfg.root_lv)
        .ok_or_else(|| format!("root LV {name} does not exist"))?;
    if root.segtype != "thin" || root.pool.is_empty() {
        return Err(format!(
            "root LV {name} is not a thin LV (segtype {})",
            if root.segtype.is_empty() {
                "?"
            } else {
                &root.segtype
            }
        ));
    }
    let pool = lvs
        .iter()
        .find(|l| l.vg == cfg.vg && l.name == root.pool)
        .ok_or_else(|| format!("thin pool {}/{} of {name} not found", cfg.vg, root.pool))?;
    let used = pool.data_percent.unwrap_or(100.0).clamp(0.0, 100.0);
    let free_pct = 100.0 - used;
    let free_bytes = (pool.size as f64 * free_pct / 100.0) as u64;
    let mib = |b: u64| b / (1024 * 1024);
    if free_pct < f64::from(cfg.min_pool_free_percent) || free_bytes < cfg.min_pool_free_bytes {
        return Err(format!(
            "thin pool {}/{} has {free_pct:.1}% ({} MiB) free; at least {}% and {} MiB are needed",
            cfg.vg,
            pool.name,
            mib(free_bytes),
            cfg.min_pool_free_percent,
            mib(cfg.min_pool_free_bytes)
        ));
    }
    Ok(format!(
        "root {name} is thin in pool {}/{} ({free_pct:.1}% / {} MiB free)",
        cfg.vg,
        pool.name,
        mib(free_bytes)
    ))
}

/// `major:minor` of a block device node.
fn dev_of(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(path).ok()?.rdev();
    Some(format!("{}:{}", libc::major(rdev), libc::minor(rdev)))
}

/// The mount checks: `/` from the root LV, the boot partition mounted read-write.
pub fn mounts(cfg: &Config, mountinfo: &str) -> Result<String, String> {
    let mounts = parse_mountinfo(mountinfo);
    let root = mounts
        .iter()
        .rev()
        .find(|m| m.point == "/")
        .ok_or("no root mount in the mount table")?;
    let lv_node = Path::new("/dev").join(&cfg.vg).join(&cfg.root_lv);
    let mapper = format!(
        "/dev/mapper/{}-{}",
        cfg.vg.replace('-', "--"),
        cfg.root_lv.replace('-', "--")
    );
    let by_name = root.source == mapper || Path::new(&root.source) == lv_node;
    match dev_of(&lv_node) {
        _ if by_name => {}
        Some(dev) if dev == root.dev => {}
        Some(_) | None => {
            return Err(format!(
                "/ is mounted from {} ({}), not from {}",
                root.source,
                root.dev,
                lv_node.display()
            ))
        }
    }
    boot_mount(cfg, &mounts)
}

/// The boot partition: mounted at `boot_dir`, read-write.
pub fn boot_mount(cfg: &Config, mounts: &[Mount]) -> Result<String, String> {
    let want = std::fs::canonicalize(&cfg.boot_dir).unwrap_or_else(|_| cfg.boot_dir.clone());
    let want = want.to_string_lossy();
    let boot = mounts
        .iter()
        .rev()
        .find(|m| m.point == want)
        .ok_or_else(|| format!("the boot partition is not mounted at {want}"))?;
    if !boot.options.iter().any(|o| o == "rw") {
        return Err(format!("the boot partition at {want} is mounted read-only"));
    }
    let meta =
        std::fs::metadata(&cfg.boot_dir).map_err(|e| format!("{}: {e}", cfg.boot_dir.display()))?;
    if meta.permissions().readonly() {
        return Err(format!("{} is not writable", cfg.boot_dir.display()));
    }
    Ok(format!("boot partition {want} ({}) rw", boot.fstype))
}

/// The full probe.
pub async fn probe(cfg: &Config, lvm: &dyn Lvm) -> Probe {
    for f in &cfg.initramfs_hook_files {
        if !f.exists() {
            return Probe::unavailable(format!(
                "the initramfs hook is not installed ({} is missing)",
                f.display()
            ));
        }
    }
    let lvs = match lvm.lvs().await {
        Ok(l) => l,
        Err(e) => return Probe::unavailable(format!("lvm2: {e}")),
    };
    let root = match thin_root(cfg, &lvs) {
        Ok(r) => r,
        Err(e) => return Probe::unavailable(e),
    };
    let mountinfo = match std::fs::read_to_string(&cfg.mountinfo_file) {
        Ok(m) => m,
        Err(e) => return Probe::unavailable(format!("{}: {e}", cfg.mountinfo_file.display())),
    };
    match mounts(cfg, &mountinfo) {
        Ok(boot) => Probe::available(format!(
            "{root}; {boot}; selector {}",
            cfg.selector.as_str()
        )),
        Err(e) => Probe::unavailable(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/mapper/vg0-root rw
27 22 8:1 / /boot/firmware rw,relatime shared:2 - vfat /dev/vda1 rw,fmask=0022
28 22 253:2 / /var/lib/fleet-agent rw,relatime shared:3 - ext4 /dev/mapper/vg0-agent--state rw
29 22 0:5 / /mnt/with\\040space ro,relatime - tmpfs none ro
";

    #[test]
    fn parses_mountinfo() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 4);
        assert_eq!((m[0].dev.as_str(), m[0].point.as_str()), ("253:1", "/"));
        assert_eq!(m[1].fstype, "vfat");
        assert_eq!(m[3].point, "/mnt/with space");
        assert!(parse_mountinfo("garbage\n\n").is_empty());
    }

    #[test]
    fn root_must_be_mounted_from_the_lv() {
        let cfg = Config::default();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg_boot = cfg.clone();
        cfg_boot.boot_dir = dir.path().to_owned();
        let info = format!(
            "22 1 253:1 / / rw - ext4 /dev/mapper/vg0-root rw\n27 22 8:1 / {} rw - vfat /dev/vda1 rw\n",
            dir.path().display()
        );
        assert!(mounts(&cfg_boot, &info).unwrap().contains("(vfat) rw"));
        let e = mounts(&cfg_boot, "22 1 8:2 / / rw - ext4 /dev/sda2 rw\n").unwrap_err();
        assert!(
            e.contains("/ is mounted from /dev/sda2 (8:2), not from /dev/vg0/root"),
            "{e}"
        );
    }

    #[test]
    fn boot_partition_must_be_mounted_rw() {
        let mut cfg = Config::default();
        let m = parse_mountinfo(MOUNTINFO);
        cfg.boot_dir = "/mnt/with space".into();
        let e = boot_mount(&cfg, &m).unwrap_err();
        assert!(e.contains("read-only"), "{e}");
        cfg.boot_dir = "/nonexistent/boot".into();
        let e = boot_mount(&cfg, &m).unwrap_err();
        assert!(e.contains("not mounted at /nonexistent/boot"), "{e}");
    }

    #[test]
    fn root_must_be_thin_with_headroom() {
        let lv = |name: &str, pool: &str, seg: &str, pct: Option<f64>| LvInfo {
            name: name.into(),
            vg: "vg0".into(),
            pool: pool.into(),
            segtype: seg.into(),
            data_percent: pct,
            size: 2 << 30,
        };
        let cfg = Config::default();
        let ok = [
            lv("pool", "", "thin-pool", Some(40.0)),
            lv("root", "pool", "thin", None),
        ];
        assert!(thin_root(&cfg, &ok).unwrap().contains("pool vg0/pool"));
        let full = [
            lv("pool", "", "thin-pool", Some(95.0)),
            lv("root", "pool", "thin", None),
        ];
        let e = thin_root(&cfg, &full).unwrap_err();
        assert!(
            e.contains("5.0% (102 MiB) free; at least 10% and 256 MiB"),
            "{e}"
        );
        let linear = [lv("root", "", "linear", None)];
        let e = thin_root(&cfg, &linear).unwrap_err();
        assert!(e.contains("not a thin LV (segtype linear)"), "{e}");
        assert!(thin_root(&cfg, &[])
            .unwrap_err()
            .contains("vg0/root does not exist"));
    }
}

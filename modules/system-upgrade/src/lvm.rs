//! The one place that runs `lvm`: listing LVs (`lvs --reportformat json`), creating the thin
//! snapshot (`lvcreate -s`) and removing it (`lvremove -y`). Behind the narrow [`Lvm`] trait
//! so the rest of the module is tested on hosts without device-mapper (see `fake_lvm`).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

/// How long one `lvm` call may take.
const LVM_TIMEOUT: Duration = Duration::from_secs(120);

/// A failed LVM operation, naming the command and quoting its stderr.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LvmError {
    /// The command could not run or failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status and the tail of stderr, or why it could not run.
        message: String,
    },
    /// Its output could not be understood.
    #[error("`{command}` printed output that is not an lvs JSON report: {message}")]
    Parse {
        /// The command line.
        command: String,
        /// What did not parse.
        message: String,
    },
}

/// One logical volume as `lvs` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct LvInfo {
    /// LV name.
    pub name: String,
    /// Volume group.
    pub vg: String,
    /// Thin pool holding it (empty when not thin).
    pub pool: String,
    /// Segment type (`thin`, `thin-pool`, `linear`, ...).
    pub segtype: String,
    /// Data usage in percent (thin LVs and pools).
    pub data_percent: Option<f64>,
    /// Size in bytes.
    pub size: u64,
}

/// LVM operations the module needs.
#[async_trait]
pub trait Lvm: Send + Sync + 'static {
    /// Every LV.
    async fn lvs(&self) -> Result<Vec<LvInfo>, LvmError>;
    /// Creates thin snapshot `vg/name` of `vg/origin`.
    async fn create_snapshot(&self, vg: &str, origin: &str, name: &str) -> Result<(), LvmError>;
    /// Removes `vg/name`.
    async fn remove(&self, vg: &str, name: &str) -> Result<(), LvmError>;
}

/// `lvs` arguments: JSON report of the fields [`parse_lvs`] reads, sizes in bytes.
pub fn lvs_args() -> Vec<String> {
    [
        "lvs",
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        "lv_name,vg_name,pool_lv,segtype,data_percent,lv_size",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `lvcreate` arguments for a thin snapshot (no size: thin).
pub fn snapshot_args(vg: &str, origin: &str, name: &str) -> Vec<String> {
    vec![
        "lvcreate".into(),
        "-s".into(),
        "-n".into(),
        name.into(),
        format!("{vg}/{origin}"),
    ]
}

/// `lvremove` arguments.
pub fn remove_args(vg: &str, name: &str) -> Vec<String> {
    vec!["lvremove".into(), "-y".into(), format!("{vg}/{name}")]
}

#[derive(Deserialize)]
struct Report {
    report: Vec<ReportEntry>,
}

#[derive(Deserialize)]
struct ReportEntry {
    #[serde(default)]
    lv: Vec<RawLv>,
}

#[derive(Deserialize)]
struct RawLv {
    lv_name: String,
    vg_name: String,
    #[serde(default)]
    pool_lv: String,
    #[serde(default)]
    segtype: String,
    #[serde(default)]
    data_percent: String,
    #[serde(default)]
    lv_size: String,
}

/// Parses `lvs --reportformat json --units b --nosuffix` output.
pub fn parse_lvs(json: &[u8]) -> Result<Vec<LvInfo>, String> {
    let report: Report = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for raw in report.report.into_iter().flat_map(|r| r.lv) {
        let size = if raw.lv_size.is_empty() {
            0
        } else {
            raw.lv_size.trim().parse::<u64>().map_err(|_| {
                format!(
                    "lv_size {:?} of {} is not a number of bytes",
                    raw.lv_size, raw.lv_name
                )
            })?
        };
        let data_percent =
            match raw.data_percent.trim() {
                "" => None,
                p => Some(p.parse::<f64>().map_err(|_| {
                    format!("data_percent {p:?} of {} is not a number", raw.lv_name)
                })?),
            };
        out.push(LvInfo {
            name: raw.lv_name,
            vg: raw.vg_name,
            pool: raw.pool_lv.trim_matches(['[', ']']).to_owned(),
            segtype: raw.segtype,
            data_percent,
            size,
        });
    }
    Ok(out)
}

/// The real thing: runs `lvm <subcommand>`.
#[derive(Debug, Clone)]
pub struct LvmCli {
    program: PathBuf,
}

impl LvmCli {
    /// Runs `program` (normally `lvm`).
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
        }
    }

    async fn run(&self, args: &[String]) -> Result<Vec<u8>, LvmError> {
        let command = format!("{} {}", self.program.display(), args.join(" "));
        crate::tool::run(&self.program, args, LVM_TIMEOUT)
            .await
            .map_err(|message| LvmError::Command { command, message })
    }
}

#[async_trait]
impl Lvm for LvmCli {
    async fn lvs(&self) -> Result<Vec<LvInfo>, LvmError> {
        let args = lvs_args();
        let out = self.run(&args).await?;
        parse_lvs(&out).map_err(|message| LvmError::Parse {
            command: format!("{} {}", self.program.display(), args.join(" ")),
            message,
        })
    }

    async fn create_snapshot(&self, vg: &str, origin: &str, name: &str) -> Result<(), LvmError> {
        self.run(&snapshot_args(vg, origin, name)).await.map(drop)
    }

    async fn remove(&self, vg: &str, name: &str) -> Result<(), LvmError> {
        self.run(&remove_args(vg, name)).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output of `lvs --reportformat json --units b --nosuffix -o ...` on the VM image.
    const REPORT: &str = r#"  {
      "report": [
          {
              "lv": [
                  {"lv_name":"agent-state", "vg_name":"vg0", "pool_lv":"", "segtype":"linear", "data_percent":"", "lv_size":"134217728"},
                  {"lv_name":"pool", "vg_name":"vg0", "pool_lv":"", "segtype":"thin-pool", "data_percent":"31.42", "lv_size":"1887436800"},
                  {"lv_name":"root", "vg_name":"vg0", "pool_lv":"pool", "segtype":"thin", "data_percent":"27.01", "lv_size":"2147483648"}
              ]
          }
      ]
  }
"#;

    #[test]
    fn parses_an_lvs_report() {
        let lvs = parse_lvs(REPORT.as_bytes()).unwrap();
        assert_eq!(lvs.len(), 3);
        let root = lvs.iter().find(|l| l.name == "root").unwrap();
        assert_eq!(
            (root.vg.as_str(), root.pool.as_str(), root.segtype.as_str()),
            ("vg0", "pool", "thin")
        );
        assert_eq!(root.size, 2_147_483_648);
        let pool = lvs.iter().find(|l| l.name == "pool").unwrap();
        assert_eq!(pool.data_percent, Some(31.42));
        assert_eq!(lvs[0].data_percent, None);
    }

    #[test]
    fn bad_reports_are_errors_not_panics() {
        assert!(parse_lvs(b"").is_err());
        assert!(parse_lvs(
            b"{\"report\":[{\"lv\":[{\"lv_name\":\"a\",\"vg_name\":\"v\",\"lv_size\":\"12G\"}]}]}"
        )
        .is_err());
        assert!(parse_lvs(b"{\"report\":[{\"lv\":[{\"lv_name\":\"a\",\"vg_name\":\"v\",\"data_percent\":\"x\"}]}]}").is_err());
        assert_eq!(parse_lvs(b"{\"report\":[{}]}").unwrap(), vec![]);
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            snapshot_args("vg0", "root", "root_preupgrade").join(" "),
            "lvcreate -s -n root_preupgrade vg0/root"
        );
        assert_eq!(
            remove_args("vg0", "root_preupgrade").join(" "),
            "lvremove -y vg0/root_preupgrade"
        );
        assert_eq!(
            lvs_args().join(" "),
            "lvs --reportformat json --units b --nosuffix -o lv_name,vg_name,pool_lv,segtype,data_percent,lv_size"
        );
    }

    #[tokio::test]
    async fn a_missing_lvm_binary_is_a_clear_error() {
        let e = LvmCli::new("/nonexistent/lvm").lvs().await.unwrap_err();
        assert!(e.to_string().contains("/nonexistent/lvm lvs"), "{e}");
        assert!(e.to_string().contains("cannot run"), "{e}");
    }
}

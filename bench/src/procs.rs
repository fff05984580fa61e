//! The process tree under a pid, read from `/proc`: RSS, context switches of every thread,
//! CPU time. Reading `/proc` never wakes the processes read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// Fields of `/proc/<pid>/stat` (or `.../task/<tid>/stat`) after the command name.
struct Stat {
    ppid: u32,
    /// utime + stime, clock ticks.
    own: u64,
    /// cutime + cstime: reaped children, clock ticks.
    reaped: u64,
    /// Start time since boot, clock ticks: tells a reused pid from the old one.
    start: u64,
}

fn stat(path: &str) -> Option<(String, Stat)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (head, rest) = text.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    // rest starts at field 3 (state): ppid is field 4, utime 14 .. cstime 17, starttime 22.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    Some((
        comm,
        Stat {
            ppid: u32::try_from(n(4)?).ok()?,
            own: n(14)? + n(15)?,
            reaped: n(16)? + n(17)?,
            start: n(22)?,
        },
    ))
}

fn pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// `root` and every descendant alive now, root first.
pub fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in pids() {
        if let Some((_, s)) = stat(&format!("/proc/{pid}/stat")) {
            children.entry(s.ppid).or_default().push(pid);
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i]) {
            out.extend(kids.iter().copied().filter(|k| *k != root));
        }
        i += 1;
    }
    out
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    status_field_at(&format!("/proc/{pid}/status"), field)
}

fn status_field_at(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// VmRSS of one process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS")
}

/// RssAnon of one process, KiB.
pub fn rss_anon_kib(pid: u32) -> Option<u64> {
    status_field(pid, "RssAnon")
}

/// What [`Window`] found over its span.
pub struct Usage {
    /// Voluntary + nonvoluntary context switches of every thread of every process seen.
    pub switches: u64,
    /// The same for the root process alone.
    pub root_switches: u64,
    /// CPU clock ticks (own time of every process seen, plus what the live ones reaped).
    pub cpu_ticks: u64,
    /// Sum of VmRSS of the tree at the end, KiB.
    pub rss_kib: u64,
    /// `comm` of every process in the tree at the end, with how many and their VmRSS (KiB).
    pub processes: BTreeMap<String, (usize, u64)>,
    /// Processes that appeared in the tree during the window (spawned children).
    pub spawned: usize,
    /// The window's real length.
    pub span: Duration,
}

/// Samples a process tree over a window. Each thread's and process's counters count from
/// their first sample (0 for one born inside the window) to their last sample, so a child
/// that lived between two samples is missed and one that died counts up to its last sample;
/// its CPU time still counts through the `cutime` of the process that reaped it.
pub struct Window {
    root: u32,
    started: Instant,
    first_pass: bool,
    /// (tid, start) -> (first, last) context switches, and the pid the thread belongs to.
    threads: HashMap<(u32, u64), (u64, u64, u32)>,
    /// (pid, start) -> (first own, last own, first reaped, last reaped).
    procs: HashMap<(u32, u64), [u64; 4]>,
    alive: HashSet<(u32, u64)>,
    spawned: usize,
}

impl Window {
    /// Starts the window with a first sample.
    pub fn start(root: u32) -> Window {
        let mut w = Window {
            root,
            started: Instant::now(),
            first_pass: true,
            threads: HashMap::new(),
            procs: HashMap::new(),
            alive: HashSet::new(),
            spawned: 0,
        };
        w.sample();
        w.first_pass = false;
        w
    }

    /// Reads the tree once more.
    pub fn sample(&mut self) {
        let born = !self.first_pass;
        self.alive.clear();
        for pid in tree(self.root) {
            let Some((_, p)) = stat(&format!("/proc/{pid}/stat")) else {
                continue;
            };
            let key = (pid, p.start);
            self.alive.insert(key);
            let entry = self.procs.entry(key).or_insert_with(|| {
                if born {
                    self.spawned += 1;
                    [0, p.own, 0, p.reaped]
                } else {
                    [p.own, p.own, p.reaped, p.reaped]
                }
            });
            entry[1] = p.own;
            entry[3] = p.reaped;
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for t in tasks.flatten() {
                let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let base = format!("/proc/{pid}/task/{tid}");
                let Some((_, ts)) = stat(&format!("{base}/stat")) else {
                    continue;
                };
                let status = format!("{base}/status");
                let (Some(v), Some(nv)) = (
                    status_field_at(&status, "voluntary_ctxt_switches"),
                    status_field_at(&status, "nonvoluntary_ctxt_switches"),
                ) else {
                    continue;
                };
                let e = self.threads.entry((tid, ts.start)).or_insert(if born {
                    (0, 0, pid)
                } else {
                    (v + nv, 0, pid)
                });
                e.1 = v + nv;
            }
        }
    }

    /// Takes the last sample and sums up.
    pub fn finish(mut self) -> Usage {
        self.sample();
        let span = self.started.elapsed();
        let switches = self
            .threads
            .values()
            .map(|(a, b, _)| b.saturating_sub(*a))
            .sum();
        let root_switches = self
            .threads
            .values()
            .filter(|(_, _, pid)| *pid == self.root)
            .map(|(a, b, _)| b.saturating_sub(*a))
            .sum();
        let cpu_ticks = self
            .procs
            .iter()
            .map(|(k, [o0, o1, r0, r1])| {
                let reaped = if self.alive.contains(k) {
                    r1.saturating_sub(*r0)
                } else {
                    0
                };
                o1.saturating_sub(*o0) + reaped
            })
            .sum();
        let mut processes = BTreeMap::new();
        let mut total_kib = 0;
        for pid in tree(self.root) {
            let rss = rss_kib(pid).unwrap_or(0);
            total_kib += rss;
            if let Some((comm, _)) = stat(&format!("/proc/{pid}/stat")) {
                let e = processes.entry(comm).or_insert((0, 0));
                e.0 += 1;
                e.1 += rss;
            }
        }
        Usage {
            switches,
            root_switches,
            cpu_ticks,
            rss_kib: total_kib,
            processes,
            spawned: self.spawned,
            span,
        }
    }
}

/// Clock ticks per second (`USER_HZ`; 100 on every Linux this runs on).
pub const TICKS_PER_SEC: f64 = 100.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_and_its_sleeping_child_are_one_tree() {
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let mut found = Vec::new();
        for _ in 0..100 {
            found = tree(sh.id());
            if found.len() >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let w = Window::start(sh.id());
        std::thread::sleep(Duration::from_millis(300));
        let u = w.finish();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &found[1].to_string()])
            .status();
        let _ = sh.wait();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(
            u.processes.get("sleep").map(|p| p.0),
            Some(1),
            "{:?}",
            u.processes
        );
        assert!(u.rss_kib > 0);
        // Two processes that only sleep do not switch more than a handful of times.
        assert!(u.switches < 50, "{}", u.switches);
    }
}

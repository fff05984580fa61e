//! `fleet-bench-containers`: the containers module against real podman, each figure beside a
//! raw baseline measured in the same run, as a ratio. Never asserts on timings.
//!
//! 1. Runtime access: the podman CLI against the libpod REST API (`podman system service`
//!    on a unix socket) for a filtered container list and a create + start + remove cycle.
//! 2. Time to Running for 1 and for 20 deployments through the agent (manifests written
//!    into a running agent's directory until `status` shows all Running) against the same
//!    containers started by plain `podman run -d` (same parallelism as the agent's
//!    default, 4); plus the agent's peak RSS and CPU time (its own, and the podman children
//!    it reaped) during each run.
//!
//! Usage: `fleet-bench-containers [AGENT_BINARY] [--runs N]` (default binary:
//! target/release/fleet-agent; N list/cycle repetitions, default 10).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet_testkit::{busybox_image, podman, wait_until, PodmanScope, TempRoot};

const SERVE: &str = "trap 'exit 0' TERM; sleep 3600 & wait";
const PARALLELISM: usize = 4;

fn main() -> std::process::ExitCode {
    let mut agent = PathBuf::from("target/release/fleet-agent");
    let mut runs = 10usize;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).unwrap_or(runs),
            "-h" | "--help" => {
                eprintln!("usage: fleet-bench-containers [AGENT_BINARY] [--runs N]");
                return std::process::ExitCode::SUCCESS;
            }
            other => agent = PathBuf::from(other),
        }
    }
    match run(&agent, runs.max(1)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-bench-containers: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(agent: &Path, runs: usize) -> Result<(), String> {
    if !agent.exists() {
        return Err(format!(
            "{} not found; build it with `cargo build --release -p fleet-agent`",
            agent.display()
        ));
    }
    let image = busybox_image("testkit").map_err(|e| e.to_string())?;
    println!("== runtime access: podman CLI vs libpod REST API ({runs} runs, median)");
    access(&image, runs)?;
    println!();
    println!("== time to Running: agent vs plain `podman run -d` (parallelism {PARALLELISM})");
    for n in [1usize, 20] {
        to_running(agent, &image, n)?;
    }
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `podman system service` on a socket in a temp dir; killed on drop.
struct Service {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    fn start() -> Result<Service, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let socket = dir.path().join("podman.sock");
        let child = Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("podman system service: {e}"))?;
        let svc = Service {
            child,
            socket,
            _dir: dir,
        };
        wait_until(Duration::from_secs(20), "podman service socket", || {
            svc.request("GET", "/v4.0.0/libpod/_ping", None)
                .ok()
                .filter(|(code, _)| *code == 200)
        })
        .map_err(|e| e.to_string())?;
        Ok(svc)
    }

    /// One HTTP/1.1 request over the unix socket; (status code, body).
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        let mut s = UnixStream::connect(&self.socket).map_err(|e| e.to_string())?;
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: d\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no HTTP status in {:?}", out.get(..80)))?;
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
        Ok((code, body))
    }

    fn expect(&self, method: &str, path: &str, body: Option<&str>) -> Result<(), String> {
        let (code, text) = self.request(method, path, body)?;
        if (200..300).contains(&code) {
            Ok(())
        } else {
            Err(format!("{method} {path}: HTTP {code}: {text}"))
        }
    }
}

fn access(image: &str, runs: usize) -> Result<(), String> {
    let scope = PodmanScope::new("bench-access").map_err(|e| e.to_string())?;
    let svc = Service::start()?;
    let label = scope.label();
    // Give the list something to list.
    for i in 0..3 {
        podman(&[
            "create",
            "--name",
            &scope.name(&format!("l{i}")),
            "--label",
            &label,
            image,
            "true",
        ])
        .map_err(|e| e.to_string())?;
    }
    let filter = format!("label={label}");
    let rest_filter = format!(
        "/v4.0.0/libpod/containers/json?all=true&filters=%7B%22label%22%3A%5B%22{}%22%5D%7D",
        label.replace('=', "%3D")
    );
    let mut cli = Vec::new();
    let mut rest = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        podman(&["ps", "-a", "--format", "json", "--filter", &filter])
            .map_err(|e| e.to_string())?;
        cli.push(t.elapsed());
        let t = Instant::now();
        svc.expect("GET", &rest_filter, None)?;
        rest.push(t.elapsed());
    }
    report("list containers", median(cli), median(rest));

    let mut cli = Vec::new();
    let mut rest = Vec::new();
    for i in 0..runs {
        let name = scope.name(&format!("c{i}"));
        let t = Instant::now();
        podman(&[
            "create", "--name", &name, "--label", &label, image, "sh", "-c", SERVE,
        ])
        .map_err(|e| e.to_string())?;
        podman(&["start", &name]).map_err(|e| e.to_string())?;
        podman(&["rm", "-f", "-t", "0", &name]).map_err(|e| e.to_string())?;
        cli.push(t.elapsed());

        let name = scope.name(&format!("r{i}"));
        let (k, v) = label.split_once('=').unwrap_or((&label, ""));
        let spec = format!(
            r#"{{"name":"{name}","image":"{image}","command":["sh","-c","{}"],"labels":{{"{k}":"{v}"}}}}"#,
            SERVE.replace('"', "\\\"")
        );
        let t = Instant::now();
        svc.expect("POST", "/v4.0.0/libpod/containers/create", Some(&spec))?;
        svc.expect(
            "POST",
            &format!("/v4.0.0/libpod/containers/{name}/start"),
            None,
        )?;
        svc.expect(
            "DELETE",
            &format!("/v4.0.0/libpod/containers/{name}?force=true&timeout=0"),
            None,
        )?;
        rest.push(t.elapsed());
    }
    report("create + start + remove", median(cli), median(rest));
    Ok(())
}

fn report(what: &str, cli: Duration, rest: Duration) {
    println!(
        "{what:<26} CLI {:>8.1} ms   REST {:>8.1} ms   CLI/REST {:.2}x",
        ms(cli),
        ms(rest),
        cli.as_secs_f64() / rest.as_secs_f64()
    );
}

/// (utime + stime, cutime + cstime) of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime is field 14 (index 11 here).
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    Some((f.get(11)? + f.get(12)?, f.get(13)? + f.get(14)?))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn status_json(agent: &Path, config: &Path) -> Option<serde_json::Value> {
    let out = Command::new(agent)
        .arg("--config")
        .arg(config)
        .args(["status", "--json"])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn all_running(st: &serde_json::Value, n: usize) -> bool {
    st["deployments"]
        .as_array()
        .is_some_and(|a| a.len() == n && a.iter().all(|d| d["phase"] == "Running"))
}

fn to_running(agent: &Path, image: &str, n: usize) -> Result<(), String> {
    // Baseline: plain podman run -d of the same containers, PARALLELISM at a time.
    let scope = PodmanScope::new("bench-plain").map_err(|e| e.to_string())?;
    let label = scope.label();
    let started = Instant::now();
    let names: Vec<String> = (0..n).map(|i| scope.name(&format!("p{i}"))).collect();
    std::thread::scope(|s| {
        let per = n.div_ceil(PARALLELISM);
        let handles: Vec<_> = names
            .chunks(per)
            .map(|chunk| {
                let label = &label;
                s.spawn(move || {
                    for name in chunk {
                        podman(&[
                            "run", "-d", "--name", name, "--label", label, image, "sh", "-c", SERVE,
                        ])
                        .map_err(|e| e.to_string())?;
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| "podman run thread panicked".to_owned())?
        })
    })?;
    let plain = started.elapsed();
    drop(scope);

    // The agent: running and idle; then n manifests appear.
    let scope = PodmanScope::new("bench-agent").map_err(|e| e.to_string())?;
    let root = TempRoot::new().map_err(|e| e.to_string())?;
    let config = root.write_config(&format!(
        "device_id = \"bench\"\nstate_dir = {:?}\nrun_dir = {:?}\n\
         [modules.containers]\ninstance = \"{id}\"\nlabels = {{ \"fleet.test.scope\" = \"{id}\" }}\n\
         [control]\ndeployments_dir = {:?}\n",
        root.state(),
        root.run(),
        root.deployments(),
        id = scope.id()
    ));
    let mut child = Command::new(agent)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("NOTIFY_SOCKET")
        .spawn()
        .map_err(|e| format!("{}: {e}", agent.display()))?;
    let pid = child.id();
    let result = (|| {
        wait_until(Duration::from_secs(30), "agent status", || {
            status_json(agent, &config).filter(|s| s["running"] == true)
        })
        .map_err(|e| e.to_string())?;
        let (own0, kids0) = cpu_ticks(pid).ok_or("agent exited")?;
        let mut peak_rss = rss_kib(pid).unwrap_or(0);
        let started = Instant::now();
        for i in 0..n {
            let text = format!(
                "apiVersion = \"fleet/v1\"\nname = \"b{i:02}\"\nrevision = 1\n[container]\nimage = \"{image}\"\ncommand = [\"sh\", \"-c\", {SERVE:?}]\n[lifecycle]\ngracePeriodSecs = 2\n"
            );
            std::fs::write(root.deployments().join(format!("b{i:02}.toml")), text)
                .map_err(|e| e.to_string())?;
        }
        wait_until(Duration::from_secs(300), "all Running", || {
            peak_rss = peak_rss.max(rss_kib(pid).unwrap_or(0));
            status_json(agent, &config).filter(|s| all_running(s, n))
        })
        .map_err(|e| e.to_string())?;
        let through_agent = started.elapsed();
        let (own1, kids1) = cpu_ticks(pid).ok_or("agent exited")?;
        let tick = 100.0; // USER_HZ on Linux
        println!(
            "{n:>2} deployment(s): agent {:>8.0} ms   plain podman run {:>8.0} ms   agent/plain {:.2}x",
            ms(through_agent),
            ms(plain),
            through_agent.as_secs_f64() / plain.as_secs_f64()
        );
        println!(
            "                 agent peak RSS {:.1} MiB, CPU {:.2} s own + {:.2} s in reaped podman children",
            peak_rss as f64 / 1024.0,
            (own1 - own0) as f64 / tick,
            (kids1 - kids0) as f64 / tick
        );
        // Remove them all through the agent, then check nothing is left.
        for i in 0..n {
            let _ = std::fs::remove_file(root.deployments().join(format!("b{i:02}.toml")));
        }
        wait_until(Duration::from_secs(300), "all removed", || {
            scope.containers().ok().filter(|c| c.is_empty())
        })
        .map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

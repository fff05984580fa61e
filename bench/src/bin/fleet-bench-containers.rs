//! `fleet-bench-containers`: how to reach podman, the podman CLI against the libpod REST API
//! (`podman system service` on a unix socket), for a filtered container list and a create +
//! start + remove cycle, each as a median beside the other. Never asserts on timings. (Time
//! to Running through the agent is a figure of `fleet-bench`, `scripts/bench`.)
//!
//! Usage: `fleet-bench-containers [--runs N]` (N repetitions, default 10).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet_testkit::{busybox_image, podman, wait_until, PodmanScope};

const SERVE: &str = "trap 'exit 0' TERM; sleep 3600 & wait";

fn main() -> std::process::ExitCode {
    let mut runs = 10usize;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).unwrap_or(runs),
            "-h" | "--help" => {
                eprintln!("usage: fleet-bench-containers [--runs N]");
                return std::process::ExitCode::SUCCESS;
            }
            other => {
                eprintln!("fleet-bench-containers: unknown argument {other}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    match run(runs.max(1)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-bench-containers: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(runs: usize) -> Result<(), String> {
    let image = busybox_image("testkit").map_err(|e| e.to_string())?;
    println!("== runtime access: podman CLI vs libpod REST API ({runs} runs, median)");
    access(&image, runs)
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

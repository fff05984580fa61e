//! The time guard against a real SNTP server on loopback (testkit's: real UDP, real packets):
//! the agent starts on a good clock, refuses to start (exit 4, the exact message) on a
//! skewed one, starts flagged when no server answers, holds and then starts by itself under
//! systemd once the clock is fixed, and mid-run refuses time-bound commands while skewed.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::{status, wait_status, write_config, AgentProc};
use fleet_agent::config::Config;
use fleet_agent::Agent;
use fleet_contract::{CommandEnvelope, SignedCommand, COMMAND_API_VERSION};
use fleet_testkit::{NotifySocket, SntpServer, TempRoot};

const SKEW_45: &str = "clock skew 45s exceeds 30s: signature and token validation would fail; enable systemd-timesyncd or chrony";
const SKEW_300: &str = "clock skew 300s exceeds 30s: signature and token validation would fail; enable systemd-timesyncd or chrony";

fn server(offset_ms: i64) -> SntpServer {
    let s = SntpServer::start(Duration::ZERO, true).unwrap();
    s.set_offset_ms(offset_ms);
    s
}

fn guard(servers: &[String], extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "[modules.time-guard]\nservers = [{}]\nretry_secs = 1\nquery_timeout_ms = 500\n{extra}\n",
        list.join(", ")
    )
}

fn log_of(root: &TempRoot) -> String {
    std::fs::read_to_string(root.config_path().with_file_name("agent.log")).unwrap_or_default()
}

/// Waits for the agent to exit by itself.
fn exit_within(agent: &mut AgentProc, limit: Duration) -> Option<ExitStatus> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some(st) = agent.child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn the_agent_starts_refuses_with_exit_4_and_the_exact_message_and_refuses() {
    // 0 s: starts, clock trusted.
    let good = server(0);
    let root = TempRoot::new().unwrap();
    let cfg = write_config(&root, &guard(&[good.addr().to_string()], ""));
    let mut agent = AgentProc::spawn(&cfg, None);
    let st = wait_status(&cfg, "running with a trusted clock", |s| {
        s["running"] == true && s["clock"]["state"] == "trusted"
    });
    assert!(
        st["clock"]["offset_ms"].as_i64().unwrap().abs() < 1000,
        "{st:#}"
    );
    assert!(good.requests() >= 1);
    let (code, _) = agent.terminate(Duration::from_secs(15)).unwrap();
    assert_eq!(code.code(), Some(0));

    // +45 s and -5 min: exit 4 with the message, nothing started.
    for (offset_ms, message) in [(45_000, SKEW_45), (-300_000, SKEW_300)] {
        let srv = server(offset_ms);
        let root = TempRoot::new().unwrap();
        let cfg = write_config(&root, &guard(&[srv.addr().to_string()], ""));
        let mut agent = AgentProc::spawn(&cfg, None);
        let code = exit_within(&mut agent, Duration::from_secs(20)).expect("agent exits");
        let log = log_of(&root);
        assert_eq!(code.code(), Some(4), "offset {offset_ms} ms; log:\n{log}");
        assert!(log.contains(message), "offset {offset_ms} ms; log:\n{log}");
        assert!(
            !log.contains("fleet-agent ready"),
            "refused, yet started:\n{log}"
        );
    }
}

#[test]
fn with_no_server_answering_the_agent_starts_flagged_unverified() {
    // A port nobody listens on (the kernel answers port unreachable) and a silent server.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let silent = server(0);
    silent.set_behavior(fleet_testkit::SntpBehavior::Silent);
    let root = TempRoot::new().unwrap();
    let cfg = write_config(
        &root,
        &guard(&[closed_addr.clone(), silent.addr().to_string()], ""),
    );
    let mut agent = AgentProc::spawn(&cfg, None);
    let st = wait_status(&cfg, "running, clock unverified", |s| {
        s["running"] == true && s["clock"]["state"] == "unverified"
    });
    let reason = st["clock"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&closed_addr) && reason.contains(&silent.addr().to_string()),
        "each server's failure is named: {reason}"
    );
    let human = common::agent(&["--config", cfg.to_str().unwrap(), "status"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("clock unverified"), "{human}");
    assert!(log_of(&root).contains("clock unverified"));
    assert_eq!(
        agent.terminate(Duration::from_secs(15)).unwrap().0.code(),
        Some(0)
    );
}

#[test]
fn under_systemd_a_refused_start_holds_and_starts_once_the_clock_is_fixed() {
    let srv = server(45_000);
    let root = TempRoot::new().unwrap();
    let cfg = write_config(&root, &guard(&[srv.addr().to_string()], "hold_secs = 120"));
    let notify = NotifySocket::new().unwrap();
    let mut agent = AgentProc::spawn(&cfg, Some(&notify));
    let lines = notify
        .wait_for(
            &format!("STATUS=not started: {SKEW_45}"),
            Duration::from_secs(20),
        )
        .unwrap();
    assert!(!lines.iter().any(|l| l == "READY=1"), "{lines:?}");
    // Held across several re-checks: start timeout extended past the next answer (pause 1 s
    // + re-check 1 s + 10 s), the watchdog pinged, not READY, still alive.
    let lines = notify
        .wait_for("EXTEND_TIMEOUT_USEC=12000000", Duration::from_secs(10))
        .unwrap();
    assert!(!lines.iter().any(|l| l == "READY=1"), "{lines:?}");
    notify
        .wait_for("WATCHDOG=1", Duration::from_secs(5))
        .unwrap();
    let asked = srv.requests();
    fleet_testkit::wait_until(Duration::from_secs(10), "three more re-checks", || {
        (srv.requests() >= asked + 3).then_some(())
    })
    .unwrap();
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "exited while holding"
    );

    srv.set_offset_ms(0);
    notify.wait_for("READY=1", Duration::from_secs(15)).unwrap();
    wait_status(&cfg, "running, clock trusted", |s| {
        s["running"] == true && s["clock"]["state"] == "trusted"
    });
    let log = log_of(&root);
    assert_eq!(
        log.matches(SKEW_45).count(),
        1,
        "the refusal is logged once per hold, not per re-check:\n{log}"
    );
    assert!(log.contains("start gate admits now"), "{log}");
    assert_eq!(
        agent.terminate(Duration::from_secs(15)).unwrap().0.code(),
        Some(0)
    );
}

#[test]
fn under_systemd_the_hold_ends_in_exit_4_and_degrade_starts_flagged() {
    let srv = server(45_000);
    let root = TempRoot::new().unwrap();
    let cfg = write_config(&root, &guard(&[srv.addr().to_string()], "hold_secs = 2"));
    let notify = NotifySocket::new().unwrap();
    let mut agent = AgentProc::spawn(&cfg, Some(&notify));
    let code = exit_within(&mut agent, Duration::from_secs(30)).expect("exits after the hold");
    assert_eq!(code.code(), Some(4), "{}", log_of(&root));

    let root = TempRoot::new().unwrap();
    let cfg = write_config(
        &root,
        &guard(&[srv.addr().to_string()], "on_skew = \"degrade\""),
    );
    let mut agent = AgentProc::spawn(&cfg, None);
    let st = wait_status(&cfg, "running degraded, clock skewed", |s| {
        s["running"] == true && s["clock"]["state"] == "skewed"
    });
    assert_eq!(st["clock"]["limit_ms"], 30_000);
    assert!((st["clock"]["offset_ms"].as_i64().unwrap() - 45_000).abs() < 1000);
    let human = common::agent(&["--config", cfg.to_str().unwrap(), "status"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("SKEWED"));
    assert!(status(&cfg).is_some());
    assert_eq!(
        agent.terminate(Duration::from_secs(15)).unwrap().0.code(),
        Some(0)
    );
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn ping(pair: &ring::signature::Ed25519KeyPair, id: &str) -> Vec<u8> {
    let env = CommandEnvelope {
        api_version: COMMAND_API_VERSION.into(),
        id: id.into(),
        device: "test-dev".into(),
        verb: "ping".into(),
        args: serde_json::Value::Null,
        actor: "test".into(),
        issued_at: now(),
        expires_at: now() + 300,
    };
    SignedCommand::sign(&env, pair).encode()
}

async fn wait_clock(handle: &fleet_agent::AgentHandle, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let clock = handle.heartbeat().clock;
        if clock["state"] == state {
            return clock;
        }
        assert!(Instant::now() < deadline, "clock never {state}: {clock}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_run_drift_flags_the_heartbeat_and_refuses_signed_commands_until_fixed() {
    let srv = server(0);
    let der = fleet_contract::generate_key_pkcs8().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let pair = fleet_contract::key_pair_from_b64(&b64).unwrap();
    let public = fleet_contract::public_key_b64(&pair);
    let root = TempRoot::new().unwrap();
    // recheck_hours = 1/3600: a re-check every second instead of every 6 h.
    let path = write_config(
        &root,
        &format!(
            "{}\n[[trust.operators]]\nname = \"admin\"\npublic_key = \"{public}\"\nrole = \"admin\"\n",
            guard(&[srv.addr().to_string()], "recheck_hours = 0.000278")
        ),
    );
    // The time guard alone, as the compiled-in list would build it from this config.
    let section: toml::Value = toml::from_str(&guard(
        &[srv.addr().to_string()],
        "recheck_hours = 0.000278",
    ))
    .unwrap();
    let module =
        (fleet_mod_time_guard::DESCRIPTOR.build)(Some(&section["modules"]["time-guard"])).unwrap();
    let agent = Agent::builder(Config::load(&path).unwrap())
        .without_compiled_in()
        .module(module)
        .build()
        .unwrap();
    let handle = agent.handle();
    let stop = fleet_module_api::CancellationToken::new();
    let task = tokio::spawn(agent.run(stop.clone()));

    wait_clock(&handle, "trusted").await;
    let ok = handle.signed_command(&ping(&pair, "c-1")).await;
    assert!(ok.ok, "{ok:?}");

    srv.set_offset_ms(45_000);
    let clock = wait_clock(&handle, "skewed").await;
    assert!(
        (clock["offset_ms"].as_i64().unwrap() - 45_000).abs() < 1000,
        "{clock}"
    );
    let refused = handle.signed_command(&ping(&pair, "c-2")).await;
    assert!(!refused.ok, "{refused:?}");
    assert_eq!(refused.code, "clock-untrusted");
    assert!(
        refused
            .message
            .starts_with("clock not trusted: skew 45s exceeds 30s"),
        "{}",
        refused.message
    );

    srv.set_offset_ms(0);
    wait_clock(&handle, "trusted").await;
    let ok = handle.signed_command(&ping(&pair, "c-3")).await;
    assert!(ok.ok, "recovered with no restart: {ok:?}");
    let hb = handle.heartbeat();
    let guard = hb.modules.iter().find(|m| m.name == "time-guard").unwrap();
    assert_eq!(guard.restarts, 0);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

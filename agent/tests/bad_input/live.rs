//! The live agent on one control plane: the real `fleet-agent` binary, a real broker
//! (nats-server -js or mosquitto; none for the local plane), real podman running two good
//! deployments in the test's own podman scope, and the suite's hostile documents fed where
//! the plane reads desired state and commands.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_contract::names;
use fleet_testkit::{wait_until, Mosquitto, NatsServer, PodmanScope, TempRoot};
use serde_json::Value;

use super::common::AgentProc;
use super::table::{self, Case, Expect, Kind, DEV, GOOD_IMAGE};

pub const GOOD: [&str; 2] = ["good-a", "good-b"];
/// Generous: podman on a loaded 2-core machine takes seconds per container.
pub const CONVERGE: Duration = Duration::from_secs(120);
/// Number and size of the over-cap documents of the memory check (issue class 6).
pub const BIG_KEYS: usize = 40;
pub const BIG_BYTES: usize = 1_000_000;
/// RSS after the hostile keys are deleted may exceed the idle figure by this much ("a few
/// MiB": measured +2.9 to +3.5 MiB on the three planes; 150 to 200 MiB before the fixes).
pub const RSS_SLACK_KIB: u64 = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    Nats,
    Mqtt,
    Local,
}

/// A command reply seen by the test: (correlation or request tag, reply JSON).
type Replies = Arc<Mutex<Vec<Value>>>;

/// Every retained/status/heartbeat/audit document the plane published, with its subject.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

pub struct Rig {
    pub plane: Plane,
    pub root: TempRoot,
    pub scope: PodmanScope,
    pub config: PathBuf,
    pub secret: String,
    pub kp: ring::signature::Ed25519KeyPair,
    pub nats: Option<NatsServer>,
    pub mqtt: Option<Mosquitto>,
    pub agent: Option<AgentProc>,
    pub rt: tokio::runtime::Runtime,
    pub nats_client: Option<async_nats::Client>,
    mqtt_client: Option<rumqttc::v5::AsyncClient>,
    acks: Arc<AtomicUsize>,
    pub replies: Replies,
    pub seen: Seen,
    seq: AtomicUsize,
}

/// What the suite found wrong, one line each, prefixed with the plane.
#[derive(Default)]
pub struct Findings(pub Vec<String>);

impl Findings {
    pub fn check(&mut self, ok: bool, line: impl FnOnce() -> String) {
        if !ok {
            self.0.push(line());
        }
    }
}

impl Rig {
    /// `None` (skip) when podman or the plane's broker is not installed.
    pub fn start(plane: Plane, secret: &str) -> Option<Rig> {
        let broker = match plane {
            Plane::Nats => Some("nats-server"),
            Plane::Mqtt => Some("mosquitto"),
            Plane::Local => None,
        };
        if !fleet_testkit::require("podman") || !broker.is_none_or(fleet_testkit::require) {
            return None;
        }
        let image = fleet_testkit::busybox_image("testkit").unwrap();
        assert_eq!(image, GOOD_IMAGE, "the testkit busybox image");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let root = TempRoot::new().unwrap();
        let scope = PodmanScope::new("badin").unwrap();
        let (kp, _, public_b64) = super::operator_key();
        let nats = (plane == Plane::Nats).then(|| NatsServer::start_jetstream().unwrap());
        let mqtt = (plane == Plane::Mqtt).then(|| Mosquitto::start().unwrap());
        let plane_toml = match plane {
            Plane::Nats => format!(
                "plane = \"nats\"\n[control.nats]\nservers = [\"{}\"]\n",
                nats.as_ref().unwrap().url()
            ),
            Plane::Mqtt => format!(
                "plane = \"mqtt\"\n[control.mqtt]\nhost = \"127.0.0.1\"\nport = {}\n",
                mqtt.as_ref().unwrap().port()
            ),
            Plane::Local => "plane = \"local\"\n".to_owned(),
        };
        let config = root.write_config(&format!(
            "device_id = \"{DEV}\"\nstate_dir = {:?}\nrun_dir = {:?}\nheartbeat_interval_secs = 1\n\
             [[trust.operators]]\nname = \"admin\"\npublic_key = \"{public_b64}\"\nrole = \"admin\"\n\
             [modules.containers]\ninstance = \"{id}\"\nlabels = {{ \"fleet.test.scope\" = \"{id}\" }}\n\
             backoff_initial_secs = 1\nbackoff_max_secs = 4\nresync_secs = 5\n\
             [control]\ndeployments_dir = {:?}\n{plane_toml}",
            root.state(),
            root.run(),
            root.deployments(),
            id = scope.id(),
        ));
        std::fs::create_dir_all(root.deployments()).unwrap();
        let mut rig = Rig {
            plane,
            root,
            scope,
            config,
            secret: secret.to_owned(),
            kp,
            nats,
            mqtt,
            agent: None,
            rt,
            nats_client: None,
            mqtt_client: None,
            acks: Arc::new(AtomicUsize::new(0)),
            replies: Arc::default(),
            seen: Arc::default(),
            seq: AtomicUsize::new(0),
        };
        rig.connect();
        Some(rig)
    }

    /// The test's own client of the broker: creates the buckets (NATS) and records every
    /// status, heartbeat, audit document and command reply the agent publishes.
    fn connect(&mut self) {
        match self.plane {
            Plane::Nats => {
                let url = self.nats.as_ref().unwrap().url();
                let seen = self.seen.clone();
                let replies = self.replies.clone();
                let client = self.rt.block_on(async move {
                    let client = async_nats::connect(&url).await.unwrap();
                    crate::common::init_buckets(&client).await;
                    for subject in [
                        names::nats_hb_subject(DEV),
                        names::nats_audit_subject(DEV),
                        format!("$KV.{}.>", names::STATUS_BUCKET),
                    ] {
                        let mut sub = client.subscribe(subject).await.unwrap();
                        let seen = seen.clone();
                        tokio::spawn(async move {
                            while let Some(m) = futures::StreamExt::next(&mut sub).await {
                                seen.lock()
                                    .unwrap()
                                    .push((m.subject.to_string(), m.payload.to_vec()));
                            }
                        });
                    }
                    let mut inbox = client.subscribe("bad-input.replies").await.unwrap();
                    tokio::spawn(async move {
                        while let Some(m) = futures::StreamExt::next(&mut inbox).await {
                            let v = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                            replies.lock().unwrap().push(v);
                        }
                    });
                    client
                });
                self.nats_client = Some(client);
            }
            Plane::Mqtt => {
                use rumqttc::v5::mqttbytes::v5::Packet;
                use rumqttc::v5::mqttbytes::QoS;
                use rumqttc::v5::{AsyncClient, Event, MqttOptions};
                let port = self.mqtt.as_ref().unwrap().port();
                let mut o = MqttOptions::new("bad-input-sender", "127.0.0.1", port);
                o.set_keep_alive(Duration::from_secs(30));
                o.set_max_packet_size(Some(4 << 20));
                let _guard = self.rt.enter();
                let (c, mut ev) = AsyncClient::new(o, 4096);
                let (acks, seen, replies) =
                    (self.acks.clone(), self.seen.clone(), self.replies.clone());
                self.rt.spawn(async move {
                    loop {
                        match ev.poll().await {
                            Ok(Event::Incoming(Packet::PubAck(_))) => {
                                acks.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(Event::Incoming(Packet::Publish(p))) => {
                                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                                if topic == "bad-input/replies" {
                                    let v =
                                        serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                                    replies.lock().unwrap().push(v);
                                } else if !topic.contains("/desired/") && !topic.ends_with("/cmd") {
                                    seen.lock().unwrap().push((topic, p.payload.to_vec()));
                                }
                            }
                            Ok(_) => {}
                            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                        }
                    }
                });
                self.rt.block_on(async {
                    c.subscribe(format!("{}/#", names::mqtt_prefix(DEV)), QoS::AtLeastOnce)
                        .await
                        .unwrap();
                    c.subscribe("bad-input/replies", QoS::AtLeastOnce)
                        .await
                        .unwrap();
                });
                self.mqtt_client = Some(c);
            }
            Plane::Local => {}
        }
    }

    pub fn spawn_agent(&mut self) {
        self.agent = Some(AgentProc::spawn_with_env(
            &self.config,
            None,
            &[("NO_COLOR", "1")],
        ));
    }

    pub fn stop_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.terminate(Duration::from_secs(30));
        }
    }

    pub fn pid(&self) -> i32 {
        self.agent.as_ref().expect("agent running").pid()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_file_name("agent.log")).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..]
            .iter()
            .map(|l| super::cut(l))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The good deployment `name`: a real container, with the planted secret in its env.
    pub fn good_doc(&self, name: &str) -> Vec<u8> {
        match self.plane {
            Plane::Local => table::manifest_toml(name, GOOD_IMAGE, &self.secret).into_bytes(),
            _ => {
                serde_json::to_vec(&table::manifest_value(name, GOOD_IMAGE, &self.secret)).unwrap()
            }
        }
    }

    /// Writes deployment document `name` where the plane reads it.
    pub fn put_deployment(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        match self.plane {
            Plane::Nats => self.kv_put(&names::kv_deploy_key(DEV, name), bytes),
            Plane::Mqtt => self.mqtt_publish(&names::mqtt_desired_deploy(DEV, name), bytes, true),
            Plane::Local => {
                if name.is_empty() || name.contains('/') || name.len() > 250 {
                    return Err("not a file name".into());
                }
                let dir = self.root.deployments();
                let tmp = dir.join(format!(".{name}.tmp"));
                std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
                std::fs::rename(&tmp, dir.join(format!("{name}.toml"))).map_err(|e| e.to_string())
            }
        }
    }

    pub fn delete_deployment(&self, name: &str) -> Result<(), String> {
        match self.plane {
            Plane::Nats => self.kv_delete(&names::kv_deploy_key(DEV, name)),
            Plane::Mqtt => self.mqtt_publish(&names::mqtt_desired_deploy(DEV, name), b"", true),
            Plane::Local => {
                std::fs::remove_file(self.root.deployments().join(format!("{name}.toml")))
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Writes the `<device>.system` / `<device>.agent` document (`agent`: false for system).
    pub fn put_singleton(&self, agent: bool, bytes: &[u8]) -> Result<(), String> {
        match (self.plane, agent) {
            (Plane::Nats, false) => self.kv_put(&names::kv_system_key(DEV), bytes),
            (Plane::Nats, true) => self.kv_put(&names::kv_agent_key(DEV), bytes),
            (Plane::Mqtt, false) => {
                self.mqtt_publish(&names::mqtt_desired_system(DEV), bytes, true)
            }
            (Plane::Mqtt, true) => self.mqtt_publish(&names::mqtt_desired_agent(DEV), bytes, true),
            (Plane::Local, false) => {
                let file = self
                    .root
                    .deployments()
                    .parent()
                    .unwrap()
                    .join("system.toml");
                std::fs::write(file, bytes).map_err(|e| e.to_string())
            }
            (Plane::Local, true) => Err("the local plane has no agent document".into()),
        }
    }

    pub fn delete_singleton(&self, agent: bool) {
        let _ = match (self.plane, agent) {
            (Plane::Nats, false) => self.kv_delete(&names::kv_system_key(DEV)),
            (Plane::Nats, true) => self.kv_delete(&names::kv_agent_key(DEV)),
            (Plane::Mqtt, false) => self.mqtt_publish(&names::mqtt_desired_system(DEV), b"", true),
            (Plane::Mqtt, true) => self.mqtt_publish(&names::mqtt_desired_agent(DEV), b"", true),
            (Plane::Local, false) => std::fs::remove_file(
                self.root
                    .deployments()
                    .parent()
                    .unwrap()
                    .join("system.toml"),
            )
            .map_err(|e| e.to_string()),
            (Plane::Local, true) => Ok(()),
        };
    }

    fn kv_put(&self, key: &str, bytes: &[u8]) -> Result<(), String> {
        let client = self.nats_client.clone().unwrap();
        let (key, bytes) = (key.to_owned(), bytes.to_vec());
        self.rt.block_on(async move {
            let js = async_nats::jetstream::new(client);
            let kv = js
                .get_key_value(names::DESIRED_BUCKET)
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::timeout(Duration::from_secs(10), kv.put(key, bytes.into()))
                .await
                .map_err(|_| "timed out".to_owned())?
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }

    fn kv_delete(&self, key: &str) -> Result<(), String> {
        let client = self.nats_client.clone().unwrap();
        let key = key.to_owned();
        self.rt.block_on(async move {
            let js = async_nats::jetstream::new(client);
            let kv = js
                .get_key_value(names::DESIRED_BUCKET)
                .await
                .map_err(|e| e.to_string())?;
            kv.delete(key).await.map_err(|e| e.to_string())
        })
    }

    fn mqtt_publish(&self, topic: &str, bytes: &[u8], retain: bool) -> Result<(), String> {
        use rumqttc::v5::mqttbytes::QoS;
        let c = self.mqtt_client.clone().unwrap();
        let (topic, bytes) = (topic.to_owned(), bytes.to_vec());
        let before = self.acks.load(Ordering::SeqCst);
        self.rt
            .block_on(async move { c.publish(topic, QoS::AtLeastOnce, retain, bytes).await })
            .map_err(|e| e.to_string())?;
        // One message in flight at a time keeps the order and tells a refused publish.
        wait_until(Duration::from_secs(10), "PUBACK", || {
            (self.acks.load(Ordering::SeqCst) > before).then_some(())
        })
        .map_err(|e| e.to_string())
    }

    /// Sends a command's wire form; the reply (if any) lands in `replies`.
    pub fn send_command(&self, bytes: &[u8]) -> Result<(), String> {
        match self.plane {
            Plane::Nats => {
                let client = self.nats_client.clone().unwrap();
                let bytes = bytes.to_vec();
                self.rt.block_on(async move {
                    client
                        .publish_with_reply(
                            names::nats_cmd_subject(DEV),
                            "bad-input.replies",
                            bytes.into(),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    client.flush().await.map_err(|e| e.to_string())
                })
            }
            Plane::Mqtt => {
                use rumqttc::v5::mqttbytes::v5::PublishProperties;
                use rumqttc::v5::mqttbytes::QoS;
                let c = self.mqtt_client.clone().unwrap();
                let bytes = bytes.to_vec();
                let n = self.seq.fetch_add(1, Ordering::SeqCst);
                let before = self.acks.load(Ordering::SeqCst);
                self.rt
                    .block_on(async move {
                        let props = PublishProperties {
                            response_topic: Some("bad-input/replies".into()),
                            correlation_data: Some(format!("c{n}").into_bytes().into()),
                            ..Default::default()
                        };
                        c.publish_with_properties(
                            names::mqtt_cmd(DEV),
                            QoS::AtLeastOnce,
                            false,
                            bytes,
                            props,
                        )
                        .await
                    })
                    .map_err(|e| e.to_string())?;
                wait_until(Duration::from_secs(10), "PUBACK", || {
                    (self.acks.load(Ordering::SeqCst) > before).then_some(())
                })
                .map_err(|e| e.to_string())
            }
            Plane::Local => Err("the local plane takes no network commands".into()),
        }
    }

    /// A signed ping with a fresh id; true when the device answered ok.
    pub fn ping(&self, tag: &str) -> Result<Value, String> {
        let now = super::unix_now();
        let id = format!("ping-{tag}-{}", self.seq.fetch_add(1, Ordering::SeqCst));
        let env = table::envelope_value(&id, now);
        let bytes = super::sign_payload(&self.kp, &serde_json::to_vec(&env).unwrap());
        self.send_command(&bytes)?;
        wait_until(Duration::from_secs(15), &format!("a reply to {id}"), || {
            self.replies
                .lock()
                .unwrap()
                .iter()
                .find(|r| r["id"] == id.as_str())
                .cloned()
        })
        .map_err(|e| e.to_string())
    }

    /// Count of heartbeats (NATS subject / MQTT topic) seen so far.
    pub fn heartbeats(&self) -> usize {
        let hb = match self.plane {
            Plane::Nats => names::nats_hb_subject(DEV),
            Plane::Mqtt => names::mqtt_hb(DEV),
            Plane::Local => return 0,
        };
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| *s == hb)
            .count()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let t = std::time::Instant::now();
        if let Some(mut a) = self.agent.take() {
            // SIGTERM, then SIGKILL (AgentProc's drop) if it is not gone within 5 s.
            if a.terminate(Duration::from_secs(5)).is_none() {
                eprintln!(
                    "{:?} plane: the agent did not exit within 5 s of SIGTERM",
                    self.plane
                );
            }
        }
        let _ = self.scope.cleanup();
        eprintln!(
            "{:?} plane: teardown took {:.0} s",
            self.plane,
            t.elapsed().as_secs_f64()
        );
    }
}

/// The hostile deployment documents for this plane, each with the key it is stored under.
pub fn hostile_deployments(plane: Plane, cases: &[Case]) -> Vec<(String, &Case)> {
    let kind = if plane == Plane::Local {
        Kind::ManifestToml
    } else {
        Kind::ManifestJson
    };
    cases
        .iter()
        .filter(|c| c.kind == kind)
        .map(|c| {
            let key = if c.name == "hostile" {
                format!("h-{}", c.id)
            } else {
                c.name.clone()
            };
            (key, c)
        })
        .collect()
}

/// The document stored under `key`: the base name `hostile` replaced by the key, so only the
/// case's own mutation is wrong with it.
pub fn keyed(key: &str, case: &Case) -> Vec<u8> {
    if case.name != "hostile" {
        return case.bytes.clone();
    }
    let (from, to): (&[u8], String) = match case.kind {
        Kind::ManifestToml => (b"name = \"hostile\"", format!("name = \"{key}\"")),
        _ => (b"\"name\":\"hostile\"", format!("\"name\":\"{key}\"")),
    };
    match case.bytes.windows(from.len()).position(|w| w == from) {
        Some(i) => [
            &case.bytes[..i],
            to.as_bytes(),
            &case.bytes[i + from.len()..],
        ]
        .concat(),
        None => case.bytes.clone(),
    }
}

/// Is `expect` a refusal? (Names of containers that must not exist.)
pub fn must_refuse(c: &Case) -> bool {
    c.expect == Expect::Refused
}

//! Whole-file conversions: exact manifests, every key not carried named, refusals located.

use std::collections::BTreeMap;

use fleet_contract::{
    BindMount, ContainerSpec, Deployment, DeviceMapping, ExecProbe, Lifecycle, LogOptions,
    NetworkMode, PortMapping, Probe, Protocol, Resources, RestartPolicy, TmpfsMount, VolumeMount,
};

use super::*;

const COMPOSE: &str = r#"
version: "3.8"
x-common: &common
  restart: unless-stopped
services:
  web:
    <<: *common
    image: registry.local:5000/web:1.2
    command: httpd -f -p 8080 -h '/srv/www'
    environment:
      MODE: production
      PORT: 8080
      PRICE: $$5
    ports:
      - "8080:80"
      - "127.0.0.1:5683:5683/udp"
      - "9000-9001:9000-9001"
      - target: 443
        published: "8443"
        host_ip: "::1"
    volumes:
      - db_data:/var/lib/db
      - /srv/fleet/web:/etc/web:ro
      - type: tmpfs
        target: /cache
        tmpfs: { size: 16m }
    devices:
      - "/dev/i2c-1:/dev/i2c-1:rw"
      - /dev/ttyUSB0
    network_mode: bridge
    mem_limit: 32m
    cpus: 0.5
    pids_limit: 64
    user: "1000:1000"
    cap_add: [NET_BIND_SERVICE]
    cap_drop: [ALL]
    read_only: true
    tmpfs: /run:size=8m
    labels:
      - com.example.team=plant-3
    working_dir: /srv
    healthcheck:
      test: ["CMD", "test", "-e", "/tmp/ready"]
      interval: 1m30s
      timeout: 5s
      retries: 2
      start_period: 10s
    stop_signal: INT
    stop_grace_period: 20s
    logging:
      options: { max-size: 5m }
    depends_on: [db]
    deploy:
      replicas: 2
      resources:
        limits: { memory: 32M }
    env_file: .env
    entrypoint: /init
  db:
    image: localhost/db:1
    command: ["postgres", "-c", "fsync=off"]
    environment:
      - POSTGRES_PASSWORD=secret
      - FROM_HOST
    healthcheck:
      test: pg_isready
    volumes:
      - db_data:/data
volumes:
  db_data: {}
networks:
  back: {}
"#;

fn unsupported(findings: &[Finding]) -> Vec<&str> {
    findings
        .iter()
        .filter(|f| f.severity == Severity::Unsupported)
        .map(|f| f.path.as_str())
        .collect()
}

#[test]
fn a_compose_file_converts_into_exact_manifests() {
    let import = convert(COMPOSE, "compose.yaml").unwrap();
    assert_eq!(unsupported(&import.findings), ["networks"]);
    let names: Vec<&str> = import.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web", "db"]);

    let web = &import.services[0];
    let got = &web.result.as_ref().unwrap().deployment;
    let port = |ip: Option<&str>, host, container, protocol| PortMapping {
        host_ip: ip.map(str::to_owned),
        host_port: host,
        container_port: container,
        protocol,
    };
    let want = Deployment {
        api_version: "fleet/v1".into(),
        name: "web".into(),
        revision: 1,
        container: ContainerSpec {
            image: "registry.local:5000/web:1.2".into(),
            command: ["httpd", "-f", "-p", "8080", "-h", "/srv/www"]
                .map(String::from)
                .to_vec(),
            env: BTreeMap::from(
                [("MODE", "production"), ("PORT", "8080"), ("PRICE", "$5")]
                    .map(|(k, v)| (k.to_owned(), v.to_owned())),
            ),
            restart: RestartPolicy::Always,
            working_dir: Some("/srv".into()),
            user: Some("1000".into()),
            group: Some("1000".into()),
            network: NetworkMode::Bridge,
            ports: vec![
                port(None, 8080, 80, Protocol::Tcp),
                port(Some("127.0.0.1"), 5683, 5683, Protocol::Udp),
                port(None, 9000, 9000, Protocol::Tcp),
                port(None, 9001, 9001, Protocol::Tcp),
                port(Some("::1"), 8443, 443, Protocol::Tcp),
            ],
            volumes: vec![VolumeMount {
                name: "db-data".into(),
                mount_path: "/var/lib/db".into(),
                read_only: false,
            }],
            binds: vec![BindMount {
                host_path: "/srv/fleet/web".into(),
                mount_path: "/etc/web".into(),
                read_only: true,
            }],
            devices: vec![
                DeviceMapping {
                    host_path: "/dev/i2c-1".into(),
                    container_path: None,
                    permissions: Some("rw".into()),
                },
                DeviceMapping {
                    host_path: "/dev/ttyUSB0".into(),
                    container_path: None,
                    permissions: None,
                },
            ],
            tmpfs: vec![
                TmpfsMount {
                    mount_path: "/cache".into(),
                    size_mib: Some(16),
                },
                TmpfsMount {
                    mount_path: "/run".into(),
                    size_mib: Some(8),
                },
            ],
            read_only_root_filesystem: true,
            cap_add: vec!["NET_BIND_SERVICE".into()],
            cap_drop: vec!["ALL".into()],
            labels: BTreeMap::from([("com.example.team".into(), "plant-3".into())]),
            resources: Resources {
                memory_mib: Some(32),
                cpu_millis: Some(500),
                pids: Some(64),
            },
            logs: LogOptions {
                max_size_mib: Some(5),
            },
            probes: vec![Probe {
                name: None,
                http: None,
                tcp: None,
                exec: Some(ExecProbe {
                    command: ["test", "-e", "/tmp/ready"].map(String::from).to_vec(),
                }),
                initial_delay_secs: 10,
                period_secs: 90,
                timeout_secs: 5,
                failure_threshold: 2,
            }],
            ..ContainerSpec::default()
        },
        lifecycle: Lifecycle {
            stop_signal: "SIGINT".into(),
            grace_period_secs: 20,
        },
        init: vec![],
    };
    assert_eq!(got, &want);
    assert_eq!(
        unsupported(&web.findings),
        [
            "services.web.volumes[0]",
            "services.web.depends_on",
            "services.web.deploy.replicas",
            "services.web.env_file",
            "services.web.entrypoint",
        ]
    );
    let shared = &web
        .findings
        .iter()
        .find(|f| f.path == "services.web.volumes[0]" && f.severity == Severity::Unsupported)
        .unwrap();
    assert!(shared.message.contains("shared with db"), "{shared}");
    assert_eq!((shared.mark.line, shared.mark.column), (22, 9));
    let notes: Vec<&str> = web
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Note)
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(
        notes,
        [
            "services.web.restart",
            "services.web.volumes[0]",
            "services.web.volumes[1]",
            "services.web.healthcheck",
            "services.web.healthcheck.start_period",
        ]
    );

    // The text is the agent's input: it decodes to the same manifest and names what was left.
    let text = &web.result.as_ref().unwrap().toml;
    assert_eq!(&Deployment::from_toml_str(text).unwrap(), got);
    assert!(text.starts_with("# Converted by `fleetctl import` from compose.yaml, service \"web\".\n# Not carried:\n#   services.web.volumes[0]\n"), "{text}");

    let db = &import.services[1];
    let d = &db.result.as_ref().unwrap().deployment;
    assert_eq!(d.container.command, ["postgres", "-c", "fsync=off"]);
    assert_eq!(
        d.container.restart,
        RestartPolicy::Never,
        "compose's default is no"
    );
    assert_eq!(
        d.container.env,
        BTreeMap::from([("POSTGRES_PASSWORD".into(), "secret".into())])
    );
    assert_eq!(
        d.container.probes[0].exec.as_ref().unwrap().command,
        ["/bin/sh", "-c", "pg_isready"]
    );
    assert_eq!(
        (
            d.container.probes[0].period_secs,
            d.container.probes[0].timeout_secs,
            d.container.probes[0].failure_threshold
        ),
        (30, 30, 3),
        "docker's health check defaults"
    );
    assert_eq!(
        unsupported(&db.findings),
        ["services.db.environment[1]", "services.db.volumes[0]"]
    );
}

#[test]
fn every_key_not_carried_is_named_with_its_path() {
    let src = r#"
name: plant
services:
  app:
    image: localhost/app:1
    build: .
    container_name: app-1
    hostname: app
    ulimits: { nofile: 1024 }
    command: echo $HOME
    entrypoint: ["/init"]
    restart: on-failure:3
    network_mode: "service:db"
    pull_policy: never
    volumes:
      - ./data:/data
      - /anon
      - cache:/cache:z
    ports:
      - "80"
      - "127.0.0.1::81"
      - "8000-8010:80"
      - "5000:5000/sctp"
    devices:
      - vendor.com/gpu=all
    healthcheck:
      interval: 10s
    logging:
      driver: syslog
      options: { max-file: "3" }
    deploy:
      mode: global
      placement: { constraints: [node.role==manager] }
      resources:
        reservations: { memory: 16m }
        limits: { memory: 64m, devices: [] }
      restart_policy: { condition: on-failure, max_attempts: 3 }
    x-mine: whatever
    frobnicate: true
"#;
    let import = convert(src, "c.yaml").unwrap();
    assert_eq!(unsupported(&import.findings), ["name"]);
    let app = &import.services[0];
    assert!(app.result.is_ok(), "{:?}", app.result);
    assert_eq!(
        unsupported(&app.findings),
        [
            "services.app.build",
            "services.app.container_name",
            "services.app.hostname",
            "services.app.ulimits",
            "services.app.command",
            "services.app.entrypoint",
            "services.app.restart",
            "services.app.network_mode",
            "services.app.pull_policy",
            "services.app.volumes[0]",
            "services.app.volumes[1]",
            "services.app.volumes[2]",
            "services.app.ports[0]",
            "services.app.ports[1]",
            "services.app.ports[2]",
            "services.app.ports[3]",
            "services.app.devices[0]",
            "services.app.healthcheck",
            "services.app.logging.driver",
            "services.app.logging.options.max-file",
            "services.app.deploy.mode",
            "services.app.deploy.placement",
            "services.app.deploy.resources.reservations",
            "services.app.deploy.resources.limits.devices",
            "services.app.deploy.restart_policy.max_attempts",
            "services.app.frobnicate",
        ]
    );
    let msg = |path: &str| {
        app.findings
            .iter()
            .find(|f| f.path == path)
            .map(|f| f.message.clone())
            .unwrap()
    };
    assert!(msg("services.app.command").contains("$HOME"));
    assert!(msg("services.app.volumes[0]").contains("relative"));
    assert!(msg("services.app.ports[0]").contains("ephemeral"));
    assert!(msg("services.app.frobnicate").contains("not a Compose service key"));
    let d = &app.result.as_ref().unwrap().deployment;
    assert_eq!(d.container.restart, RestartPolicy::OnFailure);
    assert_eq!(d.container.resources.memory_mib, Some(64));
    assert!(d.container.command.is_empty() && d.container.ports.is_empty());
    assert_eq!(
        d.container.volumes.len(),
        1,
        "cache is carried, its :z is not"
    );
}

#[test]
fn a_bad_service_fails_alone_and_names_where() {
    let src = "services:\n  ok:\n    image: localhost/a:1\n  My_App:\n    image: localhost/b:1\n  nobuild:\n    build: .\n  badport:\n    image: localhost/c:1\n    ports: [\"http:80\"]\n  badenv:\n    image: localhost/c:1\n    environment: { my.var: x }\n  shell:\n    image: localhost/c:1\n    command: echo a && echo b\n";
    let import = convert(src, "c.yaml").unwrap();
    let by = |n: &str| import.services.iter().find(|s| s.name == n).unwrap();
    assert!(by("ok").result.is_ok());
    let e = by("My_App").result.as_ref().unwrap_err();
    assert_eq!(
        (e.path.as_str(), e.mark.map(|m| m.line)),
        ("services.My_App", Some(4))
    );
    assert!(e.message.contains("rename the service"), "{e}");
    let e = by("nobuild").result.as_ref().unwrap_err();
    assert!(e.message.contains("build and push"), "{e}");
    let e = by("badport").result.as_ref().unwrap_err();
    assert_eq!(e.to_string(), "line 10, column 13: services.badport.ports[0]: \"http\" is not a port (1-65535) or a range of ports");
    let e = by("badenv").result.as_ref().unwrap_err();
    assert_eq!(e.path, "container.env.my.var", "{e}");
    assert!(e.message.contains("the agent refuses the manifest"), "{e}");
    let shell = by("shell");
    assert!(shell.result.is_ok());
    assert!(unsupported(&shell.findings) == ["services.shell.command"]);
    assert!(shell.findings[0].message.contains("sh\", \"-c"));
}

#[test]
fn garbage_is_an_error_with_line_and_column() {
    for (src, want) in [
        ("services:\n  web:\n    image: [a\n", "line 4, column 1: "),
        (
            "services:\n  web: {image: a, image: b}\n",
            "line 2, column 19: key `image` is given twice",
        ),
        ("- a\n- b\n", "line 1, column 1: (document): is a list"),
        (
            "version: '3'\n",
            "services: the file has no `services` mapping",
        ),
        ("services: [web]\n", "line 1, column 1: services: is a list"),
        ("", "the file is empty"),
        ("\t\u{0}", "line 1, column 1: "),
    ] {
        let e = convert(src, "c.yaml").unwrap_err().to_string();
        assert!(e.contains(want), "{src:?}: {e}");
    }
    let big = "#".repeat(MAX_COMPOSE_BYTES + 1);
    assert!(matches!(convert(&big, "c"), Err(ImportError::TooLarge(_))));
}

#[test]
fn port_ranges_are_bounded_and_host_network_ports_dropped() {
    // A port range is expanded only up to the manifest's list limit.
    let src = "services:\n  a:\n    image: localhost/a:1\n    ports: [\"1-65535:1-65535\"]\n  b:\n    image: localhost/b:1\n    ports: [\"1000-1039:1000-1039\", \"2000-2039:2000-2039\"]\n";
    let import = convert(src, "c.yaml").unwrap();
    let a = &import.services[0];
    assert!(a.result.is_ok());
    assert!(
        a.findings[0].message.contains("a range of 65535 ports"),
        "{}",
        a.findings[0]
    );
    let e = import.services[1].result.as_ref().unwrap_err();
    assert_eq!(e.path, "services.b.ports[1]");
    let src = "services:\n  h:\n    image: localhost/h:1\n    network_mode: host\n    ports: [\"80:80\"]\n";
    let h = &convert(src, "c.yaml").unwrap().services[0];
    let d = &h.result.as_ref().unwrap().deployment;
    assert_eq!(
        (d.container.network, d.container.ports.len()),
        (NetworkMode::Host, 0)
    );
    assert_eq!(unsupported(&h.findings), ["services.h.ports"]);
}

/// Fuzzing found an empty key reported with an empty path.
#[test]
fn an_empty_key_has_a_visible_path() {
    let import = convert(
        ": x\nservices:\n  \"\":\n    image: localhost/a:1\n  a:\n    image: localhost/a:1\n    \"\": 1\n",
        "c.yaml",
    )
    .unwrap();
    assert_eq!(unsupported(&import.findings), ["\"\""]);
    let s = &import.services[0];
    assert_eq!(s.result.as_ref().unwrap_err().path, "services.\"\"");
    assert_eq!(
        unsupported(&import.services[1].findings),
        ["services.a.\"\""]
    );
}

use std::io::{Seek, SeekFrom, Write};

use fleet_contract::Phase;

use super::*;
use fleet_module_api::ModuleStore;
use std::sync::Arc;

fn open(dir: &Path, audit_max: u64) -> (Store, OpenReport) {
    Store::open(&dir.join("state.db"), Duration::from_secs(1), audit_max).unwrap()
}

#[test]
fn creates_migrates_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let (s, r) = open(dir.path(), 100);
    assert!(r.created);
    assert_eq!(r.schema_version, latest_schema_version());
    s.kv_put("m", "k", b"v").unwrap();
    drop(s);
    let (s, r) = open(dir.path(), 100);
    assert!(!r.created && r.recovered_from.is_none());
    assert_eq!(s.kv_get("m", "k").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(s.integrity().unwrap(), "ok");
    let mode: String = s
        .conn()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn corrupt_file_is_moved_aside_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path(), 100);
    s.kv_put("m", "k", b"v").unwrap();
    drop(s);
    let db = dir.path().join("state.db");
    let original_len = std::fs::metadata(&db).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&[0xA5; 100]).unwrap();
    drop(f);

    let (s, r) = open(dir.path(), 100);
    let aside = r.recovered_from.expect("corruption detected");
    assert!(aside.exists(), "the corrupt file is kept");
    assert_eq!(std::fs::metadata(&aside).unwrap().len(), original_len);
    assert!(r.corruption.unwrap().contains("not a database"));
    assert_eq!(s.kv_get("m", "k").unwrap(), None, "fresh store");
    let audit = s.audit_recent(10).unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "store-recovered");
}

#[test]
fn audit_retention_records_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path(), 100);
    for i in 0..130 {
        s.audit(
            "op",
            "ping",
            "allowed",
            &format!("n{i}"),
            serde_json::json!({}),
        )
        .unwrap();
    }
    let recent = s.audit_recent(1000).unwrap();
    assert_eq!(recent.len(), 100);
    assert_eq!(recent[0].seq, 31);
    assert_eq!(recent[99].reason, "n129");
    let wm = s.audit_watermark().unwrap();
    assert_eq!((wm.trimmed_through_seq, wm.trimmed_total), (30, 30));
}

#[test]
fn journal_keeps_first_reply_until_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path(), 100);
    assert!(s.journal_put("c1", "ping", "first", 100).unwrap());
    assert!(!s.journal_put("c1", "ping", "second", 100).unwrap());
    assert_eq!(s.journal_get("c1").unwrap().as_deref(), Some("first"));
    assert_eq!(s.journal_prune(50).unwrap(), 0);
    assert_eq!(s.journal_prune(101).unwrap(), 1);
    assert_eq!(s.journal_get("c1").unwrap(), None);
}

#[test]
fn desired_cache_and_status_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path(), 100);
    let rec = |k: &str, rev| DesiredRecord::new(k, format!("/d/{k}.toml"), rev, b"x".to_vec());
    s.replace_desired(&[rec("deploy.a", Some(1)), rec("deploy.b", None)], true)
        .unwrap();
    s.put_desired(&rec("deploy.a", Some(2))).unwrap();
    let got = s.desired().unwrap();
    assert_eq!(got, vec![rec("deploy.a", Some(2)), rec("deploy.b", None)]);
    let report = s.replace_desired(&[], true).unwrap();
    assert_eq!(report.deleted, ["deploy.a", "deploy.b"]);
    assert!(s.desired().unwrap().is_empty());
    assert_eq!(s.desired_deleted().unwrap(), ["deploy.a", "deploy.b"]);

    let st = DeploymentStatus {
        name: "a".into(),
        revision: Some(2),
        phase: Phase::Running,
        message: "ok".into(),
        restarts: 1,
        last_exit_code: Some(0),
        image_digest: None,
        exit_reason: None,
        probe: None,
        updated_at: 5,
    };
    s.put_status(&st).unwrap();
    assert_eq!(s.statuses().unwrap(), vec![st]);
    s.delete_status("a").unwrap();
    assert!(s.statuses().unwrap().is_empty());
}

#[test]
fn module_areas_are_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path(), 100);
    let s = Arc::new(s);
    let a = ScopedStore::new(s.clone(), "a");
    let b = ScopedStore::new(s.clone(), "b");
    a.put("x.1", b"1").unwrap();
    a.put("x.2", b"2").unwrap();
    a.put("y", b"3").unwrap();
    assert_eq!(b.get("x.1").unwrap(), None);
    assert_eq!(a.keys("x.").unwrap(), ["x.1", "x.2"]);
    a.delete("x.1").unwrap();
    assert_eq!(a.keys("").unwrap(), ["x.2", "y"]);
    assert_eq!(s.kv_increment("c", "n", 1).unwrap(), 1);
    assert_eq!(s.kv_increment("c", "n", 2).unwrap(), 3);
}

/// One record SQLite cannot hold (a revision past `i64::MAX`) is refused alone: the others
/// are written, the refused one keeps its previous version, and nothing is taken for deleted.
/// (The old all-or-nothing write cached nothing at all.)
#[test]
fn one_unstorable_record_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path(), 100);
    let rec = |k: &str, rev| DesiredRecord::new(k, format!("nats:{k}"), Some(rev), b"x".to_vec());
    s.replace_desired(&[rec("deploy.bad", 1)], true).unwrap();
    let report = s
        .replace_desired(
            &[
                rec("deploy.a", 1),
                rec("deploy.bad", 1 << 63),
                rec("deploy.c", 3),
            ],
            true,
        )
        .unwrap();
    assert_eq!(report.written, 2);
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert_eq!(report.refused[0].0, "deploy.bad");
    assert!(
        report.refused[0].1.contains("field `revision`"),
        "{report:?}"
    );
    assert!(report.deleted.is_empty());
    let got = s.desired().unwrap();
    let keys: Vec<_> = got.iter().map(|r| (r.key.as_str(), r.revision)).collect();
    assert_eq!(
        keys,
        [
            ("deploy.a", Some(1)),
            ("deploy.bad", Some(1)),
            ("deploy.c", Some(3))
        ],
        "the refused record keeps its previous version"
    );

    // Without a previous version, a marker names the refusal.
    let report = s
        .replace_desired(&[rec("deploy.new", u64::MAX)], false)
        .unwrap();
    assert_eq!(report.refused.len(), 1);
    let marker = s
        .desired()
        .unwrap()
        .into_iter()
        .find(|r| r.key == "deploy.new")
        .unwrap();
    assert!(marker.body.is_empty());
    assert!(marker.refused.unwrap().contains("not cached"));
}

/// A document refused unread is cached as key, length and reason: no body.
#[test]
fn refused_documents_are_cached_without_their_body() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path(), 100);
    let refused = DesiredRecord {
        key: "deploy.big".into(),
        source: "nats:big".into(),
        revision: None,
        length: 1 << 20,
        body: Vec::new(),
        refused: Some("over the limit".into()),
    };
    s.replace_desired(std::slice::from_ref(&refused), true)
        .unwrap();
    assert_eq!(s.desired().unwrap(), [refused]);
}

/// Tombstones: a re-added key loses its tombstone; their number is bounded.
#[test]
fn tombstones_are_cleared_on_return_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path(), 100);
    let rec = |k: &str| DesiredRecord::new(k, "src", Some(1), b"x".to_vec());
    s.replace_desired(&[rec("deploy.a")], true).unwrap();
    s.replace_desired(&[], true).unwrap();
    assert_eq!(s.desired_deleted().unwrap(), ["deploy.a"]);
    s.replace_desired(&[rec("deploy.a")], true).unwrap();
    assert!(s.desired_deleted().unwrap().is_empty());
    // An incomplete update deletes nothing.
    s.replace_desired(&[], false).unwrap();
    assert_eq!(s.desired().unwrap().len(), 1);

    let many: Vec<_> = (0..MAX_TOMBSTONES + 10)
        .map(|i| rec(&format!("deploy.d{i}")))
        .collect();
    s.replace_desired(&many, true).unwrap();
    s.replace_desired(&[], true).unwrap();
    assert_eq!(s.desired_deleted().unwrap().len(), MAX_TOMBSTONES as usize);
}

/// A store of schema 1 (an older agent) migrates additively; its cached rows still read.
#[test]
fn schema_1_store_migrates_and_keeps_its_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(migrations::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO desired(key, source, revision, body, updated_at) VALUES ('deploy.a','s',1,x'78',0)",
            [],
        )
        .unwrap();
    }
    let (s, r) = open(dir.path(), 100);
    assert_eq!(r.schema_version, latest_schema_version());
    assert_eq!(
        s.desired().unwrap(),
        [DesiredRecord::new("deploy.a", "s", Some(1), b"x".to_vec())]
    );
}

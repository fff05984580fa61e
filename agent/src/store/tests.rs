use std::io::{Seek, SeekFrom, Write};

use fleet_contract::Phase;

use super::*;

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
    let rec = |k: &str, rev| DesiredRecord {
        key: k.into(),
        source: format!("/d/{k}.toml"),
        revision: rev,
        body: b"x".to_vec(),
    };
    s.replace_desired(&[rec("deploy.a", Some(1)), rec("deploy.b", None)])
        .unwrap();
    s.put_desired(&rec("deploy.a", Some(2))).unwrap();
    let got = s.desired().unwrap();
    assert_eq!(got, vec![rec("deploy.a", Some(2)), rec("deploy.b", None)]);
    s.replace_desired(&[]).unwrap();
    assert!(s.desired().unwrap().is_empty());

    let st = DeploymentStatus {
        name: "a".into(),
        revision: Some(2),
        phase: Phase::Running,
        message: "ok".into(),
        restarts: 1,
        last_exit_code: Some(0),
        image_digest: None,
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

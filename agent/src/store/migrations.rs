//! Schema migrations. Append only, and additive only (new tables, new nullable columns): an
//! agent reverted by self-upgrade must still run on a schema a newer version migrated.

/// Each entry migrates from version `index` to `index + 1`; `PRAGMA user_version` holds the
/// current version.
pub const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the foundation tables.
    r#"
    CREATE TABLE desired (
        key         TEXT PRIMARY KEY,      -- e.g. deploy.web
        source      TEXT NOT NULL,         -- file path or KV key it came from
        revision    INTEGER,               -- NULL when the document was invalid
        body        BLOB NOT NULL,         -- the document as received
        updated_at  INTEGER NOT NULL
    );
    CREATE TABLE deployment_status (
        name        TEXT PRIMARY KEY,
        body        TEXT NOT NULL,         -- fleet_contract::DeploymentStatus as JSON
        updated_at  INTEGER NOT NULL
    );
    CREATE TABLE command_journal (
        id          TEXT PRIMARY KEY,      -- the command's idempotency key
        verb        TEXT NOT NULL,
        reply       TEXT NOT NULL,         -- the recorded reply, returned on a repeat
        recorded_at INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL       -- kept until the command could no longer be valid
    );
    CREATE INDEX command_journal_expiry ON command_journal(expires_at);
    CREATE TABLE audit (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        at          INTEGER NOT NULL,
        actor       TEXT NOT NULL,
        action      TEXT NOT NULL,
        decision    TEXT NOT NULL,         -- allowed | denied | info
        reason      TEXT NOT NULL,
        detail      TEXT NOT NULL          -- JSON
    );
    CREATE TABLE audit_watermark (
        id                  INTEGER PRIMARY KEY CHECK (id = 1),
        trimmed_through_seq INTEGER NOT NULL,
        trimmed_total       INTEGER NOT NULL,
        last_trim_at        INTEGER NOT NULL
    );
    CREATE TABLE module_kv (
        module      TEXT NOT NULL,
        key         TEXT NOT NULL,
        value       BLOB NOT NULL,
        updated_at  INTEGER NOT NULL,
        PRIMARY KEY (module, key)
    );
    "#,
    // 1 -> 2: documents refused unread are cached as (key, length, reason), never their body;
    // deletions that were received are kept as tombstones, so a start-up from the cache
    // knows what was deleted (and never takes an absence for a deletion). Additive: an
    // agent of schema 1 still reads and writes `desired` (the new columns are nullable).
    r#"
    ALTER TABLE desired ADD COLUMN length INTEGER;      -- bytes of the document as received
    ALTER TABLE desired ADD COLUMN refused TEXT;        -- why it was refused unread (body empty)
    CREATE TABLE desired_deleted (
        key         TEXT PRIMARY KEY,      -- e.g. deploy.web
        source      TEXT NOT NULL,         -- where the deleted document had come from
        deleted_at  INTEGER NOT NULL
    );
    CREATE INDEX desired_deleted_age ON desired_deleted(deleted_at);
    "#,
];

/// The schema version this build writes.
pub fn latest() -> u32 {
    MIGRATIONS.len() as u32
}

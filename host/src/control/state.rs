//! Durable state: one SQLite database (WAL, `synchronous = FULL`) holding
//! the artifact index, the services and their revisions.
//!
//! Every change is one transaction, so a crash at any moment leaves either
//! the old state or the new one. Artifact bytes do not live here but in the
//! [`ArtifactStore`](crate::wasm::artifact::ArtifactStore), and are made durable
//! before any row refers to them.
//!
//! Schema (version 1; version 2 adds the event bus's tables, see
//! `events::sqlite`):
//!
//! ```sql
//! artifacts (digest TEXT PRIMARY KEY, size INTEGER, created_ms INTEGER)
//! revisions (service TEXT, number INTEGER, artifact TEXT -> artifacts,
//!            config TEXT (JSON ServiceConfig), created_ms INTEGER,
//!            PRIMARY KEY (service, number))
//! services  (name TEXT PRIMARY KEY, active INTEGER -> revisions,
//!            created_ms INTEGER, updated_ms INTEGER)
//! ```

use crate::values::digest::Digest;
use crate::values::key::ApiKey;
use crate::values::service::{ServiceConfig, ServiceName};
use crate::values::units::now_ms;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The database file's name in the state directory.
pub const DB_FILE: &str = "berth.db";

const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE artifacts (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE revisions (
    service TEXT NOT NULL,
    number INTEGER NOT NULL,
    artifact TEXT NOT NULL REFERENCES artifacts(digest),
    config TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (service, number)
) STRICT;
CREATE TABLE services (
    name TEXT PRIMARY KEY,
    active INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    FOREIGN KEY (name, active) REFERENCES revisions(service, number)
) STRICT;
";

/// Version 2: the embedded event bus (`events::sqlite`) and schedules.
const SCHEMA_V2: &str = "
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    attrs TEXT NOT NULL,
    data BLOB,
    published_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE deliveries (
    subscription TEXT NOT NULL,
    seq INTEGER NOT NULL REFERENCES events(seq),
    attempts INTEGER NOT NULL,
    due_ms INTEGER NOT NULL,
    last_error TEXT,
    PRIMARY KEY (subscription, seq)
) STRICT, WITHOUT ROWID;
CREATE INDEX deliveries_by_seq ON deliveries(seq);
CREATE TABLE dead_letters (
    subscription TEXT NOT NULL,
    seq INTEGER NOT NULL REFERENCES events(seq),
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    dead_ms INTEGER NOT NULL,
    PRIMARY KEY (subscription, seq)
) STRICT, WITHOUT ROWID;
CREATE INDEX dead_letters_by_seq ON dead_letters(seq);
CREATE TABLE topics (
    topic TEXT PRIMARY KEY,
    published INTEGER NOT NULL,
    unrouted INTEGER NOT NULL
) STRICT;
CREATE TABLE schedules (
    service TEXT NOT NULL,
    name TEXT NOT NULL,
    last_fired_ms INTEGER NOT NULL,
    PRIMARY KEY (service, name)
) STRICT;
";

/// Version 3: API keys (what is kept of each: see
/// [`crate::values::key::ApiKey`], as JSON).
const SCHEMA_V3: &str = "
CREATE TABLE api_keys (
    name TEXT PRIMARY KEY,
    record TEXT NOT NULL
) STRICT;
";

/// An error from the state database.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite failed (I/O error, disk full, corruption, ...).
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A row holds something this version cannot read.
    #[error("state database holds an unreadable {what}: {detail}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// Why it could not be.
        detail: String,
    },
    /// The database was written by a newer Berth.
    #[error(
        "state database has schema version {0}; this berth knows version {SCHEMA_VERSION} at most"
    )]
    TooNew(i64),
}

/// An artifact known to the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRecord {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// When it was first stored (ms since the epoch).
    pub created_ms: i64,
}

/// One revision of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionRecord {
    /// The service.
    pub service: ServiceName,
    /// 1, 2, 3, ... per service.
    pub number: u32,
    /// The component.
    pub artifact: Digest,
    /// Routes and limits.
    pub config: ServiceConfig,
    /// When it was deployed (ms since the epoch).
    pub created_ms: i64,
}

/// A service and its active revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    /// The revision that serves.
    pub active: RevisionRecord,
    /// The newest revision number.
    pub latest: u32,
    /// When the service was first deployed.
    pub created_ms: i64,
    /// When its active revision last changed.
    pub updated_ms: i64,
}

/// The state database.
pub struct State {
    conn: Connection,
    /// Taken around every change: see [`writers`].
    writers: Arc<Mutex<()>>,
}

/// The lock the writers of the database file at `path` in this process
/// (the state and the event bus) take around each change. SQLite commits
/// one writer at a time and makes the others wait in its busy handler,
/// which polls (sleeping up to 100 ms between tries): a rare writer, a
/// deploy, could wait there past its timeout behind a busy one, the bus
/// committing batch after batch. Taking this first, they queue instead.
pub fn writers(path: &Path) -> Arc<Mutex<()>> {
    static LOCKS: Mutex<Vec<(std::path::PathBuf, std::sync::Weak<Mutex<()>>)>> =
        Mutex::new(Vec::new());
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    locks.retain(|(_, lock)| lock.strong_count() > 0);
    if let Some(lock) = locks
        .iter()
        .find(|(p, _)| *p == key)
        .and_then(|(_, lock)| lock.upgrade())
    {
        return lock;
    }
    let lock = Arc::new(Mutex::new(()));
    locks.push((key, Arc::downgrade(&lock)));
    lock
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

/// How every change begins: taking the write lock at once (`BEGIN
/// IMMEDIATE`). A deferred transaction that reads first and writes after
/// fails at once with "database is locked" when another connection to the
/// file (the event bus's) committed in between — its busy timeout cannot
/// help, as its snapshot is stale; an immediate one waits its turn.
const WRITE: TransactionBehavior = TransactionBehavior::Immediate;

/// Takes a writers' lock (one a panicking writer left is as good).
pub fn lock(writers: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    writers.lock().unwrap_or_else(|e| e.into_inner())
}

fn corrupt(what: &'static str, detail: impl ToString) -> StateError {
    StateError::Corrupt {
        what,
        detail: detail.to_string(),
    }
}

impl State {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<State, StateError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a committed transaction survives power loss, not only a
        // process crash.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StateError::TooNew(version));
        }
        // Each step moves the schema one version up, in one transaction.
        for (target, sql) in [(1, SCHEMA), (2, SCHEMA_V2), (3, SCHEMA_V3)] {
            if version < target {
                let tx = conn.transaction_with_behavior(WRITE)?;
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", target)?;
                tx.commit()?;
            }
        }
        Ok(State {
            conn,
            writers: writers(path),
        })
    }

    /// `PRAGMA integrity_check` and `foreign_key_check`: `Ok` when both find
    /// nothing wrong.
    pub fn check(&self) -> Result<(), StateError> {
        let integrity: String = self
            .conn
            .pragma_query_value(None, "integrity_check", |r| r.get(0))?;
        if integrity != "ok" {
            return Err(corrupt("database", integrity));
        }
        let mut stmt = self.conn.prepare("PRAGMA foreign_key_check")?;
        let broken = stmt.query_map([], |r| r.get::<_, String>(0))?.count();
        if broken > 0 {
            return Err(corrupt("database", format!("{broken} broken references")));
        }
        Ok(())
    }

    /// Records an artifact; `false` if it was already known.
    pub fn add_artifact(&mut self, digest: &Digest, size: u64) -> Result<bool, StateError> {
        let _write = lock(&self.writers);
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO artifacts (digest, size, created_ms) VALUES (?1, ?2, ?3)",
            params![digest.to_string(), size as i64, now_ms()],
        )?;
        Ok(n == 1)
    }

    /// One artifact.
    pub fn artifact(&self, digest: &Digest) -> Result<Option<ArtifactRecord>, StateError> {
        self.conn
            .query_row(
                "SELECT digest, size, created_ms FROM artifacts WHERE digest = ?1",
                [digest.to_string()],
                artifact_row,
            )
            .optional()?
            .transpose()
    }

    /// Every artifact, newest first.
    pub fn artifacts(&self) -> Result<Vec<ArtifactRecord>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT digest, size, created_ms FROM artifacts ORDER BY created_ms DESC, digest",
        )?;
        let rows = stmt.query_map([], artifact_row)?;
        rows.map(|r| r?).collect()
    }

    /// Adds a revision of `service` and makes it the active one, creating
    /// the service if needed; one transaction.
    pub fn deploy(
        &mut self,
        service: &ServiceName,
        artifact: &Digest,
        config: &ServiceConfig,
    ) -> Result<RevisionRecord, StateError> {
        let now = now_ms();
        let _write = lock(&self.writers);
        let tx = self.conn.transaction_with_behavior(WRITE)?;
        let number: u32 = tx.query_row(
            "SELECT COALESCE(MAX(number), 0) + 1 FROM revisions WHERE service = ?1",
            [service.as_str()],
            |r| r.get(0),
        )?;
        let json = serde_json::to_string(config).map_err(|e| corrupt("configuration", e))?;
        tx.execute(
            "INSERT INTO revisions (service, number, artifact, config, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![service.as_str(), number, artifact.to_string(), json, now],
        )?;
        set_active(&tx, service, number, now)?;
        tx.commit()?;
        Ok(RevisionRecord {
            service: service.clone(),
            number,
            artifact: *artifact,
            config: config.clone(),
            created_ms: now,
        })
    }

    /// Makes revision `number` of `service` the active one.
    pub fn activate(&mut self, service: &ServiceName, number: u32) -> Result<(), StateError> {
        let _write = lock(&self.writers);
        let tx = self.conn.transaction_with_behavior(WRITE)?;
        set_active(&tx, service, number, now_ms())?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes a service and all its revisions; `false` if there was none.
    pub fn remove(&mut self, service: &ServiceName) -> Result<bool, StateError> {
        let _write = lock(&self.writers);
        let tx = self.conn.transaction_with_behavior(WRITE)?;
        let n = tx.execute("DELETE FROM services WHERE name = ?1", [service.as_str()])?;
        tx.execute(
            "DELETE FROM revisions WHERE service = ?1",
            [service.as_str()],
        )?;
        tx.commit()?;
        Ok(n == 1)
    }

    /// One service with its active revision.
    pub fn service(&self, name: &ServiceName) -> Result<Option<ServiceRecord>, StateError> {
        let sql = format!("{SERVICE_SELECT} WHERE s.name = ?1");
        self.conn
            .query_row(&sql, [name.as_str()], service_row)
            .optional()?
            .transpose()
    }

    /// Every service with its active revision, in name order.
    pub fn services(&self) -> Result<Vec<ServiceRecord>, StateError> {
        let sql = format!("{SERVICE_SELECT} ORDER BY s.name");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], service_row)?;
        rows.map(|r| r?).collect()
    }

    /// One revision.
    pub fn revision(
        &self,
        service: &ServiceName,
        number: u32,
    ) -> Result<Option<RevisionRecord>, StateError> {
        self.conn
            .query_row(
                "SELECT service, number, artifact, config, created_ms FROM revisions WHERE service = ?1 AND number = ?2",
                params![service.as_str(), number],
                revision_row,
            )
            .optional()?
            .transpose()
    }

    /// Every revision of a service, newest first.
    pub fn revisions(&self, service: &ServiceName) -> Result<Vec<RevisionRecord>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT service, number, artifact, config, created_ms FROM revisions WHERE service = ?1 ORDER BY number DESC",
        )?;
        let rows = stmt.query_map([service.as_str()], revision_row)?;
        rows.map(|r| r?).collect()
    }
}

impl State {
    /// When each schedule of `service` last fired (ms since the epoch).
    pub fn schedule_fired(&self, service: &ServiceName) -> Result<Vec<(String, i64)>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, last_fired_ms FROM schedules WHERE service = ?1")?;
        let rows = stmt.query_map([service.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records that a schedule fired at `ms`.
    pub fn set_schedule_fired(
        &mut self,
        service: &ServiceName,
        name: &str,
        ms: i64,
    ) -> Result<(), StateError> {
        let _write = lock(&self.writers);
        self.conn.execute(
            "INSERT INTO schedules (service, name, last_fired_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (service, name) DO UPDATE SET last_fired_ms = excluded.last_fired_ms",
            params![service.as_str(), name, ms],
        )?;
        Ok(())
    }
}

const SERVICE_SELECT: &str = "
SELECT r.service, r.number, r.artifact, r.config, r.created_ms,
       (SELECT MAX(number) FROM revisions WHERE service = s.name),
       s.created_ms, s.updated_ms
FROM services s JOIN revisions r ON r.service = s.name AND r.number = s.active";

impl State {
    /// Every API key, by name.
    pub fn keys(&self) -> Result<Vec<ApiKey>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT record FROM api_keys ORDER BY name")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|row| {
            let text = row?;
            serde_json::from_str(&text).map_err(|e| corrupt("API key", e))
        })
        .collect()
    }

    /// Stores `key`: a new one (`false` if the name is taken), or, with
    /// `replace`, over the one of its name.
    pub fn put_key(&mut self, key: &ApiKey, replace: bool) -> Result<bool, StateError> {
        let record = serde_json::to_string(key).map_err(|e| corrupt("API key", e))?;
        let sql = if replace {
            "INSERT INTO api_keys (name, record) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET record = excluded.record"
        } else {
            "INSERT INTO api_keys (name, record) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING"
        };
        let _write = lock(&self.writers);
        let changed = self.conn.execute(sql, params![key.name.as_str(), record])?;
        Ok(changed == 1)
    }
}

fn set_active(
    tx: &Transaction<'_>,
    service: &ServiceName,
    number: u32,
    now: i64,
) -> Result<(), StateError> {
    tx.execute(
        "INSERT INTO services (name, active, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT (name) DO UPDATE SET active = excluded.active, updated_ms = excluded.updated_ms",
        params![service.as_str(), number, now],
    )?;
    Ok(())
}

type Row<T> = rusqlite::Result<Result<T, StateError>>;

fn artifact_row(r: &rusqlite::Row<'_>) -> Row<ArtifactRecord> {
    let digest: String = r.get(0)?;
    let size: i64 = r.get(1)?;
    Ok(digest
        .parse()
        .map_err(|e| corrupt("artifact digest", e))
        .map(|digest| ArtifactRecord {
            digest,
            size: size as u64,
            created_ms: r.get(2).unwrap_or_default(),
        }))
}

fn revision_row(r: &rusqlite::Row<'_>) -> Row<RevisionRecord> {
    let service: String = r.get(0)?;
    let number: u32 = r.get(1)?;
    let artifact: String = r.get(2)?;
    let config: String = r.get(3)?;
    let created_ms: i64 = r.get(4)?;
    Ok((|| {
        Ok(RevisionRecord {
            service: ServiceName::parse(&service).map_err(|e| corrupt("service name", e))?,
            number,
            artifact: artifact
                .parse()
                .map_err(|e| corrupt("artifact digest", e))?,
            config: serde_json::from_str(&config).map_err(|e| corrupt("configuration", e))?,
            created_ms,
        })
    })())
}

fn service_row(r: &rusqlite::Row<'_>) -> Row<ServiceRecord> {
    let latest: u32 = r.get(5)?;
    let created_ms: i64 = r.get(6)?;
    let updated_ms: i64 = r.get(7)?;
    Ok(revision_row(r)?.map(|active| ServiceRecord {
        active,
        latest,
        created_ms,
        updated_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::route::Route;

    fn config(route: &str) -> ServiceConfig {
        ServiceConfig::http(vec![Route::parse(route).unwrap()], Default::default())
    }

    #[test]
    fn deploy_rollback_remove() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(&dir.path().join(DB_FILE)).unwrap();
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        assert!(state.add_artifact(&a, 1).unwrap());
        assert!(!state.add_artifact(&a, 1).unwrap());
        state.add_artifact(&b, 1).unwrap();
        let name = ServiceName::parse("svc").unwrap();

        // A revision must point at a known artifact.
        let unknown = Digest::of(b"?");
        assert!(state.deploy(&name, &unknown, &config("/x")).is_err());
        assert!(state.service(&name).unwrap().is_none());

        let r1 = state.deploy(&name, &a, &config("/x")).unwrap();
        let r2 = state.deploy(&name, &b, &config("/y")).unwrap();
        assert_eq!((r1.number, r2.number), (1, 2));
        let svc = state.service(&name).unwrap().unwrap();
        assert_eq!(svc.active, r2);
        assert_eq!(svc.latest, 2);

        state.activate(&name, 1).unwrap();
        assert_eq!(state.service(&name).unwrap().unwrap().active, r1);
        assert!(state.activate(&name, 9).is_err(), "no such revision");
        assert_eq!(state.service(&name).unwrap().unwrap().active, r1);

        assert_eq!(state.revisions(&name).unwrap(), vec![r2, r1]);
        assert_eq!(state.services().unwrap().len(), 1);
        assert!(state.remove(&name).unwrap());
        assert!(!state.remove(&name).unwrap());
        assert!(state.services().unwrap().is_empty());
        assert!(state.revisions(&name).unwrap().is_empty());
        assert_eq!(state.artifacts().unwrap().len(), 2);
        state.check().unwrap();
    }

    /// Deploys and rollbacks while another connection writes to the same
    /// file all the time, as the event bus does under load (taking the
    /// writers' lock of the file, committing, then gathering its next
    /// batch), wait their turn; none fails with "database is locked"
    /// (found by the soak).
    #[test]
    fn changes_wait_for_another_connection_writing_the_file() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let mut state = State::open(&path).unwrap();
        let a = Digest::of(b"a");
        state.add_artifact(&a, 1).unwrap();
        let name = ServiceName::parse("svc").unwrap();
        state.deploy(&name, &a, &config("/x")).unwrap();
        let mut conn = Connection::open(&path).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        conn.execute_batch("CREATE TABLE other (n INTEGER)")
            .unwrap();
        let (stop, writes) = (
            std::sync::Arc::new(AtomicBool::new(false)),
            std::sync::Arc::new(AtomicU64::new(0)),
        );
        let writer = std::thread::spawn({
            let (stop, writes, path) = (stop.clone(), writes.clone(), path.clone());
            move || {
                let writers = writers(&path);
                while !stop.load(Relaxed) {
                    {
                        let _write = lock(&writers);
                        let tx = conn.transaction_with_behavior(WRITE).unwrap();
                        tx.execute("INSERT INTO other VALUES (1)", []).unwrap();
                        tx.commit().unwrap();
                    }
                    writes.fetch_add(1, Relaxed);
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
            }
        });
        while writes.load(Relaxed) == 0 {
            std::thread::yield_now();
        }
        for i in 0..300 {
            state
                .deploy(&name, &a, &config("/x"))
                .unwrap_or_else(|e| panic!("deploy {i}: {e}"));
            state
                .activate(&name, 1)
                .unwrap_or_else(|e| panic!("rollback {i}: {e}"));
            // The other connection writes between them throughout (the
            // writers' lock is not fair: on a loaded machine this loop
            // could take it back every time, and test nothing).
            if i % 20 == 19 {
                let seen = writes.load(Relaxed);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while writes.load(Relaxed) == seen {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the other connection never wrote"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
        stop.store(true, Relaxed);
        writer.join().unwrap();
        assert!(
            writes.load(Relaxed) > 10,
            "the other connection wrote meanwhile"
        );
        state.check().unwrap();
    }

    #[test]
    fn reopening_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let name = ServiceName::parse("svc").unwrap();
        let a = Digest::of(b"a");
        {
            let mut state = State::open(&path).unwrap();
            state.add_artifact(&a, 1).unwrap();
            state.deploy(&name, &a, &config("/x")).unwrap();
        }
        let state = State::open(&path).unwrap();
        assert_eq!(state.service(&name).unwrap().unwrap().active.artifact, a);
        assert_eq!(state.artifact(&a).unwrap().unwrap().size, 1);
    }
}

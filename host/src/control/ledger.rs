//! The usage ledger: one record per invocation, whatever its trigger — the
//! unit of pay-per-invoke — in a SQLite database of its own
//! (`STATE/usage.db`, WAL), so that metering never contends with deploys
//! or the event queue for the main database's write lock.
//!
//! One writer thread takes the records queued by finished invocations,
//! lets them gather for [`BATCH_WINDOW`], and commits them in one
//! transaction (group commit). Commits use `synchronous = NORMAL`: a
//! committed record is in the WAL — in the kernel's page cache — and
//! survives a crash of the process; the WAL reaches the disk at each
//! checkpoint, which the writer runs every [`SYNC_PERIOD`] while anything
//! committed is not yet checkpointed, on a timer of its own (new records
//! are not needed to trigger it), and once more when the ledger is closed.
//!
//! **Loss window** (documented in `docs/observability.md`):
//! - a crash of the process (`kill -9`, a panic, an OOM kill) loses the
//!   records not yet committed: those of invocations that ended in the
//!   last [`BATCH_WINDOW`] (5 ms) plus the commit's own time;
//! - a power loss or kernel crash loses, in addition, what was committed
//!   but not yet checkpointed: at most the last [`SYNC_PERIOD`] (1 s);
//! - a clean stop ([`Ledger::close`]) loses nothing: the queue is drained,
//!   committed and checkpointed before it returns.
//!
//! An invocation cut off by a crash itself leaves no record.

use crate::runtime::record::UsageSink;
use crate::values::id::InvocationId;
use crate::values::units::{now_ms, rfc3339};
use crate::values::usage::{OutcomeKind, Period, Query, Record, Report, Totals, Trigger};
use rusqlite::types::{FromSql, FromSqlError, ValueRef};
use rusqlite::{Connection, params};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The usage database's file name in the state directory.
pub const USAGE_FILE: &str = "usage.db";

/// How long the writer gathers records before it commits them.
pub const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// How often committed records are checkpointed (synced to the disk).
pub const SYNC_PERIOD: Duration = Duration::from_secs(1);

/// Most records in one commit.
const MAX_BATCH: usize = 8192;

/// Most records held in memory while the ledger cannot be written (a full
/// or read-only disk), about 30 MiB; past it the oldest are dropped, and
/// logged as lost.
const MAX_HELD: usize = 100_000;

/// How often records held back are tried again.
const RETRY_PERIOD: Duration = Duration::from_secs(1);

/// How often a ledger that still cannot be written says so again.
const REPEAT_ERROR: Duration = Duration::from_secs(60);

/// How often records past their retention are deleted.
const EXPIRY_PERIOD: Duration = Duration::from_secs(3600);

/// The schema's version (SQLite `user_version`). Version 1 (no version
/// set) had no `queue_us` and `load_us` columns and did not check its
/// `trigger` and `outcome` values; version 2 had no `instance` column.
const SCHEMA_VERSION: i64 = 3;

/// The `usage` table. Clustered by time: records arrive in about that
/// order (appends), and time ranges, the common query, are ranges of the
/// primary key. The `trigger` and `outcome` values allowed are those of
/// [`Trigger`] and [`OutcomeKind`].
fn table(name: &str) -> String {
    format!(
        "CREATE TABLE {name} (
            started_ms INTEGER NOT NULL,
            invocation TEXT NOT NULL,
            service TEXT NOT NULL,
            revision INTEGER NOT NULL,
            trigger TEXT NOT NULL CHECK ({triggers}),
            wall_us INTEGER NOT NULL,
            queue_us INTEGER NOT NULL DEFAULT 0,
            load_us INTEGER NOT NULL DEFAULT 0,
            cpu_us INTEGER NOT NULL,
            fuel INTEGER NOT NULL,
            peak_memory INTEGER NOT NULL,
            bytes_in INTEGER NOT NULL,
            bytes_out INTEGER NOT NULL,
            outcome TEXT NOT NULL CHECK ({outcomes}),
            status INTEGER,
            cold INTEGER NOT NULL CHECK (cold IN (0, 1)),
            instance TEXT,
            PRIMARY KEY (started_ms, invocation)
        ) STRICT, WITHOUT ROWID;",
        triggers = one_of("trigger", Trigger::ALL.iter().map(|t| t.as_str())),
        outcomes = one_of("outcome", OutcomeKind::ALL.iter().map(|o| o.as_str())),
    )
}

/// `column = 'a' OR column = 'b' …`: a check of one value against a fixed
/// set. (Not `column IN (…)`: SQLite builds a temporary index for an `IN`
/// list each time a statement runs, that is for every insert.)
fn one_of<'a>(column: &str, names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|n| format!("{column} = '{n}'"))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// `'a', 'b', 'c'`: names as an SQL list (they are fixed ASCII words).
fn sql_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Creates the schema, or brings an older one up to date.
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version >= SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if version == 2 {
        tx.execute_batch("ALTER TABLE usage ADD COLUMN instance TEXT;")?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        return tx.commit();
    }
    let has_v1: bool = tx.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'usage'",
        [],
        |r| r.get(0),
    )?;
    if has_v1 {
        tx.execute_batch(&table("usage_v2"))?;
        tx.execute_batch(
            "INSERT OR IGNORE INTO usage_v2
                 (started_ms, invocation, service, revision, trigger, wall_us, cpu_us, fuel,
                  peak_memory, bytes_in, bytes_out, outcome, status, cold)
             SELECT started_ms, invocation, service, revision, trigger, wall_us, cpu_us, fuel,
                    peak_memory, bytes_in, bytes_out, outcome, status, cold
             FROM usage;
             DROP TABLE usage;
             ALTER TABLE usage_v2 RENAME TO usage;",
        )?;
    } else {
        tx.execute_batch(&table("usage"))?;
    }
    tx.execute_batch(
        "CREATE INDEX IF NOT EXISTS usage_by_service ON usage (service, started_ms);",
    )?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

/// The ledger.
pub struct Ledger {
    writer: Mutex<Option<Sender<Message>>>,
    /// Records queued and not yet committed (or given up on).
    pending: Arc<AtomicU64>,
    reader: Arc<Mutex<Connection>>,
    done: Mutex<Option<std::thread::JoinHandle<()>>>,
}

enum Message {
    Record(Box<Record>),
    Flush(Sender<()>),
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

fn open_db(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // A commit is durable against a crash of the process once it returns
    // (it is in the WAL); the WAL reaches the disk at each checkpoint.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// Why the ledger could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// SQLite failed.
    #[error("usage ledger: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The writer thread could not be started.
    #[error("usage ledger: starting the writer: {0}")]
    Thread(#[from] std::io::Error),
}

impl Ledger {
    /// Opens (creating or upgrading) the ledger at `path`; records older
    /// than `retention` are deleted, now and every hour.
    pub fn open(path: &Path, retention: Duration) -> Result<Arc<Ledger>, LedgerError> {
        let mut conn = open_db(path)?;
        migrate(&mut conn)?;
        let reader = open_db(path)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let pending = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            conn,
            pending: pending.clone(),
            retention,
            next_expiry: Instant::now(),
            unsynced_since: None,
            held: Vec::new(),
            failing: None,
        };
        let handle = std::thread::Builder::new()
            .name("berth-usage".into())
            .spawn(move || writer.run(rx))?;
        Ok(Arc::new(Ledger {
            writer: Mutex::new(Some(tx)),
            pending,
            reader: Arc::new(Mutex::new(reader)),
            done: Mutex::new(Some(handle)),
        }))
    }

    /// Queues a record.
    pub fn record(&self, record: Record) {
        if let Some(tx) = &*self.writer.lock().unwrap_or_else(|e| e.into_inner()) {
            // Counted before it is sent: the writer may commit it first.
            self.pending.fetch_add(1, Ordering::Relaxed);
            if tx.send(Message::Record(Box::new(record))).is_err() {
                self.pending.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Records queued and not yet committed: how far the ledger lags.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Waits until every record queued so far is committed.
    pub fn flush(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(writer) = &*self.writer.lock().unwrap_or_else(|e| e.into_inner())
            && writer.send(Message::Flush(tx)).is_ok()
        {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }

    /// Commits and checkpoints what is queued, then stops the writer.
    pub fn close(&self) {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = self.done.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = handle.join();
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        f(&self.reader.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Totals per service (and period).
    pub fn report(&self, query: &Query) -> rusqlite::Result<Report> {
        let sql = report_sql(query.by);
        self.read(|conn| {
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(
                params![query.service, query.since_ms, query.until_ms],
                totals_row,
            )?;
            let rows: Vec<Totals> = rows.collect::<rusqlite::Result<_>>()?;
            let mut total = Totals::default();
            for row in &rows {
                total.add(row);
            }
            Ok(Report { rows, total })
        })
    }

    /// The records themselves, oldest first, at most `limit`.
    pub fn records(&self, query: &Query, limit: usize) -> rusqlite::Result<Vec<Record>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                concat!(
                select_records!(),
                " WHERE (?1 IS NULL OR service = ?1) AND (?2 IS NULL OR started_ms >= ?2) AND (?3 IS NULL OR started_ms < ?3)
                 ORDER BY started_ms, invocation LIMIT ?4"
            ),
            )?;
            let rows = stmt.query_map(
                params![query.service, query.since_ms, query.until_ms, limit as i64],
                record_row,
            )?;
            rows.collect()
        })
    }

    /// The record of one invocation. Its id tells when it started, so
    /// only the records of the hour around that are searched.
    pub fn invocation(&self, id: &InvocationId) -> rusqlite::Result<Option<Record>> {
        const AROUND_MS: i64 = 3_600_000;
        let at = id.millis();
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(concat!(
                select_records!(),
                " WHERE started_ms >= ?1 AND started_ms <= ?2 AND invocation = ?3"
            ))?;
            let mut rows = stmt.query_map(
                params![at - AROUND_MS, at + AROUND_MS, id.to_string()],
                record_row,
            )?;
            rows.next().transpose()
        })
    }
}

impl UsageSink for Ledger {
    fn record(&self, record: Record) {
        Ledger::record(self, record);
    }
}

/// The report query, grouped by service (and `by` period). The outcome
/// columns are counted by [`OutcomeKind`]'s own classification.
fn report_sql(by: Option<Period>) -> String {
    let period = by.map_or(0, Period::ms);
    let failed = sql_list(
        OutcomeKind::ALL
            .iter()
            .filter(|o| o.is_failure())
            .map(|o| o.as_str()),
    );
    format!(
        "SELECT service, {group}, COUNT(*),
                SUM(outcome = '{ok}'), SUM(outcome IN ({failed})), SUM(outcome = '{rejected}'),
                SUM(cold), SUM(fuel), SUM(CAST(peak_memory AS REAL) * wall_us),
                SUM(cpu_us), SUM(wall_us), SUM(bytes_in), SUM(bytes_out)
         FROM usage
         WHERE (?1 IS NULL OR service = ?1) AND (?2 IS NULL OR started_ms >= ?2) AND (?3 IS NULL OR started_ms < ?3)
         GROUP BY service{group_by}
         ORDER BY {order}",
        ok = OutcomeKind::Ok.as_str(),
        rejected = OutcomeKind::Rejected.as_str(),
        group = if period > 0 {
            format!("(started_ms / {period}) * {period}")
        } else {
            "NULL".into()
        },
        group_by = if period > 0 { ", 2" } else { "" },
        order = if period > 0 { "2, 1" } else { "1" },
    )
}

fn totals_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Totals> {
    let n =
        |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0) as u64) };
    let f = |i: usize| -> rusqlite::Result<f64> { Ok(r.get::<_, Option<f64>>(i)?.unwrap_or(0.0)) };
    Ok(Totals {
        service: Some(r.get(0)?),
        period: r.get::<_, Option<i64>>(1)?.map(rfc3339),
        invocations: n(2)?,
        ok: n(3)?,
        failed: n(4)?,
        rejected: n(5)?,
        cold_starts: n(6)?,
        fuel: n(7)?,
        gb_seconds: f(8)? / (1u64 << 30) as f64 / 1e6,
        cpu_ms: n(9)? as f64 / 1000.0,
        wall_ms: n(10)? as f64 / 1000.0,
        bytes_in: n(11)?,
        bytes_out: n(12)?,
    })
}

/// A name stored in SQL, read back as its enum: an unknown name is an
/// error, never a default.
struct Named<T>(T);

impl<T: std::str::FromStr> FromSql for Named<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    fn column_result(value: ValueRef<'_>) -> Result<Self, FromSqlError> {
        let text = value.as_str()?;
        text.parse()
            .map(Named)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// The select of whole records, in the order [`record_row`] reads them.
macro_rules! select_records {
    () => {
        "SELECT invocation, service, revision, trigger, started_ms, wall_us, queue_us, load_us,
                cpu_us, fuel, peak_memory, bytes_in, bytes_out, outcome, status, cold, instance
         FROM usage"
    };
}
use select_records;

fn record_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let n = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)? as u64) };
    Ok(Record {
        invocation: r.get(0)?,
        service: r.get(1)?,
        revision: r.get(2)?,
        trigger: r.get::<_, Named<Trigger>>(3)?.0,
        started_ms: r.get(4)?,
        wall_us: n(5)?,
        queue_us: n(6)?,
        load_us: n(7)?,
        cpu_us: n(8)?,
        fuel: n(9)?,
        peak_memory: n(10)?,
        bytes_in: n(11)?,
        bytes_out: n(12)?,
        outcome: r.get::<_, Named<OutcomeKind>>(13)?.0,
        status: r.get::<_, Option<u16>>(14)?,
        cold: r.get::<_, i64>(15)? != 0,
        instance: r.get(16)?,
    })
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    pending: Arc<AtomicU64>,
    retention: Duration,
    next_expiry: Instant,
    /// When the oldest commit not yet checkpointed was made.
    unsynced_since: Option<Instant>,
    /// Records whose commit failed, oldest first, tried again with the
    /// next ones and every [`RETRY_PERIOD`].
    held: Vec<Record>,
    /// Since when commits fail, and when that was last logged.
    failing: Option<(Instant, Instant)>,
}

impl Writer {
    /// Commits records as they come, checkpoints on time, and, once every
    /// sender is gone, drains, commits and checkpoints a last time.
    fn run(mut self, rx: Receiver<Message>) {
        loop {
            self.expire_if_due();
            let first = match rx.recv_timeout(self.next_wake()) {
                Ok(message) => message,
                Err(RecvTimeoutError::Timeout) => {
                    self.commit(Vec::new());
                    self.sync_if_due();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.close();
                    return;
                }
            };
            // Let records gather for a moment, then commit them all at
            // once: a commit costs about as much for one record as for
            // hundreds, and while the writer sleeps, queueing a record
            // wakes nobody.
            if !matches!(first, Message::Flush(_)) {
                std::thread::sleep(BATCH_WINDOW);
            }
            let (records, flushes) = gather(first, &rx);
            self.commit(records);
            self.sync_if_due();
            if !flushes.is_empty() {
                // A flush also applies the retention to what it flushed.
                self.expire(now_ms() - self.retention.as_millis() as i64);
            }
            for tx in flushes {
                let _ = tx.send(());
            }
        }
    }

    /// How long to wait for the next record: until the next checkpoint is
    /// due, or the next expiry.
    fn next_wake(&self) -> Duration {
        let now = Instant::now();
        let mut wake = self.next_expiry.saturating_duration_since(now);
        if let Some(since) = self.unsynced_since {
            wake = wake.min((since + SYNC_PERIOD).saturating_duration_since(now));
        }
        if !self.held.is_empty() {
            wake = wake.min(RETRY_PERIOD);
        }
        wake.max(Duration::from_millis(1))
    }

    /// Commits `records` after any held back. When the commit fails (the
    /// disk is full or read-only), they are all held, bounded by
    /// [`MAX_HELD`], and tried again: nothing is lost to an outage that
    /// passes, and [`Ledger::pending`] shows the backlog meanwhile.
    fn commit(&mut self, records: Vec<Record>) {
        if records.is_empty() && self.held.is_empty() {
            return;
        }
        self.held.extend(records);
        match insert(&mut self.conn, &self.held) {
            Ok(()) => {
                self.unsynced_since.get_or_insert_with(Instant::now);
                if let Some((since, _)) = self.failing.take() {
                    tracing::info!(
                        stored = self.held.len(),
                        after_secs = since.elapsed().as_secs(),
                        "usage records held back are stored"
                    );
                }
                self.pending
                    .fetch_sub(self.held.len() as u64, Ordering::Relaxed);
                self.held.clear();
            }
            Err(e) if !unwritable(&e) => {
                // Not the disk: no use trying again.
                tracing::error!(error = %e, lost = self.held.len(), "usage records could not be stored");
                self.pending
                    .fetch_sub(self.held.len() as u64, Ordering::Relaxed);
                self.held.clear();
            }
            Err(e) => {
                let now = Instant::now();
                let (since, logged) = self.failing.get_or_insert((now, now));
                if *since == now || now.duration_since(*logged) >= REPEAT_ERROR {
                    *logged = now;
                    tracing::error!(
                        error = %e,
                        held = self.held.len(),
                        "usage records could not be stored; holding them in memory and trying again every second"
                    );
                }
                if self.held.len() > MAX_HELD {
                    let lost = self.held.len() - MAX_HELD;
                    self.held.drain(..lost);
                    self.pending.fetch_sub(lost as u64, Ordering::Relaxed);
                    tracing::error!(
                        lost,
                        held = MAX_HELD,
                        "usage records lost: the ledger could not be written for too long"
                    );
                }
            }
        }
    }

    /// Checkpoints if a commit has waited for [`SYNC_PERIOD`].
    fn sync_if_due(&mut self) {
        if self
            .unsynced_since
            .is_some_and(|since| since.elapsed() >= SYNC_PERIOD)
        {
            self.checkpoint("PASSIVE");
        }
    }

    /// Copies the WAL into the database, syncing the WAL first: after it,
    /// every commit so far survives a power loss. A checkpoint a reader
    /// kept from finishing is tried again a period later.
    fn checkpoint(&mut self, mode: &str) {
        let result = self
            .conn
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            });
        match result {
            Ok((log, done)) if done >= log => self.unsynced_since = None,
            Ok(_) => self.unsynced_since = Some(Instant::now()),
            Err(e) => {
                // Tried again a period later, not at once.
                self.unsynced_since = Some(Instant::now());
                tracing::error!(error = %e, "usage checkpoint failed")
            }
        }
    }

    /// The last commit and checkpoint, when the ledger closes.
    fn close(&mut self) {
        self.commit(Vec::new());
        if !self.held.is_empty() {
            tracing::error!(
                lost = self.held.len(),
                "usage records lost: the ledger could not be written before it closed"
            );
        }
        if self.unsynced_since.is_some() {
            self.checkpoint("TRUNCATE");
        }
    }

    fn expire_if_due(&mut self) {
        if Instant::now() >= self.next_expiry {
            self.next_expiry = Instant::now() + EXPIRY_PERIOD;
            self.expire(now_ms() - self.retention.as_millis() as i64);
        }
    }

    /// Deletes the records that started before `cutoff`.
    fn expire(&mut self, cutoff: i64) {
        match self
            .conn
            .execute("DELETE FROM usage WHERE started_ms < ?1", [cutoff])
        {
            Ok(0) => {}
            Ok(n) => {
                self.unsynced_since.get_or_insert_with(Instant::now);
                tracing::info!(deleted = n, "usage records past their retention deleted")
            }
            Err(e) => tracing::error!(error = %e, "usage retention failed"),
        }
    }
}

/// The messages waiting after `first`: records (at most a batch) and
/// flush requests.
fn gather(first: Message, rx: &Receiver<Message>) -> (Vec<Record>, Vec<Sender<()>>) {
    let mut records = Vec::new();
    let mut flushes = Vec::new();
    let mut next = Some(first);
    while let Some(message) = next.take() {
        match message {
            Message::Record(r) => records.push(*r),
            Message::Flush(tx) => flushes.push(tx),
        }
        if records.len() < MAX_BATCH {
            next = rx.try_recv().ok();
        }
    }
    (records, flushes)
}

/// Whether a commit failed because the ledger's file cannot be written
/// now (a full or read-only disk, an I/O error, a lock held too long):
/// worth trying again later.
fn unwritable(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    e.sqlite_error_code().is_some_and(|code| {
        matches!(
            code,
            DiskFull
                | SystemIoFailure
                | ReadOnly
                | DatabaseBusy
                | DatabaseLocked
                | CannotOpen
                | PermissionDenied
                | OutOfMemory
        )
    })
}

fn insert(conn: &mut Connection, records: &[Record]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO usage (invocation, service, revision, trigger, started_ms, wall_us,
                                          queue_us, load_us, cpu_us, fuel, peak_memory, bytes_in,
                                          bytes_out, outcome, status, cold, instance)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        )?;
        for r in records {
            stmt.execute(params![
                r.invocation,
                r.service,
                r.revision,
                r.trigger.as_str(),
                r.started_ms,
                r.wall_us as i64,
                r.queue_us as i64,
                r.load_us as i64,
                r.cpu_us as i64,
                r.fuel as i64,
                r.peak_memory as i64,
                r.bytes_in as i64,
                r.bytes_out as i64,
                r.outcome.as_str(),
                r.status,
                r.cold as i64,
                r.instance,
            ])?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, service: &str, started_ms: i64, outcome: &str) -> Record {
        Record {
            invocation: id.into(),
            service: service.into(),
            revision: 1,
            trigger: Trigger::Http,
            started_ms,
            wall_us: 2_000_000,
            queue_us: 0,
            load_us: 0,
            cpu_us: 1000,
            fuel: 100,
            peak_memory: 1 << 29,
            bytes_in: 10,
            bytes_out: 20,
            outcome: outcome.parse().unwrap(),
            status: Some(200),
            cold: false,
            instance: None,
        }
    }

    /// A ledger that cannot be written (here: a read-only connection, as
    /// a read-only or full disk would) holds its records and stores them
    /// once it can; the backlog shows in `pending` meanwhile.
    #[test]
    fn records_are_held_while_the_ledger_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(USAGE_FILE);
        let mut conn = open_db(&path).unwrap();
        migrate(&mut conn).unwrap();
        drop(conn);
        let read_only =
            Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let pending = Arc::new(AtomicU64::new(3));
        let mut writer = Writer {
            conn: read_only,
            pending: pending.clone(),
            retention: Duration::from_secs(86_400 * 365 * 100),
            next_expiry: Instant::now(),
            unsynced_since: None,
            held: Vec::new(),
            failing: None,
        };
        writer.commit(vec![
            record("a", "svc", 1, "ok"),
            record("b", "svc", 2, "ok"),
        ]);
        writer.commit(vec![record("c", "svc", 3, "trap")]);
        assert_eq!(writer.held.len(), 3);
        assert!(writer.failing.is_some());
        assert!(writer.next_wake() <= RETRY_PERIOD);
        assert_eq!(pending.load(Ordering::Relaxed), 3);

        // Writable again: the next try stores them all, in order.
        writer.conn = open_db(&path).unwrap();
        writer.commit(Vec::new());
        assert!(writer.held.is_empty() && writer.failing.is_none());
        assert_eq!(pending.load(Ordering::Relaxed), 0);
        let stored: Vec<String> = writer
            .conn
            .prepare("SELECT invocation FROM usage ORDER BY started_ms")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(stored, ["a", "b", "c"]);
    }

    #[test]
    fn at_most_max_held_records_are_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(USAGE_FILE);
        let mut conn = open_db(&path).unwrap();
        migrate(&mut conn).unwrap();
        drop(conn);
        let pending = Arc::new(AtomicU64::new((MAX_HELD + 10) as u64));
        let mut writer = Writer {
            conn: Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap(),
            pending: pending.clone(),
            retention: Duration::from_secs(3600),
            next_expiry: Instant::now(),
            unsynced_since: None,
            held: Vec::new(),
            failing: None,
        };
        let records = (0..MAX_HELD + 10)
            .map(|i| record(&format!("r{i}"), "svc", i as i64, "ok"))
            .collect();
        writer.commit(records);
        assert_eq!(writer.held.len(), MAX_HELD);
        assert_eq!(writer.held[0].invocation, "r10", "the oldest are dropped");
        assert_eq!(pending.load(Ordering::Relaxed), MAX_HELD as u64);
    }

    #[test]
    fn records_totals_and_periods() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(
            &dir.path().join(USAGE_FILE),
            Duration::from_secs(86_400 * 365 * 100),
        )
        .unwrap();
        let hour = 3_600_000;
        ledger.record(record("a", "x", 10 * hour, "ok"));
        ledger.record(record("b", "x", 10 * hour + 5, "trap"));
        ledger.record(record("c", "x", 11 * hour, "rejected"));
        ledger.record(record("d", "y", 11 * hour, "ok"));
        ledger.record(record("a", "x", 10 * hour, "ok")); // the same invocation again: ignored
        ledger.flush();

        let all = ledger.report(&Query::default()).unwrap();
        assert_eq!(all.total.invocations, 4);
        assert_eq!(
            (all.total.ok, all.total.failed, all.total.rejected),
            (2, 1, 1)
        );
        assert_eq!(all.total.fuel, 400);
        // 0.5 GB for 2 s, four times.
        assert!(
            (all.total.gb_seconds - 4.0).abs() < 1e-9,
            "{}",
            all.total.gb_seconds
        );
        assert_eq!(all.rows.len(), 2);

        let hourly = ledger
            .report(&Query {
                service: Some("x".into()),
                by: Some(Period::Hour),
                ..Query::default()
            })
            .unwrap();
        assert_eq!(hourly.rows.len(), 2);
        assert_eq!(
            hourly.rows[0].period.as_deref(),
            Some("1970-01-01T10:00:00.000Z")
        );
        assert_eq!(hourly.rows[0].invocations, 2);

        let since = ledger
            .records(
                &Query {
                    since_ms: Some(11 * hour),
                    ..Query::default()
                },
                10,
            )
            .unwrap();
        assert_eq!(since.len(), 2);
        ledger.close();
    }

    #[test]
    fn an_invocation_is_found_by_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let ledger =
            Ledger::open(&dir.path().join(USAGE_FILE), Duration::from_secs(86_400)).unwrap();
        let id = InvocationId::new();
        let other = InvocationId::new();
        ledger.record(record(&id.to_string(), "x", id.millis() + 2, "trap"));
        ledger.record(record(&other.to_string(), "y", other.millis(), "ok"));
        ledger.flush();
        let found = ledger.invocation(&id).unwrap().expect("the record");
        assert_eq!(
            (found.service.as_str(), found.outcome),
            ("x", OutcomeKind::Trap)
        );
        assert!(ledger.invocation(&InvocationId::new()).unwrap().is_none());
        ledger.close();
    }

    #[test]
    fn records_past_their_retention_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(USAGE_FILE);
        let ledger = Ledger::open(&path, Duration::from_secs(3600)).unwrap();
        let now = now_ms();
        ledger.record(record("old", "x", now - 2 * 3_600_000, "ok"));
        ledger.record(record("new", "x", now - 60_000, "ok"));
        ledger.flush();
        let kept = ledger.records(&Query::default(), 10).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].invocation, "new");
        ledger.close();

        // Reopened: the records are there, and new ones still go in.
        let ledger = Ledger::open(&path, Duration::from_secs(3600)).unwrap();
        ledger.record(record("again", "x", now, "ok"));
        ledger.close();
        let ledger = Ledger::open(&path, Duration::from_secs(3600)).unwrap();
        assert_eq!(
            ledger.report(&Query::default()).unwrap().total.invocations,
            2
        );
    }

    #[test]
    fn committed_records_are_checkpointed_without_further_traffic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(USAGE_FILE);
        let ledger = Ledger::open(&path, Duration::from_secs(86_400)).unwrap();
        let now = now_ms();
        for id in ["a", "b", "c"] {
            ledger.record(record(id, "x", now, "ok"));
        }
        ledger.flush();
        // No more records come. The database file alone — what a power
        // loss would leave if the WAL's tail were lost — holds them once
        // the writer's timer has checkpointed them.
        let copy = dir.path().join("copy.db");
        let in_main_file = || {
            std::fs::copy(&path, &copy).unwrap();
            let _ = std::fs::remove_file(dir.path().join("copy.db-wal"));
            let conn = Connection::open(&copy).unwrap();
            // Before the first checkpoint the file holds no table at all.
            conn.query_row("SELECT count(*) FROM usage", [], |r| r.get::<_, i64>(0))
                .unwrap_or(0)
        };
        let deadline = Instant::now() + SYNC_PERIOD * 5;
        while in_main_file() != 3 {
            assert!(
                Instant::now() < deadline,
                "not checkpointed after {:?}",
                SYNC_PERIOD * 5
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Closing checkpoints what is left, at once.
        ledger.record(record("d", "x", now, "ok"));
        ledger.close();
        assert_eq!(in_main_file(), 4);
    }

    #[test]
    fn unknown_triggers_and_outcomes_are_refused_by_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(USAGE_FILE);
        let ledger = Ledger::open(&path, Duration::from_secs(86_400)).unwrap();
        ledger.close();
        let conn = Connection::open(&path).unwrap();
        let insert = |trigger: &str, outcome: &str| {
            conn.execute(
                "INSERT INTO usage (invocation, service, revision, trigger, started_ms, wall_us,
                                    cpu_us, fuel, peak_memory, bytes_in, bytes_out, outcome, cold)
                 VALUES ('i', 's', 1, ?1, 0, 0, 0, 0, 0, 0, 0, ?2, 0)",
                [trigger, outcome],
            )
        };
        assert!(insert("http", "crashed").is_err());
        assert!(insert("cron", "ok").is_err());
        insert("http", "ok").unwrap();
    }

    #[test]
    fn a_version_1_ledger_is_upgraded_keeping_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(USAGE_FILE);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE usage (
                started_ms INTEGER NOT NULL, invocation TEXT NOT NULL, service TEXT NOT NULL,
                revision INTEGER NOT NULL, trigger TEXT NOT NULL, wall_us INTEGER NOT NULL,
                cpu_us INTEGER NOT NULL, fuel INTEGER NOT NULL, peak_memory INTEGER NOT NULL,
                bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL, outcome TEXT NOT NULL,
                status INTEGER, cold INTEGER NOT NULL, PRIMARY KEY (started_ms, invocation)
            ) STRICT, WITHOUT ROWID;
            INSERT INTO usage VALUES (5, 'old', 'x', 1, 'event', 100, 10, 7, 65536, 1, 2, 'trap', NULL, 1);",
        )
        .unwrap();
        drop(conn);
        let ledger = Ledger::open(&path, Duration::from_secs(86_400 * 365 * 100)).unwrap();
        let records = ledger.records(&Query::default(), 10).unwrap();
        assert_eq!(records.len(), 1);
        let old = &records[0];
        assert_eq!(
            (old.trigger, old.outcome),
            (Trigger::Event, OutcomeKind::Trap)
        );
        assert_eq!(
            (old.wall_us, old.queue_us, old.load_us, old.cold),
            (100, 0, 0, true)
        );
        ledger.record(record("new", "x", 6, "error"));
        ledger.close();
        let ledger = Ledger::open(&path, Duration::from_secs(86_400 * 365 * 100)).unwrap();
        assert_eq!(ledger.records(&Query::default(), 10).unwrap().len(), 2);
    }

    #[test]
    fn a_version_2_ledger_gains_the_instance_column_keeping_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(USAGE_FILE);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "{}
            INSERT INTO usage VALUES (5, 'old', 'x', 1, 'http', 100, 0, 0, 10, 7, 65536, 1, 2, 'ok', 200, 0);
            PRAGMA user_version = 2;",
            table("usage").replace("instance TEXT,", "")
        ))
        .unwrap();
        drop(conn);
        let ledger = Ledger::open(&path, Duration::from_secs(86_400 * 365 * 100)).unwrap();
        let mut shared = record("new", "x", 6, "ok");
        shared.instance = Some("first".into());
        ledger.record(shared);
        ledger.close();
        let ledger = Ledger::open(&path, Duration::from_secs(86_400 * 365 * 100)).unwrap();
        let records = ledger.records(&Query::default(), 10).unwrap();
        let instances: Vec<Option<&str>> = records.iter().map(|r| r.instance.as_deref()).collect();
        assert_eq!(instances, [None, Some("first")]);
    }

    /// One test per outcome: the metric label, the ledger's value and the
    /// log field of an invocation all come from the same [`OutcomeKind`].
    macro_rules! outcome_is_named_the_same_everywhere {
        ($($test:ident: $kind:expr,)+) => {$(
            #[test]
            fn $test() {
                one_name_everywhere($kind);
            }
        )+};
    }

    outcome_is_named_the_same_everywhere! {
        outcome_ok_is_named_the_same_everywhere: OutcomeKind::Ok,
        outcome_trap_is_named_the_same_everywhere: OutcomeKind::Trap,
        outcome_fuel_is_named_the_same_everywhere: OutcomeKind::Fuel,
        outcome_memory_is_named_the_same_everywhere: OutcomeKind::Memory,
        outcome_deadline_is_named_the_same_everywhere: OutcomeKind::Deadline,
        outcome_error_is_named_the_same_everywhere: OutcomeKind::Error,
        outcome_rejected_is_named_the_same_everywhere: OutcomeKind::Rejected,
    }

    fn one_name_everywhere(kind: OutcomeKind) {
        use crate::runtime::metrics::Metrics;
        use crate::runtime::record::{Meter, RecordDraft};
        // Every outcome of the set is covered by one of the tests above.
        assert_eq!(OutcomeKind::ALL.len(), 7);

        let dir = tempfile::tempdir().unwrap();
        let ledger =
            Ledger::open(&dir.path().join(USAGE_FILE), Duration::from_secs(86_400)).unwrap();
        let meter = Arc::new(Meter::default());
        meter.set_sink(ledger.clone());
        let metrics = Metrics::default();
        let logs = Arc::new(Mutex::new(Vec::<u8>::new()));
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_writer({
                let logs = logs.clone();
                move || LogBuffer(logs.clone())
            })
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("invocation", outcome = tracing::field::Empty);
            let base = record("inv", "svc", now_ms(), "rejected");
            let hold = RecordDraft::with_record(&meter, metrics.service("svc"), base, span, None);
            match kind {
                OutcomeKind::Rejected => {}
                OutcomeKind::Error => {
                    hold.record().ran(OutcomeKind::Ok, 10, 65536);
                    hold.record().refine(OutcomeKind::Error);
                }
                ran => hold.record().ran(ran, 10, 65536),
            }
            drop(hold);
        });
        ledger.flush();

        // The ledger: the column holds the name, and reads back as the kind.
        let stored = ledger.records(&Query::default(), 10).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].outcome, kind);
        let column: String = ledger
            .read(|c| c.query_row("SELECT outcome FROM usage", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(column, kind.as_str());
        // The metric's label.
        let text = metrics.render(&[]);
        let series = format!(
            "berth_invocations_total{{service=\"svc\",trigger=\"http\",outcome=\"{kind}\"}} 1"
        );
        assert!(text.contains(&series), "{series} not in\n{text}");
        // The log field of the closing line.
        let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
        let finished: serde_json::Value = logs
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|l| l["fields"]["message"] == "finished")
            .unwrap_or_else(|| panic!("no closing line in {logs}"));
        assert_eq!(finished["span"]["outcome"], kind.as_str(), "{finished}");
        ledger.close();
    }

    /// A log writer into a shared buffer.
    struct LogBuffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for LogBuffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

//! The usage ledger: one record per invocation, whatever its trigger — the
//! unit of pay-per-invoke.
//!
//! Records go to their own SQLite database (`STATE/usage.db`, WAL,
//! `synchronous = FULL`) so that metering never contends with deploys or
//! the event queue for the main database's write lock. A writer thread
//! commits every record waiting in its queue in one transaction (group
//! commit), as soon as the previous commit is done.
//!
//! **Loss window.** A record is queued when its invocation ends (for HTTP,
//! when the guest has returned and the response body has been sent or
//! dropped) and is durable — against a crash of the process and against a
//! power loss — once the commit holding it returns, usually well under a
//! millisecond later (one `fsync`). Records still queued when the process
//! dies are lost; an invocation cut off by the crash itself leaves no
//! record. `berth serve` flushes the queue before it exits.

use crate::units::{now_ms, rfc3339};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The usage database's file name in the state directory.
pub const USAGE_FILE: &str = "usage.db";

// Clustered by time: records arrive in about that order (appends), and
// time ranges, the common query, are ranges of the primary key.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage (
    started_ms INTEGER NOT NULL,
    invocation TEXT NOT NULL,
    service TEXT NOT NULL,
    revision INTEGER NOT NULL,
    trigger TEXT NOT NULL,
    wall_us INTEGER NOT NULL,
    cpu_us INTEGER NOT NULL,
    fuel INTEGER NOT NULL,
    peak_memory INTEGER NOT NULL,
    bytes_in INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER,
    cold INTEGER NOT NULL,
    PRIMARY KEY (started_ms, invocation)
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_by_service ON usage (service, started_ms);
";

/// What started an invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// An HTTP request.
    Http,
    /// An event delivery.
    Event,
    /// A schedule's firing.
    Schedule,
    /// A call from another service (`http://NAME.svc/…`).
    Call,
}

impl Trigger {
    /// `http`, `event`, `schedule` or `call`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Http => "http",
            Trigger::Event => "event",
            Trigger::Schedule => "schedule",
            Trigger::Call => "call",
        }
    }
}

/// One invocation, as metered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The invocation id.
    pub invocation: String,
    /// The service.
    pub service: String,
    /// Its revision.
    pub revision: u32,
    /// What started it.
    pub trigger: Trigger,
    /// When it started (ms since the epoch).
    pub started_ms: i64,
    /// Wall time, in µs.
    pub wall_us: u64,
    /// Time it spent running on a thread (guest code and the host calls it
    /// made), in µs.
    pub cpu_us: u64,
    /// Fuel consumed.
    pub fuel: u64,
    /// Peak linear memory, in bytes.
    pub peak_memory: u64,
    /// Request body or event bytes in.
    pub bytes_in: u64,
    /// Response body bytes out.
    pub bytes_out: u64,
    /// `ok`, `trap`, `fuel`, `memory`, `deadline`, `error` (the guest
    /// answered with an error or no response), or `rejected` (refused
    /// before it ran: busy, body too large, component not loadable).
    pub outcome: String,
    /// The HTTP status sent, for HTTP.
    pub status: Option<u16>,
    /// Whether the invocation had to load the component first.
    pub cold: bool,
}

/// A query of the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Only this service.
    pub service: Option<String>,
    /// From (ms since the epoch, inclusive).
    pub since_ms: Option<i64>,
    /// Until (ms since the epoch, exclusive).
    pub until_ms: Option<i64>,
    /// Group by period: `hour` or `day`; none: one row per service.
    pub by: Option<Period>,
}

/// A grouping period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// Per hour.
    Hour,
    /// Per day (UTC).
    Day,
}

impl Period {
    fn ms(self) -> i64 {
        match self {
            Period::Hour => 3_600_000,
            Period::Day => 86_400_000,
        }
    }
}

impl std::str::FromStr for Period {
    type Err = String;
    fn from_str(s: &str) -> Result<Period, String> {
        match s {
            "hour" => Ok(Period::Hour),
            "day" => Ok(Period::Day),
            _ => Err(format!("invalid period {s:?}: use hour or day")),
        }
    }
}

/// Totals of a group of records: what a bill is made of.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// The service (absent in the grand total).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The period's start (RFC 3339), when grouped by period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// Invocations, rejected ones included.
    pub invocations: u64,
    /// Of which ok.
    pub ok: u64,
    /// Of which failed (trap, fuel, memory, deadline, error).
    pub failed: u64,
    /// Of which rejected before they ran.
    pub rejected: u64,
    /// Of which cold starts.
    pub cold_starts: u64,
    /// Fuel consumed.
    pub fuel: u64,
    /// Peak memory × wall time, in GB-seconds (1 GB = 2^30 bytes).
    pub gb_seconds: f64,
    /// On-thread time, in ms.
    pub cpu_ms: f64,
    /// Wall time, in ms.
    pub wall_ms: f64,
    /// Bytes in.
    pub bytes_in: u64,
    /// Bytes out.
    pub bytes_out: u64,
}

/// The answer to a query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// One row per service (and period).
    pub rows: Vec<Totals>,
    /// Everything the query covered.
    pub total: Totals,
}

/// The ledger.
pub struct Ledger {
    writer: Mutex<Option<std::sync::mpsc::Sender<Message>>>,
    reader: Arc<Mutex<Connection>>,
    done: Mutex<Option<std::thread::JoinHandle<()>>>,
}

enum Message {
    Record(Box<Record>),
    Flush(std::sync::mpsc::Sender<()>),
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
    // (it is in the WAL, in the kernel's page cache); the WAL reaches the
    // disk at each checkpoint, at least every second (see `write_loop`).
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

impl Ledger {
    /// Opens (creating) the ledger at `path`; records older than
    /// `retention` are deleted, now and every hour.
    pub fn open(path: &Path, retention: Duration) -> rusqlite::Result<Arc<Ledger>> {
        let writer = open_db(path)?;
        writer.execute_batch(SCHEMA)?;
        let reader = open_db(path)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("berth-usage".into())
            .spawn(move || write_loop(writer, rx, retention))
            .expect("spawning the usage writer");
        Ok(Arc::new(Ledger {
            writer: Mutex::new(Some(tx)),
            reader: Arc::new(Mutex::new(reader)),
            done: Mutex::new(Some(handle)),
        }))
    }

    /// Queues a record.
    pub fn record(&self, record: Record) {
        if let Some(tx) = &*self.writer.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(Message::Record(Box::new(record)));
        }
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

    /// Commits what is queued and stops the writer.
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
        let period = query.by.map_or(0, Period::ms);
        let sql = format!(
            "SELECT service, {group}, COUNT(*),
                    SUM(outcome = 'ok'), SUM(outcome NOT IN ('ok', 'rejected')), SUM(outcome = 'rejected'),
                    SUM(cold), SUM(fuel), SUM(CAST(peak_memory AS REAL) * wall_us),
                    SUM(cpu_us), SUM(wall_us), SUM(bytes_in), SUM(bytes_out)
             FROM usage
             WHERE (?1 IS NULL OR service = ?1) AND (?2 IS NULL OR started_ms >= ?2) AND (?3 IS NULL OR started_ms < ?3)
             GROUP BY service{by}
             ORDER BY {order}",
            group = if period > 0 { format!("(started_ms / {period}) * {period}") } else { "NULL".into() },
            by = if period > 0 { ", 2" } else { "" },
            order = if period > 0 { "2, 1" } else { "1" },
        );
        self.read(|conn| {
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(
                params![query.service, query.since_ms, query.until_ms],
                |r| {
                    let n = |i: usize| -> rusqlite::Result<u64> {
                        Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0) as u64)
                    };
                    let f = |i: usize| -> rusqlite::Result<f64> {
                        Ok(r.get::<_, Option<f64>>(i)?.unwrap_or(0.0))
                    };
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
                },
            )?;
            let rows: Vec<Totals> = rows.collect::<rusqlite::Result<_>>()?;
            let mut total = Totals::default();
            for row in &rows {
                total.invocations += row.invocations;
                total.ok += row.ok;
                total.failed += row.failed;
                total.rejected += row.rejected;
                total.cold_starts += row.cold_starts;
                total.fuel += row.fuel;
                total.gb_seconds += row.gb_seconds;
                total.cpu_ms += row.cpu_ms;
                total.wall_ms += row.wall_ms;
                total.bytes_in += row.bytes_in;
                total.bytes_out += row.bytes_out;
            }
            Ok(Report { rows, total })
        })
    }

    /// The records themselves, oldest first, at most `limit`.
    pub fn records(&self, query: &Query, limit: usize) -> rusqlite::Result<Vec<Record>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT invocation, service, revision, trigger, started_ms, wall_us, cpu_us, fuel, peak_memory,
                        bytes_in, bytes_out, outcome, status, cold
                 FROM usage
                 WHERE (?1 IS NULL OR service = ?1) AND (?2 IS NULL OR started_ms >= ?2) AND (?3 IS NULL OR started_ms < ?3)
                 ORDER BY started_ms, invocation LIMIT ?4",
            )?;
            let rows = stmt.query_map(params![query.service, query.since_ms, query.until_ms, limit as i64], |r| {
                let trigger: String = r.get(3)?;
                Ok(Record {
                    invocation: r.get(0)?,
                    service: r.get(1)?,
                    revision: r.get(2)?,
                    trigger: match trigger.as_str() {
                        "event" => Trigger::Event,
                        "schedule" => Trigger::Schedule,
                        "call" => Trigger::Call,
                        _ => Trigger::Http,
                    },
                    started_ms: r.get(4)?,
                    wall_us: r.get::<_, i64>(5)? as u64,
                    cpu_us: r.get::<_, i64>(6)? as u64,
                    fuel: r.get::<_, i64>(7)? as u64,
                    peak_memory: r.get::<_, i64>(8)? as u64,
                    bytes_in: r.get::<_, i64>(9)? as u64,
                    bytes_out: r.get::<_, i64>(10)? as u64,
                    outcome: r.get(11)?,
                    status: r.get::<_, Option<u16>>(12)?,
                    cold: r.get::<_, i64>(13)? != 0,
                })
            })?;
            rows.collect()
        })
    }
}

/// How long the writer gathers records before it commits them.
const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// Most records in one commit.
const MAX_BATCH: usize = 8192;

/// How often committed records are synced to the disk.
const SYNC_PERIOD: Duration = Duration::from_secs(1);

fn write_loop(mut conn: Connection, rx: std::sync::mpsc::Receiver<Message>, retention: Duration) {
    const EXPIRY_PERIOD: i64 = 3_600_000;
    let mut next_expiry = 0i64;
    let mut last_sync = std::time::Instant::now();
    loop {
        let now = now_ms();
        if now >= next_expiry {
            next_expiry = now + EXPIRY_PERIOD;
            expire(&conn, now - retention.as_millis() as i64);
        }
        let wait = Duration::from_millis((next_expiry - now).max(1) as u64);
        let first = match rx.recv_timeout(wait) {
            Ok(message) => message,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        // Let records gather for a moment, then commit them all at once: a
        // commit costs about as much for one record as for hundreds, and
        // while the writer sleeps, queueing a record wakes nobody.
        if !matches!(first, Message::Flush(_)) {
            std::thread::sleep(BATCH_WINDOW);
        }
        let mut records = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Record(r) => records.push(r),
                Message::Flush(tx) => flushes.push(tx),
            }
            if records.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !records.is_empty()
            && let Err(e) = insert(&mut conn, &records)
        {
            tracing::error!(error = %e, lost = records.len(), "usage records could not be stored");
        }
        if last_sync.elapsed() >= SYNC_PERIOD {
            last_sync = std::time::Instant::now();
            if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                tracing::error!(error = %e, "usage checkpoint failed");
            }
        }
        if !flushes.is_empty() {
            // A flush also applies the retention to what it flushed.
            expire(&conn, now_ms() - retention.as_millis() as i64);
        }
        for tx in flushes {
            let _ = tx.send(());
        }
    }
}

/// Deletes the records that started before `cutoff`.
fn expire(conn: &Connection, cutoff: i64) {
    match conn.execute("DELETE FROM usage WHERE started_ms < ?1", [cutoff]) {
        Ok(0) => {}
        Ok(n) => tracing::info!(deleted = n, "usage records past their retention deleted"),
        Err(e) => tracing::error!(error = %e, "usage retention failed"),
    }
}

fn insert(conn: &mut Connection, records: &[Box<Record>]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO usage (invocation, service, revision, trigger, started_ms, wall_us, cpu_us, fuel,
                                          peak_memory, bytes_in, bytes_out, outcome, status, cold)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        for r in records {
            stmt.execute(params![
                r.invocation,
                r.service,
                r.revision,
                r.trigger.as_str(),
                r.started_ms,
                r.wall_us as i64,
                r.cpu_us as i64,
                r.fuel as i64,
                r.peak_memory as i64,
                r.bytes_in as i64,
                r.bytes_out as i64,
                r.outcome,
                r.status,
                r.cold as i64,
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
            cpu_us: 1000,
            fuel: 100,
            peak_memory: 1 << 29,
            bytes_in: 10,
            bytes_out: 20,
            outcome: outcome.into(),
            status: Some(200),
            cold: false,
        }
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
}

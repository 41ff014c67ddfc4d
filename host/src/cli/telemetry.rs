//! Logs: `tracing` events to stderr, filtered by `BERTH_LOG` (same syntax as
//! `RUST_LOG`; default `info`), as text for people or as JSON, one object
//! per line, for machines (`--log-format json`).
//!
//! Every invocation runs in a span named `invocation` (see
//! [`crate::runtime::record::span`]) and ends with one event of target
//! `berth::invocation`; `BERTH_LOG=info,berth::invocation=off` silences
//! those. Guest stdout/stderr lines arrive with target `guest` and the
//! fields `service`, `invocation` and `stream`.
//!
//! By default lines are not written to stderr by the thread that logs them:
//! they are appended to a buffer that a writer thread empties with one
//! `write` per batch, a few milliseconds (the *log buffer* window) after
//! the first line of the batch arrives. A line per invocation then costs
//! its formatting, not a system call on the request path. [`init`]'s guard
//! writes what is left when it is dropped; a crash (`kill -9`) loses the
//! lines of the last window. A window of zero writes each line from the
//! thread that logs it: nothing is lost, at a system call per line.

use crate::runtime::logs::{Level, LogBook};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// How long the writer lets lines gather before it writes them, unless
/// told otherwise.
pub const DEFAULT_WINDOW: Duration = Duration::from_millis(5);

/// Past this many buffered bytes, the thread logging writes the batch
/// itself: a slow stderr slows logging down rather than growing memory.
const MAX_BUFFER: usize = 1 << 20;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`
    /// (the message among them), and `span`, the fields of the span the
    /// event happened in (the invocation's, for everything about one).
    Json,
}

struct Shared {
    window: Duration,
    buffer: Mutex<Buffer>,
    ready: Condvar,
    /// Held while a batch is written, so batches go out in order.
    output: Mutex<()>,
}

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes everything buffered so far.
    fn write_out(&self) {
        let _output = self.output.lock().unwrap_or_else(|e| e.into_inner());
        let batch = std::mem::take(&mut self.lock().bytes);
        if !batch.is_empty() {
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(&batch);
            let _ = stderr.flush();
        }
    }

    fn run(&self) {
        loop {
            {
                let mut buffer = self.lock();
                while buffer.bytes.is_empty() && !buffer.closed {
                    buffer = self.ready.wait(buffer).unwrap_or_else(|e| e.into_inner());
                }
                if buffer.closed {
                    drop(buffer);
                    self.write_out();
                    return;
                }
            }
            std::thread::sleep(self.window);
            self.write_out();
        }
    }
}

/// The writer the subscriber formats lines into.
#[derive(Clone)]
struct BatchWriter(Arc<Shared>);

impl Write for BatchWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buffer = self.0.lock();
        let was_empty = buffer.bytes.is_empty();
        buffer.bytes.extend_from_slice(data);
        let full = buffer.bytes.len() >= MAX_BUFFER;
        drop(buffer);
        if full {
            self.0.write_out();
        } else if was_empty {
            self.0.ready.notify_one();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Keeps the log writer running; dropping it writes the lines still
/// buffered and stops the writer.
#[must_use = "logs buffered when the guard is dropped are written then"]
pub struct LogGuard {
    shared: Option<Arc<Shared>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

static WRITER: std::sync::OnceLock<Arc<Shared>> = std::sync::OnceLock::new();

/// Writes the log lines buffered so far, now: call it before printing to
/// stderr directly, so the output stays in order.
pub fn flush() {
    if let Some(shared) = WRITER.get() {
        shared.write_out();
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.lock().closed = true;
            shared.ready.notify_one();
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
            shared.write_out();
        }
    }
}

/// Installs the global subscriber and starts the log writer, which
/// batches lines for `window` (zero: no writer thread, each line is
/// written when it is logged). Calling it twice is harmless (the second
/// guard does nothing).
pub fn init(format: LogFormat, window: Duration) -> LogGuard {
    let mut filter =
        EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // oci-client logs registry tokens at debug: never written.
    if let Ok(quiet) = "oci_client=info".parse() {
        filter = filter.add_directive(quiet);
    }
    let shared = Arc::new(Shared {
        window,
        buffer: Mutex::new(Buffer::default()),
        ready: Condvar::new(),
        output: Mutex::new(()),
    });
    let writer = if window.is_zero() {
        BoxMakeWriter::new(std::io::stderr)
    } else {
        BoxMakeWriter::new(BatchWriter(shared.clone()))
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = match format {
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    // The services' own logs keep their lines at info and above, whatever
    // stderr is filtered to.
    let installed = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(ServiceLogs.with_filter(LevelFilter::INFO))
        .try_init();
    if installed.is_err() || window.is_zero() {
        return LogGuard {
            shared: None,
            thread: None,
        };
    }
    let _ = WRITER.set(shared.clone());
    let writer = shared.clone();
    let thread = std::thread::Builder::new()
        .name("berth-log".into())
        .spawn(move || writer.run())
        .ok();
    LogGuard {
        shared: Some(shared),
        thread,
    }
}

/// Where the services' lines go, once a host keeps them (`up`, `serve`).
static BOOK: OnceLock<Arc<LogBook>> = OnceLock::new();

/// Keeps every service's lines in `book` from now on (see
/// [`crate::runtime::logs`]). Once per process.
pub fn keep_service_logs(book: Arc<LogBook>) {
    let _ = BOOK.set(book);
}

/// The layer that files lines under their service: a guest's output
/// (target `guest`, which names its service and invocation), and every
/// line logged in an invocation's span but the closing one (which the
/// meter keeps itself).
struct ServiceLogs;

/// What an invocation's span says, kept in the span.
struct Invocation {
    service: String,
    invocation: String,
}

/// The fields of a span or event, as text.
#[derive(Default)]
struct Fields {
    message: String,
    service: Option<String>,
    invocation: Option<String>,
    stream: Option<String>,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "service" => self.service = Some(value.to_owned()),
            "invocation" => self.invocation = Some(value.to_owned()),
            "stream" => self.stream = Some(value.to_owned()),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "service" => self.service = Some(format!("{value:?}")),
            "invocation" => self.invocation = Some(format!("{value:?}")),
            "stream" => self.stream = Some(format!("{value:?}")),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

fn level(level: &tracing::Level) -> Level {
    match *level {
        tracing::Level::ERROR => Level::Error,
        tracing::Level::WARN => Level::Warn,
        tracing::Level::INFO => Level::Info,
        _ => Level::Debug,
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for ServiceLogs {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if BOOK.get().is_none() || attrs.metadata().name() != "invocation" {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(service), Some(invocation), Some(span)) =
            (fields.service, fields.invocation, ctx.span(id))
        {
            span.extensions_mut().insert(Invocation {
                service,
                invocation,
            });
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(book) = BOOK.get() else { return };
        let level = level(event.metadata().level());
        if event.metadata().target() == "guest" {
            let mut fields = Fields::default();
            event.record(&mut fields);
            if let Some(service) = &fields.service {
                let stream = match fields.stream.as_deref() {
                    Some("stderr") => "stderr",
                    _ => "stdout",
                };
                book.push(service, fields.invocation, stream, level, fields.message);
            }
            return;
        }
        // The closing line is kept by the meter itself (see
        // `RecordDraft`); only other lines in an invocation's span are
        // formatted here.
        if event.metadata().target() == "berth::invocation" {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        for span in scope {
            let extensions = span.extensions();
            if let Some(invocation) = extensions.get::<Invocation>() {
                let mut fields = Fields::default();
                event.record(&mut fields);
                let mut text = fields.message;
                text.push_str(&fields.rest);
                book.push(
                    &invocation.service,
                    Some(invocation.invocation.clone()),
                    "host",
                    level,
                    text,
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_batched_in_order_and_flushed_on_close() {
        let shared = Arc::new(Shared {
            window: DEFAULT_WINDOW,
            buffer: Mutex::new(Buffer::default()),
            ready: Condvar::new(),
            output: Mutex::new(()),
        });
        let mut writer = BatchWriter(shared.clone());
        writer.write_all(b"one\n").unwrap();
        writer.write_all(b"two\n").unwrap();
        assert_eq!(shared.lock().bytes, b"one\ntwo\n");
        let thread = std::thread::spawn({
            let shared = shared.clone();
            move || shared.run()
        });
        shared.lock().closed = true;
        shared.ready.notify_one();
        thread.join().unwrap();
        assert!(shared.lock().bytes.is_empty());
    }
}

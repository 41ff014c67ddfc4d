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

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

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
    let filter = EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
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

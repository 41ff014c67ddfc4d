//! Guest output: a guest's stdout and stderr become log lines tagged with
//! the service and the invocation.

use super::Tag;
use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Longest line kept before it is logged anyway.
const MAX_LINE: usize = 16 * 1024;

/// A guest's stdout or stderr: every line becomes a `tracing` event (target
/// `guest`) tagged with the service, the invocation and the stream. A last
/// line without a newline is logged when the instance is dropped.
#[derive(Clone)]
pub struct GuestOutput {
    inner: Arc<GuestOutputInner>,
}

struct GuestOutputInner {
    tag: Mutex<Tag>,
    stream: &'static str,
    pending: Mutex<Vec<u8>>,
}

impl GuestOutput {
    pub(super) fn new(tag: Tag, stream: &'static str) -> Self {
        GuestOutput {
            inner: Arc::new(GuestOutputInner {
                tag: Mutex::new(tag),
                stream,
                pending: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Tags what follows with `tag` (a reused instance's next
    /// invocation), after logging a last line the previous one left
    /// without a newline.
    pub(super) fn retag(&self, tag: Tag) {
        let inner = &self.inner;
        let mut pending = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        if !pending.is_empty() {
            inner.emit(&pending);
            pending.clear();
        }
        *inner.tag.lock().unwrap_or_else(|e| e.into_inner()) = tag;
    }

    fn write_bytes(&self, mut bytes: &[u8]) {
        let inner = &self.inner;
        let mut pending = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(pos) = bytes.iter().position(|b| *b == b'\n') {
            pending.extend_from_slice(&bytes[..pos]);
            inner.emit(&pending);
            pending.clear();
            bytes = &bytes[pos + 1..];
        }
        pending.extend_from_slice(bytes);
        if pending.len() >= MAX_LINE {
            inner.emit(&pending);
            pending.clear();
        }
    }
}

impl GuestOutputInner {
    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        let tag = self.tag.lock().unwrap_or_else(|e| e.into_inner());
        tracing::info!(
            target: "guest",
            service = %tag.service,
            invocation = %tag.invocation,
            stream = self.stream,
            "{line}"
        );
    }
}

impl Drop for GuestOutputInner {
    fn drop(&mut self) {
        let pending = self.pending.get_mut().unwrap_or_else(|e| e.into_inner());
        if !pending.is_empty() {
            let line = std::mem::take(pending);
            self.emit(&line);
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

//! What a listener allows its clients: finite limits on slow, idle,
//! numerous or oversized clients, the same for the public and the admin
//! listener (each a flag of `berth up` and `berth serve`; see
//! `docs/gateway.md`).
//!
//! | limit | default | beyond it |
//! |---|---|---|
//! | [`header_read_timeout`](ListenerLimits::header_read_timeout) | 10 s | connection closed |
//! | [`idle_timeout`](ListenerLimits::idle_timeout) | 60 s | connection closed |
//! | [`max_connections`](ListenerLimits::max_connections) | 10,000 | new connections wait in the kernel's queue |
//! | [`max_header_size`](ListenerLimits::max_header_size) | 64 KiB | 431, connection closed (HTTP/1.1); stream reset (HTTP/2) |
//! | [`max_headers`](ListenerLimits::max_headers) | 100 | 431 |
//! | [`max_uri_length`](ListenerLimits::max_uri_length) | 8 KiB | 414 |
//! | [`body_timeout`](ListenerLimits::body_timeout) and [`body_min_rate`](ListenerLimits::body_min_rate) | 30 s, 1 KiB/s | the body fails: 408 from the admin API, a read error for a guest |
//! | [`http2_max_streams`](ListenerLimits::http2_max_streams) | 100 | the client must wait (HTTP/2 flow) |

use std::time::Duration;

/// The limits one listener puts on its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerLimits {
    /// How long a new connection may take to send a request's headers
    /// (with TLS: the handshake too). On HTTP/1.1 the same time bounds the
    /// wait for the next request on a kept-alive connection (hyper counts
    /// it from when the connection is ready to read one).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this
    /// long is closed (HTTP/2 connections, and HTTP/1.1 ones whose client
    /// stopped half-way).
    pub idle_timeout: Duration,
    /// Connections open at once. The listener stops accepting at the limit
    /// (new clients wait in the kernel's accept queue, then are refused by
    /// it) instead of running out of file descriptors; at start it is
    /// lowered to leave descriptors for everything else.
    pub max_connections: usize,
    /// The largest request head (request line and headers), in bytes.
    pub max_header_size: usize,
    /// The most header fields in a request.
    pub max_headers: usize,
    /// The longest request target (path and query), in bytes.
    pub max_uri_length: usize,
    /// Every request body has this long, plus one second per
    /// `body_min_rate` bytes received, to arrive in full.
    pub body_timeout: Duration,
    /// The rate (bytes per second) a body must keep up beyond
    /// `body_timeout`.
    pub body_min_rate: u64,
    /// Streams one HTTP/2 connection may have open at once.
    pub http2_max_streams: u32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_header_size: 64 * 1024,
            max_headers: 100,
            max_uri_length: 8 * 1024,
            body_timeout: Duration::from_secs(30),
            body_min_rate: 1024,
            http2_max_streams: 100,
        }
    }
}

/// Descriptors kept free of connections at the open-file limit: for
/// guests' files and outbound calls, the databases, the code cache.
const SPARE_FDS: u64 = 1024;

impl ListenerLimits {
    /// Fits `max_connections` of `listeners` listeners under the process's
    /// open-file limit, after raising the soft limit to the hard one:
    /// returns the limit to use, and logs when it had to lower it.
    pub fn fit_to_open_files(&mut self, listeners: usize) {
        let Some(files) = raise_open_file_limit() else {
            return;
        };
        let room = files.saturating_sub(SPARE_FDS) / listeners.max(1) as u64;
        let room = room.max(16) as usize;
        if self.max_connections > room {
            tracing::warn!(
                requested = self.max_connections,
                allowed = room,
                open_file_limit = files,
                "--max-connections lowered to fit the open-file limit"
            );
            self.max_connections = room;
        }
    }
}

/// Raises the soft open-file limit to the hard one (as Go and nginx do)
/// and returns it.
fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Some(limit.rlim_cur)
}

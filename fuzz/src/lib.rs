//! What the fuzz targets share: one async runtime and one real host (its
//! state in a temporary folder) per fuzzing process, and a way to split an
//! input into parts.

use berth::host::{Host, HostOptions};
use std::sync::OnceLock;

/// The process's tokio runtime.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// A host over a fresh state folder (removed when the process ends
/// normally; under the system's temporary folder otherwise).
pub fn host() -> &'static Host {
    static HOST: OnceLock<(tempfile::TempDir, Host)> = OnceLock::new();
    let (_, host) = HOST.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let host = runtime()
            .block_on(Host::open(HostOptions::new(dir.path().join("state"))))
            .expect("a host");
        (dir, host)
    });
    host
}

/// `data` cut at the first `n - 1` occurrences of `0xff` (a byte no UTF-8
/// text holds): always `n` parts, the missing ones empty.
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = data.splitn(n, |&b| b == 0xff).collect();
    out.resize(n, &[]);
    out
}

/// `bytes` as text, invalid UTF-8 replaced.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

//! The compiled-code cache: components compiled once per (artifact digest,
//! engine configuration) and kept on disk as serialized native code, so that
//! loading a known component is a checksum and an `mmap`, not a compile.
//!
//! Layout, one pair of files per entry:
//!
//! ```text
//! <dir>/<artifact sha256>-<engine key>.cwasm          serialized component
//! <dir>/<artifact sha256>-<engine key>.cwasm.sha256   sha256 of the .cwasm
//! ```
//!
//! The engine key changes with the wasmtime version and every setting that
//! affects code generation, so a stale entry is never even looked at. An
//! entry whose checksum does not match, or that wasmtime refuses, is
//! recompiled and replaced. Both files are written to a temporary name,
//! synced and renamed, so a crash never leaves a half-written entry under
//! the final name.

use crate::values::digest::Digest;
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The on-disk cache of compiled components.
#[derive(Debug, Clone)]
pub struct CodeCache {
    dir: PathBuf,
}

/// How a component was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a valid cache entry.
    Hit,
    /// Not in the cache: compiled and stored.
    Miss,
    /// A cache entry existed but was refused (the reason says why), so the
    /// component was compiled again and the entry replaced.
    Rebuilt(String),
    /// Compiled, but the entry could not be stored (the reason says why).
    Uncached(String),
}

impl CacheOutcome {
    /// Whether the code cache could not be written (disk full, unwritable):
    /// the component works, but will be compiled again next time.
    pub fn is_uncached(&self) -> bool {
        matches!(self, CacheOutcome::Uncached(_))
    }
}

impl fmt::Display for CacheOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheOutcome::Hit => f.write_str("cache hit"),
            CacheOutcome::Miss => f.write_str("compiled"),
            CacheOutcome::Rebuilt(why) => write!(f, "recompiled ({why})"),
            CacheOutcome::Uncached(why) => write!(f, "compiled, not cached ({why})"),
        }
    }
}

/// Why a cache entry that exists must not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedEntry {
    /// Its checksum file cannot be read.
    #[error("unreadable checksum: {0}")]
    UnreadableChecksum(String),
    /// The entry cannot be read.
    #[error("unreadable entry: {0}")]
    Unreadable(String),
    /// Its bytes do not match its checksum.
    #[error("checksum mismatch: the entry is corrupt")]
    Corrupt,
    /// Wasmtime refused it.
    #[error("refused by wasmtime: {0}")]
    Refused(String),
}

/// Feeds `Hash` output into sha256, for a key that is stable across runs
/// (unlike `DefaultHasher`, whose algorithm may change between releases).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        // Unused (the key is the full digest), but well defined.
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(std::array::from_fn(|i| digest[i]))
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// A short key for everything about `engine` that affects compiled code.
pub fn engine_key(engine: &Engine) -> String {
    let mut h = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    hex::encode(&h.0.finalize()[..8])
}

impl CodeCache {
    /// A cache in `dir` (created if missing), for code compiled by any
    /// engine (each entry's name has its engine's key). Temporary files
    /// left by a crash mid-write are removed.
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<CodeCache> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(CodeCache { dir })
    }

    /// The directory holding the entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry for `digest` compiled by `engine` lives.
    pub fn entry_path(&self, engine: &Engine, digest: &Digest) -> PathBuf {
        self.dir
            .join(format!("{}-{}.cwasm", digest.hex(), engine_key(engine)))
    }

    fn sum_path(code: &Path) -> PathBuf {
        let mut p = code.as_os_str().to_owned();
        p.push(".sha256");
        PathBuf::from(p)
    }

    /// Loads the compiled form of `bytes` (whose digest is `digest`) from the
    /// cache, or compiles it and stores the result.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        digest: &Digest,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let code = self.entry_path(engine, digest);
        let refused = match self.load(engine, &code) {
            Ok(Some(component)) => return Ok((component, CacheOutcome::Hit)),
            Ok(None) => None,
            Err(why) => Some(why.to_string()),
        };
        let serialized = engine.precompile_component(bytes)?;
        let outcome = match self.store(&code, &serialized) {
            Ok(()) => match refused {
                Some(why) => CacheOutcome::Rebuilt(why),
                None => CacheOutcome::Miss,
            },
            Err(e) => CacheOutcome::Uncached(format!("writing {}: {e}", code.display())),
        };
        // SAFETY: `serialized` was produced just now by `precompile_component`
        // of this very engine.
        let component = unsafe { Component::deserialize(engine, &serialized)? };
        Ok((component, outcome))
    }

    /// Loads the compiled form of `digest` if the cache holds a valid
    /// entry: `Ok(None)` when there is none, `Err` when there is one that
    /// must not be used. Needs no artifact bytes: this is the fast path of
    /// a cold start.
    pub fn load_cached(
        &self,
        engine: &Engine,
        digest: &Digest,
    ) -> Result<Option<Component>, RefusedEntry> {
        self.load(engine, &self.entry_path(engine, digest))
    }

    /// `Ok(None)` when there is no entry; `Err` when there is one that
    /// must not be used.
    fn load(&self, engine: &Engine, code: &Path) -> Result<Option<Component>, RefusedEntry> {
        let sum_path = Self::sum_path(code);
        let expected = match std::fs::read_to_string(&sum_path) {
            Ok(s) => s.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RefusedEntry::UnreadableChecksum(e.to_string())),
        };
        let actual = match file_sha256(code) {
            Ok(sum) => sum,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RefusedEntry::Unreadable(e.to_string())),
        };
        if actual != expected {
            return Err(RefusedEntry::Corrupt);
        }
        // SAFETY: the file is in Berth's own cache directory, was written by
        // `store` below from `Engine::precompile_component` output, and its
        // sha256 still matches the checksum recorded when it was written.
        // The engine key in its name ties it to this wasmtime version and
        // configuration; wasmtime re-checks compatibility on load as well.
        match unsafe { Component::deserialize_file(engine, code) } {
            Ok(component) => Ok(Some(component)),
            Err(e) => Err(RefusedEntry::Refused(e.to_string())),
        }
    }

    fn store(&self, code: &Path, serialized: &[u8]) -> std::io::Result<()> {
        let sum = hex::encode(Sha256::digest(serialized));
        // The code first, then the checksum: an entry without its checksum
        // is a miss, never a hit.
        write_atomic(code, serialized)?;
        write_atomic(&Self::sum_path(code), sum.as_bytes())
    }
}

fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Writes `bytes` to `path` through a temporary file in the same directory:
/// write, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".tmp-{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            // Directory fsync makes the rename durable; not every
            // filesystem supports it, and the entry is valid either way.
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component there is.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        Engine::new(&config).unwrap()
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("berth-cache-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn miss_then_hit_then_corrupt_rebuilds() {
        let engine = engine();
        let dir = tempdir("cycle");
        let cache = CodeCache::new(&dir).unwrap();
        let digest = Digest::of(EMPTY_COMPONENT);

        let (_, outcome) = cache
            .load_or_compile(&engine, &digest, EMPTY_COMPONENT)
            .unwrap();
        assert_eq!(outcome, CacheOutcome::Miss);
        let (_, outcome) = cache
            .load_or_compile(&engine, &digest, EMPTY_COMPONENT)
            .unwrap();
        assert_eq!(outcome, CacheOutcome::Hit);

        // Flip a byte in the middle of the entry.
        let path = cache.entry_path(&engine, &digest);
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (_, outcome) = cache
            .load_or_compile(&engine, &digest, EMPTY_COMPONENT)
            .unwrap();
        assert!(
            matches!(&outcome, CacheOutcome::Rebuilt(why) if why.contains("checksum")),
            "{outcome:?}"
        );
        let (_, outcome) = cache
            .load_or_compile(&engine, &digest, EMPTY_COMPONENT)
            .unwrap();
        assert_eq!(outcome, CacheOutcome::Hit);

        // Truncate it.
        std::fs::write(&path, &bytes[..16]).unwrap();
        let (_, outcome) = cache
            .load_or_compile(&engine, &digest, EMPTY_COMPONENT)
            .unwrap();
        assert!(matches!(outcome, CacheOutcome::Rebuilt(_)), "{outcome:?}");

        // A missing checksum is a miss, whatever the code file holds.
        std::fs::remove_file(CodeCache::sum_path(&path)).unwrap();
        std::fs::write(&path, b"garbage").unwrap();
        let (_, outcome) = cache
            .load_or_compile(&engine, &digest, EMPTY_COMPONENT)
            .unwrap();
        assert_eq!(outcome, CacheOutcome::Miss);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn engine_key_follows_configuration() {
        let a = engine_key(&engine());
        assert_eq!(a, engine_key(&engine()));
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true).consume_fuel(true);
        assert_ne!(a, engine_key(&Engine::new(&config).unwrap()));
    }
}

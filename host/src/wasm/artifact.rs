//! Artifacts: `.wasm` components, immutable and named by the sha256 digest
//! of their bytes, and the content-addressed [`ArtifactStore`] that keeps
//! them on disk.

use crate::values::digest::Digest;
use std::path::PathBuf;

/// What a file's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    /// A component (binary format layer 1): what Berth runs.
    Component,
    /// A core module (layer 0): needs wrapping into a component first.
    CoreModule,
}

/// Why bytes are not a component Berth can run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAComponent {
    /// Not WebAssembly at all.
    #[error("not a WebAssembly file (it does not start with the \\0asm magic number)")]
    NotWasm,
    /// Too short to hold a header.
    #[error("truncated: {0} bytes is too short for a WebAssembly header")]
    Truncated(usize),
    /// A core module, not a component.
    #[error(
        "a core WebAssembly module, not a component: build it for wasm32-wasip2, or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    /// A WebAssembly binary of a version or layer this host does not know.
    #[error("an unsupported WebAssembly binary (version {version:#x}, layer {layer})")]
    Unsupported {
        /// The binary's version field.
        version: u16,
        /// The binary's layer field.
        layer: u16,
    },
}

/// Reads the WebAssembly header of `bytes`.
pub fn sniff(bytes: &[u8]) -> Result<WasmKind, NotAComponent> {
    if bytes.len() >= 4 && &bytes[..4] != b"\0asm" {
        return Err(NotAComponent::NotWasm);
    }
    if bytes.len() < 8 {
        return Err(if bytes.len() >= 4 || b"\0asm".starts_with(bytes) {
            NotAComponent::Truncated(bytes.len())
        } else {
            NotAComponent::NotWasm
        });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    let layer = u16::from_le_bytes([bytes[6], bytes[7]]);
    match (version, layer) {
        (1, 0) => Ok(WasmKind::CoreModule),
        (_, 1) => Ok(WasmKind::Component),
        _ => Err(NotAComponent::Unsupported { version, layer }),
    }
}

/// Like [`sniff`], but only components pass.
pub fn check_component(bytes: &[u8]) -> Result<(), NotAComponent> {
    match sniff(bytes)? {
        WasmKind::Component => Ok(()),
        WasmKind::CoreModule => Err(NotAComponent::CoreModule),
    }
}

/// Artifacts on disk, one file per digest:
///
/// ```text
/// <dir>/<sha256 hex>.wasm
/// ```
///
/// A new artifact is written to a temporary file, synced, and renamed to
/// its digest only once it is whole; reads check the bytes against the
/// name, so a damaged file is reported, never served.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
}

/// An artifact that cannot be read back as stored.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file is missing or unreadable.
    #[error("artifact {digest} cannot be read: {source}")]
    Io {
        /// The artifact.
        digest: Digest,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file's bytes no longer hash to its name.
    #[error("artifact {digest} is damaged: its bytes hash to {actual}")]
    Damaged {
        /// The artifact.
        digest: Digest,
        /// What they hash to now.
        actual: Digest,
    },
}

impl ArtifactStore {
    /// A store in `dir` (created if missing). Temporary files left by a
    /// crash mid-write are removed.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<ArtifactStore> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(ArtifactStore { dir })
    }

    /// Where the artifact `digest` lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.wasm", digest.hex()))
    }

    /// Whether the artifact is stored.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Reads an artifact, checking its bytes against its digest.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, ReadError> {
        let bytes = std::fs::read(self.path(digest)).map_err(|source| ReadError::Io {
            digest: *digest,
            source,
        })?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(ReadError::Damaged {
                digest: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    /// Stores `bytes` under their digest, durably (temporary file, sync,
    /// rename, sync the directory). Storing an artifact that is already
    /// there, intact, changes nothing.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> std::io::Result<()> {
        if self.read(digest).is_ok() {
            return Ok(());
        }
        crate::wasm::cache::write_atomic(&self.path(digest), bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let digest = Digest::of(b"hello world");
        assert!(!store.contains(&digest));
        store.put(&digest, b"hello world").unwrap();
        assert!(store.contains(&digest));
        assert_eq!(store.read(&digest).unwrap(), b"hello world");
        store.put(&digest, b"hello world").unwrap();

        std::fs::write(store.path(&digest), b"hello w0rld").unwrap();
        assert!(matches!(
            store.read(&digest),
            Err(ReadError::Damaged { .. })
        ));
        // Putting it again repairs it.
        store.put(&digest, b"hello world").unwrap();
        assert_eq!(store.read(&digest).unwrap(), b"hello world");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        // A temporary file left by a crash is cleaned up on open.
        std::fs::write(dir.path().join(".tmp-1-2-x.wasm"), b"half").unwrap();
        ArtifactStore::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b"\0asm\x0d\0\x01\0rest"), Ok(WasmKind::Component));
        assert_eq!(sniff(b"\0asm\x01\0\0\0"), Ok(WasmKind::CoreModule));
        assert_eq!(
            check_component(b"\0asm\x01\0\0\0"),
            Err(NotAComponent::CoreModule)
        );
        assert_eq!(sniff(b"hello world"), Err(NotAComponent::NotWasm));
        assert_eq!(sniff(b"\0as"), Err(NotAComponent::Truncated(3)));
        assert_eq!(sniff(b"\0asm\x0d"), Err(NotAComponent::Truncated(5)));
        assert_eq!(sniff(b""), Err(NotAComponent::Truncated(0)));
        assert_eq!(sniff(b"xy"), Err(NotAComponent::NotWasm));
    }
}

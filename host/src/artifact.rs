//! Artifacts: `.wasm` components, immutable and named by the sha256 digest
//! of their bytes.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// The sha256 digest of an artifact's bytes, shown as `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, for logs and tables.
    pub fn short(&self) -> String {
        self.hex()[..12].to_owned()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex, &mut out)
            .map_err(|_| format!("invalid digest {s:?}: expected sha256:<64 hex digits>"))?;
        Ok(Digest(out))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips() {
        let d = Digest::of(b"hello");
        assert_eq!(
            d.to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert_eq!(d.hex().parse::<Digest>().unwrap(), d);
        assert!("sha256:xyz".parse::<Digest>().is_err());
        assert_eq!(d.short().len(), 12);
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

//! Invocation ids: unique and time-ordered, shown as ULIDs (the `ulid`
//! crate's encoding), and the fast random numbers they and trace ids are
//! made of.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};
use ulid::Ulid;

/// A unique, time-ordered invocation id, shown as a 26-character ULID
/// (48 bits of milliseconds since the epoch, 80 random bits).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InvocationId(Ulid);

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(now_nanos());
    h.finish() | 1
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// A random number from a per-thread splitmix64 generator: fast (about a
/// nanosecond; `Ulid::generate`'s ChaCha costs some 70), and plenty for
/// ids, which need to be unique, not secret.
pub fn random_u64() -> u64 {
    RNG.with(|state| {
        let mut z = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

impl InvocationId {
    /// A new id.
    pub fn new() -> InvocationId {
        let millis = (now_nanos() / 1_000_000) as u64;
        let random = (random_u64() as u128) << 64 | random_u64() as u128;
        // `from_parts` keeps the low 48 bits of the time and 80 of the
        // random number.
        InvocationId(Ulid::from_parts(millis, random))
    }
}

impl InvocationId {
    /// When it was made (ms since the epoch).
    pub fn millis(&self) -> i64 {
        self.0.timestamp_ms() as i64
    }
}

impl Default for InvocationId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for InvocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; ulid::ULID_LEN];
        f.write_str(self.0.array_to_str(&mut buf))
    }
}

impl fmt::Debug for InvocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not an invocation id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid invocation id {0:?}: expected a 26-character ULID")]
pub struct InvalidId(pub String);

impl FromStr for InvocationId {
    type Err = InvalidId;

    fn from_str(s: &str) -> Result<Self, InvalidId> {
        let id = Ulid::from_string(s).map_err(|_| InvalidId(s.to_owned()))?;
        // The decoder drops bits beyond 128; such a text is no id.
        if !id.to_string().eq_ignore_ascii_case(s) {
            return Err(InvalidId(s.to_owned()));
        }
        Ok(InvocationId(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

    #[test]
    fn ids_are_unique_ordered_ulids() {
        let a = InvocationId::new();
        let b = InvocationId::new();
        assert_ne!(a, b);
        let s = a.to_string();
        assert_eq!(s.len(), 26);
        assert!(s.bytes().all(|c| CROCKFORD.contains(&c)));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let c = InvocationId::new();
        assert!(c > a && c.to_string() > s);
    }

    #[test]
    fn ids_parse_back() {
        let a = InvocationId::new();
        assert_eq!(a.to_string().parse::<InvocationId>(), Ok(a));
        assert_eq!(a.to_string().to_lowercase().parse::<InvocationId>(), Ok(a));
        for bad in [
            "",
            "01M85",
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
            "01M85EBXPCPQA3WHTEXXQ12S3U",
        ] {
            assert!(bad.parse::<InvocationId>().is_err(), "{bad}");
        }
    }
}

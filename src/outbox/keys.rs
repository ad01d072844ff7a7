//! The keys that make "nothing enqueued twice" hold: a record's dedupe key, from where it was
//! read (a file's cursor and offset) or from its content (a source's `key`).

/// A record's dedupe key: unique per source in the outbox. Its bytes are what is stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dkey {
    len: u8,
    bytes: [u8; 17],
}

impl std::ops::Deref for Dkey {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Dkey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.iter() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl Dkey {
    /// Whether the key was made from content ([`natural_key`]), not a place in a file.
    pub fn is_natural(&self) -> bool {
        is_natural_key(self)
    }
}

/// [`Dkey::is_natural`] of a key as stored.
pub(super) fn is_natural_key(stored: &[u8]) -> bool {
    stored.first().is_some_and(|b| b & 0x80 != 0)
}

/// A dedupe key built from a cursor id and a position inside it (a byte offset, a row number).
///
/// Written short, as most are small numbers: a first byte with the cursor's length less one
/// (high nibble, 0..=7) and the position's length (low nibble, 0..=8), then both big-endian
/// without their leading zero bytes: 6 to 9 bytes for most records instead of 16, in the row
/// and again in the unique index. Keys of one file still grow with the offset (a longer
/// position has a larger first byte), so the index is written in order and the insert rate
/// stays near SQLite's sequential ceiling. The first byte is below 0x80, so the key never
/// equals a [`natural_key`]; nor a key of the 16-byte form schema 5 wrote (whose first byte
/// is 0, and whose length only a 16-byte short key has, with a first byte of 0x68 or 0x77).
pub fn dedupe_key(cursor: i64, position: u64) -> Dkey {
    let c = (cursor as u64).to_be_bytes();
    let p = position.to_be_bytes();
    let c = &c[(cursor as u64).leading_zeros().min(56) as usize / 8..];
    let p = &p[position.leading_zeros() as usize / 8..];
    let mut k = Dkey {
        len: (1 + c.len() + p.len()) as u8,
        bytes: [0; 17],
    };
    k.bytes[0] = (((c.len() - 1) as u8) << 4) | p.len() as u8;
    k.bytes[1..1 + c.len()].copy_from_slice(c);
    k.bytes[1 + c.len()..usize::from(k.len)].copy_from_slice(p);
    k
}

/// The short form of a key schema 5 wrote: `cursor` and `position`, 8 bytes each, big-endian.
/// Natural keys and keys already short come back as they are.
pub fn shorten(old: &[u8]) -> Option<Dkey> {
    if old.len() != 16 || is_natural_key(old) {
        return None;
    }
    let cursor = i64::from_be_bytes(old[..8].try_into().ok()?);
    let position = u64::from_be_bytes(old[8..].try_into().ok()?);
    Some(dedupe_key(cursor, position))
}

/// The dedupe key of a record named by its content (`key = "{call_id}"`): a hash of the
/// natural key and the record's number among those the row gave. The top bit is set, so it
/// never equals a [`dedupe_key`].
pub fn natural_key(key: &str, piece: u32) -> Dkey {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update(piece.to_be_bytes());
    let mut k = Dkey {
        len: 16,
        bytes: [0; 17],
    };
    k.bytes[..16].copy_from_slice(&h.finalize()[..16]);
    k.bytes[0] |= 0x80;
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Short keys of one cursor sort as their positions do, never equal a key of another
        /// cursor, a natural key, or a schema 5 key, and schema 5 keys shorten to them.
        #[test]
        fn short_keys_keep_order_and_identity(
            c in 1i64..i64::MAX, c2 in 1i64..i64::MAX, a in any::<u64>(), b in any::<u64>(),
        ) {
            let (ka, kb) = (dedupe_key(c, a), dedupe_key(c, b));
            prop_assert_eq!(a.cmp(&b), ka[..].cmp(&kb[..]));
            prop_assert!(ka[0] < 0x80);
            if c != c2 {
                prop_assert_ne!(&ka[..], &dedupe_key(c2, a)[..]);
            }
            let mut old = [0u8; 16];
            old[..8].copy_from_slice(&c.to_be_bytes());
            old[8..].copy_from_slice(&a.to_be_bytes());
            prop_assert_eq!(shorten(&old), Some(ka));
            if c < 1 << 56 {
                prop_assert_ne!(&ka[..], &old[..]);
            }
            prop_assert!(!ka.is_natural());
            prop_assert!(natural_key("x", 0).is_natural());
        }
    }

    #[test]
    fn most_keys_are_a_few_bytes() {
        assert_eq!(dedupe_key(1, 0).len(), 2);
        assert_eq!(dedupe_key(1, 17_600_000).len(), 6);
        assert_eq!(dedupe_key(300, 1 << 40).len(), 9);
        assert_eq!(shorten(&natural_key("x", 0)), None);
    }
}

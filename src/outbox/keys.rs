//! The keys that make "nothing enqueued twice" hold: a record's dedupe key, from where it was
//! read (a file's cursor and offset) or from its content (a source's `key`).

/// A dedupe key built from a cursor id and a position inside it (a byte offset, a row number).
/// Keys of one file grow with the offset, so the unique index is written in order: the insert
/// rate stays near SQLite's sequential ceiling instead of the random-key one.
pub fn dedupe_key(cursor: i64, position: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&cursor.to_be_bytes());
    k[8..].copy_from_slice(&position.to_be_bytes());
    k
}

/// The dedupe key of a record named by its content (`key = "{call_id}"`): a hash of the
/// natural key and the record's number among those the row gave. The top bit is set, so it
/// never equals a [`dedupe_key`] (cursor ids are positive).
pub fn natural_key(key: &str, piece: u32) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update(piece.to_be_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&h.finalize()[..16]);
    k[0] |= 0x80;
    k
}

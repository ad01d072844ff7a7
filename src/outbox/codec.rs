//! Records are kept compressed. Each lane's records are compressed one by one with a zstd
//! dictionary trained on that lane's own records: a contact event of 176 bytes becomes about
//! 30, because what records of one lane share (field names, the queue, the date, the file
//! name of their origin) is in the dictionary, not in every record.
//!
//! A lane's first [`SAMPLES`] records (per process) are stored plain and kept as samples;
//! then a dictionary is trained from them, stored in `dicts` (schema 6) and used from then on.
//! If the lane's records change shape and compress markedly worse than when the dictionary
//! was trained, a new one is trained from fresh samples. Dictionaries are never changed or
//! deleted: a record names the one it was compressed with (a version), so old records stay
//! readable after a new one is trained.
//!
//! A compressed record is a BLOB in `records.payload`: the dictionary's id (a LEB128 varint),
//! then a zstd frame without magic number or checksum (the frame says its size; like the
//! plain text it replaces, a record trusts the disk under it, and a dictionary, which every
//! record of a lane needs, is checked against its hash when read) holding the origin (a varint
//! length, then its bytes) and the payload. Its `origin` column is empty. A plain record keeps
//! TEXT in both columns, as before; so do compacted ones and records a dictionary does not
//! make smaller.
//!
//! A record whose bytes do not decode into a whole payload (a damaged frame or dictionary, a
//! payload cut short: [`Damaged`]) is never sent: batch forming sets it aside as a damaged
//! dead letter and its lane goes on (`batches.rs`).
//!
//! Records are decompressed only when read: every connection has the SQL functions
//! `payload(payload)` and `origin(payload, origin)`, which give the text back, and every
//! query that reads a record's payload or origin goes through them, except batch forming on
//! the writer's thread, which decodes in Rust ([`text`]) to copy each payload once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, params};
use zstd::zstd_safe::{self, CCtx, CDict, CParameter, DCtx, DDict, DParameter, FrameFormat};

use super::NewRecord;

/// Records of a lane kept plain as samples before its dictionary is trained.
pub const SAMPLES: usize = 1024;
/// Records longer than this are not taken as samples, and samples stop at [`SAMPLE_BYTES`]:
/// a lane of huge records trains on fewer, and never holds more than that in memory.
const SAMPLE_MAX: usize = 4096;
const SAMPLE_BYTES: usize = 512 << 10;
/// The size of a trained dictionary.
const DICT_BYTES: usize = 4096;
/// Level 1: as small as level 3 or 9 for records this size (measured: 32 bytes for a contact
/// event at each), at a fraction of the CPU and memory.
const LEVEL: i32 = 1;
/// Records over which a lane's compression ratio is measured.
const WINDOW: u64 = 16_384;
/// A frame that says it holds more than this is refused as corrupt.
const MAX_RECORD: u64 = 256 << 20;

/// A trained dictionary, ready to compress with.
pub(super) struct Dict {
    lane: i64,
    bytes: Vec<u8>,
    hash: [u8; 16],
    cdict: CDict<'static>,
}

/// What each lane compresses with; shared by the handles of one outbox.
#[derive(Default)]
pub(super) struct Codecs(Mutex<HashMap<i64, Lane>>);

#[derive(Default)]
struct Lane {
    dict: Option<Arc<Dict>>,
    /// Samples for the next dictionary (their bytes end to end, and each one's size), while
    /// `collecting`.
    samples: Vec<u8>,
    sizes: Vec<usize>,
    training: bool,
    /// Bytes in and out over the current window, and the ratio of the dictionary's first.
    raw: u64,
    packed: u64,
    records: u64,
    reference: Option<f64>,
}

impl Lane {
    /// Keeps records as samples, up to [`SAMPLES`] of them and [`SAMPLE_BYTES`] in all.
    fn take_samples(&mut self, records: &[NewRecord]) {
        let mut buf = Vec::new();
        for r in records {
            if self.sizes.len() >= SAMPLES || self.samples.len() >= SAMPLE_BYTES {
                break;
            }
            content(&mut buf, r);
            if buf.len() <= SAMPLE_MAX {
                self.samples.extend_from_slice(&buf);
                self.sizes.push(buf.len());
            }
        }
    }

    fn collecting(&self) -> bool {
        !self.training && (self.dict.is_none() || !self.sizes.is_empty())
    }
}

/// Records compressed with one dictionary; `None` for one kept plain (it did not get smaller).
/// Each frame starts with [`ROOM`] bytes left for the dictionary's id, which only the writer
/// knows: the stored form is made in place, without a copy on the writer's thread.
pub(super) struct Packed {
    pub dict: Arc<Dict>,
    pub frames: Vec<Option<Vec<u8>>>,
}

/// Bytes left before each frame for the dictionary id (a varint of an i64 takes at most 10).
const ROOM: usize = 10;

/// What a record is compressed from: its origin (length first) and its payload.
fn content(buf: &mut Vec<u8>, r: &NewRecord) {
    buf.clear();
    let (len, n) = varint(r.origin.len() as u64);
    buf.extend_from_slice(&len[..n]);
    buf.extend_from_slice(r.origin.as_bytes());
    buf.extend_from_slice(r.payload.as_bytes());
}

/// `v` as a LEB128 varint: its bytes and how many of them it takes (at most [`ROOM`]).
fn varint(mut v: u64) -> ([u8; ROOM], usize) {
    let (mut bytes, mut n) = ([0u8; ROOM], 0);
    while v >= 0x80 {
        bytes[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    bytes[n] = v as u8;
    (bytes, n + 1)
}

fn read_varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

impl Codecs {
    /// Loads each lane's newest dictionary.
    pub(super) fn load(conn: &Connection) -> rusqlite::Result<Codecs> {
        let mut lanes = HashMap::new();
        let mut stmt = conn.prepare(
            "SELECT lane_id, dict, hash FROM dicts
             WHERE id IN (SELECT max(id) FROM dicts GROUP BY lane_id)",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        for row in rows {
            let (lane, bytes, hash) = row?;
            // A damaged one is left to the records that name it (they say so when read);
            // the lane trains a new one.
            let dict = Dict::new(lane, bytes)
                .filter(|d| d.hash[..] == hash[..])
                .map(Arc::new);
            if dict.is_none() {
                tracing::warn!(
                    lane,
                    "a compression dictionary in the outbox cannot be loaded"
                );
            }
            lanes.insert(
                lane,
                Lane {
                    dict,
                    ..Lane::default()
                },
            );
        }
        Ok(Codecs(Mutex::new(lanes)))
    }

    /// Compresses a commit's records with their lane's dictionary, on the caller's thread;
    /// `None` while the lane has none yet. Samples the records while a dictionary is due, and
    /// trains it once enough are in. With `strip`, a compressed record's payload and origin
    /// are let go here too, so the writer neither copies nor frees them.
    pub(super) fn pack(&self, lane: i64, records: &mut [NewRecord], strip: bool) -> Option<Packed> {
        if records.is_empty() {
            return None;
        }
        let dict = self.sample(lane, records)?;
        let frames = compress(&dict, records);
        let packed = Packed { dict, frames };
        self.measure(lane, records, &packed);
        if strip {
            for (r, f) in records.iter_mut().zip(&packed.frames) {
                if f.is_some() {
                    r.payload = String::new();
                    r.origin = String::new();
                }
            }
        }
        Some(packed)
    }

    fn sample(&self, lane: i64, records: &[NewRecord]) -> Option<Arc<Dict>> {
        let mut lanes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let l = lanes.entry(lane).or_default();
        if l.collecting() {
            l.take_samples(records);
            if l.sizes.len() >= SAMPLES || l.samples.len() >= SAMPLE_BYTES {
                l.training = true;
                let samples = std::mem::take(&mut l.samples);
                let sizes = std::mem::take(&mut l.sizes);
                drop(lanes);
                // Trained without the lock: other lanes go on meanwhile.
                let trained = train(&samples, &sizes);
                let mut lanes = self.0.lock().unwrap_or_else(|e| e.into_inner());
                let l = lanes.entry(lane).or_default();
                l.training = false;
                match trained {
                    Ok(bytes) => {
                        l.dict = Dict::new(lane, bytes).map(Arc::new).or(l.dict.take());
                        (l.raw, l.packed, l.records, l.reference) = (0, 0, 0, None);
                    }
                    Err(e) => {
                        // Too few distinct records to learn from: tried again on the next.
                        tracing::debug!(lane, error = e, "no compression dictionary trained");
                    }
                }
                return l.dict.clone();
            }
        }
        l.dict.clone()
    }

    /// Follows the lane's ratio; markedly worse than the dictionary's first window starts
    /// sampling for a new one.
    fn measure(&self, lane: i64, records: &[NewRecord], p: &Packed) {
        let raw: u64 = records
            .iter()
            .map(|r| (r.origin.len() + r.payload.len()) as u64)
            .sum();
        let packed: u64 = records
            .iter()
            .zip(&p.frames)
            .map(|(r, f)| match f {
                Some(f) => (f.len() - ROOM) as u64,
                None => (r.origin.len() + r.payload.len()) as u64,
            })
            .sum();
        let mut lanes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(l) = lanes.get_mut(&lane) else {
            return;
        };
        if !l.dict.as_ref().is_some_and(|d| Arc::ptr_eq(d, &p.dict)) {
            return;
        }
        l.raw += raw;
        l.packed += packed;
        l.records += records.len() as u64;
        if l.records < WINDOW {
            return;
        }
        let ratio = l.packed as f64 / l.raw.max(1) as f64;
        match l.reference {
            None => l.reference = Some(ratio),
            Some(first) if ratio > first * 1.5 + 0.05 && l.sizes.is_empty() && !l.training => {
                tracing::info!(
                    lane,
                    ratio,
                    first,
                    "records compress worse than when the dictionary was trained; training a new one"
                );
                // Sampling starts with this commit's records and goes on with the next.
                l.take_samples(records);
            }
            Some(_) => {}
        }
        (l.raw, l.packed, l.records) = (0, 0, 0);
    }
}

/// Trains a dictionary with fastCover at fixed parameters: zstd's default search over them
/// takes 6 × 2^20 bytes of memory, more than the daemon's whole working set; with `f = 12`
/// its tables take 24 KiB, and records of 150–250 bytes compress as well (a 176-byte contact
/// event to 33 bytes, against 34 with the search).
fn train(samples: &[u8], sizes: &[usize]) -> Result<Vec<u8>, &'static str> {
    use zstd::zstd_safe::zstd_sys as sys;
    let mut dict = vec![0u8; DICT_BYTES];
    let params = sys::ZDICT_fastCover_params_t {
        k: 800,
        d: 6,
        f: 12,
        steps: 0,
        nbThreads: 1,
        splitPoint: 1.0,
        accel: 1,
        shrinkDict: 0,
        shrinkDictMaxRegression: 0,
        zParams: sys::ZDICT_params_t {
            compressionLevel: LEVEL,
            notificationLevel: 0,
            dictID: 0,
        },
    };
    debug_assert_eq!(sizes.iter().sum::<usize>(), samples.len());
    // SAFETY: `dict` has room for `DICT_BYTES`; `samples` holds exactly the `sizes.len()`
    // samples whose sizes `sizes` lists, end to end.
    let n = unsafe {
        sys::ZDICT_trainFromBuffer_fastCover(
            dict.as_mut_ptr().cast(),
            dict.len(),
            samples.as_ptr().cast(),
            sizes.as_ptr(),
            sizes.len() as u32,
            params,
        )
    };
    // SAFETY: a plain function of a number.
    if unsafe { sys::ZDICT_isError(n) } != 0 {
        return Err(zstd_safe::get_error_name(n));
    }
    dict.truncate(n);
    Ok(dict)
}

impl Dict {
    fn new(lane: i64, bytes: Vec<u8>) -> Option<Dict> {
        let cdict = CDict::try_create(&bytes, LEVEL)?;
        Some(Dict {
            lane,
            hash: dict_hash(&bytes),
            bytes,
            cdict,
        })
    }

    /// The dictionary's id in `dicts`, stored first if it is not there yet (in the writer's
    /// transaction, so records never name a dictionary that is not on disk with them).
    pub(super) fn store(&self, c: &Connection, now: i64) -> rusqlite::Result<i64> {
        let known: Option<i64> = c
            .prepare_cached("SELECT id FROM dicts WHERE hash = ?1")?
            .query_row([&self.hash[..]], |r| r.get(0))
            .optional()?;
        if let Some(id) = known {
            return Ok(id);
        }
        c.prepare_cached(
            "INSERT INTO dicts (lane_id, hash, dict, created) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![self.lane, &self.hash[..], self.bytes, now])?;
        Ok(c.last_insert_rowid())
    }
}

fn dict_hash(bytes: &[u8]) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&Sha256::digest(bytes)[..16]);
    hash
}

fn compress(dict: &Dict, records: &[NewRecord]) -> Vec<Option<Vec<u8>>> {
    let mut cctx = CCtx::create();
    let setup = cctx
        .ref_cdict(&dict.cdict)
        .and_then(|_| cctx.set_parameter(CParameter::Format(FrameFormat::Magicless)))
        .and_then(|_| cctx.set_parameter(CParameter::ContentSizeFlag(true)))
        .and_then(|_| cctx.set_parameter(CParameter::ChecksumFlag(false)))
        .and_then(|_| cctx.set_parameter(CParameter::DictIdFlag(false)));
    if setup.is_err() {
        return vec![None; records.len()];
    }
    let (mut buf, mut scratch) = (Vec::new(), Vec::new());
    records
        .iter()
        .map(|r| {
            content(&mut buf, r);
            scratch.clear();
            scratch.reserve(zstd_safe::compress_bound(buf.len()));
            match cctx.compress2(&mut scratch, &buf) {
                // Its own allocation, of its size: frames wait in the writer's queue.
                Ok(n) if n < buf.len() => {
                    let mut out = Vec::with_capacity(ROOM + n);
                    out.resize(ROOM, 0);
                    out.extend_from_slice(&scratch);
                    Some(out)
                }
                _ => None,
            }
        })
        .collect()
}

/// A compressed record's stored form: the dictionary's id, then the frame (written into the
/// room [`Codecs::pack`] left before it).
pub(super) fn stored(dict: i64, frame: &mut [u8]) -> &[u8] {
    let (id, n) = varint(dict as u64);
    let start = ROOM - n;
    frame[start..ROOM].copy_from_slice(&id[..n]);
    &frame[start..]
}

thread_local! {
    /// The writer thread's decoders (see [`adopt`]).
    static THREAD: std::cell::RefCell<Option<Arc<Decoders>>> = const { std::cell::RefCell::new(None) };
}

/// Makes `decoders` the ones [`text`] uses on this thread: the writer's, which it forgets
/// after a rollback.
pub(super) fn adopt(decoders: Arc<Decoders>) {
    THREAD.with(|t| *t.borrow_mut() = Some(decoders));
}

/// A stored payload as text, read in Rust rather than through `payload()`: forming a batch
/// on the writer's thread copies it once, not three times. A record that cannot be decoded is
/// an error [`damage`] recognises; any other error is SQLite's.
pub(super) fn text(c: &Connection, v: ValueRef<'_>) -> rusqlite::Result<String> {
    let d = THREAD
        .with(|t| t.borrow().clone())
        .unwrap_or_else(|| Arc::new(Decoders::default()));
    Ok(d.read(c, v, ValueRef::Text(b""))?.1)
}

/// Why a record cannot be decoded, when `e` says that (rather than that SQLite failed).
pub(super) fn damage(e: &rusqlite::Error) -> Option<&Damaged> {
    match e {
        rusqlite::Error::UserFunctionError(inner) => inner.downcast_ref::<Damaged>(),
        _ => None,
    }
}

/// A record whose stored bytes do not decode into a whole payload: its frame, its dictionary
/// or its text is damaged. It can never be sent as it is.
#[derive(Debug, Clone, thiserror::Error)]
#[error("it cannot be decoded: {0}")]
pub struct Damaged(String);

/// A payload is a JSON object, written compact: one cut short (a record truncated on disk)
/// is told by its ends without parsing it.
fn whole(payload: String) -> Result<String, rusqlite::Error> {
    let b = payload.as_bytes();
    if b.len() >= 2 && b[0] == b'{' && b[b.len() - 1] == b'}' {
        Ok(payload)
    } else {
        Err(corrupt(format!(
            "its payload is not a whole JSON object ({} byte(s): cut short or overwritten)",
            b.len()
        )))
    }
}

/// The content size a magicless frame header states.
fn content_size(frame: &[u8]) -> Option<u64> {
    let fhd = *frame.first()?;
    let single = fhd & 0x20 != 0;
    let pos = 1 + usize::from(!single) + [0, 1, 2, 4][usize::from(fhd & 3)];
    let size = match (fhd >> 6, single) {
        (0, true) => 1,
        (0, false) => return None,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    let bytes = frame.get(pos..pos + size)?;
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    Some(if size == 2 { v + 256 } else { v })
}

/// Reads compressed records back, for the SQL functions of one connection.
#[derive(Default)]
pub struct Decoders(Mutex<DecodeState>);

struct DecodeState {
    dicts: HashMap<i64, Arc<DDict<'static>>>,
    dctx: DCtx<'static>,
}

impl Default for DecodeState {
    fn default() -> Self {
        let mut dctx = DCtx::create();
        let _ = dctx.set_parameter(DParameter::Format(FrameFormat::Magicless));
        DecodeState {
            dicts: HashMap::new(),
            dctx,
        }
    }
}

fn corrupt(what: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::UserFunctionError(Box::new(Damaged(what.to_string())))
}

impl Decoders {
    /// The state; a panic elsewhere while it was held leaves nothing half-changed in it.
    fn state(&self) -> std::sync::MutexGuard<'_, DecodeState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the dictionaries read so far: after a rollback, an id may name another one.
    pub fn forget(&self) {
        self.state().dicts.clear();
    }

    /// A stored record's origin and payload, from its `payload` and `origin` columns, each
    /// checked to be whole: the one reader for sending, compacting and listing.
    pub(super) fn read(
        &self,
        c: &Connection,
        payload: ValueRef<'_>,
        origin: ValueRef<'_>,
    ) -> rusqlite::Result<(String, String)> {
        let text = |t: &[u8]| String::from_utf8(t.to_vec()).map_err(corrupt);
        let (origin, payload) = match (payload, origin) {
            (ValueRef::Blob(b), ValueRef::Text(b"")) => self.decode(c, b)?,
            (ValueRef::Text(p), ValueRef::Text(o)) => (text(o)?, text(p)?),
            (ValueRef::Blob(_), _) => return Err(corrupt("a blob payload beside an origin")),
            _ => return Err(corrupt("its payload or origin is missing")),
        };
        Ok((origin, whole(payload)?))
    }

    /// A stored record's origin and payload.
    fn decode(&self, c: &Connection, blob: &[u8]) -> rusqlite::Result<(String, String)> {
        let (id, used) = read_varint(blob).ok_or_else(|| corrupt("no dictionary id"))?;
        let frame = &blob[used..];
        let size = content_size(frame).ok_or_else(|| corrupt("no size in its frame header"))?;
        if size > MAX_RECORD {
            return Err(corrupt(format!("its frame says {size} bytes")));
        }
        let mut state = self.state();
        let ddict = match state.dicts.get(&(id as i64)) {
            Some(d) => d.clone(),
            None => {
                // Read as whatever is stored: a row overwritten with another type is damage
                // to report, not an SQL error that would stop the lane.
                let (bytes, hash) = c
                    .prepare_cached("SELECT dict, hash FROM dicts WHERE id = ?1")?
                    .query_row([id as i64], |r| {
                        let blob = |i| -> rusqlite::Result<Option<Vec<u8>>> {
                            Ok(r.get_ref(i)?
                                .as_blob_or_null()
                                .ok()
                                .flatten()
                                .map(<[u8]>::to_vec))
                        };
                        Ok((blob(0)?, blob(1)?))
                    })
                    .optional()?
                    .ok_or_else(|| corrupt(format!("dictionary {id} is not in the outbox")))?;
                let (Some(bytes), Some(hash)) = (bytes, hash) else {
                    return Err(corrupt(format!("dictionary {id} is not stored as bytes")));
                };
                if hash != dict_hash(&bytes) {
                    return Err(corrupt(format!(
                        "dictionary {id} does not match its hash (the state file is damaged)"
                    )));
                }
                let d = Arc::new(
                    DDict::try_create(&bytes)
                        .ok_or_else(|| corrupt(format!("dictionary {id} cannot be loaded")))?,
                );
                state.dicts.insert(id as i64, d.clone());
                d
            }
        };
        let mut out: Vec<u8> = Vec::with_capacity(size as usize);
        state
            .dctx
            .decompress_using_ddict(&mut out, frame, &ddict)
            .map_err(|code| corrupt(zstd_safe::get_error_name(code)))?;
        drop(state);
        let (len, used) = read_varint(&out).ok_or_else(|| corrupt("no origin"))?;
        let end = used
            .checked_add(len as usize)
            .filter(|e| *e <= out.len())
            .ok_or_else(|| corrupt("its origin is cut short"))?;
        let origin = String::from_utf8(out[used..end].to_vec()).map_err(corrupt)?;
        out.drain(..end);
        let payload = String::from_utf8(out).map_err(corrupt)?;
        Ok((origin, payload))
    }
}

/// Adds `payload(payload)` and `origin(payload, origin)` to a connection; the returned
/// decoders are the ones its functions use.
pub fn register(conn: &Connection) -> rusqlite::Result<Arc<Decoders>> {
    let decoders = Arc::new(Decoders::default());
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    let d = decoders.clone();
    conn.create_scalar_function("payload", 1, flags, move |ctx| {
        Ok(match ctx.get_raw(0) {
            ValueRef::Blob(b) => Some(decode(&d, ctx, b)?.1),
            ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
            _ => None,
        })
    })?;
    let d = decoders.clone();
    conn.create_scalar_function("origin", 2, flags, move |ctx| {
        Ok(match (ctx.get_raw(0), ctx.get_raw(1)) {
            (ValueRef::Blob(b), ValueRef::Text(b"")) => Some(decode(&d, ctx, b)?.0),
            (_, ValueRef::Text(o)) => Some(String::from_utf8_lossy(o).into_owned()),
            _ => None,
        })
    })?;
    Ok(decoders)
}

fn decode(d: &Decoders, ctx: &Context<'_>, blob: &[u8]) -> rusqlite::Result<(String, String)> {
    // SAFETY: the connection is only used within this call, on the thread running it.
    let c = unsafe { ctx.get_connection()? };
    d.decode(&c, blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> NewRecord {
        NewRecord {
            dkey: super::super::dedupe_key(1, i as u64),
            payload: format!(
                r#"{{"id":"call-{i}","queueIdentifier":"q{}","channel":"voice","startTime":"2026-01-01T00:{:02}:00Z","handled":true}}"#,
                i % 7,
                i % 60
            ),
            origin: format!("calls-2026-01-01.ndjson:{}", i + 1),
            row_hash: None,
        }
    }

    fn outbox() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE dicts (id INTEGER PRIMARY KEY, lane_id INTEGER NOT NULL,
             hash BLOB NOT NULL UNIQUE, dict BLOB NOT NULL, created INTEGER NOT NULL);
             CREATE TABLE r (payload, origin);",
        )
        .unwrap();
        c
    }

    #[test]
    fn records_come_back_as_they_went_in_and_smaller() {
        let c = outbox();
        register(&c).unwrap();
        let codecs = Codecs::default();
        let mut records: Vec<NewRecord> = (0..3000).map(record).collect();
        assert!(
            codecs.pack(1, &mut records[..1000], false).is_none(),
            "no dictionary yet"
        );
        let p = codecs.pack(1, &mut records[1000..2000], false).unwrap();
        let id = p.dict.store(&c, 0).unwrap();
        assert_eq!(p.dict.store(&c, 0).unwrap(), id, "stored once");
        let (mut raw, mut packed) = (0, 0);
        let mut p = p;
        for (r, f) in records[1000..2000].iter().zip(&mut p.frames) {
            let f = stored(id, f.as_mut().expect("compressed"));
            raw += r.payload.len();
            packed += f.len();
            c.execute("INSERT INTO r VALUES (?1, '')", [f]).unwrap();
        }
        assert!(packed * 3 < raw, "{packed} bytes from {raw}");
        let back: Vec<(String, String)> = c
            .prepare("SELECT payload(payload), origin(payload, origin) FROM r ORDER BY rowid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (r, (payload, origin)) in records[1000..2000].iter().zip(back) {
            assert_eq!((&r.payload, &r.origin), (&payload, &origin));
        }
        // Plain text passes through both functions.
        let plain: (String, String) = c
            .query_row("SELECT payload('{}'), origin('{}', 'a.csv:1')", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(plain, ("{}".into(), "a.csv:1".into()));
    }

    #[test]
    fn frame_sizes_are_read_from_every_header_form() {
        let c = outbox();
        register(&c).unwrap();
        let codecs = Codecs::default();
        let mut records: Vec<NewRecord> = (0..SAMPLES).map(record).collect();
        let _ = codecs.pack(1, &mut records, false);
        for len in [
            0usize,
            1,
            200,
            255,
            256,
            300,
            65_791,
            65_792,
            70_000,
            1 << 20,
        ] {
            let mut r = record(len);
            r.payload = "x".repeat(len) + &fastrand::u64(..).to_string();
            let mut p = codecs
                .pack(1, std::slice::from_mut(&mut r.clone()), false)
                .unwrap();
            let id = p.dict.store(&c, 0).unwrap();
            let Some(f) = &mut p.frames[0] else { continue };
            let back: String = c
                .query_row("SELECT payload(?1)", [stored(id, f)], |r| r.get(0))
                .unwrap();
            assert_eq!(back, r.payload, "{len} bytes");
        }
    }

    /// Trains a dictionary for lane `lane` on records `from..`, returns it with one record of
    /// it in its stored form.
    fn trained(codecs: &Codecs, c: &Connection, lane: i64, from: usize) -> (i64, Vec<u8>, String) {
        let mut records: Vec<NewRecord> = (from..from + SAMPLES).map(record).collect();
        let mut p = codecs.pack(lane, &mut records, false).unwrap();
        let id = p.dict.store(c, 0).unwrap();
        let blob = stored(id, p.frames[0].as_mut().unwrap()).to_vec();
        (id, blob, records[0].payload.clone())
    }

    #[test]
    fn a_damaged_dictionary_is_an_error_naming_it_and_never_a_panic() {
        let c = outbox();
        register(&c).unwrap();
        let (id, blob, _) = trained(&Codecs::default(), &c, 1, 0);
        let mut bytes: Vec<u8> = c
            .query_row("SELECT dict FROM dicts WHERE id = ?1", [id], |r| r.get(0))
            .unwrap();
        bytes[8..40].fill(0);
        c.execute(
            "UPDATE dicts SET dict = ?1 WHERE id = ?2",
            rusqlite::params![bytes, id],
        )
        .unwrap();
        let e = c
            .query_row("SELECT payload(?1)", [&blob], |r| r.get::<_, String>(0))
            .unwrap_err();
        assert!(e.to_string().contains("does not match its hash"), "{e}");
        // Loading it for compressing leaves the lane to train a new one.
        let codecs = Codecs::load(&c).unwrap();
        let mut records: Vec<NewRecord> = (0..10).map(record).collect();
        assert!(codecs.pack(1, &mut records, false).is_none());
    }

    /// The writer forgets the dictionaries it has read after a rollback: the id of one rolled
    /// back is given to the next stored, and its records must meet that one.
    #[test]
    fn after_a_rollback_a_reused_dictionary_id_names_the_new_dictionary() {
        let c = outbox();
        let decoders = register(&c).unwrap();
        c.execute_batch("SAVEPOINT job").unwrap();
        let (first, blob, payload) = trained(&Codecs::default(), &c, 1, 0);
        let back: String = c
            .query_row("SELECT payload(?1)", [&blob], |r| r.get(0))
            .unwrap();
        assert_eq!(back, payload);
        c.execute_batch("ROLLBACK TO job; RELEASE job").unwrap();
        decoders.forget();
        let other = Codecs::default();
        let (second, blob, payload) = trained(&other, &c, 2, 5_000);
        assert_eq!(first, second, "the id is given again");
        let back: String = c
            .query_row("SELECT payload(?1)", [&blob], |r| r.get(0))
            .unwrap();
        assert_eq!(back, payload);
    }

    /// Batch forming tells a damaged record (set aside) from SQLite failing (retried).
    #[test]
    fn a_record_cut_short_or_naming_no_dictionary_is_damage_not_an_sql_error() {
        let c = outbox();
        for (stored, why) in [
            (ValueRef::Text(b"{"), "not a whole JSON object"),
            (ValueRef::Blob(b"\x07"), "no size in its frame header"),
            (
                ValueRef::Blob(b"garbage!"),
                "dictionary 103 is not in the outbox",
            ),
        ] {
            let e = text(&c, stored).unwrap_err();
            let damage = damage(&e).unwrap_or_else(|| panic!("not damage: {e}"));
            assert!(damage.to_string().contains(why), "{damage}");
        }
        assert_eq!(text(&c, ValueRef::Text(b"{}")).unwrap(), "{}");
        let e = text(
            &Connection::open_in_memory().unwrap(),
            ValueRef::Blob(b"\x07\x20\x01x"),
        )
        .unwrap_err();
        assert!(
            damage(&e).is_none(),
            "no dicts table is SQLite's error: {e}"
        );
    }

    #[test]
    fn a_missing_dictionary_or_a_broken_frame_is_an_error_not_a_guess() {
        let c = outbox();
        register(&c).unwrap();
        let e = c
            .query_row("SELECT payload(x'07281400')", [], |r| r.get::<_, String>(0))
            .unwrap_err();
        assert!(e.to_string().contains("dictionary 7"), "{e}");
        let e = c
            .query_row("SELECT payload(x'')", [], |r| r.get::<_, String>(0))
            .unwrap_err();
        assert!(e.to_string().contains("cannot be decoded"), "{e}");
    }
}

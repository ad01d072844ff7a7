//! What a file is, whatever its name: device and inode (Unix) or volume serial and file index
//! (Windows), fingerprints of its first and last bytes, its content hash (drop mode), and
//! opening it without keeping the writer from renaming or deleting it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::FileCursor;

/// How many leading bytes identify a tailed file.
pub(super) const FINGERPRINT_MAX: usize = 1024;

pub(super) fn fingerprint(head: &[u8]) -> String {
    Sha256::digest(head)[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(super) fn read_head(file: &mut File) -> std::io::Result<Vec<u8>> {
    let mut head = vec![0u8; FINGERPRINT_MAX];
    file.seek(SeekFrom::Start(0))?;
    let n = read_full(file, &mut head)?;
    head.truncate(n);
    Ok(head)
}

/// Whether `file` still holds, just before the cursor's offset, the bytes that were read
/// there (as far as the cursor's fingerprints tell: the first bytes cover short files).
pub(super) fn ends_as_read(file: &mut File, cur: &FileCursor) -> std::io::Result<bool> {
    if cur.offset <= cur.fp_len || cur.end_fp.is_empty() {
        return Ok(true);
    }
    Ok(end_fingerprint(file, cur.offset)? == cur.end_fp)
}

/// A fingerprint of the (up to [`FINGERPRINT_MAX`]) bytes before `offset`.
pub(super) fn end_fingerprint(file: &mut File, offset: u64) -> std::io::Result<String> {
    Ok(fingerprint(&bytes_before(file, offset)?))
}

/// The (up to [`FINGERPRINT_MAX`]) bytes before `offset`.
pub(super) fn bytes_before(file: &mut File, offset: u64) -> std::io::Result<Vec<u8>> {
    let from = offset.saturating_sub(FINGERPRINT_MAX as u64);
    let mut buf = vec![0u8; (offset - from) as usize];
    file.seek(SeekFrom::Start(from))?;
    let n = read_full(file, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// The last (up to [`FINGERPRINT_MAX`]) bytes of `before` followed by `read`.
pub(super) fn last_bytes(before: &[u8], read: &[u8]) -> Vec<u8> {
    if read.len() >= FINGERPRINT_MAX {
        return read[read.len() - FINGERPRINT_MAX..].to_vec();
    }
    let keep = (FINGERPRINT_MAX - read.len()).min(before.len());
    let mut out = Vec::with_capacity(keep + read.len());
    out.extend_from_slice(&before[before.len() - keep..]);
    out.extend_from_slice(read);
    out
}

pub(super) fn hash_file(file: &mut File) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    file.seek(SeekFrom::Start(0))?;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    let digest = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((digest, len))
}

pub(super) fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The offset just after the last newline before `len` (for `start_at = "end"`).
pub(super) fn line_start_before(file: &mut File, len: u64) -> std::io::Result<u64> {
    let from = len.saturating_sub(64 * 1024);
    let mut tail = vec![0u8; (len - from) as usize];
    file.seek(SeekFrom::Start(from))?;
    let n = read_full(file, &mut tail)?;
    Ok(match tail[..n].iter().rposition(|b| *b == b'\n') {
        Some(i) => from + i as u64 + 1,
        None => from,
    })
}

/// Opens for reading without keeping the writer from renaming or deleting the file (on
/// Windows that takes an explicit share mode; on Unix it is always so).
pub(super) fn open_shared(path: &Path) -> std::io::Result<File> {
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        const FILE_SHARE_READ: u32 = 0x1;
        const FILE_SHARE_WRITE: u32 = 0x2;
        const FILE_SHARE_DELETE: u32 = 0x4;
        std::fs::OpenOptions::new()
            .read(true)
            .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE)
            .open(path)
    }
    #[cfg(not(windows))]
    {
        File::open(path)
    }
}

/// Device and inode (Unix), or volume serial number and file index (Windows): what stays the
/// same while a file is renamed and changes when a new file takes its name.
pub(super) fn file_identity(file: &File) -> (u64, u64) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        file.metadata()
            .map(|m| (m.dev(), m.ino()))
            .unwrap_or((0, 0))
    }
    #[cfg(windows)]
    {
        use std::os::windows::io::AsRawHandle;
        use windows_sys::Win32::Storage::FileSystem::{
            BY_HANDLE_FILE_INFORMATION, GetFileInformationByHandle,
        };
        // SAFETY: the handle is open for the duration of the call and `info` is a plain
        // struct the call fills in.
        let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
        if unsafe { GetFileInformationByHandle(file.as_raw_handle() as _, &mut info) } == 0 {
            return (0, 0);
        }
        (
            u64::from(info.dwVolumeSerialNumber),
            (u64::from(info.nFileIndexHigh) << 32) | u64::from(info.nFileIndexLow),
        )
    }
}

/// Whether an open file has been deleted (Unix: no links left).
pub(super) fn is_unlinked(file: &File) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        file.metadata().is_ok_and(|m| m.nlink() == 0)
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        false
    }
}

/// The identity of whatever `path` names now.
pub(super) fn path_identity(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(windows)]
    {
        open_shared(path).ok().map(|f| file_identity(&f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_differ_for_files_that_differ_after_a_shared_header() {
        let a = b"id,queue\n1,a\n";
        let b = b"id,queue\n2,b\n";
        assert_eq!(fingerprint(&a[..9]), fingerprint(&b[..9]));
        assert_ne!(fingerprint(a), fingerprint(b));
    }
}

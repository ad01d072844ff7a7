//! What kind of file system a directory is on: on network file systems, changes made by other
//! machines (the ACD writing to an SMB share) raise no file-system events here, so `watch =
//! "auto"` scans instead.

use std::path::Path;

/// The kind of network file system `path` is on, or `None` for a local one (or when it cannot
/// be told).
pub fn network_fs(path: &Path) -> Option<&'static str> {
    imp::network_fs(path)
}

/// Linux `statfs` magic numbers of file systems whose content other machines change.
pub fn network_magic(magic: u64) -> Option<&'static str> {
    Some(match magic & 0xffff_ffff {
        0x6969 => "NFS",
        0x517b => "SMB",
        0xff53_4d42 => "CIFS",
        0xfe53_4d42 => "SMB2",
        0x5346_414f => "AFS",
        0x00c3_6400 => "Ceph",
        0x0102_1997 => "9p",
        0x6573_5546 => "FUSE",
        0x7375_7245 => "Coda",
        0x4750_4653 => "GPFS",
        0x0bd0_0bd0 => "Lustre",
        0x1983_0326 => "BeeGFS",
        0x564c => "NCP",
        _ => return None,
    })
}

#[cfg(target_os = "linux")]
mod imp {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    pub fn network_fs(path: &Path) -> Option<&'static str> {
        let c = CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: `c` is a valid NUL-terminated path and `buf` a plain struct statfs fills in.
        let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statfs(c.as_ptr(), &mut buf) } != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
        super::network_magic(buf.f_type as u64)
    }
}

#[cfg(windows)]
mod imp {
    use std::os::windows::ffi::OsStrExt;
    use std::path::Path;

    use windows_sys::Win32::Storage::FileSystem::{GetDriveTypeW, GetVolumePathNameW};

    const DRIVE_REMOTE: u32 = 4;

    pub fn network_fs(path: &Path) -> Option<&'static str> {
        let s = path.as_os_str().to_string_lossy();
        let unc = s.starts_with(r"\\?\UNC\")
            || (s.starts_with(r"\\") && !s.starts_with(r"\\?\") && !s.starts_with(r"\\.\"));
        if unc {
            return Some("UNC share");
        }
        let wide: Vec<u16> = path.as_os_str().encode_wide().chain([0]).collect();
        let mut root = [0u16; 1024];
        // SAFETY: `wide` is NUL-terminated and `root` is a buffer of the length passed.
        if unsafe { GetVolumePathNameW(wide.as_ptr(), root.as_mut_ptr(), root.len() as u32) } == 0 {
            return None;
        }
        // SAFETY: `root` was NUL-terminated by the call above.
        (unsafe { GetDriveTypeW(root.as_ptr()) } == DRIVE_REMOTE).then_some("network drive")
    }
}

#[cfg(not(any(target_os = "linux", windows)))]
mod imp {
    pub fn network_fs(_path: &std::path::Path) -> Option<&'static str> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_file_systems_are_told_from_local_ones() {
        assert_eq!(network_magic(0xff53_4d42), Some("CIFS"));
        assert_eq!(network_magic(0x6969), Some("NFS"));
        assert_eq!(network_magic(0xef53), None); // ext4
        assert_eq!(network_magic(0x0102_1994), None); // tmpfs
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(network_fs(dir.path()), None);
    }
}

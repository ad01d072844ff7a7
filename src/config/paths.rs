//! Where things are when the configuration does not say: the configuration file, the state
//! file, the API.

use std::path::PathBuf;

/// The API's documented base URL.
pub const DEFAULT_API_URL: &str = "https://api.injixo.com";

/// Where the configuration is looked for when neither `--config` nor `$INJIXO_SYNC_CONFIG` says.
pub fn default_config_path() -> PathBuf {
    program_data().join("config.toml")
}

/// Where the outbox lives unless `[state] path` says otherwise.
pub fn default_state_path() -> PathBuf {
    if cfg!(windows) {
        program_data().join("outbox.db")
    } else {
        PathBuf::from("/var/lib/injixo-sync/outbox.db")
    }
}

/// `%ProgramData%\injixo-sync` on Windows (configuration, outbox, logs); `/etc/injixo-sync`
/// elsewhere.
pub fn program_data() -> PathBuf {
    #[cfg(windows)]
    {
        known_program_data()
            .or_else(|| std::env::var_os("ProgramData").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
            .join("injixo-sync")
    }
    #[cfg(not(windows))]
    {
        PathBuf::from("/etc/injixo-sync")
    }
}

/// The ProgramData folder as Windows knows it (services do not always get `%ProgramData%`).
#[cfg(windows)]
fn known_program_data() -> Option<PathBuf> {
    use std::os::windows::ffi::OsStringExt;
    use windows_sys::Win32::System::Com::CoTaskMemFree;
    use windows_sys::Win32::UI::Shell::{FOLDERID_ProgramData, SHGetKnownFolderPath};
    let mut raw: windows_sys::core::PWSTR = std::ptr::null_mut();
    // SAFETY: SHGetKnownFolderPath allocates a NUL-terminated string into `raw`, which is read
    // up to its NUL and then freed with CoTaskMemFree as documented.
    unsafe {
        let ok =
            SHGetKnownFolderPath(&FOLDERID_ProgramData, 0, std::ptr::null_mut(), &mut raw) == 0;
        let path = (ok && !raw.is_null()).then(|| {
            let len = (0..).take_while(|&i| *raw.add(i) != 0).count();
            PathBuf::from(std::ffi::OsString::from_wide(std::slice::from_raw_parts(
                raw, len,
            )))
        });
        CoTaskMemFree(raw as *const _);
        path
    }
}

//! What a test needs from the machine (a database server, root, a program), and what happens
//! when it is missing: the test fails naming what to install, unless skipping that
//! prerequisite was asked for explicitly.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The variable naming prerequisites whose tests may be skipped where they are missing
/// (comma-separated, or `all`): `mount`, `netns`, `systemd`, `postgres`, `mariadb`, `script`,
/// `chromium`, `nginx`.
pub const SKIP_VAR: &str = "INJIXO_TEST_SKIP";

/// Whether the machine has `what`, which the calling test needs (`present`). A test whose
/// prerequisite is missing fails, naming what to install (`install`), unless `$INJIXO_TEST_SKIP`
/// names it: then the skip is printed and written to `skipped-tests.txt` in Cargo's test
/// temporary folder, which `scripts/test` lists when the run ends, and `false` is returned.
pub fn require(what: &str, present: bool, install: &str) -> bool {
    if present {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let allowed = std::env::var(SKIP_VAR).unwrap_or_default();
    if !allowed
        .split(',')
        .map(str::trim)
        .any(|a| a == what || a == "all")
    {
        panic!(
            "{test} needs {what}, which this machine lacks: {install}. `scripts/test` installs \
             everything the tests need (as root on Debian); or set {SKIP_VAR}={what} to skip \
             such tests explicitly"
        );
    }
    let line = format!("{test} ({what}: {install})");
    eprintln!("SKIPPED {line}");
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("skipped-tests.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        use std::io::Write;
        let _ = writeln!(f, "{line}");
    }
    false
}

/// Whether this process runs as root (mounts, network namespaces, other users).
pub fn is_root() -> bool {
    #[cfg(unix)]
    {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// Whether `program` runs at all (found on the PATH).
pub fn has_program(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

//! Real database servers for tests: PostgreSQL and MariaDB from Debian's packages (which
//! `.ci/run` installs), each started in a temporary directory on a free loopback port and
//! stopped when dropped. Under root, PostgreSQL runs as the `postgres` user, as it insists.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

use super::prereq::{has_program, is_root, require};

fn wait_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// [`run`], again while the server answers that it is still starting up (it accepts
/// connections before it accepts logins, and a loaded machine makes that window long; a
/// MariaDB that has opened its port may still drop the first connections).
fn run_once_up(cmd: &mut Command, what: &str) {
    const STARTING: [&str; 4] = [
        "starting up",
        "Can't connect",
        "Lost connection",
        "server has gone away",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        let err = String::from_utf8_lossy(&out.stderr);
        let starting = STARTING.iter().any(|s| err.contains(s));
        if out.status.success() || !starting || Instant::now() > deadline {
            assert!(
                out.status.success(),
                "{what}: {}{err}",
                String::from_utf8_lossy(&out.stdout)
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Postgres {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    log: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Postgres {
    /// Initialises a cluster with a trusted user `test` and a database `acd`, and starts it;
    /// `None` where PostgreSQL is missing and skipping it was asked for (see
    /// [`super::require`]).
    pub fn start() -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.filter_map(Result::ok).map(|e| e.path().join("bin")).max())
            .filter(|b| b.join("initdb").exists());
        if !require("postgres", bin.is_some(), "apt-get install postgresql") {
            return None;
        }
        let bin = bin.expect("checked");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if is_root() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let log = dir.path().join("log");
        let mut pg = Self {
            data,
            bin,
            log,
            port: free_port(),
            child: None,
            _dir: dir,
        };
        run(
            pg.as_owner(&pg.bin.join("initdb"))
                .args([
                    "-U",
                    "test",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "-D",
                ])
                .arg(&pg.data),
            "initdb",
        );
        pg.restart();
        run_once_up(
            Command::new(pg.bin.join("psql"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "test",
                    "-d",
                    "postgres",
                    "-c",
                    "CREATE DATABASE acd",
                ])
                .args(["-p", &pg.port.to_string()]),
            "createdb",
        );
        Some(pg)
    }

    fn as_owner(&self, program: &Path) -> Command {
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://test@127.0.0.1:{}/acd", self.port)
    }

    /// A pool on the database with the `calls` table the `sql` tests read (`id`, `queue`,
    /// `started`, `updated_at`), its times of type `time` (`timestamptz` or `timestamp`).
    pub async fn calls(&self, time: &str) -> sqlx::PgPool {
        let pool = sqlx::PgPool::connect(&self.url()).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE calls (id bigint PRIMARY KEY, queue text NOT NULL, \
             started {time} NOT NULL, updated_at {time} NOT NULL)"
        )))
        .execute(&pool)
        .await
        .unwrap();
        pool
    }

    /// The same database as an `odbc:` connection through the PostgreSQL ODBC driver.
    pub fn odbc_url(&self) -> String {
        format!(
            "odbc:Driver={{PostgreSQL Unicode}};Server=127.0.0.1;Port={};Database=acd;Uid=test;",
            self.port
        )
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The postmaster (not `runuser` in front of it) takes SIGINT as "fast shutdown".
            let pid = std::fs::read_to_string(self.data.join("postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
                .unwrap_or(child.id() as i32);
            // SAFETY: signalling the server this fixture started.
            unsafe { libc::kill(pid, libc::SIGINT) };
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::File::create(&self.log).unwrap();
        if is_root() {
            let _ = Command::new("chown")
                .arg("postgres")
                .arg(&self.log)
                .status();
        }
        let child = self
            .as_owner(&self.bin.join("postgres"))
            .arg("-D")
            .arg(&self.data)
            .args([
                "-p",
                &self.port.to_string(),
                "-k",
                "",
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .args(["-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_port(self.port, "postgres", &self.log);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct MariaDb {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl MariaDb {
    /// Installs a data directory with a database `acd` and starts the server; `root` needs no
    /// password. `None` where MariaDB is missing and skipping it was asked for.
    pub fn start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let install = ["mariadb-install-db", "mysql_install_db"]
            .into_iter()
            .find(|p| has_program(p, "--help"));
        if !require(
            "mariadb",
            install.is_some(),
            "apt-get install mariadb-server",
        ) {
            return None;
        }
        let install = install.expect("checked");
        let user = if is_root() {
            "root".to_owned()
        } else {
            std::env::var("USER").unwrap_or_default()
        };
        run(
            Command::new(install)
                .args([
                    "--no-defaults",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ])
                .arg(format!("--user={user}"))
                .arg(format!("--datadir={}", dir.path().join("data").display())),
            "mariadb-install-db",
        );
        let mut db = Self {
            dir,
            port: free_port(),
            child: None,
        };
        db.restart();
        run_once_up(
            Command::new("mariadb")
                .args([
                    "--no-defaults",
                    "-h",
                    "127.0.0.1",
                    "-u",
                    "root",
                    "-e",
                    "CREATE DATABASE acd",
                ])
                .arg(format!("-P{}", db.port)),
            "create database",
        );
        Some(db)
    }

    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/acd", self.port)
    }

    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let d = self.dir.path();
        let log = d.join("log");
        let user = if is_root() {
            "root".to_owned()
        } else {
            std::env::var("USER").unwrap_or_default()
        };
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--user={user}"))
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", d.join("sock").display()))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-grant-tables",
                "--innodb-buffer-pool-size=16M",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_port(self.port, "mariadbd", &log);
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

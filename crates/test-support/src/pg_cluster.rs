//! A private PostgreSQL cluster (initdb + pg_ctl, run as the `postgres`
//! system user) in a temporary directory on a free loopback port, for tests
//! that must stop the server under a running client: the machine's shared
//! server on 5432 serves every other test and must never go down.
//!
//! Trust authentication for 127.0.0.1, superuser `postgres`, no fsync (a
//! test cluster does not need to survive a power cut). While stopped, the
//! port is held so clients retrying meanwhile get "connection refused"
//! rather than another test's server.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

use crate::PortReservation;
use crate::process::log_tail;

const SYSTEM_USER: &str = "postgres";
const INSTALL_HINT: &str = "needs root, the `postgres` system user and the PostgreSQL server \
                            binaries in /usr/lib/postgresql/<version>/bin (apt-get install -y postgresql)";

/// A running private cluster; stopped and deleted on drop.
#[derive(Debug)]
pub struct PostgresCluster {
    /// Port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    running: bool,
    reservation: PortReservation,
    _dir: TempDir,
}

impl PostgresCluster {
    /// Creates the cluster with the newest installed server and starts it.
    pub fn start() -> PostgresCluster {
        let bin = newest_server_bin();
        let dir = tempfile::Builder::new()
            .prefix("pgcluster-")
            .tempdir()
            .expect("create a temp dir for the cluster");
        // The server runs as `postgres` and must reach its files.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .expect("chmod the cluster dir");
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("socket");
        for sub in [&data, &socket_dir] {
            fs::create_dir(sub).expect("create a cluster subdirectory");
        }
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).expect("chmod data");
        let log = dir.path().join("postgres.log");
        fs::write(&log, "").expect("create the server log");
        for path in [&data, &socket_dir, &log] {
            chown_to_postgres(path);
        }
        let output = as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            output.status.success(),
            "initdb failed ({INSTALL_HINT}): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let reservation = PortReservation::new();
        let mut cluster = PostgresCluster {
            port: reservation.port(),
            bin,
            data,
            socket_dir,
            log,
            running: false,
            reservation,
            _dir: dir,
        };
        cluster.start_again();
        cluster
    }

    /// Starts the stopped server on the same port; returns once it accepts
    /// connections.
    pub fn start_again(&mut self) {
        if self.running {
            return;
        }
        self.reservation.release();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c full_page_writes=off -c synchronous_commit=off",
            self.port,
            path_str(&self.socket_dir)
        );
        let output = as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                path_str(&self.data),
                "-l",
                path_str(&self.log),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            output.status.success(),
            "pg_ctl start failed: {}\n----- server log -----\n{}",
            String::from_utf8_lossy(&output.stderr),
            log_tail(&self.log)
        );
        self.running = true;
    }

    /// Stops the server at once, as a crash or `docker stop` of the
    /// database would: every connection is cut mid-query.
    pub fn stop_immediately(&mut self) {
        if !self.running {
            return;
        }
        let output = as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", path_str(&self.data), "-m", "immediate", "-w", "stop"],
        );
        assert!(
            output.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.running = false;
        self.reservation.hold();
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Runs an SQL script with psql as `postgres` on `database`; panics
    /// with psql's stderr on the first error.
    pub fn execute(&self, database: &str, sql: &str) {
        let output = self.psql(database, sql, &["-q"]);
        assert!(
            output.status.success(),
            "SQL failed in {database} on the private cluster: {}\nSQL:\n{sql}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs a query and returns its trimmed tuples-only output.
    pub fn query(&self, database: &str, sql: &str) -> String {
        let output = self.psql(database, sql, &["-At"]);
        assert!(
            output.status.success(),
            "query failed in {database} on the private cluster: {}\nSQL:\n{sql}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// `PGHOST`, `PGPORT`, `PGUSER` for a client of this cluster.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PGHOST".to_owned(), "127.0.0.1".to_owned()),
            ("PGPORT".to_owned(), self.port.to_string()),
            ("PGUSER".to_owned(), "postgres".to_owned()),
        ]
    }

    /// A program (`psql`, `pg_dump`, ...) of the cluster's version.
    pub fn program(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn psql(&self, database: &str, sql: &str, extra: &[&str]) -> Output {
        let mut child = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "-d", database])
            .args(extra)
            .args(["-f", "-"])
            .env_remove("PGPASSWORD")
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn psql");
        let mut stdin = child.stdin.take().expect("piped stdin");
        let sql = sql.to_owned();
        let writer = std::thread::spawn(move || stdin.write_all(sql.as_bytes()));
        let output = child.wait_with_output().expect("wait for psql");
        let _ = writer.join();
        output
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- last lines of the private PostgreSQL log (port {}) -----\n{}",
                self.port,
                log_tail(&self.log)
            );
        }
        if self.running {
            let _ = as_postgres(
                &self.bin.join("pg_ctl"),
                &["-D", path_str(&self.data), "-m", "immediate", "-w", "stop"],
            );
        }
    }
}

/// `/usr/lib/postgresql/<newest>/bin`.
fn newest_server_bin() -> PathBuf {
    let base = Path::new("/usr/lib/postgresql");
    let newest = fs::read_dir(base)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|v| base.join(v.to_string()).join("bin/initdb").is_file())
        .max()
        .unwrap_or_else(|| panic!("no initdb under {} ({INSTALL_HINT})", base.display()));
    base.join(newest.to_string()).join("bin")
}

fn as_postgres(program: &Path, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", SYSTEM_USER, "--"])
        .arg(program)
        .args(args)
        // The server inherits the environment: nothing of the caller's
        // libpq settings or locale surprises.
        .env_remove("PGPASSWORD")
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env("LC_ALL", "C.UTF-8")
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "run {} as {SYSTEM_USER}: {e} ({INSTALL_HINT})",
                program.display()
            )
        })
}

fn chown_to_postgres(path: &Path) {
    let status = Command::new("chown")
        .arg(format!("{SYSTEM_USER}:{SYSTEM_USER}"))
        .arg(path)
        .status()
        .expect("run chown");
    assert!(status.success(), "chown {SYSTEM_USER} {}", path.display());
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

//! Fresh, randomly named databases on the machine's PostgreSQL server
//! (127.0.0.1:5432, trust auth), driven through `psql` so the harness needs
//! no async driver.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

pub const PG_HOST: &str = "127.0.0.1";
pub const PG_PORT: u16 = 5432;
pub const PG_USER: &str = "postgres";

const INSTALL_HINT: &str = "install it with `apt-get install -y postgresql postgresql-client`";

/// A database created for one test and dropped (even with open
/// connections) when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
}

impl TestDatabase {
    /// Creates `<prefix>_<16 random hex digits>`. `prefix` must be a plain
    /// lowercase identifier so the name never needs quoting in a shell,
    /// a URL or SQL.
    pub fn create(prefix: &str) -> TestDatabase {
        assert!(
            prefix.starts_with(|c: char| c.is_ascii_lowercase())
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && prefix.len() <= 40,
            "database prefix {prefix:?} must be [a-z][a-z0-9_]*, at most 40 chars"
        );
        ensure_postgres_running();
        let name = format!("{prefix}_{:016x}", rand::random::<u64>());
        // CREATE DATABASE fails if anyone is connected to template1 at
        // that moment (another test's tooling, autovacuum): retry briefly.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match psql("postgres", &format!("CREATE DATABASE {name}"), false) {
                Ok(_) => break,
                Err(err) if attempt < 10 && err.contains("being accessed by other users") => {
                    thread::sleep(Duration::from_millis(200));
                }
                Err(err) => panic!("CREATE DATABASE {name} failed: {err}"),
            }
        }
        TestDatabase { name }
    }

    /// Runs an SQL script (several statements allowed, psql meta-commands
    /// too); panics with psql's stderr on the first error.
    pub fn execute(&self, sql: &str) {
        if let Err(err) = psql(&self.name, sql, false) {
            panic!("SQL failed in database {}: {err}\nSQL:\n{sql}", self.name);
        }
    }

    /// Runs a query and returns its unaligned, tuples-only output (`-At`):
    /// columns separated by `|`, rows by newlines, trimmed.
    pub fn query(&self, sql: &str) -> String {
        psql(&self.name, sql, true)
            .unwrap_or_else(|err| {
                panic!("query failed in database {}: {err}\nSQL:\n{sql}", self.name)
            })
            .trim()
            .to_owned()
    }

    /// Exact `count(*)` of every ordinary table outside the system schemas,
    /// keyed `schema.table` (unquoted). Compare two databases with it to
    /// check a restore.
    pub fn row_counts(&self) -> BTreeMap<String, u64> {
        // Let the server quote identifiers and literals: table names in a
        // backup test may well be mixed-case or contain spaces.
        let counting_query = self.query(
            "SELECT string_agg(format('SELECT %L, count(*) FROM %I.%I', \
                 n.nspname || '.' || c.relname, n.nspname, c.relname), \
                 E'\\nUNION ALL ' ORDER BY n.nspname, c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' \
               AND n.nspname NOT LIKE 'pg\\_temp\\_%'",
        );
        if counting_query.is_empty() {
            return BTreeMap::new();
        }
        let output = psql_with(&self.name, &counting_query, &["-At", "-F", "\x1f"])
            .unwrap_or_else(|err| panic!("row counts of {}: {err}", self.name));
        output
            .lines()
            .filter(|line| !line.is_empty())
            .map(|line| {
                let (table, count) = line
                    .rsplit_once('\x1f')
                    .unwrap_or_else(|| panic!("unexpected row count line {line:?}"));
                let count = count
                    .parse()
                    .unwrap_or_else(|_| panic!("unexpected row count line {line:?}"));
                (table.to_owned(), count)
            })
            .collect()
    }

    /// `postgres://postgres@127.0.0.1:5432/<name>`
    pub fn url(&self) -> String {
        format!("postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{}", self.name)
    }

    /// [`pg_env`] plus `PGDATABASE=<name>`.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = pg_env();
        env.push(("PGDATABASE".to_owned(), self.name.clone()));
        env
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(err) = psql("postgres", &sql, false) {
            // Panicking in drop would abort a test that is already
            // unwinding; a leftover scratch DB is the lesser evil.
            eprintln!("warning: could not drop test database {}: {err}", self.name);
        }
    }
}

/// Names of all databases called `<prefix>_...`, to assert a test (or the
/// code under test) left no scratch database behind.
pub fn databases_with_prefix(prefix: &str) -> Vec<String> {
    ensure_postgres_running();
    let wanted = format!("{prefix}_");
    psql(
        "postgres",
        "SELECT datname FROM pg_database ORDER BY 1",
        true,
    )
    .unwrap_or_else(|err| panic!("list databases: {err}"))
    .lines()
    .filter(|name| name.starts_with(&wanted))
    .map(str::to_owned)
    .collect()
}

/// `PGHOST`, `PGPORT` and `PGUSER` for child processes (pg_dump, the
/// services) so they reach the same server as the harness.
pub fn pg_env() -> Vec<(String, String)> {
    vec![
        ("PGHOST".to_owned(), PG_HOST.to_owned()),
        ("PGPORT".to_owned(), PG_PORT.to_string()),
        ("PGUSER".to_owned(), PG_USER.to_owned()),
    ]
}

/// Makes sure the local cluster accepts connections, starting it with
/// `pg_ctlcluster` if not: containers do not run systemd, so after a reboot
/// of the machine nothing else would.
pub fn ensure_postgres_running() {
    static STARTING: Mutex<()> = Mutex::new(());
    if port_open() {
        return;
    }
    let _guard = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    if port_open() {
        return;
    }
    let versions: Vec<String> = fs::read_dir("/etc/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut attempts = Vec::new();
    for version in &versions {
        // Exit status is ignored: a concurrent test process may have
        // started it first, which pg_ctlcluster reports as an error.
        let result = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", version, "main", "start"])
            .stdin(Stdio::null())
            .output();
        attempts.push(match result {
            Ok(out) => format!(
                "pg_ctlcluster {version} main start: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(err) => format!("pg_ctlcluster {version} main start: {err}"),
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if port_open() {
            return;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let logs: String = versions
        .iter()
        .map(|v| {
            let path = format!("/var/log/postgresql/postgresql-{v}-main.log");
            format!(
                "----- {path} -----\n{}\n",
                crate::process::log_tail(std::path::Path::new(&path))
            )
        })
        .collect();
    panic!(
        "PostgreSQL does not accept connections on {PG_HOST}:{PG_PORT} \
         (clusters in /etc/postgresql: {versions:?}); {INSTALL_HINT}, \
         and trust auth for 127.0.0.1 in pg_hba.conf\n{}\n{logs}",
        attempts.join("\n")
    );
}

fn port_open() -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], PG_PORT));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

fn psql(database: &str, sql: &str, tuples_only: bool) -> Result<String, String> {
    psql_with(database, sql, if tuples_only { &["-At"] } else { &["-q"] })
}

/// Feeds `sql` on stdin rather than `-c`: `-c` sends everything as one
/// implicit transaction, which e.g. `CREATE DATABASE` or `VACUUM` in a
/// script would refuse.
fn psql_with(database: &str, sql: &str, extra: &[&str]) -> Result<String, String> {
    let port = PG_PORT.to_string();
    let mut child = Command::new("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-h", PG_HOST, "-p", &port])
        .args(["-U", PG_USER, "-d", database])
        .args(extra)
        .args(["-f", "-"])
        // Untouched by the caller's environment or locale.
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("spawn psql: {err}; {INSTALL_HINT}"))?;
    let mut stdin = child.stdin.take().expect("psql stdin is piped");
    let sql = sql.to_owned();
    // A separate writer keeps a big script from deadlocking against psql
    // filling its stdout pipe.
    let writer = thread::spawn(move || stdin.write_all(sql.as_bytes()));
    let output = child
        .wait_with_output()
        .map_err(|err| format!("wait for psql: {err}"))?;
    let write_result = writer.join().expect("psql stdin writer panicked");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "psql exited with {}: {}",
            output.status,
            stderr.trim()
        ));
    }
    write_result.map_err(|err| format!("write SQL to psql: {err}"))?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

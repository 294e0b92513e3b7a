//! Running the workspace's own binaries (or any program) as separate
//! processes, the way they run in production, with their output kept in a
//! log file the test can search and that is shown when the test fails.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

/// How many log lines a failing test gets to see per process.
pub(crate) const LOG_TAIL_LINES: usize = 40;

/// Polls `f` every 100 ms until it returns true; panics naming `what` once
/// `timeout` has passed.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The last lines of a log file, or a note that it cannot be read.
pub(crate) fn log_tail(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => tail(&String::from_utf8_lossy(&bytes), LOG_TAIL_LINES),
        Err(err) => format!("<cannot read {}: {err}>", path.display()),
    }
}

/// Opens (appending) a log file and returns two handles for a child's
/// stdout and stderr. A file rather than pipes, so a chatty child can never
/// block on a full pipe and grandchildren that outlive it cannot hold a
/// reader hostage.
pub(crate) fn log_stdio(path: &Path) -> (Stdio, Stdio) {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|err| panic!("open log file {}: {err}", path.display()));
    let clone = file
        .try_clone()
        .unwrap_or_else(|err| panic!("duplicate log file handle: {err}"));
    (Stdio::from(file), Stdio::from(clone))
}

/// Sends `signal` to a child we have not reaped yet. An unreaped child keeps
/// its pid reserved (at worst as a zombie), so this can never hit a stranger
/// that reused the pid.
pub(crate) fn signal_child(child: &mut Child, signal: Signal) {
    if matches!(child.try_wait(), Ok(None)) {
        let pid = i32::try_from(child.id()).expect("pid fits in i32");
        // ESRCH can only mean it died in between: nothing left to do.
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// SIGKILLs and reaps a child, so no zombie is left behind.
pub(crate) fn kill_and_reap(child: &mut Child) -> Option<ExitStatus> {
    signal_child(child, Signal::SIGKILL);
    child.wait().ok()
}

/// Polls a child for up to `timeout`; `None` if it is still running.
pub(crate) fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => return None,
            Err(err) => panic!("wait for child {}: {err}", child.id()),
        }
    }
}

/// The directory cargo puts binaries of the current profile in, e.g.
/// `target/debug`, derived from the running test executable (which lives in
/// `target/debug/deps`). Honours `CARGO_TARGET_DIR` and custom profiles
/// without having to know about them.
pub fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("locate the running test executable");
    let dir = exe
        .parent()
        .expect("test executable has a parent directory");
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.parent()
            .expect("deps has a parent directory")
            .to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The workspace root: the nearest ancestor whose `Cargo.toml` declares
/// `[workspace]`, starting from the crate whose tests are running.
pub fn workspace_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    start
        .ancestors()
        .find(|dir| {
            fs::read_to_string(dir.join("Cargo.toml"))
                .map(|toml| toml.lines().any(|line| line.trim() == "[workspace]"))
                .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("no workspace Cargo.toml above {}", start.display()))
        .to_path_buf()
}

/// Path to the workspace binary `name`, built for the current profile.
///
/// The first call for each name in a test process runs `cargo build --bin
/// <name>`: `cargo test -p some-crate` does not build other packages'
/// binaries, and a stale binary left over from an earlier build would make
/// tests pass or fail against old code. Cargo makes this a no-op when the
/// binary is fresh. Set `TEST_SUPPORT_NO_BUILD=1` to only use what exists.
pub fn workspace_bin(name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashSet<String>>> = Mutex::new(None);

    let profile_dir = target_profile_dir();
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if std::env::var_os("TEST_SUPPORT_NO_BUILD").is_some_and(|v| v != "0") {
        assert!(
            path.is_file(),
            "{} does not exist and TEST_SUPPORT_NO_BUILD is set; run `cargo build --bin {name}`",
            path.display()
        );
        return path;
    }

    // Held across the build so parallel tests in this process do not all
    // start the same cargo build (other processes queue on cargo's lock).
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    if built.get_or_insert_with(HashSet::new).contains(name) {
        return path;
    }
    cargo_build_bin(name, &profile_dir);
    assert!(
        path.is_file(),
        "`cargo build --bin {name}` succeeded but {} does not exist",
        path.display()
    );
    built
        .get_or_insert_with(HashSet::new)
        .insert(name.to_owned());
    path
}

fn cargo_build_bin(name: &str, profile_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = workspace_root();
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&root).args(["build", "--bin", name]);
    // `cargo test` gives the test process the variables it sets for the
    // crate under test (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, ...). Some
    // build scripts (aws-lc-sys) declare `rerun-if-env-changed` on exactly
    // those, so passing them on makes this build and the developer's own
    // `cargo build` invalidate each other, a minute of C compiling each.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_by_cargo_for_the_test = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_BIN_EXE_",
            "CARGO_CFG_",
            "CARGO_FEATURE_",
        ]
        .iter()
        .any(|prefix| key.starts_with(prefix))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&key.as_ref());
        if set_by_cargo_for_the_test {
            cmd.env_remove(key.as_ref());
        }
    }
    if let (Some(profile), Some(target_dir)) = (profile_dir.file_name(), profile_dir.parent()) {
        // Build into the very directory the path above points at, whatever
        // target dir or profile this test binary was built with.
        cmd.arg("--target-dir").arg(target_dir);
        match profile.to_str() {
            Some("debug") => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(other) => {
                cmd.args(["--profile", other]);
            }
            None => {}
        }
    }
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("run {cmd:?}: {err} (is cargo on PATH or CARGO set?)"));
    assert!(
        output.status.success(),
        "cargo build --bin {name} failed ({}) in {}:\n{}",
        output.status,
        root.display(),
        tail(&String::from_utf8_lossy(&output.stderr), 60)
    );
}

/// A spawned program with stdout and stderr captured to one log file.
///
/// Dropping it SIGKILLs the process; if the test is panicking, the log tail
/// is printed to stderr first so CI output shows what the service said.
#[derive(Debug)]
pub struct ServiceProcess {
    /// The program's file name, used in messages.
    pub name: String,
    child: Child,
    log_path: PathBuf,
    _dir: TempDir,
}

impl ServiceProcess {
    /// Starts `name` with `args`, inheriting this process's environment plus
    /// `env`, with stdin from /dev/null. `name` is a workspace binary (see
    /// [`workspace_bin`]) unless it contains a `/`, in which case it is a
    /// path to any program.
    pub fn spawn(name: &str, args: &[&str], env: &[(String, String)]) -> ServiceProcess {
        let program = if name.contains('/') {
            PathBuf::from(name)
        } else {
            workspace_bin(name)
        };
        let short_name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.to_owned());
        let dir = tempfile::Builder::new()
            .prefix(&format!("svc-{short_name}-"))
            .tempdir()
            .expect("create temp dir for service log");
        let log_path = dir.path().join(format!("{short_name}.log"));
        let (stdout, stderr) = log_stdio(&log_path);
        let child = Command::new(&program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {}: {err}", program.display()));
        ServiceProcess {
            name: short_name,
            child,
            log_path,
            _dir: dir,
        }
    }

    /// Everything the process has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// The log file (it lives as long as this value).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited, without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("poll child status")
    }

    /// Waits up to `timeout` for the process to exit on its own (for
    /// one-shot commands); `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, timeout)
    }

    /// Asks the process to stop with SIGTERM and waits up to `grace`.
    /// Returns its exit status if it exited by then (or had already);
    /// `None` if it had to be SIGKILLed, i.e. it ignored the request.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.try_wait() {
            return Some(status);
        }
        signal_child(&mut self.child, Signal::SIGTERM);
        let status = wait_child(&mut self.child, grace);
        if status.is_none() {
            kill_and_reap(&mut self.child);
        }
        status
    }

    /// SIGKILL, as in a crash or OOM kill; waits until it is gone.
    pub fn kill(&mut self) {
        kill_and_reap(&mut self.child);
    }

    /// Polls the log until it contains `needle`. Returns false on timeout,
    /// or as soon as the process has exited without having written it.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            // Fail fast instead of sitting out the timeout when the
            // service crashed at startup.
            if !self.is_alive() {
                return self.log().contains(needle);
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Reads /proc rather than `try_wait`, which needs `&mut self`; an
    /// exited but unreaped child is a zombie there and counts as dead.
    fn is_alive(&self) -> bool {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.child.id()));
        match stat {
            // The state letter follows the parenthesised command name.
            Ok(stat) => !matches!(
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.trim_start().chars().next()),
                Some('Z' | 'X') | None
            ),
            Err(_) => false,
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "----- last {LOG_TAIL_LINES} log lines of {} (pid {}) -----\n{}\n----- end of {} log -----",
                self.name,
                self.child.id(),
                log_tail(&self.log_path),
                self.name
            );
        }
        kill_and_reap(&mut self.child);
    }
}

//! The child that writes a dump to its stdout (pg_dump, pg_dumpall): spawned
//! in a process group of its own with `--lock-wait-timeout`, its stderr
//! tail kept for the failure event, and its exit read as success, a lock
//! timeout naming the table, or a failure.
//!
//! Never a hang: the [`ProcessGroup`] guard kills the whole group when the
//! step is dropped (aborted by the watchdog, abandoned at shutdown), and
//! `client_connection_check_interval` makes the server notice a killed
//! client. No retries here.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use backup_core::pg::PgTarget;
use backup_core::watchdog::ProcessGroup;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::error::{DumpError, io_err, locked_table};

/// How often a server backend of ours checks that its client is still
/// there while a query runs (PostgreSQL 14+). A backend waiting for a lock
/// notices nothing otherwise, and would outlive a killed pg_dump for as
/// long as the lock is held, its lock request queued in everyone's way.
pub(crate) const CONNECTION_CHECK_MS: u64 = 5000;

/// Whole milliseconds, the unit PostgreSQL reads a bare timeout number in.
pub(crate) fn millis(duration: Duration) -> u128 {
    duration.as_millis().max(1)
}

/// A spawned producer (pg_dump, pg_dumpall) with its stderr being collected.
pub(crate) struct Producer {
    program: &'static str,
    child: tokio::process::Child,
    /// Kills the producer's whole process group when the step is dropped
    /// (aborted by the watchdog, abandoned at shutdown).
    group: ProcessGroup,
    stderr_tail: tokio::task::JoinHandle<String>,
    lock_wait: Option<Duration>,
}

impl Producer {
    /// Spawns `path` in a process group of its own, with
    /// `--lock-wait-timeout` when `lock_wait` is set.
    pub(crate) fn spawn(
        program: &'static str,
        path: &Path,
        args: &[&str],
        target: &PgTarget,
        lock_wait: Option<Duration>,
        server_major: u32,
    ) -> Result<(Self, tokio::process::ChildStdout), DumpError> {
        let mut command = tokio::process::Command::new(path);
        command
            .args(args)
            .envs(target.child_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if let Some(lock_wait) = lock_wait {
            command.arg(format!("--lock-wait-timeout={}", millis(lock_wait)));
        }
        if server_major >= 14 {
            let mut options = std::env::var("PGOPTIONS").unwrap_or_default();
            if !options.trim().is_empty() {
                options.push(' ');
            }
            options.push_str(&format!(
                "-c client_connection_check_interval={CONNECTION_CHECK_MS}"
            ));
            command.env("PGOPTIONS", options);
        }
        let mut child = command.spawn().map_err(io_err(path))?;
        let group = ProcessGroup::new(child.id());
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr_tail = tokio::spawn(tail_lines(stderr, 20));
        Ok((
            Self {
                program,
                child,
                group,
                stderr_tail,
                lock_wait,
            },
            stdout,
        ))
    }

    pub(crate) async fn finish(mut self) -> Result<(), DumpError> {
        let status = self.child.wait().await.map_err(|source| DumpError::Io {
            path: PathBuf::from(self.program),
            source,
        })?;
        // Whatever the leader left behind goes with it.
        self.group.kill();
        let stderr = self.stderr_tail.await.unwrap_or_default();
        if status.success() {
            if !stderr.trim().is_empty() {
                tracing::warn!(program = self.program, stderr = %backup_core::one_line(&stderr), "succeeded with warnings");
            }
            Ok(())
        } else if let (Some(within), Some(table)) = (self.lock_wait, locked_table(&stderr)) {
            Err(DumpError::LockTimeout {
                table: Some(table),
                within,
            })
        } else {
            Err(DumpError::PgDump {
                program: self.program,
                status: status.to_string(),
                stderr: backup_core::one_line(&stderr),
            })
        }
    }
}

/// Keeps the last `keep` lines of a child's stderr for the failure event.
async fn tail_lines<R: AsyncRead + Unpin>(stderr: R, keep: usize) -> String {
    let mut lines = BufReader::new(stderr).lines();
    let mut tail = std::collections::VecDeque::with_capacity(keep);
    while let Ok(Some(line)) = lines.next_line().await {
        if tail.len() == keep {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    tail.into_iter().collect::<Vec<_>>().join("\n")
}

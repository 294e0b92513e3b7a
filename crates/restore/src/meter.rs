//! Progress of one restore: the [`Meter`] that the download task, the
//! restore, the server watcher and a watchdog share, and the
//! [`RestoreProgress`] an operator's progress bar is fed.
//!
//! Everything that moves is counted: bytes read from the remote
//! (`download`), bytes fed to `psql` or moved by `pg_restore` and its `-j`
//! workers (`restore`), and ticks of work the scratch server does on its
//! own (an index build moves no byte we see). When a watchdog aborts, the
//! meter says which step to blame.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use backup_core::watchdog::{Aborted, ProcessGroup, Progress};

/// Reported while the artifact is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreProgress {
    pub bytes_read: u64,
    pub total_bytes: u64,
}

/// Called with progress, at most every few MiB and once at the end.
pub type ProgressFn = Arc<dyn Fn(RestoreProgress) + Send + Sync>;

/// Where a verification is, for blaming a stall on the right step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Download and restore run side by side; the one waiting is to blame.
    Restore = 0,
    /// Archives that are only read back: everything is the download.
    Download = 1,
    /// Row counts and other checks on the restored database.
    Checks = 2,
}

/// Progress of one verification, shared by the download task, the restore,
/// the server watcher and the watchdog (see the module docs).
#[derive(Debug, Clone)]
pub struct Meter {
    pub(crate) download: Progress,
    pub(crate) restore: Progress,
    /// Everything that counts as moving: what the watchdog watches.
    pub(crate) activity: Progress,
    /// Whether the download task is waiting on the remote right now.
    pub(crate) reading: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
    /// Whether psql and pg_restore get their own process group, killed
    /// whole when the restore is dropped.
    pub(crate) own_group: bool,
}

impl Default for Meter {
    fn default() -> Self {
        Self::new()
    }
}

impl Meter {
    /// A meter for a restore that a watchdog may abort: children run in
    /// their own process group.
    pub fn new() -> Self {
        Self {
            download: Progress::new(),
            restore: Progress::new(),
            activity: Progress::new(),
            reading: Arc::default(),
            phase: Arc::default(),
            own_group: true,
        }
    }

    /// A meter for an operator's restore (`backupctl restore`): children
    /// stay in the caller's process group, so Ctrl-C in the terminal
    /// reaches them too.
    pub(crate) fn interactive() -> Self {
        Self {
            own_group: false,
            ..Self::new()
        }
    }

    /// Starts `command` as this meter's restores start children (see
    /// `own_group`); the guard kills the group when dropped, or guards
    /// nothing for an interactive restore.
    pub(crate) fn spawn(
        &self,
        command: &mut tokio::process::Command,
    ) -> std::io::Result<(tokio::process::Child, ProcessGroup)> {
        if self.own_group {
            command.process_group(0);
        }
        let child = command.kill_on_drop(true).spawn()?;
        let group = ProcessGroup::new(child.id().filter(|_| self.own_group));
        Ok((child, group))
    }

    /// What the watchdog watches.
    pub fn activity(&self) -> &Progress {
        &self.activity
    }

    /// Bytes read from the remote so far.
    pub fn downloaded(&self) -> u64 {
        self.download.bytes()
    }

    /// Bytes fed to psql or moved by pg_restore so far.
    pub fn restored(&self) -> u64 {
        self.restore.bytes()
    }

    /// Work the scratch server does without moving bytes we see.
    pub fn server_working(&self) {
        self.activity.add(1);
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    pub(crate) fn add_restored(&self, bytes: u64) {
        self.restore.add(bytes);
        self.activity.add(bytes);
    }

    /// The step to blame for a stall and the bytes it had moved. While
    /// download and restore run side by side, a download task waiting on the
    /// remote means the remote is slow; one that is waiting for the restore
    /// to take its data, or is done, means the restore is stuck.
    fn blame(&self) -> (&'static str, u64) {
        let phase = self.phase.load(Ordering::Relaxed);
        if phase == Phase::Download as u8 || self.reading.load(Ordering::Relaxed) {
            ("download", self.downloaded())
        } else if phase == Phase::Checks as u8 {
            ("checks", self.restored())
        } else {
            ("restore", self.restored())
        }
    }

    /// The watchdog's verdict (given for the pipeline as a whole), with the
    /// step and the byte count of the step to blame.
    pub fn attribute(&self, aborted: &Aborted) -> Aborted {
        let (step, bytes) = self.blame();
        match *aborted {
            Aborted::Stalled { idle, .. } => Aborted::Stalled { step, bytes, idle },
            Aborted::DeadlineExceeded { deadline, .. } => Aborted::DeadlineExceeded {
                step,
                bytes,
                deadline,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn stalled() -> Aborted {
        Aborted::Stalled {
            step: "verify",
            bytes: 0,
            idle: Duration::from_secs(300),
        }
    }

    #[test]
    fn a_stall_is_blamed_on_the_step_that_waits() {
        let meter = Meter::new();
        meter.download.add(5000);
        meter.add_restored(700);
        // The download task waits on the remote: the remote is slow.
        meter.reading.store(true, Ordering::Relaxed);
        assert_eq!(
            meter.attribute(&stalled()),
            Aborted::Stalled {
                step: "download",
                bytes: 5000,
                idle: Duration::from_secs(300)
            }
        );
        // It waits for the restore to take its data, or is done: the
        // restore is stuck.
        meter.reading.store(false, Ordering::Relaxed);
        let aborted = meter.attribute(&stalled());
        assert_eq!((aborted.step(), aborted.bytes()), ("restore", 700));
        meter.set_phase(Phase::Checks);
        assert_eq!(meter.attribute(&stalled()).step(), "checks");
        // Archives are only read back.
        meter.set_phase(Phase::Download);
        let deadline = Aborted::DeadlineExceeded {
            step: "verify",
            bytes: 0,
            deadline: Duration::from_secs(60),
        };
        assert_eq!(
            meter.attribute(&deadline),
            Aborted::DeadlineExceeded {
                step: "download",
                bytes: 5000,
                deadline: Duration::from_secs(60)
            }
        );
    }
}

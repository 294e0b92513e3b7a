//! Bounds on long-running steps: a stall watchdog and an overall deadline.
//!
//! A step (dump, upload, download, restore) counts the bytes it moves in a
//! [`Progress`]; [`guard`] runs the step and aborts it, by dropping its
//! future, when the count has not advanced for [`Limits::stall_after`] or
//! when the whole step has run longer than [`Limits::deadline`]. Dropping
//! the future must release everything the step holds: child processes are
//! spawned in their own process group behind a [`ProcessGroup`] guard, which
//! kills the whole group on drop, and partial files are removed by their own
//! drop guards.
//!
//! Nothing here retries: an [`Aborted`] step is a failure like any other,
//! and the stage's usual retry rules decide what happens next.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::events::{AbortedStep, StageLimits};

/// Default stall interval: no byte moved for this long means the step hangs.
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(5 * 60);

/// Bytes moved so far by one step, shared between the step and its watchdog.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<AtomicU64>);

impl Progress {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The limits a step runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Abort when no byte moved for this long.
    pub stall_after: Duration,
    /// Abort when the step as a whole ran this long, progress or not.
    pub deadline: Duration,
}

impl Limits {
    pub fn new(stall_after: Duration, deadline: Duration) -> Self {
        Self {
            stall_after,
            deadline,
        }
    }

    /// The form the limits take in events.
    pub fn for_event(&self) -> StageLimits {
        StageLimits {
            stall_after_s: self.stall_after.as_secs(),
            deadline_s: self.deadline.as_secs(),
        }
    }
}

/// Why [`guard`] stopped a step. Both are worth retrying: a stalled server
/// or a lock held by someone else may be gone by the next attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Aborted {
    #[error("{step} {}", self.cause())]
    Stalled {
        step: &'static str,
        bytes: u64,
        idle: Duration,
    },
    #[error("{step} {}", self.cause())]
    DeadlineExceeded {
        step: &'static str,
        bytes: u64,
        deadline: Duration,
    },
}

impl Aborted {
    /// The cause without the step's name, for messages that name the step
    /// together with its object ("upload to sftp://... stalled: ...").
    pub fn cause(&self) -> String {
        match self {
            Aborted::Stalled { bytes, idle, .. } => format!(
                "stalled: no progress for {} after {bytes} bytes; aborted",
                humantime::format_duration(*idle)
            ),
            Aborted::DeadlineExceeded {
                bytes, deadline, ..
            } => format!(
                "exceeded its deadline of {} after {bytes} bytes; aborted",
                humantime::format_duration(*deadline)
            ),
        }
    }

    pub fn step(&self) -> &'static str {
        match self {
            Aborted::Stalled { step, .. } | Aborted::DeadlineExceeded { step, .. } => step,
        }
    }

    pub fn bytes(&self) -> u64 {
        match self {
            Aborted::Stalled { bytes, .. } | Aborted::DeadlineExceeded { bytes, .. } => *bytes,
        }
    }
}

impl AbortedStep {
    /// What `dump.failed` says of a step this module aborted under `limits`.
    pub fn new(aborted: &Aborted, limits: &Limits) -> Self {
        Self {
            step: aborted.step().to_owned(),
            reason: match aborted {
                Aborted::Stalled { .. } => "stalled",
                Aborted::DeadlineExceeded { .. } => "deadline",
            }
            .to_owned(),
            bytes: aborted.bytes(),
            limits: limits.for_event(),
        }
    }
}

/// Runs `work` and aborts it (drops it) when `progress` stops advancing for
/// `limits.stall_after` or when `limits.deadline` has passed.
///
/// Uses tokio's clock, so tests with a paused runtime can drive it.
pub async fn guard<F: Future>(
    step: &'static str,
    progress: &Progress,
    limits: Limits,
    work: F,
) -> Result<F::Output, Aborted> {
    let started = Instant::now();
    let deadline = started + limits.deadline;
    // Often enough to notice a stall within a tenth of its interval, never
    // busier than ten checks a second.
    let tick = (limits.stall_after / 10).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_bytes = progress.bytes();
    let mut last_change = started;
    tokio::pin!(work);
    loop {
        tokio::select! {
            output = &mut work => return Ok(output),
            _ = tokio::time::sleep_until(deadline) => {
                return Err(Aborted::DeadlineExceeded {
                    step,
                    bytes: progress.bytes(),
                    deadline: limits.deadline,
                });
            }
            now = interval.tick() => {
                let bytes = progress.bytes();
                if bytes != last_bytes {
                    last_bytes = bytes;
                    last_change = now;
                } else if now.duration_since(last_change) >= limits.stall_after {
                    return Err(Aborted::Stalled {
                        step,
                        bytes,
                        idle: limits.stall_after,
                    });
                }
            }
        }
    }
}

/// Kills a child's whole process group when dropped, so that an aborted or
/// cancelled step leaves no grandchild (a `pg_restore -j` worker, a `psql`
/// behind a pipe) holding locks or scratch databases.
///
/// Spawn the child with `Command::process_group(0)`, so its pid is its
/// group id, then wrap it right away. Dropping it after a normal exit is
/// fine too: it kills any straggler the leader left behind.
#[derive(Debug)]
pub struct ProcessGroup {
    pgid: Option<i32>,
}

impl ProcessGroup {
    /// Guards the group led by `pid` (`None` when the child already exited
    /// and was reaped, in which case there is nothing to guard).
    pub fn new(pid: Option<u32>) -> Self {
        Self {
            // Never 0 or 1: killpg(0) would hit our own process group.
            pgid: pid.and_then(|p| i32::try_from(p).ok()).filter(|&p| p > 1),
        }
    }

    /// Kills the group now (SIGKILL); idempotent.
    pub fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Wraps a reader or writer and counts the bytes that pass through it.
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    progress: Progress,
}

impl<T> Counted<T> {
    pub fn new(inner: T, progress: Progress) -> Self {
        Self { inner, progress }
    }

    pub fn into_inner(self) -> T {
        self.inner
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.progress.add(read as u64);
        result
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let result = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(written)) = &result {
            self.progress.add(*written as u64);
        }
        result
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(stall_s: u64, deadline_s: u64) -> Limits {
        Limits::new(
            Duration::from_secs(stall_s),
            Duration::from_secs(deadline_s),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn finished_work_returns_its_output() {
        let progress = Progress::new();
        let output = guard("dump", &progress, limits(5, 60), async { 7 }).await;
        assert_eq!(output, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_stops_moving_bytes_is_aborted_as_stalled() {
        let progress = Progress::new();
        let moving = progress.clone();
        let work = async move {
            for _ in 0..3 {
                moving.add(100);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            std::future::pending::<()>().await;
        };
        let started = Instant::now();
        let aborted = guard("upload", &progress, limits(5, 3600), work)
            .await
            .unwrap_err();
        assert_eq!(
            aborted,
            Aborted::Stalled {
                step: "upload",
                bytes: 300,
                idle: Duration::from_secs(5)
            }
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(7) && waited <= Duration::from_secs(9),
            "{waited:?}"
        );
        assert_eq!(
            aborted.to_string(),
            "upload stalled: no progress for 5s after 300 bytes; aborted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_but_steady_work_is_stopped_by_the_deadline_only() {
        let progress = Progress::new();
        let moving = progress.clone();
        let work = async move {
            loop {
                moving.add(1);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        };
        let started = Instant::now();
        let aborted = guard("restore", &progress, limits(5, 30), work)
            .await
            .unwrap_err();
        assert!(matches!(
            aborted,
            Aborted::DeadlineExceeded {
                step: "restore",
                ..
            }
        ));
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert!(aborted.to_string().contains("deadline of 30s"));
    }

    #[tokio::test]
    async fn counted_io_adds_what_passes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let progress = Progress::new();
        let mut reader = Counted::new(&b"hello world"[..], progress.clone());
        let mut text = Vec::new();
        reader.read_to_end(&mut text).await.unwrap();
        assert_eq!(progress.bytes(), 11);
        let mut writer = Counted::new(Vec::new(), progress.clone());
        writer.write_all(b"abc").await.unwrap();
        assert_eq!(progress.bytes(), 14);
        assert_eq!(writer.into_inner(), b"abc");
    }

    #[tokio::test]
    async fn dropping_the_guard_kills_the_whole_group() {
        // A shell that starts a grandchild and waits on it: killing only the
        // shell would orphan the sleep.
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "sleep 300 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let group = ProcessGroup::new(child.id());
        let mut line = String::new();
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
        tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line)
            .await
            .unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        drop(group);
        child.wait().await.unwrap();
        // Gone, or a zombie waiting for init to reap it.
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            std::fs::read_to_string(format!("/proc/{grandchild}/stat")).map_or(true, |stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z'))
            })
        });
        assert!(gone, "grandchild {grandchild} survived the group kill");
    }
}

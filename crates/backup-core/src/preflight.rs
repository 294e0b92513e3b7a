//! Start-up checks: each service probes, with its own code paths, what its
//! work needs (its database, its SFTP server, its spool) as soon as it is
//! connected to NATS, and logs one summary line.
//!
//! Retries: a failed check never stops the service (a crash loop would hide
//! the cause and hammer the servers). The checks run in the background
//! while the worker carries on under its own retry rules; while any fails,
//! `/healthz` reports the service unhealthy naming the failed checks, and
//! they are run again after 30 s, doubling up to 10 min, until all pass.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::health::HealthState;

/// Pause before the first re-run of failed checks.
pub const FIRST_RETRY: Duration = Duration::from_secs(30);
/// Longest pause between two runs of failed checks.
pub const MAX_RETRY: Duration = Duration::from_secs(600);
/// Time one check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// What became of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// Its settings are absent (an optional piece), or an earlier step of
    /// the same probe failed so it could not be looked at.
    Skip,
}

impl Verdict {
    /// `PASS`, `FAIL`, `SKIP`: how `backupctl doctor` prints it.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        }
    }
}

/// The verdict of one check, at a service's start-up or in `backupctl
/// doctor`. `name` uses the doctor's names (`postgres.<db>`, `sftp.auth`,
/// `spool.write`, …). Serialized as the doctor's JSON report shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub name: String,
    /// False only for a failure: a skipped check is not a problem.
    pub ok: bool,
    pub verdict: Verdict,
    /// What was found: one line, never a secret.
    pub detail: String,
    /// What to do about a failure, when the checker knows.
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: impl Into<String>, detail: impl AsRef<str>) -> Check {
        Check::new(name.into(), Verdict::Pass, detail.as_ref())
    }

    pub fn fail(name: impl Into<String>, detail: impl AsRef<str>) -> Check {
        Check::new(name.into(), Verdict::Fail, detail.as_ref())
    }

    pub fn skip(name: impl Into<String>, detail: impl AsRef<str>) -> Check {
        Check::new(name.into(), Verdict::Skip, detail.as_ref())
    }

    /// A check that could not run because an earlier step failed.
    pub fn not_checked(name: impl Into<String>, because: &str) -> Check {
        Check::skip(name, format!("not checked: {because}"))
    }

    /// The same check, telling what to do about it (one line).
    #[must_use]
    pub fn with_fix(mut self, fix: impl AsRef<str>) -> Check {
        self.fix = Some(crate::one_line(fix.as_ref()));
        self
    }

    fn new(name: String, verdict: Verdict, detail: &str) -> Check {
        Check {
            name,
            ok: verdict != Verdict::Fail,
            verdict,
            detail: crate::one_line(detail),
            fix: None,
        }
    }
}

/// Runs `check` within [`CHECK_TIMEOUT`]; a check that hangs fails as `name`.
pub async fn bounded(name: &str, check: impl Future<Output = Vec<Check>>) -> Vec<Check> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(checks) => checks,
        Err(_) => vec![Check::fail(
            name,
            format!("no answer within {}s", CHECK_TIMEOUT.as_secs()),
        )],
    }
}

/// What a run of the checks found: `Ok` with the names of the checks that
/// passed, or `Err` with each failed check and its detail.
fn verdict(checks: &[Check]) -> Result<String, String> {
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{} ({})", c.name, c.detail))
        .collect();
    if failed.is_empty() {
        Ok(checks
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", "))
    } else {
        Err(failed.join("; "))
    }
}

/// One logged outcome of a run, as [`run_until_passing`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Passed(String),
    Failed { reason: String, retry_in: Duration },
}

/// Runs `checks` now and, while any fails, again with backoff, marking the
/// service unhealthy meanwhile. Returns once everything passed or on
/// `shutdown`. Each run logs one summary line.
pub async fn run_until_passing<F, Fut>(
    health: &HealthState,
    checks: F,
    shutdown: &CancellationToken,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Vec<Check>>,
{
    run_logged(health, checks, shutdown, |outcome| match outcome {
        Outcome::Passed(names) => tracing::info!("preflight passed: {names}"),
        Outcome::Failed { reason, retry_in } => tracing::error!(
            "preflight failed: {reason}; retrying in {}",
            short(retry_in)
        ),
    })
    .await;
}

async fn run_logged<F, Fut>(
    health: &HealthState,
    mut checks: F,
    shutdown: &CancellationToken,
    mut log: impl FnMut(Outcome),
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Vec<Check>>,
{
    let mut delay = FIRST_RETRY;
    loop {
        let results = tokio::select! {
            results = checks() => results,
            () = shutdown.cancelled() => return,
        };
        match verdict(&results) {
            Ok(names) => {
                health.set_preflight(None);
                log(Outcome::Passed(names));
                return;
            }
            Err(reason) => {
                health.set_preflight(Some(reason.clone()));
                log(Outcome::Failed {
                    reason,
                    retry_in: delay,
                });
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(MAX_RETRY);
    }
}

/// [`run_until_passing`] as a background task, so the service's worker
/// starts at once.
pub fn spawn<F, Fut>(health: &HealthState, checks: F, shutdown: &CancellationToken)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Vec<Check>> + Send + 'static,
{
    let health = health.clone();
    let shutdown = shutdown.clone();
    tokio::spawn(async move { run_until_passing(&health, checks, &shutdown).await });
}

/// [`spawn`] for the usual case: a service's checks over its own settings.
pub fn spawn_checks<S, Fut>(
    health: &HealthState,
    settings: &S,
    checks: fn(std::sync::Arc<S>) -> Fut,
    shutdown: &CancellationToken,
) where
    S: Clone + Send + Sync + 'static,
    Fut: Future<Output = Vec<Check>> + Send + 'static,
{
    let settings = std::sync::Arc::new(settings.clone());
    spawn(health, move || checks(settings.clone()), shutdown);
}

/// `30s`, `2m`, `10m`: the pauses are whole minutes from a minute on.
fn short(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// A name for a probe file no service reads as an artifact.
pub fn probe_name(service: &str) -> String {
    format!(".{service}-preflight-{:016x}", rand::random::<u64>())
}

/// `dir` takes a file as the services write theirs: written under a
/// `.partial` name, fsynced, renamed, then deleted (`name` on failure).
pub async fn dir_writable(name: &str, dir: &std::path::Path, service: &str) -> Check {
    match write_probe(dir, &probe_name(service), b"start-up check\n").await {
        Ok(()) => Check::pass(name, format!("{} is writable", dir.display())),
        Err(e) => Check::fail(name, format!("cannot write in {}: {e}", dir.display())),
    }
}

/// Writes `content` to `dir/<probe>.partial`, fsyncs it, renames it to
/// `dir/<probe>` and deletes it: what the dumper does with every artifact,
/// then what the pruner does. Leaves nothing behind, failed or not.
pub async fn write_probe(
    dir: &std::path::Path,
    probe: &str,
    content: &'static [u8],
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let done = dir.join(probe);
    let mut partial = done.clone().into_os_string();
    partial.push(crate::names::PARTIAL_SUFFIX);
    let partial = std::path::PathBuf::from(partial);
    let attempt = {
        let (done, partial) = (done.clone(), partial.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&partial)?;
            file.write_all(content)?;
            file.sync_all()?;
            std::fs::rename(&partial, &done)?;
            std::fs::remove_file(&done)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    };
    if attempt.is_err() {
        let _ = std::fs::remove_file(&partial);
        let _ = std::fs::remove_file(&done);
    }
    attempt
}

/// Logs in to an SFTP server as the services do (host key pinned, key
/// auth). On failure, the failed check: `<prefix>.host_key` for a key that
/// does not match the pin, `<prefix>.auth` for a refused login,
/// `<prefix>.connect` for anything else.
#[cfg(feature = "sftp")]
pub async fn sftp_login(
    prefix: &str,
    settings: &remote_sftp::SftpSettings,
) -> Result<remote_sftp::SftpRemote, Check> {
    use remote_sftp::RemoteError;
    remote_sftp::SftpRemote::connect(settings)
        .await
        .map_err(|e| {
            let what = match e {
                RemoteError::HostKeyChanged { .. }
                | RemoteError::HostKeyUnknown { .. }
                | RemoteError::Config(_) => "host_key",
                RemoteError::AuthRejected { .. } | RemoteError::KeyFile { .. } => "auth",
                _ => "connect",
            };
            Check::fail(format!("{prefix}.{what}"), e.to_string())
        })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use async_nats::connection::State as NatsState;

    fn report_reason(health: &HealthState) -> Option<String> {
        let report = health.report(&NatsState::Connected);
        assert_eq!(report.is_healthy(), report.preflight.is_none());
        report.preflight
    }

    #[tokio::test(start_paused = true)]
    async fn fails_twice_then_passes_with_one_line_per_run() {
        let health = HealthState::new("test");
        let shutdown = CancellationToken::new();
        let runs = Arc::new(Mutex::new(0_u32));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (health, shutdown, runs, lines) = (
                health.clone(),
                shutdown.clone(),
                runs.clone(),
                lines.clone(),
            );
            tokio::spawn(async move {
                run_logged(
                    &health,
                    || {
                        let runs = runs.clone();
                        async move {
                            let mut n = runs.lock().unwrap();
                            *n += 1;
                            vec![
                                Check::pass("nats", "connected"),
                                if *n < 3 {
                                    Check::fail("spool.write", "/spool is not a directory")
                                } else {
                                    Check::pass("spool.write", "wrote a probe")
                                },
                            ]
                        }
                    },
                    &shutdown,
                    |outcome| lines.lock().unwrap().push(outcome),
                )
                .await;
            })
        };
        let failed = |retry_in| Outcome::Failed {
            reason: "spool.write (/spool is not a directory)".into(),
            retry_in,
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*lines.lock().unwrap(), vec![failed(FIRST_RETRY)]);
        let reason = report_reason(&health).expect("unhealthy after a failed check");
        assert!(reason.contains("spool.write"), "{reason}");
        assert!(
            health.report(&NatsState::Connected).reasons[0].contains("spool.write"),
            "the reason is among /healthz's reasons"
        );

        // Second run after 30 s, third after a further 60 s.
        tokio::time::sleep(FIRST_RETRY).await;
        assert_eq!(lines.lock().unwrap().len(), 2);
        assert_eq!(lines.lock().unwrap()[1], failed(FIRST_RETRY * 2));
        assert!(report_reason(&health).is_some());
        tokio::time::sleep(FIRST_RETRY * 2).await;
        task.await.unwrap();
        assert_eq!(*runs.lock().unwrap(), 3);
        assert_eq!(
            lines.lock().unwrap()[2],
            Outcome::Passed("nats, spool.write".into())
        );
        assert_eq!(lines.lock().unwrap().len(), 3);
        assert_eq!(report_reason(&health), None);
        assert!(health.report(&NatsState::Connected).is_healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_to_ten_minutes_and_shutdown_stops_it() {
        let health = HealthState::new("test");
        let shutdown = CancellationToken::new();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (health, shutdown, lines) = (health.clone(), shutdown.clone(), lines.clone());
            tokio::spawn(async move {
                run_logged(
                    &health,
                    || async { vec![Check::fail("sftp.auth", "refused")] },
                    &shutdown,
                    |outcome| lines.lock().unwrap().push(outcome),
                )
                .await;
            })
        };
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let delays: Vec<u64> = lines
            .lock()
            .unwrap()
            .iter()
            .map(|o| match o {
                Outcome::Failed { retry_in, .. } => retry_in.as_secs(),
                Outcome::Passed(_) => panic!("nothing passes"),
            })
            .collect();
        assert_eq!(delays[..7], [30, 60, 120, 240, 480, 600, 600]);
        shutdown.cancel();
        task.await.unwrap();
        assert!(
            report_reason(&health)
                .unwrap()
                .contains("sftp.auth (refused)")
        );
    }

    #[tokio::test]
    async fn dir_writable_leaves_nothing_and_names_what_it_cannot_use() {
        let dir = tempfile::tempdir().unwrap();
        let check = dir_writable("spool", dir.path(), "test").await;
        assert!(check.ok, "{check:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let check = dir_writable("spool", &file.join("below"), "test").await;
        assert!(!check.ok);
        assert_eq!(check.name, "spool");
        assert!(check.detail.contains("file/below"), "{}", check.detail);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_check_fails_after_its_timeout() {
        let checks = bounded("postgres.app", std::future::pending()).await;
        assert_eq!(checks.len(), 1);
        assert!(!checks[0].ok);
        assert_eq!(checks[0].name, "postgres.app");
        assert!(checks[0].detail.contains("20s"), "{}", checks[0].detail);
    }
}

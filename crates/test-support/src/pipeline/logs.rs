//! The log lines of services running in the test's own process, captured
//! by a global `tracing` subscriber, so a test can wait for what a service
//! did and says only in its log (a retry that failed again, say).
//!
//! One subscriber serves the whole test binary: lines of every test land in
//! the same buffer, so predicates must pick this test's lines (by a port, a
//! file name).

use std::io::Write;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tracing_subscriber::EnvFilter;

use super::WAIT;

static CAPTURED: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Installs the capturing subscriber (once per process; later calls do
/// nothing). `echo` also writes every line to stderr, for a test run by
/// hand. Returns whether lines are captured: not when another subscriber
/// was installed first.
pub fn capture(echo: bool) -> bool {
    *INSTALLED.get_or_init(|| {
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info,async_nats=warn"))
            .with_ansi(false)
            .with_target(false)
            .with_writer(move || Tee { echo })
            .try_init()
            .is_ok()
    })
}

/// Every line captured so far, oldest first.
pub fn lines() -> Vec<String> {
    let bytes = CAPTURED.lock().unwrap_or_else(PoisonError::into_inner);
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits (up to [`WAIT`]) for a captured line matching `wanted`; returns
/// it. Panics naming `what` if the capture is not installed or the line
/// does not come.
pub async fn wait_for_line(what: &str, wanted: impl Fn(&str) -> bool) -> String {
    assert!(
        INSTALLED.get().copied().unwrap_or(false),
        "log lines are not captured (call pipeline::logs::capture first)"
    );
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(line) = lines().into_iter().find(|l| wanted(l)) {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no log line showing {what} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Tee {
    echo: bool,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        if self.echo {
            let _ = std::io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

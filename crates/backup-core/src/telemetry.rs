//! Tracing set-up: human-readable text by default, JSON lines with
//! `LOG_FORMAT=json`. The level comes from `RUST_LOG` (default `info`).

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The format chosen at [`init`]; `None` before (a settings error).
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The log format in use, if logging was set up.
pub fn format() -> Option<LogFormat> {
    FORMAT.get().copied()
}

pub fn init(format: LogFormat) {
    init_with_default(format, "info");
}

/// The NATS client's own logs: every connection and every event at INFO,
/// and retries during an outage. [`crate::bus`] logs the transitions once
/// each (connected, lost, restored, refused), so by default only the
/// client's warnings and errors pass.
const CLIENT_DEFAULT: &str = "async_nats=warn";

/// Like [`init`] with another default level; `backupctl` uses `warn` (and
/// quiets the connection retries) so its own output is not buried under
/// connection logs. An empty `RUST_LOG` counts as unset.
pub fn init_with_default(format: LogFormat, default_level: &str) {
    let _ = FORMAT.set(format);
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|_| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(format!("{default_level},{CLIENT_DEFAULT}")));
    use std::io::IsTerminal;
    // Colour codes only for people at a terminal, never in files or journals.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests driving several services in one process) is harmless.
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

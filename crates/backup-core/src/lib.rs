//! The shared core of the backup pipeline: the event contract every service
//! speaks, the JetStream wiring, validated names, the manifest format, and
//! the plumbing each binary needs (configuration, secrets, tracing, shutdown),
//! and the start-up every service shares ([`service`]).
//!
//! Retries: this crate classifies failures rather than hiding them. Every
//! error type says whether it is worth retrying (`is_transient`); the bus
//! turns a handler's verdict into an ack, a delayed nak (JetStream redelivers
//! with backoff) or a terminate, so a restart never loses work in flight.

pub mod age_recipients;
pub mod app_state;
pub mod bus;
#[cfg(test)]
mod bus_cluster_tests;
#[cfg(test)]
mod bus_health_tests;
pub mod calendar;
pub mod clock;
pub mod config;
pub mod events;
pub mod files;
#[cfg(test)]
mod fuzz_tests;
pub mod health;
pub mod human;
pub mod manifest;
pub mod names;
pub mod pg;
pub mod pg_dump;
pub mod preflight;
pub mod retry;
pub mod schedule;
pub mod service;
#[cfg(feature = "sftp")]
pub mod sftp;
pub mod shutdown;
pub mod spool_space;
pub mod telemetry;
pub mod watchdog;

pub use events::Stage;
pub use names::{ArtifactName, BackupId, DatabaseName, Sha256Hex, Tag};

/// Collapses a multi-line message (a child's stderr, a chained error) into
/// the one-line cause that events and alerts carry, bounded in length.
pub fn one_line(text: &str) -> String {
    const MAX: usize = 600;
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    let cleaned: String = joined
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    clip(&cleaned, MAX)
}

/// `text` cut to `max` characters, ending with `…` when it was cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max).collect();
        cut.push('…');
        cut
    }
}

/// Formats an error with its whole `source()` chain on one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    one_line(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_joins_and_strips_control_characters() {
        assert_eq!(one_line("a\n\n  b\tc\r\n"), "a | b c");
        assert!(one_line(&"x".repeat(5000)).chars().count() <= 601);
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "abc…");
    }
}

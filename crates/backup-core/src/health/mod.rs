//! Health and Prometheus metrics of one service, served over HTTP on
//! `HEALTH_LISTEN` (`GET /healthz`, `GET /metrics`), and the
//! `--health-probe` client a container health check runs.
//!
//! Healthy means: the NATS connection is up, and every consumer loop of the
//! process ([`crate::bus::run_worker`]) is alive. A loop is *stuck* when it
//! has not been set up, has not completed a fetch, or has not got a progress
//! ack through for the message it holds, for longer than its consumer's
//! `ack_wait` (past that, JetStream redelivers the message anyway). A
//! handler that is busy but making no progress is the stage watchdog's
//! business ([`crate::watchdog`]), not this module's.
//!
//! Metrics come from the events the service publishes (and, for the
//! notifier, which consumes every `dump.*` event, from those), so every
//! service exposes the same metric names for the stages it runs. They live
//! in the process: after a restart a series reappears with its next event.
//!
//! One concern per file: [`liveness`] (what each consumer loop is doing and
//! the `/healthz` report), [`metrics`] (the Prometheus registry fed by
//! events), [`endpoint`] (the HTTP server), [`probe`] (the client of
//! `--health-probe`). This module knows nothing of the bus: the bus feeds
//! it, and hands the endpoint its connection state through [`Monitored`].
//!
//! Retries: nothing here retries. The probe makes one request with a
//! timeout; the container runtime's health check decides how many failures
//! make a container unhealthy.

use std::net::SocketAddr;

pub mod endpoint;
pub mod liveness;
pub mod metrics;
pub mod probe;

pub use endpoint::{Monitored, serve, serve_at};
pub use liveness::{Busy, ConsumerReport, HealthState, InFlight, Report, WorkerHealth};
pub use probe::{ProbeResult, probe, probe_once};

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("HEALTH_LISTEN {0:?} is not an address such as 127.0.0.1:9464 or 0.0.0.0:9464")]
    Address(String),
    #[error("cannot listen on HEALTH_LISTEN {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl HealthError {
    /// A port still held by a previous instance may be free on the next start.
    pub fn is_transient(&self) -> bool {
        matches!(self, HealthError::Bind { .. })
    }
}

/// Parses `HEALTH_LISTEN`; empty or unset means no endpoint.
pub fn listen_address(text: Option<&str>) -> Result<Option<SocketAddr>, HealthError> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| HealthError::Address(text.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(listen_address(None).unwrap(), None);
        assert_eq!(listen_address(Some(" ")).unwrap(), None);
        assert_eq!(
            listen_address(Some("0.0.0.0:9464")).unwrap(),
            Some("0.0.0.0:9464".parse().unwrap())
        );
        let error = listen_address(Some("localhost")).unwrap_err();
        assert!(!error.is_transient());
        assert!(error.to_string().contains("HEALTH_LISTEN"), "{error}");
    }
}

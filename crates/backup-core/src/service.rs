//! The one way in of the five services. Each binary names its service and
//! hands over two functions of its library, the one that builds and checks
//! its settings from its flags and its `run`; what every service does around
//! them happens here, in this order:
//!
//! 1. parse the flags and the environment ([`config::parse_settings`]): a
//!    bad value ends the process with one line naming the variable;
//! 2. `--health-probe`: ask the running service's `/healthz`, print one
//!    line, exit 0 or 1 ([`health::probe`]);
//! 3. set up logging ([`telemetry::init`]);
//! 4. build the NATS settings, then the service's own: secrets are read
//!    here, and nothing is contacted before every setting has passed;
//! 5. take over SIGTERM and SIGINT ([`shutdown::on_signals`]) and connect to
//!    NATS ([`Bus::connect_service`]);
//! 6. serve `/healthz` and `/metrics` on `HEALTH_LISTEN` ([`health::serve`]);
//! 7. run the service until shutdown; its `run` starts its own preflight
//!    checks ([`crate::preflight`]).
//!
//! Any error ends the process with one line on stderr (one JSON event with
//! `LOG_FORMAT=json`) and exit status 2 ([`config::exit_status`]).
//!
//! Retries: only the NATS connection is retried here, until it succeeds or
//! a signal comes, which is a clean exit ([`Bus::connect_service`]). The
//! rest is settings, which no retry can fix.

use std::error::Error;
use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, BusError};
use crate::config::{self, ConfigError, ServiceArgs};
use crate::health::{self, HealthError};
use crate::{shutdown, telemetry};

/// Why a service stopped before or while running; its text (with causes,
/// [`crate::error_chain`]) is the one line the operator sees after the
/// service's name.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The service's own settings; their error names the variable.
    #[error(transparent)]
    Settings(Box<dyn Error>),
    #[error("NATS settings: {0}")]
    NatsSettings(#[source] ConfigError),
    #[error("NATS: {0}")]
    Nats(#[source] BusError),
    #[error("HEALTH_LISTEN: {0}")]
    Health(#[source] HealthError),
    /// The service's `run` failed.
    #[error("{service}: {source}")]
    Run {
        service: &'static str,
        source: Box<dyn Error>,
    },
}

impl StartError {
    /// Only a health port still held by a previous instance may be free on
    /// the next start; the rest needs the operator.
    pub fn is_transient(&self) -> bool {
        match self {
            StartError::Health(error) => error.is_transient(),
            StartError::Nats(error) => error.is_transient(),
            StartError::Settings(_) | StartError::NatsSettings(_) | StartError::Run { .. } => false,
        }
    }
}

/// The whole life of the service `name`: its flags `A` (the shared
/// [`ServiceArgs`] among them), its settings built by `settings`, its
/// `run`. Returns the process's exit status.
pub async fn main<A, S, E, R, Fut>(
    name: &'static str,
    settings: impl FnOnce(A) -> Result<S, E>,
    run: impl FnOnce(Bus, S, CancellationToken) -> Fut,
) -> ExitCode
where
    A: clap::Parser + AsRef<ServiceArgs>,
    E: Error + 'static,
    R: Error + 'static,
    Fut: Future<Output = Result<(), R>>,
{
    let args: A = config::parse_settings(name);
    let service = args.as_ref().clone();
    if service.health_probe {
        return match service.health_listen_address() {
            Ok(listen) => health::probe(listen).await,
            Err(error) => config::exit_status(name, Err(error.to_string())),
        };
    }
    telemetry::init(service.log_format);
    let result = start(name, &service, args, settings, run).await;
    config::exit_status(name, result.map_err(|error| crate::error_chain(&error)))
}

async fn start<A, S, E, R, Fut>(
    name: &'static str,
    service: &ServiceArgs,
    args: A,
    settings: impl FnOnce(A) -> Result<S, E>,
    run: impl FnOnce(Bus, S, CancellationToken) -> Fut,
) -> Result<(), StartError>
where
    E: Error + 'static,
    R: Error + 'static,
    Fut: Future<Output = Result<(), R>>,
{
    let nats = service.nats_options().map_err(StartError::NatsSettings)?;
    let listen = service
        .health_listen_address()
        .map_err(StartError::Health)?;
    let settings = settings(args).map_err(|error| StartError::Settings(Box::new(error)))?;
    let shutdown = shutdown::on_signals();
    let Some(bus) = Bus::connect_service(&nats, name, &shutdown)
        .await
        .map_err(StartError::Nats)?
    else {
        return Ok(());
    };
    health::serve(listen, &bus)
        .await
        .map_err(StartError::Health)?;
    run(bus, settings, shutdown)
        .await
        .map_err(|error| StartError::Run {
            service: name,
            source: Box::new(error),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_the_step_once_with_its_cause() {
        let settings = StartError::Settings(Box::new(ConfigError::Invalid(
            "SHIP_LOCAL_DIR backups must be an absolute path".into(),
        )));
        assert_eq!(
            crate::error_chain(&settings),
            "SHIP_LOCAL_DIR backups must be an absolute path"
        );
        let nats = StartError::NatsSettings(ConfigError::Invalid(
            "NATS_PASSWORD is set but NATS_USER is not".into(),
        ));
        assert_eq!(
            crate::error_chain(&nats),
            "NATS settings: NATS_PASSWORD is set but NATS_USER is not"
        );
        let bind = StartError::Health(HealthError::Bind {
            addr: "127.0.0.1:9464".parse().unwrap(),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        });
        let line = crate::error_chain(&bind);
        assert!(
            line.starts_with("HEALTH_LISTEN: cannot listen on HEALTH_LISTEN 127.0.0.1:9464: "),
            "{line}"
        );
        assert!(bind.is_transient());
        let run = StartError::Run {
            service: "shipper",
            source: Box::new(BusError::JetStream("timed out".into())),
        };
        assert_eq!(
            crate::error_chain(&run),
            "shipper: JetStream request failed: timed out"
        );
    }
}

//! Graceful shutdown: SIGTERM or SIGINT cancels a token that each service's
//! `run` receives. Services stop taking new work when it fires and finish or
//! release the unit in flight.

pub use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first SIGTERM or SIGINT. The handlers
/// are in place when it returns (it must be called inside the runtime), so
/// a signal that comes right after is not lost to the default action.
pub fn on_signals() -> CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let trigger = token.clone();
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    tokio::spawn(async move {
        match (terminate, interrupt) {
            (Ok(mut terminate), Ok(mut interrupt)) => tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = interrupt.recv() => tracing::info!("SIGINT received, shutting down"),
            },
            (Err(error), Ok(mut interrupt)) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT will stop this service");
                interrupt.recv().await;
            }
            (Ok(mut terminate), Err(error)) => {
                tracing::error!(%error, "cannot listen for SIGINT; only SIGTERM will stop this service");
                terminate.recv().await;
            }
            (Err(error), Err(_)) => {
                tracing::error!(%error, "cannot listen for SIGTERM or SIGINT; stop this service with SIGKILL");
                return;
            }
        }
        trigger.cancel();
    });
    token
}

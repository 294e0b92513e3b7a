//! A private `nats-server`, a connection to it and the shutdown token of the
//! services a test runs in its own process: what every in-process rig
//! starts with.

use backup_core::bus::{Bus, NatsOptions};
use tokio_util::sync::CancellationToken;

use crate::nats::NatsServer;

/// NATS with the `BACKUPS` stream, a client named after the test, and the
/// token that stops the services started on it (cancelled on drop).
#[derive(Debug)]
pub struct TestBus {
    pub nats: NatsServer,
    pub bus: Bus,
    pub shutdown: CancellationToken,
}

impl TestBus {
    /// Starts NATS, connects as `client` and creates the stream.
    pub async fn start(client: &str) -> TestBus {
        let nats = NatsServer::start();
        let shutdown = CancellationToken::new();
        let bus = Bus::connect(&NatsOptions::local(&nats.url), client, &shutdown)
            .await
            .expect("connect to NATS");
        bus.ensure_stream().await.expect("the BACKUPS stream");
        TestBus {
            nats,
            bus,
            shutdown,
        }
    }

    /// Another connection to the same server, e.g. the one a service under
    /// test gets (named like the service, as its own `main` names it).
    pub async fn connect(&self, client: &str) -> Bus {
        Bus::connect(&NatsOptions::local(&self.nats.url), client, &self.shutdown)
            .await
            .expect("connect to NATS")
    }

    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        self.bus.jetstream()
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

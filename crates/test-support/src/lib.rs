//! Real servers for tests: `nats-server` with a temporary JetStream store
//! (alone, or three as a cluster), fresh PostgreSQL databases, OpenSSH
//! `sshd` as an SFTP target, an S3 server (moto), and an SMTP server whose
//! mail the test can read. Everything is started on free
//! loopback ports and torn down on drop, so tests can run in parallel.
//! [`wan`] puts an sshd behind an emulated WAN (network namespace, rate
//! limit, latency, loss); [`delay_proxy`] also cuts connections at a
//! chosen byte; [`sftp_peers`] times OpenSSH `sftp` and rclone;
//! [`korrigo_dataset`] makes (or reuses) the benchmarks' Korrigo-like
//! database.
//!
//! The harness is synchronous on purpose: `Drop` cannot await, and tests of
//! every crate (async or not) can use it the same way. The [`pipeline`]
//! layer on top speaks JetStream and is async: the event log, consumers
//! going idle, SFTP settings of a test sshd.

pub mod delay_proxy;
pub mod flags;
pub mod http_stub;
pub mod korrigo_dataset;
pub mod moto;
pub mod nats;
pub mod nats_cluster;
pub mod pg_cluster;
pub mod pipeline;
pub mod postgres;
pub mod process;
pub mod relay;
pub mod sftp_peers;
pub mod smtp;
pub mod sshd;
pub mod tmpfs;
pub mod wan;

use std::net::TcpListener;
use std::os::fd::OwnedFd;

use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, bind, getsockname, setsockopt, socket,
    sockopt::ReuseAddr,
};

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

pub use nats::NatsServer;
pub use nats_cluster::NatsCluster;
pub use postgres::{TestDatabase, databases_with_prefix, ensure_postgres_running, pg_env};
pub use process::{ServiceProcess, wait_until, workspace_bin};
pub use smtp::{ReceivedMail, SmtpServer};

/// Keeps a loopback TCP port out of everyone else's hands while the server
/// meant to listen on it is down (not started yet, or stopped by a test).
///
/// Without it a stopped server's port is free: another test's server may
/// take it, or the kernel may hand it out as the ephemeral port of a client
/// connecting to it, which then talks to itself (a TCP self-connect). Either
/// way a test that expects "connection refused" meets a stranger and sees a
/// wrong host key or a protocol error. A socket that is bound but not
/// listening prevents both (the kernel skips bound ports when choosing
/// ephemeral ones) and still answers connections with a refusal.
#[derive(Debug)]
pub struct PortReservation {
    port: u16,
    socket: Option<OwnedFd>,
}

impl PortReservation {
    /// Reserves a free port chosen by the kernel.
    pub fn new() -> PortReservation {
        let socket = bound_socket(0).expect("bind an ephemeral port on 127.0.0.1");
        let address: SockaddrIn =
            getsockname(std::os::fd::AsRawFd::as_raw_fd(&socket)).expect("getsockname");
        PortReservation {
            port: address.port(),
            socket: Some(socket),
        }
    }

    /// An empty reservation for `port`, to be taken with [`Self::hold`].
    pub fn at(port: u16) -> PortReservation {
        PortReservation { port, socket: None }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Lets the server bind the port; call right before starting it.
    pub fn release(&mut self) {
        self.socket = None;
    }

    /// Takes the port back after the server stopped. Best effort: in the
    /// unlikely case someone took it in between, the reservation stays empty.
    pub fn hold(&mut self) {
        if self.socket.is_none() {
            self.socket = bound_socket(self.port).ok();
        }
    }
}

impl Default for PortReservation {
    fn default() -> Self {
        PortReservation::new()
    }
}

fn bound_socket(port: u16) -> nix::Result<OwnedFd> {
    let socket = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // Connections the stopped server closed linger in TIME_WAIT on this
    // port; without SO_REUSEADDR the bind would fail until they expire.
    setsockopt(&socket, ReuseAddr, &true)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&socket),
        &SockaddrIn::new(127, 0, 0, 1, port),
    )?;
    Ok(socket)
}

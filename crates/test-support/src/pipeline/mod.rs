//! The pipeline's own concepts for tests, on top of the servers of this
//! crate: the event log of the `BACKUPS` stream, durable consumers going
//! idle, SFTP settings for a test [`Sshd`](crate::sshd::Sshd), an in-process
//! NATS connection with its shutdown token, a clock whose readers can be
//! waited on, and the log lines of the services running in the test's
//! process.
//!
//! Unlike the rest of the crate this layer is async (it speaks JetStream);
//! the blocking variants (`*_blocking`) serve tests that drive a runtime of
//! their own. Every wait has a deadline and panics with what it saw.

pub mod bus;
pub mod clock;
pub mod consumers;
pub mod events;
pub mod logs;
pub mod sftp;

pub use bus::TestBus;
pub use clock::WatchedClock;
pub use consumers::{consumer_info, wait_acked, wait_idle, wait_idle_within};
pub use events::{Event, EventLog};
pub use sftp::{sftp_args, sftp_settings, sftp_target};

use std::time::Duration;

/// What the waits of this layer allow by default: generous, because the
/// machine is shared and builds run beside the tests.
pub const WAIT: Duration = Duration::from_secs(120);

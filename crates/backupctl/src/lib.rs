//! `backupctl`, the operator's command line: trigger a backup (and follow
//! it to verified or failed), list the remote catalog, show the pipeline's
//! status, restore a backup into a database, show what pruning would do,
//! and check a set-up from end to end before the first night (`doctor`).
//!
//! Each command is a module with its arguments and a `run` that does the
//! work and prints the result; [`Command`] picks one. The CLI talks to the
//! same NATS stream and destinations as the services (read through
//! `remote_store`, one chosen with `--from`, see [`destinations`]) and
//! keeps no state of its own.

pub mod command;
pub mod configured;
pub mod connect;
pub mod destinations;
pub mod doctor;
pub mod list;
pub mod prune;
pub mod restore;
pub mod status;
pub mod trigger;

pub use command::Command;

//! Async SFTP client for shipping backups: connect with a pinned host key
//! and a public key, upload files atomically (`.partial`, fsync, size check,
//! rename), read them back (pipelined), list, stat and delete.
//!
//! Built on `russh` and `russh-sftp`'s low-level `RawSftpSession`, which
//! gives access to OpenSSH's extensions (`posix-rename@openssh.com`,
//! `fsync@openssh.com`, `statvfs@openssh.com`, `limits@openssh.com`) and
//! lets this crate pipeline reads and writes itself.
//!
//! The session (connect, close, error bookkeeping) is in `session`; each
//! kind of request has its own module: `upload`, `read` (with `reader`
//! for streaming), `listing`, `dirs`, `rename`, `space`, `host_key`.
//!
//! # Retries
//!
//! Nothing here retries. Every failure is a [`RemoteError`] whose
//! [`RemoteError::is_transient`] says whether trying again later may help
//! (connection refused or lost, timeouts) or whether a human has to act
//! (unknown or changed host key, rejected key, permission denied, no
//! space). Callers own the retry policy because only they know the
//! deadlines. An upload that failed half-way leaves at most a `.partial`
//! file, which the next attempt overwrites, or continues from an offset
//! the caller knows was acknowledged (`SftpRemote::resume_reader`); the
//! final name only ever appears complete.
//!
//! Host key verification is mandatory: without a known_hosts file or a
//! fingerprint pin, [`SftpRemote::connect`] refuses to connect.

mod chunks;
mod connect;
mod dirs;
mod error;
mod extensions;
mod host_key;
mod listing;
mod paths;
mod read;
mod reader;
mod rename;
mod session;
mod settings;
mod space;
mod status;
mod upload;

pub use error::RemoteError;
pub use extensions::ServerFeatures;
pub use listing::RemoteEntry;
pub use reader::RemoteReader;
pub use session::SftpRemote;
pub use settings::SftpSettings;

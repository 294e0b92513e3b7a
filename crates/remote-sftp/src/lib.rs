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
//! `write_once` holds what changes for an append-only account (a key
//! that may not remove, replace or chmod): fresh read-only `.partial`
//! files and renames that never replace; `posture` probes what a key may
//! do to files already written.
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
//! the caller knows was acknowledged (`SftpRemote::resume_reader`); in
//! write-once mode, which can neither overwrite nor reopen, the next
//! attempt writes another one. The final name only ever appears complete.
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
mod posture;
mod read;
mod reader;
mod rename;
mod session;
mod settings;
mod space;
mod status;
mod upload;
mod write_once;

pub use error::RemoteError;
pub use extensions::ServerFeatures;
pub use listing::RemoteEntry;
pub use posture::WritePosture;
pub use reader::RemoteReader;
pub use session::SftpRemote;
pub use settings::SftpSettings;
pub use write_once::partial_target;

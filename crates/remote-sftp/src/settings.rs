//! Where and how to connect: the settings a caller builds (from its own
//! configuration) and hands to [`SftpRemote::connect`](crate::SftpRemote::connect).

use std::path::PathBuf;
use std::time::Duration;

/// Where and how to connect. `Debug` does not reveal the passphrase.
#[derive(Clone, Debug)]
pub struct SftpSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Private key (ed25519, ECDSA or RSA; OpenSSH, PKCS#1/PKCS#8 PEM).
    pub key_file: PathBuf,
    pub key_passphrase: Option<secrecy::SecretString>,
    /// OpenSSH known_hosts file, including `[host]:port` and hashed (`|1|`)
    /// entries.
    pub known_hosts: Option<PathBuf>,
    /// Alternative pin: `SHA256:<base64>` as `ssh-keygen -lf` prints it.
    pub host_key_fingerprint: Option<String>,
    /// Limit for TCP connect, handshake, authentication and SFTP start.
    pub connect_timeout: Duration,
    /// Limit for any single SFTP request to be answered (one second
    /// granularity, at least one second).
    pub io_timeout: Duration,
}

//! Settings of the SFTP destination, shared by every binary that reads or
//! writes the remote (shipper, verifier, pruner, backupctl).

use std::path::PathBuf;
use std::time::Duration;

use remote_sftp::SftpSettings;

use crate::config::{ConfigError, parse_duration, secret_from_env};
use crate::names::DatabaseName;

#[derive(Debug, Clone, clap::Args)]
pub struct SftpArgs {
    /// SFTP server host name.
    #[arg(long = "sftp-host", env = "SFTP_HOST")]
    pub host: String,
    /// SFTP server port.
    #[arg(long = "sftp-port", env = "SFTP_PORT", default_value_t = 22)]
    pub port: u16,
    /// Login on the SFTP server.
    #[arg(long = "sftp-user", env = "SFTP_USER")]
    pub user: String,
    /// Base directory on the server; artifacts go to <dir>/<database>/.
    #[arg(long = "sftp-dir", env = "SFTP_DIR")]
    pub dir: String,
    /// Private key (ed25519 or RSA, OpenSSH or PEM); its passphrase comes
    /// from SFTP_KEY_PASSPHRASE or SFTP_KEY_PASSPHRASE_FILE.
    #[arg(long = "sftp-key-file", env = "SFTP_KEY_FILE")]
    pub key_file: PathBuf,
    /// known_hosts file pinning the server's host key.
    #[arg(long = "sftp-known-hosts", env = "SFTP_KNOWN_HOSTS")]
    pub known_hosts: Option<PathBuf>,
    /// Alternative pin: the host key's fingerprint as `ssh-keygen -lf` prints it (SHA256:...).
    #[arg(long = "sftp-host-fingerprint", env = "SFTP_HOST_FINGERPRINT")]
    pub host_fingerprint: Option<String>,
    /// Time allowed to connect, verify the host and authenticate.
    #[arg(long = "sftp-connect-timeout", env = "SFTP_CONNECT_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// A request unanswered for this long means the connection is dead.
    #[arg(long = "sftp-io-timeout", env = "SFTP_IO_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub io_timeout: Duration,
}

impl SftpArgs {
    /// Resolves the settings; refuses to run without a host key pin.
    pub fn settings(&self) -> Result<SftpSettings, ConfigError> {
        if self.known_hosts.is_none() && self.host_fingerprint.is_none() {
            return Err(ConfigError::Invalid(
                "SFTP_KNOWN_HOSTS (or SFTP_HOST_FINGERPRINT) must pin the server's host key; unknown keys are refused".into(),
            ));
        }
        if !self.dir.starts_with('/') {
            return Err(ConfigError::Invalid(format!(
                "SFTP_DIR {:?} must be an absolute path",
                self.dir
            )));
        }
        Ok(SftpSettings {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            key_file: self.key_file.clone(),
            key_passphrase: secret_from_env("SFTP_KEY_PASSPHRASE")?,
            known_hosts: self.known_hosts.clone(),
            host_key_fingerprint: self.host_fingerprint.clone(),
            connect_timeout: self.connect_timeout,
            io_timeout: self.io_timeout,
        })
    }

    /// The remote directory of one database.
    pub fn database_dir(&self, database: &DatabaseName) -> String {
        format!("{}/{}", self.dir.trim_end_matches('/'), database)
    }

    /// `sftp://user@host:port/dir`, for events and logs.
    pub fn describe(&self) -> String {
        format!(
            "sftp://{}@{}:{}{}",
            self.user, self.host, self.port, self.dir
        )
    }
}

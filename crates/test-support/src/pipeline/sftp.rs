//! SFTP settings pointing at a test [`Sshd`], as the services and
//! `backupctl` would build them from their environment, and the remote
//! directory the tests use on it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use backup_core::sftp::{SftpArgs, SftpTarget};
use remote_sftp::SftpSettings;

use crate::sshd::Sshd;

/// The connection settings of `sshd`'s SFTP user: its key, its
/// `known_hosts`, 20 s to connect and 20 s per request (a lost connection
/// shows quickly).
pub fn sftp_settings(sshd: &Sshd) -> SftpSettings {
    SftpSettings {
        host: "127.0.0.1".into(),
        port: sshd.port,
        user: sshd.user.clone(),
        key_file: sshd.client_key.clone(),
        key_passphrase: None,
        known_hosts: Some(sshd.known_hosts.clone()),
        host_key_fingerprint: None,
        connect_timeout: Duration::from_secs(20),
        io_timeout: Duration::from_secs(20),
    }
}

/// The checked destination of a service using `sshd` with `dir` as
/// `SFTP_DIR`, as [`SftpArgs::target`] builds it from [`sftp_args`].
pub fn sftp_target(sshd: &Sshd, dir: &Path) -> SftpTarget {
    SftpTarget {
        settings: sftp_settings(sshd),
        dir: dir.display().to_string(),
    }
}

/// The `SFTP_*` arguments of a service using `sshd` with `dir` as
/// `SFTP_DIR`, with the same pin and limits as [`sftp_settings`].
pub fn sftp_args(sshd: &Sshd, dir: &Path) -> SftpArgs {
    let settings = sftp_settings(sshd);
    SftpArgs {
        host: Some(settings.host),
        port: settings.port,
        user: Some(settings.user),
        dir: Some(dir.display().to_string()),
        key_file: Some(settings.key_file),
        known_hosts: settings.known_hosts,
        host_fingerprint: None,
        connect_timeout: settings.connect_timeout,
        io_timeout: settings.io_timeout,
    }
}

impl Sshd {
    /// `<remote root>/backups`, the `SFTP_DIR` the pipeline's tests use.
    pub fn backups_dir(&self) -> PathBuf {
        self.remote_root.join("backups")
    }

    /// Hands `path` (recursively) to the SFTP user, as if it had uploaded
    /// what the test wrote there as root.
    pub fn hand_over(&self, path: &Path) {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{0}:{0}", self.user))
            .arg(path)
            .status()
            .expect("run chown");
        assert!(status.success(), "chown -R {}", path.display());
    }
}

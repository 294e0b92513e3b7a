//! The yardsticks of the upload benchmarks: OpenSSH's `sftp put` in batch
//! mode and `rclone copy` (sftp backend, host key pinned by known_hosts),
//! each timed while uploading one file to a test sshd, directly or through
//! an emulated WAN ([`crate::wan`]). Nothing here retries: a failing run
//! panics with the tool's stderr.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::sshd::Sshd;

/// Where and as whom the tools connect.
#[derive(Debug, Clone)]
pub struct SftpEndpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub key: PathBuf,
    /// Names `[host]:port` with the server's host key.
    pub known_hosts: PathBuf,
}

impl SftpEndpoint {
    /// A loopback sshd, directly.
    pub fn of(sshd: &Sshd) -> SftpEndpoint {
        SftpEndpoint {
            host: "127.0.0.1".into(),
            port: sshd.port,
            user: sshd.user.clone(),
            key: sshd.client_key.clone(),
            known_hosts: sshd.known_hosts.clone(),
        }
    }

    /// `sftp -b` with `put local remote` (`remote` an absolute path on the
    /// server); returns how long it took.
    pub fn openssh_put(&self, local: &Path, remote: &Path) -> Duration {
        let batch = tempfile::NamedTempFile::new().expect("create sftp batch file");
        std::fs::write(
            batch.path(),
            format!("put {} {}\n", local.display(), remote.display()),
        )
        .expect("write sftp batch");
        let mut sftp = Command::new("sftp");
        sftp.arg("-q")
            .arg("-b")
            .arg(batch.path())
            .arg("-i")
            .arg(&self.key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "BatchMode=yes", "-P", &self.port.to_string()])
            .arg(format!("{}@{}", self.user, self.host));
        timed(&mut sftp)
    }

    /// `rclone copy local :sftp:remote_dir` with the host key pinned by
    /// known_hosts and no remote shell commands (the test server has no
    /// shell); returns how long it took.
    pub fn rclone_copy(&self, local: &Path, remote_dir: &Path) -> Duration {
        let config = tempfile::NamedTempFile::new().expect("create empty rclone config");
        let mut rclone = Command::new("rclone");
        rclone
            .arg("copy")
            .arg(local)
            .arg(format!(":sftp:{}", remote_dir.display()))
            .arg("--config")
            .arg(config.path())
            .args(["--sftp-host", &self.host])
            .args(["--sftp-port", &self.port.to_string()])
            .args(["--sftp-user", &self.user])
            .arg("--sftp-key-file")
            .arg(&self.key)
            .arg("--sftp-known-hosts-file")
            .arg(&self.known_hosts)
            .args(["--sftp-shell-type", "none", "--sftp-disable-hashcheck"]);
        timed(&mut rclone)
    }
}

fn timed(command: &mut Command) -> Duration {
    let started = Instant::now();
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e} (scripts/install-deps.sh installs it)"));
    let elapsed = started.elapsed();
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    elapsed
}

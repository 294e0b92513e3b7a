//! Settings of the SFTP destination, shared by every binary that reads or
//! writes the remote (shipper, verifier, pruner, backupctl).

use std::path::PathBuf;
use std::time::Duration;

use remote_sftp::SftpSettings;

use crate::config::{ConfigError, parse_duration, secret_from_env};
use crate::names::DatabaseName;

/// The SFTP destination of `SFTP_*`. Every field a destination needs is
/// optional here so that a set-up without SFTP (S3 only) starts: unset
/// `SFTP_HOST` means no SFTP destination, and [`SftpArgs::target`] names
/// what is missing when it is set.
#[derive(Debug, Clone, clap::Args)]
pub struct SftpArgs {
    /// SFTP server host name; unset, there is no SFTP destination (S3 only).
    #[arg(long = "sftp-host", env = "SFTP_HOST")]
    pub host: Option<String>,
    /// SFTP server port.
    #[arg(long = "sftp-port", env = "SFTP_PORT", default_value_t = 22)]
    pub port: u16,
    /// Login on the SFTP server.
    #[arg(long = "sftp-user", env = "SFTP_USER")]
    pub user: Option<String>,
    /// Base directory on the server; artifacts go to <dir>/<database>/. A
    /// relative path starts at the SFTP login directory.
    #[arg(long = "sftp-dir", env = "SFTP_DIR")]
    pub dir: Option<String>,
    /// Private key (ed25519 or RSA, OpenSSH or PEM); its passphrase comes
    /// from SFTP_KEY_PASSPHRASE or SFTP_KEY_PASSPHRASE_FILE.
    #[arg(long = "sftp-key-file", env = "SFTP_KEY_FILE")]
    pub key_file: Option<PathBuf>,
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
    /// The server and the base directory, or `None` when `SFTP_HOST`,
    /// `SFTP_USER` and `SFTP_DIR` are unset or empty (the key and pin
    /// files are then ignored). Refuses a half-configured server (naming
    /// the missing variables) and a server without a host key pin.
    pub fn target(&self) -> Result<Option<SftpTarget>, ConfigError> {
        // Compose passes an unset variable as an empty one.
        let host = given(self.host.as_deref());
        let user = given(self.user.as_deref());
        let dir = given(self.dir.as_deref());
        let key_file = self
            .key_file
            .as_deref()
            .filter(|path| !path.as_os_str().is_empty());
        let Some(host) = host else {
            // A deployment template may set the key and pin files for
            // every service; a login or directory means a forgotten host.
            let stray = names_of([("SFTP_USER", user.is_some()), ("SFTP_DIR", dir.is_some())]);
            if stray.is_empty() {
                return Ok(None);
            }
            return Err(ConfigError::Invalid(format!(
                "{stray} set but SFTP_HOST is not: set SFTP_HOST for an SFTP destination, or unset them"
            )));
        };
        let (Some(user), Some(dir), Some(key_file)) = (user, dir, key_file) else {
            let missing = names_of([
                ("SFTP_USER", user.is_none()),
                ("SFTP_DIR", dir.is_none()),
                ("SFTP_KEY_FILE", key_file.is_none()),
            ]);
            return Err(ConfigError::Invalid(format!(
                "SFTP_HOST is set: {missing} required too"
            )));
        };
        if self.known_hosts.is_none() && self.host_fingerprint.is_none() {
            return Err(ConfigError::Invalid(
                "SFTP_KNOWN_HOSTS (or SFTP_HOST_FINGERPRINT) must pin the server's host key; unknown keys are refused".into(),
            ));
        }
        check_dir("SFTP_DIR", dir)?;
        Ok(Some(SftpTarget {
            settings: SftpSettings {
                host: host.to_owned(),
                port: self.port,
                user: user.to_owned(),
                key_file: key_file.to_owned(),
                key_passphrase: secret_from_env("SFTP_KEY_PASSPHRASE")?,
                known_hosts: self.known_hosts.clone(),
                host_key_fingerprint: self.host_fingerprint.clone(),
                connect_timeout: self.connect_timeout,
                io_timeout: self.io_timeout,
            },
            dir: dir.to_owned(),
        }))
    }
}

/// A setting's value, `None` when unset or blank.
fn given(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// The names whose flag is true, comma-separated.
fn names_of<const N: usize>(names: [(&str, bool); N]) -> String {
    names
        .into_iter()
        .filter_map(|(name, flagged)| flagged.then_some(name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The pruner's own SFTP identity on the same server, for an append-only
/// account whose `SFTP_*` key (the shipper's) may not delete: the login
/// and key that remove what retention says. Unset, the `SFTP_*` identity
/// is used. The key's passphrase comes from `PRUNE_SFTP_KEY_PASSPHRASE`
/// or `PRUNE_SFTP_KEY_PASSPHRASE_FILE`, never from `SFTP_KEY_PASSPHRASE`.
/// Explicit ids: clap would otherwise merge these with [`SftpArgs`]'
/// fields of the same name.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PruneIdentityArgs {
    /// Login of the pruner's own identity (defaults to SFTP_USER); needs PRUNE_SFTP_KEY_FILE.
    #[arg(
        id = "prune-sftp-user",
        long = "prune-sftp-user",
        env = "PRUNE_SFTP_USER"
    )]
    pub user: Option<String>,
    /// Private key of the pruner's own identity, one allowed to delete (see the append-only account in the setup guide).
    #[arg(
        id = "prune-sftp-key-file",
        long = "prune-sftp-key-file",
        env = "PRUNE_SFTP_KEY_FILE"
    )]
    pub key_file: Option<PathBuf>,
}

impl PruneIdentityArgs {
    /// `settings` with the pruner's identity in place of the `SFTP_*` one
    /// when `PRUNE_SFTP_KEY_FILE` is set; `None` when it is not (and
    /// neither is anything that would need it).
    pub fn identity(&self, settings: &SftpSettings) -> Result<Option<SftpSettings>, ConfigError> {
        let passphrase = secret_from_env("PRUNE_SFTP_KEY_PASSPHRASE")?;
        let Some(key_file) = &self.key_file else {
            if self.user.is_some() || passphrase.is_some() {
                return Err(ConfigError::Invalid(
                    "PRUNE_SFTP_USER or PRUNE_SFTP_KEY_PASSPHRASE is set: PRUNE_SFTP_KEY_FILE (the pruner's own key) is required too".into(),
                ));
            }
            return Ok(None);
        };
        if !key_file.is_file() {
            return Err(ConfigError::Invalid(format!(
                "PRUNE_SFTP_KEY_FILE {} does not exist or is not a file",
                key_file.display()
            )));
        }
        if self.user.as_deref().is_some_and(|u| u.trim().is_empty()) {
            return Err(ConfigError::Invalid(
                "PRUNE_SFTP_USER is empty; unset it to log in as SFTP_USER".into(),
            ));
        }
        Ok(Some(SftpSettings {
            user: self.user.clone().unwrap_or_else(|| settings.user.clone()),
            key_file: key_file.clone(),
            key_passphrase: passphrase,
            ..settings.clone()
        }))
    }
}

/// Where the remote copies live: how to log in to the SFTP server, and the
/// base directory there that holds one directory per database.
#[derive(Debug, Clone)]
pub struct SftpTarget {
    pub settings: SftpSettings,
    /// Absolute, or relative to the login directory (see [`check_dir`]).
    pub dir: String,
}

impl SftpTarget {
    /// The remote directory of one database.
    pub fn database_dir(&self, database: &DatabaseName) -> String {
        database_dir(&self.dir, database)
    }

    /// `sftp://user@host:port/dir` (`/~/dir` for a directory relative to
    /// the login directory), for events and logs.
    pub fn describe(&self) -> String {
        let dir = if self.dir.starts_with('/') {
            self.dir.clone()
        } else {
            format!("/~/{}", self.dir)
        };
        let SftpSettings {
            user, host, port, ..
        } = &self.settings;
        format!("sftp://{user}@{host}:{port}{dir}")
    }
}

/// The optional second SFTP server the shipper copies to (`SHIP_SFTP2_*`),
/// label `sftp2`. Every service that reads the copies flattens it too, so
/// they all see the same destinations. Explicit ids: clap would otherwise
/// merge these with [`SftpArgs`]' fields of the same name.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecondSftpArgs {
    /// Second SFTP server host name; setting it enables that destination.
    #[arg(id = "sftp2-host", long = "sftp2-host", env = "SHIP_SFTP2_HOST")]
    pub host: Option<String>,
    #[arg(
        id = "sftp2-port",
        long = "sftp2-port",
        env = "SHIP_SFTP2_PORT",
        default_value_t = 22
    )]
    pub port: u16,
    #[arg(id = "sftp2-user", long = "sftp2-user", env = "SHIP_SFTP2_USER")]
    pub user: Option<String>,
    /// Base directory on the second server (absolute, or relative to the login directory).
    #[arg(id = "sftp2-dir", long = "sftp2-dir", env = "SHIP_SFTP2_DIR")]
    pub dir: Option<String>,
    #[arg(
        id = "sftp2-key-file",
        long = "sftp2-key-file",
        env = "SHIP_SFTP2_KEY_FILE"
    )]
    pub key_file: Option<PathBuf>,
    #[arg(
        id = "sftp2-known-hosts",
        long = "sftp2-known-hosts",
        env = "SHIP_SFTP2_KNOWN_HOSTS"
    )]
    pub known_hosts: Option<PathBuf>,
    #[arg(
        id = "sftp2-host-fingerprint",
        long = "sftp2-host-fingerprint",
        env = "SHIP_SFTP2_HOST_FINGERPRINT"
    )]
    pub host_fingerprint: Option<String>,
}

impl SecondSftpArgs {
    /// The second server when `SHIP_SFTP2_HOST` is set, checked by the
    /// primary server's rules (a pinned host key, a base directory that
    /// does not escape) with the primary's timeouts; refusals name the
    /// `SHIP_SFTP2_*` variable. Its key passphrase comes from
    /// `SHIP_SFTP2_KEY_PASSPHRASE` (or `_FILE`).
    pub fn target(&self, primary: &SftpArgs) -> Result<Option<SftpTarget>, ConfigError> {
        let Some(host) = &self.host else {
            return Ok(None);
        };
        let (Some(user), Some(dir), Some(key_file)) = (&self.user, &self.dir, &self.key_file)
        else {
            return Err(ConfigError::Invalid(
                "SHIP_SFTP2_HOST is set: SHIP_SFTP2_USER, SHIP_SFTP2_DIR and SHIP_SFTP2_KEY_FILE are required too".into(),
            ));
        };
        let args = SftpArgs {
            host: Some(host.clone()),
            port: self.port,
            user: Some(user.clone()),
            dir: Some(dir.clone()),
            key_file: Some(key_file.clone()),
            known_hosts: self.known_hosts.clone(),
            host_fingerprint: self.host_fingerprint.clone(),
            connect_timeout: primary.connect_timeout,
            io_timeout: primary.io_timeout,
        };
        let rename =
            |e: ConfigError| ConfigError::Invalid(e.to_string().replace("SFTP_", "SHIP_SFTP2_"));
        // Every field is set, so `None` (no server) cannot come back.
        let Some(mut target) = args.target().map_err(rename)? else {
            return Ok(None);
        };
        target.settings.key_passphrase = secret_from_env("SHIP_SFTP2_KEY_PASSPHRASE")?;
        Ok(Some(target))
    }
}

/// `<base_dir>/<database>`: where the artifacts of `database` live.
pub fn database_dir(base_dir: &str, database: &DatabaseName) -> String {
    format!("{}/{}", base_dir.trim_end_matches('/'), database)
}

/// A remote base directory as an operator may write it: absolute, or
/// relative to the SFTP login directory (`backups` on a hosting account),
/// never escaping upwards (`..`) and without control characters.
pub fn check_dir(setting: &str, dir: &str) -> Result<(), ConfigError> {
    let refuse = |why: &str| Err(ConfigError::Invalid(format!("{setting} {dir:?} {why}")));
    if dir.trim().is_empty() {
        return refuse("is empty; give the base directory on the server");
    }
    if dir.split('/').any(|part| part == "..") {
        return refuse("must not contain a `..` component");
    }
    if dir.chars().any(char::is_control) {
        return refuse("must not contain control characters");
    }
    Ok(())
}

/// Logs, once per process and directory, where a relative base directory
/// lands on the server: the path it means after `remote`'s login.
pub fn note_resolved_dir(setting: &str, dir: &str, remote: &remote_sftp::SftpRemote) {
    use std::collections::HashSet;
    use std::sync::{Mutex, PoisonError};
    static LOGGED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    if dir.starts_with('/') {
        return;
    }
    let resolved = remote.resolve(dir);
    let mut logged = LOGGED.lock().unwrap_or_else(PoisonError::into_inner);
    if logged
        .get_or_insert_with(HashSet::new)
        .insert(format!("{setting}={dir}"))
    {
        tracing::info!("{setting} {dir:?} is relative to the SFTP login directory: {resolved}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_dirs_join_without_doubling_the_slash() {
        let db: DatabaseName = "viatique".parse().unwrap();
        assert_eq!(database_dir("/srv/backups/", &db), "/srv/backups/viatique");
        assert_eq!(database_dir("backups", &db), "backups/viatique");
    }

    #[test]
    fn the_pruner_identity_replaces_login_and_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("prune_key");
        std::fs::write(&key, "k").unwrap();
        let base = SftpSettings {
            host: "h".into(),
            port: 22,
            user: "backup".into(),
            key_file: "/shipper/key".into(),
            key_passphrase: None,
            known_hosts: Some("/kh".into()),
            host_key_fingerprint: None,
            connect_timeout: std::time::Duration::from_secs(1),
            io_timeout: std::time::Duration::from_secs(1),
        };
        let none = PruneIdentityArgs::default();
        assert!(none.identity(&base).unwrap().is_none());
        let own = PruneIdentityArgs {
            user: None,
            key_file: Some(key.clone()),
        };
        let settings = own.identity(&base).unwrap().unwrap();
        assert_eq!(
            (settings.user.as_str(), settings.key_file.as_path()),
            ("backup", key.as_path())
        );
        assert_eq!(settings.known_hosts, base.known_hosts);
        let other = PruneIdentityArgs {
            user: Some("pruner".into()),
            key_file: Some(key),
        };
        assert_eq!(other.identity(&base).unwrap().unwrap().user, "pruner");

        let refused = |args: PruneIdentityArgs| args.identity(&base).unwrap_err().to_string();
        let message = refused(PruneIdentityArgs {
            user: Some("pruner".into()),
            key_file: None,
        });
        assert!(message.contains("PRUNE_SFTP_KEY_FILE"), "{message}");
        assert!(!message.contains('\n'));
        let message = refused(PruneIdentityArgs {
            user: None,
            key_file: Some(dir.path().join("missing")),
        });
        assert!(message.starts_with("PRUNE_SFTP_KEY_FILE "), "{message}");
    }

    #[test]
    fn relative_dirs_are_accepted_but_never_escape() {
        for good in ["backups", "backups/korrigo", "/srv/backups", "./backups"] {
            check_dir("SFTP_DIR", good).unwrap();
        }
        for bad in ["", "  ", "backups/../..", "..", "/srv/../etc", "a\nb"] {
            let error = check_dir("SFTP_DIR", bad).unwrap_err().to_string();
            assert!(error.starts_with("SFTP_DIR "), "{error}");
        }
    }

    #[test]
    fn sftp_is_optional_but_never_half_configured() {
        let unset = SftpArgs {
            host: None,
            port: 22,
            user: None,
            dir: None,
            key_file: None,
            known_hosts: None,
            host_fingerprint: None,
            connect_timeout: std::time::Duration::from_secs(3),
            io_timeout: std::time::Duration::from_secs(4),
        };
        assert!(unset.target().unwrap().is_none());
        // What Compose passes for unset variables, and the secret files a
        // template mounts for every service.
        let blank = SftpArgs {
            host: Some(String::new()),
            user: Some(" ".into()),
            key_file: Some("/run/secrets/sftp_key".into()),
            known_hosts: Some("/run/secrets/sftp_known_hosts".into()),
            ..unset.clone()
        };
        assert!(blank.target().unwrap().is_none());
        let refused = |args: &SftpArgs| args.target().unwrap_err().to_string();

        let stray = SftpArgs {
            user: Some("backup".into()),
            ..unset.clone()
        };
        let message = refused(&stray);
        assert!(
            message.starts_with("SFTP_USER set but SFTP_HOST is not"),
            "{message}"
        );

        let half = SftpArgs {
            host: Some("sftp.example".into()),
            dir: Some("backups".into()),
            ..unset
        };
        let message = refused(&half);
        assert_eq!(
            message,
            "SFTP_HOST is set: SFTP_USER, SFTP_KEY_FILE required too"
        );

        let unpinned = SftpArgs {
            user: Some("backup".into()),
            key_file: Some("/k".into()),
            ..half
        };
        assert!(refused(&unpinned).starts_with("SFTP_KNOWN_HOSTS"));
        let pinned = SftpArgs {
            host_fingerprint: Some("SHA256:x".into()),
            ..unpinned
        };
        let target = pinned.target().unwrap().unwrap();
        assert_eq!(target.describe(), "sftp://backup@sftp.example:22/~/backups");
    }

    #[test]
    fn the_second_server_is_optional_and_named_by_its_own_variables() {
        let primary = SftpArgs {
            host: Some("sftp.example".into()),
            port: 22,
            user: Some("backup".into()),
            dir: Some("/srv/backups".into()),
            key_file: Some("/k".into()),
            known_hosts: Some("/kh".into()),
            host_fingerprint: None,
            connect_timeout: std::time::Duration::from_secs(3),
            io_timeout: std::time::Duration::from_secs(4),
        };
        assert!(
            SecondSftpArgs::default()
                .target(&primary)
                .unwrap()
                .is_none()
        );
        let mut second = SecondSftpArgs {
            host: Some("nas.example".into()),
            port: 2222,
            ..SecondSftpArgs::default()
        };
        let missing = second.target(&primary).unwrap_err().to_string();
        assert!(missing.contains("SHIP_SFTP2_USER"), "{missing}");
        second.user = Some("u".into());
        second.dir = Some("/b".into());
        second.key_file = Some("/k2".into());
        let unpinned = second.target(&primary).unwrap_err().to_string();
        assert!(unpinned.starts_with("SHIP_SFTP2_KNOWN_HOSTS"), "{unpinned}");
        second.host_fingerprint = Some("SHA256:y".into());
        let target = second.target(&primary).unwrap().unwrap();
        assert_eq!(target.describe(), "sftp://u@nas.example:2222/b");
        assert_eq!(target.settings.io_timeout, primary.io_timeout);
    }
}

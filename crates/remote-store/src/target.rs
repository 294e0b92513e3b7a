//! The configured destinations: each a [`StoreTarget`] with a label and
//! the settings of its kind, and [`targets`], which builds the list a
//! service or `backupctl` reads from what is configured. The first target
//! is the default one (`backupctl list` and `restore` without `--from`).

use backup_core::sftp::{SftpTarget, note_resolved_dir};
use remote_s3::{S3Remote, S3Settings};
use remote_sftp::SftpRemote;

use crate::{Store, StoreError};

/// The label of the SFTP destination of `SFTP_*`, as the shipper names it.
pub const SFTP_LABEL: &str = "sftp";
/// The label of the S3 destination of `S3_*`, as the shipper names it.
pub const S3_LABEL: &str = "s3";

/// The label of the shipper's second SFTP server (`SHIP_SFTP2_*`).
pub const SFTP2_LABEL: &str = "sftp2";

/// One configured destination.
#[derive(Debug, Clone)]
pub struct StoreTarget {
    /// Short name used in logs, events and `--from` (`sftp`, `s3`).
    pub label: String,
    pub kind: TargetKind,
}

/// The settings of each kind of destination.
#[derive(Debug, Clone)]
pub enum TargetKind {
    Sftp(SftpTarget),
    S3(S3Settings),
}

impl StoreTarget {
    pub fn sftp(label: impl Into<String>, target: SftpTarget) -> StoreTarget {
        StoreTarget {
            label: label.into(),
            kind: TargetKind::Sftp(target),
        }
    }

    pub fn s3(label: impl Into<String>, settings: S3Settings) -> StoreTarget {
        StoreTarget {
            label: label.into(),
            kind: TargetKind::S3(settings),
        }
    }

    /// Opens the destination (for SFTP: connect, verify the pinned host
    /// key, authenticate), within the kind's connect timeout. For S3 this
    /// only builds the client: the first request finds out whether the
    /// endpoint, bucket and credentials work.
    pub async fn connect(&self) -> Result<Store, StoreError> {
        match &self.kind {
            TargetKind::Sftp(target) => {
                let remote = SftpRemote::connect(&target.settings).await?;
                let setting = if self.label == SFTP2_LABEL {
                    "SHIP_SFTP2_DIR"
                } else {
                    "SFTP_DIR"
                };
                note_resolved_dir(setting, &target.dir, &remote);
                Ok(Store::Sftp {
                    remote,
                    dir: target.dir.clone(),
                })
            }
            TargetKind::S3(settings) => Ok(Store::S3 {
                remote: S3Remote::connect(settings)?,
            }),
        }
    }

    /// Where it is, without secrets, as the shipper writes it in
    /// `dump.shipped` (`destination`, `destinations`):
    /// `sftp://user@host:port/dir`, `s3://bucket/prefix at host`.
    pub fn describe(&self) -> String {
        match &self.kind {
            TargetKind::Sftp(target) => {
                let s = &target.settings;
                format!("sftp://{}@{}:{}{}", s.user, s.host, s.port, target.dir)
            }
            // Building the client sends nothing; it only fails on an
            // empty bucket name, which the settings already refuse.
            TargetKind::S3(settings) => S3Remote::connect(settings).map_or_else(
                |_| format!("s3://{}/{}", settings.bucket, settings.prefix),
                |remote| remote.describe(),
            ),
        }
    }
}

/// The destinations to read, in order (the first is the default): the
/// SFTP server of `SFTP_*`, then the shipper's second SFTP server
/// (`SHIP_SFTP2_*`), then the bucket of `S3_*`, each when configured. The
/// one place a new kind of destination joins every reader.
pub fn targets(
    sftp: Option<SftpTarget>,
    sftp2: Option<SftpTarget>,
    s3: Option<S3Settings>,
) -> Vec<StoreTarget> {
    let sftp = sftp.map(|target| StoreTarget::sftp(SFTP_LABEL, target));
    let sftp2 = sftp2.map(|target| StoreTarget::sftp(SFTP2_LABEL, target));
    let s3 = s3.map(|settings| StoreTarget::s3(S3_LABEL, settings));
    [sftp, sftp2, s3].into_iter().flatten().collect()
}

/// A `--from` label that names no configured destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no destination is labelled {label:?}; configured: {}", labels(.configured))]
pub struct UnknownTarget {
    pub label: String,
    pub configured: Vec<String>,
}

fn labels(configured: &[String]) -> String {
    if configured.is_empty() {
        "none".to_owned()
    } else {
        configured.join(", ")
    }
}

/// The target labelled `label`, or the first when `label` is `None`.
pub fn find<'a>(
    targets: &'a [StoreTarget],
    label: Option<&str>,
) -> Result<&'a StoreTarget, UnknownTarget> {
    let found = match label {
        Some(label) => targets.iter().find(|t| t.label == label),
        None => targets.first(),
    };
    found.ok_or_else(|| UnknownTarget {
        label: label.unwrap_or_default().to_owned(),
        configured: targets.iter().map(|t| t.label.clone()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use remote_sftp::SftpSettings;

    use super::*;

    fn sftp(dir: &str) -> SftpTarget {
        SftpTarget {
            settings: SftpSettings {
                host: "sftp.example".into(),
                port: 2222,
                user: "backup".into(),
                key_file: "/k".into(),
                key_passphrase: None,
                known_hosts: Some("/kh".into()),
                host_key_fingerprint: None,
                connect_timeout: Duration::from_secs(1),
                io_timeout: Duration::from_secs(1),
            },
            dir: dir.into(),
        }
    }

    #[test]
    fn the_sftp_target_is_described_as_the_shipper_does() {
        let all = targets(Some(sftp("/srv/backups")), None, None);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].label, "sftp");
        assert_eq!(
            all[0].describe(),
            "sftp://backup@sftp.example:2222/srv/backups"
        );
        assert!(targets(None, None, None).is_empty());
        let both = targets(Some(sftp("/a")), Some(sftp("/b")), None);
        let labels: Vec<&str> = both.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["sftp", "sftp2"]);
        assert_eq!(both[1].describe(), "sftp://backup@sftp.example:2222/b");
    }

    #[test]
    fn the_s3_target_follows_sftp_and_is_described_as_the_shipper_does() {
        let mut s3 = S3Settings::new(
            Some("http://127.0.0.1:9000".into()),
            "backups",
            "AKIA",
            "secret".to_owned().into(),
        );
        s3.prefix = "pg".into();
        let all = targets(Some(sftp("/a")), Some(sftp("/b")), Some(s3.clone()));
        let labels: Vec<&str> = all.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["sftp", "sftp2", "s3"]);
        assert_eq!(all[2].describe(), "s3://backups/pg at 127.0.0.1:9000");
        assert_eq!(find(&all, Some("s3")).unwrap().label, "s3");
        assert_eq!(targets(None, None, Some(s3))[0].label, "s3");
    }

    #[test]
    fn labels_pick_a_target_and_an_unknown_one_lists_the_others() {
        let all = targets(Some(sftp("/b")), None, None);
        assert_eq!(find(&all, None).unwrap().label, "sftp");
        assert_eq!(find(&all, Some("sftp")).unwrap().label, "sftp");
        let error = find(&all, Some("nope")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "no destination is labelled \"nope\"; configured: sftp"
        );
        assert_eq!(
            find(&[], None).unwrap_err().to_string(),
            "no destination is labelled \"\"; configured: none"
        );
    }
}

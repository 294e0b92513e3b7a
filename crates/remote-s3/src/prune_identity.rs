//! The pruner's own S3 key (`PRUNE_S3_ACCESS_KEY_ID`, with
//! `PRUNE_S3_SECRET_ACCESS_KEY` or `PRUNE_S3_SECRET_ACCESS_KEY_FILE`), the
//! counterpart of `PRUNE_SFTP_*`: with a shipper key that may not delete
//! (the bucket a stolen production host cannot empty), the pruner removes
//! what retention says with a key of its own, read from the same
//! environment file as every other `S3_*` setting. Unset, the `S3_*` key
//! is used.

use secrecy::SecretString;

use crate::S3Settings;
use crate::args::{S3ConfigError, refuse, secret_from_env};

/// The pruner's key id; its secret is read from the environment only.
/// Explicit ids keep it apart from [`crate::S3Args`]' field of the same
/// name.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PruneS3Args {
    /// Access key id of the pruner's own S3 key, one allowed to delete
    /// (defaults to S3_ACCESS_KEY_ID); its secret comes from
    /// PRUNE_S3_SECRET_ACCESS_KEY or PRUNE_S3_SECRET_ACCESS_KEY_FILE.
    #[arg(
        id = "prune-s3-access-key-id",
        long = "prune-s3-access-key-id",
        env = "PRUNE_S3_ACCESS_KEY_ID"
    )]
    pub access_key_id: Option<String>,
}

impl PruneS3Args {
    /// `bucket` (the checked `S3_*` settings, `None` without `S3_BUCKET`)
    /// with the pruner's key in place of the `S3_*` one when it is set.
    pub fn apply(&self, bucket: Option<S3Settings>) -> Result<Option<S3Settings>, S3ConfigError> {
        self.apply_with(bucket, secret_from_env("PRUNE_S3_SECRET_ACCESS_KEY")?)
    }

    /// [`PruneS3Args::apply`] with the secret given (tests).
    pub fn apply_with(
        &self,
        bucket: Option<S3Settings>,
        secret: Option<SecretString>,
    ) -> Result<Option<S3Settings>, S3ConfigError> {
        // Compose passes an unset variable as an empty one.
        let id = self
            .access_key_id
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty());
        match (bucket, id, secret) {
            (bucket, None, None) => Ok(bucket),
            (None, _, _) => Err(refuse(
                "PRUNE_S3_ACCESS_KEY_ID or PRUNE_S3_SECRET_ACCESS_KEY is set but S3_BUCKET is not: the pruner's own key is for the bucket",
            )),
            (Some(_), Some(_), None) => Err(refuse(
                "PRUNE_S3_ACCESS_KEY_ID is set: PRUNE_S3_SECRET_ACCESS_KEY (or PRUNE_S3_SECRET_ACCESS_KEY_FILE) is required too",
            )),
            (Some(_), None, Some(_)) => Err(refuse(
                "PRUNE_S3_SECRET_ACCESS_KEY is set: PRUNE_S3_ACCESS_KEY_ID is required too",
            )),
            (Some(bucket), Some(id), Some(secret)) => Ok(Some(S3Settings {
                access_key_id: id.to_owned(),
                secret_access_key: secret,
                ..bucket
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn bucket() -> S3Settings {
        S3Settings::new(
            None,
            "backups",
            "SHIPPER",
            "shipper-secret".to_owned().into(),
        )
    }

    fn secret(text: &str) -> Option<SecretString> {
        Some(text.to_owned().into())
    }

    #[test]
    fn the_pruners_key_replaces_the_shippers_and_nothing_else() {
        let unset = PruneS3Args::default();
        let same = unset.apply_with(Some(bucket()), None).unwrap().unwrap();
        assert_eq!(same.access_key_id, "SHIPPER");
        let blank = PruneS3Args {
            access_key_id: Some(" ".into()),
        };
        assert!(blank.apply_with(None, None).unwrap().is_none());

        let own = PruneS3Args {
            access_key_id: Some("PRUNER".into()),
        };
        let settings = own
            .apply_with(Some(bucket()), secret("pruner-secret"))
            .unwrap()
            .unwrap();
        assert_eq!(settings.access_key_id, "PRUNER");
        assert_eq!(settings.secret_access_key.expose_secret(), "pruner-secret");
        assert_eq!(settings.bucket, "backups");
    }

    #[test]
    fn a_half_given_key_is_refused_naming_what_is_missing() {
        let own = PruneS3Args {
            access_key_id: Some("PRUNER".into()),
        };
        let message = |result: Result<Option<S3Settings>, S3ConfigError>| {
            let message = result.unwrap_err().0;
            assert!(!message.contains('\n'));
            message
        };
        assert!(
            message(own.apply_with(Some(bucket()), None))
                .starts_with("PRUNE_S3_ACCESS_KEY_ID is set: PRUNE_S3_SECRET_ACCESS_KEY")
        );
        assert!(
            message(PruneS3Args::default().apply_with(Some(bucket()), secret("s")))
                .starts_with("PRUNE_S3_SECRET_ACCESS_KEY is set: PRUNE_S3_ACCESS_KEY_ID")
        );
        assert!(message(own.apply_with(None, secret("s"))).contains("S3_BUCKET is not"));
    }
}

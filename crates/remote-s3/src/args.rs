//! The `S3_*` variables ([`S3Args`], flattened into a service's flags) and
//! their check into [`S3Settings`]. Inert while `S3_BUCKET` is unset, so a
//! service can always carry them. The secret key is read from the
//! environment only (`S3_SECRET_ACCESS_KEY` or `S3_SECRET_ACCESS_KEY_FILE`),
//! never from a flag, so `ps` cannot show it.

use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;

use crate::settings::{
    DEFAULT_PART_SIZE, LockMode, MAX_PART_SIZE, MIN_PART_SIZE, ObjectLock, S3Settings,
    check_bucket, normalize_prefix, parse_size,
};

/// Help text for services that offer an S3 destination.
pub const S3_HELP: &str = "S3-compatible destination (AWS S3, MinIO, Garage, Backblaze B2, \
Scaleway, OVH...): enabled by S3_BUCKET, with S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY (or \
S3_SECRET_ACCESS_KEY_FILE); S3_ENDPOINT for a service other than AWS. With \
S3_OBJECT_LOCK_DAYS, every object is written with an Object Lock retention date (the bucket \
must have Object Lock enabled).";

/// An S3 destination's flags and variables. Every field is optional or
/// defaulted; [`S3Args::settings`] is `None` while `S3_BUCKET` is unset.
/// Explicit ids keep them apart from other flattened groups' fields.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct S3Args {
    /// S3 bucket; setting it enables the S3 destination.
    #[arg(id = "s3-bucket", long = "s3-bucket", env = "S3_BUCKET")]
    pub bucket: Option<String>,
    /// Endpoint of an S3-compatible service, e.g. https://s3.fr-par.scw.cloud
    /// or http://127.0.0.1:9000; unset for AWS.
    #[arg(id = "s3-endpoint", long = "s3-endpoint", env = "S3_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Region the bucket is in (S3-compatible services often accept any).
    #[arg(id = "s3-region", long = "s3-region", env = "S3_REGION")]
    pub region: Option<String>,
    /// Key prefix under which `<database>/<artifact>` objects are written.
    #[arg(id = "s3-prefix", long = "s3-prefix", env = "S3_PREFIX")]
    pub prefix: Option<String>,
    /// Path-style addressing (host/bucket/key): true or false; default true
    /// when S3_ENDPOINT is set (MinIO, Garage), false for AWS.
    #[arg(id = "s3-path-style", long = "s3-path-style", env = "S3_PATH_STYLE")]
    pub path_style: Option<String>,
    /// Access key id; its secret comes from S3_SECRET_ACCESS_KEY or
    /// S3_SECRET_ACCESS_KEY_FILE.
    #[arg(
        id = "s3-access-key-id",
        long = "s3-access-key-id",
        env = "S3_ACCESS_KEY_ID"
    )]
    pub access_key_id: Option<String>,
    /// Write every object with an Object Lock retention of this many days.
    #[arg(
        id = "s3-object-lock-days",
        long = "s3-object-lock-days",
        env = "S3_OBJECT_LOCK_DAYS"
    )]
    pub object_lock_days: Option<String>,
    /// Object Lock mode: governance (an administrator with
    /// s3:BypassGovernanceRetention can lift it) or compliance (nobody can).
    #[arg(
        id = "s3-object-lock-mode",
        long = "s3-object-lock-mode",
        env = "S3_OBJECT_LOCK_MODE"
    )]
    pub object_lock_mode: Option<String>,
    /// Multipart part size, 5MiB to 5GiB; default 16MiB.
    #[arg(id = "s3-part-size", long = "s3-part-size", env = "S3_PART_SIZE")]
    pub part_size: Option<String>,
    /// Bound on connecting to the endpoint; default 10s.
    #[arg(
        id = "s3-connect-timeout",
        long = "s3-connect-timeout",
        env = "S3_CONNECT_TIMEOUT"
    )]
    pub connect_timeout: Option<String>,
    /// Bound on waiting for the answer to one request; default 60s.
    #[arg(id = "s3-io-timeout", long = "s3-io-timeout", env = "S3_IO_TIMEOUT")]
    pub io_timeout: Option<String>,
}

/// A refused `S3_*` setting; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct S3ConfigError(pub String);

pub(crate) fn refuse(message: impl Into<String>) -> S3ConfigError {
    S3ConfigError(message.into())
}

impl S3Args {
    /// The checked settings, or `None` when `S3_BUCKET` is unset (or
    /// empty, as Compose passes unset variables).
    pub fn settings(self) -> Result<Option<S3Settings>, S3ConfigError> {
        self.settings_with(secret_from_env("S3_SECRET_ACCESS_KEY")?)
    }

    /// [`S3Args::settings`] with the secret key given (tests; a caller
    /// that reads it elsewhere).
    pub fn settings_with(
        self,
        secret: Option<SecretString>,
    ) -> Result<Option<S3Settings>, S3ConfigError> {
        let Some(bucket) = self.bucket.filter(|b| !b.trim().is_empty()) else {
            return Ok(None);
        };
        let bucket = bucket.trim().to_owned();
        check_bucket(&bucket).map_err(refuse)?;
        let endpoint = self
            .endpoint
            .filter(|e| !e.trim().is_empty())
            .map(|e| check_endpoint(e.trim()))
            .transpose()?;
        let region = self
            .region
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| "us-east-1".into());
        let region = region.trim();
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(refuse(format!(
                "S3_REGION {region:?} must be a region name such as us-east-1 or fr-par"
            )));
        }
        let prefix = normalize_prefix(self.prefix.as_deref().unwrap_or("")).map_err(refuse)?;
        let path_style = match self.path_style.as_deref().map(str::trim) {
            None | Some("") => endpoint.is_some(),
            Some(v) if ["true", "1", "yes", "on"].contains(&v.to_ascii_lowercase().as_str()) => {
                true
            }
            Some(v) if ["false", "0", "no", "off"].contains(&v.to_ascii_lowercase().as_str()) => {
                false
            }
            Some(v) => {
                return Err(refuse(format!(
                    "S3_PATH_STYLE must be true or false, not {v:?}"
                )));
            }
        };
        let access_key_id = self
            .access_key_id
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .ok_or_else(|| refuse("S3_BUCKET is set: S3_ACCESS_KEY_ID is required too"))?;
        let secret_access_key = secret.ok_or_else(|| {
            refuse("S3_BUCKET is set: S3_SECRET_ACCESS_KEY (or S3_SECRET_ACCESS_KEY_FILE) is required too")
        })?;
        let object_lock = object_lock(
            self.object_lock_days.as_deref(),
            self.object_lock_mode.as_deref(),
        )?;
        let part_size = match self.part_size.as_deref() {
            None | Some("") => DEFAULT_PART_SIZE,
            Some(text) => {
                let size = parse_size(text).map_err(|e| refuse(format!("S3_PART_SIZE: {e}")))?;
                if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&size) {
                    return Err(refuse(format!(
                        "S3_PART_SIZE {text:?} must be from 5MiB to 5GiB (S3's limits on a part)"
                    )));
                }
                size
            }
        };
        Ok(Some(S3Settings {
            endpoint,
            region: region.to_owned(),
            bucket,
            prefix,
            path_style,
            access_key_id,
            secret_access_key,
            object_lock,
            part_size,
            connect_timeout: duration(
                "S3_CONNECT_TIMEOUT",
                self.connect_timeout.as_deref(),
                Duration::from_secs(10),
            )?,
            io_timeout: duration(
                "S3_IO_TIMEOUT",
                self.io_timeout.as_deref(),
                Duration::from_secs(60),
            )?,
        }))
    }
}

/// `http(s)://host[:port]`, without credentials, query or fragment.
fn check_endpoint(text: &str) -> Result<String, S3ConfigError> {
    let bad = |why: &str| {
        refuse(format!(
            "S3_ENDPOINT {text:?} {why}; expected http(s)://host[:port], e.g. https://s3.fr-par.scw.cloud"
        ))
    };
    let url = url::Url::parse(text).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must start with http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "must not carry credentials (use S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY)",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

fn object_lock(
    days: Option<&str>,
    mode: Option<&str>,
) -> Result<Option<ObjectLock>, S3ConfigError> {
    let days = days.map(str::trim).filter(|d| !d.is_empty());
    let mode = mode.map(str::trim).filter(|m| !m.is_empty());
    let Some(days) = days else {
        if mode.is_some() {
            return Err(refuse(
                "S3_OBJECT_LOCK_MODE is set but S3_OBJECT_LOCK_DAYS is not: set how many days objects stay locked",
            ));
        }
        return Ok(None);
    };
    let days = days
        .parse::<u32>()
        .ok()
        .filter(|d| (1..=36_500).contains(d))
        .ok_or_else(|| {
            refuse(format!(
                "S3_OBJECT_LOCK_DAYS must be a whole number of days from 1 to 36500, not {days:?}"
            ))
        })?;
    let mode = match mode.map(str::to_ascii_lowercase).as_deref() {
        None | Some("governance") => LockMode::Governance,
        Some("compliance") => LockMode::Compliance,
        Some(other) => {
            return Err(refuse(format!(
                "S3_OBJECT_LOCK_MODE must be governance or compliance, not {other:?}"
            )));
        }
    };
    Ok(Some(ObjectLock { days, mode }))
}

fn duration(
    variable: &str,
    text: Option<&str>,
    default: Duration,
) -> Result<Duration, S3ConfigError> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(default),
        Some(text) => humantime::parse_duration(text)
            .ok()
            .filter(|d| *d >= Duration::from_secs(1))
            .ok_or_else(|| {
                refuse(format!(
                    "{variable} must be a duration of at least 1s such as 30s or 2m, not {text:?}"
                ))
            }),
    }
}

/// Reads a secret from `name` or from the file named by `<name>_FILE`
/// (Docker secrets); one trailing newline in the file is dropped. Empty
/// means unset, as Compose passes unset variables.
pub(crate) fn secret_from_env(name: &str) -> Result<Option<SecretString>, S3ConfigError> {
    let direct = std::env::var_os(name).filter(|v| !v.is_empty());
    let file = std::env::var_os(format!("{name}_FILE")).filter(|v| !v.is_empty());
    match (direct, file) {
        (Some(_), Some(_)) => Err(refuse(format!(
            "{name} and {name}_FILE are both set; keep one"
        ))),
        (Some(value), None) => value
            .into_string()
            .map(|v| Some(SecretString::from(v)))
            .map_err(|_| refuse(format!("{name} is not valid unicode"))),
        (None, Some(path)) => {
            let path = Path::new(&path);
            let mut text = std::fs::read_to_string(path)
                .map_err(|e| refuse(format!("cannot read {name}_FILE {}: {e}", path.display())))?;
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            Ok((!text.is_empty()).then(|| SecretString::from(text)))
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn args() -> S3Args {
        S3Args {
            bucket: Some("backups".into()),
            access_key_id: Some("AKIAEXAMPLE".into()),
            ..S3Args::default()
        }
    }

    fn secret() -> Option<SecretString> {
        Some(SecretString::from("s3cr3t"))
    }

    fn refusal(args: S3Args) -> String {
        let line = args.settings_with(secret()).expect_err("refused").0;
        assert!(!line.contains('\n'), "{line}");
        line
    }

    #[test]
    fn inert_without_a_bucket() {
        assert!(S3Args::default().settings_with(None).unwrap().is_none());
        let empty = S3Args {
            bucket: Some(String::new()),
            ..S3Args::default()
        };
        assert!(empty.settings_with(None).unwrap().is_none());
    }

    #[test]
    fn defaults_for_aws_and_for_an_endpoint() {
        let aws = args().settings_with(secret()).unwrap().unwrap();
        assert_eq!(aws.region, "us-east-1");
        assert!(!aws.path_style);
        assert_eq!(aws.part_size, DEFAULT_PART_SIZE);
        assert_eq!(aws.object_lock, None);
        assert_eq!(aws.secret_access_key.expose_secret(), "s3cr3t");
        let minio = S3Args {
            endpoint: Some("http://127.0.0.1:9000/".into()),
            prefix: Some("/prod/".into()),
            object_lock_days: Some("30".into()),
            part_size: Some("16MiB".into()),
            ..args()
        }
        .settings_with(secret())
        .unwrap()
        .unwrap();
        assert_eq!(minio.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(minio.path_style);
        assert_eq!(minio.prefix, "prod");
        assert_eq!(
            minio.object_lock,
            Some(ObjectLock {
                days: 30,
                mode: LockMode::Governance
            })
        );
        assert_eq!(minio.part_size, 16 << 20);
    }

    #[test]
    fn each_refusal_names_its_variable() {
        let missing_key = S3Args {
            access_key_id: None,
            ..args()
        };
        assert!(refusal(missing_key).contains("S3_ACCESS_KEY_ID"));
        let no_secret = args().settings_with(None).unwrap_err().0;
        assert!(no_secret.contains("S3_SECRET_ACCESS_KEY"), "{no_secret}");
        let cases: Vec<(S3Args, &str)> = vec![
            (
                S3Args {
                    bucket: Some("Bad_Bucket".into()),
                    ..args()
                },
                "S3_BUCKET ",
            ),
            (
                S3Args {
                    endpoint: Some("ftp://x".into()),
                    ..args()
                },
                "S3_ENDPOINT ",
            ),
            (
                S3Args {
                    endpoint: Some("https://user:pw@host".into()),
                    ..args()
                },
                "S3_ENDPOINT ",
            ),
            (
                S3Args {
                    region: Some("us east".into()),
                    ..args()
                },
                "S3_REGION ",
            ),
            (
                S3Args {
                    prefix: Some("a/../b".into()),
                    ..args()
                },
                "S3_PREFIX ",
            ),
            (
                S3Args {
                    path_style: Some("maybe".into()),
                    ..args()
                },
                "S3_PATH_STYLE ",
            ),
            (
                S3Args {
                    object_lock_days: Some("0".into()),
                    ..args()
                },
                "S3_OBJECT_LOCK_DAYS ",
            ),
            (
                S3Args {
                    object_lock_days: Some("7".into()),
                    object_lock_mode: Some("forever".into()),
                    ..args()
                },
                "S3_OBJECT_LOCK_MODE ",
            ),
            (
                S3Args {
                    object_lock_mode: Some("compliance".into()),
                    ..args()
                },
                "S3_OBJECT_LOCK_MODE ",
            ),
            (
                S3Args {
                    part_size: Some("1MiB".into()),
                    ..args()
                },
                "S3_PART_SIZE ",
            ),
            (
                S3Args {
                    io_timeout: Some("0s".into()),
                    ..args()
                },
                "S3_IO_TIMEOUT ",
            ),
        ];
        for (args, variable) in cases {
            let line = refusal(args);
            assert!(line.starts_with(variable), "{variable}: {line}");
        }
    }

    #[test]
    fn flags_and_environment_parse_through_clap() {
        use clap::Parser;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            s3: S3Args,
        }
        let cli = Cli::try_parse_from([
            "x",
            "--s3-bucket",
            "backups",
            "--s3-access-key-id",
            "AKIA",
            "--s3-object-lock-days",
            "7",
            "--s3-object-lock-mode",
            "compliance",
        ])
        .unwrap();
        let settings = cli.s3.settings_with(secret()).unwrap().unwrap();
        assert_eq!(
            settings.object_lock,
            Some(ObjectLock {
                days: 7,
                mode: LockMode::Compliance
            })
        );
    }
}

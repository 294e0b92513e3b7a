//! [`S3Remote`]: the SDK client for one bucket and prefix, how keys are
//! made, and how the destination is described without secrets.
//!
//! The SDK's standard retry is kept, at 3 attempts per request: a single
//! 5xx or reset on part 150 of a large upload should not cost the whole
//! upload. Beyond that nothing retries here; callers own the schedule.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use secrecy::ExposeSecret;

use crate::error::{Context, S3Error};
use crate::settings::S3Settings;

/// Attempts per request, the first included (the SDK's backoff between).
const ATTEMPTS: u32 = 3;

/// A bucket and prefix, reachable with its settings' credentials. Cheap to
/// clone (the SDK client shares its connection pool).
#[derive(Debug, Clone)]
pub struct S3Remote {
    pub(crate) client: Client,
    pub(crate) settings: S3Settings,
    /// `http(s)://host[:port]`, or AWS's regional host; for messages.
    pub(crate) endpoint: String,
}

impl S3Remote {
    /// Builds the client. Nothing is sent: the first request finds out
    /// whether the endpoint, bucket and credentials work.
    pub fn connect(settings: &S3Settings) -> Result<S3Remote, S3Error> {
        if settings.bucket.is_empty() {
            return Err(S3Error::Config("S3_BUCKET is empty".into()));
        }
        let credentials = Credentials::new(
            settings.access_key_id.clone(),
            settings.secret_access_key.expose_secret().to_owned(),
            None,
            None,
            "S3_ACCESS_KEY_ID",
        );
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.io_timeout)
            .build();
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(settings.path_style)
            .timeout_config(timeouts)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(ATTEMPTS)
                    .with_max_backoff(Duration::from_secs(5)),
            )
            // Checksums are chosen per request (SHA-256 on every write),
            // not the SDK's default CRC on top of them.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        let endpoint = settings
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("s3.{}.amazonaws.com", settings.region));
        Ok(S3Remote {
            client: Client::from_conf(config.build()),
            settings: settings.clone(),
            endpoint,
        })
    }

    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }

    /// `<prefix>/<database>/<name>` (no leading `/`; no prefix part when
    /// the prefix is empty).
    pub fn key(&self, database: &str, name: &str) -> String {
        format!("{}/{name}", self.dir_key(database))
    }

    /// `<prefix>/<database>`: the "directory" of a database's objects, as
    /// [`S3Remote::list`] takes it.
    pub fn dir_key(&self, database: &str) -> String {
        if self.settings.prefix.is_empty() {
            database.to_owned()
        } else {
            format!("{}/{database}", self.settings.prefix)
        }
    }

    /// `s3://<bucket>/<prefix> at <endpoint host>`, without secrets.
    pub fn describe(&self) -> String {
        let host = self
            .endpoint
            .split_once("://")
            .map_or(self.endpoint.as_str(), |(_, rest)| rest);
        let mut place = format!("s3://{}", self.settings.bucket);
        if !self.settings.prefix.is_empty() {
            place.push('/');
            place.push_str(&self.settings.prefix);
        }
        format!("{place} at {host}")
    }

    /// `s3://bucket/key`, for messages.
    pub(crate) fn target(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.settings.bucket)
    }

    pub(crate) fn ctx<'a>(&'a self, op: &'static str, target: &'a str) -> Context<'a> {
        Context {
            op,
            target,
            bucket: &self.settings.bucket,
            endpoint: &self.endpoint,
        }
    }
}

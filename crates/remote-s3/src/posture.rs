//! What the bucket promises about history: whether Object Lock is enabled
//! (`GetObjectLockConfiguration`), its default retention, and the
//! retention this writer puts on every object. `backupctl doctor` reports
//! it. One request, not retried beyond the SDK's attempts.

use crate::S3Remote;
use crate::error::{S3Error, classify};
use crate::settings::{LockMode, ObjectLock};

/// The bucket's default retention rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultRetention {
    pub mode: Option<LockMode>,
    pub days: Option<i32>,
    pub years: Option<i32>,
}

/// Object Lock as the bucket has it and as this writer uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posture {
    /// Object Lock is enabled on the bucket (it can only be set when the
    /// bucket is created, or later through the provider's support).
    pub object_lock_enabled: bool,
    /// Retention applied to objects written without one.
    pub default_retention: Option<DefaultRetention>,
    /// The retention this writer puts on every object (`S3_OBJECT_LOCK_*`).
    pub writes_retention: Option<ObjectLock>,
}

impl S3Remote {
    /// Reads the bucket's Object Lock configuration.
    pub async fn posture(&self) -> Result<Posture, S3Error> {
        let target = format!("s3://{}", self.settings.bucket);
        let writes_retention = self.settings.object_lock;
        let answer = self
            .client
            .get_object_lock_configuration()
            .bucket(&self.settings.bucket)
            .send()
            .await;
        let config = match answer {
            Ok(answer) => answer.object_lock_configuration().cloned(),
            Err(error) => {
                use aws_sdk_s3::error::ProvideErrorMetadata as _;
                let code = error
                    .as_service_error()
                    .and_then(|e| e.code())
                    .map(str::to_owned);
                if code.as_deref() == Some("ObjectLockConfigurationNotFoundError") {
                    None
                } else {
                    return Err(classify(
                        error,
                        self.ctx("GetObjectLockConfiguration", &target),
                    ));
                }
            }
        };
        let Some(config) = config else {
            return Ok(Posture {
                object_lock_enabled: false,
                default_retention: None,
                writes_retention,
            });
        };
        let enabled = config
            .object_lock_enabled()
            .is_some_and(|e| e.as_str() == "Enabled");
        let default_retention =
            config
                .rule()
                .and_then(|rule| rule.default_retention())
                .map(|retention| DefaultRetention {
                    mode: retention.mode().and_then(|m| match m.as_str() {
                        "GOVERNANCE" => Some(LockMode::Governance),
                        "COMPLIANCE" => Some(LockMode::Compliance),
                        _ => None,
                    }),
                    days: retention.days(),
                    years: retention.years(),
                });
        Ok(Posture {
            object_lock_enabled: enabled,
            default_retention,
            writes_retention,
        })
    }
}

//! Everything that can go wrong talking to the bucket, as one-line
//! messages that name what the operator set (`S3_ENDPOINT`, `S3_BUCKET`,
//! `S3_ACCESS_KEY_ID`/`S3_SECRET_ACCESS_KEY`), never a secret.
//! [`S3Error::is_transient`] tells callers whether trying again later may
//! help; [`classify`] turns the SDK's errors into these.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use chrono::{DateTime, Utc};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum S3Error {
    /// The settings or arguments cannot work.
    #[error("invalid S3 settings: {0}")]
    Config(String),

    /// The service does not know the key id, or the signature made with
    /// the secret does not match.
    #[error(
        "S3 at {endpoint} refused the credentials ({code}): check S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY"
    )]
    Credentials { endpoint: String, code: String },

    /// The credentials are valid but may not do this.
    #[error(
        "S3 {op} {target} was denied (AccessDenied): the key in S3_ACCESS_KEY_ID lacks the permission, or a bucket policy forbids it"
    )]
    AccessDenied { op: &'static str, target: String },

    #[error("S3 bucket {bucket:?} (S3_BUCKET) does not exist at {endpoint}")]
    NoSuchBucket { bucket: String, endpoint: String },

    #[error("not found in S3: {target}")]
    NotFound { target: String },

    /// Object Lock keeps this version until its retention date.
    #[error("{target} is under Object Lock retention{}; it cannot be deleted before then", until.map(|u| format!(" until {}", u.to_rfc3339())).unwrap_or_default())]
    Locked {
        target: String,
        until: Option<DateTime<Utc>>,
    },

    /// No connection (refused, reset, unreachable, TLS failure, timeout).
    #[error("cannot reach S3 at {endpoint} (S3_ENDPOINT) for {op}: {detail}")]
    Unreachable {
        op: &'static str,
        endpoint: String,
        detail: String,
    },

    /// The service failed or asked to slow down (5xx, throttling).
    #[error("S3 {op} {target} failed on the server side ({status} {code}): {message}")]
    Server {
        op: &'static str,
        target: String,
        status: u16,
        code: String,
        message: String,
    },

    /// The service refused the request for another reason.
    #[error("S3 {op} {target} was refused ({status} {code}): {message}")]
    Rejected {
        op: &'static str,
        target: String,
        status: u16,
        code: String,
        message: String,
    },

    #[error("S3 object {target} is {size} bytes, more than the {max_len} allowed")]
    TooLarge {
        target: String,
        size: u64,
        max_len: u64,
    },

    /// The bytes read for an upload do not hash to the SHA-256 the caller
    /// announced: nothing was written.
    #[error(
        "upload to {target} abandoned: the data read has sha256 {actual}, {expected} was expected"
    )]
    ChecksumMismatch {
        target: String,
        expected: String,
        actual: String,
    },

    /// The data to upload was not the announced size.
    #[error("upload to {target} abandoned: {expected} bytes announced, {actual} read")]
    SizeMismatch {
        target: String,
        expected: u64,
        actual: String,
    },

    /// Reading the data to upload failed.
    #[error("upload to {target} abandoned: reading the data failed: {source}")]
    Source {
        target: String,
        #[source]
        source: std::io::Error,
    },

    /// The service answered something this client cannot use.
    #[error("S3 {op} {target}: unusable answer: {detail}")]
    Protocol {
        op: &'static str,
        target: String,
        detail: String,
    },
}

impl S3Error {
    /// Whether the same call may succeed later without anyone changing
    /// settings, keys or the bucket: network trouble, timeouts, 5xx and
    /// throttling. Refused credentials, a missing bucket, a denied or
    /// locked object need a human (or a date).
    pub fn is_transient(&self) -> bool {
        matches!(self, S3Error::Unreachable { .. } | S3Error::Server { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, S3Error::NotFound { .. })
    }
}

/// Where a request went, for messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context<'a> {
    pub op: &'static str,
    /// `s3://bucket/key`
    pub target: &'a str,
    pub bucket: &'a str,
    pub endpoint: &'a str,
}

/// The [`S3Error`] for an SDK error of the request described by `ctx`.
pub(crate) fn classify<E>(error: SdkError<E, HttpResponse>, ctx: Context<'_>) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = match &error {
        SdkError::ServiceError(service) => Some(service.raw().status().as_u16()),
        _ => None,
    };
    let whole = chain(&error);
    let deepest = dispatch_detail(&error);
    match error {
        SdkError::ConstructionFailure(_) => S3Error::Config(whole),
        SdkError::TimeoutError(_) => S3Error::Unreachable {
            op: ctx.op,
            endpoint: ctx.endpoint.to_owned(),
            detail: "timed out (S3_CONNECT_TIMEOUT / S3_IO_TIMEOUT)".into(),
        },
        SdkError::DispatchFailure(_) => S3Error::Unreachable {
            op: ctx.op,
            endpoint: ctx.endpoint.to_owned(),
            detail: deepest,
        },
        SdkError::ResponseError(_) => S3Error::Unreachable {
            op: ctx.op,
            endpoint: ctx.endpoint.to_owned(),
            detail: format!("the answer was cut off or unreadable: {deepest}"),
        },
        SdkError::ServiceError(service) => {
            let e = service.into_err();
            from_service(
                status.unwrap_or(0),
                e.code().unwrap_or(""),
                e.message().unwrap_or(""),
                ctx,
            )
        }
        _ => S3Error::Protocol {
            op: ctx.op,
            target: ctx.target.to_owned(),
            detail: whole,
        },
    }
}

/// Maps an error answer. HEAD answers have no body, hence no code: their
/// status alone decides.
pub(crate) fn from_service(status: u16, code: &str, message: &str, ctx: Context<'_>) -> S3Error {
    let code_or_status = if code.is_empty() {
        match status {
            403 => "Forbidden",
            404 => "NotFound",
            _ => "",
        }
    } else {
        code
    };
    match code_or_status {
        "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "InvalidToken"
        | "ExpiredToken"
        | "AuthorizationHeaderMalformed" => S3Error::Credentials {
            endpoint: ctx.endpoint.to_owned(),
            code: code_or_status.to_owned(),
        },
        // A HEAD cannot say which: name both the key and its permissions.
        "Forbidden" => S3Error::Credentials {
            endpoint: ctx.endpoint.to_owned(),
            code: format!(
                "403 Forbidden on {} {}, or the key lacks the permission",
                ctx.op, ctx.target
            ),
        },
        "AccessDenied" | "AllAccessDisabled" => S3Error::AccessDenied {
            op: ctx.op,
            target: ctx.target.to_owned(),
        },
        "NoSuchBucket" => S3Error::NoSuchBucket {
            bucket: ctx.bucket.to_owned(),
            endpoint: ctx.endpoint.to_owned(),
        },
        "NoSuchKey" | "NotFound" | "NoSuchUpload" | "NoSuchVersion" => S3Error::NotFound {
            target: ctx.target.to_owned(),
        },
        "SlowDown"
        | "Throttling"
        | "ThrottlingException"
        | "RequestTimeout"
        | "RequestTimeTooSkewed"
        | "InternalError"
        | "ServiceUnavailable" => S3Error::Server {
            op: ctx.op,
            target: ctx.target.to_owned(),
            status,
            code: code_or_status.to_owned(),
            message: one_line(message),
        },
        _ if status >= 500 || status == 429 => S3Error::Server {
            op: ctx.op,
            target: ctx.target.to_owned(),
            status,
            code: code_or_status.to_owned(),
            message: one_line(message),
        },
        _ => S3Error::Rejected {
            op: ctx.op,
            target: ctx.target.to_owned(),
            status,
            code: code_or_status.to_owned(),
            message: one_line(message),
        },
    }
}

/// The innermost useful cause of a connection failure ("Connection
/// refused (os error 111)" rather than "dispatch failure").
fn dispatch_detail(error: &dyn std::error::Error) -> String {
    let mut deepest = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !text.is_empty() {
            deepest = text;
        }
        cause = e.source();
    }
    one_line(&deepest)
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = e.source();
    }
    one_line(&parts.join(": "))
}

pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context<'static> {
        Context {
            op: "PutObject",
            target: "s3://bkt/db/x",
            bucket: "bkt",
            endpoint: "http://127.0.0.1:9000",
        }
    }

    #[test]
    fn answers_map_to_what_the_operator_must_do() {
        let creds = from_service(403, "InvalidAccessKeyId", "no such key", ctx());
        assert!(!creds.is_transient());
        let text = creds.to_string();
        assert!(
            text.contains("S3_ACCESS_KEY_ID") && text.contains("S3_SECRET_ACCESS_KEY"),
            "{text}"
        );
        let head = from_service(403, "", "", ctx()).to_string();
        assert!(head.contains("S3_ACCESS_KEY_ID"), "{head}");
        let bucket = from_service(404, "NoSuchBucket", "", ctx());
        assert!(!bucket.is_transient());
        assert!(bucket.to_string().contains("S3_BUCKET"));
        assert!(from_service(404, "", "", ctx()).is_not_found());
        assert!(from_service(503, "SlowDown", "slow", ctx()).is_transient());
        assert!(from_service(500, "Weird", "x", ctx()).is_transient());
        assert!(!from_service(400, "InvalidArgument", "x", ctx()).is_transient());
        assert!(!from_service(403, "AccessDenied", "x", ctx()).is_transient());
    }
}

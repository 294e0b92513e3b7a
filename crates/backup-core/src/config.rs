//! Configuration shared by every binary: clap argument groups that read the
//! environment, and secrets that come from `NAME` or `NAME_FILE` (Docker
//! secrets) and stay redacted. Secrets are deliberately not clap flags, so
//! they can never be passed on a command line where `ps` would show them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;

pub use secrecy::ExposeSecret;

pub use crate::telemetry::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} and {name}_FILE are both set; keep one")]
    Ambiguous { name: String },
    /// The cause is part of the message and deliberately not a `#[source]`:
    /// error chains (`{:#}`, [`crate::error_chain`]) would repeat it.
    #[error("cannot read {name}_FILE {}: {}{}", path.display(), cause, secret_file_fix(path, cause))]
    SecretFile {
        name: String,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{name} is not valid unicode")]
    NotUnicode { name: String },
    #[error("{0}")]
    Invalid(String),
}

/// Reads a secret from `name`, or from the file named by `<name>_FILE`.
/// A single trailing newline in the file is dropped (editors add one).
pub fn secret_from_env(name: &str) -> Result<Option<SecretString>, ConfigError> {
    let file_var = format!("{name}_FILE");
    // Compose passes unset optional variables as empty strings, and an
    // unused channel's Docker secret as an empty file: both mean "not set".
    let direct = std::env::var_os(name).filter(|v| !v.is_empty());
    let file = std::env::var_os(&file_var).filter(|v| !v.is_empty());
    match (direct, file) {
        (Some(_), Some(_)) => Err(ConfigError::Ambiguous { name: name.into() }),
        (Some(value), None) => value
            .into_string()
            .map(|v| Some(SecretString::from(v)))
            .map_err(|_| ConfigError::NotUnicode { name: name.into() }),
        (None, Some(path)) => read_secret_file(name, Path::new(&path)),
        (None, None) => Ok(None),
    }
}

/// Like [`secret_from_env`], but the secret must be present.
pub fn required_secret(name: &str) -> Result<SecretString, ConfigError> {
    secret_from_env(name)?
        .ok_or_else(|| ConfigError::Invalid(format!("{name} (or {name}_FILE) must be set")))
}

fn read_secret_file(name: &str, path: &Path) -> Result<Option<SecretString>, ConfigError> {
    let mut text = std::fs::read_to_string(path).map_err(|cause| ConfigError::SecretFile {
        name: name.into(),
        path: path.into(),
        cause,
    })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok((!text.is_empty()).then(|| SecretString::from(text)))
}

/// The operator's next step when a secret file cannot be read, in the
/// terms of this process (its user id), so the same text fits a container
/// (the image's user) and a host install.
fn secret_file_fix(path: &Path, cause: &std::io::Error) -> String {
    use std::os::unix::fs::MetadataExt;
    match cause.kind() {
        std::io::ErrorKind::PermissionDenied => {
            let uid = std::fs::metadata("/proc/self")
                .map(|m| m.uid().to_string())
                .unwrap_or_else(|_| "UID".into());
            let file = path.display();
            format!(
                "; the file must be readable by this process's user (uid {uid}): chown {uid} {file} && chmod 0400 {file}"
            )
        }
        std::io::ErrorKind::NotFound => {
            "; the file does not exist (check the path, and the secret's mount in a container)"
                .into()
        }
        _ => String::new(),
    }
}

/// Parses durations such as `26h`, `90s`, `1h 30m` (humantime syntax).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration ({e}); try 90s, 15m or 26h"))
}

/// Checks `HEALTH_LISTEN` when the flags are parsed, so a typo fails at
/// start-up rather than once NATS is reached.
fn parse_listen(text: &str) -> Result<String, String> {
    crate::health::listen_address(Some(text))
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

/// Flags of every binary, `backupctl` included: how to reach NATS and how
/// to log.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// NATS server URL, or a comma-separated list of a cluster's servers
    /// (the client connects to any that answers).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// NATS credentials file (JWT + nkey).
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// NATS user name; the password comes from NATS_PASSWORD or NATS_PASSWORD_FILE.
    #[arg(long, env = "NATS_USER")]
    pub nats_user: Option<String>,
    /// Log output: text for people, json for log collectors.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Flags of the five services: [`CommonArgs`] and what only a long-running
/// service has (shutdown grace, health endpoint), so `backupctl --help`
/// does not offer them.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// How long SIGTERM waits for the unit in flight before releasing it for redelivery.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Serve GET /healthz and /metrics (Prometheus) on this address, e.g.
    /// 127.0.0.1:9464; empty: no endpoint.
    #[arg(long, env = "HEALTH_LISTEN", value_parser = parse_listen)]
    pub health_listen: Option<String>,
    /// Ask the running service's /healthz (on HEALTH_LISTEN) instead of
    /// running; print one line, exit 0 when healthy, 1 when not.
    #[arg(long)]
    pub health_probe: bool,
    /// Copies of the BACKUPS stream JetStream keeps (1..=5): 1 on a single
    /// NATS server, 3 on a three-node cluster. Set the same on every service.
    #[arg(long, env = "NATS_STREAM_REPLICAS", default_value = "1", value_parser = parse_stream_replicas)]
    pub nats_stream_replicas: usize,
}

/// The most replicas JetStream keeps of a stream.
pub const MAX_STREAM_REPLICAS: usize = 5;

/// Checks `NATS_STREAM_REPLICAS`: a count from 1 to 5, as JetStream allows.
pub fn parse_stream_replicas(text: &str) -> Result<usize, String> {
    let range = 1..=MAX_STREAM_REPLICAS;
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|count| range.contains(count))
        .ok_or_else(|| {
            format!(
                "must be a number of replicas from 1 to {MAX_STREAM_REPLICAS} (3 on a three-node NATS cluster)"
            )
        })
}

impl ServiceArgs {
    /// [`CommonArgs::nats_options`] with the stream's replicas, which only
    /// the services look after.
    pub fn nats_options(&self) -> Result<crate::bus::NatsOptions, ConfigError> {
        Ok(crate::bus::NatsOptions {
            stream_replicas: Some(self.nats_stream_replicas),
            ..self.common.nats_options()?
        })
    }

    /// Where the health endpoint listens (`HEALTH_LISTEN`); `None`: nowhere.
    pub fn health_listen_address(
        &self,
    ) -> Result<Option<std::net::SocketAddr>, crate::health::HealthError> {
        crate::health::listen_address(self.health_listen.as_deref())
    }
}

impl std::ops::Deref for ServiceArgs {
    type Target = CommonArgs;

    fn deref(&self) -> &CommonArgs {
        &self.common
    }
}

/// The refusal of a service or command with nowhere to keep backups:
/// neither an SFTP server nor an S3 bucket is configured.
pub const NO_DESTINATION: &str = "no destination is configured: set SFTP_HOST (with SFTP_USER, \
SFTP_DIR, SFTP_KEY_FILE and SFTP_KNOWN_HOSTS) for an SFTP server, or S3_BUCKET (with S3_*) \
for an S3-compatible bucket, or both";

/// Help text appended to every binary, listing the secret variables.
pub const SECRETS_HELP: &str = "Secrets are read from the environment only, never from flags: \
NATS_TOKEN, NATS_PASSWORD and each service's own (PGPASSWORD, SFTP_KEY_PASSPHRASE, \
VERIFY_DATABASE_URL, SMTP_URL...). Each may instead be given as <NAME>_FILE, the path of a \
file holding the value.";

impl CommonArgs {
    /// Resolves the NATS connection settings, reading secrets from the environment.
    pub fn nats_options(&self) -> Result<crate::bus::NatsOptions, ConfigError> {
        let password = secret_from_env("NATS_PASSWORD")?;
        if password.is_some() && self.nats_user.is_none() {
            return Err(ConfigError::Invalid(
                "NATS_PASSWORD is set but NATS_USER is not".into(),
            ));
        }
        crate::bus::seed_servers(&self.nats_url)
            .map_err(|error| ConfigError::Invalid(seed_list_error(error)))?;
        Ok(crate::bus::NatsOptions {
            url: self.nats_url.clone(),
            creds_file: self.nats_creds.clone(),
            token: secret_from_env("NATS_TOKEN")?,
            user: self.nats_user.clone(),
            password,
            stream_replicas: None,
        })
    }
}

/// The line of a `NATS_URL` that does not parse, without the bus error's
/// own prefix: it already names the variable.
fn seed_list_error(error: crate::bus::BusError) -> String {
    match error {
        crate::bus::BusError::Config(line) => line,
        other => other.to_string(),
    }
}

/// The stall interval and deadline of a service's watchdog, each named by
/// the variable that set it. Both must be at least a second: zero would
/// abort every step before its first byte, and events count them in
/// seconds.
pub fn watchdog_limits(
    (stall_variable, stall_after): (&str, Duration),
    (deadline_variable, deadline): (&str, Duration),
) -> Result<crate::watchdog::Limits, ConfigError> {
    const SHORTEST: Duration = Duration::from_secs(1);
    if stall_after < SHORTEST || deadline < SHORTEST {
        return Err(ConfigError::Invalid(format!(
            "{stall_variable} and {deadline_variable} must be at least 1s"
        )));
    }
    Ok(crate::watchdog::Limits::new(stall_after, deadline))
}

/// Splits a comma-separated list, ignoring blanks.
pub fn comma_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn secret_files_lose_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "hunter2\n").unwrap();
        assert_eq!(
            read_secret_file("X", &path)
                .unwrap()
                .expect("present")
                .expose_secret(),
            "hunter2"
        );
        // An empty file (an unused channel's Docker secret) means "not set".
        std::fs::write(&path, "\n").unwrap();
        assert!(read_secret_file("X", &path).unwrap().is_none());
        let err = read_secret_file("X", &dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("X_FILE"), "{err}");
    }

    #[test]
    fn an_unreadable_secret_file_says_its_cause_once_and_the_fix() {
        use std::os::unix::fs::MetadataExt;
        let error = ConfigError::SecretFile {
            name: "SMTP_URL".into(),
            path: "/run/secrets/smtp_url".into(),
            cause: std::io::Error::from_raw_os_error(13),
        };
        // What a binary prints: the anyhow-style chain of the error.
        let chain = crate::error_chain(&error);
        assert_eq!(chain.matches("Permission denied").count(), 1, "{chain}");
        let uid = std::fs::metadata("/proc/self").unwrap().uid();
        assert!(
            chain.starts_with("cannot read SMTP_URL_FILE /run/secrets/smtp_url: Permission denied"),
            "{chain}"
        );
        assert!(
            chain.contains(&format!(
                "chown {uid} /run/secrets/smtp_url && chmod 0400 /run/secrets/smtp_url"
            )),
            "{chain}"
        );
    }

    #[test]
    fn redacted_in_debug() {
        let secret = SecretString::from("hunter2".to_owned());
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn watchdog_limits_are_a_second_or_more_and_name_both_variables() {
        let second = Duration::from_secs(1);
        let limits = watchdog_limits(("STALL", second), ("DEADLINE", 60 * second)).unwrap();
        assert_eq!(limits.stall_after, second);
        assert_eq!(limits.deadline, 60 * second);
        for (stall, deadline) in [
            (Duration::ZERO, second),
            (second, Duration::from_millis(999)),
        ] {
            let error = watchdog_limits(("STALL", stall), ("DEADLINE", deadline))
                .unwrap_err()
                .to_string();
            assert_eq!(error, "STALL and DEADLINE must be at least 1s");
        }
    }

    /// A service's flags, as a binary declares them.
    #[derive(Debug, clap::Parser)]
    struct Service {
        #[command(flatten)]
        service: ServiceArgs,
    }

    fn service(args: &[&str]) -> Result<Service, clap::Error> {
        use clap::Parser;
        Service::try_parse_from(std::iter::once("svc").chain(args.iter().copied()))
    }

    #[test]
    fn stream_replicas_default_to_one_and_go_up_to_five() {
        assert_eq!(
            service(&[]).unwrap().service.nats_stream_replicas,
            1,
            "one NATS server holds one replica"
        );
        for count in ["1", "3", "5"] {
            let parsed = service(&["--nats-stream-replicas", count]).unwrap();
            assert_eq!(parsed.service.nats_stream_replicas.to_string(), count);
            let options = parsed.service.nats_options().unwrap();
            assert_eq!(
                options.stream_replicas,
                parsed.service.nats_stream_replicas.into()
            );
        }
    }

    #[test]
    fn stream_replicas_out_of_range_are_one_line_naming_the_variable() {
        use clap::CommandFactory;
        for bad in ["0", "6", "three", "-1", ""] {
            let flag = format!("--nats-stream-replicas={bad}");
            let error = service(&[&flag]).unwrap_err();
            // The operator set the variable, not the flag: the line names it.
            let line = settings_error(&Service::command(), &error, &["svc".into()]);
            assert!(
                line.starts_with(&format!("NATS_STREAM_REPLICAS {bad:?}: ")),
                "{line}"
            );
            assert!(line.contains("1 to 5") || bad.is_empty(), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn nats_url_takes_a_seed_list() {
        let seeds = "nats://127.0.0.1:14231, nats://127.0.0.1:14232,127.0.0.1:14233";
        let parsed = service(&["--nats-url", seeds]).unwrap();
        let options = parsed.service.nats_options().unwrap();
        let servers = options.servers().unwrap();
        let ports: Vec<u16> = servers.iter().map(async_nats::ServerAddr::port).collect();
        assert_eq!(ports, [14231, 14232, 14233]);
        // backupctl (common flags only) leaves the stream's replicas alone.
        let common = parsed.service.common.nats_options().unwrap();
        assert_eq!(common.stream_replicas, None);
    }

    #[test]
    fn a_bad_seed_names_nats_url_and_never_its_credentials() {
        for (url, shown) in [
            (
                "nats://a:4222,nats://bob:s3cret@b:x",
                "NATS_URL nats://b:x: ",
            ),
            ("http://bob:s3cret@a:4222", "NATS_URL http://a:4222: "),
            (" , ", "NATS_URL is empty"),
        ] {
            let parsed = service(&["--nats-url", url]).unwrap();
            let error = parsed.service.nats_options().unwrap_err().to_string();
            assert!(error.starts_with(shown), "{url}: {error}");
            assert!(
                !error.contains("s3cret") && !error.contains("bob"),
                "{error}"
            );
        }
    }

    #[test]
    fn shown_urls_lose_their_credentials() {
        let options = crate::bus::NatsOptions::local(
            "nats://bob:s3cret@h1:4222/, tls://h2:4223,nats://tok@[::1]:4224",
        );
        assert_eq!(
            options.shown_url(),
            "nats://h1:4222/,tls://h2:4223,nats://[::1]:4224"
        );
        assert_eq!(crate::bus::NatsOptions::local("h:1").shown_url(), "h:1");
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("26h").unwrap(),
            Duration::from_secs(26 * 3600)
        );
        assert!(parse_duration("soon").is_err());
    }
}

/// Parses `gzip`, `zstd`, `gzip:9`, `zstd:19` into a codec and an optional level.
pub fn parse_compression(text: &str) -> Result<(crate::names::Compression, Option<u32>), String> {
    use crate::names::Compression;
    let (codec, level) = match text.split_once(':') {
        Some((codec, level)) => (codec, Some(level)),
        None => (text, None),
    };
    let (codec, range) = match codec.trim() {
        "gzip" => (Compression::Gzip, 1..=9),
        "zstd" => (Compression::Zstd, 1..=22),
        other => {
            return Err(format!(
                "unknown compression {other:?}; use gzip or zstd, optionally with :LEVEL"
            ));
        }
    };
    let level = match level {
        None => None,
        Some(level) => {
            let level: u32 = level
                .trim()
                .parse()
                .map_err(|_| format!("compression level {level:?} is not a number"))?;
            if !range.contains(&level) {
                return Err(format!(
                    "compression level {level} is outside {}..={}",
                    range.start(),
                    range.end()
                ));
            }
            Some(level)
        }
    };
    Ok((codec, level))
}

/// Parses a binary's settings (flags and the environment variables behind
/// them). A bad value ends the process with one line on stderr naming what
/// the operator set, the environment variable unless the flag was on the
/// command line, and exit status 2; `--help` and `--version` print as usual.
pub fn parse_settings<P: clap::Parser>(binary: &str) -> P {
    use clap::error::ErrorKind;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match P::try_parse_from(&args) {
        Ok(parsed) => parsed,
        Err(error) => match error.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => error.exit(),
            _ => {
                let line = settings_error(&P::command(), &error, &args);
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("{binary}: {line}");
                }
                std::process::exit(2)
            }
        },
    }
}

/// One line for a clap error, in the operator's words: `SFTP_PORT "abc":
/// invalid digit found in string` rather than clap's `invalid value 'abc'
/// for '--sftp-port <PORT>'` and its `--help` hint.
pub fn settings_error(
    command: &clap::Command,
    error: &clap::Error,
    args: &[std::ffi::OsString],
) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let on_command_line = |long: &str| {
        args.iter().skip(1).any(|a| {
            a.to_str()
                .is_some_and(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")))
        })
    };
    // What the operator set: the variable, unless the flag was typed.
    let setting = |shown: &str| -> String {
        let flag = shown.split_whitespace().next().unwrap_or(shown);
        let Some(long) = flag.strip_prefix("--") else {
            return shown.to_owned();
        };
        match find_arg(command, long).and_then(|arg| arg.get_env()) {
            Some(env) if !on_command_line(long) => env.to_string_lossy().into_owned(),
            _ => flag.to_owned(),
        }
    };
    let clap_line = || {
        let rendered = error.render().to_string();
        let first = rendered.lines().next().unwrap_or_default();
        crate::one_line(first.strip_prefix("error: ").unwrap_or(first))
    };
    let invalid_arg = error.get(ContextKind::InvalidArg);
    match (error.kind(), invalid_arg) {
        (ErrorKind::MissingRequiredArgument, Some(ContextValue::Strings(missing))) => {
            let names: Vec<String> = missing.iter().map(|m| setting(m)).collect();
            format!("{} must be set", names.join(", "))
        }
        (ErrorKind::InvalidValue | ErrorKind::ValueValidation, Some(ContextValue::String(arg))) => {
            let value = match error.get(ContextKind::InvalidValue) {
                Some(ContextValue::String(value)) => value.clone(),
                _ => String::new(),
            };
            let why = match (
                std::error::Error::source(error),
                error.get(ContextKind::ValidValue),
            ) {
                (Some(cause), _) => crate::error_chain(cause),
                (None, Some(ContextValue::Strings(valid))) => {
                    format!("use one of {}", valid.join(", "))
                }
                (None, _) if value.is_empty() => "must not be empty".to_owned(),
                (None, _) => clap_line(),
            };
            format!("{} {value:?}: {why}", setting(arg))
        }
        _ => clap_line(),
    }
}

/// The argument with this long flag, in the command or its subcommands.
fn find_arg<'a>(command: &'a clap::Command, long: &str) -> Option<&'a clap::Arg> {
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|sub| find_arg(sub, long))
        })
}

/// Runs a binary's fallible body and turns an error into one line on
/// stderr and exit status 2, the convention every binary follows for bad
/// configuration and fatal errors.
pub fn exit_status(name: &str, result: anyhow_like::Result) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // Logs and this line both go to stderr: one of them, not both.
            // A log collector (JSON) gets the event, a person the line.
            if crate::telemetry::format() == Some(LogFormat::Json) {
                tracing::error!(error = %crate::one_line(&error), "{name} stopped");
            } else {
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("{name}: {}", crate::one_line(&error));
                }
            }
            std::process::ExitCode::from(2)
        }
    }
}

/// Errors reach [`exit_status`] already formatted (`format!("{e:#}")` of an
/// `anyhow::Error`), so this crate does not depend on anyhow.
pub mod anyhow_like {
    pub type Result = std::result::Result<(), String>;
}

//! `backupctl doctor`: preflight checks that find a broken set-up at
//! set-up time rather than at 2 a.m. Every piece the pipeline needs is
//! probed the way the services use it: NATS and the services' consumers,
//! each source database (reachable, readable in full, a matching pg_dump),
//! the SFTP target (reachable, pinned host key, key login, writable, free
//! space), the spool, the verifier's scratch server, the age keys, the
//! alert channels and the schedule.
//!
//! Each check is a function returning [`Check`]s (pass; fail with the fix;
//! or skipped because its settings are absent), so a service can run the
//! subset it depends on. [`run`] runs them all at once, each group bounded
//! by a timeout, none waiting on another's success.
//!
//! Retries: none. The doctor reports the state of things at this moment;
//! run it again after a fix. The probes clean up after themselves: a file
//! written, renamed and deleted in the spool and in `SFTP_DIR`, a scratch
//! database created and dropped, and only with `--send-test-alert` one test
//! message per alert channel.

use std::future::Future;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use backup_core::bus::{Bus, NatsOptions, STREAM};
use backup_core::config::{CommonArgs, ExposeSecret, comma_list, parse_duration, secret_from_env};
use backup_core::names::DatabaseName;
use backup_core::pg::{PgArgs, PgTarget, quote_ident};
use backup_core::sftp::SftpArgs;
use chrono::{DateTime, Utc};
use notifier::channels::{Channel, Email, Redactor, Telegram};
use notifier::{EmailSettings, Notice, NoticeKind, TelegramSettings};
use rand::Rng;
use remote_sftp::{RemoteError, SftpRemote};
use secrecy::SecretString;
use serde::Serialize;

use crate::status::{SERVICES, age as time_since, worker_connected};

/// What became of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// Its settings are absent (an optional piece), or an earlier step of
    /// the same probe failed so it could not be looked at.
    Skip,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable dotted name, e.g. `nats.consumer.dumper`, `sftp.host_key`.
    pub name: String,
    /// False only for a failure: a skipped check is not a problem.
    pub ok: bool,
    pub verdict: Verdict,
    /// What was found, one line, free of secrets.
    pub detail: String,
    /// What to do about a failure.
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: impl Into<String>, detail: impl AsRef<str>) -> Check {
        Check::new(name.into(), Verdict::Pass, detail.as_ref(), None)
    }

    pub fn fail(name: impl Into<String>, detail: impl AsRef<str>, fix: impl Into<String>) -> Check {
        Check::new(
            name.into(),
            Verdict::Fail,
            detail.as_ref(),
            Some(fix.into()),
        )
    }

    pub fn skip(name: impl Into<String>, detail: impl AsRef<str>) -> Check {
        Check::new(name.into(), Verdict::Skip, detail.as_ref(), None)
    }

    /// A check that could not run because an earlier step failed.
    fn not_checked(name: impl Into<String>, because: &str) -> Check {
        Check::skip(name, format!("not checked: {because}"))
    }

    fn new(name: String, verdict: Verdict, detail: &str, fix: Option<String>) -> Check {
        Check {
            name,
            ok: verdict != Verdict::Fail,
            verdict,
            detail: backup_core::one_line(detail),
            fix: fix.map(|f| backup_core::one_line(&f)),
        }
    }
}

/// Every check, in a fixed order; `ok` when none failed.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(checks: Vec<Check>) -> Report {
        Report {
            ok: checks.iter().all(|c| c.ok),
            checks,
        }
    }

    pub fn count(&self, verdict: Verdict) -> usize {
        self.checks.iter().filter(|c| c.verdict == verdict).count()
    }

    /// One line per check (`PASS  name: detail`), the fix indented below a
    /// failure, and a summary line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            out.push_str(&format!(
                "{}  {}: {}\n",
                check.verdict.label(),
                check.name,
                check.detail
            ));
            if let Some(fix) = &check.fix {
                out.push_str(&format!("      fix: {fix}\n"));
            }
        }
        out.push_str(&format!(
            "doctor: {} passed, {} failed, {} skipped\n",
            self.count(Verdict::Pass),
            self.count(Verdict::Fail),
            self.count(Verdict::Skip)
        ));
        out
    }
}

/// SFTP settings, all optional so that a missing one is reported as a
/// failed check rather than refused by the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct SftpOptions {
    /// SFTP server host name.
    #[arg(long = "sftp-host", env = "SFTP_HOST")]
    pub host: Option<String>,
    /// SFTP server port.
    #[arg(long = "sftp-port", env = "SFTP_PORT", default_value_t = 22)]
    pub port: u16,
    /// Login on the SFTP server.
    #[arg(long = "sftp-user", env = "SFTP_USER")]
    pub user: Option<String>,
    /// Base directory on the server.
    #[arg(long = "sftp-dir", env = "SFTP_DIR")]
    pub dir: Option<String>,
    /// Private key; its passphrase comes from SFTP_KEY_PASSPHRASE(_FILE).
    #[arg(long = "sftp-key-file", env = "SFTP_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// known_hosts file pinning the server's host key.
    #[arg(long = "sftp-known-hosts", env = "SFTP_KNOWN_HOSTS")]
    pub known_hosts: Option<PathBuf>,
    /// Alternative pin: the host key's SHA256 fingerprint.
    #[arg(long = "sftp-host-fingerprint", env = "SFTP_HOST_FINGERPRINT")]
    pub host_fingerprint: Option<String>,
    /// Time allowed to connect, verify the host and authenticate.
    #[arg(long = "sftp-connect-timeout", env = "SFTP_CONNECT_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// A request unanswered for this long means the connection is dead.
    #[arg(long = "sftp-io-timeout", env = "SFTP_IO_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub io_timeout: Duration,
}

impl SftpOptions {
    /// The services' settings, or which variables are missing.
    pub fn to_args(&self) -> Result<SftpArgs, String> {
        let missing: Vec<&str> = [
            ("SFTP_HOST", self.host.is_none()),
            ("SFTP_USER", self.user.is_none()),
            ("SFTP_DIR", self.dir.is_none()),
            ("SFTP_KEY_FILE", self.key_file.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, absent)| absent.then_some(name))
        .collect();
        match (&self.host, &self.user, &self.dir, &self.key_file) {
            (Some(host), Some(user), Some(dir), Some(key_file)) => Ok(SftpArgs {
                host: host.clone(),
                port: self.port,
                user: user.clone(),
                dir: dir.clone(),
                key_file: key_file.clone(),
                known_hosts: self.known_hosts.clone(),
                host_fingerprint: self.host_fingerprint.clone(),
                connect_timeout: self.connect_timeout,
                io_timeout: self.io_timeout,
            }),
            _ => Err(format!("not configured: {} unset", missing.join(", "))),
        }
    }
}

/// Everything the doctor looks at, read from the same variables the
/// services read. Secrets (passwords, URLs with credentials, tokens) come
/// from the environment only, as in the services.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub pg: PgArgs,
    /// Databases the dumper backs up, comma-separated (default: PGDATABASE).
    #[arg(long, env = "BACKUP_DATABASES")]
    pub databases: Option<String>,
    /// Database backed up when BACKUP_DATABASES is empty.
    #[arg(long = "pg-database", env = "PGDATABASE")]
    pub pg_database: Option<String>,
    /// The dumper's pinned pg_dump directory, if any.
    #[arg(long, env = "PG_BIN_DIR")]
    pub pg_bin_dir: Option<PathBuf>,
    /// The dumper's spool.
    #[arg(
        long,
        env = "BACKUP_SPOOL_DIR",
        default_value = "/var/lib/backup/spool"
    )]
    pub spool_dir: PathBuf,
    #[command(flatten)]
    pub sftp: SftpOptions,
    /// Prefix of the verifier's scratch databases (the probe database uses it too).
    #[arg(long, env = "VERIFY_SCRATCH_PREFIX", default_value = verifier::SCRATCH_PREFIX)]
    pub scratch_prefix: String,
    /// age recipients of the dumper (age1..., comma or space separated).
    #[arg(long, env = "BACKUP_AGE_RECIPIENTS", default_value = "")]
    pub age_recipients: String,
    /// age identity file of the verifier and restores.
    #[arg(long, env = "AGE_IDENTITY_FILE")]
    pub age_identity_file: Option<PathBuf>,
    /// Sender of alert emails.
    #[arg(long, env = "ALERT_EMAIL_FROM")]
    pub email_from: Option<String>,
    /// Recipients of alert emails, comma-separated.
    #[arg(long, env = "ALERT_EMAIL_TO")]
    pub email_to: Option<String>,
    /// SMTP user when not in SMTP_URL (password: SMTP_PASSWORD).
    #[arg(long, env = "SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    /// Telegram chat of the alerts (token: TELEGRAM_BOT_TOKEN).
    #[arg(long, env = "TELEGRAM_CHAT_ID")]
    pub telegram_chat_id: Option<String>,
    /// Telegram Bot API base URL.
    #[arg(long, env = "TELEGRAM_API_URL")]
    pub telegram_api_url: Option<String>,
    /// The dumper's schedule: five cron fields, or `off`.
    #[arg(long, env = "BACKUP_SCHEDULE", default_value = "0 2 * * *")]
    pub schedule: String,
    /// Time zone of the schedule.
    #[arg(long, env = "BACKUP_TZ", default_value = "UTC")]
    pub tz: String,
    /// Also send one test message on every configured alert channel.
    #[arg(long)]
    pub send_test_alert: bool,
    /// One JSON document for scripts: {"ok": bool, "checks": [{name, ok, verdict, detail, fix}]}.
    #[arg(long)]
    pub json: bool,
    /// Give up on any one group of checks after this long (a dead host
    /// must not hang the doctor).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl DoctorArgs {
    /// The dumper's rule: BACKUP_DATABASES, or else PGDATABASE.
    pub fn database_names(&self) -> Result<Vec<DatabaseName>, String> {
        let list = match self.databases.as_deref().filter(|l| !l.trim().is_empty()) {
            Some(list) => list.to_owned(),
            None => self.pg_database.clone().unwrap_or_default(),
        };
        let names = comma_list(&list);
        if names.is_empty() {
            return Err("no database configured: BACKUP_DATABASES and PGDATABASE are unset".into());
        }
        names
            .into_iter()
            .map(|name| {
                DatabaseName::try_from(name.clone())
                    .map_err(|e| format!("BACKUP_DATABASES: {name:?}: {e}"))
            })
            .collect()
    }
}

/// Runs every check, all at once, each group bounded by `args.timeout`.
pub async fn run(common: &CommonArgs, args: &DoctorArgs) -> Report {
    let limit = args.timeout;
    let databases = args.database_names();

    let nats_checks = async {
        match common.nats_options() {
            Ok(options) => {
                bounded(
                    "nats",
                    limit,
                    "check that NATS_URL is reachable from here",
                    nats(&options, &SERVICES),
                )
                .await
            }
            Err(e) => vec![Check::fail(
                "nats",
                e.to_string(),
                "set NATS_USER with NATS_PASSWORD, or NATS_TOKEN, or NATS_CREDS",
            )],
        }
    };
    let postgres_checks = async {
        match &databases {
            Ok(list) => {
                let probes = list.iter().map(|db| {
                    bounded(
                        format!("postgres.{db}"),
                        limit,
                        "check that PGHOST:PGPORT answers from here",
                        postgres(&args.pg, db, args.pg_bin_dir.as_deref()),
                    )
                });
                futures::future::join_all(probes).await.concat()
            }
            Err(e) => vec![Check::fail(
                "postgres",
                e,
                "set BACKUP_DATABASES (comma-separated) or PGDATABASE to the databases to back up",
            )],
        }
    };
    let sftp_checks = async {
        match args.sftp.to_args() {
            Ok(sftp_args) => {
                bounded(
                    "sftp",
                    limit,
                    "check that SFTP_HOST:SFTP_PORT answers from here",
                    sftp(&sftp_args),
                )
                .await
            }
            Err(e) => vec![Check::fail(
                "sftp",
                e,
                "set SFTP_HOST, SFTP_USER, SFTP_DIR, SFTP_KEY_FILE and SFTP_KNOWN_HOSTS (see docs/guides/backup-setup-guide.md)",
            )],
        }
    };
    let spool_checks = bounded(
        "spool",
        limit,
        "the spool's file system does not answer",
        spool(
            &args.spool_dir,
            &args.pg,
            databases.as_deref().unwrap_or_default(),
            limit / 2,
        ),
    );
    let scratch_checks = async {
        match secret_from_env("VERIFY_DATABASE_URL") {
            Ok(Some(url)) => match PgTarget::from_url(url.expose_secret()) {
                Ok(target) => {
                    bounded(
                        "scratch",
                        limit,
                        "check that the scratch server answers from here",
                        async { vec![scratch(&target, &args.scratch_prefix).await] },
                    )
                    .await
                }
                Err(e) => vec![Check::fail(
                    "scratch",
                    format!("VERIFY_DATABASE_URL: {e}"),
                    "VERIFY_DATABASE_URL takes postgresql://user[:password]@host[:port]/dbname",
                )],
            },
            Ok(None) => vec![Check::skip(
                "scratch",
                "not configured (VERIFY_DATABASE_URL unset; the verifier then uses PGHOST/PGUSER)",
            )],
            Err(e) => vec![Check::fail(
                "scratch",
                e.to_string(),
                "set VERIFY_DATABASE_URL or VERIFY_DATABASE_URL_FILE, not both",
            )],
        }
    };
    let alert_checks = bounded(
        "alert",
        limit,
        "an alert service did not answer: check that it is reachable from here",
        alerts(args, databases.as_deref().unwrap_or_default()),
    );

    let (nats_checks, postgres_checks, sftp_checks, spool_checks, scratch_checks, alert_checks) = tokio::join!(
        nats_checks,
        postgres_checks,
        sftp_checks,
        spool_checks,
        scratch_checks,
        alert_checks
    );
    let mut checks = Vec::new();
    checks.extend(nats_checks);
    checks.extend(postgres_checks);
    checks.extend(sftp_checks);
    checks.extend(spool_checks);
    checks.extend(scratch_checks);
    checks.extend(age_keys(
        &args.age_recipients,
        args.age_identity_file.as_deref(),
    ));
    checks.extend(alert_checks);
    checks.push(schedule(&args.schedule, &args.tz, Utc::now()));
    Report::new(checks)
}

/// `checks`, or one failure named `group` if they take longer than `limit`.
async fn bounded(
    group: impl Into<String>,
    limit: Duration,
    fix: &str,
    checks: impl Future<Output = Vec<Check>>,
) -> Vec<Check> {
    match tokio::time::timeout(limit, checks).await {
        Ok(checks) => checks,
        Err(_) => vec![Check::fail(
            group,
            format!("no answer within {limit:?}"),
            fix,
        )],
    }
}

// ---------------------------------------------------------------- NATS

/// How long the NATS connection may take once the port answers.
const NATS_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A worker renews its pull request from time to time; a consumer without
/// one is looked at this many times, a second apart, before it counts as
/// abandoned.
const CONSUMER_LOOKS: u32 = 3;

/// NATS reachable with these credentials, the stream present, and each
/// service's durable consumer present with a worker connected.
pub async fn nats(options: &NatsOptions, services: &[&str]) -> Vec<Check> {
    let shown = url_without_credentials(&options.url);
    let unreachable = |detail: String| {
        let mut checks = vec![Check::fail(
            "nats",
            detail,
            "start nats-server, or correct NATS_URL (host and port as the services see them)",
        )];
        checks.push(Check::not_checked("nats.stream", "NATS is unreachable"));
        checks
    };
    // A plain TCP probe first: the client retries forever on a refused
    // connection, and "refused" is the clearest thing to report.
    if let Some((host, port)) = nats_address(&options.url) {
        let probe = tokio::net::TcpStream::connect((host.as_str(), port));
        match tokio::time::timeout(Duration::from_secs(5), probe).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return unreachable(format!("cannot reach {shown}: {e}")),
            Err(_) => return unreachable(format!("no answer from {shown} within 5s")),
        }
    }
    let who = match (&options.user, &options.token, &options.creds_file) {
        (Some(user), _, _) => format!("as user {user}"),
        (None, Some(_), _) => "with a token".to_owned(),
        (None, None, Some(path)) => format!("with credentials {}", path.display()),
        (None, None, None) => "without credentials".to_owned(),
    };
    let shutdown = backup_core::shutdown::CancellationToken::new();
    let connect = Bus::connect(options, "backupctl-doctor", &shutdown);
    let bus = match tokio::time::timeout(NATS_CONNECT_TIMEOUT, connect).await {
        Ok(Ok(bus)) => bus,
        Ok(Err(error)) => {
            let fix = match &error {
                backup_core::bus::BusError::Auth { .. } => {
                    "check NATS_USER and NATS_PASSWORD (or NATS_TOKEN, NATS_CREDS) against the server's authorization settings"
                }
                _ => "check NATS_URL and NATS_CREDS",
            };
            let mut checks = vec![Check::fail("nats", format!("{error} ({who})"), fix)];
            checks.push(Check::not_checked(
                "nats.stream",
                "could not connect to NATS",
            ));
            return checks;
        }
        Err(_) => {
            shutdown.cancel();
            return unreachable(format!(
                "{shown} accepts connections but no NATS session started within {NATS_CONNECT_TIMEOUT:?}"
            ));
        }
    };
    let mut checks = vec![Check::pass("nats", format!("connected to {shown} {who}"))];
    let user = options.user.as_deref();
    let refusal = |subject: &str| {
        bus.refused().contains(subject).then(|| {
            format!(
                "NATS refused {subject} to {}: a permissions violation, not a missing piece",
                user.map_or_else(|| "this connection".to_owned(), |u| format!("user {u}"))
            )
        })
    };
    let stream_subject = format!("$JS.API.STREAM.INFO.{STREAM}");
    let mut stream = match bus.jetstream().get_stream(STREAM).await {
        Ok(stream) => stream,
        Err(e) => {
            checks.push(match refusal(&stream_subject) {
                Some(refused) => Check::fail("nats.stream", refused, OPERATOR_FIX),
                None => Check::fail(
                    "nats.stream",
                    format!("the {STREAM} stream is missing or unreadable: {e}"),
                    "start any service once: each creates the stream at start-up (or grant this NATS user JetStream access)",
                ),
            });
            for service in services {
                checks.push(Check::not_checked(
                    format!("nats.consumer.{service}"),
                    "no stream",
                ));
            }
            return checks;
        }
    };
    checks.push(match stream.info().await {
        Ok(info) => {
            let subjects = &info.config.subjects;
            let covers = ["backup.>", "dump.>"]
                .iter()
                .all(|s| subjects.iter().any(|have| have == s));
            if covers {
                Check::pass(
                    "nats.stream",
                    format!(
                        "{STREAM} holds {} messages on {}",
                        info.state.messages,
                        subjects.join(", ")
                    ),
                )
            } else {
                Check::fail(
                    "nats.stream",
                    format!("{STREAM} captures {} only", subjects.join(", ")),
                    "restart any service: each brings the stream's subjects up to date at start-up",
                )
            }
        }
        Err(e) => Check::fail(
            "nats.stream",
            format!("cannot read the {STREAM} stream: {e}"),
            "grant this NATS user JetStream access to the stream",
        ),
    });
    let consumers = services
        .iter()
        .map(|service| consumer(&bus, &stream, service, user));
    checks.extend(futures::future::join_all(consumers).await);
    checks
}

/// The fix for a permission refusal: the services' own NATS users may see
/// only their own consumer; the operator's user sees everything.
const OPERATOR_FIX: &str = "run the doctor with the operator's NATS credentials (NATS_USER=operator and its password; in compose: docker compose run --rm backupctl doctor), or grant this user the subject in the NATS authorization";

async fn consumer(bus: &Bus, stream: &Stream, service: &str, user: Option<&str>) -> Check {
    let name = format!("nats.consumer.{service}");
    let subject = format!("$JS.API.CONSUMER.INFO.{STREAM}.{service}");
    let mut look = 0;
    loop {
        look += 1;
        let info = match stream.consumer_info(service).await {
            Ok(info) => info,
            Err(_) if bus.refused().contains(&subject) => {
                let who = user.map_or_else(
                    || "this connection".to_owned(),
                    |u| format!("NATS user {u}"),
                );
                // A service's user sees only its own consumer: another's
                // is not this user's business, its own is.
                return if user.is_some_and(|u| u != service) {
                    Check::skip(
                        name,
                        format!(
                            "not visible to {who} (NATS refused {subject}); check it with the operator's credentials"
                        ),
                    )
                } else {
                    Check::fail(
                        name,
                        format!("NATS refused {subject} to {who}: a permissions violation"),
                        OPERATOR_FIX,
                    )
                };
            }
            Err(e) => {
                return Check::fail(
                    name,
                    format!("no durable consumer {service} on {STREAM} ({e})"),
                    format!("start the {service} service: it creates its consumer at start-up"),
                );
            }
        };
        if worker_connected(&info) {
            return Check::pass(
                name,
                format!(
                    "a worker is connected ({} messages pending, {} in hand)",
                    info.num_pending, info.num_ack_pending
                ),
            );
        }
        if look >= CONSUMER_LOOKS {
            let last = info
                .delivered
                .last_active
                .and_then(|at| DateTime::<Utc>::from_timestamp(at.unix_timestamp(), 0))
                .map_or_else(
                    || "no delivery on record".to_owned(),
                    |at| format!("last delivery {} ago", time_since(at, Utc::now())),
                );
            return Check::fail(
                name,
                format!(
                    "the consumer exists but no worker is connected ({last}; {} messages pending)",
                    info.num_pending
                ),
                format!(
                    "start the {service} service, or read its log if it is running (it may be stuck connecting elsewhere)"
                ),
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `host` and `port` of the first server in a `NATS_URL`.
fn nats_address(url: &str) -> Option<(String, u16)> {
    let first = url.split(',').next()?.trim();
    let rest = first.split_once("://").map_or(first, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        let port = after
            .strip_prefix(':')
            .map_or(Some(4222), |p| p.parse().ok())?;
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None if !authority.is_empty() => Some((authority.to_owned(), 4222)),
        None => None,
    }
}

/// A URL with any `user:password@` removed, safe to print.
fn url_without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}{path}")
}

// ---------------------------------------------------------- PostgreSQL

const PG_FIX: &str = "check PGHOST, PGPORT, PGUSER and PGPASSWORD (or PGPASSWORD_FILE), and that pg_hba.conf admits this host and role";

/// Relations pg_dump reads (tables, partitioned tables, sequences) that
/// the current role cannot: no SELECT, or no USAGE on the schema (pg_dump
/// locks every table it dumps, which needs both). Superusers and members
/// of `pg_read_all_data` have both everywhere, so one query covers the
/// three ways to be allowed. Objects of extensions are dumped as
/// `CREATE EXTENSION`, not read.
const UNREADABLE_SQL: &str = "\
SELECT format('%I.%I', n.nspname, c.relname),
       count(*) OVER () AS unreadable,
       (SELECT count(*) FROM pg_class c2 JOIN pg_namespace n2 ON n2.oid = c2.relnamespace
         WHERE c2.relkind IN ('r', 'p', 'S')
           AND n2.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n2.nspname NOT LIKE 'pg\\_toast%' AND n2.nspname NOT LIKE 'pg\\_temp%') AS total
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
  AND NOT (has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT'))
ORDER BY 1";

const TOTAL_SQL: &str = "\
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'";

/// One source database: reachable (`postgres.<db>`), readable in full by
/// this role (`postgres.<db>.privileges`), and a pg_dump at least as new
/// as the server, chosen as the dumper chooses (`postgres.<db>.pg_dump`).
pub async fn postgres(
    pg: &PgArgs,
    database: &DatabaseName,
    pg_bin_dir: Option<&Path>,
) -> Vec<Check> {
    let connect_name = format!("postgres.{database}");
    let privileges_name = format!("postgres.{database}.privileges");
    let pg_dump_name = format!("postgres.{database}.pg_dump");
    let unreachable = |check: Check| {
        vec![
            check,
            Check::not_checked(&privileges_name, "no connection"),
            Check::not_checked(&pg_dump_name, "no server version"),
        ]
    };
    let target = match pg.target(database.as_str()) {
        Ok(target) => target,
        Err(e) => return unreachable(Check::fail(&connect_name, e.to_string(), PG_FIX)),
    };
    let client = match target.connect("backupctl-doctor").await {
        Ok(client) => client,
        Err(e) => return unreachable(Check::fail(&connect_name, e.to_string(), PG_FIX)),
    };
    let row = match client
        .query_one(
            "SELECT current_setting('server_version'), \
                    current_setting('server_version_num')::int, \
                    current_user::text, \
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                    coalesce((SELECT pg_has_role(current_user, oid, 'USAGE') \
                              FROM pg_roles WHERE rolname = 'pg_read_all_data'), false)",
            &[],
        )
        .await
    {
        Ok(row) => row,
        Err(e) => {
            return unreachable(Check::fail(
                &connect_name,
                target.query_error(&e).to_string(),
                PG_FIX,
            ));
        }
    };
    let version: String = row.get(0);
    let version_num: i32 = row.get(1);
    let role: String = row.get(2);
    let superuser: bool = row.get::<_, Option<bool>>(3).unwrap_or(false);
    let reads_all: bool = row.get(4);
    let mut checks = vec![Check::pass(
        &connect_name,
        format!("connected as {}, PostgreSQL {version}", target.describe()),
    )];

    checks.push(match client.query(UNREADABLE_SQL, &[]).await {
        Ok(rows) if rows.is_empty() => {
            let how = if superuser {
                "superuser".to_owned()
            } else if reads_all {
                "member of pg_read_all_data".to_owned()
            } else {
                let total = client
                    .query_one(TOTAL_SQL, &[])
                    .await
                    .map(|r| r.get::<_, i64>(0))
                    .unwrap_or(0);
                format!("SELECT on all {total} tables and sequences")
            };
            Check::pass(&privileges_name, format!("{role} can dump everything ({how})"))
        }
        Ok(rows) => {
            let unreadable: i64 = rows[0].get(1);
            let total: i64 = rows[0].get(2);
            let names: Vec<String> = rows.iter().take(5).map(|r| r.get(0)).collect();
            let more = if unreadable > 5 { ", …" } else { "" };
            let fix = if version_num >= 140_000 {
                format!(
                    "GRANT pg_read_all_data TO {}; (or run the dumper as the owner of every table)",
                    quote_ident(&role)
                )
            } else {
                "GRANT SELECT ON ALL TABLES IN SCHEMA <schema> TO the role, and the same ON ALL SEQUENCES, with USAGE on each schema (or run the dumper as the owner of every table)".to_owned()
            };
            Check::fail(
                &privileges_name,
                format!(
                    "{role} cannot read {unreadable} of {total} tables and sequences: {}{more}; pg_dump would fail",
                    names.join(", ")
                ),
                fix,
            )
        }
        Err(e) => Check::fail(
            &privileges_name,
            target.query_error(&e).to_string(),
            "run doctor as the dumper's role on this database",
        ),
    });

    let major = dumper::pg_dump::server_major(u32::try_from(version_num).unwrap_or(0));
    checks.push(match dumper::pg_dump::select(major, pg_bin_dir).await {
        Ok((path, pg_dump_version)) => Check::pass(
            &pg_dump_name,
            format!(
                "{pg_dump_version} at {} can dump this PostgreSQL {major} server",
                path.display()
            ),
        ),
        Err(e) => Check::fail(
            &pg_dump_name,
            e.to_string(),
            format!(
                "install postgresql-client-{major} (or newer) beside the dumper, or point PG_BIN_DIR at such a pg_dump's directory"
            ),
        ),
    });
    checks
}

// ---------------------------------------------------------------- SFTP

/// The SFTP target: the host answers SSH (`sftp.host`, with the presented
/// fingerprint), its key matches the pin (`sftp.host_key`), the key login
/// works (`sftp.auth`), `SFTP_DIR` takes a file written, renamed and
/// deleted (`sftp.write`), and the free space the server reports
/// (`sftp.space`).
pub async fn sftp(args: &SftpArgs) -> Vec<Check> {
    const LATER: [&str; 4] = ["sftp.host_key", "sftp.auth", "sftp.write", "sftp.space"];
    let settings = match args.settings() {
        Ok(settings) => settings,
        Err(e) => {
            return vec![Check::fail(
                "sftp",
                e.to_string(),
                "pin the host key with SFTP_KNOWN_HOSTS (ssh-keyscan -p PORT HOST, checked out of band) or SFTP_HOST_FINGERPRINT; SFTP_DIR is a directory on the server without `..` components",
            )];
        }
    };
    let target = format!("{}:{}", settings.host, settings.port);
    let mut checks = Vec::new();
    let skip_from = |checks: &mut Vec<Check>, from: usize, because: &str| {
        for name in &LATER[from..] {
            checks.push(Check::not_checked(*name, because));
        }
    };

    let presented = match SftpRemote::presented_host_key(&settings).await {
        Ok(fingerprint) => {
            checks.push(Check::pass(
                "sftp.host",
                format!("{target} answers SSH and presents host key {fingerprint}"),
            ));
            fingerprint
        }
        Err(e) => {
            checks.push(Check::fail(
                "sftp.host",
                e.to_string(),
                "check SFTP_HOST and SFTP_PORT, that sshd runs there, and that no firewall blocks this host",
            ));
            skip_from(&mut checks, 0, "the host is unreachable");
            return checks;
        }
    };
    if let Err((detail, fix)) = key_file_usable(&settings.key_file) {
        checks.push(Check::not_checked(
            "sftp.host_key",
            "the login key is unusable, so no session was opened",
        ));
        checks.push(Check::fail("sftp.auth", detail, fix));
        skip_from(&mut checks, 2, "no login");
        return checks;
    }
    let pin = match (&settings.known_hosts, &settings.host_key_fingerprint) {
        (Some(path), _) => format!("SFTP_KNOWN_HOSTS {}", path.display()),
        (None, Some(fingerprint)) => format!("SFTP_HOST_FINGERPRINT {fingerprint}"),
        (None, None) => "no pin".to_owned(),
    };
    let remote = match SftpRemote::connect(&settings).await {
        Ok(remote) => remote,
        Err(
            e @ (RemoteError::HostKeyChanged { .. }
            | RemoteError::HostKeyUnknown { .. }
            | RemoteError::Config(_)),
        ) => {
            checks.push(Check::fail(
                "sftp.host_key",
                e.to_string(),
                format!(
                    "if the server's key really changed, confirm {presented} out of band (ssh-keygen -lf on the server) and update {pin}; otherwise do not connect: someone may be in the middle"
                ),
            ));
            skip_from(&mut checks, 1, "the host key is not trusted");
            return checks;
        }
        Err(e @ RemoteError::KeyFile { .. }) => {
            // The key is read before the server is contacted.
            checks.push(Check::not_checked(
                "sftp.host_key",
                "the login key is unusable, so no session was opened",
            ));
            checks.push(Check::fail(
                "sftp.auth",
                e.to_string(),
                "SFTP_KEY_FILE must hold an OpenSSH or PEM private key (ed25519 or RSA); a protected key needs SFTP_KEY_PASSPHRASE (or SFTP_KEY_PASSPHRASE_FILE)",
            ));
            skip_from(&mut checks, 2, "no login");
            return checks;
        }
        Err(e @ RemoteError::AuthRejected { .. }) => {
            checks.push(Check::pass(
                "sftp.host_key",
                format!("{presented} matches {pin}"),
            ));
            checks.push(Check::fail(
                "sftp.auth",
                e.to_string(),
                format!(
                    "add the public key of SFTP_KEY_FILE (ssh-keygen -y -f KEY) to ~{}/.ssh/authorized_keys on the server; a protected key needs SFTP_KEY_PASSPHRASE",
                    settings.user
                ),
            ));
            skip_from(&mut checks, 2, "no login");
            return checks;
        }
        Err(e) => {
            checks.push(Check::not_checked(
                "sftp.host_key",
                "the connection failed before the key was judged",
            ));
            checks.push(Check::fail(
                "sftp.auth",
                e.to_string(),
                "check that the server offers the sftp subsystem to this user and answers in time",
            ));
            skip_from(&mut checks, 2, "no login");
            return checks;
        }
    };
    checks.push(Check::pass(
        "sftp.host_key",
        format!("{presented} matches {pin}"),
    ));
    checks.push(Check::pass(
        "sftp.auth",
        format!(
            "{} logged in with {} and started SFTP{}",
            settings.user,
            settings.key_file.display(),
            if args.dir.starts_with('/') {
                String::new()
            } else {
                format!(
                    "; SFTP_DIR {:?} is {} (relative to the login directory)",
                    args.dir,
                    remote.resolve(&args.dir)
                )
            }
        ),
    ));
    checks.push(sftp_write(&remote, args).await);
    checks.push(match remote.free_space(&args.dir).await {
        Ok(Some(free)) if free < MIB => Check::fail(
            "sftp.space",
            format!("{} is full ({free} bytes free)", args.dir),
            "free space on the SFTP server (old backups, other data), or raise the account's quota",
        ),
        Ok(Some(free)) => Check::pass(
            "sftp.space",
            format!("{} free on the file system of {}", mib(free), args.dir),
        ),
        Ok(None) => Check::skip(
            "sftp.space",
            "the server does not report free space (no statvfs@openssh.com)",
        ),
        Err(e) => Check::fail(
            "sftp.space",
            e.to_string(),
            "the server refused statvfs; check the directory exists and is readable",
        ),
    });
    let _ = remote.close().await;
    checks
}

/// `SFTP_KEY_FILE` exists, is a file, and is private to its owner (as
/// OpenSSH demands of a private key): the detail and the fix otherwise.
fn key_file_usable(path: &Path) -> Result<(), (String, String)> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err((
            format!("SFTP_KEY_FILE {shown} does not exist"),
            format!(
                "point SFTP_KEY_FILE at the private key (in compose, the secret's mount); to make one: ssh-keygen -t ed25519 -N '' -f {shown}, then add {shown}.pub to the server's authorized_keys"
            ),
        )),
        Err(e) => Err((
            format!("cannot read SFTP_KEY_FILE {shown}: {e}"),
            format!("make {shown} readable by this user, mode 0600"),
        )),
        Ok(meta) if !meta.is_file() => Err((
            format!("SFTP_KEY_FILE {shown} is not a file"),
            "point SFTP_KEY_FILE at the private key file".into(),
        )),
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => Err((
            format!(
                "SFTP_KEY_FILE {shown} has mode {:04o}: other users can read the private key",
                meta.permissions().mode() & 0o7777
            ),
            format!("chmod 0600 {shown} (and consider replacing the key if others could read it)"),
        )),
        Ok(_) => Ok(()),
    }
}

async fn sftp_write(remote: &SftpRemote, args: &SftpArgs) -> Check {
    let dir = args.dir.trim_end_matches('/');
    let write_fix = format!(
        "give {} write access to {} on the server (the shipper creates <database>/ there and renames files into it)",
        args.user, args.dir
    );
    // The shipper creates the base directory the same way.
    if let Err(e) = remote.create_dir_all(dir).await {
        return Check::fail("sftp.write", e.to_string(), write_fix);
    }
    let probe = format!("{dir}/{}", probe_name());
    if let Err(e) = remote
        .write_file_atomic(&probe, b"backupctl doctor probe\n")
        .await
    {
        let fix = match e {
            RemoteError::NoSpace { .. } => {
                "free space on the SFTP server, or raise the account's quota".to_owned()
            }
            _ => write_fix,
        };
        return Check::fail("sftp.write", e.to_string(), fix);
    }
    if let Err(e) = remote.remove_file(&probe).await {
        return Check::fail(
            "sftp.write",
            format!("wrote {probe} but could not delete it: {e}"),
            format!(
                "the pruner deletes old backups: give {} delete rights in {}, and remove {probe} by hand",
                args.user, args.dir
            ),
        );
    }
    let features = remote.features();
    let rename = if features.posix_rename {
        "atomic renames"
    } else {
        "renames without posix-rename (remove then rename)"
    };
    Check::pass(
        "sftp.write",
        format!("wrote, renamed and deleted a probe file in {dir} ({rename})"),
    )
}

// --------------------------------------------------------------- spool

const MIB: u64 = 1 << 20;

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / MIB)
}

/// `.backupctl-doctor-<hex>`: a name no service reads as an artifact.
fn probe_name() -> String {
    format!(".backupctl-doctor-{:016x}", rand::rng().random::<u64>())
}

/// The spool: a directory this user can write (a file written, fsynced,
/// renamed and deleted: `spool.write`), with room for the next dump of
/// every database as the dumper estimates it (`spool.space`). The size of
/// each database is asked within `size_timeout`; an unreachable server
/// leaves only the dumper's fixed minimum to check.
pub async fn spool(
    dir: &Path,
    pg: &PgArgs,
    databases: &[DatabaseName],
    size_timeout: Duration,
) -> Vec<Check> {
    let write = spool_write(dir);
    let space = if write.ok {
        spool_space(dir, pg, databases, size_timeout).await
    } else {
        Check::not_checked("spool.space", "the spool is not usable")
    };
    vec![write, space]
}

pub fn spool_write(dir: &Path) -> Check {
    let fix = format!(
        "make {} a directory the dumper's user owns (install -d -m 0700 -o USER {}), on a writable file system",
        dir.display(),
        dir.display()
    );
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Check::fail(
                "spool.write",
                format!("{} is not a directory", dir.display()),
                fix,
            );
        }
        Err(e) => {
            return Check::fail(
                "spool.write",
                format!("cannot use the spool {}: {e}", dir.display()),
                fix,
            );
        }
    }
    // What the dumper does with every artifact: write a .partial, fsync,
    // rename; then what the pruner does: delete.
    let name = probe_name();
    let partial = dir.join(format!("{name}.partial"));
    let done = dir.join(&name);
    let attempt = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)?;
        file.write_all(b"backupctl doctor probe\n")?;
        file.sync_all()?;
        std::fs::rename(&partial, &done)?;
        std::fs::remove_file(&done)
    })();
    match attempt {
        Ok(()) => Check::pass(
            "spool.write",
            format!(
                "wrote, renamed and deleted a probe file in {}",
                dir.display()
            ),
        ),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            let _ = std::fs::remove_file(&done);
            Check::fail(
                "spool.write",
                format!("cannot write in the spool {}: {e}", dir.display()),
                fix,
            )
        }
    }
}

pub async fn spool_space(
    dir: &Path,
    pg: &PgArgs,
    databases: &[DatabaseName],
    size_timeout: Duration,
) -> Check {
    let free = match available_bytes(dir) {
        Ok(free) => free,
        Err(e) => {
            return Check::fail(
                "spool.space",
                format!("statvfs {}: {e}", dir.display()),
                "check the spool's file system",
            );
        }
    };
    if databases.is_empty() {
        return Check::skip(
            "spool.space",
            format!(
                "{} free; no database configured to estimate a dump",
                mib(free)
            ),
        );
    }
    let sizes = futures::future::join_all(databases.iter().map(|database| async move {
        match tokio::time::timeout(size_timeout, database_size(pg, database)).await {
            Ok(Ok(size)) => Some(size),
            _ => None,
        }
    }))
    .await;
    let mut enough = Vec::new();
    let mut problems = Vec::new();
    for (database, size) in databases.iter().zip(sizes) {
        let (size, known) = size.map_or((0, false), |size| (size, true));
        // The dumper keeps its size statistics in the database's directory.
        let db_dir = dir.join(database.as_str());
        let stats_dir = if db_dir.is_dir() {
            db_dir
        } else {
            dir.to_owned()
        };
        match dumper::space::check_free_space(&stats_dir, database, size) {
            Ok(()) if known => enough.push(format!("{database} ({})", mib(size))),
            Ok(()) => enough.push(format!(
                "{database} (size unknown: PostgreSQL unreachable; only the minimum checked)"
            )),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        Check::pass(
            "spool.space",
            format!(
                "{} free in {}: room for the next dump of {}",
                mib(free),
                dir.display(),
                enough.join(", ")
            ),
        )
    } else {
        Check::fail(
            "spool.space",
            problems.join("; "),
            format!(
                "free space in {} or move BACKUP_SPOOL_DIR to a larger file system; artifacts that were shipped can go (the pruner keeps SPOOL_KEEP_LAST of them)",
                dir.display()
            ),
        )
    }
}

/// Bytes of `dir`'s file system available to unprivileged users, as the
/// dumper counts them.
#[allow(clippy::useless_conversion)] // the field types differ between platforms
fn available_bytes(dir: &Path) -> nix::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir)?;
    Ok(u64::from(stat.blocks_available()) * u64::from(stat.fragment_size()))
}

async fn database_size(pg: &PgArgs, database: &DatabaseName) -> Result<u64, String> {
    let target = pg.target(database.as_str()).map_err(|e| e.to_string())?;
    let client = target
        .connect("backupctl-doctor")
        .await
        .map_err(|e| e.to_string())?;
    let row = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .map_err(|e| target.query_error(&e).to_string())?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

// ------------------------------------------------------------- scratch

/// The verifier's scratch server lets its role create and drop a database
/// (`<prefix>_<12 hex digits>`, the verifier's own naming, so a leftover is
/// swept by the verifier at its next start).
pub async fn scratch(target: &PgTarget, prefix: &str) -> Check {
    if !verifier::valid_scratch_prefix(prefix) {
        return Check::fail(
            "scratch",
            format!("VERIFY_SCRATCH_PREFIX {prefix:?} is not a plain identifier"),
            "use [a-z][a-z0-9_]*, at most 40 characters",
        );
    }
    let where_ = target.describe();
    let client = match target.connect("backupctl-doctor").await {
        Ok(client) => client,
        Err(e) => {
            return Check::fail(
                "scratch",
                e.to_string(),
                "check VERIFY_DATABASE_URL (host, port, role, password) and that the scratch server admits this host",
            );
        }
    };
    let name = format!(
        "{prefix}_{:012x}",
        rand::rng().random::<u64>() & 0xffff_ffff_ffff
    );
    if let Err(e) = client
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE template0",
            quote_ident(&name)
        ))
        .await
    {
        return Check::fail(
            "scratch",
            format!(
                "CREATE DATABASE refused on {where_}: {}",
                backup_core::error_chain(&e)
            ),
            format!(
                "on the scratch server (never production): ALTER ROLE {} CREATEDB;",
                quote_ident(&target.user)
            ),
        );
    }
    if let Err(e) = client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&name)
        ))
        .await
    {
        return Check::fail(
            "scratch",
            format!(
                "created {name} on {where_} but could not drop it: {}",
                backup_core::error_chain(&e)
            ),
            format!(
                "drop {name} by hand; the verifier's role must be able to drop what it creates"
            ),
        );
    }
    Check::pass("scratch", format!("created and dropped {name} on {where_}"))
}

// ----------------------------------------------------------------- age

/// `BACKUP_AGE_RECIPIENTS` parse (`age.recipients`), and the identity of
/// `AGE_IDENTITY_FILE` opens what is encrypted to one of them
/// (`age.identity`), tried for real with a small message per recipient.
pub fn age_keys(recipients: &str, identity: Option<&Path>) -> Vec<Check> {
    let parsed = if recipients.trim().is_empty() {
        None
    } else {
        Some(dumper::compress::parse_recipients(recipients))
    };
    let recipients_check = match &parsed {
        None => Check::skip(
            "age.recipients",
            "not configured (BACKUP_AGE_RECIPIENTS empty): backups are not encrypted",
        ),
        Some(Ok(list)) => Check::pass(
            "age.recipients",
            format!(
                "{} recipient(s): {}",
                list.len(),
                list.iter()
                    .map(|r| short_key(&r.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Some(Err(e)) => Check::fail(
            "age.recipients",
            format!("BACKUP_AGE_RECIPIENTS: {e}"),
            "list age X25519 public keys (age1…), as `age-keygen -y IDENTITY_FILE` prints them, separated by commas",
        ),
    };
    let identity_check = match (identity, &parsed) {
        (None, _) => Check::skip(
            "age.identity",
            "not configured here (AGE_IDENTITY_FILE unset): set it where the verifier runs",
        ),
        (Some(_), None) => Check::skip(
            "age.identity",
            "no BACKUP_AGE_RECIPIENTS here to match AGE_IDENTITY_FILE against",
        ),
        (Some(_), Some(Err(_))) => {
            Check::not_checked("age.identity", "the recipients do not parse")
        }
        (Some(path), Some(Ok(list))) => identity_matches(path, list),
    };
    vec![recipients_check, identity_check]
}

fn identity_matches(path: &Path, recipients: &[age::x25519::Recipient]) -> Check {
    let identities = match age::IdentityFile::from_file(path.to_string_lossy().into_owned())
        .map_err(|e| e.to_string())
        .and_then(|file| file.into_identities().map_err(|e| e.to_string()))
    {
        Ok(identities) => identities,
        Err(e) => {
            return Check::fail(
                "age.identity",
                format!("cannot read AGE_IDENTITY_FILE {}: {e}", path.display()),
                "point AGE_IDENTITY_FILE at a file written by age-keygen (AGE-SECRET-KEY-1… lines)",
            );
        }
    };
    let opens = |recipient: &age::x25519::Recipient| -> bool {
        let sealed = (|| {
            let encryptor =
                age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
                    .ok()?;
            let mut sealed = Vec::new();
            let mut writer = encryptor.wrap_output(&mut sealed).ok()?;
            writer.write_all(b"backupctl doctor").ok()?;
            writer.finish().ok()?;
            Some(sealed)
        })();
        let Some(sealed) = sealed else {
            return false;
        };
        let Ok(decryptor) = age::Decryptor::new_buffered(&sealed[..]) else {
            return false;
        };
        let Ok(mut reader) =
            decryptor.decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        else {
            return false;
        };
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut plain).is_ok() && plain == b"backupctl doctor"
    };
    let matched: Vec<String> = recipients
        .iter()
        .filter(|r| opens(r))
        .map(|r| short_key(&r.to_string()))
        .collect();
    if matched.is_empty() {
        Check::fail(
            "age.identity",
            format!(
                "AGE_IDENTITY_FILE {} opens none of the {} recipient(s): encrypted backups could not be verified or restored",
                path.display(),
                recipients.len()
            ),
            format!(
                "compare `age-keygen -y {}` with BACKUP_AGE_RECIPIENTS; use the identity whose public key is listed there",
                path.display()
            ),
        )
    } else {
        Check::pass(
            "age.identity",
            format!(
                "{} opens backups encrypted to {}",
                path.display(),
                matched.join(", ")
            ),
        )
    }
}

/// `age1abcdefgh…` : enough to tell keys apart.
fn short_key(key: &str) -> String {
    let head: String = key.chars().take(12).collect();
    format!("{head}…")
}

// -------------------------------------------------------------- alerts

/// The message `--send-test-alert` sends on every channel.
pub fn test_notice(database: DatabaseName) -> Notice {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "this host".to_owned());
    let when = Utc::now().format("%Y-%m-%d %H:%M UTC");
    Notice {
        kind: NoticeKind::Success,
        database: Some(database),
        subject: format!("[backup] test alert from backupctl doctor on {host}"),
        body: format!(
            "This is a test message sent by `backupctl doctor --send-test-alert` on {host} at {when}.\n\
             If you read it, alerts of the backup pipeline reach you on this channel. Nothing is wrong."
        ),
        short: format!(
            "Test alert from backupctl doctor on {host} ({when}): alerts reach this channel."
        ),
        for_people: true,
        health: None,
    }
}

/// Every alert channel the notifier would use, from the same variables:
/// configured correctly and, with `--send-test-alert`, delivering one test
/// message (no retries: the doctor reports what happens now).
pub async fn alerts(args: &DoctorArgs, databases: &[DatabaseName]) -> Vec<Check> {
    let database = databases
        .first()
        .cloned()
        .or_else(|| DatabaseName::try_from("doctor".to_owned()).ok());
    let notice = match (args.send_test_alert, database) {
        (true, Some(database)) => Some(test_notice(database)),
        _ => None,
    };
    let notice = notice.as_ref();
    let (email, telegram, slack, healthcheck) = tokio::join!(
        async {
            match email_settings(args) {
                Ok(Some(settings)) => alert_email(&settings, notice).await,
                Ok(None) => Check::skip("alert.email", "not configured (SMTP_URL unset)"),
                Err(e) => Check::fail(
                    "alert.email",
                    e,
                    "set SMTP_URL, ALERT_EMAIL_FROM and ALERT_EMAIL_TO together",
                ),
            }
        },
        async {
            match telegram_settings(args) {
                Ok(Some(settings)) => alert_telegram(&settings, notice).await,
                Ok(None) => Check::skip(
                    "alert.telegram",
                    "not configured (TELEGRAM_BOT_TOKEN unset)",
                ),
                Err(e) => Check::fail(
                    "alert.telegram",
                    e,
                    "set TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID together",
                ),
            }
        },
        async {
            match secret_from_env("SLACK_WEBHOOK_URL") {
                Ok(Some(url)) => alert_slack(&url, notice).await,
                Ok(None) => Check::skip("alert.slack", "not configured (SLACK_WEBHOOK_URL unset)"),
                Err(e) => Check::fail(
                    "alert.slack",
                    e.to_string(),
                    "set one of SLACK_WEBHOOK_URL and SLACK_WEBHOOK_URL_FILE",
                ),
            }
        },
        async {
            match healthcheck_urls(databases) {
                Ok(urls) if urls.is_empty() => Check::skip(
                    "alert.healthcheck",
                    "not configured (HEALTHCHECK_URL unset)",
                ),
                Ok(urls) => alert_healthcheck(&urls, notice.is_some()).await,
                Err(e) => Check::fail(
                    "alert.healthcheck",
                    e,
                    "set each HEALTHCHECK_URL variable or its _FILE, not both",
                ),
            }
        },
    );
    let for_people = [&email, &telegram, &slack];
    let mut checks = Vec::new();
    if for_people.iter().all(|c| c.verdict == Verdict::Skip) {
        // The notifier would then only write ERROR lines to its own log:
        // a failure nobody reads is no alert.
        checks.push(Check::fail(
            "alert",
            "no alert channel for people is configured: a failed backup would only be an ERROR line in the notifier's log",
            "set SMTP_URL (with ALERT_EMAIL_FROM and ALERT_EMAIL_TO), TELEGRAM_BOT_TOKEN (with TELEGRAM_CHAT_ID) or SLACK_WEBHOOK_URL for the notifier and for this command",
        ));
    }
    checks.extend([email, telegram, slack, healthcheck]);
    checks
}

fn email_settings(args: &DoctorArgs) -> Result<Option<EmailSettings>, String> {
    let Some(smtp_url) = secret_from_env("SMTP_URL").map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let from_text = args
        .email_from
        .as_deref()
        .ok_or("SMTP_URL is set but ALERT_EMAIL_FROM is not")?;
    let from = from_text
        .parse()
        .map_err(|e| format!("ALERT_EMAIL_FROM {from_text:?}: {e}"))?;
    let to = comma_list(args.email_to.as_deref().unwrap_or_default())
        .iter()
        .map(|text| {
            text.parse()
                .map_err(|e| format!("ALERT_EMAIL_TO {text:?}: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    if to.is_empty() {
        return Err("SMTP_URL is set but ALERT_EMAIL_TO is not".into());
    }
    Ok(Some(EmailSettings {
        smtp_url,
        username: args.smtp_username.clone(),
        password: secret_from_env("SMTP_PASSWORD").map_err(|e| e.to_string())?,
        from,
        to,
    }))
}

fn telegram_settings(args: &DoctorArgs) -> Result<Option<TelegramSettings>, String> {
    let Some(token) = secret_from_env("TELEGRAM_BOT_TOKEN").map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let chat_id = args
        .telegram_chat_id
        .clone()
        .ok_or("TELEGRAM_BOT_TOKEN is set but TELEGRAM_CHAT_ID is not")?;
    Ok(Some(TelegramSettings {
        token,
        chat_id,
        api_url: args.telegram_api_url.clone(),
    }))
}

/// `HEALTHCHECK_URL` and the `HEALTHCHECK_URL_<DATABASE>` of the
/// configured databases, by variable name.
fn healthcheck_urls(databases: &[DatabaseName]) -> Result<Vec<(String, SecretString)>, String> {
    let mut names = vec!["HEALTHCHECK_URL".to_owned()];
    names.extend(
        databases
            .iter()
            .map(|d| format!("HEALTHCHECK_URL_{}", d.as_str().to_uppercase())),
    );
    let mut urls = Vec::new();
    for name in names {
        if let Some(url) = secret_from_env(&name).map_err(|e| e.to_string())? {
            urls.push((name, url));
        }
    }
    Ok(urls)
}

fn redactor(secrets: &[&SecretString]) -> Redactor {
    let mut redactor = Redactor::default();
    for secret in secrets {
        redactor.add(secret.expose_secret());
        if let Ok(url) = reqwest::Url::parse(secret.expose_secret())
            && let Some(password) = url.password()
        {
            redactor.add(password);
        }
    }
    redactor
}

const NOT_SENT: &str = "no test message sent (add --send-test-alert)";

/// Email: the notifier's own transport, one attempt.
pub async fn alert_email(settings: &EmailSettings, notice: Option<&Notice>) -> Check {
    let mut secrets = vec![&settings.smtp_url];
    secrets.extend(settings.password.as_ref());
    let redactor = redactor(&secrets);
    let to = settings
        .to
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let channel = match Email::new(settings) {
        Ok(email) => Channel::Email(Box::new(email)),
        Err(e) => {
            return Check::fail(
                "alert.email",
                redactor.redact(&e.to_string()),
                "SMTP_URL takes smtp://[user:password@]host[:port][?tls=required|opportunistic|none] or smtps://…",
            );
        }
    };
    let (server, tls) = match &channel {
        Channel::Email(email) => (email.server().to_owned(), email.tls().describe()),
        _ => ("the SMTP server".to_owned(), ""),
    };
    let what = format!("from {} to {to} via {server} ({tls})", settings.from);
    match notice {
        None => match &channel {
            Channel::Email(email) => match email.test_connection().await {
                Ok(()) => Check::pass(
                    "alert.email",
                    format!("{server} answered EHLO ({tls}); mail would go {what}; {NOT_SENT}"),
                ),
                Err(e) => Check::fail(
                    "alert.email",
                    format!("SMTP_URL {server} ({tls}): {}", redactor.redact(&e.cause)),
                    "check that the SMTP server named by SMTP_URL is up and reachable from here; \
                     ?tls=required|opportunistic|none on smtp:// chooses STARTTLS \
                     (without it: required when credentials are set, opportunistic otherwise)",
                ),
            },
            _ => Check::pass("alert.email", format!("configured {what}; {NOT_SENT}")),
        },
        Some(notice) => match channel.send(notice).await {
            Ok(()) => Check::pass("alert.email", format!("test message accepted {what}")),
            Err(e) => Check::fail(
                "alert.email",
                format!(
                    "test message {what} not delivered: {}",
                    redactor.redact(&e.cause)
                ),
                "check that the SMTP server is up and reachable, SMTP_URL (host, port, TLS, credentials), and that it accepts mail from ALERT_EMAIL_FROM to ALERT_EMAIL_TO",
            ),
        },
    }
}

/// Telegram: the notifier's own bot client, one attempt.
pub async fn alert_telegram(settings: &TelegramSettings, notice: Option<&Notice>) -> Check {
    let redactor = redactor(&[&settings.token]);
    let channel = match Telegram::new(settings) {
        Ok(telegram) => Channel::Telegram(telegram),
        Err(e) => {
            return Check::fail(
                "alert.telegram",
                redactor.redact(&e.to_string()),
                "TELEGRAM_CHAT_ID is a number or @channelname; TELEGRAM_API_URL an http(s) URL",
            );
        }
    };
    let what = format!("chat {}", settings.chat_id);
    match notice {
        None => Check::pass(
            "alert.telegram",
            format!("configured for {what}; {NOT_SENT}"),
        ),
        Some(notice) => match channel.send(notice).await {
            Ok(()) => Check::pass("alert.telegram", format!("test message sent to {what}")),
            Err(e) => Check::fail(
                "alert.telegram",
                format!(
                    "test message to {what} not delivered: {}",
                    redactor.redact(&e.cause)
                ),
                "check TELEGRAM_BOT_TOKEN, that the bot is a member of the chat, and that api.telegram.org (or TELEGRAM_API_URL) is reachable",
            ),
        },
    }
}

fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())
}

/// Slack: a test message through the incoming webhook, as the notifier
/// posts it.
pub async fn alert_slack(webhook_url: &SecretString, notice: Option<&Notice>) -> Check {
    let redactor = redactor(&[webhook_url]);
    let url = match notifier::channels::parse_http_url("SLACK_WEBHOOK_URL", webhook_url) {
        Ok(url) => url,
        Err(e) => {
            return Check::fail(
                "alert.slack",
                e.to_string(),
                "SLACK_WEBHOOK_URL is the https://hooks.slack.com/services/… URL of an incoming webhook",
            );
        }
    };
    let host = url.host_str().unwrap_or("?").to_owned();
    let Some(notice) = notice else {
        return Check::pass(
            "alert.slack",
            format!("webhook on {host} configured; {NOT_SENT}"),
        );
    };
    let client = match http_client() {
        Ok(client) => client,
        Err(e) => return Check::fail("alert.slack", e, "the HTTP client could not start"),
    };
    let request = client
        .post(url)
        .json(&serde_json::json!({ "text": notice.short }));
    match notifier::channels::http_send(request).await {
        Ok(()) => Check::pass(
            "alert.slack",
            format!("test message posted to the webhook on {host}"),
        ),
        Err(e) => Check::fail(
            "alert.slack",
            format!(
                "test message to the webhook on {host} not delivered: {}",
                redactor.redact(&e.cause)
            ),
            "check SLACK_WEBHOOK_URL (a revoked webhook answers 403/404) and that it is reachable from here",
        ),
    }
}

/// Health-check pings: with `send`, a POST to `<url>/log`, which
/// healthchecks.io records without changing the check's state (a real ping
/// would claim a backup succeeded, `/fail` would page someone).
pub async fn alert_healthcheck(urls: &[(String, SecretString)], send: bool) -> Check {
    let secrets: Vec<&SecretString> = urls.iter().map(|(_, url)| url).collect();
    let redactor = redactor(&secrets);
    let mut parsed = Vec::new();
    for (name, url) in urls {
        match notifier::channels::parse_http_url(name, url) {
            Ok(parsed_url) => parsed.push((name.as_str(), parsed_url)),
            Err(e) => {
                return Check::fail(
                    "alert.healthcheck",
                    e.to_string(),
                    format!("{name} is the ping URL of the check, e.g. https://hc-ping.com/<uuid>"),
                );
            }
        }
    }
    let names: Vec<&str> = parsed.iter().map(|(name, _)| *name).collect();
    if !send {
        return Check::pass(
            "alert.healthcheck",
            format!("{} configured; {NOT_SENT}", names.join(", ")),
        );
    }
    let client = match http_client() {
        Ok(client) => client,
        Err(e) => return Check::fail("alert.healthcheck", e, "the HTTP client could not start"),
    };
    let mut failures = Vec::new();
    for (name, mut url) in parsed {
        let path = format!("{}/log", url.path().trim_end_matches('/'));
        url.set_path(&path);
        let request = client
            .post(url)
            .body("backupctl doctor: test of the health-check URL (no state change)");
        if let Err(e) = notifier::channels::http_send(request).await {
            failures.push(format!("{name}: {}", redactor.redact(&e.cause)));
        }
    }
    if failures.is_empty() {
        Check::pass(
            "alert.healthcheck",
            format!("{} answered a /log ping", names.join(", ")),
        )
    } else {
        Check::fail(
            "alert.healthcheck",
            format!("not delivered: {}", failures.join("; ")),
            "check the ping URL (a deleted check answers 404) and that the service is reachable from here",
        )
    }
}

// ------------------------------------------------------------ schedule

/// `BACKUP_SCHEDULE` in `BACKUP_TZ`, parsed as the dumper parses it, with
/// its next three runs.
pub fn schedule(pattern: &str, zone: &str, now: DateTime<Utc>) -> Check {
    if matches!(pattern.trim(), "" | "off" | "none") {
        return Check::skip(
            "schedule",
            "off: backups run only on backup.trigger (timers, backupctl trigger)",
        );
    }
    let fix = "BACKUP_SCHEDULE takes five cron fields (minute hour day-of-month month day-of-week), e.g. `0 2 * * *`; BACKUP_TZ an IANA zone such as Europe/Paris";
    let parsed = match dumper::Schedule::parse(pattern, zone) {
        Ok(parsed) => parsed,
        Err(e) => return Check::fail("schedule", e.to_string(), fix),
    };
    let tz: chrono_tz::Tz = match zone.trim().parse() {
        Ok(tz) => tz,
        Err(_) => return Check::fail("schedule", format!("BACKUP_TZ {zone:?} is not a zone"), fix),
    };
    let mut runs = Vec::new();
    let mut after = now;
    for _ in 0..3 {
        match parsed.next_after(after) {
            Ok(next) => {
                let local = next.with_timezone(&tz).format("%a %Y-%m-%d %H:%M %Z");
                runs.push(if tz == chrono_tz::UTC {
                    local.to_string()
                } else {
                    format!("{local} ({} UTC)", next.format("%H:%M"))
                });
                after = next;
            }
            Err(e) => return Check::fail("schedule", e.to_string(), fix),
        }
    }
    Check::pass(
        "schedule",
        format!(
            "`{}` in {tz}: next runs {}",
            parsed.pattern(),
            runs.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_addresses() {
        assert_eq!(
            nats_address("nats://127.0.0.1:4333"),
            Some(("127.0.0.1".into(), 4333))
        );
        assert_eq!(
            nats_address("nats://u:p@nats.example/"),
            Some(("nats.example".into(), 4222))
        );
        assert_eq!(
            nats_address("tls://[::1]:4222,nats://other:1"),
            Some(("::1".into(), 4222))
        );
        assert_eq!(nats_address("nats://"), None);
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            url_without_credentials("nats://bob:s3cret@host:4222"),
            "nats://host:4222"
        );
        assert_eq!(
            url_without_credentials("nats://host:4222"),
            "nats://host:4222"
        );
    }

    #[test]
    fn schedule_prints_three_runs_in_the_zone() {
        let now = DateTime::parse_from_rfc3339("2026-03-28T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let check = schedule("0 2 * * *", "Europe/Paris", now);
        assert_eq!(check.verdict, Verdict::Pass, "{check:?}");
        // The night of the change to summer time: 02:00 does not exist on
        // the 29th, so that run moves to 03:00 CEST.
        assert!(
            check
                .detail
                .contains("Sun 2026-03-29 03:00 CEST (01:00 UTC)"),
            "{}",
            check.detail
        );
        assert!(
            check
                .detail
                .contains("Mon 2026-03-30 02:00 CEST (00:00 UTC)"),
            "{}",
            check.detail
        );
        assert_eq!(schedule("off", "UTC", now).verdict, Verdict::Skip);
        let bad = schedule("0 2 * *", "UTC", now);
        assert_eq!(bad.verdict, Verdict::Fail);
        assert!(bad.fix.is_some());
        assert_eq!(
            schedule("0 2 * * *", "Mars/Olympus", now).verdict,
            Verdict::Fail
        );
    }

    #[test]
    fn a_skip_is_not_a_failure() {
        let report = Report::new(vec![
            Check::pass("a", "fine"),
            Check::skip("b", "not configured"),
        ]);
        assert!(report.ok);
        let report = Report::new(vec![Check::fail("c", "broken\nbadly", "mend it")]);
        assert!(!report.ok);
        let text = report.to_text();
        assert!(
            text.contains("FAIL  c: broken | badly\n      fix: mend it\n"),
            "{text}"
        );
        assert!(
            text.ends_with("doctor: 0 passed, 1 failed, 0 skipped\n"),
            "{text}"
        );
    }
}

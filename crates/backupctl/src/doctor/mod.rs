//! `backupctl doctor`: preflight checks that find a broken set-up at
//! set-up time rather than at 2 a.m. Every piece the pipeline needs is
//! probed the way the services use it: NATS and the services' consumers,
//! each source database (reachable, readable in full, a matching pg_dump),
//! the SFTP target (reachable, pinned host key, key login, writable, free
//! space, and whether the shipper's key may delete or overwrite backups),
//! the S3 bucket's Object Lock when `S3_BUCKET` is set, the spool, the verifier's scratch server, the age keys, the
//! alert channels and the schedule.
//!
//! Each group of checks has its own file and returns
//! [`backup_core::preflight::Check`]s, the type of the services' start-up
//! checks (pass; fail with the fix; or skipped because its settings are
//! absent). [`check_all`] runs them all at once, each group bounded by a
//! timeout, none waiting on another's success; [`run`] prints the report.
//!
//! Retries: none. The doctor reports the state of things at this moment;
//! run it again after a fix. The probes clean up after themselves: a file
//! written, renamed and deleted in the spool and in `SFTP_DIR` (where a
//! key that may not delete leaves its posture probe to the pruner's
//! identity, or names it), a scratch
//! database created and dropped, and only with `--send-test-alert` one test
//! message per alert channel.

mod age_keys;
mod alerts;
mod args;
mod nats;
mod postgres;
mod posture;
mod report;
mod s3;
mod schedule;
mod scratch;
mod sftp;
mod spool;

use std::future::Future;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use backup_core::config::{CommonArgs, ExposeSecret, secret_from_env};
use backup_core::pg::PgTarget;
use backup_core::preflight::Check;
use chrono::Utc;
use rand::Rng;

pub use age_keys::age_keys;
pub use alerts::{
    alert_email, alert_healthcheck, alert_slack, alert_telegram, alerts, test_notice,
};
pub use args::{DoctorArgs, SftpOptions};
pub use nats::nats;
pub use postgres::postgres;
pub use posture::posture;
pub use report::Report;
pub use s3::s3_posture;
pub use schedule::schedule;
pub use scratch::scratch;
pub use sftp::sftp;
pub use spool::{spool, spool_space, spool_write};

use crate::status::SERVICES;

/// `backupctl doctor`: every check, printed as text or JSON. Exit 0 when
/// every check passed or was skipped, 1 when one failed.
pub async fn run(common: &CommonArgs, args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let report = check_all(common, args).await;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", report.to_text())?;
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs every check, all at once, each group bounded by `args.timeout`.
pub async fn check_all(common: &CommonArgs, args: &DoctorArgs) -> Report {
    let limit = args.timeout;
    let databases = args.database_names();

    // The dumper's consumer carries its DUMPER_NAME.
    let services: Vec<&str> = std::iter::once(args.dumper_name.as_str())
        .chain(SERVICES[1..].iter().copied())
        .collect();
    let nats_checks = async {
        match common.nats_options() {
            Ok(options) => {
                bounded(
                    "nats",
                    limit,
                    "check that NATS_URL is reachable from here",
                    nats(&options, &services),
                )
                .await
            }
            Err(e) => vec![
                Check::fail("nats", e.to_string())
                    .with_fix("set NATS_USER with NATS_PASSWORD, or NATS_TOKEN, or NATS_CREDS"),
            ],
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
            Err(e) => vec![Check::fail("postgres", e).with_fix(
                "set BACKUP_DATABASES (comma-separated) or PGDATABASE to the databases to back up",
            )],
        }
    };
    let sftp_checks = async {
        match args.sftp.args.target() {
            Ok(Some(target)) => {
                let (mut checks, posture_checks) = tokio::join!(
                    bounded(
                        "sftp",
                        limit,
                        "check that SFTP_HOST:SFTP_PORT answers from here",
                        sftp(&target, args.sftp.append_only),
                    ),
                    bounded(
                        "sftp.posture",
                        limit,
                        "check that SFTP_HOST:SFTP_PORT answers from here",
                        posture(&target, args.sftp.append_only, &args.sftp.pruner),
                    )
                );
                checks.extend(posture_checks);
                checks
            }
            // S3 only is a valid set-up; with no bucket either, nothing
            // would be kept anywhere.
            Ok(None) if matches!(args.s3.clone().settings(), Ok(Some(_))) => vec![Check::skip(
                "sftp",
                "no SFTP destination (SFTP_HOST unset): backups go to S3 only",
            )],
            Ok(None) => vec![Check::fail("sftp", backup_core::config::NO_DESTINATION).with_fix(
                "set SFTP_HOST, SFTP_USER, SFTP_DIR, SFTP_KEY_FILE and SFTP_KNOWN_HOSTS, or S3_BUCKET and S3_* (see docs/guides/backup-setup-guide.md)",
            )],
            Err(e) => vec![Check::fail("sftp", e.to_string()).with_fix(
                "set SFTP_HOST, SFTP_USER, SFTP_DIR and SFTP_KEY_FILE together; pin the host key with SFTP_KNOWN_HOSTS (ssh-keyscan -p PORT HOST, checked out of band) or SFTP_HOST_FINGERPRINT; SFTP_DIR is a directory on the server without `..` components (see docs/guides/backup-setup-guide.md)",
            )],
        }
    };
    let s3_checks = bounded(
        "s3",
        limit,
        "check that S3_ENDPOINT answers from here",
        s3_posture(&args.s3),
    );
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
                Err(e) => vec![
                    Check::fail("scratch", format!("VERIFY_DATABASE_URL: {e}")).with_fix(
                        "VERIFY_DATABASE_URL takes postgresql://user[:password]@host[:port]/dbname",
                    ),
                ],
            },
            Ok(None) => vec![Check::skip(
                "scratch",
                "not configured (VERIFY_DATABASE_URL unset; the verifier then uses PGHOST/PGUSER)",
            )],
            Err(e) => vec![
                Check::fail("scratch", e.to_string())
                    .with_fix("set VERIFY_DATABASE_URL or VERIFY_DATABASE_URL_FILE, not both"),
            ],
        }
    };
    let alert_checks = bounded(
        "alert",
        limit,
        "an alert service did not answer: check that it is reachable from here",
        alerts(args, databases.as_deref().unwrap_or_default()),
    );

    let (
        nats_checks,
        postgres_checks,
        sftp_checks,
        s3_checks,
        spool_checks,
        scratch_checks,
        alert_checks,
    ) = tokio::join!(
        nats_checks,
        postgres_checks,
        sftp_checks,
        s3_checks,
        spool_checks,
        scratch_checks,
        alert_checks
    );
    let mut checks = Vec::new();
    checks.extend(nats_checks);
    checks.extend(postgres_checks);
    checks.extend(sftp_checks);
    checks.extend(s3_checks);
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
        Err(_) => vec![Check::fail(group, format!("no answer within {limit:?}")).with_fix(fix)],
    }
}

const MIB: u64 = 1 << 20;

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / MIB)
}

/// `.backupctl-doctor-<hex>`: a name no service reads as an artifact.
fn probe_name() -> String {
    format!(".backupctl-doctor-{:016x}", rand::rng().random::<u64>())
}

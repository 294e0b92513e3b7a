//! One database's artifact: a read-only transaction exports a snapshot,
//! the row count of every table and the application state (Django's
//! migrations, see [`backup_core::app_state`]) are taken in it while
//! pg_dump dumps it (`--snapshot`), and pg_dump's output is streamed through
//! [`crate::compress`] into the spool.
//!
//! Never a hang: pg_dump and the row counts wait for table locks no longer
//! than `--lock-wait-timeout`, and the pass runs under the stall watchdog
//! and deadline of [`backup_core::watchdog`], counting the bytes pg_dump
//! emits (before compression). An aborted pass kills pg_dump's process
//! group, cancels the row-count query, and drops the partial file. No
//! retries here (see the crate docs).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backup_core::app_state::{self, AppState, DjangoMigrations};
use backup_core::files;
use backup_core::manifest::Manifest;
use backup_core::names::{DatabaseName, DumpFormat};
use backup_core::pg::{PgError, PgTarget};
use backup_core::spool_space;
use backup_core::watchdog::{self, Counted, Progress};

use crate::Settings;
use crate::compress;
use crate::error::{DumpError, io_err};
use crate::job::Job;
use crate::producer::{CONNECTION_CHECK_MS, Producer, millis};
use crate::spool::{ArtifactFacts, commit_artifact, open_artifact, settle};
use crate::writing::ForBackup;

/// How long cancelling the row-count query of an aborted dump may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed row count: a lock timeout (the same bound pg_dump has) is worth
/// retrying, any other query failure is not.
fn count_error(
    target: &PgTarget,
    error: &tokio_postgres::Error,
    lock_wait: Option<Duration>,
) -> DumpError {
    match lock_wait {
        Some(within)
            if error.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
        {
            DumpError::LockTimeout {
                table: None,
                within,
            }
        }
        _ => target.query_error(error).into(),
    }
}

pub(crate) fn target_for(settings: &Settings, dbname: &str) -> Result<PgTarget, DumpError> {
    settings.pg.target(dbname).map_err(|e| {
        DumpError::Postgres(PgError::Connect {
            target: dbname.to_owned(),
            cause: e.to_string(),
            transient: false,
        })
    })
}

/// What the manifest records from the dump's snapshot: the row count of
/// every table, then the Django migration state if there is one.
async fn snapshot_facts(
    client: &tokio_postgres::Client,
) -> Result<(BTreeMap<String, u64>, Option<DjangoMigrations>), tokio_postgres::Error> {
    let counts = backup_core::pg::table_row_counts(client).await?;
    let django = app_state::django_migrations(client).await?;
    Ok((counts, django))
}

/// The operator's version for the manifest. An unreadable version file
/// must not cost the backup: it is logged and the version left out.
fn app_version(settings: &Settings, database: &DatabaseName) -> Option<String> {
    settings.app_version.read().unwrap_or_else(|why| {
        tracing::warn!(%database, "application version not recorded: {why}");
        None
    })
}

/// Dumps one database: exported snapshot, row counts in it, pg_dump with
/// `--snapshot`, all streamed through the codec.
pub async fn write_dump(
    settings: &Settings,
    database: &DatabaseName,
    backup: &ForBackup<'_>,
) -> Result<Manifest, DumpError> {
    let started = Instant::now();
    let dir = settings.spool_dir.join(database.as_str());
    files::ensure_private_dir(&dir).map_err(io_err(&dir))?;
    let target = target_for(settings, database.as_str())?;
    let client = target.connect("backup-dumper").await?;
    // The exported snapshot makes pg_dump see exactly what the row counts
    // see; the transaction must stay open until pg_dump has started.
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(|e| target.query_error(&e))?;
    if let Some(lock_wait) = settings.lock_wait_timeout {
        // The row counts wait for the same locks as pg_dump: bounded alike.
        client
            .batch_execute(&format!("SET LOCAL lock_timeout = {}", millis(lock_wait)))
            .await
            .map_err(|e| target.query_error(&e))?;
    }
    let row = client
        .query_one(
            "SELECT pg_export_snapshot(), current_setting('server_version'), \
             current_setting('server_version_num')::int, pg_database_size(current_database())",
            &[],
        )
        .await
        .map_err(|e| target.query_error(&e))?;
    let snapshot: String = row.get(0);
    let server_version: String = row.get(1);
    let server_version_num: i32 = row.get(2);
    let database_bytes = u64::try_from(row.get::<_, i64>(3)).unwrap_or(0);
    let server_major = crate::pg_dump::server_major(u32::try_from(server_version_num).unwrap_or(0));
    if server_major >= 14 {
        client
            .batch_execute(&format!(
                "SET client_connection_check_interval = {CONNECTION_CHECK_MS}"
            ))
            .await
            .map_err(|e| target.query_error(&e))?;
    }
    let (pg_dump, pg_dump_version) =
        crate::pg_dump::select(server_major, settings.pg_bin_dir.as_deref()).await?;
    if settings.space_check {
        spool_space::check_free_space(&dir, database, database_bytes)?;
    }

    let (kind, artifact, partial, file) =
        open_artifact(settings, &dir, database, settings.format, backup).await?;

    let format_args: &[&str] = match settings.format {
        // Our compressor does the work; pg_dump's own would be single-threaded.
        DumpFormat::Custom => &["--format=custom", "--compress=0"],
        _ => &["--format=plain"],
    };
    let mut args = vec!["--no-password", "--snapshot", &snapshot];
    args.extend_from_slice(format_args);
    let (producer, stdout) = Producer::spawn(
        "pg_dump",
        &pg_dump,
        &args,
        &target,
        settings.lock_wait_timeout,
        server_major,
    )?;
    let progress = Progress::new();
    let stdout = Counted::new(stdout, progress.clone());
    let cancel = client.cancel_token();
    let work = async {
        let counts = snapshot_facts(&client);
        let copy = compress::stream_to_file(stdout, file, &settings.codec);
        let (copied, counts) = tokio::join!(copy, counts);
        (copied, counts, producer.finish().await)
    };
    let limits = settings.limits_for(&Job::Database(database.clone()));
    let (copied, counts, produced) = match watchdog::guard("dump", &progress, limits, work).await {
        Ok(done) => done,
        Err(aborted) => {
            // pg_dump's group died with the step; the row counts may still
            // wait on whatever stalled it, holding the snapshot open.
            let _ =
                tokio::time::timeout(CANCEL_TIMEOUT, cancel.cancel_query(tokio_postgres::NoTls))
                    .await;
            // Returning drops the partial file.
            return Err(aborted.into());
        }
    };
    let _ = client.batch_execute("COMMIT").await;
    let written = settle(copied, produced, &dir, &artifact, &partial)?;
    let (counts, django) =
        counts.map_err(|e| count_error(&target, &e, settings.lock_wait_timeout))?;
    let application = AppState::recorded(app_version(settings, database), django);
    let manifest = commit_artifact(
        settings,
        partial,
        written,
        ArtifactFacts {
            database,
            backup_id: backup.id,
            origin: backup.origin,
            artifact: &artifact,
            kind,
            server_version,
            pg_dump_version,
            started,
            tables: counts,
            application,
        },
    )
    .await?;
    spool_space::remember_sizes(&dir, database_bytes, manifest.size_bytes).await;
    Ok(manifest)
}

//! The cluster globals' artifact: `pg_dumpall --globals-only` (roles with
//! their password hashes, tablespaces), streamed through
//! [`crate::compress`] into the spool under the stall watchdog and deadline,
//! like a database dump. No retries here (see the crate docs).

use std::collections::BTreeMap;
use std::time::Instant;

use backup_core::manifest::Manifest;
use backup_core::names::DumpFormat;
use backup_core::watchdog::{self, Counted, Progress};

use crate::Settings;
use crate::compress;
use crate::database::target_for;
use crate::error::DumpError;
use crate::job::Job;
use crate::producer::Producer;
use crate::spool::{ArtifactFacts, commit_artifact, open_artifact, settle};
use crate::writing::ForBackup;

/// `pg_dumpall --globals-only`: roles (with their password hashes) and
/// tablespaces, what a fresh server needs before the databases.
pub async fn write_globals(
    settings: &Settings,
    backup: &ForBackup<'_>,
) -> Result<Manifest, DumpError> {
    let started = Instant::now();
    let name = Job::Globals.name();
    let dir = settings.spool_dir.join(name.as_str());
    let target = target_for(settings, "postgres")?;
    let client = target.connect("backup-dumper").await?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(|e| target.query_error(&e))?;
    let server_version: String = row.get(0);
    let server_major =
        crate::pg_dump::server_major(u32::try_from(row.get::<_, i32>(1)).unwrap_or(0));
    let (pg_dump, pg_dump_version) =
        crate::pg_dump::select(server_major, settings.pg_bin_dir.as_deref()).await?;
    let pg_dumpall = pg_dump.with_file_name("pg_dumpall");
    let (kind, artifact, partial, file) =
        open_artifact(settings, &dir, &name, DumpFormat::Globals, backup).await?;
    let (producer, stdout) = Producer::spawn(
        "pg_dumpall",
        &pg_dumpall,
        &["--globals-only", "--no-password"],
        &target,
        settings.lock_wait_timeout,
        server_major,
    )?;
    let progress = Progress::new();
    let stdout = Counted::new(stdout, progress.clone());
    let work = async {
        let copied = compress::stream_to_file(stdout, file, &settings.codec).await;
        (copied, producer.finish().await)
    };
    let limits = settings.limits_for(&Job::Globals);
    let (copied, produced) = watchdog::guard("dump", &progress, limits, work).await?;
    let written = settle(copied, produced, &dir, &artifact, &partial)?;
    commit_artifact(
        settings,
        partial,
        written,
        ArtifactFacts {
            database: &name,
            backup_id: backup.id,
            origin: backup.origin,
            artifact: &artifact,
            kind,
            server_version,
            pg_dump_version: pg_dump_version.replace("pg_dump", "pg_dumpall"),
            started,
            tables: BTreeMap::new(),
            application: None,
        },
    )
    .await
}

//! `backupctl restore`: one artifact from a destination into a database,
//! through the restore engine the verifier uses (sha256 checked against the
//! manifest, age decryption, decompression, psql or `pg_restore -j`), then
//! its checks (exact row counts against the manifest).
//!
//! The safety checks live here: the target must be empty unless forced,
//! and is created on request. Owners and privileges are restored as dumped
//! (the application's role must find its tables as it left them), so every
//! role the dump names must exist on the target; `--no-owner` leaves them
//! out. Retries: none; an operator is watching.

use ::restore::{
    CheckReport, ManifestExtras, ProgressFn, RestoreOptions, RestoreReport, RestoreSource,
    VerifyError,
};
use backup_core::config::ExposeSecret;
use backup_core::manifest::{MAX_SIDECAR_BYTES, Manifest};
use backup_core::names::{ArtifactName, DatabaseName};
use backup_core::pg::{PgError, PgTarget, quote_ident};
use remote_store::{Store, StoreError};

/// Why a restore could not start or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Remote(#[from] StoreError),
    #[error("target database: {0}")]
    Target(#[from] PgError),
    #[error("{0}")]
    NotFound(String),
    #[error("manifest of {artifact}: {detail}")]
    Manifest { artifact: String, detail: String },
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

impl RestoreError {
    pub fn is_transient(&self) -> bool {
        match self {
            RestoreError::Remote(e) => e.is_transient(),
            RestoreError::Target(e) => e.is_transient(),
            RestoreError::Verify(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// Which artifact to restore.
#[derive(Debug, Clone)]
pub enum Choice {
    /// The newest backup the verifier has verified.
    Latest,
    Named(ArtifactName),
}

/// Resolves `choice` against the remote listing of `database`.
pub async fn choose(
    remote: &Store,
    database: &DatabaseName,
    choice: &Choice,
) -> Result<ArtifactName, RestoreError> {
    let entries = crate::list::catalog::catalog(remote, std::slice::from_ref(database)).await?;
    match choice {
        Choice::Named(name) => {
            if name.database() != database {
                return Err(RestoreError::NotFound(format!(
                    "{name} is a backup of {}, not of {database}",
                    name.database()
                )));
            }
            if entries.iter().any(|e| e.artifact == name.as_str()) {
                Ok(name.clone())
            } else {
                Err(RestoreError::NotFound(format!(
                    "{name} (with its manifest) is not in {}",
                    remote.location(database)
                )))
            }
        }
        Choice::Latest => entries
            .iter()
            .filter(|e| e.verified)
            .filter_map(|e| e.artifact.parse::<ArtifactName>().ok())
            // Globals and media archives are not database restores.
            .filter(|a| {
                !matches!(
                    a.kind().format,
                    backup_core::names::DumpFormat::Globals | backup_core::names::DumpFormat::Tar
                )
            })
            .max_by_key(ArtifactName::taken_at)
            .ok_or_else(|| {
                RestoreError::NotFound(format!(
                    "no verified backup of {database} on the remote; name one (see backupctl list)"
                ))
            }),
    }
}

pub async fn read_manifest(
    remote: &Store,
    artifact: &ArtifactName,
) -> Result<(Manifest, ManifestExtras), RestoreError> {
    let bytes = remote
        .read_small(
            artifact.database(),
            &artifact.manifest_name(),
            MAX_SIDECAR_BYTES,
        )
        .await?;
    let manifest = Manifest::decode(&bytes).map_err(|e| RestoreError::Manifest {
        artifact: artifact.to_string(),
        detail: e.to_string(),
    })?;
    if &manifest.artifact != artifact {
        return Err(RestoreError::Manifest {
            artifact: artifact.to_string(),
            detail: format!("it describes {}", manifest.artifact),
        });
    }
    Ok((manifest, ManifestExtras::from_manifest_json(&bytes)))
}

/// Number of user tables in the target; `None` when the database does not exist.
pub async fn existing_tables(target: &PgTarget) -> Result<Option<i64>, PgError> {
    let client = match target.connect("backupctl").await {
        Ok(client) => client,
        Err(_) if database_missing(target).await? => return Ok(None),
        Err(e) => return Err(e),
    };
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p', 'm', 'v', 'f') \
             AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'",
            &[],
        )
        .await
        .map_err(|e| target.query_error(&e))?;
    Ok(Some(row.get(0)))
}

/// Asks the server's `postgres` database, which always exists.
async fn database_missing(target: &PgTarget) -> Result<bool, PgError> {
    let admin_target = target.with_dbname("postgres");
    let admin = admin_target.connect("backupctl").await?;
    let rows = admin
        .query(
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1",
            &[&target.dbname],
        )
        .await
        .map_err(|e| admin_target.query_error(&e))?;
    Ok(rows.is_empty())
}

/// `CREATE DATABASE` on the target's server, from template0 so that
/// nothing added to template1 ends up beside the restored objects.
pub async fn create_database(target: &PgTarget) -> Result<(), PgError> {
    let admin_target = target.with_dbname("postgres");
    let admin = admin_target.connect("backupctl").await?;
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE template0",
            quote_ident(&target.dbname)
        ))
        .await
        .map_err(|e| admin_target.query_error(&e))
}

/// Drops the target database again (a refused restore into a database
/// this run created, which holds nothing).
pub async fn drop_database(target: &PgTarget) -> Result<(), PgError> {
    let admin_target = target.with_dbname("postgres");
    let admin = admin_target.connect("backupctl").await?;
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {}",
            quote_ident(&target.dbname)
        ))
        .await
        .map_err(|e| admin_target.query_error(&e))
}

/// The one line that refuses a restore whose roles are missing on the
/// target, with the three ways out.
pub fn missing_roles_refusal(
    artifact: &ArtifactName,
    roles: &str,
    target: &PgTarget,
    created: bool,
) -> String {
    format!(
        "refusing: {artifact} has objects owned by or granted to role(s) {roles}, which do not exist on {}; nothing was restored{}. \
         Create the roles first (from the globals backup when BACKUP_GLOBALS is on: see the runbook, \"Roles and globals\"; or CREATE ROLE), \
         or pass --no-owner to restore every object as the role of the target URL, without the dump's privileges",
        describe_target(target),
        if created {
            " (the database this run created was dropped again)"
        } else {
            ""
        }
    )
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub report: RestoreReport,
    pub checks: CheckReport,
}

/// Streams `artifact` from the remote into `target`, then runs the checks.
/// Row-count mismatches come back as [`VerifyError::RowCounts`].
pub async fn restore(
    remote: &Store,
    manifest: Manifest,
    extras: &ManifestExtras,
    target: &PgTarget,
    options: &RestoreOptions,
    progress: Option<ProgressFn>,
) -> Result<Restored, RestoreError> {
    let reader = remote
        .open_read(&manifest.database, manifest.artifact.as_str())
        .await?;
    let report = ::restore::restore_stream(
        RestoreSource {
            reader,
            manifest: manifest.clone(),
        },
        target,
        options,
        progress,
    )
    .await?;
    let checks = ::restore::run_checks(target, &manifest, extras, &[]).await?;
    Ok(Restored { report, checks })
}

/// Ends the server sessions of an interrupted restore (those carrying the
/// target's `application_name`). Best effort and bounded: the operator
/// has already asked to stop.
pub async fn end_sessions(target: &PgTarget) {
    let Some(name) = &target.application_name else {
        return;
    };
    let ending = async {
        let admin = target.connect("backupctl").await.ok()?;
        admin
            .execute(
                "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
                 WHERE application_name = $1 AND pid <> pg_catalog.pg_backend_pid()",
                &[name],
            )
            .await
            .ok()
    };
    if tokio::time::timeout(std::time::Duration::from_secs(10), ending)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        tracing::debug!("could not end the interrupted restore's sessions");
    }
}

/// The target URL without its password, for the confirmation prompt.
pub fn describe_target(target: &PgTarget) -> String {
    let password = if target
        .password
        .as_ref()
        .is_some_and(|p| !p.expose_secret().is_empty())
    {
        " (password given)"
    } else {
        ""
    };
    format!("{}{password}", target.describe())
}

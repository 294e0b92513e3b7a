//! One database's retention plan, with the listing it was computed from
//! ([`plan_database`]), and the brake: a plan that would delete more than
//! half of a database's backups is refused unless forced ([`Brake`]).
//! Nothing here deletes: the pruner service does, `backupctl prune` shows
//! the plan.

use backup_core::names::DatabaseName;
use chrono::{DateTime, Utc};
use remote_store::{Store, StoreError};

use crate::listing::{Catalog, read_catalog};
use crate::policy::{self, Plan, Policy};

/// The plan for one database, with the listing it was computed from.
#[derive(Debug, Clone)]
pub struct DatabasePlan {
    pub database: DatabaseName,
    pub plan: Plan,
    pub catalog: Catalog,
}

/// The brake's refusal of a plan that deletes more than half of the
/// backups. Final for that run: retrying cannot change the listing.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "refusing to delete {delete} of {total} backups of {database} in one run (more than half); check the clocks and the listing (newest backup {newest}), or set RETENTION_FORCE=true for one run"
)]
pub struct Brake {
    pub database: DatabaseName,
    pub delete: usize,
    pub total: usize,
    pub newest: String,
}

impl DatabasePlan {
    /// The brake's verdict: `Some` when this plan deletes more than half
    /// of the backups.
    pub fn brake(&self) -> Option<Brake> {
        let total = self.catalog.backups.len();
        let delete = self.plan.delete.len();
        (delete * 2 > total).then(|| Brake {
            database: self.database.clone(),
            delete,
            total,
            newest: self
                .catalog
                .backups
                .iter()
                .map(|b| &b.artifact)
                .max()
                .map_or_else(|| "none".into(), ToString::to_string),
        })
    }

    /// Files that go besides the backups: sidecars whose artifact is gone
    /// and abandoned uploads.
    pub fn leftovers(&self) -> impl Iterator<Item = &String> {
        self.catalog
            .orphans
            .iter()
            .chain(&self.catalog.stale_partials)
    }

    /// Logs every decision: what stays and by which rules, what goes and why.
    pub fn log(&self, dry_run: bool) {
        for (artifact, reasons) in &self.plan.keep {
            let reasons: Vec<String> = reasons.iter().map(ToString::to_string).collect();
            tracing::info!(%artifact, reasons = %reasons.join(", "), "keep");
        }
        let verb = if dry_run { "would delete" } else { "delete" };
        for (artifact, why) in &self.plan.delete {
            tracing::info!(%artifact, %why, "{verb}");
        }
        for name in self.leftovers() {
            tracing::info!(file = %name, "{verb} (orphaned sidecar or abandoned upload)");
        }
        for name in &self.catalog.foreign {
            tracing::debug!(file = %name, "not a file of ours; left alone");
        }
    }
}

/// Reads one database's files in `store` and computes its plan from that
/// listing alone, deleting nothing: what `RETENTION_DRY_RUN` and
/// `backupctl prune` show. Each destination gets its own plan.
pub async fn plan_database(
    store: &Store,
    policy: &Policy,
    database: &DatabaseName,
    now: DateTime<Utc>,
) -> Result<DatabasePlan, StoreError> {
    let catalog = read_catalog(store, database, now).await?;
    let plan = policy::plan(&catalog.backups, policy, now);
    Ok(DatabasePlan {
        database: database.clone(),
        plan,
        catalog,
    })
}

//! `backupctl prune` (always a dry run): what the pruner's retention policy would
//! delete, and why, computed by the catalogue the pruner plans with, from
//! the remote listing. Deleting stays the pruner service's job.

use catalogue::DatabasePlan;
use serde::Serialize;

/// One file and the decision about it.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub database: String,
    pub file: String,
    /// `keep` or `delete`.
    pub action: &'static str,
    pub reasons: Vec<String>,
}

/// Every decision of one database's plan: backups kept (with the rules
/// that keep them), backups deleted, leftovers cleaned.
pub fn decisions(plan: &DatabasePlan) -> Vec<Decision> {
    let database = plan.database.to_string();
    let mut out: Vec<Decision> = Vec::new();
    for (artifact, reasons) in &plan.plan.keep {
        out.push(Decision {
            database: database.clone(),
            file: artifact.to_string(),
            action: "keep",
            reasons: reasons.iter().map(ToString::to_string).collect(),
        });
    }
    for (artifact, why) in &plan.plan.delete {
        out.push(Decision {
            database: database.clone(),
            file: artifact.to_string(),
            action: "delete",
            reasons: vec![why.to_string()],
        });
    }
    for name in plan.leftovers() {
        out.push(Decision {
            database: database.clone(),
            file: name.clone(),
            action: "delete",
            reasons: vec!["orphaned sidecar or abandoned upload".into()],
        });
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

/// The brake's message for `plan`, if the pruner would refuse to run it.
pub fn brake(plan: &DatabasePlan) -> Option<String> {
    plan.brake().map(|e| e.to_string())
}

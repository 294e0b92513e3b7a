//! `backupctl prune`: what retention would delete and why on one
//! destination (`--from`, default the first; each destination has its own
//! plan, from its own listing), as text or one JSON document. Always a dry run: the pruner service does the deleting.
//! Turning the pruner's plan into lines is in [`plan`].

pub mod plan;

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use backup_core::names::DatabaseName;
use backup_core::sftp::SftpArgs;

use crate::destinations::FromArgs;

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub sftp: SftpArgs,
    #[command(flatten)]
    pub from: FromArgs,
    #[command(flatten)]
    pub retention: catalogue::RetentionArgs,
    /// Plan only this database (default: every database on the destination).
    #[arg(long)]
    pub database: Option<DatabaseName>,
    /// Accepted and ignored: `backupctl prune` is always a dry run (it
    /// only prints the plan; the pruner service deletes).
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON document for scripts.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let policy = args
        .retention
        .policy()
        .map_err(anyhow::Error::msg)
        .context("retention policy")?;
    let target = args.from.target(&args.sftp)?;
    let remote = target
        .connect()
        .await
        .with_context(|| target.label.to_uppercase())?;
    let databases = match args.database {
        Some(db) => vec![db],
        None => catalogue::list_databases(&remote)
            .await
            .with_context(|| format!("listing {}", target.describe()))?,
    };
    let now = chrono::Utc::now();
    let mut decisions = Vec::new();
    let mut brakes = Vec::new();
    for db in &databases {
        let plan = catalogue::plan_database(&remote, &policy, db, now)
            .await
            .with_context(|| format!("reading the backups of {db}"))?;
        plan.log(true);
        decisions.extend(plan::decisions(&plan));
        if let Some(brake) = plan::brake(&plan) {
            brakes.push(brake);
        }
    }
    remote.close().await;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({ "decisions": decisions, "brakes": brakes }),
        )?;
        writeln!(out)?;
    } else {
        for d in &decisions {
            writeln!(
                out,
                "{:<6} {} ({})",
                d.action.to_uppercase(),
                d.file,
                d.reasons.join(", ")
            )?;
        }
        for brake in &brakes {
            writeln!(out, "BRAKE  {brake}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

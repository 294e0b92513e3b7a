//! `backupctl prune`: what retention would delete and why, as text or one
//! JSON document. Always a dry run: the pruner service does the deleting.
//! Turning the pruner's plan into lines is in [`plan`].

pub mod plan;

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use backup_core::names::DatabaseName;
use backup_core::sftp::SftpArgs;

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub sftp: SftpArgs,
    #[command(flatten)]
    pub retention: catalogue::RetentionArgs,
    /// Plan only this database (default: every database under SFTP_DIR).
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
    let settings = args.sftp.settings().context("SFTP settings")?;
    let remote = remote_sftp::SftpRemote::connect(&settings)
        .await
        .context("SFTP")?;
    let databases = match args.database {
        Some(db) => vec![db],
        None => catalogue::list_databases(&remote, &args.sftp.dir)
            .await
            .context("listing SFTP_DIR")?,
    };
    let now = chrono::Utc::now();
    let mut decisions = Vec::new();
    let mut brakes = Vec::new();
    for db in &databases {
        let plan = catalogue::plan_database(&remote, &args.sftp.dir, &policy, db, now)
            .await
            .with_context(|| format!("reading the backups of {db}"))?;
        plan.log(true);
        decisions.extend(plan::decisions(&plan));
        if let Some(brake) = plan::brake(&plan) {
            brakes.push(brake);
        }
    }
    let _ = remote.close().await;
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

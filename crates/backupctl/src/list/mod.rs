//! `backupctl list`: the backups on one destination (`--from`, default the
//! first, the SFTP server), as text in BACKUP_TZ or one JSON document.
//! Reading the catalogue is in [`catalog`].

pub mod catalog;

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use backup_core::names::{DatabaseName, Tag};
use backup_core::sftp::SftpArgs;

use crate::configured::ZoneArgs;
use crate::destinations::FromArgs;

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub sftp: SftpArgs,
    #[command(flatten)]
    pub from: FromArgs,
    /// List only this database's backups (default: every database on the destination).
    #[arg(long)]
    pub database: Option<DatabaseName>,
    /// List only backups with this tag (e.g. pre-deploy).
    #[arg(long)]
    pub tag: Option<Tag>,
    /// One JSON document for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub zone: ZoneArgs,
}

pub async fn run(args: ListArgs) -> anyhow::Result<ExitCode> {
    let zone = args.zone.zone().map_err(anyhow::Error::msg)?;
    let target = args.from.target(&args.sftp)?;
    let remote = target
        .connect()
        .await
        .with_context(|| target.label.to_uppercase())?;
    let databases = match args.database {
        Some(db) => vec![db],
        None => catalog::remote_databases(&remote)
            .await
            .with_context(|| format!("listing {}", target.describe()))?,
    };
    let mut entries = catalog::catalog(&remote, &databases)
        .await
        .context("listing backups")?;
    if let Some(tag) = &args.tag {
        entries.retain(|e| e.tag.as_deref() == Some(tag.as_str()));
    }
    remote.close().await;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &entries)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", catalog::to_text(&entries, zone))?;
    }
    Ok(ExitCode::SUCCESS)
}

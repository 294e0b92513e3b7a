//! `backupctl list`: the backups on the SFTP server, as text in BACKUP_TZ
//! or one JSON document. Reading the catalogue is in [`catalog`].

pub mod catalog;

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use backup_core::names::{DatabaseName, Tag};
use backup_core::sftp::SftpArgs;

use crate::configured::ZoneArgs;

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub sftp: SftpArgs,
    /// List only this database's backups (default: every database under SFTP_DIR).
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
    let settings = args.sftp.settings().context("SFTP settings")?;
    let remote = remote_sftp::SftpRemote::connect(&settings)
        .await
        .context("SFTP")?;
    let databases = match args.database {
        Some(db) => vec![db],
        None => catalog::remote_databases(&remote, &args.sftp)
            .await
            .context("listing SFTP_DIR")?,
    };
    let mut entries = catalog::catalog(&remote, &args.sftp, &databases)
        .await
        .context("listing backups")?;
    if let Some(tag) = &args.tag {
        entries.retain(|e| e.tag.as_deref() == Some(tag.as_str()));
    }
    let _ = remote.close().await;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &entries)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", catalog::to_text(&entries, zone))?;
    }
    Ok(ExitCode::SUCCESS)
}

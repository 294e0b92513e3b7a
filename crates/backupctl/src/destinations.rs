//! Which destination a command reads: the destinations configured for the
//! services (`remote_store::targets`, from the same variables: `SFTP_*`,
//! `SHIP_SFTP2_*` for the second SFTP server, and `S3_*` when `S3_BUCKET`
//! is set), and `--from <label>` to pick one (default: the first, `sftp`;
//! `sftp2`, `s3`). An unknown
//! label is refused in one line that lists the configured ones, before
//! anything is connected.

use anyhow::Context;
use backup_core::sftp::{SecondSftpArgs, SftpArgs};
use remote_s3::S3Args;
use remote_store::StoreTarget;

#[derive(Debug, Clone, clap::Args)]
pub struct FromArgs {
    /// Read from the destination with this label (default: the first one: sftp, or s3 without SFTP_HOST).
    #[arg(long = "from", value_name = "LABEL")]
    pub from: Option<String>,
    /// The shipper's S3 destination (`--from s3`), when `S3_BUCKET` is set.
    #[command(flatten)]
    pub s3: S3Args,
    /// The shipper's second SFTP server (`SHIP_SFTP2_*`), label `sftp2`.
    #[command(flatten)]
    pub sftp2: SecondSftpArgs,
}

impl FromArgs {
    /// The destination `--from` names among those configured.
    pub fn target(&self, sftp: &SftpArgs) -> anyhow::Result<StoreTarget> {
        let s3 = self
            .s3
            .clone()
            .settings()
            .map_err(|e| anyhow::anyhow!(e.0))
            .context("S3 settings")?;
        let targets = remote_store::targets(
            sftp.target().context("SFTP settings")?,
            self.sftp2.target(sftp)?,
            s3,
        );
        anyhow::ensure!(!targets.is_empty(), backup_core::config::NO_DESTINATION);
        Ok(remote_store::find(&targets, self.from.as_deref())?.clone())
    }
}

//! Which destination a command reads: the destinations configured for the
//! services (`remote_store::targets`, from the same variables: `SFTP_*`,
//! and `S3_*` when `S3_BUCKET` is set), and `--from <label>` to pick one
//! (default: the first, `sftp`; `s3` for the bucket). An unknown
//! label is refused in one line that lists the configured ones, before
//! anything is connected.

use anyhow::Context;
use backup_core::sftp::SftpArgs;
use remote_s3::S3Args;
use remote_store::StoreTarget;

#[derive(Debug, Clone, clap::Args)]
pub struct FromArgs {
    /// Read from the destination with this label (default: the first one, sftp).
    #[arg(long = "from", value_name = "LABEL")]
    pub from: Option<String>,
    /// The shipper's S3 destination (`--from s3`), when `S3_BUCKET` is set.
    #[command(flatten)]
    pub s3: S3Args,
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
        let targets = remote_store::targets(Some(sftp.target().context("SFTP settings")?), s3);
        Ok(remote_store::find(&targets, self.from.as_deref())?.clone())
    }
}

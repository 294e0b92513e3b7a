//! `shipper` binary: configuration, tracing, NATS, then [`shipper::run`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use backup_core::config::{
    SECRETS_HELP, ServiceArgs, exit_status, parse_duration, secret_from_env,
};
use backup_core::sftp::SftpArgs;
use clap::Parser;
use shipper::{Destination, Rate};

const DESTINATIONS_HELP: &str = "Destinations: the SFTP server (SFTP_*) always; a second SFTP \
server when SHIP_SFTP2_HOST is set (its key passphrase from SHIP_SFTP2_KEY_PASSPHRASE or \
SHIP_SFTP2_KEY_PASSPHRASE_FILE); a local or mounted directory (e.g. a NAS) when \
SHIP_LOCAL_DIR is set. Each artifact must reach all of them to count as shipped; each \
failure names its destination.";

/// Uploads artifacts announced by `dump.created` to the SFTP server (and
/// optional further destinations) and emits `dump.shipped`.
#[derive(Debug, Parser)]
#[command(version, after_help = format!("{DESTINATIONS_HELP}\n\n{SECRETS_HELP}"))]
struct Args {
    #[command(flatten)]
    common: ServiceArgs,
    #[command(flatten)]
    sftp: SftpArgs,
    #[command(flatten)]
    sftp2: SecondSftpArgs,
    /// Where the dumper leaves finished artifacts.
    #[arg(
        long,
        env = "BACKUP_SPOOL_DIR",
        default_value = "/var/lib/backup/spool"
    )]
    spool_dir: PathBuf,
    /// Also copy every artifact to <dir>/<database>/ on this local or mounted
    /// directory, which must exist.
    #[arg(long = "local-dir", env = "SHIP_LOCAL_DIR")]
    local_dir: Option<PathBuf>,
    /// A failure that lasts this long is reported (dump.failed, will_retry);
    /// at most 60s.
    #[arg(long, env = "SHIP_ALERT_AFTER", default_value = "30s", value_parser = parse_duration)]
    alert_after: Duration,
    /// Transient failures are retried until this long after dump.created.
    #[arg(long, env = "SHIP_RETRY_HORIZON", default_value = "6h", value_parser = parse_duration)]
    retry_horizon: Duration,
    /// Longest pause between two attempts (exponential backoff with jitter).
    #[arg(long, env = "SHIP_RETRY_MAX_DELAY", default_value = "5m", value_parser = parse_duration)]
    retry_max_delay: Duration,
    /// Upload speed limit per destination, e.g. 10MiB/s or 500KB/s; none by default.
    #[arg(long, env = "SHIP_BANDWIDTH_LIMIT")]
    bandwidth_limit: Option<Rate>,
    /// An upload whose destination acknowledged no byte for this long is
    /// aborted (and retried like a lost connection).
    #[arg(long, env = "SHIP_STALL_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    stall_timeout: Duration,
    /// Longest one upload to one destination may take, progress or not.
    #[arg(long, env = "SHIP_DEADLINE", default_value = "6h", value_parser = parse_duration)]
    deadline: Duration,
}

/// The optional second SFTP server. Explicit ids: clap would otherwise
/// merge these with the primary server's arguments of the same field name.
#[derive(Debug, Clone, clap::Args)]
struct SecondSftpArgs {
    /// Second SFTP server host name; setting it enables that destination.
    #[arg(id = "sftp2-host", long = "sftp2-host", env = "SHIP_SFTP2_HOST")]
    host: Option<String>,
    #[arg(
        id = "sftp2-port",
        long = "sftp2-port",
        env = "SHIP_SFTP2_PORT",
        default_value_t = 22
    )]
    port: u16,
    #[arg(id = "sftp2-user", long = "sftp2-user", env = "SHIP_SFTP2_USER")]
    user: Option<String>,
    /// Base directory on the second server (absolute, or relative to the login directory).
    #[arg(id = "sftp2-dir", long = "sftp2-dir", env = "SHIP_SFTP2_DIR")]
    dir: Option<String>,
    #[arg(
        id = "sftp2-key-file",
        long = "sftp2-key-file",
        env = "SHIP_SFTP2_KEY_FILE"
    )]
    key_file: Option<PathBuf>,
    #[arg(
        id = "sftp2-known-hosts",
        long = "sftp2-known-hosts",
        env = "SHIP_SFTP2_KNOWN_HOSTS"
    )]
    known_hosts: Option<PathBuf>,
    #[arg(
        id = "sftp2-host-fingerprint",
        long = "sftp2-host-fingerprint",
        env = "SHIP_SFTP2_HOST_FINGERPRINT"
    )]
    host_fingerprint: Option<String>,
}

impl SecondSftpArgs {
    fn destination(&self, primary: &SftpArgs) -> anyhow::Result<Option<Destination>> {
        let Some(host) = &self.host else {
            return Ok(None);
        };
        let (Some(user), Some(dir), Some(key_file)) = (&self.user, &self.dir, &self.key_file)
        else {
            anyhow::bail!(
                "SHIP_SFTP2_HOST is set: SHIP_SFTP2_USER, SHIP_SFTP2_DIR and SHIP_SFTP2_KEY_FILE are required too"
            );
        };
        // Same rules as the primary server: absolute dir, a pinned host key.
        let args = SftpArgs {
            host: host.clone(),
            port: self.port,
            user: user.clone(),
            dir: dir.clone(),
            key_file: key_file.clone(),
            known_hosts: self.known_hosts.clone(),
            host_fingerprint: self.host_fingerprint.clone(),
            connect_timeout: primary.connect_timeout,
            io_timeout: primary.io_timeout,
        };
        let mut settings = args
            .settings()
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace("SFTP_", "SHIP_SFTP2_")))?;
        settings.key_passphrase = secret_from_env("SHIP_SFTP2_KEY_PASSPHRASE")?;
        anyhow::ensure!(
            settings.key_file.is_file(),
            "SHIP_SFTP2_KEY_FILE {} does not exist or is not a file",
            settings.key_file.display()
        );
        Ok(Some(Destination::Sftp {
            label: "sftp2".into(),
            dir: args.dir,
            settings,
        }))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = backup_core::config::parse_settings("shipper");
    if args.common.health_probe {
        return backup_core::health::probe(&args.common).await;
    }
    backup_core::telemetry::init(args.common.log_format);
    exit_status("shipper", run(args).await.map_err(|e| format!("{e:#}")))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let sftp_settings = args.sftp.settings().context("SFTP settings")?;
    anyhow::ensure!(
        sftp_settings.key_file.is_file(),
        "SFTP_KEY_FILE {} does not exist or is not a file",
        sftp_settings.key_file.display()
    );
    // Zero would abort every upload before its first acknowledgement.
    anyhow::ensure!(
        args.stall_timeout >= Duration::from_secs(1) && args.deadline >= Duration::from_secs(1),
        "SHIP_STALL_TIMEOUT and SHIP_DEADLINE must be at least 1s"
    );
    anyhow::ensure!(
        args.alert_after <= shipper::MAX_ALERT_AFTER,
        "SHIP_ALERT_AFTER must be at most 60s: operators hear of failures early"
    );
    let mut destinations = vec![Destination::Sftp {
        label: "sftp".into(),
        dir: args.sftp.dir.clone(),
        settings: sftp_settings,
    }];
    destinations.extend(args.sftp2.destination(&args.sftp)?);
    if let Some(dir) = &args.local_dir {
        anyhow::ensure!(
            dir.is_absolute(),
            "SHIP_LOCAL_DIR {} must be an absolute path",
            dir.display()
        );
        destinations.push(Destination::Local {
            label: "local".into(),
            dir: dir.clone(),
        });
    }
    let nats = args.common.nats_options().context("NATS settings")?;
    let settings = shipper::Settings {
        spool_dir: args.spool_dir,
        destinations,
        shutdown_grace: args.common.shutdown_grace,
        alert_after: args.alert_after,
        retry_horizon: args.retry_horizon,
        retry_max_delay: args.retry_max_delay,
        bandwidth_limit: args.bandwidth_limit,
        limits: backup_core::watchdog::Limits::new(args.stall_timeout, args.deadline),
    };
    for destination in &settings.destinations {
        tracing::info!(destination = %destination.describe(), "destination");
    }
    let shutdown = backup_core::shutdown::on_signals();
    let Some(bus) = backup_core::bus::Bus::connect_service(&nats, "shipper", &shutdown)
        .await
        .context("NATS")?
    else {
        return Ok(());
    };
    backup_core::health::serve(&args.common, &bus)
        .await
        .context("HEALTH_LISTEN")?;
    shipper::run(bus, settings, shutdown)
        .await
        .context("shipper")?;
    Ok(())
}

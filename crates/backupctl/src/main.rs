//! `backupctl` binary: parses the command and runs it. Exit codes: 0 done
//! (for `trigger --wait`: verified), 1 the backup failed, 2 bad usage or
//! configuration, 3 timed out waiting, 130 interrupted (the waiting stops,
//! the backup goes on). `restore`: 0 restored and the row
//! counts match the manifest, 1 the restore or a check failed, 2 bad usage,
//! configuration, or a refusal (non-empty target, no confirmation), 130
//! interrupted (Ctrl-C or SIGTERM; the target holds a partial restore).
//! `doctor`: 0 every check passed or was skipped, 1 a check failed, 2 bad
//! usage.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use backup_core::bus::Bus;
use backup_core::config::{CommonArgs, SECRETS_HELP, parse_duration};
use backup_core::names::{ArtifactName, DatabaseName, Tag};
use backup_core::sftp::SftpArgs;
use backupctl::trigger::{TriggerError, WaitResult};
use clap::{Parser, Subcommand};

/// Operate the backup pipeline: trigger backups, see their status, list what is on the remote.
#[derive(Debug, Parser)]
#[command(version, after_help = SECRETS_HELP)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Give up when NATS cannot be reached within this time (exit 2).
    #[arg(long, default_value = "15s", value_parser = parse_duration, global = true)]
    connect_timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ask the dumper for a backup now (all configured databases unless --database).
    Trigger {
        /// Back up only this database (default: every database the dumper is configured for).
        #[arg(long)]
        database: Option<DatabaseName>,
        /// Label kept with the backup; `pre-deploy` backups are never pruned.
        #[arg(long)]
        tag: Option<Tag>,
        /// Free text recorded in the events and the manifest.
        #[arg(long)]
        reason: Option<String>,
        /// Follow the backup and exit 0 only once it is verified.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (exit 3).
        #[arg(long, default_value = "2h", value_parser = parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        configured: backupctl::configured::ConfiguredArgs,
    },
    /// Per configured database, the last verified backup, what is failing, recent runs and
    /// space on the remote; the next scheduled run; recently rejected triggers; per service,
    /// whether it is alive. Exits 1 when a service is down or a stage is failing.
    Status {
        /// One JSON document for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        configured: backupctl::configured::ConfiguredArgs,
        #[command(flatten)]
        schedule: backupctl::configured::ScheduleArgs,
    },
    /// List the backups on the SFTP server.
    List {
        #[command(flatten)]
        sftp: SftpArgs,
        /// List only this database's backups (default: every database under SFTP_DIR).
        #[arg(long)]
        database: Option<DatabaseName>,
        /// One JSON document for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        zone: backupctl::configured::ZoneArgs,
    },
    /// Restore a backup from the SFTP server into a database, then compare row counts.
    ///
    /// The target is RESTORE_TARGET_URL (or RESTORE_TARGET_URL_FILE), which is preferred
    /// because it may hold a password; --target-url is accepted when it holds none.
    Restore {
        #[command(flatten)]
        sftp: SftpArgs,
        /// The newest verified backup of --database.
        #[arg(
            long,
            conflicts_with = "artifact",
            required_unless_present = "artifact"
        )]
        latest: bool,
        /// The artifact to restore (a name from `backupctl list`).
        artifact: Option<ArtifactName>,
        /// The database whose backup is restored (its directory under SFTP_DIR).
        #[arg(long)]
        database: DatabaseName,
        /// postgresql:// URL of the database to restore into (RESTORE_TARGET_URL wins).
        #[arg(long)]
        target_url: Option<String>,
        /// Create the target database first.
        #[arg(long)]
        create: bool,
        /// Restore into a database that already has tables.
        #[arg(long)]
        force: bool,
        /// Parallel jobs of pg_restore (custom format).
        #[arg(long, default_value_t = 2)]
        jobs: u32,
        /// Leave owners and privileges out: objects belong to the role that restores
        /// (by default they keep the dump's owners and grants, whose roles must exist).
        #[arg(long)]
        no_owner: bool,
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
        /// age identities for encrypted artifacts.
        #[arg(long, env = "AGE_IDENTITY_FILE")]
        age_identity_file: Option<PathBuf>,
    },
    /// Check every piece the pipeline needs, one line each with the fix: NATS and the
    /// services' consumers, PostgreSQL, SFTP, the spool, the scratch server, age keys,
    /// alert channels, the schedule. Exits 1 when a check fails.
    Doctor(Box<backupctl::doctor::DoctorArgs>),
    /// Show what retention would delete and why; deletes nothing (the pruner service does the deleting).
    Prune {
        #[command(flatten)]
        sftp: SftpArgs,
        #[command(flatten)]
        retention: pruner::RetentionArgs,
        /// Plan only this database (default: every database under SFTP_DIR).
        #[arg(long)]
        database: Option<DatabaseName>,
        /// Accepted and ignored: `backupctl prune` is always a dry run (it
        /// only prints the plan; the pruner service deletes).
        #[arg(long)]
        dry_run: bool,
        /// One JSON document for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = backup_core::config::parse_settings("backupctl");
    backup_core::telemetry::init_with_default(cli.common.log_format, "warn,backup_core::bus=error");
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!(
                "backupctl: {}",
                backup_core::one_line(&format!("{error:#}"))
            );
            ExitCode::from(2)
        }
    }
}

/// Unlike the services, which wait for NATS forever, the CLI gives up.
async fn connect(
    nats: &backup_core::bus::NatsOptions,
    within: Duration,
    shutdown: &backup_core::shutdown::CancellationToken,
) -> anyhow::Result<Bus> {
    match tokio::time::timeout(within, Bus::connect(nats, "backupctl", shutdown)).await {
        Ok(bus) => bus.context("NATS"),
        Err(_) => anyhow::bail!(
            "NATS is unreachable at {} (gave up after {within:?})",
            nats.url
        ),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Trigger {
            database,
            tag,
            reason,
            wait,
            timeout,
            configured,
        } => {
            let configured = configured.databases().map_err(anyhow::Error::msg)?;
            let checked = match (&database, &configured) {
                (Some(db), Some(c)) => {
                    if let Err(refusal) =
                        backupctl::trigger::check_database(db, &c.names, c.variable)
                    {
                        eprintln!("backupctl: {refusal}");
                        return Ok(ExitCode::from(2));
                    }
                    ""
                }
                (Some(_), None) => {
                    "; not checked against the configured databases (BACKUP_DATABASES and PGDATABASE are not set here): the dumper rejects an unknown name"
                }
                (None, _) => "",
            };
            let nats = cli.common.nats_options().context("NATS settings")?;
            let shutdown = backup_core::shutdown::on_signals();
            let bus = connect(&nats, cli.connect_timeout, &shutdown).await?;
            let (request_id, seq) =
                backupctl::trigger::publish(&bus, database, tag, reason).await?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "trigger {request_id} accepted (stream sequence {seq}){checked}"
            )?;
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            drop(out);
            // Ctrl-C or SIGTERM stops the waiting, not the backup: the
            // trigger is already in the stream.
            let waiting = backupctl::trigger::wait(&bus, &request_id, seq, timeout, |line| {
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            });
            let result = tokio::select! {
                result = waiting => result,
                () = shutdown.cancelled() => {
                    eprintln!(
                        "backupctl: interrupted; the backup goes on (see backupctl status)"
                    );
                    return Ok(ExitCode::from(130));
                }
            };
            match result {
                Ok(WaitResult::Verified(_)) => Ok(ExitCode::SUCCESS),
                Ok(WaitResult::Failed(causes)) => {
                    for cause in causes {
                        eprintln!("backupctl: {cause}");
                    }
                    Ok(ExitCode::from(1))
                }
                Err(TriggerError::Timeout(after)) => {
                    eprintln!(
                        "backupctl: no outcome within {after:?}; the pipeline goes on (see backupctl status)"
                    );
                    Ok(ExitCode::from(3))
                }
                Err(error) => Err(error.into()),
            }
        }
        Command::Status {
            json,
            configured,
            schedule,
        } => {
            let configured = configured.databases().map_err(anyhow::Error::msg)?;
            let zone = schedule.zone.zone().map_err(anyhow::Error::msg)?;
            let now = chrono::Utc::now();
            let next_run = schedule.next_run(now).map_err(anyhow::Error::msg)?;
            let nats = cli.common.nats_options().context("NATS settings")?;
            let shutdown = backup_core::shutdown::on_signals();
            let bus = connect(&nats, cli.connect_timeout, &shutdown).await?;
            let status = backupctl::status::collect(
                &bus,
                configured.as_ref().map(|c| c.names.as_slice()),
                next_run,
            )
            .await?;
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &status)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", status.to_text(now, zone))?;
            }
            Ok(if status.healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Doctor(args) => {
            let report = backupctl::doctor::run(&cli.common, &args).await;
            let mut out = std::io::stdout().lock();
            if args.json {
                serde_json::to_writer_pretty(&mut out, &report)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", report.to_text())?;
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::List {
            sftp,
            database,
            json,
            zone,
        } => {
            let zone = zone.zone().map_err(anyhow::Error::msg)?;
            let settings = sftp.settings().context("SFTP settings")?;
            let remote = remote_sftp::SftpRemote::connect(&settings)
                .await
                .context("SFTP")?;
            let databases = match database {
                Some(db) => vec![db],
                None => backupctl::list::remote_databases(&remote, &sftp)
                    .await
                    .context("listing SFTP_DIR")?,
            };
            let entries = backupctl::list::catalog(&remote, &sftp, &databases)
                .await
                .context("listing backups")?;
            let _ = remote.close().await;
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &entries)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", backupctl::list::to_text(&entries, zone))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore {
            sftp,
            latest,
            artifact,
            database,
            target_url,
            create,
            force,
            jobs,
            no_owner,
            yes,
            age_identity_file,
        } => {
            let choice = match (latest, artifact) {
                (_, Some(name)) => backupctl::restore::Choice::Named(name),
                _ => backupctl::restore::Choice::Latest,
            };
            run_restore(RestoreCommand {
                sftp,
                choice,
                database,
                target_url,
                create,
                force,
                jobs,
                no_owner,
                yes,
                age_identity_file,
            })
            .await
        }
        Command::Prune {
            sftp,
            retention,
            database,
            dry_run: _,
            json,
        } => {
            let policy = retention
                .policy()
                .map_err(anyhow::Error::msg)
                .context("retention policy")?;
            let settings = sftp.settings().context("SFTP settings")?;
            let remote = remote_sftp::SftpRemote::connect(&settings)
                .await
                .context("SFTP")?;
            let databases = match database {
                Some(db) => vec![db],
                None => pruner::list_databases(&remote, &sftp.dir)
                    .await
                    .context("listing SFTP_DIR")?,
            };
            let now = chrono::Utc::now();
            let mut decisions = Vec::new();
            let mut brakes = Vec::new();
            for db in &databases {
                let plan = pruner::plan_database(&remote, &sftp.dir, &policy, db, now)
                    .await
                    .with_context(|| format!("reading the backups of {db}"))?;
                plan.log(true);
                decisions.extend(backupctl::prune::decisions(&plan));
                if let Some(brake) = backupctl::prune::brake(&plan) {
                    brakes.push(brake);
                }
            }
            let _ = remote.close().await;
            let mut out = std::io::stdout().lock();
            if json {
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
    }
}

struct RestoreCommand {
    sftp: SftpArgs,
    choice: backupctl::restore::Choice,
    database: DatabaseName,
    target_url: Option<String>,
    create: bool,
    force: bool,
    jobs: u32,
    no_owner: bool,
    yes: bool,
    age_identity_file: Option<PathBuf>,
}

/// Refusals (exit 2) come before anything is downloaded or created.
async fn run_restore(cmd: RestoreCommand) -> anyhow::Result<ExitCode> {
    use backup_core::config::ExposeSecret;
    use backupctl::restore::{self, RestoreError};

    let from_env =
        backup_core::config::secret_from_env("RESTORE_TARGET_URL").context("RESTORE_TARGET_URL")?;
    let url = match (&from_env, &cmd.target_url) {
        (Some(secret), _) => secret.expose_secret().to_owned(),
        (None, Some(url)) => url.clone(),
        (None, None) => anyhow::bail!(
            "no target: set RESTORE_TARGET_URL (or RESTORE_TARGET_URL_FILE), or pass --target-url"
        ),
    };
    let mut target = backup_core::pg::PgTarget::from_url(&url).context("target URL")?;
    // The restore's psql / pg_restore sessions carry this name, so an
    // interrupted restore can end them on the server too.
    target.application_name = Some(format!("backupctl-restore-{}", std::process::id()));
    if from_env.is_none() && target.password.is_some() {
        eprintln!(
            "backupctl: warning: --target-url holds a password, visible to other users in the process list; prefer RESTORE_TARGET_URL_FILE"
        );
    }
    if !cmd.yes && !std::io::stdin().is_terminal() {
        eprintln!(
            "backupctl: stdin is not a terminal, so restore cannot ask for confirmation; pass --yes to restore into {}",
            restore::describe_target(&target)
        );
        return Ok(ExitCode::from(2));
    }

    let settings = cmd.sftp.settings().context("SFTP settings")?;
    let remote = remote_sftp::SftpRemote::connect(&settings)
        .await
        .context("SFTP")?;
    let artifact = match restore::choose(&remote, &cmd.sftp, &cmd.database, &cmd.choice).await {
        Ok(artifact) => artifact,
        Err(RestoreError::NotFound(why)) => {
            eprintln!("backupctl: {why}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e).context("choosing the backup"),
    };
    let (manifest, extras) = restore::read_manifest(&remote, &cmd.sftp, &artifact)
        .await
        .context("reading the manifest")?;

    match restore::existing_tables(&target)
        .await
        .context("inspecting the target")?
    {
        None if cmd.create => {}
        None => {
            eprintln!(
                "backupctl: the target database {} does not exist; pass --create",
                target.dbname
            );
            return Ok(ExitCode::from(2));
        }
        Some(_) if cmd.create => {
            eprintln!(
                "backupctl: --create, but the target database {} already exists",
                target.dbname
            );
            return Ok(ExitCode::from(2));
        }
        Some(tables) if tables > 0 && !cmd.force => {
            eprintln!(
                "backupctl: refusing: the target {} already has {tables} table(s); pass --force to restore into it anyway",
                restore::describe_target(&target)
            );
            return Ok(ExitCode::from(2));
        }
        Some(_) => {}
    }

    eprintln!(
        "backupctl: restoring {artifact} ({} bytes, {} tables, {} rows) into {}",
        manifest.size_bytes,
        manifest.tables.len(),
        manifest.total_rows(),
        restore::describe_target(&target)
    );
    if !cmd.yes {
        eprint!(
            "Type the target database name ({}) to go on: ",
            target.dbname
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != target.dbname {
            eprintln!("backupctl: not confirmed; nothing done");
            return Ok(ExitCode::from(2));
        }
    }
    if cmd.create {
        restore::create_database(&target)
            .await
            .context("creating the target database")?;
    }

    let options = verifier::RestoreOptions {
        jobs: cmd.jobs.max(1),
        age_identity: cmd.age_identity_file,
        keep_owners: !cmd.no_owner,
        ..verifier::RestoreOptions::default()
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(manifest.size_bytes);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let progress: Option<verifier::restore::ProgressFn> = bar.clone().map(|bar| {
        Arc::new(move |p: verifier::restore::RestoreProgress| bar.set_position(p.bytes_read))
            as verifier::restore::ProgressFn
    });
    // From here on, Ctrl-C or SIGTERM ends the restore with a word on what
    // it leaves behind. psql and pg_restore stay in our process group, so
    // a Ctrl-C in the terminal stops them too; dropping the restore kills
    // whatever is left.
    let interrupted = backup_core::shutdown::on_signals();
    let restoring = restore::restore(
        &remote,
        &cmd.sftp,
        manifest.clone(),
        &extras,
        &target,
        &options,
        progress,
    );
    let outcome = tokio::select! {
        biased;
        () = interrupted.cancelled() => None,
        outcome = restoring => match outcome {
            // psql may die of the terminal's SIGINT a moment before the
            // signal reaches us: that failure is the interruption.
            Err(error) => match tokio::time::timeout(Duration::from_millis(300), interrupted.cancelled()).await {
                Ok(()) => None,
                Err(_) => Some(Err(error)),
            },
            ok => Some(ok),
        },
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let _ = remote.close().await;
    let Some(outcome) = outcome else {
        // Killing psql does not end its server session while it waits on
        // a lock (the server notices the closed socket only when it next
        // talks to it): end them here.
        restore::end_sessions(&target).await;
        eprintln!(
            "backupctl: interrupted: {} holds a partial restore of {artifact}{}; drop it, or restore again into it with --force",
            restore::describe_target(&target),
            if cmd.create {
                " (created by this run)"
            } else {
                ""
            }
        );
        return Ok(ExitCode::from(130));
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(restored) => {
            writeln!(
                out,
                "restored {artifact} into {} (sha256 {} ok, {} bytes)",
                restore::describe_target(&target),
                restored.report.sha256,
                restored.report.bytes
            )?;
            for (table, rows) in &manifest.tables {
                writeln!(out, "  {table}: {rows} rows (matches the manifest)")?;
            }
            for check in &restored.checks.checks {
                writeln!(out, "  ok: {check}")?;
            }
            for skipped in &restored.report.skipped {
                writeln!(out, "  skipped: {skipped}")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(RestoreError::Verify(verifier::VerifyError::MissingRoles { roles, .. })) => {
            drop(out);
            if cmd.create {
                restore::drop_database(&target)
                    .await
                    .context("dropping the target database created by this run")?;
            }
            eprintln!(
                "backupctl: {}",
                restore::missing_roles_refusal(&artifact, &roles, &target, cmd.create)
            );
            Ok(ExitCode::from(2))
        }
        Err(error) => {
            eprintln!(
                "backupctl: restore of {artifact} failed: {}",
                backup_core::one_line(&error.to_string())
            );
            Ok(ExitCode::from(1))
        }
    }
}

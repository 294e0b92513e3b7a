//! `backupctl restore`: restore a backup from a destination (`--from`,
//! default the first, the SFTP server) into a database, then compare row counts with the manifest. Exit 0 restored and
//! the counts match, 1 the restore or a check failed, 2 bad usage,
//! configuration or a refusal (non-empty target, no confirmation, missing
//! roles), 130 interrupted (the target holds a partial restore). The steps
//! themselves (choosing the backup, inspecting, creating and dropping the
//! target, the restore) are in [`steps`].

pub mod steps;

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use backup_core::config::ExposeSecret;
use backup_core::names::{ArtifactName, DatabaseName};
use backup_core::pg::PgTarget;
use backup_core::sftp::SftpArgs;

use steps::{Choice, RestoreError};

use crate::destinations::FromArgs;

// The command's help is the doc of `Command::Restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub sftp: SftpArgs,
    #[command(flatten)]
    pub from: FromArgs,
    /// The newest verified backup of --database.
    #[arg(
        long,
        conflicts_with = "artifact",
        required_unless_present = "artifact"
    )]
    pub latest: bool,
    /// The artifact to restore (a name from `backupctl list`).
    pub artifact: Option<ArtifactName>,
    /// The database whose backup is restored (its directory on the destination).
    #[arg(long)]
    pub database: DatabaseName,
    /// postgresql:// URL of the database to restore into (RESTORE_TARGET_URL wins).
    #[arg(long)]
    pub target_url: Option<String>,
    /// Create the target database first.
    #[arg(long)]
    pub create: bool,
    /// Restore into a database that already has tables.
    #[arg(long)]
    pub force: bool,
    /// Parallel jobs of pg_restore (custom format).
    #[arg(long, default_value_t = 2)]
    pub jobs: u32,
    /// Leave owners and privileges out: objects belong to the role that restores
    /// (by default they keep the dump's owners and grants, whose roles must exist).
    #[arg(long)]
    pub no_owner: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// age identities for encrypted artifacts.
    #[arg(long, env = "AGE_IDENTITY_FILE")]
    pub age_identity_file: Option<PathBuf>,
}

/// Restores, checks and prints the outcome. Refusals (exit 2) come before
/// anything is downloaded or created.
pub async fn run(cmd: RestoreArgs) -> anyhow::Result<ExitCode> {
    let choice = match &cmd.artifact {
        Some(name) => Choice::Named(name.clone()),
        None => Choice::Latest,
    };

    let source = cmd.from.target(&cmd.sftp)?;
    let target = target(&cmd)?;
    if !cmd.yes && !std::io::stdin().is_terminal() {
        eprintln!(
            "backupctl: stdin is not a terminal, so restore cannot ask for confirmation; pass --yes to restore into {}",
            steps::describe_target(&target)
        );
        return Ok(ExitCode::from(2));
    }

    let remote = source
        .connect()
        .await
        .with_context(|| source.label.to_uppercase())?;
    let artifact = match steps::choose(&remote, &cmd.database, &choice).await {
        Ok(artifact) => artifact,
        Err(RestoreError::NotFound(why)) => {
            eprintln!("backupctl: {why}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e).context("choosing the backup"),
    };
    let (manifest, extras) = steps::read_manifest(&remote, &artifact)
        .await
        .context("reading the manifest")?;

    let existing = steps::existing_tables(&target)
        .await
        .context("inspecting the target")?;
    if let Some(refusal) = refusal(existing, &target, cmd.create, cmd.force) {
        eprintln!("backupctl: {refusal}");
        return Ok(ExitCode::from(2));
    }

    eprintln!(
        "backupctl: restoring {artifact} ({} bytes, {} tables, {} rows) into {}",
        manifest.size_bytes,
        manifest.tables.len(),
        manifest.total_rows(),
        steps::describe_target(&target)
    );
    if let Some(line) = describe_backup(&manifest) {
        eprintln!("{line}");
    }
    if !cmd.yes && !confirmed(&target)? {
        eprintln!("backupctl: not confirmed; nothing done");
        return Ok(ExitCode::from(2));
    }
    if cmd.create {
        steps::create_database(&target)
            .await
            .context("creating the target database")?;
    }

    let options = restore::RestoreOptions {
        jobs: cmd.jobs.max(1),
        age_identity: cmd.age_identity_file,
        keep_owners: !cmd.no_owner,
        ..restore::RestoreOptions::default()
    };
    let bar = progress_bar(manifest.size_bytes);
    let progress: Option<restore::ProgressFn> = bar.clone().map(|bar| {
        Arc::new(move |p: restore::RestoreProgress| bar.set_position(p.bytes_read))
            as restore::ProgressFn
    });
    // From here on, Ctrl-C or SIGTERM ends the restore with a word on what
    // it leaves behind. psql and pg_restore stay in our process group, so
    // a Ctrl-C in the terminal stops them too; dropping the restore kills
    // whatever is left.
    let interrupted = backup_core::shutdown::on_signals();
    let restoring = steps::restore(
        &remote,
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
    remote.close().await;
    let Some(outcome) = outcome else {
        // Killing psql does not end its server session while it waits on
        // a lock (the server notices the closed socket only when it next
        // talks to it): end them here.
        steps::end_sessions(&target).await;
        eprintln!(
            "backupctl: interrupted: {} holds a partial restore of {artifact}{}; drop it, or restore again into it with --force",
            steps::describe_target(&target),
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
                steps::describe_target(&target),
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
        Err(RestoreError::Verify(restore::VerifyError::MissingRoles { roles, .. })) => {
            drop(out);
            if cmd.create {
                steps::drop_database(&target)
                    .await
                    .context("dropping the target database created by this run")?;
            }
            eprintln!(
                "backupctl: {}",
                steps::missing_roles_refusal(&artifact, &roles, &target, cmd.create)
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

/// The target database: RESTORE_TARGET_URL (or its `_FILE`), else
/// `--target-url`, with a warning when the flag shows a password.
fn target(cmd: &RestoreArgs) -> anyhow::Result<PgTarget> {
    let from_env =
        backup_core::config::secret_from_env("RESTORE_TARGET_URL").context("RESTORE_TARGET_URL")?;
    let url = match (&from_env, &cmd.target_url) {
        (Some(secret), _) => secret.expose_secret().to_owned(),
        (None, Some(url)) => url.clone(),
        (None, None) => anyhow::bail!(
            "no target: set RESTORE_TARGET_URL (or RESTORE_TARGET_URL_FILE), or pass --target-url"
        ),
    };
    let mut target = PgTarget::from_url(&url).context("target URL")?;
    // The restore's psql / pg_restore sessions carry this name, so an
    // interrupted restore can end them on the server too.
    target.application_name = Some(format!("backupctl-restore-{}", std::process::id()));
    if from_env.is_none() && target.password.is_some() {
        eprintln!(
            "backupctl: warning: --target-url holds a password, visible to other users in the process list; prefer RESTORE_TARGET_URL_FILE"
        );
    }
    Ok(target)
}

/// Why the target cannot take the restore, given its tables (`None`: the
/// database does not exist) and the flags.
fn refusal(existing: Option<i64>, target: &PgTarget, create: bool, force: bool) -> Option<String> {
    match existing {
        None if create => None,
        None => Some(format!(
            "the target database {} does not exist; pass --create",
            target.dbname
        )),
        Some(_) if create => Some(format!(
            "--create, but the target database {} already exists",
            target.dbname
        )),
        Some(tables) if tables > 0 && !force => Some(format!(
            "refusing: the target {} already has {tables} table(s); pass --force to restore into it anyway",
            steps::describe_target(target)
        )),
        Some(_) => None,
    }
}

/// Asks for the target database's name on the terminal.
/// What the backup holds besides rows, so the operator can see before
/// confirming that it is the application state they want back: its tag,
/// the operator's version, the latest migration of each Django app.
fn describe_backup(manifest: &backup_core::manifest::Manifest) -> Option<String> {
    use std::fmt::Write as _;
    let tag = manifest.origin.tag.as_ref();
    let application = manifest.application.as_ref();
    if tag.is_none() && application.is_none() {
        return None;
    }
    let mut text = format!(
        "backupctl: taken {}",
        manifest.created_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    if let Some(tag) = tag {
        let _ = write!(text, ", tag {tag}");
    }
    if let Some(application) = application {
        let _ = write!(text, "; application state: {}", application.summary());
        if let Some(django) = &application.django {
            for (app, migration) in &django.apps {
                let _ = write!(text, "\n  {app}: {migration}");
            }
        }
    }
    Some(text)
}

fn confirmed(target: &PgTarget) -> std::io::Result<bool> {
    eprint!(
        "Type the target database name ({}) to go on: ",
        target.dbname
    );
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(answer.trim() == target.dbname)
}

/// A progress bar of the bytes read, when stderr is a terminal.
fn progress_bar(total_bytes: u64) -> Option<indicatif::ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(total_bytes);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_follow_create_and_force() {
        let target = PgTarget::from_url("postgresql://restorer@db.example/app_copy").unwrap();
        assert_eq!(refusal(None, &target, true, false), None);
        assert!(
            refusal(None, &target, false, false)
                .unwrap()
                .contains("pass --create")
        );
        assert!(
            refusal(Some(0), &target, true, false)
                .unwrap()
                .contains("already exists")
        );
        assert_eq!(refusal(Some(0), &target, false, false), None);
        assert!(
            refusal(Some(3), &target, false, false)
                .unwrap()
                .contains("3 table(s)")
        );
        assert_eq!(refusal(Some(3), &target, false, true), None);
    }
}

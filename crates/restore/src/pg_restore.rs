//! The custom-format path: the decoded archive is staged in a private
//! file (0600, in a 0700 directory removed afterwards) because
//! `pg_restore -j` needs a seekable file, then restored by `pg_restore`
//! and its `-j` workers. Without owners, row-level security policies are
//! restored last through the plain filter and psql, so that policies
//! naming roles the scratch server lacks still restore.
//!
//! pg_restore moves its bytes itself: its progress is what its process
//! group reads and writes, sampled from `/proc` ([`group_io_bytes`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use backup_core::manifest::Manifest;
use backup_core::pg::PgTarget;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::decode::{decode_error, decoded};
use crate::error::VerifyError;
use crate::meter::Meter;
use crate::options::RestoreOptions;
use crate::psql::run_script;
use crate::sqlfilter::{FilterReport, PlainFilter};
use crate::{CHUNK, millis};

/// Custom format: the archive is staged (0600, in a 0700 directory removed
/// afterwards) because `pg_restore -j` needs a seekable file. Policies are
/// restored last through the plain filter, so that policies naming roles
/// the scratch server lacks still restore.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn restore_custom<R>(
    stored: R,
    manifest: &Manifest,
    target: &PgTarget,
    options: &RestoreOptions,
    roles: BTreeSet<String>,
    extensions: BTreeSet<String>,
    steps: &mut BTreeMap<String, u64>,
    meter: &Meter,
) -> Result<FilterReport, VerifyError>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let artifact = manifest.artifact.to_string();
    let staging = |e: std::io::Error| VerifyError::Staging(backup_core::one_line(&e.to_string()));
    let base = options
        .staging_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    // tempfile makes the directory 0700; it is removed on drop.
    let dir = tempfile::Builder::new()
        .prefix("verifier-")
        .tempdir_in(&base)
        .map_err(staging)?;
    let archive = dir.path().join("archive.dump");
    let started = Instant::now();
    {
        let mut data = decoded(stored, manifest, options).await?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode_0600()
            .open(&archive)
            .map_err(staging)?;
        let mut file = tokio::fs::File::from_std(file);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match data.read(&mut buf).await {
                Ok(n) => n,
                Err(error) => return Err(decode_error(manifest, &error)),
            };
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n]).await.map_err(staging)?;
        }
        file.flush().await.map_err(staging)?;
    }
    steps.insert("stage".into(), millis(started.elapsed()));

    let listing = run_pg_restore(
        options,
        target,
        &artifact,
        &["-l".into(), path_arg(&archive)],
        meter,
    )
    .await?;
    let mut report = FilterReport::default();
    let mut main_list = String::new();
    let mut policy_list = String::new();
    for line in listing.lines() {
        // `123; 3079 16385 EXTENSION - pgcrypto`
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with(';') {
            if let Some(at) = fields.iter().position(|f| *f == "EXTENSION")
                && fields.get(at + 1) == Some(&"-")
                && let Some(name) = fields.get(at + 2)
            {
                report.extensions.push((*name).to_owned());
                if !extensions.contains(*name) {
                    report.missing_extensions.push((*name).to_owned());
                }
            }
            if fields.get(3) == Some(&"POLICY") && !options.keep_owners {
                policy_list.push_str(line);
                policy_list.push('\n');
                continue;
            }
        }
        main_list.push_str(line);
        main_list.push('\n');
    }
    if !report.missing_extensions.is_empty() {
        return Err(VerifyError::MissingExtensions {
            artifact,
            missing: report.missing_extensions.join(", "),
        });
    }
    if options.keep_owners {
        // The schema as SQL (no data: quick) names every owner and grantee;
        // checked before anything is restored.
        let schema = run_pg_restore(
            options,
            target,
            &artifact,
            &[
                "--schema-only".into(),
                "--file=-".into(),
                path_arg(&archive),
            ],
            meter,
        )
        .await?;
        let mut filter = PlainFilter::keeping_owners(roles.clone(), extensions.clone());
        let mut sink = Vec::new();
        filter.push(schema.as_bytes(), &mut sink);
        filter.finish(&mut sink);
        if !filter.report().missing_roles.is_empty() {
            return Err(VerifyError::missing_roles(
                artifact,
                &filter.report().missing_roles,
            ));
        }
    }
    let main_path = dir.path().join("main.list");
    std::fs::write(&main_path, main_list).map_err(staging)?;
    let mut args: Vec<String> = vec!["--exit-on-error".into()];
    if !options.keep_owners {
        args.extend(["--no-owner".into(), "--no-privileges".into()]);
    }
    args.extend([
        format!("--jobs={}", options.jobs.max(1)),
        format!("--use-list={}", main_path.display()),
        format!("--dbname={}", conninfo_dbname(&target.dbname)),
        path_arg(&archive),
    ]);
    run_pg_restore(options, target, &artifact, &args, meter).await?;
    report.archive_without_owner_and_privileges = !options.keep_owners;

    if !policy_list.is_empty() {
        let policy_path = dir.path().join("policies.list");
        std::fs::write(&policy_path, policy_list).map_err(staging)?;
        let script = run_pg_restore(
            options,
            target,
            &artifact,
            &[
                "--no-owner".into(),
                "--no-privileges".into(),
                format!("--use-list={}", policy_path.display()),
                "--file=-".into(),
                path_arg(&archive),
            ],
            meter,
        )
        .await?;
        let mut filter = PlainFilter::new(roles, extensions);
        let mut out = Vec::new();
        filter.push(script.as_bytes(), &mut out);
        filter.finish(&mut out);
        run_script(options, target, &artifact, "policies", &out, meter).await?;
        report.policy_roles = filter.report().policy_roles.clone();
    }
    Ok(report)
}

trait OpenOptionsPrivate {
    fn mode_0600(&mut self) -> &mut Self;
}

impl OpenOptionsPrivate for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A database name as a libpq connection string, so a name containing `=`
/// is never parsed as one.
fn conninfo_dbname(name: &str) -> String {
    format!(
        "dbname='{}'",
        name.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

/// Runs pg_restore; returns its stdout. The failure carries its first
/// error line. pg_restore and its `-j` workers (forked, same process
/// group) are killed together if this is dropped; while they run, the
/// bytes they read and write count as restore progress.
async fn run_pg_restore(
    options: &RestoreOptions,
    target: &PgTarget,
    artifact: &str,
    args: &[String],
    meter: &Meter,
) -> Result<String, VerifyError> {
    let (child, _group) = meter
        .spawn(
            tokio::process::Command::new(&options.pg_restore)
                .args(args)
                .envs(target.child_env())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .map_err(|e| VerifyError::Restore {
            artifact: artifact.to_owned(),
            detail: format!("cannot start {}: {e}", options.pg_restore.display()),
        })?;
    // Only a group of its own can be told from the caller's processes.
    let pgid = child.id().filter(|_| meter.own_group);
    let output = child.wait_with_output();
    tokio::pin!(output);
    let mut sample = tokio::time::interval(Duration::from_secs(1));
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_io = 0u64;
    let output = loop {
        tokio::select! {
            output = &mut output => break output,
            _ = sample.tick() => {
                // The sum drops when a worker exits; only growth counts.
                let io = pgid.map_or(0, group_io_bytes);
                meter.add_restored(io.saturating_sub(last_io));
                last_io = io;
            }
        }
    };
    let output = output.map_err(|e| VerifyError::Restore {
        artifact: artifact.to_owned(),
        detail: format!("{} failed: {e}", options.pg_restore.display()),
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = stderr
            .lines()
            .find(|l| l.contains("error"))
            .or_else(|| stderr.lines().last())
            .unwrap_or_default();
        return Err(VerifyError::Restore {
            artifact: artifact.to_owned(),
            detail: backup_core::one_line(&format!("pg_restore: {line}")),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Bytes read and written (`rchar` + `wchar` of `/proc/<pid>/io`) by the
/// live processes of group `pgid`: pg_restore reads its archive and talks
/// to the server itself, so this is how its progress shows. 0 where /proc
/// is not readable, which only makes the watchdog stricter.
fn group_io_bytes(pgid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0u64;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parens.
        let pgrp = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|field| field.parse::<u32>().ok());
        if pgrp != Some(pgid) {
            continue;
        }
        let Ok(io) = std::fs::read_to_string(format!("/proc/{pid}/io")) else {
            continue;
        };
        total += io
            .lines()
            .filter_map(|line| {
                let value = line
                    .strip_prefix("rchar:")
                    .or_else(|| line.strip_prefix("wchar:"))?;
                value.trim().parse::<u64>().ok()
            })
            .sum::<u64>();
    }
    total
}

#[cfg(test)]
mod tests {
    use backup_core::watchdog::ProcessGroup;

    use super::*;

    #[tokio::test]
    async fn group_io_counts_every_process_of_the_group() {
        // The shell forks cat, which does the reading and writing, as
        // pg_restore forks its -j workers.
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "cat /dev/zero > /dev/null; true"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id().unwrap();
        let mut group = ProcessGroup::new(Some(pgid));
        let mut seen = 0;
        for _ in 0..200 {
            seen = group_io_bytes(pgid);
            if seen > 1 << 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        group.kill();
        child.wait().await.unwrap();
        assert!(seen > 1 << 20, "{seen} bytes");
        assert_eq!(group_io_bytes(u32::MAX), 0);
    }
}

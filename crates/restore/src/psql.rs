//! The plain-format path: the decoded SQL script goes through the
//! [`PlainFilter`] into `psql` (`ON_ERROR_STOP`; in one transaction when
//! owners are kept, so a missing role rolls everything back).
//!
//! psql runs in the meter's process group policy ([`Meter::spawn`]):
//! dropping the restore (a watchdog abort) kills it and anything it
//! started. The bytes psql takes count as restore progress; a psql waiting
//! on the server stops taking them.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;

use backup_core::manifest::Manifest;
use backup_core::pg::PgTarget;
use backup_core::watchdog::{Counted, ProcessGroup};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};

use crate::CHUNK;
use crate::decode::{decode_error, decoded};
use crate::error::VerifyError;
use crate::meter::Meter;
use crate::options::RestoreOptions;
use crate::sqlfilter::{FilterReport, PlainFilter};

/// Restores a plain-format dump: decodes `stored`, filters it and feeds
/// it to psql. `roles` and `extensions` are what the target server has.
pub(crate) async fn restore_plain<R>(
    stored: R,
    manifest: &Manifest,
    target: &PgTarget,
    options: &RestoreOptions,
    roles: BTreeSet<String>,
    extensions: BTreeSet<String>,
    meter: &Meter,
) -> Result<FilterReport, VerifyError>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let artifact = manifest.artifact.to_string();
    let mut sql = decoded(stored, manifest, options).await?;
    let mut filter = if options.keep_owners {
        PlainFilter::keeping_owners(roles, extensions)
    } else {
        PlainFilter::new(roles, extensions)
    };

    let (mut psql, _group) =
        spawn_psql(&options.psql, target, &artifact, meter, options.keep_owners)?;
    // Bytes psql took: a psql waiting on the server stops taking them.
    let mut stdin = metered_stdin(&mut psql, meter);
    let stderr = psql.stderr.take().expect("piped stderr");
    let stderr_tail = tokio::spawn(first_error_line(stderr));

    let mut buf = vec![0u8; CHUNK];
    let mut out = Vec::with_capacity(CHUNK + 4096);
    let mut decode_failure = None;
    let mut psql_gone = false;
    loop {
        let n = match sql.read(&mut buf).await {
            Ok(0) => {
                filter.finish(&mut out);
                0
            }
            Ok(n) => {
                filter.push(&buf[..n], &mut out);
                n
            }
            Err(error) => {
                decode_failure = Some(error);
                break;
            }
        };
        if !filter.report().missing_extensions.is_empty() {
            break;
        }
        if !filter.report().missing_roles.is_empty() {
            // Nothing more goes to psql, whose transaction is rolled back
            // when it is killed below; the rest is read to name every
            // missing role at once.
            out.clear();
            if n == 0 {
                break;
            }
            continue;
        }
        if !out.is_empty() {
            if stdin.write_all(&out).await.is_err() {
                // psql stopped (ON_ERROR_STOP): its exit status tells why.
                psql_gone = true;
                break;
            }
            out.clear();
        }
        if n == 0 {
            break;
        }
    }
    drop(stdin);
    drop(sql);
    let missing = filter.report().missing_extensions.clone();
    let missing_roles = filter.report().missing_roles.clone();
    if !missing.is_empty() || !missing_roles.is_empty() {
        // Killed, never left to read end of input: with one transaction,
        // end of input would commit what was sent.
        let _ = psql.kill().await;
    }
    let status = psql.wait().await.map_err(|e| VerifyError::Restore {
        artifact: artifact.clone(),
        detail: e.to_string(),
    })?;
    let psql_error = stderr_tail.await.unwrap_or_default();
    if !missing.is_empty() {
        return Err(VerifyError::MissingExtensions {
            artifact,
            missing: missing.join(", "),
        });
    }
    if !missing_roles.is_empty() {
        return Err(VerifyError::missing_roles(artifact, &missing_roles));
    }
    if let Some(error) = decode_failure {
        return Err(decode_error(manifest, &error));
    }
    if psql_gone || !status.success() {
        return Err(VerifyError::Restore {
            artifact,
            detail: if psql_error.is_empty() {
                format!("psql exited with {status}")
            } else {
                psql_error
            },
        });
    }
    Ok(filter.report().clone())
}

/// Runs a whole `script` through psql (`ON_ERROR_STOP`, not in one
/// transaction); the failure is `<what>: ` and psql's first error line.
pub(crate) async fn run_script(
    options: &RestoreOptions,
    target: &PgTarget,
    artifact: &str,
    what: &str,
    script: &[u8],
    meter: &Meter,
) -> Result<(), VerifyError> {
    let (mut psql, _group) = spawn_psql(&options.psql, target, artifact, meter, false)?;
    let mut stdin = metered_stdin(&mut psql, meter);
    let stderr = psql.stderr.take().expect("piped stderr");
    let stderr_tail = tokio::spawn(first_error_line(stderr));
    // A psql that stopped early says why on stderr and in its status.
    let _ = stdin.write_all(script).await;
    drop(stdin);
    let status = psql.wait().await.map_err(|e| VerifyError::Restore {
        artifact: artifact.to_owned(),
        detail: e.to_string(),
    })?;
    let error = stderr_tail.await.unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(VerifyError::Restore {
            artifact: artifact.to_owned(),
            detail: format!("{what}: {error}"),
        })
    }
}

/// psql's stdin, counting what it takes as restore progress.
fn metered_stdin(psql: &mut Child, meter: &Meter) -> Counted<Counted<ChildStdin>> {
    Counted::new(
        Counted::new(
            psql.stdin.take().expect("piped stdin"),
            meter.restore.clone(),
        ),
        meter.activity.clone(),
    )
}

/// Starts psql (see [`Meter::spawn`]): dropping the guard (an aborted
/// restore) kills it and anything it started. `single_transaction`: the
/// whole script commits at its end or not at all.
fn spawn_psql(
    psql: &Path,
    target: &PgTarget,
    artifact: &str,
    meter: &Meter,
    single_transaction: bool,
) -> Result<(tokio::process::Child, ProcessGroup), VerifyError> {
    let mut command = tokio::process::Command::new(psql);
    command.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password"]);
    if single_transaction {
        command.arg("--single-transaction");
    }
    meter
        .spawn(
            command
                .envs(target.child_env())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )
        .map_err(|e| VerifyError::Restore {
            artifact: artifact.to_owned(),
            detail: format!("cannot start {}: {e}", psql.display()),
        })
}

/// psql's first `ERROR:` line says what went wrong; later lines are noise.
async fn first_error_line(stderr: tokio::process::ChildStderr) -> String {
    let mut lines = BufReader::new(stderr).lines();
    let mut first = None;
    let mut last = None;
    while let Ok(Some(line)) = lines.next_line().await {
        if first.is_none() && line.contains("ERROR") {
            first = Some(line.clone());
        }
        last = Some(line);
    }
    backup_core::one_line(&first.or(last).unwrap_or_default())
}

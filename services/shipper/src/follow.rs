//! Uploading while the dump runs. On `dump.writing` the shipper follows the
//! artifact's growing `.partial` in the spool ([`GrowingFile`]) and streams
//! it into `<artifact>.partial` on every SFTP destination that can continue
//! an upload (not an append-only account), without renaming it. Once the
//! dumper has renamed its file, each follow sends what is left and records
//! the bytes the server acknowledged as a resume point under the
//! artifact's checksum ([`crate::resume`]). The upload that `dump.created`
//! starts then checks the kept prefix like any resumed upload (its last
//! 64 KiB against the spool copy), sends nothing more, fsyncs and renames:
//! the time from trigger to shipped approaches the longer of the dump and
//! the upload instead of their sum.
//!
//! Nothing here promises anything. `dump.shipped` still comes only from
//! the `dump.created` path, which checks the spool copy against its event
//! and its manifest; the verifier's read-back stays the proof of the
//! bytes. A follow that fails (a lost connection, a refusal, a dump that
//! wrote nothing for `SHIP_STALL_TIMEOUT`) is logged, its remote `.partial`
//! is removed if the connection allows, and the later upload starts over.
//! When the dumper removes its file (a failed dump), the remote `.partial`
//! is removed. A follow publishes no event and is never retried: it is
//! only a head start. S3 and local destinations wait for `dump.created`.
//!
//! The `dump.created` handler waits for a follow of the same artifact to
//! end before it uploads ([`wait_for_follow`]), so two uploads never write
//! one `.partial`. A follow registers before it opens the spool file, and
//! the dumper announces `dump.created` only after the rename, so a
//! `dump.created` handler that finds no follow registered can never meet
//! one later that would write the same file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use backup_core::Stage;
use backup_core::bus::{self, ConsumerSpec, Delivery, Handler, Outcome};
use backup_core::events::{self, DumpWriting, subject};
use backup_core::names::{ArtifactName, DatabaseName, PARTIAL_SUFFIX};
use remote_sftp::{RemoteError, SftpRemote};
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

use crate::growing::{Abandoned, GrowingFile, abandonment};
use crate::throttle::Throttled;
use crate::{Destination, Settings, resume};

/// The durable consumer of `dump.writing`. A follow is a head start only,
/// so a message that keeps failing is not worth many redeliveries.
pub fn consumer(concurrency: usize) -> ConsumerSpec {
    ConsumerSpec {
        max_deliver: 3,
        max_ack_pending: i64::try_from(concurrency.max(1)).unwrap_or(1),
        ..ConsumerSpec::new("shipper-follow", subject::WRITING, Stage::Ship)
    }
}

#[derive(Debug)]
pub(crate) struct FollowHandler {
    pub(crate) settings: Settings,
}

impl Handler for FollowHandler {
    type Message = DumpWriting;

    fn decode(&self, _subject: &str, payload: &[u8]) -> Result<DumpWriting, events::DecodeError> {
        bus::decode_event(payload)
    }

    /// Dropped on shutdown after the grace, like any delivery: the
    /// message comes back and the follow starts again if the dump is
    /// still being written.
    async fn handle(
        &self,
        writing: DumpWriting,
        _delivery: &Delivery,
        _shutdown: &CancellationToken,
    ) -> Outcome {
        let destinations: Vec<&Destination> = self
            .settings
            .destinations
            .iter()
            .filter(|d| d.can_follow())
            .collect();
        if destinations.is_empty() {
            return Outcome::Ack;
        }
        let database = &writing.header.database;
        let artifact = &writing.artifact;
        let _following = Following::register(database, artifact).await;
        let dir = self.settings.spool_dir.join(database.as_str());
        let spool = SpoolPaths {
            partial: dir.join(format!("{artifact}{PARTIAL_SUFFIX}")),
            final_path: dir.join(artifact.as_str()),
        };
        let follows = destinations
            .into_iter()
            .map(|destination| self.follow(destination, database, artifact, &spool));
        futures::future::join_all(follows).await;
        Outcome::Ack
    }
}

/// The artifact in the spool: the file being written and its final name.
struct SpoolPaths {
    partial: PathBuf,
    final_path: PathBuf,
}

/// How a follow to one destination ended.
#[derive(Debug)]
enum Followed {
    /// The whole artifact is in the remote `.partial`.
    Complete { bytes: u64 },
    /// The spool file was already renamed or removed when the follow began.
    NotThere,
}

impl FollowHandler {
    async fn follow(
        &self,
        destination: &Destination,
        database: &DatabaseName,
        artifact: &ArtifactName,
        spool: &SpoolPaths,
    ) {
        match self.follow_to(destination, database, artifact, spool).await {
            Ok(Followed::Complete { bytes }) => tracing::info!(
                %artifact,
                destination = %destination.describe(),
                bytes,
                "uploaded while the dump was written"
            ),
            Ok(Followed::NotThere) => tracing::debug!(
                %artifact,
                "the dump was finished or given up before it could be followed"
            ),
            Err(error) => match abandonment(&error) {
                Some(Abandoned::Removed(_)) => tracing::info!(
                    %artifact,
                    destination = %destination.describe(),
                    "the dump was given up; its remote .partial was removed"
                ),
                _ => tracing::warn!(
                    %artifact,
                    destination = %destination.describe(),
                    error = %backup_core::error_chain(&error),
                    "could not upload while the dump was written; the upload starts after dump.created"
                ),
            },
        }
    }

    async fn follow_to(
        &self,
        destination: &Destination,
        database: &DatabaseName,
        artifact: &ArtifactName,
        spool: &SpoolPaths,
    ) -> Result<Followed, RemoteError> {
        let Destination::Sftp { dir, settings, .. } = destination else {
            return Ok(Followed::NotThere);
        };
        let local_error = |source| RemoteError::LocalIo {
            path: spool.partial.clone(),
            source,
        };
        let idle_limit = self.settings.limits.stall_after;
        let Some(file) = GrowingFile::open(&spool.partial, &spool.final_path, idle_limit)
            .map_err(local_error)?
        else {
            return Ok(Followed::NotThere);
        };
        let remote = SftpRemote::connect(settings).await?;
        let dir = format!("{}/{database}", dir.trim_end_matches('/'));
        remote.create_dir_all(&dir).await?;
        let final_path = format!("{dir}/{artifact}");
        let mut reader = Throttled::new(file, self.settings.bandwidth_limit);
        let sent = remote
            .upload_partial(&mut reader, &spool.partial, &final_path, &|_| {})
            .await;
        // A session that is gone need not be closed politely.
        let _ = tokio::time::timeout(Duration::from_secs(10), remote.close()).await;
        let sent = sent?;
        let (sha256, size) = reader.into_inner().finish();
        if size != sent {
            // Cannot happen: every byte read was written and acknowledged.
            return Err(RemoteError::SizeMismatch {
                path: final_path,
                expected: size,
                actual: sent,
            });
        }
        resume::points().record(&destination.describe(), artifact, &sha256, sent);
        Ok(Followed::Complete { bytes: sent })
    }
}

/// Follows in progress in this process, by database and artifact.
type Follows = HashMap<(DatabaseName, ArtifactName), Arc<tokio::sync::Mutex<()>>>;
type Registry = Mutex<Follows>;

fn registry() -> &'static Registry {
    static FOLLOWS: OnceLock<Registry> = OnceLock::new();
    FOLLOWS.get_or_init(Registry::default)
}

fn lock_registry() -> std::sync::MutexGuard<'static, Follows> {
    // Nothing panics while holding it; a poisoned map is still consistent.
    registry().lock().unwrap_or_else(|e| e.into_inner())
}

/// A follow in progress; the `dump.created` handler of the same artifact
/// waits until it is dropped.
struct Following {
    key: (DatabaseName, ArtifactName),
    _held: OwnedMutexGuard<()>,
}

impl Following {
    async fn register(database: &DatabaseName, artifact: &ArtifactName) -> Following {
        let key = (database.clone(), artifact.clone());
        let lock = Arc::clone(lock_registry().entry(key.clone()).or_default());
        Following {
            key,
            _held: lock.lock_owned().await,
        }
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        lock_registry().remove(&self.key);
    }
}

/// Waits until no follow of `artifact` is in progress in this process.
pub(crate) async fn wait_for_follow(database: &DatabaseName, artifact: &ArtifactName) {
    let lock = lock_registry()
        .get(&(database.clone(), artifact.clone()))
        .cloned();
    if let Some(lock) = lock {
        tracing::info!(%artifact, "waiting for the upload that followed the dump");
        drop(lock.lock().await);
    }
}

//! The backup a job's writer works for, and `dump.writing`: once the
//! artifact's `.partial` is open in the spool, the dumper says so, and a
//! shipper may follow the growing file and upload while the dump runs.
//!
//! The announcement is best effort: it only lets the upload start early.
//! When it cannot be published the dump goes on, and the shipper uploads
//! the whole artifact after `dump.created`, as it always can.

use backup_core::bus::Bus;
use backup_core::events::{DumpStarted, DumpWriting, Origin};
use backup_core::names::{ArtifactName, BackupId};

/// Which backup an artifact belongs to, and whom to tell that it is being
/// written.
#[derive(Debug, Clone, Copy)]
pub struct ForBackup<'a> {
    pub id: &'a BackupId,
    pub origin: &'a Origin,
    announce_to: Option<(&'a Bus, &'a DumpStarted)>,
}

impl<'a> ForBackup<'a> {
    /// A backup that `dump.started` announced: `dump.writing` follows it.
    pub fn announced(bus: &'a Bus, started: &'a DumpStarted) -> Self {
        Self {
            id: &started.header.backup_id,
            origin: &started.origin,
            announce_to: Some((bus, started)),
        }
    }

    /// A dump nobody follows (the benchmark's).
    pub fn quiet(id: &'a BackupId, origin: &'a Origin) -> Self {
        Self {
            id,
            origin,
            announce_to: None,
        }
    }

    /// Publishes `dump.writing` for `artifact`, whose `.partial` is open.
    pub(crate) async fn writing(&self, artifact: &ArtifactName) {
        let Some((bus, started)) = self.announce_to else {
            return;
        };
        let writing = DumpWriting {
            header: started.header.next(),
            origin: started.origin.clone(),
            artifact: artifact.clone(),
        };
        if let Err(error) = bus.publish(&writing).await {
            tracing::warn!(%artifact, %error, "could not announce dump.writing; the upload will start after dump.created");
        }
    }
}

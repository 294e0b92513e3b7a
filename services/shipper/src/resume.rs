//! Resume points of interrupted SFTP uploads: per destination and
//! artifact, how many bytes of the remote `.partial` the server
//! acknowledged. SFTP WRITE replies are taken in the order the writes were
//! sent, so that count is a contiguous prefix of the file.
//!
//! An upload cut by a lost connection (or dropped by the watchdog) leaves
//! its `.partial` behind. The next attempt at the same destination asks
//! [`plan`]: it continues from the acknowledged offset when the remote file
//! is at least that long (what lies beyond, written but not acknowledged,
//! is truncated away), and starts over when nothing was acknowledged or the
//! file is missing or shorter. The caller also compares the bytes just
//! before the offset with the spool copy before trusting the prefix.
//! Anything that cannot be shown to be ours starts over; the verifier's
//! full read-back stays the proof of every byte.
//!
//! An upload that followed the dump while it was written
//! ([`crate::follow`]) records its point the same way once the file is
//! complete, and the upload that `dump.created` starts resumes from it.
//!
//! The points live in this process's memory only: after a restart nothing
//! is known and uploads start over (the leftover `.partial` is removed).
//! Nothing here retries; the shipper's retry loop calls deliver again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use backup_core::names::{ArtifactName, Sha256Hex};

use crate::destination::LocalArtifact;

/// How many bytes before the resume offset are read back and compared with
/// the spool copy: proof that the `.partial` holds this artifact there, for
/// one round trip.
pub const TAIL_CHECK: u64 = 64 * 1024;

/// Acknowledged prefixes, keyed by destination description, artifact name
/// and checksum (a re-dumped artifact under the same name never resumes
/// another's bytes).
#[derive(Debug, Default)]
pub struct ResumePoints {
    slots: Mutex<HashMap<(String, String, String), Arc<AtomicU64>>>,
}

/// The process's resume points. Global because they must outlive one
/// delivery and serve the next attempt of the same message, which runs
/// with nothing but the destination and the artifact in hand; keys hold the
/// destination's description, so shippers in one process do not mix.
pub fn points() -> &'static ResumePoints {
    static POINTS: OnceLock<ResumePoints> = OnceLock::new();
    POINTS.get_or_init(ResumePoints::default)
}

impl ResumePoints {
    /// Bytes of `artifact` acknowledged by `destination` in earlier
    /// attempts (0 when unknown).
    pub fn acknowledged(&self, destination: &str, artifact: &LocalArtifact) -> u64 {
        self.lock()
            .get(&key(destination, artifact))
            .map_or(0, |slot| slot.load(Ordering::SeqCst))
    }

    /// The slot an upload keeps current as acknowledgements arrive, set to
    /// `from` (where this attempt starts).
    pub fn track(&self, destination: &str, artifact: &LocalArtifact, from: u64) -> Arc<AtomicU64> {
        let slot = Arc::clone(self.lock().entry(key(destination, artifact)).or_default());
        slot.store(from, Ordering::SeqCst);
        slot
    }

    /// Records that `destination` acknowledged the first `acknowledged`
    /// bytes of the artifact `name` with checksum `sha256`: what an upload
    /// that followed the growing spool file (see [`crate::follow`]) leaves
    /// for the upload that `dump.created` starts.
    pub fn record(
        &self,
        destination: &str,
        name: &ArtifactName,
        sha256: &Sha256Hex,
        acknowledged: u64,
    ) {
        let slot = Arc::clone(
            self.lock()
                .entry((destination.to_owned(), name.to_string(), sha256.to_string()))
                .or_default(),
        );
        slot.store(acknowledged, Ordering::SeqCst);
    }

    /// Drops the point once the artifact is there (or cannot be resumed).
    pub fn forget(&self, destination: &str, artifact: &LocalArtifact) {
        self.lock().remove(&key(destination, artifact));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String, String), Arc<AtomicU64>>> {
        // A panic while holding the lock cannot leave a half-made entry.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(destination: &str, artifact: &LocalArtifact) -> (String, String, String) {
    (
        destination.to_owned(),
        artifact.name.to_string(),
        artifact.sha256.to_string(),
    )
}

/// What the next attempt does with a leftover `.partial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Truncate it to this offset and send the rest.
    Resume(u64),
    /// Send everything; why, for the log.
    StartOver(&'static str),
}

/// Decides from the acknowledged prefix, the size of the remote `.partial`
/// (`None`: there is none) and the artifact's size.
pub fn plan(acknowledged: u64, partial_size: Option<u64>, size: u64) -> Plan {
    match partial_size {
        _ if acknowledged == 0 => Plan::StartOver("nothing was acknowledged"),
        None => Plan::StartOver("the .partial is gone"),
        Some(_) if acknowledged > size => Plan::StartOver("more acknowledged than the artifact"),
        Some(len) if len < acknowledged => {
            Plan::StartOver("the .partial is shorter than what was acknowledged")
        }
        Some(_) => Plan::Resume(acknowledged),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_only_from_an_acknowledged_prefix_that_is_still_there() {
        assert_eq!(plan(800, Some(900), 1000), Plan::Resume(800));
        assert_eq!(plan(800, Some(800), 1000), Plan::Resume(800));
        assert_eq!(plan(1000, Some(1000), 1000), Plan::Resume(1000));
        assert!(matches!(plan(0, Some(900), 1000), Plan::StartOver(_)));
        assert!(matches!(plan(800, None, 1000), Plan::StartOver(_)));
        assert!(matches!(plan(800, Some(799), 1000), Plan::StartOver(_)));
        assert!(matches!(plan(1001, Some(1001), 1000), Plan::StartOver(_)));
    }
}

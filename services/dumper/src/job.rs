//! What one trigger makes the dumper produce: a database, the cluster
//! globals or the media archive, each with the name its artifact, spool
//! directory and events carry.

use backup_core::names::DatabaseName;

/// The spool directory (and artifact prefix) of the cluster globals.
pub const GLOBALS_NAME: &str = "globals";
/// The spool directory (and artifact prefix) of the media archive.
pub const MEDIA_NAME: &str = "media";

/// What to produce.
#[derive(Debug, Clone)]
pub enum Job {
    Database(DatabaseName),
    Globals,
    Media,
}

impl Job {
    /// The name the artifact, its spool directory and its events carry.
    pub fn name(&self) -> DatabaseName {
        match self {
            Job::Database(db) => db.clone(),
            Job::Globals => DatabaseName::try_from(GLOBALS_NAME.to_owned()).expect("valid name"),
            Job::Media => DatabaseName::try_from(MEDIA_NAME.to_owned()).expect("valid name"),
        }
    }
}

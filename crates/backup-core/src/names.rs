//! Validated names. Everything that reaches a path, a SQL identifier or a
//! shell-free child argument goes through one of these types first, so a
//! hostile event cannot escape the spool or the remote directory.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid database name {value}: {reason}")]
    Database { value: String, reason: &'static str },
    #[error("invalid backup id {value}: {reason}")]
    BackupId { value: String, reason: &'static str },
    #[error("invalid tag {value}: {reason}")]
    Tag { value: String, reason: &'static str },
    #[error("invalid sha256 {value}: expected 64 lower-case hex digits")]
    Sha256 { value: String },
    #[error("invalid artifact name {value}: {reason}")]
    Artifact { value: String, reason: &'static str },
}

/// Quotes a rejected value for an error message without letting it flood the
/// log or smuggle control characters into it.
fn shown(value: &str) -> String {
    let mut shown: String = value.chars().take(80).collect::<String>();
    if value.chars().count() > 80 {
        shown.push('…');
    }
    format!("{:?}", shown)
}

/// A PostgreSQL database name restricted to a plain identifier
/// (`[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes), so it is safe in file
/// names, remote paths and SQL without quoting games.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DatabaseName(String);

impl DatabaseName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DatabaseName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, NameError> {
        let err = |reason| NameError::Database {
            value: shown(&value),
            reason,
        };
        let first = value.chars().next().ok_or_else(|| err("empty"))?;
        if value.len() > 63 {
            return Err(err("longer than 63 bytes"));
        }
        if !(first.is_ascii_alphabetic() || first == '_') {
            return Err(err("must start with a letter or underscore"));
        }
        if !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(err("only letters, digits and underscores are allowed"));
        }
        Ok(Self(value))
    }
}

/// Identifies one backup across every stage: `[A-Za-z0-9._-]`, 1 to 128
/// characters, not starting with `.` or `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

impl BackupId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of a backup of `database` started by the trigger stored at
    /// `trigger_seq`: deterministic, so a redelivered trigger maps to the
    /// same backup and its events deduplicate.
    pub fn for_trigger(
        database: &DatabaseName,
        published: DateTime<Utc>,
        trigger_seq: u64,
    ) -> Self {
        Self(format!(
            "{}-{}-t{}",
            database.as_str(),
            published.format("%Y%m%dT%H%M%SZ"),
            trigger_seq
        ))
    }
}

fn check_token(value: &str, max: usize) -> Result<(), &'static str> {
    let first = value.chars().next().ok_or("empty")?;
    if value.len() > max {
        return Err("too long");
    }
    if first == '.' || first == '-' {
        return Err("must not start with '.' or '-'");
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err("only [A-Za-z0-9._-] is allowed");
    }
    Ok(())
}

impl TryFrom<String> for BackupId {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, NameError> {
        check_token(&value, 128).map_err(|reason| NameError::BackupId {
            value: shown(&value),
            reason,
        })?;
        Ok(Self(value))
    }
}

/// A label carried from the trigger to every event and the manifest, such
/// as `pre-deploy`. Same alphabet as backup ids, at most 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Tag {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, NameError> {
        check_token(&value, 64).map_err(|reason| NameError::Tag {
            value: shown(&value),
            reason,
        })?;
        Ok(Self(value))
    }
}

/// Lower-case hex sha256 of an artifact's bytes as stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Hex(String);

impl Sha256Hex {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn from_digest(digest: &[u8]) -> Self {
        Self(hex::encode(digest))
    }
}

impl TryFrom<String> for Sha256Hex {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, NameError> {
        if value.len() == 64
            && value
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(value))
        } else {
            Err(NameError::Sha256 {
                value: shown(&value),
            })
        }
    }
}

macro_rules! string_newtype_impls {
    ($($ty:ident),*) => {$(
        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.0
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::try_from(s.to_owned())
            }
        }
    )*};
}
string_newtype_impls!(DatabaseName, BackupId, Tag, Sha256Hex);

/// What pg_dump wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DumpFormat {
    /// Plain SQL, restored with `psql`.
    Plain,
    /// pg_dump's custom archive, restored with `pg_restore`.
    Custom,
    /// `pg_dumpall --globals-only` (roles, tablespaces) as plain SQL, run
    /// with `psql` on a fresh server before restoring the databases.
    Globals,
    /// A tar archive of files (the media volume), not a database.
    Tar,
}

/// How the dump bytes were compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Zstd,
}

/// The three facts an artifact's extension encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArtifactKind {
    pub format: DumpFormat,
    pub compression: Compression,
    pub encrypted: bool,
}

impl ArtifactKind {
    pub const PLAIN_GZIP: ArtifactKind = ArtifactKind {
        format: DumpFormat::Plain,
        compression: Compression::Gzip,
        encrypted: false,
    };

    pub fn extension(self) -> &'static str {
        use Compression::*;
        use DumpFormat::*;
        match (self.format, self.compression, self.encrypted) {
            (Plain, Gzip, false) => "sql.gz",
            (Plain, Zstd, false) => "sql.zst",
            (Custom, Gzip, false) => "dump.gz",
            (Custom, Zstd, false) => "dump.zst",
            (Plain, Gzip, true) => "sql.gz.age",
            (Plain, Zstd, true) => "sql.zst.age",
            (Custom, Gzip, true) => "dump.gz.age",
            (Custom, Zstd, true) => "dump.zst.age",
            (Globals, Gzip, false) => "globals.sql.gz",
            (Globals, Zstd, false) => "globals.sql.zst",
            (Globals, Gzip, true) => "globals.sql.gz.age",
            (Globals, Zstd, true) => "globals.sql.zst.age",
            (Tar, Gzip, false) => "tar.gz",
            (Tar, Zstd, false) => "tar.zst",
            (Tar, Gzip, true) => "tar.gz.age",
            (Tar, Zstd, true) => "tar.zst.age",
        }
    }

    const fn of(format: DumpFormat, compression: Compression, encrypted: bool) -> Self {
        Self {
            format,
            compression,
            encrypted,
        }
    }

    const ALL: [ArtifactKind; 16] = [
        Self::of(DumpFormat::Plain, Compression::Gzip, false),
        Self::of(DumpFormat::Plain, Compression::Zstd, false),
        Self::of(DumpFormat::Custom, Compression::Gzip, false),
        Self::of(DumpFormat::Custom, Compression::Zstd, false),
        Self::of(DumpFormat::Plain, Compression::Gzip, true),
        Self::of(DumpFormat::Plain, Compression::Zstd, true),
        Self::of(DumpFormat::Custom, Compression::Gzip, true),
        Self::of(DumpFormat::Custom, Compression::Zstd, true),
        Self::of(DumpFormat::Globals, Compression::Gzip, false),
        Self::of(DumpFormat::Globals, Compression::Zstd, false),
        Self::of(DumpFormat::Globals, Compression::Gzip, true),
        Self::of(DumpFormat::Globals, Compression::Zstd, true),
        Self::of(DumpFormat::Tar, Compression::Gzip, false),
        Self::of(DumpFormat::Tar, Compression::Zstd, false),
        Self::of(DumpFormat::Tar, Compression::Gzip, true),
        Self::of(DumpFormat::Tar, Compression::Zstd, true),
    ];
}

/// `<database>_<YYYYMMDD>_<HHMMSS>.<ext>`, timestamp in UTC. Names sort by
/// time within a database; anything else is not an artifact of ours.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ArtifactName {
    raw: String,
    database: DatabaseName,
    taken_at: DateTime<Utc>,
    kind: ArtifactKind,
}

/// Suffix of the manifest that stands beside every artifact.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Suffix of the verification record the verifier writes beside an artifact.
pub const VERIFIED_SUFFIX: &str = ".verified.json";
/// Suffix of a file still being written; never a final name.
pub const PARTIAL_SUFFIX: &str = ".partial";

impl ArtifactName {
    pub fn new(database: &DatabaseName, taken_at: DateTime<Utc>, kind: ArtifactKind) -> Self {
        let raw = format!(
            "{}_{}.{}",
            database.as_str(),
            taken_at.format("%Y%m%d_%H%M%S"),
            kind.extension()
        );
        // The name only holds whole seconds; keep the parsed and the built
        // value identical so they compare equal.
        let taken_at = taken_at.with_nanosecond(0).unwrap_or(taken_at);
        Self {
            raw,
            database: database.clone(),
            taken_at,
            kind,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
    pub fn database(&self) -> &DatabaseName {
        &self.database
    }
    pub fn taken_at(&self) -> DateTime<Utc> {
        self.taken_at
    }
    pub fn kind(&self) -> ArtifactKind {
        self.kind
    }
    pub fn manifest_name(&self) -> String {
        format!("{}{MANIFEST_SUFFIX}", self.raw)
    }
    pub fn verified_name(&self) -> String {
        format!("{}{VERIFIED_SUFFIX}", self.raw)
    }
    pub fn partial_name(&self) -> String {
        format!("{}{PARTIAL_SUFFIX}", self.raw)
    }
}

impl TryFrom<String> for ArtifactName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, NameError> {
        let err = |reason| NameError::Artifact {
            value: shown(&value),
            reason,
        };
        // `x.globals.sql.gz` also ends in `sql.gz`: the longest extension wins.
        let (stem, kind) = ArtifactKind::ALL
            .iter()
            .filter_map(|kind| {
                value
                    .strip_suffix(kind.extension())
                    .and_then(|rest| rest.strip_suffix('.'))
                    .map(|stem| (stem, *kind))
            })
            .min_by_key(|(stem, _)| stem.len())
            .ok_or_else(|| err("unknown extension"))?;
        let mut parts = stem.rsplitn(3, '_');
        let (time, date, database) = match (parts.next(), parts.next(), parts.next()) {
            (Some(t), Some(d), Some(db)) => (t, d, db),
            _ => return Err(err("expected <database>_<YYYYMMDD>_<HHMMSS>")),
        };
        if time.len() != 6 || date.len() != 8 {
            return Err(err("expected <database>_<YYYYMMDD>_<HHMMSS>"));
        }
        let database = DatabaseName::try_from(database.to_owned())
            .map_err(|_| err("the database part is not a plain identifier"))?;
        let naive = NaiveDateTime::parse_from_str(&format!("{date}{time}"), "%Y%m%d%H%M%S")
            .map_err(|_| err("the timestamp is not a valid date and time"))?;
        Ok(Self {
            taken_at: Utc.from_utc_datetime(&naive),
            raw: value,
            database,
            kind,
        })
    }
}

impl From<ArtifactName> for String {
    fn from(value: ArtifactName) -> String {
        value.raw
    }
}
impl fmt::Display for ArtifactName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}
impl FromStr for ArtifactName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::try_from(s.to_owned())
    }
}
impl PartialOrd for ArtifactName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ArtifactName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.database, self.taken_at, &self.raw).cmp(&(
            &other.database,
            other.taken_at,
            &other.raw,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_plain_identifiers() {
        for ok in ["viatique", "_x", "a1_b2", &"a".repeat(63)] {
            assert!(DatabaseName::from_str(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "a-b",
            "a/b",
            "..",
            "a b",
            "é",
            "x\n",
            &"a".repeat(64),
        ] {
            assert!(DatabaseName::from_str(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backup_ids_and_tags_reject_paths_and_controls() {
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b", "a\nb"] {
            assert!(BackupId::from_str(bad).is_err(), "{bad:?}");
            assert!(Tag::from_str(bad).is_err(), "{bad:?}");
        }
        assert!(Tag::from_str("pre-deploy").is_ok());
        assert!(BackupId::from_str("viatique-20261121T020000Z-t42").is_ok());
    }

    #[test]
    fn artifact_names_round_trip() {
        let db = DatabaseName::from_str("my_db").unwrap();
        let at = Utc.with_ymd_and_hms(2026, 11, 21, 2, 3, 4).unwrap();
        for kind in ArtifactKind::ALL {
            let name = ArtifactName::new(&db, at, kind);
            let parsed = ArtifactName::from_str(name.as_str()).unwrap();
            assert_eq!(parsed, name);
            assert_eq!(parsed.database().as_str(), "my_db");
            assert_eq!(parsed.taken_at(), at);
            assert_eq!(parsed.kind(), kind);
        }
        assert_eq!(
            ArtifactName::new(&db, at, ArtifactKind::PLAIN_GZIP).as_str(),
            "my_db_20261121_020304.sql.gz"
        );
    }

    #[test]
    fn foreign_file_names_are_not_artifacts() {
        for bad in [
            "notes.txt",
            "my_db_20261121_020304.sql.gz.partial",
            "my_db_20261121_020304.sql.gz.manifest.json",
            "../etc_20261121_020304.sql.gz",
            "db_20261321_020304.sql.gz",
            "db_2026112_020304.sql.gz",
            "_20261121_020304.sql.gz",
        ] {
            assert!(ArtifactName::from_str(bad).is_err(), "{bad}");
        }
    }
}

//! Property tests of what the catalogue reads from outside and of the
//! planner's clock:
//!
//! - remote listings full of hostile names (newlines, quotes, control
//!   characters, `..`, very long or non-UTF-8 names, look-alikes of our own
//!   names, directories named like artifacts) and broken sidecars are read
//!   from a real OpenSSH SFTP server; every name is classified, and only
//!   names the pipeline writes can ever be deleted;
//! - a forward jump of the clock (days, years) never makes a verified
//!   backup deletable.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use backup_core::events::Origin;
use backup_core::manifest::{Manifest, VerificationRecord};
use backup_core::names::{
    ArtifactKind, ArtifactName, BackupId, Compression, DatabaseName, DumpFormat, Sha256Hex,
};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use remote_sftp::SftpRemote;
use remote_store::Store;
use test_support::sshd::Sshd;

use crate::listing::{Catalog, PARTIAL_MAX_AGE, read_catalog};
use crate::plan::DatabasePlan;
use crate::policy::{Backup, Plan, Policy, plan};

const DB: &str = "viatique";

fn db() -> DatabaseName {
    DB.parse().expect("valid name")
}

fn at_minute(minute: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap() + TimeDelta::minutes(minute)
}

/// How one seeded backup looks on the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seeded {
    Verified,
    NoRecord,
    /// A record that does not decode.
    BadRecord,
    /// A record for a different checksum than the manifest's.
    RecordOfOtherContent,
    /// The manifest states another size than the artifact has (truncated).
    Truncated,
    NoManifest,
    /// A manifest that does not decode: its tag is unknown, so it is held.
    BadManifest,
    /// A manifest that describes another artifact: held as well.
    ManifestOfAnother,
    PreDeploy,
}

const SEEDED: &[Seeded] = &[
    Seeded::Verified,
    Seeded::Verified,
    Seeded::Verified,
    Seeded::NoRecord,
    Seeded::BadRecord,
    Seeded::RecordOfOtherContent,
    Seeded::Truncated,
    Seeded::NoManifest,
    Seeded::BadManifest,
    Seeded::ManifestOfAnother,
    Seeded::PreDeploy,
];

fn sha_of(artifact: &ArtifactName) -> Sha256Hex {
    format!("{:064x}", artifact.taken_at().timestamp())
        .parse()
        .expect("64 hex digits")
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Writes an artifact and the sidecars `how` calls for.
fn seed(dir: &Path, artifact: &ArtifactName, how: Seeded) {
    let contents = format!("dump of {artifact}");
    write(&dir.join(artifact.as_str()), contents.as_bytes());
    let backup_id: BackupId = format!("b-{}", artifact.taken_at().timestamp())
        .parse()
        .expect("valid id");
    let described = if how == Seeded::ManifestOfAnother {
        ArtifactName::new(
            &db(),
            artifact.taken_at() + TimeDelta::seconds(1),
            artifact.kind(),
        )
    } else {
        artifact.clone()
    };
    let manifest = Manifest {
        version: 1,
        backup_id: backup_id.clone(),
        database: db(),
        artifact: described,
        size_bytes: contents.len() as u64 + u64::from(how == Seeded::Truncated),
        sha256: sha_of(artifact),
        format: DumpFormat::Plain,
        compression: Compression::Gzip,
        encrypted: false,
        server_version: "15.8".into(),
        pg_dump_version: "pg_dump (PostgreSQL) 15.8".into(),
        created_at: artifact.taken_at(),
        duration_ms: 1,
        trigger: "manual".into(),
        origin: Origin {
            tag: (how == Seeded::PreDeploy).then(|| "pre-deploy".parse().expect("valid tag")),
            ..Origin::default()
        },
        tables: BTreeMap::from([("public.t".to_owned(), 1)]),
        application: None,
    };
    match how {
        Seeded::NoManifest => return,
        Seeded::BadManifest => {
            write(
                &dir.join(artifact.manifest_name()),
                b"{\"version\": 1, \"artifa",
            );
            return;
        }
        _ => write(&dir.join(artifact.manifest_name()), &manifest.encode()),
    }
    let record = VerificationRecord {
        version: 1,
        backup_id,
        artifact: artifact.clone(),
        sha256: if how == Seeded::RecordOfOtherContent {
            "0".repeat(64).parse().expect("64 hex digits")
        } else {
            sha_of(artifact)
        },
        verified_at: artifact.taken_at() + TimeDelta::minutes(5),
        checks: vec!["restore".into()],
        tables: 1,
        rows: 1,
        duration_ms: 1,
        steps_ms: BTreeMap::new(),
        skipped: Vec::new(),
    };
    match how {
        Seeded::NoRecord => {}
        Seeded::BadRecord => write(&dir.join(artifact.verified_name()), b"[\"not a record\"]"),
        _ => write(&dir.join(artifact.verified_name()), &record.encode()),
    }
}

/// Pieces of names an attacker, a confused operator or another tool may
/// leave in the remote directory.
const HOSTILE_PIECES: &[&[u8]] = &[
    b"\n",
    b"\r",
    b"\t",
    b" ",
    b"'",
    b"\"",
    b"`",
    b"$(id)",
    b";rm -rf",
    b"..",
    b"\\",
    b"*",
    b"\x1b[2J",
    b"\x7f",
    b"\xff",
    b"\xc3\x28",
    "\u{202e}".as_bytes(),
    "é".as_bytes(),
    b".partial",
    b".manifest.json",
    b".verified.json",
    b".tmp",
    b"~",
];

/// A file name (never `/` or NUL, at most 255 bytes) built around one of
/// our own names.
fn hostile_name() -> impl Strategy<Value = Vec<u8>> {
    let base = (
        0i64..100_000,
        prop::sample::select(&["viatique", "viatiqu", "other", "VIATIQUE", "viatique_x"][..]),
    )
        .prop_map(|(minute, database)| {
            format!(
                "{database}_{}.sql.gz",
                at_minute(minute).format("%Y%m%d_%H%M%S")
            )
            .into_bytes()
        });
    prop_oneof![
        3 => (base.clone(), prop::sample::select(HOSTILE_PIECES), any::<prop::sample::Index>()).prop_map(
            |(mut name, piece, at)| {
                let i = at.index(name.len() + 1);
                name.splice(i..i, piece.iter().copied());
                name
            }
        ),
        1 => base.prop_map(|mut name| {
            // Another database's artifact, or our name with a suffix.
            name.extend_from_slice(b".bak");
            name
        }),
        1 => prop::collection::vec(1u8..=255, 1..=255).prop_map(|bytes| {
            bytes.into_iter().map(|b| if b == b'/' { b'_' } else { b }).collect()
        }),
        1 => Just(vec![b'a'; 255]),
        1 => Just(b"lost+found".to_vec()),
    ]
}

/// Whether the pipeline would call this name its own: an artifact of the
/// database, or a sidecar or `.partial` of one.
fn looks_like_ours(name: &[u8]) -> bool {
    let Ok(name) = std::str::from_utf8(name) else {
        return false;
    };
    let stem = name.strip_suffix(".partial").unwrap_or(name);
    let stem = stem
        .strip_suffix(".manifest.json")
        .or_else(|| stem.strip_suffix(".verified.json"))
        .unwrap_or(stem);
    stem.parse::<ArtifactName>()
        .is_ok_and(|a| a.database().as_str() == DB)
}

#[derive(Debug, Clone)]
struct Listing {
    backups: Vec<(i64, Seeded)>,
    hostile: Vec<Vec<u8>>,
    /// Sidecars whose artifact is gone.
    orphans: Vec<i64>,
    /// `.partial` uploads: minute, stale (mtime two days back) or fresh.
    partials: Vec<(i64, bool)>,
    /// Directories named like artifacts.
    dirs: Vec<i64>,
}

fn listing() -> impl Strategy<Value = Listing> {
    (
        prop::collection::vec((0i64..100_000, prop::sample::select(SEEDED)), 0..10),
        prop::collection::vec(hostile_name(), 0..12),
        prop::collection::vec(100_000i64..200_000, 0..3),
        prop::collection::vec((200_000i64..300_000, any::<bool>()), 0..3),
        prop::collection::vec(300_000i64..400_000, 0..2),
    )
        .prop_map(|(backups, hostile, orphans, partials, dirs)| Listing {
            backups,
            hostile,
            orphans,
            partials,
            dirs,
        })
}

fn artifact_at(minute: i64) -> ArtifactName {
    ArtifactName::new(&db(), at_minute(minute), ArtifactKind::PLAIN_GZIP)
}

/// Writes `listing` into a fresh directory; returns what the catalog must say.
fn materialize(dir: &Path, listing: &Listing) -> Catalog {
    std::fs::create_dir_all(dir).expect("create the case directory");
    let mut expected = Catalog::default();
    let mut seen = BTreeSet::new();
    for &(minute, how) in &listing.backups {
        if !seen.insert(minute) {
            continue;
        }
        let artifact = artifact_at(minute);
        seed(dir, &artifact, how);
        let size = format!("dump of {artifact}").len() as u64;
        expected.remote_sizes.insert(artifact.clone(), size);
        expected.backups.push(Backup {
            verified: matches!(how, Seeded::Verified | Seeded::PreDeploy),
            tag: (how == Seeded::PreDeploy).then(|| "pre-deploy".parse().expect("valid tag")),
            held: matches!(how, Seeded::BadManifest | Seeded::ManifestOfAnother)
                .then(|| "manifest unreadable, so its tag is unknown".to_owned()),
            locked_until: None,
            artifact,
        });
    }
    for &minute in &listing.orphans {
        let name = artifact_at(minute).manifest_name();
        write(&dir.join(&name), b"{}");
        expected.orphans.push(name);
    }
    for &(minute, stale) in &listing.partials {
        let name = artifact_at(minute).partial_name();
        let path = dir.join(&name);
        write(&path, b"half an upload");
        if stale {
            let age = PARTIAL_MAX_AGE.to_std().expect("positive") + Duration::from_secs(3600);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(SystemTime::now() - age))
                .expect("age the partial");
            expected.stale_partials.push(name);
        }
    }
    for &minute in &listing.dirs {
        let path = dir.join(artifact_at(minute).as_str());
        std::fs::create_dir_all(path.join("inside")).expect("create a directory");
    }
    for name in &listing.hostile {
        if looks_like_ours(name) {
            continue;
        }
        let path = dir.join(OsStr::from_bytes(name));
        if std::fs::write(&path, b"not ours").is_ok() {
            expected
                .foreign
                .push(String::from_utf8_lossy(name).into_owned());
        }
    }
    expected.backups.sort_by(|a, b| a.artifact.cmp(&b.artifact));
    for list in [
        &mut expected.orphans,
        &mut expected.stale_partials,
        &mut expected.foreign,
    ] {
        list.sort();
        list.dedup();
    }
    expected
}

fn sorted(mut catalog: Catalog) -> Catalog {
    catalog.backups.sort_by(|a, b| a.artifact.cmp(&b.artifact));
    for list in [
        &mut catalog.orphans,
        &mut catalog.stale_partials,
        &mut catalog.foreign,
    ] {
        list.sort();
        list.dedup();
    }
    catalog
}

#[test]
fn remote_listings_with_hostile_names_are_classified_and_only_our_files_can_go() {
    let sshd = Sshd::start();
    let settings = test_support::pipeline::sftp_settings(&sshd);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let remote = runtime
        .block_on(SftpRemote::connect(&settings))
        .expect("connect to sshd");
    // One session for every case, each with its own base directory.
    let remote = std::sync::Mutex::new(Some(remote));
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&listing(), |listing| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = sshd.remote_root.join(format!("case{n}"));
        let dir = base.join(DB);
        let expected = materialize(&dir, &listing);
        sshd.hand_over(&base);
        let store = Store::Sftp {
            remote: remote.lock().unwrap().take().expect("the session"),
            dir: base.display().to_string(),
        };
        let found = runtime.block_on(read_catalog(&store, &db(), Utc::now()));
        let Store::Sftp {
            remote: session, ..
        } = store
        else {
            unreachable!("built as SFTP above")
        };
        *remote.lock().unwrap() = Some(session);
        let found = found.map_err(|e| TestCaseError::fail(format!("the listing failed: {e}")))?;
        let found = sorted(found);
        // Non-UTF-8 names may be shown lossily; what matters is that they
        // are foreign, so compare by count and by the valid ones.
        prop_assert_eq!(&found.backups, &expected.backups);
        prop_assert_eq!(&found.remote_sizes, &expected.remote_sizes);
        prop_assert_eq!(&found.orphans, &expected.orphans);
        prop_assert_eq!(&found.stale_partials, &expected.stale_partials);
        prop_assert_eq!(
            found.foreign.len(),
            expected.foreign.len(),
            "{:?}",
            found.foreign
        );
        for name in &found.foreign {
            prop_assert!(!looks_like_ours(name.as_bytes()), "{name:?}");
        }

        // Whatever the plan says, a foreign name is never up for deletion.
        let plan = plan(&found.backups, &Policy::default(), Utc::now());
        for artifact in plan.delete.keys() {
            prop_assert!(found.backups.iter().any(|b| &b.artifact == artifact));
        }
        std::fs::remove_dir_all(&base).expect("clean the case up");
        Ok(())
    });
    if let Some(remote) = remote.into_inner().unwrap() {
        runtime.block_on(async { drop(remote.close().await) });
    }
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

prop_compose! {
    /// A year of history: up to 40 backups, most of them verified.
    fn history()(
        entries in prop::collection::vec(
            (0i64..365 * 24 * 60, prop::bool::weighted(0.75), prop::bool::weighted(0.05)),
            1..40,
        )
    ) -> Vec<Backup> {
        let mut seen = BTreeSet::new();
        entries
            .into_iter()
            .filter(|(minute, ..)| seen.insert(*minute))
            .map(|(minute, verified, pre_deploy)| Backup {
                artifact: artifact_at(minute),
                verified,
                tag: pre_deploy.then(|| "pre-deploy".parse().expect("valid tag")),
                held: None,
                locked_until: None,
            })
            .collect()
    }
}

prop_compose! {
    fn policy()(
        keep_last in 0usize..3,
        keep_daily in 0usize..10,
        keep_weekly in 0usize..6,
        keep_monthly in 0usize..8,
        within_days in prop::option::of(0i64..30),
        min_keep in 1usize..5,
        grace_hours in 0i64..96,
    ) -> Policy {
        Policy {
            keep_last,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_within: within_days.map(TimeDelta::days),
            min_keep,
            unverified_grace: TimeDelta::hours(grace_hours),
            ..Policy::default()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The plan the pruner makes right after a backup, then again after
    /// its clock jumped forward by anything from an hour to ten years: the
    /// jump changes nothing about verified backups (the rules measure from
    /// the newest backup, not from the clock), only unverified ones past
    /// their grace may go, and the brake never has to save the day.
    #[test]
    fn a_forward_clock_jump_never_makes_a_verified_backup_deletable(
        history in history(),
        policy in policy(),
        jump_hours in 1i64..10 * 365 * 24,
    ) {
        let newest = history.iter().map(|b| b.artifact.taken_at()).max().expect("non-empty");
        let now = newest + TimeDelta::minutes(30);
        let before = plan(&history, &policy, now);
        // Steady state: what the run at `now` left on the remote.
        let remaining: Vec<Backup> = history
            .iter()
            .filter(|b| !before.delete.contains_key(&b.artifact))
            .cloned()
            .collect();
        let settled = plan(&remaining, &policy, now);
        let jumped = plan(&remaining, &policy, now + TimeDelta::hours(jump_hours));
        let verified_kept = |p: &Plan| -> BTreeSet<ArtifactName> {
            remaining
                .iter()
                .filter(|b| b.verified && p.keep.contains_key(&b.artifact))
                .map(|b| b.artifact.clone())
                .collect()
        };
        prop_assert_eq!(verified_kept(&jumped), verified_kept(&settled));
        for (artifact, why) in &jumped.delete {
            let backup = remaining.iter().find(|b| &b.artifact == artifact).expect("listed");
            prop_assert!(!backup.verified, "{artifact} deleted after the jump: {why}");
            prop_assert!(backup.tag.is_none(), "tagged {artifact} deleted");
        }
        if remaining.iter().any(|b| b.verified) {
            prop_assert!(!verified_kept(&jumped).is_empty(), "every verified backup would go");
        }
        // The brake would stop a run that lost more than half, but it does
        // not have to: only expired unverified backups go.
        let catalog = Catalog { backups: remaining.clone(), ..Catalog::default() };
        let unverified = remaining.iter().filter(|b| !b.verified).count();
        let database_plan = DatabasePlan { database: db(), plan: jumped, catalog };
        if unverified * 2 <= remaining.len() {
            prop_assert!(database_plan.brake().is_none());
        }
    }
}

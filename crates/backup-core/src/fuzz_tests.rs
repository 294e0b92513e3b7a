//! Property tests of every decoder of outside input in this crate: event
//! payloads and triggers (from anyone who can publish on NATS), manifests
//! and verification records (from the remote), names (from events, remote
//! listings and configuration) and configuration values.
//!
//! Two properties everywhere: no input makes a decoder panic, and every
//! rejection is an error of one bounded line. Where something is accepted,
//! what was accepted is safe: every name is a single path component that
//! cannot climb out of the spool or the remote directory, carries no quote,
//! space or control character a shell or SQL statement could trip on, and
//! the decoded value survives an encode/decode round trip unchanged.

use std::str::FromStr;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::config::{parse_compression, parse_duration};
use crate::events::{
    AnyEvent, DumpCreated, DumpFailed, DumpPruned, DumpShipped, DumpSkipped, DumpStarted,
    DumpVerified, Event, TriggerRequest, salvage_ids,
};
use crate::manifest::{Manifest, VerificationRecord};
use crate::names::{ArtifactName, BackupId, DatabaseName, Sha256Hex, Tag};
use crate::pg::PgTarget;

/// Longest error message a rejection may produce: one line for an event,
/// an alert or a log, never a copy of a huge payload.
const MAX_ERROR_CHARS: usize = 800;

fn assert_one_line(what: &str, error: &str) {
    assert!(!error.trim().is_empty(), "{what}: empty error message");
    assert!(
        !error.chars().any(char::is_control),
        "{what}: error with a control character: {error:?}"
    );
    assert!(
        error.chars().count() <= MAX_ERROR_CHARS,
        "{what}: error of {} characters",
        error.chars().count()
    );
}

/// A string that can be used as one path component below a directory we
/// own, and as a child's argument or an SQL identifier without quoting.
fn assert_safe_component(what: &str, name: &str) {
    assert!(
        !name.is_empty() && name.len() <= 255,
        "{what}: {name:?} has a bad length"
    );
    assert!(
        name != "." && name != ".." && !name.starts_with('.') && !name.starts_with('-'),
        "{what}: {name:?} is a relative or hidden name, or looks like an option"
    );
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')),
        "{what}: {name:?} holds a character outside [A-Za-z0-9._-]"
    );
    let joined = std::path::Path::new("/spool").join(name);
    assert_eq!(
        joined.parent(),
        Some(std::path::Path::new("/spool")),
        "{what}: {name:?} escapes its directory"
    );
}

/// Fragments an attacker would try in a name.
const HOSTILE: &[&str] = &[
    "/",
    "..",
    "../",
    "../../etc/passwd",
    "/etc/shadow",
    "'",
    "\"",
    "`id`",
    "$(id)",
    ";",
    "|",
    "&",
    " ",
    "\n",
    "\r",
    "\t",
    "\0",
    "\u{1b}[31m",
    "\u{202e}",
    "é",
    "%2e%2e%2f",
    "\\",
    "*",
    "?",
    "-rf",
    "--help",
    "DROP TABLE x;--",
];

fn hostile_fragment() -> impl Strategy<Value = String> {
    prop::sample::select(HOSTILE).prop_map(str::to_owned)
}

fn valid_database() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_]{0,20}"
}

const EXTENSIONS: &[&str] = &[
    "sql.gz",
    "sql.zst",
    "dump.gz",
    "dump.zst",
    "sql.gz.age",
    "dump.zst.age",
    "globals.sql.gz",
    "tar.gz",
    "tar.zst.age",
];

fn artifact_of(database: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    (
        database,
        1970u32..2200,
        0u32..14,
        0u32..33,
        0u32..25,
        0u32..61,
        0u32..62,
        prop::sample::select(EXTENSIONS),
    )
        .prop_map(|(db, y, mo, d, h, mi, s, ext)| {
            format!("{db}_{y:04}{mo:02}{d:02}_{h:02}{mi:02}{s:02}.{ext}")
        })
}

/// Mostly plausible names with hostile pieces spliced in anywhere.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>(),
        2 => "[a-zA-Z0-9_./\\\\'\"`$;|& \n\r\t\u{0}-]{0,40}",
        1 => "[a-z]{200,400}",
        1 => hostile_fragment(),
        3 => (
            prop_oneof![valid_database(), artifact_of(valid_database())],
            hostile_fragment(),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(base, fragment, at)| {
                let cut = base
                    .char_indices()
                    .map(|(i, _)| i)
                    .chain(std::iter::once(base.len()))
                    .nth(at.index(base.chars().count() + 1))
                    .unwrap_or(base.len());
                format!("{}{fragment}{}", &base[..cut], &base[cut..])
            }),
    ]
}

/// A value for a name field: valid, hostile, or of the wrong JSON type.
fn name_value(valid: BoxedStrategy<String>) -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => valid.prop_map(Value::String),
        4 => hostile_string().prop_map(Value::String),
        1 => any::<i64>().prop_map(|n| json!(n)),
        1 => Just(Value::Null),
        1 => Just(json!(["a", "b"])),
        1 => Just(json!({"nested": "../x"})),
    ]
}

fn sha_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => "[0-9a-f]{64}".prop_map(Value::String),
        1 => "[0-9a-fA-F]{60,70}".prop_map(Value::String),
        1 => hostile_string().prop_map(Value::String),
    ]
}

fn number_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (0u64..1 << 40).prop_map(|n| json!(n)),
        1 => Just(json!(u64::MAX)),
        1 => Just(json!(-1)),
        1 => Just(json!(1.5)),
        1 => Just(json!(1e300)),
        1 => Just(json!("12")),
    ]
}

fn time_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => Just(json!("2026-11-21T02:00:01Z")),
        1 => Just(json!("2026-11-21T02:00:01.123456789+05:30")),
        1 => Just(json!("+275760-09-13T00:00:00Z")),
        1 => Just(json!("2026-02-30T00:00:00Z")),
        1 => hostile_string().prop_map(Value::String),
        1 => any::<i64>().prop_map(|n| json!(n)),
    ]
}

fn version_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => Just(json!(1)),
        1 => Just(json!(0)),
        1 => Just(json!(2)),
        1 => Just(json!(u64::MAX)),
        1 => Just(json!(-1)),
        1 => Just(json!("1")),
    ]
}

fn free_text() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => "[ -~]{0,60}".prop_map(Value::String),
        1 => hostile_string().prop_map(Value::String),
        1 => ".{490,520}".prop_map(Value::String),
        1 => Just(Value::Null),
        1 => Just(json!(7)),
    ]
}

fn stage_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::sample::select(&["trigger", "dump", "ship", "verify", "prune"][..])
            .prop_map(|s| json!(s)),
        1 => hostile_string().prop_map(Value::String),
        1 => Just(json!("DUMP")),
    ]
}

fn list_of(item: BoxedStrategy<Value>) -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::collection::vec(item, 0..4).prop_map(Value::Array),
        1 => Just(json!("not a list")),
        1 => Just(Value::Null),
    ]
}

/// Every field any event, manifest or record has, each present or missing,
/// valid or hostile. Database and artifact are often consistent, so the
/// decoders' deeper checks (artifact of another database, versions) are
/// reached, not only the name validation.
fn event_object() -> impl Strategy<Value = Value> {
    let database = valid_database().boxed();
    let consistent = valid_database().prop_flat_map(|db| {
        let artifact = artifact_of(Just(db.clone()));
        (Just(db), artifact)
    });
    let token = "[A-Za-z0-9][A-Za-z0-9._-]{0,30}".boxed();
    let fields: Vec<(&'static str, BoxedStrategy<Value>)> = vec![
        ("version", version_value().boxed()),
        ("backup_id", name_value(token.clone()).boxed()),
        ("occurred_at", time_value().boxed()),
        ("created_at", time_value().boxed()),
        ("verified_at", time_value().boxed()),
        ("running_since", time_value().boxed()),
        ("size_bytes", number_value().boxed()),
        ("sha256", sha_value().boxed()),
        ("request_id", name_value(token.clone()).boxed()),
        ("running_backup_id", name_value(token.clone()).boxed()),
        ("tag", name_value(token).boxed()),
        ("reason", free_text().boxed()),
        ("error", free_text().boxed()),
        ("stage", stage_value().boxed()),
        ("attempt", number_value().boxed()),
        ("will_retry", any::<bool>().prop_map(Value::Bool).boxed()),
        ("dry_run", any::<bool>().prop_map(Value::Bool).boxed()),
        ("reverification", any::<bool>().prop_map(Value::Bool).boxed()),
        ("encrypted", any::<bool>().prop_map(Value::Bool).boxed()),
        ("duration_ms", number_value().boxed()),
        ("tables", prop_oneof![number_value(), Just(json!({"public.t": 3, "x\ny": -1}))].boxed()),
        ("rows", number_value().boxed()),
        ("destination", free_text().boxed()),
        ("server_version", free_text().boxed()),
        ("pg_dump_version", free_text().boxed()),
        ("trigger", free_text().boxed()),
        ("format", prop_oneof![Just(json!("plain")), Just(json!("custom")), free_text()].boxed()),
        ("compression", prop_oneof![Just(json!("gzip")), Just(json!("zstd")), free_text()].boxed()),
        ("batch", list_of(name_value(database.clone()).boxed()).boxed()),
        ("checks", list_of(free_text().boxed()).boxed()),
        ("deleted", list_of(name_value(artifact_of(valid_database()).boxed()).boxed()).boxed()),
        ("kept", list_of(name_value(artifact_of(valid_database()).boxed()).boxed()).boxed()),
        ("kept_reasons", Just(json!({"x": ["daily 2026-01-01"], "../y": [1]})).boxed()),
        (
            "limits",
            prop_oneof![
                Just(json!({"stall_after_s": 300, "deadline_s": 3600})),
                Just(json!({"stall_after_s": -1})),
                Just(Value::Null),
            ]
            .boxed(),
        ),
        (
            "aborted",
            prop_oneof![
                Just(json!({"step": "dump", "reason": "stalled", "bytes": 1, "stall_after_s": 1, "deadline_s": 2})),
                Just(json!({"step": "../x"})),
            ]
            .boxed(),
        ),
    ];
    let optional: Vec<_> = fields
        .into_iter()
        .map(|(name, value)| prop::option::weighted(0.8, value).prop_map(move |v| (name, v)))
        .collect();
    (
        consistent,
        name_value(database),
        name_value(artifact_of(valid_database()).boxed()),
        prop::bool::weighted(0.7),
        optional,
    )
        .prop_map(
            |((db, artifact), other_db, other_artifact, use_consistent, fields)| {
                let mut map = Map::new();
                if use_consistent {
                    map.insert("database".into(), json!(db));
                    map.insert("artifact".into(), json!(artifact));
                } else {
                    map.insert("database".into(), other_db);
                    map.insert("artifact".into(), other_artifact);
                }
                for (name, value) in fields {
                    if let Some(value) = value {
                        map.insert(name.into(), value);
                    }
                }
                Value::Object(map)
            },
        )
}

/// A valid document of each kind: 0 an event of any type, 1 a manifest,
/// 2 a verification record.
fn baseline(db: &str, artifact: &str, id: &str, sha: &str, kind: u8) -> Value {
    let mut document = json!({
        "version": 1, "backup_id": id, "database": db,
        "occurred_at": "2026-11-21T02:00:01Z", "artifact": artifact,
        "size_bytes": 1234, "sha256": sha, "duration_ms": 5, "rows": 10,
        "batch": [db], "destination": "sftp://u@h:22/d", "checks": ["restore"],
        "deleted": [], "kept": [artifact], "dry_run": false, "stage": "ship",
        "error": "connection refused", "attempt": 1, "will_retry": true,
        "reason": "release 1.2", "running_backup_id": id,
        "running_since": "2026-11-21T02:00:00Z", "request_id": id, "tag": "pre-deploy",
        "cause": "the previous dump is still running",
    });
    match kind {
        0 => document["tables"] = json!(3),
        1 => {
            document["tables"] = json!({"public.t": 3});
            document["format"] = json!("plain");
            document["compression"] = json!("gzip");
            document["encrypted"] = json!(false);
            document["server_version"] = json!("15.8");
            document["pg_dump_version"] = json!("pg_dump (PostgreSQL) 15.8");
            document["created_at"] = json!("2026-11-21T02:00:03Z");
            document["trigger"] = json!("manual");
        }
        _ => {
            document["tables"] = json!(3);
            document["verified_at"] = json!("2026-11-21T02:10:00Z");
        }
    }
    document
}

/// A complete, valid document (an event of any type, a manifest or a
/// verification record: unknown fields are ignored, so one object can be
/// all events at once) with up to three fields replaced by hostile values
/// or removed. Unlike [`event_object`], many of these are accepted, so the
/// properties of accepted documents are exercised too.
fn mutated_document() -> impl Strategy<Value = Value> {
    let names = valid_database().prop_flat_map(|db| (Just(db.clone()), artifact_of(Just(db))));
    let document = (
        names,
        "[A-Za-z0-9][A-Za-z0-9._-]{0,30}",
        "[0-9a-f]{64}",
        0u8..3,
    )
        .prop_map(|((db, artifact), id, sha, kind)| baseline(&db, &artifact, &id, &sha, kind));
    let field = prop::sample::select(
        &[
            "version",
            "backup_id",
            "database",
            "occurred_at",
            "artifact",
            "size_bytes",
            "sha256",
            "request_id",
            "tag",
            "reason",
            "batch",
            "kept",
            "stage",
            "error",
            "tables",
            "created_at",
            "running_backup_id",
        ][..],
    );
    let replacement = prop::option::weighted(
        0.85,
        prop_oneof![
            4 => hostile_string().prop_map(Value::String),
            1 => number_value(),
            1 => Just(Value::Null),
            1 => prop::collection::vec(hostile_string().prop_map(Value::String), 1..3)
                .prop_map(Value::Array),
        ],
    );
    (document, prop::collection::vec((field, replacement), 0..4)).prop_map(
        |(mut document, mutations)| {
            let map = document.as_object_mut().expect("an object");
            for (field, value) in mutations {
                match value {
                    Some(value) => map.insert(field.to_owned(), value),
                    None => map.remove(field),
                };
            }
            document
        },
    )
}

/// Raw payloads: structured objects, JSON of the wrong shape, truncated
/// or corrupted JSON, and arbitrary bytes.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => mutated_document().prop_map(|v| serde_json::to_vec(&v).expect("serializes")),
        6 => event_object().prop_map(|v| serde_json::to_vec(&v).expect("serializes")),
        1 => prop::collection::vec(any::<u8>(), 0..300),
        1 => "[ -~\n]{0,200}".prop_map(String::into_bytes),
        1 => prop::sample::select(
            &["", " ", "null", "[]", "{}", "\"x\"", "42", "true", "{\"a\":", "{\"version\":1e999}",
              "\u{feff}{}", "{\"database\":\"a\",\"database\":\"b\"}", "[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]"][..],
        )
        .prop_map(|s| s.as_bytes().to_vec()),
        2 => (event_object(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, at, byte)| {
            let mut bytes = serde_json::to_vec(&v).expect("serializes");
            let i = at.index(bytes.len());
            if byte % 2 == 0 {
                bytes.truncate(i);
            } else {
                bytes[i] = byte;
            }
            bytes
        }),
        1 => (1usize..2000).prop_map(|depth| {
            let mut bytes = "[".repeat(depth).into_bytes();
            bytes.extend("]".repeat(depth).into_bytes());
            bytes
        }),
    ]
}

/// Names in an accepted JSON document that will become paths, ids or SQL.
fn check_accepted_names(what: &str, value: &Value) {
    for field in [
        "database",
        "backup_id",
        "artifact",
        "request_id",
        "tag",
        "running_backup_id",
    ] {
        if let Some(name) = value.get(field).and_then(Value::as_str) {
            assert_safe_component(&format!("{what}.{field}"), name);
        }
    }
    for field in ["batch", "deleted", "kept"] {
        for name in value
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            assert_safe_component(
                &format!("{what}.{field}[]"),
                name.as_str().expect("names are strings"),
            );
        }
    }
    if let Some(artifact) = value.get("artifact").and_then(Value::as_str) {
        let parsed: ArtifactName = artifact.parse().expect("accepted artifacts parse");
        assert!(
            artifact.starts_with(&format!("{}_", parsed.database())),
            "{what}: {artifact} does not start with its database"
        );
    }
}

fn check_event<E: Event + PartialEq + std::fmt::Debug>(what: &str, payload: &[u8]) {
    match E::decode(payload) {
        Ok(event) => {
            let value = serde_json::to_value(&event).expect("an event serializes");
            check_accepted_names(what, &value);
            let again = serde_json::to_vec(&event).expect("an event serializes");
            let back = E::decode(&again)
                .unwrap_or_else(|e| panic!("{what}: re-encoded event no longer decodes: {e}"));
            assert_eq!(back, event, "{what}: round trip changed the event");
        }
        Err(error) => assert_one_line(what, &error.to_string()),
    }
}

#[test]
fn the_unmutated_documents_are_accepted_so_the_properties_see_both_sides() {
    let sha = "a".repeat(64);
    let artifact = "viatique_20261121_020001.sql.gz";
    let event = serde_json::to_vec(&baseline("viatique", artifact, "b-1", &sha, 0)).unwrap();
    DumpStarted::decode(&event).expect("dump.started");
    DumpCreated::decode(&event).expect("dump.created");
    DumpShipped::decode(&event).expect("dump.shipped");
    DumpVerified::decode(&event).expect("dump.verified");
    DumpPruned::decode(&event).expect("dump.pruned");
    DumpFailed::decode(&event).expect("dump.failed");
    DumpSkipped::decode(&event).expect("dump.skipped");
    AnyEvent::decode(&event).expect("any event");
    TriggerRequest::decode(&event).expect("trigger");
    let manifest = serde_json::to_vec(&baseline("viatique", artifact, "b-1", &sha, 1)).unwrap();
    Manifest::decode(&manifest).expect("manifest");
    let record = serde_json::to_vec(&baseline("viatique", artifact, "b-1", &sha, 2)).unwrap();
    VerificationRecord::decode(&record).expect("record");
}

proptest! {
    // No regression files: a failure prints its minimal input, which goes
    // into a named test if it is worth keeping.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_event_decoder_accepts_only_safe_payloads(payload in payload()) {
        check_event::<DumpStarted>("dump.started", &payload);
        check_event::<DumpCreated>("dump.created", &payload);
        check_event::<DumpShipped>("dump.shipped", &payload);
        check_event::<DumpVerified>("dump.verified", &payload);
        check_event::<DumpPruned>("dump.pruned", &payload);
        check_event::<DumpFailed>("dump.failed", &payload);
        check_event::<DumpSkipped>("dump.skipped", &payload);
        check_event::<AnyEvent>("any event", &payload);
        let (database, backup_id) = salvage_ids(&payload);
        if let Some(database) = database {
            assert_safe_component("salvaged database", database.as_str());
        }
        if let Some(backup_id) = backup_id {
            assert_safe_component("salvaged backup id", backup_id.as_str());
        }
    }

    #[test]
    fn triggers_are_decoded_or_refused_in_one_line(payload in payload()) {
        match TriggerRequest::decode(&payload) {
            Ok(request) => {
                let value = serde_json::to_value(&request).expect("serializes");
                check_accepted_names("trigger", &value);
                if let Some(reason) = &request.origin.reason {
                    prop_assert!(reason.chars().count() <= 500);
                    prop_assert!(!reason.chars().any(char::is_control), "{reason:?}");
                }
                let back = TriggerRequest::decode(&serde_json::to_vec(&request).expect("serializes"))
                    .expect("a re-encoded trigger decodes");
                prop_assert_eq!(back, request);
            }
            Err(error) => assert_one_line("trigger", &error.to_string()),
        }
    }

    #[test]
    fn manifests_and_records_from_the_remote_are_decoded_or_refused(payload in payload()) {
        match Manifest::decode(&payload) {
            Ok(manifest) => {
                check_accepted_names("manifest", &serde_json::to_value(&manifest).expect("serializes"));
                prop_assert_eq!(manifest.artifact.database(), &manifest.database);
                prop_assert!(manifest.version >= 1);
                let back = Manifest::decode(&manifest.encode()).expect("an encoded manifest decodes");
                prop_assert_eq!(back, manifest);
            }
            Err(error) => assert_one_line("manifest", &error.to_string()),
        }
        match VerificationRecord::decode(&payload) {
            Ok(record) => {
                check_accepted_names("record", &serde_json::to_value(&record).expect("serializes"));
                prop_assert!(record.version >= 1);
                let back = VerificationRecord::decode(&record.encode()).expect("an encoded record decodes");
                prop_assert_eq!(back, record);
            }
            Err(error) => assert_one_line("verification record", &error.to_string()),
        }
    }

    #[test]
    fn hostile_names_are_refused_and_accepted_names_stay_in_their_directory(
        name in prop_oneof![hostile_string(), valid_database(), artifact_of(valid_database()), artifact_of(hostile_string())]
    ) {
        match DatabaseName::from_str(&name) {
            Ok(db) => {
                assert_safe_component("database", db.as_str());
                prop_assert!(db.as_str().len() <= 63);
                prop_assert!(!db.as_str().contains('.') && !db.as_str().contains('-'));
                prop_assert_eq!(db.as_str(), name.as_str());
            }
            Err(e) => assert_one_line("database", &e.to_string()),
        }
        match BackupId::from_str(&name) {
            Ok(id) => assert_safe_component("backup id", id.as_str()),
            Err(e) => assert_one_line("backup id", &e.to_string()),
        }
        match Tag::from_str(&name) {
            Ok(tag) => assert_safe_component("tag", tag.as_str()),
            Err(e) => assert_one_line("tag", &e.to_string()),
        }
        match Sha256Hex::from_str(&name) {
            Ok(sha) => prop_assert!(sha.as_str().len() == 64),
            Err(e) => assert_one_line("sha256", &e.to_string()),
        }
        match ArtifactName::from_str(&name) {
            Ok(artifact) => {
                assert_safe_component("artifact", artifact.as_str());
                prop_assert_eq!(artifact.as_str(), name.as_str());
                for sidecar in [artifact.manifest_name(), artifact.verified_name(), artifact.partial_name()] {
                    assert_safe_component("sidecar", &sidecar);
                    // A sidecar is never mistaken for an artifact.
                    prop_assert!(ArtifactName::from_str(&sidecar).is_err(), "{sidecar}");
                }
                let prefix = format!("{}_", artifact.database());
                prop_assert!(name.starts_with(&prefix), "{name}");
                prop_assert!(name.ends_with(artifact.kind().extension()));
            }
            Err(e) => assert_one_line("artifact", &e.to_string()),
        }
    }

    #[test]
    fn configuration_values_are_parsed_or_refused_in_one_line(
        text in prop_oneof![
            any::<String>(),
            "[0-9]{1,30}[a-z]{0,6}( [0-9]{1,4}[a-z]{1,3}){0,3}",
            "(gzip|zstd|GZIP|lz4)(:[0-9-]{0,25})?",
            hostile_string(),
        ]
    ) {
        match parse_duration(&text) {
            Ok(_) => {}
            Err(e) => assert_one_line("duration", &e),
        }
        match parse_compression(&text) {
            Ok((codec, level)) => {
                let range = match codec {
                    crate::names::Compression::Gzip => 1..=9,
                    crate::names::Compression::Zstd => 1..=22,
                };
                prop_assert!(level.is_none_or(|l| range.contains(&l)), "{text:?} gave {level:?}");
            }
            Err(e) => assert_one_line("compression", &e),
        }
        for item in crate::config::comma_list(&text) {
            prop_assert!(!item.is_empty() && !item.contains(','));
            prop_assert_eq!(item.trim(), item.as_str());
        }
    }

    #[test]
    fn database_urls_never_echo_their_password(
        password in "[A-Za-z0-9]{12}",
        junk in prop_oneof![hostile_string(), "[:@/?=&%a-z0-9]{0,20}"],
        shape in 0usize..6,
    ) {
        let password = format!("PW{password}");
        let url = match shape {
            0 => format!("postgresql://user:{password}@host:{junk}/db"),
            1 => format!("postgresql://user:{password}@{junk}/db"),
            2 => format!("postgresql://user:{password}@host/db?{junk}"),
            3 => format!("host=h password={password} {junk}"),
            4 => format!("postgres://{junk}:{password}@host:5432/{junk}"),
            _ => format!("{junk}://user:{password}@host"),
        };
        match PgTarget::from_url(&url) {
            Ok(target) => {
                prop_assert!(!target.describe().contains(&password), "{}", target.describe());
                let debug = format!("{target:?}");
                prop_assert!(!debug.contains(&password), "{debug}");
            }
            Err(error) => {
                let text = error.to_string();
                prop_assert!(!text.contains(&password), "{text}");
                assert_one_line("database URL", &text);
            }
        }
    }

    #[test]
    fn one_line_is_always_one_bounded_line(text in prop_oneof![any::<String>(), ".{0,2000}", "[\n\r\t a\u{0}\u{7f}\u{85}\u{2028}]{0,50}"]) {
        let line = crate::one_line(&text);
        prop_assert!(!line.chars().any(char::is_control), "{line:?}");
        prop_assert!(line.chars().count() <= 601);
    }
}

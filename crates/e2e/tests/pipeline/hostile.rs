//! Hostile input from whoever can publish on NATS, leave files on the
//! remote, or write the configuration: names with `/`, `..`, quotes,
//! newlines, control characters and very long strings, in every field that
//! becomes a path, an SQL identifier or a child's argument. Each message is
//! refused with a `dump.failed` naming its stream sequence, nothing outside
//! the spool or the remote directory is read or written, and the pipeline
//! goes on working.

use std::process::Command;

use super::*;

const FAR_PAST: &str = "20250101_000000";

/// Values that must never become a database name.
fn hostile_databases() -> Vec<String> {
    [
        "..",
        "../x",
        "/etc",
        "x/..",
        "a b",
        "x'; DROP TABLE t;--",
        "x\"y",
        "x\ny",
        "x\u{0}y",
        "x\u{1b}[2J",
        "$(id)",
        "`id`",
        "-x",
        "é",
        "",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(std::iter::once("a".repeat(300)))
    .collect()
}

/// Values that must never become an artifact name, for database `db`.
fn hostile_artifacts(db: &str) -> Vec<String> {
    vec![
        format!("../{db}_{FAR_PAST}.sql.gz"),
        format!("../../x_{FAR_PAST}.sql.gz"),
        "/etc/passwd".to_owned(),
        format!("{db}_{FAR_PAST}.sql.gz/../../x"),
        format!("{db}_{FAR_PAST}.sql.gz\n"),
        format!("{db}_{FAR_PAST}.sql.gz.partial"),
        format!("{db}_{FAR_PAST}.sql.gz.manifest.json"),
        format!("{db}_{FAR_PAST}.sql.gz; rm -rf /"),
        format!("{db}_{FAR_PAST}.sql.gz'"),
        "..".to_owned(),
        format!("{}_{FAR_PAST}.sql.gz", "a".repeat(250)),
    ]
}

/// A valid event of every kind at once (unknown fields are ignored).
fn baseline(db: &str, artifact: &str) -> Value {
    json!({
        "version": 1,
        "backup_id": "hostile-1",
        "database": db,
        "occurred_at": "2026-11-21T02:00:01Z",
        "artifact": artifact,
        "size_bytes": 1234,
        "sha256": "a".repeat(64),
        "duration_ms": 1,
        "tables": 1,
        "rows": 1,
        "destination": "sftp://u@h:22/d",
        "checks": ["restore"],
    })
}

fn with(mut event: Value, field: &str, value: &str) -> Vec<u8> {
    event[field] = json!(value);
    serde_json::to_vec(&event).expect("JSON")
}

/// A file's bytes, or a note that it is gone.
fn contents(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| format!("<{e}>").into_bytes())
}

#[test]
fn hostile_events_and_names_are_refused_and_nothing_outside_is_touched() {
    let source = TestDatabase::create("e2e_hostile");
    fill(&source, 2_000);
    let db = source.name.clone();
    let mut p = Pipeline::new(vec![source]);

    // Decoys where an escaped path would land: beside the spool, and
    // beside the remote directory, each a consistent artifact + manifest
    // that a fooled shipper or verifier would gladly use.
    let outside = p.spool.parent().expect("the spool has a parent").to_owned();
    let decoy = format!("x_{FAR_PAST}.sql.gz");
    let remote_outside = p.sshd.remote_root.join("x");
    let mut decoys = Vec::new();
    for dir in [outside.clone(), outside.join("x"), remote_outside.clone()] {
        std::fs::create_dir_all(&dir).expect("decoy dir");
        let artifact = dir.join(&decoy);
        std::fs::write(&artifact, b"decoy: not a backup of ours").expect("decoy");
        let manifest = json!({"artifact": decoy, "database": "x", "sha256": sha256_hex(&artifact)});
        std::fs::write(
            dir.join(format!("{decoy}.manifest.json")),
            serde_json::to_vec(&manifest).expect("JSON"),
        )
        .expect("decoy manifest");
        decoys.push(artifact);
    }
    std::fs::create_dir_all(&p.spool).expect("spool");
    // Names on the remote that are not ours, and would break a naive
    // listing or a shell: they must be left exactly as they are.
    let remote_db = p.remote_base().join(&db);
    std::fs::create_dir_all(&remote_db).expect("remote db dir");
    let strangers = [
        format!("{db}_{FAR_PAST}.sql.gz\nrm -rf ~"),
        format!("{db}_{FAR_PAST}.sql.gz.bak"),
        format!("'{db}_{FAR_PAST}.sql.gz'"),
        "..hidden".to_owned(),
        format!("{db}_{FAR_PAST}.sql.gz;id"),
        "x".repeat(255),
        "\u{1b}[31mred".to_owned(),
    ];
    for name in &strangers {
        std::fs::write(remote_db.join(name), b"not ours").expect("stranger");
    }
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{0}:{0}", p.sshd.user))
        .arg(p.remote_base())
        .arg(&remote_outside)
        .status()
        .expect("chown");
    assert!(status.success());
    let outside_before = walk(&outside);
    let decoys_before: Vec<Vec<u8>> = decoys.iter().map(|d| contents(d)).collect();
    p.start_all();

    // Every way to smuggle a name, on every subject that carries one.
    let mut hostile: Vec<(&str, Vec<u8>)> = Vec::new();
    let good_artifact = format!("{db}_{FAR_PAST}.sql.gz");
    for subject in ["dump.created", "dump.shipped", "dump.verified"] {
        for bad in hostile_databases() {
            hostile.push((
                subject,
                with(baseline(&db, &good_artifact), "database", &bad),
            ));
        }
        for bad in hostile_artifacts(&db) {
            hostile.push((subject, with(baseline(&db, &bad), "artifact", &bad)));
        }
        for bad in ["../../x", "a/b", ".hidden", "x y", "x\n"] {
            hostile.push((
                subject,
                with(baseline(&db, &good_artifact), "backup_id", bad),
            ));
        }
    }
    // The decoy's own names: only the database part differs from the event.
    for subject in ["dump.created", "dump.shipped"] {
        hostile.push((subject, with(baseline(&db, &decoy), "artifact", &decoy)));
    }
    for bad in hostile_databases() {
        hostile.push((
            "backup.trigger",
            serde_json::to_vec(&json!({"database": bad})).expect("JSON"),
        ));
    }
    for (field, bad) in [
        ("tag", "../../etc"),
        ("tag", "pre-deploy; rm"),
        ("request_id", "a/../b"),
        ("reason", "line one\nline two"),
        ("reason", "\u{1b}[2J"),
    ] {
        hostile.push((
            "backup.trigger",
            serde_json::to_vec(&json!({ "database": db, field: bad })).expect("JSON"),
        ));
    }
    // Garbage where a failure is expected: the notifier must refuse it
    // and stay up to alert about the next real one.
    for garbage in [
        &b"not json"[..],
        b"{}",
        b"[\"dump.failed\"]",
        br#"{"version":1,"database":"../x","stage":"dump","error":"x"}"#,
        br#"{"version":1,"backup_id":"a/b","database":"x","occurred_at":"2026-01-01T00:00:00Z","stage":"dump","error":"x","attempt":1,"will_retry":false}"#,
    ] {
        hostile.push(("dump.failed", garbage.to_vec()));
    }
    // A backup id of its own for each message: a report is deduplicated
    // by backup id, stage and attempt.
    let sequences: Vec<(u64, &str)> = hostile
        .into_iter()
        .enumerate()
        .map(|(n, (subject, payload))| {
            let payload = match serde_json::from_slice::<Value>(&payload) {
                Ok(Value::Object(mut event))
                    if event.get("backup_id") == Some(&json!("hostile-1")) =>
                {
                    event.insert("backup_id".into(), json!(format!("hostile-{n}")));
                    serde_json::to_vec(&event).expect("JSON")
                }
                _ => payload,
            };
            (p.events.publish(subject, payload), subject)
        })
        .collect();

    // Well-formed names that point at nothing stay inside their directory.
    let missing = format!("{db}_20250102_000000.sql.gz");
    let missing_created = p.events.publish(
        "dump.created",
        serde_json::to_vec(&baseline(&db, &missing)).expect("JSON"),
    );
    let missing_shipped = p.events.publish(
        "dump.shipped",
        serde_json::to_vec(&baseline(&db, &missing)).expect("JSON"),
    );

    let refusal_of = |sequence: u64| {
        let marker = format!("(stream sequence {sequence})");
        move |e: &Value| {
            e["will_retry"] == false
                && e["error"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("rejected") && m.contains(&marker))
        }
    };
    for (sequence, subject) in &sequences {
        let refusal = p.events.wait(
            "dump.failed",
            Duration::from_secs(120),
            refusal_of(*sequence),
        );
        let error = refusal["error"].as_str().expect("error");
        assert!(
            !error.chars().any(char::is_control) && error.chars().count() <= 800,
            "{subject} #{sequence}: not one bounded line: {error:?}"
        );
    }
    let spool_miss = p.events.wait("dump.failed", Duration::from_secs(120), |e| {
        e["stage"] == "ship" && e["artifact"] == missing.as_str()
    });
    let error = spool_miss["error"].as_str().expect("error");
    assert!(
        error.contains(&p.spool.join(&db).join(&missing).display().to_string()),
        "{error}"
    );
    let remote_miss = p.events.wait("dump.failed", Duration::from_secs(120), |e| {
        e["stage"] == "verify" && e["artifact"] == missing.as_str()
    });
    assert!(missing_created > 0 && missing_shipped > 0, "{remote_miss}");

    // The pipeline still works, with free text that is not a name.
    let reason = "l'examen \"final\" de l'été — $(id) `id` ; DROP TABLE x";
    p.events.publish(
        "backup.trigger",
        serde_json::to_vec(&json!({
            "database": db, "request_id": "after-garbage", "tag": "pre-deploy", "reason": reason,
        }))
        .expect("JSON"),
    );
    let verified = p.wait_verified("after-garbage", Duration::from_secs(120));
    p.events.wait("dump.pruned", Duration::from_secs(120), |e| {
        e["backup_id"] == verified["backup_id"]
    });
    let manifests = assert_complete_artifacts(&remote_db);
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    let manifest = manifests.values().next().expect("one manifest");
    assert_eq!(manifest["reason"], reason);
    assert_eq!(manifest["tag"], "pre-deploy");

    // Nothing outside was written, moved or deleted; the decoys were not
    // shipped; the strangers on the remote are untouched.
    assert_eq!(
        decoys.iter().map(|d| contents(d)).collect::<Vec<_>>(),
        decoys_before
    );
    let outside_after: Vec<PathBuf> = walk(&outside)
        .into_iter()
        .filter(|path| !path.starts_with("spool"))
        .collect();
    let outside_before: Vec<PathBuf> = outside_before
        .into_iter()
        .filter(|path| !path.starts_with("spool"))
        .collect();
    assert_eq!(outside_after, outside_before);
    let remote_names = files_in(&remote_db);
    for name in &strangers {
        assert!(remote_names.contains(name), "{name:?} was removed");
        assert_eq!(contents(&remote_db.join(name)), b"not ours");
    }
    assert!(
        walk(&p.remote_base())
            .iter()
            .all(|path| !path.to_string_lossy().contains(&decoy)),
        "a decoy reached the remote directory: {:?}",
        walk(&p.remote_base())
    );
    assert_eq!(
        files_in(&p.sshd.remote_root),
        BTreeSet::from(["backups".to_owned(), "x".to_owned()])
    );
    p.assert_alive();
    p.assert_no_scratch_database();

    // Configuration is outside input too: each bad name is refused at
    // start-up with one line, before anything connects.
    let bin = |name: &str| test_support::process::workspace_bin(name);
    let mut refused = 0;
    for bad in hostile_databases()
        .into_iter()
        .filter(|b| !b.is_empty() && !b.contains('\0'))
    {
        let output = Command::new(bin("dumper"))
            .env("BACKUP_DATABASES", &bad)
            .env("NATS_URL", "nats://127.0.0.1:1")
            .output()
            .expect("run dumper");
        assert_eq!(output.status.code(), Some(2), "BACKUP_DATABASES={bad:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("dumper: ") && last.contains("BACKUP_DATABASES"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        refused += 1;
    }
    for (service, name, value) in [
        (
            "verifier",
            "VERIFY_SCRATCH_PREFIX",
            "verify; DROP DATABASE postgres",
        ),
        ("verifier", "VERIFY_SCRATCH_PREFIX", "../x"),
        ("shipper", "SFTP_DIR", "backups/../.."),
    ] {
        let env = p.env(service);
        let output = Command::new(bin(service))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env(name, value)
            .env("NATS_URL", "nats://127.0.0.1:1")
            .output()
            .expect("run service");
        assert_eq!(output.status.code(), Some(2), "{service} {name}={value:?}");
        refused += 1;
    }
    report(
        "hostile input",
        &Figures {
            triggered: 1,
            verified: 1,
            faults: 0,
            refused: sequences.len() + 2 + refused,
            secrets_found: 0,
        },
        &format!(
            "{} hostile messages refused, 2 dangling names kept inside, {refused} bad settings refused",
            sequences.len()
        ),
    );
}

//! A restore that stops moving is aborted by the watchdog without leftovers.

use super::*;

/// Pids of the psql processes the in-process verifier started (children
/// of this test process with the verifier's arguments), zombies excluded.
fn verifier_psqls() -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if process_alive_child_of(pid, me)
            && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "psql")
            && std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(13).any(|w| w == b"--no-password"))
        {
            found.push(pid);
        }
    }
    found
}

/// Whether `pid` is a live (not zombie) child of `parent`.
fn process_alive_child_of(pid: u32, parent: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ppid ...`
    let mut fields = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace();
    let state = fields.next().unwrap_or("Z");
    let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    state != "Z" && ppid == parent
}

/// A process gone or a zombie: either way it holds nothing any more.
fn process_gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

#[test]
fn a_restore_blocked_by_a_lock_on_the_scratch_server_is_aborted_without_leftovers_then_verified() {
    let rig = Rig::start(Options {
        limits: Some(Limits::new(
            Duration::from_secs(3),
            Duration::from_secs(3600),
        )),
        ..NO_OPTIONS
    });
    // A row-level security policy for a role that exists on the scratch
    // server (the same server here): the restore keeps it (ownership and
    // grants are skipped, policies are not) after all the data.
    let role = format!("vlock_{:08x}", rand::random::<u32>());
    let source = TestDatabase::create("vsrc");
    source.execute(&format!(
        "CREATE ROLE {role} NOLOGIN;
         CREATE TABLE exam (id serial PRIMARY KEY, title text);
         INSERT INTO exam(title) SELECT 'exam ' || i FROM generate_series(1, 20000) i;
         ALTER TABLE exam ENABLE ROW LEVEL SECURITY;
         CREATE POLICY readers ON exam FOR SELECT TO {role} USING (true);"
    ));
    let name = artifact_name(&source.name, "sql.gz");
    let file = rig.work.path().join(&name);
    sh(
        "pg_dump -d \"$DB\" | gzip > \"$OUT\"",
        &[("DB", &source.name), ("OUT", file.to_str().unwrap())],
    );
    let manifest = manifest_for(Some(&source), &source.name, &name, &file);
    // Nothing depends on the role any more, so that the operator below can
    // drop it.
    source.execute("DROP POLICY readers ON exam;");

    // An operator's transaction on the scratch server, still open: it
    // dropped the role and holds the role's lock until it ends. Recording
    // a policy's (or an owner's, a grant's) dependency on a role takes a
    // share lock on the role, so the restore waits on it, as on a lock held
    // by a long migration.
    // Watched from another session: inside a transaction,
    // pg_stat_activity does not change.
    let (holder, observer) = rig.runtime.block_on(async {
        let target = PgTarget::from_url("postgresql://postgres@127.0.0.1:5432/postgres").unwrap();
        let holder = target.connect("lock-holder").await.unwrap();
        holder
            .batch_execute(&format!("BEGIN; DROP ROLE {role};"))
            .await
            .unwrap();
        (holder, target.connect("observer").await.unwrap())
    });

    let backup_id = rig.ship(&source.name, &file, &manifest);
    let mut scratch_seen = std::collections::BTreeSet::new();
    let mut psql_seen = std::collections::BTreeSet::new();
    test_support::wait_until(
        Duration::from_secs(120),
        "the restore to wait on the role's lock",
        || {
            let blocked = rig.runtime.block_on(async {
                observer
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE datname LIKE $1 AND wait_event_type = 'Lock'",
                        &[&format!("{}\\_%", rig.prefix)],
                    )
                    .await
                    .unwrap()
                    .get::<_, i64>(0)
                    > 0
            });
            // Taken while blocked: the names and pids of this attempt.
            scratch_seen.extend(databases_with_prefix(&rig.prefix));
            psql_seen.extend(verifier_psqls());
            blocked && !scratch_seen.is_empty() && !psql_seen.is_empty()
        },
    );

    let (subject, failed) = rig.verdict(&backup_id);
    assert_eq!(subject, "dump.failed", "{failed:#}");
    assert_eq!(failed["stage"], "verify", "{failed:#}");
    assert_eq!(failed["will_retry"], true, "{failed:#}");
    let aborted = &failed["aborted"];
    assert_eq!(aborted["step"], "restore", "{failed:#}");
    assert_eq!(aborted["reason"], "stalled", "{failed:#}");
    assert_eq!(aborted["stall_after_s"], 3, "{failed:#}");
    let bytes = aborted["bytes"].as_u64().unwrap();
    assert!(bytes > 0, "{failed:#}");
    assert_eq!(
        failed["error"],
        format!("restore of {name} stalled: no progress for 3s after {bytes} bytes; aborted")
    );
    // Nothing of the aborted attempt is left: its psql is gone, and so is
    // its scratch database, with the backend that waited on the lock.
    for pid in &psql_seen {
        assert!(process_gone(*pid), "psql {pid} survived the abort");
    }
    let left: Vec<String> = databases_with_prefix(&rig.prefix)
        .into_iter()
        .filter(|d| scratch_seen.contains(d))
        .collect();
    assert!(left.is_empty(), "scratch databases left: {left:?}");

    // The operator's transaction ends; the retry verifies the backup.
    rig.runtime
        .block_on(holder.batch_execute("ROLLBACK"))
        .unwrap();
    let mut verified = None;
    test_support::wait_until(Duration::from_secs(180), "the retry to verify", || {
        verified = rig
            .events("dump.verified")
            .into_iter()
            .find(|e| e["backup_id"] == backup_id.as_str());
        verified.is_some()
    });
    let verified = verified.unwrap();
    assert_eq!(
        verified["limits"],
        json!({"stall_after_s": 3, "deadline_s": 3600})
    );
    assert!(
        verified["checks"].to_string().contains("exact row counts"),
        "{verified:#}"
    );
    rig.assert_no_scratch_left();
    assert!(verifier_psqls().is_empty());
    drop(source);
    sh(
        "psql -X -q -d postgres -c \"DROP ROLE IF EXISTS $ROLE\"",
        &[("ROLE", &role)],
    );
}

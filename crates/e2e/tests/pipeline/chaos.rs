//! Crash safety: a series of backups while a seeded-random service is
//! killed with SIGKILL at a random moment (mid-dump, mid-upload,
//! mid-restore, or wherever it is) and restarted, over and over.
//!
//! At the end, every trigger must have become exactly one backup, verified
//! once, on the remote; no temporary file may be left (and every final name
//! must hold a complete file); no scratch database may remain; no event may
//! be lost (each trigger's started, created, shipped, verified and pruned
//! events are there, every durable consumer is drained, nothing failed).
//!
//! A killed consumer's message comes back when its `ack_wait` (60 s)
//! expires. In the CI variant the test sends the nak the dead process never
//! sent, which is what that expiry does, only sooner; the services' side of
//! the recovery (sweeping partial files and scratch databases, redoing the
//! work idempotently) is the same. `CHAOS_REAL_REDELIVERY=1` waits for
//! JetStream's own timer instead. `CHAOS_ROUNDS` (triggers, default 6),
//! `CHAOS_FAULTS` (kills, default as many as rounds) and `CHAOS_SEED`
//! (printed on every run) make the long local variant and replay a run.

use std::thread;

use super::*;

/// SplitMix64: small, seedable, good enough to pick victims and moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

/// Where a service is when it gets killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Moment {
    MidDump,
    MidUpload,
    MidRestore,
    /// Whatever it is doing (or waiting for work).
    Anywhere,
}

impl Moment {
    fn label(self) -> &'static str {
        match self {
            Moment::MidDump => "mid-dump",
            Moment::MidUpload => "mid-upload",
            Moment::MidRestore => "mid-restore",
            Moment::Anywhere => "anywhere",
        }
    }
}

/// The victims, weighted: the three stages that hold work most.
const VICTIMS: [(&str, Moment, u64); 5] = [
    ("dumper", Moment::MidDump, 3),
    ("shipper", Moment::MidUpload, 3),
    ("verifier", Moment::MidRestore, 3),
    ("pruner", Moment::Anywhere, 1),
    ("notifier", Moment::Anywhere, 1),
];

/// Whether `parent` has a child process whose command is `name`.
fn has_child(parent: u32, name: &str) -> bool {
    process_table()
        .iter()
        .any(|p| p.ppid == parent && p.comm == name)
}

/// Waits up to `timeout` for the victim to be at `moment`; false if that
/// never happened (the stage had nothing to do).
fn wait_for(p: &Pipeline, victim: &str, moment: Moment, database: &str) -> bool {
    let pid = p.service(victim).pid();
    let deadline = Instant::now() + Duration::from_secs(10);
    let remote = p.remote_base().join(database);
    while Instant::now() < deadline {
        let there = match moment {
            Moment::MidDump => has_child(pid, "pg_dump"),
            Moment::MidUpload => files_in(&remote).iter().any(|f| f.ends_with(".partial")),
            Moment::MidRestore => has_child(pid, "psql"),
            Moment::Anywhere => true,
        };
        if there {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn kill_anything_anytime_and_every_backup_is_verified_exactly_once() {
    let started = Instant::now();
    let rounds = env_number("CHAOS_ROUNDS", 6) as usize;
    let max_faults = env_number("CHAOS_FAULTS", rounds as u64) as usize;
    let seed = env_number("CHAOS_SEED", rand_u64());
    let real_redelivery = std::env::var("CHAOS_REAL_REDELIVERY").is_ok_and(|v| v == "1");
    let _ = writeln!(
        std::io::stderr(),
        "chaos: seed {seed} (CHAOS_SEED={seed} replays it), {rounds} triggers, up to {max_faults} kills, {} redelivery",
        if real_redelivery {
            "JetStream's own"
        } else {
            "immediate"
        }
    );
    let mut rng = Rng(seed);

    let source = TestDatabase::create("e2e_chaos");
    fill(&source, 100_000);
    let database = source.name.clone();
    let mut p = Pipeline::new(vec![source]);
    // Uploads last about a second; nothing is pruned, so every backup can
    // be checked on the remote at the end.
    p.set("shipper", "SHIP_BANDWIDTH_LIMIT", "4MiB/s");
    p.set("pruner", "RETENTION_KEEP_LAST", "100000");
    p.start_all();

    let triggers = {
        let url = p.nats.url.clone();
        let database = database.clone();
        let mut rng = Rng(seed ^ 0x5eed);
        thread::spawn(move || {
            let events = Events::connect(&url);
            for round in 0..rounds {
                events.trigger(&database, &format!("chaos-{round}"));
                thread::sleep(rng.millis(300, 2500));
            }
        })
    };

    let verified_requests = |p: &Pipeline| -> BTreeSet<String> {
        p.events
            .of("dump.verified")
            .iter()
            .filter(|e| e["reverification"] != true)
            .filter_map(|e| e["request_id"].as_str().map(str::to_owned))
            .collect()
    };
    let deadline = Instant::now()
        + Duration::from_secs(
            180 + 30 * rounds as u64
                + if real_redelivery {
                    70 * max_faults as u64
                } else {
                    0
                },
        );
    let mut faults: Vec<(&'static str, Moment)> = Vec::new();
    loop {
        if triggers.is_finished() && verified_requests(&p).len() == rounds {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: after {} faults, {} of {rounds} triggers verified; the stream holds:\n{}",
            faults.len(),
            verified_requests(&p).len(),
            p.events.summary()
        );
        if faults.len() >= max_faults {
            thread::sleep(Duration::from_millis(500));
            continue;
        }
        let total: u64 = VICTIMS.iter().map(|v| v.2).sum();
        let mut pick = rng.below(total);
        let (victim, moment, _) = *VICTIMS
            .iter()
            .find(|v| {
                if pick < v.2 {
                    true
                } else {
                    pick -= v.2;
                    false
                }
            })
            .expect("a victim");
        let hit = wait_for(&p, victim, moment, &database);
        thread::sleep(rng.millis(0, 250));
        let held = p.events.consumer(victim);
        p.kill(victim);
        p.start(victim);
        if !real_redelivery && held.num_ack_pending > 0 {
            p.events.release(victim, &held);
        }
        faults.push((victim, if hit { moment } else { Moment::Anywhere }));
        thread::sleep(rng.millis(200, 2000));
    }
    triggers.join().expect("the trigger thread");

    // Every trigger went the whole way, each event once.
    let all = p.events.all();
    let of = |subject: &str, request: &str| -> Vec<Value> {
        all.iter()
            .filter(|s| s.subject == subject && s.body["request_id"] == request)
            .map(|s| s.body.clone())
            .collect()
    };
    let mut backup_ids = BTreeSet::new();
    for round in 0..rounds {
        let request = format!("chaos-{round}");
        let verified: Vec<Value> = of("dump.verified", &request)
            .into_iter()
            .filter(|e| e["reverification"] != true)
            .collect();
        assert_eq!(
            verified.len(),
            1,
            "seed {seed}: {request} verified {verified:?}"
        );
        let backup_id = verified[0]["backup_id"]
            .as_str()
            .expect("backup id")
            .to_owned();
        for subject in ["dump.started", "dump.created", "dump.shipped"] {
            let found = of(subject, &request);
            assert_eq!(
                found.len(),
                1,
                "seed {seed}: {request} has {} {subject} events",
                found.len()
            );
            assert_eq!(found[0]["backup_id"], backup_id.as_str());
        }
        assert!(backup_ids.insert(backup_id), "two triggers made one backup");
    }
    for backup_id in &backup_ids {
        p.events.wait("dump.pruned", Duration::from_secs(120), |e| {
            e["backup_id"] == backup_id.as_str()
        });
    }
    for consumer in SERVICES {
        wait_drained(&p.events, consumer, Duration::from_secs(120));
    }
    let failures = p.events.of("dump.failed");
    assert!(
        failures.is_empty(),
        "seed {seed}: crashes must not surface as failures: {failures:#?}"
    );

    // On the remote: one complete, verified artifact per trigger, nothing else.
    let remote = p.remote_base().join(&database);
    let manifests = assert_complete_artifacts(&remote);
    let on_remote: BTreeSet<String> = manifests
        .values()
        .map(|m| m["backup_id"].as_str().expect("backup id").to_owned())
        .collect();
    assert_eq!(
        manifests.len(),
        rounds,
        "seed {seed}: {:?}",
        files_in(&remote)
    );
    assert_eq!(on_remote, backup_ids);
    for (artifact, manifest) in &manifests {
        let record: Value = serde_json::from_slice(
            &std::fs::read(remote.join(format!("{artifact}.verified.json"))).unwrap_or_else(|e| {
                panic!("seed {seed}: {artifact} has no verification record: {e}")
            }),
        )
        .expect("record is JSON");
        assert_eq!(record["sha256"], manifest["sha256"]);
        assert_eq!(record["backup_id"], manifest["backup_id"]);
    }
    assert_no_partials(&p.remote_base());
    assert_no_partials(&p.spool);
    assert_complete_artifacts(&p.spool.join(&database));
    p.assert_no_scratch_database();
    p.assert_alive();
    assert!(
        p.alerts().is_empty(),
        "seed {seed}: crashes alerted: {:?}",
        p.alerts().iter().map(|m| &m.subject).collect::<Vec<_>>()
    );

    let mut kinds: BTreeMap<(&str, Moment), usize> = BTreeMap::new();
    for fault in &faults {
        *kinds.entry(*fault).or_default() += 1;
    }
    let breakdown = kinds
        .iter()
        .map(|((victim, moment), n)| format!("{victim} {} ×{n}", moment.label()))
        .collect::<Vec<_>>()
        .join(", ");
    report(
        "chaos (SIGKILL)",
        &Figures {
            triggered: rounds,
            verified: backup_ids.len(),
            faults: faults.len(),
            refused: 0,
            secrets_found: 0,
        },
        &format!("seed {seed}; kills: {breakdown}; {:.0?}", started.elapsed()),
    );
}

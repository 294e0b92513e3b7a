//! Scaling out: several instances of a service holding several messages
//! each, and one dumper per PostgreSQL server.
//!
//! - Two shippers and two verifiers with a concurrency of 2, one of each
//!   killed with SIGKILL while it holds work (its `/healthz` lists the
//!   messages in flight): every backup is verified exactly once, nothing
//!   is lost, no scratch database is left.
//! - Two dumpers on two PostgreSQL servers (the machine's and a private
//!   cluster), twenty databases spread over them, one trigger for all: all
//!   twenty are verified, each dumped by the dumper that serves it; a
//!   trigger for one database reaches its dumper only, and a trigger for a
//!   database nobody serves ends in a single `dump.failed` (stage
//!   `trigger`).
//!
//! Both run on one `nats-server`; the scale benchmark also runs on a
//! three-node cluster (`NATS_URL` its seed list, `NATS_STREAM_REPLICAS=3`).
//!
//! Killed messages come back when the consumer's `ack_wait` (60 s)
//! expires: the first test waits for JetStream's own redelivery.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Instant;

use serde_json::Value;
use test_support::pg_cluster::PostgresCluster;
use test_support::pipeline::EventLog;

use super::*;

/// Small databases: a few hundred kB of SQL each, so a test stays short
/// and a throttled upload still takes long enough to be caught.
fn fill(sql: &mut dyn FnMut(&str), rows: u32) {
    sql(&format!(
        "CREATE TABLE item (id bigserial PRIMARY KEY, label text NOT NULL);
         INSERT INTO item(label) SELECT md5(i::text) || md5((i * 7)::text) FROM generate_series(1, {rows}) i;"
    ));
}

/// The bus of a bench: one server, or a three-node cluster.
enum BenchNats {
    Single(NatsServer),
    Cluster(test_support::NatsCluster),
}

impl BenchNats {
    /// `NATS_URL` for the services: the server, or the cluster's seeds.
    fn url(&self) -> String {
        match self {
            BenchNats::Single(server) => server.url.clone(),
            BenchNats::Cluster(cluster) => cluster.url(),
        }
    }

    /// One server the test's own client connects to.
    fn first_url(&self) -> String {
        match self {
            BenchNats::Single(server) => server.url.clone(),
            BenchNats::Cluster(cluster) => cluster.urls()[0].clone(),
        }
    }

    fn replicas(&self) -> &'static str {
        match self {
            BenchNats::Single(_) => "1",
            BenchNats::Cluster(_) => "3",
        }
    }
}

/// NATS, SFTP and a spool shared by the services of one test.
struct Bench {
    nats: BenchNats,
    sshd: Sshd,
    spool: tempfile::TempDir,
    scratch_prefix: String,
    runtime: tokio::runtime::Runtime,
    js: async_nats::jetstream::Context,
}

impl Bench {
    fn start(scratch_prefix: &str) -> Bench {
        Bench::start_on(scratch_prefix, BenchNats::Single(NatsServer::start()))
    }

    fn start_on(scratch_prefix: &str, nats: BenchNats) -> Bench {
        ensure_postgres_running();
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let js = runtime.block_on(async {
            let client = async_nats::connect(nats.first_url())
                .await
                .expect("connect to NATS");
            async_nats::jetstream::new(client)
        });
        Bench {
            nats,
            sshd: Sshd::start(),
            spool: tempfile::tempdir().expect("spool dir"),
            scratch_prefix: scratch_prefix.to_owned(),
            runtime,
            js,
        }
    }

    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let url = self.nats.url();
        let mut env: Vec<(String, String)> = [
            ("NATS_URL", url.as_str()),
            ("NATS_STREAM_REPLICAS", self.nats.replicas()),
            ("RUST_LOG", "info"),
            (
                "BACKUP_SPOOL_DIR",
                self.spool.path().to_str().expect("utf-8 path"),
            ),
            (
                "VERIFY_DATABASE_URL",
                "postgresql://postgres@127.0.0.1:5432/postgres",
            ),
            ("VERIFY_SCRATCH_PREFIX", self.scratch_prefix.as_str()),
            ("VERIFY_REVERIFY_EVERY", "off"),
            ("BACKUP_SCHEDULE", "off"),
            ("SHUTDOWN_GRACE", "2s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain(self.sshd.sftp_env(&self.sshd.backups_dir()))
        .collect();
        env.extend(pg_env());
        // Later entries win: a service's own settings override the above.
        for (key, value) in extra {
            env.retain(|(k, _)| k != key);
            env.push(((*key).to_owned(), (*value).to_owned()));
        }
        env
    }

    fn spawn(&self, name: &str, extra: &[(&str, &str)]) -> ServiceProcess {
        let service = ServiceProcess::spawn(name, &[], &self.env(extra));
        assert!(
            service.wait_for_log("waiting for work", Duration::from_secs(90)),
            "{name} did not start:\n{}",
            service.log()
        );
        service
    }

    fn events(&self) -> EventLog {
        let _guard = self.runtime.enter();
        self.runtime.block_on(EventLog::follow(&self.js))
    }

    fn trigger(&self, payload: &str) {
        self.runtime.block_on(async {
            self.js
                .publish("backup.trigger", payload.to_owned().into())
                .await
                .expect("publish the trigger")
                .await
                .expect("trigger stored");
        });
    }

    fn wait_idle(&self, durable: &str) {
        self.runtime
            .block_on(test_support::pipeline::wait_idle(&self.js, durable));
    }
}

/// `GET /healthz` of a service listening on `port`, as JSON.
fn healthz(port: u16) -> Option<Value> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let body = &response[response.find("\r\n\r\n")? + 4..];
    serde_json::from_str(body).ok()
}

/// The stream sequences the service on `port` holds now, per `/healthz`.
fn held(port: u16, consumer: &str) -> Vec<u64> {
    healthz(port)
        .and_then(|report| {
            report["consumers"][consumer]["in_flight"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|m| m["stream_sequence"].as_u64())
                        .collect()
                })
        })
        .unwrap_or_default()
}

/// Every backup id of `subject` events, with how many times it is stored.
fn counts(log: &EventLog, subject: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for event in log.of(subject) {
        let id = event["backup_id"].as_str().unwrap_or("?").to_owned();
        *counts.entry(id).or_default() += 1;
    }
    counts
}

#[test]
fn two_shippers_and_two_verifiers_holding_two_each_lose_nothing_to_a_kill() {
    let started = Instant::now();
    let bench = Bench::start("vfyscale");
    let databases: Vec<TestDatabase> = (0..6)
        .map(|_| {
            let database = TestDatabase::create("scale_kill");
            fill(&mut |sql| database.execute(sql), 4000);
            database
        })
        .collect();
    let names = databases
        .iter()
        .map(|d| d.name.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let _dumper = bench.spawn(
        "dumper",
        &[("BACKUP_DATABASES", &names), ("BACKUP_MAX_PARALLEL", "3")],
    );
    // The services create the stream.
    let log = bench.events();
    let ports: Vec<u16> = (0..4).map(|_| test_support::free_port()).collect();
    let spawn_shipper = |port: u16| {
        bench.spawn(
            "shipper",
            &[
                ("SHIP_CONCURRENCY", "2"),
                // Slow enough that an upload is caught in the middle.
                ("SHIP_BANDWIDTH_LIMIT", "64KB/s"),
                ("HEALTH_LISTEN", &format!("127.0.0.1:{port}")),
            ],
        )
    };
    let spawn_verifier = |port: u16| {
        bench.spawn(
            "verifier",
            &[
                ("VERIFY_CONCURRENCY", "2"),
                ("HEALTH_LISTEN", &format!("127.0.0.1:{port}")),
            ],
        )
    };
    let mut shippers = [spawn_shipper(ports[0]), spawn_shipper(ports[1])];
    let mut verifiers = vec![spawn_verifier(ports[2]), spawn_verifier(ports[3])];

    bench.trigger("");

    // Kill a shipper and a verifier at a moment when both hold work, so
    // that their messages come back within one `ack_wait`.
    let mut victims = None;
    wait_until(
        Duration::from_secs(180),
        "a shipper and a verifier holding work at once",
        || {
            let shipper = (0..2).find(|&i| !held(ports[i], "shipper").is_empty());
            let verifier = (2..4).find(|&i| !held(ports[i], "verifier").is_empty());
            victims = shipper.zip(verifier);
            victims.is_some()
        },
    );
    let (shipper, verifier) = victims.expect("found");
    let killed = format!(
        "shipper #{shipper} holding {:?}, verifier #{} holding {:?}",
        held(ports[shipper], "shipper"),
        verifier - 2,
        held(ports[verifier], "verifier")
    );
    shippers[shipper].kill();
    verifiers[verifier - 2].kill();
    // The killed verifier's scratch database is swept by a verifier that
    // starts: bring it back, as an operator (or systemd) would.
    verifiers.push(spawn_verifier(test_support::free_port()));

    let expected = databases.len();
    bench.runtime.block_on(log.wait_for_within(
        Duration::from_secs(300),
        "every database verified",
        |log| {
            let verified = counts(log, "dump.verified");
            databases.iter().all(|d| {
                verified
                    .keys()
                    .any(|id| id.starts_with(&format!("{}-", d.name)))
            })
        },
    ));
    bench.wait_idle("shipper");
    bench.wait_idle("verifier");
    bench.runtime.block_on(log.sync());

    let verified = counts(&log, "dump.verified");
    let created = counts(&log, "dump.created");
    assert_eq!(created.len(), expected, "{}", log.dump());
    assert_eq!(verified.len(), expected, "{}", log.dump());
    assert!(
        verified.values().all(|&n| n == 1),
        "a backup verified more than once: {verified:?}"
    );
    assert_eq!(
        verified.keys().collect::<Vec<_>>(),
        created.keys().collect::<Vec<_>>()
    );
    assert!(
        log.of("dump.failed").is_empty(),
        "failures: {:?}",
        log.of("dump.failed")
    );
    // Nothing half-written on the remote.
    for database in &databases {
        let remote = bench.sshd.backups_dir().join(&database.name);
        let files = files_in(&remote);
        assert!(files.iter().all(|f| !f.ends_with(".partial")), "{files:?}");
        assert_eq!(files.len(), 3, "artifact, manifest, record: {files:?}");
    }
    wait_until(Duration::from_secs(120), "no scratch database left", || {
        databases_with_prefix(&format!("{}_", bench.scratch_prefix)).is_empty()
    });
    eprintln!(
        "scale: {expected} backups through 2 shippers and 2 verifiers at concurrency 2, \
         killed {killed}, all verified once in {:.1?}",
        started.elapsed()
    );
}

/// A database name unique to this run on the private cluster.
fn cluster_database_name(index: usize) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!(
        "scale_b{index}_{:08x}{:04x}",
        nanos,
        std::process::id() & 0xffff
    )
}

#[test]
fn one_dumper_per_postgresql_server_each_dumps_its_own() {
    let started = Instant::now();
    let bench = Bench::start("vfyroute");
    // Ten databases on the machine's server...
    let main: Vec<TestDatabase> = (0..10)
        .map(|_| {
            let database = TestDatabase::create("scale_a");
            fill(&mut |sql| database.execute(sql), 200);
            database
        })
        .collect();
    // ...and ten on a private cluster.
    let cluster = PostgresCluster::start();
    let second: Vec<String> = (0..10).map(cluster_database_name).collect();
    for name in &second {
        cluster.execute("postgres", &format!("CREATE DATABASE {name}"));
        fill(&mut |sql| cluster.execute(name, sql), 200);
    }
    let main_names = main.iter().map(|d| d.name.clone()).collect::<Vec<_>>();

    let dumper_main = bench.spawn(
        "dumper",
        &[
            ("DUMPER_NAME", "pg-main"),
            ("BACKUP_DATABASES", &main_names.join(",")),
            ("BACKUP_MAX_PARALLEL", "4"),
        ],
    );
    let mut second_env = cluster.env();
    second_env.push(("DUMPER_NAME".into(), "pg-second".into()));
    second_env.push(("BACKUP_DATABASES".into(), second.join(",")));
    second_env.push(("BACKUP_MAX_PARALLEL".into(), "4".into()));
    let second_env: Vec<(&str, &str)> = second_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let dumper_second = bench.spawn("dumper", &second_env);
    let log = bench.events();
    let _shipper = bench.spawn("shipper", &[("SHIP_CONCURRENCY", "4")]);
    let _verifier = bench.spawn("verifier", &[("VERIFY_CONCURRENCY", "2")]);

    // One trigger for every database: each dumper dumps its own.
    bench.trigger("");
    let all: Vec<String> = main_names.iter().chain(&second).cloned().collect();
    bench.runtime.block_on(log.wait_for_within(
        Duration::from_secs(300),
        "all twenty databases verified",
        |log| {
            all.iter()
                .all(|name| !log.of_database("dump.verified", name).is_empty())
        },
    ));

    // A trigger for one database reaches the dumper serving it; the other
    // ignores it. A trigger for a database nobody serves fails once.
    let one = &second[3];
    bench.trigger(&format!(r#"{{"database": "{one}"}}"#));
    bench.trigger(r#"{"database": "nobody_serves_this"}"#);
    bench.runtime.block_on(log.wait_for_within(
        Duration::from_secs(120),
        "the single database verified again, the unknown one rejected",
        |log| {
            log.of_database("dump.verified", one).len() == 2
                && !log
                    .of_database("dump.failed", "nobody_serves_this")
                    .is_empty()
        },
    ));
    for consumer in ["pg-main", "pg-second", "shipper", "verifier"] {
        bench.wait_idle(consumer);
    }
    bench.runtime.block_on(log.sync());

    let failures = log.of("dump.failed");
    assert_eq!(
        failures.len(),
        1,
        "exactly one rejection: {failures:?}\n{}",
        dumper_main.log()
    );
    assert_eq!(failures[0]["stage"], "trigger");
    let error = failures[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("database nobody_serves_this is not configured for backup"),
        "{error}"
    );
    assert_eq!(counts(&log, "dump.verified").len(), 21, "{}", log.dump());

    // Each database was dumped by the dumper serving it, and only by it.
    let accepted = |service: &ServiceProcess| -> String {
        service
            .log()
            .lines()
            .filter(|l| l.contains("trigger accepted"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (main_log, second_log) = (accepted(&dumper_main), accepted(&dumper_second));
    for name in &main_names {
        assert!(main_log.contains(name.as_str()), "{main_log}");
        assert!(!second_log.contains(name.as_str()), "{second_log}");
    }
    for name in &second {
        assert!(second_log.contains(name.as_str()), "{second_log}");
        assert!(!main_log.contains(name.as_str()), "{main_log}");
    }
    eprintln!(
        "scale: 20 databases on 2 PostgreSQL servers, one dumper each, verified in {:.1?}",
        started.elapsed()
    );
}

/// Peak resident set size of a process, in MiB (`VmHWM`).
pub(super) fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// One run of the benchmark: `databases` triggered at once through a
/// dumper, a shipper and a verifier at `concurrency`. Returns the wall time
/// from the trigger to the last `dump.verified`, the peak RSS of each
/// service, and the verified events.
fn bench_run(
    databases: &[String],
    concurrency: usize,
    cluster: bool,
) -> (Duration, Vec<(&'static str, f64)>, Vec<Value>) {
    let nats = if cluster {
        BenchNats::Cluster(test_support::NatsCluster::start())
    } else {
        BenchNats::Single(NatsServer::start())
    };
    let bench = Bench::start_on("vfybench", nats);
    let c = concurrency.to_string();
    let dumper = bench.spawn(
        "dumper",
        &[
            ("BACKUP_DATABASES", &databases.join(",")),
            ("BACKUP_MAX_PARALLEL", &c),
        ],
    );
    let shipper = bench.spawn("shipper", &[("SHIP_CONCURRENCY", &c)]);
    let verifier = bench.spawn("verifier", &[("VERIFY_CONCURRENCY", &c)]);
    let log = bench.events();
    let started = Instant::now();
    bench.trigger("");
    bench.runtime.block_on(log.wait_for_within(
        Duration::from_secs(1800),
        "every database verified",
        |log| log.of("dump.verified").len() >= databases.len(),
    ));
    let wall = started.elapsed();
    let rss = vec![
        ("dumper", peak_rss_mib(dumper.pid())),
        ("shipper", peak_rss_mib(shipper.pid())),
        ("verifier", peak_rss_mib(verifier.pid())),
    ];
    let verified = log.of("dump.verified");
    let created = log.of("dump.created");
    let shipped = log.of("dump.shipped");
    // Joined on the backup id, for the overhead figure.
    let joined = verified
        .into_iter()
        .map(|mut v| {
            let id = v["backup_id"].clone();
            let find = |events: &[Value]| {
                events
                    .iter()
                    .find(|e| e["backup_id"] == id)
                    .map(|e| e["duration_ms"].clone())
                    .unwrap_or(Value::Null)
            };
            v["dump_ms"] = find(&created);
            v["ship_ms"] = find(&shipped);
            v
        })
        .collect();
    (wall, rss, joined)
}

/// The scale benchmark (docs/benchmarks.md, "Scale"): prints a table.
/// `SCALE_BENCH_SIZES` (default `10,40`), `SCALE_BENCH_CONCURRENCY`
/// (default `1,4`) and `SCALE_BENCH_CLUSTER` (`no`, `only`; both by
/// default) choose the runs.
#[test]
#[ignore = "a benchmark: minutes of work; run it on purpose"]
fn scale_benchmark() {
    let list = |name: &str, default: &str| -> Vec<usize> {
        std::env::var(name)
            .unwrap_or_else(|_| default.to_owned())
            .split(',')
            .map(|n| n.trim().parse().expect("a number"))
            .collect()
    };
    let sizes = list("SCALE_BENCH_SIZES", "10,40");
    let levels = list("SCALE_BENCH_CONCURRENCY", "1,4");
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let pool: Vec<TestDatabase> = (0..largest)
        .map(|_| {
            let database = TestDatabase::create("scale_bench");
            fill(&mut |sql| database.execute(sql), 200);
            database
        })
        .collect();
    let names: Vec<String> = pool.iter().map(|d| d.name.clone()).collect();
    // Freshly created databases make the server busy for a while (WAL,
    // autovacuum's first analyze): the first run would measure that. One
    // unreported run over the whole pool takes it.
    let (warm_up, _, _) = bench_run(&names, 4, false);
    eprintln!("warm-up run over {largest} databases: {warm_up:.1?}");

    let mut table = String::from(
        "| NATS | databases | concurrency | trigger → last verified | dumper peak RSS | shipper peak RSS | verifier peak RSS |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let clusters =
        std::env::var("SCALE_BENCH_CLUSTER").map_or(vec![false, true], |v| match v.as_str() {
            "only" => vec![true],
            "no" => vec![false],
            _ => vec![false, true],
        });
    for &cluster in &clusters {
        for &size in &sizes {
            for &concurrency in &levels {
                let (wall, rss, _) = bench_run(&names[..size], concurrency, cluster);
                table.push_str(&format!(
                    "| {} | {size} | {concurrency} | {:.1} s | {:.0} MiB | {:.0} MiB | {:.0} MiB |\n",
                    if cluster { "3-node cluster, R3" } else { "one server" },
                    wall.as_secs_f64(),
                    rss[0].1,
                    rss[1].1,
                    rss[2].1
                ));
                eprintln!("{table}");
            }
        }
    }

    // The pipeline's own overhead on a 1 MB database: trigger to verified,
    // minus the dump, the upload and the verification themselves.
    let big = TestDatabase::create("scale_bench_1mb");
    fill(&mut |sql| big.execute(sql), 14_000);
    let mut overheads = Vec::new();
    for _ in 0..3 {
        let (wall, _, verified) = bench_run(std::slice::from_ref(&big.name), 1, false);
        let v = &verified[0];
        let stages = v["dump_ms"].as_u64().unwrap_or(0)
            + v["ship_ms"].as_u64().unwrap_or(0)
            + v["duration_ms"].as_u64().unwrap_or(0);
        overheads.push((wall.as_millis() as u64).saturating_sub(stages));
        table.push_str(&format!(
            "\n1 MB database: trigger → verified {} ms; dump {} ms, upload {} ms, verification {} ms; overhead {} ms",
            wall.as_millis(),
            v["dump_ms"],
            v["ship_ms"],
            v["duration_ms"],
            overheads.last().expect("pushed")
        ));
    }
    eprintln!("scale benchmark:\n{table}");
}

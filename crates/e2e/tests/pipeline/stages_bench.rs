//! `benchmark_stages` (docs/benchmarks.md, "Stages"): every stage of one
//! backup of the Korrigo-like database (`korrigo_bench_s<scale>`, made or
//! reused as `dump-bench` does), timed in one invocation against its
//! yardstick, one markdown table per scale of `STAGES_BENCH_SCALES`
//! (default `5,15`):
//!
//! 1. `pg_dump > /dev/null`, median of two runs after an untimed
//!    `pg_dump | wc -c` that warms the page cache;
//! 2. the dumper's dump stage, default settings (`dump.created`'s
//!    `duration_ms`);
//! 3. the upload of that artifact over loopback: the shipper binary, OpenSSH
//!    `sftp put -f` (fsync, as the shipper) and `sftp put` on aes128-gcm,
//!    `put` on its default cipher, `rclone copy`;
//! 4. the same over the emulated WAN (100 Mbit/s, 40 ms, 0.1 % loss): the
//!    shipper binary on its own (fed the `dump.created`, as on loopback),
//!    `sftp put`, `rclone copy`;
//! 5. the verifier's `dump.verified` `duration_ms` in the pipeline run;
//! 6. the pipeline run itself: dumper, shipper and verifier binaries with
//!    the WAN's sshd as destination, from publishing `backup.trigger` to
//!    receiving `dump.verified`, with the upload following the dump (the
//!    default) and again with `SHIP_FOLLOW_DUMPS=false` (one stage after
//!    the other), and how long the shipper still took after `dump.created`;
//! 7. the peak RSS (`VmHWM`) of the three services, read before each stops.
//!
//! Ratios and goals are printed, never asserted. Needs root (the WAN's
//! network namespace), `rclone` and OpenSSH's `sftp`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;
use test_support::korrigo_dataset;
use test_support::pipeline::EventLog;
use test_support::sftp_peers::SftpEndpoint;
use test_support::wan::{EmulatedWan, WanSpec};

use super::scale::peak_rss_mib;
use super::*;

const GCM: &str = "aes128-gcm@openssh.com";
const RSS_GOAL_MIB: f64 = 64.0;
/// Longest wait for the pipeline run (scale 15 on a busy 2-core machine).
const PIPELINE_TIMEOUT: Duration = Duration::from_secs(3600);

#[test]
#[ignore = "benchmark: slow, run by hand"]
fn benchmark_stages() {
    let script = std::env::var_os("STAGES_BENCH_DATASET")
        .map_or_else(korrigo_dataset::default_script, PathBuf::from);
    for scale in scales() {
        let table = bench_scale(scale, &script);
        print_table(&table);
    }
}

/// `STAGES_BENCH_SCALES`, default `5,15`.
fn scales() -> Vec<u32> {
    std::env::var("STAGES_BENCH_SCALES")
        .unwrap_or_else(|_| "5,15".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("STAGES_BENCH_SCALES is a list of scales")
        })
        .collect()
}

#[allow(clippy::print_stdout)] // The benchmark's output, for --nocapture.
fn print_table(table: &str) {
    println!("{table}");
}

/// Every measurement at one scale, rendered as a header line and a table.
fn bench_scale(scale: u32, script: &Path) -> String {
    let database = korrigo_dataset::prepare(scale, script);
    let plain_bytes = plain_dump_bytes(&database);
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    let load_before = load_average();
    let pg_dump = median(&[dev_null_dump(&database), dev_null_dump(&database)]);
    eprintln!("pg_dump > /dev/null: {pg_dump:.2?}");

    let spool = tempfile::Builder::new()
        .prefix("stages-spool-")
        .tempdir_in("/var/tmp")
        .expect("spool dir");
    let wan = EmulatedWan::start(WanSpec::HOSTED);
    let sequential = pipeline_over_wan(&wan, spool.path(), &database, false);
    let run = pipeline_over_wan(&wan, spool.path(), &database, true);
    let artifact = spool_artifact(spool.path(), &run.created);
    clear_remote(&wan.sshd.backups_dir().join(&database));
    let wan_upload = shipper_upload(
        spool.path(),
        &run.created,
        wan.sftp_env(&wan.sshd.backups_dir()),
    );
    let wan_peers = wan_peer_uploads(&wan, &artifact);
    let link = Link {
        spec: wan.spec,
        loss_emulated: wan.loss_emulated,
    };
    drop(wan);
    let loopback = loopback_uploads(spool.path(), &run.created, &artifact);

    let figures = Figures {
        scale,
        database,
        date,
        load: [load_before, load_average()],
        plain_bytes,
        size: run.created["size_bytes"].as_u64().expect("size_bytes"),
        pg_dump,
        run: &run,
        sequential: sequential.trigger_to_verified,
        loopback,
        wan: (wan_upload, wan_peers),
        link,
    };
    format!("\n{}\n\n{}", header(&figures), render(&figures))
}

/// Date, scale, artifact, build, link and load average of a table.
fn header(f: &Figures<'_>) -> String {
    let spec = f.link.spec;
    format!(
        "{} — scale {} ({}, plain dump {:.1} MiB), artifact {} ({:.1} MiB), \
         {} build, {} cores; WAN {} Mbit/s, {:?} round trip, {} per mille loss ({}); \
         load average before {}, after {}",
        f.date,
        f.scale,
        f.database,
        mib(f.plain_bytes),
        f.run.created["artifact"].as_str().unwrap_or("?"),
        mib(f.size),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(0, usize::from),
        spec.rate_mbit,
        spec.round_trip,
        spec.loss_per_mille,
        if f.link.loss_emulated {
            "emulated"
        } else {
            "NOT emulated"
        },
        f.load[0],
        f.load[1],
    )
}

/// `pg_dump DB > /dev/null`, plain format, as `dump-bench` runs it.
fn dev_null_dump(database: &str) -> Duration {
    let started = Instant::now();
    pg_dump_shell(database, "> /dev/null");
    started.elapsed()
}

/// Bytes of the plain dump (`pg_dump | wc -c`), which also warms the page
/// cache before anything is timed.
fn plain_dump_bytes(database: &str) -> u64 {
    pg_dump_shell(database, "| wc -c")
        .trim()
        .parse()
        .expect("wc -c prints a number")
}

fn pg_dump_shell(database: &str, tail: &str) -> String {
    let script =
        format!("set -euo pipefail; pg_dump --no-password --format=plain {database} {tail}");
    let output = Command::new("bash")
        .args(["-c", &script])
        .envs(pg_env())
        .output()
        .expect("run bash");
    assert!(
        output.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn median(runs: &[Duration]) -> Duration {
    let mut sorted = runs.to_vec();
    sorted.sort();
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2
    } else {
        sorted[middle]
    }
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// The emulated link, kept for the header once the WAN is torn down.
struct Link {
    spec: WanSpec,
    loss_emulated: bool,
}

/// A test's own connection to the bus of a run.
struct Bus {
    runtime: tokio::runtime::Runtime,
    js: async_nats::jetstream::Context,
}

impl Bus {
    fn connect(url: &str) -> Bus {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let js = runtime.block_on(async {
            let client = async_nats::connect(url).await.expect("connect to NATS");
            async_nats::jetstream::new(client)
        });
        Bus { runtime, js }
    }

    /// Follows the stream, which the services create when they start.
    fn events(&self) -> EventLog {
        let _guard = self.runtime.enter();
        self.runtime.block_on(EventLog::follow(&self.js))
    }

    fn publish(&self, subject: &'static str, payload: String) {
        self.runtime.block_on(async {
            self.js
                .publish(subject, payload.into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        });
    }

    /// Waits for the first event on `subject`, or panics on a `dump.failed`.
    fn wait_for(&self, log: &EventLog, subject: &str, timeout: Duration) -> Value {
        self.runtime.block_on(log.wait_for_within(
            timeout,
            &format!("{subject} or dump.failed"),
            |log| !log.of(subject).is_empty() || !log.of("dump.failed").is_empty(),
        ));
        assert!(
            log.of("dump.failed").is_empty(),
            "the run failed:\n{}",
            log.dump()
        );
        log.of(subject).remove(0)
    }

    fn wait_idle(&self, durable: &str) {
        self.runtime
            .block_on(test_support::pipeline::wait_idle(&self.js, durable));
    }
}

/// Spawns a service and waits until it takes work.
fn spawn(name: &str, env: &[(String, String)]) -> ServiceProcess {
    let service = ServiceProcess::spawn(name, &[], env);
    assert!(
        service.wait_for_log("waiting for work", Duration::from_secs(90)),
        "{name} did not start:\n{}",
        service.log()
    );
    service
}

/// What the pipeline run over the WAN measured.
struct PipelineRun {
    created: Value,
    shipped: Value,
    verified: Value,
    trigger_to_verified: Duration,
    rss_mib: Vec<(&'static str, f64)>,
}

/// The environment of the pipeline's services: NATS, the spool, the scratch
/// database, the WAN's sshd as SFTP destination; the dumper's defaults.
fn pipeline_env(
    nats: &NatsServer,
    wan: &EmulatedWan,
    spool: &Path,
    database: &str,
) -> Vec<(String, String)> {
    [
        ("NATS_URL", nats.url.as_str()),
        ("RUST_LOG", "info"),
        ("BACKUP_DATABASES", database),
        ("BACKUP_SPOOL_DIR", spool.to_str().expect("utf-8 path")),
        ("BACKUP_SCHEDULE", "off"),
        (
            "VERIFY_DATABASE_URL",
            "postgresql://postgres@127.0.0.1:5432/postgres",
        ),
        ("VERIFY_SCRATCH_PREFIX", "vfystages"),
        ("VERIFY_REVERIFY_EVERY", "off"),
        ("SHUTDOWN_GRACE", "2s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain(wan.sftp_env(&wan.sshd.backups_dir()))
    .chain(pg_env())
    .collect()
}

/// Dumper, shipper and verifier binaries, one trigger, timed to
/// `dump.verified`; then each service's peak RSS just before it stops.
fn pipeline_over_wan(wan: &EmulatedWan, spool: &Path, database: &str, follow: bool) -> PipelineRun {
    let nats = NatsServer::start();
    let mut env = pipeline_env(&nats, wan, spool, database);
    env.push(("SHIP_FOLLOW_DUMPS".into(), follow.to_string()));
    let mut services: Vec<(&'static str, ServiceProcess)> = ["dumper", "shipper", "verifier"]
        .into_iter()
        .map(|name| (name, spawn(name, &env)))
        .collect();
    let bus = Bus::connect(&nats.url);
    let log = bus.events();

    let started = Instant::now();
    bus.publish("backup.trigger", format!(r#"{{"database": "{database}"}}"#));
    let verified = bus.wait_for(&log, "dump.verified", PIPELINE_TIMEOUT);
    let trigger_to_verified = started.elapsed();
    eprintln!(
        "trigger → dump.verified over the WAN (SHIP_FOLLOW_DUMPS={follow}): {trigger_to_verified:.2?}"
    );

    // The scratch database is dropped before the message is acked.
    bus.wait_idle("verifier");
    let rss_mib = services
        .iter_mut()
        .map(|(name, service)| {
            let rss = peak_rss_mib(service.pid());
            service.terminate(Duration::from_secs(10));
            (*name, rss)
        })
        .collect();
    PipelineRun {
        created: log.of("dump.created").remove(0),
        shipped: log.of("dump.shipped").remove(0),
        verified,
        trigger_to_verified,
        rss_mib,
    }
}

/// `<spool>/<database>/<artifact>` of a `dump.created`.
fn spool_artifact(spool: &Path, created: &Value) -> PathBuf {
    let field = |name: &str| created[name].as_str().expect("a string field").to_owned();
    spool.join(field("database")).join(field("artifact"))
}

/// OpenSSH `sftp put` (default cipher) and `rclone copy` of the artifact
/// over the WAN, each copy removed after it.
fn wan_peer_uploads(wan: &EmulatedWan, artifact: &Path) -> Peers {
    let endpoint = wan.endpoint();
    let remote = wan.sshd.remote_root.join("openssh.bin");
    let openssh = endpoint.openssh_put(artifact, &remote);
    std::fs::remove_file(&remote).expect("remove the sftp put copy");
    Peers {
        openssh_gcm: None,
        openssh,
        rclone: rclone_copy(&endpoint, &wan.sshd.remote_root, artifact),
    }
}

fn rclone_copy(endpoint: &SftpEndpoint, remote_root: &Path, artifact: &Path) -> Duration {
    let dir = remote_root.join("rclone");
    let elapsed = endpoint.rclone_copy(artifact, &dir);
    std::fs::remove_dir_all(&dir).expect("remove the rclone copy");
    elapsed
}

/// The yardsticks of one path.
struct Peers {
    /// On loopback: `put` and `put -f` (fsync, as the shipper does) with
    /// aes128-gcm.
    openssh_gcm: Option<(Duration, Duration)>,
    openssh: Duration,
    rclone: Duration,
}

/// The shipper binary (its own NATS, fed the pipeline run's `dump.created`
/// on the same spool) and the peers, to a loopback sshd.
fn loopback_uploads(spool: &Path, created: &Value, artifact: &Path) -> (Duration, Peers) {
    let sshd = Sshd::start();
    let shipped = shipper_upload(spool, created, sshd.sftp_env(&sshd.backups_dir()));

    let put = |flags: &str, cipher: Option<&str>| {
        let remote = sshd.remote_root.join("openssh.bin");
        let elapsed = sshd.openssh_sftp(
            &format!("put {flags} {} {}", artifact.display(), remote.display()),
            cipher,
        );
        std::fs::remove_file(&remote).expect("remove the sftp put copy");
        elapsed
    };
    let peers = Peers {
        openssh_gcm: Some((put("", Some(GCM)), put("-f", Some(GCM)))),
        openssh: put("", None),
        rclone: rclone_copy(&SftpEndpoint::of(&sshd), &sshd.remote_root, artifact),
    };
    (shipped, peers)
}

/// The shipper binary on its own (its own NATS, fed `created` on the same
/// spool) uploading to the SFTP server of `sftp_env`: `dump.shipped`'s
/// `duration_ms`, from connect to the renamed manifest.
fn shipper_upload(spool: &Path, created: &Value, sftp_env: Vec<(String, String)>) -> Duration {
    let nats = NatsServer::start();
    let env: Vec<(String, String)> = [
        ("NATS_URL", nats.url.clone()),
        ("RUST_LOG", "info".into()),
        ("BACKUP_SPOOL_DIR", spool.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .chain(sftp_env)
    .collect();
    let mut shipper = spawn("shipper", &env);
    let bus = Bus::connect(&nats.url);
    let log = bus.events();
    bus.publish("dump.created", created.to_string());
    let shipped = bus.wait_for(&log, "dump.shipped", Duration::from_secs(1800));
    shipper.terminate(Duration::from_secs(10));
    duration_ms(&shipped)
}

/// Removes what the pipeline run left in a remote directory, so the next
/// upload of the same artifact is a whole one.
fn clear_remote(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("the remote database directory") {
        std::fs::remove_file(entry.expect("entry").path()).expect("remove a remote file");
    }
}

fn duration_ms(event: &Value) -> Duration {
    Duration::from_millis(event["duration_ms"].as_u64().expect("duration_ms"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Everything the header and the table are made of.
struct Figures<'a> {
    scale: u32,
    database: String,
    date: String,
    /// Load average before and after.
    load: [String; 2],
    plain_bytes: u64,
    size: u64,
    pg_dump: Duration,
    run: &'a PipelineRun,
    /// Trigger to verified with `SHIP_FOLLOW_DUMPS=false`.
    sequential: Duration,
    loopback: (Duration, Peers),
    wan: (Duration, Peers),
    link: Link,
}

/// A goal: the ratio must be at most, or at least, this.
#[derive(Clone, Copy)]
enum Goal {
    AtMost(f64),
    AtLeast(f64),
}

/// One line of the table.
struct Row {
    number: u8,
    what: String,
    value: String,
    rate: Option<f64>,
    ratio: Option<(f64, String, Goal)>,
}

impl Row {
    fn new(number: u8, what: &str, value: String, rate: Option<f64>) -> Row {
        Row {
            number,
            what: what.to_owned(),
            value,
            rate,
            ratio: None,
        }
    }

    fn seconds(number: u8, what: &str, time: Duration, bytes: Option<u64>) -> Row {
        let rate = bytes.map(|b| b as f64 / time.as_secs_f64() / 1e6);
        Row::new(number, what, format!("{:.2} s", time.as_secs_f64()), rate)
    }

    /// `ratio` is measured against `reference` (e.g. "× row 1").
    fn goal(mut self, ratio: f64, reference: String, goal: Goal) -> Row {
        self.ratio = Some((ratio, reference, goal));
        self
    }

    fn render(&self) -> String {
        let rate = self.rate.map_or("-".into(), |r| format!("{r:.1}"));
        let (ratio, goal, met) = match &self.ratio {
            None => ("-".into(), "-".into(), "-"),
            Some((ratio, reference, goal)) => {
                let (text, met) = match *goal {
                    Goal::AtMost(limit) => (format!("≤ {limit:?}×"), *ratio <= limit),
                    Goal::AtLeast(limit) => (format!("≥ {limit:?}×"), *ratio >= limit),
                };
                (
                    format!("{ratio:.2}× {reference}"),
                    text,
                    if met { "yes" } else { "NO" },
                )
            }
        };
        format!(
            "| {} | {} | {} | {rate} | {ratio} | {goal} | {met} |",
            self.number, self.what, self.value
        )
    }
}

fn render(f: &Figures<'_>) -> String {
    let mut rows = vec![Row::seconds(
        1,
        "`pg_dump > /dev/null` (plain, median of 2; MB/s of the plain dump)",
        f.pg_dump,
        Some(f.plain_bytes),
    )];
    let dump = duration_ms(&f.run.created);
    rows.push(
        Row::seconds(
            2,
            "dump stage, default settings (`dump.created` `duration_ms`)",
            dump,
            None,
        )
        .goal(
            dump.as_secs_f64() / f.pg_dump.as_secs_f64(),
            "row 1".into(),
            Goal::AtMost(1.5),
        ),
    );
    rows.extend(loopback_rows(f));
    let wan_ship = f.wan.0;
    rows.extend(wan_rows(f));
    let verify = duration_ms(&f.run.verified);
    rows.push(Row::seconds(
        5,
        "verification over the WAN (`dump.verified` `duration_ms`)",
        verify,
        None,
    ));
    let bound = dump.max(wan_ship) + verify;
    rows.push(
        Row::seconds(
            6,
            "trigger → `dump.verified` over the WAN (wall clock)",
            f.run.trigger_to_verified,
            None,
        )
        .goal(
            f.run.trigger_to_verified.as_secs_f64() / bound.as_secs_f64(),
            format!(
                "(max(row 2, row 4 shipper) + row 5 = {:.2} s)",
                bound.as_secs_f64()
            ),
            Goal::AtMost(1.2),
        ),
    );
    rows.push(Row::seconds(
        6,
        "the same run: `dump.shipped` `duration_ms` (what the upload still took after the dump)",
        duration_ms(&f.run.shipped),
        None,
    ));
    rows.push(Row::seconds(
        6,
        "trigger → `dump.verified` with `SHIP_FOLLOW_DUMPS=false` (stages one after the other)",
        f.sequential,
        None,
    ));
    for (name, rss) in &f.run.rss_mib {
        rows.push(
            Row::new(
                7,
                &format!("peak RSS of the {name} (`VmHWM`)"),
                format!("{rss:.1} MiB"),
                None,
            )
            .goal(
                rss / RSS_GOAL_MIB,
                format!("{RSS_GOAL_MIB} MiB"),
                Goal::AtMost(1.0),
            ),
        );
    }
    let mut table = String::from(
        "| # | measurement | value | MB/s | ratio | goal | met |\n\
         | --- | --- | ---: | ---: | --- | --- | --- |\n",
    );
    for row in &rows {
        table.push_str(&row.render());
        table.push('\n');
    }
    table
}

/// Row 3: the shipper binary against OpenSSH on AES-GCM with `put -f`
/// (the goal: the shipper fsyncs every upload, and `-f` has OpenSSH do the
/// same) and without, its default cipher and rclone, over loopback.
fn loopback_rows(f: &Figures<'_>) -> Vec<Row> {
    let (shipper, peers) = &f.loopback;
    let (gcm, gcm_fsync) = peers.openssh_gcm.expect("loopback runs AES-GCM");
    let size = Some(f.size);
    vec![
        Row::seconds(
            3,
            "loopback: shipper binary (`dump.shipped` `duration_ms`, fsync included)",
            *shipper,
            size,
        )
        .goal(
            gcm_fsync.as_secs_f64() / shipper.as_secs_f64(),
            "OpenSSH aes128-gcm `put -f`".into(),
            Goal::AtLeast(1.0),
        ),
        Row::seconds(
            3,
            "loopback: OpenSSH `sftp put -f` (fsync), aes128-gcm",
            gcm_fsync,
            size,
        ),
        Row::seconds(3, "loopback: OpenSSH `sftp put`, aes128-gcm", gcm, size).goal(
            gcm.as_secs_f64() / shipper.as_secs_f64(),
            "(the shipper against it)".into(),
            Goal::AtLeast(1.0),
        ),
        Row::seconds(
            3,
            "loopback: OpenSSH `sftp put`, default cipher",
            peers.openssh,
            size,
        ),
        Row::seconds(3, "loopback: `rclone copy`", peers.rclone, size),
    ]
}

/// Row 4: the shipper's upload over the link against the link rate and
/// the better of OpenSSH and rclone over the same link.
fn wan_rows(f: &Figures<'_>) -> Vec<Row> {
    let (shipper, peers) = (f.wan.0, &f.wan.1);
    let rate = |d: Duration| f.size as f64 / d.as_secs_f64();
    let (best_name, best) = if peers.openssh <= peers.rclone {
        ("OpenSSH sftp put", peers.openssh)
    } else {
        ("rclone copy", peers.rclone)
    };
    let size = Some(f.size);
    let what = "WAN: shipper binary (`dump.shipped` `duration_ms`)";
    vec![
        Row::seconds(4, what, shipper, size).goal(
            rate(shipper) / f.link.spec.bytes_per_second(),
            format!(
                "link rate ({:.1} MB/s)",
                f.link.spec.bytes_per_second() / 1e6
            ),
            Goal::AtLeast(0.95),
        ),
        Row::seconds(4, "WAN: the same, against the better peer", shipper, size).goal(
            rate(shipper) / rate(best),
            format!("best peer ({best_name})"),
            Goal::AtLeast(1.0),
        ),
        Row::seconds(
            4,
            "WAN: OpenSSH `sftp put`, default cipher",
            peers.openssh,
            size,
        ),
        Row::seconds(4, "WAN: `rclone copy`", peers.rclone, size),
    ]
}

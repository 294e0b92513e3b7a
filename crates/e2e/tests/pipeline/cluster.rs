//! The pipeline on a three-node NATS cluster: the five services get every
//! node as a seed (`NATS_URL`) and keep three copies of the stream
//! (`NATS_STREAM_REPLICAS=3`). The node leading the stream is killed in the
//! middle of an upload and restarted, then the node leading the shipper's
//! consumer, again mid-upload: every backup must be verified exactly once,
//! no event lost or stored twice, every consumer drained. The services
//! also start while the first seed is down, and on a single server a
//! replica count it cannot hold costs one warning line, not the service.
//!
//! Every wait is on a fact (a file being uploaded, an event stored, a
//! leader elected), never on time.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Value, json};

use super::*;

const SERVICES: [&str; 5] = ["dumper", "shipper", "verifier", "pruner", "notifier"];
/// Generous: the machine is shared, and elections add seconds.
const WAIT: Duration = Duration::from_secs(150);

/// One message of the stream as stored.
#[derive(Debug, Clone)]
struct Stored {
    sequence: u64,
    subject: String,
    msg_id: Option<String>,
    body: Value,
}

/// The `BACKUPS` stream, reached through whichever node answers.
struct Stream {
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
}

impl Stream {
    fn connect(urls: Vec<String>) -> Stream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let client = runtime
            .block_on(
                async_nats::ConnectOptions::new()
                    .max_reconnects(None)
                    .connect(urls),
            )
            .expect("connect to the cluster");
        Stream { runtime, client }
    }

    fn jetstream(&self) -> async_nats::jetstream::Context {
        let _runtime = self.runtime.enter();
        async_nats::jetstream::new(self.client.clone())
    }

    /// Publishes a trigger for `database` as `backupctl trigger` would,
    /// under a message id of its own, again until JetStream stores it (an
    /// election may be under way): the id makes a repeat harmless.
    fn trigger(&self, database: &str, request_id: &str) {
        let payload = serde_json::to_vec(&json!({
            "database": database,
            "request_id": request_id,
            "reason": "cluster test",
        }))
        .expect("JSON");
        let js = self.jetstream();
        let deadline = Instant::now() + WAIT;
        self.runtime.block_on(async {
            loop {
                let publish = async_nats::jetstream::message::PublishMessage::build()
                    .payload(payload.clone().into())
                    .message_id(format!("cluster-test-{request_id}"));
                let stored = async {
                    js.send_publish("backup.trigger", publish)
                        .await?
                        .await
                        .map_err(async_nats::Error::from)
                };
                match tokio::time::timeout(Duration::from_secs(10), stored).await {
                    Ok(Ok(_)) => return,
                    outcome => assert!(
                        Instant::now() < deadline,
                        "trigger {request_id} not stored within {WAIT:?}: {outcome:?}"
                    ),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    /// Every message stored so far, or `None` while the stream cannot be
    /// read whole (a leader being elected).
    fn read_all(&self) -> Option<Vec<Stored>> {
        let js = self.jetstream();
        self.runtime.block_on(async {
            let within = Duration::from_secs(5);
            let mut stream = tokio::time::timeout(within, js.get_stream("BACKUPS"))
                .await
                .ok()?
                .ok()?;
            let last = tokio::time::timeout(within, stream.info())
                .await
                .ok()?
                .ok()?
                .state
                .last_sequence;
            let mut all = Vec::new();
            for sequence in 1..=last {
                let message = tokio::time::timeout(within, stream.get_raw_message(sequence))
                    .await
                    .ok()?
                    .ok()?;
                all.push(Stored {
                    sequence,
                    subject: message.subject.to_string(),
                    msg_id: message
                        .headers
                        .get("Nats-Msg-Id")
                        .map(|id| id.as_str().to_owned()),
                    body: serde_json::from_slice(&message.payload).unwrap_or(Value::Null),
                });
            }
            Some(all)
        })
    }

    /// Waits until the stream holds what `done` looks for; returns it all.
    fn wait(&self, what: &str, done: impl Fn(&[Stored]) -> bool) -> Vec<Stored> {
        let deadline = Instant::now() + WAIT;
        let mut last = Vec::new();
        loop {
            if let Some(all) = self.read_all() {
                if done(&all) {
                    return all;
                }
                last = all;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {WAIT:?}; the stream holds:\n{}",
                summary(&last)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The first verification of the backup `request_id` started.
    fn wait_verified(&self, request_id: &str) {
        self.wait(&format!("dump.verified of {request_id}"), |all| {
            all.iter().any(|s| is_first_verification(s, request_id))
        });
    }

    /// Every durable consumer has handled every message stored.
    fn wait_drained(&self) {
        let js = self.jetstream();
        for consumer in SERVICES {
            let info = self
                .runtime
                .block_on(test_support::pipeline::wait_idle_within(
                    &js, consumer, WAIT,
                ));
            assert_eq!(
                (info.num_pending, info.num_ack_pending),
                (0, 0),
                "{consumer}"
            );
        }
    }
}

fn is_first_verification(stored: &Stored, request_id: &str) -> bool {
    stored.subject == "dump.verified"
        && stored.body["request_id"] == request_id
        && stored.body["reverification"] != true
}

fn summary(all: &[Stored]) -> String {
    all.iter()
        .map(|s| {
            format!(
                "#{} {} {} {} {}",
                s.sequence,
                s.subject,
                s.msg_id.as_deref().unwrap_or("(no id)"),
                s.body["request_id"].as_str().unwrap_or("-"),
                s.body["error"].as_str().unwrap_or(""),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Starts the five services, each with the rig's settings and `extra`
/// (service, name, value), and waits until each takes work.
fn start_services<N: Nats>(rig: &Rig<N>, extra: &[(&str, &str, &str)]) -> Vec<ServiceProcess> {
    SERVICES
        .into_iter()
        .map(|name| {
            let mut env = rig.env();
            let quiet = [
                ("BACKUP_SCHEDULE", "off"),
                ("PRUNE_SCHEDULE", "off"),
                ("VERIFY_REVERIFY_EVERY", "off"),
            ];
            let own = extra
                .iter()
                .filter(|(service, _, _)| *service == name)
                .map(|(_, key, value)| (*key, *value));
            for (key, value) in quiet.into_iter().chain(own) {
                env.retain(|(k, _)| k != key);
                env.push((key.to_owned(), value.to_owned()));
            }
            let service = ServiceProcess::spawn(name, &[], &env);
            assert!(
                service.wait_for_log("waiting for work", WAIT),
                "{name} did not start:\n{}",
                service.log()
            );
            service
        })
        .collect()
}

/// Waits until the shipper is writing an artifact of `database` on the
/// remote: an upload is in progress.
fn wait_for_upload<N: Nats>(rig: &Rig<N>, database: &str) {
    let dir = rig.remote_dir().join(database);
    let uploading = || {
        std::fs::read_dir(&dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        })
    };
    let deadline = Instant::now() + WAIT;
    while !uploading() {
        assert!(
            Instant::now() < deadline,
            "no upload in progress in {} within {WAIT:?}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_leaders_of_the_stream_and_of_a_consumer_lost_mid_upload_lose_nothing() {
    let began = Instant::now();
    let mut rig = Rig::start_on(NatsCluster::start());
    let database = rig.source.name.clone();
    // A few seconds of upload per backup, for a node to die in.
    let services = start_services(&rig, &[("shipper", "SHIP_BANDWIDTH_LIMIT", "200KiB/s")]);
    let started = began.elapsed();
    let stream = Stream::connect(rig.nats.urls());

    // The stream's leader dies under an upload; a trigger is published
    // while the others elect a new one.
    stream.trigger(&database, "stream-leader-1");
    wait_for_upload(&rig, &database);
    let stream_leader = rig.nats.stream_leader("BACKUPS");
    rig.nats.kill(stream_leader);
    stream.trigger(&database, "stream-leader-2");
    stream.wait_verified("stream-leader-1");
    stream.wait_verified("stream-leader-2");
    rig.nats.restart(stream_leader);
    let first_phase = began.elapsed();

    // The node leading the shipper's consumer dies while the shipper holds
    // a message of it (progress acks, then the ack, go to that leader).
    stream.trigger(&database, "consumer-leader-1");
    wait_for_upload(&rig, &database);
    let consumer_leader = rig.nats.consumer_leader("BACKUPS", "shipper");
    rig.nats.kill(consumer_leader);
    stream.trigger(&database, "consumer-leader-2");
    stream.wait_verified("consumer-leader-1");
    stream.wait_verified("consumer-leader-2");
    rig.nats.restart(consumer_leader);
    let second_phase = began.elapsed();

    stream.wait_drained();
    let all = stream.wait("the whole stream, readable", |_| true);
    let mut ids: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for stored in &all {
        let id = stored.msg_id.as_deref().unwrap_or_else(|| {
            panic!("#{} has no message id:\n{}", stored.sequence, summary(&all))
        });
        ids.entry(id).or_default().push(stored.sequence);
    }
    let doubled: Vec<_> = ids.iter().filter(|(_, seqs)| seqs.len() > 1).collect();
    assert!(
        doubled.is_empty(),
        "stored twice: {doubled:?}\n{}",
        summary(&all)
    );
    let requests = [
        "stream-leader-1",
        "stream-leader-2",
        "consumer-leader-1",
        "consumer-leader-2",
    ];
    for request in requests {
        let verified: Vec<&Stored> = all
            .iter()
            .filter(|s| is_first_verification(s, request))
            .collect();
        assert_eq!(verified.len(), 1, "{request}:\n{}", summary(&all));
        let backup_id = &verified[0].body["backup_id"];
        for subject in [
            "dump.started",
            "dump.created",
            "dump.shipped",
            "dump.verified",
        ] {
            let count = all
                .iter()
                .filter(|s| s.subject == subject && s.body["backup_id"] == *backup_id)
                .count();
            assert_eq!(count, 1, "{subject} of {request}:\n{}", summary(&all));
        }
    }
    // Three copies, led again, every follower caught up.
    let group = rig.nats.stream_cluster("BACKUPS");
    assert_eq!(
        group["replicas"].as_array().map(Vec::len),
        Some(2),
        "{group}"
    );
    // What the failovers cost: acks that went unconfirmed (the message
    // comes back after ack_wait, and is handled once anyway), by service.
    let unconfirmed: Vec<String> = services
        .iter()
        .map(|s| (s.name.clone(), s.log()))
        .map(|(name, log)| {
            let acks = log.matches("could not confirm the ack").count();
            let redelivered = log.matches("attempt=2").count();
            format!("{name} {acks}/{redelivered}")
        })
        .collect();
    let unconfirmed = unconfirmed.join(", ");
    drop(services);
    eprintln!(
        "cluster figures: 4 backups verified once each, {} events, 2 leaders killed (stream on {}, shipper's consumer on {}), acks unconfirmed/second attempts by service: {unconfirmed}; services up after {started:?}, stream leader's loss over after {first_phase:?}, consumer leader's after {second_phase:?}, all done in {:?}",
        all.len(),
        rig.nats.nodes[stream_leader].name,
        rig.nats.nodes[consumer_leader].name,
        began.elapsed()
    );
}

#[test]
fn the_services_start_and_back_up_while_the_first_seed_is_down() {
    let began = Instant::now();
    let mut cluster = NatsCluster::start();
    cluster.kill(0);
    cluster.wait_settled();
    let rig = Rig::start_on(cluster);
    let database = rig.source.name.clone();
    let services = start_services(&rig, &[]);
    for service in &services {
        let log = service.log();
        assert!(
            log.contains("connected to NATS"),
            "{}:\n{log}",
            service.name
        );
    }
    let stream = Stream::connect(rig.nats.urls());
    stream.trigger(&database, "first-seed-down");
    stream.wait_verified("first-seed-down");
    // The doctor names the seed that does not answer, and the replica on it.
    let (status, out) = rig.backupctl(&["doctor"]);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{out}");
    let line = |name: &str| {
        out.lines()
            .find(|l| {
                l.get(6..)
                    .is_some_and(|rest| rest.starts_with(&format!("{name}: ")))
            })
            .unwrap_or_else(|| panic!("no {name} line:\n{out}"))
            .to_owned()
    };
    assert!(line("nats").starts_with("PASS"), "{out}");
    let seeds = line("nats.seeds");
    assert!(
        seeds.starts_with("FAIL")
            && seeds.contains("2 of 3 servers of NATS_URL answer")
            && seeds.contains(&format!("cannot reach {}", rig.nats.nodes[0].url)),
        "{out}"
    );
    let stream_line = line("nats.stream");
    assert!(
        stream_line.starts_with("PASS")
            && stream_line.contains("3 replicas")
            && (stream_line.contains("n1 not current") || stream_line.contains("n1 offline")),
        "{out}"
    );
    eprintln!(
        "cluster figures: first seed down, 5 services started and 1 backup verified in {:?}",
        began.elapsed()
    );
}

#[test]
fn a_single_server_holds_one_replica_and_each_service_says_so_once() {
    let rig = Rig::start();
    let extra: Vec<(&str, &str, &str)> = SERVICES
        .iter()
        .map(|service| (*service, "NATS_STREAM_REPLICAS", "3"))
        .collect();
    let services = start_services(&rig, &extra);
    for service in &services {
        let log = service.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("NATS_STREAM_REPLICAS"))
            .collect();
        assert_eq!(lines.len(), 1, "{}:\n{log}", service.name);
        assert!(
            lines[0].contains("WARN") && lines[0].contains("1"),
            "{}",
            lines[0]
        );
    }
    let stream = Stream::connect(vec![rig.nats.url.clone()]);
    let js = stream.jetstream();
    let replicas = stream.runtime.block_on(async {
        let mut backups = js.get_stream("BACKUPS").await.expect("stream");
        backups.info().await.expect("info").config.num_replicas
    });
    assert_eq!(replicas, 1);
}

//! The whole pipeline, five processes over real servers: one backup
//! travels the whole way and a dead SFTP server ends in `dump.failed` and
//! an alert email ([`journey`]), the binaries' help and refusals
//! ([`binaries`]), the deployment files ([`deploy`]), the docs against the
//! code ([`docs`]), the resilience and security suite ([`resilience`]),
//! scaling out: parallel workers and one dumper per PostgreSQL server
//! ([`scale`], with the `#[ignore]`d scale benchmark), and the pipeline
//! on a three-node NATS cluster losing nodes ([`cluster`]), S3 as the
//! only destination ([`s3_only`]), and the `#[ignore]`d benchmark of every
//! stage of one backup over an emulated WAN ([`stages_bench`]).

#[path = "pipeline/binaries.rs"]
mod binaries;
#[path = "pipeline/cluster.rs"]
mod cluster;
#[path = "pipeline/deploy.rs"]
mod deploy;
#[path = "pipeline/docs.rs"]
mod docs;
#[path = "pipeline/journey.rs"]
mod journey;
#[path = "pipeline/resilience.rs"]
mod resilience;
#[path = "pipeline/s3_only.rs"]
mod s3_only;
#[path = "pipeline/scale.rs"]
mod scale;
#[path = "pipeline/scripts.rs"]
mod scripts;
#[path = "pipeline/settings.rs"]
mod settings;
#[path = "pipeline/stages_bench.rs"]
mod stages_bench;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};
use test_support::nats::NatsServer;
use test_support::nats_cluster::NatsCluster;
use test_support::postgres::{
    TestDatabase, databases_with_prefix, ensure_postgres_running, pg_env,
};
use test_support::process::{ServiceProcess, wait_until};
use test_support::smtp::SmtpServer;
use test_support::sshd::Sshd;

/// Where the services find NATS: what they get as `NATS_URL` (and, for a
/// cluster, `NATS_STREAM_REPLICAS`).
trait Nats {
    fn service_env(&self) -> Vec<(&'static str, String)>;
}

impl Nats for NatsServer {
    fn service_env(&self) -> Vec<(&'static str, String)> {
        vec![("NATS_URL", self.url.clone())]
    }
}

/// Every node as a seed, and a copy of the stream on each.
impl Nats for NatsCluster {
    fn service_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NATS_URL", self.url()),
            ("NATS_STREAM_REPLICAS", self.nodes.len().to_string()),
        ]
    }
}

/// The servers one pipeline runs against, and the environment each service
/// gets: one NATS server unless a test brings a cluster.
struct Rig<N = NatsServer> {
    nats: N,
    sshd: Sshd,
    smtp: SmtpServer,
    source: TestDatabase,
    spool: tempfile::TempDir,
}

impl Rig {
    fn start() -> Rig {
        Rig::start_on(NatsServer::start())
    }
}

impl<N: Nats> Rig<N> {
    fn start_on(nats: N) -> Rig<N> {
        ensure_postgres_running();
        let source = TestDatabase::create("e2e_src");
        source.execute(
            "CREATE SCHEMA grading;
             CREATE TABLE grading.exam (id bigserial PRIMARY KEY, title text NOT NULL);
             CREATE TABLE grading.copy (id bigserial PRIMARY KEY, exam_id bigint REFERENCES grading.exam(id), score numeric(4,2));
             CREATE TABLE public.audit_log (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), detail text);
             CREATE TABLE public.empty_table (id int);
             INSERT INTO grading.exam(title) SELECT 'Devoir n°' || i FROM generate_series(1, 40) i;
             INSERT INTO grading.copy(exam_id, score) SELECT 1 + i % 40, (i % 20)::numeric FROM generate_series(1, 5000) i;
             INSERT INTO public.audit_log(detail) SELECT md5(i::text) FROM generate_series(1, 20000) i;",
        );
        Rig {
            nats,
            sshd: Sshd::start(),
            smtp: SmtpServer::start(),
            source,
            spool: tempfile::tempdir().expect("spool dir"),
        }
    }

    /// This rig's own scratch-database prefix, so a test sees only the
    /// scratch databases of its own verifier.
    fn scratch_prefix(&self) -> String {
        format!(
            "vfy{}",
            self.source.name.rsplit('_').next().expect("hex suffix")
        )
    }

    fn remote_dir(&self) -> PathBuf {
        self.sshd.backups_dir()
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .nats
            .service_env()
            .into_iter()
            .chain([
                ("RUST_LOG", "info".into()),
                ("BACKUP_DATABASES", self.source.name.clone()),
                ("BACKUP_SPOOL_DIR", self.spool.path().display().to_string()),
                (
                    "VERIFY_DATABASE_URL",
                    "postgresql://postgres@127.0.0.1:5432/postgres".into(),
                ),
                ("SMTP_URL", self.smtp.url.clone()),
                ("ALERT_EMAIL_FROM", "backups@korrigo.example".into()),
                ("ALERT_EMAIL_TO", "oncall@korrigo.example".into()),
                ("SHUTDOWN_GRACE", "2s".into()),
                ("VERIFY_SCRATCH_PREFIX", self.scratch_prefix()),
            ])
            .map(|(k, v)| (k.to_owned(), v))
            .chain(self.sshd.sftp_env(&self.remote_dir()))
            .collect();
        env.extend(pg_env());
        env
    }

    fn spawn_all(&self) -> Vec<ServiceProcess> {
        self.spawn_all_with(&self.env())
    }

    /// The five services with `env` in place of [`Rig::env`].
    fn spawn_all_with(&self, env: &[(String, String)]) -> Vec<ServiceProcess> {
        ["dumper", "shipper", "verifier", "pruner", "notifier"]
            .into_iter()
            .map(|name| {
                let service = ServiceProcess::spawn(name, &[], env);
                assert!(
                    service.wait_for_log("waiting for work", Duration::from_secs(60)),
                    "{name} did not start:\n{}",
                    service.log()
                );
                service
            })
            .collect()
    }

    fn backupctl(&self, args: &[&str]) -> (Option<std::process::ExitStatus>, String) {
        self.backupctl_with(self.env(), args)
    }

    /// `backupctl` with `env` in place of [`Rig::env`].
    fn backupctl_with(
        &self,
        mut env: Vec<(String, String)>,
        args: &[&str],
    ) -> (Option<std::process::ExitStatus>, String) {
        // Its output is parsed: keep the connection logs out of it.
        env.push(("RUST_LOG".into(), "warn".into()));
        let mut ctl = ServiceProcess::spawn("backupctl", args, &env);
        let status = ctl.wait_timeout(Duration::from_secs(180));
        (status, ctl.log())
    }

    /// `backupctl list --database <db> --json`, with `env`, shows
    /// `artifact` first and verified.
    fn assert_listed_verified(&self, env: Vec<(String, String)>, db: &str, artifact: &str) {
        let (status, output) = self.backupctl_with(env, &["list", "--database", db, "--json"]);
        assert!(
            status.is_some_and(|s| s.success()),
            "backupctl list:\n{output}"
        );
        let catalog = first_json(&output, '[');
        assert_eq!(catalog[0]["artifact"], artifact, "{catalog}");
        assert_eq!(catalog[0]["verified"], true, "{catalog}");
    }
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read artifact")))
}

/// The last event stored on `subject`, read straight from JetStream.
fn last_event(nats_url: &str, subject: &str) -> serde_json::Value {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = async_nats::connect(nats_url)
            .await
            .expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("BACKUPS").await.expect("BACKUPS stream");
        let message = stream
            .get_last_raw_message_by_subject(subject)
            .await
            .unwrap_or_else(|e| panic!("no {subject} event: {e}"));
        serde_json::from_slice(&message.payload).expect("event is JSON")
    })
}

/// Waits until the durable consumer `name` has handled every message
/// stored so far (nothing pending, nothing unacknowledged).
fn wait_consumer_idle(nats_url: &str, name: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = async_nats::connect(nats_url)
            .await
            .expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        test_support::pipeline::wait_idle(&js, name).await;
    });
}

/// Publishes raw bytes to the stream, as a buggy or hostile client would.
fn publish_raw(nats_url: &str, subject: &'static str, payload: &'static [u8]) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = async_nats::connect(nats_url)
            .await
            .expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        js.publish(subject, payload.into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    });
}

/// The first JSON document in `output` (which also holds stderr lines).
fn first_json(output: &str, opening: char) -> serde_json::Value {
    let start = output
        .find(opening)
        .unwrap_or_else(|| panic!("no JSON in:\n{output}"));
    serde_json::Deserializer::from_str(&output[start..])
        .into_iter::<serde_json::Value>()
        .next()
        .expect("a JSON value")
        .unwrap_or_else(|e| panic!("bad JSON ({e}) in:\n{output}"))
}

/// Every `dump.failed` stored so far.
fn failures(nats_url: &str) -> Vec<serde_json::Value> {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = async_nats::connect(nats_url)
            .await
            .expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        let log = test_support::pipeline::EventLog::follow(&js).await;
        log.sync().await;
        log.of("dump.failed")
    })
}

/// Names of the consumers on the `BACKUPS` stream.
fn consumer_names(nats_url: &str) -> BTreeSet<String> {
    use futures::StreamExt;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = async_nats::connect(nats_url)
            .await
            .expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("BACKUPS").await.expect("BACKUPS stream");
        let names: Vec<_> = stream.consumer_names().collect().await;
        names
            .into_iter()
            .map(|n| n.expect("consumer name"))
            .collect()
    })
}

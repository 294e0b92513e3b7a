//! A real S3 implementation for tests: `moto_server` (PyPI `moto[server]`)
//! on a free loopback port, from a virtual environment
//! (`BACKUP_TEST_MOTO_VENV`, default `/opt/backup-test/moto-venv`, made by
//! `scripts/install-deps.sh --throwaway-machine`). Killed on drop.
//!
//! moto keeps everything in memory: [`MotoServer::restart`] brings back an
//! empty server on the same port and creates the buckets made through
//! [`MotoServer::create_bucket`] again (the credentials too, in
//! authenticated mode). To make S3 unreachable for a while without losing
//! its data, put a [`crate::relay::TcpRelay`] in front of it.
//!
//! moto accepts any credentials unless its IAM authentication is on:
//! [`MotoServer::start_authenticated`] creates an IAM user allowed `s3:*`,
//! takes its access key as [`MotoServer::access_key_id`] /
//! [`MotoServer::secret_access_key`], then turns authentication on
//! (`/moto-api/reset-auth` with 0, the server-mode form of
//! `INITIAL_NO_AUTH_ACTION_COUNT`): from then on an unknown key is
//! `InvalidAccessKeyId` and a wrong secret `SignatureDoesNotMatch`, as on
//! AWS. Setup requests go through boto3 (moto's own dependency) in the
//! virtual environment's Python.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::PortReservation;
use crate::process::{kill_and_reap, log_stdio, log_tail};

const DEFAULT_VENV: &str = "/opt/backup-test/moto-venv";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const INSTALL_HINT: &str = "run scripts/install-deps.sh --throwaway-machine, or set \
                            BACKUP_TEST_MOTO_VENV to a virtual environment with moto[server]";

/// The region moto's buckets are made in.
pub const REGION: &str = "us-east-1";

/// A running `moto_server` (see the module docs).
#[derive(Debug)]
pub struct MotoServer {
    pub port: u16,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    /// Credentials moto accepts: any in the default mode, the IAM user's
    /// in authenticated mode.
    pub access_key_id: String,
    pub secret_access_key: String,
    authenticated: bool,
    /// Buckets to make again after a restart: (name, object lock).
    buckets: Vec<(String, bool)>,
    venv: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    reservation: PortReservation,
    _dir: TempDir,
}

impl MotoServer {
    /// Starts moto accepting any credentials.
    pub fn start() -> MotoServer {
        let venv = std::env::var_os("BACKUP_TEST_MOTO_VENV")
            .map_or_else(|| PathBuf::from(DEFAULT_VENV), PathBuf::from);
        assert!(
            venv.join("bin/moto_server").is_file(),
            "{}/bin/moto_server is missing: {INSTALL_HINT}",
            venv.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("moto-")
            .tempdir()
            .expect("create moto temp dir");
        let reservation = PortReservation::new();
        let port = reservation.port();
        let mut server = MotoServer {
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key_id: "moto-test-key".into(),
            secret_access_key: "moto-test-secret".into(),
            authenticated: false,
            buckets: Vec::new(),
            venv,
            log_path: dir.path().join("moto.log"),
            child: None,
            reservation,
            _dir: dir,
        };
        server.spawn();
        server
    }

    /// Starts moto with IAM authentication on (see the module docs).
    pub fn start_authenticated() -> MotoServer {
        let mut server = MotoServer::start();
        server.authenticate();
        server
    }

    fn spawn(&mut self) {
        self.reservation.release();
        let (stdout, stderr) = log_stdio(&self.log_path);
        let child = Command::new(self.venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start moto_server: {e}; {INSTALL_HINT}"));
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.answers() {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "moto_server exited ({status}) before answering:\n{}",
                    log_tail(&self.log_path)
                );
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on port {} within {START_TIMEOUT:?}:\n{}",
                self.port,
                log_tail(&self.log_path)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether moto answers its own API (not merely accepts TCP).
    fn answers(&self) -> bool {
        http_request(self.port, "GET", "/moto-api/data.json", "")
            .is_some_and(|status| status == 200)
    }

    /// Creates `name` (with Object Lock enabled, which also turns on
    /// versioning, when `object_lock`); made again by [`Self::restart`].
    pub fn create_bucket(&mut self, name: &str, object_lock: bool) {
        self.buckets.push((name.to_owned(), object_lock));
        self.make_bucket(name, object_lock);
    }

    /// The `S3_*` variables of a service keeping backups under `prefix`
    /// in `bucket` on this server.
    pub fn env(&self, bucket: &str, prefix: &str) -> Vec<(String, String)> {
        [
            ("S3_BUCKET", bucket),
            ("S3_ENDPOINT", &self.endpoint),
            ("S3_PREFIX", prefix),
            ("S3_ACCESS_KEY_ID", &self.access_key_id),
            ("S3_SECRET_ACCESS_KEY", &self.secret_access_key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn make_bucket(&self, name: &str, object_lock: bool) {
        let lock = if object_lock { "True" } else { "False" };
        self.python(&format!(
            "s3.create_bucket(Bucket={name:?}, ObjectLockEnabledForBucket={lock})"
        ));
    }

    fn authenticate(&mut self) {
        let out = self.python(
            "iam = boto3.client('iam', endpoint_url=endpoint, region_name=region, \
             aws_access_key_id=key, aws_secret_access_key=secret)\n\
             iam.create_user(UserName='backup')\n\
             iam.put_user_policy(UserName='backup', PolicyName='s3', PolicyDocument=json.dumps(\
             {'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': 's3:*', 'Resource': '*'}]}))\n\
             k = iam.create_access_key(UserName='backup')['AccessKey']\n\
             print(k['AccessKeyId'], k['SecretAccessKey'])\n\
             urllib.request.urlopen(urllib.request.Request(endpoint + '/moto-api/reset-auth', \
             data=b'0', method='POST', headers={'Content-Type': 'text/plain'}))",
        );
        let mut words = out.split_whitespace();
        let (Some(id), Some(secret)) = (words.next(), words.next()) else {
            panic!("no access key from moto's IAM: {out:?}");
        };
        self.access_key_id = id.to_owned();
        self.secret_access_key = secret.to_owned();
        self.authenticated = true;
    }

    /// Runs a few lines of Python with `boto3`, `s3` (a client with this
    /// server's credentials), `endpoint`, `region`, `key`, `secret`;
    /// returns what it printed.
    pub fn python(&self, code: &str) -> String {
        let script = format!(
            "import boto3, json, urllib.request\n\
             endpoint = {endpoint:?}\nregion = {REGION:?}\nkey = {key:?}\nsecret = {secret:?}\n\
             s3 = boto3.client('s3', endpoint_url=endpoint, region_name=region, \
             aws_access_key_id=key, aws_secret_access_key=secret)\n{code}\n",
            endpoint = self.endpoint,
            key = self.access_key_id,
            secret = self.secret_access_key,
        );
        let output = Command::new(self.venv.join("bin/python"))
            .args(["-c", &script])
            .output()
            .unwrap_or_else(|e| panic!("run the moto venv's python: {e}; {INSTALL_HINT}"));
        assert!(
            output.status.success(),
            "python against moto failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            log_tail(&self.log_path)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Kills the server; its port stays reserved (connections are refused).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
        self.reservation.hold();
    }

    /// A fresh, empty server on the same port, with the buckets (and, in
    /// authenticated mode, an access key: see [`Self::access_key_id`])
    /// made again.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        if self.authenticated {
            self.access_key_id = "moto-test-key".into();
            self.secret_access_key = "moto-test-secret".into();
            self.authenticate();
        }
        for (name, lock) in self.buckets.clone() {
            self.make_bucket(&name, lock);
        }
    }

    /// The server's log (requests and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }
}

/// Sends one HTTP/1.0 request; the status code, if anything answered.
fn http_request(port: u16, method: &str, path: &str, body: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

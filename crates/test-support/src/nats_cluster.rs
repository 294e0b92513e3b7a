//! A private three-node `nats-server` cluster with JetStream on loopback:
//! each node has its own client, route and monitoring ports and its own
//! store, and names itself `n1`, `n2`, `n3` (the names JetStream reports as
//! leaders). A node can be killed as in a crash and restarted on the same
//! ports with the same store; the JetStream API says which node leads a
//! stream or a consumer, so a test can kill exactly that one.
//!
//! Synchronous like the rest of the harness; the few JetStream API
//! requests run on a runtime of their own, on a thread of their own, so
//! they may be called from async tests as well.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::nats::{INSTALL_HINT, http_get, nats_server_path};
use crate::process::{LOG_TAIL_LINES, kill_and_reap, log_stdio, log_tail};
use crate::{PortReservation, free_port};

/// Nodes of the cluster [`NatsCluster::start`] builds: the smallest that
/// keeps a quorum (two) with one node down.
pub const NODES: usize = 3;
/// Generous: three servers elect a meta leader on a shared, busy machine,
/// and a restarted node catches up on every stream and consumer it holds.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an election (after a kill) may take to be reported.
const LEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// One `nats-server` of the cluster.
#[derive(Debug)]
pub struct ClusterNode {
    /// The server name, `n1`.. (`-n`): what JetStream names leaders by.
    pub name: String,
    /// Client port on 127.0.0.1.
    pub port: u16,
    /// `nats://127.0.0.1:PORT`
    pub url: String,
    /// Route port (`--cluster`), where the other nodes connect.
    pub cluster_port: u16,
    /// HTTP monitoring port (`/healthz`, `/jsz`).
    pub monitor_port: u16,
    store_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    /// Hold the client and route ports while the node is killed, so
    /// clients and the other nodes get refused instead of meeting a
    /// stranger that took the port.
    reservations: Vec<PortReservation>,
}

impl ClusterNode {
    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Everything the node has logged (across restarts).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn spawn(&mut self, cluster_name: &str, routes: &str) -> Result<(), String> {
        self.reservations.clear();
        let program = nats_server_path();
        let (stdout, stderr) = log_stdio(&self.log_path);
        let child = Command::new(&program)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string(), "-js", "-sd"])
            .arg(&self.store_dir)
            .args(["-n", &self.name, "--cluster_name", cluster_name])
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", self.cluster_port),
            ])
            .args(["--routes", routes])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|err| format!("spawn {}: {err}; {INSTALL_HINT}", program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
            self.reservations = [self.port, self.cluster_port]
                .into_iter()
                .map(|port| {
                    let mut reservation = PortReservation::at(port);
                    reservation.hold();
                    reservation
                })
                .collect();
        }
    }

    /// Why the node cannot come up, if it already gave up.
    fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        let reason = if self.log().contains("address already in use") {
            "address already in use"
        } else {
            "exited"
        };
        Some(format!(
            "nats-server {} {reason} during startup ({status})",
            self.name
        ))
    }

    /// `/jsz`'s view of the meta group: its leader's name, once elected.
    fn meta_leader(&self) -> Option<String> {
        let (status, body) = http_get(self.monitor_port, "/jsz").ok()?;
        if status != 200 {
            return None;
        }
        let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
        jsz["meta_cluster"]["leader"]
            .as_str()
            .filter(|leader| !leader.is_empty())
            .map(str::to_owned)
    }

    /// `/healthz` says JetStream is up and current with the meta group and
    /// with every stream on this node. A consumer it names as not current
    /// does not count: on 2.9.10 a restarted node's copy of an idle
    /// consumer stays "not current" until the consumer next moves.
    fn healthy(&self) -> bool {
        match http_get(self.monitor_port, "/healthz") {
            Ok((200, body)) => body.contains("ok"),
            Ok((503, body)) => body.contains("JetStream consumer"),
            _ => false,
        }
    }
}

/// A running three-node JetStream cluster. Every node is killed on drop
/// and the stores are deleted with it.
#[derive(Debug)]
pub struct NatsCluster {
    /// `--cluster_name`.
    pub name: String,
    pub nodes: Vec<ClusterNode>,
    /// Set once a startup panic has shown the logs, so drop does not repeat it.
    logs_shown: bool,
    _dir: TempDir,
}

impl NatsCluster {
    /// Starts [`NODES`] servers routed to each other and waits until every
    /// one is healthy and they agree on a JetStream meta leader.
    pub fn start() -> NatsCluster {
        let dir = tempfile::Builder::new()
            .prefix("nats-cluster-")
            .tempdir()
            .expect("create temp dir for the nats cluster");
        let mut cluster = NatsCluster {
            name: String::new(),
            nodes: Vec::new(),
            logs_shown: false,
            _dir: dir,
        };
        // A free port can be taken by another test before the server binds
        // it: fresh ports fix that, a broken install does not.
        for attempt in 1..=3 {
            cluster.kill_all();
            let ports = distinct_free_ports(3 * NODES);
            cluster.nodes = ports
                .chunks(3)
                .enumerate()
                .map(|(i, ports)| cluster.fresh_node(i + 1, attempt, ports))
                .collect();
            cluster.name = format!("test-{}", cluster.nodes[0].cluster_port);
            let started = (0..NODES)
                .try_for_each(|i| cluster.spawn(i))
                .and_then(|()| cluster.wait_ready(START_TIMEOUT));
            match started {
                Ok(()) => return cluster,
                Err(why) if attempt < 3 && why.contains("address already in use") => continue,
                Err(why) => cluster.fail(&why),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// The seed list a service gets as `NATS_URL`: every node, first to last.
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    /// The index of the node called `name` (`n2` → 1).
    pub fn node_named(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in cluster {}", self.name))
    }

    /// SIGKILLs node `index`, as in a crash; its store is kept for
    /// [`NatsCluster::restart`]. Returns at once: the others elect new
    /// leaders in the seconds that follow ([`NatsCluster::wait_settled`]).
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// Waits until every running node is healthy and they agree on a
    /// JetStream meta leader: streams can be created again.
    pub fn wait_settled(&mut self) {
        if let Err(why) = self.wait_ready(START_TIMEOUT) {
            self.fail(&why);
        }
    }

    /// Starts node `index` again on its ports with its store (killing it
    /// first if it runs) and waits until it has caught up with the meta
    /// group and its streams.
    pub fn restart(&mut self, index: usize) {
        self.nodes[index].kill();
        let started = self
            .spawn(index)
            .and_then(|()| self.wait_ready(START_TIMEOUT));
        if let Err(why) = started {
            self.fail(&why);
        }
    }

    /// The node leading `stream` (from `$JS.API.STREAM.INFO.<stream>`),
    /// waiting for an election in progress to finish.
    pub fn stream_leader(&self, stream: &str) -> usize {
        self.leader_of(&format!("$JS.API.STREAM.INFO.{stream}"))
    }

    /// The node leading the durable `consumer` of `stream` (from
    /// `$JS.API.CONSUMER.INFO.<stream>.<consumer>`).
    pub fn consumer_leader(&self, stream: &str, consumer: &str) -> usize {
        self.leader_of(&format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"))
    }

    /// The replicas JetStream reports for `stream`: the leader and every
    /// peer, with whether each is current.
    pub fn stream_cluster(&self, stream: &str) -> serde_json::Value {
        let info = self.api(&format!("$JS.API.STREAM.INFO.{stream}"));
        info["cluster"].clone()
    }

    /// One JetStream API request (empty body) through the running nodes;
    /// the decoded reply, or `null` while no node answers.
    pub fn api(&self, subject: &str) -> serde_json::Value {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.url.clone())
            .collect();
        let subject = subject.to_owned();
        thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for a JetStream API request");
            runtime.block_on(async {
                let connect = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(2))
                    .connect(urls);
                let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(10), connect).await
                else {
                    return serde_json::Value::Null;
                };
                let request = client.request(subject, "".into());
                match tokio::time::timeout(Duration::from_secs(5), request).await {
                    Ok(Ok(reply)) => {
                        serde_json::from_slice(&reply.payload).unwrap_or(serde_json::Value::Null)
                    }
                    _ => serde_json::Value::Null,
                }
            })
        })
        .join()
        .expect("JetStream API request thread")
    }

    fn leader_of(&self, subject: &str) -> usize {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            let reply = self.api(subject);
            if let Some(leader) = reply["cluster"]["leader"].as_str()
                && let Some(index) = self.nodes.iter().position(|n| n.name == leader)
            {
                return index;
            }
            assert!(
                Instant::now() < deadline,
                "no leader in {subject} within {LEADER_TIMEOUT:?}; last reply: {reply}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn fresh_node(&self, number: usize, attempt: usize, ports: &[u16]) -> ClusterNode {
        let [client, cluster_port, monitor_port] = ports else {
            unreachable!("three ports per node")
        };
        let (client, cluster_port, monitor_port) = (*client, *cluster_port, *monitor_port);
        let base = self._dir.path().join(format!("n{number}-{attempt}"));
        std::fs::create_dir_all(&base).expect("node dir");
        ClusterNode {
            name: format!("n{number}"),
            port: client,
            url: format!("nats://127.0.0.1:{client}"),
            cluster_port,
            monitor_port,
            store_dir: base.join("store"),
            log_path: base.join("nats-server.log"),
            child: None,
            reservations: Vec::new(),
        }
    }

    fn spawn(&mut self, index: usize) -> Result<(), String> {
        let routes = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(_, n)| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        let name = self.name.clone();
        self.nodes[index].spawn(&name, &routes)
    }

    /// Every running node healthy and naming the same meta leader.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            for node in &mut self.nodes {
                if let Some(why) = node.exited() {
                    return Err(why);
                }
            }
            let running: Vec<&ClusterNode> =
                self.nodes.iter().filter(|n| n.child.is_some()).collect();
            let leaders: Vec<Option<String>> = running.iter().map(|n| n.meta_leader()).collect();
            let agreed = leaders.first().cloned().flatten().is_some()
                && leaders.windows(2).all(|pair| pair[0] == pair[1]);
            if agreed && running.iter().all(|n| n.healthy()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let health: Vec<String> = running
                    .iter()
                    .map(|n| match http_get(n.monitor_port, "/healthz") {
                        Ok((status, body)) => format!("{}: {status} {}", n.name, body.trim()),
                        Err(e) => format!("{}: {e}", n.name),
                    })
                    .collect();
                return Err(format!(
                    "nats cluster not ready after {timeout:?} (meta leaders seen: {leaders:?}; health: {})",
                    health.join("; ")
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill_all(&mut self) {
        for node in &mut self.nodes {
            node.kill();
            node.reservations.clear();
        }
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "----- last {LOG_TAIL_LINES} lines of nats-server {} (port {}, route {}) -----\n{}",
                    n.name,
                    n.port,
                    n.cluster_port,
                    log_tail(&n.log_path)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn fail(&mut self, why: &str) -> ! {
        self.logs_shown = true;
        self.kill_all();
        panic!("{why}\n({INSTALL_HINT})\n{}", self.logs());
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        if thread::panicking() && !self.logs_shown {
            eprintln!("{}\n----- end of nats cluster logs -----", self.logs());
        }
        self.kill_all();
    }
}

/// `count` loopback ports, free a moment ago and all different.
fn distinct_free_ports(count: usize) -> Vec<u16> {
    let mut ports = Vec::with_capacity(count);
    while ports.len() < count {
        let port = free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

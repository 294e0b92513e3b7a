//! A private `nats-server` with JetStream, storing into a temp dir.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::free_port;
use crate::process::{LOG_TAIL_LINES, kill_and_reap, log_stdio, log_tail};

/// Debian's package puts it here; `PATH` is the fallback for other hosts.
const NATS_SERVER_PATHS: &[&str] = &["/usr/sbin/nats-server", "/usr/bin/nats-server"];
pub(crate) const INSTALL_HINT: &str = "is nats-server installed? `apt-get install -y nats-server`";
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `nats-server -js` on free loopback ports. Killed on drop; the
/// store is deleted with it.
#[derive(Debug)]
pub struct NatsServer {
    /// Client port on 127.0.0.1.
    pub port: u16,
    /// `nats://127.0.0.1:PORT`
    pub url: String,
    /// HTTP monitoring port (`/jsz`, `/healthz`, `/varz`, ...).
    pub monitor_port: u16,
    /// The `-sd` directory; JetStream keeps its data in `jetstream/` below.
    pub store_dir: PathBuf,
    extra_args: Vec<String>,
    log_path: PathBuf,
    child: Option<Child>,
    /// Holds the client port while the server is killed, so that clients
    /// retrying meanwhile get refused instead of meeting a stranger.
    port_reservation: Option<crate::PortReservation>,
    /// Set once a startup panic has shown the log, so drop does not repeat it.
    log_shown: bool,
    _dir: TempDir,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer::start_with_args(&[])
    }

    /// Like [`NatsServer::start`] with extra `nats-server` arguments, e.g.
    /// `["-c", "auth.conf"]`. Command-line flags win over a config file, so
    /// the harness's address, ports and store dir always apply.
    pub fn start_with_args(extra: &[&str]) -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("nats-")
            .tempdir()
            .expect("create temp dir for nats-server");
        let store_dir = dir.path().join("store");
        let log_path = dir.path().join("nats-server.log");
        let mut server = NatsServer {
            port: 0,
            url: String::new(),
            monitor_port: 0,
            store_dir,
            extra_args: extra.iter().map(|s| (*s).to_owned()).collect(),
            log_path,
            child: None,
            port_reservation: None,
            log_shown: false,
            _dir: dir,
        };
        // free_port() can race with another test grabbing the same port;
        // a fresh pair of ports fixes that, a broken install does not.
        for attempt in 1..=3 {
            server.port = free_port();
            server.monitor_port = free_port();
            while server.monitor_port == server.port {
                server.monitor_port = free_port();
            }
            server.url = format!("nats://127.0.0.1:{}", server.port);
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(why) if attempt < 3 && why.contains("address already in use") => continue,
                Err(why) => server.fail(&why),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// SIGKILLs the server, as in a crash. The store is kept for
    /// [`NatsServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
            let mut reservation = crate::PortReservation::at(self.port);
            reservation.hold();
            self.port_reservation = Some(reservation);
        }
    }

    /// Starts the server again on the same ports with the same store (kills
    /// it first if it is still running) and waits until JetStream is ready.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(why) = self.spawn_and_wait() {
            self.fail(&why);
        }
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Everything the server has logged (across restarts).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// GET `path` (e.g. `/jsz?streams=true`) from the monitoring port and
    /// return the body. Panics unless the status is 200.
    pub fn monitoring(&self, path: &str) -> String {
        match http_get(self.monitor_port, path) {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!("GET {path} on nats monitoring: HTTP {status}: {body}"),
            Err(err) => panic!(
                "GET {path} on nats monitoring port {}: {err}",
                self.monitor_port
            ),
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        self.port_reservation = None;
        let program = nats_server_path();
        let (stdout, stderr) = log_stdio(&self.log_path);
        let port = self.port.to_string();
        let monitor_port = self.monitor_port.to_string();
        let mut cmd = Command::new(&program);
        // Config file first: nats-server lets later flags override it.
        cmd.args(&self.extra_args)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port,
                "-m",
                &monitor_port,
                "-js",
                "-sd",
            ])
            .arg(&self.store_dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = cmd
            .spawn()
            .map_err(|err| format!("spawn {}: {err}; {INSTALL_HINT}", program.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Ready means clients can connect and JetStream has recovered its
    /// store: `/healthz` only reports ok once JetStream is up.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let client_addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let reason = if self.log().contains("address already in use") {
                    "address already in use"
                } else {
                    "exited"
                };
                return Err(format!("nats-server {reason} during startup ({status})"));
            }
            let healthy = matches!(
                http_get(self.monitor_port, "/healthz"),
                Ok((200, ref body)) if body.contains("ok")
            );
            if healthy
                && TcpStream::connect_timeout(&client_addr, Duration::from_millis(500)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("nats-server not ready after {START_TIMEOUT:?}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn fail(&mut self, why: &str) -> ! {
        self.log_shown = true;
        self.kill();
        panic!(
            "{why}\n(nats-server -p {} -m {} -sd {}; {INSTALL_HINT})\n----- last {LOG_TAIL_LINES} lines of nats-server log -----\n{}",
            self.port,
            self.monitor_port,
            self.store_dir.display(),
            log_tail(&self.log_path)
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if thread::panicking() && !self.log_shown {
            eprintln!(
                "----- last {LOG_TAIL_LINES} lines of nats-server log (port {}) -----\n{}\n----- end of nats-server log -----",
                self.port,
                log_tail(&self.log_path)
            );
        }
        self.kill();
    }
}

pub(crate) fn nats_server_path() -> PathBuf {
    NATS_SERVER_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// Minimal HTTP/1.0 GET on 127.0.0.1: status code and body. HTTP/1.0 makes
/// the server close the connection, so reading to EOF delimits the body.
pub(crate) fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("malformed HTTP response: {head}")))?;
    Ok((status, body.to_owned()))
}

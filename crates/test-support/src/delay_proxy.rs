//! A TCP relay that adds latency and can cut connections: the latency half
//! of the emulated WAN ([`crate::wan`]), and on its own (without delay) a
//! way to drop an upload at a chosen byte.
//!
//! Each direction of each connection has a reader thread and a writer
//! thread joined by a bounded queue: the reader stamps every chunk with the
//! time it arrived, the writer holds it until that time plus the one-way
//! delay and then writes it, so the order of the bytes is kept and every
//! byte arrives `delay` late (both directions give the round trip). The
//! kernel here has no `netem`, which would do this on the link itself; the
//! difference is that TCP between the proxy and the server sees no delay,
//! so its loss recovery is faster than over a real WAN. What an application
//! protocol sees (SSH channel windows, SFTP pipelining) is the same.
//!
//! The cut is one-shot: once the armed number of client-to-server bytes has
//! been written upstream, every open connection is shut down on both sides
//! (what a dropped link looks like to both ends). New connections pass
//! again afterwards, so a retry can go through. Nothing retries here.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Chunks waiting in one direction of one connection: with 64 KiB reads,
/// at most 16 MiB held, far above what an SSH channel window lets a client
/// send unacknowledged.
const QUEUE_CHUNKS: usize = 256;
const READ_CHUNK: usize = 64 * 1024;

/// A running proxy on a free loopback port; stopped, with every connection
/// it relays, on drop.
#[derive(Debug)]
pub struct DelayProxy {
    /// Port on 127.0.0.1 where clients connect.
    pub port: u16,
    shared: Arc<Shared>,
    thread: Option<thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    one_way: Duration,
    stop: AtomicBool,
    /// Client-to-server bytes written upstream, all connections.
    up: AtomicU64,
    /// Server-to-client bytes written to clients, all connections.
    down: AtomicU64,
    /// Value of `up` at which to cut, when armed.
    cut_at: Mutex<Option<u64>>,
    cuts: AtomicU64,
    connections: AtomicU64,
    /// Both sockets of every connection, to cut or stop them.
    open: Mutex<Vec<(TcpStream, TcpStream)>>,
}

impl DelayProxy {
    /// Starts a proxy to `upstream` holding every chunk `one_way` in each
    /// direction (zero for none).
    pub fn start(upstream: SocketAddr, one_way: Duration) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind delay proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            upstream,
            one_way,
            stop: AtomicBool::new(false),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            cut_at: Mutex::new(None),
            cuts: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                while !shared.stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let shared = Arc::clone(&shared);
                            thread::spawn(move || relay(client, &shared));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        DelayProxy {
            port,
            shared,
            thread: Some(thread),
        }
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Client-to-server bytes relayed so far (all connections).
    pub fn bytes_up(&self) -> u64 {
        self.shared.up.load(Ordering::SeqCst)
    }

    /// Server-to-client bytes relayed so far (all connections).
    pub fn bytes_down(&self) -> u64 {
        self.shared.down.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// How many times an armed cut happened.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Arms a one-shot cut: once `bytes` more client-to-server bytes have
    /// been written upstream (counted from now), every open connection is
    /// shut down on both sides. Connections made later pass.
    pub fn cut_after(&self, bytes: u64) {
        let at = self.bytes_up() + bytes;
        *self.shared.cut_at.lock().expect("cut lock") = Some(at);
    }

    /// Shuts down every open connection on both sides now.
    pub fn cut_now(&self) {
        self.shared.cut_all();
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.cut_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn cut_all(&self) {
        let open = std::mem::take(&mut *self.open.lock().expect("open lock"));
        for (client, server) in open {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }

    /// How many of `len` bytes may still go upstream before the armed cut
    /// (`None`: not armed).
    fn allowance(&self, len: usize) -> Option<usize> {
        let cut_at = (*self.cut_at.lock().expect("cut lock"))?;
        let left = cut_at.saturating_sub(self.up.load(Ordering::SeqCst));
        Some(len.min(usize::try_from(left).unwrap_or(usize::MAX)))
    }

    fn cut_reached(&self) {
        *self.cut_at.lock().expect("cut lock") = None;
        self.cuts.fetch_add(1, Ordering::SeqCst);
        self.cut_all();
    }
}

fn relay(client: TcpStream, shared: &Arc<Shared>) {
    shared.connections.fetch_add(1, Ordering::SeqCst);
    let _ = client.set_nonblocking(false);
    let _ = client.set_nodelay(true);
    let Ok(server) = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(10)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = server.set_nodelay(true);
    let clones = (
        client.try_clone(),
        server.try_clone(),
        client.try_clone(),
        server.try_clone(),
    );
    let (Ok(client_read), Ok(server_write), Ok(client_keep), Ok(server_keep)) = clones else {
        return;
    };
    if shared.stop.load(Ordering::SeqCst) {
        return;
    }
    shared
        .open
        .lock()
        .expect("open lock")
        .push((client_keep, server_keep));
    let up = {
        let shared = Arc::clone(shared);
        thread::spawn(move || direction(client_read, server_write, &shared, true))
    };
    direction(server, client, shared, false);
    let _ = up.join();
}

/// One direction: a reader stamping chunks, a writer releasing them after
/// the delay.
fn direction(mut from: TcpStream, to: TcpStream, shared: &Arc<Shared>, upstream: bool) {
    let (sender, receiver): (SyncSender<(Instant, Vec<u8>)>, Receiver<_>) =
        sync_channel(QUEUE_CHUNKS);
    let writer = {
        let shared = Arc::clone(shared);
        thread::spawn(move || release(receiver, to, &shared, upstream))
    };
    let mut buffer = vec![0u8; READ_CHUNK];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if sender.send((Instant::now(), buffer[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(sender);
    let _ = writer.join();
}

fn release(
    receiver: Receiver<(Instant, Vec<u8>)>,
    mut to: TcpStream,
    shared: &Shared,
    upstream: bool,
) {
    let counter = if upstream { &shared.up } else { &shared.down };
    for (arrived, chunk) in receiver {
        let due = arrived + shared.one_way;
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        let allowed = if upstream {
            shared.allowance(chunk.len())
        } else {
            None
        };
        let len = allowed.unwrap_or(chunk.len());
        if to.write_all(&chunk[..len]).is_err() {
            break;
        }
        counter.fetch_add(len as u64, Ordering::SeqCst);
        if allowed.is_some_and(|allowed| allowed < chunk.len() || shared.allowance(1) == Some(0)) {
            shared.cut_reached();
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

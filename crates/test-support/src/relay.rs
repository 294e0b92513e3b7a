//! A TCP relay in front of a real server, to simulate an outage without
//! killing the server: while the relay is down it accepts connections and
//! closes them at once (what a client sees when a service is restarting);
//! while up it forwards bytes both ways to the upstream port.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

/// A running relay on a free loopback port; stopped on drop.
#[derive(Debug)]
pub struct TcpRelay {
    pub port: u16,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TcpRelay {
    /// Starts a relay to `127.0.0.1:upstream_port`, up or down.
    pub fn start(upstream_port: u16, up: bool) -> TcpRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("local addr").port();
        let up = Arc::new(AtomicBool::new(up));
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream_port));
        let thread = {
            let up = Arc::clone(&up);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            if up.load(Ordering::SeqCst) {
                                thread::spawn(move || forward(client, upstream));
                            } else {
                                let _ = client.shutdown(Shutdown::Both);
                            }
                        }
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        TcpRelay {
            port,
            up,
            stop,
            thread: Some(thread),
        }
    }

    /// Lets new connections through (`true`) or cuts them at once (`false`).
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn forward(client: TcpStream, upstream: SocketAddr) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(client_read), Ok(server_write)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let upstream_copy = thread::spawn(move || pipe(client_read, server_write));
    pipe(server, client);
    let _ = upstream_copy.join();
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

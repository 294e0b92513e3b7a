//! A real SMTP server (Python's aiosmtpd) that stores every message it
//! receives in a Maildir, so a test can read back what was sent.
//!
//! Plain SMTP only: no TLS, no AUTH (aiosmtpd's command line offers AUTH
//! only with a custom handler), so clients must be configured for an
//! unencrypted, unauthenticated relay.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use tempfile::TempDir;

use crate::free_port;
use crate::process::{LOG_TAIL_LINES, kill_and_reap, log_stdio, log_tail};

/// Debian's interpreter, which has `python3-aiosmtpd`; a `python3` found
/// on `PATH` (pyenv, venv) usually does not.
const PYTHON: &str = "/usr/bin/python3";
const INSTALL_HINT: &str = "is aiosmtpd installed? `apt-get install -y python3-aiosmtpd` \
                            (the harness runs /usr/bin/python3, not the python3 on PATH)";
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running SMTP server on a free loopback port; killed on drop.
#[derive(Debug)]
pub struct SmtpServer {
    pub port: u16,
    /// `smtp://127.0.0.1:PORT`
    pub url: String,
    maildir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    /// Set once a startup panic has shown the log, so drop does not repeat it.
    log_shown: bool,
    _dir: TempDir,
}

/// One received message.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// The message as stored: headers and body, transfer encodings intact.
    /// The server adds `X-Peer`, `X-MailFrom` and `X-RcptTo` headers.
    pub raw: String,
    /// The envelope sender (`MAIL FROM`).
    pub envelope_from: String,
    /// The envelope recipients (`RCPT TO`).
    pub envelope_to: Vec<String>,
    /// The `Subject` header with RFC 2047 encoded words decoded.
    pub subject: String,
    /// All `text/*` parts, transfer encoding (quoted-printable, base64)
    /// undone, joined by newlines: what a person would read.
    pub body_text: String,
}

impl ReceivedMail {
    /// Parses a stored RFC 822 message.
    pub fn parse(raw: &[u8]) -> ReceivedMail {
        let raw = String::from_utf8_lossy(raw).into_owned();
        let entity = Entity::parse(&raw);
        let mut texts = Vec::new();
        entity.collect_text(&mut texts);
        ReceivedMail {
            envelope_from: entity.header("X-MailFrom").unwrap_or_default().to_owned(),
            envelope_to: entity
                .header("X-RcptTo")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            subject: decode_encoded_words(entity.header("Subject").unwrap_or_default()),
            body_text: texts.join("\n"),
            raw,
        }
    }

    /// The first header called `name` (case-insensitive), unfolded, with
    /// RFC 2047 encoded words decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        Entity::parse(&self.raw)
            .header(name)
            .map(decode_encoded_words)
    }

    /// Whether `needle` appears in the subject, the decoded body or the raw
    /// message.
    pub fn contains(&self, needle: &str) -> bool {
        self.subject.contains(needle)
            || self.body_text.contains(needle)
            || self.raw.contains(needle)
    }
}

impl SmtpServer {
    pub fn start() -> SmtpServer {
        let dir = tempfile::Builder::new()
            .prefix("smtp-")
            .tempdir()
            .expect("create temp dir for SMTP server");
        let maildir = dir.path().join("maildir");
        for sub in ["new", "cur", "tmp"] {
            fs::create_dir_all(maildir.join(sub)).expect("create maildir");
        }
        let log_path = dir.path().join("aiosmtpd.log");
        let mut server = SmtpServer {
            port: 0,
            url: String::new(),
            maildir,
            log_path,
            child: None,
            log_shown: false,
            _dir: dir,
        };
        // A port race with another test is worth a retry; anything else
        // (missing module) is not.
        for attempt in 1..=3 {
            server.port = free_port();
            server.url = format!("smtp://127.0.0.1:{}", server.port);
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(why) => {
                    let port_taken = server
                        .log()
                        .to_ascii_lowercase()
                        .contains("address already in use");
                    if attempt == 3 || !port_taken {
                        server.fail(&why);
                    }
                }
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// Every message received so far, oldest first.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        let mut files: Vec<(SystemTime, PathBuf)> = ["new", "cur"]
            .iter()
            .filter_map(|sub| fs::read_dir(self.maildir.join(sub)).ok())
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let modified = entry.metadata().ok()?.modified().ok()?;
                Some((modified, entry.path()))
            })
            .collect();
        files.sort();
        files
            .iter()
            // Maildir delivery is write-to-tmp-then-rename, so whatever is
            // in new/ is complete.
            .filter_map(|(_, path)| fs::read(path).ok())
            .map(|raw| ReceivedMail::parse(&raw))
            .collect()
    }

    /// Polls until at least `n` messages have arrived and returns all of
    /// them; panics on timeout with what did arrive and the server log.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if Instant::now() >= deadline {
                let subjects: Vec<&str> = messages.iter().map(|m| m.subject.as_str()).collect();
                panic!(
                    "expected {n} mail(s) within {timeout:?}, got {} (subjects {subjects:?})\n\
                     ----- last {LOG_TAIL_LINES} lines of SMTP server log -----\n{}",
                    messages.len(),
                    log_tail(&self.log_path)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server; later connections are refused. Received mail stays
    /// readable.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// The server's log (with `-d`, the SMTP dialogues).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    pub fn maildir(&self) -> &Path {
        &self.maildir
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let (stdout, stderr) = log_stdio(&self.log_path);
        let listen = format!("127.0.0.1:{}", self.port);
        let child = Command::new(PYTHON)
            .args(["-m", "aiosmtpd", "-n", "-d", "-l", &listen])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&self.maildir)
            // Keep a pyenv/venv environment from leaking into Debian's
            // interpreter, and get log lines out before a kill.
            .env_remove("PYTHONPATH")
            .env_remove("PYTHONHOME")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|err| format!("spawn {PYTHON}: {err}"))?;
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("aiosmtpd exited during startup ({status})"));
            }
            if greets(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("aiosmtpd not ready after {START_TIMEOUT:?}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn fail(&mut self, why: &str) -> ! {
        self.log_shown = true;
        self.stop();
        panic!(
            "{why}; {INSTALL_HINT}\n----- last {LOG_TAIL_LINES} lines of aiosmtpd log -----\n{}",
            log_tail(&self.log_path)
        );
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if thread::panicking() && !self.log_shown {
            eprintln!(
                "----- last {LOG_TAIL_LINES} lines of SMTP server log (port {}) -----\n{}\n----- end of SMTP server log -----",
                self.port,
                log_tail(&self.log_path)
            );
        }
        self.stop();
    }
}

/// Ready means the server sends its `220` greeting, not merely that the
/// port accepts: the listener exists a moment before the loop serves it.
fn greets(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("220")
}

/// A MIME entity: headers (unfolded) and body.
#[derive(Debug)]
struct Entity<'a> {
    headers: Vec<(&'a str, String)>,
    body: &'a str,
}

impl<'a> Entity<'a> {
    fn parse(text: &'a str) -> Entity<'a> {
        let mut headers: Vec<(&str, String)> = Vec::new();
        let mut rest = text;
        loop {
            let (line, after) = match rest.find('\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, ""),
            };
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                rest = after;
                break;
            }
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = headers.last_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
            } else if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim(), value.trim().to_owned()));
            }
            rest = after;
            if rest.is_empty() {
                break;
            }
        }
        Entity {
            headers,
            body: rest,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Content type (lowercase) and its parameters.
    fn content_type(&self) -> (String, Vec<(String, String)>) {
        let value = self.header("Content-Type").unwrap_or("text/plain");
        let mut parts = value.split(';');
        let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let params = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| {
                (
                    k.trim().to_ascii_lowercase(),
                    v.trim().trim_matches('"').to_owned(),
                )
            })
            .collect();
        (mime, params)
    }

    fn collect_text(&self, out: &mut Vec<String>) {
        let (mime, params) = self.content_type();
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        if mime.starts_with("multipart/") {
            if let Some(boundary) = param("boundary") {
                for part in split_multipart(self.body, &boundary) {
                    Entity::parse(part).collect_text(out);
                }
            }
        } else if mime.starts_with("message/rfc822") {
            Entity::parse(self.body).collect_text(out);
        } else if mime.is_empty() || mime.starts_with("text/") {
            let encoding = self
                .header("Content-Transfer-Encoding")
                .unwrap_or("7bit")
                .to_ascii_lowercase();
            let bytes = decode_transfer(self.body, &encoding);
            out.push(decode_charset(&bytes, param("charset").as_deref()));
        }
    }
}

/// The parts between `--boundary` delimiter lines, up to `--boundary--`.
fn split_multipart<'a>(body: &'a str, boundary: &str) -> Vec<&'a str> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut current: Option<usize> = None;
    let mut offset = 0;
    for line in body.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed == delimiter || trimmed == format!("{delimiter}--") {
            if let Some(start) = current {
                parts.push(&body[start..offset]);
            }
            if trimmed.ends_with("--") && trimmed != delimiter {
                return parts;
            }
            current = Some(offset + line.len());
        }
        offset += line.len();
    }
    if let Some(start) = current {
        parts.push(&body[start..]);
    }
    parts
}

fn decode_transfer(body: &str, encoding: &str) -> Vec<u8> {
    match encoding {
        "base64" => {
            let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact.as_bytes())
                .unwrap_or_else(|_| body.as_bytes().to_vec())
        }
        "quoted-printable" => {
            quoted_printable::decode(body.as_bytes(), quoted_printable::ParseMode::Robust)
                .unwrap_or_else(|_| body.as_bytes().to_vec())
        }
        _ => body.as_bytes().to_vec(),
    }
}

fn decode_charset(bytes: &[u8], charset: Option<&str>) -> String {
    match charset.map(str::to_ascii_lowercase).as_deref() {
        Some("iso-8859-1" | "latin1" | "latin-1") => bytes.iter().map(|&b| char::from(b)).collect(),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Decodes RFC 2047 `=?charset?B|Q?text?=` words; whitespace between two
/// encoded words is dropped, as the RFC says.
fn decode_encoded_words(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    let mut pending_space = String::new();
    let mut last_was_encoded = false;
    while !rest.is_empty() {
        if let Some((decoded, len)) = parse_encoded_word(rest) {
            if !last_was_encoded {
                out.push_str(&pending_space);
            }
            pending_space.clear();
            out.push_str(&decoded);
            rest = &rest[len..];
            last_was_encoded = true;
            continue;
        }
        let c = rest.chars().next().expect("rest is not empty");
        if c.is_whitespace() {
            pending_space.push(c);
        } else {
            out.push_str(&pending_space);
            pending_space.clear();
            out.push(c);
            last_was_encoded = false;
        }
        rest = &rest[c.len_utf8()..];
    }
    out.push_str(&pending_space);
    out
}

/// One encoded word at the start of `s`: decoded text and bytes consumed.
fn parse_encoded_word(s: &str) -> Option<(String, usize)> {
    let inner = s.strip_prefix("=?")?;
    let (charset, inner) = inner.split_once('?')?;
    let (encoding, inner) = inner.split_once('?')?;
    let end = inner.find("?=")?;
    let text = &inner[..end];
    if text.contains(char::is_whitespace) {
        return None;
    }
    let bytes = match encoding.to_ascii_lowercase().as_str() {
        "b" => base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?,
        "q" => {
            quoted_printable::decode(text.replace('_', " "), quoted_printable::ParseMode::Robust)
                .ok()?
        }
        _ => return None,
    };
    let consumed = 2 + charset.len() + 1 + encoding.len() + 1 + end + 2;
    // Drop an RFC 2231 language suffix such as `utf-8*en`.
    let charset = charset.split('*').next().unwrap_or(charset);
    Some((decode_charset(&bytes, Some(charset)), consumed))
}

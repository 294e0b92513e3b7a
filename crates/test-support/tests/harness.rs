//! Proves the harness starts real servers, and that they do what the
//! pipeline's tests rely on: JetStream that survives a crash, databases
//! that vanish after the test, mail that can be read back, processes that
//! can be stopped; and that the pipeline layer on top waits on what it
//! says ([`pipeline`]).

#[path = "harness/pipeline.rs"]
mod pipeline;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::nats::NatsServer;
use test_support::postgres::{TestDatabase, databases_with_prefix, pg_env};
use test_support::process::{ServiceProcess, target_profile_dir, wait_until, workspace_bin};
use test_support::smtp::SmtpServer;

fn connect(port: u16) -> TcpStream {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .unwrap_or_else(|err| panic!("connect to 127.0.0.1:{port}: {err}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set read timeout");
    stream
}

fn refuses(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

/// Just enough of the NATS text protocol for JetStream API requests, so the
/// harness tests need no async client.
struct RawNats {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    info: String,
    next_sid: u32,
}

impl RawNats {
    fn connect(port: u16, credentials: Option<(&str, &str)>) -> RawNats {
        let stream = connect(port);
        let writer = stream.try_clone().expect("clone stream");
        let mut reader = BufReader::new(stream);
        let mut info = String::new();
        reader.read_line(&mut info).expect("read INFO");
        assert!(info.starts_with("INFO "), "unexpected greeting {info:?}");
        let mut nats = RawNats {
            reader,
            writer,
            info,
            next_sid: 1,
        };
        let auth = credentials
            .map(|(user, pass)| format!(r#","user":"{user}","pass":"{pass}""#))
            .unwrap_or_default();
        nats.send(&format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true{auth}}}\r\nPING\r\n"
        ));
        let reply = nats.read_control_line();
        assert_eq!(reply, "PONG", "CONNECT rejected");
        nats
    }

    fn send(&mut self, text: &str) {
        self.writer
            .write_all(text.as_bytes())
            .expect("write to nats");
    }

    /// Next protocol line that is not a keep-alive.
    fn read_control_line(&mut self) -> String {
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("read from nats");
            let line = line.trim_end().to_owned();
            match line.as_str() {
                "PING" => self.send("PONG\r\n"),
                "+OK" => {}
                _ => return line,
            }
        }
    }

    /// Publishes `payload` and returns the payload of the first reply.
    fn request(&mut self, subject: &str, payload: &str) -> String {
        let sid = self.next_sid;
        self.next_sid += 1;
        let inbox = format!("_INBOX.harness.{sid}");
        self.send(&format!(
            "SUB {inbox} {sid}\r\nPUB {subject} {inbox} {}\r\n{payload}\r\n",
            payload.len()
        ));
        let line = self.read_control_line();
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields.first(),
            Some(&"MSG"),
            "expected a reply, got {line:?}"
        );
        let len: usize = fields
            .last()
            .and_then(|n| n.parse().ok())
            .expect("MSG size");
        let mut body = vec![0; len + 2];
        self.reader.read_exact(&mut body).expect("read MSG payload");
        body.truncate(len);
        self.send(&format!("UNSUB {sid}\r\n"));
        String::from_utf8(body).expect("utf-8 reply")
    }

    fn json_request(&mut self, subject: &str, payload: &str) -> Value {
        let reply: Value =
            serde_json::from_str(&self.request(subject, payload)).expect("JSON reply");
        assert!(reply.get("error").is_none(), "{subject} failed: {reply}");
        reply
    }
}

#[test]
fn nats_accepts_clients_with_jetstream_enabled() {
    let nats = NatsServer::start();
    assert_eq!(nats.url, format!("nats://127.0.0.1:{}", nats.port));

    let client = RawNats::connect(nats.port, None);
    assert!(
        client.info.contains(r#""jetstream":true"#),
        "INFO does not announce JetStream: {}",
        client.info
    );

    let jsz: Value = serde_json::from_str(&nats.monitoring("/jsz")).expect("jsz is JSON");
    let store = jsz["config"]["store_dir"]
        .as_str()
        .expect("JetStream config");
    assert!(
        store.starts_with(nats.store_dir.to_str().expect("utf-8 path")),
        "store {store} is not under {}",
        nats.store_dir.display()
    );
}

#[test]
fn nats_kill_and_restart_keep_the_jetstream_store() {
    let mut nats = NatsServer::start();
    let mut client = RawNats::connect(nats.port, None);
    client.json_request(
        "$JS.API.STREAM.CREATE.HARNESS",
        r#"{"name":"HARNESS","subjects":["harness.>"],"storage":"file"}"#,
    );
    let ack = client.json_request("harness.one", "survives a crash");
    assert_eq!(ack["seq"], 1, "publish ack: {ack}");
    drop(client);

    nats.kill();
    assert!(!nats.is_running());
    assert!(refuses(nats.port), "port still open after kill");

    nats.restart();
    let mut client = RawNats::connect(nats.port, None);
    let info = client.json_request("$JS.API.STREAM.INFO.HARNESS", "");
    assert_eq!(info["state"]["messages"], 1, "stream info: {info}");
    let stored = client.json_request("$JS.API.STREAM.MSG.GET.HARNESS", r#"{"seq":1}"#);
    assert_eq!(
        stored["message"]["data"], "c3Vydml2ZXMgYSBjcmFzaA==",
        "message: {stored}"
    );
    assert!(nats.log().contains("Server is ready"));
}

#[test]
fn nats_extra_args_apply_a_config_file_and_drop_stops_the_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("auth.conf");
    std::fs::write(
        &config,
        "authorization {\n  user: backup\n  password: s3cret\n}\n",
    )
    .expect("write config");
    let nats = NatsServer::start_with_args(&["-c", config.to_str().expect("utf-8 path")]);
    let port = nats.port;

    let client = RawNats::connect(port, Some(("backup", "s3cret")));
    assert!(
        client.info.contains(r#""auth_required":true"#),
        "{}",
        client.info
    );
    assert!(
        client.info.contains(r#""jetstream":true"#),
        "{}",
        client.info
    );

    let mut stream = connect(port);
    let mut info = String::new();
    BufReader::new(stream.try_clone().expect("clone"))
        .read_line(&mut info)
        .expect("INFO");
    stream
        .write_all(
            b"CONNECT {\"verbose\":false,\"user\":\"backup\",\"pass\":\"wrong\"}\r\nPING\r\n",
        )
        .expect("write");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok();
    assert!(reply.contains("Authorization Violation"), "reply {reply:?}");

    drop(client);
    drop(nats);
    assert!(refuses(port), "nats-server still listening after drop");
}

#[test]
fn test_database_is_created_usable_and_dropped() {
    let prefix = "harness_lifecycle";
    let db = TestDatabase::create(prefix);
    let suffix = db
        .name
        .strip_prefix("harness_lifecycle_")
        .expect("name starts with the prefix");
    assert_eq!(suffix.len(), 16);
    assert!(
        suffix
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert!(databases_with_prefix(prefix).contains(&db.name));
    assert_eq!(db.query("SELECT current_database()"), db.name);

    db.execute(
        "CREATE TABLE items (id int PRIMARY KEY, label text);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 42) g;
         CREATE SCHEMA audit;
         CREATE TABLE audit.\"Events Log\" (at timestamptz DEFAULT now());
         INSERT INTO audit.\"Events Log\" DEFAULT VALUES;
         CREATE TABLE empty_one ();",
    );
    assert_eq!(db.query("SELECT count(*), max(id) FROM items"), "42|42");

    let counts = db.row_counts();
    let expected = [
        ("audit.Events Log".to_owned(), 1),
        ("public.empty_one".to_owned(), 0),
        ("public.items".to_owned(), 42),
    ];
    assert_eq!(counts, expected.into_iter().collect());

    // Child processes reach the same server through the environment.
    let env = db.env();
    let out = std::process::Command::new("psql")
        .args(["-X", "-At", "-c", "SELECT count(*) FROM items"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run psql");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    assert!(pg_env().iter().any(|(k, v)| k == "PGPORT" && v == "5432"));

    let err = catch_unwind(AssertUnwindSafe(|| {
        db.execute("SELECT * FROM missing_table")
    }))
    .expect_err("bad SQL must panic");
    let message = panic_message(err.as_ref());
    assert!(
        message.contains("relation \"missing_table\" does not exist"),
        "panic message lacks psql's error: {message}"
    );

    let name = db.name.clone();
    drop(db);
    assert!(
        !databases_with_prefix(prefix).contains(&name),
        "{name} still exists after drop"
    );
}

#[test]
fn test_database_drop_survives_open_connections_and_empty_databases_count_nothing() {
    let db = TestDatabase::create("harness_busy");
    assert!(db.row_counts().is_empty());
    let name = db.name.clone();
    // A session that is still connected when the test ends, like a
    // service that was not shut down.
    let mut holder = std::process::Command::new("psql")
        .args(["-X", "-c", "SELECT pg_sleep(60)"])
        .envs(db.env())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn psql");
    wait_until(Duration::from_secs(10), "the holder session", || {
        db.query(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )) == "1"
    });
    drop(db);
    assert!(!databases_with_prefix("harness_busy").contains(&name));
    let status = holder.wait().expect("wait for psql");
    assert!(
        !status.success(),
        "holder session should have been terminated"
    );
}

/// Reads one (possibly multi-line) SMTP reply and checks its code.
fn smtp_expect(reader: &mut BufReader<TcpStream>, code: &str) {
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read SMTP reply");
        assert!(line.starts_with(code), "expected {code}, got {line:?}");
        if line.as_bytes().get(3) != Some(&b'-') {
            return;
        }
    }
}

fn send_mail(port: u16, from: &str, to: &[&str], data: &str) {
    let stream = connect(port);
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    smtp_expect(&mut reader, "220");
    let mut command = |text: String, code: &str| {
        writer.write_all(text.as_bytes()).expect("write SMTP");
        smtp_expect(&mut reader, code);
    };
    command("HELO harness.test\r\n".to_owned(), "250");
    command(format!("MAIL FROM:<{from}>\r\n"), "250");
    for rcpt in to {
        command(format!("RCPT TO:<{rcpt}>\r\n"), "250");
    }
    command("DATA\r\n".to_owned(), "354");
    let stuffed: String = data
        .lines()
        .map(|line| {
            let dot = if line.starts_with('.') { "." } else { "" };
            format!("{dot}{line}\r\n")
        })
        .collect();
    command(format!("{stuffed}.\r\n"), "250");
    command("QUIT\r\n".to_owned(), "221");
}

#[test]
fn smtp_server_receives_and_decodes_mail() {
    let mut smtp = SmtpServer::start();
    assert_eq!(smtp.url, format!("smtp://127.0.0.1:{}", smtp.port));
    assert!(smtp.messages().is_empty());

    send_mail(
        smtp.port,
        "backup@example.test",
        &["ops@example.test"],
        "From: backup@example.test\nTo: ops@example.test\nSubject: Backup ok\n\n\
         All databases dumped.\n.dot-stuffed line\n",
    );
    send_mail(
        smtp.port,
        "backup@example.test",
        &["ops@example.test", "dba@example.test"],
        "From: backup@example.test\n\
         To: ops@example.test\n\
         Subject: =?UTF-8?B?w4ljaGVj?= de =?UTF-8?Q?sauvegarde_=E2=80=94?= orders\n\
         MIME-Version: 1.0\n\
         Content-Type: multipart/alternative; boundary=\"b1\"\n\
         \n\
         --b1\n\
         Content-Type: text/plain; charset=utf-8\n\
         Content-Transfer-Encoding: quoted-printable\n\
         \n\
         La sauvegarde a =C3=A9chou=C3=A9 pour la base orders apr=C3=A8s une tr=\n\
         =C3=A8s longue attente.\n\
         --b1\n\
         Content-Type: text/html; charset=utf-8\n\
         Content-Transfer-Encoding: base64\n\
         \n\
         PHA+cGdfZHVtcCBleGl0ZWQgd2l0aCBzdGF0dXMgMTwvcD4=\n\
         --b1--\n",
    );

    let mails = smtp.wait_for_messages(2, Duration::from_secs(10));
    assert_eq!(mails.len(), 2);

    let plain = &mails[0];
    assert_eq!(plain.subject, "Backup ok");
    assert_eq!(plain.envelope_from, "backup@example.test");
    assert_eq!(plain.envelope_to, ["ops@example.test"]);
    assert!(plain.body_text.contains("All databases dumped."));
    assert!(
        plain.body_text.contains("\n.dot-stuffed line"),
        "{}",
        plain.body_text
    );
    assert_eq!(plain.header("to").as_deref(), Some("ops@example.test"));

    let mime = &mails[1];
    assert_eq!(mime.subject, "Échec de sauvegarde — orders");
    assert_eq!(mime.envelope_to, ["ops@example.test", "dba@example.test"]);
    assert!(
        mime.body_text
            .contains("La sauvegarde a échoué pour la base orders après une très longue attente."),
        "{}",
        mime.body_text
    );
    assert!(mime.contains("pg_dump exited with status 1"));
    assert!(
        !mime.raw.contains("pg_dump exited"),
        "raw keeps the encoding"
    );

    smtp.stop();
    assert!(refuses(smtp.port), "SMTP port still open after stop");
    assert_eq!(smtp.messages().len(), 2, "mail stays readable after stop");
}

#[test]
fn service_process_logs_and_terminates_on_sigterm() {
    let env = [("GREETING".to_owned(), "hello".to_owned())];
    let mut svc = ServiceProcess::spawn("/bin/sh", &["-c", "echo $GREETING; sleep 30"], &env);
    assert_eq!(svc.name, "sh");
    assert!(svc.pid() > 0);
    assert!(
        svc.wait_for_log("hello", Duration::from_secs(10)),
        "log: {}",
        svc.log()
    );

    let started = Instant::now();
    let status = svc
        .terminate(Duration::from_secs(10))
        .expect("sh exits on SIGTERM");
    assert_eq!(status.signal(), Some(15), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Repeated stops are harmless and report the same exit.
    assert_eq!(svc.terminate(Duration::from_secs(1)), Some(status));
}

#[test]
fn service_process_that_ignores_sigterm_is_killed_after_the_grace() {
    let mut svc = ServiceProcess::spawn(
        "/bin/sh",
        &[
            "-c",
            "trap '' TERM; echo stubborn >&2; while :; do sleep 0.1; done",
        ],
        &[],
    );
    assert!(
        svc.wait_for_log("stubborn", Duration::from_secs(10)),
        "stderr is captured too"
    );
    let started = Instant::now();
    assert_eq!(svc.terminate(Duration::from_millis(500)), None);
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(!std::path::Path::new(&format!("/proc/{}", svc.pid())).exists());
}

#[test]
fn service_process_wait_for_log_gives_up_when_the_process_exits() {
    let mut svc = ServiceProcess::spawn("/bin/sh", &["-c", "echo bye; exit 3"], &[]);
    let started = Instant::now();
    assert!(!svc.wait_for_log("never printed", Duration::from_secs(30)));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(svc.log(), "bye\n");
    let status = svc.wait_timeout(Duration::from_secs(5)).expect("exited");
    assert_eq!(status.code(), Some(3));
}

#[test]
fn service_process_is_killed_on_drop() {
    let svc = ServiceProcess::spawn("/bin/sleep", &["30"], &[]);
    let proc_dir = std::path::PathBuf::from(format!("/proc/{}", svc.pid()));
    assert!(proc_dir.exists());
    drop(svc);
    assert!(!proc_dir.exists(), "sleep outlived its ServiceProcess");
}

#[test]
fn wait_until_returns_once_the_condition_holds() {
    let mut calls = 0;
    wait_until(Duration::from_secs(5), "three calls", || {
        calls += 1;
        calls == 3
    });
    assert_eq!(calls, 3);
}

#[test]
#[should_panic(expected = "timed out after 300ms waiting for the impossible")]
fn wait_until_panics_with_what_it_waited_for() {
    wait_until(Duration::from_millis(300), "the impossible", || false);
}

#[test]
fn workspace_bins_live_in_the_profile_dir_of_the_test_executable() {
    let exe = std::env::current_exe().expect("current exe");
    let dir = target_profile_dir();
    assert!(
        exe.starts_with(&dir),
        "{} not under {}",
        exe.display(),
        dir.display()
    );
    assert!(dir.join("deps").is_dir());
}

#[test]
#[should_panic(expected = "cargo build --bin no-such-binary-in-this-workspace failed")]
fn workspace_bin_builds_with_cargo_and_reports_failure() {
    workspace_bin("no-such-binary-in-this-workspace");
}

//! A real OpenSSH `sshd` serving SFTP (`internal-sftp`) on a free loopback
//! port, for tests of the SFTP client against the server it meets in
//! production.
//!
//! Each instance gets its own system user, host key, client key and config,
//! so tests can run in parallel. Requires root (to create users and run
//! `sshd`) and the Debian `openssh-server` / `openssh-client` packages.
//!
//! Layout of the temporary base directory, which is also the user's home:
//!
//! ```text
//! base/                  root 0755   home of the user
//! base/authorized_keys   root 0644
//! base/etc/              root 0700   config, host key, client keys, log
//! base/data/             user 0700   `remote_root`, the SFTP target
//! ```
//!
//! `authorized_keys` sits directly in the home directory because sshd's
//! `StrictModes` walks the parents of that file up to the home directory
//! and rejects any that are group/world-writable, which `/tmp` is.

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

const SSHD: &str = "/usr/sbin/sshd";
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The SFTP requests the append-only key may not make (OpenSSH's names,
/// as `internal-sftp -P` takes them): everything that deletes, replaces,
/// changes modes or links. Plain `rename` stays allowed: OpenSSH
/// implements it with link(2), which refuses an existing target.
pub const APPEND_ONLY_DENIED: &str =
    "remove,rmdir,posix-rename,setstat,fsetstat,lsetstat,symlink,hardlink,copy-data";

/// A running `sshd` (see the module docs). Stopped, its user deleted and its
/// files removed on drop.
#[derive(Debug)]
pub struct Sshd {
    /// Port on [`Sshd::address`] (127.0.0.1 unless started in a network
    /// namespace).
    pub port: u16,
    /// Where sshd listens: 127.0.0.1, or the namespace's address.
    pub address: Ipv4Addr,
    /// Login user, unique to this instance.
    pub user: String,
    /// A directory owned by `user`, mode 0700: the base dir for SFTP tests.
    pub remote_root: PathBuf,
    /// OpenSSH known_hosts with the line `[127.0.0.1]:PORT ssh-ed25519 ...`.
    pub known_hosts: PathBuf,
    /// Ed25519 private key in OpenSSH format, mode 0600, no passphrase,
    /// authorized for `user`.
    pub client_key: PathBuf,
    /// Host key fingerprint as `ssh-keygen -lf` prints it (`SHA256:...`).
    pub host_key_fingerprint: String,
    base: TempDir,
    etc: PathBuf,
    config: PathBuf,
    log: PathBuf,
    authorized_keys: PathBuf,
    child: Option<Child>,
    port_reservation: crate::PortReservation,
    user_created: bool,
    /// Network namespace sshd runs in (`ip netns exec`), if any.
    netns: Option<String>,
}

impl Sshd {
    /// Creates the user, keys and config and starts `sshd`; returns once the
    /// port accepts connections.
    pub fn start() -> Sshd {
        Sshd::start_at(None, Ipv4Addr::LOCALHOST)
    }

    /// [`Sshd::start`] inside the network namespace `netns`, listening on
    /// `address` there (see [`crate::wan`]). `known_hosts` still names
    /// 127.0.0.1: clients reach it through a proxy or pin the fingerprint.
    pub fn start_in_netns(netns: &str, address: Ipv4Addr) -> Sshd {
        Sshd::start_at(Some(netns.to_owned()), address)
    }

    fn start_at(netns: Option<String>, address: Ipv4Addr) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: apt-get install -y openssh-server openssh-client"
        );
        // Privilege separation needs this directory; it is normally created
        // by the service manager, which does not run here.
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755))
            .expect("chmod /run/sshd");

        let base = tempfile::Builder::new()
            .prefix("sshd-")
            .tempdir()
            .expect("create sshd temp dir");
        set_mode(base.path(), 0o755);
        let etc = base.path().join("etc");
        fs::create_dir(&etc).expect("create etc dir");
        set_mode(&etc, 0o700);
        let remote_root = base.path().join("data");
        fs::create_dir(&remote_root).expect("create remote root");
        set_mode(&remote_root, 0o700);

        let user = format!("bkt{:08x}", rand::random::<u32>());
        let port_reservation = crate::PortReservation::new();
        let mut sshd = Sshd {
            port: port_reservation.port(),
            address,
            user,
            remote_root,
            known_hosts: etc.join("known_hosts"),
            client_key: etc.join("id_ed25519"),
            host_key_fingerprint: String::new(),
            config: etc.join("sshd_config"),
            log: etc.join("sshd.log"),
            authorized_keys: base.path().join("authorized_keys"),
            etc,
            base,
            child: None,
            port_reservation,
            user_created: false,
            netns,
        };

        // Set the flag first: if creation half-succeeds, Drop still tries
        // to remove the user.
        sshd.user_created = true;
        retry_locked(
            "useradd",
            &[
                "-M",
                "-d",
                path_str(sshd.base.path()),
                "-s",
                "/usr/sbin/nologin",
                // A useradd'd user has a locked password ("!"), and sshd
                // refuses locked accounts even for public key logins. "*"
                // matches no password either, but is not the lock marker.
                "-p",
                "*",
                &sshd.user,
            ],
        );
        run(Command::new("chown")
            .arg(format!("{0}:{0}", sshd.user))
            .arg(&sshd.remote_root));

        let host_key = sshd.etc.join("ssh_host_ed25519_key");
        keygen(&host_key, "ed25519", None, false);
        sshd.host_key_fingerprint = fingerprint(&host_key.with_extension("pub"));
        fs::write(
            &sshd.known_hosts,
            format!(
                "[127.0.0.1]:{} {}\n",
                sshd.port,
                public_key_line(&host_key.with_extension("pub"))
            ),
        )
        .expect("write known_hosts");

        keygen(&sshd.client_key, "ed25519", None, false);
        fs::write(&sshd.authorized_keys, "").expect("create authorized_keys");
        set_mode(&sshd.authorized_keys, 0o644);
        sshd.authorize(&sshd.client_key.with_extension("pub"));

        let config = format!(
            "ListenAddress {address}\n\
             Port {port}\n\
             HostKey {host_key}\n\
             PidFile {pid}\n\
             AuthorizedKeysFile {authorized_keys}\n\
             StrictModes yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             UsePAM no\n\
             PermitRootLogin no\n\
             AllowUsers {user}\n\
             UseDNS no\n\
             PrintMotd no\n\
             LogLevel VERBOSE\n\
             Subsystem sftp internal-sftp\n",
            port = sshd.port,
            address = sshd.address,
            host_key = path_str(&host_key),
            pid = path_str(&sshd.etc.join("sshd.pid")),
            authorized_keys = path_str(&sshd.authorized_keys),
            user = sshd.user,
        );
        fs::write(&sshd.config, config).expect("write sshd_config");

        // Fail early with sshd's own message if the config is wrong.
        let test = Command::new(SSHD)
            .args(["-t", "-f"])
            .arg(&sshd.config)
            .output()
            .expect("run sshd -t");
        assert!(
            test.status.success(),
            "sshd -t rejected the config: {}",
            String::from_utf8_lossy(&test.stderr)
        );

        sshd.spawn();
        sshd
    }

    /// Kills the listener and every connection it spawned, keeping all files
    /// and the user, so that [`Sshd::restart`] brings the same server back.
    /// The `SFTP_*` environment a pipeline binary needs to use this server,
    /// with `dir` as `SFTP_DIR`.
    pub fn sftp_env(&self, dir: &Path) -> Vec<(String, String)> {
        [
            ("SFTP_HOST", "127.0.0.1".to_owned()),
            ("SFTP_PORT", self.port.to_string()),
            ("SFTP_USER", self.user.clone()),
            ("SFTP_DIR", dir.display().to_string()),
            ("SFTP_KEY_FILE", self.client_key.display().to_string()),
            ("SFTP_KNOWN_HOSTS", self.known_hosts.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // With -D the listener still forks a process per connection, and
        // those call setsid(), so neither killing the listener nor its
        // process group ends open sessions. Snapshot the whole tree first:
        // once the listener dies its children are reparented and the tree
        // can no longer be walked.
        let mut pids = descendants(child.id());
        pids.extend(processes_of_user(&self.user));
        let _ = child.kill();
        let _ = child.wait();
        for pid in pids {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        self.port_reservation.hold();
    }

    /// Pid of the listening `sshd` (the parent of every session), while it
    /// runs.
    pub fn listener_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts `sshd` again on the same port with the same keys.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Generates another client key (`kind` is `"ed25519"` or `"rsa"`),
    /// optionally passphrase-protected and in PEM instead of OpenSSH format,
    /// authorizes it for the user and returns the private key path.
    pub fn generate_client_key(&self, kind: &str, passphrase: Option<&str>, pem: bool) -> PathBuf {
        let path = self.etc.join(format!(
            "id_{kind}_{}{}_{:08x}",
            if passphrase.is_some() { "enc" } else { "plain" },
            if pem { "_pem" } else { "" },
            rand::random::<u32>()
        ));
        keygen(&path, kind, passphrase, pem);
        self.authorize(&path.with_extension("pub"));
        path
    }

    /// Generates an ed25519 key for the same user that may create, write
    /// and rename but never remove, replace or change modes: authorized
    /// with the `authorized_keys` options of the append-only account in
    /// docs/guides/backup-setup-guide.md (`restrict` and a forced
    /// `internal-sftp -P` deny list, [`APPEND_ONLY_DENIED`]). Returns the
    /// private key path; [`Sshd::client_key`] keeps every right.
    pub fn generate_append_only_key(&self) -> PathBuf {
        self.generate_restricted_key(APPEND_ONLY_DENIED)
    }

    /// Generates an ed25519 key for the same user whose SFTP session may
    /// not make the requests in `denied` (comma-separated OpenSSH request
    /// names, as `internal-sftp -P` takes them). Returns the private key.
    pub fn generate_restricted_key(&self, denied: &str) -> PathBuf {
        let path = self.etc.join(format!(
            "id_ed25519_restricted_{:08x}",
            rand::random::<u32>()
        ));
        keygen(&path, "ed25519", None, false);
        let key = fs::read_to_string(path.with_extension("pub")).expect("read public key");
        self.append_authorized(&format!(
            "restrict,command=\"internal-sftp -P {denied}\" {}",
            key.trim_end()
        ));
        path
    }

    /// A known_hosts file naming this host and port with a different
    /// ed25519 key (same algorithm, so clients see a changed key rather than
    /// an unknown one).
    pub fn wrong_known_hosts(&self) -> PathBuf {
        let key = self
            .etc
            .join(format!("other_host_key_{:08x}", rand::random::<u32>()));
        keygen(&key, "ed25519", None, false);
        let path = key.with_extension("known_hosts");
        fs::write(
            &path,
            format!(
                "[127.0.0.1]:{} {}\n",
                self.port,
                public_key_line(&key.with_extension("pub"))
            ),
        )
        .expect("write wrong known_hosts");
        path
    }

    /// A copy of [`Sshd::known_hosts`] with hashed host names (`|1|...`),
    /// as `HashKnownHosts yes` writes them.
    pub fn hashed_known_hosts(&self) -> PathBuf {
        let path = self
            .etc
            .join(format!("known_hosts_hashed_{:08x}", rand::random::<u32>()));
        fs::copy(&self.known_hosts, &path).expect("copy known_hosts");
        run(Command::new("ssh-keygen").arg("-H").arg("-f").arg(&path));
        // ssh-keygen leaves the unhashed original next to it.
        let mut old = path.clone().into_os_string();
        old.push(".old");
        let _ = fs::remove_file(old);
        path
    }

    /// Runs OpenSSH's own `sftp` client in batch mode against this server
    /// (one command per line of `commands`, e.g. `put a b`), with `cipher`
    /// forced if given, and returns how long it took: the yardstick of the
    /// transfer benchmarks.
    pub fn openssh_sftp(&self, commands: &str, cipher: Option<&str>) -> Duration {
        let batch = self
            .base
            .path()
            .join(format!("batch_{:08x}", rand::random::<u32>()));
        fs::write(&batch, format!("{commands}\n")).expect("write sftp batch");
        let mut sftp = Command::new("sftp");
        sftp.arg("-q")
            .arg("-b")
            .arg(&batch)
            .arg("-i")
            .arg(&self.client_key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "BatchMode=yes", "-P", &self.port.to_string()]);
        if let Some(cipher) = cipher {
            sftp.args(["-c", cipher]);
        }
        let started = Instant::now();
        let output = sftp
            .arg(format!("{}@127.0.0.1", self.user))
            .output()
            .expect("run OpenSSH sftp");
        let elapsed = started.elapsed();
        let _ = fs::remove_file(&batch);
        assert!(
            output.status.success(),
            "sftp -b failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        elapsed
    }

    /// The host's public key line (`ssh-ed25519 AAAA...`), to write
    /// known_hosts entries for other addresses (a proxy in front).
    pub fn host_public_key(&self) -> String {
        public_key_line(&self.etc.join("ssh_host_ed25519_key.pub"))
    }

    /// The sshd log so far, for assertions and failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn authorize(&self, public_key: &Path) {
        let line = fs::read_to_string(public_key).expect("read public key");
        self.append_authorized(&line);
    }

    fn append_authorized(&self, line: &str) {
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&self.authorized_keys)
            .expect("open authorized_keys");
        file.write_all(line.trim_end().as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .expect("append to authorized_keys");
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open sshd log");
        self.port_reservation.release();
        // sshd insists on being started with an absolute path (it re-execs
        // itself for every connection).
        let mut command = match &self.netns {
            // `ip netns exec` execs sshd itself (same pid), with its
            // absolute path as argv[0].
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, SSHD]);
                command
            }
            None => Command::new(SSHD),
        };
        let mut child = command
            .args(["-D", "-e", "-f"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn sshd");

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("sshd exited with {status} on start; log:\n{}", self.log());
            }
            if TcpStream::connect((self.address, self.port)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sshd did not accept connections on port {} within {:?}; log:\n{}",
                    self.port,
                    START_TIMEOUT,
                    self.log()
                );
            }
            sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
        if self.user_created {
            // -f: a session process that has not finished dying yet must not
            // leave the account behind.
            let _ = try_retry_locked("userdel", &["-f", &self.user]);
        }
        // TempDir removes the rest; as root, modes set by the user inside
        // remote_root do not get in the way.
    }
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs a shadow-utils command, retrying while another test holds the
/// passwd/group locks (parallel tests create users concurrently).
fn retry_locked(program: &str, args: &[&str]) {
    if let Err(message) = try_retry_locked(program, args) {
        panic!("{program} {args:?} failed: {message}");
    }
}

fn try_retry_locked(program: &str, args: &[&str]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = Command::new(program)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let transient = stderr.contains("lock")
            || stderr.contains("try again")
            || stderr.contains("currently used by process");
        if !transient || Instant::now() > deadline {
            return Err(stderr);
        }
        sleep(Duration::from_millis(20 + u64::from(rand::random::<u8>())));
    }
}

fn keygen(path: &Path, kind: &str, passphrase: Option<&str>, pem: bool) {
    let mut command = Command::new("ssh-keygen");
    command
        .args(["-q", "-t", kind, "-N", passphrase.unwrap_or(""), "-C"])
        .arg(format!("test-{kind}"))
        .arg("-f")
        .arg(path);
    if kind == "rsa" {
        // Smaller than the default 3072 bits to keep tests fast; still a
        // size every server accepts.
        command.args(["-b", "2048"]);
    }
    if pem {
        command.args(["-m", "PEM"]);
    }
    run(&mut command);
}

/// `SHA256:...` from `ssh-keygen -lf`, whose output is
/// `256 SHA256:... comment (ED25519)`.
fn fingerprint(public_key: &Path) -> String {
    let output = run(Command::new("ssh-keygen").arg("-lf").arg(public_key));
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)
        .expect("ssh-keygen -lf prints a fingerprint")
        .to_owned()
}

/// `ssh-ed25519 AAAA...` (without the comment) from a `.pub` file.
fn public_key_line(public_key: &Path) -> String {
    let text = fs::read_to_string(public_key).expect("read public key");
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// (pid, ppid) of every process, read from /proc.
fn process_table() -> Vec<(u32, u32)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name is in parentheses and may contain spaces;
            // fields after the last ')' are "state ppid ...".
            let rest = &stat[stat.rfind(')')? + 1..];
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

fn descendants(root: u32) -> Vec<u32> {
    let table = process_table();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &table {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

fn processes_of_user(user: &str) -> Vec<u32> {
    let Some(uid) = uid_of(user) else {
        return Vec::new();
    };
    process_table()
        .into_iter()
        .filter(|&(pid, _)| {
            fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|status| {
                    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
                    // Real, effective, saved, filesystem: any match counts.
                    Some(line.split_whitespace().skip(1).any(|id| id == uid))
                })
                .unwrap_or(false)
        })
        .map(|(pid, _)| pid)
        .collect()
}

fn uid_of(user: &str) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == user).then(|| fields.nth(1).map(str::to_owned))?
    })
}

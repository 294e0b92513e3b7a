//! The SFTP client against a real OpenSSH sshd (see `test_support::sshd`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use remote_sftp::{RemoteError, SftpRemote, SftpSettings};
use secrecy::SecretString;
use test_support::pipeline::sftp_settings as settings;
use test_support::sshd::Sshd;
use tokio::io::AsyncReadExt;

fn remote(sshd: &Sshd, relative: &str) -> String {
    format!("{}/{relative}", sshd.remote_root.display())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Deterministic, incompressible-looking bytes.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn local_file(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write local file");
    path
}

async fn connect(settings: &SftpSettings) -> SftpRemote {
    SftpRemote::connect(settings)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

fn entries_under(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn upload_and_read_back() {
    let sshd = Sshd::start();
    let local_dir = tempfile::tempdir().unwrap();
    // Not a multiple of the chunk size, so the last write is short.
    let contents = pseudo_random(3 * 1024 * 1024 + 12_345, 7);
    let local = local_file(local_dir.path(), "dump.bin", &contents);

    let sftp = connect(&settings(&sshd)).await;
    let features = sftp.features();
    assert!(features.posix_rename && features.fsync && features.statvfs);

    let dir = remote(&sshd, "db/2024");
    sftp.create_dir_all(&dir).await.unwrap();
    // Idempotent.
    sftp.create_dir_all(&dir).await.unwrap();

    let last_progress = AtomicU64::new(0);
    let final_path = format!("{dir}/dump.bin");
    let written = sftp
        .upload_file(&local, &final_path, &|n| {
            assert!(
                n >= last_progress.load(Ordering::SeqCst),
                "progress goes forward"
            );
            last_progress.store(n, Ordering::SeqCst);
        })
        .await
        .unwrap();
    assert_eq!(written, contents.len() as u64);
    assert_eq!(last_progress.load(Ordering::SeqCst), contents.len() as u64);

    let on_disk = sshd.remote_root.join("db/2024/dump.bin");
    assert_eq!(std::fs::read(&on_disk).unwrap(), contents);
    assert_eq!(mode(&on_disk), 0o600);
    assert_eq!(mode(&sshd.remote_root.join("db")), 0o700);
    assert_eq!(mode(&sshd.remote_root.join("db/2024")), 0o700);
    assert_eq!(
        entries_under(&sshd.remote_root.join("db/2024")),
        ["dump.bin"],
        "no .partial left behind"
    );

    // Pipelined streaming read.
    let mut reader = sftp.open_read(&final_path).await.unwrap();
    assert_eq!(reader.size(), Some(contents.len() as u64));
    let mut read_back = Vec::new();
    reader.read_to_end(&mut read_back).await.unwrap();
    assert!(read_back == contents, "streamed download differs");

    // Replacing an existing file works and stays 0600.
    let newer = pseudo_random(1000, 8);
    let newer_local = local_file(local_dir.path(), "newer.bin", &newer);
    sftp.upload_file(&newer_local, &final_path, &|_| {})
        .await
        .unwrap();
    assert_eq!(sftp.read_file(&final_path, 1 << 20).await.unwrap(), newer);
    assert_eq!(mode(&on_disk), 0o600);

    // Empty files too.
    let empty = local_file(local_dir.path(), "empty", b"");
    let empty_remote = format!("{dir}/empty");
    assert_eq!(
        sftp.upload_file(&empty, &empty_remote, &|_| {})
            .await
            .unwrap(),
        0
    );
    let mut reader = sftp.open_read(&empty_remote).await.unwrap();
    let mut nothing = Vec::new();
    reader.read_to_end(&mut nothing).await.unwrap();
    assert!(nothing.is_empty());

    sftp.close().await.unwrap();
}

#[tokio::test]
async fn small_files_atomic_write_and_size_limit() {
    let sshd = Sshd::start();
    let sftp = connect(&settings(&sshd)).await;
    let path = remote(&sshd, "manifest.json");

    sftp.write_file_atomic(&path, b"{\"v\":1}").await.unwrap();
    sftp.write_file_atomic(&path, b"{\"v\":2}").await.unwrap();
    assert_eq!(sftp.read_file(&path, 100).await.unwrap(), b"{\"v\":2}");
    assert_eq!(mode(&sshd.remote_root.join("manifest.json")), 0o600);
    assert_eq!(entries_under(&sshd.remote_root), ["manifest.json"]);

    let error = sftp.read_file(&path, 3).await.unwrap_err();
    assert!(
        matches!(error, RemoteError::TooLarge { size: 7, .. }),
        "{error}"
    );
    assert!(!error.is_transient());

    let missing = remote(&sshd, "missing.json");
    let error = sftp.read_file(&missing, 100).await.unwrap_err();
    assert!(matches!(error, RemoteError::NotFound { .. }), "{error}");
    assert!(error.to_string().contains("missing.json"));
    let error = sftp.open_read(&missing).await.unwrap_err();
    assert!(matches!(error, RemoteError::NotFound { .. }), "{error}");
}

#[tokio::test]
async fn list_stat_remove() {
    let sshd = Sshd::start();
    let sftp = connect(&settings(&sshd)).await;
    let dir = remote(&sshd, "set");
    sftp.create_dir_all(&format!("{dir}/sub")).await.unwrap();
    sftp.write_file_atomic(&format!("{dir}/a"), b"12345")
        .await
        .unwrap();
    sftp.write_file_atomic(&format!("{dir}/b"), b"")
        .await
        .unwrap();

    let mut entries = sftp.list_dir(&dir).await.unwrap();
    entries.sort_by(|x, y| x.name.cmp(&y.name));
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "sub"]);
    assert_eq!(entries[0].size, 5);
    assert!(!entries[0].is_dir);
    assert_eq!(entries[0].permissions, Some(0o600));
    assert!(entries[0].modified.is_some());
    assert!(entries[2].is_dir);
    assert_eq!(entries[2].permissions, Some(0o700));

    let a = sftp.stat(&format!("{dir}/a")).await.unwrap().unwrap();
    assert_eq!((a.name.as_str(), a.size, a.is_dir), ("a", 5, false));
    assert!(sftp.stat(&format!("{dir}/nope")).await.unwrap().is_none());

    sftp.remove_file(&format!("{dir}/a")).await.unwrap();
    assert!(sftp.stat(&format!("{dir}/a")).await.unwrap().is_none());
    let error = sftp.remove_file(&format!("{dir}/a")).await.unwrap_err();
    assert!(matches!(error, RemoteError::NotFound { .. }), "{error}");

    let error = sftp.list_dir(&remote(&sshd, "nope")).await.unwrap_err();
    assert!(matches!(error, RemoteError::NotFound { .. }), "{error}");
    assert!(!error.is_transient());

    // A file in the way of a directory.
    let error = sftp
        .create_dir_all(&format!("{dir}/b/deeper"))
        .await
        .unwrap_err();
    assert!(matches!(error, RemoteError::Failed { .. }), "{error}");
}

#[tokio::test]
async fn unknown_host_key_is_refused() {
    let sshd = Sshd::start();
    let empty = tempfile::NamedTempFile::new().unwrap();
    let mut settings = settings(&sshd);
    settings.known_hosts = Some(empty.path().to_owned());

    let error = SftpRemote::connect(&settings).await.unwrap_err();
    assert!(
        matches!(error, RemoteError::HostKeyUnknown { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains(&sshd.host_key_fingerprint), "{message}");
    assert!(
        message.contains(&format!("127.0.0.1:{}", sshd.port)),
        "{message}"
    );
    assert!(!error.is_transient());
    assert!(entries_under(&sshd.remote_root).is_empty());
    assert!(
        !sshd.log().contains("Accepted publickey"),
        "must not authenticate to an unverified host"
    );
}

#[tokio::test]
async fn changed_host_key_is_refused() {
    let sshd = Sshd::start();
    let mut settings = settings(&sshd);
    settings.known_hosts = Some(sshd.wrong_known_hosts());

    let error = SftpRemote::connect(&settings).await.unwrap_err();
    match &error {
        RemoteError::HostKeyChanged {
            fingerprint,
            pinned_at,
            ..
        } => {
            assert_eq!(fingerprint, &sshd.host_key_fingerprint);
            assert!(pinned_at.contains("line 1"), "{pinned_at}");
        }
        other => panic!("expected HostKeyChanged, got {other}"),
    }
    assert!(!error.is_transient());
}

#[tokio::test]
async fn pinned_fingerprint_and_hashed_known_hosts_are_accepted() {
    let sshd = Sshd::start();

    let mut pinned = settings(&sshd);
    pinned.known_hosts = None;
    pinned.host_key_fingerprint = Some(sshd.host_key_fingerprint.clone());
    connect(&pinned).await.close().await.unwrap();

    let mut wrong_pin = pinned.clone();
    wrong_pin.host_key_fingerprint =
        Some("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into());
    let error = SftpRemote::connect(&wrong_pin).await.unwrap_err();
    assert!(
        matches!(error, RemoteError::HostKeyChanged { .. }),
        "{error}"
    );
    assert!(error.to_string().contains(&sshd.host_key_fingerprint));

    let mut hashed = settings(&sshd);
    let hashed_file = sshd.hashed_known_hosts();
    assert!(
        std::fs::read_to_string(&hashed_file)
            .unwrap()
            .starts_with("|1|")
    );
    hashed.known_hosts = Some(hashed_file);
    connect(&hashed).await.close().await.unwrap();

    let mut none = settings(&sshd);
    none.known_hosts = None;
    let error = SftpRemote::connect(&none).await.unwrap_err();
    assert!(matches!(error, RemoteError::Config(_)), "{error}");

    let mut typo = settings(&sshd);
    typo.known_hosts = Some(PathBuf::from("/nonexistent/known_hosts"));
    let error = SftpRemote::connect(&typo).await.unwrap_err();
    assert!(matches!(error, RemoteError::Config(_)), "{error}");
    assert!(error.to_string().contains("/nonexistent/known_hosts"));
}

#[tokio::test]
async fn key_file_problems_are_permanent_and_named() {
    let sshd = Sshd::start();

    let mut missing = settings(&sshd);
    missing.key_file = PathBuf::from("/nonexistent/id_ed25519");
    let error = SftpRemote::connect(&missing).await.unwrap_err();
    assert!(matches!(error, RemoteError::KeyFile { .. }), "{error}");
    assert!(error.to_string().contains("/nonexistent/id_ed25519"));
    assert!(!error.is_transient());

    // A valid key the server does not know.
    let dir = tempfile::tempdir().unwrap();
    let stranger = dir.path().join("stranger");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .unwrap();
    assert!(status.success());
    let mut unknown = settings(&sshd);
    unknown.key_file = stranger;
    let error = SftpRemote::connect(&unknown).await.unwrap_err();
    assert!(matches!(error, RemoteError::AuthRejected { .. }), "{error}");
    assert!(!error.is_transient());
}

#[tokio::test]
async fn passphrase_protected_keys() {
    let sshd = Sshd::start();
    let passphrase = "correct horse";
    // OpenSSH ≥ 8.8 refuses SHA-1 `ssh-rsa`, so the RSA logins also show
    // that an rsa-sha2 signature was chosen.
    for (kind, pem) in [("rsa", true), ("rsa", false), ("ed25519", false)] {
        let key = sshd.generate_client_key(kind, Some(passphrase), pem);
        let mut with = settings(&sshd);
        with.key_file = key.clone();
        with.key_passphrase = Some(SecretString::from(passphrase));
        let sftp = connect(&with).await;
        let path = remote(&sshd, &format!("{kind}-{pem}.txt"));
        sftp.write_file_atomic(&path, kind.as_bytes())
            .await
            .unwrap();
        sftp.close().await.unwrap();

        let mut without = with.clone();
        without.key_passphrase = None;
        let error = SftpRemote::connect(&without).await.unwrap_err();
        assert!(
            matches!(error, RemoteError::KeyFile { .. }),
            "{kind}: {error}"
        );
        assert!(error.to_string().contains(&key.display().to_string()));
        assert!(!error.is_transient());

        let mut wrong = with.clone();
        wrong.key_passphrase = Some(SecretString::from("wrong horse"));
        let error = SftpRemote::connect(&wrong).await.unwrap_err();
        assert!(
            matches!(error, RemoteError::KeyFile { .. }),
            "{kind}: {error}"
        );
        let shown = format!("{error} {error:?} {wrong:?}");
        assert!(!shown.contains("horse"), "secret leaked: {shown}");
    }
}

#[tokio::test]
async fn outage_is_transient_and_recoverable() {
    let mut sshd = Sshd::start();
    let settings = settings(&sshd);
    let sftp = connect(&settings).await;
    sftp.write_file_atomic(&remote(&sshd, "x"), b"x")
        .await
        .unwrap();

    sshd.stop();
    let error = sftp.stat(&remote(&sshd, "x")).await.unwrap_err();
    assert!(error.is_transient(), "lost connection: {error}");
    let error = SftpRemote::connect(&settings).await.unwrap_err();
    assert!(matches!(error, RemoteError::Connect { .. }), "{error}");
    assert!(error.is_transient(), "{error}");

    sshd.restart();
    let sftp = connect(&settings).await;
    assert!(sftp.stat(&remote(&sshd, "x")).await.unwrap().is_some());
}

#[tokio::test]
async fn server_dying_mid_upload_is_transient_and_retryable() {
    let sshd = std::sync::Mutex::new(Sshd::start());
    let settings = settings(&sshd.lock().unwrap());
    let final_path = remote(&sshd.lock().unwrap(), "big.bin");
    let local_dir = tempfile::tempdir().unwrap();
    let contents = pseudo_random(16 << 20, 11);
    let local = local_file(local_dir.path(), "big.bin", &contents);

    let sftp = connect(&settings).await;
    let stopped = std::sync::atomic::AtomicBool::new(false);
    let error = sftp
        .upload_file(&local, &final_path, &|n| {
            if n >= 2 << 20 && !stopped.swap(true, Ordering::SeqCst) {
                sshd.lock().unwrap().stop();
            }
        })
        .await
        .unwrap_err();
    assert!(stopped.load(Ordering::SeqCst));
    assert!(error.is_transient(), "{error}");
    let mut sshd = sshd.into_inner().unwrap();
    assert!(!sshd.remote_root.join("big.bin").exists());

    // What a caller's retry does: reconnect and upload again.
    sshd.restart();
    let sftp = connect(&settings).await;
    sftp.upload_file(&local, &final_path, &|_| {})
        .await
        .unwrap();
    assert!(std::fs::read(sshd.remote_root.join("big.bin")).unwrap() == contents);
    assert_eq!(entries_under(&sshd.remote_root), ["big.bin"]);
}

#[tokio::test]
async fn connect_timeout_is_transient() {
    // A listener that accepts but never speaks SSH.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sshd_like = tempfile::NamedTempFile::new().unwrap();
    let settings = SftpSettings {
        host: "127.0.0.1".into(),
        port,
        user: "nobody".into(),
        key_file: write_throwaway_key(),
        key_passphrase: None,
        known_hosts: Some(sshd_like.path().to_owned()),
        host_key_fingerprint: None,
        connect_timeout: Duration::from_millis(500),
        io_timeout: Duration::from_secs(1),
    };
    let started = Instant::now();
    let error = SftpRemote::connect(&settings).await.unwrap_err();
    assert!(
        matches!(error, RemoteError::ConnectTimeout { .. }),
        "{error}"
    );
    assert!(error.is_transient());
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(listener);
}

fn write_throwaway_key() -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let key = dir.join("id");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    key
}

#[tokio::test]
async fn permission_denied_is_permanent_and_named() {
    let sshd = Sshd::start();
    let sftp = connect(&settings(&sshd)).await;
    let dir = remote(&sshd, "readonly");
    sftp.create_dir_all(&dir).await.unwrap();
    std::fs::set_permissions(
        sshd.remote_root.join("readonly"),
        std::fs::Permissions::from_mode(0o500),
    )
    .unwrap();

    let error = sftp
        .write_file_atomic(&format!("{dir}/file"), b"data")
        .await
        .unwrap_err();
    assert!(
        matches!(error, RemoteError::PermissionDenied { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("readonly/file"), "{error}");
    assert!(!error.is_transient());

    let error = sftp
        .create_dir_all(&format!("{dir}/sub"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, RemoteError::PermissionDenied { .. }),
        "{error}"
    );
}

/// Unmounts on drop, also when the test fails half-way.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn full_disk_is_reported_as_no_space() {
    let sshd = Sshd::start();
    let full = sshd.remote_root.join("full");
    std::fs::create_dir(&full).unwrap();
    // A 1 MiB tmpfs is the only way to fill a file system without filling
    // the machine's; skip where mounting is not allowed.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
        .arg(&full)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipping: cannot mount a tmpfs here");
        return;
    }
    let _mount = Mount(full.clone());
    let chown = Command::new("chown")
        .arg(format!("{0}:{0}", sshd.user))
        .arg(&full)
        .status()
        .unwrap();
    assert!(chown.success());

    let local_dir = tempfile::tempdir().unwrap();
    let local = local_file(local_dir.path(), "big", &pseudo_random(3 << 20, 5));
    let sftp = connect(&settings(&sshd)).await;
    let error = sftp
        .upload_file(&local, &remote(&sshd, "full/big"), &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(error, RemoteError::NoSpace { .. }), "{error}");
    assert!(!error.is_transient());
    assert!(entries_under(&full).is_empty(), "the .partial is removed");
}

/// Rough throughput comparison with OpenSSH's `sftp` on the same server:
/// `cargo test -p remote-sftp --release --test sftp -- --ignored --nocapture throughput`
#[tokio::test]
#[ignore = "benchmark: slow, run by hand"]
async fn throughput_vs_openssh_sftp() {
    let size_mb: usize = std::env::var("SFTP_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    // Written in pieces so that the peak RSS below reflects the client.
    let local = dir.path().join("big.bin");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&local).unwrap();
        for i in 0..size_mb {
            file.write_all(&pseudo_random(1 << 20, i as u64)).unwrap();
        }
    }
    let bytes = (size_mb << 20) as f64;
    let sftp = connect(&settings(&sshd)).await;

    let ours_path = remote(&sshd, "ours.bin");
    let started = Instant::now();
    sftp.upload_file(&local, &ours_path, &|_| {}).await.unwrap();
    let ours_up = started.elapsed();

    let started = Instant::now();
    let mut reader = sftp.open_read(&ours_path).await.unwrap();
    let copied = tokio::io::copy(&mut reader, &mut tokio::io::sink())
        .await
        .unwrap();
    let ours_down = started.elapsed();
    assert_eq!(copied as f64, bytes);

    // OpenSSH's sftp with its default cipher (chacha20-poly1305) and with
    // the AES-GCM this crate prefers, for a like-for-like comparison.
    let openssh = |command: String, cipher: Option<&str>| sshd.openssh_sftp(&command, cipher);
    let theirs = remote(&sshd, "openssh.bin");
    let put = format!("put {} {theirs}", local.display());
    let get = format!("get {theirs} /dev/null");
    let gcm = Some("aes128-gcm@openssh.com");
    let openssh_up = openssh(put.clone(), None);
    let openssh_up_gcm = openssh(put, gcm);
    let openssh_down = openssh(get.clone(), None);
    let openssh_down_gcm = openssh(get, gcm);

    let peak_rss = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .map(str::to_owned)
        .unwrap_or_default();
    eprintln!("peak RSS of the test process after both transfers: {peak_rss}");
    let rate = |d: Duration| bytes / d.as_secs_f64() / 1e6;
    for (what, ours, default, gcm) in [
        ("upload", ours_up, openssh_up, openssh_up_gcm),
        ("download", ours_down, openssh_down, openssh_down_gcm),
    ] {
        eprintln!(
            "{size_mb} MiB {what}: remote-sftp {:.0} MB/s; openssh sftp {:.0} MB/s default cipher \
             (ratio {:.2}), {:.0} MB/s aes128-gcm (ratio {:.2}); openssh times include its connect",
            rate(ours),
            rate(default),
            rate(ours) / rate(default),
            rate(gcm),
            rate(ours) / rate(gcm),
        );
    }
}

/// A relative path (an `SFTP_DIR` such as `backups` on a hosting account)
/// starts at the login directory, which the client learns at login with
/// `realpath(".")`, as OpenSSH's `sftp` does.
#[tokio::test]
async fn relative_paths_start_at_the_login_directory() {
    let sshd = Sshd::start();
    let remote = connect(&settings(&sshd)).await;
    // The test user's home is the server's base directory; its data
    // directory (`remote_root`) is below it.
    let home = std::fs::canonicalize(sshd.remote_root.parent().expect("home")).expect("home");
    assert_eq!(remote.login_dir(), home.display().to_string());
    let data = sshd
        .remote_root
        .file_name()
        .expect("data dir")
        .to_string_lossy()
        .into_owned();
    let relative = format!("{data}/relative/db");
    assert_eq!(
        remote.resolve(&relative),
        format!("{}/{relative}", home.display())
    );
    assert_eq!(remote.resolve("/abs/path"), "/abs/path");

    remote.create_dir_all(&relative).await.expect("mkdir -p");
    remote
        .write_file_atomic(&format!("{relative}/note.txt"), b"hello")
        .await
        .expect("write");
    assert_eq!(
        std::fs::read(sshd.remote_root.join("relative/db/note.txt")).expect("landed below home"),
        b"hello"
    );
    let listed = remote.list_dir(&relative).await.expect("list");
    assert_eq!(
        listed.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["note.txt"]
    );
    assert_eq!(
        remote
            .read_file(&format!("./{relative}/note.txt"), 100)
            .await
            .expect("read"),
        b"hello"
    );
    // An error names the resolved path.
    let missing = remote
        .read_file(&format!("{data}/missing"), 100)
        .await
        .expect_err("missing file");
    assert!(
        missing.to_string().contains(&home.display().to_string()),
        "{missing}"
    );
    remote.close().await.expect("close");
}

#[path = "sftp/append_only.rs"]
mod append_only;

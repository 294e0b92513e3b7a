//! The SFTP target: host, pinned host key, key login, a probe written and
//! deleted in `SFTP_DIR`, and the free space the server reports.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use backup_core::preflight::Check;
use backup_core::sftp::SftpTarget;
use remote_sftp::{RemoteError, SftpRemote};

use super::{MIB, mib, probe_name};

/// The SFTP target: the host answers SSH (`sftp.host`, with the presented
/// fingerprint), its key matches the pin (`sftp.host_key`), the key login
/// works (`sftp.auth`), `SFTP_DIR` takes a file written, renamed and
/// deleted (`sftp.write`; on an append-only account, `append_only`, only
/// created and listed: `posture` probes what its key may do), and the free
/// space the server reports (`sftp.space`).
pub async fn sftp(args: &SftpTarget, append_only: bool) -> Vec<Check> {
    const LATER: [&str; 4] = ["sftp.host_key", "sftp.auth", "sftp.write", "sftp.space"];
    let settings = &args.settings;
    let target = format!("{}:{}", settings.host, settings.port);
    let mut checks = Vec::new();
    let skip_from = |checks: &mut Vec<Check>, from: usize, because: &str| {
        for name in &LATER[from..] {
            checks.push(Check::not_checked(*name, because));
        }
    };

    let presented = match SftpRemote::presented_host_key(settings).await {
        Ok(fingerprint) => {
            checks.push(Check::pass(
                "sftp.host",
                format!("{target} answers SSH and presents host key {fingerprint}"),
            ));
            fingerprint
        }
        Err(e) => {
            checks.push(Check::fail("sftp.host", e.to_string()).with_fix("check SFTP_HOST and SFTP_PORT, that sshd runs there, and that no firewall blocks this host"));
            skip_from(&mut checks, 0, "the host is unreachable");
            return checks;
        }
    };
    if let Err((detail, fix)) = key_file_usable(&settings.key_file) {
        checks.push(Check::not_checked(
            "sftp.host_key",
            "the login key is unusable, so no session was opened",
        ));
        checks.push(Check::fail("sftp.auth", detail).with_fix(fix));
        skip_from(&mut checks, 2, "no login");
        return checks;
    }
    let pin = match (&settings.known_hosts, &settings.host_key_fingerprint) {
        (Some(path), _) => format!("SFTP_KNOWN_HOSTS {}", path.display()),
        (None, Some(fingerprint)) => format!("SFTP_HOST_FINGERPRINT {fingerprint}"),
        (None, None) => "no pin".to_owned(),
    };
    let remote = match SftpRemote::connect(settings).await {
        Ok(remote) => remote,
        Err(
            e @ (RemoteError::HostKeyChanged { .. }
            | RemoteError::HostKeyUnknown { .. }
            | RemoteError::Config(_)),
        ) => {
            checks.push(Check::fail("sftp.host_key", e.to_string()).with_fix(format!(
                    "if the server's key really changed, confirm {presented} out of band (ssh-keygen -lf on the server) and update {pin}; otherwise do not connect: someone may be in the middle"
                )));
            skip_from(&mut checks, 1, "the host key is not trusted");
            return checks;
        }
        Err(e @ RemoteError::KeyFile { .. }) => {
            // The key is read before the server is contacted.
            checks.push(Check::not_checked(
                "sftp.host_key",
                "the login key is unusable, so no session was opened",
            ));
            checks.push(Check::fail("sftp.auth", e.to_string()).with_fix("SFTP_KEY_FILE must hold an OpenSSH or PEM private key (ed25519 or RSA); a protected key needs SFTP_KEY_PASSPHRASE (or SFTP_KEY_PASSPHRASE_FILE)"));
            skip_from(&mut checks, 2, "no login");
            return checks;
        }
        Err(e @ RemoteError::AuthRejected { .. }) => {
            checks.push(Check::pass(
                "sftp.host_key",
                format!("{presented} matches {pin}"),
            ));
            checks.push(Check::fail("sftp.auth", e.to_string()).with_fix(format!(
                    "add the public key of SFTP_KEY_FILE (ssh-keygen -y -f KEY) to ~{}/.ssh/authorized_keys on the server; a protected key needs SFTP_KEY_PASSPHRASE",
                    settings.user
                )));
            skip_from(&mut checks, 2, "no login");
            return checks;
        }
        Err(e) => {
            checks.push(Check::not_checked(
                "sftp.host_key",
                "the connection failed before the key was judged",
            ));
            checks.push(Check::fail("sftp.auth", e.to_string()).with_fix(
                "check that the server offers the sftp subsystem to this user and answers in time",
            ));
            skip_from(&mut checks, 2, "no login");
            return checks;
        }
    };
    checks.push(Check::pass(
        "sftp.host_key",
        format!("{presented} matches {pin}"),
    ));
    checks.push(Check::pass(
        "sftp.auth",
        format!(
            "{} logged in with {} and started SFTP{}",
            settings.user,
            settings.key_file.display(),
            if args.dir.starts_with('/') {
                String::new()
            } else {
                format!(
                    "; SFTP_DIR {:?} is {} (relative to the login directory)",
                    args.dir,
                    remote.resolve(&args.dir)
                )
            }
        ),
    ));
    checks.push(sftp_write(&remote, args, append_only).await);
    checks.push(match remote.free_space(&args.dir).await {
        Ok(Some(free)) if free < MIB => Check::fail(
            "sftp.space",
            format!("{} is full ({free} bytes free)", args.dir),
        )
        .with_fix(
            "free space on the SFTP server (old backups, other data), or raise the account's quota",
        ),
        Ok(Some(free)) => Check::pass(
            "sftp.space",
            format!("{} free on the file system of {}", mib(free), args.dir),
        ),
        Ok(None) => Check::skip(
            "sftp.space",
            "the server does not report free space (no statvfs@openssh.com)",
        ),
        Err(e) => Check::fail("sftp.space", e.to_string())
            .with_fix("the server refused statvfs; check the directory exists and is readable"),
    });
    let _ = remote.close().await;
    checks
}

/// `SFTP_KEY_FILE` exists, is a file, and is private to its owner (as
/// OpenSSH demands of a private key): the detail and the fix otherwise.
fn key_file_usable(path: &Path) -> Result<(), (String, String)> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err((
            format!("SFTP_KEY_FILE {shown} does not exist"),
            format!(
                "point SFTP_KEY_FILE at the private key (in compose, the secret's mount); to make one: ssh-keygen -t ed25519 -N '' -f {shown}, then add {shown}.pub to the server's authorized_keys"
            ),
        )),
        Err(e) => Err((
            format!("cannot read SFTP_KEY_FILE {shown}: {e}"),
            format!("make {shown} readable by this user, mode 0600"),
        )),
        Ok(meta) if !meta.is_file() => Err((
            format!("SFTP_KEY_FILE {shown} is not a file"),
            "point SFTP_KEY_FILE at the private key file".into(),
        )),
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => Err((
            format!(
                "SFTP_KEY_FILE {shown} has mode {:04o}: other users can read the private key",
                meta.permissions().mode() & 0o7777
            ),
            format!("chmod 0600 {shown} (and consider replacing the key if others could read it)"),
        )),
        Ok(_) => Ok(()),
    }
}

async fn sftp_write(remote: &SftpRemote, args: &SftpTarget, append_only: bool) -> Check {
    let dir = args.dir.trim_end_matches('/');
    let write_fix = format!(
        "give {} write access to {} on the server (the shipper creates <database>/ there and renames files into it)",
        args.settings.user, args.dir
    );
    // The shipper creates the base directory the same way.
    if let Err(e) = remote.create_dir_all(dir).await {
        return Check::fail("sftp.write", e.to_string()).with_fix(write_fix);
    }
    if append_only {
        // A probe could not be removed with this key; the posture checks
        // write theirs and clean up with the pruner's identity.
        return match remote.list_dir(dir).await {
            Ok(_) => Check::pass(
                "sftp.write",
                format!("{dir} exists and is readable (SFTP_APPEND_ONLY: no probe written here)"),
            ),
            Err(e) => Check::fail("sftp.write", e.to_string()).with_fix(write_fix),
        };
    }
    let probe = format!("{dir}/{}", probe_name());
    if let Err(e) = remote
        .write_file_atomic(&probe, b"backupctl doctor probe\n")
        .await
    {
        let fix = match e {
            RemoteError::NoSpace { .. } => {
                "free space on the SFTP server, or raise the account's quota".to_owned()
            }
            // The file was created, but changing its mode or renaming it
            // over was refused: the mark of an append-only account.
            RemoteError::PermissionDenied {
                op: "chmod" | "rename",
                ..
            } => "this key may create but not chmod or replace files (an append-only account?): set SFTP_APPEND_ONLY=true so the shipper uploads write-once".to_owned(),
            _ => write_fix,
        };
        return Check::fail("sftp.write", e.to_string()).with_fix(fix);
    }
    if let Err(e) = remote.remove_file(&probe).await {
        return Check::fail("sftp.write", format!("wrote {probe} but could not delete it: {e}")).with_fix(format!(
                "the pruner deletes old backups: give {} delete rights in {}, and remove {probe} by hand",
                args.settings.user, args.dir
            ));
    }
    let features = remote.features();
    let rename = if features.posix_rename {
        "atomic renames"
    } else {
        "renames without posix-rename (remove then rename)"
    };
    Check::pass(
        "sftp.write",
        format!("wrote, renamed and deleted a probe file in {dir} ({rename})"),
    )
}

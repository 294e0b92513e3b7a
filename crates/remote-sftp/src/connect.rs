//! SSH connection set-up: settings checks, key loading, host key
//! verification and public key authentication.

use std::borrow::Cow;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::client;
use russh::keys::{
    Algorithm, HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate,
};
use secrecy::ExposeSecret;

use crate::{RemoteError, SftpSettings};

/// The only fingerprint format accepted for pins: what `ssh-keygen -lf`
/// prints by default.
const FINGERPRINT_PREFIX: &str = "SHA256:";

/// Checks the settings before any network traffic, so that configuration
/// mistakes surface as permanent errors instead of connect failures.
pub(crate) fn validate(settings: &SftpSettings) -> Result<Option<String>, RemoteError> {
    if settings.host.is_empty() {
        return Err(RemoteError::Config("host is empty".into()));
    }
    if settings.user.is_empty() {
        return Err(RemoteError::Config("user is empty".into()));
    }
    if settings.known_hosts.is_none() && settings.host_key_fingerprint.is_none() {
        // No trust-on-first-use: the first connection is exactly the one an
        // attacker would intercept.
        return Err(RemoteError::Config(
            "host key verification is mandatory: set SFTP_KNOWN_HOSTS or \
             SFTP_HOST_KEY_FINGERPRINT"
                .into(),
        ));
    }
    if let Some(path) = &settings.known_hosts {
        // russh treats an unreadable known_hosts as empty, which would turn
        // a typo in the path into a misleading "host key is not pinned".
        std::fs::File::open(path).map_err(|e| {
            RemoteError::Config(format!(
                "cannot read known_hosts file {}: {e}",
                path.display()
            ))
        })?;
    }
    settings
        .host_key_fingerprint
        .as_deref()
        .map(normalize_fingerprint)
        .transpose()
}

/// `SHA256:` + unpadded base64, as `ssh-keygen -lf` prints it; tolerates
/// surrounding blanks and base64 padding.
fn normalize_fingerprint(pin: &str) -> Result<String, RemoteError> {
    let pin = pin.trim();
    let Some(body) = pin.strip_prefix(FINGERPRINT_PREFIX) else {
        return Err(RemoteError::Config(format!(
            "host key fingerprint {pin:?} must look like SHA256:<base64> (as printed by \
             ssh-keygen -lf)"
        )));
    };
    let body = body.trim_end_matches('=');
    let valid = body.len() == 43
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if !valid {
        return Err(RemoteError::Config(format!(
            "host key fingerprint {pin:?} is not a SHA256 fingerprint (43 base64 characters \
             after SHA256:)"
        )));
    }
    Ok(format!("{FINGERPRINT_PREFIX}{body}"))
}

pub(crate) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Loads the client key off the async runtime: decrypting an OpenSSH key
/// runs bcrypt-pbkdf, which takes a noticeable fraction of a second.
pub(crate) async fn load_key(settings: &SftpSettings) -> Result<PrivateKey, RemoteError> {
    let path = settings.key_file.clone();
    let passphrase = settings.key_passphrase.clone();
    let result = tokio::task::spawn_blocking(move || {
        let passphrase = passphrase.as_ref().map(|p| p.expose_secret());
        load_key_blocking(&path, passphrase)
    })
    .await;
    match result {
        Ok(result) => result,
        Err(join) => Err(RemoteError::KeyFile {
            path: settings.key_file.clone(),
            reason: format!("key loading task failed: {join}"),
        }),
    }
}

fn load_key_blocking(path: &Path, passphrase: Option<&str>) -> Result<PrivateKey, RemoteError> {
    let key_error = |reason: String| RemoteError::KeyFile {
        path: path.to_owned(),
        reason,
    };
    // Read the file ourselves for a precise I/O message; russh would fold it
    // into a generic key error.
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => key_error("does not exist".into()),
        io::ErrorKind::PermissionDenied => key_error("permission denied".into()),
        io::ErrorKind::InvalidData => key_error("is not a text key file".into()),
        _ => key_error(format!("cannot be read: {e}")),
    })?;
    russh::keys::decode_secret_key(&text, passphrase).map_err(|e| match (e, passphrase) {
        (russh::keys::Error::KeyIsEncrypted, None) => {
            key_error("is encrypted and no passphrase was given".into())
        }
        (russh::keys::Error::KeyIsEncrypted, Some(_)) => {
            key_error("cannot be decrypted: wrong passphrase".into())
        }
        // Decrypting with a wrong passphrase yields garbage, reported as
        // padding, DER, checksum or "corrupt" errors depending on the format.
        (e, Some(_)) => key_error(format!(
            "cannot be decrypted or parsed (wrong passphrase or unsupported format): {e}"
        )),
        (e, None) => key_error(format!("cannot be parsed (unsupported format?): {e}")),
    })
}

/// Host key algorithms to offer, those of keys pinned in known_hosts first.
/// Otherwise a server with both an ed25519 and an RSA key, pinned by its
/// RSA key, would present ed25519 and be reported as unknown.
pub(crate) fn preferred_host_key_algorithms(
    host: &str,
    port: u16,
    known_hosts: Option<&Path>,
) -> Vec<Algorithm> {
    let defaults = russh::Preferred::DEFAULT.key.to_vec();
    let Some(path) = known_hosts else {
        return defaults;
    };
    let Ok(pinned) = russh::keys::known_hosts::known_host_keys_path(host, port, path) else {
        return defaults;
    };
    let mut order: Vec<Algorithm> = Vec::new();
    for (_, key) in pinned {
        let algorithms = match key.algorithm() {
            // An RSA key signs with whichever hash is negotiated.
            Algorithm::Rsa { .. } => vec![
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha512),
                },
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha256),
                },
                Algorithm::Rsa { hash: None },
            ],
            other => vec![other],
        };
        for algorithm in algorithms {
            if !order.contains(&algorithm) {
                order.push(algorithm);
            }
        }
    }
    for algorithm in defaults {
        if !order.contains(&algorithm) {
            order.push(algorithm);
        }
    }
    order
}

pub(crate) fn ssh_config(settings: &SftpSettings) -> client::Config {
    let preferred = russh::Preferred {
        key: Cow::Owned(preferred_host_key_algorithms(
            &settings.host,
            settings.port,
            settings.known_hosts.as_deref(),
        )),
        // AES-GCM first: with AES-NI it is several times faster than
        // chacha20-poly1305, russh's default first choice, and bulk transfer
        // is what this client does.
        cipher: Cow::Borrowed(&[
            russh::cipher::AES_128_GCM,
            russh::cipher::AES_256_GCM,
            russh::cipher::CHACHA20_POLY1305,
            russh::cipher::AES_256_CTR,
            russh::cipher::AES_192_CTR,
            russh::cipher::AES_128_CTR,
        ]),
        ..russh::Preferred::default()
    };
    // Keepalives notice a dead peer while we wait on a long operation;
    // without them only the per-request timeout would. Three unanswered
    // probes (the first sent after `keepalive` of silence) close the
    // connection: with the default 60 s io_timeout, about 30 s.
    let keepalive = keepalive_interval(settings.io_timeout);
    client::Config {
        preferred,
        nodelay: true,
        keepalive_interval: Some(keepalive),
        keepalive_max: KEEPALIVE_MAX,
        // A larger receive window than the 2 MiB default so that pipelined
        // downloads are not capped at window/RTT on high-latency links.
        window_size: 8 * 1024 * 1024,
        ..client::Config::default()
    }
}

/// Unanswered keepalives after which the connection counts as dead.
const KEEPALIVE_MAX: usize = 2;

/// Silence before a keepalive probe: a sixth of the request timeout, so a
/// dead peer is declared (after `KEEPALIVE_MAX + 1` intervals) well within
/// it, but never more often than every 2 s nor less than every 15 s.
pub(crate) fn keepalive_interval(io_timeout: Duration) -> Duration {
    io_timeout
        .div_f64(6.0)
        .clamp(Duration::from_secs(2), Duration::from_secs(15))
}

/// Verifies host keys during the handshake; returning an error here aborts
/// the connection before authentication, so nothing is sent to an
/// impostor.
#[derive(Debug)]
pub(crate) struct ClientHandler {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) known_hosts: Option<PathBuf>,
    pub(crate) fingerprint_pin: Option<String>,
}

/// Error type of [`ClientHandler`]: russh needs `From<russh::Error>`, and
/// host key rejections must come out as precise [`RemoteError`]s rather
/// than russh's generic `UnknownKey`.
#[derive(Debug)]
pub(crate) enum HandlerError {
    Ssh(russh::Error),
    Rejected(RemoteError),
}

impl From<russh::Error> for HandlerError {
    fn from(error: russh::Error) -> HandlerError {
        HandlerError::Ssh(error)
    }
}

impl client::Handler for ClientHandler {
    type Error = HandlerError;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = server_public_key else {
            // We never advertise certificate algorithms, so this would be a
            // misbehaving server.
            return Err(HandlerError::Rejected(RemoteError::Protocol(format!(
                "{}:{} presented a host certificate, but only pinned host keys are supported",
                self.host, self.port
            ))));
        };
        verify_host_key(
            &self.host,
            self.port,
            key,
            self.known_hosts.as_deref(),
            self.fingerprint_pin.as_deref(),
        )
        .map(|()| true)
        .map_err(HandlerError::Rejected)
    }
}

pub(crate) fn verify_host_key(
    host: &str,
    port: u16,
    key: &PublicKey,
    known_hosts: Option<&Path>,
    pin: Option<&str>,
) -> Result<(), RemoteError> {
    let presented = fingerprint(key);
    if pin == Some(presented.as_str()) {
        return Ok(());
    }
    if let Some(path) = known_hosts {
        match russh::keys::check_known_hosts_path(host, port, key, path) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(russh::keys::Error::KeyChanged { line }) => {
                return Err(RemoteError::HostKeyChanged {
                    host: host.into(),
                    port,
                    fingerprint: presented,
                    pinned_at: format!("line {line} of {}", path.display()),
                });
            }
            Err(e) => {
                return Err(RemoteError::Config(format!(
                    "cannot use known_hosts file {}: {e}",
                    path.display()
                )));
            }
        }
    }
    match pin {
        Some(pin) => Err(RemoteError::HostKeyChanged {
            host: host.into(),
            port,
            fingerprint: presented,
            pinned_at: format!("the pinned fingerprint {pin}"),
        }),
        None => Err(RemoteError::HostKeyUnknown {
            host: host.into(),
            port,
            fingerprint: presented,
        }),
    }
}

/// The signature algorithm for our key: for RSA, the best SHA-2 variant the
/// server announces (OpenSSH ≥ 8.8 refuses SHA-1 `ssh-rsa`).
pub(crate) async fn key_with_hash(
    ssh: &client::Handle<ClientHandler>,
    key: PrivateKey,
) -> Result<PrivateKeyWithHashAlg, russh::Error> {
    let hash = if key.algorithm().is_rsa() {
        // None: the server did not send server-sig-algs, i.e. predates
        // RFC 8332 and only knows ssh-rsa.
        ssh.best_supported_rsa_hash().await?.flatten()
    } else {
        None
    };
    Ok(PrivateKeyWithHashAlg::new(Arc::new(key), hash))
}

/// Classifies SSH-level failures seen while connecting.
pub(crate) fn ssh_error(error: russh::Error, host: &str, port: u16) -> RemoteError {
    use russh::Error as E;
    match error {
        E::IO(source) => RemoteError::Connect {
            host: host.into(),
            port,
            source,
        },
        E::Disconnect
        | E::HUP
        | E::ConnectionTimeout
        | E::KeepaliveTimeout
        | E::InactivityTimeout
        | E::SendError
        | E::RecvError
        | E::Elapsed(_) => RemoteError::ConnectionLost(format!("{host}:{port}: {error}")),
        other => RemoteError::Protocol(format!("{host}:{port}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalives_notice_a_dead_peer_within_the_io_timeout() {
        for secs in [1, 10, 60, 600] {
            let io_timeout = Duration::from_secs(secs);
            let interval = keepalive_interval(io_timeout);
            let detection = interval * u32::try_from(KEEPALIVE_MAX + 1).unwrap();
            assert!(interval >= Duration::from_secs(2));
            assert!(
                detection <= io_timeout.max(Duration::from_secs(6)),
                "{secs}s"
            );
        }
        assert_eq!(
            keepalive_interval(Duration::from_secs(60)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn fingerprint_pins_are_normalized() {
        let body = "nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8";
        assert_eq!(
            normalize_fingerprint(&format!(" SHA256:{body}= ")).unwrap(),
            format!("SHA256:{body}")
        );
        assert!(normalize_fingerprint(body).is_err());
        assert!(normalize_fingerprint("MD5:aa:bb").is_err());
        assert!(normalize_fingerprint("SHA256:short").is_err());
    }
}

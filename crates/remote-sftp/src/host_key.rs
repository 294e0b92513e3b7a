//! The host key a server presents, for preflight checks: a key exchange
//! without authentication.

use std::sync::Arc;

use russh::client;

use crate::connect;
use crate::{RemoteError, SftpRemote, SftpSettings};

/// Helpers for preflight checks (`backupctl doctor`).
impl SftpRemote {
    /// Connects only as far as the key exchange and returns the fingerprint
    /// (`SHA256:...`) of the host key the server presents, offering the
    /// same host key algorithms as [`SftpRemote::connect`]. The key is not
    /// checked against the pin and nothing is authenticated: the connection
    /// is dropped before any credential is sent, so it is safe against an
    /// impostor. Bounded by `settings.connect_timeout`.
    pub async fn presented_host_key(settings: &SftpSettings) -> Result<String, RemoteError> {
        let seen = Arc::new(std::sync::Mutex::new(None));
        let handler = KeyRecorder(Arc::clone(&seen));
        let config = Arc::new(connect::ssh_config(settings));
        let host = settings.host.as_str();
        let port = settings.port;
        let attempt = client::connect(config, (host, port), handler);
        let result = tokio::time::timeout(settings.connect_timeout, attempt).await;
        let recorded = seen.lock().ok().and_then(|mut seen| seen.take());
        match (recorded, result) {
            (Some(fingerprint), _) => Ok(fingerprint),
            (None, Err(_)) => Err(RemoteError::ConnectTimeout {
                host: host.to_owned(),
                port,
                timeout: settings.connect_timeout,
            }),
            (None, Ok(Err(error))) => Err(connect::ssh_error(error, host, port)),
            (None, Ok(Ok(_))) => Err(RemoteError::Protocol(format!(
                "{host}:{port} finished the key exchange without presenting a host key"
            ))),
        }
    }
}

/// Records the presented host key and refuses it, which ends the
/// connection before authentication.
struct KeyRecorder(Arc<std::sync::Mutex<Option<String>>>);

impl client::Handler for KeyRecorder {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        if let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = server_public_key
            && let Ok(mut seen) = self.0.lock()
        {
            *seen = Some(connect::fingerprint(key));
        }
        Ok(false)
    }
}

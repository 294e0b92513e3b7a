//! The client of `--health-probe`: one GET of the service's own
//! `/healthz`, turned into one line and an exit status, so an image needs
//! no `curl` for its health check.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use super::listen_address;

/// How long the probe waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a probe reaches an endpoint listening on `addr`: a wildcard
/// address is reached on loopback.
fn probe_target(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// What one probe found: healthy or not, and the line that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub healthy: bool,
    pub line: String,
}

/// GETs `/healthz` of the endpoint `HEALTH_LISTEN` names.
pub async fn probe_once(listen: Option<&str>) -> ProbeResult {
    match listen_address(listen) {
        Ok(listen) => probe_listen(listen).await,
        Err(error) => ProbeResult {
            healthy: false,
            line: error.to_string(),
        },
    }
}

/// GETs `/healthz` of the endpoint listening on `listen`.
pub async fn probe_listen(listen: Option<SocketAddr>) -> ProbeResult {
    let unhealthy = |line: String| ProbeResult {
        healthy: false,
        line,
    };
    let Some(addr) = listen.map(probe_target) else {
        return unhealthy("HEALTH_LISTEN is not set: no endpoint to probe".into());
    };
    let answer = tokio::time::timeout(PROBE_TIMEOUT, http_get(addr, "/healthz")).await;
    let (status, body) = match answer {
        Err(_) => {
            return unhealthy(format!(
                "no answer from http://{addr}/healthz within {}s",
                PROBE_TIMEOUT.as_secs()
            ));
        }
        Ok(Err(error)) => {
            return unhealthy(format!(
                "http://{addr}/healthz: {error} (still starting, or not connected to NATS yet)"
            ));
        }
        Ok(Ok(answer)) => answer,
    };
    let report: Option<serde_json::Value> = serde_json::from_str(&body).ok();
    let service = report
        .as_ref()
        .and_then(|r| r.get("service"))
        .and_then(|s| s.as_str())
        .unwrap_or("service")
        .to_owned();
    if status == 200 {
        return ProbeResult {
            healthy: true,
            line: format!("{service} healthy"),
        };
    }
    let reasons = report
        .as_ref()
        .and_then(|r| r.get("reasons"))
        .and_then(|r| r.as_array())
        .map(|reasons| {
            reasons
                .iter()
                .filter_map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| crate::one_line(&body));
    unhealthy(format!("{service} unhealthy (HTTP {status}): {reasons}"))
}

/// The `--health-probe` mode of every service, for the endpoint on
/// `listen`: one line on stdout, exit 0 when healthy and 1 otherwise.
pub async fn probe(listen: Option<SocketAddr>) -> ExitCode {
    let result = probe_listen(listen).await;
    #[allow(clippy::print_stdout)]
    {
        println!("{}", crate::one_line(&result.line));
    }
    if result.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A minimal HTTP/1.1 GET: enough for our own endpoint, and it keeps an
/// HTTP client out of every binary.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.take(1 << 20).read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_address_is_probed_on_loopback() {
        assert_eq!(
            probe_target("0.0.0.0:9464".parse().unwrap()),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            probe_target("[::]:9464".parse().unwrap()),
            "[::1]:9464".parse().unwrap()
        );
        assert_eq!(
            probe_target("10.1.2.3:9464".parse().unwrap()),
            "10.1.2.3:9464".parse().unwrap()
        );
    }

    #[tokio::test]
    async fn probing_nothing_is_unhealthy_in_one_line() {
        let unset = probe_once(None).await;
        assert!(!unset.healthy);
        assert!(
            unset.line.contains("HEALTH_LISTEN is not set"),
            "{}",
            unset.line
        );
        // A port nobody listens on: bind one, then free it.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap().to_string();
        drop(free);
        let refused = probe_once(Some(&addr)).await;
        assert!(!refused.healthy);
        assert!(refused.line.contains("/healthz"), "{}", refused.line);
        assert!(!refused.line.contains('\n'));
    }
}

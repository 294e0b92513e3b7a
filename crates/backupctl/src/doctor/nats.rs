//! NATS: the server answers, the stream exists, and each service's
//! consumer has a worker pulling from it.

use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use backup_core::bus::{Bus, NatsOptions, STREAM};
use backup_core::preflight::Check;
use chrono::{DateTime, Utc};

use crate::status::{age as time_since, worker_connected};

/// How long the NATS connection may take once the port answers.
const NATS_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A worker renews its pull request from time to time; a consumer without
/// one is looked at this many times, a second apart, before it counts as
/// abandoned.
const CONSUMER_LOOKS: u32 = 3;

/// NATS reachable with these credentials, the stream present, and each
/// service's durable consumer present with a worker connected.
pub async fn nats(options: &NatsOptions, services: &[&str]) -> Vec<Check> {
    let shown = url_without_credentials(&options.url);
    let unreachable = |detail: String| {
        let mut checks = vec![Check::fail("nats", detail).with_fix(
            "start nats-server, or correct NATS_URL (host and port as the services see them)",
        )];
        checks.push(Check::not_checked("nats.stream", "NATS is unreachable"));
        checks
    };
    // A plain TCP probe first: the client retries forever on a refused
    // connection, and "refused" is the clearest thing to report.
    if let Some((host, port)) = nats_address(&options.url) {
        let probe = tokio::net::TcpStream::connect((host.as_str(), port));
        match tokio::time::timeout(Duration::from_secs(5), probe).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return unreachable(format!("cannot reach {shown}: {e}")),
            Err(_) => return unreachable(format!("no answer from {shown} within 5s")),
        }
    }
    let who = match (&options.user, &options.token, &options.creds_file) {
        (Some(user), _, _) => format!("as user {user}"),
        (None, Some(_), _) => "with a token".to_owned(),
        (None, None, Some(path)) => format!("with credentials {}", path.display()),
        (None, None, None) => "without credentials".to_owned(),
    };
    let shutdown = backup_core::shutdown::CancellationToken::new();
    let connect = Bus::connect(options, "backupctl-doctor", &shutdown);
    let bus = match tokio::time::timeout(NATS_CONNECT_TIMEOUT, connect).await {
        Ok(Ok(bus)) => bus,
        Ok(Err(error)) => {
            let fix = match &error {
                backup_core::bus::BusError::Auth { .. } => {
                    "check NATS_USER and NATS_PASSWORD (or NATS_TOKEN, NATS_CREDS) against the server's authorization settings"
                }
                _ => "check NATS_URL and NATS_CREDS",
            };
            let mut checks = vec![Check::fail("nats", format!("{error} ({who})")).with_fix(fix)];
            checks.push(Check::not_checked(
                "nats.stream",
                "could not connect to NATS",
            ));
            return checks;
        }
        Err(_) => {
            shutdown.cancel();
            return unreachable(format!(
                "{shown} accepts connections but no NATS session started within {NATS_CONNECT_TIMEOUT:?}"
            ));
        }
    };
    let mut checks = vec![Check::pass("nats", format!("connected to {shown} {who}"))];
    let user = options.user.as_deref();
    let refusal = |subject: &str| {
        bus.refused().contains(subject).then(|| {
            format!(
                "NATS refused {subject} to {}: a permissions violation, not a missing piece",
                user.map_or_else(|| "this connection".to_owned(), |u| format!("user {u}"))
            )
        })
    };
    let stream_subject = format!("$JS.API.STREAM.INFO.{STREAM}");
    let mut stream = match bus.jetstream().get_stream(STREAM).await {
        Ok(stream) => stream,
        Err(e) => {
            checks.push(match refusal(&stream_subject) {
                Some(refused) => Check::fail("nats.stream", refused).with_fix(OPERATOR_FIX),
                None => Check::fail("nats.stream", format!("the {STREAM} stream is missing or unreadable: {e}")).with_fix("start any service once: each creates the stream at start-up (or grant this NATS user JetStream access)"),
            });
            for service in services {
                checks.push(Check::not_checked(
                    format!("nats.consumer.{service}"),
                    "no stream",
                ));
            }
            return checks;
        }
    };
    checks.push(match stream.info().await {
        Ok(info) => {
            let subjects = &info.config.subjects;
            let covers = ["backup.>", "dump.>"]
                .iter()
                .all(|s| subjects.iter().any(|have| have == s));
            if covers {
                Check::pass(
                    "nats.stream",
                    format!(
                        "{STREAM} holds {} messages on {}",
                        info.state.messages,
                        subjects.join(", ")
                    ),
                )
            } else {
                Check::fail(
                    "nats.stream",
                    format!("{STREAM} captures {} only", subjects.join(", ")),
                )
                .with_fix(
                    "restart any service: each brings the stream's subjects up to date at start-up",
                )
            }
        }
        Err(e) => Check::fail(
            "nats.stream",
            format!("cannot read the {STREAM} stream: {e}"),
        )
        .with_fix("grant this NATS user JetStream access to the stream"),
    });
    let consumers = services
        .iter()
        .map(|service| consumer(&bus, &stream, service, user));
    checks.extend(futures::future::join_all(consumers).await);
    checks
}

/// The fix for a permission refusal: the services' own NATS users may see
/// only their own consumer; the operator's user sees everything.
const OPERATOR_FIX: &str = "run the doctor with the operator's NATS credentials (NATS_USER=operator and its password; in compose: docker compose run --rm backupctl doctor), or grant this user the subject in the NATS authorization";

async fn consumer(bus: &Bus, stream: &Stream, service: &str, user: Option<&str>) -> Check {
    let name = format!("nats.consumer.{service}");
    let subject = format!("$JS.API.CONSUMER.INFO.{STREAM}.{service}");
    let mut look = 0;
    loop {
        look += 1;
        let info = match stream.consumer_info(service).await {
            Ok(info) => info,
            Err(_) if bus.refused().contains(&subject) => {
                let who = user.map_or_else(
                    || "this connection".to_owned(),
                    |u| format!("NATS user {u}"),
                );
                // A service's user sees only its own consumer: another's
                // is not this user's business, its own is.
                return if user.is_some_and(|u| u != service) {
                    Check::skip(
                        name,
                        format!(
                            "not visible to {who} (NATS refused {subject}); check it with the operator's credentials"
                        ),
                    )
                } else {
                    Check::fail(
                        name,
                        format!("NATS refused {subject} to {who}: a permissions violation"),
                    )
                    .with_fix(OPERATOR_FIX)
                };
            }
            Err(e) => {
                return Check::fail(
                    name,
                    format!("no durable consumer {service} on {STREAM} ({e})"),
                )
                .with_fix(format!(
                    "start the {service} service: it creates its consumer at start-up"
                ));
            }
        };
        if worker_connected(&info) {
            return Check::pass(
                name,
                format!(
                    "a worker is connected ({} messages pending, {} in hand)",
                    info.num_pending, info.num_ack_pending
                ),
            );
        }
        if look >= CONSUMER_LOOKS {
            let last = info
                .delivered
                .last_active
                .and_then(|at| DateTime::<Utc>::from_timestamp(at.unix_timestamp(), 0))
                .map_or_else(
                    || "no delivery on record".to_owned(),
                    |at| format!("last delivery {} ago", time_since(at, Utc::now())),
                );
            return Check::fail(name, format!(
                    "the consumer exists but no worker is connected ({last}; {} messages pending)",
                    info.num_pending
                )).with_fix(format!(
                    "start the {service} service, or read its log if it is running (it may be stuck connecting elsewhere)"
                ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `host` and `port` of the first server in a `NATS_URL`.
fn nats_address(url: &str) -> Option<(String, u16)> {
    let first = url.split(',').next()?.trim();
    let rest = first.split_once("://").map_or(first, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        let port = after
            .strip_prefix(':')
            .map_or(Some(4222), |p| p.parse().ok())?;
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None if !authority.is_empty() => Some((authority.to_owned(), 4222)),
        None => None,
    }
}

/// A URL with any `user:password@` removed, safe to print.
fn url_without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_addresses() {
        assert_eq!(
            nats_address("nats://127.0.0.1:4333"),
            Some(("127.0.0.1".into(), 4333))
        );
        assert_eq!(
            nats_address("nats://u:p@nats.example/"),
            Some(("nats.example".into(), 4222))
        );
        assert_eq!(
            nats_address("tls://[::1]:4222,nats://other:1"),
            Some(("::1".into(), 4222))
        );
        assert_eq!(nats_address("nats://"), None);
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            url_without_credentials("nats://bob:s3cret@host:4222"),
            "nats://host:4222"
        );
        assert_eq!(
            url_without_credentials("nats://host:4222"),
            "nats://host:4222"
        );
    }
}

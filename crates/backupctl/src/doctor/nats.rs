//! NATS: the servers of `NATS_URL` answer (each seed of a cluster's list
//! is probed and reported), the stream exists with its replicas, and each
//! service's consumer has a worker pulling from it.

use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use backup_core::bus::{Bus, NatsOptions, STREAM, url_without_credentials};
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
    let shown = options.shown_url();
    let unreachable = |detail: String| {
        let mut checks = vec![Check::fail("nats", detail).with_fix(
            "start nats-server, or correct NATS_URL (host and port as the services see them)",
        )];
        checks.push(Check::not_checked("nats.stream", "NATS is unreachable"));
        checks
    };
    // A plain TCP probe of every seed first: the client retries forever on
    // a refused connection, and "refused" is the clearest thing to report.
    let seeds = match options.servers() {
        Ok(servers) => probe_seeds(&servers).await,
        Err(error) => return unreachable(error.to_string()),
    };
    let answering = seeds.iter().filter(|seed| seed.answer.is_ok()).count();
    if answering == 0 {
        return unreachable(match seeds.as_slice() {
            [only] => only.failure(),
            all => format!(
                "no server of NATS_URL answers: {}",
                all.iter().map(Seed::failure).collect::<Vec<_>>().join("; ")
            ),
        });
    }
    let seeds_check = (seeds.len() > 1).then(|| seeds_check(&seeds, answering));
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
    let server = bus.client().server_info();
    let mut checks = vec![Check::pass(
        "nats",
        format!(
            "connected to {shown} {who} (server {} at port {})",
            server.server_name, server.port
        ),
    )];
    checks.extend(seeds_check);
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
                        "{STREAM} holds {} messages on {}, {}",
                        info.state.messages,
                        subjects.join(", "),
                        replicas(info)
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

/// One server of `NATS_URL` and whether it accepted a TCP connection.
struct Seed {
    shown: String,
    answer: Result<(), String>,
}

impl Seed {
    fn failure(&self) -> String {
        match &self.answer {
            Ok(()) => format!("{} answers", self.shown),
            Err(why) => why.clone(),
        }
    }
}

/// Probes every seed at once, each for up to five seconds.
async fn probe_seeds(servers: &[async_nats::ServerAddr]) -> Vec<Seed> {
    let probes = servers.iter().map(|server| async move {
        let shown = url_without_credentials(server.clone().into_inner().as_str());
        let shown = shown.trim_end_matches('/').to_owned();
        let probe = tokio::net::TcpStream::connect((server.host(), server.port()));
        let answer = match tokio::time::timeout(Duration::from_secs(5), probe).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot reach {shown}: {e}")),
            Err(_) => Err(format!("no answer from {shown} within 5s")),
        };
        Seed { shown, answer }
    });
    futures::future::join_all(probes).await
}

/// `nats.seeds`, for a list of several servers: the services start while
/// any of them answers, but a silent one is a cluster node down (one fewer
/// to lose) or a stale entry.
fn seeds_check(seeds: &[Seed], answering: usize) -> Check {
    let total = seeds.len();
    if answering == total {
        let all: Vec<&str> = seeds.iter().map(|s| s.shown.as_str()).collect();
        return Check::pass(
            "nats.seeds",
            format!("all {total} servers of NATS_URL answer: {}", all.join(", ")),
        );
    }
    let silent: Vec<String> = seeds
        .iter()
        .filter(|s| s.answer.is_err())
        .map(Seed::failure)
        .collect();
    Check::fail(
        "nats.seeds",
        format!(
            "{answering} of {total} servers of NATS_URL answer; {}",
            silent.join("; ")
        ),
    )
    .with_fix("start the NATS servers that do not answer (the services carry on with the others meanwhile), or remove them from NATS_URL")
}

/// The stream's copies as JetStream reports them: `1 replica` on a single
/// server; on a cluster the leader and every follower that is not current
/// (a node down shows as such: NATS 2.9 marks it offline only much later).
fn replicas(info: &async_nats::jetstream::stream::Info) -> String {
    let count = info.config.num_replicas.max(1);
    let Some(cluster) = info.cluster.as_ref().filter(|_| count > 1) else {
        return format!("{count} replica");
    };
    let leader = cluster.leader.as_deref().unwrap_or("none");
    let behind: Vec<String> = cluster
        .replicas
        .iter()
        .filter(|peer| !peer.current || peer.offline)
        .map(|peer| {
            let state = if peer.offline {
                "offline"
            } else {
                "not current"
            };
            format!(
                "{} {state}, last seen {}s ago",
                peer.name,
                peer.active.as_secs()
            )
        })
        .collect();
    if behind.is_empty() {
        format!("{count} replicas (leader {leader}, all current)")
    } else {
        format!("{count} replicas (leader {leader}; {})", behind.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(shown: &str, answer: Result<(), &str>) -> Seed {
        Seed {
            shown: shown.to_owned(),
            answer: answer.map_err(str::to_owned),
        }
    }

    #[test]
    fn the_seeds_check_names_every_silent_server() {
        let seeds = [
            seed(
                "nats://127.0.0.1:14231",
                Err("cannot reach nats://127.0.0.1:14231: Connection refused"),
            ),
            seed("nats://127.0.0.1:14232", Ok(())),
            seed("nats://127.0.0.1:14233", Ok(())),
        ];
        let check = seeds_check(&seeds, 2);
        assert!(!check.ok);
        assert_eq!(
            check.detail,
            "2 of 3 servers of NATS_URL answer; cannot reach nats://127.0.0.1:14231: Connection refused"
        );
        assert!(check.fix.is_some());
        let check = seeds_check(&seeds[1..], 2);
        assert!(check.ok, "{check:?}");
        assert!(
            check
                .detail
                .contains("nats://127.0.0.1:14232, nats://127.0.0.1:14233")
        );
    }
}

//! The notifier: tells the on-call about every backup problem once, on
//! every configured channel (email, Telegram, Slack, healthchecks.io-style
//! pings; the log when none is set), including backups that never happened.
//!
//! - Every `dump.failed` is an incident keyed by database, stage and cause:
//!   the first one is alerted, retries of it are not, a reminder goes out
//!   after `remind_every` while it keeps failing, and one more message when
//!   the pipeline stops retrying.
//! - A `dump.verified` closes the database's incidents with one "resolved"
//!   message (and pings the healthcheck).
//! - A copy falls behind: a `dump.verified` (or re-verification) whose
//!   `copies_failed` names a destination opens one incident for that
//!   destination, alerted once (then reminders), closed when a later
//!   `dump.verified` proves that destination again.
//! - A `dump.skipped` (a scheduled dump that found the previous one still
//!   running) is one warning, not an incident: nothing to resolve later.
//! - The dead man's switch: a configured database with no `dump.verified`
//!   for `stale_after` is alerted even if no event at all arrives. Its
//!   memory is the stream itself, read again at start-up (see [`history`]).
//!
//! - The daily digest (`ALERT_DIGEST_SCHEDULE`, off by default) sums up
//!   every database: last verified backup, size and duration trends, the
//!   day's failures, space used on the remote (see [`digest`]).
//!
//! Retries: each channel retries its delivery with backoff on its own,
//! honouring a `429`'s retry-after, so one channel down does not delay or
//! lose the others (see [`alert_channels::channels`]). The event is acked only when every
//! channel delivered or gave up (loudly, in the log); a notifier stopped
//! before that gets the event again from JetStream.

pub mod clock;
pub mod digest;
pub mod history;
pub mod incidents;
pub mod preflight;
pub mod settings;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backup_core::Stage;
use backup_core::bus::{self, Bus, ConsumerSpec, Delivery, Handler, Outcome};
use backup_core::calendar::LocalCron;
use backup_core::events::{
    self, DumpCreated, DumpFailed, DumpPruned, DumpShipped, DumpSkipped, DumpVerified, Event,
    subject,
};
use backup_core::names::DatabaseName;
use tokio_util::sync::CancellationToken;

pub use alert_channels::{
    ChannelConfigError, Channels, DeliveryPolicy, EmailSettings, HealthcheckSettings,
    SlackSettings, TelegramSettings,
};
pub use alert_channels::{HealthPing, Notice, NoticeKind};
pub use clock::{Clock, ManualClock, SystemClock};
use digest::Ledger;
use incidents::{Incidents, Policy};
pub use settings::{Args, Settings, SettingsError};

pub const CONSUMER: ConsumerSpec =
    ConsumerSpec::new("notifier", subject::ALL_DUMP_EVENTS, Stage::Trigger);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    #[error(transparent)]
    Channel(#[from] ChannelConfigError),
}

impl NotifyError {
    pub fn is_transient(&self) -> bool {
        match self {
            NotifyError::Bus(error) => error.is_transient(),
            NotifyError::Channel(_) => false,
        }
    }
}

/// Runs the notifier on the wall clock until shutdown.
pub async fn run(
    bus: Bus,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<(), NotifyError> {
    run_with_clock(bus, settings, Arc::new(SystemClock), shutdown).await
}

/// [`run`] with a clock of the caller's choice (tests move time by hand).
pub async fn run_with_clock(
    bus: Bus,
    settings: Settings,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<(), NotifyError> {
    backup_core::preflight::spawn_checks(
        bus.health(),
        &settings,
        preflight::preflight_checks,
        &shutdown,
    );
    let channels = Channels::build(
        settings.email.as_ref(),
        settings.telegram.as_ref(),
        settings.slack.as_ref(),
        &settings.healthcheck,
        settings.delivery,
    )?;
    if channels.only_log_for_people() {
        tracing::warn!(channels = ?channels.names(), "no alert channel configured: alerts go to this log only");
    } else {
        tracing::info!(channels = ?channels.names(), "alert channels configured");
    }
    if let Some(email) = &settings.email {
        tracing::info!(to = %email.to.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "), "alerts go by email");
    }
    if settings.databases.is_empty() {
        tracing::warn!(
            "BACKUP_DATABASES is not set: the dead man's switch watches only databases seen verifying"
        );
    }

    let policy = Policy {
        stale_after: settings.stale_after,
        remind_every: settings.remind_every,
        alert_on_success: settings.alert_on_success,
    };
    let now = clock.now();
    let make = |first_event: Option<chrono::DateTime<chrono::Utc>>| {
        Incidents::new(
            policy.clone(),
            settings.databases.iter().cloned(),
            first_event.map_or(now, |first| first.min(now)),
        )
    };
    let (incidents, ledger) = match history::rebuild(&bus, CONSUMER.durable, make).await {
        Ok((incidents, ledger, replayed)) => {
            tracing::info!(
                acked = replayed.acked_events,
                pending = replayed.pending_events,
                "memory rebuilt from the stream"
            );
            (incidents, ledger)
        }
        Err(error) => {
            tracing::warn!(%error, "could not read the stream's history; starting with an empty memory");
            (make(None), Ledger::default())
        }
    };
    tracing::info!(
        databases = ?settings.databases.iter().map(DatabaseName::as_str).collect::<Vec<_>>(),
        stale_after = %humantime::format_duration(settings.stale_after),
        remind_every = %humantime::format_duration(settings.remind_every),
        "dead man's switch armed"
    );

    let shared = Arc::new(Shared {
        incidents: Mutex::new(incidents),
        ledger: Mutex::new(ledger),
        channels,
        clock,
    });
    let watcher_stop = shutdown.child_token();
    let watcher = tokio::spawn(watch_staleness(
        Arc::clone(&shared),
        settings.stale_check_every,
        watcher_stop.clone(),
    ));
    let digests = settings.digest.clone().map(|schedule| {
        tracing::info!(schedule = %schedule, "daily digest scheduled");
        tokio::spawn(send_digests(
            Arc::clone(&shared),
            schedule,
            settings.databases.clone(),
            settings.stale_after,
            watcher_stop.clone(),
        ))
    });
    let handler = Arc::new(NotifyHandler { shared });
    let result = bus::run_worker(&bus, &CONSUMER, handler, shutdown, settings.grace).await;
    watcher_stop.cancel();
    let _ = watcher.await;
    if let Some(digests) = digests {
        let _ = digests.await;
    }
    Ok(result?)
}

#[derive(Debug)]
struct Shared {
    incidents: Mutex<Incidents>,
    ledger: Mutex<Ledger>,
    channels: Channels,
    clock: Arc<dyn Clock>,
}

impl Shared {
    fn incidents(&self) -> std::sync::MutexGuard<'_, Incidents> {
        self.incidents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn send(&self, notice: &Notice) {
        if notice.for_people {
            tracing::warn!(database = notice.scope(), kind = ?notice.kind, subject = %notice.subject, "sending notice");
        }
        self.channels.deliver(notice).await;
    }
}

/// The dead man's switch: looks at the clock periodically, not at events,
/// so silence itself raises the alert.
async fn watch_staleness(shared: Arc<Shared>, every: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let notices = shared.incidents().check_stale(shared.clock.now());
        for notice in notices {
            tokio::select! {
                _ = stop.cancelled() => return,
                () = shared.send(&notice) => {}
            }
        }
    }
}

/// The daily digest: at each time of the schedule, on the notifier's clock.
async fn send_digests(
    shared: Arc<Shared>,
    schedule: LocalCron,
    configured: Vec<DatabaseName>,
    stale_after: Duration,
    stop: CancellationToken,
) {
    loop {
        let Some(next) = schedule.next_after(shared.clock.now()) else {
            return;
        };
        tracing::info!(next = %next, "next daily digest");
        tokio::select! {
            _ = stop.cancelled() => return,
            () = shared.clock.sleep_until(next) => {}
        }
        let notice = {
            let ledger = shared.ledger();
            let incidents = shared.incidents();
            digest::digest(
                &ledger,
                &incidents,
                &configured,
                stale_after,
                shared.clock.now(),
                schedule.zone(),
            )
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            () = shared.send(&notice) => {}
        }
    }
}

#[derive(Debug)]
struct NotifyHandler {
    shared: Arc<Shared>,
}

/// Events the notifier reads; others on `dump.>` are acked untouched.
#[derive(Debug)]
pub enum Message {
    Created(Box<DumpCreated>),
    Shipped(Box<DumpShipped>),
    Failed(Box<DumpFailed>),
    Verified(Box<DumpVerified>),
    Pruned(Box<DumpPruned>),
    Skipped(Box<DumpSkipped>),
    Other,
}

impl Handler for NotifyHandler {
    type Message = Message;

    fn decode(&self, subject: &str, payload: &[u8]) -> Result<Message, events::DecodeError> {
        Message::decode(subject, payload)
    }

    async fn handle(
        &self,
        message: Message,
        _delivery: &Delivery,
        _shutdown: &CancellationToken,
    ) -> Outcome {
        let now = self.shared.clock.now();
        self.shared.ledger().record(&message);
        let notices: Vec<Notice> = {
            let mut incidents = self.shared.incidents();
            match message {
                Message::Failed(failure) => {
                    incidents.on_failure(&failure, now).into_iter().collect()
                }
                // A re-verification only speaks of the copies it proved
                // or found behind (see `Incidents::on_verified`).
                Message::Verified(verified) => incidents.on_verified(&verified, now),
                Message::Pruned(pruned) => {
                    incidents.on_pruned(&pruned);
                    Vec::new()
                }
                Message::Skipped(skipped) => vec![Notice::skipped(&skipped)],
                Message::Created(_) | Message::Shipped(_) | Message::Other => Vec::new(),
            }
        };
        for notice in &notices {
            // Each channel has delivered or given up (and said so) by now.
            self.shared.send(notice).await;
        }
        Outcome::Ack
    }
}

impl Message {
    /// Only a `dump.failed` that does not decode is refused (it becomes a
    /// poison message); the others are read leniently.
    pub fn decode(subject: &str, payload: &[u8]) -> Result<Message, events::DecodeError> {
        // A malformed success event is its consumer's to report (the pruner
        // reads dump.verified); here it only means no recovery message.
        let lenient = |result: Result<Message, events::DecodeError>| {
            result.unwrap_or_else(|error| {
                tracing::warn!(subject, %error, "ignoring an event that does not decode");
                Message::Other
            })
        };
        Ok(match subject {
            subject::FAILED => Message::Failed(Box::new(DumpFailed::decode(payload)?)),
            subject::VERIFIED => {
                lenient(DumpVerified::decode(payload).map(|v| Message::Verified(Box::new(v))))
            }
            subject::PRUNED => {
                lenient(DumpPruned::decode(payload).map(|p| Message::Pruned(Box::new(p))))
            }
            subject::SKIPPED => {
                lenient(DumpSkipped::decode(payload).map(|s| Message::Skipped(Box::new(s))))
            }
            subject::CREATED => {
                lenient(DumpCreated::decode(payload).map(|c| Message::Created(Box::new(c))))
            }
            subject::SHIPPED => {
                lenient(DumpShipped::decode(payload).map(|s| Message::Shipped(Box::new(s))))
            }
            _ => Message::Other,
        })
    }
}

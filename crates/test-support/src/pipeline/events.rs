//! Every message of the `BACKUPS` stream (`backup.>` and `dump.>`), in
//! stream order, followed by a background task, and waits on it.
//!
//! A wait for something that must *not* happen needs a later fact that
//! proves the earlier one would have been seen: [`EventLog::sync`] reads
//! the stream's last sequence and waits until the log has read that far,
//! so every message stored before the call is in the log. It publishes
//! nothing: the stream stays as the services left it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use serde_json::Value;
use tokio::time::Instant;

use super::WAIT;

/// One stored message: its subject and its payload as JSON (`Null` when
/// the payload is not JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub subject: String,
    pub sequence: u64,
    pub payload: Value,
}

/// The messages of the stream as they arrive; clones share the same log.
#[derive(Debug, Clone)]
pub struct EventLog {
    events: Arc<Mutex<Vec<Event>>>,
    js: jetstream::Context,
}

impl EventLog {
    /// Starts following the `BACKUPS` stream from its first message; the
    /// stream must exist (see `Bus::ensure_stream`).
    pub async fn follow(js: &jetstream::Context) -> EventLog {
        let stream = js
            .get_stream("BACKUPS")
            .await
            .expect("the BACKUPS stream exists");
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subjects: vec!["dump.>".into(), "backup.>".into()],
                ..Default::default()
            })
            .await
            .expect("ordered consumer on BACKUPS");
        let mut messages = consumer.messages().await.expect("messages of BACKUPS");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
                let payload = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Event {
                        subject: message.subject.to_string(),
                        sequence,
                        payload,
                    });
            }
        });
        EventLog {
            events,
            js: js.clone(),
        }
    }

    /// Every message so far (the log follows every subject of the stream).
    pub fn all(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The payloads stored on `subject` so far, oldest first.
    pub fn of(&self, subject: &str) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|e| e.subject == subject)
            .map(|e| e.payload)
            .collect()
    }

    /// [`Self::of`], only the events naming `database`.
    pub fn of_database(&self, subject: &str, database: &str) -> Vec<Value> {
        self.of(subject)
            .into_iter()
            .filter(|v| v["database"] == database)
            .collect()
    }

    /// One line per message, for panic messages.
    pub fn dump(&self) -> String {
        self.all()
            .iter()
            .map(|e| format!("#{} {} {}", e.sequence, e.subject, e.payload))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits (up to [`WAIT`]) until `done` holds for the log; panics naming
    /// `what` and listing every message seen.
    pub async fn wait_for(&self, what: &str, done: impl FnMut(&EventLog) -> bool) {
        self.wait_for_within(WAIT, what, done).await;
    }

    /// [`Self::wait_for`] with another deadline.
    pub async fn wait_for_within(
        &self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&EventLog) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; events so far:\n{}",
                self.dump()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the first event on `subject` matching `wanted`, returns it.
    pub async fn wait_event(&self, subject: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        self.wait_for(&format!("a matching {subject}"), |log| {
            found = log.of(subject).into_iter().find(|v| wanted(v));
            found.is_some()
        })
        .await;
        found.expect("found before the wait ended")
    }

    /// Waits until the log has read every message stored before this call
    /// (up to the stream's last sequence at the time).
    pub async fn sync(&self) {
        let mut stream = self
            .js
            .get_stream("BACKUPS")
            .await
            .expect("the BACKUPS stream exists");
        let last = stream
            .info()
            .await
            .expect("BACKUPS stream info")
            .state
            .last_sequence;
        let deadline = Instant::now() + WAIT;
        loop {
            let read = self
                .events
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .last()
                .map_or(0, |e| e.sequence);
            if read >= last {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the event log read up to #{read}, not #{last}; events so far:\n{}",
                self.dump()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

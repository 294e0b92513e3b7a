//! Which dumper serves which database, when one dumper runs per
//! PostgreSQL server.
//!
//! Every dumper reads every `backup.trigger` through its own durable
//! consumer (named `DUMPER_NAME`), so a trigger for every database reaches
//! them all and each dumps its own. A trigger for one database is dumped by
//! the dumper that has it in `BACKUP_DATABASES`; the others must tell
//! "someone else serves it" (ignore it) from "nobody does" (reject it with
//! `dump.failed`, stage `trigger`). That is what this registry answers: a
//! JetStream key-value bucket, [`BUCKET`], holding one entry per database,
//! written by the dumper that serves it at start-up and every
//! [`REFRESH_EVERY`]. The bucket keeps an entry for [`ENTRY_TTL`] (its
//! `max_age`), so a dumper that is gone drops out without anybody cleaning
//! up after it.
//!
//! Retries: none here. A bucket that cannot be opened at start-up (an old
//! server, or a NATS user without the permissions) leaves the dumper
//! without a registry: it then rejects every database it does not serve,
//! which is the single-dumper behaviour. A lookup that fails on an open
//! bucket is the caller's to retry (the trigger is redelivered).

use std::time::Duration;

use async_nats::jetstream::kv;
use backup_core::bus::Bus;
use backup_core::names::DatabaseName;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// The key-value bucket of the dumpers' databases.
pub const BUCKET: &str = "backup_dumpers";

/// How often a dumper writes its entries again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(20);

/// How long an entry outlives its last refresh: three refreshes, so one
/// slow refresh does not make a database look unserved.
pub const ENTRY_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[error("the dumpers' registry ({BUCKET}) cannot be read: {0}")]
pub struct RegistryError(String);

impl RegistryError {
    /// A lookup on a bucket that opened fails only while NATS is away.
    pub fn is_transient(&self) -> bool {
        true
    }
}

/// One database's entry: who serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub dumper: String,
}

/// What the registry says of a database this dumper does not serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// A live dumper of that name serves it.
    By(String),
    /// No live dumper serves it (or there is no registry to ask).
    Nowhere,
}

/// This dumper's handle on the registry.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Option<kv::Store>,
    dumper: String,
}

impl Registry {
    /// Opens (or creates) the bucket. Never fails: without a bucket the
    /// dumper works alone (see the module's documentation).
    pub async fn open(bus: &Bus, dumper: &str) -> Registry {
        let js = bus.jetstream();
        let store = match js.get_key_value(BUCKET).await {
            Ok(store) => Ok(store),
            Err(_) => create_bucket(js).await,
        };
        let store = match store {
            Ok(store) => Some(store),
            Err(error) => {
                tracing::warn!(
                    bucket = BUCKET,
                    %error,
                    "cannot use the dumpers' registry; a trigger for a database this dumper \
                     does not serve will be rejected"
                );
                None
            }
        };
        Registry {
            store,
            dumper: dumper.to_owned(),
        }
    }

    /// A registry that knows of no other dumper (tests, and the fallback).
    pub fn alone(dumper: &str) -> Registry {
        Registry {
            store: None,
            dumper: dumper.to_owned(),
        }
    }

    /// Writes this dumper's entry for each of `databases`.
    pub async fn advertise(&self, databases: &[DatabaseName]) {
        let Some(store) = &self.store else { return };
        let entry = serde_json::to_vec(&Entry {
            dumper: self.dumper.clone(),
        })
        .expect("an entry serialises");
        for database in databases {
            if let Err(error) = store.put(database.as_str(), entry.clone().into()).await {
                tracing::warn!(%database, error = %backup_core::one_line(&error.to_string()), "could not advertise a database in the dumpers' registry");
            }
        }
    }

    /// Advertises `databases` now and every [`REFRESH_EVERY`] until
    /// shutdown.
    pub fn spawn_refresh(
        &self,
        databases: Vec<DatabaseName>,
        shutdown: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.store.as_ref()?;
        let registry = self.clone();
        Some(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(REFRESH_EVERY) => {}
                }
                registry.advertise(&databases).await;
            }
        }))
    }

    /// Who serves `database`, a database this dumper does not serve.
    pub async fn served(&self, database: &DatabaseName) -> Result<Served, RegistryError> {
        let Some(store) = &self.store else {
            return Ok(Served::Nowhere);
        };
        let entry = store
            .entry(database.as_str())
            .await
            .map_err(|e| RegistryError(backup_core::one_line(&e.to_string())))?;
        Ok(served_by(entry))
    }
}

/// Creates the bucket's stream as the client's `create_key_value` would,
/// without its account query (whose answer older servers word
/// differently), with as many replicas as the `BACKUPS` stream.
async fn create_bucket(js: &async_nats::jetstream::Context) -> Result<kv::Store, String> {
    use async_nats::jetstream::stream;
    let replicas = match js.get_stream(backup_core::bus::STREAM).await {
        Ok(mut backups) => backups
            .info()
            .await
            .map(|info| info.config.num_replicas)
            .unwrap_or(1),
        Err(_) => 1,
    };
    let config = stream::Config {
        name: format!("KV_{BUCKET}"),
        description: Some("PostgreSQL backup pipeline: the dumper serving each database".into()),
        subjects: vec![format!("$KV.{BUCKET}.>")],
        max_messages_per_subject: 1,
        max_age: ENTRY_TTL,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: replicas.max(1),
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| backup_core::one_line(&e.to_string()))?;
    js.get_key_value(BUCKET)
        .await
        .map_err(|e| backup_core::one_line(&e.to_string()))
}

/// The live dumper named by an entry: a deleted or purged entry, or one
/// that cannot be read, names nobody.
fn served_by(entry: Option<kv::Entry>) -> Served {
    let Some(entry) = entry else {
        return Served::Nowhere;
    };
    if entry.operation != kv::Operation::Put {
        return Served::Nowhere;
    }
    match serde_json::from_slice::<Entry>(&entry.value) {
        Ok(Entry { dumper }) => Served::By(dumper),
        Err(_) => Served::Nowhere,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_name_their_dumper() {
        let text = serde_json::to_string(&Entry {
            dumper: "pg-east".into(),
        })
        .unwrap();
        assert_eq!(text, r#"{"dumper":"pg-east"}"#);
        assert_eq!(served_by(None), Served::Nowhere);
    }

    #[tokio::test]
    async fn without_a_bucket_nothing_is_served_elsewhere() {
        let registry = Registry::alone("dumper");
        let database: DatabaseName = "crm".parse().unwrap();
        assert_eq!(registry.served(&database).await.unwrap(), Served::Nowhere);
        registry.advertise(std::slice::from_ref(&database)).await;
        assert!(
            registry
                .spawn_refresh(vec![database], CancellationToken::new())
                .is_none()
        );
    }
}

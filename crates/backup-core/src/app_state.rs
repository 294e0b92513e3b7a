//! The application state a backup holds, recorded in its manifest so an
//! operator choosing what to restore after a bad deploy does not have to
//! guess: the latest applied migration of each Django app (read from
//! `django_migrations` in the dump's own snapshot) and a free-text version
//! the operator supplies (`BACKUP_APP_VERSION`, e.g. a git commit).
//!
//! Nothing here assumes Django: a database without `django_migrations`
//! has no migration record. The verifier reads the same state from the
//! restored scratch database with [`django_migrations`] and compares it
//! with [`DjangoMigrations::differences`]. No retries here: the callers'
//! transactions decide.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest `BACKUP_APP_VERSION` accepted (one line of free text).
pub const MAX_VERSION_CHARS: usize = 200;

/// The manifest's `application` record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    /// The operator's free-text version of the application (`BACKUP_APP_VERSION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Present when the database has a `django_migrations` table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub django: Option<DjangoMigrations>,
}

impl AppState {
    /// `None` when there is nothing to record, so such manifests carry no
    /// `application` field at all.
    pub fn recorded(version: Option<String>, django: Option<DjangoMigrations>) -> Option<Self> {
        (version.is_some() || django.is_some()).then_some(Self { version, django })
    }

    /// One line for listings: `grading 0042, 31 apps (v2.3.1)`.
    pub fn summary(&self) -> String {
        match (&self.django, &self.version) {
            (Some(django), Some(version)) => format!("{django} ({version})"),
            (Some(django), None) => django.to_string(),
            (None, Some(version)) => version.clone(),
            (None, None) => String::new(),
        }
    }
}

/// What `django_migrations` says: the migration state Django's
/// `migrate --check` compares the code with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DjangoMigrations {
    /// Each app's latest applied migration (by application time).
    pub apps: BTreeMap<String, String>,
    /// How many apps have applied migrations (`apps`' length, for readers
    /// that only want the number).
    pub app_count: u64,
    /// How many migrations are applied in all (rows of `django_migrations`).
    pub applied: u64,
    /// The most recently applied migration of all: what the last deploy did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<Migration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub app: String,
    pub name: String,
}

impl DjangoMigrations {
    /// Builds the record from `(app, name)` rows in the order they were
    /// applied (oldest first).
    pub fn from_applied(rows: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut state = Self::default();
        for (app, name) in rows {
            state.applied += 1;
            state.apps.insert(app.clone(), name.clone());
            state.latest = Some(Migration { app, name });
        }
        state.app_count = state.apps.len() as u64;
        state
    }

    /// Every way `restored` differs from `self` (the manifest's record),
    /// app by app; empty when they match.
    pub fn differences(&self, restored: &DjangoMigrations) -> Vec<String> {
        let mut problems = Vec::new();
        for (app, want) in &self.apps {
            match restored.apps.get(app) {
                Some(got) if got == want => {}
                Some(got) => {
                    problems.push(format!("{app}: {got} restored, {want} in the manifest"))
                }
                None => problems.push(format!(
                    "{app}: no migration restored, {want} in the manifest"
                )),
            }
        }
        for (app, got) in &restored.apps {
            if !self.apps.contains_key(app) {
                problems.push(format!("{app}: {got} restored, not in the manifest"));
            }
        }
        if problems.is_empty() && restored.applied != self.applied {
            problems.push(format!(
                "{} migrations applied after restore, {} in the manifest",
                restored.applied, self.applied
            ));
        }
        problems
    }
}

impl fmt::Display for DjangoMigrations {
    /// `grading 0042, 31 apps`: the last migration's app and number (its
    /// name up to the first `_`), then how many apps.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let apps = match self.app_count {
            1 => "1 app".to_owned(),
            n => format!("{n} apps"),
        };
        match &self.latest {
            Some(latest) => {
                let number = latest.name.split('_').next().unwrap_or(&latest.name);
                write!(f, "{} {number}, {apps}", latest.app)
            }
            None => write!(f, "no migration applied, {apps}"),
        }
    }
}

/// Validates an operator's version text: one line, not blank, bounded.
pub fn parse_version(text: &str) -> Result<Option<String>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if text.chars().any(char::is_control) {
        return Err("must be one line of text".into());
    }
    if text.chars().count() > MAX_VERSION_CHARS {
        return Err(format!("must be at most {MAX_VERSION_CHARS} characters"));
    }
    Ok(Some(text.to_owned()))
}

/// The Django migration state of the database `client` is connected to, in
/// whatever snapshot its current transaction uses; `None` without a
/// `django_migrations` table on the search path.
pub async fn django_migrations(
    client: &tokio_postgres::Client,
) -> Result<Option<DjangoMigrations>, tokio_postgres::Error> {
    let table: Option<String> = client
        .query_one("SELECT to_regclass('django_migrations')::text", &[])
        .await?
        .get(0);
    let Some(table) = table else {
        return Ok(None);
    };
    // `table` is regclass output: already quoted as SQL needs it.
    let rows = client
        .query(
            &format!("SELECT app::text, name::text FROM {table} ORDER BY applied, id"),
            &[],
        )
        .await?;
    Ok(Some(DjangoMigrations::from_applied(
        rows.iter().map(|row| (row.get(0), row.get(1))),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(rows: &[(&str, &str)]) -> DjangoMigrations {
        DjangoMigrations::from_applied(rows.iter().map(|(a, n)| ((*a).into(), (*n).into())))
    }

    #[test]
    fn the_latest_migration_of_each_app_and_of_all() {
        let state = state(&[
            ("contenttypes", "0001_initial"),
            ("auth", "0001_initial"),
            ("grading", "0001_initial"),
            ("auth", "0012_alter_user_first_name_max_length"),
            ("grading", "0042_drop_comment"),
        ]);
        assert_eq!(state.apps["grading"], "0042_drop_comment");
        assert_eq!(state.apps["auth"], "0012_alter_user_first_name_max_length");
        assert_eq!(state.applied, 5);
        assert_eq!(state.app_count, 3);
        assert_eq!(state.to_string(), "grading 0042, 3 apps");
        let app = AppState::recorded(Some("abc123".into()), Some(state)).unwrap();
        assert_eq!(app.summary(), "grading 0042, 3 apps (abc123)");
        assert_eq!(AppState::recorded(None, None), None);
    }

    #[test]
    fn differences_name_the_app() {
        let manifest = state(&[("auth", "0001_initial"), ("grading", "0002_score")]);
        assert!(manifest.differences(&manifest.clone()).is_empty());
        let restored = state(&[("auth", "0001_initial"), ("grading", "0001_initial")]);
        assert_eq!(
            manifest.differences(&restored),
            ["grading: 0001_initial restored, 0002_score in the manifest"]
        );
        let extra = state(&[
            ("auth", "0001_initial"),
            ("grading", "0002_score"),
            ("x", "0001"),
        ]);
        assert_eq!(
            manifest.differences(&extra),
            ["x: 0001 restored, not in the manifest"]
        );
        let fewer = state(&[("grading", "0002_score"), ("auth", "0001_initial")]);
        assert!(
            manifest.differences(&fewer).is_empty(),
            "same apps, same count"
        );
    }

    #[test]
    fn a_manifest_without_the_record_decodes_and_has_no_field() {
        let json = serde_json::to_string(&AppState {
            version: Some("v1".into()),
            django: None,
        })
        .unwrap();
        assert_eq!(json, r#"{"version":"v1"}"#);
        let back: AppState = serde_json::from_str(&json).unwrap();
        assert_eq!(back.django, None);
    }

    #[test]
    fn versions_are_one_bounded_line() {
        assert_eq!(parse_version("  abc123\n"), Ok(Some("abc123".into())));
        assert_eq!(parse_version(" "), Ok(None));
        assert!(parse_version("a\nb").is_err());
        assert!(parse_version(&"x".repeat(201)).is_err());
    }
}

//! What is checked in a restored database: every table's exact row count
//! against the manifest, the application's migration state when the
//! manifest records one, that sequences, large objects and materialized
//! views survived, and the operator's own invariants (`VERIFY_SQL_FILE`).
//!
//! The manifest may carry optional facts (`large_objects`, `sequences`,
//! `materialized_views`; see [`ManifestExtras`]); when it does they are
//! compared exactly, otherwise what can be checked from the restored
//! database alone is (sequences not behind their columns, materialized
//! views populated).

use std::collections::BTreeMap;
use std::time::Instant;

use backup_core::app_state;
use backup_core::manifest::Manifest;
use backup_core::pg::PgTarget;
use serde::Deserialize;

use crate::error::VerifyError;
use crate::millis;

/// Optional manifest fields the dumper may record. Read from the same
/// JSON as the manifest, so older manifests without them still verify.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ManifestExtras {
    /// `count(*)` of `pg_largeobject_metadata`.
    #[serde(default)]
    pub large_objects: Option<u64>,
    /// `last_value` of every sequence (`%I.%I`), `null` if never used.
    #[serde(default)]
    pub sequences: BTreeMap<String, Option<i64>>,
    /// Row count of every materialized view (`%I.%I`).
    #[serde(default)]
    pub materialized_views: BTreeMap<String, u64>,
}

impl ManifestExtras {
    pub fn from_manifest_json(bytes: &[u8]) -> Self {
        serde_json::from_slice(bytes).unwrap_or_default()
    }
}

/// What the checks established.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub checks: Vec<String>,
    pub tables: u64,
    pub rows: u64,
    pub large_objects: u64,
    pub steps: BTreeMap<String, u64>,
}

/// One operator check: must return a single `true`.
#[derive(Debug, Clone)]
pub struct OperatorCheck {
    pub name: String,
    pub sql: String,
}

/// Reads a `VERIFY_SQL_FILE`: statements separated by `;`, each named by
/// the `--` comment line before it.
pub fn load_operator_checks(path: &std::path::Path) -> std::io::Result<Vec<OperatorCheck>> {
    let text = std::fs::read_to_string(path)?;
    Ok(crate::sqlfilter::split_checks(&text)
        .into_iter()
        .map(|(name, sql)| OperatorCheck { name, sql })
        .collect())
}

pub async fn run_checks(
    target: &PgTarget,
    manifest: &Manifest,
    extras: &ManifestExtras,
    operator_checks: &[OperatorCheck],
) -> Result<CheckReport, VerifyError> {
    let mut report = CheckReport::default();
    let client = target.connect("backup-verifier").await?;
    let query_error = |e: tokio_postgres::Error| VerifyError::from(target.query_error(&e));

    let started = Instant::now();
    let restored = backup_core::pg::table_row_counts(&client)
        .await
        .map_err(query_error)?;
    compare_counts(&manifest.tables, &restored)?;
    report.tables = manifest.tables.len() as u64;
    report.rows = manifest.total_rows();
    report.checks.push(format!(
        "exact row counts of {} tables ({} rows)",
        report.tables, report.rows
    ));
    report
        .steps
        .insert("row_counts".into(), millis(started.elapsed()));

    if let Some(line) = check_app_state(&client, manifest)
        .await
        .map_err(|e| match e {
            Found::Query(e) => query_error(e),
            Found::Problem(p) => VerifyError::Integrity(p),
        })?
    {
        report.checks.push(line);
    }

    let started = Instant::now();
    report.checks.push(
        check_sequences(&client, extras)
            .await
            .map_err(|e| match e {
                Found::Query(e) => query_error(e),
                Found::Problem(p) => VerifyError::Integrity(p),
            })?,
    );
    let (line, large_objects) =
        check_large_objects(&client, extras)
            .await
            .map_err(|e| match e {
                Found::Query(e) => query_error(e),
                Found::Problem(p) => VerifyError::Integrity(p),
            })?;
    report.large_objects = large_objects;
    report.checks.push(line);
    report.checks.push(
        check_materialized_views(&client, extras)
            .await
            .map_err(|e| match e {
                Found::Query(e) => query_error(e),
                Found::Problem(p) => VerifyError::Integrity(p),
            })?,
    );
    report
        .steps
        .insert("integrity".into(), millis(started.elapsed()));

    if !operator_checks.is_empty() {
        let started = Instant::now();
        for check in operator_checks {
            run_operator_check(&client, check).await?;
        }
        report.checks.push(format!(
            "{} operator check(s): {}",
            operator_checks.len(),
            operator_checks
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ));
        report
            .steps
            .insert("operator_checks".into(), millis(started.elapsed()));
    }
    Ok(report)
}

/// The manifest's Django migration state must be what the restored
/// `django_migrations` holds; nothing to check (`None`) when the manifest
/// records none.
async fn check_app_state(
    client: &tokio_postgres::Client,
    manifest: &Manifest,
) -> Result<Option<String>, Found> {
    let Some(want) = manifest
        .application
        .as_ref()
        .and_then(|a| a.django.as_ref())
    else {
        return Ok(None);
    };
    let Some(restored) = app_state::django_migrations(client).await? else {
        return Err(Found::Problem(
            "django migrations: the manifest records them but no django_migrations table was restored"
                .into(),
        ));
    };
    let problems = want.differences(&restored);
    if let Some(first) = problems.first() {
        return Err(Found::Problem(format!(
            "django migrations: {} difference(s) from the manifest, first {first}",
            problems.len()
        )));
    }
    Ok(Some(format!(
        "django migrations as in the manifest ({want})"
    )))
}

enum Found {
    Query(tokio_postgres::Error),
    Problem(String),
}

impl From<tokio_postgres::Error> for Found {
    fn from(e: tokio_postgres::Error) -> Self {
        Found::Query(e)
    }
}

/// Sequences: exact `last_value` when the manifest has them; in any case
/// no sequence owned by a column may be behind that column's maximum, or
/// the application's next insert would collide.
async fn check_sequences(
    client: &tokio_postgres::Client,
    extras: &ManifestExtras,
) -> Result<String, Found> {
    let rows = client
        .query(
            "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences \
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            &[],
        )
        .await?;
    let restored: BTreeMap<String, Option<i64>> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut problems = Vec::new();
    for (name, want) in &extras.sequences {
        match restored.get(name) {
            None => problems.push(format!("sequence {name} is missing")),
            Some(got) if got != want => problems.push(format!(
                "sequence {name}: last_value {got:?} restored, {want:?} in the manifest"
            )),
            Some(_) => {}
        }
    }
    // Columns fed by a sequence (serial or identity) and their sequence.
    let owned = client
        .query(
            "SELECT format('%I.%I', sn.nspname, s.relname), format('%I.%I', tn.nspname, t.relname), \
                    quote_ident(a.attname) \
             FROM pg_depend d \
             JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
             JOIN pg_namespace sn ON sn.oid = s.relnamespace \
             JOIN pg_class t ON t.oid = d.refobjid AND t.relkind IN ('r', 'p') \
             JOIN pg_namespace tn ON tn.oid = t.relnamespace \
             JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid \
             JOIN pg_type ty ON ty.oid = a.atttypid AND ty.typname IN ('int2', 'int4', 'int8') \
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass \
               AND d.deptype IN ('a', 'i') \
               AND sn.nspname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await?;
    for row in &owned {
        let sequence: String = row.get(0);
        let table: String = row.get(1);
        let column: String = row.get(2);
        // Names come from format('%I') / quote_ident: already quoted.
        let max: Option<i64> = client
            .query_one(&format!("SELECT max({column})::int8 FROM {table}"), &[])
            .await?
            .get(0);
        let last = restored.get(&sequence).copied().flatten();
        if let Some(max) = max
            && last.is_none_or(|last| last < max)
        {
            problems.push(format!(
                "sequence {sequence} (last_value {last:?}) is behind max({column}) = {max} in {table}"
            ));
        }
    }
    if let Some(first) = problems.first() {
        return Err(Found::Problem(format!(
            "{} sequence problem(s), first: {first}",
            problems.len()
        )));
    }
    Ok(format!(
        "{} sequence(s) present{}, none behind its column ({} checked)",
        restored.len(),
        if extras.sequences.is_empty() {
            ""
        } else {
            " with the manifest's last_value"
        },
        owned.len()
    ))
}

async fn check_large_objects(
    client: &tokio_postgres::Client,
    extras: &ManifestExtras,
) -> Result<(String, u64), Found> {
    let count: i64 = client
        .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
        .await?
        .get(0);
    let count = u64::try_from(count).unwrap_or(0);
    match extras.large_objects {
        Some(want) if want != count => Err(Found::Problem(format!(
            "large objects: {count} restored, {want} in the manifest"
        ))),
        Some(_) => Ok((
            format!("{count} large object(s), as in the manifest"),
            count,
        )),
        None => Ok((format!("{count} large object(s) restored"), count)),
    }
}

async fn check_materialized_views(
    client: &tokio_postgres::Client,
    extras: &ManifestExtras,
) -> Result<String, Found> {
    let rows = client
        .query(
            "SELECT format('%I.%I', schemaname, matviewname), ispopulated FROM pg_matviews \
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            &[],
        )
        .await?;
    let mut problems = Vec::new();
    let mut populated = 0;
    let restored: BTreeMap<String, bool> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (name, is_populated) in &restored {
        if *is_populated {
            populated += 1;
            if let Some(want) = extras.materialized_views.get(name) {
                let got: i64 = client
                    .query_one(&format!("SELECT count(*) FROM {name}"), &[])
                    .await?
                    .get(0);
                if u64::try_from(got).ok() != Some(*want) {
                    problems.push(format!(
                        "materialized view {name}: {got} rows restored, {want} in the manifest"
                    ));
                }
            }
        } else if extras.materialized_views.contains_key(name) {
            problems.push(format!("materialized view {name} was not populated"));
        }
    }
    for name in extras.materialized_views.keys() {
        if !restored.contains_key(name) {
            problems.push(format!("materialized view {name} is missing"));
        }
    }
    if let Some(first) = problems.first() {
        return Err(Found::Problem(format!(
            "{} materialized view problem(s), first: {first}",
            problems.len()
        )));
    }
    Ok(format!(
        "{} materialized view(s), {populated} populated",
        restored.len()
    ))
}

async fn run_operator_check(
    client: &tokio_postgres::Client,
    check: &OperatorCheck,
) -> Result<(), VerifyError> {
    let failed = |detail: String| VerifyError::OperatorCheck {
        name: check.name.clone(),
        detail,
    };
    let rows = client
        .simple_query(&check.sql)
        .await
        .map_err(|e| failed(backup_core::error_chain(&e)))?;
    let values: Vec<Option<String>> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
            _ => None,
        })
        .collect();
    match values.as_slice() {
        [Some(v)] if v == "t" || v == "true" => Ok(()),
        [value] => Err(failed(format!("returned {value:?}, expected true"))),
        other => Err(failed(format!(
            "returned {} rows, expected one row holding true",
            other.len()
        ))),
    }
}

/// Every table of the manifest must come back with the same number of rows,
/// and no table may appear from nowhere.
pub fn compare_counts(
    expected: &BTreeMap<String, u64>,
    restored: &BTreeMap<String, u64>,
) -> Result<(), VerifyError> {
    let mut problems = Vec::new();
    for (table, want) in expected {
        match restored.get(table) {
            Some(got) if got == want => {}
            Some(got) => problems.push(format!("{table}: manifest {want}, restored {got}")),
            None => problems.push(format!("{table}: missing after restore")),
        }
    }
    for table in restored.keys().filter(|t| !expected.contains_key(*t)) {
        problems.push(format!("{table}: not in the manifest"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(VerifyError::RowCounts {
            count: problems.len(),
            first: problems[0].clone(),
            details: problems.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mismatch_is_reported_by_table() {
        let expected = BTreeMap::from([("a.t".to_owned(), 3), ("a.u".to_owned(), 1)]);
        let restored = BTreeMap::from([("a.t".to_owned(), 2), ("a.v".to_owned(), 0)]);
        let err = compare_counts(&expected, &restored)
            .unwrap_err()
            .to_string();
        assert!(err.contains("3 table(s)"), "{err}");
        assert!(err.contains("first a.t: manifest 3, restored 2"), "{err}");
        assert!(err.contains("a.u: missing"), "{err}");
        assert!(err.contains("a.v: not in the manifest"), "{err}");
    }
}

//! PostgreSQL connection settings and the row-count query that the dumper
//! (in the dump's snapshot) and the verifier (in the scratch database) both
//! run, so their results compare exactly. Passwords reach child processes
//! through `PGPASSWORD` in their environment, never through arguments.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::config::{ConfigError, secret_from_env};

/// Where and as whom to connect. Never printed with its password.
#[derive(Debug, Clone)]
pub struct PgTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<SecretString>,
    pub dbname: String,
    /// What `psql`, `pg_dump` and `pg_restore` started for this target call
    /// themselves on the server (`PGAPPNAME`), so their sessions can be
    /// found and ended; libpq's default when `None`.
    pub application_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to PostgreSQL at {target}: {cause}")]
    Connect {
        target: String,
        cause: String,
        transient: bool,
    },
    #[error("query failed on {target}: {cause}")]
    Query { target: String, cause: String },
    #[error("invalid PostgreSQL URL: {0}")]
    Url(String),
}

impl PgError {
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::Connect { transient, .. } => *transient,
            PgError::Query { .. } | PgError::Url(_) => false,
        }
    }
}

/// Libpq-style settings shared by the dumper and the verifier.
#[derive(Debug, Clone, clap::Args)]
pub struct PgArgs {
    /// PostgreSQL host or socket directory (libpq default: the local socket).
    #[arg(long = "pg-host", env = "PGHOST")]
    pub pg_host: Option<String>,
    /// PostgreSQL port.
    #[arg(long = "pg-port", env = "PGPORT", default_value_t = 5432)]
    pub pg_port: u16,
    /// PostgreSQL role (libpq default: the operating-system user). The
    /// password comes from PGPASSWORD or PGPASSWORD_FILE.
    #[arg(long = "pg-user", env = "PGUSER")]
    pub pg_user: Option<String>,
}

impl PgArgs {
    pub fn target(&self, dbname: &str) -> Result<PgTarget, ConfigError> {
        let host = self.pg_host.clone().unwrap_or_else(|| {
            if Path::new("/var/run/postgresql").is_dir() {
                "/var/run/postgresql".into()
            } else {
                "localhost".into()
            }
        });
        let user = self
            .pg_user
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".into());
        Ok(PgTarget {
            host,
            port: self.pg_port,
            user,
            password: secret_from_env("PGPASSWORD")?,
            dbname: dbname.to_owned(),
            application_name: None,
        })
    }
}

impl PgTarget {
    /// Parses a `postgresql://` URL or a key=value connection string.
    pub fn from_url(url: &str) -> Result<Self, PgError> {
        use tokio_postgres::config::Host;
        // The parser ends the credentials at the first '@': with an
        // unencoded '@' in the password, the rest of the password would
        // become the host or database name, which logs show.
        let is_url = ["postgres://", "postgresql://"]
            .iter()
            .any(|scheme| url.starts_with(scheme));
        let before_query = url.split('?').next().unwrap_or(url);
        if is_url && before_query.matches('@').count() > 1 {
            return Err(PgError::Url(
                "more than one '@' before the host: write '@' in the user name or password as %40"
                    .into(),
            ));
        }
        let config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
            // The parser's message never echoes the URL, which may hold a password.
            PgError::Url(e.to_string())
        })?;
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(path)) => path.to_string_lossy().into_owned(),
            None => "localhost".into(),
        };
        Ok(Self {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            user: config
                .get_user()
                .map(str::to_owned)
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "postgres".into()),
            password: config
                .get_password()
                .map(|p| SecretString::from(String::from_utf8_lossy(p).into_owned())),
            dbname: config.get_dbname().unwrap_or("postgres").to_owned(),
            application_name: None,
        })
    }

    pub fn with_dbname(&self, dbname: &str) -> Self {
        Self {
            dbname: dbname.to_owned(),
            ..self.clone()
        }
    }

    /// `user@host:port/dbname`, safe to log.
    pub fn describe(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }

    /// Environment for `pg_dump`, `psql` and friends. libpq reads these, so
    /// the password never appears in `/proc/<pid>/cmdline`.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGDATABASE", self.dbname.clone()),
            ("PGCONNECT_TIMEOUT", "15".into()),
        ];
        if let Some(password) = &self.password {
            env.push(("PGPASSWORD", password.expose_secret().to_owned()));
        }
        if let Some(name) = &self.application_name {
            env.push(("PGAPPNAME", name.clone()));
        }
        env
    }

    pub async fn connect(&self, application: &str) -> Result<tokio_postgres::Client, PgError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(application)
            .connect_timeout(Duration::from_secs(15));
        if let Some(password) = &self.password {
            config.password(password.expose_secret());
        }
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| {
            let transient = e.as_db_error().is_none_or(|db| {
                // Authentication and missing databases will not fix themselves.
                !matches!(db.code().code(), "28P01" | "28000" | "3D000" | "42501")
            });
            PgError::Connect {
                target: self.describe(),
                cause: crate::error_chain(&e),
                transient,
            }
        })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "postgres connection closed");
            }
        });
        Ok(client)
    }

    pub fn query_error(&self, e: &tokio_postgres::Error) -> PgError {
        PgError::Query {
            target: self.describe(),
            cause: crate::error_chain(e),
        }
    }
}

/// Ordinary tables whose rows pg_dump dumps: every `relkind = 'r'` table
/// (partitions included, partitioned parents excluded since their rows live
/// in the partitions) outside the system schemas and not owned by an
/// extension. Names are `%I.%I`, ready to splice into SQL.
const TABLES_SQL: &str = "\
SELECT format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1";

/// Exact row count of every table, in whatever snapshot the client's
/// current transaction uses.
pub async fn table_row_counts(
    client: &tokio_postgres::Client,
) -> Result<BTreeMap<String, u64>, tokio_postgres::Error> {
    let mut counts = BTreeMap::new();
    for row in client.query(TABLES_SQL, &[]).await? {
        let table: String = row.get(0);
        // `table` comes from format('%I.%I'), so it is already quoted.
        let count: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        counts.insert(table, u64::try_from(count).unwrap_or(0));
    }
    Ok(counts)
}

/// Quotes an identifier for SQL (for names we generated ourselves, which
/// are plain already; quoting anyway keeps the rule simple).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_stays_out_of_description() {
        let target =
            PgTarget::from_url("postgresql://bob:s3cr3t@db.example:5433/postgres").unwrap();
        assert_eq!(target.describe(), "bob@db.example:5433/postgres");
        assert!(!format!("{target:?}").contains("s3cr3t"));
        assert!(
            target
                .child_env()
                .iter()
                .any(|(k, v)| *k == "PGPASSWORD" && v == "s3cr3t")
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}

//! PostgreSQL: each source database answers, its role can read every
//! relation pg_dump reads, and a pg_dump as new as the server is installed.

use std::path::Path;

use backup_core::names::DatabaseName;
use backup_core::pg::{PgArgs, quote_ident};
use backup_core::preflight::Check;

const PG_FIX: &str = "check PGHOST, PGPORT, PGUSER and PGPASSWORD (or PGPASSWORD_FILE), and that pg_hba.conf admits this host and role";

/// Relations pg_dump reads (tables, partitioned tables, sequences) that
/// the current role cannot: no SELECT, or no USAGE on the schema (pg_dump
/// locks every table it dumps, which needs both). Superusers and members
/// of `pg_read_all_data` have both everywhere, so one query covers the
/// three ways to be allowed. Objects of extensions are dumped as
/// `CREATE EXTENSION`, not read.
const UNREADABLE_SQL: &str = "\
SELECT format('%I.%I', n.nspname, c.relname),
       count(*) OVER () AS unreadable,
       (SELECT count(*) FROM pg_class c2 JOIN pg_namespace n2 ON n2.oid = c2.relnamespace
         WHERE c2.relkind IN ('r', 'p', 'S')
           AND n2.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n2.nspname NOT LIKE 'pg\\_toast%' AND n2.nspname NOT LIKE 'pg\\_temp%') AS total
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
  AND NOT (has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT'))
ORDER BY 1";

const TOTAL_SQL: &str = "\
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'";

/// One source database: reachable (`postgres.<db>`), readable in full by
/// this role (`postgres.<db>.privileges`), and a pg_dump at least as new
/// as the server, chosen as the dumper chooses (`postgres.<db>.pg_dump`).
pub async fn postgres(
    pg: &PgArgs,
    database: &DatabaseName,
    pg_bin_dir: Option<&Path>,
) -> Vec<Check> {
    let connect_name = format!("postgres.{database}");
    let privileges_name = format!("postgres.{database}.privileges");
    let pg_dump_name = format!("postgres.{database}.pg_dump");
    let unreachable = |check: Check| {
        vec![
            check,
            Check::not_checked(&privileges_name, "no connection"),
            Check::not_checked(&pg_dump_name, "no server version"),
        ]
    };
    let target = match pg.target(database.as_str()) {
        Ok(target) => target,
        Err(e) => return unreachable(Check::fail(&connect_name, e.to_string()).with_fix(PG_FIX)),
    };
    let client = match target.connect("backupctl-doctor").await {
        Ok(client) => client,
        Err(e) => return unreachable(Check::fail(&connect_name, e.to_string()).with_fix(PG_FIX)),
    };
    let row = match client
        .query_one(
            "SELECT current_setting('server_version'), \
                    current_setting('server_version_num')::int, \
                    current_user::text, \
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                    coalesce((SELECT pg_has_role(current_user, oid, 'USAGE') \
                              FROM pg_roles WHERE rolname = 'pg_read_all_data'), false)",
            &[],
        )
        .await
    {
        Ok(row) => row,
        Err(e) => {
            return unreachable(
                Check::fail(&connect_name, target.query_error(&e).to_string()).with_fix(PG_FIX),
            );
        }
    };
    let version: String = row.get(0);
    let version_num: i32 = row.get(1);
    let role: String = row.get(2);
    let superuser: bool = row.get::<_, Option<bool>>(3).unwrap_or(false);
    let reads_all: bool = row.get(4);
    let mut checks = vec![Check::pass(
        &connect_name,
        format!("connected as {}, PostgreSQL {version}", target.describe()),
    )];

    checks.push(match client.query(UNREADABLE_SQL, &[]).await {
        Ok(rows) if rows.is_empty() => {
            let how = if superuser {
                "superuser".to_owned()
            } else if reads_all {
                "member of pg_read_all_data".to_owned()
            } else {
                let total = client
                    .query_one(TOTAL_SQL, &[])
                    .await
                    .map(|r| r.get::<_, i64>(0))
                    .unwrap_or(0);
                format!("SELECT on all {total} tables and sequences")
            };
            Check::pass(&privileges_name, format!("{role} can dump everything ({how})"))
        }
        Ok(rows) => {
            let unreadable: i64 = rows[0].get(1);
            let total: i64 = rows[0].get(2);
            let names: Vec<String> = rows.iter().take(5).map(|r| r.get(0)).collect();
            let more = if unreadable > 5 { ", …" } else { "" };
            let fix = if version_num >= 140_000 {
                format!(
                    "GRANT pg_read_all_data TO {}; (or run the dumper as the owner of every table)",
                    quote_ident(&role)
                )
            } else {
                "GRANT SELECT ON ALL TABLES IN SCHEMA <schema> TO the role, and the same ON ALL SEQUENCES, with USAGE on each schema (or run the dumper as the owner of every table)".to_owned()
            };
            Check::fail(&privileges_name, format!(
                    "{role} cannot read {unreadable} of {total} tables and sequences: {}{more}; pg_dump would fail",
                    names.join(", ")
                )).with_fix(fix)
        }
        Err(e) => Check::fail(&privileges_name, target.query_error(&e).to_string()).with_fix("run doctor as the dumper's role on this database"),
    });

    let major = backup_core::pg_dump::server_major(u32::try_from(version_num).unwrap_or(0));
    checks.push(match backup_core::pg_dump::select(major, pg_bin_dir).await {
        Ok((path, pg_dump_version)) => Check::pass(
            &pg_dump_name,
            format!(
                "{pg_dump_version} at {} can dump this PostgreSQL {major} server",
                path.display()
            ),
        ),
        Err(e) => Check::fail(&pg_dump_name, e.to_string()).with_fix(format!(
                "install postgresql-client-{major} (or newer) beside the dumper, or point PG_BIN_DIR at such a pg_dump's directory"
            )),
    });
    checks
}

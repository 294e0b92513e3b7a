//! Section 6 of `docs/runbooks/database-restore.md` ("Roll back a deploy")
//! run for real: a small Django project (`tests/fixtures/django`, in the
//! virtual environment `scripts/install-deps.sh` makes from PyPI) migrated
//! to state A, a `pre-deploy` backup taken by the real dumper, shipper and
//! verifier, a bad release B whose migration drops a column with data,
//! then the runbook's own blocks bring A back, and Django itself checks
//! the result.

use std::time::Instant;

use test_support::nats::NatsServer;
use test_support::process::ServiceProcess;

use super::*;
use crate::runbook::{run_runbook, runbook_blocks};

/// Where the virtual environment with Django and psycopg lives; the
/// variable overrides the path install-deps.sh uses.
const VENV_VARIABLE: &str = "BACKUP_TEST_DJANGO_VENV";
const DEFAULT_VENV: &str = "/opt/backup-test/django-venv";

fn django_python() -> PathBuf {
    let venv = std::env::var_os(VENV_VARIABLE)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_VENV));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "no Django virtual environment at {} ({VENV_VARIABLE}): run scripts/install-deps.sh \
         --throwaway-machine, which makes it with Django and psycopg from PyPI",
        venv.display()
    );
    python
}

/// A copy of the fixture project: release A as it stands, or release B
/// (`release_b/` laid over it).
fn project(release_b: bool) -> tempfile::TempDir {
    let fixture =
        test_support::process::workspace_root().join("crates/backupctl/tests/fixtures/django");
    let dir = tempfile::tempdir().expect("project dir");
    let to = dir.path().display().to_string();
    let from = fixture.display().to_string();
    let mut script = format!("cp -r '{from}/.' '{to}/' && rm -rf '{to}/release_b'");
    if release_b {
        script.push_str(&format!(" && cp -r '{from}/release_b/.' '{to}/'"));
    }
    run_ok(Command::new("bash").args(["-c", &script]));
    dir
}

/// `python manage.py ARGS` of `project` against `database`.
fn manage(python: &Path, project: &Path, database: &str, args: &[&str]) -> Output {
    Command::new(python)
        .arg(project.join("manage.py"))
        .args(args)
        .env("DJANGO_DB_NAME", database)
        .envs(test_support::postgres::pg_env())
        .stdin(Stdio::null())
        .output()
        .expect("run manage.py")
}

fn manage_ok(python: &Path, project: &Path, database: &str, args: &[&str]) -> String {
    let out = manage(python, project, database, args);
    assert!(out.status.success(), "manage.py {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The comments of every score, read through Django's ORM.
const READ_COMMENTS: &str = "from grading.models import Score
print('|'.join(Score.objects.order_by('id').values_list('comment', flat=True)))";

#[test]
fn runbook_section_6_rolls_back_a_bad_django_deploy() {
    let python = django_python();
    let started = Instant::now();
    let rig = Rig::start();
    let nats = NatsServer::start();
    let source = TestDatabase::create("bctl_django");
    let db = source.name.clone();
    let previous = project(false);
    let new = project(true);

    // State A: the previous release migrated, with data in the column the
    // next release drops.
    manage_ok(
        &python,
        previous.path(),
        &db,
        &["migrate", "--no-input", "-v", "0"],
    );
    manage_ok(
        &python,
        previous.path(),
        &db,
        &[
            "shell",
            "-v",
            "0",
            "-c",
            "from grading.models import Score
Score.objects.bulk_create(Score(student=f's{i}', points=i, comment=f'comment {i}') for i in range(1, 21))",
        ],
    );
    let comments_a = manage_ok(
        &python,
        previous.path(),
        &db,
        &["shell", "-v", "0", "-c", READ_COMMENTS],
    );
    assert!(comments_a.contains("comment 20"), "{comments_a}");
    let setup_done = started.elapsed();

    // The pipeline that takes the pre-deploy backup.
    let spool = tempfile::tempdir().expect("spool");
    let mut env: Vec<(String, String)> = vec![
        ("NATS_URL".into(), nats.url.clone()),
        ("BACKUP_DATABASES".into(), db.clone()),
        ("BACKUP_SCHEDULE".into(), "off".into()),
        (
            "BACKUP_SPOOL_DIR".into(),
            spool.path().display().to_string(),
        ),
        ("BACKUP_APP_VERSION".into(), "release-a".into()),
        (
            "VERIFY_DATABASE_URL".into(),
            "postgresql://postgres@127.0.0.1:5432/postgres".into(),
        ),
        (
            "VERIFY_SCRATCH_PREFIX".into(),
            format!("vfy{}", db.rsplit('_').next().expect("hex suffix")),
        ),
        ("SHUTDOWN_GRACE".into(), "2s".into()),
        ("RUST_LOG".into(), "info".into()),
    ];
    env.extend(rig.env());
    env.extend(test_support::postgres::pg_env());
    let _services: Vec<ServiceProcess> = ["dumper", "shipper", "verifier"]
        .into_iter()
        .map(|name| {
            let service = ServiceProcess::spawn(name, &[], &env);
            assert!(
                service.wait_for_log("waiting for work", Duration::from_secs(60)),
                "{name} did not start:\n{}",
                service.log()
            );
            service
        })
        .collect();
    // The previous release, running: a Django process holding a connection.
    let python_path = python.display().to_string();
    let manage_py = previous.path().join("manage.py").display().to_string();
    let mut app = ServiceProcess::spawn(
        &python_path,
        &[
            &manage_py,
            "shell",
            "-v",
            "0",
            "-c",
            "from django.db import connection\nconnection.ensure_connection()\nimport time\ntime.sleep(600)",
        ],
        &[
            [("DJANGO_DB_NAME".to_owned(), db.clone())].as_slice(),
            test_support::postgres::pg_env().as_slice(),
        ]
        .concat(),
    );

    // The site's commands of section 6, for this machine.
    let vars = format!(
        "set -e
DB={db}
RELEASE=release-b PREVIOUS=release-a
SERVER=postgresql://postgres@127.0.0.1:5432
new_manage() {{ DJANGO_DB_NAME=$DB '{python}' '{new}/manage.py' \"$@\"; }}
previous_manage() {{ DJANGO_DB_NAME=$DB '{python}' '{previous}/manage.py' \"$@\"; }}
stop_app() {{ kill {app_pid}; }}
start_previous() {{ previous_manage check --database default; }}
admin_psql() {{ psql -X -v ON_ERROR_STOP=1 -d postgres \"$@\"; }}",
        python = python.display(),
        new = new.path().display(),
        previous = previous.path().display(),
        app_pid = app.pid(),
    );
    let ctl_env = vec![
        ("NATS_URL".to_owned(), nats.url.clone()),
        ("BACKUP_DATABASES".to_owned(), db.clone()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ];

    // 6.1: the deploy hook takes the backup, then release B migrates.
    let hook = runbook_blocks("### 6.1");
    assert_eq!(hook.len(), 1, "6.1 lost its block: {hook:?}");
    let deployed = run_runbook(&rig, &vars, &hook, &ctl_env);
    assert!(deployed.out.status.success(), "{}", deployed.report);
    let deploy_done = started.elapsed();
    let columns = source.query(
        "SELECT count(*) FROM information_schema.columns \
         WHERE table_name = 'grading_score' AND column_name = 'comment'",
    );
    assert_eq!(columns.trim(), "0", "release B dropped the column");

    // The real dumper recorded state A in the pre-deploy backup's manifest.
    let listed = rig.backupctl(
        &["list", "--database", &db, "--tag", "pre-deploy", "--json"],
        &[],
    );
    assert!(listed.status.success(), "{}", text(&listed));
    let entries: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    let [entry] = entries.as_array().expect("array").as_slice() else {
        panic!("one pre-deploy backup: {entries:#}");
    };
    let pre_deploy = entry["artifact"].as_str().expect("artifact").to_owned();
    let application = &entry["application"];
    // The dumper's own manifest, as docs/events.md shows it.
    let manifest_path = spool
        .path()
        .join(&db)
        .join(format!("{pre_deploy}.manifest.json"));
    let manifest = std::fs::read_to_string(&manifest_path).expect("the manifest in the spool");
    eprintln!("the pre-deploy backup's manifest:\n{manifest}");
    let manifest: serde_json::Value = serde_json::from_str(&manifest).expect("JSON");
    assert_eq!(
        &manifest["application"], application,
        "list --json shows the whole record"
    );
    assert_eq!(entry["verified"], true, "{entry:#}");
    assert_eq!(application["version"], "release-a", "{entry:#}");
    assert_eq!(
        application["django"]["apps"]["grading"], "0001_initial",
        "{entry:#}"
    );
    assert_eq!(application["django"]["app_count"], 3, "{entry:#}");
    assert_eq!(application["django"]["applied"], 15, "{entry:#}");

    // 6.2 to 6.5: pick, restore, swap, check, as the runbook says.
    let mut blocks = Vec::new();
    for heading in ["### 6.2", "### 6.3", "### 6.4", "### 6.5"] {
        let found = runbook_blocks(heading);
        assert!(!found.is_empty(), "{heading} lost its block");
        blocks.extend(found);
    }
    let rollback_started = Instant::now();
    let rollback = run_runbook(&rig, &vars, &blocks, &ctl_env);
    let rollback_took = rollback_started.elapsed();
    let broken = rollback
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("BROKEN="))
        .map(|name| TestDatabase {
            name: name.to_owned(),
        });
    assert!(rollback.out.status.success(), "{}", rollback.report);
    assert!(broken.is_some(), "{}", rollback.report);
    assert!(
        rollback.stdout.contains(&format!("ARTIFACT={pre_deploy}")),
        "{}",
        rollback.report
    );
    assert!(
        rollback
            .report
            .contains("application state: grading 0001, 3 apps (release-a)"),
        "restore shows the state first: {}",
        rollback.report
    );
    assert!(
        rollback
            .stdout
            .contains("ok: django migrations as in the manifest"),
        "{}",
        rollback.report
    );
    assert!(
        rollback
            .stdout
            .contains("migrations: as the previous release expects"),
        "{}",
        rollback.report
    );
    assert!(
        app.wait_timeout(Duration::from_secs(30)).is_some(),
        "stop_app stopped the application"
    );

    // Django itself: state A, the comments back, B's migration unapplied.
    let check = manage(&python, previous.path(), &db, &["migrate", "--check"]);
    assert!(check.status.success(), "{}", text(&check));
    let comments = manage_ok(
        &python,
        previous.path(),
        &db,
        &["shell", "-v", "0", "-c", READ_COMMENTS],
    );
    assert_eq!(comments, comments_a, "the dropped data is back");
    let new_check = manage(&python, new.path(), &db, &["migrate", "--check"]);
    assert!(
        !new_check.status.success(),
        "release B's migration is unapplied again: {}",
        text(&new_check)
    );
    eprintln!(
        "django round trip: setup {:.1}s, backup and deploy {:.1}s, rollback {:.1}s, total {:.1}s",
        setup_done.as_secs_f64(),
        (deploy_done - setup_done).as_secs_f64(),
        rollback_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

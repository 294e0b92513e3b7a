//! The S3 destination (moto): `backupctl list --from s3` and `restore
//! --from s3` read the bucket's copy (the SFTP copy is gone, so nothing
//! else could answer), and `backupctl doctor` reports the bucket's Object
//! Lock against `S3_OBJECT_LOCK_DAYS` (`s3.object_lock`) with the bucket as
//! the only destination (the `sftp` check skipped).

use remote_s3::{S3Remote, S3Settings};
use test_support::moto::MotoServer;

use super::*;

const PREFIX: &str = "pg";

fn s3_env(moto: &MotoServer, bucket: &str) -> Vec<(String, String)> {
    moto.env(bucket, PREFIX)
}

#[test]
fn list_and_restore_read_the_s3_copy_with_from_s3() {
    let rig = Rig::start();
    let mut moto = MotoServer::start();
    moto.create_bucket("backups", true);
    let source = source_database();
    let database = database_name(&source);
    let artifact = rig.publish_backup(&source, &database, at(60), ArtifactKind::PLAIN_GZIP, true);

    // The shipper's copy in the bucket: the same three files, then the
    // SFTP copy is removed.
    let dir = PathBuf::from(rig.remote_dir()).join(database.as_str());
    let mut settings = S3Settings::new(
        Some(moto.endpoint.clone()),
        "backups",
        &moto.access_key_id,
        moto.secret_access_key.clone().into(),
    );
    settings.prefix = PREFIX.into();
    let remote = S3Remote::connect(&settings).expect("S3 client");
    for name in [
        artifact.to_string(),
        artifact.manifest_name(),
        artifact.verified_name(),
    ] {
        let bytes = std::fs::read(dir.join(&name)).expect("the SFTP copy");
        rig.runtime
            .block_on(remote.put_small(&remote.key(database.as_str(), &name), &bytes))
            .expect("put into the bucket");
        std::fs::remove_file(dir.join(&name)).expect("remove the SFTP copy");
    }

    let env = s3_env(&moto, "backups");
    let listed = |from: &str| {
        let args = [
            "list",
            "--json",
            "--database",
            database.as_str(),
            "--from",
            from,
        ];
        let out = rig.backupctl(&args, &env);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let entries: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        entries
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| (e["artifact"].clone(), e["verified"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed("s3"),
        vec![(
            serde_json::json!(artifact.as_str()),
            serde_json::json!(true),
        )]
    );
    assert!(listed("sftp").is_empty());

    let target = TestDatabase::create("bctl_dst");
    let mut restore_env = env.clone();
    restore_env.push(("RESTORE_TARGET_URL".to_owned(), target.url()));
    let out = rig.backupctl(
        &[
            "restore",
            "--from",
            "s3",
            "--latest",
            "--database",
            database.as_str(),
            "--yes",
        ],
        &restore_env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("restored {artifact} ")),
        "{}",
        text(&out)
    );
    assert_eq!(target.row_counts(), source.row_counts());
}

#[test]
fn the_doctor_reports_the_buckets_object_lock_with_s3_as_the_only_destination() {
    let mut moto = MotoServer::start();
    moto.create_bucket("locked", true);
    moto.create_bucket("plain", false);
    let closed = test_support::PortReservation::new();
    let spool = tempfile::tempdir().expect("spool");
    let object_lock = |bucket: &str, days: Option<&str>| {
        let mut command = Command::new(workspace_bin("backupctl"));
        command
            .args(["doctor", "--json"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .envs(s3_env(&moto, bucket))
            // Nothing else is set up: NATS and PostgreSQL on a closed
            // port (never the host's own servers).
            .env("NATS_URL", format!("nats://127.0.0.1:{}", closed.port()))
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", closed.port().to_string())
            .env("PGDATABASE", "app")
            .env("BACKUP_SPOOL_DIR", spool.path())
            .stdin(Stdio::null());
        if let Some(days) = days {
            command.env("S3_OBJECT_LOCK_DAYS", days);
        }
        let out = command.output().expect("run backupctl doctor");
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
        let check = |name: &str| {
            report["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == name)
                .unwrap_or_else(|| panic!("no {name} in {report}"))
                .clone()
        };
        // No SFTP_* at all: the bucket is the only destination, which is
        // a set-up, not a failure.
        let sftp = check("sftp");
        assert_eq!(sftp["verdict"], "skip", "{sftp}");
        assert!(
            sftp["detail"].as_str().unwrap().contains("S3 only"),
            "{sftp}"
        );
        check("s3.object_lock")
    };

    let on = object_lock("locked", Some("30"));
    assert_eq!(on["verdict"], "pass", "{on}");
    assert!(on["detail"].as_str().unwrap().contains("30 days"), "{on}");

    let refused = object_lock("plain", Some("30"));
    assert_eq!(refused["verdict"], "fail", "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("S3_OBJECT_LOCK_DAYS=30 but s3://plain/pg"),
        "{refused}"
    );
    assert!(refused["fix"].as_str().unwrap().contains("Object Lock"));

    let neither = object_lock("plain", None);
    assert_eq!(neither["verdict"], "skip", "{neither}");
    assert!(
        neither["fix"]
            .as_str()
            .unwrap()
            .contains("S3_OBJECT_LOCK_DAYS"),
        "{neither}"
    );
}

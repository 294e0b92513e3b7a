//! The store against a real sshd: `(database, name)` addressing over
//! `<SFTP_DIR>/<database>/<name>`, what a missing database or file looks
//! like, bounded reads, streaming reads, atomic writes and removal; the
//! same over an S3 bucket (moto) with Object Lock dates and refusals.

use backup_core::names::DatabaseName;
use backup_core::sftp::SftpTarget;
use remote_store::{StoreError, StoreTarget, targets};
use test_support::sshd::Sshd;
use tokio::io::AsyncReadExt;

fn db(name: &str) -> DatabaseName {
    name.parse().expect("valid database name")
}

#[tokio::test]
async fn files_are_addressed_by_database_and_name() {
    let sshd = Sshd::start();
    let base = sshd.backups_dir();
    std::fs::create_dir_all(base.join("viatique")).expect("mkdir");
    std::fs::create_dir_all(base.join("not a database!")).expect("mkdir");
    std::fs::write(base.join("viatique/dump.sql.gz"), vec![7u8; 300_000]).expect("write");
    std::fs::write(base.join("stray.txt"), b"x").expect("write");
    sshd.hand_over(&sshd.remote_root);
    let all = targets(
        Some(SftpTarget {
            settings: test_support::pipeline::sftp_settings(&sshd),
            dir: base.display().to_string(),
        }),
        None,
        None,
    );
    let target: &StoreTarget = &all[0];
    assert_eq!(
        target.describe(),
        format!(
            "sftp://{}@127.0.0.1:{}{}",
            sshd.user,
            sshd.port,
            base.display()
        )
    );
    let store = target.connect().await.expect("connect");
    let viatique = db("viatique");

    assert_eq!(
        store.list_databases().await.unwrap(),
        std::slice::from_ref(&viatique)
    );
    assert_eq!(
        store.location(&viatique),
        format!("{}/viatique", base.display())
    );
    // Nothing stored for a database: an empty listing, not an error.
    assert!(store.list(&db("other")).await.unwrap().is_empty());

    store
        .write_small(&viatique, "dump.sql.gz.verified.json", b"{}")
        .await
        .expect("write a record");
    let mut listed = store.list(&viatique).await.unwrap();
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["dump.sql.gz", "dump.sql.gz.verified.json"]);
    assert_eq!(listed[0].size, 300_000);
    assert!(listed[0].modified.is_some());
    assert_eq!(listed[0].retain_until, None);

    let stat = store.stat(&viatique, "dump.sql.gz").await.unwrap().unwrap();
    assert_eq!(stat.size, 300_000);
    assert_eq!(store.stat(&viatique, "missing").await.unwrap(), None);

    assert_eq!(
        store
            .read_small(&viatique, "dump.sql.gz.verified.json", 16)
            .await
            .unwrap(),
        b"{}"
    );
    let too_large = store.read_small(&viatique, "dump.sql.gz", 16).await;
    assert!(matches!(too_large, Err(ref e) if !e.is_transient() && !e.is_not_found()));

    let mut reader = store.open_read(&viatique, "dump.sql.gz").await.unwrap();
    assert_eq!(reader.size(), Some(300_000));
    let mut read = Vec::new();
    reader.read_to_end(&mut read).await.expect("stream");
    assert_eq!(read, vec![7u8; 300_000]);

    store
        .remove(&viatique, "dump.sql.gz.verified.json")
        .await
        .expect("remove");
    let again: Result<(), StoreError> = store.remove(&viatique, "dump.sql.gz.verified.json").await;
    assert!(again.unwrap_err().is_not_found());
    let missing = store
        .read_small(&viatique, "missing", 16)
        .await
        .unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    store.close().await;
}

/// The same addressing over an S3 bucket (moto) with Object Lock: keys
/// `<prefix>/<database>/<name>`, retention dates in the listing, and a
/// locked object that cannot be removed.
#[tokio::test]
async fn s3_objects_are_addressed_by_database_and_name_with_their_locks() {
    use remote_s3::{LockMode, ObjectLock, S3Error, S3Settings};
    let mut moto = test_support::moto::MotoServer::start();
    moto.create_bucket("backups", true);
    let mut settings = S3Settings::new(
        Some(moto.endpoint.clone()),
        "backups",
        &moto.access_key_id,
        moto.secret_access_key.clone().into(),
    );
    settings.prefix = "pg".into();
    let plain = targets(None, None, Some(settings.clone()));
    settings.object_lock = Some(ObjectLock {
        days: 1,
        mode: LockMode::Governance,
    });
    let locking = targets(None, None, Some(settings));
    assert_eq!(plain[0].label, "s3");
    let store = plain[0].connect().await.expect("client");
    let locked_store = locking[0].connect().await.expect("client");
    let viatique = db("viatique");

    assert!(store.list_databases().await.unwrap().is_empty());
    assert!(store.list(&viatique).await.unwrap().is_empty());
    assert_eq!(store.location(&viatique), "s3://backups/pg/viatique");

    store
        .write_small(&viatique, "a.verified.json", b"{}")
        .await
        .unwrap();
    locked_store
        .write_small(&viatique, "b.sql.gz", &[7u8; 3000])
        .await
        .unwrap();
    assert_eq!(
        store.list_databases().await.unwrap(),
        std::slice::from_ref(&viatique)
    );
    let mut listed = store.list(&viatique).await.unwrap();
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a.verified.json", "b.sql.gz"]);
    assert_eq!(listed[0].retain_until, None);
    let until = listed[1].retain_until.expect("a retention date");
    assert!(listed[1].locked_at(chrono::Utc::now()));
    assert_eq!(listed[1].size, 3000);
    assert_eq!(
        store
            .stat(&viatique, "b.sql.gz")
            .await
            .unwrap()
            .unwrap()
            .retain_until,
        Some(until)
    );
    assert_eq!(store.stat(&viatique, "missing").await.unwrap(), None);

    assert_eq!(
        store
            .read_small(&viatique, "a.verified.json", 16)
            .await
            .unwrap(),
        b"{}"
    );
    let mut reader = store.open_read(&viatique, "b.sql.gz").await.unwrap();
    assert_eq!(reader.size(), Some(3000));
    let mut read = Vec::new();
    reader.read_to_end(&mut read).await.expect("stream");
    assert_eq!(read, vec![7u8; 3000]);

    let refused = store.remove(&viatique, "b.sql.gz").await.unwrap_err();
    assert!(
        matches!(refused, StoreError::S3(S3Error::Locked { .. })),
        "{refused}"
    );
    assert!(!refused.is_transient() && !refused.is_not_found());
    store.remove(&viatique, "a.verified.json").await.unwrap();
    let again = store
        .remove(&viatique, "a.verified.json")
        .await
        .unwrap_err();
    assert!(again.is_not_found(), "{again}");
    let missing = store
        .read_small(&viatique, "missing", 16)
        .await
        .unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    store.close().await;
}

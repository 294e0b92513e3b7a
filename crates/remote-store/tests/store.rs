//! The store against a real sshd: `(database, name)` addressing over
//! `<SFTP_DIR>/<database>/<name>`, what a missing database or file looks
//! like, bounded reads, streaming reads, atomic writes and removal.

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

//! Object Lock: every object written with a retention date, which `head`
//! reads back and which makes a delete fail as `Locked`.

use remote_s3::{LockMode, ObjectLock, S3Error};

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_locked_object_cannot_be_deleted_and_head_reports_its_date() {
    let mut moto = MotoServer::start();
    moto.create_bucket(BUCKET, true);
    let mut settings = settings(&moto, BUCKET);
    settings.object_lock = Some(ObjectLock {
        days: 2,
        mode: LockMode::Governance,
    });
    let remote = S3Remote::connect(&settings).unwrap();
    let posture = remote.posture().await.unwrap();
    assert!(posture.object_lock_enabled, "{posture:?}");
    assert_eq!(posture.writes_retention, settings.object_lock);

    let before = chrono::Utc::now();
    let data = pseudo_random(12_000_000, 5);
    let key = remote.key("viatique", "locked-multipart");
    remote
        .upload(
            &key,
            &data[..],
            data.len() as u64,
            &sha256_hex(&data),
            &|_| {},
        )
        .await
        .unwrap();
    let small_key = remote.key("viatique", "locked-small");
    remote.put_small(&small_key, b"manifest").await.unwrap();
    for key in [&key, &small_key] {
        let until = remote
            .head(key)
            .await
            .unwrap()
            .unwrap()
            .retain_until
            .expect("a retention date");
        let days = (until - before).num_hours();
        assert!((47..=49).contains(&days), "retained until {until}");

        let error = remote.delete(key).await.unwrap_err();
        assert!(matches!(error, S3Error::Locked { .. }), "{error}");
        assert!(!error.is_transient());
        assert!(error.to_string().contains("Object Lock"), "{error}");
        assert!(remote.head(key).await.unwrap().is_some(), "{key} is gone");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_object_lock_objects_are_deleted_for_good() {
    let mut moto = MotoServer::start();
    moto.create_bucket(BUCKET, false);
    let remote = remote(&moto, BUCKET);
    let posture = remote.posture().await.unwrap();
    assert!(!posture.object_lock_enabled, "{posture:?}");
    assert_eq!(posture.writes_retention, None);
    let key = remote.key("viatique", "plain");
    remote.put_small(&key, b"x").await.unwrap();
    assert_eq!(remote.head(&key).await.unwrap().unwrap().retain_until, None);
    remote.delete(&key).await.unwrap();
    assert_eq!(remote.head(&key).await.unwrap(), None);
    assert!(keys_in(&moto, BUCKET).is_empty());
    assert!(remote.delete(&key).await.unwrap_err().is_not_found());
}

//! The same backups on the SFTP server and in an S3 bucket (moto) with
//! Object Lock: the backup the policy deletes is pruned from SFTP, and
//! kept on S3 because its lock has not run out. `dump.pruned` for the
//! bucket says so, and nothing is deleted from it. With `PRUNE_S3_*`, the
//! pruner deletes with its own key, not the shipper's.

use remote_s3::{LockMode, ObjectLock, S3Remote, S3Settings};
use test_support::moto::MotoServer;

use super::*;

const BUCKET: &str = "backups";
const PREFIX: &str = "pg";

fn s3_settings(moto: &MotoServer, lock: Option<ObjectLock>) -> S3Settings {
    let mut settings = S3Settings::new(
        Some(moto.endpoint.clone()),
        BUCKET,
        &moto.access_key_id,
        moto.secret_access_key.clone().into(),
    );
    settings.prefix = PREFIX.into();
    settings.object_lock = lock;
    settings
}

fn keys_in(moto: &MotoServer) -> BTreeSet<String> {
    moto.python(&format!(
        "for o in s3.list_objects_v2(Bucket={BUCKET:?}).get('Contents', []): print(o['Key'])"
    ))
    .lines()
    .map(str::to_owned)
    .collect()
}

/// Four verified nights kept by the policy and a failed night it deletes,
/// on the SFTP server: `(directory, kept, failed night)`.
fn seed_nights(rig: &Rig) -> (PathBuf, Vec<ArtifactName>, ArtifactName) {
    let dir = rig.dir("viatique");
    let kept: Vec<ArtifactName> = (1..=4)
        .map(|day| {
            seed(
                &dir,
                "viatique",
                at(2025, 3, day, 1, 30),
                State::Verified,
                None,
            )
        })
        .collect();
    // Never verified and long past the grace: the policy deletes it.
    let failed_night = seed(
        &dir,
        "viatique",
        at(2025, 3, 2, 12, 0),
        State::NoRecord,
        None,
    );
    rig.hand_over_to_sftp_user();
    (dir, kept, failed_night)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_locked_backup_is_kept_on_s3_while_its_sftp_copy_is_pruned() {
    let rig = Rig::start();
    let mut moto = MotoServer::start();
    moto.create_bucket(BUCKET, true);
    let (dir, kept, failed_night) = seed_nights(&rig);

    // The same files in the bucket; the failed night's artifact and
    // manifest were written under a retention of one day.
    let plain = S3Remote::connect(&s3_settings(&moto, None)).unwrap();
    let locked = S3Remote::connect(&s3_settings(
        &moto,
        Some(ObjectLock {
            days: 1,
            mode: LockMode::Governance,
        }),
    ))
    .unwrap();
    let locked_names = [failed_night.to_string(), failed_night.manifest_name()];
    for name in files_in(&dir) {
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        let remote = if locked_names.contains(&name) {
            &locked
        } else {
            &plain
        };
        remote
            .put_small(&remote.key("viatique", &name), &bytes)
            .await
            .expect("put into the bucket");
    }
    let until = plain
        .head(&plain.key("viatique", failed_night.as_str()))
        .await
        .unwrap()
        .expect("the locked artifact")
        .retain_until
        .expect("a retention date");
    let in_bucket = keys_in(&moto);
    assert_eq!(in_bucket.len(), files_in(&dir).len());

    let events = Events::connect(&rig.nats.url).await;
    let mut pruner = rig.spawn_pruner(&[
        ("S3_BUCKET", BUCKET),
        ("S3_ENDPOINT", &moto.endpoint),
        ("S3_PREFIX", PREFIX),
        ("S3_ACCESS_KEY_ID", &moto.access_key_id),
        ("S3_SECRET_ACCESS_KEY", &moto.secret_access_key),
    ]);
    events.verified("locked", &kept[3]).await;
    let log = EventLog::follow(&events.js).await;
    let on = |place: &'static str| {
        move |event: &serde_json::Value| {
            event["backup_id"] == "locked"
                && event["destination"]
                    .as_str()
                    .is_some_and(|d| d.starts_with(place))
        }
    };
    let sftp = log.wait_event("dump.pruned", on("sftp://")).await;
    let s3 = log.wait_event("dump.pruned", on("s3://")).await;

    assert_eq!(names(&sftp, "deleted"), strings(&[&failed_night]), "{sftp}");
    assert!(!dir.join(failed_night.as_str()).exists());

    assert_eq!(
        s3["destination"],
        format!("s3://{BUCKET}/{PREFIX} at 127.0.0.1:{}", moto.port)
    );
    assert!(names(&s3, "deleted").is_empty(), "{s3}");
    assert!(names(&s3, "kept").contains(failed_night.as_str()), "{s3}");
    assert_eq!(
        s3["kept_reasons"][failed_night.as_str()],
        serde_json::json!([format!(
            "locked until {}",
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )]),
        "{s3}"
    );
    assert_eq!(keys_in(&moto), in_bucket, "nothing was deleted from S3");
    pruner.terminate(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pruner_deletes_from_s3_with_its_own_key() {
    let rig = Rig::start();
    // IAM on: a wrong key is refused, as on AWS.
    let mut moto = MotoServer::start_authenticated();
    moto.create_bucket(BUCKET, false);
    let (dir, kept, failed_night) = seed_nights(&rig);
    let bucket = S3Remote::connect(&s3_settings(&moto, None)).unwrap();
    for name in files_in(&dir) {
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        bucket
            .put_small(&bucket.key("viatique", &name), &bytes)
            .await
            .expect("put into the bucket");
    }

    let events = Events::connect(&rig.nats.url).await;
    // S3_* holds a shipper's key that this bucket does not know: only the
    // pruner's own key can list and delete.
    let mut pruner = rig.spawn_pruner(&[
        ("S3_BUCKET", BUCKET),
        ("S3_ENDPOINT", &moto.endpoint),
        ("S3_PREFIX", PREFIX),
        ("S3_ACCESS_KEY_ID", "AKIASHIPPERCANNOTDELETE"),
        ("S3_SECRET_ACCESS_KEY", "not-the-pruners-secret"),
        ("PRUNE_S3_ACCESS_KEY_ID", &moto.access_key_id),
        ("PRUNE_S3_SECRET_ACCESS_KEY", &moto.secret_access_key),
    ]);
    events.verified("own-key", &kept[3]).await;
    let log = EventLog::follow(&events.js).await;
    let s3 = log
        .wait_event("dump.pruned", |event: &serde_json::Value| {
            event["backup_id"] == "own-key"
                && event["destination"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("s3://"))
        })
        .await;
    assert_eq!(names(&s3, "deleted"), strings(&[&failed_night]), "{s3}");
    let left = keys_in(&moto);
    assert!(
        !left.contains(&format!("{PREFIX}/viatique/{failed_night}")),
        "{left:?}"
    );
    assert!(left.contains(&format!("{PREFIX}/viatique/{}", kept[3])));
    pruner.terminate(Duration::from_secs(10));
}

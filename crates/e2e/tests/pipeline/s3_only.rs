//! S3 as the only destination: no `SFTP_*` variable at all, as a site
//! without an SFTP account runs it. The five services and `backupctl`
//! start, the backup is shipped to the bucket, restored from it by the
//! verifier and listed from it.

use test_support::moto::MotoServer;

use super::*;

const BUCKET: &str = "korrigo-backups";
const PREFIX: &str = "nightly";

#[test]
fn a_backup_is_verified_with_s3_as_the_only_destination() {
    let rig = Rig::start();
    let mut moto = MotoServer::start();
    moto.create_bucket(BUCKET, false);
    let env: Vec<(String, String)> = rig
        .env()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("SFTP_"))
        .chain(moto.env(BUCKET, PREFIX))
        .collect();
    let _services = rig.spawn_all_with(&env);
    let db = rig.source.name.clone();

    let (status, output) = rig.backupctl_with(
        env.clone(),
        &["trigger", "--database", &db, "--wait", "--timeout", "150s"],
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "backupctl trigger --wait failed:\n{output}"
    );
    let created = last_event(&rig.nats.url, "dump.created");
    let shipped = last_event(&rig.nats.url, "dump.shipped");
    let verified = last_event(&rig.nats.url, "dump.verified");
    let artifact = created["artifact"].as_str().expect("artifact").to_owned();
    assert_eq!(verified["artifact"], artifact.as_str());
    let destination = shipped["destination"].as_str().expect("destination");
    assert!(
        destination.starts_with(&format!("s3://{BUCKET}/{PREFIX}")),
        "{shipped}"
    );
    assert_eq!(verified["copies"][0]["label"], "s3", "{verified}");
    assert_eq!(verified["copies"][0]["proof"], "restored", "{verified}");

    let keys = moto.python(&format!(
        "for o in s3.list_objects_v2(Bucket={BUCKET:?})['Contents']: print(o['Key'])"
    ));
    let keys: BTreeSet<&str> = keys.lines().collect();
    let under = |name: &str| format!("{PREFIX}/{db}/{name}");
    assert_eq!(
        keys,
        BTreeSet::from([
            under(&artifact).as_str(),
            under(&format!("{artifact}.manifest.json")).as_str(),
            under(&format!("{artifact}.verified.json")).as_str(),
        ])
    );
    assert!(
        !rig.remote_dir().exists() || files_in(&rig.remote_dir()).is_empty(),
        "nothing goes to the SFTP server"
    );
    rig.assert_listed_verified(env, &db, &artifact);
}

//! Every copy of a backup is proven: the one on `VERIFY_FROM` restored,
//! the others read back whole; a bad copy is named in `copies_failed`
//! without condemning the backup, whether it is on a second SFTP server
//! or in an S3 bucket (moto).

use super::*;

fn two_copies(verify_from: Option<&'static str>) -> Rig {
    Rig::start(Options {
        second_copy: true,
        verify_from,
        ..NO_OPTIONS
    })
}

/// `(label, proof)` of a copy proven, or `(label, error)` of one failed.
type Labelled = Vec<(String, String)>;

/// `(label, proof)` of each copy proven, and `(label, error)` of each failed.
fn copies(event: &Value) -> (Labelled, Labelled) {
    let list = |field: &str, value: &str| -> Labelled {
        event[field]
            .as_array()
            .map(|copies| {
                copies
                    .iter()
                    .map(|c| {
                        (
                            c["label"].as_str().unwrap().to_owned(),
                            c[value].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    (list("copies", "proof"), list("copies_failed", "error"))
}

fn pair(label: &str, text: &str) -> (String, String) {
    (label.to_owned(), text.to_owned())
}

#[test]
fn a_backup_on_two_servers_is_restored_from_one_and_checksummed_on_the_other() {
    let rig = two_copies(None);
    let (source, file, name) = small_source(&rig);
    let manifest = manifest_for(Some(&source), &source.name, &name, &file);
    let backup_id = rig.ship(&source.name, &file, &manifest);
    let (subject, event) = rig.verdict(&backup_id);
    assert_eq!(subject, "dump.verified", "{event:#}");
    let (proven, failed) = copies(&event);
    assert_eq!(
        proven,
        [pair("sftp", "restored"), pair("sftp2", "checksum")],
        "{event:#}"
    );
    assert!(failed.is_empty(), "{event:#}");
    let sshd2 = rig.sshd2.as_ref().unwrap();
    assert_eq!(
        event["copies"][1]["destination"],
        format!(
            "sftp://{}@127.0.0.1:{}{}",
            sshd2.user,
            sshd2.port,
            sshd2.backups_dir().display()
        ),
        "{event:#}"
    );
    for base in rig.remote_bases() {
        let record = base
            .join(&source.name)
            .join(format!("{name}.verified.json"));
        assert!(record.exists(), "{} has no record", base.display());
    }
    rig.assert_no_scratch_left();
}

#[test]
fn a_flipped_byte_in_the_second_copy_is_named_and_the_backup_still_verifies() {
    let rig = two_copies(None);
    let (source, file, name) = small_source(&rig);
    let manifest = manifest_for(Some(&source), &source.name, &name, &file);
    rig.place(&source.name, &file, &manifest);
    let second = rig.remote_bases()[1].join(&source.name).join(&name);
    let mut bytes = std::fs::read(&second).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&second, bytes).unwrap();
    let backup_id = rig.publish_shipped(&source.name, &manifest);
    let (subject, event) = rig.verdict(&backup_id);
    assert_eq!(subject, "dump.verified", "{event:#}");
    let (proven, failed) = copies(&event);
    assert_eq!(proven, [pair("sftp", "restored")], "{event:#}");
    assert_eq!(failed.len(), 1, "{event:#}");
    assert_eq!(failed[0].0, "sftp2");
    assert!(
        failed[0].1.starts_with(&format!(
            "checksum: the stored copy of {name} does not match"
        )),
        "{event:#}"
    );
    assert!(
        !second
            .with_file_name(format!("{name}.verified.json"))
            .exists(),
        "the bad copy has no record"
    );
    assert!(
        rig.events("dump.failed")
            .iter()
            .all(|e| e["backup_id"] != backup_id.as_str()),
        "a bad secondary copy does not fail the backup"
    );
    rig.assert_no_scratch_left();
}

#[test]
fn verify_from_restores_the_second_server_and_finds_the_first_copy_missing() {
    let rig = two_copies(Some("sftp2"));
    let (source, file, name) = small_source(&rig);
    let manifest = manifest_for(Some(&source), &source.name, &name, &file);
    rig.place(&source.name, &file, &manifest);
    std::fs::remove_file(rig.remote_base().join(&source.name).join(&name)).unwrap();
    let backup_id = rig.publish_shipped(&source.name, &manifest);
    let (subject, event) = rig.verdict(&backup_id);
    assert_eq!(subject, "dump.verified", "{event:#}");
    let (proven, failed) = copies(&event);
    assert_eq!(proven, [pair("sftp2", "restored")], "{event:#}");
    assert_eq!(
        failed,
        [pair("sftp", &format!("missing: {name} is not there"))],
        "{event:#}"
    );
    rig.assert_no_scratch_left();
}

#[test]
fn reverification_finds_rot_in_the_second_copy_without_condemning_the_backup() {
    let rig = Rig::start(Options {
        second_copy: true,
        reverify_every: Some(Duration::from_secs(2)),
        ..NO_OPTIONS
    });
    let (source, file, name) = small_source(&rig);
    let manifest = manifest_for(Some(&source), &source.name, &name, &file);
    let backup_id = rig.ship(&source.name, &file, &manifest);
    let (subject, event) = rig.verdict(&backup_id);
    assert_eq!(subject, "dump.verified", "{event:#}");
    let second = rig.remote_bases()[1].join(&source.name).join(&name);
    let mut bytes = std::fs::read(&second).unwrap();
    bytes[100] ^= 0x80;
    std::fs::write(&second, bytes).unwrap();
    let mut found = None;
    test_support::wait_until(
        Duration::from_secs(120),
        "a re-verification that finds the second copy rotten",
        || {
            found = rig.events("dump.verified").into_iter().find(|e| {
                e["backup_id"] == backup_id.as_str()
                    && e["reverification"] == true
                    && e["copies_failed"][0]["label"] == "sftp2"
            });
            found.is_some()
        },
    );
    let event = found.unwrap();
    let (proven, failed) = copies(&event);
    assert_eq!(proven, [pair("sftp", "restored")], "{event:#}");
    assert!(failed[0].1.starts_with("checksum:"), "{event:#}");
    let record = |path: &Path| path.with_file_name(format!("{name}.verified.json"));
    assert!(
        !record(&second).exists(),
        "the rotten copy loses its record"
    );
    assert!(
        record(&rig.remote_base().join(&source.name).join(&name)).exists(),
        "the backup stays verified"
    );
    rig.assert_no_scratch_left();
}

#[test]
fn a_backup_on_sftp_and_s3_is_restored_from_one_and_checksummed_on_the_other() {
    let rig = Rig::start(Options {
        s3_copy: true,
        ..NO_OPTIONS
    });
    let (source, file, name) = small_source(&rig);
    let manifest = manifest_for(Some(&source), &source.name, &name, &file);
    let backup_id = rig.ship(&source.name, &file, &manifest);
    let (subject, event) = rig.verdict(&backup_id);
    assert_eq!(subject, "dump.verified", "{event:#}");
    let (proven, failed) = copies(&event);
    assert_eq!(
        proven,
        [pair("sftp", "restored"), pair("s3", "checksum")],
        "{event:#}"
    );
    assert!(failed.is_empty(), "{event:#}");
    assert!(
        event["copies"][1]["destination"]
            .as_str()
            .unwrap()
            .starts_with(&format!("s3://{S3_BUCKET}")),
        "{event:#}"
    );
    rig.assert_no_scratch_left();
}

#[test]
fn reverification_finds_a_flipped_byte_in_the_s3_copy() {
    let rig = Rig::start(Options {
        s3_copy: true,
        reverify_every: Some(Duration::from_secs(2)),
        ..NO_OPTIONS
    });
    let (source, file, name) = small_source(&rig);
    let manifest = manifest_for(Some(&source), &source.name, &name, &file);
    let backup_id = rig.ship(&source.name, &file, &manifest);
    let (subject, event) = rig.verdict(&backup_id);
    assert_eq!(subject, "dump.verified", "{event:#}");
    assert_eq!(copies(&event).0.len(), 2, "{event:#}");
    // Rot in the bucket: the object is replaced by one byte different.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[100] ^= 0x80;
    rig.put_s3(&source.name, &name, &bytes);
    let mut found = None;
    test_support::wait_until(
        Duration::from_secs(120),
        "a re-verification that finds the S3 copy rotten",
        || {
            found = rig.events("dump.verified").into_iter().find(|e| {
                e["backup_id"] == backup_id.as_str()
                    && e["reverification"] == true
                    && e["copies_failed"][0]["label"] == "s3"
            });
            found.is_some()
        },
    );
    let event = found.unwrap();
    let (proven, failed) = copies(&event);
    assert_eq!(proven, [pair("sftp", "restored")], "{event:#}");
    assert!(failed[0].1.starts_with("checksum:"), "{event:#}");
    rig.assert_no_scratch_left();
}

//! Re-verification finds a backup that rotted on the remote.

use super::*;

#[test]
fn reverification_catches_rot_and_withdraws_the_record() {
    let rig = Rig::start(Options {
        reverify_every: Some(Duration::from_secs(2)),
        ..NO_OPTIONS
    });
    let (source, file, name) = small_source(&rig);
    let manifest = manifest_for(Some(&source), &source.name, &name, &file);
    let backup_id = rig.ship(&source.name, &file, &manifest);
    let (subject, event) = rig.verdict(&backup_id);
    assert_eq!(subject, "dump.verified", "{event:#}");
    // A round re-verifies it while it is intact.
    test_support::wait_until(
        Duration::from_secs(120),
        "a successful re-verification",
        || {
            rig.events("dump.verified")
                .iter()
                .any(|e| e["backup_id"] == backup_id.as_str() && e["reverification"] == true)
        },
    );
    let remote_file = rig.remote_base().join(&source.name).join(&name);
    let record = remote_file.with_file_name(format!("{name}.verified.json"));
    assert!(record.exists());
    // Rot on the remote.
    let mut bytes = std::fs::read(&remote_file).unwrap();
    bytes[100] ^= 0x80;
    std::fs::write(&remote_file, bytes).unwrap();
    test_support::wait_until(Duration::from_secs(120), "a failed re-verification", || {
        rig.events("dump.failed").iter().any(|e| {
            e["backup_id"] == backup_id.as_str()
                && e["stage"] == "verify"
                && e["error"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("re-verification of") && m.contains("checksum:"))
        })
    });
    assert!(
        !record.exists(),
        "the corrupt backup's record must be withdrawn"
    );
    rig.assert_no_scratch_left();
}

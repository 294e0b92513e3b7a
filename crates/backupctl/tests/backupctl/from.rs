//! `--from`: `backupctl list` and `restore` read the destination named by
//! its label (the first, `sftp`, by default); an unknown label is refused
//! in one line that lists the configured ones, before anything is read or
//! restored.

use super::*;

#[test]
fn list_and_restore_read_the_destination_named_by_from() {
    let rig = Rig::start();
    let source = source_database();
    let database = database_name(&source);
    let artifact = rig.publish_backup(&source, &database, at(60), ArtifactKind::PLAIN_GZIP, true);

    let listed = |from: Option<&str>| {
        let mut args = vec!["list", "--json", "--database", database.as_str()];
        if let Some(label) = from {
            args.extend(["--from", label]);
        }
        let out = rig.backupctl(&args, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let entries: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        entries
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| (e["artifact"].clone(), e["verified"].clone()))
            .collect::<Vec<_>>()
    };
    let expected = vec![(
        serde_json::json!(artifact.as_str()),
        serde_json::json!(true),
    )];
    assert_eq!(listed(Some("sftp")), expected);
    assert_eq!(listed(None), expected);

    let target = TestDatabase::create("bctl_dst");
    let out = rig.backupctl(
        &[
            "restore",
            "--from",
            "sftp",
            "--latest",
            "--database",
            database.as_str(),
            "--yes",
        ],
        &[("RESTORE_TARGET_URL".to_owned(), target.url())],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("restored {artifact} ")),
        "{}",
        text(&out)
    );
}

#[test]
fn an_unknown_label_is_refused_in_one_line_naming_the_configured_ones() {
    let rig = Rig::start();
    let target = TestDatabase::create("bctl_dst");
    for args in [
        vec!["list", "--from", "nope"],
        vec![
            "restore",
            "--from",
            "nope",
            "--latest",
            "--database",
            "viatique",
            "--yes",
        ],
    ] {
        let out = rig.backupctl(&args, &[("RESTORE_TARGET_URL".to_owned(), target.url())]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(out.stdout.is_empty(), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.trim_end(),
            "backupctl: no destination is labelled \"nope\"; configured: sftp",
            "{}",
            text(&out)
        );
    }
    // Nothing was restored into the target.
    assert!(target.row_counts().is_empty());
}

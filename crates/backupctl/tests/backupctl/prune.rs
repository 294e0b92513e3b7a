//! `backupctl prune --dry-run` lists what it keeps and deletes, and why.

use super::*;

#[test]
fn prune_dry_run_lists_keep_and_delete_with_reasons() {
    let rig = Rig::start();
    let source = source_database();
    let database = database_name(&source);
    // Four verified backups on four days; keep only the newest two.
    let mut artifacts = Vec::new();
    for day in 0..4 {
        artifacts.push(rig.publish_backup(
            &source,
            &database,
            at(day * 86_400 + 60),
            ArtifactKind::PLAIN_GZIP,
            true,
        ));
    }
    let policy = [
        "--keep-last=2",
        "--keep-daily=0",
        "--keep-weekly=0",
        "--keep-monthly=0",
        "--min-keep=2",
    ];
    let mut args = vec![
        "prune",
        "--dry-run",
        "--json",
        "--database",
        database.as_str(),
    ];
    args.extend(policy);
    let out = rig.backupctl(&args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let action = |artifact: &ArtifactName| {
        json["decisions"]
            .as_array()
            .expect("decisions")
            .iter()
            .find(|d| d["file"] == artifact.as_str())
            .map(|d| d["action"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(
        action(&artifacts[0]).as_deref(),
        Some("keep"),
        "{}",
        text(&out)
    );
    assert_eq!(
        action(&artifacts[1]).as_deref(),
        Some("keep"),
        "{}",
        text(&out)
    );
    assert_eq!(
        action(&artifacts[2]).as_deref(),
        Some("delete"),
        "{}",
        text(&out)
    );
    assert_eq!(
        action(&artifacts[3]).as_deref(),
        Some("delete"),
        "{}",
        text(&out)
    );

    let mut args = vec!["prune", "--dry-run", "--database", database.as_str()];
    args.extend(policy);
    let out = rig.backupctl(&args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("DELETE {}", artifacts[3])),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains(&format!("KEEP   {}", artifacts[0])),
        "{}",
        text(&out)
    );
    // Nothing deleted.
    let listing = std::fs::read_dir(format!("{}/{database}", rig.remote_dir()))
        .expect("remote dir")
        .count();
    assert_eq!(listing, 12, "a dry run must delete nothing");

    // Without --dry-run: the same plan, still nothing deleted (backupctl
    // never deletes; --dry-run is an accepted no-op).
    let mut args = vec!["prune", "--database", database.as_str()];
    args.extend(policy);
    let out = rig.backupctl(&args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plain = String::from_utf8_lossy(&out.stdout);
    assert_eq!(plain, stdout, "{}", text(&out));
    let listing = std::fs::read_dir(format!("{}/{database}", rig.remote_dir()))
        .expect("remote dir")
        .count();
    assert_eq!(listing, 12, "backupctl prune must delete nothing");
}

//! An append-only account: the shipper's key (`SFTP_KEY_FILE`) may not
//! delete, so the pruner logs in with its own (`PRUNE_SFTP_*`). The same
//! run with the shipper's key fails on its first delete and changes
//! nothing.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_pruner_deletes_with_its_own_key_where_the_shippers_key_cannot() {
    let rig = Rig::start();
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
    let failed_night = seed(
        &dir,
        "viatique",
        at(2025, 3, 2, 12, 0),
        State::NoRecord,
        None,
    );
    // A write-once upload abandoned two days ago.
    let abandoned = format!("{}.0badc0de.partial", kept[3]);
    touch(&dir.join(&abandoned), Duration::from_secs(2 * 24 * 3600));
    rig.hand_over_to_sftp_user();
    let shipper_key = rig.sshd.generate_append_only_key();
    let shipper_key = shipper_key.to_str().unwrap();
    let events = Events::connect(&rig.nats.url).await;

    // The shipper's key: the plan is made (listing and reading are
    // allowed), the first delete is refused.
    let before = files_in(&dir);
    let mut pruner = rig.spawn_pruner(&[("SFTP_KEY_FILE", shipper_key)]);
    events.verified("shipper-key", &kept[3]).await;
    let failed = events
        .wait("dump.failed", |id| id == "prune-shipper-key")
        .await;
    assert_eq!(failed["stage"], "prune");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("permission denied") && error.contains("remove"),
        "{error}"
    );
    assert_eq!(failed["will_retry"], false, "{failed}");
    assert_eq!(files_in(&dir), before, "nothing was deleted");
    pruner.terminate(Duration::from_secs(10));

    // Its own key, on the same account: retention is applied.
    let pruner_key = rig.sshd.client_key.display().to_string();
    let mut pruner = rig.spawn_pruner(&[
        ("SFTP_KEY_FILE", shipper_key),
        ("PRUNE_SFTP_KEY_FILE", &pruner_key),
    ]);
    events.verified("pruner-key", &kept[3]).await;
    let pruned = events.wait("dump.pruned", |id| id == "pruner-key").await;
    assert_eq!(
        names(&pruned, "deleted"),
        strings(&[&failed_night]),
        "{pruned}"
    );
    let expected: BTreeSet<String> = kept
        .iter()
        .flat_map(|artifact| with_sidecars(&dir, artifact))
        .collect();
    assert_eq!(files_in(&dir), expected, "the abandoned upload is gone too");
    assert!(!dir.join(&abandoned).exists());
    pruner.terminate(Duration::from_secs(10));
}

//! Invalid triggers are refused with a cause, and the dumper goes on.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_triggers_are_rejected_with_a_clear_cause() {
    let mut rig = Rig::start().await;
    let db = sample_database("dumper_valid");
    let settings = rig.settings(&[&db]);
    rig.run(settings, now_clock());
    let cases = [
        ("[1]", "must be a JSON object"),
        ("\"viatique\"", "must be a JSON object"),
        ("{not json", "not valid JSON"),
        (r#"{"database":"x; DROP TABLE y"}"#, "invalid database name"),
        (r#"{"database":42}"#, "invalid payload"),
        (r#"{"tag":"../../etc"}"#, "invalid tag"),
        (
            r#"{"database":"not_configured"}"#,
            "not configured for backup",
        ),
    ];
    for (payload, _) in cases {
        rig.trigger(payload).await;
    }
    rig.log
        .wait_for("one rejection per invalid trigger", |log| {
            log.of(subject::FAILED).len() >= cases.len()
        })
        .await;
    let failures = rig.log.of(subject::FAILED);
    for (payload, cause) in cases {
        assert!(
            failures
                .iter()
                .any(|f| f["stage"] == "trigger" && f["error"].as_str().unwrap().contains(cause)),
            "no trigger failure saying {cause:?} for {payload}:\n{}",
            rig.log.dump()
        );
    }
    assert!(failures.iter().all(|f| f["stage"] == "trigger"));
    assert!(rig.log.of(subject::STARTED).is_empty());
    // Still alive: a valid trigger works.
    rig.trigger("").await;
    let (subject, event) = rig.log.outcome(&db.name).await;
    assert_eq!(subject, subject::CREATED, "{event}");
    rig.stop().await;
}

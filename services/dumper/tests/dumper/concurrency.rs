//! Triggers that arrive during a dump coalesce; databases run side by side.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn triggers_during_a_dump_coalesce_and_databases_run_side_by_side() {
    let mut rig = Rig::start().await;
    let slow = sample_database("dumper_slow");
    let quick = sample_database("dumper_quick");
    let mut settings = rig.settings(&[&slow, &quick]);
    settings.max_parallel = 2;
    rig.run(settings, now_clock());

    let lock = TableLock::take(&slow, "grading.copy");
    rig.trigger("").await;
    // The quick database finishes while the slow one is stuck: they run
    // side by side.
    rig.log
        .wait_for("the quick database's dump", |log| {
            log.of_database(subject::CREATED, &quick.name).len() == 1
        })
        .await;
    assert!(rig.log.of_database(subject::CREATED, &slow.name).is_empty());
    assert_eq!(rig.log.of_database(subject::STARTED, &slow.name).len(), 1);
    // Two more triggers while the slow dump runs.
    rig.trigger("").await;
    rig.trigger("{}").await;
    // Coalescing compares whole seconds (a trigger's publication time is
    // truncated): the next dump must start in a later second than the one
    // the triggers were stored in, which is at the latest now.
    let stored_by = Utc::now().timestamp();
    let later_second = DateTime::from_timestamp(stored_by + 1, 0).unwrap();
    tokio::time::sleep((later_second - Utc::now()).to_std().unwrap_or_default()).await;
    // Both wait behind the running trigger (one is handled at a time):
    // none was handed to the dumper.
    test_support::pipeline::consumers::wait_consumer(
        rig.bus.jetstream(),
        "dumper",
        "to hold both triggers back",
        |info| info.num_pending == 2 && info.num_ack_pending == 1,
    )
    .await;
    assert_eq!(
        rig.log.of_database(subject::STARTED, &slow.name).len(),
        1,
        "a second dump of the same database started concurrently"
    );
    drop(lock);

    // One more dump of each after the first, not two.
    rig.log
        .wait_for("the second round", |log| {
            log.of_database(subject::CREATED, &slow.name).len() == 2
                && log.of_database(subject::CREATED, &quick.name).len() == 2
        })
        .await;
    // The dumper finished the queued triggers.
    rig.wait_idle().await;
    assert_eq!(
        rig.log.of_database(subject::CREATED, &slow.name).len(),
        2,
        "{}",
        rig.log.dump()
    );
    assert_eq!(
        rig.log.of_database(subject::CREATED, &quick.name).len(),
        2,
        "{}",
        rig.log.dump()
    );
    rig.stop().await;
}

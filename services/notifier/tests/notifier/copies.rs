//! A copy that falls behind: a `dump.verified` whose `copies_failed` names
//! a destination is one alert for that destination, and a later one that
//! proves it again resolves it.

use super::*;

const NAS: &str = "sftp://backup@nas.example:22/srv/backups";

/// A `dump.verified` whose copy on `sftp` was restored and whose copy on
/// the NAS (`sftp2`) was proven by checksum, or not (`nas_error`).
fn verified_with_copies(
    backup_id: &str,
    taken_at: DateTime<Utc>,
    nas_error: Option<&str>,
) -> Value {
    let mut event = verified(backup_id, taken_at);
    let mut copies = vec![
        json!({"label": "sftp", "destination": "sftp://backup@sftp.example:22/b", "proof": "restored"}),
    ];
    match nas_error {
        None => copies.push(json!({"label": "sftp2", "destination": NAS, "proof": "checksum"})),
        Some(error) => {
            event["copies_failed"] =
                json!([{"label": "sftp2", "destination": NAS, "error": error}]);
        }
    }
    event["copies"] = Value::Array(copies);
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_behind_is_alerted_once_and_resolved_when_proven_again() {
    let nats = NatsServer::start();
    let smtp = SmtpServer::start();
    let telegram_api = HttpStub::start(telegram_ok());
    let settings = Settings {
        email: email(&smtp.url),
        telegram: telegram(&telegram_api),
        ..settings()
    };
    let clock = ManualClock::new(t0() + chrono::Duration::hours(1));
    let notifier = Running::start(&nats, settings, &clock).await;

    let error = "checksum: the stored copy of viatique_20260302_020000.sql.gz does not match";
    let seq = notifier
        .publish(
            "dump.verified",
            &verified_with_copies("viatique-20260302-020000", t0(), Some(error)),
        )
        .await;
    notifier.acked(seq).await;
    let mail = &mails(&smtp, 1).await[0];
    assert!(
        mail.subject.contains("COPY BEHIND") && mail.subject.contains(NAS),
        "{}",
        mail.subject
    );
    for needle in [error, NAS, "sftp2", "viatique-20260302-020000"] {
        assert!(
            mail.body_text.contains(needle),
            "mail lacks {needle:?}:\n{}",
            mail.body_text
        );
    }
    let text = telegram_text(&requests(&telegram_api, 1).await[0]);
    assert!(
        text.contains("copy on sftp2 behind") && text.contains(NAS),
        "{text}"
    );

    // Still behind the next night, within the reminder interval: no new
    // message (the backup itself verified: no success message either).
    let seq = notifier
        .publish(
            "dump.verified",
            &verified_with_copies(
                "viatique-20260303-020000",
                t0() + chrono::Duration::hours(2),
                Some(error),
            ),
        )
        .await;
    notifier.acked(seq).await;

    // Proven again: one "resolved" naming the copy.
    let seq = notifier
        .publish(
            "dump.verified",
            &verified_with_copies(
                "viatique-20260304-020000",
                t0() + chrono::Duration::hours(3),
                None,
            ),
        )
        .await;
    notifier.acked(seq).await;
    let all = mails(&smtp, 2).await;
    assert_eq!(
        all.len(),
        2,
        "{:?}",
        all.iter().map(|m| &m.subject).collect::<Vec<_>>()
    );
    let resolved = &all[1];
    assert!(
        resolved.subject.contains("RESOLVED") && resolved.subject.contains(DB),
        "{}",
        resolved.subject
    );
    assert!(
        resolved.body_text.contains("copy on sftp2") && resolved.body_text.contains(NAS),
        "{}",
        resolved.body_text
    );
    let texts: Vec<String> = requests(&telegram_api, 2)
        .await
        .iter()
        .map(telegram_text)
        .collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts[1].contains("resolved"), "{}", texts[1]);
    notifier.stop().await;
}

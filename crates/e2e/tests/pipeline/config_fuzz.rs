//! The binaries' own configuration parsers, property-tested: the dumper's
//! `BACKUP_SCHEDULE` / `BACKUP_TZ` and `BACKUP_AGE_RECIPIENTS`, and the
//! shipper's `SHIP_BANDWIDTH_LIMIT`. (The shared parsers are tested in
//! backup-core, the pruner's schedule in the pruner.) No value makes them
//! panic, now or when a parsed schedule is asked for its next slot at any
//! moment; every refusal is one line.

use std::str::FromStr;

use chrono::{TimeZone, Utc};
use proptest::prelude::*;

fn assert_one_line(what: &str, error: &str) {
    assert!(!error.trim().is_empty(), "{what}: empty error");
    assert!(
        !error.chars().any(char::is_control),
        "{what}: not one line: {error:?}"
    );
}

fn cron_field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_owned()),
        "[0-9]{1,3}",
        "[0-9]{1,2}-[0-9]{1,2}",
        "\\*/[0-9]{1,3}",
        "[0-9]{1,2}(,[0-9]{1,2}){1,3}",
        "(MON|SUN|JAN|DEC|L|W|#|\\?)",
        "[0-9LW#?*/,-]{1,6}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn backup_schedules_parse_or_refuse_in_one_line_and_never_panic(
        pattern in prop_oneof![
            3 => prop::collection::vec(cron_field(), 5).prop_map(|f| f.join(" ")),
            1 => prop::collection::vec(cron_field(), 0..8).prop_map(|f| f.join(" ")),
            1 => any::<String>(),
            1 => "[ -~\t\n]{0,40}",
        ],
        zone in prop_oneof![
            Just("UTC".to_owned()),
            Just("Europe/Paris".to_owned()),
            Just("Pacific/Chatham".to_owned()),
            Just("America/St_Johns".to_owned()),
            "[A-Za-z/_+-]{0,20}",
            any::<String>(),
        ],
        at_seconds in -2_000_000_000i64..8_000_000_000,
    ) {
        match dumper::Schedule::parse(&pattern, &zone) {
            Ok(schedule) => {
                let at = Utc.timestamp_opt(at_seconds, 0).single().expect("in range");
                if let Ok(next) = schedule.next_after(at) {
                    prop_assert!(next > at, "{pattern:?} in {zone}: {next} after {at}");
                }
                if let Some(previous) = schedule.previous_at_or_before(at) {
                    prop_assert!(previous <= at);
                }
                let _ = schedule.period(at);
            }
            Err(error) => assert_one_line("BACKUP_SCHEDULE", &error.to_string()),
        }
    }

    #[test]
    fn bandwidth_limits_parse_or_refuse_in_one_line(
        text in prop_oneof![
            "[0-9]{0,25}(\\.[0-9]{0,5})?[ ]?(k|K|M|G|Ki|Mi|Gi|KI|T|x)?(B|b)?(/s)?",
            any::<String>(),
            Just("1e308GiB/s".to_owned()),
            Just("NaN".to_owned()),
            Just("inf".to_owned()),
            Just("-5MiB/s".to_owned()),
        ]
    ) {
        match shipper::Rate::from_str(&text) {
            Ok(rate) => prop_assert!(rate.0 >= 1024, "{text:?} gave {rate:?}"),
            Err(error) => assert_one_line("SHIP_BANDWIDTH_LIMIT", &error),
        }
    }

    #[test]
    fn age_recipients_parse_or_refuse_in_one_line(
        text in prop_oneof![
            "(age1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{0,70}[, \n]{0,2}){0,3}",
            any::<String>(),
        ]
    ) {
        match dumper::compress::parse_recipients(&text) {
            Ok(recipients) => prop_assert!(recipients.len() <= text.len()),
            Err(error) => assert_one_line("BACKUP_AGE_RECIPIENTS", &error),
        }
    }
}

//! Table tests of the calendar (DST, month and year ends) and property
//! tests of the safety invariants over random histories, clocks and policies.

use super::*;
use backup_core::names::{ArtifactKind, DatabaseName};
use chrono::TimeZone;
use chrono_tz::{America, Asia, Europe, Pacific};
use proptest::prelude::*;
use std::collections::BTreeSet;

fn db() -> DatabaseName {
    "viatique".parse().unwrap()
}

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

fn backup(taken_at: DateTime<Utc>, verified: bool) -> Backup {
    Backup {
        artifact: ArtifactName::new(&db(), taken_at, ArtifactKind::PLAIN_GZIP),
        verified,
        tag: None,
        held: None,
        locked_until: None,
    }
}

fn only(keep_daily: usize, keep_weekly: usize, keep_monthly: usize, timezone: Tz) -> Policy {
    Policy {
        keep_daily,
        keep_weekly,
        keep_monthly,
        min_keep: 1,
        timezone,
        ..Policy::default()
    }
}

/// Kept artifacts as `MMDD_HHMM` (UTC), the readable part of their names.
fn kept(plan: &Plan) -> Vec<String> {
    plan.keep
        .keys()
        .map(|a| a.taken_at().format("%m%d_%H%M").to_string())
        .collect()
}

#[test]
fn worked_example_a_month_of_nightly_backups_with_the_defaults() {
    let backups: Vec<Backup> = (1..=31)
        .map(|d| backup(at(2025, 3, d, 1, 30), true))
        .collect();
    let policy = Policy {
        timezone: Europe::Paris,
        ..Policy::default()
    };
    let plan = plan(&backups, &policy, at(2025, 3, 31, 12, 0));
    let mut expected = vec!["0316_0130".to_owned(), "0323_0130".to_owned()];
    expected.extend((25..=31).map(|d| format!("03{d}_0130")));
    assert_eq!(kept(&plan), expected);
    assert_eq!(plan.delete.len(), 22);
    assert!(plan.delete.values().all(|d| *d == Discard::Superseded));
    let newest = &backups[30].artifact;
    assert_eq!(
        plan.kept_reasons()[newest.as_str()],
        [
            "newest verified",
            "daily 2025-03-31",
            "weekly 2025-W14",
            "monthly 2025-03"
        ]
    );
    assert_eq!(
        plan.kept_reasons()[backups[15].artifact.as_str()],
        ["weekly 2025-W11"]
    );
}

/// Paris moves to summer time on Sunday 29 March 2026 (a 23-hour day).
#[test]
fn daily_buckets_follow_the_local_calendar_across_the_spring_dst_change() {
    let backups = [
        backup(at(2026, 3, 28, 23, 30), true), // Paris: 29 Mar 00:30 CET
        backup(at(2026, 3, 29, 0, 30), true),  // Paris: 29 Mar 01:30 CET
        backup(at(2026, 3, 29, 21, 59), true), // Paris: 29 Mar 23:59 CEST
        backup(at(2026, 3, 29, 22, 30), true), // Paris: 30 Mar 00:30 CEST
    ];
    let now = at(2026, 3, 30, 12, 0);
    let table: [(Tz, &[&str], &[&str]); 2] = [
        (
            Europe::Paris,
            &["0329_2159", "0329_2230"],
            &["daily 2026-03-29", "daily 2026-03-30"],
        ),
        (
            Tz::UTC,
            &["0328_2330", "0329_2230"],
            &["daily 2026-03-28", "daily 2026-03-29"],
        ),
    ];
    for (tz, expected, days) in table {
        let plan = plan(&backups, &only(2, 0, 0, tz), now);
        assert_eq!(kept(&plan), expected, "{tz}");
        let mut reasons: Vec<String> = plan
            .keep
            .values()
            .flatten()
            .filter(|r| matches!(r, Reason::Daily(_)))
            .map(ToString::to_string)
            .collect();
        reasons.sort();
        assert_eq!(reasons, days, "{tz}");
    }
}

/// Paris returns to winter time on Sunday 25 October 2026: 02:30 happens
/// twice, and the day lasts 25 hours.
#[test]
fn daily_buckets_across_the_autumn_dst_change_order_by_instant() {
    let backups = [
        backup(at(2026, 10, 24, 22, 30), true), // Paris: 25 Oct 00:30 CEST
        backup(at(2026, 10, 25, 0, 30), true),  // Paris: 25 Oct 02:30 CEST
        backup(at(2026, 10, 25, 1, 30), true),  // Paris: 25 Oct 02:30 CET, later
        backup(at(2026, 10, 25, 22, 30), true), // Paris: 25 Oct 23:30 CET
        backup(at(2026, 10, 25, 23, 30), true), // Paris: 26 Oct 00:30 CET
    ];
    let now = at(2026, 10, 26, 12, 0);
    // Paris has two days here (25 October holds four backups, 25 hours
    // long); UTC has 24 and 25 October.
    let table: [(Tz, usize, &[&str]); 2] = [
        (Europe::Paris, 2, &["1025_2230", "1025_2330"]),
        (Tz::UTC, 2, &["1024_2230", "1025_2330"]),
    ];
    for (tz, days, expected) in table {
        let plan = plan(&backups, &only(days, 0, 0, tz), now);
        assert_eq!(kept(&plan), expected, "{tz} keep_daily={days}");
    }
    // The two backups at 02:30 local time: the second one (CET) is the
    // newer, although the wall clock shows the same time.
    let paris_25_only = plan(&backups[1..3], &only(1, 0, 0, Europe::Paris), now);
    assert_eq!(kept(&paris_25_only), ["1025_0130"]);
}

#[test]
fn monthly_and_yearly_buckets_at_month_and_year_ends() {
    let backups = [
        backup(at(2025, 12, 31, 12, 0), true),
        backup(at(2025, 12, 31, 23, 30), true), // Paris: 1 Jan 2026 00:30
        backup(at(2026, 1, 30, 12, 0), true),
        backup(at(2026, 1, 31, 12, 0), true),
        backup(at(2026, 1, 31, 23, 30), true), // Paris: 1 Feb 00:30
        backup(at(2026, 2, 1, 12, 0), true),
    ];
    let now = at(2026, 2, 2, 0, 0);
    let table: [(Tz, usize, usize, &[&str]); 4] = [
        (
            Europe::Paris,
            3,
            0,
            &["1231_1200", "0131_1200", "0201_1200"],
        ),
        (Tz::UTC, 3, 0, &["1231_2330", "0131_2330", "0201_1200"]),
        (Europe::Paris, 0, 2, &["1231_1200", "0201_1200"]),
        (Tz::UTC, 0, 2, &["1231_2330", "0201_1200"]),
    ];
    for (tz, months, years, expected) in table {
        let policy = Policy {
            keep_yearly: years,
            ..only(0, 0, months, tz)
        };
        let plan = plan(&backups, &policy, now);
        assert_eq!(
            kept(&plan),
            expected,
            "{tz} monthly={months} yearly={years}"
        );
    }
}

#[test]
fn days_without_backups_do_not_use_up_slots() {
    // Nightly, then a 10-day outage, then nightly again.
    let backups: Vec<Backup> = [1, 2, 3, 14, 15]
        .into_iter()
        .map(|d| backup(at(2026, 5, d, 2, 0), true))
        .collect();
    let plan = plan(&backups, &only(4, 0, 0, Tz::UTC), at(2026, 5, 15, 3, 0));
    assert_eq!(
        kept(&plan),
        ["0502_0200", "0503_0200", "0514_0200", "0515_0200"]
    );
}

#[test]
fn keep_within_is_measured_from_the_newest_verified_backup() {
    let backups: Vec<Backup> = (1..=10)
        .map(|d| backup(at(2026, 5, d, 2, 0), true))
        .collect();
    let policy = Policy {
        keep_within: Some(TimeDelta::days(3)),
        ..only(0, 0, 0, Tz::UTC)
    };
    // A year later by the pruner's clock: still the 3 days before the newest.
    let plan = plan(&backups, &policy, at(2027, 5, 10, 0, 0));
    assert_eq!(
        kept(&plan),
        ["0507_0200", "0508_0200", "0509_0200", "0510_0200"]
    );
    assert!(
        plan.keep
            .values()
            .flatten()
            .any(|r| r.to_string() == "within 3days")
    );
}

#[test]
fn unverified_backups_age_out_only_behind_the_newest_verified_one() {
    let failed = backup(at(2026, 5, 2, 2, 0), false);
    let pending = backup(at(2026, 5, 5, 2, 0), false);
    let recent_failed = backup(at(2026, 5, 3, 2, 0), false);
    let good = backup(at(2026, 5, 4, 2, 0), true);
    let backups = [failed.clone(), recent_failed.clone(), good, pending.clone()];
    let policy = only(7, 0, 0, Tz::UTC);

    // 4 May 12:00: the failure of 3 May is within the 2-day grace.
    let early = plan(&backups, &policy, at(2026, 5, 4, 12, 0));
    assert_eq!(early.delete.keys().collect::<Vec<_>>(), [&failed.artifact]);
    assert_eq!(
        early.keep[&recent_failed.artifact],
        [Reason::AwaitingVerification]
    );

    // A month later: both failures go; the one newer than the newest
    // verified backup may still be waiting for the verifier and stays.
    let late = plan(&backups, &policy, at(2026, 6, 4, 0, 0));
    assert_eq!(
        late.delete.keys().collect::<Vec<_>>(),
        [&failed.artifact, &recent_failed.artifact]
    );
    assert_eq!(late.delete[&failed.artifact], Discard::UnverifiedExpired);
    assert_eq!(late.keep[&pending.artifact], [Reason::AwaitingVerification]);

    // Nothing verified at all: nothing is deleted.
    let none_verified: Vec<Backup> = [failed, recent_failed, pending].into();
    let plan = plan(&none_verified, &policy, at(2027, 1, 1, 0, 0));
    assert!(plan.delete.is_empty());
}

#[test]
fn tagged_and_held_backups_are_kept_whatever_their_state() {
    let mut tagged = backup(at(2026, 1, 1, 2, 0), false);
    tagged.tag = Some(PRE_DEPLOY_TAG.parse().unwrap());
    let mut custom = backup(at(2026, 1, 2, 2, 0), true);
    custom.tag = Some("release".parse().unwrap());
    let mut other_tag = backup(at(2026, 1, 3, 2, 0), true);
    other_tag.tag = Some("adhoc".parse().unwrap());
    let mut held = backup(at(2026, 1, 4, 2, 0), true);
    held.held = Some("manifest unreadable".into());
    let mut backups = vec![
        tagged.clone(),
        custom.clone(),
        other_tag.clone(),
        held.clone(),
    ];
    backups.extend((1..=20).map(|d| backup(at(2026, 3, d, 2, 0), true)));
    let policy = Policy {
        keep_tags: vec!["release".parse().unwrap()],
        ..only(1, 0, 0, Tz::UTC)
    };
    let plan = plan(&backups, &policy, at(2026, 3, 21, 0, 0));
    assert_eq!(
        plan.keep[&tagged.artifact],
        [Reason::Tag(PRE_DEPLOY_TAG.parse().unwrap())]
    );
    assert_eq!(
        plan.keep[&custom.artifact],
        [Reason::Tag("release".parse().unwrap())]
    );
    assert_eq!(
        plan.keep[&held.artifact],
        [Reason::Held("manifest unreadable".into())]
    );
    assert_eq!(plan.delete[&other_tag.artifact], Discard::Superseded);
}

#[test]
fn locked_backups_are_kept_until_their_lock_ends() {
    let mut backups: Vec<Backup> = (1..=10)
        .map(|d| backup(at(2025, 3, d, 1, 30), true))
        .collect();
    let until = at(2025, 3, 20, 0, 0);
    // Superseded by the policy, but the destination still refuses to
    // delete it.
    backups[2].locked_until = Some(until);
    // Its lock is over: an ordinary backup again.
    backups[3].locked_until = Some(at(2025, 3, 9, 0, 0));
    // Never verified and past the grace, but locked.
    let mut unverified = backup(at(2025, 3, 4, 13, 0), false);
    unverified.locked_until = Some(until);
    backups.push(unverified.clone());
    let policy = Policy {
        keep_daily: 1,
        keep_weekly: 0,
        keep_monthly: 0,
        min_keep: 1,
        ..Policy::default()
    };

    let now = plan(&backups, &policy, at(2025, 3, 10, 12, 0));
    let reasons = now.kept_reasons();
    assert_eq!(
        reasons[backups[2].artifact.as_str()],
        ["locked until 2025-03-20T00:00:00Z"]
    );
    assert_eq!(
        reasons[unverified.artifact.as_str()],
        ["locked until 2025-03-20T00:00:00Z"]
    );
    assert_eq!(
        now.delete.get(&backups[3].artifact),
        Some(&Discard::Superseded)
    );
    assert_eq!(
        reasons[backups[9].artifact.as_str()],
        ["newest verified", "daily 2025-03-10"]
    );
    assert_eq!(now.keep.len(), 3);

    // Once the lock has ended they go like the others.
    let later = plan(&backups, &policy, until);
    assert_eq!(
        later.delete.get(&backups[2].artifact),
        Some(&Discard::Superseded)
    );
    assert_eq!(
        later.delete.get(&unverified.artifact),
        Some(&Discard::UnverifiedExpired)
    );
    assert_eq!(later.keep.len(), 1);
}

#[test]
fn tagged_backups_expire_after_keep_tagged_for_but_the_newest_stays() {
    let pre_deploy: Tag = PRE_DEPLOY_TAG.parse().unwrap();
    let tagged = |day: u32, verified: bool| {
        let mut b = backup(at(2026, 1, day, 9, 0), verified);
        b.tag = Some(pre_deploy.clone());
        b
    };
    // Weekly deploys in January, then a quiet February and March.
    let deploys: Vec<Backup> = [1, 8, 15, 22, 29].map(|d| tagged(d, true)).into();
    let mut backups = deploys.clone();
    backups.extend((1..=20).map(|d| backup(at(2026, 3, d, 2, 0), true)));
    let forever = only(3, 0, 0, Tz::UTC);
    let plan_forever = plan(&backups, &forever, at(2026, 3, 21, 0, 0));
    assert!(
        deploys
            .iter()
            .all(|d| plan_forever.keep.contains_key(&d.artifact))
    );

    let policy = Policy {
        keep_tagged_for: Some(TimeDelta::days(60)),
        ..forever
    };
    let plan = plan(&backups, &policy, at(2026, 3, 21, 0, 0));
    // 20 March minus 60 days is 19 January: 22 and 29 January stay by tag,
    // the older deploys go; the newest tagged one would stay at any age.
    for kept in &deploys[3..] {
        assert_eq!(plan.keep[&kept.artifact], [Reason::Tag(pre_deploy.clone())]);
    }
    for gone in &deploys[..3] {
        assert_eq!(plan.delete[&gone.artifact], Discard::Superseded);
    }
    let much_later = Policy {
        keep_tagged_for: Some(TimeDelta::days(1)),
        ..policy
    };
    let plan = plan_of(&backups, &much_later);
    assert_eq!(plan.keep[&deploys[4].artifact], [Reason::Tag(pre_deploy)]);
    assert_eq!(plan.keep.len(), 4, "3 daily and the newest pre-deploy");
}

fn plan_of(backups: &[Backup], policy: &Policy) -> Plan {
    plan(backups, policy, at(2026, 3, 21, 0, 0))
}

// ---------------------------------------------------------------------------
// Properties

const ZONES: [Tz; 6] = [
    Tz::UTC,
    Europe::Paris,
    America::New_York,
    Pacific::Auckland,
    Asia::Kolkata,
    America::Sao_Paulo,
];
const TAGS: [Option<&str>; 6] = [
    None,
    None,
    None,
    Some(PRE_DEPLOY_TAG),
    Some("release"),
    Some("adhoc"),
];

fn start() -> DateTime<Utc> {
    at(2025, 10, 1, 0, 0)
}

prop_compose! {
    /// Up to 60 backups spread over ~400 days starting around DST changes.
    fn history()(
        entries in prop::collection::vec(
            (0i64..400 * 24 * 60, prop::bool::weighted(0.7), 0usize..TAGS.len(), prop::bool::weighted(0.03)),
            0..60,
        )
    ) -> Vec<Backup> {
        let mut seen = BTreeSet::new();
        entries
            .into_iter()
            .filter(|(minute, ..)| seen.insert(*minute))
            .map(|(minute, verified, tag, held)| Backup {
                artifact: ArtifactName::new(
                    &db(),
                    start() + TimeDelta::minutes(minute),
                    ArtifactKind::PLAIN_GZIP,
                ),
                verified,
                tag: TAGS[tag].map(|t| t.parse().unwrap()),
                held: held.then(|| "manifest unreadable".to_owned()),
                locked_until: None,
            })
            .collect()
    }
}

prop_compose! {
    fn policy()(
        keep_last in 0usize..4,
        keep_daily in 0usize..10,
        keep_weekly in 0usize..6,
        keep_monthly in 0usize..8,
        keep_yearly in 0usize..3,
        within_hours in prop::option::of(0i64..40 * 24),
        min_keep in 1usize..6,
        zone in 0usize..ZONES.len(),
        keep_release in any::<bool>(),
        grace_hours in 0i64..5 * 24,
        tagged_days in prop::option::of(1i64..120),
    ) -> Policy {
        Policy {
            keep_last,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            keep_within: within_hours.map(TimeDelta::hours),
            min_keep,
            keep_tags: if keep_release { vec!["release".parse().unwrap()] } else { vec![] },
            timezone: ZONES[zone],
            unverified_grace: TimeDelta::hours(grace_hours),
            keep_tagged_for: tagged_days.map(TimeDelta::days),
        }
    }
}

/// The pruner's clock: anywhere from before the first backup (a clock
/// running late) to two years after.
fn clock() -> impl Strategy<Value = DateTime<Utc>> {
    (-30i64 * 24..730 * 24).prop_map(|hours| start() + TimeDelta::hours(hours))
}

fn kept_verified(plan: &Plan, backups: &[Backup]) -> BTreeSet<ArtifactName> {
    backups
        .iter()
        .filter(|b| b.verified && plan.keep.contains_key(&b.artifact))
        .map(|b| b.artifact.clone())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_backup_is_either_kept_or_deleted(backups in history(), policy in policy(), now in clock()) {
        let plan = plan(&backups, &policy, now);
        prop_assert_eq!(plan.keep.len() + plan.delete.len(), backups.len());
        for b in &backups {
            prop_assert!(plan.keep.contains_key(&b.artifact) != plan.delete.contains_key(&b.artifact));
        }
        prop_assert!(plan.keep.values().all(|reasons| !reasons.is_empty()));
    }

    #[test]
    fn the_newest_verified_backup_is_kept(backups in history(), policy in policy(), now in clock()) {
        let plan = plan(&backups, &policy, now);
        if let Some(newest) = backups.iter().filter(|b| b.verified).map(|b| &b.artifact).max() {
            prop_assert!(plan.keep[newest].contains(&Reason::NewestVerified));
        }
    }

    #[test]
    fn the_floor_of_verified_backups_holds(backups in history(), policy in policy(), now in clock()) {
        let plan = plan(&backups, &policy, now);
        let verified = backups.iter().filter(|b| b.verified).count();
        prop_assert!(kept_verified(&plan, &backups).len() >= policy.min_keep.min(verified));
    }

    #[test]
    fn protected_tags_and_held_backups_are_kept(backups in history(), policy in policy(), now in clock()) {
        let plan = plan(&backups, &policy, now);
        let newest_verified = backups.iter().filter(|b| b.verified).map(|b| b.artifact.taken_at()).max();
        for b in &backups {
            let within_tag_span = match (policy.keep_tagged_for, newest_verified) {
                (Some(span), Some(newest)) => newest - b.artifact.taken_at() <= span,
                _ => true,
            };
            let protected = b.tag.as_ref().is_some_and(|t| policy.protects_tag(t));
            if (protected && within_tag_span) || b.held.is_some() {
                prop_assert!(plan.keep.contains_key(&b.artifact), "{} deleted", b.artifact);
            }
        }
    }

    #[test]
    fn the_newest_backup_of_each_protected_tag_is_kept(backups in history(), policy in policy(), now in clock()) {
        let plan = plan(&backups, &policy, now);
        let mut tags: Vec<&Tag> = backups.iter().filter_map(|b| b.tag.as_ref()).collect();
        tags.dedup();
        for tag in tags.into_iter().filter(|t| policy.protects_tag(t)) {
            let carrying = || backups.iter().filter(move |b| b.tag.as_ref() == Some(tag));
            let newest = carrying().map(|b| &b.artifact).max().unwrap();
            prop_assert!(plan.keep.contains_key(newest), "{} deleted", newest);
            if let Some(newest) = carrying().filter(|b| b.verified).map(|b| &b.artifact).max() {
                prop_assert!(plan.keep.contains_key(newest), "{} deleted", newest);
            }
        }
    }

    #[test]
    fn unverified_backups_never_displace_verified_ones(backups in history(), policy in policy(), now in clock()) {
        let with_unverified = plan(&backups, &policy, now);
        let verified_only: Vec<Backup> = backups.iter().filter(|b| b.verified).cloned().collect();
        let without = plan(&verified_only, &policy, now);
        prop_assert_eq!(kept_verified(&with_unverified, &backups), kept_verified(&without, &verified_only));
    }

    #[test]
    fn nothing_newer_than_the_newest_verified_backup_is_deleted(backups in history(), policy in policy(), now in clock()) {
        let plan = plan(&backups, &policy, now);
        let newest = backups.iter().filter(|b| b.verified).map(|b| b.artifact.taken_at()).max();
        for deleted in plan.delete.keys() {
            prop_assert!(newest.is_some_and(|newest| deleted.taken_at() < newest));
        }
    }

    #[test]
    fn running_twice_gives_the_same_result(backups in history(), policy in policy(), now in clock()) {
        let first = plan(&backups, &policy, now);
        let remaining: Vec<Backup> = backups
            .iter()
            .filter(|b| first.keep.contains_key(&b.artifact))
            .cloned()
            .collect();
        let second = plan(&remaining, &policy, now);
        prop_assert!(second.delete.is_empty(), "second run deletes {:?}", second.delete);
        prop_assert_eq!(second.keep, first.keep);
    }
}

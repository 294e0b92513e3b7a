//! The notifier's start-up checks: each configured alert channel's settings
//! parse as delivery would use them. No test message is sent at start-up
//! (`backupctl doctor --send-test-alert` does that). With no channel set,
//! the check passes and says alerts go to the log.

use backup_core::preflight::Check;

use crate::{Channels, HealthcheckSettings, Settings};

/// Runs the notifier's start-up checks once; they touch no network.
pub async fn preflight_checks(settings: std::sync::Arc<Settings>) -> Vec<Check> {
    let settings: &Settings = &settings;
    let none = HealthcheckSettings::default();
    let policy = settings.delivery;
    let mut checks = Vec::new();
    let mut check = |name: &str, built: Result<Channels, crate::ChannelConfigError>| {
        checks.push(match built {
            Ok(_) => Check::pass(name, "settings parse"),
            Err(e) => Check::fail(name, e.to_string()),
        });
    };
    if let Some(email) = &settings.email {
        check(
            "alerts.email",
            Channels::build(Some(email), None, None, &none, policy),
        );
    }
    if let Some(telegram) = &settings.telegram {
        check(
            "alerts.telegram",
            Channels::build(None, Some(telegram), None, &none, policy),
        );
    }
    if let Some(slack) = &settings.slack {
        check(
            "alerts.slack",
            Channels::build(None, None, Some(slack), &none, policy),
        );
    }
    if !settings.healthcheck.is_empty() {
        check(
            "alerts.healthcheck",
            Channels::build(None, None, None, &settings.healthcheck, policy),
        );
    }
    if settings.email.is_none() && settings.telegram.is_none() && settings.slack.is_none() {
        checks.push(Check::pass(
            "alerts go to the log",
            "no email, Telegram or Slack channel configured",
        ));
    }
    checks
}

//! What an alert says and how it reaches people: a [`Notice`] written once
//! per incident step and rendered for each channel, and the channels
//! themselves (email, Telegram, a Slack webhook, healthchecks.io-style
//! pings, or the log). The notifier delivers every notice through them;
//! `backupctl doctor` builds the same channels to check them and, when
//! asked, sends one test notice.
//!
//! Retries: each channel retries its own delivery with backoff, honouring
//! a `429`'s retry-after (see [`channels`]); nothing here is acked or
//! remembered, which is the notifier's business.

pub mod channels;
pub mod notice;

pub use channels::{
    Channel, ChannelConfigError, ChannelError, Channels, DeliveryPolicy, EmailSettings,
    HealthcheckSettings, Redactor, SlackSettings, TelegramSettings,
};
pub use notice::{HealthPing, IncidentSummary, Notice, NoticeKind};

//! Where the notifier reads the time. The dead man's switch and the
//! reminder interval compare event times with "now"; tests replace the
//! wall clock with a [`ManualClock`] to cross a 26 h threshold instantly.

pub use backup_core::clock::{Clock, ManualClock, SystemClock};

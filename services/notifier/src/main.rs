//! `notifier` binary: the services' shared start-up
//! ([`backup_core::service`]) around [`notifier::Settings`] and
//! [`notifier::run`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    backup_core::service::main(
        "notifier",
        |args: notifier::Args| notifier::Settings::try_from(args),
        notifier::run,
    )
    .await
}

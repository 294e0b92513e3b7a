//! `shipper` binary: the services' shared start-up
//! ([`backup_core::service`]) around [`shipper::Settings`] and
//! [`shipper::run`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    backup_core::service::main(
        "shipper",
        |args: shipper::Args| {
            shipper::Settings::try_from(args).inspect(shipper::Settings::log_destinations)
        },
        shipper::run,
    )
    .await
}

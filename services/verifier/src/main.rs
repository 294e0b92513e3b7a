//! `verifier` binary: the services' shared start-up
//! ([`backup_core::service`]) around [`verifier::Settings`] and
//! [`verifier::run`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    backup_core::service::main(
        "verifier",
        |args: verifier::Args| verifier::Settings::try_from(args),
        verifier::run,
    )
    .await
}

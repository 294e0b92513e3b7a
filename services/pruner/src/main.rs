//! `pruner` binary: the services' shared start-up
//! ([`backup_core::service`]) around [`pruner::Settings`] and
//! [`pruner::run`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    backup_core::service::main(
        "pruner",
        |args: pruner::Args| pruner::Settings::try_from(args),
        pruner::run,
    )
    .await
}

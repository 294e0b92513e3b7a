//! `dumper` binary: the services' shared start-up
//! ([`backup_core::service`]) around [`dumper::Settings`] and
//! [`dumper::run`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    backup_core::service::main(
        "dumper",
        |args: dumper::Args| dumper::Settings::try_from(args),
        dumper::run,
    )
    .await
}

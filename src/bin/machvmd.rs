//! `machvmd`: the machvm kernel as a service (see `machvm_daemon`).
#![deny(unsafe_code)]

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "machvmd", version, about = "The machvm kernel, served on a Unix socket")]
struct Cli {
    #[command(flatten)]
    args: machvm_daemon::cli::DaemonArgs,
}

fn main() -> std::process::ExitCode {
    machvm_daemon::cli::run(Cli::parse().args)
}

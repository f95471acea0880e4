//! `machvm`: the command-line tool.
//!
//! - `machvm tour`: a guided run of the proxy story on a real file.
//! - `machvm run`: a real file mapped shared and copied by two tasks under
//!   memory pressure, with a report.
//! - `machvm bench`: the benchmarks, written to `BENCHMARKS.md`.
//!
//! Each exits non-zero if the system did not behave as it must.
#![deny(unsafe_code)]

mod bench;
mod run;
mod tour;
mod util;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "machvm", version, about = "A Mach-style VM with proxy memory objects")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A guided tour: a file pager, read-only and range-limited proxies,
    /// the nested-proxy escalation refused, a paging proxy, revocation.
    Tour,
    /// A real file mapped shared and copied by two tasks, paged under a
    /// small resident limit; reports faults, pager messages and pageouts.
    Run {
        /// Size of the file in MiB.
        #[arg(long, default_value_t = 4)]
        size_mib: u64,
        /// Pages the kernel may keep resident (at least 2: a copy-on-write
        /// fault holds the page it copies while it allocates the copy).
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(2..))]
        resident_limit: u64,
        /// Pages of anonymous memory the first task fills.
        #[arg(long, default_value_t = 256)]
        anon_pages: u64,
        /// Pages the file pager supplies per fault (1 to 256).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
        cluster: u32,
        /// Keep the data file afterwards (it is removed by default; the
        /// swap file always is).
        #[arg(long)]
        keep: bool,
    },
    /// Measures fault, access and map rates, direct and through proxies,
    /// and writes BENCHMARKS.md.
    Bench {
        /// Smaller sizes and fewer repetitions (for a quick look).
        #[arg(long)]
        quick: bool,
        /// Where to write the results.
        #[arg(long, default_value = "BENCHMARKS.md")]
        output: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tour => tour::tour(),
        Command::Run { size_mib, resident_limit, anon_pages, cluster, keep } => {
            let pages = size_mib.saturating_mul(1 << 20) / machvm_core::PAGE_SIZE;
            run::run(&run::RunOptions { pages, anon_pages, resident_limit: resident_limit as usize, cluster, keep })
        }
        Command::Bench { quick, output } => bench::bench(quick, &output),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("machvm: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `machvm`: the command-line tool.
//!
//! - `machvm tour`: a guided run of the proxy story on a real file.
//! - `machvm run -- PROGRAM`: a program started as a task whose memory is
//!   real, served by the daemon.
//! - `machvm demo`: a real file mapped shared and copied by two tasks under
//!   memory pressure, with a report.
//! - `machvm bench`: the benchmarks, written to `BENCHMARKS.md`.
//! - `machvm daemon` (as `machvmd`), `machvm pager zero|file|swap`,
//!   `machvm ps`, `machvm vmmap TASK`, `machvm objects`, `machvm proxies`,
//!   `machvm stats`: the kernel as a service, pager programs, and
//!   inspection of a live daemon.
//!
//! Each exits non-zero if the system did not behave as it must.
#![deny(unsafe_code)]

mod bench;
mod probe;
mod remote;
mod run;
mod tour;
mod tour_real;
mod util;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "machvm", version, about = "A Mach-style VM with proxy memory objects")]
struct Cli {
    /// The daemon's socket, for the commands that talk to it (else
    /// `$MACHVM_SOCKET`, else `$XDG_RUNTIME_DIR/machvm.sock`, else
    /// `/run/machvm/machvm.sock`).
    #[arg(long, global = true)]
    socket: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A guided tour: a file pager, read-only and range-limited proxies,
    /// the nested-proxy escalation refused, a paging proxy, revocation.
    Tour,
    /// Starts PROGRAM as a task whose memory is real: its loads and
    /// stores touch pages the daemon serves. The program (linked with
    /// `machvm_client`) attaches with `RealMemory::from_env` before it
    /// touches any; the names given are objects it may map by name
    /// (`RealMemory::names_from_env`).
    Run {
        /// An object registered with the daemon, for the program to map.
        #[arg(long = "name", value_name = "OBJECT")]
        names: Vec<String>,
        /// The program's arena (its whole task address space), in MiB.
        #[arg(long, default_value_t = 1 << 16)]
        arena_mib: u64,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        program: Vec<std::ffi::OsString>,
    },
    /// A task process with real memory following a script of steps (for
    /// the suites and the tour; see `src/probe.rs`).
    #[command(hide = true)]
    Probe {
        #[arg(last = true)]
        steps: Vec<String>,
    },
    /// The task side of a round of `machvm bench`'s real-memory section
    /// (see `src/bench_real.rs`).
    #[command(hide = true)]
    BenchTask {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// A real file mapped shared and copied by two tasks, paged under a
    /// small resident limit; reports faults, pager messages and pageouts.
    Demo {
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
    /// Serves the kernel on a Unix socket in the foreground (as `machvmd`).
    Daemon {
        #[command(flatten)]
        args: machvm_daemon::cli::DaemonArgs,
    },
    /// A pager program: connects to the daemon and serves an object.
    Pager {
        /// Send supplied pages in messages, even where the daemon could
        /// copy them from a staging area shared with this process (the
        /// default where it can: a daemon serving real memory).
        #[arg(long)]
        data_in_message: bool,
        #[command(subcommand)]
        kind: remote::PagerKind,
    },
    /// Small client programs: share a read-only proxy, read one.
    Client {
        #[command(subcommand)]
        kind: remote::ClientKind,
    },
    /// The daemon's tasks: pid, uid, map entries, resident pages, the
    /// pages charged to each and its limit.
    Ps {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// A task's map entries: range, protections, inheritance, object,
    /// the proxies reached through.
    Vmmap {
        /// The task's number (as `machvm ps` shows it).
        task: u32,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The VM objects: kind, resident pages, pager, messages by kind.
    Objects {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The proxies: version, protection, windows, revocation.
    Proxies {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The Mach exceptions of task processes with real memory: faults the
    /// VM refused (each ended its process with SIGSEGV or SIGBUS).
    Exceptions {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The daemon kernel's counters.
    Stats {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tour => tour::tour(),
        Command::Run { names, arena_mib, program } => {
            return run_program(cli.socket.as_deref(), &names, arena_mib, &program)
        }
        Command::Probe { steps } => {
            if let Some(s) = &cli.socket {
                std::env::set_var("MACHVM_SOCKET", s);
            }
            return match probe::probe(&steps) {
                Ok(()) => ExitCode::SUCCESS,
                Err(probe::Stop::Check(what)) => {
                    eprintln!("machvm probe: check failed: {what}");
                    ExitCode::from(3)
                }
                Err(probe::Stop::Timeout(what)) => {
                    eprintln!("machvm probe: {what}");
                    ExitCode::from(4)
                }
                Err(probe::Stop::Error(what)) => {
                    eprintln!("machvm probe: {what}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Demo { size_mib, resident_limit, anon_pages, cluster, keep } => {
            let pages = size_mib.saturating_mul(1 << 20) / machvm_core::PAGE_SIZE;
            run::run(&run::RunOptions { pages, anon_pages, resident_limit: resident_limit as usize, cluster, keep })
        }
        Command::Bench { quick, output } => bench::bench(quick, &output),
        Command::BenchTask { args } => bench::real_task(&args),
        Command::Daemon { mut args } => {
            args.socket = args.socket.or(cli.socket);
            return machvm_daemon::cli::run(args);
        }
        Command::Pager { data_in_message, kind } => remote::pager(cli.socket.as_deref(), kind, !data_in_message),
        Command::Client { kind } => remote::client(cli.socket.as_deref(), kind),
        Command::Ps { json } => remote::ps(cli.socket.as_deref(), json),
        Command::Vmmap { task, json } => remote::vmmap(cli.socket.as_deref(), task, json),
        Command::Objects { json } => remote::objects(cli.socket.as_deref(), json),
        Command::Proxies { json } => remote::proxies(cli.socket.as_deref(), json),
        Command::Stats { json } => remote::stats(cli.socket.as_deref(), json),
        Command::Exceptions { json } => remote::exceptions(cli.socket.as_deref(), json),
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

/// `machvm run`: the program replaces this process (same pid, so the
/// daemon takes its userfaultfd from the right process), with the
/// environment `RealMemory::from_env` reads.
fn run_program(
    socket: Option<&std::path::Path>,
    names: &[String],
    arena_mib: u64,
    program: &[std::ffi::OsString],
) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let socket = machvm_client::socket_path(socket);
    // The names must exist now: a typo is said before the program runs.
    match machvm_client::Connection::connect(
        &socket,
        machvm_protocol::wire::Role::Task { child_token: None },
        "machvm run",
    ) {
        Ok(c) => {
            for n in names {
                if let Err(e) = c.name_lookup(n) {
                    eprintln!("machvm run: no object {n:?} at {}: {e}", socket.display());
                    return ExitCode::FAILURE;
                }
            }
        }
        Err(e) => {
            eprintln!("machvm run: {}: {e}", socket.display());
            return ExitCode::FAILURE;
        }
    }
    let err = std::process::Command::new(&program[0])
        .args(&program[1..])
        .env("MACHVM_SOCKET", &socket)
        .env("MACHVM_NAMES", names.join(","))
        .env("MACHVM_ARENA_MIB", arena_mib.to_string())
        .exec();
    eprintln!("machvm run: {}: {err}", program[0].to_string_lossy());
    ExitCode::FAILURE
}

//! The daemon's command line, shared by `machvmd` and `machvm daemon`.

use crate::{Daemon, DaemonConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// `machvmd`: serves the machvm kernel on a Unix socket, in the
/// foreground, until SIGTERM or SIGINT. Logs go to standard error
/// (`RUST_LOG` chooses what, `info` by default).
#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// The socket (else `$MACHVM_SOCKET`, else `$XDG_RUNTIME_DIR/machvm.sock`,
    /// else `/run/machvm/machvm.sock`).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Opens the socket to this group id (mode 0660; 0600 otherwise).
    #[arg(long)]
    pub group: Option<u32>,
    /// Physical pages of the machine.
    #[arg(long, default_value_t = 1 << 16)]
    pub phys_pages: usize,
    /// Pages the kernel keeps resident before paging out.
    #[arg(long, default_value_t = 1 << 16)]
    pub resident_limit: usize,
    /// A swap file for an in-daemon default pager (anonymous memory then
    /// pages out); without it, a privileged client may register one.
    #[arg(long)]
    pub swap: Option<PathBuf>,
    /// Connections from this uid get the host privilege (default: the
    /// daemon's own uid).
    #[arg(long)]
    pub host_priv_uid: Option<u32>,
    /// Port names each connection's task may allocate.
    #[arg(long, default_value_t = machvm_core::TaskLimits::default().port_names)]
    pub max_ports: usize,
    /// Map entries each connection's task may have (a fork copies them
    /// all under the kernel lock, so this bounds how long one can take).
    #[arg(long, default_value_t = 1 << 16)]
    pub max_entries: usize,
    /// Live proxies each connection's task may have made.
    #[arg(long, default_value_t = machvm_core::TaskLimits::default().proxies)]
    pub max_proxies: usize,
    /// Event-loop threads serving the connections (default: one per two
    /// CPUs, at least 1 and at most 4).
    #[arg(long, default_value_t = crate::default_loops())]
    pub loops: usize,
    /// The most connections one uid may have at once; the host-privilege
    /// uid has no limit.
    #[arg(long, default_value_t = 1024)]
    pub max_conns_per_uid: usize,
    /// What `memory_object_create_proxy` makes when the call names no
    /// version.
    #[arg(long, value_enum, default_value_t = ProxyVersionArg::Paging)]
    pub proxy_version: ProxyVersionArg,
    /// Pages asked of a pager per fault until it sets its own cluster size
    /// (1 to 256).
    #[arg(long, default_value_t = machvm_core::KernelConfig::default().cluster_pages)]
    pub cluster_pages: u32,
    /// Real memory for task processes (`auto`: where the host allows it,
    /// as root with userfaultfd; `soft`: loads and stores are calls).
    #[arg(long, value_enum, default_value_t = crate::MemoryMode::Auto)]
    pub memory: crate::MemoryMode,
    /// Resident pages charged to each connection's task (those its faults
    /// brought in): past it the task pages out its own, least recently
    /// used first (default: no limit; at least 2).
    #[arg(long, value_name = "PAGES")]
    pub max_resident: Option<usize>,
}

/// The proxy versions, as `--proxy-version` names them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyVersionArg {
    /// The mapping proxy: `vm_map` maps the underlying objects.
    Mapping,
    /// The paging proxy: the kernel pages it (and it can be revoked).
    Paging,
}

impl From<ProxyVersionArg> for machvm_core::ProxyVersion {
    fn from(v: ProxyVersionArg) -> Self {
        match v {
            ProxyVersionArg::Mapping => machvm_core::ProxyVersion::Mapping,
            ProxyVersionArg::Paging => machvm_core::ProxyVersion::Paging,
        }
    }
}

/// Runs the daemon; the exit status says whether it stopped cleanly.
pub fn run(args: DaemonArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let socket = machvm_client::socket_path(args.socket.as_deref());
    let config = DaemonConfig {
        socket: socket.clone(),
        group: args.group,
        phys_pages: args.phys_pages,
        resident_limit: args.resident_limit,
        swap: args.swap,
        host_priv_uid: args.host_priv_uid,
        limits: machvm_core::TaskLimits {
            port_names: args.max_ports,
            map_entries: args.max_entries,
            proxies: args.max_proxies,
            resident_pages: args.max_resident.unwrap_or(machvm_core::TaskLimits::default().resident_pages),
        },
        loops: args.loops,
        max_conns_per_uid: args.max_conns_per_uid,
        proxy_version: args.proxy_version.into(),
        cluster_pages: args.cluster_pages,
        memory: args.memory,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("machvmd: cannot handle signal {sig}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let daemon = match Daemon::boot(config) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("machvmd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match daemon.bind() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("machvmd: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(socket = %socket.display(), host_priv_uid = daemon.shared.host_priv_uid, "serving");
    match daemon.serve(listener, &stop) {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("machvmd: {e}");
            ExitCode::FAILURE
        }
    }
}

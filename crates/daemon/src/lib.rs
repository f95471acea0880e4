//! `machvmd`: the machvm kernel as a service. Pagers and tasks are
//! processes that connect over a Unix socket; a connection *is* a task.
//!
//! 1. [`Daemon::boot`] boots the kernel, takes its host privilege into the
//!    daemon's own task (which also holds the name table's rights), and
//!    starts the default pager if a swap file was named.
//! 2. [`Daemon::serve`] accepts on the socket [`Daemon::bind`] made
//!    ([`listen`]) and gives each connection to an event loop
//!    ([`reactor`]), which serves it ([`conn`]): a hello, then calls, each
//!    started by [`dispatch`] on the connection's task as it comes and
//!    answered when it is done.
//! 3. A connection that closes (or breaks the protocol) is a task that
//!    terminates: its rights go, no-senders and dead-name notifications
//!    fire, faults waiting on its objects fail, its names leave the table.
//! 4. On SIGTERM or SIGINT the daemon stops accepting, closes every
//!    connection (their tasks terminate: uncached objects return their
//!    dirty pages and are terminated), removes the socket and returns.
//!
//! Host privilege: connections from the uid named at boot
//! ([`DaemonConfig::host_priv_uid`], by default the daemon's own) get a
//! send right to the host-privilege port in their welcome; no other
//! connection can set the default pager.
//!
//! Threads: a few event loops ([`reactor`], `--loops`, by default one
//! per two CPUs, up to 4) serve every connection; the thread that called
//! [`Daemon::serve`] accepts. A call that waits (a fault for a pager, a
//! receive, a send to a full queue, an eager copy) is an op of the
//! kernel's (`machvm_core::kernel::resume`) left with its connection and
//! polled again when the kernel wakes it: a waiting client costs no
//! thread.
#![deny(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod cli;
pub mod conn;
pub mod dispatch;
pub mod listen;
pub mod memory;
pub mod reactor;

use machvm_core::ipc::PortName;
use machvm_core::{KernError, Kernel, KernelConfig, Result, TaskId};
use machvm_pagers::RunningPager;
use machvm_protocol::ipc::Disposition;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the daemon is started.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    /// Opens the socket to this group (mode 0660 instead of 0600).
    pub group: Option<u32>,
    pub phys_pages: usize,
    pub resident_limit: usize,
    /// The default pager's swap file (none: anonymous memory stays
    /// resident).
    pub swap: Option<PathBuf>,
    /// Connections from this uid get the host privilege (default: the
    /// daemon's own uid).
    pub host_priv_uid: Option<u32>,
    /// What each connection's task may hold.
    pub limits: machvm_core::TaskLimits,
    /// Event-loop threads serving the connections (see [`reactor`]).
    pub loops: usize,
    /// The most connections one uid may have at once (the host-privilege
    /// uid excepted): a hello past it is refused.
    pub max_conns_per_uid: usize,
    /// What `memory_object_create_proxy` makes when the call names no
    /// version (`KernelConfig::proxy_version`).
    pub proxy_version: machvm_core::ProxyVersion,
    /// Pages asked of a pager per fault until it sets its own cluster size
    /// (`KernelConfig::cluster_pages`).
    pub cluster_pages: u32,
    /// Whether tasks may have real memory ([`memory`]).
    pub memory: MemoryMode,
}

/// Whether the daemon serves real memory to task processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MemoryMode {
    /// Real memory where the host allows it (root, userfaultfd with memfd
    /// support); otherwise the software MMU, said at start.
    #[default]
    Auto,
    /// Real memory, or the daemon does not start.
    Real,
    /// The software MMU only: tasks touch memory through calls.
    Soft,
}

/// Event loops by default: one per two CPUs (the pagers and clients need
/// the others), at least 1 and at most 4. A wake-up from one loop to
/// another crosses CPUs, which costs more than the work it hands over on
/// small machines (`machvm bench`).
pub fn default_loops() -> usize {
    (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).clamp(1, 4)
}

/// One live connection, as inspection shows it.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub task: TaskId,
    pub pid: u32,
    pub uid: u32,
    pub name: String,
    pub pager: bool,
}

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    pub kernel: Arc<Kernel>,
    /// The daemon's own task: it holds the host privilege and the rights
    /// registered in the name table.
    pub own: TaskId,
    pub host_priv: PortName,
    pub host_priv_uid: u32,
    /// The most connections one uid (but the host-privilege uid) may have.
    pub max_conns_per_uid: usize,
    /// Name → (registering connection, the daemon's send right).
    names: Mutex<HashMap<String, (u64, PortName)>>,
    /// Child tasks made by `task_create`, not claimed yet: token → (parent
    /// connection, task).
    children: Mutex<HashMap<u64, (u64, TaskId)>>,
    conns: Mutex<BTreeMap<u64, ConnInfo>>,
    next_conn: AtomicU64,
    token_seed: std::collections::hash_map::RandomState,
    /// The daemon is stopping: new hellos are refused.
    pub stopping: AtomicBool,
    /// Real memory, where the daemon can serve it ([`memory`]).
    pub real: Option<Arc<memory::Real>>,
}

/// Child tasks one connection may have made and not seen claimed.
pub const MAX_UNCLAIMED_CHILDREN: usize = 4;

/// The daemon.
#[derive(Debug)]
pub struct Daemon {
    pub config: DaemonConfig,
    pub shared: Arc<Shared>,
    _default_pager: Option<RunningPager>,
}

impl Daemon {
    /// Boots the kernel and the daemon's own task (step 1).
    pub fn boot(config: DaemonConfig) -> std::io::Result<Daemon> {
        let kconfig = KernelConfig {
            phys_pages: config.phys_pages,
            resident_limit: config.resident_limit,
            limits: config.limits,
            proxy_version: config.proxy_version,
            cluster_pages: config.cluster_pages,
        };
        let machine = match (config.memory, memory::unavailable()) {
            (MemoryMode::Soft, _) => None,
            (MemoryMode::Real, Some(why)) => return Err(std::io::Error::other(format!("--memory real: {why}"))),
            (MemoryMode::Auto, Some(why)) => {
                tracing::warn!("tasks get no real memory (their loads and stores are calls): {why}");
                None
            }
            (_, None) => {
                Some(Arc::new(machvm_host::HostMachine::new(config.phys_pages).map_err(std::io::Error::other)?))
            }
        };
        let kernel = match &machine {
            Some(m) => Kernel::with_machine(kconfig, m.clone()),
            None => Kernel::new(kconfig),
        };
        let real = match machine {
            Some(m) => Some(Arc::new(memory::Real::start(kernel.clone(), m)?)),
            None => None,
        };
        let own = kernel.task_create(None).map_err(kern_io)?;
        let host_priv = kernel.boot_host_priv(own).map_err(kern_io)?;
        let default_pager = match &config.swap {
            Some(path) => {
                let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
                Some(machvm_pagers::start_default_pager(&kernel, own, host_priv, f).map_err(kern_io)?)
            }
            None => None,
        };
        let host_priv_uid = config.host_priv_uid.unwrap_or_else(|| rustix::process::geteuid().as_raw());
        let shared = Arc::new(Shared {
            kernel,
            own,
            host_priv,
            host_priv_uid,
            max_conns_per_uid: config.max_conns_per_uid,
            names: Mutex::default(),
            children: Mutex::default(),
            conns: Mutex::default(),
            next_conn: AtomicU64::new(1),
            token_seed: std::collections::hash_map::RandomState::new(),
            stopping: AtomicBool::new(false),
            real,
        });
        Ok(Daemon { config, shared, _default_pager: default_pager })
    }

    /// Binds the socket (see [`listen::bind`]).
    pub fn bind(&self) -> std::result::Result<UnixListener, listen::ListenError> {
        listen::bind(&self.config.socket, self.config.group)
    }

    /// Accepts and serves connections until `stop` is set (steps 2–4);
    /// then closes every connection and removes the socket.
    pub fn serve(&self, listener: UnixListener, stop: &AtomicBool) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        let loops = reactor::Loops::start(&self.shared, self.config.loops)?;
        while !stop.load(Ordering::Relaxed) {
            // Woken by a connection, or every 50 ms to look at `stop`.
            let mut fds = [rustix::event::PollFd::new(&listener, rustix::event::PollFlags::IN)];
            let timeout = rustix::time::Timespec { tv_sec: 0, tv_nsec: 50_000_000 };
            let _ = rustix::event::poll(&mut fds, Some(&timeout));
            loop {
                match listener.accept() {
                    Ok((stream, _)) => loops.give(stream),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // Out of descriptors, say: the connection stays
                        // queued, so wait before trying again rather than
                        // spin.
                        tracing::warn!("accept: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                        break;
                    }
                }
            }
        }
        tracing::info!("stopping: closing {} connections", self.shared.connections().len());
        self.shared.stopping.store(true, Ordering::Relaxed);
        // Tasks first: their objects end, and uncached ones return their
        // dirty pages; then the cache goes the same way. The pagers stay
        // connected until they have taken what was sent to them (or a
        // deadline passes), then they go too. A connection still saying
        // hello is refused.
        self.close(&loops, |c| !c.pager);
        self.shared.kernel.cache_flush();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let pagers: Vec<TaskId> = self.shared.connections().iter().filter(|c| c.pager).map(|c| c.task).collect();
        let backlog = || pagers.iter().map(|&t| self.shared.kernel.queued_for(t).unwrap_or(0)).sum::<usize>();
        while backlog() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.close(&loops, |_| true);
        loops.stop();
        let _ = std::fs::remove_file(&self.config.socket);
        Ok(())
    }
}

impl Daemon {
    /// Closes the connections `which` picks and waits (up to 2 s) for
    /// them to be gone.
    fn close(&self, loops: &reactor::Loops, which: impl Fn(&ConnInfo) -> bool) {
        let ids: Vec<u64> = {
            let conns = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
            conns.iter().filter(|(_, c)| which(c)).map(|(&id, _)| id).collect()
        };
        loops.close(&ids);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            let conns = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
            if !ids.iter().any(|id| conns.contains_key(id)) {
                break;
            }
            drop(conns);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn kern_io(e: KernError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl Shared {
    /// Registers a new connection; `Err` with the connections its uid
    /// holds if that is [`DaemonConfig::max_conns_per_uid`] already (the
    /// host-privilege uid has no such limit).
    pub(crate) fn conn_add(&self, info: ConnInfo) -> std::result::Result<u64, usize> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if info.uid != self.host_priv_uid {
            let held = conns.values().filter(|c| c.uid == info.uid).count();
            if held >= self.max_conns_per_uid {
                return Err(held);
            }
        }
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        conns.insert(id, info);
        Ok(id)
    }

    /// A connection is gone: its names leave the table, its unclaimed
    /// children and its task terminate, and then it leaves the table of
    /// connections (so that a connection no longer listed has no task).
    pub(crate) fn conn_gone(&self, id: u64, task: TaskId) {
        let names: Vec<PortName> = {
            let mut t = self.names.lock().unwrap_or_else(|e| e.into_inner());
            let gone: Vec<String> = t.iter().filter(|(_, (c, _))| *c == id).map(|(n, _)| n.clone()).collect();
            gone.into_iter().filter_map(|n| t.remove(&n)).map(|(_, p)| p).collect()
        };
        for n in names {
            let _ = self.kernel.port_deallocate(self.own, n);
        }
        let orphans: Vec<TaskId> = {
            let mut c = self.children.lock().unwrap_or_else(|e| e.into_inner());
            let gone: Vec<u64> = c.iter().filter(|(_, (p, _))| *p == id).map(|(t, _)| *t).collect();
            gone.into_iter().filter_map(|t| c.remove(&t)).map(|(_, t)| t).collect()
        };
        for t in orphans {
            let _ = self.kernel.task_terminate(t);
        }
        if let Some(real) = &self.real {
            real.detach(task);
        }
        let _ = self.kernel.task_terminate(task);
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    /// The pid of connection `conn`'s process, as of its connection.
    pub(crate) fn pid_of(&self, conn: u64) -> Option<u32> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).get(&conn).map(|c| c.pid).filter(|&p| p != 0)
    }

    /// The live connections.
    pub fn connections(&self) -> Vec<ConnInfo> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// How many children `parent` made that nobody claimed yet.
    pub(crate) fn unclaimed_children(&self, parent: u64) -> usize {
        self.children.lock().unwrap_or_else(|e| e.into_inner()).values().filter(|(p, _)| *p == parent).count()
    }

    /// Records a child task made by `task_create`; returns the token a
    /// process presents in its hello to become it (random, used once).
    pub(crate) fn child_made(&self, parent: u64, child: TaskId) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.token_seed.build_hasher();
        h.write_u64(parent);
        h.write_u32(child.number());
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        let token = h.finish();
        self.children.lock().unwrap_or_else(|e| e.into_inner()).insert(token, (parent, child));
        token
    }

    /// Claims the child task behind `token` (once).
    pub(crate) fn child_claim(&self, token: u64) -> Option<TaskId> {
        self.children.lock().unwrap_or_else(|e| e.into_inner()).remove(&token).map(|(_, t)| t)
    }

    /// Registers a send right to `object` (in the caller's space) under
    /// `name`: first come, first served (`KERN_NAME_EXISTS`); an empty
    /// name is `KERN_INVALID_ARGUMENT`.
    pub(crate) fn name_register(&self, caller: dispatch::Caller, name: &str, object: PortName) -> Result<()> {
        if name.is_empty() {
            return Err(KernError::InvalidArgument);
        }
        let mut t = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if t.contains_key(name) {
            return Err(KernError::NameExists);
        }
        let held = self.kernel.port_transfer(caller.task, object, Disposition::CopySend, self.own)?;
        t.insert(name.to_string(), (caller.conn, held));
        Ok(())
    }

    /// A send right to what `name` was registered with, in the caller's
    /// space; `KERN_INVALID_NAME` if nothing is.
    pub(crate) fn name_lookup(&self, caller: dispatch::Caller, name: &str) -> Result<PortName> {
        let t = self.names.lock().unwrap_or_else(|e| e.into_inner());
        let &(_, held) = t.get(name).ok_or(KernError::InvalidName)?;
        self.kernel.port_transfer(self.own, held, Disposition::CopySend, caller.task)
    }
}

//! The `machvm` subcommands that talk to a running `machvmd`: pager
//! programs (each its own process, serving objects it registers in the
//! daemon's name table) and inspection.

use machvm_client::{socket_path, Connection};
use machvm_pagers::{serve, Backing, FileBacking, MemBacking, PagerConn, PagerStats, SwapBacking};
use machvm_protocol::ipc::PortName;
use machvm_protocol::wire::{InspectWhat, Reply, Role};
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Which pager program to run.
#[derive(clap::Subcommand, Debug)]
pub enum PagerKind {
    /// Zero-filled memory that keeps what the kernel returns.
    Zero {
        /// The name the object is registered under.
        #[arg(long, default_value = "zero")]
        name: String,
        /// Sleep this long before answering each request (a slow pager).
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// A real file; returned pages are written back to it.
    File {
        /// The name the object is registered under (default: the file name).
        #[arg(long)]
        name: Option<String>,
        /// Pages supplied per request.
        #[arg(long, default_value_t = 8)]
        cluster: u32,
        path: PathBuf,
    },
    /// The default pager (needs the host privilege), with a swap file.
    Swap {
        /// The swap file (created or truncated).
        path: PathBuf,
    },
}

/// A backing that waits before each read: a pager that is slow to answer.
struct Slow<B> {
    inner: B,
    delay: Duration,
}

impl<B: Backing> Backing for Slow<B> {
    fn read(&mut self, object: PortName, offset: u64, buf: &mut [u8]) -> std::io::Result<bool> {
        std::thread::sleep(self.delay);
        self.inner.read(object, offset, buf)
    }
    fn write(&mut self, object: PortName, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.inner.write(object, offset, data)
    }
    fn terminate(&mut self, object: PortName) {
        self.inner.terminate(object)
    }
    fn cluster_pages(&self) -> Option<u32> {
        self.inner.cluster_pages()
    }
    fn may_cache(&self) -> bool {
        self.inner.may_cache()
    }
}

fn kern(e: machvm_core::KernError) -> Box<dyn Error> {
    e.to_string().into()
}

/// `machvm pager KIND`: connects as a pager, registers its object, and
/// serves it until the daemon goes.
pub fn pager(socket: Option<&Path>, kind: PagerKind) -> Result<bool, Box<dyn Error>> {
    let label = match &kind {
        PagerKind::Zero { name, .. } => format!("pager zero {name}"),
        PagerKind::File { path, .. } => format!("pager file {}", path.display()),
        PagerKind::Swap { .. } => "pager swap".into(),
    };
    let conn = Connection::connect(&socket_path(socket), Role::Pager, &label)?;
    let host_priv = conn.host_priv();
    let mut pager = PagerConn::over(conn).map_err(kern)?;
    let object = pager.new_object().map_err(kern)?;
    let mut backing: Box<dyn Backing> = match kind {
        PagerKind::Zero { name, delay_ms } => {
            pager.link.name_register(&name, object)?;
            eprintln!("machvm: serving zero-filled memory as {name:?}");
            Box::new(Slow { inner: MemBacking::default(), delay: Duration::from_millis(delay_ms) })
        }
        PagerKind::File { name, cluster, path } => {
            let name = name.unwrap_or_else(|| path.file_name().map_or("file".into(), |n| n.to_string_lossy().into()));
            let file = std::fs::OpenOptions::new().read(true).write(true).open(&path)?;
            let mut b = FileBacking::new(cluster);
            b.add(object, file)?;
            pager.link.name_register(&name, object)?;
            eprintln!("machvm: serving {} as {name:?}", path.display());
            Box::new(b)
        }
        PagerKind::Swap { path } => {
            let host_priv = host_priv.ok_or("no host privilege: machvmd gives it to its own uid")?;
            let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
            pager.link.set_default_memory_manager(host_priv, object)?;
            eprintln!("machvm: default pager, swapping to {}", path.display());
            Box::new(SwapBacking::new(f))
        }
    };
    serve(&mut pager, backing.as_mut(), &Arc::new(PagerStats::default()));
    eprintln!("machvm: the daemon went away");
    Ok(true)
}

/// `machvm ps`: the daemon's tasks.
pub fn ps(socket: Option<&Path>, json: bool) -> Result<bool, Box<dyn Error>> {
    let conn = Connection::connect(&socket_path(socket), Role::Task { child_token: None }, "machvm ps")?;
    let Reply::Tasks(rows) = conn.inspect(InspectWhat::Tasks)? else {
        return Err("unexpected reply".into());
    };
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "task": r.task, "pid": r.pid, "uid": r.uid, "name": r.name,
                    "entries": r.entries, "resident": r.resident,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(true);
    }
    println!("{:>6} {:>8} {:>6} {:>8} {:>9}  NAME", "TASK", "PID", "UID", "ENTRIES", "RESIDENT");
    for r in rows {
        let opt = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
        println!("{:>6} {:>8} {:>6} {:>8} {:>9}  {}", r.task, opt(r.pid), opt(r.uid), r.entries, r.resident, r.name);
    }
    Ok(true)
}

/// `machvm stats`: the daemon kernel's counters.
pub fn stats(socket: Option<&Path>, json: bool) -> Result<bool, Box<dyn Error>> {
    let conn = Connection::connect(&socket_path(socket), Role::Task { child_token: None }, "machvm stats")?;
    let Reply::Stats(rows) = conn.inspect(InspectWhat::Stats)? else {
        return Err("unexpected reply".into());
    };
    if json {
        let m: serde_json::Map<String, serde_json::Value> = rows.into_iter().map(|(k, v)| (k, v.into())).collect();
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        for (k, v) in rows {
            println!("{k:<28} {v:>12}");
        }
    }
    Ok(true)
}

/// Small client programs for trying the daemon by hand.
#[derive(clap::Subcommand, Debug)]
pub enum ClientKind {
    /// Maps a registered object, makes a read-only proxy of it and sends
    /// the proxy in a message to a reader's inbox.
    Share {
        /// The object's name (as a pager registered it).
        #[arg(long)]
        object: String,
        /// The reader's inbox name (`machvm client read --inbox`).
        #[arg(long)]
        to: String,
        /// Pages to share.
        #[arg(long, default_value_t = 64)]
        pages: u64,
        /// Stay connected this long afterwards (to look at it with `ps`,
        /// `vmmap`, `proxies`).
        #[arg(long, default_value_t = 0)]
        linger_secs: u64,
    },
    /// Registers an inbox, waits for a proxy, maps it, reads it, tries a
    /// store (refused), and with `--watch` goes on reading the next page
    /// every half second, until a read fails (the pager went) or the end.
    Read {
        /// The inbox name to register.
        #[arg(long)]
        inbox: String,
        /// Keep reading the next page every half second until one fails.
        #[arg(long)]
        watch: bool,
    },
}

/// `machvm client KIND`.
pub fn client(socket: Option<&Path>, kind: ClientKind) -> Result<bool, Box<dyn Error>> {
    use machvm_protocol::ipc::Disposition;
    use machvm_protocol::{VmAddr, VmProt, PAGE_SIZE};
    let path = socket_path(socket);
    match kind {
        ClientKind::Share { object, to, pages, linger_secs } => {
            let c = Connection::connect(&path, Role::Task { child_token: None }, "client share")?;
            let obj = c.name_lookup(&object)?;
            let size = pages * PAGE_SIZE;
            let (proxy, _revoke) = c.proxy_create(VmProt::READ, &[obj], &[0], &[0], &[size], None)?;
            println!("share: made a read-only proxy of {object:?} ({pages} pages)");
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let inbox = loop {
                match c.name_lookup(&to) {
                    Ok(n) => break n,
                    Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                    Err(e) => return Err(format!("no inbox {to:?}: {e}").into()),
                }
            };
            c.send(inbox, 1, size.to_le_bytes().to_vec(), vec![(proxy, Disposition::MoveSend)])?;
            println!("share: sent it to {to:?}");
            std::thread::sleep(Duration::from_secs(linger_secs));
            Ok(true)
        }
        ClientKind::Read { inbox, watch } => {
            let c = Connection::connect(&path, Role::Task { child_token: None }, "client read")?;
            let port = c.port_allocate()?;
            c.port_make_send(port)?;
            c.name_register(&inbox, port)?;
            println!("read: waiting on inbox {inbox:?}");
            let m = c.msg_receive(port, Some(60_000))?;
            let Some(&(proxy, _)) = m.rights.first() else {
                return Err("the message carried no right".into());
            };
            let size = m.data.get(..8).and_then(|b| b.try_into().ok()).map_or(PAGE_SIZE, u64::from_le_bytes);
            let at = c.vm_map(machvm_client::map_anywhere(size, Some(proxy)))?;
            let first = c.load(at, 64)?;
            let text: String = String::from_utf8_lossy(&first).chars().take_while(|&ch| ch != '\n').collect();
            println!("read: mapped {size} bytes at {:#x}; it begins {text:?}", at.0);
            match c.store(at, b"x") {
                Err(e) => println!("read: a store is refused: {e}"),
                Ok(()) => return Err("a store through a read-only proxy succeeded".into()),
            }
            if watch {
                for page in 1..size / PAGE_SIZE {
                    std::thread::sleep(Duration::from_millis(500));
                    match c.load(VmAddr(at.0 + page * PAGE_SIZE), 8) {
                        Ok(_) => println!("read: page {page} read"),
                        Err(e) => {
                            println!("read: page {page} fails: {e}");
                            break;
                        }
                    }
                }
            }
            Ok(true)
        }
    }
}

//! The `machvm` subcommands that talk to a running `machvmd`: pager
//! programs (each its own process, serving objects it registers in the
//! daemon's name table) and inspection (`ps`, `vmmap`, `objects`,
//! `proxies`, `stats`): aligned tables for people, `--json` for scripts,
//! where protections are `rwx` strings and numbers are plain numbers.

use machvm_client::{socket_path, Connection};
use machvm_pagers::{serve, Backing, FileBacking, MemBacking, PagerConn, PagerStats, SwapBacking};
use machvm_protocol::emmi::CopyStrategy;
use machvm_protocol::ipc::PortName;
use machvm_protocol::wire::{
    ChargeRow, EntryRow, InspectWhat, ObjectKind, ObjectRow, ProxyRow, ProxyVersion, Reply, Role,
};
use machvm_protocol::{VmInherit, VmProt};
use std::collections::HashMap;
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
        /// Pages the kernel asks for per fault (1 to 256; default: the
        /// kernel's own cluster size).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
        cluster: Option<u32>,
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

/// A backing that asks the kernel for `cluster` pages per fault (the
/// zero-fill store has no cluster size of its own).
struct Clustered<B> {
    inner: B,
    cluster: Option<u32>,
}

impl<B: Backing> Backing for Clustered<B> {
    fn read(&mut self, object: PortName, offset: u64, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.read(object, offset, buf)
    }
    fn read_pages(&mut self, object: PortName, offset: u64, buf: &mut [u8]) -> Vec<std::io::Result<bool>> {
        self.inner.read_pages(object, offset, buf)
    }
    fn write(&mut self, object: PortName, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.inner.write(object, offset, data)
    }
    fn terminate(&mut self, object: PortName) {
        self.inner.terminate(object)
    }
    fn cluster_pages(&self) -> Option<u32> {
        self.cluster.or_else(|| self.inner.cluster_pages())
    }
    fn may_cache(&self) -> bool {
        self.inner.may_cache()
    }
}

fn kern(e: machvm_core::KernError) -> Box<dyn Error> {
    e.to_string().into()
}

/// `machvm pager KIND`: connects as a pager, registers its object, and
/// serves it until the daemon goes; with `staged`, supplied pages go
/// through a staging area where the daemon has one to give
/// ([`PagerConn::attach_staging`]), else in messages.
pub fn pager(socket: Option<&Path>, kind: PagerKind, staged: bool) -> Result<bool, Box<dyn Error>> {
    let label = match &kind {
        PagerKind::Zero { name, .. } => format!("pager zero {name}"),
        PagerKind::File { path, .. } => format!("pager file {}", path.display()),
        PagerKind::Swap { .. } => "pager swap".into(),
    };
    let conn = Connection::connect(&socket_path(socket), Role::Pager, &label)?;
    let host_priv = conn.host_priv();
    let mut pager = PagerConn::over(conn).map_err(kern)?;
    // Without one (a daemon on the software MMU), pages go in messages.
    if staged {
        pager.attach_staging().map_err(kern)?;
    }
    let object = pager.new_object().map_err(kern)?;
    let mut backing: Box<dyn Backing> = match kind {
        PagerKind::Zero { name, delay_ms, cluster } => {
            pager.link.name_register(&name, object)?;
            eprintln!("machvm: serving zero-filled memory as {name:?}");
            let slow = Slow { inner: MemBacking::default(), delay: Duration::from_millis(delay_ms) };
            Box::new(Clustered { inner: slow, cluster })
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

/// `machvm ps`: the daemon's tasks, with the resident pages charged to
/// each and its limit (left out, shown `-`, by a daemon that predates
/// them: it refuses the question and closes the connection).
pub fn ps(socket: Option<&Path>, json: bool) -> Result<bool, Box<dyn Error>> {
    let conn = Connection::connect(&socket_path(socket), Role::Task { child_token: None }, "machvm ps")?;
    let Reply::Tasks(rows) = conn.inspect(InspectWhat::Tasks)? else {
        return Err("unexpected reply".into());
    };
    let charges: HashMap<u32, ChargeRow> = match conn.inspect(InspectWhat::Charges) {
        Ok(Reply::Charges(c)) => c.into_iter().map(|c| (c.task, c)).collect(),
        _ => HashMap::new(),
    };
    let exceptions: HashMap<u32, u64> = match conn.inspect(InspectWhat::Exceptions) {
        Ok(Reply::Exceptions(e)) => e.into_iter().map(|e| (e.task, e.count)).collect(),
        _ => HashMap::new(),
    };
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let c = charges.get(&r.task);
                serde_json::json!({
                    "task": r.task, "pid": r.pid, "uid": r.uid, "name": r.name,
                    "entries": r.entries, "resident": r.resident,
                    "charged": c.map(|c| c.charged), "resident_limit": c.and_then(|c| c.limit),
                    "exceptions": exceptions.get(&r.task).copied().unwrap_or(0),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(true);
    }
    println!(
        "{:>6} {:>8} {:>6} {:>8} {:>9} {:>8} {:>8} {:>5}  NAME",
        "TASK", "PID", "UID", "ENTRIES", "RESIDENT", "CHARGED", "LIMIT", "EXC"
    );
    for r in rows {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let c = charges.get(&r.task);
        println!(
            "{:>6} {:>8} {:>6} {:>8} {:>9} {:>8} {:>8} {:>5}  {}",
            r.task,
            opt(r.pid.map(u64::from)),
            opt(r.uid.map(u64::from)),
            r.entries,
            r.resident,
            opt(c.map(|c| c.charged)),
            opt(c.and_then(|c| c.limit)),
            exceptions.get(&r.task).copied().unwrap_or(0),
            r.name
        );
    }
    Ok(true)
}

/// `machvm exceptions`: the Mach exceptions of task processes with real
/// memory (faults the VM refused), ended tasks included.
pub fn exceptions(socket: Option<&Path>, json: bool) -> Result<bool, Box<dyn Error>> {
    let conn = Connection::connect(&socket_path(socket), Role::Task { child_token: None }, "machvm exceptions")?;
    let Reply::Exceptions(rows) = conn.inspect(InspectWhat::Exceptions)? else {
        return Err("unexpected reply".into());
    };
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "task": r.task, "pid": r.pid, "count": r.count, "addr": r.addr.0,
                    "access": format!("{:?}", r.access), "error": r.error.to_string(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(true);
    }
    println!("{:>6} {:>8} {:>6} {:>18} {:>7}  ERROR", "TASK", "PID", "COUNT", "ADDRESS", "ACCESS");
    for r in rows {
        let access = if r.access.contains(machvm_protocol::VmProt::WRITE) { "write" } else { "read" };
        println!("{:>6} {:>8} {:>6} {:>#18x} {:>7}  {}", r.task, r.pid, r.count, r.addr.0, access, r.error);
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

/// One inspection call on a connection of its own.
fn inspect(socket: Option<&Path>, what: InspectWhat, label: &str) -> Result<Reply, Box<dyn Error>> {
    let conn = Connection::connect(&socket_path(socket), Role::Task { child_token: None }, label)?;
    Ok(conn.inspect(what)?)
}

/// `rwx`, with `-` for what is not allowed.
fn rwx(p: VmProt) -> String {
    [(VmProt::READ, 'r'), (VmProt::WRITE, 'w'), (VmProt::EXECUTE, 'x')]
        .iter()
        .map(|&(f, c)| if p.contains(f) { c } else { '-' })
        .collect()
}

fn inherit_str(i: VmInherit) -> &'static str {
    match i {
        VmInherit::Share => "share",
        VmInherit::Copy => "copy",
        VmInherit::None => "none",
    }
}

/// A byte count for a person (`16K`, `1.5M`); `-` for the whole offset
/// space (an external object's size).
fn size_str(bytes: u64) -> String {
    if bytes >= 1 << 63 {
        return "-".into();
    }
    for (unit, name) in [(1u64 << 50, "P"), (1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")] {
        if bytes >= unit {
            return if bytes % unit == 0 {
                format!("{}{name}", bytes / unit)
            } else {
                format!("{:.1}{name}", bytes as f64 / unit as f64)
            };
        }
    }
    bytes.to_string()
}

/// A list of numbers, `-` if empty.
fn list(v: &[u64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn or_dash<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// How a column's cells line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// Prints `rows` under `headers`, two spaces apart, each column as wide as
/// its widest cell (the last one unpadded), so that every field starts (or,
/// right-aligned, ends) where its header does whatever the values.
fn print_table(headers: &[(&str, Align)], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|(h, _)| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            let (w, last) = (widths[i], i + 1 == headers.len());
            if i > 0 {
                out.push_str("  ");
            }
            match headers[i].1 {
                Align::Right => out.push_str(&format!("{cell:>w$}")),
                Align::Left if last => out.push_str(cell),
                Align::Left => out.push_str(&format!("{cell:<w$}")),
            }
        }
        println!("{}", out.trim_end());
    };
    line(&mut headers.iter().map(|(h, _)| *h));
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// `machvm vmmap TASK`: a task's map entries.
pub fn vmmap(socket: Option<&Path>, task: u32, json: bool) -> Result<bool, Box<dyn Error>> {
    let Reply::VmMap(rows) = inspect(socket, InspectWhat::VmMap { task }, "machvm vmmap")? else {
        return Err("unexpected reply".into());
    };
    if json {
        let v: Vec<serde_json::Value> = rows.iter().map(entry_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(true);
    }
    use Align::{Left, Right};
    let headers = [
        ("START", Left),
        ("END", Left),
        ("SIZE", Right),
        ("CUR/MAX", Left),
        ("INHERIT", Left),
        ("OBJECT", Right),
        ("OFFSET", Right),
        ("FLAGS", Left),
        ("VIA", Left),
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let flags: Vec<&str> = [(r.shared, "shared"), (r.needs_copy, "cow")]
                .into_iter()
                .filter_map(|(on, name)| on.then_some(name))
                .collect();
            vec![
                format!("{:#014x}", r.start.0),
                format!("{:#014x}", r.end.0),
                size_str(r.end.0.saturating_sub(r.start.0)),
                format!("{}/{}", rwx(r.cur), rwx(r.max)),
                inherit_str(r.inherit).to_string(),
                or_dash(r.object),
                format!("{:#x}", r.offset.0),
                if flags.is_empty() { "-".to_string() } else { flags.join(",") },
                list(&r.via),
            ]
        })
        .collect();
    print_table(&headers, &cells);
    Ok(true)
}

fn entry_json(r: &EntryRow) -> serde_json::Value {
    serde_json::json!({
        "start": r.start.0, "end": r.end.0, "size": r.end.0.saturating_sub(r.start.0),
        "cur": rwx(r.cur), "max": rwx(r.max), "inherit": inherit_str(r.inherit),
        "object": r.object, "offset": r.offset.0, "via": r.via,
        "shared": r.shared, "needs_copy": r.needs_copy,
    })
}

fn kind_str(k: ObjectKind) -> &'static str {
    match k {
        ObjectKind::External => "external",
        ObjectKind::Temporary => "temporary",
        ObjectKind::View => "view",
    }
}

fn copy_str(c: CopyStrategy) -> &'static str {
    match c {
        CopyStrategy::None => "none",
        CopyStrategy::Call => "call",
        CopyStrategy::Delay => "delay",
    }
}

/// What an object's row says of its state: the pager's (`ready`,
/// `waiting` for its `ready`, or `dead`; the copy strategy; `may_cache`;
/// `default` for the default pager's), then `cached` (no reference), its
/// shadow and its copy.
fn object_state(r: &ObjectRow) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &r.pager_state {
        parts.push(
            if p.dead {
                "dead"
            } else if p.ready {
                "ready"
            } else {
                "waiting"
            }
            .to_string(),
        );
        parts.push(copy_str(p.copy_strategy).to_string());
        if p.may_cache {
            parts.push("may_cache".into());
        }
        if p.default_pager {
            parts.push("default".into());
        }
    }
    if r.refs == 0 {
        parts.push("cached".into());
    }
    if let Some((s, off)) = r.shadow {
        parts.push(format!("shadow={s}@{off:#x}"));
    }
    if let Some(c) = r.copy {
        parts.push(format!("copy={c}"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

fn pairs(v: &[(String, u64)]) -> String {
    v.iter().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(" ")
}

/// `machvm objects`: the VM objects.
pub fn objects(socket: Option<&Path>, json: bool) -> Result<bool, Box<dyn Error>> {
    let Reply::Objects(rows) = inspect(socket, InspectWhat::Objects, "machvm objects")? else {
        return Err("unexpected reply".into());
    };
    if json {
        let v: Vec<serde_json::Value> = rows.iter().map(object_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(true);
    }
    use Align::{Left, Right};
    let headers = [
        ("OBJECT", Right),
        ("KIND", Left),
        ("SIZE", Right),
        ("RESIDENT", Right),
        ("REFS", Right),
        ("PAGER", Left),
        ("STATE", Left),
        ("MESSAGES (SENT / RECEIVED)", Left),
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let messages = match (r.sent.is_empty(), r.received.is_empty()) {
                (true, true) => "-".to_string(),
                _ => format!("{} / {}", pairs(&r.sent), pairs(&r.received)).trim().to_string(),
            };
            vec![
                r.object.to_string(),
                kind_str(r.kind).to_string(),
                size_str(r.size),
                r.resident.to_string(),
                r.refs.to_string(),
                r.pager.clone().unwrap_or_else(|| "-".into()),
                object_state(r),
                messages,
            ]
        })
        .collect();
    print_table(&headers, &cells);
    Ok(true)
}

fn object_json(r: &ObjectRow) -> serde_json::Value {
    let counts = |v: &[(String, u64)]| -> serde_json::Map<String, serde_json::Value> {
        v.iter().map(|(k, n)| (k.clone(), (*n).into())).collect()
    };
    let state = r.pager_state.as_ref().map(|p| {
        serde_json::json!({
            "ready": p.ready, "dead": p.dead, "may_cache": p.may_cache,
            "copy_strategy": copy_str(p.copy_strategy), "cluster_pages": p.cluster_pages,
            "default_pager": p.default_pager,
        })
    });
    serde_json::json!({
        "object": r.object, "kind": kind_str(r.kind), "size": r.size,
        "resident": r.resident, "refs": r.refs,
        "pager": r.pager, "pager_task": r.pager_task, "pager_state": state,
        "shadow": r.shadow.map(|(o, off)| serde_json::json!({ "object": o, "offset": off })),
        "copy": r.copy, "proxy": r.proxy,
        "sent": counts(&r.sent), "received": counts(&r.received),
    })
}

fn version_str(v: ProxyVersion) -> &'static str {
    match v {
        ProxyVersion::Mapping => "mapping",
        ProxyVersion::Paging => "paging",
    }
}

/// `machvm proxies`: the proxies, one line per window (`PROT` is what the
/// proxy grants in all, `ALLOWS` what the window does).
pub fn proxies(socket: Option<&Path>, json: bool) -> Result<bool, Box<dyn Error>> {
    let Reply::Proxies(rows) = inspect(socket, InspectWhat::Proxies, "machvm proxies")? else {
        return Err("unexpected reply".into());
    };
    if json {
        let v: Vec<serde_json::Value> = rows.iter().map(proxy_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(true);
    }
    use Align::{Left, Right};
    let headers = [
        ("PROXY", Right),
        ("VERSION", Left),
        ("PROT", Left),
        ("REVOKED", Left),
        ("PORT", Left),
        ("VIEW", Right),
        ("VIA", Left),
        ("OFFSET", Right),
        ("LEN", Right),
        ("TARGET", Left),
        ("START", Right),
        ("ALLOWS", Left),
    ];
    let mut cells: Vec<Vec<String>> = Vec::new();
    for r in &rows {
        let head = vec![
            r.proxy.to_string(),
            version_str(r.version).to_string(),
            rwx(r.protection),
            if r.revoked { "yes" } else { "no" }.to_string(),
            if r.port_dead { "dead" } else { "live" }.to_string(),
            or_dash(r.view),
            list(&r.via),
        ];
        if r.windows.is_empty() {
            cells.push(head.iter().cloned().chain(["-", "-", "-", "-", "-"].map(String::from)).collect());
        }
        for (i, w) in r.windows.iter().enumerate() {
            let target = match r.targets.get(i) {
                Some(t) if w.target_is_proxy => format!("view {t}"),
                Some(t) => format!("object {t}"),
                None => "-".into(),
            };
            // The proxy's own columns only on its first window's line.
            let lead = if i == 0 { head.clone() } else { vec![String::new(); head.len()] };
            let window = [format!("{:#x}", w.offset), size_str(w.len), target, format!("{:#x}", w.start), rwx(w.prot)];
            cells.push(lead.into_iter().chain(window).collect());
        }
    }
    print_table(&headers, &cells);
    Ok(true)
}

fn proxy_json(r: &ProxyRow) -> serde_json::Value {
    let windows: Vec<serde_json::Value> = r
        .windows
        .iter()
        .enumerate()
        .map(|(i, w)| {
            serde_json::json!({
                "offset": w.offset, "len": w.len, "start": w.start, "prot": rwx(w.prot),
                "target": r.targets.get(i), "target_is_proxy": w.target_is_proxy,
            })
        })
        .collect();
    serde_json::json!({
        "proxy": r.proxy, "version": version_str(r.version), "protection": rwx(r.protection),
        "revoked": r.revoked, "port_dead": r.port_dead, "view": r.view, "via": r.via,
        "windows": windows,
    })
}

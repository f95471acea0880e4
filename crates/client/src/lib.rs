//! The client of `machvmd`: a process connects to the daemon's socket and
//! becomes a task (or a pager, which is a task too). Every call acts on
//! that task; every port name is a name in its IPC space.
//!
//! ```no_run
//! use machvm_client::{Connection, socket_path};
//! use machvm_protocol::wire::Role;
//! use machvm_protocol::{VmAddr, PAGE_SIZE};
//!
//! let conn = Connection::connect(&socket_path(None), Role::Task { child_token: None }, "example")?;
//! let at = conn.vm_allocate(VmAddr(0), PAGE_SIZE, true)?;
//! conn.store(at, b"hello")?;
//! assert_eq!(conn.load(at, 5)?, b"hello");
//! # Ok::<(), machvm_client::ClientError>(())
//! ```
//!
//! The connection speaks the protocol of `machvm_protocol::wire`: a hello,
//! then calls, each answered with its sequence number. Several threads may
//! call through one connection at once, as several threads of one task:
//! each waits for its own reply, and a call that waits in the daemon (a
//! receive, a fault on a slow pager) holds up no other. Whichever waiting
//! thread finds no reader reads the socket and hands each reply to the
//! thread it belongs to. A daemon that goes away is
//! [`ClientError::Closed`] for every caller, never a hang.
#![deny(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod memory;

use machvm_protocol::frame::{read_frame, write_frame, FrameError};
use machvm_protocol::ipc::{Disposition, PortName, RightKind};
use machvm_protocol::wire::{
    Call, InspectWhat, MapArgs, MessageWire, NameInfoWire, ProxyInfoWire, ProxyVersion, Reply, Request, Response, Role,
    SendArgs, PROTOCOL_VERSION,
};
use machvm_protocol::{KernError, VmAddr, VmProt};
use std::collections::{HashMap, HashSet};
use std::io::{BufReader, BufWriter};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

/// What went wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kernel refused the call, with its Mach error.
    #[error("{0}")]
    Kern(KernError),
    /// The socket failed (connecting, reading, writing).
    #[error("machvmd socket: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon closed the connection (it stopped, or was killed).
    #[error("machvmd closed the connection")]
    Closed,
    /// The daemon refused the hello (another protocol version).
    #[error("machvmd refused the connection: {0}")]
    Refused(String),
    /// The daemon sent something this client cannot read, or said the
    /// client broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl From<KernError> for ClientError {
    fn from(e: KernError) -> Self {
        ClientError::Kern(e)
    }
}

impl ClientError {
    /// The error as a Mach error, for code that speaks only those: a
    /// connection that is gone is a task that is gone, `KERN_TERMINATED`.
    pub fn kern(&self) -> KernError {
        match self {
            ClientError::Kern(e) => *e,
            _ => KernError::Terminated,
        }
    }
}

/// Results of calls to the daemon.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// The socket a client (or the daemon) uses: `explicit`, else
/// `$MACHVM_SOCKET`, else `$XDG_RUNTIME_DIR/machvm.sock`, else
/// `/run/machvm/machvm.sock`.
pub fn socket_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("MACHVM_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(d).join("machvm.sock");
    }
    PathBuf::from("/run/machvm/machvm.sock")
}

/// One connection to the daemon: one task.
#[derive(Debug)]
pub struct Connection {
    /// The socket's write half and the last sequence number used.
    writer: Mutex<(BufWriter<UnixStream>, u64)>,
    /// The read half, read by one waiting caller at a time.
    reader: Mutex<BufReader<UnixStream>>,
    replies: Mutex<Replies>,
    /// A reply arrived, or the reader left: callers look again.
    arrived: Condvar,
    task: u32,
    host_priv: Option<PortName>,
}

/// The replies read and not yet taken, by sequence number.
#[derive(Debug, Default)]
struct Replies {
    /// Calls sent and not answered (a reply to another is dropped).
    waiting: HashSet<u64>,
    done: HashMap<u64, std::result::Result<Reply, KernError>>,
    /// A caller is reading the socket.
    reading: bool,
    /// The connection broke: every call fails so.
    broken: Option<Broken>,
}

/// How a connection broke, for every caller to hear.
#[derive(Clone, Debug)]
enum Broken {
    Closed,
    Protocol(String),
    Io(std::io::ErrorKind, String),
}

impl Broken {
    fn of(e: ClientError) -> Broken {
        match e {
            ClientError::Io(e) => Broken::Io(e.kind(), e.to_string()),
            ClientError::Protocol(what) | ClientError::Refused(what) => Broken::Protocol(what),
            ClientError::Closed | ClientError::Kern(_) => Broken::Closed,
        }
    }

    fn error(&self) -> ClientError {
        match self {
            Broken::Closed => ClientError::Closed,
            Broken::Protocol(what) => ClientError::Protocol(what.clone()),
            Broken::Io(kind, what) => ClientError::Io(std::io::Error::new(*kind, what.clone())),
        }
    }
}

fn frame_error(e: FrameError) -> ClientError {
    match e {
        FrameError::Io(e) => ClientError::Io(e),
        FrameError::Truncated { .. } => ClientError::Closed,
        other => ClientError::Protocol(other.to_string()),
    }
}

impl Connection {
    /// `connect(path)` and the hello: the connection is a task from now on.
    ///
    /// Errors: [`ClientError::Io`] (no daemon there), [`ClientError::Refused`].
    pub fn connect(path: &Path, role: Role, name: &str) -> Result<Connection> {
        let stream = UnixStream::connect(path)?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut writer = BufWriter::new(stream);
        send(&mut writer, &Request::Hello { version: PROTOCOL_VERSION, role, name: name.to_string() })?;
        match recv(&mut reader)? {
            Response::Welcome { task, host_priv, .. } => Ok(Connection {
                writer: Mutex::new((writer, 0)),
                reader: Mutex::new(reader),
                replies: Mutex::default(),
                arrived: Condvar::new(),
                task,
                host_priv,
            }),
            Response::Refused { reason, .. } => Err(ClientError::Refused(reason)),
            Response::ProtocolError { what } => Err(ClientError::Protocol(what)),
            other => Err(ClientError::Protocol(format!("expected a welcome, got {other:?}"))),
        }
    }

    /// The task's number in the daemon.
    pub fn task(&self) -> u32 {
        self.task
    }

    /// The send right to the host-privilege port, if the daemon gave this
    /// connection one.
    pub fn host_priv(&self) -> Option<PortName> {
        self.host_priv
    }

    /// Makes one call and waits for its reply (other threads may call
    /// meanwhile).
    pub fn call(&self, call: Call) -> Result<Reply> {
        let seq = {
            let mut w = lock(&self.writer);
            w.1 += 1;
            let seq = w.1;
            // Expected before it is sent: another caller may read the
            // reply first.
            lock(&self.replies).waiting.insert(seq);
            if let Err(e) = send(&mut w.0, &Request::Call { seq, call }) {
                lock(&self.replies).waiting.remove(&seq);
                return Err(e);
            }
            seq
        };
        let mut r = lock(&self.replies);
        loop {
            if let Some(result) = r.done.remove(&seq) {
                return result.map_err(ClientError::Kern);
            }
            if let Some(e) = r.broken.as_ref().map(Broken::error) {
                r.waiting.remove(&seq);
                return Err(e);
            }
            if r.reading {
                r = self.arrived.wait(r).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // No one is reading: this caller reads one frame for whoever
            // it answers.
            r.reading = true;
            drop(r);
            let got = recv(&mut lock(&self.reader));
            r = lock(&self.replies);
            r.reading = false;
            match got {
                Ok(Response::Reply { seq: s, result }) => {
                    if r.waiting.remove(&s) {
                        r.done.insert(s, result);
                    }
                }
                Ok(Response::Event(_)) => {}
                Ok(Response::ProtocolError { what }) => r.broken = Some(Broken::Protocol(what)),
                Ok(other) => r.broken = Some(Broken::Protocol(format!("unexpected {other:?}"))),
                Err(e) => r.broken = Some(Broken::of(e)),
            }
            self.arrived.notify_all();
        }
    }

    fn unit(&self, call: Call) -> Result<()> {
        match self.call(call)? {
            Reply::Unit => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn name(&self, call: Call) -> Result<PortName> {
        match self.call(call)? {
            Reply::Name(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    fn addr(&self, call: Call) -> Result<VmAddr> {
        match self.call(call)? {
            Reply::Addr(a) => Ok(a),
            other => Err(unexpected(other)),
        }
    }

    fn data(&self, call: Call) -> Result<Vec<u8>> {
        match self.call(call)? {
            Reply::Data(d) => Ok(d),
            other => Err(unexpected(other)),
        }
    }

    /// `task_create` inheriting memory: the token a process claims the
    /// child task with (in its hello, `Role::Task { child_token }`).
    pub fn task_create_token(&self) -> Result<u64> {
        match self.call(Call::TaskCreate { inherit_memory: true })? {
            Reply::ChildToken(t) => Ok(t),
            other => Err(unexpected(other)),
        }
    }

    /// `vm_allocate`: zero-filled memory.
    pub fn vm_allocate(&self, address: VmAddr, size: u64, anywhere: bool) -> Result<VmAddr> {
        self.addr(Call::VmAllocate { address, size, anywhere })
    }

    /// `vm_map`.
    pub fn vm_map(&self, args: MapArgs) -> Result<VmAddr> {
        self.addr(Call::VmMap(args))
    }

    /// `vm_deallocate`.
    pub fn vm_deallocate(&self, address: VmAddr, size: u64) -> Result<()> {
        self.unit(Call::VmDeallocate { address, size })
    }

    /// `vm_protect`.
    pub fn vm_protect(&self, address: VmAddr, size: u64, set_max: bool, prot: VmProt) -> Result<()> {
        self.unit(Call::VmProtect { address, size, set_max, prot })
    }

    /// `vm_read`.
    pub fn vm_read(&self, address: VmAddr, size: u64) -> Result<Vec<u8>> {
        self.data(Call::VmRead { address, size })
    }

    /// `vm_write`.
    pub fn vm_write(&self, address: VmAddr, data: &[u8]) -> Result<()> {
        self.unit(Call::VmWrite { address, data: data.to_vec() })
    }

    /// A task thread's load of `len` bytes (faulting as needed).
    pub fn load(&self, address: VmAddr, len: u32) -> Result<Vec<u8>> {
        self.data(Call::Load { address, len })
    }

    /// A task thread's store (faulting as needed).
    pub fn store(&self, address: VmAddr, data: &[u8]) -> Result<()> {
        self.unit(Call::Store { address, data: data.to_vec() })
    }

    /// `mach_port_allocate` (a receive right).
    pub fn port_allocate(&self) -> Result<PortName> {
        self.name(Call::PortAllocate)
    }

    /// `mach_port_allocate` (a port set).
    pub fn port_set_allocate(&self) -> Result<PortName> {
        self.name(Call::PortSetAllocate)
    }

    /// `mach_port_move_member`.
    pub fn port_move_member(&self, member: PortName, set: Option<PortName>) -> Result<()> {
        self.unit(Call::PortMoveMember { member, set })
    }

    /// `mach_port_insert_right(MAKE_SEND)` on a receive right.
    pub fn port_make_send(&self, name: PortName) -> Result<()> {
        self.unit(Call::PortMakeSend { name })
    }

    /// `mach_port_deallocate`.
    pub fn port_deallocate(&self, name: PortName) -> Result<()> {
        self.unit(Call::PortDeallocate { name })
    }

    /// `mach_port_destroy`.
    pub fn port_destroy(&self, name: PortName) -> Result<()> {
        self.unit(Call::PortDestroy { name })
    }

    /// `mach_port_mod_refs`.
    pub fn port_mod_refs(&self, name: PortName, right: RightKind, delta: i32) -> Result<()> {
        self.unit(Call::PortModRefs { name, right, delta })
    }

    /// `mach_port_type` and reference counts.
    pub fn port_lookup(&self, name: PortName) -> Result<NameInfoWire> {
        match self.call(Call::PortLookup { name })? {
            Reply::NameInfo(i) => Ok(i),
            other => Err(unexpected(other)),
        }
    }

    /// `mach_msg(SEND)`.
    pub fn msg_send(&self, args: SendArgs) -> Result<()> {
        self.unit(Call::MsgSend(args))
    }

    /// A message with data and rights (copy-send to `dest`); a full queue
    /// is `MACH_SEND_TIMED_OUT` at once.
    pub fn send(&self, dest: PortName, id: u32, data: Vec<u8>, rights: Vec<(PortName, Disposition)>) -> Result<()> {
        self.msg_send(SendArgs {
            dest,
            dest_disposition: Disposition::CopySend,
            reply: None,
            id,
            data,
            rights,
            timeout_ms: Some(0),
        })
    }

    /// `mach_msg(RCV)`, waiting at most `timeout_ms` (`None`: for good).
    pub fn msg_receive(&self, name: PortName, timeout_ms: Option<u64>) -> Result<MessageWire> {
        match self.call(Call::MsgReceive { name, timeout_ms })? {
            Reply::Message(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    /// `mach_msg(SEND|RCV)`: sends `send`, then receives on `name` as
    /// [`Connection::msg_receive`] does, in one round trip. An error is
    /// the send's (nothing was received) or the receive's.
    pub fn msg_send_receive(&self, send: SendArgs, name: PortName, timeout_ms: Option<u64>) -> Result<MessageWire> {
        match self.call(Call::MsgSendReceive { send, name, timeout_ms })? {
            Reply::Message(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    /// `memory_object_create_proxy`; returns `(proxy, revoke)`.
    pub fn proxy_create(
        &self,
        max: VmProt,
        objects: &[PortName],
        offsets: &[u64],
        starts: &[u64],
        lens: &[u64],
        version: Option<ProxyVersion>,
    ) -> Result<(PortName, PortName)> {
        let call = Call::ProxyCreate {
            max,
            objects: objects.to_vec(),
            offsets: offsets.to_vec(),
            starts: starts.to_vec(),
            lens: lens.to_vec(),
            version,
        };
        match self.call(call)? {
            Reply::Names { proxy, revoke } => Ok((proxy, revoke)),
            other => Err(unexpected(other)),
        }
    }

    /// `memory_object_proxy_revoke`.
    pub fn proxy_revoke(&self, revoke: PortName) -> Result<()> {
        self.unit(Call::ProxyRevoke { revoke })
    }

    /// `memory_object_proxy_info`.
    pub fn proxy_info(&self, proxy: PortName) -> Result<ProxyInfoWire> {
        match self.call(Call::ProxyInfo { proxy })? {
            Reply::ProxyInfo(i) => Ok(i),
            other => Err(unexpected(other)),
        }
    }

    /// `vm_set_default_memory_manager`.
    pub fn set_default_memory_manager(&self, host_priv: PortName, manager: PortName) -> Result<()> {
        self.unit(Call::SetDefaultMemoryManager { host_priv, manager })
    }

    /// Registers a send right to `object` under `name` in the daemon's
    /// name table (first come, first served; the name dies with this
    /// connection).
    pub fn name_register(&self, name: &str, object: PortName) -> Result<()> {
        self.unit(Call::NameRegister { name: name.to_string(), object })
    }

    /// A send right to what `name` was registered with.
    pub fn name_lookup(&self, name: &str) -> Result<PortName> {
        self.name(Call::NameLookup { name: name.to_string() })
    }

    /// What the daemon shows of itself (`machvm ps`, `vmmap`, ...).
    pub fn inspect(&self, what: InspectWhat) -> Result<Reply> {
        self.call(Call::Inspect(what))
    }
}

fn unexpected(r: Reply) -> ClientError {
    ClientError::Protocol(format!("unexpected reply {r:?}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn send(w: &mut BufWriter<UnixStream>, r: &Request) -> Result<()> {
    write_frame(w, r).map_err(frame_error)?;
    std::io::Write::flush(w)?;
    Ok(())
}

fn recv(r: &mut BufReader<UnixStream>) -> Result<Response> {
    match read_frame(r) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(ClientError::Closed),
        Err(e) => Err(frame_error(e)),
    }
}

/// `vm_map` arguments: `size` bytes anywhere of `object` (or zero fill),
/// read/write, with the defaults of `vm_map`.
pub fn map_anywhere(size: u64, object: Option<PortName>) -> MapArgs {
    MapArgs {
        address: VmAddr(0),
        size,
        mask: 0,
        anywhere: true,
        object,
        offset: machvm_protocol::VmOffset(0),
        copy: false,
        cur: VmProt::DEFAULT,
        max: VmProt::ALL,
        inherit: machvm_protocol::VmInherit::Copy,
    }
}

//! The transport seam of the suites: a task talks to "a kernel
//! connection", in-process or a socket to `machvmd`, and a rule written
//! once against [`TaskLink`] runs over both ([`Transport`]).
//!
//! 1. A [`Host`] is the kernel the rule talks to: a `Kernel` in the test's
//!    process ([`Transport::Local`]), or a `machvmd` ([`Daemon`]) served
//!    on a thread of the test process, on a socket of its own in a
//!    temporary directory ([`Transport::Socket`]), stopped and joined when
//!    the host drops (also when the test fails), with a watchdog that
//!    stops it if a test wedges on it.
//! 2. Each task is a [`Task`]: a [`Local`] (the kernel and a `TaskId`) or
//!    a [`Remote`] (a `machvm_client::Connection`: over the socket a
//!    connection *is* its task). Every call a rule makes on a task goes
//!    through it, and over the socket that is a call on the wire.
//! 3. A pager is a `PagerConn<Task>`: over the socket a `Role::Pager`
//!    connection, through the pager library's `KernelLink` for it.
//! 4. The daemon runs in the test process, so what a rule asserts of the
//!    kernel as a whole (stats, queued messages) and the kernel-wide knobs
//!    an operator turns (the resident limit, the cache flush of a
//!    shutdown) go to [`Host::k`], the daemon's own kernel.
//! 5. Fixture shortcuts that no task call makes (handing a right from one
//!    task to another, lending the host privilege, killing a pager task
//!    at teardown) are methods of [`Host`], named as such, and take the
//!    kernel's `TaskId` of each task ([`TaskLink::id`]); a rule never uses
//!    them for what it tests.
//!
//! A task's threads are the test's threads that call through its
//! [`Task`]. Over the socket they share the task's one connection and call
//! at once (`machvm_client::Connection` takes calls from several threads,
//! each waiting for its own reply, and `machvmd` runs a connection's calls
//! as they come): a call that waits (for a pager, for a message) holds up
//! no other call of the task, as in-process. [`Remote`] adds no lock of
//! its own around the connection.

use machvm_client::Connection;
use machvm_core::ipc::{Disposition, PortName, ReceivedMessage, RightKind, UserMessage};
use machvm_core::memory_object::proxy::WindowInfo;
use machvm_core::pmap::Machine;
use machvm_core::{
    KernError, Kernel, KernelConfig, MapRequest, ProxyInfo, ProxyRights, ProxyVersion, RegionInfo, Result, TaskId,
    VmAddr, VmInherit, VmProt,
};
use machvm_daemon::{Daemon, DaemonConfig, Shared};
use machvm_pagers::{serve, Backing, KernelLink, Local, PagerConn, PagerStats};
use machvm_protocol::wire::{self, Call, MapArgs, NameInfoWire, Reply, Role, SendArgs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a rule reaches its kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Calls on a `Kernel` in the test's process.
    Local,
    /// Calls on the wire to a `machvmd` (served on a thread of the test).
    Socket,
}

/// The calls a task makes on itself, as the suites use them. Errors are
/// the kernel's Mach errors on both transports (a connection that is gone
/// is `KERN_TERMINATED`).
pub trait TaskLink: Send + Sync + std::fmt::Debug {
    /// The kernel's name of the task, for fixtures and kernel-wide
    /// assertions only (no call of a rule names a task).
    fn id(&self) -> TaskId;
    /// `vm_allocate`.
    fn vm_allocate(&self, address: VmAddr, size: u64, anywhere: bool) -> Result<VmAddr>;
    /// `vm_map`.
    fn vm_map(&self, r: MapRequest) -> Result<VmAddr>;
    /// `vm_deallocate`.
    fn vm_deallocate(&self, address: VmAddr, size: u64) -> Result<()>;
    /// `vm_protect`.
    fn vm_protect(&self, address: VmAddr, size: u64, set_max: bool, prot: VmProt) -> Result<()>;
    /// `vm_inherit`.
    fn vm_inherit(&self, address: VmAddr, size: u64, inherit: VmInherit) -> Result<()>;
    /// `vm_region`.
    fn vm_region(&self, address: VmAddr) -> Result<RegionInfo>;
    /// `vm_read`.
    fn vm_read(&self, address: VmAddr, size: u64) -> Result<Vec<u8>>;
    /// `vm_write`.
    fn vm_write(&self, address: VmAddr, data: &[u8]) -> Result<()>;
    /// `vm_copy`.
    fn vm_copy(&self, source: VmAddr, size: u64, dest: VmAddr) -> Result<()>;
    /// A task thread's load (faulting as needed).
    fn read(&self, address: VmAddr, buf: &mut [u8]) -> Result<()>;
    /// A task thread's store (faulting as needed).
    fn write(&self, address: VmAddr, data: &[u8]) -> Result<()>;
    /// A task thread's instruction fetch.
    fn execute(&self, address: VmAddr) -> Result<()>;
    /// `task_create` of a child that inherits the caller's memory as each
    /// entry says (over the socket: a new connection claims it).
    fn task_create(&self) -> Result<Task>;
    /// The task ends (over the socket: its connection closes), once the
    /// kernel has ended it. The task must not be shared any more.
    fn terminate(self: Arc<Self>) -> Result<()>;
    /// `mach_port_allocate` (receive right).
    fn port_allocate(&self) -> Result<PortName>;
    /// `mach_port_allocate` (port set).
    fn port_set_allocate(&self) -> Result<PortName>;
    /// `mach_port_insert_right(MAKE_SEND)`.
    fn port_make_send(&self, name: PortName) -> Result<()>;
    /// `mach_port_move_member`.
    fn port_move_member(&self, member: PortName, set: Option<PortName>) -> Result<()>;
    /// `mach_port_deallocate`.
    fn port_deallocate(&self, name: PortName) -> Result<()>;
    /// `mach_port_destroy`.
    fn port_destroy(&self, name: PortName) -> Result<()>;
    /// `mach_port_mod_refs`.
    fn port_mod_refs(&self, name: PortName, right: RightKind, delta: i32) -> Result<()>;
    /// `mach_port_type` with reference counts.
    fn port_lookup(&self, name: PortName) -> Result<NameInfoWire>;
    /// `mach_msg(SEND)`; a full queue is `MACH_SEND_TIMED_OUT` at once.
    fn msg_send(&self, m: UserMessage) -> Result<()>;
    /// `mach_msg(RCV)`, waiting at most `timeout` (`None`: for good).
    fn msg_receive(&self, name: PortName, timeout: Option<Duration>) -> Result<ReceivedMessage>;
    /// `memory_object_create_proxy`, of `version` or the kernel's default.
    fn create_proxy(
        &self,
        max: VmProt,
        objects: &[PortName],
        offsets: &[u64],
        starts: &[u64],
        lens: &[u64],
        version: Option<ProxyVersion>,
    ) -> Result<ProxyRights>;
    /// `vm_region_create_proxy`.
    fn vm_region_create_proxy(&self, address: VmAddr, max: VmProt, len: u64) -> Result<ProxyRights>;
    /// `memory_object_proxy_revoke`.
    fn memory_object_proxy_revoke(&self, revoke: PortName) -> Result<()>;
    /// `memory_object_proxy_info`.
    fn memory_object_proxy_info(&self, proxy: PortName) -> Result<ProxyInfo>;
    /// `vm_set_default_memory_manager`.
    fn set_default_memory_manager(&self, host_priv: PortName, manager: PortName) -> Result<()>;
    /// The same task as the pager library reaches it (`machvm_pagers::Local`,
    /// or its `KernelLink` for a `machvm_client::Connection`): what a
    /// `PagerConn<Task>` calls through.
    fn pager_link(&self) -> &dyn KernelLink;
}

/// A task of a rule: shared by the threads of the test that act as its
/// threads.
#[derive(Clone, Debug)]
pub struct Task(Arc<dyn TaskLink>);

impl std::ops::Deref for Task {
    type Target = dyn TaskLink;
    fn deref(&self) -> &(dyn TaskLink + 'static) {
        &*self.0
    }
}

impl Task {
    pub fn new(link: impl TaskLink + 'static) -> Task {
        Task(Arc::new(link))
    }

    /// The task ends (see [`TaskLink::terminate`]).
    pub fn terminate(self) -> Result<()> {
        self.0.terminate()
    }

    /// Reads a little-endian `u64`.
    pub fn read_u64(&self, address: VmAddr) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(address, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian `u64`.
    pub fn write_u64(&self, address: VmAddr, v: u64) -> Result<()> {
        self.write(address, &v.to_le_bytes())
    }

    /// `memory_object_create_proxy` of the kernel's default version.
    pub fn memory_object_create_proxy(
        &self,
        max: VmProt,
        objects: &[PortName],
        offsets: &[u64],
        starts: &[u64],
        lens: &[u64],
    ) -> Result<ProxyRights> {
        self.create_proxy(max, objects, offsets, starts, lens, None)
    }

    /// `memory_object_create_proxy` of a chosen version.
    #[allow(clippy::too_many_arguments)]
    pub fn memory_object_create_proxy_version(
        &self,
        max: VmProt,
        objects: &[PortName],
        offsets: &[u64],
        starts: &[u64],
        lens: &[u64],
        version: ProxyVersion,
    ) -> Result<ProxyRights> {
        self.create_proxy(max, objects, offsets, starts, lens, Some(version))
    }
}

/// A pager's calls go through the pager library's own link for the task
/// (see [`TaskLink::pager_link`]).
impl KernelLink for Task {
    fn port_allocate(&self) -> Result<PortName> {
        self.0.pager_link().port_allocate()
    }
    fn port_set_allocate(&self) -> Result<PortName> {
        self.0.pager_link().port_set_allocate()
    }
    fn port_make_send(&self, name: PortName) -> Result<()> {
        self.0.pager_link().port_make_send(name)
    }
    fn port_move_member(&self, member: PortName, set: Option<PortName>) -> Result<()> {
        self.0.pager_link().port_move_member(member, set)
    }
    fn port_deallocate(&self, name: PortName) -> Result<()> {
        self.0.pager_link().port_deallocate(name)
    }
    fn port_destroy(&self, name: PortName) -> Result<()> {
        self.0.pager_link().port_destroy(name)
    }
    fn port_mod_refs(&self, name: PortName, right: RightKind, delta: i32) -> Result<()> {
        self.0.pager_link().port_mod_refs(name, right, delta)
    }
    fn msg_send(&self, dest: PortName, id: u32, data: Vec<u8>, reply: Option<(PortName, Disposition)>) -> Result<()> {
        self.0.pager_link().msg_send(dest, id, data, reply)
    }
    fn msg_receive(&self, name: PortName, timeout: Option<Duration>) -> Result<ReceivedMessage> {
        self.0.pager_link().msg_receive(name, timeout)
    }
    fn staging_attach(&self, size: u64) -> Result<Option<machvm_pagers::link::Staging>> {
        self.0.pager_link().staging_attach(size)
    }
}

// ----- in-process -----

impl TaskLink for Local {
    fn id(&self) -> TaskId {
        self.task
    }
    fn vm_allocate(&self, address: VmAddr, size: u64, anywhere: bool) -> Result<VmAddr> {
        self.kernel.vm_allocate(self.task, address, size, anywhere)
    }
    fn vm_map(&self, r: MapRequest) -> Result<VmAddr> {
        self.kernel.vm_map(self.task, r)
    }
    fn vm_deallocate(&self, address: VmAddr, size: u64) -> Result<()> {
        self.kernel.vm_deallocate(self.task, address, size)
    }
    fn vm_protect(&self, address: VmAddr, size: u64, set_max: bool, prot: VmProt) -> Result<()> {
        self.kernel.vm_protect(self.task, address, size, set_max, prot)
    }
    fn vm_inherit(&self, address: VmAddr, size: u64, inherit: VmInherit) -> Result<()> {
        self.kernel.vm_inherit(self.task, address, size, inherit)
    }
    fn vm_region(&self, address: VmAddr) -> Result<RegionInfo> {
        self.kernel.vm_region(self.task, address)
    }
    fn vm_read(&self, address: VmAddr, size: u64) -> Result<Vec<u8>> {
        self.kernel.vm_read(self.task, address, size)
    }
    fn vm_write(&self, address: VmAddr, data: &[u8]) -> Result<()> {
        self.kernel.vm_write(self.task, address, data)
    }
    fn vm_copy(&self, source: VmAddr, size: u64, dest: VmAddr) -> Result<()> {
        self.kernel.vm_copy(self.task, source, size, dest)
    }
    fn read(&self, address: VmAddr, buf: &mut [u8]) -> Result<()> {
        self.kernel.read(self.task, address, buf)
    }
    fn write(&self, address: VmAddr, data: &[u8]) -> Result<()> {
        self.kernel.write(self.task, address, data)
    }
    fn execute(&self, address: VmAddr) -> Result<()> {
        self.kernel.execute(self.task, address)
    }
    fn task_create(&self) -> Result<Task> {
        let child = self.kernel.task_create(Some(self.task))?;
        Ok(Task::new(Local { kernel: self.kernel.clone(), task: child }))
    }
    fn terminate(self: Arc<Self>) -> Result<()> {
        self.kernel.task_terminate(self.task)
    }
    fn port_allocate(&self) -> Result<PortName> {
        self.kernel.port_allocate(self.task)
    }
    fn port_set_allocate(&self) -> Result<PortName> {
        self.kernel.port_set_allocate(self.task)
    }
    fn port_make_send(&self, name: PortName) -> Result<()> {
        self.kernel.port_make_send(self.task, name)
    }
    fn port_move_member(&self, member: PortName, set: Option<PortName>) -> Result<()> {
        self.kernel.port_move_member(self.task, member, set)
    }
    fn port_deallocate(&self, name: PortName) -> Result<()> {
        self.kernel.port_deallocate(self.task, name)
    }
    fn port_destroy(&self, name: PortName) -> Result<()> {
        self.kernel.port_destroy(self.task, name)
    }
    fn port_mod_refs(&self, name: PortName, right: RightKind, delta: i32) -> Result<()> {
        self.kernel.port_mod_refs(self.task, name, right, delta)
    }
    fn port_lookup(&self, name: PortName) -> Result<NameInfoWire> {
        let i = self.kernel.port_lookup(self.task, name)?;
        Ok(NameInfoWire {
            receive: i.receive,
            send_urefs: i.send_urefs,
            send_once: i.send_once,
            dead_urefs: i.dead_urefs,
            port_set: i.port_set,
        })
    }
    fn msg_send(&self, m: UserMessage) -> Result<()> {
        self.kernel.msg_send(self.task, m)
    }
    fn msg_receive(&self, name: PortName, timeout: Option<Duration>) -> Result<ReceivedMessage> {
        self.kernel.msg_receive(self.task, name, timeout)
    }
    fn create_proxy(
        &self,
        max: VmProt,
        objects: &[PortName],
        offsets: &[u64],
        starts: &[u64],
        lens: &[u64],
        version: Option<ProxyVersion>,
    ) -> Result<ProxyRights> {
        match version {
            Some(v) => {
                self.kernel.memory_object_create_proxy_version(self.task, max, objects, offsets, starts, lens, v)
            }
            None => self.kernel.memory_object_create_proxy(self.task, max, objects, offsets, starts, lens),
        }
    }
    fn vm_region_create_proxy(&self, address: VmAddr, max: VmProt, len: u64) -> Result<ProxyRights> {
        self.kernel.vm_region_create_proxy(self.task, address, max, len)
    }
    fn memory_object_proxy_revoke(&self, revoke: PortName) -> Result<()> {
        self.kernel.memory_object_proxy_revoke(self.task, revoke)
    }
    fn memory_object_proxy_info(&self, proxy: PortName) -> Result<ProxyInfo> {
        self.kernel.memory_object_proxy_info(self.task, proxy)
    }
    fn set_default_memory_manager(&self, host_priv: PortName, manager: PortName) -> Result<()> {
        self.kernel.set_default_memory_manager(self.task, host_priv, manager)
    }
    fn pager_link(&self) -> &dyn KernelLink {
        self
    }
}

// ----- over the socket -----

/// A task that is a connection to `machvmd`.
#[derive(Debug)]
pub struct Remote {
    conn: Connection,
    /// The kernel's name of the connection's task (from the daemon's
    /// connection table: for fixtures only).
    id: TaskId,
    socket: PathBuf,
    /// The daemon, to name the tasks of new connections and to see one
    /// go; no call of the task goes through it.
    shared: Arc<Shared>,
}

impl Remote {
    /// Connects to the daemon as `role`: the connection is a new task (or
    /// the child a token claims).
    fn connect(socket: &std::path::Path, shared: &Arc<Shared>, role: Role, name: &str) -> Result<Remote> {
        let conn = Connection::connect(socket, role, name).map_err(|e| e.kern())?;
        let id = shared
            .connections()
            .into_iter()
            .find(|c| c.task.number() == conn.task())
            .map(|c| c.task)
            .ok_or(KernError::InvalidTask)?;
        Ok(Remote { conn, id, socket: socket.to_path_buf(), shared: shared.clone() })
    }

    fn call(&self, call: Call) -> Result<Reply> {
        self.conn.call(call).map_err(|e| e.kern())
    }

    fn unit(&self, call: Call) -> Result<()> {
        match self.call(call)? {
            Reply::Unit => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn names(&self, call: Call) -> Result<ProxyRights> {
        match self.call(call)? {
            Reply::Names { proxy, revoke } => Ok(ProxyRights { proxy, revoke }),
            other => Err(unexpected(other)),
        }
    }
}

#[track_caller]
fn unexpected(r: Reply) -> KernError {
    panic!("the daemon answered with the wrong reply: {r:?}")
}

fn wire_version(v: ProxyVersion) -> wire::ProxyVersion {
    match v {
        ProxyVersion::Mapping => wire::ProxyVersion::Mapping,
        ProxyVersion::Paging => wire::ProxyVersion::Paging,
    }
}

impl TaskLink for Remote {
    fn id(&self) -> TaskId {
        self.id
    }
    fn vm_allocate(&self, address: VmAddr, size: u64, anywhere: bool) -> Result<VmAddr> {
        self.conn.vm_allocate(address, size, anywhere).map_err(|e| e.kern())
    }
    fn vm_map(&self, r: MapRequest) -> Result<VmAddr> {
        let args = MapArgs {
            address: r.address,
            size: r.size,
            mask: r.mask,
            anywhere: r.anywhere,
            object: r.object,
            offset: r.offset,
            copy: r.copy,
            cur: r.cur,
            max: r.max,
            inherit: r.inherit,
        };
        self.conn.vm_map(args).map_err(|e| e.kern())
    }
    fn vm_deallocate(&self, address: VmAddr, size: u64) -> Result<()> {
        self.conn.vm_deallocate(address, size).map_err(|e| e.kern())
    }
    fn vm_protect(&self, address: VmAddr, size: u64, set_max: bool, prot: VmProt) -> Result<()> {
        self.conn.vm_protect(address, size, set_max, prot).map_err(|e| e.kern())
    }
    fn vm_inherit(&self, address: VmAddr, size: u64, inherit: VmInherit) -> Result<()> {
        self.unit(Call::VmInherit { address, size, inherit })
    }
    fn vm_region(&self, address: VmAddr) -> Result<RegionInfo> {
        match self.call(Call::VmRegion { address })? {
            Reply::Region(r) => Ok(RegionInfo {
                start: r.start,
                size: r.size,
                cur: r.cur,
                max: r.max,
                inherit: r.inherit,
                offset: r.offset,
                shared: r.shared,
            }),
            other => Err(unexpected(other)),
        }
    }
    fn vm_read(&self, address: VmAddr, size: u64) -> Result<Vec<u8>> {
        self.conn.vm_read(address, size).map_err(|e| e.kern())
    }
    fn vm_write(&self, address: VmAddr, data: &[u8]) -> Result<()> {
        self.conn.vm_write(address, data).map_err(|e| e.kern())
    }
    fn vm_copy(&self, source: VmAddr, size: u64, dest: VmAddr) -> Result<()> {
        self.unit(Call::VmCopy { source, size, dest })
    }
    fn read(&self, address: VmAddr, buf: &mut [u8]) -> Result<()> {
        let len = u32::try_from(buf.len()).map_err(|_| KernError::InvalidArgument)?;
        let data = self.conn.load(address, len).map_err(|e| e.kern())?;
        buf.copy_from_slice(&data);
        Ok(())
    }
    fn write(&self, address: VmAddr, data: &[u8]) -> Result<()> {
        self.conn.store(address, data).map_err(|e| e.kern())
    }
    fn execute(&self, address: VmAddr) -> Result<()> {
        self.unit(Call::Execute { address })
    }
    fn task_create(&self) -> Result<Task> {
        match self.call(Call::TaskCreate { inherit_memory: true })? {
            Reply::ChildToken(token) => {
                let role = Role::Task { child_token: Some(token) };
                Ok(Task::new(Remote::connect(&self.socket, &self.shared, role, "child")?))
            }
            other => Err(unexpected(other)),
        }
    }
    fn terminate(self: Arc<Self>) -> Result<()> {
        let me = Arc::try_unwrap(self).expect("a task that ends is no longer shared");
        let (shared, id) = (me.shared.clone(), me.id);
        drop(me);
        // The daemon ends the task when it sees the connection close.
        let deadline = Instant::now() + Duration::from_secs(5);
        while shared.connections().iter().any(|c| c.task == id) {
            assert!(Instant::now() < deadline, "the daemon did not end a closed connection's task");
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
    fn port_allocate(&self) -> Result<PortName> {
        self.conn.port_allocate().map_err(|e| e.kern())
    }
    fn port_set_allocate(&self) -> Result<PortName> {
        self.conn.port_set_allocate().map_err(|e| e.kern())
    }
    fn port_make_send(&self, name: PortName) -> Result<()> {
        self.conn.port_make_send(name).map_err(|e| e.kern())
    }
    fn port_move_member(&self, member: PortName, set: Option<PortName>) -> Result<()> {
        self.conn.port_move_member(member, set).map_err(|e| e.kern())
    }
    fn port_deallocate(&self, name: PortName) -> Result<()> {
        self.conn.port_deallocate(name).map_err(|e| e.kern())
    }
    fn port_destroy(&self, name: PortName) -> Result<()> {
        self.conn.port_destroy(name).map_err(|e| e.kern())
    }
    fn port_mod_refs(&self, name: PortName, right: RightKind, delta: i32) -> Result<()> {
        self.conn.port_mod_refs(name, right, delta).map_err(|e| e.kern())
    }
    fn port_lookup(&self, name: PortName) -> Result<NameInfoWire> {
        self.conn.port_lookup(name).map_err(|e| e.kern())
    }
    fn msg_send(&self, m: UserMessage) -> Result<()> {
        let args = SendArgs {
            dest: m.dest,
            dest_disposition: m.dest_disposition,
            reply: m.reply,
            id: m.id,
            data: m.data,
            rights: m.rights,
            timeout_ms: Some(0),
        };
        self.conn.msg_send(args).map_err(|e| e.kern())
    }
    fn msg_receive(&self, name: PortName, timeout: Option<Duration>) -> Result<ReceivedMessage> {
        KernelLink::msg_receive(&self.conn, name, timeout)
    }
    fn create_proxy(
        &self,
        max: VmProt,
        objects: &[PortName],
        offsets: &[u64],
        starts: &[u64],
        lens: &[u64],
        version: Option<ProxyVersion>,
    ) -> Result<ProxyRights> {
        self.names(Call::ProxyCreate {
            max,
            objects: objects.to_vec(),
            offsets: offsets.to_vec(),
            starts: starts.to_vec(),
            lens: lens.to_vec(),
            version: version.map(wire_version),
        })
    }
    fn vm_region_create_proxy(&self, address: VmAddr, max: VmProt, len: u64) -> Result<ProxyRights> {
        self.names(Call::RegionProxy { address, max, len })
    }
    fn memory_object_proxy_revoke(&self, revoke: PortName) -> Result<()> {
        self.conn.proxy_revoke(revoke).map_err(|e| e.kern())
    }
    fn memory_object_proxy_info(&self, proxy: PortName) -> Result<ProxyInfo> {
        let i = self.conn.proxy_info(proxy).map_err(|e| e.kern())?;
        Ok(ProxyInfo {
            version: match i.version {
                wire::ProxyVersion::Mapping => ProxyVersion::Mapping,
                wire::ProxyVersion::Paging => ProxyVersion::Paging,
            },
            protection: i.protection,
            windows: i
                .windows
                .iter()
                .map(|w| WindowInfo {
                    offset: w.offset,
                    len: w.len,
                    start: w.start,
                    prot: w.prot,
                    target_is_proxy: w.target_is_proxy,
                })
                .collect(),
            revoked: i.revoked,
        })
    }
    fn set_default_memory_manager(&self, host_priv: PortName, manager: PortName) -> Result<()> {
        self.conn.set_default_memory_manager(host_priv, manager).map_err(|e| e.kern())
    }
    fn pager_link(&self) -> &dyn KernelLink {
        &self.conn
    }
}

// ----- the host -----

/// How long a test may run against its daemon before the watchdog stops
/// the daemon: every call blocked on it then fails, so that a rule that
/// wedges over the socket fails instead of hanging the suite.
const WATCHDOG: Duration = Duration::from_secs(60);

/// `machvmd` served on a thread of the test process.
#[derive(Debug)]
struct InThread {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    serve: Option<JoinHandle<std::io::Result<()>>>,
    /// Dropped to tell the watchdog the test is over.
    watchdog: Option<mpsc::Sender<()>>,
    dir: super::daemon::Dir,
}

impl Drop for InThread {
    fn drop(&mut self) {
        self.watchdog.take();
        self.stop.store(true, Ordering::Relaxed);
        // The daemon's stop has deadlines of its own (a few seconds).
        if let Some(t) = self.serve.take() {
            let _ = t.join();
        }
        // A daemon that stopped holds nothing: every proxy, object and
        // page went with the connections that held them.
        let st = self.shared.kernel.stats();
        if !std::thread::panicking() {
            assert_eq!((st.proxies, st.objects, st.resident), (0, 0, 0), "left in machvmd after it stopped");
        }
    }
}

/// The kernel a rule talks to (see the module comment).
#[derive(Debug)]
pub struct Host {
    /// The kernel (the daemon's, over the socket): for kernel-wide
    /// assertions and knobs, never for a task's calls.
    pub k: Arc<Kernel>,
    pub transport: Transport,
    daemon: Option<InThread>,
}

impl Host {
    /// A kernel booted with `config`, reached over `transport`.
    pub fn boot(transport: Transport, config: KernelConfig) -> Host {
        match transport {
            Transport::Local => Host { k: Kernel::new(config), transport, daemon: None },
            Transport::Socket => Host::serve(config),
        }
    }

    /// An in-process kernel on a machine of the caller's.
    pub fn on_machine(config: KernelConfig, machine: Arc<dyn Machine>) -> Host {
        Host { k: Kernel::with_machine(config, machine), transport: Transport::Local, daemon: None }
    }

    fn serve(config: KernelConfig) -> Host {
        let dir = super::daemon::Dir::new("suite");
        let daemon = Daemon::boot(DaemonConfig {
            socket: dir.socket(),
            group: None,
            phys_pages: config.phys_pages,
            resident_limit: config.resident_limit,
            swap: None,
            // A uid no connection of the test has: as in-process, no task
            // holds the host privilege unless a fixture lends it.
            host_priv_uid: Some(u32::MAX - 1),
            limits: config.limits,
            proxy_version: config.proxy_version,
            cluster_pages: config.cluster_pages,
            memory: machvm_daemon::MemoryMode::Auto,
            loops: 1,
            max_conns_per_uid: usize::MAX,
        })
        .expect("booting machvmd");
        let listener = daemon.bind().expect("binding machvmd's socket");
        let shared = daemon.shared.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let serve = std::thread::Builder::new()
            .name("machvmd".into())
            .spawn(move || daemon.serve(listener, &flag))
            .expect("starting machvmd's thread");
        let (tx, rx) = mpsc::channel::<()>();
        let flag = stop.clone();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(WATCHDOG) {
                eprintln!("watchdog: the test is still running after {WATCHDOG:?}: stopping its machvmd");
                flag.store(true, Ordering::Relaxed);
            }
        });
        let k = shared.kernel.clone();
        let daemon = InThread { shared, stop, serve: Some(serve), watchdog: Some(tx), dir };
        Host { k, transport: Transport::Socket, daemon: Some(daemon) }
    }

    fn connect(&self, role: Role, name: &str) -> Task {
        match &self.daemon {
            None => Task::new(Local { kernel: self.k.clone(), task: self.k.task_create(None).unwrap() }),
            Some(d) => Task::new(Remote::connect(&d.dir.socket(), &d.shared, role, name).expect("connecting")),
        }
    }

    /// A new task with nothing in it.
    pub fn task(&self) -> Task {
        self.connect(Role::Task { child_token: None }, "task")
    }

    /// A new pager with an empty port set (over the socket, a
    /// `Role::Pager` connection).
    pub fn pager(&self) -> PagerConn<Task> {
        PagerConn::over(self.connect(Role::Pager, "pager")).unwrap()
    }

    /// Fixture only: moves a right from `from`'s space to `to`'s as a
    /// message would (`port_transfer` on the kernel); returns its name
    /// there.
    pub fn transfer(&self, from: TaskId, name: PortName, how: Disposition, to: TaskId) -> Result<PortName> {
        self.k.port_transfer(from, name, how, to)
    }

    /// Fixture only: a copy of `from`'s send right `name`, given to `to`.
    pub fn give(&self, from: &Task, name: PortName, to: &Task) -> PortName {
        self.transfer(from.id(), name, Disposition::CopySend, to.id()).unwrap()
    }

    /// Fixture only: a send right to the host-privilege port in `to`'s
    /// space, lent by whoever booted the kernel (in-process, a booter
    /// task; over the socket, the daemon's own task). Once per host.
    pub fn lend_host_priv(&self, to: &Task) -> PortName {
        let (holder, host_priv) = match &self.daemon {
            None => {
                let booter = self.k.task_create(None).unwrap();
                (booter, self.k.boot_host_priv(booter).unwrap())
            }
            Some(d) => (d.shared.own, d.shared.host_priv),
        };
        self.transfer(holder, host_priv, Disposition::CopySend, to.id()).unwrap()
    }

    /// Starts serving `conn`'s objects from `backing` on a thread of its
    /// own.
    pub fn run_pager(&self, mut conn: PagerConn<Task>, mut backing: impl Backing + 'static) -> Running {
        let stats = Arc::new(PagerStats::default());
        let task = conn.link.id();
        let s = stats.clone();
        let join = std::thread::Builder::new()
            .name("pager".into())
            .spawn(move || serve(&mut conn, &mut backing, &s))
            .expect("spawning a pager thread");
        Running { k: self.k.clone(), task, stats, join: Some(join) }
    }
}

/// A pager serving on its own thread (as `machvm_pagers::RunningPager`,
/// over either transport).
#[derive(Debug)]
pub struct Running {
    k: Arc<Kernel>,
    /// The pager's task, for fixtures.
    pub task: TaskId,
    pub stats: Arc<PagerStats>,
    join: Option<JoinHandle<()>>,
}

impl Running {
    /// Stops the pager: its task ends (a fixture's shortcut, as a pager
    /// process that is killed), so its ports die and its thread returns.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(j) = self.join.take() {
            let _ = self.k.task_terminate(self.task);
            let deadline = Instant::now() + Duration::from_secs(5);
            while !j.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if j.is_finished() {
                let _ = j.join();
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A pager dies: its task ends (over the socket its connection closes),
/// its ports die.
pub fn die(pager: PagerConn<Task>) -> Result<()> {
    pager.link.terminate()
}

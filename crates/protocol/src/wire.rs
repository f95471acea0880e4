//! The messages between `machvmd` and the processes that connect to it.
//!
//! The daemon owns the kernel and serves it on a Unix socket. A connection
//! *is* a task (a pager is a task too): no message names the task it acts
//! on, and every name in a message is a name in that task's IPC space.
//! Each message is one frame ([`crate::frame`]).
//!
//! The flow of one connection:
//!
//! 1. The client connects and sends [`Request::Hello`] as its first frame:
//!    the [`PROTOCOL_VERSION`] it speaks, its [`Role`], and a name for logs.
//! 2. The daemon answers [`Response::Welcome`] with its own version and the
//!    task's number (a new task, or the child task the hello's
//!    `child_token` claims; the first connection may also get a send right
//!    to the host-privilege port), or [`Response::Refused`] (another
//!    version, an unknown or used child token) and closes.
//! 3. The client sends [`Request::Call`]s, each with a `seq` of its
//!    choosing; it may send more before the replies come.
//! 4. The daemon answers each call with one [`Response::Reply`] carrying
//!    the call's `seq` and the kernel's result: a [`Reply`] or the Mach
//!    error. A call that must wait (a receive with no message queued, an
//!    access or `vm_read`/`vm_write`/`vm_copy` that faults on a page its
//!    pager has not supplied yet) is answered when the wait ends, so
//!    replies can come in another order than the calls: `seq` ties them
//!    together, and a client that needs calls done in order waits for each
//!    reply before the next call.
//! 5. Between replies the daemon may send [`Response::Event`]s, which
//!    answer no call.
//! 6. A frame that does not decode, a call before the hello, a second
//!    hello, or a request that fails [`Request::check`] is a protocol error:
//!    the daemon sends [`Response::ProtocolError`] naming what was wrong
//!    and closes that connection, and no other.
//! 7. Either side ends the connection by closing it (end of stream between
//!    frames). When a connection closes, its task is terminated.
//!
//! [`Request::Hello`], [`Response::Welcome`] and [`Response::Refused`]
//! keep their place and fields in every version (a [`Role`] may only gain
//! variants, at the end), so a client of another version is told so rather
//! than misunderstood; a hello with a role this daemon does not know does
//! not decode, and is a protocol error.
//!
//! Within one version, a request may gain variants at the end of its enum,
//! each answered by a reply variant at the end of [`Reply`]
//! ([`InspectWhat::Charges`] was added so): every message of before
//! encodes as it did, so a client that does not know the new variants is
//! understood as before, and a daemon that does not know them cannot decode
//! the request and closes that connection with a protocol error, which a
//! client asking for something new must be ready for.
//!
//! Decoding is total (any byte string is a message or an error), but a
//! decoded message can still claim too much: [`Request::check`] bounds
//! what postcard cannot (see [`MAX_DATA`], [`MAX_RIGHTS`],
//! [`MAX_PROXY_ENTRIES`], [`MAX_NAME_LEN`]). What the kernel itself judges
//! (alignment, protections with unknown bits, array lengths that differ) is
//! left to it, and comes back as the Mach error a local caller would get.

#![warn(missing_docs)]

use crate::emmi::CopyStrategy;
use crate::ipc::{Disposition, PortName, RightKind};
use crate::types::{KernError, VmAddr, VmInherit, VmOffset, VmProt};
use serde::{Deserialize, Serialize};

/// The version of this protocol; a daemon refuses a hello of another.
pub const PROTOCOL_VERSION: u32 = 1;

/// The most bytes of data one request may carry or ask for (`vm_write`,
/// `store`, message data; `vm_read` and `load` lengths, whose replies carry
/// as much): 2 MiB, 512 pages. A frame has room for it and the rest of the
/// message ([`crate::frame::MAX_FRAME`]).
pub const MAX_DATA: usize = 2 << 20;

/// The most port rights one message may carry in its body.
pub const MAX_RIGHTS: usize = 64;

/// The most entries in each array of a `memory_object_create_proxy` (more
/// than the kernel's window limit, so that the kernel refuses a call
/// between the two with its own `KERN_RESOURCE_SHORTAGE`).
pub const MAX_PROXY_ENTRIES: usize = 65_536;

/// The longest name (in bytes, UTF-8): a client's name in its hello, a name
/// in the name service.
pub const MAX_NAME_LEN: usize = 255;

/// What a client sends the daemon.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Request {
    /// The first frame of every connection (step 1 of the flow).
    Hello {
        /// The [`PROTOCOL_VERSION`] the client speaks.
        version: u32,
        /// What the connection is.
        role: Role,
        /// A name for the daemon's logs and its task list (at most
        /// [`MAX_NAME_LEN`] bytes).
        name: String,
    },
    /// A kernel call made by the connection's task.
    Call {
        /// Chosen by the client and echoed in the reply; keep it unique
        /// among the calls not answered yet.
        seq: u64,
        /// The call.
        call: Call,
    },
}

/// What a connection is, said in its hello.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Role {
    /// A task.
    Task {
        /// Claims the child task a `task_create` made (the token its
        /// [`Reply::ChildToken`] gave the parent), rather than a new task.
        child_token: Option<u64>,
    },
    /// A pager: a task that serves memory objects (for the daemon's logs
    /// and task list; its calls are a task's).
    Pager,
}

/// What the daemon sends a client.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Response {
    /// The hello is accepted: the connection is task `task` from now on.
    Welcome {
        /// The daemon's [`PROTOCOL_VERSION`].
        version: u32,
        /// The task's number (as in [`Reply::Tasks`]).
        task: u32,
        /// A send right to the host-privilege port, given to one connection
        /// only (whoever boots the system, as Mach gives it to its
        /// bootstrap task).
        host_priv: Option<PortName>,
    },
    /// The hello is refused; the daemon closes the connection.
    Refused {
        /// The daemon's [`PROTOCOL_VERSION`].
        version: u32,
        /// Why, for a person.
        reason: String,
    },
    /// The answer to the call `seq`.
    Reply {
        /// The call's `seq`.
        seq: u64,
        /// The kernel's answer, or the Mach error of the call.
        result: Result<Reply, KernError>,
    },
    /// Something that answers no call.
    Event(Event),
    /// The connection broke the protocol; the daemon closes it after this.
    ProtocolError {
        /// What was wrong, for a person.
        what: String,
    },
}

/// What the daemon tells a client unasked.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Event {
    /// The call `seq` must wait (for a message, or for a pager to supply a
    /// page); its reply comes when the wait ends. Only informative: a
    /// daemon need not send it.
    Waiting {
        /// The waiting call's `seq`.
        seq: u64,
    },
    /// The daemon is stopping and closes the connection after this.
    Shutdown {
        /// Why, for a person.
        reason: String,
    },
}

/// One kernel call, made by the connection's task. Each variant says the
/// [`Reply`] it gets on success.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Call {
    /// `vm_allocate` → [`Reply::Addr`].
    VmAllocate {
        /// Where (a hint ignored when `anywhere`).
        address: VmAddr,
        /// Bytes.
        size: u64,
        /// Let the kernel choose the address.
        anywhere: bool,
    },
    /// `vm_map` → [`Reply::Addr`].
    VmMap(MapArgs),
    /// `vm_deallocate` → [`Reply::Unit`].
    VmDeallocate {
        /// Start of the range.
        address: VmAddr,
        /// Bytes.
        size: u64,
    },
    /// `vm_protect` → [`Reply::Unit`].
    VmProtect {
        /// Start of the range.
        address: VmAddr,
        /// Bytes.
        size: u64,
        /// Set the maximum protection rather than the current one.
        set_max: bool,
        /// The protection.
        prot: VmProt,
    },
    /// `vm_inherit` → [`Reply::Unit`].
    VmInherit {
        /// Start of the range.
        address: VmAddr,
        /// Bytes.
        size: u64,
        /// What a child gets of the range.
        inherit: VmInherit,
    },
    /// `vm_region` → [`Reply::Region`].
    VmRegion {
        /// The entry containing this address, or the first above it.
        address: VmAddr,
    },
    /// `vm_read` → [`Reply::Data`].
    VmRead {
        /// Start of the range.
        address: VmAddr,
        /// Bytes, at most [`MAX_DATA`].
        size: u64,
    },
    /// `vm_write` → [`Reply::Unit`].
    VmWrite {
        /// Where.
        address: VmAddr,
        /// What (at most [`MAX_DATA`] bytes).
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// `vm_copy` → [`Reply::Unit`].
    VmCopy {
        /// From.
        source: VmAddr,
        /// Bytes.
        size: u64,
        /// To.
        dest: VmAddr,
    },
    /// A task thread loads `len` bytes (through the MMU, faulting as
    /// needed; bytes before a failing page are lost with the error) →
    /// [`Reply::Data`].
    Load {
        /// Where.
        address: VmAddr,
        /// Bytes, at most [`MAX_DATA`].
        len: u32,
    },
    /// A task thread stores `data` (faulting as needed; bytes before a
    /// failing page stay stored) → [`Reply::Unit`].
    Store {
        /// Where.
        address: VmAddr,
        /// What (at most [`MAX_DATA`] bytes).
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A task thread fetches an instruction (checks execute permission,
    /// faulting the page in) → [`Reply::Unit`].
    Execute {
        /// Where.
        address: VmAddr,
    },
    /// `task_create`: a child task, for a process to claim with
    /// [`Role::Task`]'s `child_token` → [`Reply::ChildToken`].
    TaskCreate {
        /// The child gets the caller's memory as each entry's inheritance
        /// says; otherwise an empty address space.
        inherit_memory: bool,
    },
    /// `mach_port_allocate(MACH_PORT_RIGHT_RECEIVE)` → [`Reply::Name`].
    PortAllocate,
    /// `mach_port_allocate(MACH_PORT_RIGHT_PORT_SET)` → [`Reply::Name`].
    PortSetAllocate,
    /// `mach_port_move_member` → [`Reply::Unit`].
    PortMoveMember {
        /// A receive right.
        member: PortName,
        /// The port set to put it in; `None` takes it out of its set.
        set: Option<PortName>,
    },
    /// `mach_port_insert_right(MACH_MSG_TYPE_MAKE_SEND)` on a receive
    /// right, under the same name → [`Reply::Unit`].
    PortMakeSend {
        /// The receive right.
        name: PortName,
    },
    /// `mach_port_deallocate` → [`Reply::Unit`].
    PortDeallocate {
        /// The name.
        name: PortName,
    },
    /// `mach_port_destroy` → [`Reply::Unit`].
    PortDestroy {
        /// The name.
        name: PortName,
    },
    /// `mach_port_mod_refs` → [`Reply::Unit`].
    PortModRefs {
        /// The name.
        name: PortName,
        /// Which right's references.
        right: RightKind,
        /// Added to the count.
        delta: i32,
    },
    /// `mach_port_type` with reference counts → [`Reply::NameInfo`].
    PortLookup {
        /// The name.
        name: PortName,
    },
    /// `mach_port_request_notification` → [`Reply::Unit`].
    PortRequestNotification {
        /// The right to watch.
        name: PortName,
        /// Which notification.
        kind: NotifyKind,
        /// A receive right of the caller's the notification is sent to.
        notify: PortName,
    },
    /// `mach_msg(MACH_SEND_MSG)` → [`Reply::Unit`].
    MsgSend(SendArgs),
    /// `mach_msg(MACH_RCV_MSG)` on a receive right or port set →
    /// [`Reply::Message`] (it may wait: step 4 of the flow).
    MsgReceive {
        /// The receive right or port set.
        name: PortName,
        /// Give up after this long (`MACH_RCV_TIMED_OUT`); `None` waits
        /// for good, `Some(0)` only looks.
        timeout_ms: Option<u64>,
    },
    /// `memory_object_create_proxy`: window `i` shows `lens[i]` bytes of
    /// `objects[i]` from `starts[i]` at `offsets[i]` →
    /// [`Reply::Names`].
    ProxyCreate {
        /// The most any window allows.
        max: VmProt,
        /// Memory objects or proxies (send rights), at most
        /// [`MAX_PROXY_ENTRIES`] (as each array).
        objects: Vec<PortName>,
        /// Where each window is in the proxy.
        offsets: Vec<u64>,
        /// Where each window starts in its object.
        starts: Vec<u64>,
        /// Each window's length.
        lens: Vec<u64>,
        /// Which implementation; `None` is the kernel's default.
        version: Option<ProxyVersion>,
    },
    /// `vm_region_create_proxy`: a proxy of `len` bytes of the caller's
    /// memory from `address` → [`Reply::Names`].
    RegionProxy {
        /// Start of the range.
        address: VmAddr,
        /// The most the proxy allows.
        max: VmProt,
        /// Bytes.
        len: u64,
    },
    /// `memory_object_proxy_revoke` → [`Reply::Unit`].
    ProxyRevoke {
        /// The revoke right.
        revoke: PortName,
    },
    /// `memory_object_proxy_info` → [`Reply::ProxyInfo`].
    ProxyInfo {
        /// A send right to the proxy.
        proxy: PortName,
    },
    /// `vm_set_default_memory_manager` → [`Reply::Unit`].
    SetDefaultMemoryManager {
        /// A send right to the host-privilege port.
        host_priv: PortName,
        /// The default pager's port (a send right, or a receive right a
        /// send right is made from).
        manager: PortName,
    },
    /// `netname_check_in`: the name service (the daemon's, for bootstrap)
    /// keeps a send right made from `object` (copied from a send right,
    /// or made from a receive right) under `name` → [`Reply::Unit`].
    NameRegister {
        /// The name (at most [`MAX_NAME_LEN`] bytes).
        name: String,
        /// The right.
        object: PortName,
    },
    /// `netname_look_up`: a send right to what `name` was registered with,
    /// in the caller's space → [`Reply::Name`].
    NameLookup {
        /// The name (at most [`MAX_NAME_LEN`] bytes).
        name: String,
    },
    /// The daemon's introspection → the [`Reply`] of the same name.
    Inspect(InspectWhat),
    /// `mach_msg(MACH_SEND_MSG | MACH_RCV_MSG)`: the send, then (if it
    /// succeeded) the receive, in one round trip → [`Reply::Message`], or
    /// the send's error (nothing received). What a server loop makes: the
    /// answer to one request and the wait for the next.
    MsgSendReceive {
        /// The message sent first.
        send: SendArgs,
        /// The receive right or port set received on.
        name: PortName,
        /// The receive gives up after this long (as for `MsgReceive`).
        timeout_ms: Option<u64>,
    },
    /// Makes the caller's memory real (`crate::memory`): the daemon takes
    /// the caller's userfaultfd and its end of a memory channel from the
    /// caller's descriptor table (`pidfd_getfd`, which needs the daemon to
    /// be privileged over the caller), and bounds the task's address space
    /// to the arena the caller reserved → [`Reply::Unit`]. Only a task with
    /// no memory mapped yet can; `KERN_NOT_SUPPORTED` where the daemon
    /// cannot serve real memory.
    MemoryAttach {
        /// The caller's userfaultfd, before its handshake.
        uffd: i32,
        /// The caller's end of a `SOCK_SEQPACKET` socket pair, for the
        /// daemon (the caller keeps the other end).
        channel: i32,
        /// The arena: the task's whole address space from now on.
        arena_start: VmAddr,
        /// Its length in bytes.
        arena_len: u64,
    },
    /// Gives the daemon the caller's staging area: a memfd of the
    /// caller's into which it writes the pages it supplies, named in
    /// `memory_object_data_supply_staged` messages by their offset there,
    /// so that pages reach the kernel without travelling in a message.
    /// The daemon takes the descriptor from the caller's table
    /// (`pidfd_getfd`), seals it against shrinking, and only ever reads it
    /// (`copy_file_range` into the object's memory) → [`Reply::Unit`]. A
    /// second call replaces the first area. `KERN_NOT_SUPPORTED` where the
    /// daemon keeps pages in no memfds (the software MMU);
    /// `KERN_INVALID_ARGUMENT` for a descriptor that is not a memfd of at
    /// least `len` bytes, or a `len` that is not a nonzero page multiple.
    StagingAttach {
        /// The memfd, by its number in the caller's descriptor table.
        memfd: i32,
        /// The bytes of it the staging area covers, from offset 0.
        len: u64,
    },
}

/// The arguments of `vm_map`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MapArgs {
    /// Where (a hint ignored when `anywhere`).
    pub address: VmAddr,
    /// Bytes.
    pub size: u64,
    /// Alignment mask: the address is a multiple of `mask + 1`.
    pub mask: u64,
    /// Let the kernel choose the address.
    pub anywhere: bool,
    /// A memory object (send right) or proxy; `None` is zero-filled memory.
    pub object: Option<PortName>,
    /// Where in the object.
    pub offset: VmOffset,
    /// Map a copy-on-write snapshot rather than the object itself.
    pub copy: bool,
    /// The current protection.
    pub cur: VmProt,
    /// The maximum protection.
    pub max: VmProt,
    /// What a child gets of the mapping.
    pub inherit: VmInherit,
}

/// The arguments of `mach_msg(MACH_SEND_MSG)`: names in the sender's space.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SendArgs {
    /// The destination.
    pub dest: PortName,
    /// What sending does with the destination right.
    pub dest_disposition: Disposition,
    /// The reply port and what sending does with it.
    pub reply: Option<(PortName, Disposition)>,
    /// `msgh_id`.
    pub id: u32,
    /// Inline data (at most [`MAX_DATA`] bytes).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Port rights in the body (at most [`MAX_RIGHTS`]).
    pub rights: Vec<(PortName, Disposition)>,
    /// Give up after this long if the message cannot be queued; `None`
    /// waits for good.
    pub timeout_ms: Option<u64>,
}

/// Which notification `mach_port_request_notification` asks for.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyKind {
    /// `MACH_NOTIFY_NO_SENDERS` on a receive right.
    NoSenders,
    /// `MACH_NOTIFY_DEAD_NAME` for a send right.
    DeadName,
}

/// Which implementation backs a proxy.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyVersion {
    /// `vm_map` maps the underlying objects with reduced protection.
    Mapping,
    /// The kernel pages the proxy, checking every request (revocable).
    Paging,
}

/// What the daemon's introspection reports on. Any connection may ask
/// about any task; a listing too large for one frame is
/// `KERN_RESOURCE_SHORTAGE`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum InspectWhat {
    /// Every task → [`Reply::Tasks`].
    Tasks,
    /// One task's address space → [`Reply::VmMap`].
    VmMap {
        /// The task's number (as in [`TaskRow::task`]): a connected one,
        /// else `KERN_INVALID_TASK`.
        task: u32,
    },
    /// Every VM object → [`Reply::Objects`].
    Objects,
    /// Every proxy → [`Reply::Proxies`].
    Proxies,
    /// The kernel's counters → [`Reply::Stats`].
    Stats,
    /// The resident pages charged to each task, and its limit →
    /// [`Reply::Charges`] (added within version 1, see the module comment).
    Charges,
    /// The Mach exceptions of task processes with real memory (faults the
    /// VM refused), also of tasks that have ended since →
    /// [`Reply::Exceptions`] (added within version 1).
    Exceptions,
}

/// A successful call's answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Reply {
    /// Nothing to say.
    Unit,
    /// An address.
    Addr(VmAddr),
    /// A name in the caller's space.
    Name(PortName),
    /// A new proxy's rights.
    Names {
        /// A send right to the proxy.
        proxy: PortName,
        /// A send right that revokes it.
        revoke: PortName,
    },
    /// What `vm_region` reports.
    Region(RegionWire),
    /// Bytes read.
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A message received.
    Message(MessageWire),
    /// What a name denotes.
    NameInfo(NameInfoWire),
    /// What a proxy grants.
    ProxyInfo(ProxyInfoWire),
    /// The token a process claims a new child task with.
    ChildToken(u64),
    /// Introspection: the tasks.
    Tasks(Vec<TaskRow>),
    /// Introspection: a task's map entries, in address order.
    VmMap(Vec<EntryRow>),
    /// Introspection: the VM objects.
    Objects(Vec<ObjectRow>),
    /// Introspection: the proxies.
    Proxies(Vec<ProxyRow>),
    /// Introspection: counters by name.
    Stats(Vec<(String, u64)>),
    /// Introspection: what each task is charged.
    Charges(Vec<ChargeRow>),
    /// Introspection: the exceptions of task processes, by task.
    Exceptions(Vec<ExceptionRow>),
}

/// Introspection: the exceptions of one task process (faults the VM
/// refused, each ending the process with `SIGSEGV` or `SIGBUS`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ExceptionRow {
    /// The task's number (as in [`TaskRow::task`]).
    pub task: u32,
    /// Its process.
    pub pid: u32,
    /// How many exceptions it had.
    pub count: u64,
    /// The last one: the faulting address,
    pub addr: VmAddr,
    /// the access,
    pub access: VmProt,
    /// and the Mach error of the fault.
    pub error: KernError,
}

/// What `vm_region` reports.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RegionWire {
    /// Where the entry starts.
    pub start: VmAddr,
    /// Its length.
    pub size: u64,
    /// Current protection.
    pub cur: VmProt,
    /// Maximum protection.
    pub max: VmProt,
    /// Inheritance.
    pub inherit: VmInherit,
    /// Offset in its object.
    pub offset: VmOffset,
    /// The memory is shared with another mapping.
    pub shared: bool,
}

/// A message as its receiver gets it: rights renamed into its space.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MessageWire {
    /// The port it arrived on (a member of the set received on, or the
    /// port itself).
    pub local: PortName,
    /// `msgh_id`.
    pub id: u32,
    /// Inline data.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// The reply right the sender gave.
    pub reply: Option<PortName>,
    /// The rights in the body.
    pub rights: Vec<(PortName, RightKind)>,
    /// The kernel sent it (Mach's trailer with the kernel's security
    /// token); no task can forge it.
    pub from_kernel: bool,
}

/// What a name denotes in the caller's space (`mach_port_type` and
/// reference counts).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct NameInfoWire {
    /// A receive right.
    pub receive: bool,
    /// User references of the send right (0: none).
    pub send_urefs: u32,
    /// A send-once right.
    pub send_once: bool,
    /// User references of the dead name (0: not dead).
    pub dead_urefs: u32,
    /// A port set.
    pub port_set: bool,
}

/// What `memory_object_proxy_info` reports.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProxyInfoWire {
    /// Which implementation backs it.
    pub version: ProxyVersion,
    /// The union of what the windows allow.
    pub protection: VmProt,
    /// The windows, by offset.
    pub windows: Vec<WindowWire>,
    /// It, or a paging proxy one of its windows reaches, was revoked.
    pub revoked: bool,
}

/// One window of a proxy.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WindowWire {
    /// Where it is in the proxy.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// Where it starts in its target.
    pub start: u64,
    /// What it allows.
    pub prot: VmProt,
    /// The target is another (paging) proxy rather than a real object.
    pub target_is_proxy: bool,
}

/// Introspection: one task.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TaskRow {
    /// The task's number.
    pub task: u32,
    /// The process connected as it (none for a child not claimed yet).
    pub pid: Option<u32>,
    /// That process's user.
    pub uid: Option<u32>,
    /// The name from its hello.
    pub name: String,
    /// Map entries.
    pub entries: u64,
    /// Pages resident in its address space.
    pub resident: u64,
}

/// Introspection: the resident pages charged to one task
/// (`machvm_core::TaskLimits::resident_pages`: a page is charged to the
/// task whose fault made it resident, until it leaves memory).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ChargeRow {
    /// The task's number (as in [`TaskRow::task`]).
    pub task: u32,
    /// Resident pages charged to it.
    pub charged: u64,
    /// The most it may have charged; `None`: no limit.
    pub limit: Option<u64>,
}

/// Introspection: one map entry.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct EntryRow {
    /// First address.
    pub start: VmAddr,
    /// One past the last address.
    pub end: VmAddr,
    /// Current protection.
    pub cur: VmProt,
    /// Maximum protection.
    pub max: VmProt,
    /// Inheritance.
    pub inherit: VmInherit,
    /// The VM object mapped (as in [`ObjectRow::object`]); `None` before
    /// first use of zero-filled memory.
    pub object: Option<u64>,
    /// Offset in the object.
    pub offset: VmOffset,
    /// The paging proxies the memory is reached through (as in
    /// [`ProxyRow::proxy`]): revoking any of them cuts the entry.
    pub via: Vec<u64>,
    /// Others may map the same memory (Mach's `is_shared`).
    pub shared: bool,
    /// The object is shared copy-on-write: the first write makes a shadow.
    pub needs_copy: bool,
}

/// What a VM object is.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// Served by a pager over the EMMI.
    External,
    /// Anonymous memory (served by the default pager once paged out).
    Temporary,
    /// A paging proxy's view (the kernel is its pager; no pages of its own).
    View,
}

/// Introspection: one VM object.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ObjectRow {
    /// The object's number.
    pub object: u64,
    /// What it is.
    pub kind: ObjectKind,
    /// Who pages it, for a person: the task holding the memory object
    /// port's receive right and the name from its hello, or the kernel (a
    /// view's proxy); `None` for anonymous memory no pager has, or a pager
    /// that is gone.
    pub pager: Option<String>,
    /// The pager's task number (as in [`TaskRow::task`]), if its port has
    /// a receiver.
    pub pager_task: Option<u32>,
    /// The pager's side of the object, for an object a pager was given.
    pub pager_state: Option<PagerState>,
    /// Pages resident.
    pub resident: u64,
    /// Size in bytes (an external object's is the whole offset space).
    pub size: u64,
    /// References (map entries, shadows, proxies); 0: only the object
    /// cache keeps it.
    pub refs: u32,
    /// The object behind it (copy-on-write) and the offset into that.
    pub shadow: Option<(u64, u64)>,
    /// The newest copy object made of it.
    pub copy: Option<u64>,
    /// The paging proxy a view belongs to (as in [`ProxyRow::proxy`]).
    pub proxy: Option<u64>,
    /// Kernel → pager EMMI messages about it, by name.
    pub sent: Vec<(String, u64)>,
    /// Pager → kernel EMMI messages about it, by name.
    pub received: Vec<(String, u64)>,
}

/// Introspection: what the kernel knows of an object's pager.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PagerState {
    /// The object was handed to the default pager (`memory_object_create`).
    pub default_pager: bool,
    /// The pager said `ready`.
    pub ready: bool,
    /// The pager's port died, or the pager destroyed the object.
    pub dead: bool,
    /// The object may outlive its last reference (the object cache).
    pub may_cache: bool,
    /// How copies of it are made.
    pub copy_strategy: CopyStrategy,
    /// Pages asked of the pager at once on a fault.
    pub cluster_pages: u32,
}

/// Introspection: one proxy.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProxyRow {
    /// The proxy's number (as in [`EntryRow::via`]).
    pub proxy: u64,
    /// Which implementation backs it.
    pub version: ProxyVersion,
    /// Its windows.
    pub windows: Vec<WindowWire>,
    /// The union of what the windows allow.
    pub protection: VmProt,
    /// It, or a paging proxy it reaches, was revoked.
    pub revoked: bool,
    /// The VM object behind each window, in the order of `windows` (as in
    /// [`ObjectRow::object`]; an inner paging proxy's view for a window
    /// over that proxy).
    pub targets: Vec<u64>,
    /// A paging proxy's view object (what mapping it maps).
    pub view: Option<u64>,
    /// Nobody holds a send right to it any more: it lives on for the
    /// mappings made through it, or for its revoke right.
    pub port_dead: bool,
    /// Paging proxies its memory is reached through although no window
    /// targets their view (a proxy of memory mapped through them).
    pub via: Vec<u64>,
}

impl Request {
    /// Is the request within the protocol's bounds? `Err` names what was
    /// wrong, for a [`Response::ProtocolError`].
    pub fn check(&self) -> Result<(), String> {
        match self {
            Request::Hello { name, .. } => check_name("hello", "name", name),
            Request::Call { call, .. } => call.check(),
        }
    }
}

impl Call {
    /// The Mach name of the call, for logs (`"vm_map"`).
    pub fn name(&self) -> &'static str {
        match self {
            Call::VmAllocate { .. } => "vm_allocate",
            Call::VmMap(_) => "vm_map",
            Call::VmDeallocate { .. } => "vm_deallocate",
            Call::VmProtect { .. } => "vm_protect",
            Call::VmInherit { .. } => "vm_inherit",
            Call::VmRegion { .. } => "vm_region",
            Call::VmRead { .. } => "vm_read",
            Call::VmWrite { .. } => "vm_write",
            Call::VmCopy { .. } => "vm_copy",
            Call::Load { .. } => "load",
            Call::Store { .. } => "store",
            Call::Execute { .. } => "execute",
            Call::TaskCreate { .. } => "task_create",
            Call::PortAllocate => "mach_port_allocate",
            Call::PortSetAllocate => "mach_port_allocate(port_set)",
            Call::PortMoveMember { .. } => "mach_port_move_member",
            Call::PortMakeSend { .. } => "mach_port_insert_right(make_send)",
            Call::PortDeallocate { .. } => "mach_port_deallocate",
            Call::PortDestroy { .. } => "mach_port_destroy",
            Call::PortModRefs { .. } => "mach_port_mod_refs",
            Call::PortLookup { .. } => "mach_port_type",
            Call::PortRequestNotification { .. } => "mach_port_request_notification",
            Call::MsgSend(_) => "mach_msg(send)",
            Call::MsgReceive { .. } => "mach_msg(receive)",
            Call::ProxyCreate { .. } => "memory_object_create_proxy",
            Call::RegionProxy { .. } => "vm_region_create_proxy",
            Call::ProxyRevoke { .. } => "memory_object_proxy_revoke",
            Call::ProxyInfo { .. } => "memory_object_proxy_info",
            Call::SetDefaultMemoryManager { .. } => "vm_set_default_memory_manager",
            Call::NameRegister { .. } => "netname_check_in",
            Call::NameLookup { .. } => "netname_look_up",
            Call::Inspect(_) => "inspect",
            Call::MsgSendReceive { .. } => "mach_msg(send|receive)",
            Call::MemoryAttach { .. } => "memory_attach",
            Call::StagingAttach { .. } => "staging_attach",
        }
    }

    /// Is the call within the protocol's bounds: data and lengths at most
    /// [`MAX_DATA`], rights at most [`MAX_RIGHTS`], proxy arrays at most
    /// [`MAX_PROXY_ENTRIES`] each, names at most [`MAX_NAME_LEN`] bytes?
    /// `Err` names the call, the field and the limit, for a
    /// [`Response::ProtocolError`].
    ///
    /// Everything else (alignment, ranges, protections, rights, array
    /// lengths that differ) is the kernel's to judge.
    pub fn check(&self) -> Result<(), String> {
        let call = self.name();
        match self {
            Call::VmRead { size, .. } => {
                check_len(call, "size", usize::try_from(*size).unwrap_or(usize::MAX), MAX_DATA)
            }
            Call::Load { len, .. } => check_len(call, "len", usize::try_from(*len).unwrap_or(usize::MAX), MAX_DATA),
            Call::VmWrite { data, .. } | Call::Store { data, .. } => check_len(call, "data", data.len(), MAX_DATA),
            Call::MsgSend(m) | Call::MsgSendReceive { send: m, .. } => {
                check_len(call, "data", m.data.len(), MAX_DATA)?;
                check_len(call, "rights", m.rights.len(), MAX_RIGHTS)
            }
            Call::ProxyCreate { objects, offsets, starts, lens, .. } => {
                check_len(call, "objects", objects.len(), MAX_PROXY_ENTRIES)?;
                check_len(call, "offsets", offsets.len(), MAX_PROXY_ENTRIES)?;
                check_len(call, "starts", starts.len(), MAX_PROXY_ENTRIES)?;
                check_len(call, "lens", lens.len(), MAX_PROXY_ENTRIES)
            }
            Call::NameRegister { name, .. } | Call::NameLookup { name } => check_name(call, "name", name),
            _ => Ok(()),
        }
    }
}

/// `Err` if `len` is over `max`.
fn check_len(call: &str, field: &str, len: usize, max: usize) -> Result<(), String> {
    if len > max {
        return Err(format!("{call}: {field} of {len} is over the limit of {max}"));
    }
    Ok(())
}

/// `Err` if `name` is longer than [`MAX_NAME_LEN`] bytes.
fn check_name(call: &str, field: &str, name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME_LEN {
        return Err(format!("{call}: {field} of {} bytes is over the limit of {MAX_NAME_LEN}", name.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_body, encode_frame, read_frame, MAX_FRAME};

    fn call(call: Call) -> Request {
        Request::Call { seq: 1, call }
    }

    #[test]
    fn every_call_has_its_mach_name() {
        let c = Call::VmMap(MapArgs {
            address: VmAddr(0),
            size: 4096,
            mask: 0,
            anywhere: true,
            object: None,
            offset: VmOffset(0),
            copy: false,
            cur: VmProt::DEFAULT,
            max: VmProt::ALL,
            inherit: VmInherit::Copy,
        });
        assert_eq!(c.name(), "vm_map");
        assert_eq!(Call::NameLookup { name: "x".into() }.name(), "netname_look_up");
        assert_eq!(Call::Inspect(InspectWhat::Stats).name(), "inspect");
    }

    #[test]
    fn the_bounds_are_inclusive_and_errors_name_the_field() {
        let at = vec![0u8; MAX_DATA];
        assert_eq!(call(Call::VmWrite { address: VmAddr(0), data: at.clone() }).check(), Ok(()));
        let over = vec![0u8; MAX_DATA + 1];
        let e = call(Call::Store { address: VmAddr(0), data: over.clone() }).check().unwrap_err();
        assert_eq!(e, format!("store: data of {} is over the limit of {MAX_DATA}", MAX_DATA + 1));
        let e = Call::VmRead { address: VmAddr(0), size: u64::MAX }.check().unwrap_err();
        assert!(e.starts_with("vm_read: size of"), "{e}");
        assert!(Call::Load { address: VmAddr(0), len: u32::MAX }.check().unwrap_err().starts_with("load: len"));
        assert_eq!(Call::Load { address: VmAddr(0), len: MAX_DATA as u32 }.check(), Ok(()));

        let send = |data: Vec<u8>, n: usize| {
            Call::MsgSend(SendArgs {
                dest: PortName(1),
                dest_disposition: Disposition::CopySend,
                reply: None,
                id: 7,
                data,
                rights: vec![(PortName(2), Disposition::CopySend); n],
                timeout_ms: None,
            })
        };
        assert_eq!(send(at.clone(), MAX_RIGHTS).check(), Ok(()));
        assert!(send(Vec::new(), MAX_RIGHTS + 1).check().unwrap_err().starts_with("mach_msg(send): rights of 65"));
        assert!(send(over, 0).check().unwrap_err().starts_with("mach_msg(send): data"));

        let proxy = |n: usize, m: usize| Call::ProxyCreate {
            max: VmProt::READ,
            objects: vec![PortName(1); n],
            offsets: vec![0; n],
            starts: vec![0; n],
            lens: vec![4096; m],
            version: None,
        };
        assert_eq!(proxy(MAX_PROXY_ENTRIES, MAX_PROXY_ENTRIES).check(), Ok(()));
        assert_eq!(proxy(1, 3).check(), Ok(()), "lengths that differ are the kernel's to refuse");
        let e = proxy(1, MAX_PROXY_ENTRIES + 1).check().unwrap_err();
        assert!(e.starts_with("memory_object_create_proxy: lens of 65537"), "{e}");

        let long = "n".repeat(MAX_NAME_LEN + 1);
        assert_eq!(Call::NameLookup { name: "n".repeat(MAX_NAME_LEN) }.check(), Ok(()));
        let e = Call::NameRegister { name: long.clone(), object: PortName(1) }.check().unwrap_err();
        assert_eq!(e, "netname_check_in: name of 256 bytes is over the limit of 255");
        let hello = Request::Hello { version: PROTOCOL_VERSION, role: Role::Pager, name: long };
        assert!(hello.check().unwrap_err().starts_with("hello: name of 256 bytes"));
    }

    #[test]
    fn the_largest_data_fits_a_frame_with_its_message() {
        let req = Request::Call {
            seq: u64::MAX,
            call: Call::MsgSend(SendArgs {
                dest: PortName(u32::MAX),
                dest_disposition: Disposition::MakeSendOnce,
                reply: Some((PortName(u32::MAX), Disposition::MakeSendOnce)),
                id: u32::MAX,
                data: vec![0xa5; MAX_DATA],
                rights: vec![(PortName(u32::MAX), Disposition::MoveReceive); MAX_RIGHTS],
                timeout_ms: Some(u64::MAX),
            }),
        };
        req.check().unwrap();
        let frame = encode_frame(&req).unwrap();
        assert!(frame.len() - 4 <= MAX_FRAME);
        assert_eq!(read_frame::<Request>(&mut &frame[..]).unwrap(), Some(req));

        let reply = Response::Reply {
            seq: u64::MAX,
            result: Ok(Reply::Message(MessageWire {
                local: PortName(u32::MAX),
                id: u32::MAX,
                data: vec![0x5a; MAX_DATA],
                reply: Some(PortName(u32::MAX)),
                rights: vec![(PortName(u32::MAX), RightKind::SendOnce); MAX_RIGHTS],
                from_kernel: true,
            })),
        };
        let frame = encode_frame(&reply).unwrap();
        assert_eq!(decode_body::<Response>(&frame[4..]).unwrap(), reply);
    }

    #[test]
    fn data_travels_as_one_run_of_bytes() {
        // `serde_bytes` for data is postcard's plain sequence encoding (a
        // length, then the bytes), decoded in one copy.
        let data = vec![1u8, 2, 3];
        let as_bytes = postcard::to_stdvec(&Reply::Data(data.clone())).unwrap();
        #[derive(Serialize)]
        enum Plain {
            _Unit,
            _Addr,
            _Name,
            _Names,
            _Region,
            Data(Vec<u8>),
        }
        assert_eq!(as_bytes, postcard::to_stdvec(&Plain::Data(data)).unwrap());
        assert_eq!(as_bytes, [5, 3, 1, 2, 3]);
    }

    #[test]
    fn charges_came_last_so_every_older_message_encodes_as_before() {
        // Variant indices are what postcard puts on the wire.
        let bytes = |c: &Call| postcard::to_stdvec(c).unwrap();
        assert_eq!(bytes(&Call::Inspect(InspectWhat::Stats))[1..], [4]);
        assert_eq!(bytes(&Call::Inspect(InspectWhat::Charges))[1..], [5]);
        assert_eq!(postcard::to_stdvec(&Reply::Stats(Vec::new())).unwrap(), [14, 0]);
        let row = ChargeRow { task: 3, charged: 8, limit: Some(8) };
        assert_eq!(postcard::to_stdvec(&Reply::Charges(vec![row])).unwrap(), [15, 1, 3, 8, 1, 8]);
        // A daemon that knows no `Charges` cannot decode the request: its
        // own enum ends at `Stats`.
        #[derive(Deserialize, Debug)]
        enum Older {
            _Tasks,
            _VmMap { _task: u32 },
            _Objects,
            _Proxies,
            _Stats,
        }
        assert!(postcard::from_bytes::<Older>(&[4]).is_ok());
        assert!(postcard::from_bytes::<Older>(&[5]).is_err());
    }

    #[test]
    fn errors_in_replies_travel_as_codes() {
        let r = Response::Reply { seq: 9, result: Err(KernError::RcvTimedOut) };
        let bytes = postcard::to_stdvec(&r).unwrap();
        assert_eq!(postcard::from_bytes::<Response>(&bytes).unwrap(), r);
        // A code this side does not know reads as KERN_FAILURE.
        let odd = postcard::to_stdvec(&(2u8, 9u64, 1u8, 999u32)).unwrap();
        let r = postcard::from_bytes::<Response>(&odd).unwrap();
        assert_eq!(r, Response::Reply { seq: 9, result: Err(KernError::Failure) });
    }
}

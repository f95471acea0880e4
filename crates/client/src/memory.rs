//! Real memory for a task process: `vm_allocate` and `vm_map` give back
//! addresses in this process, touched with ordinary loads and stores,
//! whose pages the daemon serves (from pagers, zero fill, copies) and
//! whose protection the host MMU enforces.
//!
//! ```no_run
//! use machvm_client::memory::RealMemory;
//! use machvm_client::{socket_path, Connection};
//! use machvm_protocol::wire::Role;
//!
//! let conn = Connection::connect(&socket_path(None), Role::Task { child_token: None }, "example")?;
//! let mem = RealMemory::attach(conn, RealMemory::DEFAULT_ARENA)?;
//! let region = mem.vm_allocate(1 << 20)?;
//! region.write(0, b"real memory")?; // a store: the daemon zero-fills the page
//! let mut back = [0u8; 11];
//! region.read(0, &mut back)?;
//! assert_eq!(&back, b"real memory");
//! # Ok::<(), machvm_client::ClientError>(())
//! ```
//!
//! How (see `machvm_protocol::memory` for the channel):
//!
//! 1. [`RealMemory::attach`] reserves an arena (address space only), makes
//!    a userfaultfd and a socket pair, and lets the daemon take the uffd
//!    and one end of the pair (`memory_attach`); this process then closes
//!    both, so that it holds no means to resolve its own faults. The
//!    task's address space is the arena from then on.
//! 2. After each call that maps memory, the process asks for the windows
//!    of the new range, maps each object memfd it is sent at its place in
//!    the arena, and says so; the daemon registers the windows.
//! 3. Loads and stores fault to the daemon. A store where the task may
//!    only read, or a load or store of memory that is not mapped, is a
//!    Mach exception: the daemon kills the process with `SIGSEGV`. A page
//!    the daemon cannot give (a dead pager, a revoked proxy) is `SIGBUS`.
//!
//! The loads and stores of [`Region::read`] and [`Region::write`] are
//! real ones (atomic word accesses, as `machvm_host::mapping` explains):
//! the library checks nothing the MMU does not.

use crate::{ClientError, Connection, Result};
pub use machvm_host::Staging;
use machvm_host::{Arena, NewUserfaultfd, PageRange};
use machvm_protocol::memory::{self as mem, MemReply, MemRequest};
use machvm_protocol::wire::{Call, MapArgs};
use machvm_protocol::{VmAddr, PAGE_SIZE};
use rustix::fd::{AsFd, AsRawFd, OwnedFd};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use std::sync::Mutex;

/// A task whose memory is real: the connection, the arena, and the
/// memory channel.
#[derive(Debug)]
pub struct RealMemory {
    // Dropped in this order: the windows go before the task does.
    arena: Arena,
    channel: Mutex<OwnedFd>,
    conn: Connection,
}

fn host(e: machvm_host::Error) -> ClientError {
    ClientError::Io(std::io::Error::other(e.to_string()))
}

impl Connection {
    /// Gives the daemon a staging area of `size` bytes for this task (a
    /// pager's): a memfd of this process, mapped here, that the daemon
    /// copies supplied pages from (`memory_object_data_supply_staged`),
    /// so that they need not travel in a message. It replaces any staging
    /// area the task had; the daemon keeps its descriptor until the task
    /// ends or another replaces it.
    ///
    /// Errors: `KERN_NOT_SUPPORTED` where the daemon keeps its pages in no
    /// memfds (the software MMU, or no privilege over this process);
    /// `KERN_INVALID_ARGUMENT` if `size` is not a nonzero page multiple;
    /// [`ClientError::Io`] if the memfd cannot be made.
    pub fn staging_attach(&self, size: u64) -> Result<Staging> {
        if size == 0 || size % PAGE_SIZE != 0 {
            return Err(ClientError::Kern(machvm_protocol::KernError::InvalidArgument));
        }
        let staging = Staging::new(size).map_err(host)?;
        self.call(Call::StagingAttach { memfd: staging.memfd().as_raw_fd(), len: size })?;
        Ok(staging)
    }
}

impl RealMemory {
    /// The arena [`RealMemory::attach`] is usually given: 64 GiB of
    /// address space (no memory is committed for it).
    pub const DEFAULT_ARENA: u64 = 64 << 30;

    /// Makes `conn`'s task a task with real memory, its address space an
    /// arena of `arena_len` bytes of this process (see the module comment,
    /// step 1). The task must have mapped nothing yet.
    ///
    /// Errors: [`ClientError::Kern`] with `KERN_NOT_SUPPORTED` if the
    /// daemon cannot serve real memory (not root, no userfaultfd), or as
    /// the call says; [`ClientError::Io`] if this process cannot make its
    /// arena, uffd or socket pair.
    pub fn attach(conn: Connection, arena_len: u64) -> Result<RealMemory> {
        RealMemory::attach_arena(conn, Arena::reserve(arena_len).map_err(host)?)
    }

    fn attach_arena(conn: Connection, arena: Arena) -> Result<RealMemory> {
        let uffd = NewUserfaultfd::create().map_err(host)?;
        let (mine, theirs) =
            rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
                .map_err(|e| ClientError::Io(e.into()))?;
        let range = arena.range();
        conn.call(Call::MemoryAttach {
            uffd: uffd.as_fd().as_raw_fd(),
            channel: theirs.as_raw_fd(),
            arena_start: VmAddr(range.start()),
            arena_len: range.len(),
        })?;
        // The daemon holds both now; this process keeps neither.
        drop((uffd, theirs));
        Ok(RealMemory { arena, channel: Mutex::new(mine), conn })
    }

    /// The task of a program started by `machvm run` (or by any process
    /// that sets the same environment): connects to the daemon's socket
    /// (`MACHVM_SOCKET`, as [`crate::socket_path`] finds it) and attaches
    /// real memory (an arena of `MACHVM_ARENA_MIB` MiB, by default
    /// [`RealMemory::DEFAULT_ARENA`]). A child task (`MACHVM_CHILD_TOKEN`
    /// and `MACHVM_CHILD_ARENA=start:len`, as [`RealMemory::spawn_child`]
    /// sets them) claims its task and maps what it inherited.
    ///
    /// Errors: as [`Connection::connect`] and [`RealMemory::attach`];
    /// [`ClientError::Protocol`] for an environment variable that does not
    /// parse.
    pub fn from_env(name: &str) -> Result<RealMemory> {
        let bad = |v: &str| ClientError::Protocol(format!("the environment variable {v} does not parse"));
        let token = match std::env::var("MACHVM_CHILD_TOKEN") {
            Ok(t) => Some(t.parse::<u64>().map_err(|_| bad("MACHVM_CHILD_TOKEN"))?),
            Err(_) => None,
        };
        let role = machvm_protocol::wire::Role::Task { child_token: token };
        let conn = Connection::connect(&crate::socket_path(None), role, name)?;
        if token.is_some() {
            let arena = std::env::var("MACHVM_CHILD_ARENA").map_err(|_| bad("MACHVM_CHILD_ARENA"))?;
            let (start, len) = arena.split_once(':').ok_or_else(|| bad("MACHVM_CHILD_ARENA"))?;
            let start =
                u64::from_str_radix(start.trim_start_matches("0x"), 16).map_err(|_| bad("MACHVM_CHILD_ARENA"))?;
            let len = u64::from_str_radix(len.trim_start_matches("0x"), 16).map_err(|_| bad("MACHVM_CHILD_ARENA"))?;
            let range = PageRange::new(start, len).map_err(host)?;
            return RealMemory::attach_child(conn, range);
        }
        let mib = match std::env::var("MACHVM_ARENA_MIB") {
            Ok(m) => m.parse::<u64>().map_err(|_| bad("MACHVM_ARENA_MIB"))?,
            Err(_) => RealMemory::DEFAULT_ARENA >> 20,
        };
        RealMemory::attach(conn, mib << 20)
    }

    /// The names `machvm run --name` gave the program (`MACHVM_NAMES`,
    /// comma-separated): objects registered with the daemon, for
    /// [`RealMemory::map_name`].
    pub fn names_from_env() -> Vec<String> {
        std::env::var("MACHVM_NAMES")
            .map(|v| v.split(',').filter(|n| !n.is_empty()).map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Maps `size` bytes of the object (or proxy) registered under `name`,
    /// shared (`copy`: a copy-on-write copy of it instead), read and write
    /// if its rights allow, else read-only.
    ///
    /// Errors: `KERN_INVALID_NAME` if nothing is registered so; as
    /// [`RealMemory::vm_map`].
    pub fn map_name(&self, name: &str, size: u64, copy: bool) -> Result<Region<'_>> {
        let object = self.conn.name_lookup(name)?;
        let args = MapArgs { copy, ..crate::map_anywhere(size, Some(object)) };
        match self.vm_map(args.clone()) {
            Err(ClientError::Kern(machvm_protocol::KernError::ProtectionFailure)) => {
                let ro = machvm_protocol::VmProt::READ | machvm_protocol::VmProt::EXECUTE;
                self.vm_map(MapArgs { cur: ro, max: ro, ..args })
            }
            other => other,
        }
    }

    /// [`RealMemory::attach`] for a child task (made by `task_create`,
    /// claimed with its token): its address space is a copy of its
    /// parent's, at the parent's addresses, so its arena is reserved at
    /// `range` exactly (the parent's arena), and everything it inherited
    /// is mapped at once.
    ///
    /// Errors: as [`RealMemory::attach`]; [`ClientError::Io`] if this
    /// process uses part of `range` already.
    pub fn attach_child(conn: Connection, range: PageRange) -> Result<RealMemory> {
        let arena = Arena::reserve_at(range).map_err(host)?;
        let mem = RealMemory::attach_arena(conn, arena)?;
        mem.map_windows(VmAddr(range.start()), range.len())?;
        Ok(mem)
    }

    /// Makes a child task (`task_create`, inheriting as each entry says)
    /// and starts `program` as its process: the environment it needs to
    /// claim the task with [`RealMemory::from_env`] is set on `program`.
    ///
    /// Errors: as the call; [`ClientError::Io`] if the program cannot start.
    pub fn spawn_child(&self, mut program: std::process::Command) -> Result<std::process::Child> {
        let token = self.conn.task_create_token()?;
        let r = self.arena.range();
        program
            .env("MACHVM_CHILD_TOKEN", token.to_string())
            .env("MACHVM_CHILD_ARENA", format!("{:x}:{:x}", r.start(), r.len()))
            .env("MACHVM_SOCKET", crate::socket_path(None));
        Ok(program.spawn()?)
    }

    /// The connection (every other call of the task goes through it).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The arena: the task's whole address space.
    pub fn arena(&self) -> &Arena {
        &self.arena
    }

    /// `vm_allocate` anywhere: `size` bytes of zero-fill memory (rounded
    /// up to pages), mapped in this process.
    ///
    /// Errors: as the call, or as [`RealMemory::map_windows`].
    pub fn vm_allocate(&self, size: u64) -> Result<Region<'_>> {
        let at = self.conn.vm_allocate(VmAddr(0), size, true)?;
        self.region_mapped(at, size)
    }

    /// `vm_map`, mapped in this process.
    ///
    /// Errors: as the call, or as [`RealMemory::map_windows`].
    pub fn vm_map(&self, args: MapArgs) -> Result<Region<'_>> {
        let size = args.size;
        let at = self.conn.vm_map(args)?;
        self.region_mapped(at, size)
    }

    /// A handle on `[at, at + len)` of memory already mapped in this
    /// process (a child task's inherited memory, say).
    ///
    /// Errors: `KERN_INVALID_ADDRESS` if the range is not inside the arena.
    pub fn region(&self, at: VmAddr, len: u64) -> Result<Region<'_>> {
        let inside = PageRange::new(at.0, len).is_ok_and(|r| self.arena.range().contains(&r));
        if !inside {
            return Err(ClientError::Kern(machvm_protocol::KernError::InvalidAddress));
        }
        Ok(Region { mem: self, addr: at.0, len })
    }

    fn region_mapped(&self, at: VmAddr, size: u64) -> Result<Region<'_>> {
        let len = size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        if let Err(e) = self.map_windows(at, len) {
            let _ = self.conn.vm_deallocate(at, len);
            return Err(e);
        }
        Ok(Region { mem: self, addr: at.0, len })
    }

    /// Maps in this process the windows of `[at, at + len)` of the task's
    /// map (step 2 of the module comment): what [`RealMemory::vm_map`] does
    /// after its call, for memory mapped by other calls (`vm_copy` into new
    /// memory does not need it: it maps nothing new).
    ///
    /// Errors: [`ClientError::Kern`] as the daemon says (`KERN_MEMORY_ERROR`
    /// for memory behind a revoked proxy); [`ClientError::Protocol`] for a
    /// reply that does not fit; [`ClientError::Io`] if a window cannot be
    /// mapped.
    pub fn map_windows(&self, at: VmAddr, len: u64) -> Result<()> {
        let channel = self.channel.lock().unwrap_or_else(|e| e.into_inner());
        let end = at.0.checked_add(len).ok_or(ClientError::Kern(machvm_protocol::KernError::InvalidArgument))?;
        let mut from = at.0;
        while from < end {
            let (reply, fds) = ask(&channel, &MemRequest::Windows { start: VmAddr(from), len: end - from })?;
            let MemReply::Windows { windows, next } = reply else { return Err(unexpected(reply)) };
            if fds.len() != windows.len() {
                return Err(ClientError::Protocol(format!(
                    "{} windows came with {} descriptors",
                    windows.len(),
                    fds.len()
                )));
            }
            for (w, fd) in windows.iter().zip(&fds) {
                let range = PageRange::new(w.start.0, w.len).map_err(host)?;
                self.arena.place(range, fd, w.offset).map_err(host)?;
            }
            let upto = next.map_or(end, |n| n.0);
            if upto <= from || upto > end {
                return Err(ClientError::Protocol(format!("the windows go on at {upto:#x}, outside the range asked")));
            }
            match ask(&channel, &MemRequest::Mapped { start: VmAddr(from), len: upto - from })?.0 {
                MemReply::Mapped => {}
                other => return Err(unexpected(other)),
            }
            from = upto;
        }
        Ok(())
    }

    /// `vm_deallocate`, after taking the windows of the range out of this
    /// process.
    ///
    /// Errors: as the call.
    pub fn vm_deallocate(&self, at: VmAddr, len: u64) -> Result<()> {
        if let Ok(range) = PageRange::new(at.0, len.div_ceil(PAGE_SIZE) * PAGE_SIZE) {
            if self.arena.range().contains(&range) {
                self.arena.clear(range).map_err(host)?;
            }
        }
        self.conn.vm_deallocate(at, len)
    }
}

/// One request on the memory channel, and its reply with its descriptors.
fn ask(channel: &OwnedFd, req: &MemRequest) -> Result<(MemReply, Vec<OwnedFd>)> {
    let io = |e: machvm_host::Error| ClientError::Io(std::io::Error::other(e.to_string()));
    machvm_host::fdpass::send_fds(channel, &mem::encode(req), &[]).map_err(io)?;
    let mut buf = vec![0u8; mem::MAX_PACKET];
    let got = machvm_host::fdpass::recv_fds(channel, &mut buf, mem::MAX_WINDOWS).map_err(io)?;
    if got.bytes == 0 {
        return Err(ClientError::Closed);
    }
    let reply: MemReply = mem::decode(&buf[..got.bytes]).map_err(ClientError::Protocol)?;
    match reply {
        MemReply::Error(e) => Err(ClientError::Kern(e)),
        MemReply::Malformed(what) => Err(ClientError::Protocol(what)),
        r => Ok((r, got.fds)),
    }
}

fn unexpected(r: MemReply) -> ClientError {
    ClientError::Protocol(format!("unexpected memory channel reply {r:?}"))
}

/// A range of a [`RealMemory`] task's memory, mapped in this process.
#[derive(Debug)]
pub struct Region<'a> {
    mem: &'a RealMemory,
    addr: u64,
    len: u64,
}

impl Region<'_> {
    /// The first address (the task's and this process's).
    pub fn addr(&self) -> VmAddr {
        VmAddr(self.addr)
    }

    /// The length in bytes (whole pages).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never: a region has at least a page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn at(&self, offset: u64, n: usize) -> Result<u64> {
        match offset.checked_add(n as u64) {
            Some(e) if e <= self.len => Ok(self.addr + offset),
            _ => Err(ClientError::Kern(machvm_protocol::KernError::InvalidAddress)),
        }
    }

    /// Loads `buf.len()` bytes at `offset`: real loads.
    ///
    /// Errors: `KERN_INVALID_ADDRESS` past the region's end (checked before
    /// touching anything).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let at = self.at(offset, buf.len())?;
        self.mem.arena.read(at, buf).map_err(host)
    }

    /// Stores `data` at `offset`: real stores (into memory the task may
    /// only read, the process dies of `SIGSEGV`).
    ///
    /// Errors: as [`Region::read`].
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let at = self.at(offset, data.len())?;
        self.mem.arena.write(at, data).map_err(host)
    }

    /// The 64-bit word at `offset` (8-aligned), loaded.
    ///
    /// Errors: as [`Region::read`].
    pub fn load_u64(&self, offset: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(offset, &mut b)?;
        Ok(u64::from_ne_bytes(b))
    }

    /// Stores the 64-bit word `v` at `offset`.
    ///
    /// Errors: as [`Region::read`].
    pub fn store_u64(&self, offset: u64, v: u64) -> Result<()> {
        self.write(offset, &v.to_ne_bytes())
    }

    /// The address of the first byte, for code that touches the memory
    /// itself (under `machvm_host::mapping`'s rules: no references, only
    /// atomic or volatile accesses).
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    /// `vm_deallocate` of the region.
    ///
    /// Errors: as [`RealMemory::vm_deallocate`].
    pub fn deallocate(self) -> Result<()> {
        self.mem.vm_deallocate(VmAddr(self.addr), self.len)
    }
}

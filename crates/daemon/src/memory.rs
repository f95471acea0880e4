//! Real memory: tasks that are Linux processes touching their memory with
//! loads and stores, their faults served by the daemon through their
//! userfaultfds.
//!
//! 1. **Attach** (`memory_attach`, [`Real::attach`]): the daemon takes the
//!    process's userfaultfd and its end of a memory channel from the
//!    process's descriptor table (`pidfd_getfd`), makes the uffd's
//!    handshake, bounds the task's address space to the arena the process
//!    reserved, and gives both descriptors to the fault server.
//! 2. **Windows** (the memory channel, `machvm_protocol::memory`): the
//!    process asks what to map where after each `vm_map`/`vm_allocate`;
//!    the daemon answers from the task's map (`Kernel::vm_windows`) with
//!    one object memfd per window, then registers the windows the process
//!    mapped with its uffd ([`HostMachine::add_window`]).
//! 3. **Faults** (the fault server, one thread with an epoll set over
//!    every uffd and channel): a fault the translations allow is served
//!    by the machine itself ([`HostMachine::resolve`]); any other goes to
//!    the VM (`Kernel::vm_fault_poll`), whose `enter` maps the page
//!    (`UFFDIO_CONTINUE`). A fault that waits for a pager is parked with
//!    a waker of its own and made again when the kernel wakes it.
//! 4. **Exceptions**: a fault the VM refuses is a Mach exception, logged
//!    and counted ([`Real::exceptions`]): `KERN_PROTECTION_FAILURE` and
//!    `KERN_INVALID_ADDRESS` end the process with `SIGSEGV`, any other
//!    error (a dead pager, a revoked proxy) poisons the page, whose access
//!    then raises `SIGBUS`.
//! 5. **Detach**: the task ends with its connection. Its process may be
//!    exiting (it closed the connection on its way out), or go on without
//!    its task: then any fault it takes in its windows is `SIGSEGV`, as a
//!    thread of a terminated task would get. The uffd is let go when the
//!    process has exited (its pidfd says so). If the daemon stops, the
//!    processes it still serves are killed: nothing would enforce their
//!    protection any more.

use machvm_core::vm::fault::Around;
use machvm_core::wait::{Poll, WaitTicket, Waker};
use machvm_core::{KernError, Kernel, TaskId, VmAddr, VmProt};
use machvm_host::machine::AfterFault;
use machvm_host::uffd::{Event, Features, PageFault, RegisterMode};
use machvm_host::{HostMachine, NewUserfaultfd, PageRange, StagingSource, Userfaultfd};
use machvm_protocol::memory::{self as mem, MemReply, MemRequest, MemWindow};
use rustix::event::{epoll, eventfd, EventfdFlags};
use rustix::fd::{AsFd, OwnedFd};
use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, Signal};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Why the daemon cannot serve real memory here, if it cannot.
pub fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some(
            "real memory needs machvmd to run as root (it takes each process's userfaultfd with pidfd_getfd)".into(),
        );
    }
    match Features::available() {
        Err(e) => Some(format!("userfaultfd is unavailable: {e}")),
        Ok(f) if !f.contains(Features::SHMEM_SERVING) => Some(format!(
            "the kernel's userfaultfd lacks {:?} (memfd MISSING, MINOR, write-protect, POISON)",
            Features::SHMEM_SERVING.difference(f)
        )),
        Ok(_) => None,
    }
}

/// One Mach exception: a fault the VM refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    pub addr: u64,
    pub access: VmProt,
    pub error: KernError,
}

/// Exceptions of one task: how many, and the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exceptions {
    pub pid: u32,
    pub count: u64,
    pub last: Exception,
}

/// The daemon's real memory: the machine, and the fault server.
#[derive(Debug)]
pub struct Real {
    pub machine: Arc<HostMachine>,
    inbox: Arc<Inbox>,
    thread: Mutex<Option<JoinHandle<()>>>,
    exceptions: Arc<Mutex<HashMap<u32, Exceptions>>>,
}

/// What other threads hand the fault server.
#[derive(Debug)]
struct Inbox {
    kick: OwnedFd,
    added: Mutex<Vec<Served>>,
    removed: Mutex<Vec<TaskId>>,
    /// Parked faults whose wakers fired.
    woken: Mutex<Vec<u64>>,
    stop: AtomicBool,
}

impl Inbox {
    fn kick(&self) {
        let _ = rustix::io::write(&self.kick, &1u64.to_ne_bytes());
    }
}

/// A task process the fault server serves.
#[derive(Debug)]
struct Served {
    task: TaskId,
    pid: u32,
    pidfd: OwnedFd,
    uffd: Arc<Userfaultfd>,
    channel: Option<OwnedFd>,
    /// The task has ended (the process has not exited yet).
    ended: bool,
    /// Where the next fault of a sequential run would be, and how many
    /// new anonymous pages to zero-fill ahead of it (doubling along the
    /// run, up to [`FAULT_AROUND`]).
    next_fault: u64,
    ahead: usize,
}

/// The waker of one parked fault.
struct FaultWaker {
    inbox: Arc<Inbox>,
    id: u64,
}

impl Waker for FaultWaker {
    fn wake_locked(&self) {
        self.inbox.woken.lock().unwrap_or_else(|e| e.into_inner()).push(self.id);
    }
    fn wake(&self) {
        self.inbox.kick();
    }
}

impl Real {
    /// The machine, and its fault server started.
    ///
    /// Errors: the eventfd or the thread could not be made.
    pub fn start(kernel: Arc<Kernel>, machine: Arc<HostMachine>) -> std::io::Result<Real> {
        let inbox = Arc::new(Inbox {
            kick: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
            added: Mutex::default(),
            removed: Mutex::default(),
            woken: Mutex::default(),
            stop: AtomicBool::new(false),
        });
        let exceptions = Arc::new(Mutex::default());
        let server = Server {
            kernel,
            machine: machine.clone(),
            inbox: inbox.clone(),
            exceptions: Arc::clone(&exceptions),
            served: BTreeMap::new(),
            parked: HashMap::new(),
            next_fault: 0,
            next_id: 1,
        };
        let thread = std::thread::Builder::new().name("machvmd-faults".into()).spawn(move || server.run())?;
        Ok(Real { machine, inbox, thread: Mutex::new(Some(thread)), exceptions })
    }

    /// `memory_attach` by `task`, whose process is `pid`, of its
    /// userfaultfd and channel (descriptor numbers in its table) and its
    /// arena (start, length) (see the module comment, step 1).
    ///
    /// Errors: `KERN_INVALID_ARGUMENT` (the descriptors are not a fresh
    /// userfaultfd and a `SOCK_SEQPACKET` socket of the caller's, or the
    /// arena is not page-aligned and inside the kernel's bounds);
    /// `KERN_FAILURE` (the task has memory mapped outside the arena, or
    /// has real memory already); `KERN_NOT_SUPPORTED`
    /// (the caller's process cannot be reached: no pid, or another pid
    /// namespace).
    pub fn attach(
        &self,
        kernel: &Kernel,
        task: TaskId,
        pid: u32,
        (uffd, channel): (i32, i32),
        (arena_start, arena_len): (VmAddr, u64),
    ) -> machvm_core::Result<()> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            tracing::warn!(task = task.number(), pid, "memory_attach refused: {what}: {e}");
            KernError::InvalidArgument
        };
        // A task attaches once: a second attach changes nothing.
        if self.machine.has_process(task.pmap()) {
            tracing::warn!(task = task.number(), pid, "memory_attach refused: the task has real memory already");
            return Err(KernError::Failure);
        }
        if uffd < 0 || channel < 0 {
            return Err(bad("the descriptors", &"a negative descriptor number"));
        }
        let pid = Pid::from_raw(pid as i32).ok_or(KernError::NotSupported)?;
        let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).map_err(|_| KernError::NotSupported)?;
        let uffd = rustix::process::pidfd_getfd(&pidfd, uffd, PidfdGetfdFlags::empty())
            .map_err(|e| bad("the userfaultfd", &e))?;
        let channel = rustix::process::pidfd_getfd(&pidfd, channel, PidfdGetfdFlags::empty())
            .map_err(|e| bad("the channel", &e))?;
        match rustix::net::sockopt::socket_type(&channel) {
            Ok(rustix::net::SocketType::SEQPACKET) => {}
            Ok(t) => return Err(bad("the channel", &format!("a socket of type {t:?}, not SOCK_SEQPACKET"))),
            Err(e) => return Err(bad("the channel", &e)),
        }
        rustix::fs::fcntl_setfl(&channel, rustix::fs::OFlags::NONBLOCK).map_err(|e| bad("the channel", &e))?;
        let uffd = NewUserfaultfd::from_received(uffd).map_err(|e| bad("the userfaultfd", &e))?;
        let end = arena_start.0.checked_add(arena_len).ok_or(KernError::InvalidArgument)?;
        kernel.vm_set_bounds(task, arena_start, VmAddr(end))?;
        let uffd = uffd
            .handshake(Features::SHMEM_SERVING | Features::THREAD_ID)
            .map_err(|e| bad("the userfaultfd's handshake", &e))?;
        // Every access to the arena outside a window is the VM's to refuse
        // (registered before anything is attached: an arena the process
        // did not reserve fails here, and the task may attach again).
        let arena = PageRange::new(arena_start.0, arena_len).map_err(|e| bad("the arena", &e))?;
        uffd.register(arena, RegisterMode::MISSING).map_err(|e| bad("the arena", &e))?;
        let uffd = self.machine.attach(task.pmap(), uffd).map_err(|e| bad("the userfaultfd", &e))?;
        tracing::info!(task = task.number(), pid = pid.as_raw_nonzero().get(), "real memory attached");
        self.inbox.added.lock().unwrap_or_else(|e| e.into_inner()).push(Served {
            task,
            pid: pid.as_raw_nonzero().get() as u32,
            pidfd,
            uffd,
            channel: Some(channel),
            ended: false,
            next_fault: 0,
            ahead: 0,
        });
        self.inbox.kick();
        Ok(())
    }

    /// `Call::StagingAttach`: the memfd numbered `memfd` in the
    /// caller's process (pid `pid`) becomes `task`'s staging area, of
    /// `len` bytes, replacing any it had.
    ///
    /// Errors: `KERN_INVALID_ARGUMENT` (not a memfd of at least `len`
    /// bytes that can be sealed against shrinking, or a `len` that is not
    /// a nonzero page multiple); `KERN_NOT_SUPPORTED` (the caller's
    /// process cannot be reached).
    pub fn staging_attach(&self, task: TaskId, pid: u32, memfd: i32, len: u64) -> machvm_core::Result<()> {
        let bad = |e: &dyn std::fmt::Display| {
            tracing::warn!(task = task.number(), pid, "staging_attach refused: {e}");
            KernError::InvalidArgument
        };
        if memfd < 0 {
            return Err(bad(&"a negative descriptor number"));
        }
        let pid = Pid::from_raw(pid as i32).ok_or(KernError::NotSupported)?;
        let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).map_err(|_| KernError::NotSupported)?;
        let fd = rustix::process::pidfd_getfd(&pidfd, memfd, PidfdGetfdFlags::empty()).map_err(|e| bad(&e))?;
        let source = StagingSource::from_received(fd, len).map_err(|e| bad(&e))?;
        self.machine.store().staging_attach(u64::from(task.number()), source);
        tracing::debug!(task = task.number(), len, "staging area attached");
        Ok(())
    }

    /// The task has ended (its connection closed): its process, if it has
    /// one, is killed and no longer served; its staging area goes.
    pub fn detach(&self, task: TaskId) {
        self.machine.store().staging_detach(u64::from(task.number()));
        self.inbox.removed.lock().unwrap_or_else(|e| e.into_inner()).push(task);
        self.inbox.kick();
    }

    /// The exceptions of each task (by task number) so far.
    pub fn exceptions(&self) -> HashMap<u32, Exceptions> {
        self.exceptions.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops the fault server.
    pub fn stop(&self) {
        self.inbox.stop.store(true, Ordering::Relaxed);
        self.inbox.kick();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Real {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The fault server's own state (its thread's).
struct Server {
    kernel: Arc<Kernel>,
    machine: Arc<HostMachine>,
    inbox: Arc<Inbox>,
    exceptions: Arc<Mutex<HashMap<u32, Exceptions>>>,
    /// By id: epoll tokens `2 id` (the uffd) and `2 id + 1` (the channel).
    served: BTreeMap<u64, Served>,
    /// Faults waiting for the kernel, by fault id: (served id, fault, its
    /// registration).
    parked: HashMap<u64, (u64, PageFault, WaitTicket)>,
    next_fault: u64,
    next_id: u64,
}

const KICK: u64 = 0;

/// `PIDFD_THREAD` (Linux 6.9; `O_EXCL`): a pidfd of one thread, whose
/// signals go to that thread alone.
const PIDFD_THREAD: u32 = linux_raw_sys::general::O_EXCL;

/// How often a fault is made again when its page was taken before the
/// process could use it, before it is given up (`KERN_MEMORY_FAILURE`).
const FAULT_TRIES: usize = 16;

/// The most pages entered after a fault, when they are resident already
/// (the largest cluster a pager may supply, but the faulting page).
const FAULT_AROUND: usize = 255;

/// The most tasks whose exceptions are remembered (those of ended tasks
/// included).
const MAX_EXCEPTION_TASKS: usize = 1024;

impl Server {
    fn run(mut self) {
        let epoll = match epoll::create(epoll::CreateFlags::CLOEXEC) {
            Ok(e) => e,
            Err(e) => return tracing::error!("the fault server has no epoll: {e}"),
        };
        if let Err(e) = epoll::add(&epoll, &self.inbox.kick, epoll::EventData::new_u64(KICK), epoll::EventFlags::IN) {
            return tracing::error!("the fault server cannot watch its eventfd: {e}");
        }
        let mut events = Vec::with_capacity(64);
        let mut batch = Vec::new();
        while !self.inbox.stop.load(Ordering::Relaxed) {
            events.clear();
            match epoll::wait(&epoll, rustix::buffer::spare_capacity(&mut events), None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::error!("the fault server's epoll_wait: {e}");
                    return;
                }
            }
            for ev in events.iter() {
                let token = ev.data.u64();
                if token == KICK {
                    let mut b = [0u8; 8];
                    let _ = rustix::io::read(&self.inbox.kick, &mut b);
                    self.take_inbox(&epoll);
                    continue;
                }
                let id = token / 3;
                match token % 3 {
                    0 => self.uffd_ready(id, ev.flags, &mut batch),
                    1 => self.channel_ready(&epoll, id),
                    _ => self.exited(&epoll, id),
                }
            }
            self.retry_woken();
        }
        // Stopping: nothing would enforce the processes' protection.
        for s in self.served.values().filter(|s| !s.ended) {
            let _ = rustix::process::pidfd_send_signal(&s.pidfd, Signal::KILL);
        }
    }

    fn take_inbox(&mut self, epoll: &OwnedFd) {
        let added = std::mem::take(&mut *self.inbox.added.lock().unwrap_or_else(|e| e.into_inner()));
        for s in added {
            // A process attaching again lets go of its ended tasks' uffds
            // (their windows are its own business now): a process cannot
            // make the daemon hold descriptors by attaching in a loop.
            let stale: Vec<u64> =
                self.served.iter().filter(|(_, o)| o.ended && o.pid == s.pid).map(|(&i, _)| i).collect();
            for id in stale {
                self.exited(epoll, id);
            }
            let id = self.next_id;
            self.next_id += 1;
            let flags = epoll::EventFlags::IN;
            if let Err(e) = epoll::add(epoll, s.uffd.as_fd(), epoll::EventData::new_u64(3 * id), flags) {
                tracing::error!(task = s.task.number(), "cannot watch the task's userfaultfd: {e}");
            }
            if let Some(c) = &s.channel {
                if let Err(e) = epoll::add(epoll, c, epoll::EventData::new_u64(3 * id + 1), flags) {
                    tracing::error!(task = s.task.number(), "cannot watch the task's memory channel: {e}");
                }
            }
            if let Err(e) = epoll::add(epoll, &s.pidfd, epoll::EventData::new_u64(3 * id + 2), flags) {
                tracing::error!(task = s.task.number(), "cannot watch the task's process: {e}");
            }
            self.served.insert(id, s);
        }
        let removed = std::mem::take(&mut *self.inbox.removed.lock().unwrap_or_else(|e| e.into_inner()));
        for task in removed {
            let ids: Vec<u64> = self.served.iter().filter(|(_, s)| s.task == task).map(|(&i, _)| i).collect();
            for id in ids {
                let s = self.served.get_mut(&id).expect("listed");
                s.ended = true;
                if let Some(c) = s.channel.take() {
                    let _ = epoll::delete(epoll, &c);
                }
                // Faults parked for the task retry, and find it gone.
                let uffd = s.uffd.clone();
                let kernel = &self.kernel;
                self.parked.retain(|_, &mut (sid, f, ticket)| {
                    if sid == id {
                        kernel.cancel_wait(ticket);
                        let _ = uffd.wake(f.page());
                    }
                    sid != id
                });
                tracing::info!(task = task.number(), "real memory detached: the task has ended");
                // One ended task per process is kept (the latest): a
                // process cannot make the daemon hold more by attaching
                // and ending tasks faster than they are seen to end.
                let pid = self.served[&id].pid;
                let older: Vec<u64> =
                    self.served.iter().filter(|&(&i, o)| i != id && o.ended && o.pid == pid).map(|(&i, _)| i).collect();
                for old in older {
                    self.exited(epoll, old);
                }
            }
        }
    }

    /// The process of `id` has exited: its uffd is let go.
    fn exited(&mut self, epoll: &OwnedFd, id: u64) {
        if let Some(s) = self.served.remove(&id) {
            let _ = epoll::delete(epoll, s.uffd.as_fd());
            let _ = epoll::delete(epoll, &s.pidfd);
            if let Some(c) = &s.channel {
                let _ = epoll::delete(epoll, c);
            }
            let kernel = &self.kernel;
            self.parked.retain(|_, &mut (sid, _, ticket)| {
                if sid == id {
                    kernel.cancel_wait(ticket);
                }
                sid != id
            });
            tracing::debug!(task = s.task.number(), pid = s.pid, "the task's process has exited");
        }
    }

    fn uffd_ready(&mut self, id: u64, flags: epoll::EventFlags, batch: &mut Vec<Event>) {
        let Some(s) = self.served.get(&id) else { return };
        let (uffd, task) = (s.uffd.clone(), s.task.number());
        if flags.contains(epoll::EventFlags::ERR) {
            // The process may have made the shared open file blocking.
            let _ = uffd.ensure_nonblocking();
        }
        loop {
            batch.clear();
            match uffd.read_events(batch, 256) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(task, "reading the task's userfaultfd: {e}");
                    return;
                }
            }
            for ev in batch.drain(..) {
                match ev {
                    Event::PageFault(f) => self.fault(id, f, None),
                    // No address-space events are asked for: only faults.
                    other => tracing::debug!("userfaultfd event ignored: {other:?}"),
                }
            }
        }
    }

    /// Serves one fault (`parked`: its id, if it was parked before).
    fn fault(&mut self, id: u64, f: PageFault, parked: Option<u64>) {
        let Some(s) = self.served.get(&id) else { return };
        if s.ended {
            // A thread of a task that has ended.
            let _ = rustix::process::pidfd_send_signal(&s.pidfd, Signal::SEGV);
            return;
        }
        let (task, pmap) = (s.task, s.task.pmap());
        let write = f.write || f.wp;
        let va = f.addr & !(machvm_core::PAGE_SIZE - 1);
        if parked.is_none() && self.machine.resolve(pmap, va, write) == machvm_host::machine::Resolution::Resolved {
            return;
        }
        let access = if write { VmProt::WRITE } else { VmProt::READ };
        let fid = parked.unwrap_or_else(|| {
            self.next_fault += 1;
            self.next_fault
        });
        let waker: Arc<dyn Waker> = Arc::new(FaultWaker { inbox: self.inbox.clone(), id: fid });
        for _ in 0..FAULT_TRIES {
            // What the VM enters for a store is modified from the start
            // (not write-protected to learn of a store already known).
            let page = machvm_core::PAGE_SIZE;
            self.machine.storing(pmap, write.then_some((va, va + page)));
            let made = self.kernel.vm_fault_poll(task, VmAddr(va), access, &waker);
            self.machine.storing(pmap, None);
            match made {
                Ok(Poll::Ready(())) => match self.machine.after_fault(pmap, va, write) {
                    // The VM entered the page, and its CONTINUE woke the
                    // thread.
                    AfterFault::Mapped => {
                        // The rest of what is resident there (a cluster a
                        // pager supplied at once), and new memory ahead of
                        // a sequential run, one CONTINUE per run of pages.
                        let s = self.served.get_mut(&id).expect("served");
                        s.ahead = if va == s.next_fault { (s.ahead * 2).clamp(1, FAULT_AROUND) } else { 0 };
                        let around = Around { max: FAULT_AROUND, write, zero_fill: s.ahead, read_ahead: s.ahead > 0 };
                        let ahead = (va + page, va + (FAULT_AROUND as u64 + 1) * page);
                        self.machine.storing(pmap, write.then_some(ahead));
                        let n = self.kernel.vm_fault_around(task, VmAddr(va), around);
                        self.machine.storing(pmap, None);
                        let s = self.served.get_mut(&id).expect("served");
                        s.next_fault = va + (n as u64 + 1) * machvm_core::PAGE_SIZE;
                        return;
                    }
                    // Taken again at once (pageout): fault again.
                    AfterFault::NotEntered => continue,
                    AfterFault::NotWindow => return self.exception(id, &f, access, KernError::MemoryFailure),
                },
                Ok(Poll::Pending(ticket)) => {
                    self.parked.insert(fid, (id, f, ticket));
                    return;
                }
                Err(e) => return self.exception(id, &f, access, e),
            }
        }
        // The page is taken faster than it can be used.
        self.exception(id, &f, access, KernError::MemoryFailure);
    }

    fn retry_woken(&mut self) {
        let woken = std::mem::take(&mut *self.inbox.woken.lock().unwrap_or_else(|e| e.into_inner()));
        for fid in woken {
            if let Some((id, f, _)) = self.parked.remove(&fid) {
                self.fault(id, f, Some(fid));
            }
        }
    }

    /// A fault the VM refused (module comment, step 4).
    fn exception(&mut self, id: u64, f: &PageFault, access: VmProt, error: KernError) {
        let va = f.addr & !(machvm_core::PAGE_SIZE - 1);
        let Some(s) = self.served.get(&id) else { return };
        let (task, pid) = (s.task.number(), s.pid);
        tracing::warn!(task, pid, addr = format_args!("{va:#x}"), ?access, %error, "exception: a fault the VM refused");
        {
            let mut ex = self.exceptions.lock().unwrap_or_else(|e| e.into_inner());
            let last = Exception { addr: va, access, error };
            if ex.len() >= MAX_EXCEPTION_TASKS && !ex.contains_key(&task) {
                // The oldest task (the lowest number) makes room.
                if let Some(&oldest) = ex.keys().min() {
                    ex.remove(&oldest);
                }
            }
            ex.entry(task).and_modify(|e| (e.count, e.last) = (e.count + 1, last)).or_insert(Exceptions {
                pid,
                count: 1,
                last,
            });
        }
        let page = PageRange::new(va, machvm_core::PAGE_SIZE).expect("a page");
        match error {
            KernError::ProtectionFailure | KernError::InvalidAddress => {
                // To the faulting thread, as the MMU would (a handler on
                // another thread must not take it and leave this one
                // waiting); to the process where the thread cannot be named.
                let thread = f
                    .thread
                    .and_then(|t| Pid::from_raw(t as i32))
                    .and_then(|tid| rustix::process::pidfd_open(tid, PidfdFlags::from_bits_retain(PIDFD_THREAD)).ok());
                let sent = thread.is_some_and(|t| rustix::process::pidfd_send_signal(&t, Signal::SEGV).is_ok());
                if !sent {
                    let _ = rustix::process::pidfd_send_signal(&s.pidfd, Signal::SEGV);
                }
            }
            _ => match s.uffd.poison(page) {
                Ok(machvm_host::uffd::Outcome::Done) => {}
                // Mapped (a store into a page it may read): the signal
                // itself, as the MMU would give it.
                _ => {
                    let _ = rustix::process::pidfd_send_signal(&s.pidfd, Signal::BUS);
                }
            },
        }
    }

    fn channel_ready(&mut self, epoll: &OwnedFd, id: u64) {
        let mut buf = vec![0u8; mem::MAX_PACKET];
        loop {
            let Some(s) = self.served.get(&id) else { return };
            let Some(chan) = s.channel.as_ref() else { return };
            let got = match machvm_host::fdpass::recv_fds_nowait(chan, &mut buf, 0) {
                Ok(g) => Some(g),
                Err(e) if e.errno() == Some(rustix::io::Errno::AGAIN) => return,
                Err(_) => None,
            };
            let Some(got) = got.filter(|g| g.bytes > 0) else {
                // The process closed its end: it maps nothing more (its
                // faults are still served).
                let s = self.served.get_mut(&id).expect("present");
                if let Some(c) = s.channel.take() {
                    let _ = epoll::delete(epoll, &c);
                }
                return;
            };
            let (task, pmap) = (s.task, s.task.pmap());
            let (reply, fds) = match mem::decode::<MemRequest>(&buf[..got.bytes]) {
                Err(what) => (MemReply::Malformed(what), Vec::new()),
                Ok(_) if got.truncated => (MemReply::Malformed("a packet longer than MAX_PACKET".into()), Vec::new()),
                Ok(MemRequest::Windows { start, len }) => self.windows(task, start, len),
                Ok(MemRequest::Mapped { start, len }) => (self.mapped(task, pmap, start, len), Vec::new()),
            };
            let bytes = mem::encode(&reply);
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            if let Err(e) = machvm_host::fdpass::send_fds_nowait(chan, &bytes, &borrowed) {
                tracing::warn!(task = task.number(), "memory channel reply not sent: {e}");
            }
        }
    }

    /// `Windows`: the task's windows in the range, with their memfds: a
    /// read-only descriptor for a window no store will ever be allowed
    /// in (its maximum protection has no write), which the process maps
    /// privately (`machvm_host::Arena::place`), so that nothing it does
    /// through the window or the descriptor can change the object.
    fn windows(&self, task: TaskId, start: VmAddr, len: u64) -> (MemReply, Vec<Sent>) {
        let windows = match self.kernel.vm_windows(task, start, len) {
            Ok(w) => w,
            Err(e) => return (MemReply::Error(e), Vec::new()),
        };
        let mut out = Vec::new();
        let mut fds = Vec::new();
        let mut next = None;
        for w in windows {
            if out.len() == mem::MAX_WINDOWS {
                next = Some(w.start);
                break;
            }
            let memory = self.machine.memory_for(w.object, w.offset + w.len).and_then(|m| {
                if w.max.contains(VmProt::WRITE) {
                    return Ok(Sent::Writable(m));
                }
                let dup = |e: std::io::Error| machvm_host::Error::Host {
                    call: "dup",
                    errno: machvm_host::Errno::from_io_error(&e).unwrap_or(machvm_host::Errno::IO),
                };
                let fd = m.read_only()?.try_clone_to_owned().map_err(dup)?;
                Ok(Sent::ReadOnly(fd))
            });
            match memory {
                Ok(m) => fds.push(m),
                Err(e) => {
                    tracing::warn!(task = task.number(), "no memory for a window: {e}");
                    return (MemReply::Error(KernError::ResourceShortage), Vec::new());
                }
            }
            out.push(MemWindow { start: w.start, len: w.len, offset: w.offset, prot: w.prot });
        }
        (MemReply::Windows { windows: out, next }, fds)
    }

    /// `Mapped`: registers the windows the process says it mapped.
    fn mapped(&self, task: TaskId, pmap: machvm_core::pmap::PmapId, start: VmAddr, len: u64) -> MemReply {
        let windows = match self.kernel.vm_windows(task, start, len) {
            Ok(w) => w,
            Err(e) => return MemReply::Error(e),
        };
        for w in windows {
            let Ok(range) = PageRange::new(w.start.0, w.len) else {
                return MemReply::Error(KernError::InvalidArgument);
            };
            if let Err(e) = self.machine.add_window(pmap, range, w.object, w.offset) {
                tracing::warn!(task = task.number(), "window {range:?} not registered: {e}");
                return MemReply::Error(KernError::InvalidArgument);
            }
        }
        MemReply::Mapped
    }
}

/// A window's memfd as the memory channel sends it.
enum Sent {
    /// The object's own descriptor.
    Writable(Arc<machvm_host::ObjectMemory>),
    /// A read-only descriptor of it (`ObjectMemory::read_only`).
    ReadOnly(rustix::fd::OwnedFd),
}

impl AsFd for Sent {
    fn as_fd(&self) -> rustix::fd::BorrowedFd<'_> {
        match self {
            Sent::Writable(m) => m.as_fd(),
            Sent::ReadOnly(fd) => fd.as_fd(),
        }
    }
}

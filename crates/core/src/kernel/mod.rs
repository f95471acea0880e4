//! The kernel: one lock over IPC, VM and memory-object state, the calls
//! tasks and pagers make, and the glue that turns VM requests into EMMI
//! messages.
//!
//! Every call follows the same shape:
//!
//! 1. take the kernel lock;
//! 2. **decode**: check every argument against the caller's rights and the
//!    current state, changing nothing (a bad call loses nothing);
//! 3. **invoke**: change state; steps here cannot fail;
//! 4. `KState::settle`: deliver the messages the VM asked for, react to
//!    IPC events (no-senders, dead ports), and mark the wait keys whose
//!    waiters must look again;
//! 5. drop the lock and wake those waiters. A call that must wait (a fault
//!    for a pager, a receive for a message) registers a waker on its keys
//!    before the lock goes and starts over from step 2 when woken
//!    ([`crate::wait`]); the in-process blocking calls are thin loops over the
//!    non-blocking ones (`vm_fault_poll`, `msg_receive_poll`).
//!
//! Locking: `Kernel::st` protects everything but the MMU, which has its own
//! locks and is taken only *after* the kernel lock (or alone, on the task
//! access fast path).

pub(crate) mod access;
pub(crate) mod calls;
pub mod inspect;
mod ipc_calls;
mod proxy_calls;
pub mod resume;
pub mod windows;

pub use calls::{MapRequest, RegionInfo, TaskInfo};
pub use inspect::{EntryInfo, ObjectInfo, ObjectKind, PagerInfo, ProxyRecord};
pub use resume::{AccessOp, MapOp, ReceiveOp, SendOp, TaskCreateOp, WriteOp};

use crate::ipc::{Disposition, Ipc, PortId, PortName, SpaceId};
use crate::memory_object::proxy::ProxyVersion;
use crate::memory_object::{Ctx, MemoryObjects, MoPort};
use crate::pmap::soft::SoftMachine;
use crate::pmap::{Machine, PmapId};
use crate::sync::{Arc, Guard, Mutex};
use crate::types::{KernError, Result};
use crate::vm::map::VmMap;
use crate::vm::object::ObjectId;
use crate::vm::{Vm, VmStats};
use crate::wait::{ThreadWaker, WaitBy, WaitKey, WaitTable, WaitTicket, Waiting, Waker};
use std::collections::{BTreeMap, HashMap};

/// Settings fixed at boot.
#[derive(Clone, Debug)]
pub struct KernelConfig {
    /// Physical pages of the machine.
    pub phys_pages: usize,
    /// Pageout keeps resident pages at or below this (raised to
    /// [`crate::vm::MIN_RESIDENT`], lowered to `phys_pages`) as far as it
    /// can: when no page can be reclaimed (dirty anonymous memory with no
    /// default pager), the free frames beyond it are used, and only when
    /// they run out does a fault fail with `KERN_RESOURCE_SHORTAGE`.
    pub resident_limit: usize,
    /// Which implementation `memory_object_create_proxy` uses by default.
    pub proxy_version: ProxyVersion,
    /// Pages asked of a pager per fault until it sets its own cluster size
    /// (1 to [`crate::memory_object::control::MAX_CLUSTER_PAGES`]; other
    /// values are brought into that range at boot).
    pub cluster_pages: u32,
    /// What one task may hold, so that none can exhaust the kernel for the
    /// others.
    pub limits: TaskLimits,
}

/// The most one task may hold; a call that would take it past a limit
/// fails with `KERN_RESOURCE_SHORTAGE` and changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskLimits {
    /// Names in its IPC space that it allocates (`mach_port_allocate`);
    /// rights it receives are not refused.
    pub port_names: usize,
    /// Entries in its address map. A mapping of a proxy adds one entry per
    /// window it spans, so a map may pass the limit by one call's windows.
    pub map_entries: usize,
    /// Live proxies it made.
    pub proxies: usize,
    /// Resident pages charged to it (`usize::MAX`, the default: no limit;
    /// values below [`crate::vm::MIN_RESIDENT`] are raised to it). See
    /// [`crate::vm::charge`] for the rules; in short:
    ///
    /// - a page is charged to the task whose fault made it resident: a
    ///   zero fill, a pager's supply for a `data_request` its fault sent
    ///   (the pages of the cluster are charged from the request on, so
    ///   that the limit holds however many arrive), a copy-on-write copy,
    ///   a copy pushed into a copy object before its write; `vm_read`,
    ///   `vm_write` and `vm_copy` fault as the task, and the eager copies
    ///   a call makes (`MEMORY_OBJECT_COPY_NONE`) are charged to the task
    ///   making the call. A page found resident is charged to nobody new,
    ///   and pages a pager supplies unasked are charged to no task;
    /// - the charge goes when the page leaves memory, however it leaves
    ///   (pageout, a flush, a `lock_request`, the object's termination,
    ///   the pager's death or `destroy`), and when the task terminates
    ///   (its pages stay cached as before, charged to nobody);
    /// - a fault that would take the task past its limit first reclaims
    ///   the task's own pages, least recently used first, as pageout does
    ///   (dirty and precious ones returned to their pager or the default
    ///   pager, clean ones dropped): a working set larger than the limit
    ///   runs, slower. Pages charged to other tasks are never taken for
    ///   it. When none of its pages can be reclaimed and some are still
    ///   on their way from a pager, the fault waits for them; when none is
    ///   on its way either (its pages are dirty anonymous memory with no
    ///   default pager, or belong to a dead pager), the fault fails with
    ///   `KERN_RESOURCE_SHORTAGE` and changes nothing.
    ///
    /// The kernel's own [`KernelConfig::resident_limit`] still applies to
    /// all pages together.
    pub resident_pages: usize,
}

impl Default for TaskLimits {
    fn default() -> Self {
        TaskLimits { port_names: 1 << 20, map_entries: 1 << 20, proxies: 1 << 16, resident_pages: usize::MAX }
    }
}

impl Default for KernelConfig {
    fn default() -> Self {
        KernelConfig {
            phys_pages: 1 << 16,
            resident_limit: 1 << 16,
            proxy_version: ProxyVersion::Paging,
            cluster_pages: 8,
            limits: TaskLimits::default(),
        }
    }
}

/// A task: an address space, an IPC space and the MMU tables behind them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    pub(crate) id: u32,
    pub(crate) pmap: PmapId,
}

impl TaskId {
    /// The task's number (for reports).
    pub fn number(&self) -> u32 {
        self.id
    }

    /// The task's MMU tables (for a machine that serves its faults
    /// itself, such as a host whose tasks are processes).
    pub fn pmap(&self) -> PmapId {
        self.pmap
    }
}

/// The kernel objects a port can stand for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KObject {
    /// A memory object's control port (pagers send EMMI calls here).
    Control(ObjectId),
    /// A proxy memory object.
    Proxy(u64),
    /// The right to revoke a proxy.
    ProxyRevoke(u64),
    /// The host-privilege port (`host_priv`): system-wide calls need it.
    HostPriv,
}

#[derive(Debug)]
pub(crate) struct TaskState {
    pub space: SpaceId,
    pub map: VmMap,
    pub pmap: PmapId,
}

/// The kernel's counters ([`Kernel::stats`]): VM events, messages by
/// kind in both directions, and what is alive now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub vm: VmStats,
    /// Kernel → pager messages, by EMMI name.
    pub to_pagers: BTreeMap<&'static str, u64>,
    /// Pager → kernel messages, by EMMI name.
    pub from_pagers: BTreeMap<&'static str, u64>,
    /// Pages resident now.
    pub resident: usize,
    /// Of those, the pages charged to live tasks (see
    /// [`TaskLimits::resident_pages`]).
    pub charged: usize,
    /// The resident limit in force.
    pub resident_limit: usize,
    /// VM objects alive (cached ones and paging-proxy views included).
    pub objects: usize,
    /// Proxy records alive (a proxy nobody can map through any more keeps
    /// its record while its revoke right lives).
    pub proxies: usize,
    /// Windows `memory_object_create_proxy` has looked at, in calls that
    /// failed too: each probe of a binary search over a proxy's windows,
    /// each window walked looking for revoked proxies or copied into a new
    /// proxy. It measures the call's work.
    pub proxy_windows_examined: u64,
    /// Calls registered to be woken (see [`crate::wait`]): a call that
    /// waits without a thread, or a thread asleep in one.
    pub waiters: usize,
}

impl KernelStats {
    /// How many kernel → pager messages of this kind were sent.
    pub fn sent(&self, kind: &str) -> u64 {
        self.to_pagers.get(kind).copied().unwrap_or(0)
    }
    /// How many pager → kernel messages of this kind were received.
    pub fn received(&self, kind: &str) -> u64 {
        self.from_pagers.get(kind).copied().unwrap_or(0)
    }
}

/// Everything the kernel lock protects.
#[derive(Debug)]
pub(crate) struct KState {
    pub ipc: Ipc,
    pub vm: Vm,
    pub tasks: HashMap<u32, TaskState>,
    next_task: u32,
    /// The memory-object layer: pager bindings, the default pager, proxies.
    pub mo: MemoryObjects,
    /// The host-privilege port, a kernel object.
    pub host_priv: PortId,
    /// [`Kernel::boot_host_priv`] has handed it out.
    host_priv_given: bool,
    pub stats: KernelStats,
    pub config: KernelConfig,
    /// Eager copies made ready for the call running now, by source range
    /// (see `Kernel::with_copies`); each holds a reference.
    pub eager: HashMap<(ObjectId, u64, u64), ObjectId>,
    /// Who waits for what (see [`crate::wait`]).
    pub waits: WaitTable,
}

/// The kernel. Share it between threads with `Arc`.
pub struct Kernel {
    st: Mutex<KState>,
    machine: Arc<dyn Machine>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel").finish_non_exhaustive()
    }
}

impl Kernel {
    /// Boots a kernel on the software MMU.
    pub fn new(config: KernelConfig) -> Arc<Kernel> {
        let machine = Arc::new(SoftMachine::new(config.phys_pages));
        Kernel::with_machine(config, machine)
    }

    /// Boots a kernel on any machine backend.
    pub fn with_machine(mut config: KernelConfig, machine: Arc<dyn Machine>) -> Arc<Kernel> {
        // Pagers may refuse longer requests as forged: never send one.
        config.cluster_pages = config.cluster_pages.clamp(1, crate::memory_object::control::MAX_CLUSTER_PAGES);
        let vm = Vm::new(machine.clone(), config.resident_limit);
        let mut ipc = Ipc::new();
        let host_priv = ipc.port_allocate_kernel();
        Arc::new(Kernel {
            st: Mutex::new(KState {
                ipc,
                vm,
                tasks: HashMap::new(),
                next_task: 0,
                mo: MemoryObjects::new(config.cluster_pages, config.limits.proxies),
                host_priv,
                host_priv_given: false,
                stats: KernelStats::default(),
                config,
                eager: HashMap::new(),
                waits: WaitTable::default(),
            }),
            machine,
        })
    }

    /// The machine the kernel runs on.
    pub fn machine(&self) -> &Arc<dyn Machine> {
        &self.machine
    }

    pub(crate) fn lock(&self) -> Guard<'_, KState> {
        self.st.lock()
    }

    /// Settles the state after a call, releases the lock, and wakes the
    /// waiters on the keys the call marked (see [`crate::wait`]).
    pub(crate) fn unlock(&self, mut st: Guard<'_, KState>) {
        st.settle();
        let woken = st.waits.take_woken();
        drop(st);
        for w in woken {
            w.wake();
        }
    }

    /// Registers a waker on `keys` (see [`crate::wait::WaitBy`]), then
    /// unlocks as [`Kernel::unlock`]: an event the settling causes wakes
    /// the new waiter too.
    pub(crate) fn unlock_waiting(&self, mut st: Guard<'_, KState>, keys: &[WaitKey], by: WaitBy<'_>) -> Waiting {
        let (waker, thread) = match by {
            WaitBy::Caller(w) => (w.clone(), None),
            WaitBy::Thread => {
                let t = ThreadWaker::current();
                // Read under the lock: every wake-up bumps under it.
                let seen = t.generation();
                (t.clone() as Arc<dyn Waker>, Some((t, seen)))
            }
        };
        let ticket = st.waits.register(keys, waker);
        self.unlock(st);
        Waiting { ticket, thread }
    }

    /// Cancels a wait registration that was never woken (a caller that
    /// gives up on a [`crate::wait::Poll::Pending`] call). Harmless if it
    /// was woken.
    pub fn cancel_wait(&self, ticket: WaitTicket) {
        self.with(|st| st.waits.cancel(ticket))
    }

    /// The kernel lock, for a [`crate::wait::ThreadWaker`] to sleep on.
    pub(crate) fn lock_cell(&self) -> &Mutex<KState> {
        &self.st
    }

    /// Runs `f` under the kernel lock, then settles.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut KState) -> T) -> T {
        let mut st = self.lock();
        let r = f(&mut st);
        self.unlock(st);
        r
    }

    /// Counters: faults, pager messages by kind, residency.
    pub fn stats(&self) -> KernelStats {
        self.with(|st| {
            let mut s = st.stats.clone();
            s.vm = st.vm.stats.clone();
            s.resident = st.vm.resident;
            s.charged = st.vm.charged_total();
            s.resident_limit = st.vm.resident_limit;
            s.objects = st.vm.objects.len();
            s.proxies = st.mo.proxies.proxies.len();
            s.to_pagers = st.mo.stats.to_pagers.clone();
            s.from_pagers = st.mo.stats.from_pagers.clone();
            s.proxy_windows_examined = st.mo.stats.proxy_windows_examined;
            s.waiters = st.waits.waiting();
            s
        })
    }

    /// Changes the resident-page limit (pageout runs at once if needed).
    /// Limits below [`crate::vm::MIN_RESIDENT`] are raised to it, limits
    /// above the machine's frames lowered to them.
    pub fn set_resident_limit(&self, limit: usize) {
        self.with(|st| {
            st.vm.resident_limit =
                limit.clamp(crate::vm::MIN_RESIDENT, st.vm.machine.capacity().max(crate::vm::MIN_RESIDENT));
            if st.vm.resident > st.vm.resident_limit {
                let n = st.vm.resident - st.vm.resident_limit;
                st.vm.pageout(n);
            }
        })
    }

    /// Terminates every object kept in the object cache: their pagers get
    /// their dirty and precious pages back (`data_return`), then
    /// `memory_object_terminate`. For a shutdown.
    pub fn cache_flush(&self) {
        self.with(|st| st.vm.cache_flush())
    }

    /// Messages queued on the ports whose receive rights `task` holds and
    /// not received yet (a shutdown waits for its pagers' to drain before
    /// it lets them go).
    ///
    /// Errors: `KERN_INVALID_TASK`.
    pub fn queued_for(&self, task: TaskId) -> Result<usize> {
        self.with(|st| {
            let space = st.task(task)?.space;
            Ok(st.ipc.queued_in(space))
        })
    }

    /// Hands a send right to the host-privilege port (Mach's `host_priv`)
    /// to `task`, once: it is for whoever boots the kernel, which passes it
    /// on in messages to the tasks it trusts (as Mach gives it to the
    /// bootstrap task). System-wide calls take it as their first argument.
    ///
    /// Errors: `KERN_NO_ACCESS` (it was handed out already),
    /// `KERN_INVALID_TASK`.
    pub fn boot_host_priv(&self, task: TaskId) -> Result<PortName> {
        self.with(|st| {
            let space = st.task(task)?.space;
            if st.host_priv_given {
                return Err(KernError::NoAccess);
            }
            st.host_priv_given = true;
            let port = st.host_priv;
            st.ipc.kernel_make_send(port);
            Ok(st.ipc.copyout(space, port, crate::ipc::RightKind::Send).expect("space checked"))
        })
    }

    /// `vm_set_default_memory_manager(host_priv, manager)`: `manager` (a
    /// send right in `task`'s space, or a receive right it makes one from)
    /// becomes the default pager, which gets a `memory_object_create` for
    /// each anonymous object it must page. A registered default pager is
    /// replaced (the old one keeps what it was given). Both need the host
    /// privilege: whoever is the default pager receives every task's
    /// anonymous pages.
    ///
    /// Errors: `KERN_INVALID_HOST` (`host_priv` is not a send right to the
    /// host-privilege port), `KERN_INVALID_ARGUMENT` (`manager` is a kernel
    /// object, such as a proxy: it takes no messages, so what was paged out
    /// to it would be lost), `KERN_INVALID_NAME`, `KERN_INVALID_RIGHT`
    /// (neither a send nor a receive right), `KERN_INVALID_CAPABILITY` (a
    /// dead name), `KERN_INVALID_TASK`.
    pub fn set_default_memory_manager(&self, task: TaskId, host_priv: PortName, manager: PortName) -> Result<()> {
        self.with(|st| {
            let space = st.task(task)?.space;
            st.check_host_priv(space, host_priv)?;
            if st.ipc.port_of(space, manager).is_ok_and(|port| st.kobject(port).is_some()) {
                return Err(KernError::InvalidArgument);
            }
            let (port, _) = st.ipc.copyin(space, manager, Disposition::CopySend).or_else(|e| {
                if e == KernError::InvalidRight {
                    st.ipc.copyin(space, manager, Disposition::MakeSend)
                } else {
                    Err(e)
                }
            })?;
            let (mo, mut cx) = st.split();
            mo.set_default_pager(&mut cx, port);
            Ok(())
        })
    }
}

impl KState {
    /// Is `name` a send right to the host-privilege port in `space`?
    /// `KERN_INVALID_HOST` if not, whatever else it is.
    pub fn check_host_priv(&self, space: SpaceId, name: PortName) -> Result<()> {
        match self.ipc.send_port_of(space, name) {
            Ok(port) if port == self.host_priv => Ok(()),
            _ => Err(KernError::InvalidHost),
        }
    }

    /// May `space` allocate one more name? (`KERN_RESOURCE_SHORTAGE` at
    /// [`TaskLimits::port_names`].)
    pub fn check_names(&self, space: SpaceId) -> Result<()> {
        if self.ipc.names_in(space) >= self.config.limits.port_names {
            return Err(KernError::ResourceShortage);
        }
        Ok(())
    }

    /// May `task`'s map grow by `more` entries? (`KERN_RESOURCE_SHORTAGE`
    /// at [`TaskLimits::map_entries`].)
    pub fn check_entries(&self, task: TaskId, more: usize) -> Result<()> {
        if self.task(task)?.map.entry_count() + more > self.config.limits.map_entries {
            return Err(KernError::ResourceShortage);
        }
        Ok(())
    }

    pub fn task(&self, task: TaskId) -> Result<&TaskState> {
        self.tasks.get(&task.id).ok_or(KernError::InvalidTask)
    }

    pub fn task_mut(&mut self, task: TaskId) -> Result<&mut TaskState> {
        self.tasks.get_mut(&task.id).ok_or(KernError::InvalidTask)
    }

    pub fn new_task_id(&mut self, pmap: PmapId) -> TaskId {
        self.next_task += 1;
        TaskId { id: self.next_task, pmap }
    }

    /// The memory-object layer, and the layers below it for its calls.
    pub fn split(&mut self) -> (&mut MemoryObjects, Ctx<'_>) {
        (&mut self.mo, Ctx { ipc: &mut self.ipc, vm: &mut self.vm, waits: &mut self.waits })
    }

    /// Binds a pager's memory object port to a VM object (see
    /// `MemoryObjects::bind`); takes a reference for the caller.
    pub fn bind(&mut self, port: PortId) -> ObjectId {
        let (mo, mut cx) = self.split();
        mo.bind(&mut cx, port)
    }

    /// Delivers the VM's outbox and reacts to IPC events until both are
    /// empty (each can produce the other); wakes the faults that wait for
    /// room within their task's resident limit when it may have come.
    pub fn settle(&mut self) {
        loop {
            for owner in std::mem::take(&mut self.vm.room_events) {
                self.waits.mark(WaitKey::Task(owner.0));
            }
            let ops = std::mem::take(&mut self.vm.outbox);
            let events = self.ipc.drain_events();
            if ops.is_empty() && events.is_empty() {
                return;
            }
            for op in ops {
                let (mo, mut cx) = self.split();
                mo.deliver(&mut cx, op);
            }
            for e in events {
                let (mo, mut cx) = self.split();
                mo.ipc_event(&mut cx, e);
            }
        }
    }

    /// Is this port a kernel object (one that takes no memory-object role)?
    pub fn kobject(&self, port: PortId) -> Option<KObject> {
        if port == self.host_priv {
            return Some(KObject::HostPriv);
        }
        self.mo.port(port).map(|p| match p {
            MoPort::Control(o) => KObject::Control(o),
            MoPort::Proxy(p) => KObject::Proxy(p),
            MoPort::ProxyRevoke(p) => KObject::ProxyRevoke(p),
        })
    }
}

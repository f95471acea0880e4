//! The VM calls a task makes on an address space: `task_create`,
//! `vm_allocate`, `vm_map`, `vm_deallocate`, `vm_protect`, `vm_inherit`,
//! `vm_region`, `vm_read`, `vm_write`, `vm_copy`.
//!
//! Each checks everything first (decode) and only then changes the map
//! (invoke), so a call that fails has changed nothing.

use super::resume::{Copies, WriteState};
use super::{KObject, KState, Kernel, TaskId, TaskState};
use crate::ipc::{PortName, SpaceId};
use crate::memory_object::proxy::{MapPiece, ProxyId};
use crate::pmap::Access;
use crate::types::{KernError, Result, VmAddr, VmInherit, VmOffset, VmProt, PAGE_SIZE};
use crate::vm::charge::Owner;
use crate::vm::copy::{CopyStep, EagerCopy};
use crate::vm::map::{nonzero_pages, MapEntry, VmMap};
use crate::vm::object::{ObjectId, Provider, VmObject};
use crate::wait::{Poll, WaitKey, Waker};
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// The arguments of `vm_map`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapRequest {
    /// Where to map (a hint ignored when `anywhere`).
    pub address: VmAddr,
    pub size: u64,
    /// Alignment mask: the address is a multiple of `mask + 1`.
    pub mask: u64,
    pub anywhere: bool,
    /// A memory object (send right) or proxy; `None` is zero-filled memory.
    pub object: Option<PortName>,
    pub offset: VmOffset,
    /// Map a copy-on-write snapshot rather than the object itself.
    pub copy: bool,
    pub cur: VmProt,
    pub max: VmProt,
    pub inherit: VmInherit,
}

impl MapRequest {
    /// `size` bytes anywhere, of `object` (or zero-fill), read/write.
    pub fn anywhere(size: u64, object: Option<PortName>) -> MapRequest {
        MapRequest {
            address: VmAddr(0),
            size,
            mask: 0,
            anywhere: true,
            object,
            offset: VmOffset(0),
            copy: false,
            cur: VmProt::DEFAULT,
            max: VmProt::ALL,
            inherit: VmInherit::DEFAULT,
        }
    }
    pub fn at(mut self, address: VmAddr) -> Self {
        self.address = address;
        self.anywhere = false;
        self
    }
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = VmOffset(offset);
        self
    }
    pub fn prot(mut self, cur: VmProt, max: VmProt) -> Self {
        self.cur = cur;
        self.max = max;
        self
    }
    pub fn copy(mut self, copy: bool) -> Self {
        self.copy = copy;
        self
    }
    pub fn inherit(mut self, inherit: VmInherit) -> Self {
        self.inherit = inherit;
        self
    }
    pub fn mask(mut self, mask: u64) -> Self {
        self.mask = mask;
        self
    }
}

/// What `vm_region` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    pub start: VmAddr,
    pub size: u64,
    pub cur: VmProt,
    pub max: VmProt,
    pub inherit: VmInherit,
    pub offset: VmOffset,
    /// The memory is shared with another mapping (not private).
    pub shared: bool,
}

/// What [`Kernel::task_info`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    /// Map entries.
    pub entries: usize,
    /// Resident pages of the objects the entries map, within their ranges
    /// (a page two entries map counts twice).
    pub resident: usize,
    /// Resident pages charged to the task (see
    /// [`crate::TaskLimits::resident_pages`]), whether it still maps them
    /// or not; pages asked of pagers for it and not supplied yet are not
    /// counted here, though they count against its limit.
    pub charged: usize,
    /// Its limit on charged pages (`usize::MAX`: none).
    pub resident_limit: usize,
}

/// A copy a call will make: `(object, offset, length)`, as it will ask
/// [`KState::copy_of`] for it.
pub(crate) type CopySource = (ObjectId, u64, u64);

impl Kernel {
    /// `task_create(parent, inherit_memory)`: a new task. With a parent,
    /// each of the parent's entries is shared, copied (copy-on-write) or
    /// left out, as its inheritance says. The new task's pages are charged
    /// to it from its first fault on ([`crate::TaskLimits::resident_pages`]);
    /// the eager copies a fork makes (`MEMORY_OBJECT_COPY_NONE`) are the
    /// parent's call, and charged to the parent.
    ///
    /// Errors: `KERN_INVALID_TASK` (no such parent); for a fork that makes
    /// eager copies, `KERN_MEMORY_ERROR` (the pager failed a page)
    /// and `KERN_RESOURCE_SHORTAGE` (no memory for the copy, or no room
    /// for it within the parent's resident limit).
    pub fn task_create(&self, parent: Option<TaskId>) -> Result<TaskId> {
        let mut copies = Copies::default();
        let r = self.block_on(|w| self.task_create_step(parent, &mut copies, w));
        copies.release(self);
        r
    }

    /// One step of `task_create` (see [`Copies::step`]).
    pub(crate) fn task_create_step(
        &self,
        parent: Option<TaskId>,
        copies: &mut Copies,
        waker: &Arc<dyn Waker>,
    ) -> Result<Poll<TaskId>> {
        let plan = |st: &KState| match parent {
            Some(p) => st.fork_copies(p),
            None => Ok(Vec::new()),
        };
        copies.step(self, parent, waker, plan, |st| {
            if let Some(p) = parent {
                st.task(p)?;
            }
            let pmap = st.vm.machine.create();
            let space = st.ipc.space_create();
            let id = st.new_task_id(pmap);
            let mut map = VmMap::default();
            if let Some(p) = parent {
                st.fork_map(p, &mut map);
            }
            st.tasks.insert(id.id, TaskState { space, map, pmap });
            st.vm.account_open(Owner(id.id), st.config.limits.resident_pages);
            Ok(id)
        })
    }

    /// `task_terminate`: unmaps everything and destroys the task's rights.
    ///
    /// Errors: `KERN_INVALID_TASK`.
    pub fn task_terminate(&self, task: TaskId) -> Result<()> {
        self.with(|st| {
            let t = st.tasks.remove(&task.id).ok_or(KernError::InvalidTask)?;
            let (min, max) = (t.map.min(), t.map.max());
            let mut map = t.map;
            for e in map.remove_range(min, max) {
                if let Some(o) = e.object {
                    st.vm.object_deallocate(o);
                }
            }
            st.vm.machine.destroy(t.pmap);
            // What it still has charged stays resident, charged to nobody.
            st.vm.account_close(Owner(task.id));
            st.ipc.space_destroy(t.space);
            // The task's threads blocked in a receive (even on a port set
            // with no member, where no port dies) or in a fault must wake
            // to see that the task is gone.
            st.waits.mark(WaitKey::Space(t.space));
            st.waits.mark(WaitKey::Task(task.id));
            Ok(())
        })
    }

    /// What a task holds, for inspection: its map entries, the pages
    /// resident in the ranges they map, and the pages charged to it.
    ///
    /// Errors: `KERN_INVALID_TASK`.
    pub fn task_info(&self, task: TaskId) -> Result<TaskInfo> {
        self.with(|st| {
            let t = st.task(task)?;
            let mut resident = 0;
            let count = |o: ObjectId, off: u64, len: u64| {
                st.vm
                    .objects
                    .get(&o)
                    .map_or(0, |o| o.pages.range(off..off + len).filter(|(_, p)| p.frame.is_some()).count())
            };
            for e in t.map.iter() {
                let Some(o) = e.object else { continue };
                // Through a paging proxy, the pages are the real objects'.
                match st.mo.proxies.flatten(o, e.offset, e.len()) {
                    Ok(pieces) => {
                        resident += pieces.iter().map(|&(_, len, obj, off, _, _)| count(obj, off, len)).sum::<usize>()
                    }
                    Err(_) => resident += count(o, e.offset, e.len()),
                }
            }
            let owner = Owner(task.id);
            Ok(TaskInfo {
                entries: t.map.entry_count(),
                resident,
                charged: st.vm.charged(owner),
                resident_limit: st.vm.charge_limit(owner),
            })
        })
    }

    /// `vm_allocate`: zero-filled memory, read/write.
    ///
    /// Errors: as [`Kernel::vm_map`].
    pub fn vm_allocate(&self, task: TaskId, address: VmAddr, size: u64, anywhere: bool) -> Result<VmAddr> {
        let mut r = MapRequest::anywhere(size, None);
        r.address = address;
        r.anywhere = anywhere;
        self.vm_map(task, r)
    }

    /// `vm_map`: maps a memory object, a proxy, or zero-filled memory.
    ///
    /// The protections are checked `cur ⊆ max`. Through a proxy, the
    /// request must lie inside the proxy's windows, and `cur`/`max` are
    /// masked by each window's protection (a read-only proxy mapped
    /// `READ|WRITE`/`ALL` maps read-only). A request spanning several
    /// windows becomes one entry per window. A copy mapping needs only
    /// read permission; the copy is private and may be written.
    ///
    /// Errors: `KERN_INVALID_ARGUMENT` (zero size, unaligned address or
    /// offset, bad mask, unknown protection bits, `cur` above `max`,
    /// overflow, a range outside the proxy's windows, a port that is no
    /// memory object),
    /// `KERN_NO_SPACE` (no room, or the fixed range is in use),
    /// `KERN_RESOURCE_SHORTAGE` (the map holds
    /// [`crate::TaskLimits::map_entries`] entries; and, for a copy of
    /// memory whose pager wants eager copies, not enough memory for it, or
    /// no room for it within the task's
    /// [`crate::TaskLimits::resident_pages`]),
    /// `KERN_INVALID_ADDRESS` (fixed range outside the map),
    /// `KERN_INVALID_NAME` / `KERN_INVALID_RIGHT` (the object name; a
    /// send-once right is not a memory object, and is left untouched),
    /// `KERN_PROTECTION_FAILURE` (a copy of a window without read),
    /// `KERN_INVALID_CAPABILITY` (the proxy, or a paging proxy one of the
    /// mapped windows reaches, was revoked; or the name is a dead name),
    /// `KERN_INVALID_TASK`.
    pub fn vm_map(&self, task: TaskId, r: MapRequest) -> Result<VmAddr> {
        if !r.copy {
            return self.with(|st| st.vm_map(task, r));
        }
        let mut copies = Copies::default();
        let result = self.block_on(|w| self.vm_map_step(task, &r, &mut copies, w));
        copies.release(self);
        result
    }

    /// One step of `vm_map` (see [`Copies::step`]).
    pub(crate) fn vm_map_step(
        &self,
        task: TaskId,
        r: &MapRequest,
        copies: &mut Copies,
        waker: &Arc<dyn Waker>,
    ) -> Result<Poll<VmAddr>> {
        if !r.copy {
            return self.with(|st| st.vm_map(task, r.clone())).map(Poll::Ready);
        }
        copies.step(self, Some(task), waker, |st| st.vm_map_copies(task, r), |st| st.vm_map(task, r.clone()))
    }

    /// `vm_deallocate`: unmaps `[address, address + size)`; holes in the
    /// range are fine.
    ///
    /// Errors: `KERN_INVALID_ARGUMENT` (unaligned, overflow),
    /// `KERN_INVALID_ADDRESS` (outside the map), `KERN_RESOURCE_SHORTAGE`
    /// (the map is at [`crate::TaskLimits::map_entries`] and the range
    /// would split an entry), `KERN_INVALID_TASK`.
    pub fn vm_deallocate(&self, task: TaskId, address: VmAddr, size: u64) -> Result<()> {
        self.with(|st| {
            if size == 0 {
                st.task(task)?;
                return Ok(());
            }
            let end = st.task(task)?.map.check_range(address, size)?;
            // Cutting out the middle of an entry leaves two.
            st.check_entries(task, 1)?;
            st.unmap(task, address.0, end);
            Ok(())
        })
    }

    /// `vm_protect`: sets the current protection (or, with `set_max`, lowers
    /// the maximum, and the current with it) over a fully mapped range.
    /// A zero size does nothing.
    ///
    /// Errors: `KERN_PROTECTION_FAILURE` (current above maximum, or a new
    /// maximum above the old one), `KERN_INVALID_ADDRESS` (a hole in the
    /// range), `KERN_INVALID_ARGUMENT` (unaligned, overflow, bad bits),
    /// `KERN_RESOURCE_SHORTAGE` (the map is near
    /// [`crate::TaskLimits::map_entries`]), `KERN_INVALID_TASK`.
    pub fn vm_protect(&self, task: TaskId, address: VmAddr, size: u64, set_max: bool, prot: VmProt) -> Result<()> {
        self.with(|st| {
            let t = st.task(task)?;
            VmProt::from_raw(prot.bits())?;
            if size == 0 {
                return Ok(());
            }
            let end = t.map.check_range(address, size)?;
            if !t.map.is_covered(address.0, end) {
                return Err(KernError::InvalidAddress);
            }
            for e in t.map.overlapping(address.0, end) {
                if !e.max.contains(prot) {
                    return Err(KernError::ProtectionFailure);
                }
            }
            // Clipping the ends may add two entries.
            st.check_entries(task, 2)?;
            let pmap = st.task(task)?.pmap;
            st.clip_range(task, address.0, end);
            let t = st.task_mut(task).expect("checked");
            t.map.for_each_in_mut(address.0, end, |e| {
                if set_max {
                    e.max = prot;
                    e.cur &= prot;
                } else {
                    e.cur = prot;
                }
            });
            let entries: Vec<(u64, u64, VmProt)> =
                t.map.overlapping(address.0, end).map(|e| (e.start, e.end, e.cur)).collect();
            for (s, e, cur) in entries {
                st.vm.pmap_protect(pmap, s, e, cur);
            }
            // A fault asleep in the range may no longer be allowed.
            st.waits.mark(WaitKey::Task(task.id));
            Ok(())
        })
    }

    /// `vm_inherit`: sets what children get of the range at `task_create`.
    /// A zero size does nothing.
    ///
    /// Errors: `KERN_INVALID_ARGUMENT` (unaligned, overflow),
    /// `KERN_INVALID_ADDRESS` (outside the map), `KERN_RESOURCE_SHORTAGE`
    /// (the map is near [`crate::TaskLimits::map_entries`]),
    /// `KERN_INVALID_TASK`.
    pub fn vm_inherit(&self, task: TaskId, address: VmAddr, size: u64, inherit: VmInherit) -> Result<()> {
        self.with(|st| {
            if size == 0 {
                st.task(task)?;
                return Ok(());
            }
            let end = st.task(task)?.map.check_range(address, size)?;
            st.check_entries(task, 2)?;
            st.clip_range(task, address.0, end);
            st.task_mut(task)?.map.for_each_in_mut(address.0, end, |e| e.inherit = inherit);
            Ok(())
        })
    }

    /// `vm_region`: the entry containing `address`, or the first one
    /// above it.
    ///
    /// Errors: `KERN_INVALID_ADDRESS` (nothing at or above), `KERN_INVALID_TASK`.
    pub fn vm_region(&self, task: TaskId, address: VmAddr) -> Result<RegionInfo> {
        self.with(|st| {
            let t = st.task(task)?;
            let e = t.map.lookup_or_next(address.0).ok_or(KernError::InvalidAddress)?;
            Ok(RegionInfo {
                start: VmAddr(e.start),
                size: e.len(),
                cur: e.cur,
                max: e.max,
                inherit: e.inherit,
                offset: VmOffset(e.offset),
                shared: e.shared,
            })
        })
    }

    /// `vm_read`: a copy of `size` bytes of the task's memory.
    ///
    /// Errors: `KERN_INVALID_ADDRESS` (a hole, or the range wraps),
    /// `KERN_PROTECTION_FAILURE` (not readable), `KERN_MEMORY_ERROR` (a
    /// pager failed a page or died, or a proxy was revoked),
    /// `KERN_RESOURCE_SHORTAGE` (more than the machine's physical memory,
    /// or no free frame for a page, or no room for one within the task's
    /// [`crate::TaskLimits::resident_pages`], see [`Kernel::vm_fault`]),
    /// `KERN_MEMORY_FAILURE` (pages kept
    /// being taken away before they could be read; see [`Kernel::read`]),
    /// `KERN_INVALID_TASK`.
    pub fn vm_read(&self, task: TaskId, address: VmAddr, size: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; self.vm_read_check(task, address, size)?];
        self.read(task, address, &mut buf)?;
        Ok(buf)
    }

    /// The checks of `vm_read`: the range is mapped readable, and its copy
    /// fits in memory (the copy is made in kernel memory: one larger than
    /// the machine is refused, not attempted, since a failed allocation
    /// aborts the kernel). Its length.
    pub(crate) fn vm_read_check(&self, task: TaskId, address: VmAddr, size: u64) -> Result<usize> {
        self.check_access(task, address, size, VmProt::READ)?;
        let limit = (self.machine.capacity() as u64).saturating_mul(PAGE_SIZE);
        usize::try_from(size).ok().filter(|_| size <= limit).ok_or(KernError::ResourceShortage)
    }

    /// `vm_write`: stores `data` into the task's memory, all or nothing:
    /// nothing is written unless the whole range is mapped writable and
    /// every page of it can be faulted in for writing (a page its pager
    /// fails writes nothing). The one exception: a range that cannot be
    /// resident all at once (larger than the resident limit, or under
    /// pageout that keeps taking its pages) is stored page by page after a
    /// few attempts, and a page that fails then leaves the pages before it
    /// written.
    ///
    /// Errors: as [`Kernel::vm_read`], with write permission (and no size
    /// limit: the data is already in memory).
    pub fn vm_write(&self, task: TaskId, address: VmAddr, data: &[u8]) -> Result<()> {
        self.check_access(task, address, data.len() as u64, VmProt::WRITE)?;
        let mut state = WriteState::store(task, address, data.to_vec());
        let r = self.block_on(|w| state.step(self, w));
        state.cancel(self);
        r
    }

    /// `vm_copy`: copies `size` bytes from `source` to `dest` in one task.
    /// Both ranges are checked, the source read and the destination
    /// faulted in for writing, before anything is written (all or nothing,
    /// as [`Kernel::vm_write`]).
    ///
    /// Errors: as [`Kernel::vm_read`] and [`Kernel::vm_write`].
    pub fn vm_copy(&self, task: TaskId, source: VmAddr, size: u64, dest: VmAddr) -> Result<()> {
        self.check_access(task, dest, size, VmProt::WRITE)?;
        let len = self.vm_read_check(task, source, size)?;
        let mut state = WriteState::copy(task, source, len, dest);
        let r = self.block_on(|w| state.step(self, w));
        state.cancel(self);
        r
    }

    /// Stores `data` at `address` in one hold of the kernel lock if every
    /// page of the range is resident and writable in the task's MMU
    /// (`None` if one is not: it was taken after its fault).
    pub(crate) fn store_if_resident(&self, task: TaskId, address: VmAddr, data: &[u8]) -> Option<Result<()>> {
        let len = data.len() as u64;
        let st = self.lock();
        let mut page = address.trunc_page().0;
        let mut mapped = true;
        while page < address.0 + len && mapped {
            mapped = self.machine.extract(task.pmap, VmAddr(page)).is_some_and(|(_, p)| p.contains(VmProt::WRITE));
            page += PAGE_SIZE;
        }
        if !mapped {
            self.unlock(st);
            return None;
        }
        let (mut at, mut rest) = (address.0, data);
        let mut stored = Ok(());
        while !rest.is_empty() && stored.is_ok() {
            let n = super::access::page_chunk(at, rest.len());
            stored = self.machine.access(task.pmap, VmAddr(at), Access::Store(&rest[..n]));
            (at, rest) = (at + n as u64, &rest[n..]);
        }
        self.unlock(st);
        debug_assert!(stored.is_ok(), "a store faulted under the kernel lock");
        Some(stored.map_err(|_| KernError::MemoryFailure))
    }

    /// Is `[address, address + size)` mapped with `want` allowed throughout?
    pub(crate) fn check_access(&self, task: TaskId, address: VmAddr, size: u64, want: VmProt) -> Result<()> {
        self.with(|st| {
            let end = address.checked_add(size).map_err(|_| KernError::InvalidAddress)?.0;
            let t = st.task(task)?;
            if size == 0 {
                return Ok(());
            }
            if !t.map.is_covered(address.0, end) {
                return Err(KernError::InvalidAddress);
            }
            if t.map.overlapping(address.0, end).any(|e| !e.cur.contains(want)) {
                return Err(KernError::ProtectionFailure);
            }
            Ok(())
        })
    }
}

impl KState {
    /// The copies `vm_map(r)` will make (see `Kernel::with_copies`), after
    /// the checks `vm_map` makes before it makes them. A memory object not
    /// bound yet has no pager that said `ready`: its copy is delayed (the
    /// default strategy), so it is not listed.
    pub(crate) fn vm_map_copies(&self, task: TaskId, r: &MapRequest) -> Result<Vec<CopySource>> {
        let Some(name) = r.object.filter(|_| r.copy) else {
            return Ok(Vec::new());
        };
        let (_, size, space) = self.map_placement(task, r)?;
        let port = self.ipc.send_port_of(space, name)?;
        match self.kobject(port) {
            Some(KObject::Proxy(p)) => {
                let pieces = self.mo.proxy_plan(p, r.offset.0, size, true, r.cur, r.max)?;
                Ok(pieces.iter().filter_map(|p| Some((p.object?, p.offset, p.len))).collect())
            }
            Some(_) => Err(KernError::InvalidArgument),
            None => Ok(self.mo.port_objects.get(&port).map(|&o| (o, r.offset.0, size)).into_iter().collect()),
        }
    }

    /// The decode half of `vm_map` before the object: the address the
    /// mapping goes to, its size, and the task's IPC space.
    fn map_placement(&self, task: TaskId, r: &MapRequest) -> Result<(u64, u64, SpaceId)> {
        let size = nonzero_pages(r.size)?;
        VmProt::from_raw(r.max.bits())?;
        if !r.offset.is_page_aligned() || !r.cur.difference(r.max).is_empty() {
            return Err(KernError::InvalidArgument);
        }
        let mask = r.mask | (PAGE_SIZE - 1);
        if mask.checked_add(1).is_none_or(|a| !a.is_power_of_two()) {
            return Err(KernError::InvalidArgument);
        }
        r.offset.checked_add(size)?;
        self.check_entries(task, 1)?;
        let t = self.task(task)?;
        let space = t.space;
        let address = if r.anywhere {
            t.map.find_space(size, mask)?
        } else {
            if r.address.0 & mask != 0 {
                return Err(KernError::InvalidArgument);
            }
            let end = r.address.checked_add(size)?.0;
            if r.address.0 < t.map.min() || end > t.map.max() {
                return Err(KernError::InvalidAddress);
            }
            if !t.map.is_free(r.address.0, end) {
                return Err(KernError::NoSpace);
            }
            r.address.0
        };
        Ok((address, size, space))
    }

    pub(crate) fn vm_map(&mut self, task: TaskId, r: MapRequest) -> Result<VmAddr> {
        // Decode.
        let (address, size, space) = self.map_placement(task, &r)?;
        let pieces = match r.object {
            None => vec![MapPiece {
                rel: 0,
                len: size,
                object: None,
                offset: 0,
                cur: r.cur,
                max: r.max,
                needs_copy: false,
                via: Vec::new(),
            }],
            Some(name) => {
                let port = self.ipc.send_port_of(space, name)?;
                match self.kobject(port) {
                    Some(KObject::Proxy(p)) => self.proxy_pieces(p, r.offset.0, size, r.copy, r.cur, r.max)?,
                    Some(_) => return Err(KernError::InvalidArgument),
                    None => {
                        // Invoke starts here for plain objects: bind, and
                        // snapshot if a copy was asked for.
                        let o = self.bind(port);
                        let (object, needs_copy) =
                            if r.copy { (self.copy_of(o, r.offset.0, size), true) } else { (o, false) };
                        vec![MapPiece {
                            rel: 0,
                            len: size,
                            object: Some(object),
                            offset: r.offset.0,
                            cur: r.cur,
                            max: r.max,
                            needs_copy,
                            via: Vec::new(),
                        }]
                    }
                }
            }
        };
        // Invoke.
        let t = self.task_mut(task).expect("checked");
        for p in pieces {
            t.map.insert(MapEntry {
                start: address + p.rel,
                end: address + p.rel + p.len,
                object: p.object,
                offset: p.offset,
                cur: p.cur,
                max: p.max,
                inherit: r.inherit,
                needs_copy: p.needs_copy,
                shared: p.object.is_some() && !p.needs_copy,
                via: Arc::from(p.via),
            });
        }
        Ok(VmAddr(address))
    }

    /// A copy of `[offset, offset + len)` of `object`, by the object's copy
    /// strategy (see `crate::vm::copy`), consuming the caller's reference
    /// on it and returning one on the copy: a copy-on-write snapshot, or
    /// the eager copy `Kernel::with_copies` made ready for this call.
    pub(crate) fn copy_of(&mut self, object: ObjectId, offset: u64, len: u64) -> ObjectId {
        let c = match self.eager.get(&(object, offset, len)) {
            Some(&eager) => {
                self.vm.object_reference(eager);
                eager
            }
            None => {
                debug_assert!(!self.vm.copies_eagerly(object), "an eager copy was not planned");
                self.vm.copy_delayed(object)
            }
        };
        self.vm.object_deallocate(object);
        c
    }

    /// The entries `vm_map` makes for `[offset, offset + size)` of proxy
    /// `p`: checked completely first (`MemoryObjects::proxy_plan`), then
    /// references taken.
    pub(crate) fn proxy_pieces(
        &mut self,
        p: ProxyId,
        offset: u64,
        size: u64,
        copy: bool,
        cur: VmProt,
        max: VmProt,
    ) -> Result<Vec<MapPiece>> {
        let mut pieces = self.mo.proxy_plan(p, offset, size, copy, cur, max)?;
        // Invoke: each entry holds a reference on its object; a copy's
        // object is a fresh copy.
        for piece in &mut pieces {
            let object = piece.object.expect("every piece has an object");
            self.vm.object_reference(object);
            if piece.needs_copy {
                piece.object = Some(self.copy_of(object, piece.offset, piece.len));
            }
        }
        Ok(pieces)
    }

    /// Makes `addr` and `end` entry boundaries, taking the extra object
    /// references clipping creates.
    pub(crate) fn clip_range(&mut self, task: TaskId, addr: u64, end: u64) {
        let Ok(t) = self.task_mut(task) else { return };
        let a = t.map.clip(addr);
        let b = t.map.clip(end);
        for o in [a, b].into_iter().flatten() {
            self.vm.object_reference(o);
        }
    }

    /// Removes `[start, end)` from the task's map and MMU. Faults asleep
    /// in the range wake to find it gone.
    pub(crate) fn unmap(&mut self, task: TaskId, start: u64, end: u64) {
        self.waits.mark(WaitKey::Task(task.id));
        self.clip_range(task, start, end);
        let Ok(t) = self.task_mut(task) else { return };
        let removed = t.map.remove_range(start, end);
        let pmap = t.pmap;
        self.vm.pmap_remove_range(pmap, start, end);
        for e in removed {
            if let Some(o) = e.object {
                self.vm.object_deallocate(o);
            }
        }
    }

    /// Steps the eager copies `wanted` needs (starting those not started,
    /// charged to `owner`): `Done` once every one is complete.
    pub(crate) fn step_copies(
        &mut self,
        wanted: &[CopySource],
        jobs: &mut Vec<EagerCopy>,
        owner: Option<Owner>,
    ) -> CopyStep {
        let mut outcome = CopyStep::Done;
        // A copy started for an object that no longer asks for eager
        // copies (its pager changed its strategy, or died) is dropped, half
        // made: the call makes a delayed copy instead, which shows what the
        // object has, and never pages the copy did not get.
        let (keep, dropped): (Vec<_>, Vec<_>) =
            std::mem::take(jobs).into_iter().partition(|j| self.vm.copies_eagerly(j.source));
        *jobs = keep;
        for job in dropped {
            let dest = self.vm.eager_copy_finish(job);
            self.vm.object_deallocate(dest);
        }
        // The copies begun, by what they copy: a fork may plan one per
        // map entry, so finding them must not cost a walk of the others.
        let mut begun: FxHashMap<CopySource, usize> =
            jobs.iter().enumerate().map(|(i, j)| ((j.source, j.offset, j.len), i)).collect();
        for &(object, offset, len) in wanted {
            if !self.vm.copies_eagerly(object) {
                continue;
            }
            let i = match begun.get(&(object, offset, len)) {
                Some(&i) => i,
                None => {
                    // The copy is made in memory: one larger than the
                    // machine is refused, not attempted.
                    if len / PAGE_SIZE > self.vm.machine.capacity() as u64 {
                        return CopyStep::Error(KernError::ResourceShortage);
                    }
                    jobs.push(self.vm.eager_copy_begin(object, offset, len, owner));
                    begun.insert((object, offset, len), jobs.len() - 1);
                    jobs.len() - 1
                }
            };
            match self.vm.eager_copy_step(&mut jobs[i]) {
                CopyStep::Done => {}
                CopyStep::Wait => outcome = CopyStep::Wait,
                e @ CopyStep::Error(_) => return e,
            }
        }
        outcome
    }

    /// The copies `fork_map` will make of `parent`'s entries.
    pub(crate) fn fork_copies(&self, parent: TaskId) -> Result<Vec<CopySource>> {
        let mut out = Vec::new();
        for e in self.task(parent)?.map.iter().filter(|e| e.inherit == VmInherit::Copy) {
            let Some(o) = e.object else { continue };
            if matches!(self.vm.object(o).provider, Provider::View(_)) {
                // A revoked view is not copied (see `fork_map`).
                if let Ok(pieces) = self.mo.proxies.flatten(o, e.offset, e.len()) {
                    out.extend(pieces.into_iter().map(|(_, len, obj, off, _, _)| (obj, off, len)));
                }
            } else {
                out.push((o, e.offset, e.len()));
            }
        }
        Ok(out)
    }

    /// Builds the child's map at `task_create` from the parent's entries.
    fn fork_map(&mut self, parent: TaskId, child: &mut VmMap) {
        let entries: Vec<MapEntry> = self.task(parent).expect("checked").map.iter().cloned().collect();
        for e in entries {
            match e.inherit {
                VmInherit::None => {}
                VmInherit::Share => {
                    let object = self.share_entry(parent, e.start);
                    let pe = self.task(parent).expect("checked").map.lookup(e.start).expect("exists").clone();
                    self.vm.object_reference(object);
                    child.insert(MapEntry { object: Some(object), ..pe });
                }
                VmInherit::Copy => match e.object {
                    None => child.insert(e.clone()),
                    Some(o) if matches!(self.vm.object(o).provider, Provider::View(_)) => {
                        // A copy of memory seen through a paging proxy is a
                        // snapshot of what is behind it, still subject to
                        // the proxy's revocation.
                        match self.mo.proxies.flatten(o, e.offset, e.len()) {
                            Ok(pieces) => {
                                for (rel, len, obj, off, prot, via) in pieces {
                                    self.vm.object_reference(obj);
                                    let c = self.copy_of(obj, off, len);
                                    let mut via: Vec<u64> = via;
                                    via.extend(e.via.iter().copied());
                                    child.insert(MapEntry {
                                        start: e.start + rel,
                                        end: e.start + rel + len,
                                        object: Some(c),
                                        offset: off,
                                        cur: e.cur & (prot | VmProt::WRITE),
                                        max: e.max & (prot | VmProt::WRITE),
                                        needs_copy: true,
                                        shared: false,
                                        via: Arc::from(via),
                                        ..e.clone()
                                    });
                                }
                            }
                            // Revoked: the child inherits an entry that
                            // faults exactly as the parent's does.
                            Err(_) => {
                                self.vm.object_reference(o);
                                child.insert(MapEntry { needs_copy: true, shared: false, ..e.clone() });
                            }
                        }
                    }
                    Some(o) => {
                        self.vm.object_reference(o);
                        let c = self.copy_of(o, e.offset, e.len());
                        child.insert(MapEntry { object: Some(c), needs_copy: true, shared: false, ..e.clone() });
                    }
                },
            }
        }
    }

    /// Prepares a parent entry to be shared: its object must exist and be
    /// its own (a pending copy-on-write is resolved now).
    pub(crate) fn share_entry(&mut self, task: TaskId, start: u64) -> ObjectId {
        let KState { vm, tasks, .. } = self;
        let t = tasks.get_mut(&task.id).expect("checked");
        let e = t.map.lookup_mut(start).expect("exists");
        e.shared = true;
        let o = match e.object {
            Some(o) => o,
            None => {
                let o = vm.object_insert(VmObject::temporary(e.offset + e.len()));
                e.object = Some(o);
                o
            }
        };
        if e.needs_copy {
            let mut s = VmObject::temporary(e.len());
            s.shadow = Some((o, e.offset));
            let s = vm.object_insert(s);
            e.object = Some(s);
            e.offset = 0;
            e.needs_copy = false;
            return s;
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{KernelConfig, TaskLimits};

    /// Random loads, stores, forks, unmappings, terminations and changes
    /// of the kernel's own limit, by tasks under a resident limit of their
    /// own: after every step, each task's charge is what its pages say
    /// (`Vm::audit_charges`), and within its limit.
    #[test]
    fn charges_stay_the_pages_own_through_any_sequence_of_calls() {
        let limits = TaskLimits { resident_pages: 6, ..TaskLimits::default() };
        let k = Kernel::new(KernelConfig { phys_pages: 64, resident_limit: 48, limits, ..KernelConfig::default() });
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut tasks: Vec<(TaskId, VmAddr)> = Vec::new();
        let mut refused = 0;
        for step in 0..4000 {
            if tasks.len() < 2 || next(50) == 0 {
                let parent = tasks.get(next(tasks.len().max(1) as u64) as usize).copied();
                let t = k.task_create(parent.map(|p| p.0)).unwrap();
                let a = match parent {
                    Some((_, a)) => a,
                    None => k.vm_allocate(t, VmAddr(0), 16 * PAGE_SIZE, true).unwrap(),
                };
                tasks.push((t, a));
            }
            let (t, a) = tasks[next(tasks.len() as u64) as usize];
            let at = VmAddr(a.0 + next(16) * PAGE_SIZE);
            let r = match next(20) {
                0..=5 => k.write_u64(t, at, step),
                6..=15 => k.read_u64(t, at).map(|_| ()),
                16 => k.vm_deallocate(t, at, PAGE_SIZE),
                17 if tasks.len() > 2 => {
                    k.task_terminate(t).unwrap();
                    tasks.retain(|x| x.0 != t);
                    Ok(())
                }
                18 => {
                    k.set_resident_limit(8 + next(48) as usize);
                    Ok(())
                }
                _ => Ok(()),
            };
            match r {
                Ok(()) | Err(KernError::InvalidAddress) => {}
                Err(KernError::ResourceShortage) => refused += 1,
                Err(e) => panic!("step {step}: {e:?}"),
            }
            k.with(|st| st.vm.audit_charges());
            for &(t, _) in &tasks {
                let i = k.task_info(t).unwrap();
                assert!(i.charged <= i.resident_limit, "step {step}: {i:?}");
            }
        }
        assert!(refused > 0, "the limits were reached");
        assert!(k.stats().vm.task_reclaims > 0, "and pages reclaimed for them");
        for (t, _) in tasks {
            k.task_terminate(t).unwrap();
        }
        assert_eq!(k.stats().charged, 0);
        k.with(|st| st.vm.audit_charges());
    }

    #[test]
    fn an_empty_vm_write_or_vm_copy_touches_no_page_wherever_it_points() {
        let k = Kernel::new(KernelConfig { phys_pages: 16, resident_limit: 16, ..KernelConfig::default() });
        let t = k.task_create(None).unwrap();
        let ro = k.vm_allocate(t, VmAddr(0), PAGE_SIZE, true).unwrap();
        k.vm_protect(t, ro, PAGE_SIZE, false, VmProt::READ).unwrap();
        // Empty reads succeed anywhere; so must empty writes, aligned or not.
        for at in [VmAddr(ro.0 + 8), VmAddr(0x7000_0008), ro] {
            assert_eq!(k.vm_read(t, at, 0), Ok(Vec::new()), "{at:?}");
            assert_eq!(k.vm_write(t, at, &[]), Ok(()), "{at:?}");
            assert_eq!(k.vm_copy(t, ro, 0, at), Ok(()), "{at:?}");
        }
        assert_eq!(k.stats().vm.faults, 0);
    }
}

//! The fault path.
//!
//! A task thread's access missed in the MMU; `fault_locked` makes the page
//! resident and mapped, or says why it cannot. It runs with the kernel lock
//! held and **never waits**: when the page is not there yet it asks the
//! provider (appending to `Vm::outbox`) and returns [`FaultOutcome::Wait`];
//! the caller delivers the outbox, sleeps with the lock released, and
//! retries from the top (GNU Mach's `VM_FAULT_RETRY`, Zircon's
//! `ZX_ERR_SHOULD_WAIT`).
//!
//! The walk, for an access at `va`:
//!
//! 1. Find the map entry (`KERN_INVALID_ADDRESS`), check the access against
//!    its current protection (`KERN_PROTECTION_FAILURE`) and against the
//!    paging proxies it was made through (revoked: `KERN_MEMORY_ERROR`).
//! 2. A write to a copy-on-write entry first gives the entry a private
//!    shadow object.
//! 3. Walk the object chain from the entry's object:
//!    - a paging proxy's view translates the offset into the object behind
//!      it and narrows the protection (the kernel as pager validating the
//!      request); a view is transparent, so a write lands in the real object;
//!    - a resident page ends the walk (busy: wait; error: `KERN_MEMORY_ERROR`);
//!    - an object whose pager has the page gets a `data_request` for a
//!      cluster of absent pages, and the fault waits (a pager not `ready`
//!      yet is asked nothing: the fault waits for `ready`; a dead one is
//!      `KERN_MEMORY_ERROR`);
//!    - otherwise go on to the shadow; at the bottom, zero-fill the page in
//!      the first object (no free frame: `KERN_RESOURCE_SHORTAGE`).
//! 4. A write to a page found below the first object copies it up; a write
//!    to an object with a copy object pushes the old contents into the copy
//!    first; pager locks send a `data_unlock` and wait (a dead pager:
//!    `KERN_MEMORY_ERROR`).
//! 5. Enter the translation with the narrowed protection.
//!
//! Every page the walk makes resident (a zero fill, a cluster asked of a
//! pager, a copy up, a push into a copy object) is charged to the faulting
//! task, and room for it is made first from the task's own pages
//! ([`Vm::make_room`], see [`super::charge`]): none to be had is
//! `KERN_RESOURCE_SHORTAGE`, or [`FaultOutcome::WaitRoom`] while some of
//! its pages are still on their way from pagers.

use super::charge::{Owner, Room};
use super::map::VmMap;
use super::object::{ObjectId, Page, Provider, VmObject};
use super::{PagerOp, ViewResolver, Vm};
use crate::pmap::{Frame, PmapId};
use crate::types::{KernError, VmAddr, VmProt, PAGE_SIZE};

/// What a fault came to.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// The page is mapped; retry the access.
    Done,
    /// A provider was asked (or is being asked) for a page of this
    /// object (or its pager's `ready`, or an unlock): drop the lock, wait
    /// for an event on the object, and fault again.
    Wait(ObjectId),
    /// The task is at its resident limit and has nothing to reclaim but
    /// pages on their way from pagers: drop the lock, wait for an event
    /// on the task, and fault again.
    WaitRoom,
    /// The access cannot succeed.
    Error(KernError),
}

impl From<KernError> for FaultOutcome {
    fn from(e: KernError) -> Self {
        FaultOutcome::Error(e)
    }
}

impl From<Room> for FaultOutcome {
    /// What a fault does when it finds no room ([`Room::Pages`] is no
    /// outcome: the fault goes on).
    fn from(r: Room) -> Self {
        match r {
            Room::Pages(_) => unreachable!("room was found"),
            Room::Wait => FaultOutcome::WaitRoom,
            Room::Full => FaultOutcome::Error(KernError::ResourceShortage),
        }
    }
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return FaultOutcome::from(e),
        }
    };
}

/// Handles a fault on `va` for `access` in `map` (whose MMU tables are
/// `pmap`) by the task `owner`, who is charged for the pages it makes
/// resident. Caller holds the kernel lock; see the module comment.
pub fn fault_locked(
    vm: &mut Vm,
    map: &mut VmMap,
    pmap: PmapId,
    owner: Owner,
    views: &dyn ViewResolver,
    va: u64,
    access: VmProt,
) -> FaultOutcome {
    let owner = Some(owner);
    vm.stats.faults += 1;
    let page_va = va & !(PAGE_SIZE - 1);

    // 1. The entry and its rights.
    let Some(entry) = map.lookup_mut(page_va) else {
        return FaultOutcome::Error(KernError::InvalidAddress);
    };
    if !entry.cur.contains(access) {
        return FaultOutcome::Error(KernError::ProtectionFailure);
    }
    if entry.via.iter().any(|&p| views.revoked(p)) {
        return FaultOutcome::Error(KernError::MemoryError);
    }

    // 2. The entry's object, made private on the first write.
    let obj = match entry.object {
        Some(o) => o,
        None => {
            let o = vm.object_insert(VmObject::temporary(entry.offset + entry.len()));
            entry.object = Some(o);
            o
        }
    };
    // A machine whose windows are fixed (see `Machine::windows_fixed`)
    // maps only the entry's own object's pages: the private object comes
    // on the first access, and pages found below are copied up to be read.
    let fixed = vm.machine.windows_fixed();
    if entry.needs_copy && (fixed || access.contains(VmProt::WRITE)) {
        let mut s = VmObject::temporary(entry.len());
        s.shadow = Some((obj, entry.offset)); // takes over the entry's reference
        entry.object = Some(vm.object_insert(s));
        entry.offset = 0;
        entry.needs_copy = false;
    }
    let obj = entry.object.expect("set above");
    let off = entry.offset_of(page_va);
    let needs_copy = entry.needs_copy;
    let mut limit = entry.cur;

    // 3. Walk the chain.
    let (mut first, mut first_off) = (obj, off);
    let (mut cur, mut cur_off) = (obj, off);
    let (pobj, poff, mut frame) = loop {
        let o = vm.object(cur);
        if let Provider::View(proxy) = o.provider {
            let (inner, ioff, allowed) = tri!(views.resolve(proxy, cur_off));
            if !allowed.contains(access) {
                return FaultOutcome::Error(KernError::ProtectionFailure);
            }
            limit &= allowed;
            if cur == first {
                (first, first_off) = (inner, ioff);
            }
            (cur, cur_off) = (inner, ioff);
            continue;
        }
        if let Some(p) = o.pages.get(&cur_off) {
            if p.busy {
                return FaultOutcome::Wait(cur);
            }
            if p.error {
                return FaultOutcome::Error(KernError::MemoryError);
            }
            break (cur, cur_off, p.frame.expect("resident page has a frame"));
        }
        if o.pager_has(cur_off) {
            if o.pager_dead {
                return FaultOutcome::Error(KernError::MemoryError);
            }
            if o.ready {
                if let r @ (Room::Wait | Room::Full) = request_cluster(vm, cur, cur_off, access, owner) {
                    return r.into();
                }
            }
            return FaultOutcome::Wait(cur);
        }
        if let Some((s, soff)) = o.shadow {
            (cur, cur_off) = (s, cur_off + soff);
            continue;
        }
        if let r @ (Room::Wait | Room::Full) = vm.make_room(owner, 1) {
            return r.into();
        }
        let f = tri!(vm.page_zero_fill(first, first_off, owner));
        if vm.object(first).shadow.is_some() {
            // This zero page is the object's own version, hiding whatever
            // the object below may hold later (a copy object's snapshot):
            // pageout must keep it, not drop it as clean.
            vm.object_mut(first).pages.get_mut(&first_off).expect("just filled").dirty = true;
        }
        break (first, first_off, f);
    };

    // 4. Copy-on-write, copy objects, pager locks.
    let mut prot = limit;
    if needs_copy {
        prot.remove(VmProt::WRITE);
    }
    let wants_write = access.contains(VmProt::WRITE);
    // Copying a page up only reads the page below.
    let copies_up = pobj != first && (wants_write || fixed);
    let page_access = if copies_up { (access - VmProt::WRITE) | VmProt::READ } else { access };
    {
        // A dead pager will never answer a `data_unlock`.
        let pager_dead = vm.object(pobj).pager_dead;
        let p = vm.object_mut(pobj).pages.get_mut(&poff).expect("found above");
        let locked = p.lock & page_access;
        if !locked.is_empty() {
            if pager_dead {
                return FaultOutcome::Error(KernError::MemoryError);
            }
            if !p.unlock_pending.contains(locked) {
                p.unlock_pending |= locked;
                vm.outbox.push(PagerOp::DataUnlock { object: pobj, offset: poff, length: PAGE_SIZE, access: locked });
            }
            return FaultOutcome::Wait(pobj);
        }
        // The pager's lock binds translations of its own page, not the
        // private copy about to be made of it.
        if !copies_up {
            prot -= p.lock;
        }
    }
    if copy_lacks(vm, first, first_off) {
        if wants_write {
            tri!(pinned(vm, pobj, poff, |vm| push_to_copy(vm, first, first_off, frame, owner)));
        } else {
            prot.remove(VmProt::WRITE);
        }
    }
    if pobj != first {
        if copies_up {
            let nf = tri!(pinned(vm, pobj, poff, |vm| frame_for(vm, first, first_off, owner)));
            vm.machine.copy(frame, nf);
            // Other mappings of `first` (sharers of a shadow) may map the
            // page below: they cannot be told from mappings that want it,
            // so every translation of it goes, as in Mach. With fixed
            // windows none does: every translation of the page below is
            // its own object's.
            if !fixed {
                vm.page_remove(frame);
            }
            // A copy made to be read is the page below, unchanged: clean,
            // it may be dropped and copied again (the page below is the
            // copy's data as of the copy: it changes only after a push).
            vm.page_insert(first, first_off, Page { dirty: wants_write, owner, ..Page::resident(nf) });
            vm.stats.cow_copies += 1;
            frame = nf;
        } else {
            prot.remove(VmProt::WRITE);
        }
    }

    // 5. Map it.
    debug_assert!(prot.contains(access));
    tri!(vm.pmap_enter(pmap, page_va, &[frame], prot));
    if wants_write {
        if let Some(p) = vm.object_mut(first).pages.get_mut(&first_off) {
            p.dirty = true;
        }
    }
    FaultOutcome::Done
}

/// How [`fault_around`] may go beyond the faulting page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Around {
    /// The most pages after the faulting one it enters.
    pub max: usize,
    /// The fault was a store (the next pages are likely stored into too):
    /// enter them writable where the entry allows, clean or not.
    pub write: bool,
    /// The most absent pages of anonymous memory it may zero-fill (and
    /// charge to `owner`): the next pages of a run of sequential faults.
    pub zero_fill: usize,
    /// The faults run sequentially: where the pages entered end at a page
    /// the object's pager has and nobody has asked for, ask for its
    /// cluster now (read-ahead), if `owner` has room for it without
    /// giving up pages, so that the pager works while the task uses what
    /// it has.
    pub read_ahead: bool,
}

/// Fault-around: after a fault at `va` is done, enters the pages that
/// follow it in its entry, up to `around.max` of them, as long as each is
/// resident already in the entry's own object (through the paging
/// proxies it was mapped by) and needs nothing but a translation: no
/// pager to ask, no copy to make, no lock to lift, and not mapped
/// already (`extract`); or, up to `around.zero_fill` of them, absent
/// anonymous pages (an object with no pager, shadow or copy), which it
/// zero-fills. Stops at the first page that does not qualify; enters runs
/// of pages in one call each. Clean pages are entered without write
/// access unless the fault was a store (a later store makes the usual
/// write fault, which marks the page dirty). Returns the pages entered.
///
/// A host that serves each fault with a round trip (userfaultfd) saves
/// one per page of a cluster a pager supplied at once, and one per page
/// of a sequential run through new memory.
pub fn fault_around(
    vm: &mut Vm,
    map: &VmMap,
    pmap: PmapId,
    owner: Owner,
    views: &dyn ViewResolver,
    va: u64,
    around: Around,
) -> usize {
    let page_va = va & !(PAGE_SIZE - 1);
    let Some(entry) = map.lookup(page_va) else { return 0 };
    let Some(obj) = entry.object else { return 0 };
    if entry.needs_copy || entry.via.iter().any(|&p| views.revoked(p)) {
        return 0;
    }
    let end = entry.end.min(page_va.saturating_add((around.max as u64 + 1).saturating_mul(PAGE_SIZE)));
    let mut zero_budget = around.zero_fill;
    let mut ahead = None;
    let mut run: Vec<Frame> = Vec::new();
    let mut run_start = page_va + PAGE_SIZE;
    let mut run_prot = VmProt::NONE;
    let mut entered = 0;
    let mut at = page_va + PAGE_SIZE;
    while at < end {
        // A page mapped already ends it: what follows was entered by an
        // earlier fault-around, most likely.
        if vm.machine.extract(pmap, VmAddr(at)).is_some() {
            break;
        }
        let (mut cur, mut off, mut limit) = (obj, entry.offset_of(at), entry.cur);
        while let Provider::View(proxy) = vm.object(cur).provider {
            match views.resolve(proxy, off) {
                Ok((inner, ioff, allowed)) => {
                    limit &= allowed;
                    (cur, off) = (inner, ioff);
                }
                Err(_) => {
                    limit = VmProt::NONE;
                    break;
                }
            }
        }
        let o = vm.object(cur);
        let anonymous = matches!(o.provider, Provider::None) && o.shadow.is_none() && o.copy.is_none();
        let (frame, dirty, lock) = match o.pages.get(&off) {
            Some(p) if !p.busy && !p.error && p.frame.is_some() => (p.frame.expect("checked"), p.dirty, p.lock),
            None if anonymous && zero_budget > 0 && off < o.size && limit.contains(VmProt::READ) => {
                // Making room may page out a page of the run gathered so
                // far (resident, not yet entered): enter it first, so that
                // no frame in hand is freed and reused under it.
                if !run.is_empty() && (!vm.has_room(owner, 1) || vm.resident >= vm.resident_limit) {
                    if vm.pmap_enter(pmap, run_start, &run, run_prot).is_err() {
                        return entered;
                    }
                    entered += run.len();
                    run.clear();
                }
                if !matches!(vm.make_room(Some(owner), 1), Room::Pages(_)) {
                    break;
                }
                let Ok(f) = vm.page_zero_fill(cur, off, Some(owner)) else { break };
                zero_budget -= 1;
                (f, false, VmProt::NONE)
            }
            None if around.read_ahead
                && o.ready
                && off < o.size
                && o.pager_has(off)
                && limit.contains(VmProt::READ) =>
            {
                ahead = Some((cur, off));
                break;
            }
            _ => break,
        };
        let mut prot = limit - lock;
        if !(dirty || around.write) || copy_lacks(vm, cur, off) {
            prot.remove(VmProt::WRITE);
        }
        if !prot.contains(VmProt::READ) {
            break;
        }
        if prot != run_prot && !run.is_empty() {
            if vm.pmap_enter(pmap, run_start, &run, run_prot).is_err() {
                return entered;
            }
            entered += run.len();
            run.clear();
        }
        if run.is_empty() {
            run_start = at;
            run_prot = prot;
        }
        run.push(frame);
        at += PAGE_SIZE;
    }
    if !run.is_empty() && vm.pmap_enter(pmap, run_start, &run, run_prot).is_ok() {
        entered += run.len();
    }
    if let Some((object, offset)) = ahead {
        read_ahead(vm, object, offset, owner);
    }
    entered
}

/// Read-ahead: asks the pager of `object` for the cluster at `offset`
/// (absent, and asked of nobody) with no fault waiting, charged to
/// `owner`, if it has room for the whole cluster without reclaiming
/// (read-ahead never takes a page a task uses for one it may not).
fn read_ahead(vm: &mut Vm, object: ObjectId, offset: u64, owner: Owner) {
    let cluster = vm.object(object).cluster_pages.max(1) as usize;
    if vm.resident + cluster > vm.resident_limit || !vm.has_room(owner, cluster) {
        return;
    }
    let _ = request_cluster(vm, object, offset, VmProt::READ, Some(owner));
}

/// Does `object` have a copy object that does not yet hold its own version
/// of the page at `offset`?
fn copy_lacks(vm: &Vm, object: ObjectId, offset: u64) -> bool {
    let Some(c) = vm.object(object).copy else {
        return false;
    };
    let c = vm.object(c);
    !c.pages.contains_key(&offset) && !c.paged_out.contains(&offset)
}

/// Why a page could not be had for a page charged to a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NoFrame {
    /// No room within the task's limit ([`Room::Wait`] or [`Room::Full`]).
    Room(Room),
    /// No room in the store.
    Kern(KernError),
}

impl From<NoFrame> for FaultOutcome {
    fn from(e: NoFrame) -> Self {
        match e {
            NoFrame::Room(r) => r.into(),
            NoFrame::Kern(e) => FaultOutcome::Error(e),
        }
    }
}

/// The page at `offset` of `object` allocated in the store, for a page
/// charged to `owner`, room made for it first.
pub(super) fn frame_for(
    vm: &mut Vm,
    object: ObjectId,
    offset: u64,
    owner: Option<Owner>,
) -> std::result::Result<Frame, NoFrame> {
    match vm.make_room(owner, 1) {
        Room::Pages(_) => vm.page_alloc(object, offset).map_err(NoFrame::Kern),
        r => Err(NoFrame::Room(r)),
    }
}

/// Pushes the current contents of `object`'s page at `offset` (in `frame`)
/// into its copy object, before the page changes; the push is charged to
/// `owner`, whose write makes it.
///
/// Mappings of the copy that read the page before the push still map
/// `frame`; every translation of it goes (as in Mach), so they fault again
/// and find the pushed page instead of seeing the coming write.
fn push_to_copy(
    vm: &mut Vm,
    object: ObjectId,
    offset: u64,
    frame: Frame,
    owner: Option<Owner>,
) -> std::result::Result<(), NoFrame> {
    let c = vm.object(object).copy.expect("caller checked");
    let nf = frame_for(vm, c, offset, owner)?;
    vm.machine.copy(frame, nf);
    vm.page_remove(frame);
    vm.page_insert(c, offset, Page { dirty: true, owner, ..Page::resident(nf) });
    vm.stats.copy_pushes += 1;
    Ok(())
}

/// Runs `f` with the page at `(object, offset)` marked busy, so that a
/// pageout triggered by a frame allocation inside `f` cannot take it.
pub(super) fn pinned<T>(vm: &mut Vm, object: ObjectId, offset: u64, f: impl FnOnce(&mut Vm) -> T) -> T {
    let was = std::mem::replace(&mut vm.object_mut(object).pages.get_mut(&offset).expect("pinned page").busy, true);
    let r = f(vm);
    if let Some(p) = vm.object_mut(object).pages.get_mut(&offset) {
        p.busy = was;
    }
    r
}

/// Asks the pager of `object` for the cluster of absent pages around
/// `offset`, for `owner`: placeholders charged to it go in (as many as
/// its limit has room for, the page at `offset` first), one
/// `data_request` goes out. Without room, nothing is asked (the
/// [`Room`] says why); otherwise [`Room::Pages`] says how many were.
pub(super) fn request_cluster(
    vm: &mut Vm,
    object: ObjectId,
    offset: u64,
    access: VmProt,
    owner: Option<Owner>,
) -> Room {
    let o = vm.object(object);
    // At most half the kernel's resident limit at once (as a task's own
    // limit: see `Vm::make_room`), so that a large cluster under a small
    // limit does not page out its own pages as they arrive.
    let pages = u64::from(o.cluster_pages.max(1)).min((vm.resident_limit as u64 / 2).max(1));
    let cluster = pages * PAGE_SIZE;
    let base = offset - offset % cluster;
    let wanted = |o: &VmObject, off: u64| off < o.size && !o.pages.contains_key(&off) && o.pager_has(off);
    let mut start = offset;
    while start > base && wanted(o, start - PAGE_SIZE) {
        start -= PAGE_SIZE;
    }
    let limit = base.saturating_add(cluster);
    let mut end = offset + PAGE_SIZE;
    while end < limit && wanted(o, end) {
        end += PAGE_SIZE;
    }
    // Reclaiming only takes pages away: the range is still absent after.
    let room = vm.make_room(owner, ((end - start) / PAGE_SIZE) as usize);
    let Room::Pages(n) = room else { return room };
    if (n as u64) < (end - start) / PAGE_SIZE {
        start = offset;
        end = end.min(offset + n as u64 * PAGE_SIZE);
    }
    for off in (start..end).step_by(PAGE_SIZE as usize) {
        vm.page_insert(object, off, Page::requested().owned_by(owner));
    }
    vm.stats.pages_requested += (end - start) / PAGE_SIZE;
    vm.outbox.push(PagerOp::DataRequest { object, offset: start, length: end - start, access });
    Room::Pages(((end - start) / PAGE_SIZE) as usize)
}

//! The machine-independent VM: address maps, objects, the fault path and
//! pageout.
//!
//! Nothing here sends a message. When the VM needs a pager it appends a
//! [`PagerOp`] to [`Vm::outbox`]; the kernel delivers the outbox through the
//! memory-object layer after the VM step returns (and before any thread
//! waits). Paging proxies reach the VM only through the [`ViewResolver`]
//! trait, so the fault path is the same whoever provides the page.

pub mod charge;
pub mod copy;
pub mod fault;
pub mod map;
pub mod object;
pub mod pageout;
pub mod paging;

use crate::pmap::{Frame, Machine, PmapId};
use crate::types::{Result, VmAddr, VmProt, PAGE_SIZE};
use charge::{Accounts, Owner};
use object::{ObjectId, Page, Provider, VmObject};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// The smallest resident limit: a copy-on-write fault holds the page it
/// copies while it takes a frame for the copy.
pub const MIN_RESIDENT: usize = 2;

/// A request from the VM to whoever provides an object's pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PagerOp {
    /// `memory_object_data_request`
    DataRequest { object: ObjectId, offset: u64, length: u64, access: VmProt },
    /// `memory_object_data_unlock`
    DataUnlock { object: ObjectId, offset: u64, length: u64, access: VmProt },
    /// `memory_object_data_return`
    DataReturn { object: ObjectId, offset: u64, data: Vec<u8>, dirty: bool, kernel_copy: bool },
    /// An anonymous object needs a default-pager memory object.
    CreateDefault { object: ObjectId, size: u64 },
    /// The object is gone: `memory_object_terminate` (external), release of
    /// the proxy (view).
    Terminated { object: ObjectId, provider: Provider },
}

/// How a paging proxy's view translates an offset. Implemented by the
/// memory-object layer; the fault path asks it as it would ask a pager.
pub trait ViewResolver {
    /// The object and offset behind `offset` of the view, and what the
    /// proxy allows there. `KERN_MEMORY_ERROR` if the proxy is revoked or
    /// the offset is outside every window.
    fn resolve(&self, view: u64, offset: u64) -> Result<(ObjectId, u64, VmProt)>;
    /// Has this paging proxy been revoked?
    fn revoked(&self, proxy: u64) -> bool;
}

/// Counters the VM keeps (reported by `machvm` and the benchmarks).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmStats {
    pub faults: u64,
    pub zero_fills: u64,
    pub cow_copies: u64,
    pub copy_pushes: u64,
    /// Pages copied by eager copies (`MEMORY_OBJECT_COPY_NONE`).
    pub eager_copies: u64,
    pub pages_requested: u64,
    pub pageouts: u64,
    pub pages_returned: u64,
    pub pages_reclaimed: u64,
    /// Pages a task's own reclaim freed to stay within its resident limit
    /// (counted in `pages_reclaimed` too).
    pub task_reclaims: u64,
    /// Candidates a task's own reclaim looked at (each costs O(1)): it
    /// measures the reclaim's work.
    pub task_reclaim_visits: u64,
    /// Candidates the kernel-wide pageout looked at.
    pub pageout_visits: u64,
    /// Pmap operations that failed (see `crate::pmap`, "Failure"): enters
    /// refused (the fault failed), lowerings done by removing instead,
    /// removals that took more than asked.
    pub pmap_failures: u64,
}

/// The VM's state, guarded by the kernel lock.
pub struct Vm {
    pub objects: HashMap<ObjectId, VmObject>,
    next_object: u64,
    /// Pages resident now (each holds a page of the machine's store).
    pub resident: usize,
    /// Pageout keeps `resident` at or below this as far as it can reclaim
    /// (see [`Vm::page_alloc`]).
    pub resident_limit: usize,
    /// Pageout candidates, oldest first (entries may be stale).
    queue: VecDeque<(ObjectId, u64)>,
    pub outbox: Vec<PagerOp>,
    pub stats: VmStats,
    pub machine: Arc<dyn Machine>,
    /// A default pager is registered: anonymous pages may be paged out.
    pub default_pager: bool,
    /// Unreferenced objects kept for their pagers' `may_cache`, least
    /// recently released first (entries may be stale: re-referenced since,
    /// or gone; they are dropped whenever an object is added).
    cached: VecDeque<ObjectId>,
    /// What each task is charged (see [`charge`]).
    accounts: Accounts,
    /// Owners with a fault waiting for room whose charge changed since:
    /// the kernel wakes their faults (see [`charge`]).
    pub room_events: Vec<Owner>,
}

/// How many unreferenced cacheable objects the kernel keeps; past this the
/// least recently released is terminated (its dirty pages returned first),
/// as Mach trims its object cache.
pub const OBJECT_CACHE_MAX: usize = 64;

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("objects", &self.objects.len())
            .field("resident", &self.resident)
            .field("resident_limit", &self.resident_limit)
            .finish()
    }
}

impl Vm {
    pub fn new(machine: Arc<dyn Machine>, resident_limit: usize) -> Vm {
        let n = machine.capacity();
        Vm {
            objects: HashMap::new(),
            next_object: 0,
            resident: 0,
            resident_limit: resident_limit.clamp(MIN_RESIDENT, n.max(MIN_RESIDENT)),
            queue: VecDeque::new(),
            outbox: Vec::new(),
            stats: VmStats::default(),
            machine,
            default_pager: false,
            cached: VecDeque::new(),
            accounts: Accounts::default(),
            room_events: Vec::new(),
        }
    }

    /// Adds an object and returns its id.
    pub fn object_insert(&mut self, o: VmObject) -> ObjectId {
        self.next_object += 1;
        let id = ObjectId(self.next_object);
        self.objects.insert(id, o);
        id
    }

    pub fn object(&self, id: ObjectId) -> &VmObject {
        &self.objects[&id]
    }

    pub fn object_mut(&mut self, id: ObjectId) -> &mut VmObject {
        self.objects.get_mut(&id).expect("object referenced but missing")
    }

    /// `vm_object_reference`
    pub fn object_reference(&mut self, id: ObjectId) {
        self.object_mut(id).refs += 1;
    }

    /// `vm_object_deallocate`: drops a reference. On the last one, an
    /// object whose live pager allows caching (`may_cache`) goes into the
    /// object cache with its pages (see [`OBJECT_CACHE_MAX`]); any other
    /// is terminated (its dirty and precious pages returned to its pager)
    /// and releases the object it shadows.
    pub fn object_deallocate(&mut self, id: ObjectId) {
        let mut next = Some(id);
        while let Some(id) = next.take() {
            let o = self.object_mut(id);
            o.refs -= 1;
            if o.refs > 0 {
                return;
            }
            if o.may_cache && !o.pager_dead && matches!(o.provider, Provider::External) {
                self.cache_insert(id);
                return;
            }
            next = self.object_terminate(id);
        }
    }

    /// Puts an unreferenced object at the young end of the cache and
    /// terminates the least recently released ones beyond
    /// [`OBJECT_CACHE_MAX`]. Stale entries go first, so the count is of
    /// objects really cached and an object released again is young again.
    fn cache_insert(&mut self, id: ObjectId) {
        let objects = &self.objects;
        self.cached.retain(|&c| c != id && objects.get(&c).is_some_and(|o| o.refs == 0));
        self.cached.push_back(id);
        if self.cached.len() > OBJECT_CACHE_MAX {
            let oldest = self.cached.pop_front().expect("the cache is full");
            // Cacheable objects are external: they shadow nothing.
            let _ = self.object_terminate(oldest);
        }
    }

    /// Terminates every object the cache keeps (their dirty and precious
    /// pages go back to their pagers first), as at shutdown.
    pub fn cache_flush(&mut self) {
        for id in std::mem::take(&mut self.cached) {
            if self.objects.get(&id).is_some_and(|o| o.refs == 0) {
                // Cached objects are external: they shadow nothing.
                let _ = self.object_terminate(id);
            }
        }
    }

    /// Tears an unreferenced object down; returns its shadow to release.
    fn object_terminate(&mut self, id: ObjectId) -> Option<ObjectId> {
        let offsets: Vec<u64> = self.object(id).pages.keys().copied().collect();
        for off in offsets {
            self.page_evict(id, off, !self.object(id).temporary);
        }
        let o = self.objects.remove(&id).expect("terminating a live object");
        // A copy object going away: its original no longer has a copy.
        if let Some((s, _)) = o.shadow {
            if let Some(so) = self.objects.get_mut(&s) {
                if so.copy == Some(id) {
                    so.copy = None;
                }
            }
        }
        if o.provider != Provider::None {
            self.outbox.push(PagerOp::Terminated { object: id, provider: o.provider });
        }
        self.machine.object_released(id);
        o.shadow.map(|(s, _)| s)
    }

    // ----- pages in the store -----

    /// Allocates the page at `offset` of `object` in the machine's page
    /// store (no page is resident there), paging out first if the
    /// resident limit is reached. If pageout finds nothing to reclaim, the
    /// page is taken anyway (the limit is exceeded);
    /// `KERN_RESOURCE_SHORTAGE` only when the store has no room. The
    /// caller puts it in (`page_insert`) or frees it.
    pub fn page_alloc(&mut self, object: ObjectId, offset: u64) -> Result<Frame> {
        debug_assert!(
            !matches!(self.objects.get(&object).map(|o| o.provider), Some(Provider::View(_))),
            "a view has no pages of its own"
        );
        if self.resident >= self.resident_limit {
            self.pageout(self.resident + 1 - self.resident_limit);
        }
        let f = self.machine.alloc(object, offset)?;
        self.resident += 1;
        Ok(f)
    }

    /// [`Vm::page_alloc`] of up to `n` (at least one) pages at consecutive
    /// offsets of `object` from `offset` on, in one store call: as many as
    /// the resident limit has room for once pages are paged out for it
    /// (the pages of a run are not resident until the caller inserts them,
    /// so they cannot be paged out to make room for each other).
    pub fn page_alloc_run(&mut self, object: ObjectId, offset: u64, n: usize) -> Result<Vec<Frame>> {
        if self.resident + n > self.resident_limit {
            self.pageout(self.resident + n - self.resident_limit);
        }
        let n = n.min(self.resident_limit.saturating_sub(self.resident)).max(1);
        let pages = self.machine.alloc_run(object, offset, n)?;
        self.resident += n;
        Ok(pages)
    }

    /// Gives a page back to the store, its translations and bits gone.
    fn page_free(&mut self, f: Frame) {
        self.page_remove(f);
        self.machine.clear_modify(f);
        self.machine.clear_reference(f);
        self.resident -= 1;
        self.machine.free(f);
    }

    /// Drops stale and duplicate candidates (amortised O(1) per insert).
    fn queue_compact(&mut self) {
        let mut seen = std::collections::HashSet::new();
        let objects = &self.objects;
        self.queue.retain(|&(o, off)| {
            objects.get(&o).and_then(|o| o.pages.get(&off)).is_some_and(|p| p.frame.is_some()) && seen.insert((o, off))
        });
    }

    /// Installs `page` at `offset` of `object` (in place of a placeholder,
    /// if any): a resident one becomes a pageout candidate, and is charged
    /// to its owner (a placeholder counts as in transit for it; an owner
    /// with no account is no owner).
    pub fn page_insert(&mut self, object: ObjectId, offset: u64, page: Page) {
        let (resident, owner) = (page.frame.is_some(), page.owner);
        let o = self.object_mut(object);
        let old = o.pages.insert(offset, page);
        debug_assert!(old.as_ref().is_none_or(|p| p.frame.is_none()), "two resident pages at one key");
        o.resident = o.resident + usize::from(resident) - usize::from(old.as_ref().is_some_and(|p| p.frame.is_some()));
        if let Some(old) = old {
            self.uncharge(old.owner, old.frame.is_some());
        }
        if resident {
            self.queue.push_back((object, offset));
            if self.queue.len() > 4 * (self.resident + 64) {
                self.queue_compact();
            }
        }
        if let Some(owner) = owner {
            if !self.charge(object, offset, owner, resident) {
                self.object_mut(object).pages.get_mut(&offset).expect("just put in").owner = None;
            }
        }
    }

    /// A new zero-filled resident page, charged to `owner`.
    pub fn page_zero_fill(&mut self, object: ObjectId, offset: u64, owner: Option<Owner>) -> Result<Frame> {
        let f = self.page_alloc(object, offset)?;
        self.machine.zero(f);
        self.page_insert(object, offset, Page::resident(f).owned_by(owner));
        self.stats.zero_fills += 1;
        Ok(f)
    }

    /// Reads a resident page's bytes.
    pub fn page_bytes(&self, frame: Frame) -> Vec<u8> {
        let mut buf = vec![0u8; PAGE_SIZE as usize];
        self.machine.read(frame, 0, &mut buf);
        buf
    }

    /// Is the page modified, counting the MMU's modified bit?
    pub fn page_is_dirty(&self, page: &Page) -> bool {
        page.dirty || page.frame.is_some_and(|f| self.machine.is_modified(f))
    }

    /// Removes a page (or a placeholder) from its object, frees its frame
    /// and its charge. If `give_back` and the page is dirty or precious,
    /// its data goes to the pager first (`data_return`): no data is ever
    /// dropped.
    pub fn page_evict(&mut self, object: ObjectId, offset: u64, give_back: bool) {
        let Some(page) = self.object_mut(object).pages.remove(&offset) else {
            return;
        };
        self.uncharge(page.owner, page.frame.is_some());
        let Some(frame) = page.frame else { return };
        self.object_mut(object).resident -= 1;
        // Writers stopped first, so that "clean" is the page's last word;
        // a page whose bytes are not going back is taken without them.
        let returned = give_back
            && (page.precious || page.dirty || {
                self.page_write_protect(frame);
                self.machine.is_modified(frame)
            });
        if !returned {
            if self.machine.page_remove_discard(frame).is_err() {
                self.stats.pmap_failures += 1;
            }
            return self.page_free(frame);
        }
        self.page_remove(frame);
        let dirty = self.page_is_dirty(&page);
        let data = self.page_bytes(frame);
        self.page_returned(object, offset, data, dirty, false);
        self.page_free(frame);
    }

    /// Sends a page's data to its pager (`data_return`), whatever the
    /// cause (pageout, a flush, a `lock_request`, termination). An
    /// anonymous object's default pager holds the offset from now on: the
    /// next fault there asks it, never zero-fills or reads what the object
    /// shadows.
    pub fn page_returned(&mut self, object: ObjectId, offset: u64, data: Vec<u8>, dirty: bool, kernel_copy: bool) {
        let o = self.object_mut(object);
        if o.temporary {
            o.paged_out.insert(offset);
        }
        self.outbox.push(PagerOp::DataReturn { object, offset, data, dirty, kernel_copy });
        self.stats.pages_returned += 1;
    }

    /// Puts back a page whose `data_return` could not be delivered (its
    /// pager died since): resident again and dirty, unless the object has
    /// gone or holds a page there already. With no room in the store the data
    /// is lost, as nothing else holds it.
    pub fn page_restore(&mut self, object: ObjectId, offset: u64, data: &[u8]) {
        if self.objects.get(&object).is_none_or(|o| o.pages.contains_key(&offset)) {
            return;
        }
        let Ok(frame) = self.page_alloc(object, offset) else { return };
        if self.objects.get(&object).is_none_or(|o| o.pages.contains_key(&offset)) {
            self.page_free(frame);
            return;
        }
        self.machine.write(frame, 0, data);
        self.page_insert(object, offset, Page { dirty: true, ..Page::resident(frame) });
    }

    // ----- the pmap (see `crate::pmap`, "Failure") -----

    /// Maps `pages` from `va` in `pmap` with `prot`. A refusal is the
    /// fault's error (`KERN_RESOURCE_SHORTAGE`, `KERN_MEMORY_ERROR`).
    pub fn pmap_enter(&mut self, pmap: PmapId, va: u64, pages: &[Frame], prot: VmProt) -> Result<()> {
        self.machine.enter(pmap, VmAddr(va), pages, prot).map_err(|e| {
            self.stats.pmap_failures += 1;
            e.into()
        })
    }

    /// Lowers every translation in `[start, end)` of `pmap` to `prot`, or
    /// removes them if the pmap cannot lower them.
    pub fn pmap_protect(&mut self, pmap: PmapId, start: u64, end: u64, prot: VmProt) {
        if self.machine.protect(pmap, VmAddr(start), VmAddr(end), prot).is_err() {
            self.stats.pmap_failures += 1;
            self.pmap_remove_range(pmap, start, end);
        }
    }

    /// Removes every translation in `[start, end)` of `pmap` (a pmap that
    /// fails has taken more: the address space).
    pub fn pmap_remove_range(&mut self, pmap: PmapId, start: u64, end: u64) {
        if self.machine.remove(pmap, VmAddr(start), VmAddr(end)).is_err() {
            self.stats.pmap_failures += 1;
        }
    }

    /// Lowers every translation of `page`, in every pmap, to `prot`
    /// (`NONE`: [`Vm::page_remove`]), or removes them all if the pmap
    /// cannot lower them.
    pub fn page_protect(&mut self, page: Frame, prot: VmProt) {
        if prot.is_empty() {
            return self.page_remove(page);
        }
        if self.machine.page_protect(page, prot).is_err() {
            self.stats.pmap_failures += 1;
            self.page_remove(page);
        }
    }

    /// Write-protects `page` in every mapping: what the VM does before it
    /// judges a page whose readers may go on reading (a copy-on-write
    /// snapshot, a `lock_request` that returns without flushing).
    pub fn page_write_protect(&mut self, page: Frame) {
        self.page_protect(page, VmProt::READ | VmProt::EXECUTE);
    }

    /// Removes `page` from every mapping (it stays resident).
    pub fn page_remove(&mut self, page: Frame) {
        if self.machine.page_remove(page).is_err() {
            self.stats.pmap_failures += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pmap::soft::SoftMachine;

    fn cacheable(vm: &mut Vm) -> ObjectId {
        let mut o = VmObject::external(1);
        o.may_cache = true;
        vm.object_insert(o)
    }

    #[test]
    fn the_object_cache_keeps_the_most_recently_released_objects() {
        let mut vm = Vm::new(Arc::new(SoftMachine::new(4)), 4);
        // `a` is released, taken again and released again: it is then the
        // most recently released, and must outlive every older object.
        let a = cacheable(&mut vm);
        vm.object_deallocate(a);
        let older: Vec<ObjectId> = (0..OBJECT_CACHE_MAX - 1).map(|_| cacheable(&mut vm)).collect();
        for &o in &older {
            vm.object_deallocate(o);
        }
        vm.object_reference(a);
        vm.object_deallocate(a);
        assert!(vm.objects.contains_key(&a) && older.iter().all(|o| vm.objects.contains_key(o)));
        // One more makes `OBJECT_CACHE_MAX + 1`: the oldest goes, not `a`.
        let newest = cacheable(&mut vm);
        vm.object_deallocate(newest);
        assert!(!vm.objects.contains_key(&older[0]));
        assert!(vm.objects.contains_key(&a) && vm.objects.contains_key(&newest));
        assert_eq!(vm.objects.len(), OBJECT_CACHE_MAX);
    }
}

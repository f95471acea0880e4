//! The machine-independent VM: address maps, objects, the fault path and
//! pageout.
//!
//! Nothing here sends a message. When the VM needs a pager it appends a
//! [`PagerOp`] to [`Vm::outbox`]; the kernel delivers the outbox through the
//! memory-object layer after the VM step returns (and before any thread
//! waits). Paging proxies reach the VM only through the [`ViewResolver`]
//! trait, so the fault path is the same whoever provides the page.

pub mod fault;
pub mod map;
pub mod object;
pub mod pageout;
pub mod paging;

use crate::pmap::{Frame, Machine, PmapId};
use crate::types::{KernError, Result, VmProt, PAGE_SIZE};
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
    pub pages_requested: u64,
    pub pageouts: u64,
    pub pages_returned: u64,
    pub pages_reclaimed: u64,
}

/// The VM's state, guarded by the kernel lock.
pub struct Vm {
    pub objects: HashMap<ObjectId, VmObject>,
    next_object: u64,
    free_frames: Vec<Frame>,
    /// Pages resident now.
    pub resident: usize,
    /// Pageout keeps `resident` at or below this.
    pub resident_limit: usize,
    /// Pageout candidates, oldest first (entries may be stale).
    queue: VecDeque<(ObjectId, u64)>,
    pub outbox: Vec<PagerOp>,
    pub stats: VmStats,
    pub machine: Arc<dyn Machine>,
    /// A default pager is registered: anonymous pages may be paged out.
    pub default_pager: bool,
    /// Unreferenced objects kept for their pagers' `may_cache`, oldest
    /// first (entries may be stale: re-referenced or already gone).
    cached: VecDeque<ObjectId>,
}

/// How many unreferenced cacheable objects the kernel keeps; past this the
/// oldest is terminated (its dirty pages returned first), as Mach trims
/// its object cache.
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
        let n = machine.frame_count();
        Vm {
            objects: HashMap::new(),
            next_object: 0,
            free_frames: (0..n as u32).rev().map(Frame).collect(),
            resident: 0,
            resident_limit: resident_limit.clamp(MIN_RESIDENT, n.max(MIN_RESIDENT)),
            queue: VecDeque::new(),
            outbox: Vec::new(),
            stats: VmStats::default(),
            machine,
            default_pager: false,
            cached: VecDeque::new(),
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

    /// `vm_object_deallocate`: drops a reference; the last one terminates
    /// the object (returning what its pager must get back) and releases
    /// the object it shadows.
    pub fn object_deallocate(&mut self, id: ObjectId) {
        let mut next = Some(id);
        while let Some(id) = next.take() {
            let o = self.object_mut(id);
            o.refs -= 1;
            if o.refs > 0 {
                return;
            }
            if o.may_cache && !o.pager_dead && matches!(o.provider, Provider::External) {
                self.cached.push_back(id);
                self.cache_trim();
                return;
            }
            next = self.object_terminate(id);
        }
    }

    /// Terminates the oldest cached objects beyond [`OBJECT_CACHE_MAX`].
    fn cache_trim(&mut self) {
        while self.cached.len() > OBJECT_CACHE_MAX {
            let Some(id) = self.cached.pop_front() else { return };
            if self.objects.get(&id).is_some_and(|o| o.refs == 0) {
                // Cacheable objects are external: they shadow nothing.
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
        o.shadow.map(|(s, _)| s)
    }

    // ----- frames -----

    /// Takes a free frame, paging out first if the resident limit is
    /// reached. `KERN_RESOURCE_SHORTAGE` if nothing can be reclaimed.
    pub fn frame_alloc(&mut self) -> Result<Frame> {
        if self.resident >= self.resident_limit {
            self.pageout(self.resident + 1 - self.resident_limit);
        }
        let f = self.free_frames.pop().ok_or(KernError::ResourceShortage)?;
        self.resident += 1;
        Ok(f)
    }

    fn frame_free(&mut self, f: Frame) {
        self.machine.page_protect(f, VmProt::NONE);
        self.machine.clear_modify(f);
        self.machine.clear_reference(f);
        self.resident -= 1;
        self.free_frames.push(f);
    }

    /// Drops stale and duplicate candidates (amortised O(1) per insert).
    fn queue_compact(&mut self) {
        let mut seen = std::collections::HashSet::new();
        let objects = &self.objects;
        self.queue.retain(|&(o, off)| {
            objects.get(&o).and_then(|o| o.pages.get(&off)).is_some_and(|p| p.frame.is_some()) && seen.insert((o, off))
        });
    }
    fn queue_len(&self) -> usize {
        self.queue.len()
    }
    fn queue_pop(&mut self) -> Option<(ObjectId, u64)> {
        self.queue.pop_front()
    }
    fn queue_push(&mut self, object: ObjectId, offset: u64) {
        self.queue.push_back((object, offset));
    }

    /// Installs `frame` as the resident page at `offset` of `object`.
    pub fn page_insert(&mut self, object: ObjectId, offset: u64, page: Page) {
        let resident = page.frame.is_some();
        self.object_mut(object).pages.insert(offset, page);
        if resident {
            self.queue.push_back((object, offset));
            if self.queue.len() > 4 * (self.resident + 64) {
                self.queue_compact();
            }
        }
    }

    /// A new zero-filled resident page.
    pub fn page_zero_fill(&mut self, object: ObjectId, offset: u64) -> Result<Frame> {
        let f = self.frame_alloc()?;
        self.machine.zero(f);
        self.page_insert(object, offset, Page::resident(f));
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

    /// Removes a page from its object and frees its frame. If `give_back`
    /// and the page is dirty or precious, its data goes to the pager first
    /// (`data_return`): no data is ever dropped.
    pub fn page_evict(&mut self, object: ObjectId, offset: u64, give_back: bool) {
        let Some(page) = self.object_mut(object).pages.remove(&offset) else {
            return;
        };
        let Some(frame) = page.frame else { return };
        self.machine.page_protect(frame, VmProt::NONE);
        if give_back {
            let dirty = self.page_is_dirty(&page);
            if dirty || page.precious {
                let data = self.page_bytes(frame);
                self.outbox.push(PagerOp::DataReturn { object, offset, data, dirty, kernel_copy: false });
                self.stats.pages_returned += 1;
            }
        }
        self.frame_free(frame);
    }

    /// Pages that are resident in `object` (for reports and tests).
    pub fn resident_pages(&self, object: ObjectId) -> usize {
        self.objects.get(&object).map_or(0, |o| o.pages.values().filter(|p| p.frame.is_some()).count())
    }

    /// Wires the VM to the pmap of a task.
    pub fn pmap_remove_range(&self, pmap: PmapId, start: u64, end: u64) {
        self.machine.remove(pmap, crate::types::VmAddr(start), crate::types::VmAddr(end));
    }
}

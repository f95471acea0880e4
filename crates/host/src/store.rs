//! [`MemfdStore`]: the core's page store (`machvm_core::pmap::PageStore`)
//! on memfds, one [`ObjectMemory`] per VM object, each page's bytes at its
//! own object offset, so that a task process can later map a window of
//! an object's memfd and see the very pages the VM holds.
//!
//! ```text
//!   Frame(7) ─► slots[7] = (object 3, 0x5000) ─► memfd of object 3: ....[0x5000: page]....
//!   free: slot numbers no page holds          objects: ObjectId ─► (ObjectMemory, its pages' offsets)
//! ```
//!
//! - **alloc** takes a slot (the free list first, then the next unused
//!   number, never one at or past the capacity: the soft page tables index
//!   their attribute bits by it), makes the object's memfd on its first
//!   page (sized to cover the offset, doubled as offsets grow, at most
//!   [`MAX_OBJECT_SIZE`]), and reserves the page (`fallocate`) so that the
//!   reads and writes the contract says cannot fail do not. A page the
//!   store does not hold is always a hole, so a new page is zeroes: the
//!   slot remembers it, and the VM's `zero` of it costs nothing.
//!   A reserved page holds no data until it is written: `lseek(SEEK_DATA)`
//!   and [`ObjectMemory::present`] count it as a hole (an unwritten
//!   `fallocate`d shmem page), so [`MemfdStore::pages_of`] is the list of
//!   the pages the store holds.
//! - **read**, **write**, **zero** are `pread`/`pwrite` at the page's
//!   object offset (`zero` of a written page writes zeroes, keeping the
//!   reservation); **copy** reads one memfd and writes the other.
//! - **free** punches the page out (it leaves every mapping of the memfd,
//!   in every process) and gives the slot back; **rename** is the default
//!   (allocate, copy, free): pages of different objects live in different
//!   memfds.
//! - **object_released** drops the object's memfd (closed once nobody
//!   else, such as a mapping, holds it).
//!
//! [`MemfdStore::memory_of`] hands out an object's memfd (to map it, or to
//! pass it to a task process), and [`MemfdStore::key`] says where a page
//! lives: what a pmap on userfaultfd needs to resolve a fault with
//! `UFFDIO_CONTINUE` over the right memfd range.
//!
//! Locking: one read-write lock over the slot table and the objects; a
//! read or write holds it only to find the page's memfd (the I/O runs
//! without it), an allocation or a free holds it over its host call
//! (those come from the VM, one at a time, under the kernel lock).

use crate::{page_size, Error, ObjectMemory, PageRange, Result, StagingSource};
use machvm_core::pmap::{Frame, ObjectId, PageStore, StoreError};
use machvm_core::types::PAGE_SIZE;
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The largest object offset (plus a page) a memfd is grown to: 4 PiB,
/// far below the host's limit on a file's size. A page beyond it is
/// refused as [`StoreError::Exhausted`].
pub const MAX_OBJECT_SIZE: u64 = 1 << 52;

/// The size a new object's memfd starts at, at least (it grows by
/// doubling, so that a run of faults upward costs few `ftruncate`s).
const INITIAL_OBJECT_SIZE: u64 = 64 * PAGE_SIZE;

/// One resident page.
#[derive(Debug)]
struct Slot {
    object: ObjectId,
    offset: u64,
    memory: Arc<ObjectMemory>,
    /// The page is all zeroes, as the store reserved it (nothing written
    /// or copied into it since).
    zeroed: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// Slot `i` holds the page `Frame(i)`, or nothing.
    slots: Vec<Option<Slot>>,
    /// Slot numbers below `slots.len()` no page holds.
    free: Vec<u32>,
    /// Pages held.
    resident: usize,
    objects: HashMap<ObjectId, Object>,
}

/// One object's memfd, and the offsets of its pages the store holds.
#[derive(Debug)]
struct Object {
    memory: Arc<ObjectMemory>,
    pages: BTreeSet<u64>,
}

/// The VM's resident pages in a memfd per object (see the module
/// comment). A handle: clones share the same store, so the machine can
/// hold one while the daemon keeps another to reach the memfds.
#[derive(Clone, Debug)]
pub struct MemfdStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    state: RwLock<State>,
    /// Staging areas by owner (a task's number).
    staging: RwLock<HashMap<u64, Arc<StagingSource>>>,
}

impl MemfdStore {
    /// A store that holds at most `capacity` pages at once (the host's
    /// share of its memory given to the VM). It makes no host call until
    /// the first allocation.
    ///
    /// Errors: [`Error::PageSize`] if the host's page size is not the
    /// VM's (the store keeps each VM page in one host page).
    pub fn new(capacity: usize) -> Result<MemfdStore> {
        if page_size() != PAGE_SIZE {
            return Err(Error::PageSize { host: page_size(), vm: PAGE_SIZE });
        }
        let capacity = capacity.min(u32::MAX as usize);
        Ok(MemfdStore { inner: Arc::new(Inner { capacity, state: RwLock::default(), staging: RwLock::default() }) })
    }

    /// The memfd of `object`, if the store has made it and it has not
    /// been released: to map a window of it ([`crate::Mapping::map`]) or
    /// to pass it to a task process. Its resident pages are at their
    /// object offsets; every other page is a hole.
    pub fn memory_of(&self, object: ObjectId) -> Option<Arc<ObjectMemory>> {
        self.state().objects.get(&object).map(|o| o.memory.clone())
    }

    /// The memfd of `object`, made now if the store has none yet, and
    /// grown to cover its first `end` bytes: the memory a task process
    /// maps a window of before the object has a page (an access past a
    /// memfd's end would be `SIGBUS`).
    ///
    /// Errors: [`Error::OutOfBounds`] past [`MAX_OBJECT_SIZE`];
    /// [`Error::Host`] if the memfd cannot be made or grown.
    pub fn memory_for(&self, object: ObjectId, end: u64) -> Result<Arc<ObjectMemory>> {
        if end > MAX_OBJECT_SIZE {
            return Err(Error::OutOfBounds { what: "object", offset: 0, len: end, size: MAX_OBJECT_SIZE });
        }
        if let Some(m) = self.memory_of(object).filter(|m| m.size() >= end) {
            return Ok(m);
        }
        let mut state = self.state_mut();
        Ok(memory_covering(&mut state.objects, object, end.max(PAGE_SIZE))?.memory.clone())
    }

    /// The page `page` is about to be mapped into a process (which may
    /// store into it without the store knowing): its bytes are to be read
    /// from its memfd from now on, not assumed to be the zeroes it was
    /// reserved as. No host call: `CONTINUE` of a reserved page maps
    /// zeroes (a host fact, `tests/uffd.rs`).
    pub fn materialize(&self, page: Frame) {
        let _ = self.locate(page, true);
    }

    /// The object offsets of `object`'s pages the store holds, in order.
    /// Every other page of its memfd is a hole (a reserved page not yet
    /// written is one too, to `lseek(SEEK_DATA)`: it holds no data).
    pub fn pages_of(&self, object: ObjectId) -> Vec<u64> {
        self.state().objects.get(&object).map(|o| o.pages.iter().copied().collect()).unwrap_or_default()
    }

    /// Where the page `page` lives: its object and object offset, if it is
    /// allocated.
    pub fn key(&self, page: Frame) -> Option<(ObjectId, u64)> {
        let state = self.state();
        let slot = state.slots.get(page.0 as usize)?.as_ref()?;
        Some((slot.object, slot.offset))
    }

    /// Makes `source` the staging area of the task numbered `owner`
    /// ([`PageStore::write_staged`] reads it), replacing any it had.
    pub fn staging_attach(&self, owner: u64, source: StagingSource) {
        self.inner.staging.write().unwrap_or_else(PoisonError::into_inner).insert(owner, Arc::new(source));
    }

    /// The task numbered `owner` has no staging area any more (its memfd
    /// is closed once no copy is using it).
    pub fn staging_detach(&self, owner: u64) {
        self.inner.staging.write().unwrap_or_else(PoisonError::into_inner).remove(&owner);
    }

    fn staging_of(&self, owner: u64) -> Option<Arc<StagingSource>> {
        self.inner.staging.read().unwrap_or_else(PoisonError::into_inner).get(&owner).cloned()
    }

    /// How many pages the store holds.
    pub fn resident(&self) -> usize {
        self.state().resident
    }

    /// How many objects have a memfd.
    pub fn object_count(&self) -> usize {
        self.state().objects.len()
    }

    fn state(&self) -> RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn state_mut(&self) -> RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The memfd and object offset of an allocated page, and whether it is
    /// still the zeroes it was reserved as (which this call forgets if
    /// `dirtying`).
    fn locate(&self, page: Frame, dirtying: bool) -> (Arc<ObjectMemory>, u64, bool) {
        let state = self.state();
        let slot = state
            .slots
            .get(page.0 as usize)
            .and_then(Option::as_ref)
            .unwrap_or_else(|| panic!("{page:?} is not a page of the store"));
        let zeroed =
            if dirtying { slot.zeroed.swap(false, Ordering::AcqRel) } else { slot.zeroed.load(Ordering::Acquire) };
        (slot.memory.clone(), slot.offset, zeroed)
    }
}

/// The object's memfd, made or grown so that it covers `end` bytes.
fn memory_covering(objects: &mut HashMap<ObjectId, Object>, object: ObjectId, end: u64) -> Result<&mut Object> {
    let size = |at_least: u64| end.max(at_least).min(MAX_OBJECT_SIZE);
    let o = match objects.entry(object) {
        Entry::Occupied(o) => o.into_mut(),
        Entry::Vacant(v) => {
            let memory = ObjectMemory::new(&format!("machvm object {}", object.0), size(INITIAL_OBJECT_SIZE))?;
            v.insert(Object { memory: Arc::new(memory), pages: BTreeSet::new() })
        }
    };
    if o.memory.size() < end {
        o.memory.grow(size(o.memory.size().saturating_mul(2)))?;
    }
    Ok(o)
}

/// The page at `offset` of `object` (reserved in `memory`, its memfd) in a
/// slot of its own: the free list first, then the next unused number.
fn take_slot(state: &mut State, object: ObjectId, offset: u64, memory: Arc<ObjectMemory>) -> Frame {
    let fresh = state.objects.get_mut(&object).is_some_and(|o| o.pages.insert(offset));
    debug_assert!(fresh, "{object:?} {offset:#x} allocated twice");
    let slot = Slot { object, offset, memory, zeroed: AtomicBool::new(true) };
    let n = match state.free.pop() {
        Some(n) => n,
        None => {
            state.slots.push(None);
            (state.slots.len() - 1) as u32
        }
    };
    state.slots[n as usize] = Some(slot);
    state.resident += 1;
    Frame(n)
}

/// A page the VM believes it holds could not be read or written: the
/// store's one guarantee is broken (the page was reserved at allocation).
fn broken(what: &str, e: Error) -> ! {
    panic!("the memfd page store could not {what} a reserved page: {e}")
}

impl PageStore for MemfdStore {
    fn capacity(&self) -> usize {
        self.inner.capacity
    }

    fn alloc(&self, object: ObjectId, offset: u64) -> std::result::Result<Frame, StoreError> {
        debug_assert_eq!(offset % PAGE_SIZE, 0, "page-aligned offsets only");
        let end = offset.checked_add(PAGE_SIZE).filter(|&e| e <= MAX_OBJECT_SIZE).ok_or(StoreError::Exhausted)?;
        let mut state = self.state_mut();
        if state.resident >= self.inner.capacity {
            return Err(StoreError::Exhausted);
        }
        let o = memory_covering(&mut state.objects, object, end).map_err(|_| StoreError::Exhausted)?;
        let range = PageRange::new(offset, PAGE_SIZE).map_err(|_| StoreError::Exhausted)?;
        // A page the store does not hold is a hole: reserved, it is zeroes.
        o.memory.reserve(range).map_err(|_| StoreError::Exhausted)?;
        let memory = o.memory.clone();
        Ok(take_slot(&mut state, object, offset, memory))
    }

    /// One `fallocate` for the run.
    fn alloc_run(&self, object: ObjectId, offset: u64, n: usize) -> std::result::Result<Vec<Frame>, StoreError> {
        debug_assert_eq!(offset % PAGE_SIZE, 0, "page-aligned offsets only");
        let len = (n as u64).checked_mul(PAGE_SIZE).ok_or(StoreError::Exhausted)?;
        let end = offset.checked_add(len).filter(|&e| e <= MAX_OBJECT_SIZE).ok_or(StoreError::Exhausted)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut state = self.state_mut();
        if state.resident + n > self.inner.capacity {
            return Err(StoreError::Exhausted);
        }
        let o = memory_covering(&mut state.objects, object, end).map_err(|_| StoreError::Exhausted)?;
        let range = PageRange::new(offset, len).map_err(|_| StoreError::Exhausted)?;
        o.memory.reserve(range).map_err(|_| StoreError::Exhausted)?;
        let memory = o.memory.clone();
        Ok((0..n as u64).map(|i| take_slot(&mut state, object, offset + i * PAGE_SIZE, memory.clone())).collect())
    }

    fn free(&self, page: Frame) {
        let mut state = self.state_mut();
        let slot = state
            .slots
            .get_mut(page.0 as usize)
            .and_then(Option::take)
            .unwrap_or_else(|| panic!("{page:?} freed but not allocated"));
        state.free.push(page.0);
        state.resident -= 1;
        if let Some(o) = state.objects.get_mut(&slot.object) {
            o.pages.remove(&slot.offset);
        }
        // A page the store does not hold is a hole (see `alloc`); it also
        // leaves every mapping of the memfd.
        let range = PageRange::new(slot.offset, PAGE_SIZE).expect("a page-aligned page");
        if let Err(e) = slot.memory.punch(range) {
            broken("punch", e)
        }
    }

    fn read(&self, page: Frame, offset: usize, buf: &mut [u8]) {
        debug_assert!(offset + buf.len() <= PAGE_SIZE as usize);
        let (memory, at, zeroed) = self.locate(page, false);
        if zeroed {
            buf.fill(0);
            return;
        }
        if let Err(e) = memory.read_at(at + offset as u64, buf) {
            broken("read", e)
        }
    }

    fn write(&self, page: Frame, offset: usize, data: &[u8]) {
        debug_assert!(offset + data.len() <= PAGE_SIZE as usize);
        let (memory, at, _) = self.locate(page, true);
        if let Err(e) = memory.write_at(at + offset as u64, data) {
            broken("write", e)
        }
    }

    fn zero(&self, page: Frame) {
        let (memory, at, zeroed) = self.locate(page, false);
        if zeroed {
            return;
        }
        if let Err(e) = memory.write_at(at, &[0u8; PAGE_SIZE as usize]) {
            broken("zero", e)
        }
    }

    fn copy(&self, from: Frame, to: Frame) {
        if from == to {
            return;
        }
        let mut buf = vec![0u8; PAGE_SIZE as usize];
        self.read(from, 0, &mut buf);
        self.write(to, 0, &buf);
    }

    fn staging_len(&self, owner: u64) -> u64 {
        self.staging_of(owner).map_or(0, |s| s.size())
    }

    /// `copy_file_range` from the owner's memfd into the pages' memfd, one
    /// call for the run: the bytes never pass through this process.
    fn write_staged(&self, pages: &[Frame], owner: u64, offset: u64) -> std::result::Result<(), StoreError> {
        let Some(&first) = pages.first() else { return Ok(()) };
        let source = self.staging_of(owner).ok_or(StoreError::NoStaging)?;
        let (memory, at, _) = self.locate(first, true);
        for (i, &p) in pages.iter().enumerate().skip(1) {
            let (m, a, _) = self.locate(p, true);
            debug_assert!(Arc::ptr_eq(&m, &memory) && a == at + i as u64 * PAGE_SIZE, "a run of one object's pages");
        }
        let len = pages.len() as u64 * PAGE_SIZE;
        source.copy_into(&memory, at, offset, len).map_err(|_| StoreError::NoStaging)
    }

    fn object_released(&self, object: ObjectId) {
        let gone = self.state_mut().objects.remove(&object);
        debug_assert!(gone.is_none_or(|o| o.pages.is_empty()), "{object:?} released with pages resident");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE;

    fn page_of(byte: u8) -> Vec<u8> {
        vec![byte; P as usize]
    }

    fn bytes(s: &MemfdStore, page: Frame) -> Vec<u8> {
        let mut buf = page_of(0xee);
        s.read(page, 0, &mut buf);
        buf
    }

    /// The bytes of `object`'s memfd at `offset`, read with `pread`.
    fn in_memfd(s: &MemfdStore, object: ObjectId, offset: u64) -> Vec<u8> {
        let mut buf = page_of(0xee);
        s.memory_of(object).unwrap().read_at(offset, &mut buf).unwrap();
        buf
    }

    #[test]
    fn pages_live_at_their_own_offsets_in_their_objects_memfd() {
        let s = MemfdStore::new(16).unwrap();
        let (a, b) = (ObjectId(1), ObjectId(2));
        let pa = s.alloc(a, 3 * P).unwrap();
        let pb = s.alloc(b, 0).unwrap();
        assert_eq!((s.key(pa), s.key(pb)), (Some((a, 3 * P)), Some((b, 0))));
        assert_eq!((s.pages_of(a), s.pages_of(b)), (vec![3 * P], vec![0]));
        assert_eq!(bytes(&s, pa), page_of(0), "a new page is zeroes");
        s.zero(pa);
        s.write(pa, 0, &page_of(7));
        s.write(pa, 100, b"hello");
        s.write(pb, 0, &page_of(9));
        let mut want = page_of(7);
        want[100..105].copy_from_slice(b"hello");
        assert_eq!(bytes(&s, pa), want);
        assert_eq!(in_memfd(&s, a, 3 * P), want, "the page is at its object offset");
        assert_eq!(in_memfd(&s, a, 0), page_of(0));
        assert_eq!(in_memfd(&s, b, 0), page_of(9));
        let mut part = [0u8; 5];
        s.read(pa, 100, &mut part);
        assert_eq!(&part, b"hello");
        // Only the allocated pages are in the memfd, reserved.
        let m = s.memory_of(a).unwrap();
        assert_eq!(m.present(PageRange::pages(0, 8).unwrap()).unwrap(), vec![PageRange::pages(3, 1).unwrap()]);
        // A copy goes from one memfd to the other.
        let pc = s.alloc(b, 5 * P).unwrap();
        s.copy(pa, pc);
        assert_eq!(in_memfd(&s, b, 5 * P), want);
        // Zeroing a written page zeroes it in the memfd.
        s.zero(pa);
        assert_eq!(in_memfd(&s, a, 3 * P), page_of(0));
        assert_eq!(bytes(&s, pa), page_of(0));
        assert_eq!(s.resident(), 3);
    }

    #[test]
    fn a_freed_page_is_punched_out_and_its_slot_reused_zeroed() {
        let s = MemfdStore::new(4).unwrap();
        let o = ObjectId(1);
        let p = s.alloc(o, P).unwrap();
        s.write(p, 0, &page_of(5));
        let m = s.memory_of(o).unwrap();
        assert!(m.is_present(P).unwrap());
        s.free(p);
        assert!(!m.is_present(P).unwrap(), "a freed page is a hole");
        assert_eq!(s.key(p), None);
        assert_eq!(s.resident(), 0);
        assert_eq!(s.pages_of(o), Vec::<u64>::new());
        // The slot comes back for another page, which reads as zeroes.
        let q = s.alloc(o, P).unwrap();
        assert_eq!(q, p);
        assert_eq!(bytes(&s, q), page_of(0));
        s.zero(q);
        assert_eq!(in_memfd(&s, o, P), page_of(0));
    }

    #[test]
    fn past_capacity_alloc_is_exhausted_and_changes_nothing() {
        let s = MemfdStore::new(2).unwrap();
        let a = s.alloc(ObjectId(1), 0).unwrap();
        let b = s.alloc(ObjectId(2), 0).unwrap();
        s.write(a, 0, &page_of(1));
        assert_eq!(s.alloc(ObjectId(1), P), Err(StoreError::Exhausted));
        assert_eq!(s.alloc(ObjectId(3), 0), Err(StoreError::Exhausted));
        assert_eq!(s.object_count(), 2, "no memfd made for a refused page");
        assert_eq!(bytes(&s, a), page_of(1));
        // Every frame is below the capacity, as the soft page tables need.
        assert!(a.0 < 2 && b.0 < 2);
        s.free(b);
        let c = s.alloc(ObjectId(1), P).unwrap();
        assert!(c.0 < 2);
        // An offset past the largest object is refused too.
        s.free(c);
        assert_eq!(s.alloc(ObjectId(1), MAX_OBJECT_SIZE), Err(StoreError::Exhausted));
        assert_eq!(s.alloc(ObjectId(1), u64::MAX - P + 1), Err(StoreError::Exhausted));
        assert_eq!(s.resident(), 1);
    }

    #[test]
    fn a_run_is_allocated_at_its_offsets_in_one_go_or_not_at_all() {
        let s = MemfdStore::new(6).unwrap();
        let run = s.alloc_run(ObjectId(1), 8 * P, 4).unwrap();
        assert_eq!(run.len(), 4);
        for (i, &f) in run.iter().enumerate() {
            assert_eq!(s.key(f), Some((ObjectId(1), 8 * P + i as u64 * P)));
            assert_eq!(bytes(&s, f), page_of(0), "a new page is zeroes");
        }
        s.write(run[2], 0, &page_of(9));
        assert_eq!(in_memfd(&s, ObjectId(1), 10 * P), page_of(9));
        // Three more would pass the capacity of six: nothing is taken.
        assert_eq!(s.alloc_run(ObjectId(2), 0, 3), Err(StoreError::Exhausted));
        assert_eq!(s.alloc_run(ObjectId(1), MAX_OBJECT_SIZE - P, 2), Err(StoreError::Exhausted));
        assert_eq!((s.resident(), s.object_count()), (4, 1));
        assert_eq!(s.alloc_run(ObjectId(2), 0, 2).unwrap().len(), 2);
        assert_eq!(s.alloc_run(ObjectId(2), 0, 0), Ok(Vec::new()));
        assert_eq!(s.pages_of(ObjectId(1)), vec![8 * P, 9 * P, 10 * P, 11 * P]);
    }

    #[test]
    fn objects_grow_to_cover_their_pages() {
        let s = MemfdStore::new(4).unwrap();
        let o = ObjectId(1);
        let low = s.alloc(o, 0).unwrap();
        assert_eq!(s.memory_of(o).unwrap().size(), INITIAL_OBJECT_SIZE);
        let far = 1u64 << 40;
        let high = s.alloc(o, far).unwrap();
        let m = s.memory_of(o).unwrap();
        assert!(m.size() > far, "grown to cover the page");
        s.write(high, 8, b"far");
        s.write(low, 0, b"near");
        let mut buf = [0u8; 3];
        m.read_at(far + 8, &mut buf).unwrap();
        assert_eq!(&buf, b"far");
        assert_eq!(
            m.present(PageRange::new(0, far + P).unwrap()).unwrap(),
            vec![PageRange::pages(0, 1).unwrap(), PageRange::new(far, P).unwrap()]
        );
    }

    #[test]
    fn a_released_object_drops_its_memfd_and_renames_copy_across_objects() {
        let s = MemfdStore::new(4).unwrap();
        let (a, b) = (ObjectId(1), ObjectId(2));
        let p = s.alloc(a, 2 * P).unwrap();
        s.write(p, 0, &page_of(3));
        // The default rename: a page of `b`, in `b`'s memfd; `a`'s is a hole.
        let q = s.rename(p, b, 4 * P).unwrap();
        assert_eq!(s.key(q), Some((b, 4 * P)));
        assert_eq!(in_memfd(&s, b, 4 * P), page_of(3));
        let ma = s.memory_of(a).unwrap();
        assert!(!ma.is_present(2 * P).unwrap());
        s.object_released(a);
        assert!(s.memory_of(a).is_none());
        assert_eq!(s.object_count(), 1);
        assert_eq!(Arc::strong_count(&ma), 1, "the store holds the memfd no more");
        // A clone is the same store.
        let t = s.clone();
        assert_eq!(bytes(&t, q), page_of(3));
        t.free(q);
        assert_eq!(s.resident(), 0);
    }

    #[test]
    fn a_store_is_shared_safely_between_threads() {
        let s = MemfdStore::new(64).unwrap();
        let pages: Vec<Frame> = (0..64).map(|i| s.alloc(ObjectId(i % 4), (i / 4) * P).unwrap()).collect();
        std::thread::scope(|scope| {
            for (i, &p) in pages.iter().enumerate() {
                let s = &s;
                scope.spawn(move || {
                    s.write(p, 0, &page_of(i as u8));
                    assert_eq!(bytes(s, p), page_of(i as u8));
                });
            }
        });
        for (i, &p) in pages.iter().enumerate() {
            let (o, off) = s.key(p).unwrap();
            assert_eq!(in_memfd(&s, o, off), page_of(i as u8));
        }
    }
}

//! The page-store seam (`machvm_core::pmap::store`), checked on a store
//! that keeps each page's key, as a host with a memfd per object must:
//! every resident page is allocated under the `(object, offset)` that
//! holds it, no key is allocated twice, a paging proxy's view never gets
//! a page of its own (a page read through it is its real object's page),
//! a copy-on-write copy is a page of the copying object, and an object is
//! released only once none of its pages is resident.

mod common;
use common::*;
use machvm_core::pmap::soft::SoftMachine;
use machvm_core::pmap::{Access, Frame, HwFault, Machine, ObjectId, PageStore, Pmap, PmapError, PmapId, StoreError};
use machvm_core::*;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// What the keyed store has seen.
#[derive(Debug, Default)]
struct Keys {
    /// Each live page's key.
    live: HashMap<Frame, (ObjectId, u64)>,
    /// Objects released so far.
    released: HashSet<ObjectId>,
    /// The last page entered in any pmap.
    last_entered: Option<Frame>,
    /// What broke the contract, in words.
    broken: Vec<String>,
}

/// The software MMU, keeping the key of every page it stores.
struct KeyedMachine {
    inner: SoftMachine,
    keys: Mutex<Keys>,
}

impl KeyedMachine {
    fn new(frames: usize) -> Arc<KeyedMachine> {
        Arc::new(KeyedMachine { inner: SoftMachine::new(frames), keys: Mutex::default() })
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.keys.lock().unwrap()
    }

    /// Live pages keyed by each object.
    fn per_object(&self) -> HashMap<u64, usize> {
        let mut n = HashMap::new();
        for &(o, _) in self.keys().live.values() {
            *n.entry(o.0).or_default() += 1;
        }
        n
    }

    /// The store agrees with the kernel's objects: each object's resident
    /// pages are exactly the live pages keyed by it, views have none, and
    /// nothing broke the contract.
    #[track_caller]
    fn assert_agrees(&self, k: &Kernel) {
        let per_object = self.per_object();
        let objects = k.objects_info();
        for o in &objects {
            assert_eq!(per_object.get(&o.id).copied().unwrap_or(0), o.resident, "object {} ({:?})", o.id, o.kind);
            if o.kind == ObjectKind::View {
                assert_eq!(o.resident, 0, "a view holds no page");
            }
        }
        let known: HashSet<u64> = objects.iter().map(|o| o.id).collect();
        assert!(per_object.keys().all(|o| known.contains(o)), "pages of an object the kernel does not have");
        assert_eq!(self.keys().broken, Vec::<String>::new());
    }
}

impl PageStore for KeyedMachine {
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
    fn alloc(&self, object: ObjectId, offset: u64) -> Result<Frame, StoreError> {
        let page = self.inner.alloc(object, offset)?;
        let mut keys = self.keys();
        if keys.released.contains(&object) {
            keys.broken.push(format!("a page of released {object:?}"));
        }
        if keys.live.values().any(|&k| k == (object, offset)) {
            keys.broken.push(format!("{object:?} {offset:#x} allocated twice"));
        }
        keys.live.insert(page, (object, offset));
        Ok(page)
    }
    fn free(&self, page: Frame) {
        if self.keys().live.remove(&page).is_none() {
            self.keys().broken.push(format!("{page:?} freed but not allocated"));
        }
        self.inner.free(page)
    }
    fn read(&self, page: Frame, offset: usize, buf: &mut [u8]) {
        self.inner.read(page, offset, buf)
    }
    fn write(&self, page: Frame, offset: usize, data: &[u8]) {
        self.inner.write(page, offset, data)
    }
    fn zero(&self, page: Frame) {
        self.inner.zero(page)
    }
    fn copy(&self, from: Frame, to: Frame) {
        self.inner.copy(from, to)
    }
    fn object_released(&self, object: ObjectId) {
        let mut keys = self.keys();
        if keys.live.values().any(|&(o, _)| o == object) {
            keys.broken.push(format!("{object:?} released with pages resident"));
        }
        keys.released.insert(object);
    }
}

impl Pmap for KeyedMachine {
    fn create(&self) -> PmapId {
        self.inner.create()
    }
    fn destroy(&self, pmap: PmapId) {
        self.inner.destroy(pmap)
    }
    fn enter(&self, pmap: PmapId, va: VmAddr, pages: &[Frame], prot: VmProt) -> Result<(), PmapError> {
        let mut keys = self.keys();
        for frame in pages {
            if !keys.live.contains_key(frame) {
                keys.broken.push(format!("{frame:?} entered but not allocated"));
            }
        }
        keys.last_entered = pages.last().copied();
        drop(keys);
        self.inner.enter(pmap, va, pages, prot)
    }
    fn remove(&self, pmap: PmapId, start: VmAddr, end: VmAddr) -> Result<(), PmapError> {
        self.inner.remove(pmap, start, end)
    }
    fn protect(&self, pmap: PmapId, start: VmAddr, end: VmAddr, prot: VmProt) -> Result<(), PmapError> {
        self.inner.protect(pmap, start, end, prot)
    }
    fn page_remove(&self, page: Frame) -> Result<(), PmapError> {
        self.inner.page_remove(page)
    }
    fn page_protect(&self, frame: Frame, prot: VmProt) -> Result<(), PmapError> {
        self.inner.page_protect(frame, prot)
    }
    fn is_modified(&self, frame: Frame) -> bool {
        self.inner.is_modified(frame)
    }
    fn clear_modify(&self, frame: Frame) {
        self.inner.clear_modify(frame)
    }
    fn is_referenced(&self, frame: Frame) -> bool {
        self.inner.is_referenced(frame)
    }
    fn clear_reference(&self, frame: Frame) {
        self.inner.clear_reference(frame)
    }
    fn extract(&self, pmap: PmapId, va: VmAddr) -> Option<(Frame, VmProt)> {
        self.inner.extract(pmap, va)
    }
}

impl Machine for KeyedMachine {
    fn access(&self, pmap: PmapId, va: VmAddr, access: Access<'_>) -> std::result::Result<(), HwFault> {
        self.inner.access(pmap, va, access)
    }
}

#[test]
fn a_page_read_through_a_paging_proxy_is_its_real_objects_page() {
    let m = KeyedMachine::new(4096);
    let w = World::on_machine(ProxyVersion::Paging, 1, true, m.clone());
    let real = w.k.objects_info().into_iter().find(|o| o.kind == ObjectKind::External).unwrap().id;
    let rights = w.proxy(VmProt::READ, &[(w.objs[0], 0, 0, OBJ_PAGES * P)]).unwrap();
    let reader = w.task();
    let name = w.give(rights.proxy, &reader);
    let a = w.map(&reader, name, 0, OBJ_PAGES * P).unwrap();
    for page in [3, 0, 15] {
        assert_eq!(reader.read_u64(VmAddr(a.0 + page * P + 8)), Ok(word(0, page * P + 8)));
        let entered = m.keys().last_entered.unwrap();
        assert_eq!(m.keys().live[&entered], (ObjectId(real), page * P), "page {page}");
    }
    assert!(w.k.objects_info().iter().any(|o| o.kind == ObjectKind::View));
    m.assert_agrees(&w.k);
}

#[test]
fn a_copy_on_write_copy_is_a_page_of_the_copying_object_and_objects_go_with_their_pages() {
    let m = KeyedMachine::new(256);
    let k = Kernel::with_machine(config(ProxyVersion::Paging), m.clone());
    let parent = k.task_create(None).unwrap();
    let a = k.vm_allocate(parent, VmAddr(0), 4 * P, true).unwrap();
    for i in 0..4 {
        k.write_u64(parent, VmAddr(a.0 + i * P), 100 + i).unwrap();
    }
    k.vm_inherit(parent, a, 4 * P, VmInherit::Copy).unwrap();
    let child = k.task_create(Some(parent)).unwrap();
    m.assert_agrees(&k);
    // The child's write copies page 1 into an object of its own; the
    // parent's write to page 2 copies it into an object of the parent's.
    k.write_u64(child, VmAddr(a.0 + P), 7).unwrap();
    k.write_u64(parent, VmAddr(a.0 + 2 * P), 8).unwrap();
    assert_eq!(k.read_u64(parent, VmAddr(a.0 + P)), Ok(101));
    assert_eq!(k.read_u64(child, VmAddr(a.0 + 2 * P)), Ok(102));
    assert_eq!(m.keys().live.len(), 6, "four originals and two copies");
    m.assert_agrees(&k);
    k.task_terminate(child).unwrap();
    m.assert_agrees(&k);
    k.task_terminate(parent).unwrap();
    m.assert_agrees(&k);
    assert!(m.keys().live.is_empty(), "every page freed with its object");
    assert!(m.keys().released.len() >= 3, "the objects were released");
}

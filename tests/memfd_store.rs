//! The kernel on the memfd page store (`machvm_host::MemfdStore`): the
//! software page tables over a store that keeps each VM object's pages in
//! its own memfd (`SoftMachine::with_store`). Each workload checks every
//! byte twice: through the task's loads, and in the memfds themselves,
//! where a task process will map them (each resident page at its own
//! object offset, in the memfd of the object the kernel says holds it,
//! every other page a hole). A page reached through a paging proxy's
//! view is its real object's, in that object's memfd; a view has none.

mod common;
use common::workload::{scribble, verify, WORDS};
use common::{Host, Task, TempFile};
use machvm_core::ipc::{Disposition, PortName};
use machvm_core::memory_object::emmi::KernelToPager;
use machvm_core::pmap::soft::SoftMachine;
use machvm_core::pmap::ObjectId;
use machvm_core::*;
use machvm_host::{MemfdStore, PageRange};
use machvm_pagers::{boot_default_pager, MemBacking};
use std::sync::Arc;
use std::time::Duration;

type PagerConn = machvm_pagers::PagerConn<Task>;

const P: u64 = PAGE_SIZE;
const T: Duration = Duration::from_secs(5);

/// A kernel on the soft page tables over a memfd store of `capacity`
/// pages, with resident limit `limit`; the store, to look into it.
fn host(capacity: usize, limit: usize) -> (Host, MemfdStore) {
    let store = MemfdStore::new(capacity).unwrap();
    let m = Arc::new(SoftMachine::with_store(Box::new(store.clone())));
    let config = KernelConfig { phys_pages: capacity, resident_limit: limit, cluster_pages: 1, ..Default::default() };
    (Host::on_machine(config, m), store)
}

/// The word at byte `offset` of `object`'s memfd.
fn memfd_word(store: &MemfdStore, object: u64, offset: u64) -> u64 {
    let mut buf = [0u8; 8];
    store.memory_of(ObjectId(object)).expect("the object has a memfd").read_at(offset, &mut buf).unwrap();
    u64::from_le_bytes(buf)
}

/// The memfds agree with the kernel's objects: the store holds as many
/// pages of each object as the kernel says are resident in it, its memfd
/// holds data only at those offsets (every other page a hole), views have
/// no memfd, and the store holds as many pages as the kernel.
#[track_caller]
fn assert_memfds_agree(k: &Kernel, store: &MemfdStore) {
    let mut total = 0;
    for o in k.objects_info() {
        let held = store.pages_of(ObjectId(o.id));
        assert_eq!(held.len(), o.resident, "object {} ({:?}): pages in the store", o.id, o.kind);
        if let Some(m) = store.memory_of(ObjectId(o.id)) {
            if m.size() > 0 {
                for run in m.present(PageRange::new(0, m.size()).unwrap()).unwrap() {
                    for at in (run.start()..run.end()).step_by(P as usize) {
                        assert!(held.binary_search(&at).is_ok(), "object {}: data at {at:#x}, not resident", o.id);
                    }
                }
            }
        }
        if o.kind == ObjectKind::View {
            assert!(store.memory_of(ObjectId(o.id)).is_none(), "a view has no memfd");
        }
        total += held.len();
    }
    assert_eq!(total, store.resident(), "pages of objects the kernel does not know");
    assert_eq!(store.resident(), k.stats().resident);
}

/// The object and offset behind `addr` in `task`'s map.
fn backing(k: &Kernel, task: TaskId, addr: VmAddr) -> (u64, u64) {
    let e = k.vm_map_info(task).unwrap().into_iter().find(|e| e.start <= addr && addr < e.end).unwrap();
    (e.object.expect("touched memory has an object"), e.offset.0 + (addr.0 - e.start.0))
}

#[test]
fn zero_fill_pages_are_zeroes_then_the_tasks_stores_at_their_offsets_in_the_memfd() {
    let (h, store) = host(1024, 512);
    let t = h.task();
    let pages = 64;
    let a = t.vm_allocate(VmAddr(0), pages * P, true).unwrap();
    // Every page reads as zeroes (zero-filled) before any store.
    for p in 0..pages {
        let data = t.vm_read(VmAddr(a.0 + p * P), P).unwrap();
        assert!(data.iter().all(|&b| b == 0), "page {p}");
    }
    assert_memfds_agree(&h.k, &store);
    for p in 0..pages {
        for w in [0, 7, WORDS - 1] {
            t.write_u64(VmAddr(a.0 + p * P + w * 8), (p << 32) | w).unwrap();
        }
    }
    let (object, offset) = backing(&h.k, t.id(), a);
    for p in 0..pages {
        for w in 0..WORDS {
            let want = if [0, 7, WORDS - 1].contains(&w) { (p << 32) | w } else { 0 };
            assert_eq!(t.read_u64(VmAddr(a.0 + p * P + w * 8)), Ok(want), "page {p} word {w}");
            assert_eq!(memfd_word(&store, object, offset + p * P + w * 8), want, "memfd, page {p} word {w}");
        }
    }
    assert_memfds_agree(&h.k, &store);
    // Deallocated, the object goes, and its memfd with it.
    t.vm_deallocate(a, pages * P).unwrap();
    assert!(store.memory_of(ObjectId(object)).is_none(), "the object's memfd is released");
    assert_eq!(store.resident(), 0);
    assert_memfds_agree(&h.k, &store);
}

#[test]
fn a_pagers_supply_lands_at_its_offsets_in_the_objects_memfd() {
    let (h, store) = host(1024, 512);
    let client = h.task();
    let mut pager = h.pager();
    let obj = pager.new_object().unwrap();
    let name = h.transfer(pager.link.id(), obj, Disposition::MakeSend, client.id()).unwrap();
    let pages = 8;
    let a = client.vm_map(MapRequest::anywhere(pages * P, Some(name))).unwrap();
    let init = pager.recv(Some(T)).unwrap();
    assert_eq!(init.msg, KernelToPager::Init { page_size: P });
    pager.ready(init.object).unwrap();
    let word = |p: u64, w: u64| 0x5u64 << 60 | p << 20 | w;
    // Supplied out of order, and not all: page 5 is left out.
    for p in [3, 0, 7, 1, 2, 4, 6] {
        let mut data = vec![0u8; P as usize];
        for w in 0..WORDS {
            data[w as usize * 8..][..8].copy_from_slice(&word(p, w).to_le_bytes());
        }
        pager.supply(obj, p * P, &data).unwrap();
    }
    let real = h.k.objects_info().into_iter().find(|o| o.kind == ObjectKind::External).unwrap().id;
    assert_eq!(store.resident(), 7);
    for p in [0, 1, 2, 3, 4, 6, 7] {
        for w in 0..WORDS {
            assert_eq!(memfd_word(&store, real, p * P + w * 8), word(p, w), "memfd, page {p} word {w}");
            assert_eq!(client.read_u64(VmAddr(a.0 + p * P + w * 8)), Ok(word(p, w)), "page {p} word {w}");
        }
    }
    let m = store.memory_of(ObjectId(real)).unwrap();
    assert!(!m.is_present(5 * P).unwrap(), "a page never supplied is a hole");
    // A store through the mapping is in the memfd at once.
    client.write_u64(VmAddr(a.0 + 2 * P + 16), 42).unwrap();
    assert_eq!(memfd_word(&store, real, 2 * P + 16), 42);
    assert_memfds_agree(&h.k, &store);
}

#[test]
fn copy_on_write_after_task_create_copies_between_objects_memfds() {
    let (h, store) = host(1024, 512);
    let k = &h.k;
    let parent = k.task_create(None).unwrap();
    let pages = 8;
    let a = k.vm_allocate(parent, VmAddr(0), pages * P, true).unwrap();
    for p in 0..pages {
        for w in 0..WORDS {
            k.write_u64(parent, VmAddr(a.0 + p * P + w * 8), 1000 * p + w).unwrap();
        }
    }
    let (original, _) = backing(k, parent, a);
    k.vm_inherit(parent, a, pages * P, VmInherit::Copy).unwrap();
    let child = k.task_create(Some(parent)).unwrap();
    assert_memfds_agree(k, &store);
    // The child writes page 1: its copy is a page of an object of its
    // own, in that object's memfd, with the rest of the page copied along.
    k.write_u64(child, VmAddr(a.0 + P), 7).unwrap();
    let (child_obj, child_off) = backing(k, child, VmAddr(a.0 + P));
    assert_ne!(child_obj, original);
    assert_eq!(memfd_word(&store, child_obj, child_off), 7);
    for w in 1..WORDS {
        assert_eq!(memfd_word(&store, child_obj, child_off + w * 8), 1000 + w);
    }
    assert_eq!(memfd_word(&store, original, P), 1000, "the original keeps its bytes");
    // The parent writes page 2: its old contents are pushed into the copy
    // object (another memfd) first, whatever object the parent now writes.
    k.write_u64(parent, VmAddr(a.0 + 2 * P + 8), 8).unwrap();
    let (parent_obj, parent_off) = backing(k, parent, VmAddr(a.0 + 2 * P));
    assert_eq!(memfd_word(&store, parent_obj, parent_off + 8), 8);
    assert_eq!(memfd_word(&store, parent_obj, parent_off), 2000);
    let info = |id: u64| k.objects_info().into_iter().find(|o| o.id == id).unwrap();
    if let Some(copy) = info(original).copy {
        let (_, shift) = info(copy).shadow.unwrap();
        assert!(parent_obj == original && copy != child_obj);
        assert_eq!(memfd_word(&store, copy, 2 * P + 8 - shift), 2001, "the old page, pushed");
    } else {
        assert_ne!(parent_obj, original, "a shadow of the parent's own");
        assert_eq!(memfd_word(&store, original, 2 * P + 8), 2001);
    }
    // Each side sees its own writes and the other's data as of the copy.
    for p in 0..pages {
        for w in 0..WORDS {
            let base = 1000 * p + w;
            let (at, for_child, for_parent) = (VmAddr(a.0 + p * P + w * 8), (p, w) == (1, 0), (p, w) == (2, 1));
            assert_eq!(k.read_u64(child, at), Ok(if for_child { 7 } else { base }), "child, page {p} word {w}");
            assert_eq!(k.read_u64(parent, at), Ok(if for_parent { 8 } else { base }), "parent, page {p} word {w}");
        }
    }
    assert_memfds_agree(k, &store);
    k.task_terminate(child).unwrap();
    assert_memfds_agree(k, &store);
    k.task_terminate(parent).unwrap();
    assert_memfds_agree(k, &store);
    assert_eq!(store.resident(), 0, "every page freed with its object");
    assert_eq!(store.object_count(), 0, "every memfd released");
}

const LIMIT: usize = 32;

#[test]
fn pageout_under_a_small_resident_limit_keeps_every_byte_anonymous_and_paged() {
    let (h, store) = host(4096, LIMIT);
    let swap = TempFile::new("memfd-store-anon", &[]);
    let _dp = boot_default_pager(&h.k, swap.open()).unwrap();
    // Anonymous memory, eight times the limit, through the default pager.
    let t = h.task();
    let pages = 8 * LIMIT as u64;
    let base = t.vm_allocate(VmAddr(0), pages * P, true).unwrap();
    let model = scribble(&t, base, pages, 2 * pages, 0x5eed);
    verify(&t, base, pages, &model);
    assert!(h.k.stats().vm.pageouts >= pages - LIMIT as u64);
    // A pager's object, eight times the limit: returned, then supplied again.
    let u = h.task();
    let mut conn: PagerConn = h.pager();
    let obj = conn.new_object().unwrap();
    let name: PortName = h.transfer(conn.link.id(), obj, Disposition::MakeSend, u.id()).unwrap();
    let _pager = h.run_pager(conn, MemBacking::default());
    let mapped = u.vm_map(MapRequest::anywhere(pages * P, Some(name))).unwrap();
    let paged = scribble(&u, mapped, pages, 2 * pages, 0xf11e);
    verify(&u, mapped, pages, &paged);
    verify(&t, base, pages, &model);
    assert!(h.k.stats().sent("data_return") >= pages - LIMIT as u64);
    let s = h.k.stats();
    assert!(s.resident <= s.resident_limit, "{} pages resident, limit {}", s.resident, s.resident_limit);
    assert!(store.resident() <= LIMIT, "the store holds {} pages", store.resident());
    assert_memfds_agree(&h.k, &store);
    // What is resident is in the memfds with the tasks' data, at each
    // page's own offset.
    let mut checked = 0;
    for (task, at, model) in [(&t, base, &model), (&u, mapped, &paged)] {
        let (object, offset) = backing(&h.k, task.id(), at);
        for held in store.pages_of(ObjectId(object)) {
            let Some(p) = held.checked_sub(offset).map(|d| d / P).filter(|&p| p < pages) else { continue };
            for w in 0..WORDS {
                let got = memfd_word(&store, object, held + w * 8);
                assert_eq!(got, model.get(&(p, w)).copied().unwrap_or(0), "page {p} word {w}");
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "some pages stayed resident");
}

#[test]
fn a_full_store_fails_the_fault_with_a_resource_shortage_and_keeps_what_it_holds() {
    // No default pager: dirty anonymous pages cannot leave, so once the
    // store is full the next fault fails with the store's refusal.
    let (h, store) = host(16, 64);
    let t = h.task();
    let a = t.vm_allocate(VmAddr(0), 64 * P, true).unwrap();
    let mut stored = 0;
    for p in 0..64 {
        match t.write_u64(VmAddr(a.0 + p * P), p + 1) {
            Ok(()) => stored += 1,
            Err(e) => {
                assert_eq!(e, KernError::ResourceShortage, "page {p}");
                break;
            }
        }
    }
    assert_eq!(stored, 16, "as many pages as the store holds");
    for p in 0..stored {
        assert_eq!(t.read_u64(VmAddr(a.0 + p * P)), Ok(p + 1));
    }
    assert_memfds_agree(&h.k, &store);
}

#[test]
fn a_page_read_through_a_paging_proxy_is_in_its_real_objects_memfd_and_a_view_has_none() {
    let store = MemfdStore::new(4096).unwrap();
    let m = Arc::new(SoftMachine::with_store(Box::new(store.clone())));
    let w = common::World::on_machine(ProxyVersion::Paging, 1, true, m);
    let real = w.k.objects_info().into_iter().find(|o| o.kind == ObjectKind::External).unwrap().id;
    let pages = common::OBJ_PAGES;
    let rights = w.proxy(VmProt::READ | VmProt::WRITE, &[(w.objs[0], 0, 0, pages * P)]).unwrap();
    let reader = w.task();
    let name = w.give(rights.proxy, &reader);
    let a = w.map(&reader, name, 0, pages * P).unwrap();
    for page in [3, 0, 15] {
        let at = page * P + 8;
        assert_eq!(reader.read_u64(VmAddr(a.0 + at)), Ok(common::word(0, at)));
        assert_eq!(memfd_word(&store, real, at), common::word(0, at), "page {page}, in the real object's memfd");
    }
    // A store through the view is in the real object's memfd.
    reader.write_u64(VmAddr(a.0 + 5 * P), 0xfeed).unwrap();
    assert_eq!(memfd_word(&store, real, 5 * P), 0xfeed);
    assert!(w.k.objects_info().iter().any(|o| o.kind == ObjectKind::View));
    assert_memfds_agree(&w.k, &store);
}

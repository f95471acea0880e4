//! The rules of the task, VM and thread-access calls: `task_create`,
//! `task_terminate`, `vm_allocate`, `vm_map`, `vm_deallocate`, `vm_protect`,
//! `vm_inherit`, `vm_region`, `vm_read`, `vm_write`, `vm_copy`, and task
//! threads' `read` / `write` / `execute`. Each documented error is hit at
//! least once, and every failing call is checked to have changed nothing.

use machvm_core::ipc::{Disposition, PortName, UserMessage};
use machvm_core::vm::map::{VM_MAX_ADDRESS, VM_MIN_ADDRESS};
use machvm_core::*;
use machvm_pagers::PagerConn;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const P: u64 = PAGE_SIZE;
const WAIT: Duration = Duration::from_secs(10);
const RO: VmProt = VmProt::READ;
const RW: VmProt = VmProt::DEFAULT;

fn kernel() -> Arc<Kernel> {
    Kernel::new(KernelConfig::default())
}

fn task(k: &Kernel) -> TaskId {
    k.task_create(None).unwrap()
}

fn alloc(k: &Kernel, t: TaskId, pages: u64) -> VmAddr {
    k.vm_allocate(t, VmAddr(0), pages * P, true).unwrap()
}

fn at(a: VmAddr, page: u64) -> VmAddr {
    VmAddr(a.0 + page * P)
}

fn rd(k: &Kernel, t: TaskId, a: VmAddr) -> Result<u64> {
    k.read_u64(t, a)
}

/// Everything `vm_region` reports, from the bottom of the map up.
fn regions(k: &Kernel, t: TaskId) -> Vec<RegionInfo> {
    let mut out = Vec::new();
    let mut a = VmAddr(0);
    while let Ok(r) = k.vm_region(t, a) {
        a = VmAddr(r.start.0 + r.size);
        out.push(r);
    }
    out
}

/// `(start, size, cur, max, inherit)` of every region.
fn layout(k: &Kernel, t: TaskId) -> Vec<(u64, u64, VmProt, VmProt, VmInherit)> {
    regions(k, t).into_iter().map(|r| (r.start.0, r.size, r.cur, r.max, r.inherit)).collect()
}

fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    std::thread::spawn(f)
}

/// The byte the scripted pager fills page `offset / P` of its object with.
fn orig(offset: u64) -> u8 {
    (offset / P) as u8 + 1
}

/// A scripted pager with one object, a send right to it in each client.
fn pager_object(k: &Arc<Kernel>, clients: &[TaskId]) -> (PagerConn, PortName, Vec<PortName>) {
    let mut pager = PagerConn::new(k.clone()).unwrap();
    let obj = pager.new_object().unwrap();
    let names = clients.iter().map(|&c| pager.give(obj, c).unwrap()).collect();
    (pager, obj, names)
}

/// Waits for one `data_request` and supplies every page it asks for,
/// filled with `orig(offset)`. Returns the requested `(offset, length)`.
fn supply_next(pager: &mut PagerConn) -> (u64, u64) {
    let (obj, off, len, _) = pager.expect_request(WAIT).unwrap();
    let mut data = Vec::with_capacity(len as usize);
    for p in (off..off + len).step_by(P as usize) {
        data.extend(std::iter::repeat_n(orig(p), P as usize));
    }
    pager.supply(obj, off, &data).unwrap();
    (off, len)
}

/// Runs `f` on a task thread while the pager answers one request.
fn served<T: Send + 'static>(pager: &mut PagerConn, f: impl FnOnce() -> T + Send + 'static) -> T {
    let h = spawn(f);
    supply_next(pager);
    h.join().unwrap()
}

/// A fresh swap file for a default pager, already unlinked.
fn swap_file() -> std::fs::File {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("vm-calls-swap-{}-{n}", std::process::id()));
    let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    f
}

fn byte(k: &Kernel, t: TaskId, a: VmAddr) -> u8 {
    let mut b = [0u8];
    k.read(t, a, &mut b).unwrap();
    b[0]
}

// ----- task_create / task_terminate -----

#[test]
fn new_task_has_an_empty_address_space() {
    let k = kernel();
    let t = task(&k);
    assert_eq!(k.vm_region(t, VmAddr(0)), Err(KernError::InvalidAddress));
    assert_eq!(rd(&k, t, VmAddr(VM_MIN_ADDRESS)), Err(KernError::InvalidAddress));
}

#[test]
fn task_terminate_twice_is_invalid_task() {
    let k = kernel();
    let t = task(&k);
    k.task_terminate(t).unwrap();
    assert_eq!(k.task_terminate(t), Err(KernError::InvalidTask));
}

#[test]
fn task_create_from_a_terminated_parent_is_invalid_task() {
    let k = kernel();
    let t = task(&k);
    k.task_terminate(t).unwrap();
    assert_eq!(k.task_create(Some(t)), Err(KernError::InvalidTask));
}

#[test]
fn every_call_on_a_terminated_task_is_invalid_task() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 2);
    k.write_u64(t, a, 5).unwrap();
    k.task_terminate(t).unwrap();
    let e = KernError::InvalidTask;
    assert_eq!(k.vm_allocate(t, VmAddr(0), P, true).err(), Some(e));
    assert_eq!(k.vm_map(t, MapRequest::anywhere(P, None)).err(), Some(e));
    assert_eq!(k.vm_deallocate(t, a, P).err(), Some(e));
    assert_eq!(k.vm_deallocate(t, a, 0).err(), Some(e));
    assert_eq!(k.vm_protect(t, a, P, false, RO).err(), Some(e));
    assert_eq!(k.vm_inherit(t, a, P, VmInherit::Share).err(), Some(e));
    assert_eq!(k.vm_region(t, a).err(), Some(e));
    assert_eq!(k.vm_read(t, a, 8).err(), Some(e));
    assert_eq!(k.vm_write(t, a, &[1]).err(), Some(e));
    assert_eq!(k.vm_copy(t, a, 8, at(a, 1)).err(), Some(e));
    assert_eq!(k.vm_fault(t, a, RO).err(), Some(e));
    assert_eq!(rd(&k, t, a).err(), Some(e));
    assert_eq!(k.write_u64(t, a, 1).err(), Some(e));
    assert_eq!(k.execute(t, a).err(), Some(e));
}

/// A terminated task's handle stays dead even when a new task takes over
/// its MMU tables: it can neither read nor change the new task's memory.
#[test]
fn stale_task_handle_cannot_touch_a_later_task() {
    let k = kernel();
    let old = task(&k);
    let a = alloc(&k, old, 1);
    k.write_u64(old, a, 1).unwrap();
    k.task_terminate(old).unwrap();
    let new = task(&k);
    k.vm_allocate(new, a, P, false).unwrap();
    k.write_u64(new, a, 42).unwrap();
    assert_eq!(rd(&k, old, a), Err(KernError::InvalidTask));
    assert_eq!(k.write_u64(old, a, 7), Err(KernError::InvalidTask));
    assert_eq!(k.execute(old, a), Err(KernError::InvalidTask));
    assert_eq!(rd(&k, new, a), Ok(42));
}

#[test]
fn terminate_unmaps_but_leaves_shared_memory_to_the_others() {
    let k = kernel();
    let parent = task(&k);
    let a = alloc(&k, parent, 1);
    k.vm_inherit(parent, a, P, VmInherit::Share).unwrap();
    k.write_u64(parent, a, 3).unwrap();
    let child = k.task_create(Some(parent)).unwrap();
    k.task_terminate(parent).unwrap();
    assert_eq!(rd(&k, child, a), Ok(3));
    k.write_u64(child, a, 4).unwrap();
    assert_eq!(rd(&k, child, a), Ok(4));
}

#[test]
fn child_inherits_ranges_protections_and_inheritance() {
    let k = kernel();
    let parent = task(&k);
    let a = alloc(&k, parent, 4);
    k.vm_protect(parent, at(a, 1), P, false, RO).unwrap();
    k.vm_protect(parent, at(a, 2), P, true, RW).unwrap();
    k.vm_inherit(parent, at(a, 3), P, VmInherit::Share).unwrap();
    let child = k.task_create(Some(parent)).unwrap();
    assert_eq!(layout(&k, child), layout(&k, parent));
    assert_eq!(layout(&k, child).len(), 4);
}

#[test]
fn inherit_share_child_and_parent_see_each_others_writes() {
    let k = kernel();
    let parent = task(&k);
    let a = alloc(&k, parent, 2);
    k.write_u64(parent, a, 1).unwrap(); // page 0 touched, page 1 untouched
    k.vm_inherit(parent, a, 2 * P, VmInherit::Share).unwrap();
    let child = k.task_create(Some(parent)).unwrap();
    assert_eq!(rd(&k, child, a), Ok(1));
    k.write_u64(child, a, 2).unwrap();
    assert_eq!(rd(&k, parent, a), Ok(2));
    k.write_u64(parent, a, 3).unwrap();
    assert_eq!(rd(&k, child, a), Ok(3));
    k.write_u64(parent, at(a, 1), 4).unwrap();
    assert_eq!(rd(&k, child, at(a, 1)), Ok(4));
    k.write_u64(child, at(a, 1), 5).unwrap();
    assert_eq!(rd(&k, parent, at(a, 1)), Ok(5));
    assert!(regions(&k, parent)[0].shared && regions(&k, child)[0].shared);
}

#[test]
fn inherit_copy_isolates_parent_writes_from_the_child() {
    let k = kernel();
    let parent = task(&k);
    let a = alloc(&k, parent, 3);
    k.write_u64(parent, a, 1).unwrap();
    k.write_u64(parent, at(a, 1), 10).unwrap();
    let child = k.task_create(Some(parent)).unwrap();
    // The child reads page 0 first (it now maps the shared page), then
    // the parent writes it: the child must keep the old contents.
    assert_eq!(rd(&k, child, a), Ok(1));
    k.write_u64(parent, a, 2).unwrap();
    k.write_u64(parent, at(a, 1), 20).unwrap();
    k.write_u64(parent, at(a, 2), 30).unwrap();
    assert_eq!(rd(&k, child, a), Ok(1));
    assert_eq!(rd(&k, child, at(a, 1)), Ok(10));
    assert_eq!(rd(&k, child, at(a, 2)), Ok(0));
    assert_eq!(rd(&k, parent, a), Ok(2));
    assert!(!regions(&k, child)[0].shared);
}

#[test]
fn inherit_copy_isolates_child_writes_from_the_parent() {
    let k = kernel();
    let parent = task(&k);
    let a = alloc(&k, parent, 2);
    k.write_u64(parent, a, 1).unwrap();
    let child = k.task_create(Some(parent)).unwrap();
    assert_eq!(rd(&k, parent, a), Ok(1));
    k.write_u64(child, a, 2).unwrap();
    k.write_u64(child, at(a, 1), 3).unwrap();
    assert_eq!(rd(&k, parent, a), Ok(1));
    assert_eq!(rd(&k, parent, at(a, 1)), Ok(0));
    assert_eq!(rd(&k, child, a), Ok(2));
}

#[test]
fn inherit_copy_chains_keep_every_generation_separate() {
    let k = kernel();
    let g = task(&k);
    let a = alloc(&k, g, 1);
    k.write_u64(g, a, 1).unwrap();
    let p = k.task_create(Some(g)).unwrap();
    assert_eq!(rd(&k, p, a), Ok(1));
    let c = k.task_create(Some(p)).unwrap();
    assert_eq!(rd(&k, c, a), Ok(1));
    k.write_u64(g, a, 2).unwrap();
    assert_eq!((rd(&k, g, a), rd(&k, p, a), rd(&k, c, a)), (Ok(2), Ok(1), Ok(1)));
    k.write_u64(p, a, 3).unwrap();
    assert_eq!((rd(&k, g, a), rd(&k, p, a), rd(&k, c, a)), (Ok(2), Ok(3), Ok(1)));
    let c2 = k.task_create(Some(g)).unwrap();
    k.write_u64(c, a, 4).unwrap();
    k.write_u64(g, a, 5).unwrap();
    assert_eq!((rd(&k, g, a), rd(&k, p, a), rd(&k, c, a), rd(&k, c2, a)), (Ok(5), Ok(3), Ok(4), Ok(2)));
}

#[test]
fn inherit_copy_of_shared_memory_is_a_snapshot() {
    let k = kernel();
    let parent = task(&k);
    let a = alloc(&k, parent, 1);
    k.write_u64(parent, a, 1).unwrap();
    k.vm_inherit(parent, a, P, VmInherit::Share).unwrap();
    let sharer = k.task_create(Some(parent)).unwrap();
    k.vm_inherit(parent, a, P, VmInherit::Copy).unwrap();
    let copier = k.task_create(Some(parent)).unwrap();
    assert_eq!(rd(&k, copier, a), Ok(1));
    k.write_u64(sharer, a, 2).unwrap();
    assert_eq!((rd(&k, parent, a), rd(&k, copier, a)), (Ok(2), Ok(1)));
    k.write_u64(copier, a, 3).unwrap();
    assert_eq!((rd(&k, parent, a), rd(&k, sharer, a)), (Ok(2), Ok(2)));
}

/// Sharing memory that is still copy-on-write: a write by either sharer
/// copies the page up into the shared object, and the other sharer — which
/// had already read the page below — sees the write.
#[test]
fn inherit_share_of_copy_on_write_memory_sees_the_first_write() {
    let k = kernel();
    let g = task(&k);
    let a = alloc(&k, g, 1);
    k.write_u64(g, a, 1).unwrap();
    let parent = k.task_create(Some(g)).unwrap(); // copy-on-write of g
    assert_eq!(rd(&k, parent, a), Ok(1));
    k.vm_inherit(parent, a, P, VmInherit::Share).unwrap();
    let child = k.task_create(Some(parent)).unwrap();
    assert_eq!(rd(&k, child, a), Ok(1));
    k.write_u64(child, a, 2).unwrap();
    assert_eq!((rd(&k, parent, a), rd(&k, g, a)), (Ok(2), Ok(1)));
    k.write_u64(parent, a, 3).unwrap();
    assert_eq!((rd(&k, child, a), rd(&k, g, a)), (Ok(3), Ok(1)));
}

/// The same through a copy mapping of a pager object.
#[test]
fn inherit_share_of_a_copy_mapping_sees_the_first_write() {
    let k = kernel();
    let parent = task(&k);
    let (mut pager, _obj, names) = pager_object(&k, &[parent]);
    let r = MapRequest::anywhere(P, Some(names[0])).copy(true).inherit(VmInherit::Share);
    let a = k.vm_map(parent, r).unwrap();
    let k2 = k.clone();
    assert_eq!(served(&mut pager, move || byte(&k2, parent, a)), orig(0));
    let child = k.task_create(Some(parent)).unwrap();
    k.write_u64(child, a, 2).unwrap();
    assert_eq!(rd(&k, parent, a), Ok(2));
}

/// The child's copy holds its own (zero) version of a page it read while
/// the parent had none; that version must survive pageout, or the
/// parent's later write would show through it.
#[test]
fn inherit_copy_isolation_survives_pageout() {
    // Two resident pages; the separate filler allocations push pages out
    // oldest first.
    let k = Kernel::new(KernelConfig { phys_pages: 64, resident_limit: 2, ..KernelConfig::default() });
    let _default_pager = machvm_pagers::boot_default_pager(&k, swap_file()).unwrap();
    let parent = task(&k);
    let a = alloc(&k, parent, 1);
    let fillers = [alloc(&k, parent, 1), alloc(&k, parent, 1)];
    assert_eq!(rd(&k, parent, a), Ok(0));
    let child = k.task_create(Some(parent)).unwrap();
    for f in fillers {
        assert_eq!(rd(&k, parent, f), Ok(0)); // the parent's clean page goes
    }
    assert_eq!(rd(&k, child, a), Ok(0)); // the child's copy gets a zero page
    k.write_u64(parent, a, 7).unwrap();
    assert_eq!(rd(&k, parent, fillers[0]), Ok(0)); // the child's zero page goes
    assert_eq!(rd(&k, child, a), Ok(0));
    assert_eq!(rd(&k, parent, a), Ok(7));
    assert!(k.stats().vm.pageouts >= 3);
}

#[test]
fn inherit_none_leaves_a_hole_in_the_child() {
    let k = kernel();
    let parent = task(&k);
    let a = alloc(&k, parent, 3);
    k.vm_inherit(parent, at(a, 1), P, VmInherit::None).unwrap();
    let child = k.task_create(Some(parent)).unwrap();
    assert_eq!(rd(&k, child, at(a, 1)), Err(KernError::InvalidAddress));
    assert_eq!(k.vm_region(child, at(a, 1)).unwrap().start, at(a, 2));
    assert_eq!(rd(&k, child, a), Ok(0));
    // The hole is free for the child to use.
    assert_eq!(k.vm_allocate(child, at(a, 1), P, false), Ok(at(a, 1)));
}

// ----- vm_allocate / vm_map -----

#[test]
fn vm_allocate_gives_zeroed_private_read_write_memory() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 2);
    assert!(a.is_page_aligned() && a.0 >= VM_MIN_ADDRESS);
    assert_eq!(k.vm_read(t, a, 2 * P).unwrap(), vec![0u8; 2 * P as usize]);
    let r = k.vm_region(t, a).unwrap();
    assert_eq!((r.start, r.size, r.cur, r.max, r.inherit), (a, 2 * P, RW, VmProt::ALL, VmInherit::Copy));
    assert!(!r.shared);
    assert_eq!(k.execute(t, a), Err(KernError::ProtectionFailure));
}

#[test]
fn vm_allocate_rounds_the_size_up_to_pages() {
    let k = kernel();
    let t = task(&k);
    let a = k.vm_allocate(t, VmAddr(0), 1, true).unwrap();
    assert_eq!(k.vm_region(t, a).unwrap().size, P);
    let b = k.vm_allocate(t, VmAddr(0), P + 1, true).unwrap();
    assert_eq!(k.vm_region(t, b).unwrap().size, 2 * P);
}

#[test]
fn vm_allocate_anywhere_never_overlaps() {
    let k = kernel();
    let t = task(&k);
    let mut got: Vec<(u64, u64)> = Vec::new();
    for n in 1..8 {
        let a = alloc(&k, t, n);
        for &(s, e) in &got {
            assert!(a.0 + n * P <= s || a.0 >= e);
        }
        got.push((a.0, a.0 + n * P));
    }
}

#[test]
fn vm_allocate_fixed_maps_exactly_there() {
    let k = kernel();
    let t = task(&k);
    let want = VmAddr(0x4000_0000);
    assert_eq!(k.vm_allocate(t, want, 3 * P, false), Ok(want));
    assert_eq!(layout(&k, t), vec![(want.0, 3 * P, RW, VmProt::ALL, VmInherit::Copy)]);
}

#[test]
fn vm_map_fixed_over_used_space_is_no_space_and_changes_nothing() {
    let k = kernel();
    let t = task(&k);
    let a = k.vm_allocate(t, VmAddr(0x4000_0000), 2 * P, false).unwrap();
    k.write_u64(t, at(a, 1), 9).unwrap();
    let before = layout(&k, t);
    assert_eq!(k.vm_allocate(t, at(a, 1), 2 * P, false), Err(KernError::NoSpace));
    assert_eq!(k.vm_allocate(t, VmAddr(a.0 - P), 2 * P, false), Err(KernError::NoSpace));
    assert_eq!(layout(&k, t), before);
    assert_eq!(rd(&k, t, at(a, 1)), Ok(9));
}

#[test]
fn vm_map_anywhere_without_room_is_no_space() {
    let k = kernel();
    let t = task(&k);
    assert_eq!(k.vm_allocate(t, VmAddr(0), VM_MAX_ADDRESS, true), Err(KernError::NoSpace));
    assert_eq!(regions(&k, t), vec![]);
}

#[test]
fn vm_map_zero_or_overflowing_size_is_invalid_argument() {
    let k = kernel();
    let t = task(&k);
    assert_eq!(k.vm_allocate(t, VmAddr(0), 0, true), Err(KernError::InvalidArgument));
    assert_eq!(k.vm_allocate(t, VmAddr(0), u64::MAX, true), Err(KernError::InvalidArgument));
    assert_eq!(k.vm_allocate(t, VmAddr(0x4000_0000), u64::MAX - P, false), Err(KernError::InvalidArgument));
    assert_eq!(regions(&k, t), vec![]);
}

#[test]
fn vm_map_fixed_unaligned_address_is_invalid_argument() {
    let k = kernel();
    let t = task(&k);
    assert_eq!(k.vm_allocate(t, VmAddr(0x4000_0010), P, false), Err(KernError::InvalidArgument));
}

#[test]
fn vm_map_fixed_range_wrapping_around_is_invalid_argument() {
    let k = kernel();
    let t = task(&k);
    let top = VmAddr(!(P - 1));
    assert_eq!(k.vm_allocate(t, top, 2 * P, false), Err(KernError::InvalidArgument));
}

#[test]
fn vm_map_fixed_outside_the_map_is_invalid_address() {
    let k = kernel();
    let t = task(&k);
    assert_eq!(k.vm_allocate(t, VmAddr(0), P, false), Err(KernError::InvalidAddress));
    assert_eq!(k.vm_allocate(t, VmAddr(VM_MIN_ADDRESS - P), 2 * P, false), Err(KernError::InvalidAddress));
    assert_eq!(k.vm_allocate(t, VmAddr(VM_MAX_ADDRESS - P), 2 * P, false), Err(KernError::InvalidAddress));
    assert_eq!(k.vm_allocate(t, VmAddr(VM_MAX_ADDRESS), P, false), Err(KernError::InvalidAddress));
    // The edges themselves are usable.
    assert!(k.vm_allocate(t, VmAddr(VM_MIN_ADDRESS), P, false).is_ok());
    assert!(k.vm_allocate(t, VmAddr(VM_MAX_ADDRESS - P), P, false).is_ok());
}

#[test]
fn vm_map_anywhere_honours_the_alignment_mask() {
    let k = kernel();
    let t = task(&k);
    alloc(&k, t, 1); // so the first free address is not already aligned
    for mask in [0x1_ffff, 0xf_ffff, 0xff_ffff] {
        let a = k.vm_map(t, MapRequest::anywhere(P, None).mask(mask)).unwrap();
        assert_eq!(a.0 & mask, 0, "mask {mask:#x}");
    }
    // A mask below the page size is a page mask.
    let a = k.vm_map(t, MapRequest::anywhere(P, None).mask(0x10)).unwrap();
    assert!(a.is_page_aligned());
}

#[test]
fn vm_map_bad_alignment_mask_is_invalid_argument() {
    let k = kernel();
    let t = task(&k);
    for mask in [0x5000, 0x1_0fff, u64::MAX] {
        assert_eq!(k.vm_map(t, MapRequest::anywhere(P, None).mask(mask)), Err(KernError::InvalidArgument), "{mask:#x}");
    }
    assert_eq!(regions(&k, t), vec![]);
}

#[test]
fn vm_map_fixed_address_off_the_mask_is_invalid_argument() {
    let k = kernel();
    let t = task(&k);
    let r = MapRequest::anywhere(P, None).mask(0xffff);
    assert_eq!(k.vm_map(t, r.clone().at(VmAddr(0x4000_1000))), Err(KernError::InvalidArgument));
    assert_eq!(k.vm_map(t, r.at(VmAddr(0x4001_0000))), Ok(VmAddr(0x4001_0000)));
}

#[test]
fn vm_map_cur_above_max_is_invalid_argument() {
    let k = kernel();
    let t = task(&k);
    let r = MapRequest::anywhere(P, None).prot(RW, RO);
    assert_eq!(k.vm_map(t, r), Err(KernError::InvalidArgument));
    assert_eq!(regions(&k, t), vec![]);
}

#[test]
fn vm_map_records_protections_inheritance_and_offset() {
    let k = kernel();
    let t = task(&k);
    let (_pager, _obj, names) = pager_object(&k, &[t]);
    let r = MapRequest::anywhere(2 * P, Some(names[0]))
        .offset(5 * P)
        .prot(RO, RW)
        .inherit(VmInherit::Share)
        .at(VmAddr(0x4000_0000));
    let a = k.vm_map(t, r).unwrap();
    let info = k.vm_region(t, a).unwrap();
    assert_eq!(
        (info.start, info.size, info.cur, info.max, info.inherit, info.offset),
        (a, 2 * P, RO, RW, VmInherit::Share, VmOffset(5 * P))
    );
    assert!(info.shared);
}

#[test]
fn vm_map_null_object_is_zero_fill_memory() {
    let k = kernel();
    let t = task(&k);
    let a = k.vm_map(t, MapRequest::anywhere(2 * P, None).prot(VmProt::ALL, VmProt::ALL)).unwrap();
    assert_eq!(rd(&k, t, at(a, 1)), Ok(0));
    k.execute(t, a).unwrap();
    k.write_u64(t, a, 6).unwrap();
    assert_eq!(rd(&k, t, a), Ok(6));
}

#[test]
fn vm_map_unaligned_or_overflowing_offset_is_invalid_argument() {
    let k = kernel();
    let t = task(&k);
    let (_pager, _obj, names) = pager_object(&k, &[t]);
    let r = MapRequest::anywhere(P, Some(names[0]));
    assert_eq!(k.vm_map(t, r.clone().offset(12)), Err(KernError::InvalidArgument));
    assert_eq!(k.vm_map(t, r.offset(!(P - 1))), Err(KernError::InvalidArgument));
    assert_eq!(regions(&k, t), vec![]);
}

#[test]
fn vm_map_of_bad_object_names() {
    let k = kernel();
    let t = task(&k);
    let r = |n| MapRequest::anywhere(P, Some(n));
    assert_eq!(k.vm_map(t, r(PortName(0x7777))), Err(KernError::InvalidName));
    let set = k.port_set_allocate(t).unwrap();
    assert_eq!(k.vm_map(t, r(set)), Err(KernError::InvalidRight));
    // A port that is a kernel object but no memory object: a revoke right.
    let (_pager, _obj, names) = pager_object(&k, &[t]);
    let px = k.memory_object_create_proxy_version(t, RO, &[names[0]], &[0], &[0], &[P], ProxyVersion::Paging).unwrap();
    assert_eq!(k.vm_map(t, r(px.revoke)), Err(KernError::InvalidArgument));
    assert_eq!(regions(&k, t), vec![]);
}

/// A send-once right to a memory object is no memory object: neither
/// `vm_map` nor `memory_object_create_proxy` takes it (the kernel would
/// hold a counted send right the receiver never made, and use a one-shot
/// right any number of times), and the right is left as it was.
#[test]
fn a_send_once_right_is_not_a_memory_object() {
    let k = kernel();
    let t = task(&k);
    let mut pager = PagerConn::new(k.clone()).unwrap();
    let obj = pager.new_object().unwrap();
    let once = k.port_transfer(pager.link.task, obj, Disposition::MakeSendOnce, t).unwrap();
    assert_eq!(k.vm_map(t, MapRequest::anywhere(P, Some(once))), Err(KernError::InvalidRight));
    assert_eq!(k.vm_map(t, MapRequest::anywhere(P, Some(once)).copy(true)), Err(KernError::InvalidRight));
    assert_eq!(k.memory_object_create_proxy(t, RO, &[once], &[0], &[0], &[P]), Err(KernError::InvalidRight));
    assert_eq!(regions(&k, t), vec![]);
    assert_eq!(k.stats().sent("init"), 0, "the kernel never took it for an object");
    let info = k.port_lookup(t, once).unwrap();
    assert!(info.send_once && info.send_urefs == 0, "{info:?}");
    // Still good for exactly one message to the pager.
    let msg = UserMessage { dest_disposition: Disposition::MoveSendOnce, ..UserMessage::new(once, 77, vec![1]) };
    k.msg_send(t, msg).unwrap();
    let got = k.msg_receive(pager.link.task, obj, Some(WAIT)).unwrap();
    assert_eq!((got.id, got.data), (77, vec![1]));
    assert_eq!(k.port_lookup(t, once), Err(KernError::InvalidName));
}

#[test]
fn vm_map_of_proxies_outside_windows_revoked_or_copy_without_read() {
    let k = kernel();
    let t = task(&k);
    let (_pager, _obj, names) = pager_object(&k, &[t]);
    let mk = |prot| {
        k.memory_object_create_proxy_version(t, prot, &[names[0]], &[0], &[0], &[P], ProxyVersion::Paging).unwrap()
    };
    let wo = mk(VmProt::WRITE);
    let copy = MapRequest::anywhere(P, Some(wo.proxy)).copy(true);
    assert_eq!(k.vm_map(t, copy), Err(KernError::ProtectionFailure));
    let ro = mk(RO);
    assert_eq!(k.vm_map(t, MapRequest::anywhere(2 * P, Some(ro.proxy))), Err(KernError::InvalidArgument));
    k.memory_object_proxy_revoke(t, ro.revoke).unwrap();
    assert_eq!(k.vm_map(t, MapRequest::anywhere(P, Some(ro.proxy))), Err(KernError::InvalidCapability));
    assert_eq!(regions(&k, t), vec![]);
}

#[test]
fn vm_map_of_a_pager_object_is_shared_between_mappings() {
    let k = kernel();
    let (t1, t2) = (task(&k), task(&k));
    let (mut pager, _obj, names) = pager_object(&k, &[t1, t2]);
    let a1 = k.vm_map(t1, MapRequest::anywhere(2 * P, Some(names[0]))).unwrap();
    let a2 = k.vm_map(t2, MapRequest::anywhere(P, Some(names[1])).offset(P)).unwrap();
    let k2 = k.clone();
    assert_eq!(served(&mut pager, move || byte(&k2, t1, a1)), orig(0));
    // The cluster brought in page 1 too: no further request.
    assert_eq!(byte(&k, t2, a2), orig(P));
    k.write_u64(t2, a2, 77).unwrap();
    assert_eq!(rd(&k, t1, at(a1, 1)), Ok(77));
    k.write_u64(t1, at(a1, 1), 78).unwrap();
    assert_eq!(rd(&k, t2, a2), Ok(78));
    assert_eq!(k.stats().sent("data_request"), 1);
}

/// A copy mapping is a snapshot taken at `vm_map` time: later writes
/// through a shared mapping do not show in it — whether the copy had
/// already read the page or not — and its own writes never reach the
/// object.
#[test]
fn vm_map_copy_of_a_pager_object_is_a_snapshot() {
    let k = kernel();
    let (writer, copier, other) = (task(&k), task(&k), task(&k));
    let (mut pager, _obj, names) = pager_object(&k, &[writer, copier, other]);
    let s = k.vm_map(writer, MapRequest::anywhere(3 * P, Some(names[0]))).unwrap();
    let k2 = k.clone();
    served(&mut pager, move || k2.write_u64(writer, at(s, 2), 222).unwrap());
    // Taken after the write to page 2: the snapshot includes it.
    let c = k.vm_map(copier, MapRequest::anywhere(3 * P, Some(names[1])).copy(true)).unwrap();
    assert!(!k.vm_region(copier, c).unwrap().shared);
    assert_eq!(byte(&k, copier, c), orig(0)); // the copy now maps page 0
    k.write_u64(writer, s, 100).unwrap();
    k.write_u64(writer, at(s, 1), 101).unwrap(); // the copy never read page 1
    k.write_u64(writer, at(s, 2), 102).unwrap();
    assert_eq!(byte(&k, copier, c), orig(0));
    assert_eq!(byte(&k, copier, at(c, 1)), orig(P));
    assert_eq!(rd(&k, copier, at(c, 2)), Ok(222));
    // The copy's own writes stay in the copy.
    k.write_u64(copier, c, 300).unwrap();
    k.write_u64(copier, at(c, 1), 301).unwrap();
    assert_eq!(rd(&k, writer, s), Ok(100));
    assert_eq!(rd(&k, writer, at(s, 1)), Ok(101));
    let o = k.vm_map(other, MapRequest::anywhere(3 * P, Some(names[2]))).unwrap();
    assert_eq!(rd(&k, other, o), Ok(100));
    assert_eq!(rd(&k, other, at(o, 1)), Ok(101));
    assert_eq!(rd(&k, copier, c), Ok(300));
    assert_eq!(rd(&k, copier, at(c, 2)), Ok(222));
}

/// A copy mapping made before the object's pages ever came in still
/// holds the pager's data, not what a shared mapping wrote afterwards.
#[test]
fn vm_map_copy_before_first_touch_holds_the_pagers_data() {
    let k = kernel();
    let (writer, copier) = (task(&k), task(&k));
    let (mut pager, _obj, names) = pager_object(&k, &[writer, copier]);
    let c = k.vm_map(copier, MapRequest::anywhere(P, Some(names[1])).offset(P).copy(true)).unwrap();
    let s = k.vm_map(writer, MapRequest::anywhere(2 * P, Some(names[0]))).unwrap();
    let k2 = k.clone();
    served(&mut pager, move || k2.write_u64(writer, at(s, 1), 5).unwrap());
    assert_eq!(byte(&k, copier, c), orig(P));
    assert_eq!(rd(&k, writer, at(s, 1)), Ok(5));
}

// ----- vm_deallocate -----

#[test]
fn vm_deallocate_removes_the_range_and_its_contents() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 2);
    k.write_u64(t, a, 1).unwrap();
    k.vm_deallocate(t, a, 2 * P).unwrap();
    assert_eq!(rd(&k, t, a), Err(KernError::InvalidAddress));
    assert_eq!(regions(&k, t), vec![]);
    assert_eq!(k.vm_allocate(t, a, 2 * P, false), Ok(a));
    assert_eq!(rd(&k, t, a), Ok(0));
}

#[test]
fn vm_deallocate_of_part_of_an_entry_keeps_the_rest() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 4);
    for i in 0..4 {
        k.write_u64(t, at(a, i), i + 1).unwrap();
    }
    k.vm_deallocate(t, at(a, 1), 2 * P).unwrap();
    let l: Vec<(u64, u64)> = layout(&k, t).into_iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(l, vec![(a.0, P), (at(a, 3).0, P)]);
    assert_eq!(rd(&k, t, a), Ok(1));
    assert_eq!(rd(&k, t, at(a, 3)), Ok(4));
    assert_eq!(rd(&k, t, at(a, 1)), Err(KernError::InvalidAddress));
    assert_eq!(k.vm_region(t, at(a, 3)).unwrap().offset, VmOffset(3 * P));
}

#[test]
fn vm_deallocate_across_holes_and_several_entries() {
    let k = kernel();
    let t = task(&k);
    let base = VmAddr(0x4000_0000);
    for i in [0, 2, 3, 6] {
        k.vm_allocate(t, at(base, i), P, false).unwrap();
    }
    k.vm_deallocate(t, at(base, 1), 5 * P).unwrap(); // partial of nothing, holes, whole entries
    let l: Vec<u64> = layout(&k, t).into_iter().map(|r| r.0).collect();
    assert_eq!(l, vec![base.0, at(base, 6).0]);
    // A range that is all hole is fine too.
    k.vm_deallocate(t, at(base, 10), 4 * P).unwrap();
}

#[test]
fn vm_deallocate_of_zero_bytes_does_nothing() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 1);
    k.vm_deallocate(t, a, 0).unwrap();
    assert_eq!(regions(&k, t).len(), 1);
}

#[test]
fn vm_deallocate_errors_change_nothing() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 2);
    let before = layout(&k, t);
    assert_eq!(k.vm_deallocate(t, VmAddr(a.0 + 8), P), Err(KernError::InvalidArgument));
    assert_eq!(k.vm_deallocate(t, a, u64::MAX), Err(KernError::InvalidArgument));
    assert_eq!(k.vm_deallocate(t, a, u64::MAX - 2 * P), Err(KernError::InvalidArgument));
    assert_eq!(k.vm_deallocate(t, VmAddr(0), VM_MIN_ADDRESS + 4 * P), Err(KernError::InvalidAddress));
    assert_eq!(k.vm_deallocate(t, a, VM_MAX_ADDRESS), Err(KernError::InvalidAddress));
    assert_eq!(layout(&k, t), before);
}

#[test]
fn vm_deallocate_in_a_child_leaves_the_parent_alone() {
    let k = kernel();
    let parent = task(&k);
    let a = alloc(&k, parent, 2);
    k.write_u64(parent, a, 1).unwrap();
    k.vm_inherit(parent, at(a, 1), P, VmInherit::Share).unwrap();
    k.write_u64(parent, at(a, 1), 2).unwrap();
    let child = k.task_create(Some(parent)).unwrap();
    k.vm_deallocate(child, a, 2 * P).unwrap();
    assert_eq!(rd(&k, parent, a), Ok(1));
    assert_eq!(rd(&k, parent, at(a, 1)), Ok(2));
    k.write_u64(parent, at(a, 1), 3).unwrap();
    assert_eq!(rd(&k, parent, at(a, 1)), Ok(3));
}

// ----- vm_protect -----

#[test]
fn vm_protect_lowering_cur_makes_writes_fault_even_when_resident() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 1);
    k.write_u64(t, a, 1).unwrap(); // resident and mapped writable
    k.vm_protect(t, a, P, false, RO).unwrap();
    assert_eq!(k.write_u64(t, a, 2), Err(KernError::ProtectionFailure));
    assert_eq!(rd(&k, t, a), Ok(1));
    k.vm_protect(t, a, P, false, VmProt::NONE).unwrap();
    assert_eq!(rd(&k, t, a), Err(KernError::ProtectionFailure));
    k.vm_protect(t, a, P, false, RW).unwrap();
    k.write_u64(t, a, 3).unwrap();
    assert_eq!(rd(&k, t, a), Ok(3));
}

#[test]
fn vm_protect_cur_up_to_max_is_allowed() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 1);
    k.vm_protect(t, a, P, false, VmProt::ALL).unwrap();
    k.execute(t, a).unwrap();
    assert_eq!(k.vm_region(t, a).unwrap().cur, VmProt::ALL);
}

#[test]
fn vm_protect_cur_above_max_is_protection_failure() {
    let k = kernel();
    let t = task(&k);
    let a = k.vm_map(t, MapRequest::anywhere(P, None).prot(RO, RO)).unwrap();
    assert_eq!(k.vm_protect(t, a, P, false, RW), Err(KernError::ProtectionFailure));
    assert_eq!(k.vm_region(t, a).unwrap().cur, RO);
}

#[test]
fn vm_protect_set_max_lowers_max_and_cur() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 2);
    k.write_u64(t, a, 1).unwrap();
    k.vm_protect(t, a, P, true, RO).unwrap();
    assert_eq!(layout(&k, t), vec![(a.0, P, RO, RO, VmInherit::Copy), (a.0 + P, P, RW, VmProt::ALL, VmInherit::Copy)]);
    assert_eq!(k.write_u64(t, a, 2), Err(KernError::ProtectionFailure));
    assert_eq!(k.vm_protect(t, a, P, false, RW), Err(KernError::ProtectionFailure));
    // Lowering max never raises cur.
    k.vm_protect(t, at(a, 1), P, false, RO).unwrap();
    k.vm_protect(t, at(a, 1), P, true, VmProt::ALL).unwrap();
    assert_eq!(k.vm_region(t, at(a, 1)).unwrap().cur, RO);
}

#[test]
fn vm_protect_set_max_above_the_old_max_is_protection_failure() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 2);
    k.vm_protect(t, at(a, 1), P, true, RW).unwrap();
    let before = layout(&k, t);
    assert_eq!(k.vm_protect(t, a, 2 * P, true, VmProt::ALL), Err(KernError::ProtectionFailure));
    assert_eq!(layout(&k, t), before);
}

#[test]
fn vm_protect_over_a_hole_is_invalid_address_and_changes_nothing() {
    let k = kernel();
    let t = task(&k);
    let base = VmAddr(0x4000_0000);
    k.vm_allocate(t, base, P, false).unwrap();
    k.vm_allocate(t, at(base, 2), P, false).unwrap();
    assert_eq!(k.vm_protect(t, base, 3 * P, false, RO), Err(KernError::InvalidAddress));
    assert_eq!(k.vm_protect(t, base, 2 * P, true, RO), Err(KernError::InvalidAddress));
    assert_eq!(k.vm_protect(t, at(base, 4), P, false, RO), Err(KernError::InvalidAddress));
    assert_eq!(
        layout(&k, t),
        vec![(base.0, P, RW, VmProt::ALL, VmInherit::Copy), (at(base, 2).0, P, RW, VmProt::ALL, VmInherit::Copy)]
    );
    k.write_u64(t, base, 1).unwrap();
}

#[test]
fn vm_protect_bad_ranges() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 1);
    assert_eq!(k.vm_protect(t, VmAddr(a.0 + 1), P, false, RO), Err(KernError::InvalidArgument));
    assert_eq!(k.vm_protect(t, a, u64::MAX, false, RO), Err(KernError::InvalidArgument));
    assert_eq!(k.vm_protect(t, a, u64::MAX - 2 * P, false, RO), Err(KernError::InvalidArgument));
    assert_eq!(k.vm_protect(t, VmAddr(0), P, false, RO), Err(KernError::InvalidAddress));
    assert_eq!(k.vm_protect(t, VmAddr(VM_MAX_ADDRESS), P, false, RO), Err(KernError::InvalidAddress));
    assert_eq!(k.vm_region(t, a).unwrap().cur, RW);
}

#[test]
fn vm_protect_unknown_protection_bits_are_invalid_argument() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 1);
    let bad = VmProt::from_bits_retain(0x8 | VmProt::READ.bits());
    assert_eq!(k.vm_protect(t, a, P, false, bad), Err(KernError::InvalidArgument));
    assert_eq!(k.vm_protect(t, a, P, true, bad), Err(KernError::InvalidArgument));
    assert_eq!(k.vm_region(t, a).unwrap().cur, RW);
}

#[test]
fn vm_protect_of_part_of_an_entry_splits_it() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 3);
    k.write_u64(t, at(a, 1), 1).unwrap();
    k.vm_protect(t, at(a, 1), P, false, RO).unwrap();
    let cur: Vec<(u64, u64, VmProt)> = layout(&k, t).into_iter().map(|r| (r.0, r.1, r.2)).collect();
    assert_eq!(cur, vec![(a.0, P, RW), (at(a, 1).0, P, RO), (at(a, 2).0, P, RW)]);
    assert_eq!(rd(&k, t, at(a, 1)), Ok(1));
    k.write_u64(t, at(a, 2), 2).unwrap();
    assert_eq!(k.write_u64(t, at(a, 1), 2), Err(KernError::ProtectionFailure));
}

/// Raising protection on a copy-on-write page must not open the shared
/// page to writes: the write still copies.
#[test]
fn vm_protect_raise_on_copied_memory_still_copies_on_write() {
    let k = kernel();
    let parent = task(&k);
    let a = alloc(&k, parent, 1);
    k.write_u64(parent, a, 1).unwrap();
    let child = k.task_create(Some(parent)).unwrap();
    k.vm_protect(child, a, P, false, RO).unwrap();
    assert_eq!(rd(&k, child, a), Ok(1));
    k.vm_protect(child, a, P, false, RW).unwrap();
    k.write_u64(child, a, 2).unwrap();
    assert_eq!(rd(&k, parent, a), Ok(1));
    k.vm_protect(parent, a, P, false, RO).unwrap();
    k.vm_protect(parent, a, P, false, RW).unwrap();
    k.write_u64(parent, a, 3).unwrap();
    assert_eq!(rd(&k, child, a), Ok(2));
}

// ----- vm_inherit -----

#[test]
fn vm_inherit_sets_inheritance_on_the_range_only() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 3);
    k.vm_inherit(t, at(a, 1), P, VmInherit::None).unwrap();
    let inh: Vec<VmInherit> = layout(&k, t).into_iter().map(|r| r.4).collect();
    assert_eq!(inh, vec![VmInherit::Copy, VmInherit::None, VmInherit::Copy]);
}

#[test]
fn vm_inherit_across_holes_is_fine() {
    let k = kernel();
    let t = task(&k);
    let base = VmAddr(0x4000_0000);
    k.vm_allocate(t, base, P, false).unwrap();
    k.vm_allocate(t, at(base, 2), P, false).unwrap();
    k.vm_inherit(t, base, 4 * P, VmInherit::Share).unwrap();
    assert!(regions(&k, t).iter().all(|r| r.inherit == VmInherit::Share));
}

#[test]
fn vm_inherit_bad_ranges_change_nothing() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 1);
    let e = |addr, size| k.vm_inherit(t, addr, size, VmInherit::None);
    assert_eq!(e(VmAddr(a.0 + 1), P), Err(KernError::InvalidArgument));
    assert_eq!(e(a, u64::MAX), Err(KernError::InvalidArgument));
    assert_eq!(e(a, u64::MAX - 2 * P), Err(KernError::InvalidArgument));
    assert_eq!(e(VmAddr(0), VM_MIN_ADDRESS + P), Err(KernError::InvalidAddress));
    assert_eq!(e(a, VM_MAX_ADDRESS), Err(KernError::InvalidAddress));
    assert_eq!(k.vm_region(t, a).unwrap().inherit, VmInherit::Copy);
}

// ----- vm_region -----

#[test]
fn vm_region_reports_the_containing_entry() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 3);
    let r = k.vm_region(t, VmAddr(a.0 + P + 17)).unwrap();
    assert_eq!((r.start, r.size, r.offset), (a, 3 * P, VmOffset(0)));
}

#[test]
fn vm_region_in_a_hole_reports_the_next_entry() {
    let k = kernel();
    let t = task(&k);
    let base = VmAddr(0x4000_0000);
    k.vm_allocate(t, at(base, 3), 2 * P, false).unwrap();
    assert_eq!(k.vm_region(t, base).unwrap().start, at(base, 3));
    assert_eq!(k.vm_region(t, VmAddr(0)).unwrap().start, at(base, 3));
}

#[test]
fn vm_region_with_nothing_at_or_above_is_invalid_address() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 2);
    assert_eq!(k.vm_region(t, at(a, 2)), Err(KernError::InvalidAddress));
    assert_eq!(k.vm_region(t, VmAddr(u64::MAX)), Err(KernError::InvalidAddress));
}

// ----- vm_read / vm_write / vm_copy -----

#[test]
fn vm_read_and_vm_write_span_pages_and_entries() {
    let k = kernel();
    let t = task(&k);
    let base = VmAddr(0x4000_0000);
    k.vm_allocate(t, base, P, false).unwrap();
    k.vm_allocate(t, at(base, 1), 2 * P, false).unwrap();
    let data: Vec<u8> = (0..2 * P + 100).map(|i| (i % 251) as u8).collect();
    let start = VmAddr(base.0 + P / 2);
    k.vm_write(t, start, &data).unwrap();
    assert_eq!(k.vm_read(t, start, data.len() as u64).unwrap(), data);
    assert_eq!(k.vm_read(t, start, 0).unwrap(), Vec::<u8>::new());
}

#[test]
fn vm_read_errors() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 2);
    assert_eq!(k.vm_read(t, at(a, 1), 2 * P), Err(KernError::InvalidAddress));
    assert_eq!(k.vm_read(t, VmAddr(u64::MAX - 4), 8), Err(KernError::InvalidAddress));
    k.vm_protect(t, at(a, 1), P, false, VmProt::WRITE).unwrap();
    assert_eq!(k.vm_read(t, a, 2 * P), Err(KernError::ProtectionFailure));
    assert_eq!(k.vm_read(t, a, P).unwrap().len(), P as usize);
}

#[test]
fn vm_write_writes_nothing_unless_all_is_writable() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 3);
    k.vm_protect(t, at(a, 1), P, false, RO).unwrap();
    let data = vec![0xAAu8; 2 * P as usize];
    assert_eq!(k.vm_write(t, a, &data), Err(KernError::ProtectionFailure));
    assert_eq!(k.vm_write(t, at(a, 2), &data), Err(KernError::InvalidAddress));
    assert_eq!(k.vm_write(t, VmAddr(u64::MAX - 4), &[1; 8]), Err(KernError::InvalidAddress));
    assert_eq!(k.vm_read(t, a, 3 * P).unwrap(), vec![0u8; 3 * P as usize]);
}

/// A page the pager fails in the middle of the range: the pages before it
/// are not written either.
#[test]
fn vm_write_failing_on_a_pager_error_writes_nothing() {
    let k = kernel();
    let t = task(&k);
    let (mut pager, obj, names) = pager_object(&k, &[t]);
    let a = k.vm_map(t, MapRequest::anywhere(2 * P, Some(names[0]))).unwrap();
    let k2 = k.clone();
    let h = spawn(move || k2.vm_write(t, a, &vec![0xAAu8; 2 * P as usize]));
    let (_, off, len, _) = pager.expect_request(WAIT).unwrap();
    assert_eq!(off, 0);
    pager.supply(obj, 0, &[orig(0); P as usize]).unwrap();
    pager.error(obj, P, len - P).unwrap();
    assert_eq!(h.join().unwrap(), Err(KernError::MemoryError));
    assert_eq!(byte(&k, t, a), orig(0));
    assert_eq!(k.vm_read(t, at(a, 1), 8), Err(KernError::MemoryError));
}

#[test]
fn vm_copy_copies_within_a_task_even_overlapping() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 3);
    let data: Vec<u8> = (0..2 * P).map(|i| (i % 253) as u8).collect();
    k.vm_write(t, a, &data).unwrap();
    k.vm_copy(t, a, 2 * P, VmAddr(a.0 + 100)).unwrap();
    assert_eq!(k.vm_read(t, VmAddr(a.0 + 100), 2 * P).unwrap(), data);
}

#[test]
fn vm_copy_checks_both_ranges_before_writing() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 4);
    k.vm_write(t, a, &[7u8; P as usize]).unwrap();
    k.vm_protect(t, at(a, 3), P, false, RO).unwrap();
    // Destination partly read-only.
    assert_eq!(k.vm_copy(t, a, 2 * P, at(a, 2)), Err(KernError::ProtectionFailure));
    // Destination runs into a hole.
    assert_eq!(k.vm_copy(t, a, 2 * P, at(a, 3)), Err(KernError::InvalidAddress));
    // Source runs into a hole.
    assert_eq!(k.vm_copy(t, at(a, 3), 2 * P, at(a, 1)), Err(KernError::InvalidAddress));
    // Source not readable.
    k.vm_protect(t, a, P, false, VmProt::WRITE).unwrap();
    assert_eq!(k.vm_copy(t, a, P, at(a, 1)), Err(KernError::ProtectionFailure));
    k.vm_protect(t, a, P, false, RW).unwrap();
    assert_eq!(k.vm_read(t, a, P).unwrap(), vec![7u8; P as usize]);
    assert_eq!(k.vm_read(t, at(a, 1), 3 * P).unwrap(), vec![0u8; 3 * P as usize]);
}

#[test]
fn vm_copy_failing_on_a_pager_error_writes_nothing() {
    let k = kernel();
    let t = task(&k);
    let (mut pager, obj, names) = pager_object(&k, &[t]);
    let src = alloc(&k, t, 2);
    k.vm_write(t, src, &[0x55u8; 2 * P as usize]).unwrap();
    let dst = k.vm_map(t, MapRequest::anywhere(2 * P, Some(names[0]))).unwrap();
    let k2 = k.clone();
    let h = spawn(move || k2.vm_copy(t, src, 2 * P, dst));
    let (_, _, len, _) = pager.expect_request(WAIT).unwrap();
    pager.supply(obj, 0, &[orig(0); P as usize]).unwrap();
    pager.error(obj, P, len - P).unwrap();
    assert_eq!(h.join().unwrap(), Err(KernError::MemoryError));
    assert_eq!(byte(&k, t, dst), orig(0));
}

// ----- task threads: read / write / execute -----

#[test]
fn access_outside_any_entry_is_invalid_address() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 1);
    assert_eq!(rd(&k, t, at(a, 1)), Err(KernError::InvalidAddress));
    assert_eq!(k.write_u64(t, at(a, 1), 1), Err(KernError::InvalidAddress));
    assert_eq!(k.execute(t, at(a, 1)), Err(KernError::InvalidAddress));
    assert_eq!(k.vm_fault(t, at(a, 1), RO), Err(KernError::InvalidAddress));
    assert_eq!(rd(&k, t, VmAddr(u64::MAX - 3)), Err(KernError::InvalidAddress));
    assert_eq!(k.write(t, VmAddr(u64::MAX - 3), &[0; 8]), Err(KernError::InvalidAddress));
}

#[test]
fn access_without_permission_is_protection_failure() {
    let k = kernel();
    let t = task(&k);
    let ro = k.vm_map(t, MapRequest::anywhere(P, None).prot(RO, VmProt::ALL)).unwrap();
    let wo = k.vm_map(t, MapRequest::anywhere(P, None).prot(VmProt::WRITE, VmProt::ALL)).unwrap();
    let x = k.vm_map(t, MapRequest::anywhere(P, None).prot(VmProt::EXECUTE, VmProt::ALL)).unwrap();
    assert_eq!(rd(&k, t, ro), Ok(0));
    assert_eq!(k.write_u64(t, ro, 1), Err(KernError::ProtectionFailure));
    assert_eq!(k.execute(t, ro), Err(KernError::ProtectionFailure));
    k.write_u64(t, wo, 1).unwrap();
    assert_eq!(rd(&k, t, wo), Err(KernError::ProtectionFailure));
    assert_eq!(k.execute(t, wo), Err(KernError::ProtectionFailure));
    k.execute(t, x).unwrap();
    assert_eq!(rd(&k, t, x), Err(KernError::ProtectionFailure));
    assert_eq!(k.write_u64(t, x, 1), Err(KernError::ProtectionFailure));
    assert_eq!(k.vm_fault(t, x, VmProt::WRITE), Err(KernError::ProtectionFailure));
}

#[test]
fn access_crossing_into_a_hole_stops_there() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 1);
    let end = VmAddr(a.0 + P - 4);
    assert_eq!(k.write(t, end, &[9u8; 8]), Err(KernError::InvalidAddress));
    // As on hardware, the bytes before the failing page were stored.
    assert_eq!(k.vm_read(t, end, 4).unwrap(), vec![9u8; 4]);
}

#[test]
fn access_to_a_page_the_pager_failed_is_memory_error() {
    let k = kernel();
    let t = task(&k);
    let (mut pager, obj, names) = pager_object(&k, &[t]);
    let a = k.vm_map(t, MapRequest::anywhere(P, Some(names[0]))).unwrap();
    let k2 = k.clone();
    let h = spawn(move || rd(&k2, t, a));
    let (_, off, len, _) = pager.expect_request(WAIT).unwrap();
    pager.error(obj, off, len).unwrap();
    assert_eq!(h.join().unwrap(), Err(KernError::MemoryError));
    assert_eq!(k.write_u64(t, a, 1), Err(KernError::MemoryError));
    assert_eq!(k.execute(t, a), Err(KernError::ProtectionFailure));
    assert_eq!(k.vm_read(t, a, 8), Err(KernError::MemoryError));
}

#[test]
fn access_with_no_reclaimable_page_is_resource_shortage() {
    // Anonymous memory is never reclaimed without a default pager.
    let k = Kernel::new(KernelConfig { phys_pages: 4, resident_limit: 4, ..KernelConfig::default() });
    let t = task(&k);
    let a = alloc(&k, t, 5);
    for i in 0..4 {
        k.write_u64(t, at(a, i), i).unwrap();
    }
    assert_eq!(k.write_u64(t, at(a, 4), 4), Err(KernError::ResourceShortage));
    for i in 0..4 {
        assert_eq!(rd(&k, t, at(a, i)), Ok(i));
    }
}

#[test]
fn vm_map_unknown_protection_bits_are_invalid_argument() {
    let k = kernel();
    let t = task(&k);
    let bad = VmProt::from_bits_retain(0x8 | VmProt::ALL.bits());
    assert_eq!(k.vm_map(t, MapRequest::anywhere(P, None).prot(RO, bad)), Err(KernError::InvalidArgument));
    assert_eq!(k.vm_map(t, MapRequest::anywhere(P, None).prot(bad, bad)), Err(KernError::InvalidArgument));
    assert_eq!(regions(&k, t), vec![]);
}

/// `vm_region`'s `shared` is Mach's per-entry `is_shared`: private memory
/// stays private when split or forked by copy; share inheritance, a region
/// proxy, or mapping a memory object without copy make it shared.
#[test]
fn vm_region_shared_follows_the_entry_not_reference_counts() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 4);
    k.write_u64(t, a, 1).unwrap();
    k.vm_protect(t, at(a, 1), P, false, RO).unwrap();
    assert!(regions(&k, t).iter().all(|r| !r.shared), "split private memory stays private");
    let child = k.task_create(Some(t)).unwrap();
    assert!(regions(&k, t).iter().all(|r| !r.shared) && regions(&k, child).iter().all(|r| !r.shared));
    k.vm_inherit(t, a, P, VmInherit::Share).unwrap();
    let sharer = k.task_create(Some(t)).unwrap();
    assert!(regions(&k, t)[0].shared && regions(&k, sharer)[0].shared);
    assert!(!regions(&k, t)[1].shared);
    let b = alloc(&k, t, 1);
    k.vm_region_create_proxy(t, b, RW, P).unwrap();
    assert!(k.vm_region(t, b).unwrap().shared, "memory behind a region proxy is shared");
    let (_pager, _obj, names) = pager_object(&k, &[t]);
    let m = k.vm_map(t, MapRequest::anywhere(P, Some(names[0]))).unwrap();
    let c = k.vm_map(t, MapRequest::anywhere(P, Some(names[0])).copy(true)).unwrap();
    assert!(k.vm_region(t, m).unwrap().shared && !k.vm_region(t, c).unwrap().shared);
}

/// Mach lets `vm_protect`, `vm_inherit` and `vm_deallocate` of zero bytes
/// succeed without doing anything.
#[test]
fn zero_sized_protect_inherit_deallocate_do_nothing() {
    let k = kernel();
    let t = task(&k);
    let a = alloc(&k, t, 1);
    let before = layout(&k, t);
    k.vm_protect(t, a, 0, true, VmProt::NONE).unwrap();
    k.vm_inherit(t, a, 0, VmInherit::None).unwrap();
    k.vm_deallocate(t, a, 0).unwrap();
    assert_eq!(layout(&k, t), before);
}

/// A `vm_write` larger than the resident limit still writes every byte
/// (the range can never be resident at once).
#[test]
fn vm_write_larger_than_the_resident_limit_writes_everything() {
    let k = Kernel::new(KernelConfig { phys_pages: 64, resident_limit: 4, ..Default::default() });
    let swap = swap_file();
    let _dp = machvm_pagers::boot_default_pager(&k, swap).unwrap();
    let t = task(&k);
    let a = alloc(&k, t, 16);
    let data: Vec<u8> = (0..16 * P).map(|i| (i % 251) as u8).collect();
    k.vm_write(t, a, &data).unwrap();
    assert_eq!(k.vm_read(t, a, 16 * P).unwrap(), data);
    assert!(k.stats().resident <= 4);
}

// ----- message queues -----

/// A port's queue is bounded (`MACH_PORT_QLIMIT_DEFAULT`): a task's send to
/// a full queue is `MACH_SEND_TIMED_OUT` at once, changes nothing (the
/// rights it would carry stay), and `msg_send_timeout` waits for room; a
/// reply to a send-once right is never held back.
#[test]
fn a_full_queue_refuses_or_holds_back_its_senders() {
    use machvm_core::ipc::QLIMIT;
    let k = kernel();
    let (rcv, snd) = (task(&k), task(&k));
    let port = k.port_allocate(rcv).unwrap();
    let name = k.port_transfer(rcv, port, Disposition::MakeSend, snd).unwrap();
    for i in 0..QLIMIT {
        k.msg_send(snd, UserMessage::new(name, i as u32, vec![])).unwrap();
    }
    let carried = k.port_allocate(snd).unwrap();
    let msg = UserMessage { rights: vec![(carried, Disposition::MakeSend)], ..UserMessage::new(name, 99, vec![]) };
    assert_eq!(k.msg_send(snd, msg.clone()), Err(KernError::SendTimedOut));
    assert_eq!(k.port_lookup(snd, carried).unwrap().send_urefs, 0, "nothing moved");
    let started = std::time::Instant::now();
    assert_eq!(k.msg_send_timeout(snd, msg.clone(), Some(Duration::from_millis(50))), Err(KernError::SendTimedOut));
    assert!(started.elapsed() >= Duration::from_millis(50));
    // A sender waiting for room goes on when the receiver takes a message.
    let k2 = k.clone();
    let waiting = spawn(move || k2.msg_send_timeout(snd, msg, Some(WAIT)));
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(k.msg_receive(rcv, port, Some(WAIT)).unwrap().id, 0);
    assert_eq!(waiting.join().unwrap(), Ok(()));
    // A reply to a send-once right is never held back.
    let reply = k.port_allocate(snd).unwrap();
    let once = k.port_transfer(snd, reply, Disposition::MakeSendOnce, rcv).unwrap();
    for i in 0..QLIMIT {
        let _ = k.msg_send(
            rcv,
            UserMessage::new(k.port_transfer(snd, reply, Disposition::MakeSend, rcv).unwrap(), i as u32, vec![]),
        );
    }
    let answer = UserMessage { dest_disposition: Disposition::MoveSendOnce, ..UserMessage::new(once, 7, vec![]) };
    assert_eq!(k.msg_send(rcv, answer), Ok(()));
    // Without a thread: `msg_send_poll` is Pending on a full queue, and
    // woken when a message is received.
    {
        use machvm_core::wait::{Poll, ThreadWaker, Waker};
        let w = ThreadWaker::new();
        let waker: Arc<dyn Waker> = w.clone();
        let seen = w.generation();
        let m = UserMessage::new(name, 8, vec![]);
        assert!(matches!(k.msg_send_poll(snd, m.clone(), &waker), Ok(Poll::Pending(_))));
        k.msg_receive(rcv, port, Some(WAIT)).unwrap();
        assert_ne!(w.generation(), seen);
        assert_eq!(k.msg_send_poll(snd, m, &waker), Ok(Poll::Ready(())));
    }
    // A port that dies wakes a sender waiting for room.
    let k3 = k.clone();
    let blocked = spawn(move || k3.msg_send_timeout(snd, UserMessage::new(name, 5, vec![]), Some(WAIT)));
    std::thread::sleep(Duration::from_millis(30));
    k.port_destroy(rcv, port).unwrap();
    assert_eq!(blocked.join().unwrap(), Err(KernError::SendInvalidDest));
}

/// No task can exhaust the kernel for the others: past its limits (port
/// names it allocates, map entries, live proxies it made) a call fails
/// with `KERN_RESOURCE_SHORTAGE` and changes nothing, and another task is
/// not affected.
#[test]
fn a_task_over_its_limits_gets_resource_shortage_and_the_others_carry_on() {
    let limits = TaskLimits { port_names: 4, map_entries: 3, proxies: 2, ..TaskLimits::default() };
    let k = Kernel::new(KernelConfig { phys_pages: 64, resident_limit: 64, limits, ..KernelConfig::default() });
    let (greedy, other) = (task(&k), task(&k));
    for _ in 0..4 {
        k.port_allocate(greedy).unwrap();
    }
    assert_eq!(k.port_allocate(greedy), Err(KernError::ResourceShortage));
    assert_eq!(k.port_set_allocate(greedy), Err(KernError::ResourceShortage));
    assert!(k.port_allocate(other).is_ok());
    let a = alloc(&k, greedy, 4);
    k.vm_allocate(greedy, VmAddr(0), P, true).unwrap();
    // Splitting the 4-page entry in three would make four entries.
    assert_eq!(k.vm_protect(greedy, at(a, 1), P, false, RO), Err(KernError::ResourceShortage));
    assert_eq!(regions(&k, greedy).len(), 2, "nothing changed");
    k.vm_allocate(greedy, VmAddr(0), P, true).unwrap();
    assert_eq!(k.vm_allocate(greedy, VmAddr(0), P, true), Err(KernError::ResourceShortage));
    let mine = k.vm_allocate(other, VmAddr(0), P, true).unwrap();
    // Proxies: two live ones at most.
    let (_pager, _obj, names) = pager_object(&k, &[other]);
    let mk = || k.memory_object_create_proxy(other, RO, &[names[0]], &[0], &[0], &[P]);
    let first = mk().unwrap();
    mk().unwrap();
    assert_eq!(mk().map(|_| ()), Err(KernError::ResourceShortage));
    assert_eq!(k.vm_region_create_proxy(other, mine, RO, P).map(|_| ()), Err(KernError::ResourceShortage));
    // One gone (its rights dropped, nothing maps it): room for one more.
    k.port_deallocate(other, first.proxy).unwrap();
    k.port_deallocate(other, first.revoke).unwrap();
    assert!(mk().is_ok());
}

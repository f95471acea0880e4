//! A pmap that fails (`machvm_core::pmap`, "Failure"): the software MMU
//! told to refuse operations as a host short of resources would
//! (`SoftMachine::refuse`). A refused enter fails the fault with a Mach
//! error and the next fault maps the page; a refused lowering (a
//! `vm_protect`, a write-protect before a return or a copy-on-write
//! snapshot) is done by removing instead, so no store slips through; a
//! refused removal costs the address space, not the kernel.

mod common;
use common::{Host, Task};
use machvm_core::ipc::{Disposition, PortName};
use machvm_core::memory_object::emmi::KernelToPager;
use machvm_core::pmap::soft::{Refuse, SoftMachine};
use machvm_core::vm::paging::ReturnPolicy;
use machvm_core::*;
use std::sync::Arc;
use std::time::Duration;

type PagerConn = machvm_pagers::PagerConn<Task>;

const P: u64 = PAGE_SIZE;
const T: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(60);

fn host() -> (Host, Arc<SoftMachine>) {
    let m = Arc::new(SoftMachine::new(256));
    let config = KernelConfig { phys_pages: 256, resident_limit: 256, cluster_pages: 1, ..Default::default() };
    (Host::on_machine(config, m.clone()), m)
}

/// A client, a scripted pager whose object is ready with a page whose
/// first word is 0, the client's send right to the object, and a shared
/// mapping of its first page in the client.
fn with_pager(h: &Host) -> (Task, PagerConn, PortName, PortName, VmAddr) {
    let client = h.task();
    let mut pager = h.pager();
    let obj = pager.new_object().unwrap();
    let name = h.transfer(pager.link.id(), obj, Disposition::MakeSend, client.id()).unwrap();
    let a = client.vm_map(MapRequest::anywhere(P, Some(name))).unwrap();
    let init = pager.recv(Some(T)).unwrap();
    assert_eq!(init.msg, KernelToPager::Init { page_size: P });
    pager.ready(init.object).unwrap();
    pager.supply(obj, 0, &page(0)).unwrap();
    (client, pager, obj, name, a)
}

/// A page whose first word is `v`.
fn page(v: u64) -> Vec<u8> {
    let mut d = vec![0u8; P as usize];
    d[..8].copy_from_slice(&v.to_le_bytes());
    d
}

/// The next `data_return`'s first word.
fn returned(pager: &mut PagerConn) -> u64 {
    match pager.recv(Some(T)).unwrap().msg {
        KernelToPager::DataReturn { data, dirty: true, .. } => u64::from_le_bytes(data[..8].try_into().unwrap()),
        other => panic!("expected a dirty data_return, got {other:?}"),
    }
}

fn quiet(pager: &mut PagerConn) {
    match pager.recv(Some(QUIET)) {
        Err(KernError::RcvTimedOut) => {}
        other => panic!("expected no kernel message, got {other:?}"),
    }
}

fn failures(h: &Host) -> u64 {
    h.k.stats().vm.pmap_failures
}

#[test]
fn a_refused_enter_fails_the_fault_and_the_next_fault_maps_the_page() {
    let (h, m) = host();
    let t = h.task();
    let a = t.vm_allocate(VmAddr(0), P, true).unwrap();
    m.refuse(Refuse::Enter, 1);
    assert_eq!(t.write_u64(a, 7), Err(KernError::ResourceShortage));
    assert_eq!(failures(&h), 1);
    t.write_u64(a, 7).unwrap();
    assert_eq!(t.read_u64(a), Ok(7));
    // The page became resident once, on the refused fault.
    assert_eq!(h.k.stats().vm.zero_fills, 1);
}

#[test]
fn a_page_whose_enter_was_refused_stays_resident_and_is_not_asked_again() {
    let (h, m) = host();
    let (client, mut pager, _, _, a) = with_pager(&h);
    m.refuse(Refuse::Enter, 1);
    assert_eq!(client.read_u64(a), Err(KernError::ResourceShortage));
    assert_eq!(client.read_u64(a), Ok(0));
    quiet(&mut pager);
    assert_eq!(h.k.stats().sent("data_request"), 0);
}

#[test]
fn a_refused_vm_protect_removes_the_range_so_a_store_still_faults() {
    let (h, m) = host();
    let t = h.task();
    let a = t.vm_allocate(VmAddr(0), 2 * P, true).unwrap();
    t.write_u64(a, 1).unwrap();
    t.write_u64(VmAddr(a.0 + P), 2).unwrap();
    m.refuse(Refuse::Lower, 1);
    t.vm_protect(a, 2 * P, false, VmProt::READ).unwrap();
    assert_eq!(failures(&h), 1);
    // Left writable, the translations would take these stores.
    assert_eq!(t.write_u64(a, 9), Err(KernError::ProtectionFailure));
    assert_eq!(t.write_u64(VmAddr(a.0 + P), 9), Err(KernError::ProtectionFailure));
    assert_eq!((t.read_u64(a), t.read_u64(VmAddr(a.0 + P))), (Ok(1), Ok(2)));
}

#[test]
fn a_refused_write_protect_before_a_return_removes_the_page_and_no_store_is_lost() {
    let (h, m) = host();
    let (client, mut pager, obj, _, a) = with_pager(&h);
    client.write_u64(a, 1).unwrap();
    m.refuse(Refuse::Lower, 1);
    pager.lock_request(obj, 0, P, ReturnPolicy::Dirty, false, VmProt::NONE).unwrap();
    assert_eq!(returned(&mut pager), 1);
    assert_eq!(failures(&h), 1);
    // The page is clean now and mapped nowhere: the next store faults
    // (a store through a translation left writable could land between
    // the copy and the clearing of the modified bit, and be lost), marks
    // it dirty, and the next return carries it.
    let faults = h.k.stats().vm.faults;
    client.write_u64(a, 2).unwrap();
    assert_eq!(h.k.stats().vm.faults, faults + 1, "the store faulted");
    pager.lock_request(obj, 0, P, ReturnPolicy::Dirty, false, VmProt::NONE).unwrap();
    assert_eq!(returned(&mut pager), 2);
    quiet(&mut pager);
}

#[test]
fn a_refused_write_protect_for_a_copy_on_write_snapshot_still_pushes_the_old_page() {
    let (h, m) = host();
    let (client, mut pager, _, name, shared) = with_pager(&h);
    client.write_u64(shared, 1).unwrap();
    // The snapshot write-protects the original's pages: refused, so they
    // are removed from every mapping instead.
    m.refuse(Refuse::Lower, 1);
    let copy = client.vm_map(MapRequest::anywhere(P, Some(name)).copy(true)).unwrap();
    assert_eq!(failures(&h), 1);
    client.write_u64(shared, 2).unwrap();
    assert_eq!(client.read_u64(copy), Ok(1), "the copy keeps the data as of the copy");
    assert_eq!(client.read_u64(shared), Ok(2));
    assert_eq!(h.k.stats().vm.copy_pushes, 1);
    quiet(&mut pager);
}

#[test]
fn a_refused_removal_costs_the_address_space_not_the_kernel() {
    let (h, m) = host();
    let (t, other) = (h.task(), h.task());
    let a = t.vm_allocate(VmAddr(0), 2 * P, true).unwrap();
    let b = other.vm_allocate(VmAddr(0), P, true).unwrap();
    t.write_u64(a, 1).unwrap();
    t.write_u64(VmAddr(a.0 + P), 2).unwrap();
    other.write_u64(b, 3).unwrap();
    // The host takes the whole address space to remove one page of it.
    m.refuse(Refuse::Remove, 1);
    t.vm_deallocate(a, P).unwrap();
    assert_eq!(failures(&h), 1);
    assert_eq!(t.read_u64(VmAddr(a.0 + P)), Err(KernError::MemoryError));
    assert_eq!(t.read_u64(a), Err(KernError::InvalidAddress), "the range is gone from the map");
    // Nobody else is touched, and the task still terminates cleanly.
    assert_eq!(other.read_u64(b), Ok(3));
    t.terminate().unwrap();
    assert_eq!(other.read_u64(b), Ok(3));
}

//! The VM does not depend on exact referenced and modified bits
//! (`machvm_core::pmap`, "What a host may approximate"). Each rule of
//! pageout, per-task reclaim and `lock_request` runs on three software
//! MMUs (`SoftMachine::with_bits`): exact bits; a host that answers
//! "always referenced, always modified"; and one with no referenced bits
//! that learns of stores only from write-protect faults, lifting the
//! protection of a run of pages at a time. On each, no byte is ever lost,
//! every page written is returned with what was written, limits hold, and
//! the VM never clears a modified bit while a translation may still write
//! the page (`SoftMachine::breaches`).

mod common;
use common::workload::{scribble, verify};
use common::{Host, Task, TempFile};
use machvm_core::ipc::{Disposition, PortName};
use machvm_core::memory_object::emmi::KernelToPager;
use machvm_core::pmap::soft::{Bits, SoftMachine};
use machvm_core::vm::paging::ReturnPolicy;
use machvm_core::*;
use machvm_pagers::{boot_default_pager, MemBacking};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

type PagerConn = machvm_pagers::PagerConn<Task>;

const P: u64 = PAGE_SIZE;
const LIMIT: usize = 32;
const T: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(60);

/// Instantiates each rule (a `fn(Bits)`) on every kind of bits, in
/// modules `exact`, `always` and `write_faults`.
macro_rules! on_every_kind_of_bits {
    ($($rule:ident),* $(,)?) => {
        mod exact {
            $(#[test] fn $rule() { super::$rule(machvm_core::pmap::soft::Bits::Exact) })*
        }
        mod always {
            $(#[test] fn $rule() { super::$rule(machvm_core::pmap::soft::Bits::Always) })*
        }
        mod write_faults {
            $(#[test] fn $rule() { super::$rule(machvm_core::pmap::soft::Bits::WriteFaults) })*
        }
    };
}

on_every_kind_of_bits!(
    an_anonymous_working_set_eight_times_the_limit_keeps_every_byte,
    a_pagers_working_set_eight_times_the_limit_keeps_every_byte,
    a_task_over_its_own_limit_reclaims_its_own_pages_and_keeps_every_byte,
    lock_request_returns_every_page_written_with_what_was_written,
    a_flush_returns_what_was_written_and_the_next_fault_asks_again,
);

/// A kernel on a software MMU with `bits`, resident limit [`LIMIT`].
fn host(bits: Bits, limits: TaskLimits) -> (Host, Arc<SoftMachine>) {
    let m = Arc::new(SoftMachine::with_bits(4096, bits));
    let config =
        KernelConfig { phys_pages: 4096, resident_limit: LIMIT, cluster_pages: 1, limits, ..Default::default() };
    (Host::on_machine(config, m.clone()), m)
}

/// What every rule checks at the end: within the limit, and no modified
/// bit cleared under a writable translation; a write-fault machine took
/// its write faults.
#[track_caller]
fn assert_sound(h: &Host, m: &SoftMachine, bits: Bits) {
    let s = h.k.stats();
    assert!(s.resident <= s.resident_limit, "{} pages resident, limit {}", s.resident, s.resident_limit);
    assert_eq!(m.breaches(), 0, "clear_modify with a writable translation left");
    if bits == Bits::WriteFaults {
        assert!(m.write_faults() > 0, "the stores were learned from write faults");
    }
}

fn an_anonymous_working_set_eight_times_the_limit_keeps_every_byte(bits: Bits) {
    let (h, m) = host(bits, TaskLimits::default());
    let swap = TempFile::new("approximate-anon", &[]);
    let _dp = boot_default_pager(&h.k, swap.open()).unwrap();
    let t = h.task();
    let pages = 8 * LIMIT as u64;
    let base = t.vm_allocate(VmAddr(0), pages * P, true).unwrap();
    let model = scribble(&t, base, pages, 2 * pages, 0x5eed);
    verify(&t, base, pages, &model);
    assert!(h.k.stats().vm.pageouts >= pages - LIMIT as u64);
    assert_sound(&h, &m, bits);
}

fn a_pagers_working_set_eight_times_the_limit_keeps_every_byte(bits: Bits) {
    let (h, m) = host(bits, TaskLimits::default());
    let t = h.task();
    let mut conn = h.pager();
    let obj = conn.new_object().unwrap();
    let name = h.transfer(conn.link.id(), obj, Disposition::MakeSend, t.id()).unwrap();
    let _pager = h.run_pager(conn, MemBacking::default());
    let pages = 8 * LIMIT as u64;
    let base = t.vm_map(MapRequest::anywhere(pages * P, Some(name))).unwrap();
    let model = scribble(&t, base, pages, 2 * pages, 0xf11e);
    verify(&t, base, pages, &model);
    assert!(h.k.stats().sent("data_return") >= pages - LIMIT as u64);
    assert_sound(&h, &m, bits);
}

fn a_task_over_its_own_limit_reclaims_its_own_pages_and_keeps_every_byte(bits: Bits) {
    let own = LIMIT / 4;
    let (h, m) = host(bits, TaskLimits { resident_pages: own, ..TaskLimits::default() });
    let swap = TempFile::new("approximate-own", &[]);
    let _dp = boot_default_pager(&h.k, swap.open()).unwrap();
    let t = h.task();
    let pages = 4 * own as u64;
    let base = t.vm_allocate(VmAddr(0), pages * P, true).unwrap();
    let model = scribble(&t, base, pages, 2 * pages, 0x0a7e);
    verify(&t, base, pages, &model);
    let info = h.k.task_info(t.id()).unwrap();
    assert!(info.charged <= own, "{} pages charged, limit {own}", info.charged);
    assert!(h.k.stats().vm.task_reclaims >= pages - own as u64);
    assert_sound(&h, &m, bits);
}

/// A client, a scripted pager whose object is ready with `pages` pages
/// (page `i`'s first word `100 + i`), and the client's shared mapping of
/// them.
fn scripted(h: &Host, pages: u64) -> (Task, PagerConn, PortName, VmAddr) {
    let client = h.task();
    let mut pager = h.pager();
    let obj = pager.new_object().unwrap();
    let name = h.transfer(pager.link.id(), obj, Disposition::MakeSend, client.id()).unwrap();
    let a = client.vm_map(MapRequest::anywhere(pages * P, Some(name))).unwrap();
    let init = pager.recv(Some(T)).unwrap();
    assert_eq!(init.msg, KernelToPager::Init { page_size: P });
    pager.ready(init.object).unwrap();
    for i in 0..pages {
        let mut data = vec![0u8; P as usize];
        data[..8].copy_from_slice(&(100 + i).to_le_bytes());
        pager.supply(obj, i * P, &data).unwrap();
    }
    (client, pager, obj, a)
}

/// The `data_return`s the kernel sends until it is quiet: first word of
/// each returned page, by page.
fn returns(pager: &mut PagerConn) -> BTreeMap<u64, u64> {
    let mut got = BTreeMap::new();
    loop {
        match pager.recv(Some(QUIET)) {
            Ok(r) => match r.msg {
                KernelToPager::DataReturn { offset, data, .. } => {
                    got.insert(offset / P, u64::from_le_bytes(data[..8].try_into().unwrap()));
                }
                other => panic!("expected data_return, got {other:?}"),
            },
            Err(KernError::RcvTimedOut) => return got,
            Err(e) => panic!("{e:?}"),
        }
    }
}

/// Every page written is in `got` with the value written; any other page
/// returned (a conservative "modified") carries its current contents.
#[track_caller]
fn assert_returned(got: &BTreeMap<u64, u64>, written: &[(u64, u64)], current: impl Fn(u64) -> u64) {
    for &(page, v) in written {
        assert_eq!(got.get(&page), Some(&v), "page {page} was written and must come back");
    }
    for (&page, &v) in got {
        assert_eq!(v, current(page), "page {page} came back with data it never held");
    }
}

fn lock_request_returns_every_page_written_with_what_was_written(bits: Bits) {
    let (h, m) = host(bits, TaskLimits::default());
    let (client, mut pager, obj, a) = scripted(&h, 4);
    let mut now = [100, 101, 102, 103];
    for (page, v) in [(0, 7), (2, 9)] {
        client.write_u64(VmAddr(a.0 + page * P), v).unwrap();
        now[page as usize] = v;
    }
    pager.lock_request(obj, 0, 4 * P, ReturnPolicy::Dirty, false, VmProt::NONE).unwrap();
    assert_returned(&returns(&mut pager), &[(0, 7), (2, 9)], |p| now[p as usize]);
    // Written again after the clean: the next clean carries the new data.
    client.write_u64(VmAddr(a.0 + P), 8).unwrap();
    client.write_u64(VmAddr(a.0), 6).unwrap();
    (now[1], now[0]) = (8, 6);
    pager.lock_request(obj, 0, 4 * P, ReturnPolicy::Dirty, false, VmProt::NONE).unwrap();
    assert_returned(&returns(&mut pager), &[(0, 6), (1, 8)], |p| now[p as usize]);
    // The pages stayed resident, with their data.
    for (p, &v) in now.iter().enumerate() {
        assert_eq!(client.read_u64(VmAddr(a.0 + p as u64 * P)), Ok(v));
    }
    assert_eq!(h.k.stats().sent("data_request"), 0);
    assert_sound(&h, &m, bits);
}

fn a_flush_returns_what_was_written_and_the_next_fault_asks_again(bits: Bits) {
    let (h, m) = host(bits, TaskLimits::default());
    let (client, mut pager, obj, a) = scripted(&h, 2);
    client.write_u64(VmAddr(a.0 + P), 5).unwrap();
    pager.lock_request(obj, 0, 2 * P, ReturnPolicy::Dirty, true, VmProt::NONE).unwrap();
    let now = [100, 5];
    assert_returned(&returns(&mut pager), &[(1, 5)], |p| now[p as usize]);
    // Nothing is resident: a read asks the pager, which answers with what
    // it was given.
    let reader = std::thread::spawn(move || client.read_u64(VmAddr(a.0 + P)));
    let (o, off, len, _) = pager.expect_request(T).unwrap();
    assert_eq!((o, off, len), (obj, P, P));
    let mut data = vec![0u8; P as usize];
    data[..8].copy_from_slice(&5u64.to_le_bytes());
    pager.supply(obj, P, &data).unwrap();
    assert_eq!(reader.join().unwrap(), Ok(5));
    assert_sound(&h, &m, bits);
}

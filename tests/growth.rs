//! Growth: a call over a range, or on a page mapped many times, costs in
//! proportion to what it touches, not to everything else the task or the
//! page has. Each rule is checked at two sizes, n and 8n, by counting the
//! work the software MMU does (`SoftMachine::pte_visits`: page-table slots
//! examined; `SoftMachine::pv_visits`: reverse-map entries examined) rather
//! than by timing, so a noisy machine cannot fail or pass them.

mod common;

use common::*;
use machvm_core::pmap::soft::SoftMachine;
use machvm_core::*;
use std::sync::Arc;

/// Each rule runs at both sizes: a cost that grows with what the call does
/// not touch shows as an 8x larger count at the second.
const SIZES: [u64; 2] = [256, 2048];

/// A kernel on a software MMU whose counters the test reads, with one
/// pager-backed object.
fn world() -> (World, Arc<SoftMachine>) {
    let m = Arc::new(SoftMachine::new(config(ProxyVersion::Mapping).phys_pages));
    (World::on_machine(ProxyVersion::Mapping, 1, false, m.clone()), m)
}

/// What the MMU did while `f` ran: (translations visited, reverse-map
/// entries visited).
fn work(m: &SoftMachine, f: impl FnOnce()) -> (u64, u64) {
    let (pte, pv) = (m.pte_visits(), m.pv_visits());
    f();
    (m.pte_visits() - pte, m.pv_visits() - pv)
}

/// `n` resident pages of anonymous memory in one entry.
fn resident_pages(w: &World, task: TaskId, n: u64) -> VmAddr {
    let a = w.k.vm_allocate(task, VmAddr(0), n * P, true).unwrap();
    for i in 0..n {
        w.k.write_u64(task, a.plus(i * P), i).unwrap();
    }
    a
}

/// How many entries `vm_region` walks in the task.
fn entry_count(k: &Kernel, task: TaskId) -> u64 {
    let (mut n, mut at) = (0, VmAddr(0));
    while let Ok(r) = k.vm_region(task, at) {
        n += 1;
        at = VmAddr(r.start.0 + r.size);
    }
    n
}

#[test]
fn vm_protect_of_one_page_visits_one_translation_however_many_are_resident() {
    for n in SIZES {
        let (w, m) = world();
        let t = w.task();
        let a = resident_pages(&w, t, n);
        let (pte, _) = work(&m, || w.k.vm_protect(t, a.plus(7 * P), P, false, VmProt::READ).unwrap());
        assert_eq!(pte, 1, "{n} resident pages");
        assert_eq!(w.k.write_u64(t, a.plus(7 * P), 0), Err(KernError::ProtectionFailure));
        assert_eq!(w.k.write_u64(t, a.plus(8 * P), 0), Ok(()));
    }
}

#[test]
fn vm_protect_over_n_one_page_entries_visits_each_translation_once() {
    for n in SIZES {
        let (w, m) = world();
        let t = w.task();
        let a = resident_pages(&w, t, n);
        // Every other page read-only: n one-page entries.
        for i in (0..n).step_by(2) {
            w.k.vm_protect(t, a.plus(i * P), P, false, VmProt::READ).unwrap();
        }
        assert_eq!(entry_count(&w.k, t), n);
        let (pte, _) = work(&m, || w.k.vm_protect(t, a, n * P, false, VmProt::READ).unwrap());
        assert_eq!(pte, n, "{n} entries");
        let (pte, _) = work(&m, || w.k.vm_protect(t, a, n * P, true, VmProt::NONE).unwrap());
        assert_eq!(pte, n, "{n} entries, set_max to NONE");
        assert_eq!(w.k.read_u64(t, a.plus((n - 1) * P)), Err(KernError::ProtectionFailure));
    }
}

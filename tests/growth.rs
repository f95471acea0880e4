//! Growth: a call over a range, or on a page mapped many times, costs in
//! proportion to what it touches, not to everything else the task or the
//! page has. Each rule is checked at two sizes, n and 8n, by counting the
//! work the software MMU does (`SoftMachine::pte_visits`: page-table slots
//! examined; `SoftMachine::pv_visits`: reverse-map entries examined), and
//! the candidates a task's own reclaim looks at under its resident limit
//! (`VmStats::task_reclaim_visits`), rather than by timing, so a noisy
//! machine cannot fail or pass them.

mod common;

use common::*;
use machvm_core::pmap::soft::SoftMachine;
use machvm_core::pmap::PageStore;
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
fn resident_pages(task: &Task, n: u64) -> VmAddr {
    let a = task.vm_allocate(VmAddr(0), n * P, true).unwrap();
    for i in 0..n {
        task.write_u64(a.plus(i * P), i).unwrap();
    }
    a
}

/// How many entries `vm_region` walks in the task.
fn entry_count(task: &Task) -> u64 {
    let (mut n, mut at) = (0, VmAddr(0));
    while let Ok(r) = task.vm_region(at) {
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
        let a = resident_pages(&t, n);
        let (pte, _) = work(&m, || t.vm_protect(a.plus(7 * P), P, false, VmProt::READ).unwrap());
        assert_eq!(pte, 1, "{n} resident pages");
        assert_eq!(t.write_u64(a.plus(7 * P), 0), Err(KernError::ProtectionFailure));
        assert_eq!(t.write_u64(a.plus(8 * P), 0), Ok(()));
    }
}

#[test]
fn vm_protect_over_n_one_page_entries_visits_each_translation_once() {
    for n in SIZES {
        let (w, m) = world();
        let t = w.task();
        let a = resident_pages(&t, n);
        // Every other page read-only: n one-page entries.
        for i in (0..n).step_by(2) {
            t.vm_protect(a.plus(i * P), P, false, VmProt::READ).unwrap();
        }
        assert_eq!(entry_count(&t), n);
        let (pte, _) = work(&m, || t.vm_protect(a, n * P, false, VmProt::READ).unwrap());
        assert_eq!(pte, n, "{n} entries");
        let (pte, _) = work(&m, || t.vm_protect(a, n * P, true, VmProt::NONE).unwrap());
        assert_eq!(pte, n, "{n} entries, set_max to NONE");
        assert_eq!(t.read_u64(a.plus((n - 1) * P)), Err(KernError::ProtectionFailure));
    }
}

/// A task mapping page 0 of the world's object `n` times (one entry each),
/// every mapping touched: one frame with `n` translations.
fn one_page_mapped(w: &World, n: u64) -> (Task, Vec<VmAddr>) {
    let t = w.task();
    let name = w.give(w.objs[0], &t);
    let addrs: Vec<VmAddr> = (0..n).map(|_| w.map(&t, name, 0, P).unwrap()).collect();
    for &a in &addrs {
        t.read_u64(a).unwrap();
    }
    assert_eq!(w.k.stats().resident, 1);
    (t, addrs)
}

#[test]
fn vm_deallocate_of_one_of_n_mappings_of_a_page_is_constant_work() {
    for n in SIZES {
        let (w, m) = world();
        let (t, addrs) = one_page_mapped(&w, n);
        let (pte, pv) = work(&m, || t.vm_deallocate(addrs[n as usize / 2], P).unwrap());
        assert_eq!((pte, pv), (1, 1), "page mapped {n} times");
        // The rest, one call each: n - 1 of the same.
        let (pte, pv) = work(&m, || {
            for (i, &a) in addrs.iter().enumerate() {
                if i != n as usize / 2 {
                    t.vm_deallocate(a, P).unwrap();
                }
            }
        });
        assert_eq!((pte, pv), (n - 1, n - 1), "page mapped {n} times");
    }
}

#[test]
fn vm_deallocate_of_every_mapping_of_a_page_at_once_is_linear() {
    for n in SIZES {
        let (w, m) = world();
        let (t, addrs) = one_page_mapped(&w, n);
        let (lo, hi) = (addrs.iter().min().unwrap().0, addrs.iter().max().unwrap().0 + P);
        let (pte, pv) = work(&m, || t.vm_deallocate(VmAddr(lo), hi - lo).unwrap());
        assert!(pte <= hi.saturating_sub(lo) / P, "{pte} slots for {n} mappings");
        assert_eq!(pv, n, "page mapped {n} times");
    }
}

#[test]
fn task_terminate_with_a_page_mapped_n_times_is_linear() {
    for n in SIZES {
        let (w, m) = world();
        let (t, _) = one_page_mapped(&w, n);
        let (pte, pv) = work(&m, || t.terminate().unwrap());
        // Each translation is removed once, by whichever of object
        // termination and `pmap_destroy` comes first.
        assert!(pte <= 2 * n && pv <= 2 * n, "page mapped {n} times: {pte} slots, {pv} reverse-map entries");
    }
}

#[test]
fn pageout_of_a_page_mapped_n_times_is_linear() {
    for n in SIZES {
        let (w, m) = world();
        let (t, addrs) = one_page_mapped(&w, n);
        // Two more pages, touched after it: the page mapped n times is the
        // oldest, and goes first.
        let more = w.map(&t, w.give(w.objs[0], &t), P, 2 * P).unwrap();
        t.read_u64(more).unwrap();
        t.read_u64(more.plus(P)).unwrap();
        let pageouts = w.k.stats().vm.pageouts;
        let (pte, pv) = work(&m, || w.k.set_resident_limit(2));
        assert_eq!(w.k.stats().vm.pageouts, pageouts + 1);
        assert!(pte <= n + 2 && pv <= n + 2, "page mapped {n} times: {pte} slots, {pv} reverse-map entries");
        // Every mapping lost its translation: the next read faults.
        let faults = w.k.stats().vm.faults;
        t.read_u64(addrs[0]).unwrap();
        assert!(w.k.stats().vm.faults > faults);
    }
}

/// A kernel on a counting MMU where each task may keep `limit` pages
/// resident (the kernel's own limit is far above), with a default pager
/// if `swap` is given.
fn limited(
    limit: usize,
    swap: Option<&TempFile>,
) -> (Arc<Kernel>, Arc<SoftMachine>, Option<machvm_pagers::RunningPager>) {
    let m = Arc::new(SoftMachine::new(8 * 2048 + 64));
    let limits = TaskLimits { resident_pages: limit, ..TaskLimits::default() };
    let c = KernelConfig {
        phys_pages: m.capacity(),
        resident_limit: m.capacity(),
        cluster_pages: 1,
        limits,
        ..KernelConfig::default()
    };
    let k = Kernel::with_machine(c, m.clone());
    let dp = swap.map(|f| machvm_pagers::boot_default_pager(&k, f.open()).unwrap());
    (k, m, dp)
}

#[test]
fn a_fault_past_the_task_limit_reclaims_in_constant_work_however_large_the_limit() {
    for n in SIZES {
        let swap = TempFile::new("growth-limit", &[]);
        let (k, m, dp) = limited(n as usize, Some(&swap));
        let t = k.task_create(None).unwrap();
        // A working set of four times the limit, written through twice.
        let a = k.vm_allocate(t, VmAddr(0), 4 * n * P, true).unwrap();
        let (faults, visits) = (k.stats().vm.faults, k.stats().vm.task_reclaim_visits);
        let (pte, pv) = work(&m, || {
            for round in 0..2 {
                for i in 0..4 * n {
                    k.write_u64(t, a.plus(i * P), round ^ i).unwrap();
                }
            }
        });
        let s = k.stats();
        let (faults, visits) = (s.vm.faults - faults, s.vm.task_reclaim_visits - visits);
        assert!(s.vm.task_reclaims >= 7 * n, "limit {n}: {} pages reclaimed", s.vm.task_reclaims);
        assert!(k.task_info(t).unwrap().charged <= n as usize);
        // Per fault: a bounded number of candidates and MMU slots, the
        // same at both limits.
        assert!(visits <= 3 * faults, "limit {n}: {visits} candidates for {faults} faults");
        assert!(pte + pv <= 8 * faults, "limit {n}: {pte} slots, {pv} reverse-map entries for {faults} faults");
        dp.unwrap().stop();
    }
}

#[test]
fn pageout_at_the_kernels_limit_looks_at_few_pages_even_when_every_page_seems_referenced() {
    // A machine with no referenced bits (a host's: every page always
    // referenced) must not make each pageout go round the whole queue.
    for n in SIZES {
        let swap = TempFile::new("growth-pageout", &[]);
        let m = Arc::new(SoftMachine::with_bits(4 * n as usize + 64, machvm_core::pmap::soft::Bits::Always));
        let c = KernelConfig {
            phys_pages: m.capacity(),
            resident_limit: n as usize,
            cluster_pages: 1,
            ..KernelConfig::default()
        };
        let k = Kernel::with_machine(c, m.clone());
        let dp = machvm_pagers::boot_default_pager(&k, swap.open()).unwrap();
        let t = k.task_create(None).unwrap();
        let a = k.vm_allocate(t, VmAddr(0), 4 * n * P, true).unwrap();
        let (visits, reclaimed) = (k.stats().vm.pageout_visits, k.stats().vm.pages_reclaimed);
        for i in 0..4 * n {
            k.write_u64(t, a.plus(i * P), i).unwrap();
        }
        let s = k.stats();
        let (visits, reclaimed) = (s.vm.pageout_visits - visits, s.vm.pages_reclaimed - reclaimed);
        assert!(reclaimed >= 2 * n, "size {n}: {reclaimed} pages reclaimed");
        assert!(visits <= 3 * reclaimed + 16, "size {n}: {visits} candidates for {reclaimed} pages reclaimed");
        for i in 0..4 * n {
            assert_eq!(k.read_u64(t, a.plus(i * P)), Ok(i), "size {n}: page {i}");
        }
        dp.stop();
    }
}

#[test]
fn faults_refused_at_the_task_limit_do_not_look_at_its_pages_again() {
    for n in SIZES {
        // No default pager: the task's dirty anonymous pages can go nowhere.
        let (k, _m, _) = limited(n as usize, None);
        let t = k.task_create(None).unwrap();
        let a = resident_pages_of(&k, t, n + 1);
        let visits = k.stats().vm.task_reclaim_visits;
        for _ in 0..1000 {
            assert_eq!(k.write_u64(t, a.plus(n * P), 1), Err(KernError::ResourceShortage));
        }
        let visits = k.stats().vm.task_reclaim_visits - visits;
        // The first refusal looks at each page (twice: once to clear its
        // referenced bit); the others at none.
        assert!(visits <= 2 * n + 1000, "limit {n}: {visits} candidates for 1000 refused faults");
    }
}

/// `n` pages of anonymous memory in one entry, all but the last written.
fn resident_pages_of(k: &Kernel, task: TaskId, n: u64) -> VmAddr {
    let a = k.vm_allocate(task, VmAddr(0), n * P, true).unwrap();
    for i in 0..n - 1 {
        k.write_u64(task, a.plus(i * P), i).unwrap();
    }
    a
}

//! Memory pressure: working sets far larger than the resident limit, paged
//! through the default pager's swap file and through a file pager. Dirty
//! pages go back to their pagers before their frames are reused, so no
//! byte is ever lost, and residency never exceeds the limit.
//!
//! The same under a task's own limit (`TaskLimits::resident_pages`): a
//! task over it reclaims its own pages and no one else's, keeps every byte,
//! and is refused (`KERN_RESOURCE_SHORTAGE`, nothing changed) only when it
//! has nothing left to reclaim; its charge goes with the pages.

mod common;
use common::{join, TempFile, Transport, World};
use machvm_core::vm::paging::ReturnPolicy;
use machvm_core::*;
use machvm_pagers::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reads a word on another thread of `task` (one that may wait for a
/// pager).
fn read_on_thread(k: &Arc<Kernel>, task: TaskId, at: VmAddr) -> std::thread::JoinHandle<Result<u64>> {
    let k = k.clone();
    std::thread::spawn(move || k.read_u64(task, at))
}

const P: u64 = PAGE_SIZE;
const LIMIT: usize = 64;
const WORDS: u64 = P / 8;

fn kernel() -> Arc<Kernel> {
    Kernel::new(KernelConfig { phys_pages: 4096, resident_limit: LIMIT, cluster_pages: 1, ..Default::default() })
}

/// xorshift64*: a small seeded generator, the same sequence every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// FNV-1a over a page.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

fn words_to_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn assert_within_limit(k: &Kernel) {
    let s = k.stats();
    assert!(s.resident <= s.resident_limit, "{} pages resident, limit {}", s.resident, s.resident_limit);
    assert!(s.charged <= s.resident, "{} pages charged, {} resident", s.charged, s.resident);
}

/// The task's charge is within its own limit.
#[track_caller]
fn assert_task_within_limit(k: &Kernel, task: TaskId) {
    let i = k.task_info(task).unwrap();
    assert!(i.charged <= i.resident_limit, "{} pages charged to the task, its limit {}", i.charged, i.resident_limit);
}

/// Writes random words all over `pages` pages at `base` of `task`, keeping
/// a model of every page; returns the model.
fn scribble(k: &Kernel, task: TaskId, base: VmAddr, pages: u64, writes: u64, seed: u64) -> Vec<Vec<u64>> {
    let mut model = vec![vec![0u64; WORDS as usize]; pages as usize];
    // Every page is touched once, so the whole working set is dirty ...
    for (p, page) in model.iter_mut().enumerate() {
        page[0] = seed ^ p as u64;
        k.write_u64(task, VmAddr(base.0 + p as u64 * P), page[0]).unwrap();
    }
    // ... then written at random, mostly to pages long since paged out.
    let mut rng = Rng(seed);
    for i in 0..writes {
        let (p, w, v) = (rng.below(pages), rng.below(WORDS), rng.next());
        model[p as usize][w as usize] = v;
        k.write_u64(task, VmAddr(base.0 + p * P + w * 8), v).unwrap();
        if i % 256 == 0 {
            assert_within_limit(k);
            assert_task_within_limit(k, task);
        }
    }
    model
}

/// Reads every page back and compares its checksum with the model's.
fn verify(k: &Kernel, task: TaskId, base: VmAddr, model: &[Vec<u64>]) {
    let mut buf = vec![0u8; P as usize];
    for (p, page) in model.iter().enumerate() {
        k.read(task, VmAddr(base.0 + p as u64 * P), &mut buf).unwrap();
        let want = words_to_bytes(page);
        assert_eq!(checksum(&buf), checksum(&want), "page {p} lost data");
        assert!(buf == want, "page {p} differs");
    }
}

fn swap(tag: &str) -> (TempFile, std::fs::File) {
    let f = TempFile::new(tag, &[]);
    let file = f.open();
    (f, file)
}

#[test]
fn anonymous_working_set_twenty_times_the_limit_keeps_every_byte() {
    let pages = 20 * LIMIT as u64;
    let k = kernel();
    let (_swapfile, file) = swap("anon");
    let dp = boot_default_pager(&k, file).unwrap();
    let t = k.task_create(None).unwrap();
    let base = k.vm_allocate(t, VmAddr(0), pages * P, true).unwrap();
    let model = scribble(&k, t, base, pages, 4 * pages, 0x9e37_79b9_7f4a_7c15);
    verify(&k, t, base, &model);
    assert_within_limit(&k);
    let s = k.stats();
    assert!(s.vm.pageouts >= pages - LIMIT as u64, "{} pageouts", s.vm.pageouts);
    assert_eq!(s.sent("create"), 1, "one default-pager object for one anonymous object");
    assert!(s.sent("data_return") >= pages - LIMIT as u64);
    assert!(s.sent("data_request") > 0);
    assert_eq!(s.received("data_error"), 0);
    assert!(PagerStats::get(&dp.stats.pages_returned) > 0);
    dp.stop();
}

#[test]
fn copy_on_write_under_pressure_keeps_parent_and_child_apart() {
    let pages = 8 * LIMIT as u64;
    let k = kernel();
    let (_swapfile, file) = swap("cow");
    let dp = boot_default_pager(&k, file).unwrap();
    let parent = k.task_create(None).unwrap();
    let base = k.vm_allocate(parent, VmAddr(0), pages * P, true).unwrap();
    let before = scribble(&k, parent, base, pages, pages, 1);
    // The child gets a copy-on-write snapshot; both then write on.
    let child = k.task_create(Some(parent)).unwrap();
    let mut rng = Rng(2);
    let mut parent_model = before.clone();
    let mut child_model = before.clone();
    for _ in 0..2 * pages {
        let (p, w, v) = (rng.below(pages), rng.below(WORDS), rng.next());
        let (task, model) = if v & 1 == 0 { (parent, &mut parent_model) } else { (child, &mut child_model) };
        model[p as usize][w as usize] = v;
        k.write_u64(task, VmAddr(base.0 + p * P + w * 8), v).unwrap();
    }
    assert_within_limit(&k);
    verify(&k, child, base, &child_model);
    verify(&k, parent, base, &parent_model);
    assert_within_limit(&k);
    assert!(k.stats().vm.pageouts > 0);
    dp.stop();
}

#[test]
fn a_file_under_pressure_gets_its_dirty_pages_back_before_they_are_reclaimed() {
    let pages = 3 * LIMIT as u64;
    let original: Vec<u8> = (0..pages * P).map(|i| (i % 251) as u8).collect();
    let file = TempFile::new("file", &original);
    let k = kernel();
    let client = k.task_create(None).unwrap();
    let mut conn = PagerConn::new(k.clone()).unwrap();
    let obj = conn.new_object().unwrap();
    let name = conn.give(obj, client).unwrap();
    let mut backing = FileBacking::new(1);
    backing.add(obj, file.open()).unwrap();
    let pager = RunningPager::spawn(conn, backing);
    let base = k.vm_map(client, MapRequest::anywhere(pages * P, Some(name))).unwrap();

    // Stamp every page, twice over, so each is written after being re-read.
    let stamp = |p: u64, round: u64| 0x5354_414d_0000_0000 | (round << 16) | p;
    for round in 0..2 {
        for p in 0..pages {
            k.write_u64(client, VmAddr(base.0 + p * P + 64), stamp(p, round)).unwrap();
            if p % 16 == 0 {
                assert_within_limit(&k);
            }
        }
    }
    // Everything reads back: stamped word from the last round, the rest
    // as the file had it.
    let mut buf = vec![0u8; P as usize];
    for p in 0..pages {
        k.read(client, VmAddr(base.0 + p * P), &mut buf).unwrap();
        let mut want = original[(p * P) as usize..((p + 1) * P) as usize].to_vec();
        want[64..72].copy_from_slice(&stamp(p, 1).to_le_bytes());
        assert!(buf == want, "page {p} differs after paging through the file");
    }
    assert_within_limit(&k);
    let s = k.stats();
    assert!(s.vm.pageouts > 0);
    assert!(s.sent("data_return") >= pages, "{} returns for {pages} pages written twice", s.sent("data_return"));
    // The file pager wrote what came back: every page not resident now has
    // its stamp on disk.
    let returned = k.stats().vm.pages_returned;
    let deadline = Instant::now() + Duration::from_secs(5);
    while PagerStats::get(&pager.stats.pages_returned) < returned && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    pager.stop();
    let disk = file.contents();
    assert_eq!(disk.len(), original.len());
    let stamped = (0..pages)
        .filter(|&p| {
            let at = (p * P + 64) as usize;
            let w = u64::from_le_bytes(disk[at..at + 8].try_into().unwrap());
            w == stamp(p, 0) || w == stamp(p, 1)
        })
        .count();
    assert!(stamped + LIMIT >= pages as usize, "only {stamped} of {pages} pages reached the file");
}

/// Dirty pages of an object whose pager died cannot be given back: pageout
/// keeps them resident rather than throw the data away, so what tasks wrote
/// stays readable however much memory pressure follows.
/// Clean pages of an object whose pager died are the only copy left too:
/// pageout keeps them, so what a task could read before the death it can
/// still read after it, under any pressure (only pages never brought in
/// fail, with `KERN_MEMORY_ERROR`).
#[test]
fn pageout_keeps_clean_pages_whose_pager_died() {
    let k = kernel();
    let (_swap_file, swap_handle) = swap("dead-pager-clean");
    let _dp = boot_default_pager(&k, swap_handle).unwrap();
    let t = k.task_create(None).unwrap();
    let mut pager = PagerConn::new(k.clone()).unwrap();
    let obj = pager.new_object().unwrap();
    let name = pager.give(obj, t).unwrap();
    let a = k.vm_map(t, MapRequest::anywhere(5 * P, Some(name))).unwrap();
    let k2 = k.clone();
    let reader = std::thread::spawn(move || (0..4).map(|i| k2.read_u64(t, VmAddr(a.0 + i * P))).collect::<Vec<_>>());
    let mut served = 0;
    while served < 4 * P {
        let (o, off, len, _) = pager.expect_request(Duration::from_secs(5)).unwrap();
        let data: Vec<u8> =
            (off..off + len).step_by(P as usize).flat_map(|p| vec![(p / P) as u8 + 1; P as usize]).collect();
        pager.supply(o, off, &data).unwrap();
        served = served.max(off + len);
    }
    assert!(reader.join().unwrap().iter().all(|r| r.is_ok()));
    pager.die().unwrap();
    let anon = k.vm_allocate(t, VmAddr(0), 4 * LIMIT as u64 * P, true).unwrap();
    for i in 0..4 * LIMIT as u64 {
        k.write_u64(t, VmAddr(anon.0 + i * P), i).unwrap();
    }
    assert!(k.stats().vm.pageouts > 0);
    for i in 0..4 {
        let want = u64::from_le_bytes([i as u8 + 1; 8]);
        assert_eq!(k.read_u64(t, VmAddr(a.0 + i * P)), Ok(want), "page {i}");
    }
    assert_eq!(k.read_u64(t, VmAddr(a.0 + 4 * P)), Err(KernError::MemoryError), "never brought in");
}

#[test]
fn pageout_keeps_dirty_pages_whose_pager_died() {
    let k = kernel();
    let (_swap_file, swap_handle) = swap("dead-pager");
    let _dp = boot_default_pager(&k, swap_handle).unwrap();
    let t = k.task_create(None).unwrap();
    let mut pager = PagerConn::new(k.clone()).unwrap();
    let obj = pager.new_object().unwrap();
    let name = pager.give(obj, t).unwrap();
    let a = k.vm_map(t, MapRequest::anywhere(4 * P, Some(name))).unwrap();
    let k2 = k.clone();
    let writer = std::thread::spawn(move || (0..4).try_for_each(|i| k2.write_u64(t, VmAddr(a.0 + i * P), 100 + i)));
    for _ in 0..4 {
        let (o, off, len, _) = pager.expect_request(Duration::from_secs(5)).unwrap();
        pager.supply(o, off, &vec![0u8; len as usize]).unwrap();
        if off + len >= 4 * P {
            break;
        }
    }
    writer.join().unwrap().unwrap();
    pager.die().unwrap();
    // Pressure: far more anonymous memory than the limit.
    let anon = k.vm_allocate(t, VmAddr(0), 4 * LIMIT as u64 * P, true).unwrap();
    for i in 0..4 * LIMIT as u64 {
        k.write_u64(t, VmAddr(anon.0 + i * P), i).unwrap();
    }
    for i in 0..4 {
        assert_eq!(k.read_u64(t, VmAddr(a.0 + i * P)), Ok(100 + i), "page {i}");
    }
    assert!(k.stats().vm.pageouts > 0);
}

// ----- A task's own resident limit -----

/// Pages one task may keep resident in the tests below.
const TASK_LIMIT: usize = 16;

/// A kernel whose own limit is far above what the tests use: only the
/// tasks' limits make pages go.
fn limited(task_limit: usize) -> Arc<Kernel> {
    let limits = TaskLimits { resident_pages: task_limit, ..TaskLimits::default() };
    Kernel::new(KernelConfig { phys_pages: 4096, resident_limit: 4096, cluster_pages: 1, limits, ..Default::default() })
}

fn charged(k: &Kernel, task: TaskId) -> usize {
    k.task_info(task).unwrap().charged
}

/// The VM object behind the entry at `addr` of `task`, as `objects_info`
/// lists it.
fn object_at(k: &Kernel, task: TaskId, addr: VmAddr) -> ObjectInfo {
    let e = k.vm_map_info(task).unwrap().into_iter().find(|e| e.start.0 <= addr.0 && addr.0 < e.end.0).unwrap();
    let id = e.object.expect("touched");
    k.objects_info().into_iter().find(|o| o.id == id).unwrap()
}

#[test]
fn a_task_over_its_limit_reclaims_its_own_pages_and_no_one_elses() {
    let k = limited(TASK_LIMIT);
    let (_swapfile, file) = swap("own");
    let dp = boot_default_pager(&k, file).unwrap();
    // A quiet task keeps its limit's worth of dirty pages resident.
    let quiet = k.task_create(None).unwrap();
    let q = k.vm_allocate(quiet, VmAddr(0), TASK_LIMIT as u64 * P, true).unwrap();
    for i in 0..TASK_LIMIT as u64 {
        k.write_u64(quiet, VmAddr(q.0 + i * P), 0x5155_0000 | i).unwrap();
    }
    assert_eq!(charged(&k, quiet), TASK_LIMIT);
    // A busy one writes eight times its limit, twice over.
    let busy = k.task_create(None).unwrap();
    let pages = 8 * TASK_LIMIT as u64;
    let b = k.vm_allocate(busy, VmAddr(0), pages * P, true).unwrap();
    for round in 0..2 {
        for i in 0..pages {
            k.write_u64(busy, VmAddr(b.0 + i * P), (round << 32) | i).unwrap();
            assert_task_within_limit(&k, busy);
        }
    }
    let s = k.stats();
    assert!(s.vm.task_reclaims >= 2 * pages - TASK_LIMIT as u64, "{} pages reclaimed", s.vm.task_reclaims);
    assert_eq!(charged(&k, busy), TASK_LIMIT);
    assert_eq!(object_at(&k, busy, b).pager.map(|p| p.default_pager), Some(true), "busy pages went to swap");
    // The quiet task's pages were never touched: still charged to it, all
    // resident, never handed to the default pager, and still mapped (its
    // reads fault nowhere).
    assert_eq!(charged(&k, quiet), TASK_LIMIT);
    let qo = object_at(&k, quiet, q);
    assert_eq!((qo.resident, qo.pager.is_none()), (TASK_LIMIT, true), "{qo:?}");
    let faults = k.stats().vm.faults;
    for i in 0..TASK_LIMIT as u64 {
        assert_eq!(k.read_u64(quiet, VmAddr(q.0 + i * P)), Ok(0x5155_0000 | i));
    }
    assert_eq!(k.stats().vm.faults, faults, "the quiet task's translations are intact");
    // And the busy task got every page back.
    for i in 0..pages {
        assert_eq!(k.read_u64(busy, VmAddr(b.0 + i * P)), Ok((1 << 32) | i), "page {i}");
        assert_task_within_limit(&k, busy);
    }
    assert_eq!(k.stats().received("data_error"), 0);
    dp.stop();
}

#[test]
fn anonymous_working_set_ten_times_a_tasks_limit_keeps_every_checksum() {
    let pages = 10 * TASK_LIMIT as u64;
    let k = limited(TASK_LIMIT);
    let (_swapfile, file) = swap("task-anon");
    let dp = boot_default_pager(&k, file).unwrap();
    let t = k.task_create(None).unwrap();
    let base = k.vm_allocate(t, VmAddr(0), pages * P, true).unwrap();
    let model = scribble(&k, t, base, pages, 8 * pages, 0x243f_6a88_85a3_08d3);
    verify(&k, t, base, &model);
    assert_task_within_limit(&k, t);
    let s = k.stats();
    assert!(s.vm.task_reclaims >= pages - TASK_LIMIT as u64, "{} pages reclaimed", s.vm.task_reclaims);
    assert!(s.sent("data_return") >= pages - TASK_LIMIT as u64, "dirty pages went to the default pager");
    assert!(s.sent("data_request") >= pages - TASK_LIMIT as u64, "and came back from it");
    assert!(s.resident <= TASK_LIMIT + 1, "{} resident: only the task's limit's worth", s.resident);
    assert_eq!(s.received("data_error"), 0);
    dp.stop();
}

#[test]
fn a_file_working_set_ten_times_a_tasks_limit_keeps_every_checksum() {
    let pages = 10 * TASK_LIMIT as u64;
    let original: Vec<u8> = (0..pages * P).map(|i| (i % 241) as u8).collect();
    let file = TempFile::new("task-file", &original);
    let k = limited(TASK_LIMIT);
    let client = k.task_create(None).unwrap();
    let mut conn = PagerConn::new(k.clone()).unwrap();
    let obj = conn.new_object().unwrap();
    let name = conn.give(obj, client).unwrap();
    let mut backing = FileBacking::new(1);
    backing.add(obj, file.open()).unwrap();
    let pager = RunningPager::spawn(conn, backing);
    let base = k.vm_map(client, MapRequest::anywhere(pages * P, Some(name))).unwrap();
    // The model starts as the file; random stores all over it.
    let mut model: Vec<Vec<u64>> = original
        .chunks(P as usize)
        .map(|page| page.chunks(8).map(|w| u64::from_le_bytes(w.try_into().unwrap())).collect())
        .collect();
    let mut rng = Rng(0x1319_8a2e_0370_7344);
    for i in 0..8 * pages {
        let (p, w, v) = (rng.below(pages), rng.below(WORDS), rng.next());
        model[p as usize][w as usize] = v;
        k.write_u64(client, VmAddr(base.0 + p * P + w * 8), v).unwrap();
        if i % 64 == 0 {
            assert_task_within_limit(&k, client);
        }
    }
    verify(&k, client, base, &model);
    let s = k.stats();
    assert!(s.vm.task_reclaims > 0 && s.sent("data_return") > 0, "dirty pages went back to the file pager");
    assert_eq!(s.received("data_error"), 0);
    pager.stop();
}

#[test]
fn a_task_at_its_limit_with_nothing_reclaimable_is_refused_and_nothing_changes() {
    // No default pager: dirty anonymous pages have nowhere to go.
    let k = limited(TASK_LIMIT);
    let t = k.task_create(None).unwrap();
    let a = k.vm_allocate(t, VmAddr(0), 2 * TASK_LIMIT as u64 * P, true).unwrap();
    let at = |i: u64| VmAddr(a.0 + i * P);
    for i in 0..TASK_LIMIT as u64 {
        k.write_u64(t, at(i), 100 + i).unwrap();
    }
    let (before, info) = (k.stats(), k.task_info(t).unwrap());
    assert_eq!(info.charged, TASK_LIMIT);
    let next = TASK_LIMIT as u64;
    assert_eq!(k.write_u64(t, at(next), 7), Err(KernError::ResourceShortage));
    assert_eq!(k.read_u64(t, at(next)), Err(KernError::ResourceShortage), "a read needs a new page too");
    // All or nothing: a vm_write over the last page and the next stores nothing.
    let data = vec![0xeeu8; 2 * P as usize];
    assert_eq!(k.vm_write(t, at(next - 1), &data), Err(KernError::ResourceShortage));
    let after = k.stats();
    assert_eq!(k.task_info(t).unwrap(), info);
    assert_eq!(
        (after.resident, after.charged, after.vm.zero_fills),
        (before.resident, before.charged, before.vm.zero_fills)
    );
    assert_eq!((after.vm.pageouts, after.sent("data_return")), (before.vm.pageouts, 0));
    for i in 0..TASK_LIMIT as u64 {
        assert_eq!(k.read_u64(t, at(i)), Ok(100 + i), "page {i}");
    }
    // Another task carries on, and the refused one's pages stay its own.
    let other = k.task_create(None).unwrap();
    let o = k.vm_allocate(other, VmAddr(0), TASK_LIMIT as u64 * P, true).unwrap();
    for i in 0..TASK_LIMIT as u64 {
        k.write_u64(other, VmAddr(o.0 + i * P), i).unwrap();
    }
    assert_eq!((charged(&k, t), charged(&k, other)), (TASK_LIMIT, TASK_LIMIT));
    // Once a default pager can take its dirty pages, the same fault works.
    let (_swapfile, file) = swap("refused");
    let dp = boot_default_pager(&k, file).unwrap();
    k.write_u64(t, at(next), 7).unwrap();
    assert_task_within_limit(&k, t);
    assert_eq!(k.read_u64(t, at(next)), Ok(7));
    for i in 0..TASK_LIMIT as u64 {
        assert_eq!(k.read_u64(t, at(i)), Ok(100 + i), "page {i}, back from swap");
    }
    assert_eq!(charged(&k, other), TASK_LIMIT);
    dp.stop();
}

/// Faults of one task at its limit, made by several threads while its
/// pages are on their way from a slow pager, wait for them rather than
/// fail: only when nothing can ever be reclaimed is a fault refused.
#[test]
fn faults_at_the_limit_wait_for_pages_on_their_way() {
    let k = limited(2);
    let t = k.task_create(None).unwrap();
    let mut pager = PagerConn::new(k.clone()).unwrap();
    let obj = pager.new_object().unwrap();
    let name = pager.give(obj, t).unwrap();
    let a = k.vm_map(t, MapRequest::anywhere(8 * P, Some(name))).unwrap();
    let readers: Vec<_> = (0..4u64)
        .map(|i| {
            let k = k.clone();
            std::thread::spawn(move || k.read_u64(t, VmAddr(a.0 + i * P)))
        })
        .collect();
    // The pager answers slowly, each request on its own.
    while !readers.iter().all(|r| r.is_finished()) {
        if let Ok((o, off, len, _)) = pager.expect_request(Duration::from_millis(20)) {
            std::thread::sleep(Duration::from_millis(5));
            let data: Vec<u8> =
                (off..off + len).step_by(P as usize).flat_map(|p| (p / P + 1).to_le_bytes().repeat(512)).collect();
            pager.supply(o, off, &data).unwrap();
        }
    }
    for (i, r) in readers.into_iter().enumerate() {
        assert_eq!(r.join().unwrap(), Ok(i as u64 + 1), "reader {i}");
    }
    assert_task_within_limit(&k, t);
}

#[test]
fn the_charge_goes_when_the_pages_go() {
    let k = limited(usize::MAX);
    let (_swapfile, file) = swap("charge");
    let dp = boot_default_pager(&k, file).unwrap();
    let total = |k: &Kernel| k.stats().charged;

    // Pageout: what is left charged is what is left resident.
    let t = k.task_create(None).unwrap();
    let a = k.vm_allocate(t, VmAddr(0), 32 * P, true).unwrap();
    for i in 0..32 {
        k.write_u64(t, VmAddr(a.0 + i * P), i).unwrap();
    }
    assert_eq!((charged(&k, t), total(&k)), (32, 32));
    k.set_resident_limit(8);
    let left = object_at(&k, t, a).resident;
    assert!(left <= 8);
    assert_eq!((charged(&k, t), total(&k)), (left, left));
    // Unmapping: the object is terminated, its pages and their charge go.
    k.vm_deallocate(t, a, 32 * P).unwrap();
    assert_eq!((charged(&k, t), total(&k)), (0, 0));

    // A flush by the pager, and pages it fails: their charge goes too,
    // and the pages a task's faults asked for and the pager failed hold
    // none of its limit (it reaches its limit again without reclaiming).
    let k = limited(4);
    let t = k.task_create(None).unwrap();
    let mut pager = PagerConn::new(k.clone()).unwrap();
    let obj = pager.new_object().unwrap();
    let name = pager.give(obj, t).unwrap();
    let m = k.vm_map(t, MapRequest::anywhere(16 * P, Some(name))).unwrap();
    let read = |pager: &mut PagerConn, page: u64, fail: bool| {
        let r = read_on_thread(&k, t, VmAddr(m.0 + page * P));
        let (o, off, len, _) = pager.expect_request(Duration::from_secs(5)).unwrap();
        if fail {
            pager.error(o, off, len).unwrap();
        } else {
            pager.supply(o, off, &vec![1u8; len as usize]).unwrap();
        }
        join(r)
    };
    for i in 0..4 {
        assert!(read(&mut pager, i, false).is_ok());
    }
    assert_eq!(charged(&k, t), 4);
    pager.lock_request(obj, 0, 2 * P, ReturnPolicy::None, true, VmProt::NONE).unwrap();
    assert_eq!((charged(&k, t), k.stats().charged), (2, 2));
    for i in 4..8 {
        assert_eq!(read(&mut pager, i, true), Err(KernError::MemoryError));
    }
    assert_eq!(charged(&k, t), 2);
    for i in 8..10 {
        assert!(read(&mut pager, i, false).is_ok());
    }
    assert_eq!((charged(&k, t), k.stats().vm.task_reclaims), (4, 0));
    // At its limit, the next page asked for takes one of its own (a clean
    // one, dropped). The pager dies with that page on its way: the
    // resident pages stay (the kernel holds the only copy), charged as
    // before, and the page that never came is charged no more.
    let r = read_on_thread(&k, t, VmAddr(m.0 + 12 * P));
    let _ = pager.expect_request(Duration::from_secs(5)).unwrap();
    assert_eq!((charged(&k, t), k.stats().vm.task_reclaims), (3, 1));
    pager.die().unwrap();
    assert_eq!(join(r), Err(KernError::MemoryError));
    assert_eq!((charged(&k, t), k.stats().charged), (3, 3));
    k.vm_deallocate(t, m, 16 * P).unwrap();
    assert_eq!((charged(&k, t), k.stats().charged), (0, 0));

    // Termination: pages of a cached object stay resident, charged to
    // nobody; another task using them is charged nothing for them.
    let w = World::with_objects(ProxyVersion::Paging, Transport::Local, 1, false);
    let first_task = w.task();
    let first = first_task.id();
    let name = w.give(w.objs[0], &first_task);
    let b = w.map(&first_task, name, 0, 4 * P).unwrap();
    for i in 0..4 {
        w.k.write_u64(first, VmAddr(b.0 + i * P), i).unwrap();
    }
    assert_eq!(charged(&w.k, first), 4);
    let second_task = w.task();
    let second = second_task.id();
    let name2 = w.give(w.objs[0], &second_task);
    let c = w.map(&second_task, name2, 0, 4 * P).unwrap();
    w.k.task_terminate(first).unwrap();
    for i in 0..4 {
        assert_eq!(w.k.read_u64(second, VmAddr(c.0 + i * P)), Ok(i));
    }
    assert_eq!(charged(&w.k, second), 0, "the pages were resident already");
    let s = w.k.stats();
    assert_eq!(s.charged, 0, "nobody holds the charge of a terminated task");
    assert!(s.resident >= 4);
    dp.stop();
}

/// Copies are charged to the task whose write makes them: a copy-on-write
/// copy to the task writing its private copy, a push into a copy object
/// to the task writing the original (its write is what needs the page).
#[test]
fn copies_are_charged_to_the_task_whose_write_makes_them() {
    let w = World::with_objects(ProxyVersion::Paging, Transport::Local, 1, false);
    let (ta, tb) = (w.task(), w.task());
    let (a, b) = (ta.id(), tb.id());
    let na = w.give(w.objs[0], &ta);
    let direct = w.map(&ta, na, 0, 4 * P).unwrap();
    for i in 0..2 {
        w.k.write_u64(a, VmAddr(direct.0 + i * P), i + 1).unwrap();
    }
    let nb = w.give(w.objs[0], &tb);
    let copy = w.k.vm_map(b, MapRequest::anywhere(4 * P, Some(nb)).copy(true)).unwrap();
    assert_eq!(w.k.read_u64(b, copy), Ok(1));
    assert_eq!((charged(&w.k, a), charged(&w.k, b)), (2, 0), "b found the page resident");
    w.k.write_u64(a, direct, 10).unwrap();
    assert_eq!(w.k.stats().vm.copy_pushes, 1);
    assert_eq!((charged(&w.k, a), charged(&w.k, b)), (3, 0), "a's write pushed the old page into b's copy");
    w.k.write_u64(b, VmAddr(copy.0 + P), 20).unwrap();
    assert_eq!((charged(&w.k, a), charged(&w.k, b)), (3, 1), "b's write copied page 1 up");
    assert_eq!(w.k.read_u64(b, copy), Ok(1));
    assert_eq!(w.k.read_u64(b, VmAddr(copy.0 + P)), Ok(20));
    assert_eq!(w.k.read_u64(a, direct), Ok(10));
    assert_eq!(w.k.read_u64(a, VmAddr(direct.0 + P)), Ok(2));
    assert_eq!(w.k.stats().charged, 4);
}

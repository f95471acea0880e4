//! Memory pressure: working sets far larger than the resident limit, paged
//! through the default pager's swap file and through a file pager. Dirty
//! pages go back to their pagers before their frames are reused, so no
//! byte is ever lost, and residency never exceeds the limit.

mod common;
use common::TempFile;
use machvm_core::*;
use machvm_pagers::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

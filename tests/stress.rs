//! Many threads against one pager: concurrent faults on the same absent
//! pages make one request per page (or cluster), and a pager that dies
//! while threads wait fails every one of them, hanging none.
//!
//! Every join goes through a channel with a timeout, so a thread that
//! hangs fails the test instead of blocking it forever.

mod common;
use common::racing::RacingMachine;
use machvm_core::memory_object::emmi::KernelToPager;
use machvm_core::vm::paging::ReturnPolicy;
use machvm_core::*;
use machvm_pagers::*;
use std::collections::HashMap;
use std::io;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const P: u64 = PAGE_SIZE;
const THREADS: u64 = 8;
/// The longest a test may wait for threads that should finish.
const T: Duration = Duration::from_secs(15);

fn kernel(cluster_pages: u32) -> Arc<Kernel> {
    Kernel::new(KernelConfig { phys_pages: 4096, resident_limit: 4096, cluster_pages, ..Default::default() })
}

/// The word at `word` of page `page` of the slow pager's object.
fn word(page: u64, word: u64) -> u64 {
    (page << 32) | word
}

/// A pager store that is slow to read and counts reads per page.
#[derive(Clone, Default)]
struct SlowBacking {
    reads: Arc<Mutex<HashMap<u64, u32>>>,
    delay: Duration,
}

impl Backing for SlowBacking {
    fn read(&mut self, _object: machvm_core::ipc::PortName, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        std::thread::sleep(self.delay);
        *self.reads.lock().unwrap().entry(offset).or_default() += 1;
        let page = offset / P;
        for (i, w) in buf.chunks_mut(8).enumerate() {
            w.copy_from_slice(&word(page, i as u64).to_le_bytes());
        }
        Ok(true)
    }
    fn write(&mut self, _object: machvm_core::ipc::PortName, _offset: u64, _data: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// Starts `n` threads running `f(i)`; their results come back in order,
/// or the test fails after `T`.
fn run_threads<R: Send + 'static>(n: u64, f: impl Fn(u64) -> R + Send + Sync + 'static) -> Vec<R> {
    let f = Arc::new(f);
    let rxs: Vec<Receiver<R>> = (0..n)
        .map(|i| {
            let (tx, rx) = mpsc::channel();
            let f = f.clone();
            std::thread::spawn(move || {
                let _ = tx.send(f(i));
            });
            rx
        })
        .collect();
    let deadline = Instant::now() + T;
    rxs.iter()
        .enumerate()
        .map(|(i, rx)| {
            let left = deadline.saturating_duration_since(Instant::now());
            rx.recv_timeout(left).unwrap_or_else(|_| panic!("thread {i} hung"))
        })
        .collect()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A client task mapping `pages` of an object served by a slow pager.
fn slow_pager_setup(k: &Arc<Kernel>, pages: u64) -> (TaskId, VmAddr, RunningPager, SlowBacking) {
    let client = k.task_create(None).unwrap();
    let mut conn = PagerConn::new(k.clone()).unwrap();
    let obj = conn.new_object().unwrap();
    let name = conn.give(obj, client).unwrap();
    let backing = SlowBacking { delay: Duration::from_millis(2), ..Default::default() };
    let pager = RunningPager::spawn(conn, backing.clone());
    let a = k.vm_map(client, MapRequest::anywhere(pages * P, Some(name))).unwrap();
    (client, a, pager, backing)
}

#[test]
fn concurrent_faults_on_the_same_pages_make_one_request_per_page() {
    const PAGES: u64 = 32;
    let k = kernel(1);
    let (client, a, pager, backing) = slow_pager_setup(&k, PAGES);
    let k2 = k.clone();
    // Every thread reads every page, each starting somewhere else, and
    // stores its number in its own word of each page.
    let results = run_threads(THREADS, move |t| -> Result<()> {
        for j in 0..PAGES {
            let page = (j + t * 3) % PAGES;
            let at = VmAddr(a.0 + page * P);
            let mut buf = vec![0u8; P as usize];
            k2.read(client, at, &mut buf)?;
            for (i, w) in buf.chunks(8).enumerate().skip(THREADS as usize) {
                assert_eq!(u64::from_le_bytes(w.try_into().unwrap()), word(page, i as u64), "page {page} word {i}");
            }
            k2.write_u64(client, VmAddr(at.0 + t * 8), 1000 + t)?;
        }
        Ok(())
    });
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    for page in 0..PAGES {
        for t in 0..THREADS {
            assert_eq!(k.read_u64(client, VmAddr(a.0 + page * P + t * 8)).unwrap(), 1000 + t);
        }
    }
    let reads = backing.reads.lock().unwrap().clone();
    assert_eq!(reads.len() as u64, PAGES);
    assert!(reads.values().all(|&n| n == 1), "some page was read twice: {reads:?}");
    assert_eq!(k.stats().sent("data_request"), PAGES);
    assert_eq!(PagerStats::get(&pager.stats.requests), PAGES);
    assert_eq!(k.stats().vm.pages_requested, PAGES);
    pager.stop();
}

#[test]
fn concurrent_faults_in_one_cluster_make_one_request() {
    const PAGES: u64 = 32;
    let k = kernel(1);
    let client = k.task_create(None).unwrap();
    let mut conn = PagerConn::new(k.clone()).unwrap();
    let obj = conn.new_object().unwrap();
    let name = conn.give(obj, client).unwrap();
    let a = k.vm_map(client, MapRequest::anywhere(PAGES * P, Some(name))).unwrap();
    // The pager asks for 8-page clusters before any fault.
    let init = conn.recv(Some(T)).unwrap();
    assert!(matches!(init.msg, KernelToPager::Init { .. }));
    conn.ready(obj).unwrap();
    conn.set_cluster(obj, 8).unwrap();
    let backing = SlowBacking { delay: Duration::from_millis(1), ..Default::default() };
    let pager = RunningPager::spawn(conn, backing.clone());
    let k2 = k.clone();
    let results = run_threads(THREADS, move |t| -> Result<u64> {
        let mut sum = 0;
        for j in 0..PAGES {
            let page = (j * 5 + t) % PAGES;
            sum += k2.read_u64(client, VmAddr(a.0 + page * P + 8 * t))?;
        }
        Ok(sum)
    });
    let want: Vec<_> = (0..THREADS).map(|t| Ok((0..PAGES).map(|p| word(p, t)).sum())).collect();
    assert_eq!(results, want);
    assert_eq!(k.stats().sent("data_request"), PAGES / 8);
    assert_eq!(k.stats().vm.pages_requested, PAGES);
    let reads = backing.reads.lock().unwrap().clone();
    assert_eq!(reads.len() as u64, PAGES);
    assert!(reads.values().all(|&n| n == 1), "{reads:?}");
    assert_eq!(PagerStats::get(&pager.stats.requests), PAGES / 8);
    pager.stop();
}

#[test]
fn pager_death_fails_every_waiting_fault() {
    let k = kernel(1);
    let client = k.task_create(None).unwrap();
    let mut pager = PagerConn::new(k.clone()).unwrap();
    let obj = pager.new_object().unwrap();
    let name = pager.give(obj, client).unwrap();
    let a = k.vm_map(client, MapRequest::anywhere(8 * P, Some(name))).unwrap();
    // One page arrives before the pager goes silent.
    let k2 = k.clone();
    let reader = std::thread::spawn(move || k2.read_u64(client, a));
    let (_, off, _, _) = pager.expect_request(T).unwrap();
    assert_eq!(off, 0);
    pager.supply(obj, 0, &vec![7u8; P as usize]).unwrap();
    assert!(reader.join().unwrap().is_ok());
    // Threads pile up on pages 1..4, two per page, reads and writes.
    let faults = k.stats().vm.faults;
    let k2 = k.clone();
    let waiting = std::thread::spawn(move || {
        run_threads(THREADS, move |t| {
            let at = VmAddr(a.0 + (1 + t % 4) * P);
            if t % 2 == 0 {
                k2.read_u64(client, at).map(|_| ())
            } else {
                k2.write_u64(client, at, t)
            }
        })
    });
    for _ in 0..4 {
        pager.expect_request(T).unwrap();
    }
    wait_until("the faults to wait", || k.stats().vm.faults >= faults + THREADS);
    std::thread::sleep(Duration::from_millis(20));
    pager.die().unwrap();
    let results = waiting.join().unwrap();
    assert!(results.iter().all(|r| *r == Err(KernError::MemoryError)), "{results:?}");
    // Later faults on absent pages fail at once; resident data stays readable.
    assert_eq!(k.read_u64(client, VmAddr(a.0 + 6 * P)), Err(KernError::MemoryError));
    assert_eq!(k.read_u64(client, a), Ok(0x0707_0707_0707_0707));
    assert_eq!(k.stats().sent("data_request"), 5);
}

#[test]
fn pager_death_before_ready_fails_the_faults_waiting_for_it() {
    let k = kernel(1);
    let client = k.task_create(None).unwrap();
    let mut pager = PagerConn::new(k.clone()).unwrap();
    let obj = pager.new_object().unwrap();
    let name = pager.give(obj, client).unwrap();
    let a = k.vm_map(client, MapRequest::anywhere(2 * P, Some(name))).unwrap();
    let k2 = k.clone();
    let waiting = std::thread::spawn(move || run_threads(4, move |t| k2.read_u64(client, VmAddr(a.0 + (t % 2) * P))));
    assert!(matches!(pager.recv(Some(T)).unwrap().msg, KernelToPager::Init { .. }));
    wait_until("the faults to wait", || k.stats().vm.faults >= 4);
    pager.die().unwrap();
    let results = waiting.join().unwrap();
    assert!(results.iter().all(|r| *r == Err(KernError::MemoryError)), "{results:?}");
    assert_eq!(k.stats().sent("data_request"), 0);
}

#[test]
fn destroying_the_memory_object_port_fails_waiting_faults() {
    let k = kernel(1);
    let client = k.task_create(None).unwrap();
    let mut pager = PagerConn::new(k.clone()).unwrap();
    let obj = pager.new_object().unwrap();
    let name = pager.give(obj, client).unwrap();
    let a = k.vm_map(client, MapRequest::anywhere(P, Some(name))).unwrap();
    let k2 = k.clone();
    let waiting = std::thread::spawn(move || run_threads(4, move |t| k2.read_u64(client, VmAddr(a.0 + t * 8))));
    pager.expect_request(T).unwrap();
    wait_until("the faults to wait", || k.stats().vm.faults >= 4);
    // The pager task lives on; only this object's port dies.
    k.port_destroy(pager.link.task, obj).unwrap();
    let results = waiting.join().unwrap();
    assert!(results.iter().all(|r| *r == Err(KernError::MemoryError)), "{results:?}");
}

#[test]
fn pager_death_fails_writers_waiting_for_an_unlock() {
    let k = kernel(1);
    let client = k.task_create(None).unwrap();
    let mut pager = PagerConn::new(k.clone()).unwrap();
    let obj = pager.new_object().unwrap();
    let name = pager.give(obj, client).unwrap();
    let a = k.vm_map(client, MapRequest::anywhere(P, Some(name))).unwrap();
    let k2 = k.clone();
    let reader = std::thread::spawn(move || k2.read_u64(client, a));
    pager.expect_request(T).unwrap();
    pager.supply_with(obj, 0, &vec![1u8; P as usize], VmProt::WRITE, false).unwrap();
    assert!(reader.join().unwrap().is_ok());
    let faults = k.stats().vm.faults;
    let k2 = k.clone();
    let writers = std::thread::spawn(move || run_threads(4, move |t| k2.write_u64(client, VmAddr(a.0 + t * 8), t)));
    let unlock = pager.recv(Some(T)).unwrap();
    assert!(matches!(unlock.msg, KernelToPager::DataUnlock { offset: 0, .. }), "{unlock:?}");
    wait_until("the writers to wait", || k.stats().vm.faults >= faults + 4);
    pager.die().unwrap();
    let results = writers.join().unwrap();
    assert!(results.iter().all(|r| *r == Err(KernError::MemoryError)), "{results:?}");
    // The page is still there to read, and still not writable.
    assert_eq!(k.read_u64(client, a), Ok(0x0101_0101_0101_0101));
    assert_eq!(k.write_u64(client, a, 9), Err(KernError::MemoryError));
}

/// A store whose reads block until the test lets them go.
struct GatedBacking {
    gate: Arc<Mutex<Option<mpsc::Receiver<()>>>>,
    entered: mpsc::Sender<u64>,
}

impl Backing for GatedBacking {
    fn read(&mut self, _object: machvm_core::ipc::PortName, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        let _ = self.entered.send(offset);
        if let Some(g) = self.gate.lock().unwrap().as_ref() {
            let _ = g.recv_timeout(T);
        }
        buf.fill(3);
        Ok(true)
    }
    fn write(&mut self, _object: machvm_core::ipc::PortName, _offset: u64, _data: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_serving_pager_killed_mid_request_fails_the_waiters_and_its_late_answer() {
    let k = kernel(1);
    let client = k.task_create(None).unwrap();
    let mut conn = PagerConn::new(k.clone()).unwrap();
    let obj = conn.new_object().unwrap();
    let name = conn.give(obj, client).unwrap();
    let a = k.vm_map(client, MapRequest::anywhere(4 * P, Some(name))).unwrap();
    let (release, gate) = mpsc::channel();
    let (entered_tx, entered) = mpsc::channel();
    let pager = RunningPager::spawn(conn, GatedBacking { gate: Arc::new(Mutex::new(Some(gate))), entered: entered_tx });
    let k2 = k.clone();
    let waiting = std::thread::spawn(move || run_threads(THREADS, move |t| k2.read_u64(client, VmAddr(a.0 + t * 8))));
    // The pager is inside its read of page 0 when its task is killed.
    assert_eq!(entered.recv_timeout(T).unwrap(), 0);
    wait_until("the faults to wait", || k.stats().vm.faults >= THREADS);
    k.task_terminate(pager.task).unwrap();
    let results = waiting.join().unwrap();
    assert!(results.iter().all(|r| *r == Err(KernError::MemoryError)), "{results:?}");
    // Its answer, once the read returns, goes nowhere and changes nothing.
    let resident = k.stats().resident;
    drop(release);
    pager.stop();
    assert_eq!(k.stats().resident, resident);
    assert_eq!(k.read_u64(client, a), Err(KernError::MemoryError));
}

#[test]
fn many_threads_and_a_pager_dying_midway_each_get_data_or_memory_error() {
    const PAGES: u64 = 64;
    let k = kernel(1);
    let (client, a, pager, _backing) = slow_pager_setup(&k, PAGES);
    let k2 = k.clone();
    let workers = std::thread::spawn(move || {
        run_threads(THREADS, move |t| {
            let mut outcomes = Vec::new();
            for j in 0..PAGES {
                let page = (j * 7 + t * 11) % PAGES;
                let r = k2.read_u64(client, VmAddr(a.0 + page * P + 8 * t));
                outcomes.push((page, r));
            }
            outcomes
        })
    });
    wait_until("some pages to arrive", || k.stats().received("data_supply") >= 8);
    pager.stop();
    let all = workers.join().unwrap();
    let mut errors = 0;
    for (t, outcomes) in all.iter().enumerate() {
        for &(page, r) in outcomes {
            match r {
                Ok(v) => assert_eq!(v, word(page, t as u64)),
                Err(e) => {
                    assert_eq!(e, KernError::MemoryError);
                    errors += 1;
                }
            }
        }
    }
    assert!(errors > 0, "the pager died before the threads were done");
    assert!(k.stats().sent("data_request") <= PAGES);
}

// ----- stores racing the kernel's dirty check (see `common::racing`) -----

#[test]
fn a_store_racing_a_flush_is_returned_not_lost() {
    let m = RacingMachine::new(256);
    let k = Kernel::with_machine(
        KernelConfig { phys_pages: 256, resident_limit: 256, cluster_pages: 1, ..Default::default() },
        m.clone(),
    );
    let client = k.task_create(None).unwrap();
    let mut pager = PagerConn::new(k.clone()).unwrap();
    let obj = pager.new_object().unwrap();
    let name = pager.give(obj, client).unwrap();
    let a = k.vm_map(client, MapRequest::anywhere(P, Some(name))).unwrap();
    // The page is read, so mapped writable and clean.
    let k2 = k.clone();
    let reader = std::thread::spawn(move || k2.read_u64(client, a));
    pager.expect_request(T).unwrap();
    let mut disk = vec![0u8; P as usize];
    pager.supply(obj, 0, &disk).unwrap();
    assert_eq!(reader.join().unwrap(), Ok(0));
    m.arm(42);
    pager.lock_request(obj, 0, P, ReturnPolicy::Dirty, true, VmProt::NONE).unwrap();
    while let Ok(r) = pager.recv(Some(Duration::from_millis(50))) {
        match r.msg {
            KernelToPager::DataReturn { offset: 0, data, .. } => disk = data,
            other => panic!("{other:?}"),
        }
    }
    // A store that completed before the flush took the page is in the
    // data that came back; one that did not complete faults and waits.
    let want = if m.landed() == Some(a) { 42 } else { 0 };
    let k2 = k.clone();
    let reader = std::thread::spawn(move || k2.read_u64(client, a));
    pager.expect_request(T).unwrap();
    pager.supply(obj, 0, &disk).unwrap();
    assert_eq!(reader.join().unwrap(), Ok(want), "a completed store was lost to a flush");
}

#[test]
fn a_store_racing_pageout_of_a_clean_anonymous_page_is_not_lost() {
    let m = RacingMachine::new(256);
    let k = Kernel::with_machine(
        KernelConfig { phys_pages: 256, resident_limit: 4, cluster_pages: 1, ..Default::default() },
        m.clone(),
    );
    let swap = std::env::temp_dir().join(format!("machvm-stress-swap-{}", std::process::id()));
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&swap).unwrap();
    let dp = boot_default_pager(&k, file).unwrap();
    let t = k.task_create(None).unwrap();
    let a = k.vm_allocate(t, VmAddr(0), 16 * P, true).unwrap();
    // Page 0 is read (zero filled: clean, mapped writable); others written.
    assert_eq!(k.read_u64(t, a), Ok(0));
    for i in 1..4 {
        k.write_u64(t, VmAddr(a.0 + i * P), i).unwrap();
    }
    m.arm(42);
    for i in 4..16 {
        k.write_u64(t, VmAddr(a.0 + i * P), i).unwrap();
    }
    assert!(k.stats().vm.pageouts > 0);
    let want = if m.landed() == Some(a) { 42 } else { 0 };
    assert_eq!(k.read_u64(t, a), Ok(want), "a completed store was lost to pageout");
    for i in 1..16 {
        assert_eq!(k.read_u64(t, VmAddr(a.0 + i * P)), Ok(i));
    }
    dp.stop();
    let _ = std::fs::remove_file(&swap);
}

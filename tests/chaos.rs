//! Chaos: many threads against one kernel, with seeded randomness so that a
//! failing round can be run again, and hang detection on every join.
//!
//! Three scenarios, each run for a number of rounds with different seeds:
//!
//! 1. **Revoke vs. faults**: threads read through paging proxies, nested
//!    proxies, a mapping proxy and copy mappings made through them, while
//!    another thread revokes one of the proxies. A read that *starts* after
//!    `memory_object_proxy_revoke` returned must fail with
//!    `KERN_MEMORY_ERROR` if its mapping was made through the revoked proxy;
//!    every other mapping keeps reading the right contents.
//! 2. **Pageout vs. faults vs. writes**: a small resident limit, a default
//!    pager, a pager that flushes, cleans and locks pages on its own, and a
//!    thread flipping protections. Each word has one writer, which stores
//!    increasing sequence numbers; every read must see a value no older
//!    than the last completed store and no newer than the last started
//!    one, and copy-on-write children never see a later store.
//! 3. **Lifecycle**: tasks, mappings, proxies and pagers come and go while
//!    other threads fault. Only documented errors come back, nothing hangs,
//!    and once everything is torn down no page, object or proxy is left.
//!
//! Knobs (environment): `CHAOS_ROUNDS` multiplies the rounds of every
//! scenario, `CHAOS_SEED` picks another base seed, `CHAOS_LOAD` runs that
//! many busy threads beside the test to change its timing, `CHAOS_JITTER`
//! makes the dawdling MMU (half the rounds run on it, see
//! [`JitterMachine`]) dawdle more often (on one call in that many),
//! `CHAOS_VERBOSE` prints each round's counters. A failure names its scenario and seed:
//! `CHAOS_SEED=<seed>` replays its choices first (the timing, of course,
//! differs from run to run).
//!
//! The bugs the hunt found are pinned down at the end, each by a
//! straight-line test: leaked cached objects of dead pagers, lost wake-ups
//! of faults and receives, and a modified page returned marked clean.

mod common;
use common::racing::RacingMachine;
use machvm_core::ipc::{Disposition, PortName};
use machvm_core::memory_object::emmi::{KernelToPager, PagerToKernel};
use machvm_core::pmap::soft::SoftMachine;
use machvm_core::pmap::{Access, Frame, HwFault, Machine, ObjectId, PageStore, Pmap, PmapError, PmapId, StoreError};
use machvm_core::vm::object::CopyStrategy;
use machvm_core::vm::paging::ReturnPolicy;
use machvm_core::*;
use machvm_pagers::{boot_default_pager, start_default_pager, Backing, MemBacking, PagerConn, RunningPager};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const P: u64 = PAGE_SIZE;

/// The longest any round may take before it counts as hung.
const HANG: Duration = Duration::from_secs(20);

// ----- seeds, rounds, load -----

/// SplitMix64: small, seedable, good enough to pick interleavings.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, n)`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// A child generator for another thread.
    fn fork(&mut self) -> Rng {
        Rng::new(self.next())
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The seeds of a scenario's rounds: `rounds` of them (times `CHAOS_ROUNDS`).
fn seeds(scenario: u64, rounds: u64) -> Vec<u64> {
    let base = env_u64("CHAOS_SEED");
    let n = rounds * env_u64("CHAOS_ROUNDS").unwrap_or(1);
    match base {
        // A given seed is run first, then the ones after it.
        Some(b) => (0..n).map(|i| b + i).collect(),
        None => (0..n).map(|i| (scenario << 32) + i).collect(),
    }
}

/// Busy threads beside the test (`CHAOS_LOAD`), stopped when dropped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start() -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let n = env_u64("CHAOS_LOAD").unwrap_or(0);
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(SeqCst) {
                        for i in 0..10_000u64 {
                            x = x.wrapping_mul(31).wrapping_add(i);
                        }
                        std::hint::black_box(x);
                    }
                })
            })
            .collect();
        Load { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

type Outcome = std::result::Result<(), String>;
type Worker = Box<dyn FnOnce() -> Outcome + Send>;

/// Runs every worker on its own thread and waits for all of them through
/// one channel, at most [`HANG`]. A panic, a failed check or a hang fails
/// the test with the round's name (scenario and seed).
///
/// On a hang the kernel's counters are taken twice, a second apart (each
/// within a few seconds, or "none": the kernel lock is held for good), to
/// tell a deadlock or lost wake-up from a livelock.
fn run_workers(round: &str, k: &Arc<Kernel>, workers: Vec<(&'static str, Worker)>) {
    let (tx, rx) = mpsc::channel::<(usize, Outcome)>();
    let names: Vec<&str> = workers.iter().map(|w| w.0).collect();
    for (i, (name, w)) in workers.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(w))
                    .unwrap_or_else(|p| Err(format!("panicked: {}", panic_text(&p))));
                let _ = tx.send((i, r));
            })
            .expect("spawning a worker");
    }
    drop(tx);
    let deadline = Instant::now() + HANG;
    let mut done = vec![false; names.len()];
    for _ in 0..names.len() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((i, Ok(()))) => done[i] = true,
            Ok((i, Err(e))) => panic!("{round}: worker {} failed: {e}", names[i]),
            Err(_) => {
                let hung: Vec<&str> = names.iter().zip(&done).filter(|(_, d)| !**d).map(|(n, _)| *n).collect();
                let stats = || {
                    let (tx, rx) = mpsc::channel();
                    let k = k.clone();
                    std::thread::spawn(move || {
                        let _ = tx.send(format!("{:?}", k.stats()));
                    });
                    rx.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|_| "none".into())
                };
                let first = stats();
                std::thread::sleep(Duration::from_secs(1));
                panic!("{round}: workers hung: {hung:?}\nkernel then: {first}\na second later: {}", stats());
            }
        }
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default()
}

/// Runs `f` on a thread, failing the test if it does not return within
/// [`HANG`] (for setup and teardown steps that could block).
fn finishes<R: Send + 'static>(round: &str, what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(HANG).unwrap_or_else(|_| panic!("{round}: {what} hung"))
}

macro_rules! check {
    ($cond:expr, $($msg:tt)*) => {
        if !$cond {
            return Err(format!($($msg)*));
        }
    };
}

/// A swap file for a default pager, removed when dropped.
struct Swap(std::path::PathBuf);

impl Swap {
    fn new(tag: &str) -> (Swap, std::fs::File) {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, SeqCst);
        let path = std::env::temp_dir().join(format!("machvm-chaos-{}-{tag}-{n}", std::process::id()));
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        (Swap(path), f)
    }
}

impl Drop for Swap {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A software MMU that now and then dawdles inside the operations the
/// kernel performs under its lock (reading a modified bit, copying a
/// frame, a shootdown), so that task threads, which access memory without
/// that lock, land in the windows between the kernel's steps far more
/// often than they would on a quiet machine.
struct JitterMachine {
    inner: SoftMachine,
    state: AtomicU64,
    /// Dawdle on one call in this many (`CHAOS_JITTER`, default 8)...
    every: u64,
    /// ... for up to this many microseconds (100 with `CHAOS_JITTER`, else 30).
    most: u64,
}

impl JitterMachine {
    fn new(frames: usize, seed: u64) -> Arc<JitterMachine> {
        let knob = env_u64("CHAOS_JITTER");
        Arc::new(JitterMachine {
            inner: SoftMachine::new(frames),
            state: AtomicU64::new(seed),
            every: knob.unwrap_or(8).max(1),
            most: if knob.is_some() { 100 } else { 30 },
        })
    }
    fn dawdle(&self) {
        let mut r = Rng::new(self.state.fetch_add(1, SeqCst));
        if r.below(self.every) == 0 {
            let until = Instant::now() + Duration::from_micros(1 + r.below(self.most));
            // A spin, not a yield: the window stays open for about as long
            // as asked, however loaded the machine is.
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
    }
}

impl PageStore for JitterMachine {
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
    fn alloc(&self, object: ObjectId, offset: u64) -> Result<Frame, StoreError> {
        self.inner.alloc(object, offset)
    }
    fn free(&self, page: Frame) {
        self.inner.free(page)
    }
    fn rename(&self, page: Frame, object: ObjectId, offset: u64) -> Result<Frame, StoreError> {
        self.inner.rename(page, object, offset)
    }
    fn object_released(&self, object: ObjectId) {
        self.inner.object_released(object)
    }
    fn read(&self, frame: Frame, offset: usize, buf: &mut [u8]) {
        self.dawdle();
        self.inner.read(frame, offset, buf)
    }
    fn write(&self, frame: Frame, offset: usize, data: &[u8]) {
        self.inner.write(frame, offset, data)
    }
    fn zero(&self, frame: Frame) {
        self.inner.zero(frame)
    }
    fn copy(&self, from: Frame, to: Frame) {
        self.dawdle();
        self.inner.copy(from, to)
    }
}

impl Pmap for JitterMachine {
    fn create(&self) -> PmapId {
        self.inner.create()
    }
    fn destroy(&self, pmap: PmapId) {
        self.inner.destroy(pmap)
    }
    fn enter(&self, pmap: PmapId, va: VmAddr, pages: &[Frame], prot: VmProt) -> Result<(), PmapError> {
        self.inner.enter(pmap, va, pages, prot)
    }
    fn remove(&self, pmap: PmapId, start: VmAddr, end: VmAddr) -> Result<(), PmapError> {
        self.dawdle();
        self.inner.remove(pmap, start, end)
    }
    fn protect(&self, pmap: PmapId, start: VmAddr, end: VmAddr, prot: VmProt) -> Result<(), PmapError> {
        self.dawdle();
        self.inner.protect(pmap, start, end, prot)
    }
    fn page_remove(&self, page: Frame) -> Result<(), PmapError> {
        self.dawdle();
        self.inner.page_remove(page)
    }
    fn page_protect(&self, frame: Frame, prot: VmProt) -> Result<(), PmapError> {
        self.dawdle();
        self.inner.page_protect(frame, prot)
    }
    fn is_modified(&self, frame: Frame) -> bool {
        let m = self.inner.is_modified(frame);
        self.dawdle();
        m
    }
    fn clear_modify(&self, frame: Frame) {
        self.dawdle();
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

impl Machine for JitterMachine {
    fn access(&self, pmap: PmapId, va: VmAddr, access: Access<'_>) -> std::result::Result<(), HwFault> {
        self.inner.access(pmap, va, access)
    }
}

/// A kernel for a round: on the software MMU, or (for half the seeds) on
/// one that dawdles under the kernel lock.
fn round_kernel(config: KernelConfig, rng: &mut Rng) -> Arc<Kernel> {
    if rng.chance(50) {
        let frames = config.phys_pages;
        Kernel::with_machine(config, JitterMachine::new(frames, rng.next()))
    } else {
        Kernel::new(config)
    }
}

// ----- 1. revoke vs. faults -----

/// Every word of the pattern object is this function of its offset.
fn pattern(off: u64) -> u64 {
    0x5A00_0000_0000_0000 | off
}

/// A store into a private copy: the page it is in, and a counter.
fn scribble(page: u64, n: u64) -> u64 {
    0x7B00_0000_0000_0000 | (page << 24) | (n & 0xFF_FFFF)
}

fn is_scribble_of(v: u64, page: u64) -> bool {
    v >> 56 == 0x7B && (v >> 24) & 0xFFFF_FFFF == page
}

/// A pager store holding [`pattern`] that never changes (returns are
/// dropped) and takes a little time per read, so that faults are often
/// waiting on it when the proxy is revoked.
struct PatternBacking {
    rng: Rng,
    /// `may_cache`: may the kernel keep the object once unmapped?
    cache: bool,
}

impl Backing for PatternBacking {
    fn read(&mut self, _object: PortName, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        if self.rng.chance(30) {
            std::thread::sleep(Duration::from_micros(self.rng.below(200)));
        }
        for (i, w) in buf.chunks_mut(8).enumerate() {
            w.copy_from_slice(&pattern(offset + 8 * i as u64).to_le_bytes());
        }
        Ok(true)
    }
    fn write(&mut self, _object: PortName, _offset: u64, _data: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn may_cache(&self) -> bool {
        self.cache
    }
}

/// The proxies of a revocation round: `A` a paging proxy of the object,
/// `B` a read-only paging proxy of `A`, `D` a mapping proxy of `A`, `C` a
/// paging proxy of the object beside them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Px {
    A,
    B,
    C,
    D,
}

/// One mapping in a reader task: where it is, what it was made through,
/// and whether it is a private copy (which its task may write).
#[derive(Clone, Debug)]
struct RMap {
    what: &'static str,
    addr: VmAddr,
    /// The proxies a revocation of which must cut this mapping.
    via: Vec<Px>,
    copy: bool,
    /// A region proxy of another mapping (by index): shows its stores.
    shows: Option<usize>,
}

/// Pages of the pattern object (and of every mapping of it).
const R_PAGES: u64 = 12;

fn revoke_round(seed: u64) {
    let round = format!("revoke round seed={seed}");
    let mut rng = Rng::new(seed);
    let config = KernelConfig {
        phys_pages: 1024,
        resident_limit: 4 + rng.below(20) as usize,
        proxy_version: if rng.chance(50) { ProxyVersion::Paging } else { ProxyVersion::Mapping },
        cluster_pages: 1 + rng.below(4) as u32,
        ..KernelConfig::default()
    };
    let k = round_kernel(config, &mut rng);
    let (_swap, swapf) = Swap::new("revoke");
    let dp = boot_default_pager(&k, swapf).unwrap();
    let owner = k.task_create(None).unwrap();
    let mut conn = PagerConn::new(k.clone()).unwrap();
    let obj = conn.new_object().unwrap();
    let obj = conn.give(obj, owner).unwrap();
    let pager = RunningPager::spawn(conn, PatternBacking { rng: rng.fork(), cache: rng.chance(50) });

    let len = R_PAGES * P;
    let all = VmProt::ALL;
    let px = |max, objs: &[PortName], version| {
        let n = objs.len();
        k.memory_object_create_proxy_version(owner, max, objs, &vec![0; n], &vec![0; n], &vec![len; n], version)
            .unwrap()
    };
    let a = px(all, &[obj], ProxyVersion::Paging);
    let b = px(VmProt::READ, &[a.proxy], ProxyVersion::Paging);
    let d = px(all, &[a.proxy], ProxyVersion::Mapping);
    let c = px(all, &[obj], ProxyVersion::Paging);
    let revoked_px = if rng.chance(50) { Px::A } else { Px::B };
    let revoke_name = if revoked_px == Px::A { a.revoke } else { b.revoke };

    // Reader tasks, each with every kind of mapping.
    let readers = 2 + rng.below(2);
    let mut tasks = Vec::new();
    for _ in 0..readers {
        let t = k.task_create(None).unwrap();
        let give = |n: PortName| k.port_transfer(owner, n, Disposition::CopySend, t).unwrap();
        let (na, nb, nc, nd, no) = (give(a.proxy), give(b.proxy), give(c.proxy), give(d.proxy), give(obj));
        let map = |name, copy| k.vm_map(t, MapRequest::anywhere(len, Some(name)).copy(copy)).unwrap();
        let maps = vec![
            RMap { what: "A", addr: map(na, false), via: vec![Px::A], copy: false, shows: None },
            RMap { what: "A copy", addr: map(na, true), via: vec![Px::A], copy: true, shows: None },
            RMap { what: "B", addr: map(nb, false), via: vec![Px::A, Px::B], copy: false, shows: None },
            RMap { what: "B copy", addr: map(nb, true), via: vec![Px::A, Px::B], copy: true, shows: None },
            RMap {
                what: "D (mapping proxy of A)",
                addr: map(nd, false),
                via: vec![Px::A, Px::D],
                copy: false,
                shows: None,
            },
            RMap { what: "C", addr: map(nc, false), via: vec![Px::C], copy: false, shows: None },
            RMap { what: "object", addr: map(no, false), via: vec![], copy: false, shows: None },
            RMap { what: "object copy", addr: map(no, true), via: vec![], copy: true, shows: None },
        ];
        // Region proxies of some of them (of the kernel's configured
        // version), mapped in the same task: still subject to the
        // revocation of what the region was mapped through.
        let mut maps = maps;
        for (i, what) in [(0, "region proxy of A"), (1, "region proxy of A copy"), (6, "region proxy of object")] {
            let px = k.vm_region_create_proxy(t, maps[i].addr, VmProt::ALL, len).unwrap();
            let addr = k.vm_map(t, MapRequest::anywhere(len, Some(px.proxy))).unwrap();
            let shows = maps[i].copy.then_some(i);
            maps.push(RMap { what, addr, via: maps[i].via.clone(), copy: false, shows });
        }
        tasks.push((t, maps));
    }

    let revoke_started = Arc::new(AtomicBool::new(false));
    let revoked = Arc::new(AtomicBool::new(false));
    let reads_after = Arc::new(AtomicUsize::new(0));
    let mut workers: Vec<(&'static str, Worker)> = Vec::new();

    // One thread per reader task (it alone writes that task's copies), and
    // for the first task a forked child read by a thread of its own.
    for (ti, (t, maps)) in tasks.iter().cloned().enumerate() {
        let (k, mut rng) = (k.clone(), rng.fork());
        let (started, revoked, after) = (revoke_started.clone(), revoked.clone(), reads_after.clone());
        workers.push((
            "reader",
            Box::new(move || {
                let mut model: HashMap<(usize, u64), u64> = HashMap::new();
                let mut n = 0u64;
                let mut ops = 0;
                let begun = Instant::now();
                loop {
                    let done_before = revoked.load(SeqCst);
                    if done_before && after.load(SeqCst) > 300 * readers as usize && ops > 200 {
                        return Ok(());
                    }
                    check!(begun.elapsed() < HANG / 2, "reader {ti} never saw the revocation");
                    ops += 1;
                    let mi = rng.below(maps.len() as u64) as usize;
                    let m = &maps[mi];
                    let page = rng.below(R_PAGES);
                    let word = rng.below(P / 8) * 8;
                    let va = VmAddr(m.addr.0 + page * P + word);
                    let cut = m.via.contains(&revoked_px);
                    if m.copy && rng.chance(25) {
                        n += 1;
                        let v = scribble(page, n);
                        let r = k.write_u64(t, va, v);
                        if r.is_ok() {
                            model.insert((mi, page * P + word), v);
                        }
                        if cut && done_before {
                            check!(r == Err(KernError::MemoryError), "{}: store after revoke gave {r:?}", m.what);
                        } else if !(cut && started.load(SeqCst)) {
                            check!(r.is_ok(), "{}: store gave {r:?} (no revocation yet)", m.what);
                        }
                        continue;
                    }
                    let r = if rng.chance(10) {
                        k.vm_read(t, va, 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                    } else {
                        k.read_u64(t, va)
                    };
                    if done_before {
                        after.fetch_add(1, SeqCst);
                    }
                    let key = (m.shows.unwrap_or(mi), page * P + word);
                    let want = model.get(&key).copied().unwrap_or(pattern(page * P + word));
                    if cut && done_before {
                        check!(
                            r == Err(KernError::MemoryError),
                            "{}: a read that started after the revocation of {revoked_px:?} gave {r:?}",
                            m.what
                        );
                    } else if cut && started.load(SeqCst) {
                        check!(
                            r == Ok(want) || r == Err(KernError::MemoryError),
                            "{}: read during the revocation gave {r:?}, want {want:#x}",
                            m.what
                        );
                    } else {
                        check!(r == Ok(want), "{}: read gave {r:?}, want {want:#x}", m.what);
                    }
                }
            }),
        ));
    }
    {
        // A child of the first reader, forked at a random moment (before,
        // during or after the revocation).
        let (k, mut rng) = (k.clone(), rng.fork());
        let (t, maps) = tasks[0].clone();
        let (started, revoked) = (revoke_started.clone(), revoked.clone());
        workers.push((
            "forked child",
            Box::new(move || {
                std::thread::sleep(Duration::from_micros(rng.below(3000)));
                let revoked_at_fork = revoked.load(SeqCst);
                let child = k.task_create(Some(t)).map_err(|e| format!("fork: {e:?}"))?;
                let mut checked_after = 0;
                let begun = Instant::now();
                while checked_after < 100 {
                    check!(begun.elapsed() < HANG / 2, "the child never saw the revocation");
                    let done_before = revoked.load(SeqCst);
                    let m = &maps[rng.below(maps.len() as u64) as usize];
                    let page = rng.below(R_PAGES);
                    let word = rng.below(P / 8) * 8;
                    let r = k.read_u64(child, VmAddr(m.addr.0 + page * P + word));
                    let cut = m.via.contains(&revoked_px);
                    if done_before {
                        checked_after += 1;
                    }
                    if cut && (done_before || revoked_at_fork) {
                        check!(r == Err(KernError::MemoryError), "child {}: read after revoke gave {r:?}", m.what);
                        continue;
                    }
                    if cut && started.load(SeqCst) && r == Err(KernError::MemoryError) {
                        continue;
                    }
                    let ok = match r {
                        Ok(v) => {
                            v == pattern(page * P + word) || ((m.copy || m.shows.is_some()) && is_scribble_of(v, page))
                        }
                        Err(_) => false,
                    };
                    check!(ok, "child {}: read gave {r:x?}", m.what);
                }
                k.task_terminate(child).map_err(|e| format!("terminate child: {e:?}"))
            }),
        ));
    }
    {
        let (k, mut rng) = (k.clone(), rng.fork());
        let (started, revoked) = (revoke_started.clone(), revoked.clone());
        let tasks = tasks.clone();
        workers.push((
            "revoker",
            Box::new(move || {
                std::thread::sleep(Duration::from_micros(500 + rng.below(8000)));
                started.store(true, SeqCst);
                k.memory_object_proxy_revoke(owner, revoke_name).map_err(|e| format!("revoke: {e:?}"))?;
                revoked.store(true, SeqCst);
                // New mappings through it are refused from now on.
                let (t, _) = tasks[0];
                let name = k
                    .port_transfer(owner, if revoked_px == Px::A { a.proxy } else { b.proxy }, Disposition::CopySend, t)
                    .unwrap();
                let r = k.vm_map(t, MapRequest::anywhere(len, Some(name)));
                check!(r == Err(KernError::InvalidCapability), "vm_map after revoke gave {r:?}");
                Ok(())
            }),
        ));
    }
    run_workers(&round, &k, workers);

    // Tear down; nothing may be left.
    for (t, _) in tasks {
        k.task_terminate(t).unwrap();
    }
    k.task_terminate(owner).unwrap();
    finishes(&round, "stopping the pagers", move || {
        pager.stop();
        dp.stop();
    });
    let s = k.stats();
    if std::env::var("CHAOS_VERBOSE").is_ok() {
        eprintln!("{round}: {s:?}");
    }
    assert_eq!((s.resident, s.objects, s.proxies), (0, 0, 0), "{round}: left behind {s:?}");
}

#[test]
fn reads_through_a_revoked_proxy_fail_from_the_moment_revoke_returns() {
    let _load = Load::start();
    for seed in seeds(1, 24) {
        revoke_round(seed);
    }
}

// ----- 2. pageout vs. faults vs. writes -----

/// Words used per page (spread over it), and their offsets.
const SLOTS: u64 = 8;

fn slot_offset(slot: u64) -> u64 {
    slot * (P / SLOTS) + 8 * slot
}

/// Bits of a stored value that hold the sequence number; the rest say
/// which word it was meant for.
const SEQ_BITS: u32 = 40;

/// What the owner of word `g` stores as its `seq`-th value (0: never
/// written, the memory's first zeroes).
fn stamp(g: usize, seq: u64) -> u64 {
    if seq == 0 {
        0
    } else {
        ((g as u64 + 1) << SEQ_BITS) | seq
    }
}

/// The sequence number of a value read from word `g`, or what is wrong.
fn unstamp(g: usize, v: u64) -> std::result::Result<u64, String> {
    if v == 0 {
        return Ok(0);
    }
    let owner = (v >> SEQ_BITS) as usize;
    if owner != g + 1 {
        return Err(format!("word {g} holds {v:#x}, a value meant for word {}", owner.wrapping_sub(1)));
    }
    Ok(v & ((1 << SEQ_BITS) - 1))
}

/// A stamp no owner ever stores: what copy-on-write children write into
/// their copies (it must never show in the parent).
const CHILD_STAMP: u64 = 0xC41D_0000_0000_0000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Region {
    /// Anonymous, private to the parent (copied into children).
    Anon,
    /// Anonymous, shared with the sibling task through inheritance.
    Shared,
    /// A pager's object, mapped shared by both tasks (copied into children).
    File,
}

const REGION_PAGES: [(Region, u64); 3] = [(Region::Anon, 6), (Region::Shared, 4), (Region::File, 6)];

/// One word of the workload: where it lives and who owns it.
#[derive(Clone, Debug)]
struct Word {
    region: Region,
    /// Its address in the parent, and in the sibling (if it sees it).
    at_parent: VmAddr,
    at_sibling: Option<VmAddr>,
    /// The writer that owns it (index into the writers).
    owner: usize,
}

/// Per word: the last sequence number whose store returned, and the last
/// one whose store began.
#[derive(Default)]
struct Seqs {
    published: Vec<AtomicU64>,
    started: Vec<AtomicU64>,
}

/// A pager thread serving one object from memory that also, on its own,
/// flushes, cleans and write-locks random pages, and supplies some pages
/// locked or precious. It checks the kernel's honesty too: a page returned
/// as clean must be what the pager last had for it.
fn chaos_pager(mut conn: PagerConn, mut rng: Rng, pages: u64, stop: Arc<AtomicBool>) -> Outcome {
    let page = P as usize;
    let mut store: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut object = None;
    let ignore = |r: Result<()>| match r {
        Ok(()) | Err(KernError::SendInvalidDest) | Err(KernError::InvalidName) => Ok(()),
        Err(e) => Err(format!("pager call failed: {e:?}")),
    };
    while !stop.load(SeqCst) {
        let r = match conn.recv(Some(Duration::from_micros(300))) {
            Ok(r) => r,
            Err(KernError::RcvTimedOut) => {
                let Some(obj) = object else { continue };
                if !rng.chance(30) {
                    continue;
                }
                let off = rng.below(pages) * P;
                let size = (1 + rng.below(3)).min(pages - off / P) * P;
                let (ret, flush, lock) = match rng.below(5) {
                    0 => (ReturnPolicy::Dirty, true, VmProt::NONE),
                    1 => (ReturnPolicy::Dirty, false, VmProt::NONE),
                    2 => (ReturnPolicy::All, true, VmProt::NONE),
                    3 => (ReturnPolicy::All, false, VmProt::WRITE),
                    _ => (ReturnPolicy::None, false, VmProt::WRITE),
                };
                ignore(conn.lock_request(obj, off, size, ret, flush, lock))?;
                continue;
            }
            Err(e) => return Err(format!("pager receive: {e:?}")),
        };
        let obj = r.object;
        match r.msg {
            KernelToPager::Init { .. } => {
                object = Some(obj);
                let m = PagerToKernel::ChangeAttributes {
                    may_cache: rng.chance(50),
                    copy_strategy: CopyStrategy::Delay,
                    cluster_pages: 1 + rng.below(3) as u32,
                };
                ignore(conn.call(obj, m))?;
            }
            KernelToPager::DataRequest { offset, length, .. } => {
                for off in (offset..offset + length).step_by(page) {
                    let data = store.entry(off).or_insert_with(|| vec![0; page]).clone();
                    let lock = if rng.chance(20) { VmProt::WRITE } else { VmProt::NONE };
                    ignore(conn.supply_with(obj, off, &data, lock, rng.chance(20)))?;
                }
            }
            KernelToPager::DataUnlock { offset, length, .. } => {
                ignore(conn.lock_request(obj, offset, length, ReturnPolicy::None, false, VmProt::NONE))?;
            }
            KernelToPager::DataReturn { offset, data, dirty, .. } => {
                for (i, p) in data.chunks(page).enumerate() {
                    let off = offset + (i * page) as u64;
                    if !dirty {
                        let had = store.get(&off);
                        check!(
                            had.is_some_and(|h| h[..] == p[..]),
                            "page {:#x} came back marked clean but differs from the pager's copy",
                            off
                        );
                    }
                    store.insert(off, p.to_vec());
                }
            }
            KernelToPager::Terminate | KernelToPager::Create { .. } => {}
        }
    }
    conn.die().map_err(|e| format!("pager task: {e:?}"))
}

fn pageout_round(seed: u64) {
    let round = format!("pageout round seed={seed}");
    let mut rng = Rng::new(seed);
    let config = KernelConfig {
        phys_pages: 1024,
        resident_limit: 4 + rng.below(12) as usize,
        proxy_version: ProxyVersion::Paging,
        cluster_pages: 1 + rng.below(4) as u32,
        ..KernelConfig::default()
    };
    let k = round_kernel(config, &mut rng);
    let (_swap, swapf) = Swap::new("pageout");
    let dp = boot_default_pager(&k, swapf).unwrap();

    // The parent, its sibling (sharing `Shared`), and the pager's object.
    let parent = k.task_create(None).unwrap();
    let mut base = HashMap::new();
    for (region, pages) in REGION_PAGES {
        if region == Region::File {
            continue;
        }
        let a = k.vm_allocate(parent, VmAddr(0), pages * P, true).unwrap();
        let inherit = if region == Region::Shared { VmInherit::Share } else { VmInherit::Copy };
        k.vm_inherit(parent, a, pages * P, inherit).unwrap();
        base.insert(region, a);
    }
    let sibling = k.task_create(Some(parent)).unwrap();
    // Later children get no part of the shared region.
    k.vm_inherit(parent, base[&Region::Shared], 4 * P, VmInherit::None).unwrap();
    let file_pages = 6;
    let mut conn = PagerConn::new(k.clone()).unwrap();
    let o = conn.new_object().unwrap();
    let in_parent = conn.give(o, parent).unwrap();
    let in_sibling = conn.give(o, sibling).unwrap();
    let stop_pager = Arc::new(AtomicBool::new(false));
    let pager = {
        let (rng, stop) = (rng.fork(), stop_pager.clone());
        std::thread::spawn(move || chaos_pager(conn, rng, file_pages, stop))
    };
    base.insert(Region::File, k.vm_map(parent, MapRequest::anywhere(file_pages * P, Some(in_parent))).unwrap());
    // The sibling maps the object directly, or through a paging proxy, or
    // through a proxy of that proxy: its stores and faults go through the
    // views then, under the same flushes, locks and pageouts.
    let mut sibling_name = in_sibling;
    for _ in 0..rng.below(3) {
        let len = [file_pages * P];
        let px = k
            .memory_object_create_proxy_version(
                sibling,
                VmProt::ALL,
                &[sibling_name],
                &[0],
                &[0],
                &len,
                ProxyVersion::Paging,
            )
            .unwrap();
        sibling_name = px.proxy;
    }
    let file_in_sibling = k.vm_map(sibling, MapRequest::anywhere(file_pages * P, Some(sibling_name))).unwrap();

    // Writers: two threads of the parent, one of the sibling (which owns
    // only words it can see).
    const WRITERS: usize = 3;
    const SIBLING_WRITER: usize = 2;
    let mut words = Vec::new();
    for (region, pages) in REGION_PAGES {
        for page in 0..pages {
            for slot in 0..SLOTS {
                let within = page * P + slot_offset(slot);
                let at_sibling = match region {
                    Region::Anon => None,
                    Region::Shared => Some(VmAddr(base[&region].0 + within)),
                    Region::File => Some(VmAddr(file_in_sibling.0 + within)),
                };
                let writers = if at_sibling.is_some() { WRITERS } else { SIBLING_WRITER };
                let owner = rng.below(writers as u64) as usize;
                words.push(Word { region, at_parent: VmAddr(base[&region].0 + within), at_sibling, owner });
            }
        }
    }
    let words = Arc::new(words);
    let seqs = Arc::new(Seqs {
        published: (0..words.len()).map(|_| AtomicU64::new(0)).collect(),
        started: (0..words.len()).map(|_| AtomicU64::new(0)).collect(),
    });
    let writers_left = Arc::new(AtomicUsize::new(WRITERS));
    let mut workers: Vec<(&'static str, Worker)> = Vec::new();

    for w in 0..WRITERS {
        let (k, mut rng, words, seqs, left) =
            (k.clone(), rng.fork(), words.clone(), seqs.clone(), writers_left.clone());
        let task = if w == SIBLING_WRITER { sibling } else { parent };
        workers.push((
            "writer",
            Box::new(move || {
                let mine: Vec<usize> = (0..words.len()).filter(|&g| words[g].owner == w).collect();
                let r = (|| {
                    for _ in 0..1500 {
                        let g = mine[rng.below(mine.len() as u64) as usize];
                        let at = if w == SIBLING_WRITER { words[g].at_sibling.unwrap() } else { words[g].at_parent };
                        let seq = seqs.started[g].load(SeqCst) + 1;
                        seqs.started[g].store(seq, SeqCst);
                        let stored = if rng.chance(15) {
                            k.vm_write(task, at, &stamp(g, seq).to_le_bytes())
                        } else {
                            k.write_u64(task, at, stamp(g, seq))
                        };
                        match stored {
                            Ok(()) => seqs.published[g].store(seq, SeqCst),
                            // The protection flipper made it read-only.
                            Err(KernError::ProtectionFailure) if task == parent => {}
                            Err(e) => return Err(format!("writer {w}: store to word {g} gave {e:?}")),
                        }
                    }
                    Ok(())
                })();
                left.fetch_sub(1, SeqCst);
                r
            }),
        ));
    }
    for (task, name) in [(parent, "reader in parent"), (parent, "reader in parent"), (sibling, "reader in sibling")] {
        let (k, mut rng, words, seqs, left) =
            (k.clone(), rng.fork(), words.clone(), seqs.clone(), writers_left.clone());
        workers.push((
            name,
            Box::new(move || {
                let mut last = vec![0u64; words.len()];
                while left.load(SeqCst) > 0 {
                    let g = rng.below(words.len() as u64) as usize;
                    let at = if task == parent {
                        words[g].at_parent
                    } else {
                        match words[g].at_sibling {
                            Some(a) => a,
                            // The sibling's copy of the parent's private
                            // region, made before any store: zeroes.
                            None => {
                                let r = k.read_u64(task, words[g].at_parent);
                                check!(r == Ok(0), "the sibling's copy of word {g} gave {r:x?}");
                                continue;
                            }
                        }
                    };
                    let low = seqs.published[g].load(SeqCst);
                    let r = if rng.chance(15) {
                        k.vm_read(task, at, 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                    } else {
                        k.read_u64(task, at)
                    };
                    let r = r.map_err(|e| format!("read of word {g} gave {e:?}"))?;
                    let high = seqs.started[g].load(SeqCst);
                    let seq = unstamp(g, r)?;
                    check!(
                        low <= seq && seq <= high,
                        "word {g} ({:?}) read seq {seq}: the last completed store was {low}, the last begun {high}",
                        words[g].region
                    );
                    check!(seq >= last[g], "word {g} went back from seq {} to {seq}", last[g]);
                    last[g] = seq;
                }
                Ok(())
            }),
        ));
    }
    {
        // Flips pages of the parent's private and file regions read-only
        // and back.
        let (k, mut rng, left) = (k.clone(), rng.fork(), writers_left.clone());
        let bases = base.clone();
        workers.push((
            "protection flipper",
            Box::new(move || {
                while left.load(SeqCst) > 0 {
                    let region = if rng.chance(50) { Region::Anon } else { Region::File };
                    let pages = REGION_PAGES.iter().find(|r| r.0 == region).unwrap().1;
                    let first = rng.below(pages);
                    let n = 1 + rng.below(pages - first);
                    let at = VmAddr(bases[&region].0 + first * P);
                    let r = k.vm_protect(parent, at, n * P, false, VmProt::READ);
                    check!(r.is_ok(), "vm_protect(READ) gave {r:?}");
                    std::thread::sleep(Duration::from_micros(rng.below(300)));
                    let r = k.vm_protect(parent, at, n * P, false, VmProt::DEFAULT);
                    check!(r.is_ok(), "vm_protect(DEFAULT) gave {r:?}");
                    std::thread::sleep(Duration::from_micros(rng.below(300)));
                }
                Ok(())
            }),
        ));
    }
    {
        // Forks children at random moments: each sees the parent as it was
        // at the fork, and keeps seeing exactly that while the parent goes
        // on writing.
        let (k, mut rng, words, seqs, left) =
            (k.clone(), rng.fork(), words.clone(), seqs.clone(), writers_left.clone());
        workers.push((
            "forker",
            Box::new(move || {
                let copied: Vec<usize> = (0..words.len()).filter(|&g| words[g].region != Region::Shared).collect();
                let mut forks = 0;
                while left.load(SeqCst) > 0 || forks == 0 {
                    forks += 1;
                    std::thread::sleep(Duration::from_micros(rng.below(2000)));
                    let low: Vec<u64> = copied.iter().map(|&g| seqs.published[g].load(SeqCst)).collect();
                    let child = k.task_create(Some(parent)).map_err(|e| format!("fork: {e:?}"))?;
                    let high: Vec<u64> = copied.iter().map(|&g| seqs.started[g].load(SeqCst)).collect();
                    let mut seen = Vec::new();
                    for (i, &g) in copied.iter().enumerate() {
                        let r = k.read_u64(child, words[g].at_parent).map_err(|e| format!("child read: {e:?}"))?;
                        let seq = unstamp(g, r)?;
                        check!(
                            low[i] <= seq && seq <= high[i],
                            "child: word {g} ({:?}) has seq {seq}, not in [{}, {}] as at the fork",
                            words[g].region,
                            low[i],
                            high[i]
                        );
                        seen.push(r);
                    }
                    // The child writes a little of its own (never seen by
                    // the parent), then checks its snapshot again and again
                    // while the parent goes on.
                    let mut own = HashMap::new();
                    for _ in 0..3 {
                        std::thread::sleep(Duration::from_micros(rng.below(1000)));
                        if rng.chance(50) {
                            let i = rng.below(copied.len() as u64) as usize;
                            let v = CHILD_STAMP | i as u64;
                            // (Pages read-only at the fork stay so.)
                            match k.write_u64(child, words[copied[i]].at_parent, v) {
                                Ok(()) => {
                                    own.insert(i, v);
                                }
                                Err(KernError::ProtectionFailure) => {}
                                Err(e) => return Err(format!("child store: {e:?}")),
                            }
                        }
                        for _ in 0..16 {
                            let i = rng.below(copied.len() as u64) as usize;
                            let g = copied[i];
                            let want = own.get(&i).copied().unwrap_or(seen[i]);
                            let r = k.read_u64(child, words[g].at_parent);
                            check!(
                                r == Ok(want),
                                "child: word {g} ({:?}) changed after the fork: {r:x?}, want {want:#x}",
                                words[g].region
                            );
                        }
                    }
                    k.task_terminate(child).map_err(|e| format!("terminate child: {e:?}"))?;
                }
                Ok(())
            }),
        ));
    }
    run_workers(&round, &k, workers);

    // Quiet now: every word holds its last completed store, in every task
    // that sees it.
    let (k2, words2, seqs2) = (k.clone(), words.clone(), seqs.clone());
    let finals = finishes(&round, "the final reads", move || {
        let mut bad = Vec::new();
        for (g, w) in words2.iter().enumerate() {
            let want = stamp(g, seqs2.published[g].load(SeqCst));
            let mut at = vec![(parent, w.at_parent)];
            at.extend(w.at_sibling.map(|a| (sibling, a)));
            for (t, a) in at {
                let r = k2.read_u64(t, a);
                if r != Ok(want) {
                    bad.push(format!("word {g} ({:?}) in {t:?}: {r:x?}, want {want:#x}", w.region));
                }
            }
        }
        bad
    });
    assert!(finals.is_empty(), "{round}: {finals:?}");

    k.task_terminate(sibling).unwrap();
    k.task_terminate(parent).unwrap();
    stop_pager.store(true, SeqCst);
    let r = finishes(&round, "the pager", move || pager.join());
    if let Err(e) = r.unwrap_or_else(|p| Err(panic_text(&p))) {
        panic!("{round}: pager: {e}");
    }
    finishes(&round, "stopping the default pager", move || dp.stop());
    let s = k.stats();
    if std::env::var("CHAOS_VERBOSE").is_ok() {
        eprintln!("{round}: {s:?}");
    }
    assert_eq!((s.resident, s.objects, s.proxies), (0, 0, 0), "{round}: left behind {s:?}");
}

#[test]
fn every_read_under_pageout_flushes_and_flips_sees_the_last_store() {
    let _load = Load::start();
    for seed in seeds(2, 8) {
        pageout_round(seed);
    }
}

// ----- 3. lifecycle -----

/// The errors a lifecycle round may see: every one documented for a call
/// whose task, right, proxy, mapping or pager went away under it.
fn documented(e: KernError) -> bool {
    use KernError::*;
    matches!(
        e,
        MemoryError
            | InvalidTask
            | InvalidAddress
            | ProtectionFailure
            | InvalidName
            | InvalidRight
            | InvalidCapability
            | SendInvalidDest
            | NotSupported
    )
}

/// What a lifecycle round has alive: names are in the holder task's space.
#[derive(Default)]
struct Registry {
    objects: Vec<PortName>,
    /// `(proxy, revoke, length)`.
    proxies: Vec<(PortName, PortName, u64)>,
    tasks: Vec<TaskId>,
    /// `(task, address, size)`; may be stale.
    maps: Vec<(TaskId, VmAddr, u64)>,
    pagers: Vec<RunningPager>,
    default_pager: Option<(RunningPager, Swap)>,
}

fn pick<T: Clone>(rng: &mut Rng, v: &[T]) -> Option<T> {
    (!v.is_empty()).then(|| v[rng.below(v.len() as u64) as usize].clone())
}

/// Runs `ops` steps of `step` and checks that every error is documented.
fn churn(what: &'static str, ops: usize, mut step: impl FnMut() -> Result<()>) -> Outcome {
    let mut errors: HashMap<KernError, usize> = HashMap::new();
    for i in 0..ops {
        let r = step();
        if r == Err(KernError::Terminated) {
            // The step says the churning is over.
            break;
        }
        if let Err(e) = r {
            check!(documented(e), "{what}: step {i} gave {e:?}, which no call documents for this");
            *errors.entry(e).or_default() += 1;
        }
    }
    if std::env::var("CHAOS_VERBOSE").is_ok() {
        eprintln!("{what}: errors {errors:?}");
    }
    Ok(())
}

fn lifecycle_round(seed: u64) {
    let round = format!("lifecycle round seed={seed}");
    let mut rng = Rng::new(seed);
    let config = KernelConfig {
        phys_pages: 4096,
        resident_limit: 8 + rng.below(48) as usize,
        proxy_version: if rng.chance(50) { ProxyVersion::Paging } else { ProxyVersion::Mapping },
        cluster_pages: 1 + rng.below(4) as u32,
        ..KernelConfig::default()
    };
    let k = round_kernel(config, &mut rng);
    let holder = k.task_create(None).unwrap();
    // The holder is the booter too: replacing the default pager needs the
    // host privilege.
    let host_priv = k.boot_host_priv(holder).unwrap();
    let reg = Arc::new(std::sync::Mutex::new(Registry::default()));
    {
        let (swap, f) = Swap::new("lifecycle");
        reg.lock().unwrap().default_pager = Some((start_default_pager(&k, holder, host_priv, f).unwrap(), swap));
    }
    let new_pager = move |k: &Arc<Kernel>, reg: &std::sync::Mutex<Registry>, rng: &mut Rng| -> Result<()> {
        let mut conn = PagerConn::new(k.clone())?;
        let mut names = Vec::new();
        for _ in 0..1 + rng.below(2) {
            let o = conn.new_object()?;
            names.push(conn.give(o, holder)?);
        }
        let p = if rng.chance(50) {
            RunningPager::spawn(conn, MemBacking::default())
        } else {
            RunningPager::spawn(conn, PatternBacking { rng: rng.fork(), cache: rng.chance(50) })
        };
        let mut r = reg.lock().unwrap();
        r.objects.extend(names);
        r.pagers.push(p);
        Ok(())
    };
    for _ in 0..2 {
        new_pager(&k, &reg, &mut rng).unwrap();
    }
    for _ in 0..2 {
        let t = k.task_create(None).unwrap();
        reg.lock().unwrap().tasks.push(t);
    }

    let mut workers: Vec<(&'static str, Worker)> = Vec::new();
    {
        let (k, mut rng, reg) = (k.clone(), rng.fork(), reg.clone());
        workers.push((
            "pager churner",
            Box::new(move || {
                churn("pager churner", 30, || {
                    std::thread::sleep(Duration::from_micros(rng.below(1500)));
                    match rng.below(6) {
                        0 | 1 => new_pager(&k, &reg, &mut rng),
                        2 | 3 => {
                            // Stopped mid-traffic: its faults fail, none hangs.
                            let p = {
                                let mut r = reg.lock().unwrap();
                                let n = r.pagers.len();
                                (n > 1).then(|| r.pagers.swap_remove(rng.below(n as u64) as usize))
                            };
                            if let Some(p) = p {
                                p.stop();
                            }
                            Ok(())
                        }
                        4 => {
                            // A new default pager replaces the old one.
                            let (swap, f) = Swap::new("lifecycle");
                            let new = (start_default_pager(&k, holder, host_priv, f)?, swap);
                            let old = reg.lock().unwrap().default_pager.replace(new);
                            if let Some((p, _swap)) = old {
                                p.stop();
                            }
                            Ok(())
                        }
                        _ => {
                            let name = {
                                let mut r = reg.lock().unwrap();
                                let n = r.objects.len();
                                (n > 2).then(|| r.objects.swap_remove(rng.below(n as u64) as usize))
                            };
                            name.map_or(Ok(()), |n| k.port_deallocate(holder, n))
                        }
                    }
                })
            }),
        ));
    }
    {
        let (k, mut rng, reg) = (k.clone(), rng.fork(), reg.clone());
        workers.push((
            "proxy churner",
            Box::new(move || {
                churn("proxy churner", 120, || {
                    let (objs, pxs) = {
                        let r = reg.lock().unwrap();
                        (r.objects.clone(), r.proxies.clone())
                    };
                    match rng.below(8) {
                        0..=3 => {
                            // Over an object, or over a proxy (nested).
                            let (source, len) = match (rng.chance(40), pick(&mut rng, &pxs)) {
                                (true, Some((p, _, plen))) => (p, plen),
                                _ => match pick(&mut rng, &objs) {
                                    Some(o) => (o, 8 * P),
                                    None => return Ok(()),
                                },
                            };
                            let start = rng.below(len / P) * P;
                            let wlen = (1 + rng.below((len - start) / P)) * P;
                            let version = if rng.chance(50) { ProxyVersion::Paging } else { ProxyVersion::Mapping };
                            let max = VmProt::from_bits_truncate(1 + rng.below(7) as u32);
                            let px = k.memory_object_create_proxy_version(
                                holder,
                                max,
                                &[source],
                                &[0],
                                &[start],
                                &[wlen],
                                version,
                            )?;
                            reg.lock().unwrap().proxies.push((px.proxy, px.revoke, wlen));
                            Ok(())
                        }
                        4 | 5 => match pick(&mut rng, &pxs) {
                            Some((_, revoke, _)) => k.memory_object_proxy_revoke(holder, revoke),
                            None => Ok(()),
                        },
                        6 => {
                            let gone = {
                                let mut r = reg.lock().unwrap();
                                let n = r.proxies.len();
                                (n > 0).then(|| r.proxies.swap_remove(rng.below(n as u64) as usize))
                            };
                            if let Some((p, revoke, _)) = gone {
                                k.port_deallocate(holder, p)?;
                                k.port_deallocate(holder, revoke)?;
                            }
                            Ok(())
                        }
                        _ => {
                            // A region proxy of a mapping, mapped into
                            // another task, then let go.
                            let (maps, tasks) = {
                                let r = reg.lock().unwrap();
                                (r.maps.clone(), r.tasks.clone())
                            };
                            let (Some((t, a, size)), Some(to)) = (pick(&mut rng, &maps), pick(&mut rng, &tasks)) else {
                                return Ok(());
                            };
                            let px = k.vm_region_create_proxy(t, a, VmProt::ALL, size)?;
                            let r = k
                                .port_transfer(t, px.proxy, Disposition::CopySend, to)
                                .and_then(|n| {
                                    // The region may have holes by now (the
                                    // registry lags): map its first window.
                                    let m = k.memory_object_proxy_info(to, n).and_then(|info| {
                                        let w = info.windows[0];
                                        let r = MapRequest::anywhere(w.len, Some(n)).offset(w.offset);
                                        k.vm_map(to, r).map(|a| (a, w.len))
                                    });
                                    k.port_deallocate(to, n)?;
                                    m
                                })
                                .map(|(a, len)| reg.lock().unwrap().maps.push((to, a, len)));
                            let _ = k.port_deallocate(t, px.proxy);
                            let _ = k.port_deallocate(t, px.revoke);
                            r
                        }
                    }
                })
            }),
        ));
    }
    {
        let (k, mut rng, reg) = (k.clone(), rng.fork(), reg.clone());
        workers.push((
            "task churner",
            Box::new(move || {
                churn("task churner", 60, || {
                    std::thread::sleep(Duration::from_micros(rng.below(800)));
                    let tasks = reg.lock().unwrap().tasks.clone();
                    if tasks.len() < 6 && rng.chance(60) {
                        let parent = if rng.chance(50) { pick(&mut rng, &tasks) } else { None };
                        let t = k.task_create(parent)?;
                        let mut r = reg.lock().unwrap();
                        r.tasks.push(t);
                        if let Some(p) = parent {
                            // The child has the parent's mappings (those
                            // not inherited fault with KERN_INVALID_ADDRESS).
                            let inherited: Vec<_> = r.maps.iter().filter(|m| m.0 == p).map(|m| (t, m.1, m.2)).collect();
                            r.maps.extend(inherited);
                        }
                        return Ok(());
                    }
                    let t = {
                        let mut r = reg.lock().unwrap();
                        let n = r.tasks.len();
                        (n > 1).then(|| r.tasks.swap_remove(rng.below(n as u64) as usize))
                    };
                    match t {
                        Some(t) => {
                            reg.lock().unwrap().maps.retain(|m| m.0 != t);
                            k.task_terminate(t)
                        }
                        None => Ok(()),
                    }
                })
            }),
        ));
    }
    for _ in 0..2 {
        let (k, mut rng, reg) = (k.clone(), rng.fork(), reg.clone());
        workers.push((
            "mapper",
            Box::new(move || {
                churn("mapper", 150, || {
                    let (objs, pxs, tasks, maps) = {
                        let r = reg.lock().unwrap();
                        (r.objects.clone(), r.proxies.clone(), r.tasks.clone(), r.maps.clone())
                    };
                    let Some(t) = pick(&mut rng, &tasks) else { return Ok(()) };
                    match rng.below(10) {
                        0..=4 => {
                            let (name, len) = match (rng.chance(50), pick(&mut rng, &pxs)) {
                                (true, Some((p, _, len))) => (p, len),
                                _ => match pick(&mut rng, &objs) {
                                    Some(o) => (o, 8 * P),
                                    None => return Ok(()),
                                },
                            };
                            let n = k.port_transfer(holder, name, Disposition::CopySend, t)?;
                            let off = rng.below(len / P) * P;
                            let size = (1 + rng.below((len - off) / P)) * P;
                            let m = k.vm_map(t, MapRequest::anywhere(size, Some(n)).offset(off).copy(rng.chance(30)));
                            k.port_deallocate(t, n)?;
                            // A proxy refuses a copy of a window without read.
                            let a = match m {
                                Err(KernError::ProtectionFailure) => return Ok(()),
                                m => m?,
                            };
                            reg.lock().unwrap().maps.push((t, a, size));
                            Ok(())
                        }
                        5 => {
                            let size = (1 + rng.below(4)) * P;
                            let a = k.vm_allocate(t, VmAddr(0), size, true)?;
                            reg.lock().unwrap().maps.push((t, a, size));
                            Ok(())
                        }
                        6 | 7 => {
                            let gone = {
                                let mut r = reg.lock().unwrap();
                                let n = r.maps.len();
                                (n > 0).then(|| r.maps.swap_remove(rng.below(n as u64) as usize))
                            };
                            match gone {
                                Some((t, a, size)) => k.vm_deallocate(t, a, size),
                                None => Ok(()),
                            }
                        }
                        _ => match pick(&mut rng, &maps) {
                            Some((t, a, size)) => {
                                let prot = if rng.chance(50) { VmProt::READ } else { VmProt::DEFAULT };
                                k.vm_protect(t, a, size, false, prot)
                            }
                            None => Ok(()),
                        },
                    }
                })
            }),
        ));
    }
    // Faulters go on as long as any churner does.
    let churners = Arc::new(AtomicUsize::new(workers.len()));
    let workers: Vec<(&'static str, Worker)> = workers
        .into_iter()
        .map(|(name, w)| {
            let left = churners.clone();
            let w: Worker = Box::new(move || {
                let r = w();
                left.fetch_sub(1, SeqCst);
                r
            });
            (name, w)
        })
        .collect();
    let mut workers = workers;
    for _ in 0..3 {
        let (k, mut rng, reg, left) = (k.clone(), rng.fork(), reg.clone(), churners.clone());
        workers.push((
            "faulter",
            Box::new(move || {
                churn("faulter", usize::MAX, || {
                    if left.load(SeqCst) == 0 {
                        return Err(KernError::Terminated);
                    }
                    let maps = reg.lock().unwrap().maps.clone();
                    let Some((t, a, size)) = pick(&mut rng, &maps) else {
                        std::thread::sleep(Duration::from_micros(100));
                        return Ok(());
                    };
                    let at = VmAddr(a.0 + rng.below(size / 8) * 8);
                    match rng.below(10) {
                        0..=3 => k.write_u64(t, at, rng.next()),
                        4 => k.vm_write(t, at, &rng.next().to_le_bytes()),
                        5 => k.vm_read(t, a, size).map(|_| ()),
                        6 if size > P => k.vm_copy(t, a, P, VmAddr(a.0 + P)),
                        _ => k.read_u64(t, at).map(|_| ()),
                    }
                })
            }),
        ));
    }
    run_workers(&round, &k, workers);

    // Tear everything down: nothing may be left.
    let reg = std::mem::take(&mut *reg.lock().unwrap());
    let k2 = k.clone();
    finishes(&round, "the teardown", move || {
        for t in reg.tasks {
            let _ = k2.task_terminate(t);
        }
        k2.task_terminate(holder).unwrap();
        for p in reg.pagers {
            p.stop();
        }
        if let Some((p, _swap)) = reg.default_pager {
            p.stop();
        }
    });
    let s = k.stats();
    if std::env::var("CHAOS_VERBOSE").is_ok() {
        eprintln!("{round}: {s:?}");
    }
    assert_eq!((s.resident, s.objects, s.proxies), (0, 0, 0), "{round}: left behind {s:?}");
}

#[test]
fn churning_tasks_proxies_mappings_and_pagers_hangs_nothing_and_leaks_nothing() {
    let _load = Load::start();
    for seed in seeds(3, 24) {
        lifecycle_round(seed);
    }
}

// ----- the bugs found, each as a straight-line test -----
//
// Leaks: an object the cache kept for a pager that then died (or destroyed
// it) could never be mapped again, yet kept its frames and record for ever.

/// A kernel with a running in-memory pager serving one object, and a task
/// holding a send right to it.
fn one_object() -> (Arc<Kernel>, TaskId, PortName, RunningPager) {
    let k = Kernel::new(KernelConfig { phys_pages: 64, resident_limit: 64, ..Default::default() });
    let t = k.task_create(None).unwrap();
    let mut conn = PagerConn::new(k.clone()).unwrap();
    let o = conn.new_object().unwrap();
    let name = conn.give(o, t).unwrap();
    (k.clone(), t, name, RunningPager::spawn(conn, MemBacking::default()))
}

#[test]
fn a_cached_object_goes_with_its_pages_when_its_pager_dies() {
    let (k, t, name, pager) = one_object();
    let a = k.vm_map(t, MapRequest::anywhere(2 * P, Some(name))).unwrap();
    k.write_u64(t, a, 7).unwrap();
    k.read_u64(t, VmAddr(a.0 + P)).unwrap();
    k.vm_deallocate(t, a, 2 * P).unwrap();
    // Unmapped, the object stays cached for its pager (`may_cache`).
    assert_eq!(k.stats().objects, 1);
    assert!(k.stats().resident >= 2);
    // Once the pager is gone nobody can map it again: it must not keep
    // its frames (or its record) for ever.
    pager.stop();
    k.task_terminate(t).unwrap();
    let s = k.stats();
    assert_eq!((s.objects, s.resident), (0, 0), "{s:?}");
}

#[test]
fn a_cached_object_its_pager_destroys_goes_at_once() {
    let k = Kernel::new(KernelConfig { phys_pages: 64, resident_limit: 64, cluster_pages: 1, ..Default::default() });
    let t = k.task_create(None).unwrap();
    let mut pager = PagerConn::new(k.clone()).unwrap();
    let o = pager.new_object().unwrap();
    let name = pager.give(o, t).unwrap();
    let a = k.vm_map(t, MapRequest::anywhere(P, Some(name))).unwrap();
    let k2 = k.clone();
    let reader = std::thread::spawn(move || k2.read_u64(t, a));
    let (obj, off, _, _) = pager.expect_request(Duration::from_secs(5)).unwrap();
    pager.supply(obj, off, &vec![1u8; P as usize]).unwrap();
    assert!(reader.join().unwrap().is_ok());
    k.vm_deallocate(t, a, P).unwrap();
    assert_eq!((k.stats().objects, k.stats().resident), (1, 1));
    pager.destroy(obj).unwrap();
    let s = k.stats();
    assert_eq!((s.objects, s.resident), (0, 0), "{s:?}");
}

// Lost wake-ups: a thread asleep in a fault or a receive must wake when
// what it waits on goes away, not only when some unrelated event happens.

/// Waits for a faulting thread's result, at most `within`.
fn joined<R: Send + 'static>(rx: &mpsc::Receiver<R>, within: Duration) -> Option<R> {
    rx.recv_timeout(within).ok()
}

fn read_on_thread(k: &Arc<Kernel>, t: TaskId, at: VmAddr) -> mpsc::Receiver<Result<u64>> {
    let (tx, rx) = mpsc::channel();
    let k = k.clone();
    std::thread::spawn(move || {
        let _ = tx.send(k.read_u64(t, at));
    });
    rx
}

#[test]
fn a_fault_waiting_on_an_object_that_is_terminated_under_it_wakes() {
    let k = Kernel::new(KernelConfig { phys_pages: 64, resident_limit: 64, cluster_pages: 1, ..Default::default() });
    let t = k.task_create(None).unwrap();
    let mut pager = PagerConn::new(k.clone()).unwrap();
    let o = pager.new_object().unwrap();
    let name = pager.give(o, t).unwrap();
    let a = k.vm_map(t, MapRequest::anywhere(P, Some(name))).unwrap();
    // The pager takes the request but has not answered when another thread
    // of the task unmaps the page: the object (not cacheable) terminates.
    let reader = read_on_thread(&k, t, a);
    let r = pager.recv(Some(Duration::from_secs(5))).unwrap();
    assert!(matches!(r.msg, KernelToPager::Init { .. }));
    pager.call(r.object, PagerToKernel::Ready { may_cache: false, copy_strategy: CopyStrategy::Delay }).unwrap();
    let (obj, off, _, _) = pager.expect_request(Duration::from_secs(5)).unwrap();
    k.vm_deallocate(t, a, P).unwrap();
    assert_eq!(pager.recv(Some(Duration::from_secs(5))).unwrap().msg, KernelToPager::Terminate);
    // Its late answer goes nowhere; the faulting thread must not sleep on.
    let _ = pager.supply(obj, off, &vec![1u8; P as usize]);
    let r = joined(&reader, Duration::from_secs(5));
    assert_eq!(r, Some(Err(KernError::InvalidAddress)), "the fault still sleeps (or gave something else)");
}

#[test]
fn a_fault_waiting_for_a_pager_that_never_said_ready_wakes_when_its_mapping_goes() {
    let k = Kernel::new(KernelConfig { phys_pages: 64, resident_limit: 64, cluster_pages: 1, ..Default::default() });
    let t = k.task_create(None).unwrap();
    let mut pager = PagerConn::new(k.clone()).unwrap();
    let o = pager.new_object().unwrap();
    let name = pager.give(o, t).unwrap();
    let a = k.vm_map(t, MapRequest::anywhere(P, Some(name))).unwrap();
    let reader = read_on_thread(&k, t, a);
    assert!(matches!(pager.recv(Some(Duration::from_secs(5))).unwrap().msg, KernelToPager::Init { .. }));
    // Let the reader get to its wait (it waits for `ready`).
    std::thread::sleep(Duration::from_millis(20));
    k.vm_deallocate(t, a, P).unwrap();
    let r = joined(&reader, Duration::from_secs(5));
    assert_eq!(r, Some(Err(KernError::InvalidAddress)), "the fault still sleeps (or gave something else)");
}

#[test]
fn a_receiver_on_a_port_set_wakes_when_a_port_with_messages_joins_it() {
    let k = Kernel::new(KernelConfig { phys_pages: 16, resident_limit: 16, ..Default::default() });
    let t = k.task_create(None).unwrap();
    let set = k.port_set_allocate(t).unwrap();
    let port = k.port_allocate(t).unwrap();
    k.port_make_send(t, port).unwrap();
    k.msg_send(t, machvm_core::ipc::UserMessage::new(port, 7, vec![1, 2, 3])).unwrap();
    // A thread of the task waits on the (empty) set.
    let (tx, rx) = mpsc::channel();
    let k2 = k.clone();
    std::thread::spawn(move || {
        let _ = tx.send(k2.msg_receive(t, set, None).map(|m| m.id));
    });
    std::thread::sleep(Duration::from_millis(20));
    // Another thread puts the port, message and all, into the set.
    k.port_move_member(t, port, Some(set)).unwrap();
    let r = joined(&rx, Duration::from_secs(5));
    assert_eq!(r, Some(Ok(7)), "the receiver sleeps on with a message in its set");
}

/// Starts a receive by a thread of `t` on `name`, waiting for ever.
fn receive_on_thread(k: &Arc<Kernel>, t: TaskId, name: PortName) -> mpsc::Receiver<Result<u32>> {
    let (tx, rx) = mpsc::channel();
    let k = k.clone();
    std::thread::spawn(move || {
        let _ = tx.send(k.msg_receive(t, name, None).map(|m| m.id));
    });
    rx
}

#[test]
fn a_receiver_on_a_port_set_wakes_when_the_set_is_destroyed() {
    let k = Kernel::new(KernelConfig { phys_pages: 16, resident_limit: 16, ..Default::default() });
    let t = k.task_create(None).unwrap();
    let set = k.port_set_allocate(t).unwrap();
    let rx = receive_on_thread(&k, t, set);
    std::thread::sleep(Duration::from_millis(20));
    k.port_destroy(t, set).unwrap();
    let r = joined(&rx, Duration::from_secs(5));
    assert!(matches!(r, Some(Err(_))), "the receiver sleeps on a set that is gone: {r:?}");
}

#[test]
fn a_receiver_wakes_when_its_receive_right_is_moved_away() {
    let k = Kernel::new(KernelConfig { phys_pages: 16, resident_limit: 16, ..Default::default() });
    let t = k.task_create(None).unwrap();
    let other = k.task_create(None).unwrap();
    let port = k.port_allocate(t).unwrap();
    let rx = receive_on_thread(&k, t, port);
    std::thread::sleep(Duration::from_millis(20));
    k.port_transfer(t, port, Disposition::MoveReceive, other).unwrap();
    let r = joined(&rx, Duration::from_secs(5));
    assert!(matches!(r, Some(Err(_))), "the receiver sleeps on a right it no longer holds: {r:?}");
}

// A misreport: a store racing the kernel's dirty check, made to happen.

/// A clean, read page mapped writable through `m` (a racing machine), with
/// its pager: `(kernel, task, address, pager, object)`.
fn racing_clean_page(m: &Arc<RacingMachine>, precious: bool) -> (Arc<Kernel>, TaskId, VmAddr, PagerConn, PortName) {
    let k = Kernel::with_machine(
        KernelConfig { phys_pages: 64, resident_limit: 64, cluster_pages: 1, ..Default::default() },
        m.clone(),
    );
    let t = k.task_create(None).unwrap();
    let mut pager = PagerConn::new(k.clone()).unwrap();
    let o = pager.new_object().unwrap();
    let name = pager.give(o, t).unwrap();
    let a = k.vm_map(t, MapRequest::anywhere(P, Some(name))).unwrap();
    let reader = read_on_thread(&k, t, a);
    let (obj, off, _, _) = pager.expect_request(Duration::from_secs(5)).unwrap();
    pager.supply_with(obj, off, &vec![0u8; P as usize], VmProt::NONE, precious).unwrap();
    assert_eq!(joined(&reader, Duration::from_secs(5)), Some(Ok(0)));
    (k, t, a, pager, obj)
}

/// A pager cleans a page and write-locks it (`lock_request(return dirty,
/// no flush, lock WRITE)`) while a task thread is about to store into it.
/// The kernel must take write access away *before* it judges the page: a
/// store landing after a "clean" verdict would be neither returned nor
/// prevented, and the pager, told "locked, nothing dirty", would hold
/// stale data. So the racing store cannot land at that moment; the task's
/// next store asks the pager to unlock.
#[test]
fn a_store_racing_a_clean_and_write_lock_cannot_slip_in() {
    let m = RacingMachine::new(64);
    let (k, t, a, mut pager, obj) = racing_clean_page(&m, false);
    m.arm(42);
    pager.lock_request(obj, 0, P, ReturnPolicy::Dirty, false, VmProt::WRITE).unwrap();
    let landed = m.landed();
    match pager.recv(Some(Duration::from_millis(50))) {
        Err(KernError::RcvTimedOut) => {
            assert_eq!(landed, None, "a store landed after the page was judged clean, and was never returned")
        }
        other => panic!("a clean page was returned: {other:?}"),
    }
    assert_eq!(k.read_u64(t, a), Ok(0));
    let (tx, rx) = mpsc::channel();
    let k2 = k.clone();
    std::thread::spawn(move || {
        let _ = tx.send(k2.write_u64(t, a, 7));
    });
    let r = pager.recv(Some(Duration::from_secs(5))).unwrap();
    assert!(matches!(r.msg, KernelToPager::DataUnlock { offset: 0, access: VmProt::WRITE, .. }), "{:?}", r.msg);
    pager.lock_request(obj, 0, P, ReturnPolicy::None, false, VmProt::NONE).unwrap();
    assert_eq!(joined(&rx, Duration::from_secs(5)), Some(Ok(())));
}

/// The pager asks for a precious page back (return all, keeping it
/// resident) while a task thread is about to store into it. Write access
/// goes before the page is judged, so the store cannot land between the
/// verdict and the copy: the page comes back as it was, clean, and the
/// task's store (after a fault) makes it dirty again for the next return.
#[test]
fn a_store_racing_the_return_of_a_precious_page_waits_for_the_return() {
    let m = RacingMachine::new(64);
    let (k, t, a, mut pager, obj) = racing_clean_page(&m, true);
    m.arm(42);
    pager.lock_request(obj, 0, P, ReturnPolicy::All, false, VmProt::NONE).unwrap();
    assert_eq!(m.landed(), None, "a store slipped in while the page was being returned");
    let r = pager.recv(Some(Duration::from_secs(5))).unwrap();
    let KernelToPager::DataReturn { data, dirty, kernel_copy, .. } = r.msg else { panic!("{:?}", r.msg) };
    assert_eq!(u64::from_le_bytes(data[..8].try_into().unwrap()), 0);
    assert!(!dirty && kernel_copy, "an unmodified precious page, still resident");
    // The store comes after the return, and the next return carries it.
    k.write_u64(t, a, 42).unwrap();
    pager.lock_request(obj, 0, P, ReturnPolicy::Dirty, false, VmProt::NONE).unwrap();
    let r = pager.recv(Some(Duration::from_secs(5))).unwrap();
    let KernelToPager::DataReturn { data, dirty, .. } = r.msg else { panic!("{:?}", r.msg) };
    assert_eq!(u64::from_le_bytes(data[..8].try_into().unwrap()), 42);
    assert!(dirty);
}

//! `machvm bench`: the benchmarks of the kernel-core and proxy issues,
//! measured in one run and written to `BENCHMARKS.md`.
//!
//! Method:
//!
//! 1. Every figure is the median of several runs, timed with
//!    `std::time::Instant`; each run gets a fresh kernel (and pager), so no
//!    run inherits another's resident pages.
//! 2. Runs that are compared are interleaved (direct, mapping proxy,
//!    paging proxy, then the next round in rotated order), and a ratio is
//!    the median of the per-round ratios, so slow drift of the machine
//!    cancels out.
//! 3. Memory per proxy is measured first, while the heap is fresh: the
//!    process's resident set before and after creating many proxies, next
//!    to the sum of the kernel records' sizes.
//! 4. Growth rows time one operation at size n and at 8n, alternating
//!    which goes first, and report the median of the per-round time
//!    ratios (8 for a cost linear in n, 64 for a quadratic one), next to
//!    the ratio of the work the software MMU counted.
//! 5. The daemon section ([`daemon`], in `bench_daemon.rs`) goes last: the
//!    same figures through `machvmd`'s socket and out-of-process pagers,
//!    each next to a baseline measured in the same rounds (a raw socket
//!    ping-pong, or the in-process pager).

#[path = "bench_daemon.rs"]
mod daemon;
#[path = "bench_real.rs"]
mod real;

use crate::util::utc_now;
use machvm_core::ipc::{Disposition, PortName};
use machvm_core::memory_object::proxy::{Proxy, Window};
use machvm_core::pmap::soft::SoftMachine;
use machvm_core::vm::map::MapEntry;
use machvm_core::vm::object::{ObjectId, VmObject};
use machvm_core::{KernError, Kernel, KernelConfig, MapRequest, ProxyVersion, TaskId, VmAddr, VmProt, PAGE_SIZE};
use machvm_pagers::{Backing, MemBacking, PagerConn, PagerStats, RunningPager};
use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const P: u64 = PAGE_SIZE;

/// How big and how often.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    /// Rounds per figure (the median is reported).
    reps: usize,
    /// Pages each contender first-touches per round.
    touch_pages: u64,
    /// Passes over the resident pages per round.
    passes: u64,
    /// `vm_map` + `vm_deallocate` pairs per map size per round.
    pairs: u64,
    /// Proxies created for the memory measurement.
    mem_proxies: usize,
    /// Paging proxies over one object, and pages each maps and touches.
    share_proxies: usize,
    share_pages: u64,
    /// The n of the growth rows (each is also run at `GROWTH` n):
    /// one-page entries `vm_protect` spans, mappings of one page
    /// `vm_deallocate` removes, elements of a refused
    /// `memory_object_create_proxy`.
    grow_entries: u64,
    grow_mappings: u64,
    grow_elements: u64,
    /// The daemon section: operations of each round-trip contender and
    /// pages of each cluster-table contender per round.
    daemon_calls: u64,
    daemon_pages: u64,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                reps: 3,
                touch_pages: 1024,
                passes: 4,
                pairs: 20_000,
                mem_proxies: 5_000,
                share_proxies: 100,
                share_pages: 64,
                grow_entries: 512,
                grow_mappings: 512,
                grow_elements: 4,
                daemon_calls: 64,
                daemon_pages: 256,
            }
        } else {
            Sizes {
                reps: 15,
                touch_pages: 16_384,
                passes: 8,
                pairs: 200_000,
                mem_proxies: 50_000,
                share_proxies: 100,
                share_pages: 64,
                grow_entries: 2048,
                grow_mappings: 2048,
                grow_elements: 16,
                daemon_calls: 512,
                daemon_pages: 1024,
            }
        }
    }
}

/// Pages touched by one contender before the next takes its turn.
const BLOCK: u64 = 32;
/// `vm_map` + `vm_deallocate` pairs per turn.
const PAIR_BLOCK: u64 = 2_000;

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `1234567.0` as `1.23 M`.
fn rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

/// The smallest and largest of non-negative figures.
fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter().fold((f64::INFINITY, 0.0f64), |(l, h), &x| (l.min(x), h.max(x)))
}

/// `min–max` of rates.
fn spread(v: &[f64]) -> String {
    let (lo, hi) = min_max(v);
    format!("{}–{}", rate(lo), rate(hi))
}

/// `min–max` of plain numbers.
fn spread_plain(v: &[f64]) -> String {
    let (lo, hi) = min_max(v);
    format!("{lo:.2}–{hi:.2}")
}

/// Runs `steps` turns of every contender, in rotating order, timing each
/// contender's turns separately; returns each one's total seconds.
fn interleave<E>(steps: u64, contenders: &mut [&mut dyn FnMut(u64) -> Result<(), E>]) -> Result<Vec<f64>, E> {
    let n = contenders.len();
    let mut secs = vec![0.0; n];
    for s in 0..steps {
        for i in 0..n {
            let j = (s as usize + i) % n;
            let t = Instant::now();
            contenders[j](s)?;
            secs[j] += t.elapsed().as_secs_f64();
        }
    }
    Ok(secs)
}

/// Pages mapped in a task, touched a block at a time.
#[derive(Clone)]
struct Region {
    k: Arc<Kernel>,
    task: TaskId,
    addr: VmAddr,
}

impl Region {
    /// Reads one `u64` of each page of block `step`.
    fn touch(&self, step: u64) -> Result<(), KernError> {
        for p in step * BLOCK..(step + 1) * BLOCK {
            self.k.read_u64(self.task, VmAddr(self.addr.0 + p * P))?;
        }
        Ok(())
    }
}

/// First touch of `pages` pages of each region, interleaved, then
/// `passes` passes of resident access: (pages/s, accesses/s) per region.
fn touch_and_access(regions: &[Region], pages: u64, passes: u64) -> Result<Vec<(f64, f64)>, KernError> {
    let steps = pages / BLOCK;
    let mut fs: Vec<_> = regions.iter().map(|r| move |s| r.touch(s)).collect();
    let mut dyns: Vec<&mut dyn FnMut(u64) -> Result<(), KernError>> =
        fs.iter_mut().map(|f| f as &mut dyn FnMut(u64) -> Result<(), KernError>).collect();
    let first = interleave(steps, &mut dyns)?;
    let mut resident = vec![0.0; regions.len()];
    for _ in 0..passes {
        for (i, t) in interleave(steps, &mut dyns)?.into_iter().enumerate() {
            resident[i] += t;
        }
    }
    let touched = (steps * BLOCK) as f64;
    Ok(first.iter().zip(&resident).map(|(f, r)| (touched / f, touched * passes as f64 / r)).collect())
}

/// How much larger the second size of a growth row is.
const GROWTH: u64 = 8;
/// Calls per contender per round in the growth rows that repeat a call.
const GROWTH_CALLS: u64 = 4;
/// Windows of the region proxy the refused `memory_object_create_proxy`
/// names in every element.
const REGION_WINDOWS: u64 = 4096;

/// One growth row: an operation at n and at `GROWTH` n.
struct Growth {
    n: u64,
    /// Seconds per operation at n and at 8n, one figure per round.
    small: Vec<f64>,
    large: Vec<f64>,
    /// Per-round `large / small`.
    ratio: Vec<f64>,
    /// Software-MMU work per operation (translations and reverse-map
    /// entries visited) at n and at 8n, where the MMU does any.
    work: Option<(u64, u64)>,
}

impl Growth {
    fn new(n: u64) -> Growth {
        Growth { n, small: Vec::new(), large: Vec::new(), ratio: Vec::new(), work: None }
    }

    /// Records one round's seconds per operation.
    fn round(&mut self, small: f64, large: f64) {
        self.small.push(small);
        self.large.push(large);
        self.ratio.push(large / small);
    }
}

/// The software MMU's work counters, summed.
fn mmu_work(m: &SoftMachine) -> u64 {
    m.pte_visits() + m.pv_visits()
}

/// A kernel on a software MMU whose counters the caller keeps.
fn counted_kernel(frames: usize, config: KernelConfig) -> (Arc<Kernel>, Arc<SoftMachine>) {
    let m = Arc::new(SoftMachine::new(frames));
    let config = KernelConfig { phys_pages: frames, resident_limit: frames, ..config };
    (Kernel::with_machine(config, m.clone()), m)
}

/// A task holding `pages` resident one-page entries of anonymous memory
/// (every other page read-only, so that no two entries are alike).
struct Entries {
    k: Arc<Kernel>,
    machine: Arc<SoftMachine>,
    task: TaskId,
    addr: VmAddr,
    pages: u64,
}

impl Entries {
    fn new(pages: u64) -> Result<Entries, Box<dyn Error>> {
        let (k, machine) = counted_kernel(pages as usize + 256, KernelConfig::default());
        let task = k.task_create(None)?;
        let addr = k.vm_allocate(task, VmAddr(0), pages * P, true)?;
        for i in 0..pages {
            k.read_u64(task, VmAddr(addr.0 + i * P))?;
        }
        for i in (0..pages).step_by(2) {
            k.vm_protect(task, VmAddr(addr.0 + i * P), P, false, VmProt::READ)?;
        }
        Ok(Entries { k, machine, task, addr, pages })
    }

    /// Call `step` of the row: the whole range read-only or read/write
    /// in turn (either way every translation is visited: a pmap only
    /// lowers).
    fn protect(&self, step: u64) -> Result<(), KernError> {
        let prot = if step % 2 == 0 { VmProt::READ } else { VmProt::DEFAULT };
        self.k.vm_protect(self.task, self.addr, self.pages * P, false, prot)
    }
}

/// (a) `vm_protect` over n one-page entries vs 8n.
fn grow_protect(n: u64, reps: usize) -> Result<Growth, Box<dyn Error>> {
    let mut g = Growth::new(n);
    let (small, large) = (Entries::new(n)?, Entries::new(GROWTH * n)?);
    let before = (mmu_work(&small.machine), mmu_work(&large.machine));
    for _ in 0..reps {
        let secs = interleave(GROWTH_CALLS, &mut [&mut |s| small.protect(s), &mut |s| large.protect(s)])?;
        g.round(secs[0] / GROWTH_CALLS as f64, secs[1] / GROWTH_CALLS as f64);
    }
    let calls = reps as u64 * GROWTH_CALLS;
    g.work = Some(((mmu_work(&small.machine) - before.0) / calls, (mmu_work(&large.machine) - before.1) / calls));
    Ok(g)
}

/// A task in `env` mapping page 0 of the object `n` times, each mapping
/// touched (one frame, `n` translations); returns it and the span of the
/// mappings.
fn page_mapped(env: &PagerEnv, n: u64) -> Result<(TaskId, VmAddr, u64), Box<dyn Error>> {
    let task = env.k.task_create(None)?;
    let name = env.k.port_transfer(env.owner, env.object, Disposition::CopySend, task)?;
    let (mut lo, mut hi) = (u64::MAX, 0);
    for _ in 0..n {
        let a = env.k.vm_map(task, MapRequest::anywhere(P, Some(name)))?;
        env.k.read_u64(task, a)?;
        (lo, hi) = (lo.min(a.0), hi.max(a.0 + P));
    }
    Ok((task, VmAddr(lo), hi - lo))
}

/// (b) `vm_deallocate` of every mapping of a page mapped n times vs 8n
/// times (one call over the span of the mappings), each size in a kernel
/// of its own; the mappings are made again before every round.
fn grow_deallocate(n: u64, reps: usize) -> Result<Growth, Box<dyn Error>> {
    let mut g = Growth::new(n);
    let envs = [PagerEnv::new(4, 1)?, PagerEnv::new(4, 1)?];
    let (mut work, mut secs) = ([0u64; 2], [0f64; 2]);
    for rep in 0..reps {
        let tasks = [page_mapped(&envs[0], n)?, page_mapped(&envs[1], GROWTH * n)?];
        for i in [rep % 2, 1 - rep % 2] {
            let (task, addr, len) = tasks[i];
            let w = mmu_work(&envs[i].machine);
            let t = Instant::now();
            envs[i].k.vm_deallocate(task, addr, len)?;
            secs[i] = t.elapsed().as_secs_f64();
            work[i] += mmu_work(&envs[i].machine) - w;
            envs[i].k.task_terminate(task)?;
        }
        g.round(secs[0], secs[1]);
    }
    g.work = Some((work[0] / reps as u64, work[1] / reps as u64));
    for env in envs {
        env.pager.stop();
    }
    Ok(g)
}

/// (c) `memory_object_create_proxy` with n vs 8n elements, each naming
/// the same region proxy of `REGION_WINDOWS` windows (made by
/// `vm_region_create_proxy` over as many one-page entries of alternating
/// protection), at consecutive offsets: refused with
/// `KERN_RESOURCE_SHORTAGE` once the windows pass the limit.
fn grow_proxy_elements(n: u64, reps: usize) -> Result<Growth, Box<dyn Error>> {
    let mut g = Growth::new(n);
    let k = Kernel::new(KernelConfig::default());
    let task = k.task_create(None)?;
    let len = REGION_WINDOWS * P;
    let addr = k.vm_allocate(task, VmAddr(0), len, true)?;
    for i in (0..REGION_WINDOWS).step_by(2) {
        k.vm_protect(task, VmAddr(addr.0 + i * P), P, false, VmProt::READ)?;
    }
    let region = k.vm_region_create_proxy(task, addr, VmProt::DEFAULT, len)?;
    let call = |elements: u64| {
        let objects = vec![region.proxy; elements as usize];
        let offsets: Vec<u64> = (0..elements).map(|i| i * len).collect();
        let (starts, lens) = (vec![0; elements as usize], vec![len; elements as usize]);
        k.memory_object_create_proxy(task, VmProt::READ, &objects, &offsets, &starts, &lens)
    };
    for elements in [n, GROWTH * n] {
        match call(elements) {
            Err(KernError::ResourceShortage) => {}
            other => return Err(format!("{elements} elements: expected KERN_RESOURCE_SHORTAGE, got {other:?}").into()),
        }
    }
    let refused = |elements: u64| match call(elements) {
        Err(KernError::ResourceShortage) => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Err(KernError::Failure),
    };
    for _ in 0..reps {
        let secs = interleave(GROWTH_CALLS, &mut [&mut |_| refused(n), &mut |_| refused(GROWTH * n)])?;
        g.round(secs[0] / GROWTH_CALLS as f64, secs[1] / GROWTH_CALLS as f64);
    }
    Ok(g)
}

/// `0.0012` seconds as `1.20 ms`.
fn duration(secs: f64) -> String {
    if secs >= 1.0 {
        format!("{secs:.2} s")
    } else if secs >= 1e-3 {
        format!("{:.2} ms", secs * 1e3)
    } else {
        format!("{:.1} µs", secs * 1e6)
    }
}

/// The in-process zero-fill pager's store, asking the kernel for
/// `cluster` pages per fault.
struct Clustered {
    pages: MemBacking,
    cluster: u32,
}

impl Backing for Clustered {
    fn read(&mut self, object: PortName, offset: u64, buf: &mut [u8]) -> std::io::Result<bool> {
        self.pages.read(object, offset, buf)
    }
    fn write(&mut self, object: PortName, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.pages.write(object, offset, data)
    }
    fn terminate(&mut self, object: PortName) {
        self.pages.terminate(object)
    }
    fn cluster_pages(&self) -> Option<u32> {
        Some(self.cluster)
    }
}

/// A kernel with an in-process zero-fill pager (`MemBacking`) serving one
/// object, and an owner task holding a send right to it.
struct PagerEnv {
    k: Arc<Kernel>,
    /// The kernel's software MMU, for its work counters.
    machine: Arc<SoftMachine>,
    pager: RunningPager,
    owner: TaskId,
    object: PortName,
}

impl PagerEnv {
    fn new(pages: u64, cluster: u32) -> Result<PagerEnv, Box<dyn Error>> {
        let frames = pages as usize + 256;
        let (k, machine) = counted_kernel(frames, KernelConfig { cluster_pages: cluster, ..KernelConfig::default() });
        let mut conn = PagerConn::new(k.clone())?;
        let obj = conn.new_object()?;
        let owner = k.task_create(None)?;
        let object = conn.give(obj, owner)?;
        let pager = RunningPager::spawn(conn, Clustered { pages: MemBacking::default(), cluster });
        // Bind the object and wait for `ready` outside every timed region:
        // the owner touches one page far beyond what the runs use.
        let warm = k.vm_map(owner, MapRequest::anywhere(P, Some(object)).offset(1 << 40))?;
        k.read_u64(owner, warm)?;
        Ok(PagerEnv { k, machine, pager, owner, object })
    }

    /// A client task mapping `pages` pages of the object from page
    /// `first`, directly or through a proxy of just that range.
    fn client(&self, how: Via, first: u64, pages: u64) -> Result<Region, Box<dyn Error>> {
        let task = self.k.task_create(None)?;
        let (name, offset) = match how {
            Via::Direct => (self.k.port_transfer(self.owner, self.object, Disposition::CopySend, task)?, first * P),
            Via::Proxy(version) => {
                let px = self.k.memory_object_create_proxy_version(
                    self.owner,
                    VmProt::DEFAULT,
                    &[self.object],
                    &[0],
                    &[first * P],
                    &[pages * P],
                    version,
                )?;
                (self.k.port_transfer(self.owner, px.proxy, Disposition::MoveSend, task)?, 0)
            }
        };
        let addr = self.k.vm_map(task, MapRequest::anywhere(pages * P, Some(name)).offset(offset))?;
        Ok(Region { k: self.k.clone(), task, addr })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Direct,
    Proxy(ProxyVersion),
}

impl Via {
    fn label(self) -> &'static str {
        match self {
            Via::Direct => "direct mapping",
            Via::Proxy(ProxyVersion::Mapping) => "mapping proxy",
            Via::Proxy(ProxyVersion::Paging) => "paging proxy",
        }
    }
}

/// Anonymous memory in a kernel of its own (zero fill, no pager).
fn anon_region(pages: u64) -> Result<Region, Box<dyn Error>> {
    let frames = pages as usize + 256;
    let k = Kernel::new(KernelConfig { phys_pages: frames, resident_limit: frames, ..KernelConfig::default() });
    let task = k.task_create(None)?;
    let addr = k.vm_allocate(task, VmAddr(0), pages * P, true)?;
    Ok(Region { k, task, addr })
}

/// A task whose map holds `live` one-page entries separated by one-page
/// holes; returns it and the entries counted by walking the map with
/// `vm_region`.
fn map_with_entries(live: usize) -> Result<(Arc<Kernel>, TaskId, usize), Box<dyn Error>> {
    let k = Kernel::new(KernelConfig::default());
    let t0 = k.task_create(None)?;
    let mut addrs = Vec::with_capacity(2 * live);
    for _ in 0..2 * live {
        addrs.push(k.vm_allocate(t0, VmAddr(0), P, true)?);
    }
    for a in addrs.iter().skip(1).step_by(2) {
        k.vm_deallocate(t0, *a, P)?;
    }
    let mut entries = 0;
    let mut at = VmAddr(0);
    while let Ok(r) = k.vm_region(t0, at) {
        entries += 1;
        at = VmAddr(r.start.0 + r.size);
    }
    Ok((k, t0, entries))
}

/// A turn of `vm_map` + `vm_deallocate` pairs.
fn map_pairs(k: &Kernel, task: TaskId) -> Result<(), KernError> {
    for _ in 0..PAIR_BLOCK {
        let a = k.vm_map(task, MapRequest::anywhere(P, None))?;
        k.vm_deallocate(task, a, P)?;
    }
    Ok(())
}

/// What 100 paging proxies over one object cost the pager.
struct Sharing {
    proxies: usize,
    pages: u64,
    data_requests: u64,
    pages_requested: u64,
    pager_requests: u64,
    resident: i64,
    touches: u64,
    secs: f64,
}

fn sharing_run(proxies: usize, pages: u64) -> Result<Sharing, Box<dyn Error>> {
    let env = PagerEnv::new(pages, 1)?;
    let before = env.k.stats();
    let pager_before = PagerStats::get(&env.pager.stats.requests);
    let t = Instant::now();
    for _ in 0..proxies {
        let r = env.client(Via::Proxy(ProxyVersion::Paging), 0, pages)?;
        for p in 0..pages {
            r.k.read_u64(r.task, VmAddr(r.addr.0 + p * P))?;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let after = env.k.stats();
    let s = Sharing {
        proxies,
        pages,
        data_requests: after.sent("data_request") - before.sent("data_request"),
        pages_requested: after.vm.pages_requested - before.vm.pages_requested,
        pager_requests: PagerStats::get(&env.pager.stats.requests) - pager_before,
        resident: after.resident as i64 - before.resident as i64,
        touches: proxies as u64 * pages,
        secs,
    };
    env.pager.stop();
    Ok(s)
}

/// The process's resident set in bytes (Linux `/proc/self/status`).
fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes of resident set per proxy over `n` proxies of one version,
/// created in `env` and kept (the caller keeps `env` alive until every
/// measurement is done, so none reuses another's freed memory).
fn proxy_memory(env: &PagerEnv, n: usize, version: ProxyVersion) -> Result<Option<f64>, KernError> {
    let before = rss_bytes();
    for _ in 0..n {
        env.k.memory_object_create_proxy_version(
            env.owner,
            VmProt::READ,
            &[env.object],
            &[0],
            &[0],
            &[16 * P],
            version,
        )?;
    }
    let after = rss_bytes();
    Ok(before.zip(after).map(|(b, a)| a.saturating_sub(b) as f64 / n as f64))
}

/// Bytes of kernel records per proxy with one window, from struct sizes:
/// (mapping proxy, paging proxy).
fn proxy_record_bytes() -> (usize, usize) {
    use std::mem::size_of;
    // The proxy table entry (key + record + hash control byte), its one
    // window (heap), and two kernel-object table entries (port id + kind,
    // at most 24 bytes each with control byte).
    let common = size_of::<u64>() + size_of::<Proxy>() + 1 + size_of::<Window<ObjectId>>() + 2 * 24;
    // A paging proxy also has its view object (objects table entry) and
    // a view_of entry.
    let paging = common + size_of::<ObjectId>() + size_of::<VmObject>() + 1 + 2 * size_of::<u64>() + 1;
    (common, paging)
}

fn machine_facts() -> Vec<(String, String)> {
    let mut facts = Vec::new();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    facts.push(("date".into(), utc_now()));
    facts.push(("nproc".into(), nproc.to_string()));
    if let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") {
        if let Some(m) = info.lines().find(|l| l.starts_with("model name")) {
            facts.push(("cpu".into(), m.split(':').nth(1).unwrap_or("").trim().to_string()));
        }
    }
    if let Ok(r) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        facts.push(("os".into(), format!("{} {}", std::env::consts::OS, r.trim())));
    }
    if let Ok(out) = std::process::Command::new("rustc").arg("--version").output() {
        let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !v.is_empty() {
            facts.push(("rustc".into(), v));
        }
    }
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        let l: Vec<&str> = l.split_whitespace().take(3).collect();
        facts.push(("load average at start (1, 5, 15 min)".into(), l.join(" ")));
    }
    facts.push(("profile".into(), if cfg!(debug_assertions) { "debug".into() } else { "release".into() }));
    facts
}

/// `machvm bench-task`: the task process of a real-memory round.
pub fn real_task(args: &[String]) -> Result<bool, Box<dyn Error>> {
    real::task_main(args)?;
    Ok(true)
}

/// Runs the benchmarks, prints them and writes `output`. `Ok(false)` if
/// the sharing goal (a behaviour, not a speed) was missed.
pub fn bench(quick: bool, output: &Path) -> Result<bool, Box<dyn Error>> {
    let z = Sizes::new(quick);
    let started = Instant::now();
    let facts = machine_facts();
    let command = if quick { "cargo run --release -- bench --quick" } else { "cargo run --release -- bench" };
    eprintln!("machvm bench{}: {} runs per figure", if quick { " --quick" } else { "" }, z.reps);

    // Memory first, while the heap is fresh; both kernels stay alive
    // until both are measured.
    eprintln!("  memory per proxy ({} proxies of each version)", z.mem_proxies);
    let (env_m, env_p) = (PagerEnv::new(16, 1)?, PagerEnv::new(16, 1)?);
    let mem_mapping = proxy_memory(&env_m, z.mem_proxies, ProxyVersion::Mapping)?;
    let mem_paging = proxy_memory(&env_p, z.mem_proxies, ProxyVersion::Paging)?;
    env_m.pager.stop();
    env_p.pager.stop();
    let (rec_mapping, rec_paging) = proxy_record_bytes();

    // (a) kernel core: three kernels side by side, touched in turns.
    eprintln!("  kernel core: first touch and resident access");
    let (mut pager1, mut pager8, mut anon_first, mut anon_res, mut pager_res) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut faults1, mut faults8, mut requests1, mut requests8) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..z.reps {
        let (e1, e8) = (PagerEnv::new(z.touch_pages, 1)?, PagerEnv::new(z.touch_pages, 8)?);
        let regions = [
            e1.client(Via::Direct, 0, z.touch_pages)?,
            e8.client(Via::Direct, 0, z.touch_pages)?,
            anon_region(z.touch_pages)?,
        ];
        let (s1, s8) = (e1.k.stats(), e8.k.stats());
        let r = touch_and_access(&regions, z.touch_pages, z.passes)?;
        let per_page = |n: u64| n as f64 / z.touch_pages as f64;
        let (a1, a8) = (e1.k.stats(), e8.k.stats());
        faults1.push(per_page(a1.vm.faults - s1.vm.faults));
        faults8.push(per_page(a8.vm.faults - s8.vm.faults));
        requests1.push(per_page(a1.sent("data_request") - s1.sent("data_request")));
        requests8.push(per_page(a8.sent("data_request") - s8.sent("data_request")));
        pager1.push(r[0].0);
        pager_res.push(r[0].1);
        pager8.push(r[1].0);
        anon_first.push(r[2].0);
        anon_res.push(r[2].1);
        e1.pager.stop();
        e8.pager.stop();
    }

    eprintln!("  kernel core: vm_map + vm_deallocate with 10 and 10,000 live entries");
    let (mut pairs10, mut pairs10k, mut ratio_pairs) = (Vec::new(), Vec::new(), Vec::new());
    let (ks, ts, entries10) = map_with_entries(10)?;
    let (kl, tl, entries10k) = map_with_entries(10_000)?;
    for _ in 0..z.reps {
        let secs = interleave(z.pairs / PAIR_BLOCK, &mut [&mut |_| map_pairs(&ks, ts), &mut |_| map_pairs(&kl, tl)])?;
        let n = (z.pairs / PAIR_BLOCK * PAIR_BLOCK) as f64;
        pairs10.push(n / secs[0]);
        pairs10k.push(n / secs[1]);
        ratio_pairs.push(secs[0] / secs[1]);
    }
    drop((ks, kl));

    // (b) proxies: one kernel, three clients over three ranges of one
    // object (rotated each round), touched in turns.
    eprintln!("  proxies: direct vs mapping proxy vs paging proxy");
    let vias = [Via::Direct, Via::Proxy(ProxyVersion::Mapping), Via::Proxy(ProxyVersion::Paging)];
    let mut first: [Vec<f64>; 3] = Default::default();
    let mut res: [Vec<f64>; 3] = Default::default();
    let mut first_ratio: [Vec<f64>; 3] = Default::default();
    let mut res_ratio: [Vec<f64>; 3] = Default::default();
    for rep in 0..z.reps {
        let env = PagerEnv::new(3 * z.touch_pages, 8)?;
        let mut regions = Vec::new();
        for (v, via) in vias.iter().enumerate() {
            regions.push(env.client(*via, ((v + rep) % 3) as u64 * z.touch_pages, z.touch_pages)?);
        }
        let round = touch_and_access(&regions, z.touch_pages, z.passes)?;
        for v in 0..3 {
            first[v].push(round[v].0);
            res[v].push(round[v].1);
            first_ratio[v].push(round[v].0 / round[0].0);
            res_ratio[v].push(round[v].1 / round[0].1);
        }
        env.pager.stop();
    }
    eprintln!("  proxies: {} paging proxies over one object", z.share_proxies);
    let sh = sharing_run(z.share_proxies, z.share_pages)?;
    let sharing_ok = sh.data_requests == sh.pages && sh.pages_requested == sh.pages && sh.resident == sh.pages as i64;

    // (c) growth: each operation at n and at 8n.
    eprintln!("  growth: vm_protect over {} vs {} one-page entries", z.grow_entries, GROWTH * z.grow_entries);
    let grow_a = grow_protect(z.grow_entries, z.reps)?;
    eprintln!("  growth: vm_deallocate of a page mapped {} vs {} times", z.grow_mappings, GROWTH * z.grow_mappings);
    let grow_b = grow_deallocate(z.grow_mappings, z.reps)?;
    eprintln!(
        "  growth: memory_object_create_proxy, {} vs {} elements of a {REGION_WINDOWS}-window region proxy",
        z.grow_elements,
        GROWTH * z.grow_elements
    );
    let grow_c = grow_proxy_elements(z.grow_elements, z.reps)?;

    // (d) the daemon: pagers as child processes of this executable.
    eprintln!(
        "  daemon: pager round trips, calls and raw ping-pongs; first touch with {:?}-page clusters",
        daemon::CLUSTERS
    );
    let host = daemon::PagerHost::Process(std::env::current_exe()?);
    let dz = daemon::DaemonSizes { reps: z.reps, calls: z.daemon_calls, pages: z.daemon_pages };
    let served = daemon::measure(dz, &host)?;

    // (e) real memory: this process's own loads, served through userfaultfd.
    eprintln!("  real memory: first touch, random faults, resident access, proxies, sharing");
    let real_figs = real::measure(real::RealSizes::new(quick))?;
    if let Err(why) = &real_figs {
        eprintln!("  real memory skipped: {why}");
    }
    let elapsed = started.elapsed().as_secs_f64();

    // The report.
    let mut md = String::new();
    let w = &mut md;
    writeln!(w, "# Benchmarks")?;
    writeln!(w)?;
    writeln!(w, "Produced by `{command}` (all figures below come from that one run, {elapsed:.0} s).")?;
    writeln!(w)?;
    for (k, v) in facts {
        writeln!(w, "- {k}: {v}")?;
    }
    writeln!(w)?;
    writeln!(
        w,
        "Method: each figure is the median of {} rounds timed with `std::time::Instant`. In a round, the \
         contenders of one table (kernels side by side, or three clients of one kernel) take turns of {BLOCK} \
         pages (or {PAIR_BLOCK} map/unmap pairs) in rotating order, so a burst of load on the machine hits all \
         of them alike; each ratio is the median of the per-round ratios. Every round boots fresh kernels on \
         the software MMU, with fresh pager threads. A *first touch* reads one `u64` from each of {} untouched \
         pages (each read faults); a *resident access* is `Kernel::read_u64` of a page already mapped ({} \
         passes over the same pages). The pager is `MemBacking`, the in-process zero-fill pager (wrapped only \
         to set its cluster size), on its own thread: every `data_request` is a message to that thread and \
         an answer back.",
        z.reps, z.touch_pages, z.passes
    )?;
    writeln!(w)?;
    writeln!(w, "## Kernel core")?;
    writeln!(w)?;
    writeln!(w, "| measurement | median | range over rounds | notes |")?;
    writeln!(w, "|---|---:|---:|---|")?;
    let rows: [(&str, &Vec<f64>, String); 7] = [
        (
            "first touch, zero-fill pager, 1-page requests",
            &pager1,
            format!(
                "{:.2} kernel faults and {:.3} `data_request`s per page (a fault that waited counts twice)",
                median(&faults1),
                median(&requests1)
            ),
        ),
        (
            "first touch, zero-fill pager, 8-page clusters",
            &pager8,
            format!("{:.2} kernel faults and {:.3} `data_request`s per page", median(&faults8), median(&requests8)),
        ),
        ("first touch, anonymous memory", &anon_first, "zero fill in the kernel, no pager".into()),
        ("resident access, pager-backed pages", &pager_res, "`read_u64`, no fault".into()),
        ("resident access, anonymous pages", &anon_res, "`read_u64`, no fault".into()),
        (
            &format!("`vm_map` + `vm_deallocate` pairs, {entries10} live entries"),
            &pairs10,
            "one-page anonymous maps, `anywhere`".into(),
        ),
        (
            &format!("`vm_map` + `vm_deallocate` pairs, {entries10k} live entries"),
            &pairs10k,
            "the entries are separated by one-page holes".into(),
        ),
    ];
    for (name, v, notes) in rows {
        writeln!(w, "| {name} | {}/s | {} | {notes} |", rate(median(v)), spread(v))?;
    }
    let rp = median(&ratio_pairs);
    let log_ratio = (entries10k as f64).ln() / (entries10 as f64).ln();
    writeln!(
        w,
        "| rate ratio, {entries10k} / {entries10} entries | {rp:.2} | {} | O(log n) allows down to 1/{log_ratio:.0} = {:.2}, O(n) would give ~{:.3}: {} |",
        spread_plain(&ratio_pairs),
        1.0 / log_ratio,
        entries10 as f64 / entries10k as f64,
        if rp >= 1.0 / log_ratio { "consistent with O(log n)" } else { "cost grows faster than log n" }
    )?;
    writeln!(w)?;
    writeln!(w, "## Proxies")?;
    writeln!(w)?;
    writeln!(w, "First touch and resident access of the same pager's pages, mapped directly or through a proxy of the same range (8-page clusters).")?;
    writeln!(w)?;
    writeln!(w, "| mapping | first touch | range | ratio to direct | resident access | range | ratio to direct |")?;
    writeln!(w, "|---|---:|---:|---:|---:|---:|---:|")?;
    let mut ratios = [(0.0, 0.0); 3];
    for v in 0..3 {
        ratios[v] = (median(&first_ratio[v]), median(&res_ratio[v]));
        writeln!(
            w,
            "| {} | {}/s | {} | {:.3} | {}/s | {} | {:.3} |",
            vias[v].label(),
            rate(median(&first[v])),
            spread(&first[v]),
            ratios[v].0,
            rate(median(&res[v])),
            spread(&res[v]),
            ratios[v].1
        )?;
    }
    writeln!(w)?;
    let met = |ok: bool| if ok { "met" } else { "not met" };
    writeln!(w, "Goals (issue 3):")?;
    writeln!(w)?;
    writeln!(
        w,
        "- mapping proxy within 5 % of direct: first touch {:+.1} %, resident {:+.1} % — {}",
        (ratios[1].0 - 1.0) * 100.0,
        (ratios[1].1 - 1.0) * 100.0,
        met(ratios[1].0 >= 0.95 && ratios[1].1 >= 0.95)
    )?;
    writeln!(
        w,
        "- paging proxy within 25 % on first touch: {:+.1} % — {}",
        (ratios[2].0 - 1.0) * 100.0,
        met(ratios[2].0 >= 0.75)
    )?;
    writeln!(
        w,
        "- paging proxy equal once resident (within 5 %): {:+.1} % — {}",
        (ratios[2].1 - 1.0) * 100.0,
        met(ratios[2].1 >= 0.95)
    )?;
    writeln!(w)?;
    writeln!(w, "### {} paging proxies over one object", sh.proxies)?;
    writeln!(w)?;
    writeln!(
        w,
        "{} paging proxies of the same {} pages, each given to its own task, mapped and every page read \
         ({} page touches, {:.0} ms, 1-page requests so that requests count pages):",
        sh.proxies,
        sh.pages,
        sh.touches,
        sh.secs * 1e3
    )?;
    writeln!(w)?;
    writeln!(w, "| counter | value | goal |")?;
    writeln!(w, "|---|---:|---:|")?;
    writeln!(w, "| `data_request`s sent to the pager | {} | {} |", sh.data_requests, sh.pages)?;
    writeln!(w, "| requests the pager served | {} | {} |", sh.pager_requests, sh.pages)?;
    writeln!(w, "| pages asked of the pager | {} | {} |", sh.pages_requested, sh.pages)?;
    writeln!(w, "| pages made resident | {} | {} |", sh.resident, sh.pages)?;
    writeln!(w)?;
    writeln!(w, "One request and one page per distinct page: {}.", met(sharing_ok))?;
    writeln!(w)?;
    writeln!(w, "### Memory per proxy")?;
    writeln!(w)?;
    let show = |m: Option<f64>| m.map_or("n/a".to_string(), |b| format!("{b:.0} B"));
    writeln!(w, "| proxy (one window) | kernel records (struct sizes) | measured (resident set / proxies) |")?;
    writeln!(w, "|---|---:|---:|")?;
    writeln!(w, "| mapping proxy | {rec_mapping} B | {} |", show(mem_mapping))?;
    writeln!(w, "| paging proxy | {rec_paging} B | {} |", show(mem_paging))?;
    writeln!(w)?;
    writeln!(
        w,
        "How: *kernel records* adds `size_of` of the proxy record ({} B) and its window ({} B), the proxy-table \
         and two kernel-object table entries; a paging proxy adds its view object ({} B, a `VmObject`) and its \
         table entries. It leaves out the two kernel ports and the creator's two name entries, whose types are \
         private to the IPC layer. *Measured* is the growth of the process's resident set (`VmRSS`) while {} \
         proxies of each version are created and kept, divided by their number; it includes the ports, name \
         entries and hash-table slack. For scale, a map entry is {} B.",
        std::mem::size_of::<Proxy>(),
        std::mem::size_of::<Window<ObjectId>>(),
        std::mem::size_of::<VmObject>(),
        z.mem_proxies,
        std::mem::size_of::<MapEntry>()
    )?;
    writeln!(w)?;
    writeln!(w, "## Growth")?;
    writeln!(w)?;
    writeln!(
        w,
        "Each operation at size n and at {GROWTH}n, in kernels built beforehand; in every round the two sizes \
         take turns (which goes first alternates), and the ratio is the median of the per-round ratios. A cost \
         linear in n gives {GROWTH}, a quadratic one {}. *MMU work* is what the software MMU counted per \
         operation: translations visited (`SoftMachine::pte_visits`) plus reverse-map entries visited \
         (`pv_visits`).",
        GROWTH * GROWTH
    )?;
    writeln!(w)?;
    writeln!(w, "| operation | n | time at n | time at {GROWTH}n | time ratio | range | MMU work at n / {GROWTH}n |")?;
    writeln!(w, "|---|---:|---:|---:|---:|---:|---:|")?;
    let grows: [(&str, &Growth); 3] = [
        ("`vm_protect` over n resident one-page entries (one call)", &grow_a),
        ("`vm_deallocate` of a page mapped n times (one call over all the mappings)", &grow_b),
        (
            &format!(
                "`memory_object_create_proxy` with n elements, each a {REGION_WINDOWS}-window region proxy \
                 (refused, `KERN_RESOURCE_SHORTAGE`)"
            ),
            &grow_c,
        ),
    ];
    for (name, g) in grows {
        let work = g.work.map_or("—".to_string(), |(a, b)| format!("{a} / {b}"));
        writeln!(
            w,
            "| {name} | {} | {} | {} | {:.1} | {} | {work} |",
            g.n,
            duration(median(&g.small)),
            duration(median(&g.large)),
            median(&g.ratio),
            spread_plain(&g.ratio)
        )?;
    }
    writeln!(w)?;
    writeln!(w, "## Reading these figures")?;
    writeln!(w)?;
    writeln!(
        w,
        "- The MMU is the software one: an access looks its page up in a hash table under a read lock and \
         copies the bytes, so resident access rates measure that path, not hardware loads."
    )?;
    writeln!(
        w,
        "- A first touch served by a pager costs a message to the pager thread and its answer; clusters \
         spread that cost over several pages. Anonymous memory needs no pager until it is paged out."
    )?;
    writeln!(
        w,
        "- Pager-served first touches vary between rounds (see the ranges): a `data_request` and its answer \
         each hand over between the faulting thread and the pager thread. A waiter spins for up to 30 µs \
         before it sleeps (`sync::Event`), so a quick answer costs no thread wake-up, but a slow one (or a \
         busy machine) does, and a wake-up takes tens of µs here. Contenders compared in one table share every round \
         in turns, so their ratios stay steady while the absolute rates move; different tables were measured \
         at different moments, so compare within a table, not across."
    )?;
    writeln!(
        w,
        "- A mapping proxy leaves ordinary entries of the underlying object, so its fault and access paths are \
         the direct ones. A paging proxy's faults translate through the proxy's windows to the real object's \
         page (one frame for both); once the translation is in the MMU, access does not involve the proxy."
    )?;
    writeln!(
        w,
        "- A growth row's time ratio also holds the part of each call that does not grow with n (taking the \
         kernel lock, checking the arguments), so a linear cost can show a little under {GROWTH} at small n, \
         and one cache-resident at n but not at {GROWTH}n a little over; the MMU-work column is an exact count."
    )?;

    daemon::report(&mut md, &served)?;
    real::report(&mut md, &real_figs, command)?;

    std::fs::write(output, &md)?;
    println!("{md}");
    eprintln!("wrote {} ({elapsed:.1} s)", output.display());
    Ok(sharing_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread_of_rounds() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(spread_plain(&[0.5, 0.25, 1.0]), "0.25–1.00");
    }

    #[test]
    fn interleaving_gives_every_contender_every_turn() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut fa = |s| {
            a.push(s);
            Ok(())
        };
        let mut fb = |s| {
            b.push(s);
            Ok(())
        };
        let secs = interleave::<KernError>(3, &mut [&mut fa, &mut fb]).unwrap();
        assert_eq!((a, b), (vec![0, 1, 2], vec![0, 1, 2]));
        assert_eq!(secs.len(), 2);
    }

    #[test]
    fn growth_rows_do_work_linear_in_n() {
        // Each translation visited once; each mapping's translation and
        // reverse-map entry once.
        assert_eq!(grow_protect(16, 1).unwrap().work, Some((16, 128)));
        assert_eq!(grow_deallocate(16, 1).unwrap().work, Some((32, 256)));
        let g = grow_proxy_elements(2, 1).unwrap();
        assert_eq!((g.small.len(), g.large.len(), g.work), (1, 1, None));
    }

    #[test]
    fn paging_proxies_over_one_object_ask_each_page_once() {
        let s = sharing_run(5, 8).unwrap();
        assert_eq!((s.data_requests, s.pages_requested, s.resident), (8, 8, 8));
    }
}

//! Robustness: whatever a task or a pager sends, the kernel does what was
//! asked or answers with a Mach error. It never panics (the tests run with
//! overflow checks on), never leaves a thread waiting with no way to wake,
//! never takes unbounded time under its lock, and loses nothing. Afterwards
//! it still works: a fresh allocate / write / read round trip succeeds.
//!
//! The first tests each state one rule that reading the calls showed to be
//! broken; the two property tests at the end throw random, often extreme,
//! arguments at every call and random messages at a control port.

use machvm_core::ipc::{Disposition, NotifyKind, PortName, RightKind, UserMessage};
use machvm_core::memory_object::control::MAX_CLUSTER_PAGES;
use machvm_core::memory_object::emmi::{id, KernelToPager, PagerToKernel};
use machvm_core::memory_object::proxy::compose::MAX_PROXY_WINDOWS;
use machvm_core::vm::object::CopyStrategy;
use machvm_core::vm::paging::ReturnPolicy;
use machvm_core::*;
use machvm_pagers::{MemBacking, PagerConn, RunningPager};
use proptest::prelude::*;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

const P: u64 = PAGE_SIZE;
/// The highest page-aligned offset.
const TOP: u64 = !(P - 1);
/// Long enough for anything that should happen.
const WAIT: Duration = Duration::from_secs(5);

fn kernel(phys_pages: usize, cluster_pages: u32) -> Arc<Kernel> {
    Kernel::new(KernelConfig { phys_pages, resident_limit: phys_pages, cluster_pages, ..KernelConfig::default() })
}

/// Runs `f` on a thread of its own; its result arrives on the channel.
fn spawn<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Receiver<R> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

/// The result of a spawned call, or why there is none.
fn outcome<R>(rx: &Receiver<R>) -> std::result::Result<R, &'static str> {
    match rx.recv_timeout(WAIT) {
        Ok(r) => Ok(r),
        Err(RecvTimeoutError::Timeout) => Err("the call hangs"),
        Err(RecvTimeoutError::Disconnected) => Err("the call panicked"),
    }
}

/// `f` on a thread of its own, failing the test if it panics or hangs.
#[track_caller]
fn finishes<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    outcome(&spawn(f)).unwrap()
}

/// The kernel still works: a new task allocates, writes and reads back.
#[track_caller]
fn still_works(k: &Kernel) {
    let t = k.task_create(None).unwrap();
    let a = k.vm_allocate(t, VmAddr(0), 2 * P, true).unwrap();
    let at = VmAddr(a.0 + P - 4);
    k.vm_write(t, at, b"still works").unwrap();
    assert_eq!(k.vm_read(t, at, 11).unwrap(), b"still works");
    k.task_terminate(t).unwrap();
}

/// A client task, a scripted pager with one memory object, and the
/// client's send right to it.
fn scripted(k: &Arc<Kernel>) -> (TaskId, PagerConn, PortName, PortName) {
    let client = k.task_create(None).unwrap();
    let mut pager = PagerConn::new(k.clone()).unwrap();
    let obj = pager.new_object().unwrap();
    let name = pager.give(obj, client).unwrap();
    (client, pager, obj, name)
}

/// A task holding the receive right and a send right of a port it can use
/// as a memory object nobody serves (for calls that never fault on it).
fn task_with_object(k: &Kernel) -> (TaskId, PortName) {
    let t = k.task_create(None).unwrap();
    let mo = k.port_allocate(t).unwrap();
    k.port_make_send(t, mo).unwrap();
    (t, mo)
}

fn read_at(k: &Arc<Kernel>, task: TaskId, at: VmAddr) -> Receiver<Result<u64>> {
    let k = k.clone();
    spawn(move || k.read_u64(task, at))
}

// ----- the fault path -----

/// Copying a page up only reads the page below, so a pager's write lock on
/// it does not apply to the private copy: the write completes at once with
/// no `data_unlock`, and the pager's page is unchanged.
#[test]
fn a_write_to_a_copy_of_a_write_locked_page_copies_it_without_an_unlock() {
    let k = kernel(64, 1);
    let (client, mut pager, obj, name) = scripted(&k);
    let direct = k.vm_map(client, MapRequest::anywhere(P, Some(name))).unwrap();
    let copy = k.vm_map(client, MapRequest::anywhere(P, Some(name)).copy(true)).unwrap();
    let k2 = k.clone();
    let writer = spawn(move || k2.write_u64(client, copy, 7));
    let (o, off, _, _) = pager.expect_request(WAIT).unwrap();
    assert_eq!((o, off), (obj, 0));
    pager.supply_with(obj, 0, &[5u8; P as usize], VmProt::WRITE, false).unwrap();
    assert_eq!(outcome(&writer), Ok(Ok(())));
    assert_eq!(k.read_u64(client, copy), Ok(7));
    assert_eq!(k.read_u64(client, direct), Ok(0x0505_0505_0505_0505));
    assert_eq!(k.stats().sent("data_unlock"), 0);
}

/// A supply or a `data_unavailable` the kernel cannot take for want of a
/// free frame fails every page it was to answer: no fault is left waiting
/// for a page the pager believes it has answered. Nothing is lost: once
/// memory is back, a flush and a new request bring the pages in.
fn a_starved_answer_fails_every_page_it_answers(answer: fn(&PagerConn, PortName) -> Result<()>) {
    let k = kernel(8, 2);
    // Anonymous memory with no default pager fills every frame for good.
    let hog = k.task_create(None).unwrap();
    let h = k.vm_allocate(hog, VmAddr(0), 8 * P, true).unwrap();
    for i in 0..8 {
        k.write_u64(hog, VmAddr(h.0 + i * P), i + 1).unwrap();
    }
    let (client, mut pager, obj, name) = scripted(&k);
    let m = k.vm_map(client, MapRequest::anywhere(2 * P, Some(name))).unwrap();
    let reader = read_at(&k, client, VmAddr(m.0 + P));
    assert_eq!(pager.expect_request(WAIT).unwrap(), (obj, 0, 2 * P, VmProt::READ));
    assert_eq!(answer(&pager, obj), Err(KernError::ResourceShortage));
    assert_eq!(outcome(&reader), Ok(Err(KernError::MemoryError)));
    for i in 0..8 {
        assert_eq!(k.read_u64(hog, VmAddr(h.0 + i * P)), Ok(i + 1));
    }
    k.vm_deallocate(hog, h, 8 * P).unwrap();
    pager.lock_request(obj, 0, 2 * P, ReturnPolicy::None, true, VmProt::NONE).unwrap();
    let reader = read_at(&k, client, VmAddr(m.0 + P));
    let (_, off, len, _) = pager.expect_request(WAIT).unwrap();
    pager.supply(obj, off, &vec![9u8; len as usize]).unwrap();
    assert_eq!(outcome(&reader), Ok(Ok(0x0909_0909_0909_0909)));
    still_works(&k);
}

#[test]
fn a_supply_starved_of_frames_fails_every_page_it_answers() {
    a_starved_answer_fails_every_page_it_answers(|p, o| p.supply(o, 0, &vec![1u8; 2 * P as usize]));
}

#[test]
fn a_data_unavailable_starved_of_frames_fails_every_page_it_answers() {
    a_starved_answer_fails_every_page_it_answers(|p, o| p.unavailable(o, 0, 2 * P));
}

/// The kernel asks for at most `MAX_CLUSTER_PAGES` pages at once, however
/// it was configured, so a pager may refuse any longer request as forged.
#[test]
fn a_kernel_configured_for_huge_clusters_asks_for_at_most_the_protocol_maximum() {
    let k = kernel(1024, 1000);
    let (client, mut pager, obj, name) = scripted(&k);
    let m = k.vm_map(client, MapRequest::anywhere(P, Some(name))).unwrap();
    let reader = read_at(&k, client, m);
    let (o, off, len, _) = pager.expect_request(WAIT).unwrap();
    assert_eq!((o, off, len), (obj, 0, u64::from(MAX_CLUSTER_PAGES) * P));
    pager.unavailable(obj, 0, len).unwrap();
    assert_eq!(outcome(&reader), Ok(Ok(0)));
}

// ----- VM calls -----

/// `vm_read` makes its copy in kernel memory: a copy larger than the
/// machine's physical memory is `KERN_RESOURCE_SHORTAGE`, not an attempt
/// that aborts the kernel when the allocation fails.
#[test]
fn vm_read_of_more_than_the_machine_holds_is_refused_not_attempted() {
    let k = kernel(64, 1);
    let t = k.task_create(None).unwrap();
    let size = 1u64 << 40;
    let a = k.vm_allocate(t, VmAddr(0), size, true).unwrap();
    assert_eq!(k.vm_read(t, a, size), Err(KernError::ResourceShortage));
    assert_eq!(k.vm_copy(t, a, size / 2, VmAddr(a.0 + size / 2)), Err(KernError::ResourceShortage));
    assert_eq!(k.vm_read(t, a, 64 * P + 1), Err(KernError::ResourceShortage));
    assert_eq!(k.vm_read(t, a, 64 * P).map(|v| v.len()), Ok(64 * P as usize));
    still_works(&k);
}

// ----- IPC -----

/// A receive may wait "forever" as `Some(Duration::MAX)`: the deadline
/// overflows the clock and is taken as no deadline.
#[test]
fn a_receive_with_the_longest_timeout_waits_instead_of_panicking() {
    let k = kernel(16, 1);
    let t = k.task_create(None).unwrap();
    let port = k.port_allocate(t).unwrap();
    k.port_make_send(t, port).unwrap();
    k.msg_send(t, UserMessage::new(port, 7, vec![1, 2, 3])).unwrap();
    let k2 = k.clone();
    let m = finishes(move || k2.msg_receive(t, port, Some(Duration::MAX))).unwrap();
    assert_eq!((m.id, m.data), (7, vec![1, 2, 3]));
    let k2 = k.clone();
    let waiting = spawn(move || k2.msg_receive(t, port, Some(Duration::MAX)).map(|m| m.id));
    std::thread::sleep(Duration::from_millis(20));
    k.msg_send(t, UserMessage::new(port, 8, Vec::new())).unwrap();
    assert_eq!(outcome(&waiting), Ok(Ok(8)));
}

/// Names in a space are never handed out twice while in use, however many
/// the task has made and dropped: a live right is never overwritten.
#[test]
fn a_space_never_reuses_a_name_still_in_use() {
    let k = kernel(16, 1);
    let t = k.task_create(None).unwrap();
    let keep = k.port_allocate(t).unwrap();
    let port = k.port_lookup(t, keep).unwrap().port;
    // Enough names to go round the name space once.
    for _ in 0..(1u32 << 24) + 8 {
        let s = k.port_set_allocate(t).unwrap();
        k.port_destroy(t, s).unwrap();
    }
    let info = k.port_lookup(t, keep).unwrap();
    assert!(info.receive && info.port == port, "{info:?}");
    let more: Vec<PortName> = (0..8).map(|_| k.port_allocate(t).unwrap()).collect();
    assert!(!more.contains(&keep));
    assert_eq!(k.port_lookup(t, keep).unwrap().port, port);
    still_works(&k);
}

/// The default memory manager must be a port a pager receives on: a
/// kernel object (which takes no messages) is `KERN_INVALID_ARGUMENT`, so
/// anonymous memory is never paged out to nowhere.
#[test]
fn a_kernel_object_cannot_become_the_default_pager() {
    let k = Kernel::new(KernelConfig { phys_pages: 64, resident_limit: 4, ..KernelConfig::default() });
    let (t, mo) = task_with_object(&k);
    let px = k.memory_object_create_proxy(t, VmProt::READ, &[mo], &[0], &[0], &[P]).unwrap();
    let host_priv = k.boot_host_priv(t).unwrap();
    for name in [px.proxy, px.revoke, host_priv] {
        assert_eq!(k.set_default_memory_manager(t, host_priv, name), Err(KernError::InvalidArgument));
    }
    let a = k.vm_allocate(t, VmAddr(0), 16 * P, true).unwrap();
    for i in 0..16 {
        k.write_u64(t, VmAddr(a.0 + i * P), i + 1).unwrap();
    }
    for i in 0..16 {
        assert_eq!(k.read_u64(t, VmAddr(a.0 + i * P)), Ok(i + 1));
    }
}

// ----- proxies -----

/// Unknown protection bits are `KERN_INVALID_ARGUMENT` for the proxy calls
/// as for `vm_map` and `vm_protect`, and make nothing.
#[test]
fn proxy_calls_refuse_unknown_protection_bits() {
    let k = kernel(64, 1);
    let (t, mo) = task_with_object(&k);
    let a = k.vm_allocate(t, VmAddr(0), P, true).unwrap();
    let bogus = VmProt::from_bits_retain(VmProt::READ.bits() | 0x10);
    assert_eq!(k.memory_object_create_proxy(t, bogus, &[mo], &[0], &[0], &[P]), Err(KernError::InvalidArgument));
    assert_eq!(k.vm_region_create_proxy(t, a, bogus, P), Err(KernError::InvalidArgument));
    assert_eq!(k.stats().proxies, 0);
    assert!(k.memory_object_create_proxy(t, VmProt::READ, &[mo], &[0], &[0], &[P]).is_ok());
    assert!(k.vm_region_create_proxy(t, a, VmProt::READ, P).is_ok());
}

/// Checking a proxy's chain for revocation visits each proxy once: a deep
/// chain whose every level names the level below twice is as cheap to
/// build, map and ask about as a plain one (no work doubling per level
/// under the kernel lock).
#[test]
fn a_deep_chain_of_proxies_naming_the_one_below_twice_stays_cheap() {
    let k = kernel(64, 1);
    let (t, mo) = task_with_object(&k);
    let k2 = k.clone();
    let info = finishes(move || -> Result<(usize, bool)> {
        let mut inner = mo;
        for _ in 0..48 {
            let r = k2.memory_object_create_proxy_version(
                t,
                VmProt::ALL,
                &[inner, inner],
                &[0, P],
                &[0, 0],
                &[P, P],
                ProxyVersion::Paging,
            )?;
            inner = r.proxy;
        }
        k2.vm_map(t, MapRequest::anywhere(2 * P, Some(inner)))?;
        let i = k2.memory_object_proxy_info(t, inner)?;
        Ok((i.windows.len(), i.revoked))
    });
    assert_eq!(info, Ok((2, false)));
    still_works(&k);
}

/// A proxy has at most `MAX_PROXY_WINDOWS` windows: a task that nests a
/// proxy in itself side by side, doubling the windows at every level, gets
/// `KERN_RESOURCE_SHORTAGE` instead of exponential time and memory.
#[test]
fn nesting_that_doubles_the_windows_stops_at_the_window_limit() {
    let k = kernel(64, 1);
    let (t, mo) = task_with_object(&k);
    for version in [ProxyVersion::Mapping, ProxyVersion::Paging] {
        let (mut inner, mut size, mut windows) = (mo, P, 1usize);
        let failed = loop {
            let r = k.memory_object_create_proxy_version(
                t,
                VmProt::ALL,
                &[inner, inner],
                &[0, size],
                &[0, 0],
                &[size, size],
                version,
            );
            match r {
                Ok(px) => (inner, size, windows) = (px.proxy, 2 * size, 2 * windows),
                Err(e) => break e,
            }
            assert!(windows <= MAX_PROXY_WINDOWS, "{version:?}: {windows} windows");
        };
        assert_eq!(failed, KernError::ResourceShortage, "{version:?}");
        assert!(2 * windows > MAX_PROXY_WINDOWS, "{version:?}: refused at {windows} windows");
        assert_eq!(k.memory_object_proxy_info(t, inner).unwrap().windows.len(), windows);
    }
    still_works(&k);
}

/// A new task with `n` pages of anonymous memory, page `i` starting with
/// the word `i`, whose entries alternate read-only and read/write (so that
/// no two merge), and a region proxy of all of it: `n` windows, each one
/// page.
fn region_proxy_of_entries(k: &Kernel, n: u64, version: ProxyVersion) -> (TaskId, PortName) {
    let t = k.task_create(None).unwrap();
    let base = k.vm_allocate(t, VmAddr(0), n * P, true).unwrap();
    for i in 0..n {
        k.write_u64(t, VmAddr(base.0 + i * P), i).unwrap();
    }
    for i in (0..n).step_by(2) {
        k.vm_protect(t, VmAddr(base.0 + i * P), P, false, VmProt::READ).unwrap();
    }
    let px = k.vm_region_create_proxy(t, base, VmProt::READ, n * P).unwrap();
    assert_eq!(k.memory_object_proxy_info(t, px.proxy).unwrap().windows.len() as u64, n);
    assert_eq!(k.memory_object_proxy_info(t, px.proxy).unwrap().version, version);
    (t, px.proxy)
}

/// The windows `memory_object_create_proxy` has looked at so far.
fn examined(k: &Kernel) -> u64 {
    k.stats().proxy_windows_examined
}

/// Windows a binary search over `MAX_PROXY_WINDOWS` of them looks at, at
/// most (a logarithm, with room to spare).
const SEARCH: u64 = 16;

/// 100,000 entries, each naming all of a proxy of `MAX_PROXY_WINDOWS`
/// windows: the call is refused with `KERN_RESOURCE_SHORTAGE` as soon as
/// the windows the entries would make pass the limit, counted without
/// copying any, and the work done is bounded by the limit, not by the
/// entries times the inner windows (minutes and gigabytes before).
#[test]
fn entries_past_the_window_limit_are_refused_before_anything_is_built() {
    const ENTRIES: usize = 100_000;
    let n = MAX_PROXY_WINDOWS as u64;
    for version in [ProxyVersion::Mapping, ProxyVersion::Paging] {
        let k = Kernel::new(KernelConfig { proxy_version: version, ..KernelConfig::default() });
        let (t, region) = region_proxy_of_entries(&k, n, version);
        let objects = vec![region; ENTRIES];
        let offsets: Vec<u64> = (0..ENTRIES as u64).map(|i| i * n * P).collect();
        let (starts, lens) = (vec![0; ENTRIES], vec![n * P; ENTRIES]);
        let before = (k.stats(), examined(&k));
        let r = k.memory_object_create_proxy(t, VmProt::READ, &objects, &offsets, &starts, &lens);
        assert_eq!(r.map(|_| ()), Err(KernError::ResourceShortage), "{version:?}");
        // The proxy walked once looking for revocation, two binary
        // searches for each of the two entries looked at; nothing built.
        let work = examined(&k) - before.1;
        assert!(work <= n + 4 * SEARCH, "{version:?}: {work} windows looked at");
        assert_eq!((k.stats().proxies, k.stats().objects), (before.0.proxies, before.0.objects), "nothing made");
        // Two entries of it are already one window too many.
        let r = k.memory_object_create_proxy(t, VmProt::READ, &objects[..2], &offsets[..2], &starts[..2], &lens[..2]);
        assert_eq!(r.map(|_| ()), Err(KernError::ResourceShortage), "{version:?}");
        // One is fine.
        let whole = k.memory_object_create_proxy(t, VmProt::READ, &[region], &[0], &[0], &[n * P]).unwrap();
        assert_eq!(k.memory_object_proxy_info(t, whole.proxy).unwrap().windows.len() as u64, n);
        still_works(&k);
    }
}

/// `MAX_PROXY_WINDOWS` entries each naming one page of the same proxy of
/// `MAX_PROXY_WINDOWS` windows: exactly the limit, so it works, and the
/// proxy's chain is walked once for the call rather than once per entry
/// (and its windows are never copied whole).
/// Entries naming distinct proxies over one shared inner proxy walk that
/// inner proxy once too.
#[test]
fn entries_naming_one_proxy_walk_it_once() {
    let n = MAX_PROXY_WINDOWS as u64;
    for version in [ProxyVersion::Mapping, ProxyVersion::Paging] {
        let k = Kernel::new(KernelConfig { proxy_version: version, ..KernelConfig::default() });
        let (t, region) = region_proxy_of_entries(&k, n, version);
        let m = MAX_PROXY_WINDOWS;
        let objects = vec![region; m];
        // Every page of the region, in reverse order at the new proxy's
        // offsets: page i of the new proxy is page n - 1 - i of the region.
        let offsets: Vec<u64> = (0..m as u64).map(|i| i * P).collect();
        let starts: Vec<u64> = (0..m as u64).map(|i| (n - 1 - i) * P).collect();
        let before = examined(&k);
        let px = k.memory_object_create_proxy(t, VmProt::READ, &objects, &offsets, &starts, &vec![P; m]).unwrap();
        // The proxy walked once, three binary searches per entry (two to
        // count, one to build), and the windows built: not an entry times
        // the proxy's windows.
        let work = examined(&k) - before;
        assert!(work <= n + m as u64 * (1 + 3 * SEARCH), "{version:?}: {work} windows looked at");
        let info = k.memory_object_proxy_info(t, px.proxy).unwrap();
        assert_eq!(info.windows.len(), m, "{version:?}");
        // It shows the region's pages reversed.
        let a = k.vm_map(t, MapRequest::anywhere(n * P, Some(px.proxy))).unwrap();
        for i in [0, 1, n / 2, n - 1] {
            assert_eq!(k.read_u64(t, VmAddr(a.0 + i * P)), Ok(n - 1 - i), "{version:?} page {i}");
        }
        // One more entry is one window too many.
        let mut objects = objects;
        objects.push(region);
        let (mut offsets, mut starts) = (offsets, starts);
        offsets.push(m as u64 * P);
        starts.push(0);
        let r = k.memory_object_create_proxy(t, VmProt::READ, &objects, &offsets, &starts, &vec![P; m + 1]);
        assert_eq!(r.map(|_| ()), Err(KernError::ResourceShortage), "{version:?}");

        // Distinct paging proxies of one page each over the region: naming
        // them all walks the region they reach once.
        let outer: Vec<PortName> = (0..64u64)
            .map(|i| {
                k.memory_object_create_proxy_version(
                    t,
                    VmProt::READ,
                    &[region],
                    &[0],
                    &[i * P],
                    &[P],
                    ProxyVersion::Paging,
                )
                .unwrap()
                .proxy
            })
            .collect();
        let before = examined(&k);
        let offsets: Vec<u64> = (0..64u64).map(|i| i * P).collect();
        k.memory_object_create_proxy(t, VmProt::READ, &outer, &offsets, &[0; 64], &[P; 64]).unwrap();
        let work = examined(&k) - before;
        assert!(work <= n + 64 * (2 + 3 * SEARCH), "{version:?}: {work} windows looked at");
        still_works(&k);
    }
}

// ----- pagers -----

/// A kernel with a running pager serving two objects, and a client task
/// that holds send rights to both (and so can send the pager anything).
struct Served {
    k: Arc<Kernel>,
    client: TaskId,
    objs: [PortName; 2],
    _pager: RunningPager,
}

impl Served {
    fn new() -> Served {
        let k = kernel(256, 1);
        let client = k.task_create(None).unwrap();
        let mut conn = PagerConn::new(k.clone()).unwrap();
        let (a, b) = (conn.new_object().unwrap(), conn.new_object().unwrap());
        let objs = [conn.give(a, client).unwrap(), conn.give(b, client).unwrap()];
        let pager = RunningPager::spawn(conn, MemBacking::default());
        Served { k, client, objs, _pager: pager }
    }

    /// Both objects are still served: a new mapping of each reads zeroes.
    #[track_caller]
    fn still_served(&self, what: &str) {
        for name in self.objs {
            let m = self.k.vm_map(self.client, MapRequest::anywhere(P, Some(name))).unwrap();
            let r = outcome(&read_at(&self.k, self.client, m));
            assert_eq!(r, Ok(Ok(0)), "after {what}");
        }
    }
}

/// A holder of a memory object's send right can send its pager anything.
/// Whatever it forges — an out-of-range `data_return`, a short one, an
/// endless `data_request`, a `memory_object_create` with the wrong rights —
/// the pager neither panics nor stops nor busies itself for ever, and the
/// objects it serves (this one and others) are still served.
#[test]
fn a_forged_kernel_message_cannot_stop_or_crash_a_pager() {
    let pages = |n: usize| vec![7u8; n * P as usize];
    // (what, id, data, carries two send rights)
    let forgeries: Vec<(&str, u32, Vec<u8>, bool)> = vec![
        (
            "a data_return past the top",
            id::DATA_RETURN,
            KernelToPager::DataReturn { offset: TOP, data: pages(2), dirty: true, kernel_copy: false }.encode().1,
            false,
        ),
        (
            "a short data_return",
            id::DATA_RETURN,
            KernelToPager::DataReturn { offset: 0, data: vec![7; 10], dirty: true, kernel_copy: false }.encode().1,
            false,
        ),
        (
            "an unaligned data_return",
            id::DATA_RETURN,
            KernelToPager::DataReturn { offset: 3, data: pages(1), dirty: true, kernel_copy: false }.encode().1,
            false,
        ),
        (
            "an endless data_request",
            id::DATA_REQUEST,
            KernelToPager::DataRequest { offset: 0, length: TOP, access: VmProt::READ }.encode().1,
            false,
        ),
        (
            "a data_request past the top",
            id::DATA_REQUEST,
            KernelToPager::DataRequest { offset: TOP, length: 2 * P, access: VmProt::READ }.encode().1,
            false,
        ),
        (
            "an endless data_unlock",
            id::DATA_UNLOCK,
            KernelToPager::DataUnlock { offset: 0, length: TOP, access: VmProt::WRITE }.encode().1,
            false,
        ),
        ("a create with send rights", id::CREATE, KernelToPager::Create { size: P }.encode().1, true),
        ("a create without rights", id::CREATE, KernelToPager::Create { size: P }.encode().1, false),
    ];
    for (what, msg_id, data, with_rights) in forgeries {
        let s = Served::new();
        let rights = if with_rights {
            let r1 = s.k.port_allocate(s.client).unwrap();
            let r2 = s.k.port_allocate(s.client).unwrap();
            vec![(r1, Disposition::MakeSend), (r2, Disposition::MakeSend)]
        } else {
            Vec::new()
        };
        let msg = UserMessage { rights, ..UserMessage::new(s.objs[0], msg_id, data) };
        s.k.msg_send(s.client, msg).unwrap();
        s.still_served(what);
    }
}

/// A holder of a memory object's send right forges the kernel's own
/// lifecycle messages: a second `init` (naming a control port of its own),
/// and `terminate` (bare, or carrying some right). The pager acts on
/// none of them: it keeps answering on the control port the kernel gave
/// it, so faults on pages it has not served yet are still answered.
#[test]
fn a_forged_init_or_terminate_cannot_unbind_a_pager() {
    let s = Served::new();
    let name = s.objs[0];
    let mut fresh = 0u64;
    let mut served_page = |what: &str| {
        let m = s.k.vm_map(s.client, MapRequest::anywhere(P, Some(name)).offset(fresh * P)).unwrap();
        fresh += 1;
        assert_eq!(outcome(&read_at(&s.k, s.client, m)), Ok(Ok(0)), "after {what}");
    };
    served_page("nothing");
    let own = s.k.port_allocate(s.client).unwrap();
    type Forgery = (&'static str, u32, Vec<u8>, Vec<(PortName, Disposition)>);
    let forgeries: Vec<Forgery> = vec![
        (
            "an init naming another control",
            id::INIT,
            KernelToPager::Init { page_size: P }.encode().1,
            vec![(own, Disposition::MakeSend)],
        ),
        ("a bare terminate", id::TERMINATE, Vec::new(), Vec::new()),
        ("a terminate carrying a right", id::TERMINATE, Vec::new(), vec![(own, Disposition::MakeSend)]),
        (
            "an init after a terminate",
            id::INIT,
            KernelToPager::Init { page_size: P }.encode().1,
            vec![(own, Disposition::MakeSend)],
        ),
    ];
    for (what, msg_id, data, rights) in forgeries {
        let msg = UserMessage { rights, ..UserMessage::new(name, msg_id, data) };
        s.k.msg_send(s.client, msg).unwrap();
        served_page(what);
    }
    // Nothing reached the forger's port: the pager never took it for the
    // kernel's.
    assert!(s.k.msg_receive(s.client, own, Some(Duration::from_millis(20))).is_err());
}

/// The scripted pager, too, drops what the kernel did not send: a forged
/// `data_request` never reaches the test, and the rights it carried are
/// released.
#[test]
fn the_pager_library_drops_messages_the_kernel_did_not_send() {
    let k = kernel(64, 1);
    let (client, mut pager, _obj, name) = scripted(&k);
    let own = k.port_allocate(client).unwrap();
    let forged = KernelToPager::DataRequest { offset: 0, length: P, access: VmProt::READ }.encode();
    let msg = UserMessage { rights: vec![(own, Disposition::MakeSend)], ..UserMessage::new(name, forged.0, forged.1) };
    k.msg_send(client, msg).unwrap();
    assert_eq!(pager.recv(Some(Duration::from_millis(50))).map(|r| r.msg), Err(KernError::RcvTimedOut));
    assert_eq!(pager.ignored, 1);
    // The right it brought was let go: the client's port has no other
    // sender than the client itself.
    let info = k.port_lookup(client, own).unwrap();
    assert_eq!(info.send_urefs, 0);
}

/// The default pager receives every task's anonymous pages under
/// pressure and may supply or destroy them: becoming it needs the host
/// privilege, which the kernel hands out once, to its booter. Without it a
/// task gets `KERN_INVALID_HOST`, whatever it names (its own port, a proxy,
/// a send-once right), and cannot replace a registered default pager
/// either; the booter can lend the right in a message.
#[test]
fn only_a_holder_of_the_host_privilege_sets_the_default_pager() {
    let k = Kernel::new(KernelConfig { phys_pages: 64, resident_limit: 4, ..KernelConfig::default() });
    let booter = k.task_create(None).unwrap();
    let host_priv = k.boot_host_priv(booter).unwrap();
    let mallory = k.task_create(None).unwrap();
    assert_eq!(k.boot_host_priv(mallory), Err(KernError::NoAccess), "handed out once");
    let mine = k.port_allocate(mallory).unwrap();
    k.port_make_send(mallory, mine).unwrap();
    let px = k.memory_object_create_proxy(mallory, VmProt::READ, &[mine], &[0], &[0], &[P]).unwrap();
    let once = k.port_transfer(booter, host_priv, Disposition::CopySend, mallory).unwrap();
    k.port_deallocate(mallory, once).unwrap();
    for fake in [mine, px.proxy, px.revoke, PortName(0x4242)] {
        assert_eq!(k.set_default_memory_manager(mallory, fake, mine), Err(KernError::InvalidHost), "{fake:?}");
    }
    // With a registered default pager, replacing it is refused too, and
    // anonymous pages still go to the real one.
    let swap = std::env::temp_dir().join(format!("robustness-host-priv-{}", std::process::id()));
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&swap).unwrap();
    std::fs::remove_file(&swap).unwrap();
    let dp = machvm_pagers::start_default_pager(&k, booter, host_priv, f).unwrap();
    assert_eq!(k.set_default_memory_manager(mallory, mine, mine), Err(KernError::InvalidHost));
    let a = k.vm_allocate(mallory, VmAddr(0), 16 * P, true).unwrap();
    for i in 0..16 {
        k.write_u64(mallory, VmAddr(a.0 + i * P), i + 1).unwrap();
    }
    for i in 0..16 {
        assert_eq!(k.read_u64(mallory, VmAddr(a.0 + i * P)), Ok(i + 1));
    }
    while let Ok(m) = k.msg_receive(mallory, mine, Some(Duration::ZERO)) {
        assert_ne!(m.id, id::CREATE, "mallory was handed anonymous memory");
    }
    // Lent in a message, the right works for whoever holds it.
    let lent = k.port_transfer(booter, host_priv, Disposition::CopySend, mallory).unwrap();
    assert_eq!(k.set_default_memory_manager(mallory, lent, mine), Ok(()));
    dp.stop();
}

// ----- random input -----

/// Numbers a task might pass: small page multiples, small unaligned
/// values, and the extremes.
fn num() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0u64..24).prop_map(|n| n * P),
        1 => 0u64..3 * P,
        1 => Just(u64::MAX),
        1 => Just(TOP),
        1 => Just(1u64 << 47),
        1 => Just(1u64 << 40),
        1 => (1u64..64).prop_map(|n| (1u64 << 47) - n * P),
        1 => any::<u64>(),
    ]
}

/// Protection bits: mostly known ones, sometimes an unknown bit.
fn prot_bits() -> impl Strategy<Value = u8> {
    prop_oneof![6 => 0u8..8, 1 => 0u8..32]
}

/// `(cur, max)`: mostly `cur` within `max`.
fn prot_pair() -> impl Strategy<Value = (u8, u8)> {
    prop_oneof![3 => (0u8..8, 0u8..8).prop_map(|(c, m)| (c & m, m)), 1 => (prot_bits(), prot_bits())]
}

/// An address: near one the task mapped (selector below 192), or anywhere.
type Addr = (u8, u64);

fn addr() -> impl Strategy<Value = Addr> {
    (any::<u8>(), num())
}

/// One call a task makes, its arguments still to be resolved against what
/// the task holds (see [`Fuzz`]).
#[derive(Clone, Debug)]
enum Call {
    Allocate(Addr, u64, bool),
    Map { at: Addr, size: u64, mask: u64, anywhere: bool, obj: Option<u8>, offset: u64, copy: bool, prot: (u8, u8) },
    Deallocate(Addr, u64),
    Protect(Addr, u64, bool, u8),
    Inherit(Addr, u64, u8),
    Region(Addr),
    Read(Addr, u64),
    Write(Addr, u16),
    Copy(Addr, u64, Addr),
    Touch(Addr, u8),
    Fault(Addr, u8),
    CreateProxy { max: u8, windows: Vec<(u8, u64, u64, u64)>, short: u8, paging: bool },
    RegionProxy(Addr, u8, u64),
    Revoke(u8),
    Info(u8),
    Send { dest: u8, disp: u8, id: u32, data: Vec<u8>, reply: Option<(u8, u8)>, rights: Vec<(u8, u8)> },
    Receive(u8),
    Port { op: u8, name: u8, other: u8, delta: i32 },
    Fork,
    Kill(u8),
    OnTask(u8),
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        6 => (addr(), num(), any::<u8>()).prop_map(|(a, s, any)| Call::Allocate(a, s, any % 4 != 0)),
        // An ordinary mapping of an object or proxy (so that faults reach
        // pagers and proxies), or one with every argument at random.
        8 => (addr(), 1u64..16, any::<u8>(), 0u64..16, any::<bool>(), 1u8..8).prop_map(
            |(at, pages, obj, off, copy, max)| Call::Map {
                at,
                size: pages * P,
                mask: 0,
                anywhere: true,
                obj: Some(obj),
                offset: off * P,
                copy,
                prot: (max & VmProt::DEFAULT.bits() as u8, max),
            }
        ),
        4 => (
            addr(),
            num(),
            prop_oneof![
                4 => Just(0u64),
                1 => Just(u64::MAX),
                1 => Just(TOP),
                1 => Just((1u64 << 20) - 1),
                1 => any::<u64>()
            ],
            any::<u8>().prop_map(|a| a % 4 != 0),
            proptest::option::weighted(0.75, any::<u8>()),
            num(),
            any::<bool>(),
            prot_pair(),
        )
            .prop_map(|(at, size, mask, anywhere, obj, offset, copy, prot)| Call::Map {
                at,
                size,
                mask,
                anywhere,
                obj,
                offset,
                copy,
                prot
            }),
        2 => (addr(), num()).prop_map(|(a, s)| Call::Deallocate(a, s)),
        2 => (addr(), num(), any::<bool>(), prot_bits()).prop_map(|(a, s, m, p)| Call::Protect(a, s, m, p)),
        1 => (addr(), num(), any::<u8>()).prop_map(|(a, s, i)| Call::Inherit(a, s, i)),
        1 => addr().prop_map(Call::Region),
        2 => (addr(), num()).prop_map(|(a, s)| Call::Read(a, s)),
        2 => (addr(), any::<u16>()).prop_map(|(a, n)| Call::Write(a, n)),
        1 => (addr(), num(), addr()).prop_map(|(a, s, b)| Call::Copy(a, s, b)),
        6 => (addr(), any::<u8>()).prop_map(|(a, k)| Call::Touch(a, k)),
        1 => (addr(), prot_bits()).prop_map(|(a, p)| Call::Fault(a, p)),
        3 => (
            prot_bits(),
            proptest::collection::vec((any::<u8>(), 0u64..4, 0u64..8, 1u64..4), 1..4),
            any::<bool>()
        )
            .prop_map(|(max, windows, paging)| Call::CreateProxy {
                max,
                // Window i at 4i pages: no overlap.
                windows: windows.iter().enumerate().map(|(i, w)| (w.0, (4 * i as u64 + w.1 % 2) * P, w.2 * P, w.3 * P)).collect(),
                short: 4,
                paging
            }),
        2 => (
            prot_bits(),
            proptest::collection::vec((any::<u8>(), num(), num(), num()), 0..4),
            any::<u8>(),
            any::<bool>()
        )
            .prop_map(|(max, windows, short, paging)| Call::CreateProxy { max, windows, short, paging }),
        1 => (addr(), prot_bits(), num()).prop_map(|(a, m, l)| Call::RegionProxy(a, m, l)),
        1 => any::<u8>().prop_map(Call::Revoke),
        1 => any::<u8>().prop_map(Call::Info),
        2 => (
            any::<u8>(),
            any::<u8>(),
            prop_oneof![Just(0o106u32), Just(0o110u32), 2093u32..2101, any::<u32>()],
            proptest::collection::vec(any::<u8>(), 0..24),
            proptest::option::of((any::<u8>(), any::<u8>())),
            proptest::collection::vec((any::<u8>(), any::<u8>()), 0..3),
        )
            .prop_map(|(dest, disp, id, data, reply, rights)| Call::Send { dest, disp, id, data, reply, rights }),
        1 => any::<u8>().prop_map(Call::Receive),
        2 => (any::<u8>(), any::<u8>(), any::<u8>(), prop_oneof![Just(-1i32), Just(1), Just(0), any::<i32>()])
            .prop_map(|(op, name, other, delta)| Call::Port { op, name, other, delta }),
        1 => Just(Call::Fork),
        1 => any::<u8>().prop_map(Call::Kill),
        1 => any::<u8>().prop_map(Call::OnTask),
    ]
}

fn disposition(d: u8) -> Disposition {
    [
        Disposition::MoveReceive,
        Disposition::MoveSend,
        Disposition::MoveSendOnce,
        Disposition::CopySend,
        Disposition::MakeSend,
        Disposition::MakeSendOnce,
    ][usize::from(d) % 6]
}

/// The state a random call sequence runs against.
struct Fuzz {
    k: Arc<Kernel>,
    /// Tasks the calls act on (the first, and children it forked).
    tasks: Vec<TaskId>,
    /// Which task the next calls act on.
    on: usize,
    /// Addresses the tasks mapped.
    mapped: Vec<u64>,
    /// The two served objects, in the first task's space.
    objs: [PortName; 2],
    /// Ports the first task received: used in IPC calls only, never mapped
    /// (nobody would serve them).
    own: Vec<PortName>,
    /// Proxy and revoke rights the first task made.
    proxies: Vec<PortName>,
}

impl Fuzz {
    fn task(&self) -> TaskId {
        self.tasks[self.on % self.tasks.len()]
    }

    fn addr(&self, (sel, off): Addr) -> VmAddr {
        if sel < 192 && !self.mapped.is_empty() {
            VmAddr(self.mapped[usize::from(sel) % self.mapped.len()].wrapping_add(off % (8 * P)))
        } else {
            VmAddr(off)
        }
    }

    /// A memory object or proxy name (or a name that is neither).
    fn object(&self, sel: u8) -> PortName {
        let names: Vec<PortName> = self.objs.iter().chain(&self.proxies).copied().collect();
        if sel < 224 {
            names[usize::from(sel) % names.len()]
        } else {
            // Spaces name rights `(n << 8) | 3`: this one names nothing.
            PortName((u32::from(sel) << 8) | 0x7f)
        }
    }

    /// Any name the first task might use.
    fn name(&self, sel: u8) -> PortName {
        let names: Vec<PortName> = self.objs.iter().chain(&self.own).chain(&self.proxies).copied().collect();
        if sel < 224 {
            names[usize::from(sel) % names.len()]
        } else {
            PortName((u32::from(sel) << 8) | 0x7f)
        }
    }

    fn run(&mut self, c: Call) {
        let k = self.k.clone();
        let t = self.task();
        let prot = |p: u8| VmProt::from_bits_retain(u32::from(p));
        // Whatever else is wrong, unknown protection bits are refused.
        let unknown = |p: u8| VmProt::from_bits(u32::from(p)).is_none();
        match c {
            Call::Allocate(a, size, anywhere) => {
                if let Ok(a) = k.vm_allocate(t, self.addr(a), size, anywhere) {
                    self.mapped.push(a.0);
                }
            }
            Call::Map { at, size, mask, anywhere, obj, offset, copy, prot: (cur, max) } => {
                // Object names are names in the first task's space: in
                // another task the same number may name a port of the
                // first task's that nobody serves, and a fault on it would
                // wait for that pager for ever (as in Mach).
                let t = if obj.is_some() { self.tasks[0] } else { t };
                let r = MapRequest {
                    address: self.addr(at),
                    size,
                    mask,
                    anywhere,
                    object: obj.map(|o| self.object(o)),
                    offset: VmOffset(offset),
                    copy,
                    cur: prot(cur),
                    max: prot(max),
                    inherit: [VmInherit::Share, VmInherit::Copy, VmInherit::None][usize::from(cur) % 3],
                };
                let r = k.vm_map(t, r);
                if unknown(cur) || unknown(max) {
                    assert_eq!(r.err(), Some(KernError::InvalidArgument));
                }
                if let Ok(a) = r {
                    self.mapped.push(a.0);
                }
            }
            Call::Deallocate(a, size) => {
                let _ = k.vm_deallocate(t, self.addr(a), size);
            }
            Call::Protect(a, size, set_max, p) => {
                let r = k.vm_protect(t, self.addr(a), size, set_max, prot(p));
                if unknown(p) {
                    assert_eq!(r.err(), Some(KernError::InvalidArgument));
                }
            }
            Call::Inherit(a, size, i) => {
                let i = [VmInherit::Share, VmInherit::Copy, VmInherit::None][usize::from(i) % 3];
                let _ = k.vm_inherit(t, self.addr(a), size, i);
            }
            Call::Region(a) => {
                let _ = k.vm_region(t, self.addr(a));
            }
            Call::Read(a, size) => {
                let _ = k.vm_read(t, self.addr(a), size);
            }
            Call::Write(a, n) => {
                let _ = k.vm_write(t, self.addr(a), &vec![0x5a; usize::from(n)]);
            }
            Call::Copy(a, size, b) => {
                let _ = k.vm_copy(t, self.addr(a), size, self.addr(b));
            }
            Call::Touch(a, kind) => {
                let a = self.addr(a);
                let _ = match kind % 3 {
                    0 => k.read_u64(t, a).map(drop),
                    1 => k.write_u64(t, a, 0xfeed),
                    _ => k.execute(t, a),
                };
            }
            Call::Fault(a, p) => {
                let _ = k.vm_fault(t, self.addr(a), prot(p));
            }
            Call::CreateProxy { max, windows, short, paging } => {
                let mut objects: Vec<PortName> = windows.iter().map(|w| self.object(w.0)).collect();
                let mut offsets: Vec<u64> = windows.iter().map(|w| w.1).collect();
                let mut starts: Vec<u64> = windows.iter().map(|w| w.2).collect();
                let mut lens: Vec<u64> = windows.iter().map(|w| w.3).collect();
                match short % 8 {
                    0 => drop(objects.pop()),
                    1 => drop(offsets.pop()),
                    2 => drop(starts.pop()),
                    3 => drop(lens.pop()),
                    _ => {}
                }
                let version = if paging { ProxyVersion::Paging } else { ProxyVersion::Mapping };
                let r = k.memory_object_create_proxy_version(
                    self.tasks[0],
                    prot(max),
                    &objects,
                    &offsets,
                    &starts,
                    &lens,
                    version,
                );
                if unknown(max) {
                    assert_eq!(r.err(), Some(KernError::InvalidArgument));
                }
                if let Ok(r) = r {
                    self.proxies.extend([r.proxy, r.revoke]);
                }
            }
            Call::RegionProxy(a, max, len) => {
                let r = k.vm_region_create_proxy(self.tasks[0], self.addr(a), prot(max), len);
                if unknown(max) {
                    assert_eq!(r.err(), Some(KernError::InvalidArgument));
                }
                if let Ok(r) = r {
                    self.proxies.extend([r.proxy, r.revoke]);
                }
            }
            Call::Revoke(n) => {
                let _ = k.memory_object_proxy_revoke(self.tasks[0], self.name(n));
            }
            Call::Info(n) => {
                let _ = k.memory_object_proxy_info(self.tasks[0], self.name(n));
            }
            Call::Send { dest, disp, id, data, reply, rights } => {
                let dest = self.name(dest);
                // Messages to the objects themselves reach their pager; keep
                // them out of the EMMI's range (a holder of an object may
                // confuse its pager about that object, which is its own
                // business, and would leave this test's faults waiting).
                let id = if self.objs.contains(&dest) { id | 0x8000_0000 } else { id };
                let msg = UserMessage {
                    dest,
                    dest_disposition: disposition(disp),
                    reply: reply.map(|(n, d)| (self.name(n), disposition(d))),
                    id,
                    data,
                    rights: rights.into_iter().map(|(n, d)| (self.name(n), disposition(d))).collect(),
                };
                let _ = k.msg_send(self.tasks[0], msg);
            }
            Call::Receive(n) => {
                let _ = k.msg_receive(self.tasks[0], self.name(n), Some(Duration::ZERO));
            }
            Call::Port { op, name, other, delta } => {
                let t0 = self.tasks[0];
                let (n, o) = (self.name(name), self.name(other));
                match op % 11 {
                    0 => {
                        if let Ok(n) = k.port_allocate(t0) {
                            self.own.push(n);
                        }
                    }
                    1 => {
                        if let Ok(n) = k.port_set_allocate(t0) {
                            self.own.push(n);
                        }
                    }
                    2 => {
                        let _ = k.port_move_member(t0, n, (delta % 2 == 0).then_some(o));
                    }
                    3 => {
                        let _ = k.port_make_send(t0, n);
                    }
                    4 => {
                        let _ = k.port_deallocate(t0, n);
                    }
                    5 => {
                        let _ = k.port_destroy(t0, n);
                    }
                    6 => {
                        let right = [RightKind::Receive, RightKind::Send, RightKind::SendOnce, RightKind::DeadName]
                            [usize::from(other) % 4];
                        let _ = k.port_mod_refs(t0, n, right, delta);
                    }
                    7 => {
                        let _ = k.port_lookup(t0, n);
                    }
                    8 => {
                        let kind = if delta % 2 == 0 { NotifyKind::NoSenders } else { NotifyKind::DeadName };
                        let _ = k.port_request_notification(t0, n, kind, o);
                    }
                    9 => {
                        let _ = k.port_transfer(t0, n, disposition(other), t);
                    }
                    // No task here holds the host privilege: whatever it
                    // names, it cannot become the default pager.
                    _ => {
                        assert_eq!(k.set_default_memory_manager(t0, n, o), Err(KernError::InvalidHost));
                        if !self.proxies.is_empty() {
                            let p = self.proxies[usize::from(name) % self.proxies.len()];
                            assert_eq!(k.set_default_memory_manager(t0, p, o), Err(KernError::InvalidHost));
                        }
                    }
                }
            }
            Call::Fork => {
                if let Ok(c) = k.task_create(Some(t)) {
                    self.tasks.push(c);
                }
            }
            Call::Kill(i) => {
                if self.tasks.len() > 1 {
                    let i = 1 + usize::from(i) % (self.tasks.len() - 1);
                    let _ = k.task_terminate(self.tasks.remove(i));
                }
            }
            Call::OnTask(i) => self.on = usize::from(i),
        }
    }
}

/// Runs `calls` against a kernel with a pager serving two objects, then
/// ends the tasks and checks that the kernel and the pager still work.
fn run_calls(calls: Vec<Call>) {
    let k = Kernel::new(KernelConfig { phys_pages: 256, resident_limit: 24, cluster_pages: 2, ..Default::default() });
    let t = k.task_create(None).unwrap();
    let owner = k.task_create(None).unwrap();
    let mut conn = PagerConn::new(k.clone()).unwrap();
    let (a, b) = (conn.new_object().unwrap(), conn.new_object().unwrap());
    let objs = [conn.give(a, t).unwrap(), conn.give(b, t).unwrap()];
    let owned = conn.give(a, owner).unwrap();
    let pager = RunningPager::spawn(conn, MemBacking::default());
    let own = vec![k.port_allocate(t).unwrap(), k.port_set_allocate(t).unwrap()];
    let mut f = Fuzz { k: k.clone(), tasks: vec![t], on: 0, mapped: Vec::new(), objs, own, proxies: Vec::new() };
    for c in calls {
        f.run(c);
    }
    for t in f.tasks {
        let _ = k.task_terminate(t);
    }
    still_works(&k);
    let m = k.vm_map(owner, MapRequest::anywhere(4 * P, Some(owned))).unwrap();
    k.vm_write(owner, VmAddr(m.0 + 3 * P), &[1, 2, 3]).unwrap();
    assert_eq!(k.vm_read(owner, VmAddr(m.0 + 3 * P), 3).unwrap(), [1, 2, 3]);
    drop(pager);
}

/// A message a pager (or anyone holding a control port) might send:
/// well-formed with extreme fields, or raw bytes.
#[derive(Clone, Debug)]
enum CtlMsg {
    Typed(PagerToKernel),
    Raw(u32, Vec<u8>),
    /// Take a kernel message off the object's port (or the reply port).
    Drain(bool),
    /// A client thread reads (or, high bit, writes) a page of the direct
    /// (even) or copy (odd) mapping.
    Touch(u8),
}

fn strategy(s: u8) -> CopyStrategy {
    [CopyStrategy::None, CopyStrategy::Call, CopyStrategy::Delay][usize::from(s) % 3]
}

fn ctl_msg() -> impl Strategy<Value = CtlMsg> {
    let lock = prop_oneof![3 => 0u32..8, 1 => 0u32..32].prop_map(VmProt::from_bits_retain);
    // Offsets and sizes mostly within the eight pages the client maps.
    let at = || prop_oneof![3 => (0u64..8).prop_map(|n| n * P), 1 => num()];
    let size = || prop_oneof![3 => (1u64..4).prop_map(|n| n * P), 1 => num()];
    let policy = prop_oneof![Just(ReturnPolicy::None), Just(ReturnPolicy::Dirty), Just(ReturnPolicy::All)];
    let data = (prop_oneof![Just(0usize), Just(10), Just(1), Just(2), Just(3)], any::<u8>()).prop_map(|(n, b)| {
        if n == 10 {
            vec![b; 10]
        } else {
            vec![b; n * P as usize]
        }
    });
    let typed = prop_oneof![
        (any::<bool>(), any::<u8>())
            .prop_map(|(c, s)| PagerToKernel::Ready { may_cache: c, copy_strategy: strategy(s) }),
        (any::<bool>(), any::<u8>(), prop_oneof![0u32..10, Just(256), Just(257), any::<u32>()]).prop_map(
            |(c, s, n)| PagerToKernel::ChangeAttributes { may_cache: c, copy_strategy: strategy(s), cluster_pages: n }
        ),
        (at(), data, lock.clone(), any::<bool>())
            .prop_map(|(offset, data, lock, precious)| PagerToKernel::DataSupply { offset, data, lock, precious }),
        (at(), size()).prop_map(|(offset, size)| PagerToKernel::DataUnavailable { offset, size }),
        (at(), size(), any::<u32>()).prop_map(|(offset, size, r)| PagerToKernel::DataError {
            offset,
            size,
            reason: KernError::from_code(r)
        }),
        (at(), size(), policy, any::<bool>(), lock).prop_map(|(offset, size, should_return, should_flush, lock)| {
            PagerToKernel::LockRequest { offset, size, should_return, should_flush, lock }
        }),
        Just(PagerToKernel::GetAttributes),
        Just(PagerToKernel::Destroy { reason: KernError::Terminated }),
    ];
    prop_oneof![
        6 => typed.prop_map(CtlMsg::Typed),
        2 => (prop_oneof![2093u32..2101, any::<u32>()], proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(i, d)| CtlMsg::Raw(i, d)),
        2 => any::<bool>().prop_map(CtlMsg::Drain),
        4 => any::<u8>().prop_map(CtlMsg::Touch),
    ]
}

/// Plays a pager that sends `msgs` (each with a reply port or not) on a
/// control port while client threads read and write a direct and a copy
/// mapping of its object; then the pager dies, which must end every wait.
fn run_control(msgs: Vec<(CtlMsg, u8)>) {
    let k = Kernel::new(KernelConfig { phys_pages: 64, resident_limit: 12, cluster_pages: 4, ..Default::default() });
    let pager = k.task_create(None).unwrap();
    let client = k.task_create(None).unwrap();
    let mo = k.port_allocate(pager).unwrap();
    let reply = k.port_allocate(pager).unwrap();
    let name = k.port_transfer(pager, mo, Disposition::MakeSend, client).unwrap();
    let direct = k.vm_map(client, MapRequest::anywhere(8 * P, Some(name))).unwrap();
    let copy = k.vm_map(client, MapRequest::anywhere(8 * P, Some(name)).copy(true)).unwrap();
    let init = k.msg_receive(pager, mo, Some(Duration::ZERO)).unwrap();
    assert_eq!(init.id, id::INIT);
    let control = init.rights[0].0;
    let ready = PagerToKernel::Ready { may_cache: true, copy_strategy: CopyStrategy::Delay }.encode();
    k.msg_send(pager, UserMessage::new(control, ready.0, ready.1)).unwrap();
    let mut touches = Vec::new();
    for (m, r) in msgs {
        let (msg_id, data) = match m {
            CtlMsg::Typed(m) => m.encode(),
            CtlMsg::Raw(i, d) => (i, d),
            CtlMsg::Drain(from_object) => {
                let _ = k.msg_receive(pager, if from_object { mo } else { reply }, Some(Duration::ZERO));
                continue;
            }
            CtlMsg::Touch(n) => {
                let base = if n & 1 == 0 { direct } else { copy };
                let at = VmAddr(base.0 + u64::from(n >> 1) % 8 * P);
                let k2 = k.clone();
                let faults = k.stats().vm.faults;
                let h = std::thread::spawn(move || {
                    let _ = if n & 0x80 != 0 { k2.write_u64(client, at, 1) } else { k2.read_u64(client, at).map(drop) };
                });
                // Let it fault (or finish) before the next message.
                let deadline = std::time::Instant::now() + Duration::from_millis(50);
                while !h.is_finished() && k.stats().vm.faults == faults && std::time::Instant::now() < deadline {
                    std::thread::yield_now();
                }
                touches.push(h);
                continue;
            }
        };
        let reply = match r % 4 {
            0 => None,
            1 => Some((reply, Disposition::MakeSendOnce)),
            2 => Some((control, Disposition::CopySend)),
            _ => Some((mo, Disposition::MakeSend)),
        };
        let _ = k.msg_send(pager, UserMessage { reply, ..UserMessage::new(control, msg_id, data) });
    }
    k.task_terminate(pager).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    for h in touches {
        while !h.is_finished() {
            assert!(std::time::Instant::now() < deadline, "a fault still waits after its pager died");
            std::thread::sleep(Duration::from_millis(1));
        }
        h.join().expect("a fault panicked");
    }
    k.task_terminate(client).unwrap();
    still_works(&k);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random calls with random, often extreme, arguments: no panic, no
    /// hang, and the kernel and its pager work afterwards.
    #[test]
    fn random_calls_never_panic_or_hang(calls in proptest::collection::vec(call(), 1..64)) {
        let r = outcome(&spawn(move || run_calls(calls)));
        prop_assert_eq!(r, Ok(()));
    }

    /// Random pager messages on a control port while a client faults: no
    /// panic, every fault ends when the pager dies, the kernel works after.
    #[test]
    fn random_control_messages_never_panic_or_hang(
        msgs in proptest::collection::vec((ctl_msg(), any::<u8>()), 1..40),
    ) {
        let r = outcome(&spawn(move || run_control(msgs)));
        prop_assert_eq!(r, Ok(()));
    }
}

/// A region proxy has one window per entry, and no more than any proxy may
/// have: a range of more entries is refused, changing nothing.
#[test]
fn a_region_proxy_over_too_many_entries_is_refused() {
    let k = Kernel::new(KernelConfig::default());
    let t = k.task_create(None).unwrap();
    let n = machvm_core::memory_object::proxy::compose::MAX_PROXY_WINDOWS as u64 + 1;
    let base = k.vm_allocate(t, VmAddr(0), n * PAGE_SIZE, true).unwrap();
    // Alternate protections so that no two neighbouring entries merge.
    for i in (0..n).step_by(2) {
        k.vm_protect(t, VmAddr(base.0 + i * PAGE_SIZE), PAGE_SIZE, false, VmProt::READ).unwrap();
    }
    let objects = k.stats().objects;
    assert_eq!(k.vm_region_create_proxy(t, base, VmProt::READ, n * PAGE_SIZE), Err(KernError::ResourceShortage));
    assert_eq!(k.stats().objects, objects, "no object was made for the refused proxy");
    assert!(k.vm_region_create_proxy(t, base, VmProt::READ, (n - 1) * PAGE_SIZE).is_ok());
}

/// A sequence the random-calls test once shrank a hang to: a forked task
/// got a send right to a port of its parent's that nobody serves, under
/// the number the parent uses for a memory object; mapping that number in
/// the child and touching it waited for a pager that never answers. Maps
/// of object names now happen in the first task, whose names they are.
#[test]
fn regression_forked_task_writes_to_a_fresh_mapping() {
    let calls = vec![
        Call::Port { op: 121, name: 0, other: 0, delta: -1 },
        Call::OnTask(91),
        Call::Fork,
        Call::Port { op: 53, name: 64, other: 16, delta: -1 },
        Call::Map {
            at: (0, 0),
            size: 4096,
            mask: 0,
            anywhere: true,
            obj: Some(72),
            offset: 0,
            copy: false,
            prot: (2, 6),
        },
        Call::Touch((0, 1 << 47), 235),
    ];
    finishes(move || run_calls(calls));
}

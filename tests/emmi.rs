//! The external memory management interface, message by message, in both
//! directions, written as straight-line scripts with the test pager.
//!
//! Each test plays the pager itself (`PagerConn`) while task threads fault
//! on other threads; a thread's result comes back on a channel, so "the
//! fault is still waiting" is a receive that times out, and a hang fails
//! the test instead of blocking it.
//!
//! Each script runs in-process and over `machvmd`'s socket
//! ([`transports!`]: modules `local` and `socket`), the pager a
//! `Role::Pager` connection and each task a connection of its own. A
//! task's threads are the test's threads calling through its [`Task`]:
//! over the socket they share the task's connection and call at once, so
//! a task acts on another thread while one of its calls waits, on both
//! transports.
//!
//! In-process only:
//! - `a_fault_can_wait_without_a_thread` and
//!   `an_access_can_wait_without_a_thread`: they test the kernel's
//!   non-blocking calls (`vm_fault_poll`, `access_poll`) with a waker of
//!   the test's; these are the daemon's building blocks, with no wire call.

#[macro_use]
mod common;
use common::{die, Host, Task, TempFile, Transport};
use machvm_core::ipc::{Disposition, PortName, UserMessage};
use machvm_core::memory_object::emmi::{id, KernelReply, KernelToPager, PagerToKernel};
use machvm_core::pmap::soft::SoftMachine;
use machvm_core::vm::object::CopyStrategy;
use machvm_core::vm::paging::ReturnPolicy;
use machvm_core::*;
use machvm_pagers::{Backing, FileBacking, MemBacking, PagerStats, Request, STAGING_SIZE};
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

transports!(
    init_is_sent_once_per_object_however_often_it_is_mapped,
    faults_wait_for_ready_before_asking_for_data,
    a_fault_asleep_on_its_pager_wakes_when_its_mapping_changes,
    change_attributes_cluster_makes_one_request_per_cluster,
    a_cluster_request_skips_pages_already_resident,
    change_attributes_with_an_invalid_cluster_is_refused_and_changes_nothing,
    get_attributes_reports_what_the_pager_set,
    data_request_names_the_object_offset_and_access,
    data_supply_answers_every_fault_waiting_on_the_page,
    data_supply_of_unrequested_pages_is_cached_but_never_overwrites,
    data_supply_with_a_reply_port_gets_supply_completed,
    data_unavailable_zero_fills,
    data_error_fails_the_fault_until_a_flush,
    a_write_to_a_write_locked_page_sends_one_data_unlock_and_waits_for_the_lock_request,
    lock_request_lock_value_takes_write_access_away_from_a_resident_page,
    lock_request_should_return_sends_dirty_pages_with_their_contents,
    lock_request_should_flush_makes_the_next_access_ask_again,
    lock_request_reply_gets_lock_completed_for_the_range,
    a_precious_page_is_returned_on_flush_even_if_clean,
    a_precious_page_is_returned_on_pageout_even_if_clean,
    destroy_fails_waiting_and_later_faults,
    terminate_follows_the_last_mapping_of_an_uncached_object_after_its_dirty_pages,
    a_cached_object_outlives_its_mappings_with_its_pages,
    cache_flush_returns_dirty_pages_then_terminates,
    malformed_pager_messages_are_refused_and_change_nothing,
    a_refused_supply_with_a_reply_port_reports_the_error,
    a_huge_unavailable_or_error_range_does_not_stall_the_kernel,
    file_pager_maps_a_real_file_and_writes_returned_pages_back,
    file_backing_with_the_scripted_pager_lock_request_flushes_to_disk,
    the_object_cache_is_trimmed_oldest_first,
    a_dirty_page_is_kept_when_its_pager_dies_in_the_call_that_pages_it_out,
    copy_strategy_none_makes_copies_eagerly,
    copy_strategy_none_copies_eagerly_at_task_create,
    an_eager_copy_of_a_failed_page_fails_the_map_and_changes_nothing,
    an_eager_copy_whose_pager_switches_to_delay_falls_back_to_a_delayed_copy,
    a_pager_dying_during_an_eager_copy_at_task_create_fabricates_nothing,
    copy_strategy_call_is_refused_at_ready_and_change_attributes,
    anonymous_pages_cleaned_by_the_default_pager_are_asked_of_it_again,
    an_eager_copy_is_charged_to_the_caller_within_its_resident_limit,
    a_staged_supply_answers_the_fault_from_the_senders_staging_area,
    a_staged_supply_never_overwrites_a_resident_page,
    a_staged_supply_outside_the_senders_staging_area_is_refused_and_changes_nothing
);

/// A pager, over either transport.
type PagerConn = machvm_pagers::PagerConn<Task>;

const P: u64 = PAGE_SIZE;
/// Long enough for anything that should happen.
const T: Duration = Duration::from_secs(5);
/// Long enough to believe something is not going to happen.
const QUIET: Duration = Duration::from_millis(60);

fn kernel(via: Transport) -> Host {
    kernel_with(via, KernelConfig { phys_pages: 1024, resident_limit: 1024, cluster_pages: 1, ..Default::default() })
}

fn kernel_with(via: Transport, config: KernelConfig) -> Host {
    Host::boot(via, config)
}

/// Fixture only: a send right to the pager's memory object `obj`, made
/// in `to`'s space (as the pager would send it in a message).
fn give(h: &Host, pager: &PagerConn, obj: PortName, to: &Task) -> Result<PortName> {
    h.transfer(pager.link.id(), obj, Disposition::MakeSend, to.id())
}

/// A client task, a scripted pager with one memory object, and the
/// client's send right to it.
fn setup(h: &Host) -> (Task, PagerConn, PortName, PortName) {
    let client = h.task();
    let mut pager = h.pager();
    let obj = pager.new_object().unwrap();
    let name = give(h, &pager, obj, &client).unwrap();
    (client, pager, obj, name)
}

fn map(task: &Task, name: PortName, pages: u64) -> VmAddr {
    task.vm_map(MapRequest::anywhere(pages * P, Some(name))).unwrap()
}

/// Runs `f` on a thread of its own; its result arrives on the channel.
fn spawn<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Receiver<R> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

/// A read by another thread of `task` (over the socket, a call through
/// the task's connection while its other threads call too).
fn read_at(task: &Task, at: VmAddr) -> Receiver<Result<u64>> {
    let task = task.clone();
    spawn(move || task.read_u64(at))
}

fn write_at(task: &Task, at: VmAddr, v: u64) -> Receiver<Result<()>> {
    let task = task.clone();
    spawn(move || task.write_u64(at, v))
}

fn still_waiting<R: std::fmt::Debug>(rx: &Receiver<R>) {
    match rx.recv_timeout(QUIET) {
        Err(RecvTimeoutError::Timeout) => {}
        other => panic!("expected the fault to be waiting, got {other:?}"),
    }
}

fn done<R>(rx: &Receiver<R>) -> R {
    rx.recv_timeout(T).expect("the fault should have finished")
}

fn next(pager: &mut PagerConn) -> Request {
    pager.recv(Some(T)).expect("a kernel message")
}

fn quiet(pager: &mut PagerConn) {
    match pager.recv(Some(QUIET)) {
        Err(KernError::RcvTimedOut) => {}
        other => panic!("expected no kernel message, got {other:?}"),
    }
}

/// A page whose 8-byte words are `tag, tag + 1, ...`.
fn page(tag: u64) -> Vec<u8> {
    (0..P / 8).flat_map(|i| (tag + i).to_le_bytes()).collect()
}

/// Receives `init` and answers `ready`.
fn ready(pager: &mut PagerConn) -> PortName {
    let r = next(pager);
    assert_eq!(r.msg, KernelToPager::Init { page_size: P });
    pager.ready(r.object).unwrap();
    r.object
}

fn expect_request(pager: &mut PagerConn, offset: u64, length: u64) -> VmProt {
    match next(pager).msg {
        KernelToPager::DataRequest { offset: o, length: l, access } if o == offset && l == length => access,
        other => panic!("expected data_request({offset:#x}, {length:#x}), got {other:?}"),
    }
}

fn attributes(pager: &PagerConn, obj: PortName) -> KernelReply {
    pager.call_with_reply(obj, PagerToKernel::GetAttributes).unwrap()
}

// ----- init, ready, change_attributes, get_attributes -----

fn init_is_sent_once_per_object_however_often_it_is_mapped(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let other = h.task();
    let name2 = give(&h, &pager, obj, &other).unwrap();
    let a = map(&client, name, 2);
    map(&client, name, 1);
    map(&other, name2, 4);
    let r = next(&mut pager);
    assert_eq!(r.object, obj);
    assert!(matches!(r.msg, KernelToPager::Init { page_size: P }));
    quiet(&mut pager);
    assert_eq!(h.k.stats().sent("init"), 1);
    // The control port came with it: the object answers the pager.
    pager.ready(obj).unwrap();
    let rx = read_at(&client, a);
    expect_request(&mut pager, 0, P);
    pager.supply(obj, 0, &page(5)).unwrap();
    assert_eq!(done(&rx), Ok(5));
}

fn faults_wait_for_ready_before_asking_for_data(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 1);
    let r1 = read_at(&client, a);
    let r2 = read_at(&client, a);
    assert!(matches!(next(&mut pager).msg, KernelToPager::Init { .. }));
    quiet(&mut pager);
    still_waiting(&r1);
    pager.ready(obj).unwrap();
    expect_request(&mut pager, 0, P);
    quiet(&mut pager);
    pager.supply(obj, 0, &page(9)).unwrap();
    assert_eq!(done(&r1), Ok(9));
    assert_eq!(done(&r2), Ok(9));
}

/// A fault asleep on a pager that never answers must wake when the answer
/// it waits for stops mattering: its mapping is deallocated (it fails with
/// `KERN_INVALID_ADDRESS`), or its protection is taken away
/// (`KERN_PROTECTION_FAILURE`). The object stays alive through a second
/// mapping, or through a paging proxy, so nothing else wakes it.
fn a_fault_asleep_on_its_pager_wakes_when_its_mapping_changes(via: Transport) {
    for through_proxy in [false, true] {
        let h = kernel(via);
        let (client, mut pager, _obj, name) = setup(&h);
        let target = if through_proxy {
            let px = client
                .memory_object_create_proxy_version(VmProt::ALL, &[name], &[0], &[0], &[P], ProxyVersion::Paging)
                .unwrap();
            px.proxy
        } else {
            name
        };
        let _keep = map(&client, target, 1);
        let a = map(&client, target, 1);
        let b = map(&client, target, 1);
        // The pager gets init and never says ready.
        let ra = read_at(&client, a);
        let rb = read_at(&client, b);
        assert!(matches!(next(&mut pager).msg, KernelToPager::Init { .. }));
        still_waiting(&ra);
        still_waiting(&rb);
        client.vm_deallocate(a, P).unwrap();
        assert_eq!(done(&ra), Err(KernError::InvalidAddress), "through a proxy: {through_proxy}");
        client.vm_protect(b, P, false, VmProt::NONE).unwrap();
        assert_eq!(done(&rb), Err(KernError::ProtectionFailure), "through a proxy: {through_proxy}");
    }
}

/// Waiting costs no thread: `vm_fault_poll` asks the pager and returns
/// `Pending` with the caller's waker registered; the pager's answer wakes
/// it, and the next poll finds the page. Unrelated events wake nobody.
#[test]
fn a_fault_can_wait_without_a_thread() {
    use machvm_core::wait::{Poll, Waker};
    use std::sync::atomic::{AtomicU32, Ordering};
    #[derive(Default)]
    struct Count(AtomicU32);
    impl Waker for Count {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let h = kernel(Transport::Local);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 1);
    let count = Arc::new(Count::default());
    let waker: Arc<dyn Waker> = count.clone();
    assert!(matches!(h.k.vm_fault_poll(client.id(), a, VmProt::READ, &waker), Ok(Poll::Pending(_))));
    ready(&mut pager);
    // `ready` wakes the fault; polling again sends the request.
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
    assert!(matches!(h.k.vm_fault_poll(client.id(), a, VmProt::READ, &waker), Ok(Poll::Pending(_))));
    expect_request(&mut pager, 0, P);
    // Another task's call is no event for this fault.
    let other = h.task();
    other.vm_allocate(VmAddr(0), P, true).unwrap();
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
    pager.supply(obj, 0, &page(4)).unwrap();
    assert_eq!(count.0.load(Ordering::SeqCst), 2);
    assert_eq!(h.k.vm_fault_poll(client.id(), a, VmProt::READ, &waker), Ok(Poll::Ready(())));
    assert_eq!(client.read_u64(a), Ok(4));
}

/// Read-ahead (what the fault server does on sequential faults of real
/// memory): once the pages a fault entered end at a page the pager has
/// and nobody asked for, its cluster is asked for with no fault waiting;
/// the pages a task uses are never given up for it.
#[test]
fn read_ahead_asks_for_the_next_cluster_with_no_fault_waiting() {
    use machvm_core::vm::fault::Around;
    for limit in [usize::MAX, 5] {
        let limits = TaskLimits { resident_pages: limit, ..TaskLimits::default() };
        let h = kernel_with(
            Transport::Local,
            KernelConfig { phys_pages: 1024, resident_limit: 1024, cluster_pages: 2, limits, ..Default::default() },
        );
        let (client, mut pager, obj, name) = setup(&h);
        let a = map(&client, name, 8);
        ready(&mut pager);
        let rx = read_at(&client, a);
        expect_request(&mut pager, 0, 2 * P);
        pager.supply(obj, 0, &[page(0), page(1000)].concat()).unwrap();
        assert_eq!(done(&rx), Ok(0));
        let no_ahead = Around { max: 255, write: false, zero_fill: 0, read_ahead: false };
        assert_eq!(h.k.vm_fault_around(client.id(), a, no_ahead), 1, "page 1 entered");
        quiet(&mut pager);
        let ahead = Around { read_ahead: true, ..no_ahead };
        assert_eq!(h.k.vm_fault_around(client.id(), VmAddr(a.0 + P), ahead), 0);
        if limit == usize::MAX {
            // Pages [2, 4): asked for now; a fault there then waits for them.
            expect_request(&mut pager, 2 * P, 2 * P);
            let rx = read_at(&client, VmAddr(a.0 + 3 * P));
            still_waiting(&rx);
            pager.supply(obj, 2 * P, &[page(2000), page(3000)].concat()).unwrap();
            assert_eq!(done(&rx), Ok(3000));
            assert_eq!(h.k.stats().sent("data_request"), 2);
        } else {
            // Two resident and a limit of five: room for two more, asked.
            expect_request(&mut pager, 2 * P, 2 * P);
            pager.supply(obj, 2 * P, &[page(2000), page(3000)].concat()).unwrap();
            // Four resident now: the next cluster would need a reclaim.
            assert_eq!(client.read_u64(VmAddr(a.0 + 3 * P)), Ok(3000));
            h.k.vm_fault_around(client.id(), VmAddr(a.0 + 2 * P), no_ahead);
            h.k.vm_fault_around(client.id(), VmAddr(a.0 + 3 * P), ahead);
            quiet(&mut pager);
        }
    }
}

/// A task thread's access without a thread that waits: `access_poll`
/// faults, asks the pager and returns `Pending`; once woken, the same
/// access goes through.
#[test]
fn an_access_can_wait_without_a_thread() {
    use machvm_core::pmap::Access;
    use machvm_core::wait::{Poll, ThreadWaker, Waker};
    let h = kernel(Transport::Local);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 1);
    ready(&mut pager);
    let w = ThreadWaker::new();
    let waker: Arc<dyn Waker> = w.clone();
    let mut buf = [0u8; 8];
    assert!(matches!(h.k.access_poll(client.id(), a, Access::Load(&mut buf), &waker), Ok(Poll::Pending(_))));
    let seen = w.generation();
    expect_request(&mut pager, 0, P);
    pager.supply(obj, 0, &page(21)).unwrap();
    assert_ne!(w.generation(), seen, "the supply woke the waiter");
    assert_eq!(h.k.access_poll(client.id(), a, Access::Load(&mut buf), &waker), Ok(Poll::Ready(())));
    assert_eq!(u64::from_le_bytes(buf), 21);
    assert_eq!(
        h.k.access_poll(client.id(), VmAddr(0x7000_0000), Access::Load(&mut buf), &waker),
        Err(KernError::InvalidAddress)
    );
}

fn change_attributes_cluster_makes_one_request_per_cluster(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 8);
    let init = next(&mut pager);
    assert!(matches!(init.msg, KernelToPager::Init { .. }));
    let answer = pager
        .call_with_reply(
            obj,
            PagerToKernel::ChangeAttributes { may_cache: true, copy_strategy: CopyStrategy::Delay, cluster_pages: 4 },
        )
        .unwrap();
    assert_eq!(answer, KernelReply::ChangeCompleted { may_cache: true, copy_strategy: CopyStrategy::Delay });
    // A fault on page 5 asks for the whole aligned cluster [4, 8).
    let rx = read_at(&client, VmAddr(a.0 + 5 * P));
    expect_request(&mut pager, 4 * P, 4 * P);
    let data: Vec<u8> = (4..8).flat_map(|i| page(i * 1000)).collect();
    pager.supply(obj, 4 * P, &data).unwrap();
    assert_eq!(done(&rx), Ok(5000));
    for i in 4..8 {
        assert_eq!(client.read_u64(VmAddr(a.0 + i * P)).unwrap(), i * 1000);
    }
    quiet(&mut pager);
    assert_eq!(h.k.stats().sent("data_request"), 1);
}

fn a_cluster_request_skips_pages_already_resident(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 4);
    next(&mut pager);
    pager.set_cluster(obj, 4).unwrap();
    // Page 2 arrives unasked; a fault on page 0 then asks only for [0, 2).
    pager.supply(obj, 2 * P, &page(200)).unwrap();
    let rx = read_at(&client, a);
    expect_request(&mut pager, 0, 2 * P);
    pager.supply(obj, 0, &[page(0), page(100)].concat()).unwrap();
    assert_eq!(done(&rx), Ok(0));
    assert_eq!(client.read_u64(VmAddr(a.0 + 2 * P)).unwrap(), 200);
    // Page 3 is alone in its run now.
    let rx = read_at(&client, VmAddr(a.0 + 3 * P));
    expect_request(&mut pager, 3 * P, P);
    pager.supply(obj, 3 * P, &page(300)).unwrap();
    assert_eq!(done(&rx), Ok(300));
}

fn change_attributes_with_an_invalid_cluster_is_refused_and_changes_nothing(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    map(&client, name, 1);
    ready(&mut pager);
    pager.set_cluster(obj, 2).unwrap();
    let before = attributes(&pager, obj);
    for bad in [0, 257, u32::MAX] {
        let r = pager.call(
            obj,
            PagerToKernel::ChangeAttributes { may_cache: false, copy_strategy: CopyStrategy::None, cluster_pages: bad },
        );
        assert_eq!(r, Err(KernError::InvalidArgument), "cluster {bad}");
    }
    assert_eq!(attributes(&pager, obj), before);
    assert_eq!(
        before,
        KernelReply::Attributes { ready: true, may_cache: true, copy_strategy: CopyStrategy::Delay, cluster_pages: 2 }
    );
}

fn get_attributes_reports_what_the_pager_set(via: Transport) {
    let h =
        kernel_with(via, KernelConfig { phys_pages: 64, resident_limit: 64, cluster_pages: 3, ..Default::default() });
    let (client, mut pager, obj, name) = setup(&h);
    map(&client, name, 1);
    next(&mut pager); // init, unanswered
    assert_eq!(
        attributes(&pager, obj),
        KernelReply::Attributes {
            ready: false,
            may_cache: false,
            copy_strategy: CopyStrategy::Delay,
            cluster_pages: 3
        }
    );
    pager.call(obj, PagerToKernel::Ready { may_cache: true, copy_strategy: CopyStrategy::Delay }).unwrap();
    assert_eq!(
        attributes(&pager, obj),
        KernelReply::Attributes { ready: true, may_cache: true, copy_strategy: CopyStrategy::Delay, cluster_pages: 3 }
    );
    pager
        .call(
            obj,
            PagerToKernel::ChangeAttributes { may_cache: false, copy_strategy: CopyStrategy::None, cluster_pages: 16 },
        )
        .unwrap();
    assert_eq!(
        attributes(&pager, obj),
        KernelReply::Attributes { ready: true, may_cache: false, copy_strategy: CopyStrategy::None, cluster_pages: 16 }
    );
    // Without a reply port there is nowhere to answer.
    assert_eq!(pager.call(obj, PagerToKernel::GetAttributes), Err(KernError::SendInvalidReply));
    assert_eq!(h.k.stats().received("get_attributes"), 4);
}

// ----- data_request, data_supply, data_unavailable, data_error -----

fn data_request_names_the_object_offset_and_access(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let a = client.vm_map(MapRequest::anywhere(4 * P, Some(name)).offset(8 * P)).unwrap();
    ready(&mut pager);
    let rx = write_at(&client, VmAddr(a.0 + P + 16), 77);
    let r = next(&mut pager);
    assert_eq!(r.object, obj);
    match r.msg {
        KernelToPager::DataRequest { offset, length, access } => {
            assert_eq!((offset, length), (9 * P, P));
            assert!(access.contains(VmProt::WRITE), "{access:?}");
        }
        other => panic!("{other:?}"),
    }
    still_waiting(&rx);
    pager.supply(obj, 9 * P, &page(0)).unwrap();
    assert_eq!(done(&rx), Ok(()));
    assert_eq!(client.read_u64(VmAddr(a.0 + P + 16)).unwrap(), 77);
    assert_eq!(client.read_u64(VmAddr(a.0 + P + 8)).unwrap(), 1);
    let rx = read_at(&client, a);
    assert_eq!(expect_request(&mut pager, 8 * P, P), VmProt::READ);
    pager.unavailable(obj, 8 * P, P).unwrap();
    assert_eq!(done(&rx), Ok(0));
}

fn data_supply_answers_every_fault_waiting_on_the_page(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 1);
    ready(&mut pager);
    let waiters: Vec<_> = (0..4).map(|i| read_at(&client, VmAddr(a.0 + i * 8))).collect();
    expect_request(&mut pager, 0, P);
    quiet(&mut pager);
    pager.supply(obj, 0, &page(40)).unwrap();
    for (i, w) in waiters.iter().enumerate() {
        assert_eq!(done(w), Ok(40 + i as u64));
    }
    assert_eq!(h.k.stats().sent("data_request"), 1);
    assert_eq!(h.k.stats().received("data_supply"), 1);
}

fn data_supply_of_unrequested_pages_is_cached_but_never_overwrites(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 2);
    ready(&mut pager);
    pager.supply(obj, P, &page(10)).unwrap();
    assert_eq!(client.read_u64(VmAddr(a.0 + P)).unwrap(), 10);
    client.write_u64(VmAddr(a.0 + P), 11).unwrap();
    // A second supply of a resident page is ignored: the task's write stays.
    pager.supply(obj, P, &page(99)).unwrap();
    assert_eq!(client.read_u64(VmAddr(a.0 + P)).unwrap(), 11);
    assert_eq!(client.read_u64(VmAddr(a.0 + P + 8)).unwrap(), 11);
    quiet(&mut pager);
    assert_eq!(h.k.stats().sent("data_request"), 0);
}

fn data_supply_with_a_reply_port_gets_supply_completed(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 2);
    ready(&mut pager);
    let rx = read_at(&client, a);
    expect_request(&mut pager, 0, P);
    let m = PagerToKernel::DataSupply { offset: 0, data: page(3), lock: VmProt::NONE, precious: false };
    assert_eq!(
        pager.call_with_reply(obj, m).unwrap(),
        KernelReply::SupplyCompleted { offset: 0, length: P, result: None, error_offset: 0 }
    );
    assert_eq!(done(&rx), Ok(3));
    let m =
        PagerToKernel::DataSupply { offset: P, data: [page(7), page(8)].concat(), lock: VmProt::NONE, precious: false };
    assert_eq!(
        pager.call_with_reply(obj, m).unwrap(),
        KernelReply::SupplyCompleted { offset: P, length: 2 * P, result: None, error_offset: 0 }
    );
    assert_eq!(client.read_u64(VmAddr(a.0 + P)).unwrap(), 7);
}

fn data_unavailable_zero_fills(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 4);
    ready(&mut pager);
    pager.set_cluster(obj, 4).unwrap();
    let rx = write_at(&client, VmAddr(a.0 + 2 * P), 5);
    expect_request(&mut pager, 0, 4 * P);
    pager.unavailable(obj, 0, 4 * P).unwrap();
    assert_eq!(done(&rx), Ok(()));
    let all = client.vm_read(a, 4 * P).unwrap();
    let mut want = vec![0u8; 4 * P as usize];
    want[2 * P as usize..2 * P as usize + 8].copy_from_slice(&5u64.to_le_bytes());
    assert_eq!(all, want);
    quiet(&mut pager);
    assert_eq!(h.k.stats().vm.zero_fills, 4);
}

fn data_error_fails_the_fault_until_a_flush(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 2);
    ready(&mut pager);
    let r1 = read_at(&client, a);
    let r2 = write_at(&client, VmAddr(a.0 + 8), 1);
    expect_request(&mut pager, 0, P);
    pager.error(obj, 0, P).unwrap();
    assert_eq!(done(&r1), Err(KernError::MemoryError));
    assert_eq!(done(&r2), Err(KernError::MemoryError));
    // The page stays failed: no new request.
    assert_eq!(client.read_u64(a), Err(KernError::MemoryError));
    quiet(&mut pager);
    // Other pages are not affected.
    let r3 = read_at(&client, VmAddr(a.0 + P));
    expect_request(&mut pager, P, P);
    pager.supply(obj, P, &page(1)).unwrap();
    assert_eq!(done(&r3), Ok(1));
    // A flush forgets the error; the next access asks again.
    pager.lock_request(obj, 0, P, ReturnPolicy::None, true, VmProt::NONE).unwrap();
    let r4 = read_at(&client, a);
    expect_request(&mut pager, 0, P);
    pager.supply(obj, 0, &page(60)).unwrap();
    assert_eq!(done(&r4), Ok(60));
    assert_eq!(h.k.stats().received("data_error"), 1);
}

// ----- pager locks: data_supply(lock), data_unlock, lock_request -----

fn a_write_to_a_write_locked_page_sends_one_data_unlock_and_waits_for_the_lock_request(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 1);
    ready(&mut pager);
    let w1 = write_at(&client, a, 100);
    expect_request(&mut pager, 0, P);
    pager.supply_with(obj, 0, &page(0), VmProt::WRITE, false).unwrap();
    match next(&mut pager).msg {
        KernelToPager::DataUnlock { offset: 0, length: P, access } => assert_eq!(access, VmProt::WRITE),
        other => panic!("{other:?}"),
    }
    // Reads are allowed meanwhile; more writers do not ask again.
    assert_eq!(client.read_u64(VmAddr(a.0 + 8)).unwrap(), 1);
    let w2 = write_at(&client, VmAddr(a.0 + 8), 200);
    let w3 = write_at(&client, VmAddr(a.0 + 16), 300);
    still_waiting(&w1);
    still_waiting(&w2);
    still_waiting(&w3);
    quiet(&mut pager);
    pager.lock_request(obj, 0, P, ReturnPolicy::None, false, VmProt::NONE).unwrap();
    assert_eq!(done(&w1), Ok(()));
    assert_eq!(done(&w2), Ok(()));
    assert_eq!(done(&w3), Ok(()));
    assert_eq!(client.read_u64(a).unwrap(), 100);
    assert_eq!(client.read_u64(VmAddr(a.0 + 8)).unwrap(), 200);
    assert_eq!(client.read_u64(VmAddr(a.0 + 16)).unwrap(), 300);
    quiet(&mut pager);
    assert_eq!(h.k.stats().sent("data_unlock"), 1);
}

fn lock_request_lock_value_takes_write_access_away_from_a_resident_page(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 1);
    ready(&mut pager);
    let rx = write_at(&client, a, 1);
    expect_request(&mut pager, 0, P);
    pager.supply(obj, 0, &page(0)).unwrap();
    assert_eq!(done(&rx), Ok(()));
    pager.lock_request(obj, 0, P, ReturnPolicy::None, false, VmProt::WRITE).unwrap();
    // Still readable, and no data was thrown away.
    assert_eq!(client.read_u64(a).unwrap(), 1);
    let w = write_at(&client, a, 2);
    assert!(matches!(next(&mut pager).msg, KernelToPager::DataUnlock { offset: 0, access: VmProt::WRITE, .. }));
    still_waiting(&w);
    pager.lock_request(obj, 0, P, ReturnPolicy::None, false, VmProt::NONE).unwrap();
    assert_eq!(done(&w), Ok(()));
    assert_eq!(client.read_u64(a).unwrap(), 2);
}

fn lock_request_should_return_sends_dirty_pages_with_their_contents(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 2);
    ready(&mut pager);
    pager.supply(obj, 0, &[page(0), page(1000)].concat()).unwrap();
    client.write_u64(VmAddr(a.0 + 16), 0xdead).unwrap();
    assert_eq!(client.read_u64(VmAddr(a.0 + P)).unwrap(), 1000); // read only: clean
    pager.lock_request(obj, 0, 2 * P, ReturnPolicy::Dirty, false, VmProt::NONE).unwrap();
    let mut want = page(0);
    want[16..24].copy_from_slice(&0xdeadu64.to_le_bytes());
    match next(&mut pager).msg {
        KernelToPager::DataReturn { offset, data, dirty, kernel_copy } => {
            assert_eq!(offset, 0);
            assert!(data == want, "returned data differs from what was written");
            assert!(dirty);
            assert!(kernel_copy, "a return without flush leaves the kernel a copy");
        }
        other => panic!("{other:?}"),
    }
    quiet(&mut pager);
    // The page stayed resident and is clean now: a second clean sends nothing.
    assert_eq!(client.read_u64(VmAddr(a.0 + 16)).unwrap(), 0xdead);
    pager.lock_request(obj, 0, 2 * P, ReturnPolicy::Dirty, false, VmProt::NONE).unwrap();
    quiet(&mut pager);
    // A later write makes it dirty again and it comes back again.
    client.write_u64(VmAddr(a.0 + 24), 0xbeef).unwrap();
    pager.lock_request(obj, 0, 2 * P, ReturnPolicy::Dirty, true, VmProt::NONE).unwrap();
    match next(&mut pager).msg {
        KernelToPager::DataReturn { offset: 0, data, dirty: true, kernel_copy: false } => {
            assert_eq!(&data[16..32], &[0xdeadu64.to_le_bytes(), 0xbeefu64.to_le_bytes()].concat()[..]);
        }
        other => panic!("{other:?}"),
    }
    quiet(&mut pager);
    assert_eq!(h.k.stats().sent("data_return"), 2);
    assert_eq!(h.k.stats().sent("data_request"), 0);
}

fn lock_request_should_flush_makes_the_next_access_ask_again(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 1);
    ready(&mut pager);
    pager.supply(obj, 0, &page(1)).unwrap();
    client.write_u64(a, 5).unwrap();
    let resident = h.k.stats().resident;
    // Flushing without return discards even a dirty page, as asked.
    pager.lock_request(obj, 0, P, ReturnPolicy::None, true, VmProt::NONE).unwrap();
    quiet(&mut pager);
    assert_eq!(h.k.stats().resident, resident - 1);
    let rx = read_at(&client, a);
    expect_request(&mut pager, 0, P);
    pager.supply(obj, 0, &page(70)).unwrap();
    assert_eq!(done(&rx), Ok(70));
}

fn lock_request_reply_gets_lock_completed_for_the_range(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    map(&client, name, 1);
    ready(&mut pager);
    let m = PagerToKernel::LockRequest {
        offset: 4 * P,
        size: 3 * P,
        should_return: ReturnPolicy::All,
        should_flush: true,
        lock: VmProt::NONE,
    };
    assert_eq!(pager.call_with_reply(obj, m).unwrap(), KernelReply::LockCompleted { offset: 4 * P, length: 3 * P });
    assert_eq!(h.k.stats().received("lock_request"), 1);
}

fn a_precious_page_is_returned_on_flush_even_if_clean(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 2);
    ready(&mut pager);
    pager.supply_with(obj, 0, &[page(8), page(9)].concat(), VmProt::NONE, true).unwrap();
    assert_eq!(client.read_u64(a).unwrap(), 8);
    // Returning only dirty pages leaves a clean precious page alone ...
    pager.lock_request(obj, 0, P, ReturnPolicy::Dirty, false, VmProt::NONE).unwrap();
    quiet(&mut pager);
    // ... returning all of them does not.
    pager.lock_request(obj, 0, 2 * P, ReturnPolicy::All, true, VmProt::NONE).unwrap();
    let mut back = Vec::new();
    for _ in 0..2 {
        match next(&mut pager).msg {
            KernelToPager::DataReturn { offset, data, dirty, .. } => {
                assert!(!dirty);
                back.push((offset, data == page(8 + offset / P)));
            }
            other => panic!("{other:?}"),
        }
    }
    back.sort();
    assert_eq!(back, vec![(0, true), (P, true)]);
    quiet(&mut pager);
}

fn a_precious_page_is_returned_on_pageout_even_if_clean(via: Transport) {
    let h =
        kernel_with(via, KernelConfig { phys_pages: 64, resident_limit: 2, cluster_pages: 1, ..Default::default() });
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 1);
    ready(&mut pager);
    pager.supply_with(obj, 0, &page(4), VmProt::NONE, true).unwrap();
    assert_eq!(client.read_u64(a).unwrap(), 4);
    // Anonymous memory with no default pager cannot be paged out, so the
    // precious page is the one that goes.
    let anon = client.vm_allocate(VmAddr(0), 4 * P, true).unwrap();
    for i in 0..3 {
        client.write_u64(VmAddr(anon.0 + i * P), i).unwrap();
    }
    match next(&mut pager).msg {
        KernelToPager::DataReturn { offset: 0, data, dirty: false, kernel_copy: false } => assert!(data == page(4)),
        other => panic!("{other:?}"),
    }
    assert!(h.k.stats().vm.pageouts >= 1);
    // Read again, it is asked for again.
    let rx = read_at(&client, a);
    expect_request(&mut pager, 0, P);
    pager.supply(obj, 0, &page(4)).unwrap();
    assert_eq!(done(&rx), Ok(4));
}

// ----- destroy, terminate, the object cache -----

fn destroy_fails_waiting_and_later_faults(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 3);
    ready(&mut pager);
    pager.supply(obj, 0, &page(1)).unwrap();
    assert_eq!(client.read_u64(a).unwrap(), 1);
    let waiting = read_at(&client, VmAddr(a.0 + P));
    expect_request(&mut pager, P, P);
    pager.destroy(obj).unwrap();
    assert_eq!(done(&waiting), Err(KernError::MemoryError));
    // Resident data went with the object; nothing is asked for any more.
    assert_eq!(client.read_u64(a), Err(KernError::MemoryError));
    assert_eq!(client.read_u64(VmAddr(a.0 + 2 * P)), Err(KernError::MemoryError));
    quiet(&mut pager);
    assert_eq!(h.k.stats().sent("data_request"), 1);
    assert_eq!(h.k.stats().sent("data_return"), 0);
}

fn terminate_follows_the_last_mapping_of_an_uncached_object_after_its_dirty_pages(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let other = h.task();
    let name2 = give(&h, &pager, obj, &other).unwrap();
    let a = map(&client, name, 2);
    map(&other, name2, 2);
    next(&mut pager);
    pager
        .call(
            obj,
            PagerToKernel::ChangeAttributes { may_cache: false, copy_strategy: CopyStrategy::Delay, cluster_pages: 1 },
        )
        .unwrap();
    pager.supply_with(obj, 0, &[page(0), page(50)].concat(), VmProt::NONE, false).unwrap();
    client.write_u64(a, 42).unwrap();
    assert_eq!(client.read_u64(VmAddr(a.0 + P)).unwrap(), 50);
    // One mapping left: nothing happens yet.
    client.vm_deallocate(a, 2 * P).unwrap();
    quiet(&mut pager);
    other.terminate().unwrap();
    match next(&mut pager).msg {
        KernelToPager::DataReturn { offset: 0, data, dirty: true, .. } => assert_eq!(&data[..8], &42u64.to_le_bytes()),
        other => panic!("expected the dirty page back first, got {other:?}"),
    }
    assert_eq!(next(&mut pager).msg, KernelToPager::Terminate);
    quiet(&mut pager);
    assert_eq!(h.k.stats().sent("terminate"), 1);
    // The old control port is gone; mapping again starts a new object.
    assert_eq!(pager.ready(obj), Err(KernError::InvalidName));
    map(&client, name, 1);
    assert!(matches!(next(&mut pager).msg, KernelToPager::Init { .. }));
    assert_eq!(h.k.stats().sent("init"), 2);
}

fn a_cached_object_outlives_its_mappings_with_its_pages(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 1);
    ready(&mut pager); // may_cache = true
    let rx = write_at(&client, a, 7);
    expect_request(&mut pager, 0, P);
    pager.supply(obj, 0, &page(0)).unwrap();
    assert_eq!(done(&rx), Ok(()));
    client.vm_deallocate(a, P).unwrap();
    quiet(&mut pager);
    assert_eq!(h.k.stats().sent("terminate"), 0);
    // Mapped again: same object, no init, no request, the write is there.
    let b = map(&client, name, 1);
    assert_eq!(client.read_u64(b).unwrap(), 7);
    quiet(&mut pager);
    assert_eq!((h.k.stats().sent("init"), h.k.stats().sent("data_request")), (1, 1));
    // Its dirty page can still be cleaned by the pager.
    pager.lock_request(obj, 0, P, ReturnPolicy::Dirty, true, VmProt::NONE).unwrap();
    assert!(matches!(next(&mut pager).msg, KernelToPager::DataReturn { offset: 0, dirty: true, .. }));
}

/// At shutdown the cache is flushed: a cached object's dirty page goes
/// back to its pager, then the object is terminated.
fn cache_flush_returns_dirty_pages_then_terminates(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 1);
    ready(&mut pager);
    let rx = write_at(&client, a, 7);
    expect_request(&mut pager, 0, P);
    pager.supply(obj, 0, &page(0)).unwrap();
    assert_eq!(done(&rx), Ok(()));
    client.vm_deallocate(a, P).unwrap();
    quiet(&mut pager);
    assert_eq!(h.k.queued_for(pager.link.id()), Ok(0));
    h.k.cache_flush();
    assert_eq!(h.k.queued_for(pager.link.id()), Ok(2), "a data_return and a terminate wait for the pager");
    match next(&mut pager).msg {
        KernelToPager::DataReturn { offset: 0, data, dirty: true, .. } => assert_eq!(data[..8], 7u64.to_le_bytes()),
        other => panic!("{other:?}"),
    }
    assert_eq!(next(&mut pager).msg, KernelToPager::Terminate);
    assert_eq!(h.k.queued_for(pager.link.id()), Ok(0));
}

// ----- malformed and hostile messages -----

/// The control port's name, taken from `init` by hand so that raw bytes
/// can be sent to it.
fn raw_control(pager: &PagerConn, obj: PortName) -> PortName {
    let m = pager.link.msg_receive(obj, Some(T)).unwrap();
    assert_eq!(m.id, id::INIT);
    m.rights[0].0
}

fn raw(pager: &PagerConn, control: PortName, id: u32, data: Vec<u8>) -> Result<()> {
    pager.link.msg_send(UserMessage::new(control, id, data))
}

fn send(pager: &PagerConn, control: PortName, m: PagerToKernel) -> Result<()> {
    let (id, data) = m.encode();
    raw(pager, control, id, data)
}

fn malformed_pager_messages_are_refused_and_change_nothing(via: Transport) {
    let h = kernel(via);
    let (client, pager, obj, name) = setup(&h);
    let a = map(&client, name, 2);
    let control = raw_control(&pager, obj);
    send(&pager, control, PagerToKernel::Ready { may_cache: true, copy_strategy: CopyStrategy::Delay }).unwrap();
    let rx = read_at(&client, a);
    let m = pager.link.msg_receive(obj, Some(T)).unwrap();
    assert_eq!(
        KernelToPager::decode(m.id, &m.data),
        Ok(KernelToPager::DataRequest { offset: 0, length: P, access: VmProt::READ })
    );
    let resident = h.k.stats().resident;
    let supply =
        |offset, data: Vec<u8>| PagerToKernel::DataSupply { offset, data, lock: VmProt::NONE, precious: false };
    let (sid, good) = supply(0, page(1)).encode();
    let cases: Vec<(u32, Vec<u8>, KernError)> = vec![
        // Bad alignment and sizes.
        (sid, supply(8, page(1)).encode().1, KernError::InvalidArgument),
        (sid, supply(0, vec![1; 100]).encode().1, KernError::InvalidArgument),
        (sid, supply(0, Vec::new()).encode().1, KernError::InvalidArgument),
        (sid, supply(u64::MAX - P + 1, page(1)).encode().1, KernError::InvalidArgument),
        (
            id::DATA_UNAVAILABLE,
            PagerToKernel::DataUnavailable { offset: 0, size: 7 }.encode().1,
            KernError::InvalidArgument,
        ),
        (
            id::DATA_ERROR,
            PagerToKernel::DataError { offset: 0, size: 0, reason: KernError::MemoryError }.encode().1,
            KernError::InvalidArgument,
        ),
        (
            id::LOCK_REQUEST,
            PagerToKernel::LockRequest {
                offset: 1,
                size: P,
                should_return: ReturnPolicy::None,
                should_flush: true,
                lock: VmProt::NONE,
            }
            .encode()
            .1,
            KernError::InvalidArgument,
        ),
        // Truncated, overlong, lying about its length.
        (sid, good[..good.len() - 1].to_vec(), KernError::MigBadArguments),
        (sid, good[..12].to_vec(), KernError::MigBadArguments),
        (sid, [&good[..], &[0]].concat(), KernError::MigBadArguments),
        (
            sid,
            {
                let mut g = good.clone();
                g[13..21].copy_from_slice(&(2 * P).to_le_bytes());
                g
            },
            KernError::MigBadArguments,
        ),
        (id::READY, vec![7, 2, 0, 0, 0], KernError::MigBadArguments),
        // Not an EMMI call at all.
        (9999, good.clone(), KernError::MigBadId),
        (id::DATA_REQUEST, Vec::new(), KernError::MigBadId),
    ];
    for (i, (msg_id, data, want)) in cases.into_iter().enumerate() {
        assert_eq!(raw(&pager, control, msg_id, data), Err(want), "case {i}");
    }
    // Nothing changed: the fault still waits, nothing became resident, the
    // pager heard nothing, and a proper answer still works.
    still_waiting(&rx);
    assert_eq!(h.k.stats().resident, resident);
    assert!(matches!(pager.link.msg_receive(obj, Some(QUIET)), Err(KernError::RcvTimedOut)));
    raw(&pager, control, sid, good).unwrap();
    assert_eq!(done(&rx), Ok(1));
}

fn a_refused_supply_with_a_reply_port_reports_the_error(via: Transport) {
    let h = kernel(via);
    let (client, pager, obj, name) = setup(&h);
    map(&client, name, 1);
    let control = raw_control(&pager, obj);
    let reply = pager.link.port_allocate().unwrap();
    let (sid, data) =
        PagerToKernel::DataSupply { offset: 8, data: page(1), lock: VmProt::NONE, precious: false }.encode();
    let mut msg = UserMessage::new(control, sid, data);
    msg.reply = Some((reply, Disposition::MakeSendOnce));
    assert_eq!(pager.link.msg_send(msg), Err(KernError::InvalidArgument));
    let m = pager.link.msg_receive(reply, Some(T)).unwrap();
    assert_eq!(
        KernelReply::decode(m.id, &m.data),
        Ok(KernelReply::SupplyCompleted {
            offset: 8,
            length: P,
            result: Some(KernError::InvalidArgument),
            error_offset: 8
        })
    );
}

fn a_huge_unavailable_or_error_range_does_not_stall_the_kernel(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 2);
    ready(&mut pager);
    let rx = read_at(&client, a);
    expect_request(&mut pager, 0, P);
    // Well formed, page aligned, no overflow: only very large.
    let big = 1u64 << 62;
    let calls = spawn(move || {
        let e = pager.call(obj, PagerToKernel::DataError { offset: P, size: big, reason: KernError::MemoryError });
        let u = pager.unavailable(obj, 0, big);
        (e, u, pager)
    });
    let (e, u, mut pager) = calls.recv_timeout(T).expect("a large range must not stall the kernel");
    assert_eq!((e, u), (Ok(()), Ok(())));
    assert_eq!(done(&rx), Ok(0));
    assert_eq!(h.k.stats().vm.zero_fills, 1);
    // Page 1 was never asked for, so the error did not stick to it.
    let rx = read_at(&client, VmAddr(a.0 + P));
    expect_request(&mut pager, P, P);
    pager.supply(obj, P, &page(3)).unwrap();
    assert_eq!(done(&rx), Ok(3));
}

// ----- the file pager, end to end -----

/// 3.5 pages of bytes that differ from page to page.
fn file_bytes() -> Vec<u8> {
    (0..(3 * P + P / 2)).map(|i| (i * 7 + i / P) as u8).collect()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + T;
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn file_pager_maps_a_real_file_and_writes_returned_pages_back(via: Transport) {
    let bytes = file_bytes();
    let file = TempFile::new("e2e", &bytes);
    let h = kernel(via);
    let client = h.task();
    let mut conn = h.pager();
    let obj = conn.new_object().unwrap();
    let name = give(&h, &conn, obj, &client).unwrap();
    let mut backing = FileBacking::new(2);
    backing.add(obj, file.open()).unwrap();
    let pager = h.run_pager(conn, backing);

    let a = map(&client, name, 4);
    let seen = client.vm_read(a, 4 * P).unwrap();
    assert!(seen[..bytes.len()] == bytes[..], "mapped contents differ from the file");
    assert!(seen[bytes.len()..].iter().all(|&b| b == 0), "past the end of the file reads as zeroes");

    client.write(VmAddr(a.0 + P + 100), b"written by a task").unwrap();
    client.write(VmAddr(a.0 + 3 * P + 8), b"tail").unwrap();
    client.terminate().unwrap();
    // The file pager does not let the kernel cache its objects: when the
    // last mapping goes, the dirty pages come back and the file holds them.
    let mut want = bytes.clone();
    want[(P + 100) as usize..(P + 117) as usize].copy_from_slice(b"written by a task");
    want[(3 * P + 8) as usize..(3 * P + 12) as usize].copy_from_slice(b"tail");
    wait_until("the file to hold the returned pages", || file.contents() == want);
    assert_eq!(PagerStats::get(&pager.stats.pages_returned), 2);
    wait_until("terminate", || PagerStats::get(&pager.stats.terminates) == 1);

    // A new mapping starts over (a new init, new requests) and reads the
    // file's new contents.
    let (inits, requests) = (h.k.stats().sent("init"), h.k.stats().sent("data_request"));
    let again = h.task();
    let name2 = h.transfer(pager.task, obj, Disposition::MakeSend, again.id()).unwrap();
    let b = map(&again, name2, 4);
    let mut buf = [0u8; 17];
    again.read(VmAddr(b.0 + P + 100), &mut buf).unwrap();
    assert_eq!(&buf, b"written by a task");
    assert_eq!(h.k.stats().sent("init"), inits + 1);
    assert!(h.k.stats().sent("data_request") > requests);

    // Under pressure, pageout returns dirty pages before reclaiming them.
    again.write(VmAddr(b.0 + 8), b"paged").unwrap();
    h.k.set_resident_limit(1);
    let t = h.task();
    let anon = t.vm_allocate(VmAddr(0), P, true).unwrap();
    t.write_u64(anon, 1).unwrap();
    want[8..13].copy_from_slice(b"paged");
    wait_until("the file to hold the paged-out page", || file.contents() == want);
    assert!(h.k.stats().vm.pageouts >= 1);
    pager.stop();
}

fn file_backing_with_the_scripted_pager_lock_request_flushes_to_disk(via: Transport) {
    let bytes = file_bytes();
    let file = TempFile::new("flush", &bytes);
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let mut backing = FileBacking::new(1);
    backing.add(obj, file.open()).unwrap();
    let a = map(&client, name, 2);
    ready(&mut pager);
    let rx = write_at(&client, VmAddr(a.0 + P + 8), 0x1122_3344_5566_7788);
    expect_request(&mut pager, P, P);
    let mut buf = vec![0u8; P as usize];
    assert!(backing.read(obj, P, &mut buf).unwrap());
    pager.supply(obj, P, &buf).unwrap();
    assert_eq!(done(&rx), Ok(()));
    assert!(file.contents() == bytes, "nothing reaches the file before a return");
    pager.lock_request(obj, 0, 2 * P, ReturnPolicy::Dirty, true, VmProt::NONE).unwrap();
    match next(&mut pager).msg {
        KernelToPager::DataReturn { offset, data, .. } => backing.write(obj, offset, &data).unwrap(),
        other => panic!("{other:?}"),
    }
    let mut want = bytes.clone();
    want[(P + 8) as usize..(P + 16) as usize].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    assert!(file.contents() == want);
    let mut direct = [0u8; 8];
    file.open().read_exact_at(&mut direct, P + 8).unwrap();
    assert_eq!(u64::from_le_bytes(direct), 0x1122_3344_5566_7788);
    // Flushed: the next read asks the pager, which now serves the new bytes.
    let rx = read_at(&client, VmAddr(a.0 + P + 8));
    expect_request(&mut pager, P, P);
    assert!(backing.read(obj, P, &mut buf).unwrap());
    pager.supply(obj, P, &buf).unwrap();
    assert_eq!(done(&rx), Ok(0x1122_3344_5566_7788));
}

/// Unmapped objects whose pagers allow caching stay cached, but only up to
/// `OBJECT_CACHE_MAX`: past that the oldest are terminated, their dirty
/// pages returned first, as Mach trims its object cache.
fn the_object_cache_is_trimmed_oldest_first(via: Transport) {
    let h = kernel(via);
    let client = h.task();
    let mut conn = h.pager();
    let n = machvm_core::vm::OBJECT_CACHE_MAX + 16;
    let mut names = Vec::new();
    for _ in 0..n {
        let obj = conn.new_object().unwrap();
        names.push(give(&h, &conn, obj, &client).unwrap());
    }
    let pager = h.run_pager(conn, MemBacking::default());
    for (i, &name) in names.iter().enumerate() {
        let a = map(&client, name, 1);
        client.write_u64(a, i as u64 + 1).unwrap();
        client.vm_deallocate(a, P).unwrap();
    }
    wait_until("16 terminates", || PagerStats::get(&pager.stats.terminates) == 16);
    assert_eq!(PagerStats::get(&pager.stats.pages_returned), 16, "the trimmed objects' dirty pages came back");
    // A trimmed object starts over and reads what its pager got back; a
    // cached one is found without asking.
    let requests = h.k.stats().sent("data_request");
    let cached = map(&client, names[n - 1], 1);
    assert_eq!(client.read_u64(cached).unwrap(), n as u64);
    assert_eq!(h.k.stats().sent("data_request"), requests);
    let trimmed = map(&client, names[0], 1);
    assert_eq!(client.read_u64(trimmed).unwrap(), 1);
    assert_eq!(h.k.stats().sent("data_request"), requests + 1);
}

/// A pager whose memory object port dies in the very call that makes the
/// kernel page out one of its dirty pages (its `data_supply` carries the
/// port's own receive right): the page cannot be returned, so the kernel
/// keeps it, and what the task wrote stays readable.
fn a_dirty_page_is_kept_when_its_pager_dies_in_the_call_that_pages_it_out(via: Transport) {
    let h =
        kernel_with(via, KernelConfig { phys_pages: 64, resident_limit: 2, cluster_pages: 1, ..Default::default() });
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 3);
    ready(&mut pager);
    let w = write_at(&client, a, 77);
    expect_request(&mut pager, 0, P);
    pager.supply(obj, 0, &page(1)).unwrap();
    assert_eq!(done(&w), Ok(()));
    let r1 = read_at(&client, VmAddr(a.0 + P));
    expect_request(&mut pager, P, P);
    pager.supply(obj, P, &page(2)).unwrap();
    assert_eq!(done(&r1), Ok(2));
    let r2 = read_at(&client, VmAddr(a.0 + 2 * P));
    expect_request(&mut pager, 2 * P, P);
    let (id, data) =
        PagerToKernel::DataSupply { offset: 2 * P, data: page(3), lock: VmProt::NONE, precious: false }.encode();
    let mut m = UserMessage::new(pager.control(obj).unwrap(), id, data);
    m.rights.push((obj, Disposition::MoveReceive));
    pager.link.msg_send(m).unwrap();
    let _ = done(&r2);
    assert_eq!(client.read_u64(a), Ok(77), "the dirty page of a dying pager was lost");
}

// ----- copy strategies -----

/// Receives `init` and answers `ready` with copy strategy `NONE`.
fn ready_copy_none(pager: &mut PagerConn) -> PortName {
    let r = next(pager);
    assert_eq!(r.msg, KernelToPager::Init { page_size: P });
    pager.call(r.object, PagerToKernel::Ready { may_cache: true, copy_strategy: CopyStrategy::None }).unwrap();
    r.object
}

/// A pager that declares `MEMORY_OBJECT_COPY_NONE` may change its data
/// behind the kernel's back (flush, then supply something new). So a copy
/// is made eagerly, when it is asked for: `vm_map(copy)` reads every page
/// of the range (asking the pager for those not resident) and the copy
/// keeps the data as it was then, whatever the pager supplies later.
fn copy_strategy_none_makes_copies_eagerly(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let direct = map(&client, name, 2);
    assert_eq!(ready_copy_none(&mut pager), obj);
    let r = read_at(&client, direct);
    expect_request(&mut pager, 0, P);
    pager.supply(obj, 0, &page(10)).unwrap();
    assert_eq!(done(&r), Ok(10));
    // The copy reads page 1 from the pager before vm_map returns.
    let client_thread = client.clone();
    let copying = spawn(move || client_thread.vm_map(MapRequest::anywhere(2 * P, Some(name)).copy(true)));
    expect_request(&mut pager, P, P);
    still_waiting(&copying);
    pager.supply(obj, P, &page(20)).unwrap();
    let copy = done(&copying).unwrap();
    // The pager's data changes: flushed, and new data on the next request.
    pager.lock_request(obj, 0, 2 * P, ReturnPolicy::None, true, VmProt::NONE).unwrap();
    assert_eq!(client.read_u64(copy), Ok(10));
    assert_eq!(client.read_u64(VmAddr(copy.0 + P)), Ok(20));
    quiet(&mut pager);
    let r = read_at(&client, direct);
    expect_request(&mut pager, 0, P);
    pager.supply(obj, 0, &page(99)).unwrap();
    assert_eq!(done(&r), Ok(99));
    assert_eq!(client.read_u64(copy), Ok(10), "the copy is as of vm_map");
    // The copy is private and writable; the object never sees its writes.
    client.write_u64(copy, 5).unwrap();
    assert_eq!(client.read_u64(direct), Ok(99));
    assert_eq!(h.k.stats().vm.eager_copies, 2);
}

/// A child inheriting a copy of a `COPY_NONE` object's mapping gets the
/// data as of `task_create`, not what the pager supplies after.
fn copy_strategy_none_copies_eagerly_at_task_create(via: Transport) {
    let h = kernel(via);
    let (parent, mut pager, obj, name) = setup(&h);
    let a = map(&parent, name, 1);
    ready_copy_none(&mut pager);
    let r = read_at(&parent, a);
    expect_request(&mut pager, 0, P);
    pager.supply(obj, 0, &page(10)).unwrap();
    assert_eq!(done(&r), Ok(10));
    let child = parent.task_create().unwrap();
    pager.lock_request(obj, 0, P, ReturnPolicy::None, true, VmProt::NONE).unwrap();
    let r = read_at(&parent, a);
    expect_request(&mut pager, 0, P);
    pager.supply(obj, 0, &page(77)).unwrap();
    assert_eq!(done(&r), Ok(77));
    assert_eq!(child.read_u64(a), Ok(10));
    quiet(&mut pager);
}

/// An eager copy is charged to the task whose call makes it, the pages
/// read for it as well as the copies, within the task's resident limit:
/// the pages it read are reclaimed as it goes, and a copy that cannot fit
/// (its copies are dirty anonymous pages, with no default pager to take
/// them) fails with `KERN_RESOURCE_SHORTAGE` and leaves nothing behind.
fn an_eager_copy_is_charged_to_the_caller_within_its_resident_limit(via: Transport) {
    let limits = TaskLimits { resident_pages: 6, ..TaskLimits::default() };
    let h = kernel_with(
        via,
        KernelConfig { phys_pages: 1024, resident_limit: 1024, cluster_pages: 1, limits, ..Default::default() },
    );
    let k = h.k.clone();
    let (client, mut pager, obj, name) = setup(&h);
    let _direct = map(&client, name, 16);
    ready_copy_none(&mut pager);
    let mut copy = |pages: u64| {
        let c2 = client.clone();
        let copying = spawn(move || c2.vm_map(MapRequest::anywhere(pages * P, Some(name)).copy(true)));
        loop {
            if let Ok(r) = copying.try_recv() {
                return r;
            }
            if let Ok(r) = pager.recv(Some(Duration::from_millis(5))) {
                if let KernelToPager::DataRequest { offset, length, .. } = r.msg {
                    let data: Vec<u8> =
                        (offset..offset + length).step_by(P as usize).flat_map(|o| page(o / P * 100)).collect();
                    pager.supply(obj, offset, &data).unwrap();
                }
            }
        }
    };
    let charged = || k.task_info(client.id()).unwrap().charged;
    let c = copy(4).unwrap();
    for i in 0..4 {
        assert_eq!(client.read_u64(VmAddr(c.0 + i * P)), Ok(i * 100), "page {i} of the copy");
    }
    let s = k.stats();
    assert_eq!(s.vm.eager_copies, 4);
    assert!(s.vm.task_reclaims > 0, "the pages read for the copy made room for it");
    assert!(charged() <= 6 && charged() >= 4, "{} charged: the copies at least", charged());
    let (entries, before) = (k.vm_map_info(client.id()).unwrap().len(), charged());
    assert_eq!(copy(8), Err(KernError::ResourceShortage));
    assert_eq!(k.vm_map_info(client.id()).unwrap().len(), entries, "no entry made");
    assert!(charged() <= before, "the half-made copy is gone, with its charge");
    for i in 0..4 {
        assert_eq!(client.read_u64(VmAddr(c.0 + i * P)), Ok(i * 100), "page {i} of the first copy");
    }
}

/// An eager copy of a page the pager fails fails the call, and the call
/// changes nothing: no entry is made.
fn an_eager_copy_of_a_failed_page_fails_the_map_and_changes_nothing(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let _direct = map(&client, name, 1);
    ready_copy_none(&mut pager);
    let before = client.vm_region(VmAddr(0)).unwrap();
    let client_thread = client.clone();
    let copying = spawn(move || client_thread.vm_map(MapRequest::anywhere(P, Some(name)).copy(true)));
    expect_request(&mut pager, 0, P);
    pager.error(obj, 0, P).unwrap();
    assert_eq!(done(&copying), Err(KernError::MemoryError));
    assert_eq!(client.vm_region(VmAddr(before.start.0 + before.size)), Err(KernError::InvalidAddress));
}

/// An eager copy whose pager changes its mind half way (`change_attributes`
/// to `DELAY`) falls back to a delayed copy: no page of the copy is made
/// up, and what the source has shows in it.
fn an_eager_copy_whose_pager_switches_to_delay_falls_back_to_a_delayed_copy(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let direct = map(&client, name, 3);
    ready_copy_none(&mut pager);
    for (i, v) in [(0u64, 10u64), (2, 30)] {
        let r = read_at(&client, VmAddr(direct.0 + i * P));
        expect_request(&mut pager, i * P, P);
        pager.supply(obj, i * P, &page(v)).unwrap();
        assert_eq!(done(&r), Ok(v));
    }
    let client_thread = client.clone();
    let copying = spawn(move || client_thread.vm_map(MapRequest::anywhere(3 * P, Some(name)).copy(true)));
    expect_request(&mut pager, P, P);
    still_waiting(&copying);
    let delay =
        PagerToKernel::ChangeAttributes { may_cache: true, copy_strategy: CopyStrategy::Delay, cluster_pages: 1 };
    pager.call(obj, delay).unwrap();
    let copy = done(&copying).unwrap();
    pager.supply(obj, P, &page(20)).unwrap();
    for (i, v) in [(0u64, 10u64), (1, 20), (2, 30)] {
        assert_eq!(client.read_u64(VmAddr(copy.0 + i * P)), Ok(v), "page {i} of the copy");
    }
}

/// A pager that dies while a child's eager copy is being made: the copy
/// falls back to a delayed one, so the child reads what the kernel still
/// has and fails where the dead pager never answered; nothing is made up.
fn a_pager_dying_during_an_eager_copy_at_task_create_fabricates_nothing(via: Transport) {
    let h = kernel(via);
    let (parent, mut pager, obj, name) = setup(&h);
    let direct = map(&parent, name, 3);
    ready_copy_none(&mut pager);
    for (i, v) in [(0u64, 10u64), (2, 30)] {
        let r = read_at(&parent, VmAddr(direct.0 + i * P));
        expect_request(&mut pager, i * P, P);
        pager.supply(obj, i * P, &page(v)).unwrap();
        assert_eq!(done(&r), Ok(v));
    }
    let parent_thread = parent.clone();
    let forking = spawn(move || parent_thread.task_create());
    expect_request(&mut pager, P, P);
    still_waiting(&forking);
    die(pager).unwrap();
    let child = done(&forking).unwrap();
    assert_eq!(child.read_u64(direct), Ok(10));
    assert_eq!(child.read_u64(VmAddr(direct.0 + P)), Err(KernError::MemoryError), "never answered");
    assert_eq!(child.read_u64(VmAddr(direct.0 + 2 * P)), Ok(30));
}

/// `MEMORY_OBJECT_COPY_CALL` (the kernel asks the pager to make copies) is
/// not supported: `ready` and `change_attributes` refuse it and change
/// nothing; the pager can say `ready` again with a strategy that is.
fn copy_strategy_call_is_refused_at_ready_and_change_attributes(via: Transport) {
    let h = kernel(via);
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 1);
    assert!(matches!(next(&mut pager).msg, KernelToPager::Init { .. }));
    let call = PagerToKernel::Ready { may_cache: true, copy_strategy: CopyStrategy::Call };
    assert_eq!(pager.call(obj, call), Err(KernError::InvalidArgument));
    let change =
        PagerToKernel::ChangeAttributes { may_cache: true, copy_strategy: CopyStrategy::Call, cluster_pages: 1 };
    assert_eq!(pager.call(obj, change), Err(KernError::InvalidArgument));
    match attributes(&pager, obj) {
        KernelReply::Attributes { ready: false, copy_strategy: CopyStrategy::Delay, .. } => {}
        other => panic!("{other:?}"),
    }
    pager.ready(obj).unwrap();
    let r = read_at(&client, a);
    expect_request(&mut pager, 0, P);
    pager.supply(obj, 0, &page(3)).unwrap();
    assert_eq!(done(&r), Ok(3));
}

// ----- the default pager -----

/// A scripted default pager: whoever booted the kernel lends it the host
/// privilege (a fixture's shortcut, see `Host::lend_host_priv`).
fn scripted_default_pager(h: &Host) -> PagerConn {
    let mut dp = h.pager();
    let port = dp.new_object().unwrap();
    let lent = h.lend_host_priv(&dp.link);
    dp.link.set_default_memory_manager(lent, port).unwrap();
    dp
}

/// Anonymous pages the default pager cleans with `lock_request` (return
/// dirty, with a flush or without) are the default pager's from then on:
/// once the kernel lets the frame go, the next fault asks the default
/// pager for the page, and never zero-fills it.
fn anonymous_pages_cleaned_by_the_default_pager_are_asked_of_it_again(via: Transport) {
    let h = kernel(via);
    let mut dp = scripted_default_pager(&h);
    let t = h.task();
    let a = t.vm_allocate(VmAddr(0), 3 * P, true).unwrap();
    for i in 0..3 {
        t.write_u64(VmAddr(a.0 + i * P), 100 + i).unwrap();
    }
    // Page 0 is paged out: the object goes to the default pager.
    h.k.set_resident_limit(2);
    let r = next(&mut dp);
    assert!(matches!(r.msg, KernelToPager::Create { .. }), "{:?}", r.msg);
    let obj = r.object;
    let mut held = std::collections::HashMap::new();
    let mut take_return = |dp: &mut PagerConn| match next(dp).msg {
        KernelToPager::DataReturn { offset, data, dirty: true, .. } => {
            held.insert(offset, data);
            offset
        }
        other => panic!("expected a data_return, got {other:?}"),
    };
    assert_eq!(take_return(&mut dp), 0);
    h.k.set_resident_limit(1024);
    // Page 1: cleaned and flushed. Page 2: cleaned, kept, then reclaimed
    // (it is clean now, so pageout drops it without a return).
    dp.lock_request(obj, P, P, ReturnPolicy::Dirty, true, VmProt::NONE).unwrap();
    assert_eq!(take_return(&mut dp), P);
    dp.lock_request(obj, 2 * P, P, ReturnPolicy::Dirty, false, VmProt::NONE).unwrap();
    assert_eq!(take_return(&mut dp), 2 * P);
    h.k.set_resident_limit(2);
    // Untouched anonymous pages, read: clean zero fills pageout drops.
    let filler = t.vm_allocate(VmAddr(0), 8 * P, true).unwrap();
    for i in 0..8 {
        assert_eq!(t.read_u64(VmAddr(filler.0 + i * P)), Ok(0));
    }
    quiet(&mut dp);
    for i in [1, 2] {
        let rx = read_at(&t, VmAddr(a.0 + i * P));
        let (o, off, len, _) = dp.expect_request(T).unwrap();
        assert_eq!((o, off, len), (obj, i * P, P), "the default pager is asked for page {i}");
        dp.supply(obj, off, &held[&off]).unwrap();
        assert_eq!(done(&rx), Ok(100 + i));
    }
}

// ----- staged supplies (memory_object_data_supply_staged) -----

/// A kernel whose host keeps staging areas: in-process a software MMU
/// the test hands the areas' bytes to; over the socket the daemon's real
/// memory (each pager's own memfd). `None` where the host cannot (the
/// daemon on the software MMU): the rule is skipped, with a message.
fn staged_kernel(via: Transport) -> Option<(Host, Option<Arc<SoftMachine>>)> {
    let config = KernelConfig { phys_pages: 1024, resident_limit: 1024, cluster_pages: 1, ..Default::default() };
    match via {
        Transport::Local => {
            let soft = Arc::new(SoftMachine::new(config.phys_pages));
            Some((Host::on_machine(config, soft.clone()), Some(soft)))
        }
        Transport::Socket => match machvm_daemon::memory::unavailable() {
            None => Some((kernel_with(via, config), None)),
            Some(why) => {
                eprintln!("skipped over the socket: staging areas need real memory ({why})");
                None
            }
        },
    }
}

/// Gives `pager` a staging area of `STAGING_SIZE` bytes starting with
/// `bytes` (zeroes after).
fn stage(soft: &Option<Arc<SoftMachine>>, pager: &mut PagerConn, bytes: &[u8]) {
    let mut area = vec![0u8; STAGING_SIZE as usize];
    area[..bytes.len()].copy_from_slice(bytes);
    match soft {
        Some(m) => m.set_staging(u64::from(pager.link.id().number()), Some(area)),
        None => {
            assert!(pager.attach_staging().unwrap(), "the daemon gives a staging area");
            pager.staging_mut().unwrap().copy_from_slice(&area);
        }
    }
}

/// A staged supply sent with a reply port: the call's result and the
/// `supply_completed` it got.
fn staged_supply(pager: &PagerConn, control: PortName, offset: u64, length: u64, at: u64) -> (Result<()>, KernelReply) {
    let reply = pager.link.port_allocate().unwrap();
    let (sid, data) =
        PagerToKernel::DataSupplyStaged { offset, length, staging_offset: at, lock: VmProt::NONE, precious: false }
            .encode();
    let mut msg = UserMessage::new(control, sid, data);
    msg.reply = Some((reply, Disposition::MakeSendOnce));
    let sent = pager.link.msg_send(msg);
    let m = pager.link.msg_receive(reply, Some(T)).unwrap();
    (sent, KernelReply::decode(m.id, &m.data).unwrap())
}

fn a_staged_supply_answers_the_fault_from_the_senders_staging_area(via: Transport) {
    let Some((h, soft)) = staged_kernel(via) else { return };
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 4);
    ready(&mut pager);
    stage(&soft, &mut pager, &[page(0), page(10), page(20), page(30)].concat());
    let rx = read_at(&client, VmAddr(a.0 + 2 * P + 8));
    expect_request(&mut pager, 2 * P, P);
    // Two pages from staging page 2: the one asked for and the next.
    pager.supply_staged(obj, 2 * P, 2 * P, 2 * P).unwrap();
    assert_eq!(done(&rx), Ok(21));
    assert_eq!(client.read_u64(VmAddr(a.0 + 3 * P + 16)), Ok(32));
    assert_eq!(h.k.stats().received("data_supply_staged"), 1);
    assert_eq!(h.k.stats().sent("data_request"), 1);
    // The area is the pager's to reuse: what the kernel took stays.
    stage(&soft, &mut pager, &[page(90), page(90), page(90), page(90)].concat());
    assert_eq!(client.read_u64(VmAddr(a.0 + 2 * P + 8)), Ok(21));
}

fn a_staged_supply_never_overwrites_a_resident_page(via: Transport) {
    let Some((h, soft)) = staged_kernel(via) else { return };
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 2);
    ready(&mut pager);
    stage(&soft, &mut pager, &[page(10), page(99)].concat());
    pager.supply_staged(obj, P, P, 0).unwrap();
    client.write_u64(VmAddr(a.0 + P), 11).unwrap();
    pager.supply_staged(obj, P, P, P).unwrap();
    assert_eq!(client.read_u64(VmAddr(a.0 + P)), Ok(11));
    assert_eq!(client.read_u64(VmAddr(a.0 + P + 8)), Ok(11));
    quiet(&mut pager);
}

fn a_staged_supply_outside_the_senders_staging_area_is_refused_and_changes_nothing(via: Transport) {
    let Some((h, soft)) = staged_kernel(via) else { return };
    let (client, mut pager, obj, name) = setup(&h);
    let a = map(&client, name, 2);
    let control = raw_control(&pager, obj);
    raw(
        &pager,
        control,
        id::READY,
        PagerToKernel::Ready { may_cache: true, copy_strategy: CopyStrategy::Delay }.encode().1,
    )
    .unwrap();
    let rx = read_at(&client, a);
    let m = pager.link.msg_receive(obj, Some(T)).unwrap();
    assert_eq!(
        KernelToPager::decode(m.id, &m.data),
        Ok(KernelToPager::DataRequest { offset: 0, length: P, access: VmProt::READ })
    );
    fn refused(pager: &PagerConn, control: PortName, offset: u64, length: u64, at: u64) {
        let (sent, reply) = staged_supply(pager, control, offset, length, at);
        assert_eq!(sent, Err(KernError::InvalidArgument), "supply of {length:#x} at {offset:#x} from {at:#x}");
        let result = Some(KernError::InvalidArgument);
        assert_eq!(reply, KernelReply::SupplyCompleted { offset, length, result, error_offset: offset });
    }
    // The pager has no staging area yet (another task's is not its own).
    let mut other = h.pager();
    stage(&soft, &mut other, &page(5));
    refused(&pager, control, 0, P, 0);
    stage(&soft, &mut pager, &page(7));
    // Past the area's end, straddling it, misaligned, wrapping, empty.
    refused(&pager, control, 0, P, STAGING_SIZE);
    refused(&pager, control, 0, 2 * P, STAGING_SIZE - P);
    refused(&pager, control, 0, P, 8);
    refused(&pager, control, 0, P, u64::MAX - P + 1);
    refused(&pager, control, 0, 0, 0);
    // None of that changed anything: the fault still waits, and a good
    // supply answers it.
    still_waiting(&rx);
    assert_eq!(h.k.stats().resident, 0);
    let (sent, reply) = staged_supply(&pager, control, 0, P, 0);
    assert_eq!(sent, Ok(()));
    assert_eq!(reply, KernelReply::SupplyCompleted { offset: 0, length: P, result: None, error_offset: 0 });
    assert_eq!(done(&rx), Ok(7));
}

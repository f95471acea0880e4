//! Calls that wait without a thread (`machvm_core::kernel::resume`): an op
//! stopped on its pager goes on from where it stopped when woken, gives
//! the blocking call's answer, and leaves nothing registered or held when
//! it ends or is dropped half way.

#[macro_use]
mod common;

use common::*;
use machvm_core::ipc::UserMessage;
use machvm_core::memory_object::emmi::{KernelToPager, PagerToKernel};
use machvm_core::vm::object::CopyStrategy;
use machvm_core::wait::{Poll, Waker};
use machvm_core::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts its wake-ups.
#[derive(Default)]
struct Count(AtomicU32);

impl Waker for Count {
    fn wake(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counter() -> (Arc<Count>, Arc<dyn Waker>) {
    let c = Arc::new(Count::default());
    let w: Arc<dyn Waker> = c.clone();
    (c, w)
}

/// Maps two pages of the object and answers the pager's `init` with
/// `ready` (copy strategy `copy`), so that the next fault asks for data at
/// once.
fn map_two_pages_ready(s: &mut Scripted, copy: CopyStrategy) -> VmAddr {
    let at = s.k.vm_map(s.client.id(), MapRequest::anywhere(2 * P, Some(s.name))).unwrap();
    let init = s.pager.recv(Some(WAIT)).unwrap();
    assert_eq!(init.msg, KernelToPager::Init { page_size: P });
    s.pager.call(init.object, PagerToKernel::Ready { may_cache: true, copy_strategy: copy }).unwrap();
    at
}

fn map_two_pages(s: &mut Scripted) -> VmAddr {
    map_two_pages_ready(s, CopyStrategy::Delay)
}

#[test]
fn a_load_stopped_on_its_pager_goes_on_from_that_page() {
    let mut s = Scripted::new(ProxyVersion::Paging, Transport::Local);
    let at = map_two_pages(&mut s);
    let (count, w) = counter();
    // From the middle of page 0 into page 1.
    let mut op = s.k.load_op(s.client.id(), VmAddr(at.0 + P - 8), 16).unwrap();
    assert!(matches!(op.poll(&w), Ok(Poll::Pending(_))));
    s.expect(0);
    assert_eq!(count.0.load(Ordering::SeqCst), 0, "not woken before the pager answers");
    let mut page = vec![0u8; P as usize];
    page[P as usize - 8..].copy_from_slice(&7u64.to_le_bytes());
    s.pager.supply(s.obj, 0, &page).unwrap();
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
    assert!(matches!(op.poll(&w), Ok(Poll::Pending(_))), "page 1 is still missing");
    s.expect(P);
    s.supply(P, 9);
    assert_eq!(count.0.load(Ordering::SeqCst), 2);
    assert_eq!(op.poll(&w), Ok(Poll::Ready(())));
    let data = op.take_data();
    assert_eq!(&data[..8], &7u64.to_le_bytes());
    assert_eq!(&data[8..], &9u64.to_le_bytes());
    assert_eq!(s.k.stats().sent("data_request"), 2, "page 0 was not asked for again");
    assert_eq!(s.k.stats().waiters, 0);
}

#[test]
fn a_vm_write_waits_for_every_page_before_it_stores_any() {
    let mut s = Scripted::new(ProxyVersion::Paging, Transport::Local);
    let at = map_two_pages(&mut s);
    let (_, w) = counter();
    let data = vec![0xabu8; 2 * P as usize];
    let mut op = s.k.vm_write_op(s.client.id(), at, data).unwrap();
    assert!(matches!(op.poll(&w), Ok(Poll::Pending(_))));
    s.expect(0);
    s.supply(0, 1);
    assert!(matches!(op.poll(&w), Ok(Poll::Pending(_))));
    // Page 0 is resident and still holds what the pager gave: nothing is
    // stored before the whole range is in.
    assert_eq!(s.k.read_u64(s.client.id(), at), Ok(1));
    s.expect(P);
    s.pager.error(s.obj, P, P).unwrap();
    assert_eq!(op.poll(&w), Err(KernError::MemoryError));
    assert_eq!(s.k.read_u64(s.client.id(), at), Ok(1), "a failed vm_write stores nothing");
    assert_eq!(s.k.stats().waiters, 0);
}

#[test]
fn dropping_a_waiting_op_leaves_no_registration() {
    let mut s = Scripted::new(ProxyVersion::Paging, Transport::Local);
    let at = map_two_pages(&mut s);
    let (count, w) = counter();
    let mut load = s.k.load_op(s.client.id(), at, 8).unwrap();
    assert!(matches!(load.poll(&w), Ok(Poll::Pending(_))));
    let port = s.k.port_allocate(s.client.id()).unwrap();
    let mut recv = s.k.msg_receive_op(s.client.id(), port, None);
    assert!(matches!(recv.poll(&w), Ok(Poll::Pending(_))));
    assert_eq!(s.k.stats().waiters, 2);
    drop(load);
    drop(recv);
    assert_eq!(s.k.stats().waiters, 0);
    // Nothing is woken for the dropped ops.
    s.k.port_make_send(s.client.id(), port).unwrap();
    s.k.msg_send(s.client.id(), UserMessage::new(port, 1, vec![])).unwrap();
    assert_eq!(count.0.load(Ordering::SeqCst), 0);
}

#[test]
fn a_receive_op_past_its_deadline_times_out_and_one_with_a_message_gets_it() {
    let s = Scripted::new(ProxyVersion::Paging, Transport::Local);
    let port = s.k.port_allocate(s.client.id()).unwrap();
    let (count, w) = counter();
    let mut recv = s.k.msg_receive_op(s.client.id(), port, Some(Instant::now() + Duration::from_millis(20)));
    assert!(matches!(recv.poll(&w), Ok(Poll::Pending(_))));
    std::thread::sleep(Duration::from_millis(25));
    assert_eq!(recv.poll(&w), Err(KernError::RcvTimedOut));
    assert_eq!(s.k.stats().waiters, 0, "the timed-out registration is gone");

    let mut recv = s.k.msg_receive_op(s.client.id(), port, None);
    assert!(matches!(recv.poll(&w), Ok(Poll::Pending(_))));
    s.k.port_make_send(s.client.id(), port).unwrap();
    s.k.msg_send(s.client.id(), UserMessage::new(port, 42, vec![1, 2, 3])).unwrap();
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
    let Ok(Poll::Ready(m)) = recv.poll(&w) else { panic!("the message is there") };
    assert_eq!((m.id, m.data), (42, vec![1, 2, 3]));
}

#[test]
fn a_send_op_to_a_full_queue_waits_for_room_until_its_deadline() {
    let s = Scripted::new(ProxyVersion::Paging, Transport::Local);
    let port = s.k.port_allocate(s.client.id()).unwrap();
    s.k.port_make_send(s.client.id(), port).unwrap();
    while s.k.msg_send(s.client.id(), UserMessage::new(port, 1, vec![])).is_ok() {}
    let (count, w) = counter();
    let deadline = Some(Instant::now() + Duration::from_secs(5));
    let mut send = s.k.msg_send_op(s.client.id(), UserMessage::new(port, 2, vec![]), deadline);
    assert!(matches!(send.poll(&w), Ok(Poll::Pending(_))));
    s.k.msg_receive(s.client.id(), port, Some(Duration::ZERO)).unwrap();
    assert_eq!(count.0.load(Ordering::SeqCst), 1, "room wakes the sender");
    assert_eq!(send.poll(&w), Ok(Poll::Ready(())));

    let mut late = s.k.msg_send_op(s.client.id(), UserMessage::new(port, 3, vec![]), Some(Instant::now()));
    assert_eq!(late.poll(&w), Err(KernError::SendTimedOut));
    assert_eq!(s.k.stats().waiters, 0);
}

#[test]
fn a_task_create_op_dropped_while_an_eager_copy_waits_releases_the_copy() {
    let mut s = Scripted::new(ProxyVersion::Paging, Transport::Local);
    let at = map_two_pages_ready(&mut s, CopyStrategy::None);
    s.k.vm_inherit(s.client.id(), at, 2 * P, VmInherit::Copy).unwrap();
    let objects = s.k.stats().objects;
    let (_, w) = counter();
    let mut op = s.k.task_create_op(Some(s.client.id()));
    assert!(matches!(op.poll(&w), Ok(Poll::Pending(_))));
    s.expect(0);
    assert!(s.k.stats().objects > objects, "the copy is being made");
    drop(op);
    assert_eq!(s.k.stats().objects, objects, "the half-made copy is gone");
    assert_eq!(s.k.stats().waiters, 0);
}

/// Room for one message wakes one sender, the one that waited longest, not
/// every sender waiting on the full queue; a woken sender that goes away
/// without sending hands the room to the next.
#[test]
fn room_in_a_full_queue_wakes_one_sender_and_is_handed_on_if_unused() {
    let s = Scripted::new(ProxyVersion::Paging, Transport::Local);
    let t = s.client.id();
    let port = s.k.port_allocate(t).unwrap();
    s.k.port_make_send(t, port).unwrap();
    while s.k.msg_send(t, UserMessage::new(port, 1, vec![])).is_ok() {}
    let waiting: Vec<_> = (0..50u32)
        .map(|i| {
            let (count, w) = counter();
            let mut op = s.k.msg_send_op(t, UserMessage::new(port, 100 + i, vec![]), None);
            assert!(matches!(op.poll(&w), Ok(Poll::Pending(_))));
            (count, w, op)
        })
        .collect();
    let woken = |w: &[(Arc<Count>, Arc<dyn Waker>, machvm_core::kernel::resume::SendOp)]| -> Vec<usize> {
        (0..w.len()).filter(|&i| w[i].0 .0.load(Ordering::SeqCst) > 0).collect()
    };
    s.k.msg_receive(t, port, Some(Duration::ZERO)).unwrap();
    assert_eq!(woken(&waiting), vec![0], "one sender, the first, is woken");
    // The first goes away without sending (dropped by `skip`): the room
    // goes to the second.
    let mut rest: Vec<_> = waiting.into_iter().skip(1).collect();
    assert_eq!(woken(&rest), vec![0], "the unused room is handed on");
    let (_, w, op) = &mut rest[0];
    assert_eq!(op.poll(w), Ok(Poll::Ready(())));
    assert_eq!(woken(&rest), vec![0], "the room was used: no one else is woken");
    drop(rest);
    assert_eq!(s.k.stats().waiters, 0);
}

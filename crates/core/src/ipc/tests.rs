//! Unit tests for ports, rights, name spaces, port sets, messages and
//! notifications.

use super::*;
use crate::types::KernError;
use Disposition::*;

// ----- helpers -----

/// Two spaces: `b` holds the receive right `inbox`, `a` a send right
/// `to_b` to it, so `a` can pass rights to `b`.
struct World {
    ipc: Ipc,
    a: SpaceId,
    b: SpaceId,
    inbox: PortName,
    to_b: PortName,
}

fn world() -> World {
    let mut ipc = Ipc::new();
    let a = ipc.space_create();
    let b = ipc.space_create();
    let inbox = ipc.port_allocate(b).unwrap();
    let to_b = grant_send(&mut ipc, b, inbox, a);
    ipc.drain_events();
    World { ipc, a, b, inbox, to_b }
}

/// Gives `to` a send right to the port `owner` names `name`, the way the
/// kernel hands out rights (make a send right, copy it out).
fn grant_send(ipc: &mut Ipc, owner: SpaceId, name: PortName, to: SpaceId) -> PortName {
    let port = ipc.port_of(owner, name).unwrap();
    ipc.kernel_make_send(port);
    ipc.copyout(to, port, RightKind::Send).unwrap()
}

/// Gives `to` a send-once right to the port `owner` names `name`.
fn grant_send_once(ipc: &mut Ipc, owner: SpaceId, name: PortName, to: SpaceId) -> PortName {
    let (port, kind) = ipc.copyin(owner, name, MakeSendOnce).unwrap();
    assert_eq!(kind, RightKind::SendOnce);
    ipc.copyout(to, port, kind).unwrap()
}

/// A message to `dest` (copy-send) carrying `rights`.
fn carrying(dest: PortName, rights: &[(PortName, Disposition)]) -> UserMessage {
    UserMessage { rights: rights.to_vec(), ..UserMessage::new(dest, 7, Vec::new()) }
}

/// Receives the next message, which must be there.
fn recv(ipc: &mut Ipc, space: SpaceId, name: PortName) -> ReceivedMessage {
    ipc.try_receive(space, name).unwrap().expect("a message is queued")
}

/// The whole IPC state, to prove an operation changed nothing.
fn state(ipc: &Ipc) -> String {
    format!("{ipc:?}")
}

impl World {
    /// `a` sends `rights` to `b`'s inbox and `b` receives them.
    fn pass(&mut self, rights: &[(PortName, Disposition)]) -> Vec<(PortName, RightKind)> {
        let queued = self.ipc.send(self.a, carrying(self.to_b, rights)).unwrap();
        assert!(queued.is_none(), "a space port is not a kernel object");
        recv(&mut self.ipc, self.b, self.inbox).rights
    }

    /// Passes one right and returns `b`'s name for it.
    fn pass_one(&mut self, name: PortName, disp: Disposition) -> (PortName, RightKind) {
        let rights = self.pass(&[(name, disp)]);
        assert_eq!(rights.len(), 1);
        rights[0]
    }

    fn info(&self, space: SpaceId, name: PortName) -> NameInfo {
        self.ipc.lookup(space, name).unwrap()
    }

    fn port(&self, space: SpaceId, name: PortName) -> PortId {
        self.ipc.port_of(space, name).unwrap()
    }

    /// A send attempt that must fail with `err` and change nothing.
    fn send_fails(&mut self, space: SpaceId, msg: UserMessage, err: KernError) {
        self.ipc.drain_events();
        let before = state(&self.ipc);
        assert_eq!(self.ipc.send(space, msg), Err(err));
        assert_eq!(state(&self.ipc), before, "a failed send must change nothing");
    }

    /// `b` asks for a dead-name notification on `name`, delivered to a new
    /// port of its own, which it returns.
    fn b_watches_death(&mut self, name: PortName) -> PortName {
        let notify = self.ipc.port_allocate(self.b).unwrap();
        self.ipc.request_notification(self.b, name, NotifyKind::DeadName, notify).unwrap();
        notify
    }

    /// `a` allocates a port and asks for its no-senders notification on a
    /// second port; returns (port, notify).
    fn a_port_with_no_senders_request(&mut self) -> (PortName, PortName) {
        let port = self.ipc.port_allocate(self.a).unwrap();
        let notify = self.ipc.port_allocate(self.a).unwrap();
        // Give `b` a send right first so the request does not fire at once.
        self.pass_one(port, MakeSend);
        self.ipc.request_notification(self.a, port, NotifyKind::NoSenders, notify).unwrap();
        (port, notify)
    }
}

fn no_senders_mscount(msg: &ReceivedMessage) -> u32 {
    assert_eq!(msg.id, MACH_NOTIFY_NO_SENDERS);
    u32::from_le_bytes(msg.data[..4].try_into().unwrap())
}

fn dead_name_of(msg: &ReceivedMessage) -> PortName {
    assert_eq!(msg.id, MACH_NOTIFY_DEAD_NAME);
    PortName(u32::from_le_bytes(msg.data[..4].try_into().unwrap()))
}

// ----- port_allocate and lookup -----

#[test]
fn port_allocate_gives_a_receive_right_under_a_fresh_name() {
    let mut ipc = Ipc::new();
    let s = ipc.space_create();
    let n1 = ipc.port_allocate(s).unwrap();
    let n2 = ipc.port_allocate(s).unwrap();
    assert_ne!(n1, n2);
    assert_ne!(n1, PortName(0));
    let info = ipc.lookup(s, n1).unwrap();
    assert!(info.receive);
    assert_eq!((info.send_urefs, info.send_once, info.dead_urefs, info.port_set), (0, false, 0, false));
    let (p1, p2) = (ipc.port_of(s, n1).unwrap(), ipc.port_of(s, n2).unwrap());
    assert_ne!(p1, p2);
    assert!(ipc.port_alive(p1));
    assert_eq!(ipc.name_of(s, p1), Some(n1));
    assert_eq!(ipc.send_rights(p1), 0);
}

#[test]
fn port_allocate_in_an_unknown_space_is_invalid_task() {
    let mut ipc = Ipc::new();
    assert_eq!(ipc.port_allocate(SpaceId(42)), Err(KernError::InvalidTask));
}

#[test]
fn lookup_of_an_unknown_name_is_invalid_name() {
    let mut ipc = Ipc::new();
    let s = ipc.space_create();
    assert_eq!(ipc.lookup(s, PortName(0x1234)), Err(KernError::InvalidName));
    assert_eq!(ipc.port_of(s, PortName(0x1234)), Err(KernError::InvalidName));
}

#[test]
fn names_are_per_space() {
    let mut ipc = Ipc::new();
    let (s1, s2) = (ipc.space_create(), ipc.space_create());
    let n = ipc.port_allocate(s1).unwrap();
    let p = ipc.port_of(s1, n).unwrap();
    assert_eq!(ipc.name_of(s2, p), None);
    assert_eq!(ipc.lookup(s2, n), Err(KernError::InvalidName));
}

// ----- messages with data -----

#[test]
fn a_message_arrives_with_its_id_and_data() {
    let mut w = world();
    let msg = UserMessage::new(w.to_b, 0x1234, b"hello".to_vec());
    assert_eq!(w.ipc.send(w.a, msg), Ok(None));
    let port = w.port(w.b, w.inbox);
    assert_eq!(w.ipc.queue_len(port), 1);
    assert!(w.ipc.has_message(w.b, w.inbox));
    let got = recv(&mut w.ipc, w.b, w.inbox);
    assert_eq!((got.local, got.id, got.data.as_slice()), (w.inbox, 0x1234, &b"hello"[..]));
    assert!(got.rights.is_empty() && got.reply.is_none());
    assert_eq!(w.ipc.queue_len(port), 0);
    assert!(!w.ipc.has_message(w.b, w.inbox));
}

#[test]
fn messages_are_received_in_order() {
    let mut w = world();
    for i in 0..3u8 {
        w.ipc.send(w.a, UserMessage::new(w.to_b, u32::from(i), vec![i])).unwrap();
    }
    for i in 0..3u8 {
        assert_eq!(recv(&mut w.ipc, w.b, w.inbox).data, vec![i]);
    }
}

#[test]
fn receiving_from_an_empty_port_returns_none() {
    let mut w = world();
    assert_eq!(w.ipc.try_receive(w.b, w.inbox), Ok(None));
}

#[test]
fn sending_reports_a_queued_event() {
    let mut w = world();
    w.ipc.send(w.a, UserMessage::new(w.to_b, 1, vec![])).unwrap();
    assert_eq!(w.ipc.drain_events(), vec![IpcEvent::Queued(w.port(w.b, w.inbox))]);
    assert!(w.ipc.drain_events().is_empty());
}

#[test]
fn copy_send_destination_keeps_the_senders_right() {
    let mut w = world();
    let port = w.port(w.b, w.inbox);
    w.ipc.send(w.a, UserMessage::new(w.to_b, 1, vec![])).unwrap();
    assert_eq!(w.info(w.a, w.to_b).send_urefs, 1);
    assert_eq!(w.ipc.send_rights(port), 1);
}

#[test]
fn move_send_destination_consumes_the_senders_right() {
    let mut w = world();
    let port = w.port(w.b, w.inbox);
    let msg = UserMessage { dest_disposition: MoveSend, ..UserMessage::new(w.to_b, 1, vec![]) };
    w.ipc.send(w.a, msg).unwrap();
    assert_eq!(w.ipc.lookup(w.a, w.to_b), Err(KernError::InvalidName));
    assert_eq!(w.ipc.send_rights(port), 0);
    assert_eq!(recv(&mut w.ipc, w.b, w.inbox).id, 1);
}

#[test]
fn a_receiver_can_send_to_its_own_port_with_make_send() {
    let mut w = world();
    let msg = UserMessage { dest_disposition: MakeSend, ..UserMessage::new(w.inbox, 5, vec![9]) };
    w.ipc.send(w.b, msg).unwrap();
    assert_eq!(recv(&mut w.ipc, w.b, w.inbox).data, vec![9]);
    assert_eq!(w.ipc.send_rights(w.port(w.b, w.inbox)), 1, "only a's right remains");
}

// ----- carrying rights -----

#[test]
fn move_receive_gives_the_receive_right_to_the_receiver() {
    let mut w = world();
    let name = w.ipc.port_allocate(w.a).unwrap();
    let port = w.port(w.a, name);
    let (got, kind) = w.pass_one(name, MoveReceive);
    assert_eq!(kind, RightKind::Receive);
    assert_eq!(w.ipc.lookup(w.a, name), Err(KernError::InvalidName));
    assert_eq!(w.ipc.name_of(w.a, port), None);
    assert!(w.info(w.b, got).receive);
    assert_eq!(w.port(w.b, got), port);
    assert!(w.ipc.port_alive(port));
}

#[test]
fn messages_queued_while_a_receive_right_travels_follow_it() {
    let mut w = world();
    let name = w.ipc.port_allocate(w.a).unwrap();
    let send = grant_send(&mut w.ipc, w.a, name, w.a);
    w.ipc.send(w.a, carrying(w.to_b, &[(name, MoveReceive)])).unwrap();
    // The receive right is in transit; a can still send to the port.
    w.ipc.send(w.a, UserMessage::new(send, 77, vec![1, 2])).unwrap();
    let got = recv(&mut w.ipc, w.b, w.inbox).rights[0].0;
    let m = recv(&mut w.ipc, w.b, got);
    assert_eq!((m.local, m.id, m.data), (got, 77, vec![1, 2]));
}

#[test]
fn move_send_moves_one_user_reference() {
    let mut w = world();
    let target = w.ipc.port_allocate(w.b).unwrap();
    let port = w.port(w.b, target);
    let name = grant_send(&mut w.ipc, w.b, target, w.a);
    w.ipc.mod_refs(w.a, name, RightKind::Send, 1).unwrap();
    let (got, kind) = w.pass_one(name, MoveSend);
    assert_eq!(kind, RightKind::Send);
    assert_eq!(w.info(w.a, name).send_urefs, 1);
    // b holds the receive right: the moved send right merges into its name.
    assert_eq!(got, target);
    let info = w.info(w.b, got);
    assert!(info.receive);
    assert_eq!(info.send_urefs, 1);
    assert_eq!(w.ipc.send_rights(port), 1, "only a's right is outside the receiver");
}

#[test]
fn moving_the_last_user_reference_removes_the_name() {
    let mut w = world();
    let (c, name, port) = third_party_send(&mut w);
    let (got, _) = w.pass_one(name, MoveSend);
    assert_eq!(w.ipc.lookup(w.a, name), Err(KernError::InvalidName));
    assert_eq!(w.ipc.name_of(w.a, port), None);
    assert_eq!(w.info(w.b, got).send_urefs, 1);
    assert_eq!(w.port(w.b, got), port);
    assert!(w.ipc.lookup(c, w.ipc.name_of(c, port).unwrap()).unwrap().receive);
    assert_eq!(w.ipc.send_rights(port), 1);
}

/// A third space `c` with a port; `a` gets a send right to it.
/// Returns (c, a's name, port).
fn third_party_send(w: &mut World) -> (SpaceId, PortName, PortId) {
    let c = w.ipc.space_create();
    let target = w.ipc.port_allocate(c).unwrap();
    let name = grant_send(&mut w.ipc, c, target, w.a);
    let port = w.port(c, target);
    (c, name, port)
}

#[test]
fn copy_send_leaves_the_senders_right_in_place() {
    let mut w = world();
    let (_c, name, port) = third_party_send(&mut w);
    let (got, kind) = w.pass_one(name, CopySend);
    assert_eq!(kind, RightKind::Send);
    assert_eq!(w.info(w.a, name).send_urefs, 1);
    assert_eq!(w.info(w.b, got).send_urefs, 1);
    assert_eq!(w.port(w.b, got), port);
    assert_eq!(w.ipc.send_rights(port), 2, "one per space");
}

#[test]
fn make_send_creates_a_send_right_from_a_receive_right() {
    let mut w = world();
    let name = w.ipc.port_allocate(w.a).unwrap();
    let port = w.port(w.a, name);
    let (got, kind) = w.pass_one(name, MakeSend);
    assert_eq!(kind, RightKind::Send);
    let mine = w.info(w.a, name);
    assert!(mine.receive);
    assert_eq!(mine.send_urefs, 0);
    let theirs = w.info(w.b, got);
    assert_eq!((theirs.receive, theirs.send_urefs, theirs.port), (false, 1, Some(port)));
    assert_eq!(w.ipc.send_rights(port), 1);
}

#[test]
fn make_send_once_gives_a_distinct_name_per_right() {
    let mut w = world();
    let name = w.ipc.port_allocate(w.a).unwrap();
    let port = w.port(w.a, name);
    let rights = w.pass(&[(name, MakeSendOnce), (name, MakeSendOnce)]);
    assert_eq!(rights[0].1, RightKind::SendOnce);
    assert_eq!(rights[1].1, RightKind::SendOnce);
    assert_ne!(rights[0].0, rights[1].0);
    for (n, _) in rights {
        let info = w.info(w.b, n);
        assert!(info.send_once);
        assert_eq!((info.send_urefs, info.port), (0, Some(port)));
    }
    assert_eq!(w.ipc.send_rights(port), 0, "send-once rights are not send rights");
}

#[test]
fn move_send_once_consumes_the_name() {
    let mut w = world();
    let name = w.ipc.port_allocate(w.a).unwrap();
    let (once, _) = w.pass_one(name, MakeSendOnce);
    // b uses the send-once right as the destination of a reply.
    let reply = UserMessage { dest_disposition: MoveSendOnce, ..UserMessage::new(once, 3, vec![4]) };
    w.ipc.send(w.b, reply).unwrap();
    assert_eq!(w.ipc.lookup(w.b, once), Err(KernError::InvalidName));
    assert_eq!(recv(&mut w.ipc, w.a, name).data, vec![4]);
    // A send-once right is good for one message only.
    let again = UserMessage { dest_disposition: MoveSendOnce, ..UserMessage::new(once, 3, vec![]) };
    assert_eq!(w.ipc.send(w.b, again), Err(KernError::SendInvalidDest));
}

#[test]
fn move_send_once_in_a_body_moves_the_right() {
    let mut w = world();
    let c = w.ipc.space_create();
    let cport = w.ipc.port_allocate(c).unwrap();
    let port = w.port(c, cport);
    let once = grant_send_once(&mut w.ipc, c, cport, w.a);
    let (got, kind) = w.pass_one(once, MoveSendOnce);
    assert_eq!(kind, RightKind::SendOnce);
    assert_eq!(w.ipc.lookup(w.a, once), Err(KernError::InvalidName));
    assert!(w.info(w.b, got).send_once);
    assert_eq!(w.port(w.b, got), port);
}

#[test]
fn a_reply_right_is_renamed_into_the_receivers_space() {
    let mut w = world();
    let reply_port = w.ipc.port_allocate(w.a).unwrap();
    let msg = UserMessage { reply: Some((reply_port, MakeSendOnce)), ..UserMessage::new(w.to_b, 1, vec![]) };
    w.ipc.send(w.a, msg).unwrap();
    let reply = recv(&mut w.ipc, w.b, w.inbox).reply.expect("a reply right");
    assert!(w.info(w.b, reply).send_once);
    assert_eq!(w.port(w.b, reply), w.port(w.a, reply_port));
    let answer = UserMessage { dest_disposition: MoveSendOnce, ..UserMessage::new(reply, 2, b"ok".to_vec()) };
    w.ipc.send(w.b, answer).unwrap();
    let got = recv(&mut w.ipc, w.a, reply_port);
    assert_eq!((got.local, got.id, got.data), (reply_port, 2, b"ok".to_vec()));
}

// ----- merging send rights -----

#[test]
fn send_rights_to_one_port_merge_under_one_name() {
    let mut w = world();
    let (_c, name, port) = third_party_send(&mut w);
    let first = w.pass_one(name, CopySend).0;
    let second = w.pass_one(name, CopySend).0;
    assert_eq!(first, second);
    assert_eq!(w.info(w.b, first).send_urefs, 2);
    assert_eq!(w.ipc.send_rights(port), 2, "a space counts once, whatever its urefs");
}

#[test]
fn rights_merged_within_one_message_share_a_name() {
    let mut w = world();
    let (_c, name, port) = third_party_send(&mut w);
    let rights = w.pass(&[(name, CopySend), (name, CopySend), (name, CopySend)]);
    assert!(rights.iter().all(|&r| r == rights[0]));
    assert_eq!(w.info(w.b, rights[0].0).send_urefs, 3);
    assert_eq!(w.ipc.send_rights(port), 2);
}

#[test]
fn a_send_right_to_a_ports_receiver_merges_with_the_receive_right() {
    let mut w = world();
    let port = w.port(w.b, w.inbox);
    let (got, _) = w.pass_one(w.to_b, CopySend);
    assert_eq!(got, w.inbox);
    let info = w.info(w.b, w.inbox);
    assert!(info.receive);
    assert_eq!(info.send_urefs, 1);
    assert_eq!(w.ipc.send_rights(port), 1, "the receiver's own send right is not counted");
}

#[test]
fn copyout_pegs_urefs_at_the_maximum() {
    let mut w = world();
    let (_c, name, port) = third_party_send(&mut w);
    w.ipc.mod_refs(w.a, name, RightKind::Send, (UREFS_MAX - 1) as i32).unwrap();
    assert_eq!(w.info(w.a, name).send_urefs, UREFS_MAX);
    w.ipc.kernel_make_send(port);
    assert_eq!(w.ipc.copyout(w.a, port, RightKind::Send), Ok(name));
    assert_eq!(w.info(w.a, name).send_urefs, UREFS_MAX);
    assert_eq!(w.ipc.send_rights(port), 1);
}

// ----- send errors, and a failed send changes nothing -----

#[test]
fn sending_to_an_unknown_name_is_invalid_dest() {
    let mut w = world();
    let a = w.a;
    w.send_fails(a, UserMessage::new(PortName(0xdead), 1, vec![]), KernError::SendInvalidDest);
}

#[test]
fn sending_to_a_port_set_is_invalid_dest() {
    let mut w = world();
    let set = w.ipc.pset_allocate(w.a).unwrap();
    let a = w.a;
    w.send_fails(a, UserMessage::new(set, 1, vec![]), KernError::SendInvalidDest);
}

#[test]
fn copy_send_without_a_send_right_is_invalid_dest() {
    let mut w = world();
    let (b, inbox) = (w.b, w.inbox);
    w.send_fails(b, UserMessage::new(inbox, 1, vec![]), KernError::SendInvalidDest);
}

#[test]
fn move_receive_as_destination_is_invalid_dest() {
    let mut w = world();
    let (b, inbox) = (w.b, w.inbox);
    let msg = UserMessage { dest_disposition: MoveReceive, ..UserMessage::new(inbox, 1, vec![]) };
    w.send_fails(b, msg, KernError::SendInvalidDest);
}

#[test]
fn sending_to_a_dead_name_is_invalid_dest() {
    let mut w = world();
    w.ipc.mod_refs(w.b, w.inbox, RightKind::Receive, -1).unwrap();
    assert_eq!(w.info(w.a, w.to_b).dead_urefs, 1);
    let (a, to_b) = (w.a, w.to_b);
    w.send_fails(a, UserMessage::new(to_b, 1, vec![]), KernError::SendInvalidDest);
}

#[test]
fn sending_on_a_send_once_right_to_a_dead_port_is_invalid_dest_and_moves_nothing() {
    let mut w = world();
    let mine = w.ipc.port_allocate(w.a).unwrap();
    let carried = w.ipc.port_allocate(w.b).unwrap();
    let (once, _) = w.pass_one(mine, MakeSendOnce);
    w.ipc.mod_refs(w.a, mine, RightKind::Receive, -1).unwrap();
    let msg = UserMessage {
        dest_disposition: MoveSendOnce,
        rights: vec![(carried, MoveReceive)],
        ..UserMessage::new(once, 1, vec![])
    };
    let b = w.b;
    w.send_fails(b, msg, KernError::SendInvalidDest);
    assert!(w.info(w.b, carried).receive);
}

#[test]
fn an_invalid_body_right_is_invalid_right_and_moves_nothing() {
    let mut w = world();
    let good = w.ipc.port_allocate(w.a).unwrap();
    let msg = carrying(w.to_b, &[(good, MoveReceive), (PortName(0xbad), CopySend)]);
    let a = w.a;
    w.send_fails(a, msg, KernError::SendInvalidRight);
    assert!(w.info(w.a, good).receive);
}

#[test]
fn a_body_right_the_space_does_not_hold_is_invalid_right() {
    let mut w = world();
    let recv_only = w.ipc.port_allocate(w.a).unwrap();
    let a = w.a;
    for disp in [MoveSend, CopySend, MoveSendOnce] {
        let msg = carrying(w.to_b, &[(recv_only, disp)]);
        w.send_fails(a, msg, KernError::SendInvalidRight);
    }
    let to_b = w.to_b;
    for disp in [MoveReceive, MakeSend, MakeSendOnce] {
        w.send_fails(a, carrying(to_b, &[(to_b, disp)]), KernError::SendInvalidRight);
    }
}

#[test]
fn an_invalid_reply_right_is_invalid_reply_and_moves_nothing() {
    let mut w = world();
    let good = w.ipc.port_allocate(w.a).unwrap();
    let a = w.a;
    for reply in [(PortName(0xbad), MakeSendOnce), (w.to_b, MakeSend), (good, MoveReceive)] {
        let msg =
            UserMessage { reply: Some(reply), rights: vec![(good, MakeSend)], ..UserMessage::new(w.to_b, 1, vec![]) };
        w.send_fails(a, msg, KernError::SendInvalidReply);
    }
}

#[test]
fn moving_one_receive_right_twice_is_invalid_right() {
    let mut w = world();
    let name = w.ipc.port_allocate(w.a).unwrap();
    let msg = carrying(w.to_b, &[(name, MoveReceive), (name, MoveReceive)]);
    let a = w.a;
    w.send_fails(a, msg, KernError::SendInvalidRight);
}

#[test]
fn moving_the_destinations_receive_right_into_its_own_queue_is_invalid_right() {
    let mut w = world();
    let name = w.ipc.port_allocate(w.a).unwrap();
    let msg = UserMessage {
        dest_disposition: MakeSend,
        rights: vec![(name, MoveReceive)],
        ..UserMessage::new(name, 1, vec![])
    };
    let a = w.a;
    w.send_fails(a, msg, KernError::SendInvalidRight);
}

#[test]
fn moving_a_receive_right_into_its_own_queue_through_a_send_once_name_is_invalid_right() {
    let mut w = world();
    let name = w.ipc.port_allocate(w.a).unwrap();
    let (once, _) = w.pass_one(name, MakeSendOnce);
    // b now holds both a send-once right and (after this) the receive right.
    let port = w.port(w.a, name);
    let (recv_name, _) = w.pass_one(name, MoveReceive);
    assert_eq!(w.port(w.b, recv_name), port);
    let msg = UserMessage {
        dest_disposition: MoveSendOnce,
        rights: vec![(recv_name, MoveReceive)],
        ..UserMessage::new(once, 1, vec![])
    };
    let b = w.b;
    w.send_fails(b, msg, KernError::SendInvalidRight);
}

#[test]
fn using_a_right_after_moving_it_away_in_the_same_message_is_invalid_and_moves_nothing() {
    let mut w = world();
    let name = w.ipc.port_allocate(w.a).unwrap();
    let a = w.a;
    let msg = carrying(w.to_b, &[(name, MoveReceive), (name, MakeSend)]);
    w.send_fails(a, msg, KernError::SendInvalidRight);
    let msg = carrying(w.to_b, &[(name, MoveReceive), (name, MakeSendOnce)]);
    w.send_fails(a, msg, KernError::SendInvalidRight);
    assert!(w.info(w.a, name).receive);
}

#[test]
fn copying_a_send_right_after_moving_its_last_uref_is_invalid_and_moves_nothing() {
    let mut w = world();
    let (_c, name, _port) = third_party_send(&mut w);
    let a = w.a;
    let msg = carrying(w.to_b, &[(name, MoveSend), (name, CopySend)]);
    w.send_fails(a, msg, KernError::SendInvalidRight);
    // The destination itself moved away before the body is copied in.
    let msg = UserMessage {
        dest_disposition: MoveSend,
        rights: vec![(w.to_b, CopySend)],
        ..UserMessage::new(w.to_b, 1, vec![])
    };
    w.send_fails(a, msg, KernError::SendInvalidRight);
    assert_eq!(w.info(w.a, w.to_b).send_urefs, 1);
}

#[test]
fn moving_more_send_urefs_than_held_is_invalid_right() {
    let mut w = world();
    let (_c, name, _port) = third_party_send(&mut w);
    let a = w.a;
    let msg = carrying(w.to_b, &[(name, MoveSend), (name, MoveSend)]);
    w.send_fails(a, msg, KernError::SendInvalidRight);
    w.ipc.mod_refs(w.a, name, RightKind::Send, 1).unwrap();
    let rights = w.pass(&[(name, MoveSend), (name, MoveSend)]);
    assert_eq!(w.info(w.b, rights[0].0).send_urefs, 2);
    assert_eq!(w.ipc.lookup(w.a, name), Err(KernError::InvalidName));
}

#[test]
fn moving_one_send_once_right_twice_is_invalid_right() {
    let mut w = world();
    let mine = w.ipc.port_allocate(w.b).unwrap();
    let once = grant_send_once(&mut w.ipc, w.b, mine, w.a);
    let a = w.a;
    let msg = carrying(w.to_b, &[(once, MoveSendOnce), (once, MoveSendOnce)]);
    w.send_fails(a, msg, KernError::SendInvalidRight);
    let msg = UserMessage { reply: Some((once, MoveSendOnce)), ..carrying(w.to_b, &[(once, MoveSendOnce)]) };
    w.send_fails(a, msg, KernError::SendInvalidRight);
}

#[test]
fn sending_from_an_unknown_space_fails_without_panicking() {
    let mut w = world();
    let to_b = w.to_b;
    w.send_fails(SpaceId(99), UserMessage::new(to_b, 1, vec![]), KernError::SendInvalidDest);
}

// ----- receive errors -----

#[test]
fn receiving_on_an_unknown_name_is_rcv_invalid_name() {
    let mut w = world();
    assert_eq!(w.ipc.try_receive(w.b, PortName(0x777)), Err(KernError::RcvInvalidName));
    assert!(!w.ipc.has_message(w.b, PortName(0x777)));
}

#[test]
fn receiving_on_a_send_right_is_rcv_invalid_name() {
    let mut w = world();
    w.ipc.send(w.a, UserMessage::new(w.to_b, 1, vec![])).unwrap();
    assert_eq!(w.ipc.try_receive(w.a, w.to_b), Err(KernError::RcvInvalidName));
    assert_eq!(w.ipc.queue_len(w.port(w.b, w.inbox)), 1, "the message stays queued");
}

#[test]
fn receiving_on_a_dead_name_is_rcv_invalid_name() {
    let mut w = world();
    w.ipc.mod_refs(w.b, w.inbox, RightKind::Receive, -1).unwrap();
    assert_eq!(w.ipc.try_receive(w.a, w.to_b), Err(KernError::RcvInvalidName));
}

#[test]
fn receiving_after_the_receive_right_moved_away_is_rcv_invalid_name() {
    let mut w = world();
    let name = w.ipc.port_allocate(w.a).unwrap();
    w.pass_one(name, MoveReceive);
    assert_eq!(w.ipc.try_receive(w.a, name), Err(KernError::RcvInvalidName));
}

// ----- port sets -----

/// `b` puts its inbox and a second port into a new set.
fn b_set(w: &mut World) -> (PortName, PortName) {
    let set = w.ipc.pset_allocate(w.b).unwrap();
    let other = w.ipc.port_allocate(w.b).unwrap();
    w.ipc.move_member(w.b, w.inbox, Some(set)).unwrap();
    w.ipc.move_member(w.b, other, Some(set)).unwrap();
    (set, other)
}

#[test]
fn a_port_set_is_a_name_of_its_own() {
    let mut w = world();
    let set = w.ipc.pset_allocate(w.b).unwrap();
    let info = w.info(w.b, set);
    assert!(info.port_set);
    assert_eq!((info.port, info.receive), (None, false));
    assert_eq!(w.ipc.port_of(w.b, set), Err(KernError::InvalidRight));
}

#[test]
fn receiving_from_a_set_gets_a_members_message_and_names_the_member() {
    let mut w = world();
    let (set, _other) = b_set(&mut w);
    assert_eq!(w.ipc.try_receive(w.b, set), Ok(None));
    w.ipc.send(w.a, UserMessage::new(w.to_b, 5, vec![1])).unwrap();
    assert!(w.ipc.has_message(w.b, set));
    let got = recv(&mut w.ipc, w.b, set);
    assert_eq!((got.local, got.id, got.data), (w.inbox, 5, vec![1]));
    assert!(!w.ipc.has_message(w.b, set));
}

#[test]
fn a_set_serves_every_member_with_messages() {
    let mut w = world();
    let (set, other) = b_set(&mut w);
    let to_other = grant_send(&mut w.ipc, w.b, other, w.a);
    for _ in 0..2 {
        w.ipc.send(w.a, UserMessage::new(w.to_b, 1, vec![])).unwrap();
        w.ipc.send(w.a, UserMessage::new(to_other, 2, vec![])).unwrap();
    }
    let mut locals: Vec<PortName> = (0..4).map(|_| recv(&mut w.ipc, w.b, set).local).collect();
    locals.sort();
    let mut want = vec![w.inbox, w.inbox, other, other];
    want.sort();
    assert_eq!(locals, want);
    assert_eq!(w.ipc.try_receive(w.b, set), Ok(None));
}

#[test]
fn a_set_alternates_between_busy_members() {
    let mut w = world();
    let (set, other) = b_set(&mut w);
    let to_other = grant_send(&mut w.ipc, w.b, other, w.a);
    for _ in 0..3 {
        w.ipc.send(w.a, UserMessage::new(w.to_b, 1, vec![])).unwrap();
        w.ipc.send(w.a, UserMessage::new(to_other, 2, vec![])).unwrap();
    }
    let first = recv(&mut w.ipc, w.b, set).local;
    let second = recv(&mut w.ipc, w.b, set).local;
    assert_ne!(first, second, "one busy member must not starve the other");
}

#[test]
fn a_member_can_still_be_received_from_directly() {
    let mut w = world();
    let (_set, _other) = b_set(&mut w);
    w.ipc.send(w.a, UserMessage::new(w.to_b, 5, vec![])).unwrap();
    assert_eq!(recv(&mut w.ipc, w.b, w.inbox).id, 5);
}

#[test]
fn move_member_to_none_takes_a_port_out_of_its_set() {
    let mut w = world();
    let (set, _other) = b_set(&mut w);
    w.ipc.move_member(w.b, w.inbox, None).unwrap();
    w.ipc.send(w.a, UserMessage::new(w.to_b, 5, vec![])).unwrap();
    assert!(!w.ipc.has_message(w.b, set));
    assert_eq!(w.ipc.try_receive(w.b, set), Ok(None));
    assert_eq!(recv(&mut w.ipc, w.b, w.inbox).id, 5);
}

#[test]
fn move_member_to_another_set_leaves_the_first() {
    let mut w = world();
    let (set, _other) = b_set(&mut w);
    let set2 = w.ipc.pset_allocate(w.b).unwrap();
    w.ipc.move_member(w.b, w.inbox, Some(set2)).unwrap();
    w.ipc.send(w.a, UserMessage::new(w.to_b, 5, vec![])).unwrap();
    assert_eq!(w.ipc.try_receive(w.b, set), Ok(None));
    assert_eq!(recv(&mut w.ipc, w.b, set2).local, w.inbox);
}

#[test]
fn move_member_checks_its_names() {
    let mut w = world();
    let set = w.ipc.pset_allocate(w.b).unwrap();
    let other = w.ipc.port_allocate(w.b).unwrap();
    let (a, b, to_b, inbox) = (w.a, w.b, w.to_b, w.inbox);
    let aset = w.ipc.pset_allocate(a).unwrap();
    w.ipc.drain_events();
    let before = state(&w.ipc);
    assert_eq!(w.ipc.move_member(a, to_b, Some(aset)), Err(KernError::InvalidRight), "a send right is no member");
    assert_eq!(w.ipc.move_member(b, inbox, Some(other)), Err(KernError::InvalidRight), "a port is no set");
    assert_eq!(w.ipc.move_member(b, set, Some(set)), Err(KernError::InvalidRight), "a set is no member");
    assert_eq!(w.ipc.move_member(b, PortName(0x999), Some(set)), Err(KernError::InvalidName));
    assert_eq!(w.ipc.move_member(b, inbox, Some(PortName(0x999))), Err(KernError::InvalidName));
    assert_eq!(state(&w.ipc), before);
}

#[test]
fn a_destroyed_member_leaves_its_set() {
    let mut w = world();
    let (set, other) = b_set(&mut w);
    let to_other = grant_send(&mut w.ipc, w.b, other, w.a);
    w.ipc.mod_refs(w.b, w.inbox, RightKind::Receive, -1).unwrap();
    w.ipc.send(w.a, UserMessage::new(to_other, 2, vec![])).unwrap();
    assert_eq!(recv(&mut w.ipc, w.b, set).local, other);
    assert_eq!(w.ipc.try_receive(w.b, set), Ok(None));
}

#[test]
fn a_moved_receive_right_leaves_its_set() {
    let mut w = world();
    let set = w.ipc.pset_allocate(w.a).unwrap();
    let name = w.ipc.port_allocate(w.a).unwrap();
    w.ipc.move_member(w.a, name, Some(set)).unwrap();
    let (got, _) = w.pass_one(name, MoveReceive);
    let to_it = grant_send(&mut w.ipc, w.b, got, w.a);
    w.ipc.send(w.a, UserMessage::new(to_it, 1, vec![])).unwrap();
    assert_eq!(w.ipc.try_receive(w.a, set), Ok(None));
    assert_eq!(recv(&mut w.ipc, w.b, got).id, 1);
}

#[test]
fn destroying_a_set_frees_its_members() {
    let mut w = world();
    let (set, _other) = b_set(&mut w);
    w.ipc.name_destroy(w.b, set).unwrap();
    assert_eq!(w.ipc.lookup(w.b, set), Err(KernError::InvalidName));
    let set2 = w.ipc.pset_allocate(w.b).unwrap();
    w.ipc.move_member(w.b, w.inbox, Some(set2)).unwrap();
    w.ipc.send(w.a, UserMessage::new(w.to_b, 1, vec![])).unwrap();
    assert_eq!(recv(&mut w.ipc, w.b, set2).local, w.inbox);
}

// ----- mod_refs and deallocate -----

#[test]
fn mod_refs_adds_and_removes_send_urefs() {
    let mut w = world();
    w.ipc.mod_refs(w.a, w.to_b, RightKind::Send, 4).unwrap();
    assert_eq!(w.info(w.a, w.to_b).send_urefs, 5);
    w.ipc.mod_refs(w.a, w.to_b, RightKind::Send, -3).unwrap();
    assert_eq!(w.info(w.a, w.to_b).send_urefs, 2);
    w.ipc.mod_refs(w.a, w.to_b, RightKind::Send, 0).unwrap();
    assert_eq!(w.info(w.a, w.to_b).send_urefs, 2);
    assert_eq!(w.ipc.send_rights(w.port(w.b, w.inbox)), 1);
}

#[test]
fn mod_refs_to_zero_removes_the_name_and_the_send_right() {
    let mut w = world();
    let port = w.port(w.b, w.inbox);
    w.ipc.mod_refs(w.a, w.to_b, RightKind::Send, 1).unwrap();
    w.ipc.mod_refs(w.a, w.to_b, RightKind::Send, -2).unwrap();
    assert_eq!(w.ipc.lookup(w.a, w.to_b), Err(KernError::InvalidName));
    assert_eq!(w.ipc.name_of(w.a, port), None);
    assert_eq!(w.ipc.send_rights(port), 0);
}

#[test]
fn mod_refs_below_zero_is_invalid_value_and_changes_nothing() {
    let mut w = world();
    let before = state(&w.ipc);
    assert_eq!(w.ipc.mod_refs(w.a, w.to_b, RightKind::Send, -2), Err(KernError::InvalidValue));
    assert_eq!(state(&w.ipc), before);
}

#[test]
fn mod_refs_on_a_right_the_name_lacks_is_invalid_right() {
    let mut w = world();
    let before = state(&w.ipc);
    assert_eq!(w.ipc.mod_refs(w.b, w.inbox, RightKind::Send, 1), Err(KernError::InvalidRight));
    assert_eq!(w.ipc.mod_refs(w.b, w.inbox, RightKind::DeadName, -1), Err(KernError::InvalidRight));
    assert_eq!(w.ipc.mod_refs(w.a, w.to_b, RightKind::Receive, -1), Err(KernError::InvalidRight));
    assert_eq!(w.ipc.mod_refs(w.a, w.to_b, RightKind::DeadName, 1), Err(KernError::InvalidRight));
    assert_eq!(state(&w.ipc), before);
}

#[test]
fn mod_refs_on_a_receive_right_takes_only_minus_one_or_zero() {
    let mut w = world();
    let before = state(&w.ipc);
    assert_eq!(w.ipc.mod_refs(w.b, w.inbox, RightKind::Receive, 1), Err(KernError::InvalidValue));
    assert_eq!(w.ipc.mod_refs(w.b, w.inbox, RightKind::Receive, -2), Err(KernError::InvalidValue));
    assert_eq!(w.ipc.mod_refs(w.b, w.inbox, RightKind::Receive, 0), Ok(()));
    assert_eq!(state(&w.ipc), before);
}

#[test]
fn mod_refs_on_an_unknown_name_is_invalid_name() {
    let mut w = world();
    assert_eq!(w.ipc.mod_refs(w.a, PortName(0x555), RightKind::Send, 1), Err(KernError::InvalidName));
    assert_eq!(w.ipc.deallocate(w.a, PortName(0x555)), Err(KernError::InvalidName));
    assert_eq!(w.ipc.name_destroy(w.a, PortName(0x555)), Err(KernError::InvalidName));
}

#[test]
fn mod_refs_past_the_maximum_is_urefs_overflow() {
    let mut w = world();
    let before = state(&w.ipc);
    assert_eq!(w.ipc.mod_refs(w.a, w.to_b, RightKind::Send, i32::MAX), Err(KernError::UrefsOverflow));
    assert_eq!(state(&w.ipc), before);
    w.ipc.mod_refs(w.a, w.to_b, RightKind::Send, (UREFS_MAX - 1) as i32).unwrap();
    assert_eq!(w.info(w.a, w.to_b).send_urefs, UREFS_MAX);
    assert_eq!(w.ipc.mod_refs(w.a, w.to_b, RightKind::Send, 1), Err(KernError::UrefsOverflow));
    assert_eq!(w.info(w.a, w.to_b).send_urefs, UREFS_MAX);
}

#[test]
fn mod_refs_minus_one_on_a_receive_right_destroys_the_port() {
    let mut w = world();
    let port = w.port(w.b, w.inbox);
    w.ipc.mod_refs(w.b, w.inbox, RightKind::Receive, -1).unwrap();
    assert!(!w.ipc.port_alive(port));
    assert_eq!(w.ipc.lookup(w.b, w.inbox), Err(KernError::InvalidName));
    assert_eq!(w.ipc.drain_events(), vec![IpcEvent::PortDied(port)]);
}

#[test]
fn deallocate_releases_one_send_uref() {
    let mut w = world();
    w.ipc.mod_refs(w.a, w.to_b, RightKind::Send, 1).unwrap();
    w.ipc.deallocate(w.a, w.to_b).unwrap();
    assert_eq!(w.info(w.a, w.to_b).send_urefs, 1);
    w.ipc.deallocate(w.a, w.to_b).unwrap();
    assert_eq!(w.ipc.lookup(w.a, w.to_b), Err(KernError::InvalidName));
    assert_eq!(w.ipc.send_rights(w.port(w.b, w.inbox)), 0);
}

#[test]
fn deallocate_releases_a_send_once_right() {
    let mut w = world();
    let name = w.ipc.port_allocate(w.a).unwrap();
    let (once, _) = w.pass_one(name, MakeSendOnce);
    let port = w.port(w.a, name);
    assert_eq!(w.ipc.ports[&port].sorights, 1);
    w.ipc.deallocate(w.b, once).unwrap();
    assert_eq!(w.ipc.lookup(w.b, once), Err(KernError::InvalidName));
    assert_eq!(w.ipc.ports[&port].sorights, 0);
}

#[test]
fn mod_refs_on_a_send_once_right_takes_only_minus_one_or_zero() {
    let mut w = world();
    let name = w.ipc.port_allocate(w.a).unwrap();
    let port = w.port(w.a, name);
    let once = grant_send_once(&mut w.ipc, w.a, name, w.b);
    let before = state(&w.ipc);
    assert_eq!(w.ipc.mod_refs(w.b, once, RightKind::SendOnce, 1), Err(KernError::InvalidValue));
    assert_eq!(w.ipc.mod_refs(w.b, once, RightKind::SendOnce, -2), Err(KernError::InvalidValue));
    assert_eq!(w.ipc.mod_refs(w.b, once, RightKind::SendOnce, 0), Ok(()));
    assert_eq!(w.ipc.mod_refs(w.b, w.inbox, RightKind::SendOnce, -1), Err(KernError::InvalidRight));
    assert_eq!(state(&w.ipc), before);
    w.ipc.mod_refs(w.b, once, RightKind::SendOnce, -1).unwrap();
    assert_eq!(w.ipc.lookup(w.b, once), Err(KernError::InvalidName));
    assert_eq!(w.ipc.ports[&port].sorights, 0);
}

#[test]
fn deallocate_of_a_receive_right_or_set_is_invalid_right() {
    let mut w = world();
    let set = w.ipc.pset_allocate(w.b).unwrap();
    assert_eq!(w.ipc.deallocate(w.b, w.inbox), Err(KernError::InvalidRight));
    assert_eq!(w.ipc.deallocate(w.b, set), Err(KernError::InvalidRight));
    assert!(w.info(w.b, w.inbox).receive);
}

#[test]
fn deallocate_releases_one_dead_name_uref() {
    let mut w = world();
    w.ipc.mod_refs(w.a, w.to_b, RightKind::Send, 1).unwrap();
    w.ipc.mod_refs(w.b, w.inbox, RightKind::Receive, -1).unwrap();
    assert_eq!(w.info(w.a, w.to_b).dead_urefs, 2);
    w.ipc.deallocate(w.a, w.to_b).unwrap();
    assert_eq!(w.info(w.a, w.to_b).dead_urefs, 1);
    w.ipc.mod_refs(w.a, w.to_b, RightKind::DeadName, -1).unwrap();
    assert_eq!(w.ipc.lookup(w.a, w.to_b), Err(KernError::InvalidName));
}

#[test]
fn a_receivers_own_send_urefs_are_not_a_sender() {
    // The receiver's own send right does not count, so dropping it must not
    // release a right that someone else holds.
    let mut w = world();
    let port = w.port(w.b, w.inbox);
    grant_send(&mut w.ipc, w.b, w.inbox, w.b);
    assert_eq!(w.info(w.b, w.inbox).send_urefs, 1);
    assert_eq!(w.ipc.send_rights(port), 1);
    w.ipc.mod_refs(w.b, w.inbox, RightKind::Send, -1).unwrap();
    assert_eq!(w.ipc.send_rights(port), 1, "a still holds its send right");
    assert!(w.info(w.b, w.inbox).receive);
}

// ----- no-senders notifications -----

#[test]
fn the_last_send_right_going_away_sends_no_senders() {
    let mut w = world();
    let (port, notify) = w.a_port_with_no_senders_request();
    let theirs = w.ipc.name_of(w.b, w.port(w.a, port)).unwrap();
    assert_eq!(w.ipc.try_receive(w.a, notify), Ok(None));
    w.ipc.deallocate(w.b, theirs).unwrap();
    let n = recv(&mut w.ipc, w.a, notify);
    assert_eq!(no_senders_mscount(&n), 1);
    assert_eq!(w.ipc.try_receive(w.a, notify), Ok(None), "exactly one notification");
}

#[test]
fn no_senders_waits_for_every_space() {
    let mut w = world();
    let (port, notify) = w.a_port_with_no_senders_request();
    let pid = w.port(w.a, port);
    let c = w.ipc.space_create();
    let in_c = grant_send(&mut w.ipc, w.a, port, c);
    let in_b = w.ipc.name_of(w.b, pid).unwrap();
    w.ipc.deallocate(w.b, in_b).unwrap();
    assert_eq!(w.ipc.try_receive(w.a, notify), Ok(None));
    w.ipc.deallocate(c, in_c).unwrap();
    assert_eq!(no_senders_mscount(&recv(&mut w.ipc, w.a, notify)), 2);
}

#[test]
fn no_senders_waits_for_every_uref_of_a_space() {
    let mut w = world();
    let (port, notify) = w.a_port_with_no_senders_request();
    let in_b = w.ipc.name_of(w.b, w.port(w.a, port)).unwrap();
    w.ipc.mod_refs(w.b, in_b, RightKind::Send, 2).unwrap();
    w.ipc.mod_refs(w.b, in_b, RightKind::Send, -2).unwrap();
    assert_eq!(w.ipc.try_receive(w.a, notify), Ok(None));
    w.ipc.mod_refs(w.b, in_b, RightKind::Send, -1).unwrap();
    assert_eq!(no_senders_mscount(&recv(&mut w.ipc, w.a, notify)), 1);
}

#[test]
fn no_senders_waits_for_rights_in_transit() {
    let mut w = world();
    let (port, notify) = w.a_port_with_no_senders_request();
    let pid = w.port(w.a, port);
    let in_b = w.ipc.name_of(w.b, pid).unwrap();
    // b sends its only send right to its own inbox, then the message waits.
    let to_self = grant_send(&mut w.ipc, w.b, w.inbox, w.b);
    w.ipc.send(w.b, carrying(to_self, &[(in_b, MoveSend)])).unwrap();
    assert_eq!(w.ipc.name_of(w.b, pid), None);
    assert_eq!(w.ipc.send_rights(pid), 1);
    assert_eq!(w.ipc.try_receive(w.a, notify), Ok(None));
    let got = recv(&mut w.ipc, w.b, w.inbox).rights[0].0;
    w.ipc.deallocate(w.b, got).unwrap();
    assert_eq!(no_senders_mscount(&recv(&mut w.ipc, w.a, notify)), 1);
}

#[test]
fn requesting_no_senders_without_senders_fires_at_once() {
    let mut w = world();
    let port = w.ipc.port_allocate(w.a).unwrap();
    let notify = w.ipc.port_allocate(w.a).unwrap();
    w.ipc.request_notification(w.a, port, NotifyKind::NoSenders, notify).unwrap();
    assert_eq!(no_senders_mscount(&recv(&mut w.ipc, w.a, notify)), 0);
}

#[test]
fn a_no_senders_notification_is_sent_once() {
    let mut w = world();
    let (port, notify) = w.a_port_with_no_senders_request();
    let pid = w.port(w.a, port);
    w.ipc.deallocate(w.b, w.ipc.name_of(w.b, pid).unwrap()).unwrap();
    recv(&mut w.ipc, w.a, notify);
    // New senders come and go; nobody asked again.
    let again = grant_send(&mut w.ipc, w.a, port, w.b);
    w.ipc.deallocate(w.b, again).unwrap();
    assert_eq!(w.ipc.try_receive(w.a, notify), Ok(None));
}

#[test]
fn requesting_no_senders_needs_the_receive_right() {
    let mut w = world();
    let notify = w.ipc.port_allocate(w.a).unwrap();
    let (a, to_b) = (w.a, w.to_b);
    assert_eq!(w.ipc.request_notification(a, to_b, NotifyKind::NoSenders, notify), Err(KernError::InvalidRight));
    assert!(
        w.ipc.request_notification(a, notify, NotifyKind::NoSenders, to_b).is_err(),
        "notify must be a receive right"
    );
    assert_eq!(w.ipc.try_receive(a, notify), Ok(None));
}

#[test]
fn a_kernel_port_reports_no_senders_as_an_event() {
    let mut ipc = Ipc::new();
    let port = ipc.port_allocate_kernel();
    ipc.kernel_make_send(port);
    ipc.kernel_make_send(port);
    assert_eq!(ipc.send_rights(port), 2);
    ipc.release_send(port);
    assert!(ipc.drain_events().is_empty());
    ipc.release_send(port);
    assert_eq!(ipc.drain_events(), vec![IpcEvent::NoSenders(port)]);
}

#[test]
fn kernel_copy_send_is_one_more_sender() {
    let mut ipc = Ipc::new();
    let port = ipc.port_allocate_kernel();
    ipc.kernel_make_send(port);
    ipc.kernel_copy_send(port);
    assert_eq!(ipc.send_rights(port), 2);
    ipc.release_send(port);
    assert!(ipc.drain_events().is_empty());
    ipc.release_send(port);
    assert_eq!(ipc.drain_events(), vec![IpcEvent::NoSenders(port)]);
}

#[test]
fn a_kernel_port_loses_its_last_sender_when_a_space_drops_its_right() {
    let mut ipc = Ipc::new();
    let s = ipc.space_create();
    let port = ipc.port_allocate_kernel();
    ipc.kernel_make_send(port);
    let name = ipc.copyout(s, port, RightKind::Send).unwrap();
    ipc.kernel_make_send(port);
    assert_eq!(ipc.copyout(s, port, RightKind::Send), Ok(name));
    assert_eq!(ipc.send_rights(port), 1);
    ipc.mod_refs(s, name, RightKind::Send, -1).unwrap();
    assert!(ipc.drain_events().is_empty());
    ipc.deallocate(s, name).unwrap();
    assert_eq!(ipc.drain_events(), vec![IpcEvent::NoSenders(port)]);
    assert!(ipc.port_alive(port), "no-senders does not kill the port");
}

#[test]
fn a_space_destroyed_releases_its_send_rights_to_kernel_ports() {
    let mut ipc = Ipc::new();
    let s = ipc.space_create();
    let port = ipc.port_allocate_kernel();
    ipc.kernel_make_send(port);
    ipc.copyout(s, port, RightKind::Send).unwrap();
    ipc.space_destroy(s);
    assert_eq!(ipc.drain_events(), vec![IpcEvent::NoSenders(port)]);
    assert_eq!(ipc.send_rights(port), 0);
}

#[test]
fn a_message_to_a_kernel_port_is_handed_to_the_kernel() {
    let mut w = world();
    let port = w.ipc.port_allocate_kernel();
    w.ipc.kernel_make_send(port);
    let name = w.ipc.copyout(w.a, port, RightKind::Send).unwrap();
    let reply = w.ipc.port_allocate(w.a).unwrap();
    let msg = UserMessage {
        reply: Some((reply, MakeSendOnce)),
        rights: vec![(w.to_b, CopySend)],
        ..UserMessage::new(name, 3000, vec![1, 2, 3])
    };
    let k = w.ipc.send(w.a, msg).unwrap().expect("the kernel handles it");
    assert_eq!((k.dest, k.dest_right, k.id, k.data.as_slice()), (port, Some(RightKind::Send), 3000, &[1u8, 2, 3][..]));
    assert_eq!(k.reply, Some((w.port(w.a, reply), RightKind::SendOnce)));
    assert_eq!(k.rights, vec![(w.port(w.b, w.inbox), RightKind::Send)]);
    assert_eq!(w.ipc.queue_len(port), 0);
    assert_eq!(w.ipc.send_rights(port), 2, "a's right and the one in the message");
}

// ----- dead names -----

#[test]
fn destroying_a_port_turns_send_rights_into_dead_names() {
    let mut w = world();
    let port = w.port(w.b, w.inbox);
    w.ipc.mod_refs(w.a, w.to_b, RightKind::Send, 2).unwrap();
    w.ipc.port_destroy(port);
    assert!(!w.ipc.port_alive(port));
    let info = w.info(w.a, w.to_b);
    assert_eq!((info.send_urefs, info.dead_urefs, info.receive), (0, 3, false));
    assert_eq!(w.ipc.port_of(w.a, w.to_b), Err(KernError::InvalidCapability));
    assert_eq!(w.ipc.lookup(w.b, w.inbox), Err(KernError::InvalidName));
    assert_eq!(w.ipc.drain_events(), vec![IpcEvent::PortDied(port)]);
}

#[test]
fn destroying_the_receive_right_with_mod_refs_turns_send_rights_into_dead_names() {
    let mut w = world();
    w.ipc.mod_refs(w.b, w.inbox, RightKind::Receive, -1).unwrap();
    assert_eq!(w.info(w.a, w.to_b).dead_urefs, 1);
    assert_eq!(w.info(w.a, w.to_b).send_urefs, 0);
}

#[test]
fn destroying_the_receiving_space_turns_send_rights_into_dead_names() {
    let mut w = world();
    let port = w.port(w.b, w.inbox);
    w.ipc.space_destroy(w.b);
    assert!(!w.ipc.port_alive(port));
    assert_eq!(w.info(w.a, w.to_b).dead_urefs, 1);
    assert_eq!(w.ipc.port_allocate(w.b), Err(KernError::InvalidTask));
    assert!(w.ipc.drain_events().contains(&IpcEvent::PortDied(port)));
}

#[test]
fn name_destroy_of_a_receive_right_kills_the_port() {
    let mut w = world();
    let port = w.port(w.b, w.inbox);
    w.ipc.name_destroy(w.b, w.inbox).unwrap();
    assert!(!w.ipc.port_alive(port));
    assert_eq!(w.info(w.a, w.to_b).dead_urefs, 1);
}

#[test]
fn the_receivers_own_send_urefs_become_a_dead_name() {
    let mut w = world();
    grant_send(&mut w.ipc, w.b, w.inbox, w.b);
    w.ipc.mod_refs(w.b, w.inbox, RightKind::Receive, -1).unwrap();
    let info = w.info(w.b, w.inbox);
    assert_eq!((info.receive, info.send_urefs, info.dead_urefs), (false, 0, 1));
}

#[test]
fn a_send_right_arriving_after_death_is_a_dead_name() {
    let mut w = world();
    let c = w.ipc.space_create();
    let target = w.ipc.port_allocate(c).unwrap();
    let name = grant_send(&mut w.ipc, c, target, w.a);
    let port = w.port(c, target);
    // a's right is in transit to b when the port dies.
    w.ipc.send(w.a, carrying(w.to_b, &[(name, MoveSend)])).unwrap();
    w.ipc.space_destroy(c);
    let got = recv(&mut w.ipc, w.b, w.inbox).rights[0];
    assert_eq!(got.1, RightKind::DeadName);
    let info = w.info(w.b, got.0);
    assert_eq!((info.send_urefs, info.dead_urefs, info.port), (0, 1, Some(port)));
}

#[test]
fn a_dead_name_request_fires_when_the_port_dies() {
    let mut w = world();
    let target = w.ipc.port_allocate(w.a).unwrap();
    let watched = grant_send(&mut w.ipc, w.a, target, w.b);
    let notify = w.b_watches_death(watched);
    assert_eq!(w.ipc.try_receive(w.b, notify), Ok(None));
    let port = w.port(w.b, watched);
    w.ipc.port_destroy(port);
    let n = recv(&mut w.ipc, w.b, notify);
    assert_eq!(dead_name_of(&n), watched);
    assert_eq!(w.info(w.b, watched).dead_urefs, 1);
    assert_eq!(w.ipc.try_receive(w.b, notify), Ok(None), "exactly one notification");
}

#[test]
fn a_dead_name_request_on_a_dead_name_fires_at_once() {
    let mut w = world();
    w.ipc.mod_refs(w.b, w.inbox, RightKind::Receive, -1).unwrap();
    let notify = w.ipc.port_allocate(w.a).unwrap();
    w.ipc.request_notification(w.a, w.to_b, NotifyKind::DeadName, notify).unwrap();
    assert_eq!(dead_name_of(&recv(&mut w.ipc, w.a, notify)), w.to_b);
}

#[test]
fn a_dead_name_request_on_a_send_once_right_fires_on_death() {
    let mut w = world();
    let mine = w.ipc.port_allocate(w.a).unwrap();
    let (once, _) = w.pass_one(mine, MakeSendOnce);
    let notify = w.b_watches_death(once);
    w.ipc.mod_refs(w.a, mine, RightKind::Receive, -1).unwrap();
    assert_eq!(dead_name_of(&recv(&mut w.ipc, w.b, notify)), once);
}

#[test]
fn a_dead_name_request_needs_a_send_right() {
    let mut w = world();
    let notify = w.ipc.port_allocate(w.b).unwrap();
    let (b, inbox) = (w.b, w.inbox);
    assert_eq!(w.ipc.request_notification(b, inbox, NotifyKind::DeadName, notify), Err(KernError::InvalidRight));
    assert_eq!(
        w.ipc.request_notification(b, PortName(0x4321), NotifyKind::DeadName, notify),
        Err(KernError::InvalidName)
    );
}

#[test]
fn a_dead_name_notification_to_a_dead_port_is_dropped() {
    let mut w = world();
    let target = w.ipc.port_allocate(w.a).unwrap();
    let watched = grant_send(&mut w.ipc, w.a, target, w.b);
    let notify = w.b_watches_death(watched);
    let notify_port = w.port(w.b, notify);
    w.ipc.mod_refs(w.b, notify, RightKind::Receive, -1).unwrap();
    let port = w.port(w.b, watched);
    w.ipc.port_destroy(port);
    assert_eq!(w.ipc.queue_len(notify_port), 0);
    assert_eq!(w.ipc.ports[&notify_port].sorights, 0, "the send-once right was released");
}

// ----- queued messages die with their port -----

#[test]
fn a_dying_port_destroys_its_queue_and_releases_the_rights_in_it() {
    let mut w = world();
    let inbox = w.port(w.b, w.inbox);
    let kept = w.ipc.port_allocate(w.a).unwrap();
    let traveller = w.ipc.port_allocate(w.a).unwrap();
    let traveller_port = w.port(w.a, traveller);
    let c = w.ipc.space_create();
    let in_c = grant_send(&mut w.ipc, w.a, traveller, c);
    w.ipc.send(w.a, carrying(w.to_b, &[(kept, MakeSend), (traveller, MoveReceive)])).unwrap();
    let notify = w.ipc.port_allocate(w.a).unwrap();
    w.ipc.request_notification(w.a, kept, NotifyKind::NoSenders, notify).unwrap();
    assert_eq!(w.ipc.try_receive(w.a, notify), Ok(None), "the send right in the queue counts");

    w.ipc.mod_refs(w.b, w.inbox, RightKind::Receive, -1).unwrap();
    assert_eq!(w.ipc.queue_len(inbox), 0);
    assert_eq!(no_senders_mscount(&recv(&mut w.ipc, w.a, notify)), 1, "the send right was released");
    assert!(!w.ipc.port_alive(traveller_port), "the receive right was destroyed");
    assert_eq!(w.ipc.lookup(c, in_c).unwrap().dead_urefs, 1);
    let events = w.ipc.drain_events();
    assert!(events.contains(&IpcEvent::PortDied(inbox)));
    assert!(events.contains(&IpcEvent::PortDied(traveller_port)));
}

#[test]
fn a_dying_port_releases_the_send_once_rights_queued_on_it() {
    let mut w = world();
    let mine = w.ipc.port_allocate(w.a).unwrap();
    let port = w.port(w.a, mine);
    let msg = UserMessage { reply: Some((mine, MakeSendOnce)), ..UserMessage::new(w.to_b, 1, vec![]) };
    w.ipc.send(w.a, msg).unwrap();
    assert_eq!(w.ipc.ports[&port].sorights, 1);
    w.ipc.mod_refs(w.b, w.inbox, RightKind::Receive, -1).unwrap();
    assert_eq!(w.ipc.ports[&port].sorights, 0);
}

#[test]
fn kernel_send_to_a_dead_port_is_invalid_dest_and_releases_the_rights() {
    let mut w = world();
    let dest = w.port(w.b, w.inbox);
    w.ipc.port_destroy(dest);
    let carried = w.ipc.port_allocate_kernel();
    w.ipc.kernel_make_send(carried);
    w.ipc.drain_events();
    let msg = KMessage::from_kernel(dest, 1, vec![], vec![(carried, RightKind::Send)]);
    assert_eq!(w.ipc.kernel_send(msg), Err(KernError::SendInvalidDest));
    assert_eq!(w.ipc.send_rights(carried), 0);
    assert_eq!(w.ipc.drain_events(), vec![IpcEvent::NoSenders(carried)]);
}

#[test]
fn kernel_send_to_a_live_port_queues_the_message() {
    let mut w = world();
    let dest = w.port(w.b, w.inbox);
    let carried = w.ipc.port_allocate_kernel();
    w.ipc.kernel_make_send(carried);
    w.ipc.drain_events();
    let msg = KMessage { reply: Some((carried, RightKind::Send)), ..KMessage::from_kernel(dest, 9, vec![8], vec![]) };
    assert_eq!(w.ipc.kernel_send(msg), Ok(()));
    assert_eq!(w.ipc.drain_events(), vec![IpcEvent::Queued(dest)]);
    let got = recv(&mut w.ipc, w.b, w.inbox);
    let reply = got.reply.unwrap();
    assert_eq!((got.id, got.data), (9, vec![8]));
    assert_eq!(w.port(w.b, reply), carried);
    assert_eq!(w.ipc.send_rights(carried), 1);
}

#[test]
fn kernel_send_to_a_kernel_port_is_refused_and_destroyed() {
    let mut ipc = Ipc::new();
    let dest = ipc.port_allocate_kernel();
    let carried = ipc.port_allocate_kernel();
    ipc.kernel_make_send(carried);
    let msg = KMessage::from_kernel(dest, 1, vec![], vec![(carried, RightKind::Send)]);
    assert_eq!(ipc.kernel_send(msg), Err(KernError::MigBadId));
    assert_eq!(ipc.send_rights(carried), 0);
}

// ----- send-right accounting around the receiver -----

#[test]
fn moving_the_receivers_own_send_right_counts_it_in_transit() {
    let mut w = world();
    let mine = w.ipc.port_allocate(w.a).unwrap();
    let port = w.port(w.a, mine);
    grant_send(&mut w.ipc, w.a, mine, w.a);
    assert_eq!(w.ipc.send_rights(port), 0);
    let (got, _) = w.pass_one(mine, MoveSend);
    assert!(w.info(w.a, mine).receive);
    assert_eq!(w.info(w.a, mine).send_urefs, 0);
    assert_eq!(w.info(w.b, got).send_urefs, 1);
    assert_eq!(w.ipc.send_rights(port), 1, "b holds a send right");
}

#[test]
fn a_space_giving_away_a_receive_right_becomes_a_sender() {
    let mut w = world();
    let mine = w.ipc.port_allocate(w.a).unwrap();
    let port = w.port(w.a, mine);
    grant_send(&mut w.ipc, w.a, mine, w.a);
    let (got, _) = w.pass_one(mine, MoveReceive);
    assert_eq!(w.info(w.a, mine).send_urefs, 1);
    assert_eq!(w.ipc.send_rights(port), 1, "a's send right is outside the receiver now");
    // b's no-senders request must therefore wait for a.
    let notify = w.ipc.port_allocate(w.b).unwrap();
    w.ipc.request_notification(w.b, got, NotifyKind::NoSenders, notify).unwrap();
    assert_eq!(w.ipc.try_receive(w.b, notify), Ok(None));
    w.ipc.deallocate(w.a, mine).unwrap();
    assert_eq!(no_senders_mscount(&recv(&mut w.ipc, w.b, notify)), 1);
}

#[test]
fn a_receive_right_arriving_where_its_only_sender_lives_has_no_senders() {
    let mut w = world();
    let mine = w.ipc.port_allocate(w.a).unwrap();
    let port = w.port(w.a, mine);
    let in_b = grant_send(&mut w.ipc, w.a, mine, w.b);
    let notify = w.ipc.port_allocate(w.a).unwrap();
    w.ipc.request_notification(w.a, mine, NotifyKind::NoSenders, notify).unwrap();
    let (got, _) = w.pass_one(mine, MoveReceive);
    assert_eq!(got, in_b, "the receive right joins b's send right");
    assert_eq!(w.ipc.send_rights(port), 0);
    // The request travelled with the receive right; a's notify port gets it.
    assert_eq!(no_senders_mscount(&recv(&mut w.ipc, w.a, notify)), 1);
}

#[test]
fn dropping_a_name_with_receive_and_send_rights_releases_only_the_port() {
    let mut w = world();
    let mine = w.ipc.port_allocate(w.a).unwrap();
    let port = w.port(w.a, mine);
    grant_send(&mut w.ipc, w.a, mine, w.a);
    w.ipc.kernel_make_send(port); // a kernel-held send right, in flight
    w.ipc.name_destroy(w.a, mine).unwrap();
    assert!(!w.ipc.port_alive(port));
    assert_eq!(w.ipc.send_rights(port), 1, "the kernel's right is still out there");
    w.ipc.release_send(port);
    w.ipc.reap(port);
    assert!(!w.ipc.ports.contains_key(&port));
}

// ----- reaping dead ports -----

#[test]
fn a_dead_port_is_reaped_once_nothing_holds_it() {
    let mut w = world();
    let port = w.port(w.b, w.inbox);
    w.ipc.port_destroy(port);
    w.ipc.reap(port);
    assert!(!w.ipc.ports.contains_key(&port), "dead names do not keep a port");
    assert_eq!(w.info(w.a, w.to_b).dead_urefs, 1);
    w.ipc.deallocate(w.a, w.to_b).unwrap();
    assert_eq!(w.ipc.lookup(w.a, w.to_b), Err(KernError::InvalidName));
}

#[test]
fn a_live_port_or_one_with_rights_in_flight_is_not_reaped() {
    let mut ipc = Ipc::new();
    let port = ipc.port_allocate_kernel();
    ipc.reap(port);
    assert!(ipc.ports.contains_key(&port), "alive");
    ipc.kernel_make_send(port);
    ipc.port_destroy(port);
    ipc.reap(port);
    assert!(ipc.ports.contains_key(&port), "a send right is still held");
    ipc.release_send(port);
    ipc.reap(port);
    assert!(!ipc.ports.contains_key(&port));
}

#[test]
fn a_send_right_returned_to_the_receiver_leaves_no_senders() {
    let mut w = world();
    let mine = w.ipc.port_allocate(w.a).unwrap();
    let notify = w.ipc.port_allocate(w.a).unwrap();
    let (in_b, _) = w.pass_one(mine, MakeSend);
    w.ipc.request_notification(w.a, mine, NotifyKind::NoSenders, notify).unwrap();
    // b sends its only send right back to the port it names.
    w.ipc.send(w.b, carrying(in_b, &[(in_b, MoveSend)])).unwrap();
    assert_eq!(w.ipc.try_receive(w.a, notify), Ok(None), "still in transit");
    let got = recv(&mut w.ipc, w.a, mine).rights[0].0;
    assert_eq!(got, mine);
    assert_eq!(w.ipc.send_rights(w.port(w.a, mine)), 0);
    assert_eq!(no_senders_mscount(&recv(&mut w.ipc, w.a, notify)), 1);
}

#[test]
fn a_dead_port_still_counts_the_rights_in_flight() {
    let mut w = world();
    let port = w.port(w.b, w.inbox);
    grant_send(&mut w.ipc, w.b, w.inbox, w.b);
    w.ipc.kernel_make_send(port);
    assert_eq!(w.ipc.send_rights(port), 2, "a's right and the kernel's");
    w.ipc.mod_refs(w.b, w.inbox, RightKind::Receive, -1).unwrap();
    assert_eq!(w.ipc.send_rights(port), 1, "only the kernel's right is left");
    w.ipc.reap(port);
    assert!(w.ipc.ports.contains_key(&port));
}

#[test]
fn a_receive_right_the_kernel_allocates_in_transit_can_be_handed_to_a_space() {
    let mut w = world();
    let port = w.ipc.port_allocate_in_transit();
    assert!(w.ipc.port_alive(port));
    w.ipc.kernel_make_send(port);
    let early = KMessage::notification(port, 1, vec![5]);
    w.ipc.kernel_send(KMessage { dest_right: None, ..early }).unwrap();
    let dest = w.port(w.b, w.inbox);
    let carry = KMessage::from_kernel(dest, 2, vec![], vec![(port, RightKind::Receive)]);
    w.ipc.kernel_send(carry).unwrap();
    let (name, kind) = recv(&mut w.ipc, w.b, w.inbox).rights[0];
    assert_eq!(kind, RightKind::Receive);
    assert!(w.info(w.b, name).receive);
    assert_eq!(recv(&mut w.ipc, w.b, name).data, vec![5]);
    assert_eq!(w.ipc.send_rights(port), 1, "the kernel's send right");
}

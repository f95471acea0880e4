//! Mach IPC: ports, rights, per-task name spaces, messages, port sets and
//! notifications.
//!
//! This module is pure state. It never blocks and never calls into the VM;
//! what other layers must react to (a port lost its last send right, a port
//! died, a message was queued) it reports as [`IpcEvent`]s, which the kernel
//! drains after every operation (`crate::kernel`).
//!
//! Rights follow Mach:
//!
//! 1. A port has exactly one receive right, held by a space, by the kernel
//!    (a kernel-object port), or in transit inside a message.
//! 2. A space names each port it holds send/receive rights for with one
//!    name, with a user-reference count for send rights; every send-once
//!    right gets a name of its own.
//! 3. `srights` counts send rights outside the receiver: one per space that
//!    holds any, one per right in transit, one per kernel reference. When it
//!    drops to zero, a no-senders notification is due.
//! 4. When the receive right is destroyed the port dies: queued messages are
//!    destroyed, send rights become dead names, dead-name requests fire.

mod message;

pub use machvm_protocol::ipc::{Disposition, PortName, RightKind};
pub use message::{KMessage, ReceivedMessage, UserMessage};

use crate::types::{KernError, Result};
use std::collections::{HashMap, VecDeque};

/// `MACH_NOTIFY_NO_SENDERS`
pub const MACH_NOTIFY_NO_SENDERS: u32 = 0o106;
/// `MACH_NOTIFY_DEAD_NAME`
pub const MACH_NOTIFY_DEAD_NAME: u32 = 0o110;

/// `MACH_PORT_QLIMIT_DEFAULT`: the most messages a task's sends may queue
/// on one port. A send to a full queue is `MACH_SEND_TIMED_OUT` (at once,
/// or after the sender's timeout); a message to a send-once right (a
/// reply) and the kernel's own messages are never held back, as in Mach.
pub const QLIMIT: usize = 5;

/// A kernel-internal port identity; never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortId(pub u64);

/// An IPC name space (one per task).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpaceId(pub u32);

/// Which notification a space asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyKind {
    /// `MACH_NOTIFY_NO_SENDERS` on a port whose receive right the space holds.
    NoSenders,
    /// `MACH_NOTIFY_DEAD_NAME` for a send right the space holds.
    DeadName,
}

/// What the rest of the kernel must react to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpcEvent {
    /// A kernel-held receive right lost its last sender.
    NoSenders(PortId),
    /// A port died (its receive right was destroyed).
    PortDied(PortId),
    /// A message was queued on a port (wake its receivers).
    Queued(PortId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Receiver {
    Space(SpaceId),
    Kernel,
    InTransit,
    Dead,
}

#[derive(Debug)]
struct Port {
    receiver: Receiver,
    queue: VecDeque<KMessage>,
    srights: u32,
    sorights: u32,
    mscount: u32,
    pset: Option<PortName>,
    nosenders: Option<PortId>,
    deadname_requests: Vec<(SpaceId, PortName, PortId)>,
}

#[derive(Debug, Default, Clone)]
struct Entry {
    port: Option<PortId>,
    receive: bool,
    send_urefs: u32,
    send_once: bool,
    dead_urefs: u32,
    /// Some for a port set: its members.
    members: Option<Vec<PortId>>,
}

#[derive(Debug, Default)]
struct Space {
    entries: HashMap<PortName, Entry>,
    by_port: HashMap<PortId, PortName>,
    next_name: u32,
    rr: usize,
}

impl Space {
    fn fresh_name(&mut self) -> PortName {
        // Mach names look like 0x103, 0x203…; any nonzero value will do.
        // The counter goes round after 2^24 names: skip those in use.
        loop {
            self.next_name = self.next_name.wrapping_add(1);
            let name = PortName((self.next_name << 8) | 3);
            if !self.entries.contains_key(&name) {
                return name;
            }
        }
    }
}

/// What a name denotes in a space (`mach_port_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NameInfo {
    pub port: Option<PortId>,
    pub receive: bool,
    pub send_urefs: u32,
    pub send_once: bool,
    pub dead_urefs: u32,
    pub port_set: bool,
}

/// The whole IPC state of the kernel.
#[derive(Debug, Default)]
pub struct Ipc {
    ports: HashMap<PortId, Port>,
    spaces: HashMap<SpaceId, Space>,
    next_port: u64,
    next_space: u32,
    events: Vec<IpcEvent>,
}

/// `MACH_PORT_UREFS_MAX`
const UREFS_MAX: u32 = u32::MAX / 2;

impl Ipc {
    pub fn new() -> Ipc {
        Ipc::default()
    }

    /// Takes the events produced since the last call.
    pub fn drain_events(&mut self) -> Vec<IpcEvent> {
        std::mem::take(&mut self.events)
    }

    // ----- spaces -----

    /// Creates an empty name space.
    pub fn space_create(&mut self) -> SpaceId {
        self.next_space += 1;
        let id = SpaceId(self.next_space);
        self.spaces.insert(id, Space::default());
        id
    }

    /// Destroys a space, releasing every right it holds (its receive rights
    /// die, its send rights are released).
    pub fn space_destroy(&mut self, space: SpaceId) {
        let Some(sp) = self.spaces.remove(&space) else {
            return;
        };
        for (_, e) in sp.entries {
            self.release_entry(e);
        }
    }

    fn release_entry(&mut self, e: Entry) {
        let Some(port) = e.port else { return };
        if e.receive {
            // The receiver's own send urefs were never counted in srights.
            self.port_destroy(port);
        } else if e.send_urefs > 0 {
            self.release_send(port);
        }
        if e.send_once {
            self.release_send_once(port);
        }
    }

    fn space(&mut self, space: SpaceId) -> Result<&mut Space> {
        self.spaces.get_mut(&space).ok_or(KernError::InvalidTask)
    }

    fn entry(&self, space: SpaceId, name: PortName) -> Result<&Entry> {
        self.spaces.get(&space).ok_or(KernError::InvalidTask)?.entries.get(&name).ok_or(KernError::InvalidName)
    }

    /// `mach_port_type` and more: what `name` denotes in `space`.
    pub fn lookup(&self, space: SpaceId, name: PortName) -> Result<NameInfo> {
        let e = self.entry(space, name)?;
        Ok(NameInfo {
            port: e.port,
            receive: e.receive,
            send_urefs: e.send_urefs,
            send_once: e.send_once,
            dead_urefs: e.dead_urefs,
            port_set: e.members.is_some(),
        })
    }

    /// The port behind a send or receive right named `name`.
    pub fn port_of(&self, space: SpaceId, name: PortName) -> Result<PortId> {
        let e = self.entry(space, name)?;
        if e.dead_urefs > 0 {
            return Err(KernError::InvalidCapability);
        }
        match e.port {
            Some(p) if e.receive || e.send_urefs > 0 || e.send_once => Ok(p),
            _ => Err(KernError::InvalidRight),
        }
    }

    /// The port behind a send right, or the receive right, named `name`:
    /// what a call that names a memory object, a proxy or a privileged
    /// port accepts. A send-once right alone is `KERN_INVALID_RIGHT`: the
    /// kernel would end up holding a counted send right the receiver never
    /// made, and could use a one-shot right any number of times.
    pub fn send_port_of(&self, space: SpaceId, name: PortName) -> Result<PortId> {
        let port = self.port_of(space, name)?;
        let e = self.entry(space, name)?;
        if e.receive || e.send_urefs > 0 {
            Ok(port)
        } else {
            Err(KernError::InvalidRight)
        }
    }

    /// How many names `space` holds (0 for no such space).
    pub fn names_in(&self, space: SpaceId) -> usize {
        self.spaces.get(&space).map_or(0, |s| s.entries.len())
    }

    /// Is `port`'s receive right the kernel's (a kernel object)?
    pub fn is_kernel_port(&self, port: PortId) -> bool {
        self.ports.get(&port).is_some_and(|p| p.receiver == Receiver::Kernel)
    }

    /// The space holding `port`'s receive right, if a space does.
    pub fn receiver_space(&self, port: PortId) -> Option<SpaceId> {
        match self.ports.get(&port)?.receiver {
            Receiver::Space(s) => Some(s),
            _ => None,
        }
    }

    /// The name `space` uses for `port`, if it holds a send or receive right.
    pub fn name_of(&self, space: SpaceId, port: PortId) -> Option<PortName> {
        self.spaces.get(&space)?.by_port.get(&port).copied()
    }

    // ----- ports -----

    fn new_port(&mut self, receiver: Receiver) -> PortId {
        self.next_port += 1;
        let id = PortId(self.next_port);
        self.ports.insert(
            id,
            Port {
                receiver,
                queue: VecDeque::new(),
                srights: 0,
                sorights: 0,
                mscount: 0,
                pset: None,
                nosenders: None,
                deadname_requests: Vec::new(),
            },
        );
        id
    }

    /// `mach_port_allocate(MACH_PORT_RIGHT_RECEIVE)`.
    pub fn port_allocate(&mut self, space: SpaceId) -> Result<PortName> {
        self.space(space)?;
        let port = self.new_port(Receiver::Space(space));
        let sp = self.space(space)?;
        let name = sp.fresh_name();
        sp.entries.insert(name, Entry { port: Some(port), receive: true, ..Entry::default() });
        sp.by_port.insert(port, name);
        Ok(name)
    }

    /// A port whose receive right the kernel holds (a kernel object).
    pub fn port_allocate_kernel(&mut self) -> PortId {
        self.new_port(Receiver::Kernel)
    }

    /// A port whose receive right the kernel is about to send in a message
    /// (`memory_object_create` hands the default pager a new port).
    pub fn port_allocate_in_transit(&mut self) -> PortId {
        self.new_port(Receiver::InTransit)
    }

    /// `mach_port_allocate(MACH_PORT_RIGHT_PORT_SET)`.
    pub fn pset_allocate(&mut self, space: SpaceId) -> Result<PortName> {
        let sp = self.space(space)?;
        let name = sp.fresh_name();
        sp.entries.insert(name, Entry { members: Some(Vec::new()), ..Entry::default() });
        Ok(name)
    }

    /// `mach_port_move_member`: puts the receive right `member` into the
    /// port set `set` (or takes it out of any set when `set` is `None`).
    pub fn move_member(&mut self, space: SpaceId, member: PortName, set: Option<PortName>) -> Result<()> {
        let e = self.entry(space, member)?;
        if !e.receive {
            return Err(KernError::InvalidRight);
        }
        let port = e.port.ok_or(KernError::InvalidRight)?;
        if let Some(s) = set {
            if self.entry(space, s)?.members.is_none() {
                return Err(KernError::InvalidRight);
            }
        }
        self.leave_pset(space, port);
        if let Some(s) = set {
            let sp = self.space(space)?;
            sp.entries.get_mut(&s).and_then(|e| e.members.as_mut()).ok_or(KernError::InvalidRight)?.push(port);
            self.ports.get_mut(&port).ok_or(KernError::InvalidName)?.pset = Some(s);
        }
        Ok(())
    }

    fn leave_pset(&mut self, space: SpaceId, port: PortId) {
        let Some(p) = self.ports.get_mut(&port) else {
            return;
        };
        let Some(set) = p.pset.take() else { return };
        if let Some(members) =
            self.spaces.get_mut(&space).and_then(|sp| sp.entries.get_mut(&set)).and_then(|e| e.members.as_mut())
        {
            members.retain(|&m| m != port);
        }
    }

    /// Is the port alive (its receive right not destroyed)?
    pub fn port_alive(&self, port: PortId) -> bool {
        self.ports.get(&port).is_some_and(|p| p.receiver != Receiver::Dead)
    }

    /// How many send rights exist for the port (for tests and reports).
    pub fn send_rights(&self, port: PortId) -> u32 {
        self.ports.get(&port).map_or(0, |p| p.srights)
    }

    /// Makes a send right the kernel will hold (`ipc_port_make_send`).
    pub fn kernel_make_send(&mut self, port: PortId) {
        if let Some(p) = self.ports.get_mut(&port) {
            p.srights += 1;
            p.mscount = p.mscount.wrapping_add(1);
        }
    }

    /// Takes an extra reference on a send right the kernel already holds
    /// (`ipc_port_copy_send`).
    pub fn kernel_copy_send(&mut self, port: PortId) {
        if let Some(p) = self.ports.get_mut(&port) {
            p.srights += 1;
        }
    }

    /// Releases one send right (`ipc_port_release_send`). The last one
    /// triggers the no-senders notification.
    pub fn release_send(&mut self, port: PortId) {
        let Some(p) = self.ports.get_mut(&port) else {
            return;
        };
        p.srights = p.srights.saturating_sub(1);
        if p.srights > 0 || p.receiver == Receiver::Dead {
            return;
        }
        let mscount = p.mscount;
        if p.receiver == Receiver::Kernel {
            self.events.push(IpcEvent::NoSenders(port));
        }
        if let Some(notify) = p.nosenders.take() {
            let msg = KMessage::notification(notify, MACH_NOTIFY_NO_SENDERS, mscount.to_le_bytes().to_vec());
            let _ = self.kernel_send(msg);
        }
    }

    /// Releases one send-once right.
    pub fn release_send_once(&mut self, port: PortId) {
        if let Some(p) = self.ports.get_mut(&port) {
            p.sorights = p.sorights.saturating_sub(1);
        }
    }

    /// Destroys a receive right: the port dies.
    pub fn port_destroy(&mut self, port: PortId) {
        let Some(p) = self.ports.get_mut(&port) else {
            return;
        };
        if p.receiver == Receiver::Dead {
            return;
        }
        if let Receiver::Space(sp) = p.receiver {
            self.leave_pset(sp, port);
            if let Some(space) = self.spaces.get_mut(&sp) {
                if let Some(name) = space.by_port.get(&port).copied() {
                    if let Some(e) = space.entries.get_mut(&name) {
                        e.receive = false;
                        if e.send_urefs == 0 {
                            space.entries.remove(&name);
                            space.by_port.remove(&port);
                        }
                    }
                }
            }
        }
        let p = self.ports.get_mut(&port).expect("port checked above");
        let former = p.receiver;
        p.receiver = Receiver::Dead;
        let queue = std::mem::take(&mut p.queue);
        let requests = std::mem::take(&mut p.deadname_requests);
        let nosenders = p.nosenders.take();
        for m in queue {
            self.destroy_message(m);
        }
        if let Some(n) = nosenders {
            self.release_send_once(n);
        }
        // Every send right held in a space becomes a dead name, which
        // holds no send right.
        let mut released = 0;
        for (&id, space) in self.spaces.iter_mut() {
            if let Some(name) = space.by_port.get(&port).copied() {
                if let Some(e) = space.entries.get_mut(&name) {
                    if e.send_urefs > 0 {
                        e.dead_urefs = e.send_urefs;
                        e.send_urefs = 0;
                        // The receiver's own send right was never counted.
                        if former != Receiver::Space(id) {
                            released += 1;
                        }
                    }
                }
            }
        }
        if let Some(p) = self.ports.get_mut(&port) {
            p.srights = p.srights.saturating_sub(released);
        }
        for (_space, name, notify) in requests {
            let msg = KMessage::notification(notify, MACH_NOTIFY_DEAD_NAME, name.0.to_le_bytes().to_vec());
            let _ = self.kernel_send(msg);
        }
        self.events.push(IpcEvent::PortDied(port));
    }

    /// `mach_port_destroy`: drops every right under `name`.
    pub fn name_destroy(&mut self, space: SpaceId, name: PortName) -> Result<()> {
        let sp = self.space(space)?;
        let e = sp.entries.remove(&name).ok_or(KernError::InvalidName)?;
        if let Some(p) = e.port {
            if sp.by_port.get(&p) == Some(&name) {
                sp.by_port.remove(&p);
            }
        }
        if let Some(members) = &e.members {
            for m in members.clone() {
                if let Some(p) = self.ports.get_mut(&m) {
                    p.pset = None;
                }
            }
        }
        self.release_entry(e);
        Ok(())
    }

    /// `mach_port_deallocate`: releases one user reference of a send right,
    /// send-once right or dead name.
    pub fn deallocate(&mut self, space: SpaceId, name: PortName) -> Result<()> {
        let e = self.entry(space, name)?.clone();
        if e.send_once {
            return self.name_destroy(space, name);
        }
        if e.dead_urefs > 0 {
            return self.mod_refs(space, name, RightKind::DeadName, -1);
        }
        if e.send_urefs > 0 {
            return self.mod_refs(space, name, RightKind::Send, -1);
        }
        Err(KernError::InvalidRight)
    }

    /// `mach_port_mod_refs` for send rights and dead names (and `-1` on a
    /// receive or send-once right, which destroys it).
    pub fn mod_refs(&mut self, space: SpaceId, name: PortName, right: RightKind, delta: i32) -> Result<()> {
        let e = self.entry(space, name)?.clone();
        let port = e.port;
        match right {
            RightKind::Receive => {
                if !e.receive || !(-1..=0).contains(&delta) {
                    return Err(if e.receive { KernError::InvalidValue } else { KernError::InvalidRight });
                }
                if delta == -1 {
                    if let Some(p) = port {
                        self.port_destroy(p);
                    }
                }
                Ok(())
            }
            RightKind::Send | RightKind::DeadName => {
                let have = if right == RightKind::Send { e.send_urefs } else { e.dead_urefs };
                if have == 0 {
                    return Err(KernError::InvalidRight);
                }
                let new = have as i64 + delta as i64;
                if new < 0 {
                    return Err(KernError::InvalidValue);
                }
                if new > UREFS_MAX as i64 {
                    return Err(KernError::UrefsOverflow);
                }
                let sp = self.space(space)?;
                let ent = sp.entries.get_mut(&name).ok_or(KernError::InvalidName)?;
                if right == RightKind::Send {
                    ent.send_urefs = new as u32;
                } else {
                    ent.dead_urefs = new as u32;
                }
                let emptied = new == 0;
                if emptied && !ent.receive && ent.send_urefs == 0 && ent.dead_urefs == 0 {
                    sp.entries.remove(&name);
                    if let Some(p) = port {
                        sp.by_port.remove(&p);
                    }
                }
                if emptied && right == RightKind::Send && !e.receive {
                    if let Some(p) = port {
                        self.release_send(p);
                    }
                }
                Ok(())
            }
            RightKind::SendOnce => {
                if !e.send_once {
                    return Err(KernError::InvalidRight);
                }
                match delta {
                    0 => Ok(()),
                    -1 => self.name_destroy(space, name),
                    _ => Err(KernError::InvalidValue),
                }
            }
        }
    }

    /// `mach_port_request_notification`: `notify` names a receive right in
    /// the same space that will get the notification (via a send-once
    /// right the kernel makes).
    pub fn request_notification(
        &mut self,
        space: SpaceId,
        name: PortName,
        kind: NotifyKind,
        notify: PortName,
    ) -> Result<()> {
        let e = self.entry(space, name)?.clone();
        let target = self.entry(space, notify)?.clone();
        if !target.receive {
            return Err(KernError::InvalidCapability);
        }
        let port = e.port.ok_or(KernError::InvalidRight)?;
        let notify_port = target.port.ok_or(KernError::InvalidRight)?;
        match kind {
            NotifyKind::NoSenders => {
                if !e.receive {
                    return Err(KernError::InvalidRight);
                }
                let p = self.ports.get_mut(&port).ok_or(KernError::InvalidName)?;
                if let Some(old) = p.nosenders.replace(notify_port) {
                    self.release_send_once(old);
                }
                self.ports.get_mut(&notify_port).ok_or(KernError::InvalidName)?.sorights += 1;
                // Mach sends at once if there are no senders already.
                if self.ports[&port].srights == 0 {
                    let p = self.ports.get_mut(&port).expect("looked up above");
                    let n = p.nosenders.take().expect("just set");
                    let mscount = p.mscount;
                    let _ = self.kernel_send(KMessage::notification(
                        n,
                        MACH_NOTIFY_NO_SENDERS,
                        mscount.to_le_bytes().to_vec(),
                    ));
                }
            }
            NotifyKind::DeadName => {
                if e.send_urefs == 0 && !e.send_once && e.dead_urefs == 0 {
                    return Err(KernError::InvalidRight);
                }
                self.ports.get_mut(&notify_port).ok_or(KernError::InvalidName)?.sorights += 1;
                if e.dead_urefs > 0 || !self.port_alive(port) {
                    let _ = self.kernel_send(KMessage::notification(
                        notify_port,
                        MACH_NOTIFY_DEAD_NAME,
                        name.0.to_le_bytes().to_vec(),
                    ));
                } else {
                    self.ports.get_mut(&port).ok_or(KernError::InvalidName)?.deadname_requests.push((
                        space,
                        name,
                        notify_port,
                    ));
                }
            }
        }
        Ok(())
    }

    // ----- rights in transit -----

    /// Checks that `copyin` would succeed, changing nothing.
    fn check_copyin(&self, space: SpaceId, name: PortName, disp: Disposition) -> Result<()> {
        let e = self.entry(space, name).map_err(|_| KernError::InvalidName)?;
        Self::entry_allows(e, disp)
    }

    /// Does the entry hold the right `disp` takes or makes?
    fn entry_allows(e: &Entry, disp: Disposition) -> Result<()> {
        let ok = match disp {
            Disposition::MoveReceive | Disposition::MakeSend | Disposition::MakeSendOnce => e.receive,
            Disposition::MoveSend | Disposition::CopySend => e.send_urefs > 0,
            Disposition::MoveSendOnce => e.send_once,
        };
        if ok {
            Ok(())
        } else if e.dead_urefs > 0 {
            Err(KernError::InvalidCapability)
        } else {
            Err(KernError::InvalidRight)
        }
    }

    /// Checks that every right of `msg` can be copied in, in the order
    /// `send` copies them in (destination, reply, body), each seeing what
    /// the ones before it took away. Changes nothing.
    fn check_send(&self, space: SpaceId, msg: &UserMessage) -> Result<()> {
        let mut left = HashMap::new();
        if msg.dest_disposition == Disposition::MoveReceive {
            return Err(KernError::SendInvalidDest);
        }
        let dest = self
            .sim_copyin(space, &mut left, msg.dest, msg.dest_disposition)
            .map_err(|_| KernError::SendInvalidDest)?;
        if !self.port_alive(dest) {
            return Err(KernError::SendInvalidDest);
        }
        let once = matches!(msg.dest_disposition, Disposition::MoveSendOnce | Disposition::MakeSendOnce);
        if !once && self.ports.get(&dest).is_some_and(|p| p.receiver != Receiver::Kernel && p.queue.len() >= QLIMIT) {
            return Err(KernError::SendTimedOut);
        }
        if let Some((n, d)) = msg.reply {
            if d == Disposition::MoveReceive {
                return Err(KernError::SendInvalidReply);
            }
            self.sim_copyin(space, &mut left, n, d).map_err(|_| KernError::SendInvalidReply)?;
        }
        for &(n, d) in &msg.rights {
            let port = self.sim_copyin(space, &mut left, n, d).map_err(|_| KernError::SendInvalidRight)?;
            // A receive right queued on its own port could never be received.
            if d == Disposition::MoveReceive && port == dest {
                return Err(KernError::SendInvalidRight);
            }
        }
        Ok(())
    }

    /// `copyin` on a scratch copy of the space's entries (`left`: what each
    /// name still holds, `None` once it is gone).
    fn sim_copyin(
        &self,
        space: SpaceId,
        left: &mut HashMap<PortName, Option<Entry>>,
        name: PortName,
        disp: Disposition,
    ) -> Result<PortId> {
        let slot = match left.entry(name) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(self.entry(space, name).ok().cloned()),
        };
        let e = slot.as_mut().ok_or(KernError::InvalidName)?;
        Self::entry_allows(e, disp)?;
        let port = e.port.ok_or(KernError::InvalidRight)?;
        let gone = match disp {
            Disposition::MoveSend => {
                e.send_urefs -= 1;
                e.send_urefs == 0 && !e.receive
            }
            Disposition::MoveSendOnce => true,
            Disposition::MoveReceive => {
                e.receive = false;
                e.send_urefs == 0
            }
            Disposition::CopySend | Disposition::MakeSend | Disposition::MakeSendOnce => false,
        };
        if gone {
            *slot = None;
        }
        Ok(port)
    }

    /// Takes a right out of a space for a message or a kernel call.
    pub fn copyin(&mut self, space: SpaceId, name: PortName, disp: Disposition) -> Result<(PortId, RightKind)> {
        self.check_copyin(space, name, disp)?;
        let e = self.entry(space, name)?.clone();
        let port = e.port.ok_or(KernError::InvalidRight)?;
        match disp {
            Disposition::MakeSend => {
                self.kernel_make_send(port);
                Ok((port, RightKind::Send))
            }
            Disposition::CopySend => {
                self.kernel_copy_send(port);
                Ok((port, RightKind::Send))
            }
            Disposition::MakeSendOnce => {
                self.ports.get_mut(&port).ok_or(KernError::InvalidName)?.sorights += 1;
                Ok((port, RightKind::SendOnce))
            }
            Disposition::MoveSend => {
                // The space's send right travels on: srights is unchanged
                // unless the space keeps other urefs, or is the receiver
                // (whose own send right was not counted).
                let sp = self.space(space)?;
                let ent = sp.entries.get_mut(&name).ok_or(KernError::InvalidName)?;
                ent.send_urefs -= 1;
                if ent.send_urefs > 0 || ent.receive {
                    self.kernel_copy_send(port);
                } else {
                    sp.entries.remove(&name);
                    sp.by_port.remove(&port);
                }
                Ok((port, RightKind::Send))
            }
            Disposition::MoveSendOnce => {
                let sp = self.space(space)?;
                sp.entries.remove(&name);
                Ok((port, RightKind::SendOnce))
            }
            Disposition::MoveReceive => {
                self.leave_pset(space, port);
                let sp = self.space(space)?;
                let ent = sp.entries.get_mut(&name).ok_or(KernError::InvalidName)?;
                ent.receive = false;
                let keeps_send = ent.send_urefs > 0;
                if !keeps_send {
                    sp.entries.remove(&name);
                    sp.by_port.remove(&port);
                }
                let p = self.ports.get_mut(&port).ok_or(KernError::InvalidName)?;
                p.receiver = Receiver::InTransit;
                if keeps_send {
                    // No longer the receiver's: the space's send right counts now.
                    p.srights += 1;
                }
                Ok((port, RightKind::Receive))
            }
        }
    }

    /// Puts a right (already counted, e.g. from `copyin` or
    /// `kernel_make_send`) into a space and returns its name.
    pub fn copyout(&mut self, space: SpaceId, port: PortId, kind: RightKind) -> Result<PortName> {
        if !self.spaces.contains_key(&space) {
            self.release_right(port, kind);
            return Err(KernError::InvalidTask);
        }
        let alive = self.port_alive(port);
        match kind {
            RightKind::Send | RightKind::DeadName => {
                let sp = self.spaces.get_mut(&space).expect("checked");
                if let Some(name) = sp.by_port.get(&port).copied() {
                    let e = sp.entries.get_mut(&name).expect("by_port is consistent");
                    let mut merged = false;
                    if alive && kind == RightKind::Send {
                        merged = e.send_urefs > 0 || e.receive;
                        e.send_urefs = e.send_urefs.saturating_add(1).min(UREFS_MAX);
                    } else {
                        e.dead_urefs = e.dead_urefs.saturating_add(1).min(UREFS_MAX);
                    }
                    // Merged into the right the space already counts (or
                    // the receiver's, which is not counted), or turned
                    // into a dead name: the right in transit is gone.
                    if merged || (!alive && kind == RightKind::Send) {
                        self.release_send(port);
                    }
                    return Ok(name);
                }
                let name = sp.fresh_name();
                let mut e = Entry { port: Some(port), ..Entry::default() };
                if alive && kind == RightKind::Send {
                    e.send_urefs = 1;
                } else {
                    e.dead_urefs = 1;
                }
                sp.entries.insert(name, e);
                sp.by_port.insert(port, name);
                if !alive && kind == RightKind::Send {
                    // A dead name holds no send right.
                    self.release_send(port);
                }
                Ok(name)
            }
            RightKind::SendOnce => {
                let sp = self.spaces.get_mut(&space).expect("checked");
                let name = sp.fresh_name();
                sp.entries.insert(name, Entry { port: Some(port), send_once: true, ..Entry::default() });
                Ok(name)
            }
            RightKind::Receive => {
                let sp = self.spaces.get_mut(&space).expect("checked");
                let mut had_send = false;
                let name = match sp.by_port.get(&port).copied() {
                    Some(n) => {
                        let e = sp.entries.get_mut(&n).expect("consistent");
                        e.receive = true;
                        had_send = e.send_urefs > 0;
                        n
                    }
                    None => {
                        let n = sp.fresh_name();
                        sp.entries.insert(n, Entry { port: Some(port), receive: true, ..Entry::default() });
                        sp.by_port.insert(port, n);
                        n
                    }
                };
                if let Some(p) = self.ports.get_mut(&port) {
                    p.receiver = Receiver::Space(space);
                }
                if had_send {
                    // The space's send right is now held by the receiver,
                    // which is not counted: maybe nobody else sends.
                    self.release_send(port);
                }
                Ok(name)
            }
        }
    }

    /// Drops a right that is in transit (not in any space).
    pub fn release_right(&mut self, port: PortId, kind: RightKind) {
        match kind {
            RightKind::Send => self.release_send(port),
            RightKind::SendOnce => self.release_send_once(port),
            RightKind::Receive => self.port_destroy(port),
            RightKind::DeadName => {}
        }
    }

    /// Destroys a message that will never be received, releasing its rights.
    pub fn destroy_message(&mut self, m: KMessage) {
        if let Some((p, k)) = m.reply {
            self.release_right(p, k);
        }
        for (p, k) in m.rights {
            self.release_right(p, k);
        }
        if let Some(k) = m.dest_right {
            self.release_right(m.dest, k);
        }
    }

    // ----- messages -----

    /// `mach_msg(MACH_SEND_MSG)` from a space: copies in every right (all
    /// checked before any is moved), then queues the message. If the
    /// destination is a kernel object the message is returned to the
    /// caller, which is the kernel, to handle.
    pub fn send(&mut self, space: SpaceId, msg: UserMessage) -> Result<Option<KMessage>> {
        // Decode: every right must be there before anything moves.
        self.check_send(space, &msg)?;
        // Invoke: these cannot fail now.
        let (dest, dkind) = self.copyin(space, msg.dest, msg.dest_disposition)?;
        let reply = match msg.reply {
            Some((n, d)) => Some(self.copyin(space, n, d)?),
            None => None,
        };
        let mut rights = Vec::with_capacity(msg.rights.len());
        for (n, d) in msg.rights {
            rights.push(self.copyin(space, n, d)?);
        }
        let k =
            KMessage { dest, dest_right: Some(dkind), reply, id: msg.id, data: msg.data, rights, from_kernel: false };
        if self.ports.get(&dest).map(|p| p.receiver) == Some(Receiver::Kernel) {
            return Ok(Some(k));
        }
        self.kernel_send(k).map(|()| None)
    }

    /// Queues a message the kernel built (its rights already counted).
    /// A dead destination destroys the message: `MACH_SEND_INVALID_DEST`.
    pub fn kernel_send(&mut self, mut m: KMessage) -> Result<()> {
        let dest = m.dest;
        let receiver = self.ports.get(&dest).map(|p| p.receiver);
        match receiver {
            None | Some(Receiver::Dead) => {
                self.destroy_message(m);
                Err(KernError::SendInvalidDest)
            }
            Some(Receiver::Kernel) => {
                // Kernel objects handle their messages synchronously; one
                // queued by the kernel itself has nowhere to go.
                self.destroy_message(m);
                Err(KernError::MigBadId)
            }
            Some(_) => {
                // The send right used to send is consumed by delivery.
                if let Some(k) = m.dest_right.take() {
                    self.release_right(dest, k);
                }
                self.ports.get_mut(&dest).expect("checked").queue.push_back(m);
                self.events.push(IpcEvent::Queued(dest));
                Ok(())
            }
        }
    }

    /// `mach_msg(MACH_RCV_MSG)` without blocking: takes the next message
    /// from the port (or any member of the port set) named `name`.
    pub fn try_receive(&mut self, space: SpaceId, name: PortName) -> Result<Option<ReceivedMessage>> {
        let e = self.entry(space, name).map_err(|_| KernError::RcvInvalidName)?.clone();
        let (port, msg) = if let Some(members) = &e.members {
            let sp = self.spaces.get_mut(&space).ok_or(KernError::RcvInvalidName)?;
            let n = members.len();
            let start = sp.rr;
            let mut found = None;
            for i in 0..n {
                let p = members[(start + i) % n];
                if self.ports.get(&p).is_some_and(|pp| !pp.queue.is_empty()) {
                    found = Some(p);
                    self.spaces.get_mut(&space).expect("checked").rr = start + i + 1;
                    break;
                }
            }
            let Some(p) = found else { return Ok(None) };
            (p, self.ports.get_mut(&p).and_then(|pp| pp.queue.pop_front()))
        } else if e.receive {
            let p = e.port.ok_or(KernError::RcvInvalidName)?;
            (p, self.ports.get_mut(&p).and_then(|pp| pp.queue.pop_front()))
        } else {
            return Err(KernError::RcvInvalidName);
        };
        let Some(m) = msg else { return Ok(None) };
        let local = self.name_of(space, port).ok_or(KernError::RcvPortDied)?;
        let reply = match m.reply {
            Some((p, k)) => Some(self.copyout(space, p, k)?),
            None => None,
        };
        let mut rights = Vec::with_capacity(m.rights.len());
        for (p, k) in m.rights {
            let name = self.copyout(space, p, k)?;
            let shown = if k == RightKind::Send && !self.port_alive(p) { RightKind::DeadName } else { k };
            rights.push((name, shown));
        }
        Ok(Some(ReceivedMessage { local, id: m.id, data: m.data, reply, rights, from_kernel: m.from_kernel }))
    }

    /// Does the port (or set) named `name` have a message waiting?
    pub fn has_message(&self, space: SpaceId, name: PortName) -> bool {
        let Ok(e) = self.entry(space, name) else {
            return false;
        };
        let nonempty = |p: &PortId| self.ports.get(p).is_some_and(|pp| !pp.queue.is_empty());
        match &e.members {
            Some(m) => m.iter().any(nonempty),
            None => e.port.as_ref().is_some_and(nonempty),
        }
    }

    /// Messages queued on the ports whose receive right `space` holds.
    pub fn queued_in(&self, space: SpaceId) -> usize {
        self.ports.values().filter(|p| p.receiver == Receiver::Space(space)).map(|p| p.queue.len()).sum()
    }

    /// Number of messages queued on a port.
    pub fn queue_len(&self, port: PortId) -> usize {
        self.ports.get(&port).map_or(0, |p| p.queue.len())
    }

    /// Forgets a dead port that no space or message references any more.
    pub fn reap(&mut self, port: PortId) {
        if let Some(p) = self.ports.get(&port) {
            if p.receiver == Receiver::Dead && p.srights == 0 && p.sorights == 0 {
                self.ports.remove(&port);
            }
        }
    }
}

#[cfg(test)]
mod tests;

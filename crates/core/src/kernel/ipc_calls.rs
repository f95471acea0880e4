//! The IPC calls tasks (and pagers, which are tasks) make: ports, rights,
//! port sets, notifications, `mach_msg`. Messages to kernel objects are
//! handled here, in the sender's thread, as Mach's kernel server does.

use super::{KObject, KState, Kernel, TaskId};
use crate::ipc::{Disposition, NameInfo, NotifyKind, PortName, ReceivedMessage, RightKind, UserMessage};
use crate::sync::{Arc, Guard};
use crate::types::{KernError, Result};
use crate::wait::{Poll, Step, WaitBy, WaitKey, WaitTicket, Waker};
use std::time::{Duration, Instant};

impl Kernel {
    /// `mach_port_allocate(MACH_PORT_RIGHT_RECEIVE)`.
    ///
    /// Errors: `KERN_RESOURCE_SHORTAGE` (the space holds
    /// [`crate::TaskLimits::port_names`] names), `KERN_INVALID_TASK`.
    pub fn port_allocate(&self, task: TaskId) -> Result<PortName> {
        self.with(|st| {
            let space = st.task(task)?.space;
            st.check_names(space)?;
            st.ipc.port_allocate(space)
        })
    }

    /// `mach_port_allocate(MACH_PORT_RIGHT_PORT_SET)`.
    ///
    /// Errors: `KERN_RESOURCE_SHORTAGE` (the space holds
    /// [`crate::TaskLimits::port_names`] names), `KERN_INVALID_TASK`.
    pub fn port_set_allocate(&self, task: TaskId) -> Result<PortName> {
        self.with(|st| {
            let space = st.task(task)?.space;
            st.check_names(space)?;
            st.ipc.pset_allocate(space)
        })
    }

    /// `mach_port_move_member`: puts the receive right `member` into the
    /// port set `set`, or takes it out of its set with `None`.
    ///
    /// Errors: `KERN_INVALID_NAME`, `KERN_INVALID_RIGHT` (`member` is no
    /// receive right, or `set` no port set), `KERN_INVALID_TASK`.
    pub fn port_move_member(&self, task: TaskId, member: PortName, set: Option<PortName>) -> Result<()> {
        self.with(|st| {
            let space = st.task(task)?.space;
            st.ipc.move_member(space, member, set)?;
            // Receivers on the set must look at the messages it brings.
            st.waits.mark(WaitKey::Space(space));
            Ok(())
        })
    }

    /// `mach_port_insert_right` with `MACH_MSG_TYPE_MAKE_SEND`: the holder
    /// of a receive right adds a send right under the same name.
    ///
    /// Errors: `KERN_INVALID_NAME`, `KERN_INVALID_RIGHT` (not a receive
    /// right), `KERN_INVALID_CAPABILITY` (a dead name), `KERN_INVALID_TASK`.
    pub fn port_make_send(&self, task: TaskId, name: PortName) -> Result<()> {
        self.with(|st| {
            let space = st.task(task)?.space;
            let (port, kind) = st.ipc.copyin(space, name, Disposition::MakeSend)?;
            st.ipc.copyout(space, port, kind).map(|_| ())
        })
    }

    /// Gives `to` a right taken from `from`'s space with `disposition`, as
    /// sending it in a message would; returns its name in `to`.
    ///
    /// Errors: `KERN_INVALID_NAME`, `KERN_INVALID_RIGHT`,
    /// `KERN_INVALID_CAPABILITY` (a dead name), `KERN_INVALID_TASK`.
    pub fn port_transfer(
        &self,
        from: TaskId,
        name: PortName,
        disposition: Disposition,
        to: TaskId,
    ) -> Result<PortName> {
        self.with(|st| {
            let src = st.task(from)?.space;
            let dst = st.task(to)?.space;
            let (port, kind) = st.ipc.copyin(src, name, disposition)?;
            if disposition == Disposition::MoveReceive {
                // Receivers in `from` waiting on it must see it gone.
                st.waits.mark(WaitKey::Space(src));
            }
            st.ipc.copyout(dst, port, kind)
        })
    }

    /// `mach_port_deallocate`.
    ///
    /// Errors: `KERN_INVALID_NAME`, `KERN_INVALID_RIGHT`, `KERN_INVALID_TASK`.
    pub fn port_deallocate(&self, task: TaskId, name: PortName) -> Result<()> {
        self.with(|st| {
            let space = st.task(task)?.space;
            st.ipc.deallocate(space, name)
        })
    }

    /// `mach_port_destroy`: drops every right under `name`.
    ///
    /// Errors: `KERN_INVALID_NAME`, `KERN_INVALID_TASK`.
    pub fn port_destroy(&self, task: TaskId, name: PortName) -> Result<()> {
        self.with(|st| {
            let space = st.task(task)?.space;
            st.ipc.name_destroy(space, name)?;
            // Receivers waiting on the name (a port set has no port to
            // die) must see it gone.
            st.waits.mark(WaitKey::Space(space));
            Ok(())
        })
    }

    /// `mach_port_mod_refs`.
    ///
    /// Errors: `KERN_INVALID_NAME`, `KERN_INVALID_RIGHT`,
    /// `KERN_INVALID_VALUE`, `KERN_UREFS_OVERFLOW`, `KERN_INVALID_TASK`.
    pub fn port_mod_refs(&self, task: TaskId, name: PortName, right: RightKind, delta: i32) -> Result<()> {
        self.with(|st| {
            let space = st.task(task)?.space;
            st.ipc.mod_refs(space, name, right, delta)?;
            if right == RightKind::Receive {
                st.waits.mark(WaitKey::Space(space));
            }
            Ok(())
        })
    }

    /// `mach_port_type` and reference counts.
    ///
    /// Errors: `KERN_INVALID_NAME`, `KERN_INVALID_TASK`.
    pub fn port_lookup(&self, task: TaskId, name: PortName) -> Result<NameInfo> {
        self.with(|st| {
            let space = st.task(task)?.space;
            st.ipc.lookup(space, name)
        })
    }

    /// `mach_port_request_notification` (no-senders or dead-name), sent to
    /// the receive right `notify` in the same space.
    ///
    /// Errors: `KERN_INVALID_NAME` (either name), `KERN_INVALID_CAPABILITY`
    /// (`notify` is no receive right), `KERN_INVALID_RIGHT` (no-senders on
    /// a name that is no receive right, dead-name on one with no send,
    /// send-once or dead-name right), `KERN_INVALID_TASK`.
    pub fn port_request_notification(
        &self,
        task: TaskId,
        name: PortName,
        kind: NotifyKind,
        notify: PortName,
    ) -> Result<()> {
        self.with(|st| {
            let space = st.task(task)?.space;
            st.ipc.request_notification(space, name, kind, notify)
        })
    }

    /// `mach_msg(MACH_SEND_MSG)`. A message to a kernel object is handled
    /// at once: control ports take the EMMI; proxies, revoke rights and
    /// the host-privilege port take no messages (`MIG_BAD_ID`), and a
    /// forged notification to them is refused the same way and changes
    /// nothing.
    ///
    /// A port's queue holds at most [`crate::ipc::QLIMIT`] messages: a send
    /// to a full queue fails at once with `MACH_SEND_TIMED_OUT` and changes
    /// nothing ([`Kernel::msg_send_timeout`] waits for room instead).
    ///
    /// Errors: `MACH_SEND_INVALID_DEST`, `MACH_SEND_INVALID_RIGHT`,
    /// `MACH_SEND_INVALID_REPLY`, `MACH_SEND_TIMED_OUT`, `MIG_BAD_ID`,
    /// `MIG_BAD_ARGUMENTS`, and the error of an EMMI call that failed its
    /// checks; `KERN_INVALID_TASK`.
    pub fn msg_send(&self, task: TaskId, msg: UserMessage) -> Result<()> {
        self.msg_send_timeout(task, msg, Some(Duration::ZERO))
    }

    /// `mach_msg(MACH_SEND_MSG | MACH_SEND_TIMEOUT)`: as
    /// [`Kernel::msg_send`], but a send to a full queue waits up to
    /// `timeout` (`None`: for good) for room (a receive), then fails with
    /// `MACH_SEND_TIMED_OUT`; a port that dies meanwhile is
    /// `MACH_SEND_INVALID_DEST`.
    ///
    /// Errors: as [`Kernel::msg_send`].
    pub fn msg_send_timeout(&self, task: TaskId, msg: UserMessage, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut msg = Some(msg);
        let mut pending = None;
        loop {
            let by = if deadline.is_some_and(|d| Instant::now() >= d) { None } else { Some(WaitBy::Thread) };
            match self.send_step(task, &mut msg, by, pending.take())? {
                Step::Ready(()) => return Ok(()),
                Step::Pending(w) => {
                    w.sleep(self.lock_cell(), deadline);
                    pending = Some(w.ticket);
                }
            }
        }
    }

    /// `mach_msg(MACH_SEND_MSG)` without waiting: a send to a full queue is
    /// [`Poll::Pending`] with `waker` registered to be woken when there may
    /// be room (or the port died); the message is then sent again. Any
    /// other outcome is as [`Kernel::msg_send`]'s.
    ///
    /// Errors: as [`Kernel::msg_send`], but never `MACH_SEND_TIMED_OUT`.
    pub fn msg_send_poll(&self, task: TaskId, msg: UserMessage, waker: &Arc<dyn Waker>) -> Result<Poll<()>> {
        Ok(self.send_step(task, &mut Some(msg), Some(WaitBy::Caller(waker)), None)?.poll())
    }

    /// One try at a send: the message leaves `msg` unless the destination
    /// is a user port with a full queue and `by` may wait for room. With
    /// no waker, a full queue is `MACH_SEND_TIMED_OUT` (the send itself
    /// refuses it). A send-once right is never made to wait. `previous` is
    /// a registration to cancel.
    pub(crate) fn send_step(
        &self,
        task: TaskId,
        msg: &mut Option<UserMessage>,
        by: Option<WaitBy<'_>>,
        previous: Option<WaitTicket>,
    ) -> Result<Step<()>> {
        let mut st = self.lock();
        if let Some(t) = previous {
            st.waits.cancel(t);
        }
        let Some(m) = msg.as_ref() else {
            self.unlock(st);
            return Err(KernError::InvalidArgument);
        };
        let once = matches!(m.dest_disposition, Disposition::MoveSendOnce | Disposition::MakeSendOnce);
        let port = user_port(&st, task, m.dest);
        let full = port.filter(|&p| st.ipc.queue_len(p) >= crate::ipc::QLIMIT);
        match (full, by) {
            (Some(port), Some(by)) if !once => {
                let keys = [WaitKey::Port(port), WaitKey::Task(task.id)];
                Ok(Step::Pending(self.unlock_waiting(st, &keys, by)))
            }
            _ => {
                let r = match msg.take() {
                    Some(m) => send_locked(&mut st, task, m),
                    None => Err(KernError::InvalidArgument),
                };
                if r.is_err() {
                    // Room this sender may have been woken for, and did not
                    // use, goes to the next one waiting.
                    pass_room_on(&mut st, port);
                }
                self.unlock(st);
                r.map(Step::Ready)
            }
        }
    }

    /// `mach_msg(MACH_RCV_MSG)` on a receive right or port set, waiting at
    /// most `timeout` (forever if `None`).
    ///
    /// Errors: `MACH_RCV_INVALID_NAME`, `MACH_RCV_TIMED_OUT`, `KERN_INVALID_TASK`.
    pub fn msg_receive(&self, task: TaskId, name: PortName, timeout: Option<Duration>) -> Result<ReceivedMessage> {
        // A timeout past the end of the clock is no deadline at all.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut pending = None;
        loop {
            let by = if deadline.is_some_and(|d| Instant::now() >= d) { None } else { Some(WaitBy::Thread) };
            match self.receive_step(task, name, by, pending.take())? {
                Step::Ready(m) => return Ok(m),
                Step::Pending(w) => {
                    w.sleep(self.lock_cell(), deadline);
                    pending = Some(w.ticket);
                }
            }
        }
    }

    /// `mach_msg(MACH_RCV_MSG)` without waiting: the next message, or
    /// [`Poll::Pending`] with `waker` registered to be woken when the call
    /// is worth making again (a message, or the name's right gone).
    ///
    /// Errors: as [`Kernel::msg_receive`], but never `MACH_RCV_TIMED_OUT`.
    pub fn msg_receive_poll(
        &self,
        task: TaskId,
        name: PortName,
        waker: &Arc<dyn Waker>,
    ) -> Result<Poll<ReceivedMessage>> {
        Ok(self.receive_step(task, name, Some(WaitBy::Caller(waker)), None)?.poll())
    }

    /// One try at a receive; with no waker, nothing waiting is
    /// `MACH_RCV_TIMED_OUT`. `previous` is a registration to cancel.
    pub(crate) fn receive_step(
        &self,
        task: TaskId,
        name: PortName,
        by: Option<WaitBy<'_>>,
        previous: Option<WaitTicket>,
    ) -> Result<Step<ReceivedMessage>> {
        let mut st: Guard<'_, _> = self.lock();
        if let Some(t) = previous {
            st.waits.cancel(t);
        }
        let got = st.task(task).map(|t| t.space).and_then(|space| Ok((space, st.ipc.try_receive(space, name)?)));
        match got {
            Ok((space, Some(m))) => {
                // Room in that queue, for one message: the sender that
                // waited longest may have it.
                if let Ok(port) = st.ipc.port_of(space, m.local) {
                    st.waits.mark_one(WaitKey::Port(port));
                }
                self.unlock(st);
                Ok(Step::Ready(m))
            }
            Ok((space, None)) => match by {
                Some(by) => {
                    let keys = [WaitKey::Space(space), WaitKey::Task(task.id)];
                    Ok(Step::Pending(self.unlock_waiting(st, &keys, by)))
                }
                None => {
                    self.unlock(st);
                    Err(KernError::RcvTimedOut)
                }
            },
            Err(e) => {
                self.unlock(st);
                Err(e)
            }
        }
    }
}

impl Kernel {
    /// A send that may have been woken for room gives up without sending
    /// (its caller went): the room goes to the next sender waiting.
    pub(crate) fn send_abandoned(&self, task: TaskId, dest: PortName) {
        self.with(|st| {
            let port = user_port(st, task, dest);
            pass_room_on(st, port);
        });
    }
}

/// The port `dest` names in `task`'s space, if it is a user port (one
/// whose queue can be full).
fn user_port(st: &KState, task: TaskId, dest: PortName) -> Option<crate::ipc::PortId> {
    let space = st.task(task).ok()?.space;
    let port = st.ipc.send_port_of(space, dest).ok()?;
    st.kobject(port).is_none().then_some(port)
}

/// If `port`'s queue has room, wakes the next sender waiting for it.
fn pass_room_on(st: &mut KState, port: Option<crate::ipc::PortId>) {
    if let Some(p) = port.filter(|&p| st.ipc.queue_len(p) < crate::ipc::QLIMIT) {
        st.waits.mark_one(WaitKey::Port(p));
    }
}

/// One send, under the kernel lock (`Kernel::msg_send`).
fn send_locked(st: &mut KState, task: TaskId, msg: UserMessage) -> Result<()> {
    let space = st.task(task)?.space;
    // A receive right may leave with the message.
    let moves_receive = msg.rights.iter().any(|&(_, d)| d == Disposition::MoveReceive);
    let Some(kmsg) = st.ipc.send(space, msg)? else {
        if moves_receive {
            st.waits.mark(WaitKey::Space(space));
        }
        return Ok(());
    };
    if moves_receive {
        st.waits.mark(WaitKey::Space(space));
    }
    match st.kobject(kmsg.dest) {
        Some(KObject::Control(object)) => {
            let (mo, mut cx) = st.split();
            mo.control_message(&mut cx, object, kmsg, u64::from(task.id))
        }
        Some(KObject::Proxy(_) | KObject::ProxyRevoke(_) | KObject::HostPriv) | None => {
            st.ipc.destroy_message(kmsg);
            Err(KernError::MigBadId)
        }
    }
}

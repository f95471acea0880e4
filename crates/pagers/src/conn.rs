//! A pager's side of the EMMI: a pager task with a port set of memory
//! objects, typed receive, and one method per pager → kernel call.
//!
//! It is also the scripted test pager: every step is a method call, so a
//! pager interleaving reads as a straight-line test:
//!
//! ```text
//!   let (object, offset, _len, _access) = pager.expect_request(timeout)?;  // a data_request
//!   pager.supply(object, offset, &data)?;                                 // answer it
//!   pager.error(object, offset, PAGE_SIZE)?;                              // or fail it
//! ```

use crate::link::{KernelLink, Local, Outgoing, Staging};
use machvm_core::ipc::{Disposition, PortName, ReceivedMessage, RightKind};
use machvm_core::{KernError, Kernel, Result, TaskId, VmProt, PAGE_SIZE};
use machvm_protocol::emmi::{CopyStrategy, KernelReply, KernelToPager, PagerToKernel, ReturnPolicy, MAX_CLUSTER_PAGES};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One message from the kernel, decoded, with the memory object it is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The memory object port (in the pager's space) the message came on.
    pub object: PortName,
    pub msg: KernelToPager,
}

/// A pager task and the memory objects it serves, over a link to its
/// kernel (in-process by default; see [`crate::link`]).
#[derive(Debug)]
pub struct PagerConn<L: KernelLink = Local> {
    /// How the pager reaches its kernel.
    pub link: L,
    set: PortName,
    /// Memory object → control port (from `init` / `create`).
    controls: HashMap<PortName, PortName>,
    /// Objects handed over by `memory_object_create` (default pager).
    pub created: Vec<PortName>,
    /// Messages dropped as not the kernel's (see [`PagerConn::recv`]).
    pub ignored: u64,
    /// Where supplied pages wait for the kernel's host to copy them, if
    /// the link gave one ([`PagerConn::attach_staging`]).
    pub(crate) staging: Option<Staging>,
}

/// The staging area a pager asks for: room for the longest request.
pub const STAGING_SIZE: u64 = MAX_CLUSTER_PAGES as u64 * PAGE_SIZE;

impl PagerConn<Local> {
    /// A new pager task, in the kernel's process, with an empty port set.
    pub fn new(kernel: Arc<Kernel>) -> Result<PagerConn> {
        let task = kernel.task_create(None)?;
        PagerConn::over(Local { kernel, task })
    }

    /// Gives `task` a send right to the memory object; returns its name.
    pub fn give(&self, object: PortName, task: TaskId) -> Result<PortName> {
        self.link.kernel.port_transfer(self.link.task, object, Disposition::MakeSend, task)
    }

    /// Kills the pager: its task ends, its ports die.
    pub fn die(self) -> Result<()> {
        self.link.kernel.task_terminate(self.link.task)
    }
}

impl<L: KernelLink> PagerConn<L> {
    /// A pager over `link` (its task), with an empty port set.
    pub fn over(link: L) -> Result<PagerConn<L>> {
        let set = link.port_set_allocate()?;
        Ok(PagerConn { link, set, controls: HashMap::new(), created: Vec::new(), ignored: 0, staging: None })
    }

    /// A new memory object this pager serves: a receive right in the set,
    /// and a send right under the same name to give to clients.
    pub fn new_object(&mut self) -> Result<PortName> {
        let name = self.link.port_allocate()?;
        self.link.port_make_send(name)?;
        self.link.port_move_member(name, Some(self.set))?;
        Ok(name)
    }

    /// The next kernel message, within `timeout` (`None`: wait forever).
    /// `init` and `create` are recorded (control ports) and returned too.
    /// A malformed message is `MIG_BAD_ID` / `MIG_BAD_ARGUMENTS` (and is
    /// gone: the next call receives the next one).
    ///
    /// Anyone holding a send right to a memory object can send its pager
    /// anything, so messages the kernel did not send (no kernel trailer),
    /// a second `init` for an object already bound, and a `terminate` that
    /// does not carry the object's control right are dropped with the
    /// rights they carried and counted in [`PagerConn::ignored`]; the call
    /// goes on waiting for a genuine one.
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Request> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let m = self.link.msg_receive(self.set, left)?;
            if let Some(r) = self.accept(m)? {
                return Ok(r);
            }
            self.ignored += 1;
        }
    }

    /// Sends `answer` (if any) and receives the next request in one call
    /// where the link can (`mach_msg(SEND|RCV)`, as a server loop does):
    /// otherwise as [`PagerConn::recv`]. If the combined call fails (the
    /// answer's object ended meanwhile, say), a plain receive follows, so
    /// an error is always the receive's; its `timeout` then starts again.
    pub fn recv_after(&mut self, answer: Option<Outgoing>, timeout: Option<Duration>) -> Result<Request> {
        if let Some(out) = answer {
            if let Ok(m) = self.link.msg_send_receive(out, self.set, timeout) {
                if let Some(r) = self.accept(m)? {
                    return Ok(r);
                }
                self.ignored += 1;
            }
        }
        self.recv(timeout)
    }

    /// A pager → kernel call on `object`'s control port, encoded to be
    /// sent later ([`PagerConn::recv_after`]).
    pub fn outgoing(&self, object: PortName, m: PagerToKernel) -> Result<Outgoing> {
        let (id, data) = m.encode();
        Ok(Outgoing { dest: self.control(object)?, id, data, reply: None })
    }

    /// Sends what [`PagerConn::outgoing`] encoded.
    pub fn send(&self, out: Outgoing) -> Result<()> {
        self.link.msg_send(out.dest, out.id, out.data, out.reply)
    }

    /// Decodes a received message and applies what it means for the
    /// connection (control ports); `None` if it is to be ignored.
    fn accept(&mut self, m: ReceivedMessage) -> Result<Option<Request>> {
        if !m.from_kernel {
            self.drop_rights(&m);
            return Ok(None);
        }
        let msg = match KernelToPager::decode(m.id, &m.data) {
            Ok(msg) => msg,
            Err(e) => {
                self.drop_rights(&m);
                return Err(e);
            }
        };
        let mut object = m.local;
        match &msg {
            KernelToPager::Init { .. } => {
                let [(control, RightKind::Send)] = m.rights[..] else {
                    self.drop_rights(&m);
                    return Err(KernError::MigBadArguments);
                };
                if self.controls.contains_key(&object) {
                    // The object is bound: its control port stays.
                    self.drop_rights(&m);
                    return Ok(None);
                }
                self.controls.insert(object, control);
            }
            KernelToPager::Create { .. } => {
                // Only the kernel's message carries a receive right and a
                // send right.
                let [(new, RightKind::Receive), (control, RightKind::Send)] = m.rights[..] else {
                    self.drop_rights(&m);
                    return Err(KernError::MigBadArguments);
                };
                self.link.port_move_member(new, Some(self.set))?;
                self.controls.insert(new, control);
                self.created.push(new);
                object = new;
            }
            KernelToPager::Terminate => {
                // As in Mach, terminate carries the control port: it must
                // be the one this object was bound to.
                let known = self.controls.get(&object).copied();
                match m.rights[..] {
                    [(c, RightKind::Send | RightKind::DeadName)] if Some(c) == known => {
                        self.controls.remove(&object);
                        // Every reference the name holds goes: init's and
                        // the one terminate brought.
                        let _ = self.link.port_destroy(c);
                    }
                    _ => {
                        self.drop_rights(&m);
                        return Ok(None);
                    }
                }
            }
            _ => {}
        }
        Ok(Some(Request { object, msg }))
    }

    /// Releases the rights an ignored message brought into the pager's
    /// space (one reference each; a name the pager held before keeps the
    /// references it had).
    fn drop_rights(&self, m: &ReceivedMessage) {
        if let Some(reply) = m.reply {
            let _ = self.link.port_deallocate(reply);
        }
        for &(name, kind) in &m.rights {
            let _ = self.link.port_mod_refs(name, kind, -1);
        }
    }

    /// Receives until a `data_request` arrives, answering `init` with
    /// `ready` on the way; returns its `(object, offset, length, access)`.
    /// Other messages are an error (`KERN_FAILURE`).
    pub fn expect_request(&mut self, timeout: Duration) -> Result<(PortName, u64, u64, VmProt)> {
        loop {
            let r = self.recv(Some(timeout))?;
            match r.msg {
                KernelToPager::Init { .. } => self.ready(r.object)?,
                KernelToPager::DataRequest { offset, length, access } => return Ok((r.object, offset, length, access)),
                _ => return Err(KernError::Failure),
            }
        }
    }

    /// The control port the kernel gave for `object` (in `init` or
    /// `create`); `KERN_INVALID_NAME` if it is not bound.
    pub fn control(&self, object: PortName) -> Result<PortName> {
        self.controls.get(&object).copied().ok_or(KernError::InvalidName)
    }

    /// Sends a pager → kernel call on `object`'s control port.
    pub fn call(&self, object: PortName, m: PagerToKernel) -> Result<()> {
        let (id, data) = m.encode();
        self.link.msg_send(self.control(object)?, id, data, None)
    }

    /// Sends a call with a reply port and waits for the kernel's answer
    /// (at most 10 s, then `MACH_RCV_TIMED_OUT`).
    pub fn call_with_reply(&self, object: PortName, m: PagerToKernel) -> Result<KernelReply> {
        let control = self.control(object)?;
        let reply = self.link.port_allocate()?;
        let (id, data) = m.encode();
        let sent = self.link.msg_send(control, id, data, Some((reply, Disposition::MakeSendOnce)));
        let answer = sent.and_then(|()| self.link.msg_receive(reply, Some(Duration::from_secs(10))));
        let _ = self.link.port_destroy(reply);
        let answer = answer?;
        KernelReply::decode(answer.id, &answer.data)
    }

    /// `memory_object_ready` (may cache, delayed copy).
    pub fn ready(&self, object: PortName) -> Result<()> {
        self.call(object, PagerToKernel::Ready { may_cache: true, copy_strategy: CopyStrategy::Delay })
    }

    /// `memory_object_change_attributes` with a cluster size.
    pub fn set_cluster(&self, object: PortName, cluster_pages: u32) -> Result<()> {
        self.call(
            object,
            PagerToKernel::ChangeAttributes { may_cache: true, copy_strategy: CopyStrategy::Delay, cluster_pages },
        )
    }

    /// `memory_object_data_supply` (unlocked, not precious).
    pub fn supply(&self, object: PortName, offset: u64, data: &[u8]) -> Result<()> {
        self.call(
            object,
            PagerToKernel::DataSupply { offset, data: data.to_vec(), lock: VmProt::NONE, precious: false },
        )
    }

    /// `memory_object_data_supply` with a lock value and precious flag.
    pub fn supply_with(&self, object: PortName, offset: u64, data: &[u8], lock: VmProt, precious: bool) -> Result<()> {
        self.call(object, PagerToKernel::DataSupply { offset, data: data.to_vec(), lock, precious })
    }

    /// Asks the link for a staging area of [`STAGING_SIZE`] bytes
    /// ([`KernelLink::staging_attach`]): from then on [`crate::serve_pager`]
    /// answers requests with staged supplies, the pages copied by the
    /// kernel's host from where the pager wrote them, instead of in
    /// messages. Whether the link has one (in-process links never do).
    pub fn attach_staging(&mut self) -> Result<bool> {
        self.staging = self.link.staging_attach(STAGING_SIZE)?;
        Ok(self.staging.is_some())
    }

    /// The staging area's bytes, if [`PagerConn::attach_staging`] got one
    /// (for a scripted pager: write pages here, then
    /// [`PagerConn::supply_staged`]).
    pub fn staging_mut(&mut self) -> Option<&mut [u8]> {
        self.staging.as_mut().map(Staging::bytes_mut)
    }

    /// `memory_object_data_supply_staged`: the `length` bytes of pages at
    /// `staging_offset` of the staging area become the object's at
    /// `offset` (unlocked, not precious).
    pub fn supply_staged(&self, object: PortName, offset: u64, length: u64, staging_offset: u64) -> Result<()> {
        let (lock, precious) = (VmProt::NONE, false);
        self.call(object, PagerToKernel::DataSupplyStaged { offset, length, staging_offset, lock, precious })
    }

    /// `memory_object_data_unavailable`: zero fill.
    pub fn unavailable(&self, object: PortName, offset: u64, size: u64) -> Result<()> {
        self.call(object, PagerToKernel::DataUnavailable { offset, size })
    }

    /// `memory_object_data_error`.
    pub fn error(&self, object: PortName, offset: u64, size: u64) -> Result<()> {
        self.call(object, PagerToKernel::DataError { offset, size, reason: KernError::MemoryError })
    }

    /// `memory_object_lock_request`, waiting for `lock_completed`.
    pub fn lock_request(
        &self,
        object: PortName,
        offset: u64,
        size: u64,
        should_return: ReturnPolicy,
        should_flush: bool,
        lock: VmProt,
    ) -> Result<()> {
        match self
            .call_with_reply(object, PagerToKernel::LockRequest { offset, size, should_return, should_flush, lock })?
        {
            KernelReply::LockCompleted { .. } => Ok(()),
            _ => Err(KernError::Failure),
        }
    }

    /// `memory_object_destroy`.
    pub fn destroy(&self, object: PortName) -> Result<()> {
        self.call(object, PagerToKernel::Destroy { reason: KernError::Terminated })
    }
}

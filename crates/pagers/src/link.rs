//! A pager's connection to its kernel: in the same process ([`Local`],
//! for the model and the tests), or a socket to `machvmd`
//! (`machvm_client::Connection`). A pager needs only a task's IPC calls;
//! it never sees how they travel.

pub use machvm_client::memory::Staging;
use machvm_core::ipc::{Disposition, PortName, ReceivedMessage, RightKind, UserMessage};
use machvm_core::{KernError, Kernel, Result, TaskId};
use std::sync::Arc;
use std::time::Duration;

/// The calls a pager makes on its own task.
pub trait KernelLink {
    /// `mach_port_allocate` (receive right).
    fn port_allocate(&self) -> Result<PortName>;
    /// `mach_port_allocate` (port set).
    fn port_set_allocate(&self) -> Result<PortName>;
    /// Makes a send right from a receive right.
    fn port_make_send(&self, name: PortName) -> Result<()>;
    /// `mach_port_move_member`.
    fn port_move_member(&self, member: PortName, set: Option<PortName>) -> Result<()>;
    /// `mach_port_deallocate`.
    fn port_deallocate(&self, name: PortName) -> Result<()>;
    /// `mach_port_destroy`.
    fn port_destroy(&self, name: PortName) -> Result<()>;
    /// `mach_port_mod_refs`.
    fn port_mod_refs(&self, name: PortName, right: RightKind, delta: i32) -> Result<()>;
    /// `mach_msg(SEND)` of data (copy-send to `dest`), with a reply right.
    fn msg_send(&self, dest: PortName, id: u32, data: Vec<u8>, reply: Option<(PortName, Disposition)>) -> Result<()>;
    /// `mach_msg(RCV)` on a port or set, waiting at most `timeout`.
    fn msg_receive(&self, name: PortName, timeout: Option<Duration>) -> Result<ReceivedMessage>;
    /// `mach_msg(SEND|RCV)`: [`KernelLink::msg_send`] of `send` (dest, id,
    /// data, reply), then [`KernelLink::msg_receive`] on `name`, as one
    /// call where the link can (a server loop's answer and its wait for
    /// the next request). An error is the send's or the receive's.
    fn msg_send_receive(&self, send: Outgoing, name: PortName, timeout: Option<Duration>) -> Result<ReceivedMessage> {
        self.msg_send(send.dest, send.id, send.data, send.reply)?;
        self.msg_receive(name, timeout)
    }
    /// Gives the kernel's host a staging area of `size` bytes to copy
    /// supplied pages from (`machvm_client::Connection::staging_attach`);
    /// `None` where the link has none (in-process, or a daemon on the
    /// software MMU): pages then travel in messages.
    fn staging_attach(&self, size: u64) -> Result<Option<Staging>> {
        let _ = size;
        Ok(None)
    }
}

/// A message a pager sends (copy-send to `dest`), with a reply right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub dest: PortName,
    pub id: u32,
    pub data: Vec<u8>,
    pub reply: Option<(PortName, Disposition)>,
}

/// A pager task in the kernel's own process.
#[derive(Debug, Clone)]
pub struct Local {
    pub kernel: Arc<Kernel>,
    pub task: TaskId,
}

impl KernelLink for Local {
    fn port_allocate(&self) -> Result<PortName> {
        self.kernel.port_allocate(self.task)
    }
    fn port_set_allocate(&self) -> Result<PortName> {
        self.kernel.port_set_allocate(self.task)
    }
    fn port_make_send(&self, name: PortName) -> Result<()> {
        self.kernel.port_make_send(self.task, name)
    }
    fn port_move_member(&self, member: PortName, set: Option<PortName>) -> Result<()> {
        self.kernel.port_move_member(self.task, member, set)
    }
    fn port_deallocate(&self, name: PortName) -> Result<()> {
        self.kernel.port_deallocate(self.task, name)
    }
    fn port_destroy(&self, name: PortName) -> Result<()> {
        self.kernel.port_destroy(self.task, name)
    }
    fn port_mod_refs(&self, name: PortName, right: RightKind, delta: i32) -> Result<()> {
        self.kernel.port_mod_refs(self.task, name, right, delta)
    }
    fn msg_send(&self, dest: PortName, id: u32, data: Vec<u8>, reply: Option<(PortName, Disposition)>) -> Result<()> {
        self.kernel.msg_send(self.task, UserMessage { reply, ..UserMessage::new(dest, id, data) })
    }
    fn msg_receive(&self, name: PortName, timeout: Option<Duration>) -> Result<ReceivedMessage> {
        self.kernel.msg_receive(self.task, name, timeout)
    }
}

/// A pager process connected to `machvmd`: the connection is its task. A
/// connection that is gone is `KERN_TERMINATED`, so a serve loop ends.
impl KernelLink for machvm_client::Connection {
    fn port_allocate(&self) -> Result<PortName> {
        machvm_client::Connection::port_allocate(self).map_err(|e| e.kern())
    }
    fn port_set_allocate(&self) -> Result<PortName> {
        machvm_client::Connection::port_set_allocate(self).map_err(|e| e.kern())
    }
    fn port_make_send(&self, name: PortName) -> Result<()> {
        machvm_client::Connection::port_make_send(self, name).map_err(|e| e.kern())
    }
    fn port_move_member(&self, member: PortName, set: Option<PortName>) -> Result<()> {
        machvm_client::Connection::port_move_member(self, member, set).map_err(|e| e.kern())
    }
    fn port_deallocate(&self, name: PortName) -> Result<()> {
        machvm_client::Connection::port_deallocate(self, name).map_err(|e| e.kern())
    }
    fn port_destroy(&self, name: PortName) -> Result<()> {
        machvm_client::Connection::port_destroy(self, name).map_err(|e| e.kern())
    }
    fn port_mod_refs(&self, name: PortName, right: RightKind, delta: i32) -> Result<()> {
        machvm_client::Connection::port_mod_refs(self, name, right, delta).map_err(|e| e.kern())
    }
    fn msg_send(&self, dest: PortName, id: u32, data: Vec<u8>, reply: Option<(PortName, Disposition)>) -> Result<()> {
        let args = send_args(Outgoing { dest, id, data, reply });
        machvm_client::Connection::msg_send(self, args).map_err(|e| e.kern())
    }
    fn msg_receive(&self, name: PortName, timeout: Option<Duration>) -> Result<ReceivedMessage> {
        let m = machvm_client::Connection::msg_receive(self, name, millis(timeout)).map_err(|e| e.kern())?;
        Ok(received(m))
    }
    fn msg_send_receive(&self, send: Outgoing, name: PortName, timeout: Option<Duration>) -> Result<ReceivedMessage> {
        let m = machvm_client::Connection::msg_send_receive(self, send_args(send), name, millis(timeout))
            .map_err(|e| e.kern())?;
        Ok(received(m))
    }
    fn staging_attach(&self, size: u64) -> Result<Option<Staging>> {
        match machvm_client::Connection::staging_attach(self, size) {
            Ok(s) => Ok(Some(s)),
            Err(machvm_client::ClientError::Kern(KernError::NotSupported)) => Ok(None),
            Err(e) => Err(e.kern()),
        }
    }
}

fn millis(timeout: Option<Duration>) -> Option<u64> {
    timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
}

fn send_args(m: Outgoing) -> machvm_protocol::wire::SendArgs {
    machvm_protocol::wire::SendArgs {
        dest: m.dest,
        dest_disposition: Disposition::CopySend,
        reply: m.reply,
        id: m.id,
        data: m.data,
        rights: Vec::new(),
        timeout_ms: Some(0),
    }
}

fn received(m: machvm_protocol::wire::MessageWire) -> ReceivedMessage {
    ReceivedMessage {
        local: m.local,
        id: m.id,
        data: m.data,
        reply: m.reply,
        rights: m.rights,
        from_kernel: m.from_kernel,
    }
}

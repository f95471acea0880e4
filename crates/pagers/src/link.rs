//! A pager's connection to its kernel: in the same process ([`Local`],
//! for the model and the tests), or a socket to `machvmd`
//! (`machvm_client::Connection`). A pager needs only a task's IPC calls;
//! it never sees how they travel.

use machvm_core::ipc::{Disposition, PortName, ReceivedMessage, RightKind, UserMessage};
use machvm_core::{Kernel, Result, TaskId};
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
        let args = machvm_protocol::wire::SendArgs {
            dest,
            dest_disposition: Disposition::CopySend,
            reply,
            id,
            data,
            rights: Vec::new(),
            timeout_ms: Some(0),
        };
        machvm_client::Connection::msg_send(self, args).map_err(|e| e.kern())
    }
    fn msg_receive(&self, name: PortName, timeout: Option<Duration>) -> Result<ReceivedMessage> {
        let ms = timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        let m = machvm_client::Connection::msg_receive(self, name, ms).map_err(|e| e.kern())?;
        Ok(ReceivedMessage {
            local: m.local,
            id: m.id,
            data: m.data,
            reply: m.reply,
            rights: m.rights,
            from_kernel: m.from_kernel,
        })
    }
}

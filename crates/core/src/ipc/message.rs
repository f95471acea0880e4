//! Messages: the user form a space sends, the kernel form in a queue, and
//! the form a receiver gets back with rights renamed into its space.

use super::{Disposition, PortId, PortName, RightKind};

/// A message as a task sends it: names in the sender's space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserMessage {
    pub dest: PortName,
    pub dest_disposition: Disposition,
    pub reply: Option<(PortName, Disposition)>,
    /// `msgh_id`
    pub id: u32,
    /// Inline data.
    pub data: Vec<u8>,
    /// Port rights carried in the body.
    pub rights: Vec<(PortName, Disposition)>,
}

impl UserMessage {
    /// A message to `dest` (copy-send) with data and no rights.
    pub fn new(dest: PortName, id: u32, data: Vec<u8>) -> UserMessage {
        UserMessage { dest, dest_disposition: Disposition::CopySend, reply: None, id, data, rights: Vec::new() }
    }
}

/// A message inside the kernel: rights are ports, already counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KMessage {
    pub dest: PortId,
    /// The right the sender used for `dest`, consumed at delivery
    /// (`None` for messages the kernel sends with no right of its own).
    pub dest_right: Option<RightKind>,
    pub reply: Option<(PortId, RightKind)>,
    pub id: u32,
    pub data: Vec<u8>,
    pub rights: Vec<(PortId, RightKind)>,
    /// The kernel built this message (a notification, an EMMI call, a
    /// reply); `false` for every message a task sent. See
    /// [`ReceivedMessage::from_kernel`].
    pub from_kernel: bool,
}

impl KMessage {
    /// A message the kernel sends with no right of its own for `dest`.
    pub fn from_kernel(dest: PortId, id: u32, data: Vec<u8>, rights: Vec<(PortId, RightKind)>) -> KMessage {
        KMessage { dest, dest_right: None, reply: None, id, data, rights, from_kernel: true }
    }

    /// A kernel notification to a send-once right.
    pub fn notification(dest: PortId, id: u32, data: Vec<u8>) -> KMessage {
        KMessage { dest_right: Some(RightKind::SendOnce), ..KMessage::from_kernel(dest, id, data, Vec::new()) }
    }
}

/// A message as its receiver sees it: rights renamed into its space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The port (member of a set, or the port itself) it arrived on.
    pub local: PortName,
    pub id: u32,
    pub data: Vec<u8>,
    pub reply: Option<PortName>,
    pub rights: Vec<(PortName, RightKind)>,
    /// The sender was the kernel: Mach's message trailer with the kernel's
    /// security token. No task can forge it, so a pager trusts an `init`,
    /// `create` or `terminate` only when this is set.
    pub from_kernel: bool,
}

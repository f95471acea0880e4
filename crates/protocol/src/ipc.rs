//! IPC names and rights as tasks and pagers see them: what a message or
//! a call names, in the caller's own space.

use serde::{Deserialize, Serialize};

/// `mach_port_name_t`: a name in one space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortName(pub u32);

/// The kind of a right once it is in transit or in a space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RightKind {
    /// `MACH_PORT_RIGHT_RECEIVE`
    Receive,
    /// `MACH_PORT_RIGHT_SEND`
    Send,
    /// `MACH_PORT_RIGHT_SEND_ONCE`
    SendOnce,
    /// `MACH_PORT_RIGHT_DEAD_NAME`
    DeadName,
}

/// `mach_msg_type_name_t`: what sending does with a right the sender names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Disposition {
    /// `MACH_MSG_TYPE_MOVE_RECEIVE`
    MoveReceive,
    /// `MACH_MSG_TYPE_MOVE_SEND`
    MoveSend,
    /// `MACH_MSG_TYPE_MOVE_SEND_ONCE`
    MoveSendOnce,
    /// `MACH_MSG_TYPE_COPY_SEND`
    CopySend,
    /// `MACH_MSG_TYPE_MAKE_SEND`
    MakeSend,
    /// `MACH_MSG_TYPE_MAKE_SEND_ONCE`
    MakeSendOnce,
}

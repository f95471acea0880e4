//! Memory objects: the EMMI (kernel side), and proxy memory objects.
//!
//! - [`emmi`]: the messages between kernel and pagers, and their encoding.
//! - [`control`]: what the kernel does with a pager's message on a control
//!   port.
//! - [`proxy`]: proxy memory objects, both versions behind one interface.

pub mod control;
pub use machvm_protocol::emmi;
pub mod proxy;

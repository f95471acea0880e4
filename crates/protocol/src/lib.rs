//! machvm's shared vocabulary, used by the kernel, the daemon, pagers and
//! tasks alike:
//!
//! - [`types`]: Mach's basic types (protections, addresses, offsets,
//!   inheritance) and return codes ([`types::KernError`]);
//! - [`ipc`]: port names and rights as a task names them;
//! - [`emmi`]: the external memory management interface, the messages
//!   between the kernel and pagers, with their encoding;
//! - [`frame`]: how messages are cut out of a byte stream (a length, then a
//!   postcard body), bounded so that no peer's claim is trusted;
//! - [`wire`]: the messages between the daemon `machvmd` and the tasks and
//!   pagers that connect to it;
//! - [`memory`]: the memory channel of a task process whose memory is
//!   real (windows asked for, mapped, and their descriptors).
//!
//! Its only I/O is [`frame`]'s, over the `Read` and `Write` it is handed.
#![deny(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod emmi;
pub mod frame;
pub mod ipc;
pub mod memory;
pub mod types;
pub mod wire;

pub use types::{KernError, Result, VmAddr, VmInherit, VmOffset, VmProt, PAGE_SIZE};

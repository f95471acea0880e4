//! machvm kernel core: the machine-independent part of a Mach-style VM.
//!
//! Where things are:
//!
//! - [`ipc`]: ports, rights, name spaces, messages, notifications.
//! - [`vm`]: address maps, VM objects, the fault path ([`vm::fault`]),
//!   pageout.
//! - [`memory_object`]: the external pager protocol (EMMI) and proxy memory
//!   objects ([`memory_object::proxy`]).
//! - [`pmap`]: the contract with the MMU, and the software MMU.
//! - [`kernel`]: the calls tasks and pagers make, under one lock, and
//!   introspection ([`kernel::inspect`]).
//!
//! The core does no I/O and wraps no OS calls: what it takes from `std`
//! is concurrency (locks and wait queues, all in [`sync`]) and the clock
//! (receive timeouts, the spin before a sleep).
#![deny(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod ipc;
pub mod kernel;
pub mod memory_object;
pub mod pmap;
pub mod sync;
pub use machvm_protocol::types;
pub mod vm;
pub mod wait;

pub use kernel::{
    EntryInfo, Kernel, KernelConfig, KernelStats, MapRequest, ObjectInfo, ObjectKind, PagerInfo, ProxyRecord,
    RegionInfo, TaskId, TaskInfo, TaskLimits,
};
pub use memory_object::proxy::{ProxyInfo, ProxyRights, ProxyVersion};
pub use types::{KernError, Result, VmAddr, VmInherit, VmOffset, VmProt, PAGE_SIZE};

//! machvm kernel core: the machine-independent part of a Mach-style VM.
#![deny(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod ipc;
pub mod pmap;
pub mod sync;
pub mod types;

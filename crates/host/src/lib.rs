//! machvm's Linux host backend, first layer: a safe toolkit over the host
//! calls that give tasks real memory (DESIGN.md §5). It is the only crate
//! of the project that contains `unsafe`; everything above it (the daemon's
//! fault server, the task library) is safe code on these types.
//!
//! What each module wraps:
//!
//! - [`memfd`]: [`ObjectMemory`], the resident pages of one VM object in a
//!   memfd at their object offsets (`memfd_create`, `ftruncate`, seals,
//!   `fchmod`, `pread`/`pwrite`, `fallocate(PUNCH_HOLE)`,
//!   `lseek(SEEK_DATA/SEEK_HOLE)`).
//! - [`mapping`]: [`Mapping`], an owned `MAP_SHARED` window of a descriptor
//!   (`mmap`, `mprotect`, `munmap`), read and written only by copies made of
//!   atomic word accesses, because other processes share the memory.
//! - [`uffd`]: [`Userfaultfd`], creation (the `userfaultfd` syscall, or
//!   `/dev/userfaultfd` and `USERFAULTFD_IOC_NEW`), the `UFFDIO_API`
//!   handshake, registration, the resolution ioctls (`CONTINUE`, `COPY`,
//!   `ZEROPAGE`, `POISON`, `WRITEPROTECT`, `WAKE`) with their outcomes, and
//!   batched non-blocking reads of its events.
//! - [`fdpass`]: descriptors over a Unix socket (`sendmsg`/`recvmsg` with
//!   `SCM_RIGHTS`), bounded on receipt, with the sender's credentials.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]
#![warn(missing_debug_implementations)]

pub mod fdpass;
pub mod mapping;
pub mod memfd;
mod range;
pub mod uffd;

pub use mapping::{Mapping, Prot};
pub use memfd::ObjectMemory;
pub use range::{page_size, PageRange};
pub use uffd::{NewUserfaultfd, Userfaultfd};

pub use rustix::io::Errno;

/// The errors of the host layer. Each says whose mistake it is: the
/// caller's (a bad argument), the peer's (a descriptor that is not what it
/// claims), or the host's (a call the kernel refused).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The host refused a call (`call` names it).
    #[error("{call}: {errno}")]
    Host {
        /// The host call, as its manual page names it.
        call: &'static str,
        /// What the kernel said.
        errno: Errno,
    },
    /// The caller's range is empty, not page-aligned, or overflows.
    #[error("bad range: start {start:#x}, length {len:#x} (must be page-aligned, non-empty, and not wrap)")]
    BadRange {
        /// The start the caller gave.
        start: u64,
        /// The length the caller gave.
        len: u64,
    },
    /// The caller's bytes lie outside the object or mapping.
    #[error("bytes [{offset:#x}, +{len:#x}) lie outside the {size:#x} bytes of the {what}")]
    OutOfBounds {
        /// "object" or "mapping".
        what: &'static str,
        /// The first byte asked for.
        offset: u64,
        /// How many bytes.
        len: u64,
        /// How many bytes there are.
        size: u64,
    },
    /// The caller tried an access the mapping's protection does not allow
    /// (which the host MMU would have punished with `SIGSEGV`).
    #[error("the mapping is {prot:?}: no {access} access")]
    Protection {
        /// The mapping's protection.
        prot: Prot,
        /// "read" or "write".
        access: &'static str,
    },
    /// The peer's descriptor is not a userfaultfd (or not
    /// `/dev/userfaultfd`): what it is instead.
    #[error("the descriptor is not {expected}: it is {found}")]
    WrongDescriptor {
        /// What it should have been.
        expected: &'static str,
        /// What it is.
        found: String,
    },
    /// The kernel lacks userfaultfd features the caller needs.
    #[error("the kernel lacks userfaultfd features {missing:?}")]
    Unsupported {
        /// The features asked for that the kernel does not have.
        missing: uffd::Features,
    },
    /// The caller registered a raw range on a userfaultfd of its own
    /// process (only a [`Mapping`] may be registered there), or a
    /// [`Mapping`] on another process's userfaultfd (whose address space
    /// has none of this process's mappings).
    #[error("{0}")]
    AddressSpace(&'static str),
    /// The process whose memory the userfaultfd serves has exited (`ESRCH`):
    /// the uffd has nothing left to serve.
    #[error("the process of this userfaultfd has exited")]
    ProcessExited,
}

/// The host layer's result.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The kernel's errno, if the host refused a call.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Host { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Wraps an errno as the refusal of `call`.
pub(crate) fn host(call: &'static str) -> impl FnOnce(Errno) -> Error {
    move |errno| Error::Host { call, errno }
}

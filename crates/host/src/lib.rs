//! machvm's Linux host backend, first layer: a safe toolkit over the host
//! calls that give tasks real memory (DESIGN.md §5). It is the only crate
//! of the project that contains `unsafe`; everything above it (the daemon's
//! fault server, the task library) is safe code on these types. It knows
//! the kernel core only through the page-store seam
//! (`machvm_core::pmap::PageStore`), which [`store`] implements.
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
//! - [`store`]: [`MemfdStore`], the core's page store on an
//!   [`ObjectMemory`] per VM object (no host call of its own: safe code on
//!   [`memfd`]).
//! - [`arena`]: [`Arena`], the room a task process reserves for the
//!   memory the daemon serves it, and the windows of object memfds placed
//!   in it (`mmap` with `MAP_FIXED` inside the reservation only).
//! - [`machine`]: [`HostMachine`], the core's whole machine: the store,
//!   and translations that are the task processes' own page tables,
//!   filled from outside with `UFFDIO_CONTINUE` (safe code on [`uffd`]).
//!
//! Every host call is wrapped once, on `rustix` (with `linux-raw-sys` for
//! the userfaultfd structures); no `libc`.
//!
//! # Host facts this layer relies on
//!
//! Each was found by the project's host-facts programs and checked again on
//! Linux 6.18 by this crate's tests (named in parentheses; `tests/uffd.rs`,
//! `tests/process.rs` and the unit tests). The tests that need userfaultfd
//! skip, saying why, where it is unavailable (as for an unprivileged user
//! while `vm.unprivileged_userfaultfd = 0`).
//!
//! 1. `poll` reports `POLLERR` on a uffd that is blocking, or whose
//!    handshake is not made yet: every [`Userfaultfd`] is non-blocking, also
//!    one received from another process (the flag is on the open file,
//!    shared with the sender). The sender can clear the flag again, so
//!    reads use `preadv2(RWF_NOWAIT)`, which a uffd honours whatever the
//!    flag (since 6.7), and a wait restores the flag
//!    (test `a_uffd_comes_from_the_device_too…`).
//! 2. `UFFDIO_API` succeeds once per uffd and reports nothing when it fails,
//!    so what the kernel offers is asked of a throwaway uffd
//!    ([`uffd::Features::available`]: all 17 features, `0x1ffff`, here).
//!    The memory-kind features (`*_SHMEM`) and `POISON` announce support
//!    without gating it: registration and `UFFDIO_POISON` work without them
//!    (test `the_handshake_grants_what_was_asked…`).
//! 3. A memfd mapping registers `MISSING|MINOR|WP`, allowing `WAKE`, `COPY`,
//!    `ZEROPAGE`, `MOVE`, `WRITEPROTECT`, `CONTINUE` and `POISON`; it needs
//!    a descriptor opened for writing (`EPERM` otherwise, even for a
//!    read-only mapping), and one uffd per range (`EBUSY`) (same test).
//! 4. A hole faults MISSING, a page the memfd holds MINOR; `CONTINUE` maps
//!    what the memfd holds, so a handler that `pwrite`s the page of a
//!    MISSING fault resolves it with `CONTINUE` too; `COPY` on a memfd
//!    mapping fills the memfd (test `minor_and_missing_faults…`,
//!    `missing_faults_are_resolved…`).
//! 5. Fill outcomes: any fill of a mapped page is `EEXIST`, and so is `COPY`
//!    or `ZEROPAGE` of a page the memfd holds but the mapping does not map;
//!    `CONTINUE` of a hole is `EFAULT`; a fill stopped part-way is `EAGAIN`
//!    with the bytes done; after `UNREGISTER`, `ENOENT`; `POISON` of a mapped
//!    page is `EEXIST`, and `COPY` replaces a poison. Every fill works on any
//!    registered range (the mode decides only which faults are reported);
//!    only a write-protected fill needs `WP` (test `fills_that_meet…`).
//!    While an address-space event (here `REMOVE`) is unread, fills are
//!    `EAGAIN` with nothing done and the process waits in its call
//!    (test `a_fill_while_an_address_space_event_is_unread…`).
//! 6. A store into a write-protected page waits until the protection is
//!    lifted; loads do not fault; the protection survives the process's own
//!    `mprotect(PROT_WRITE)` (test `a_store_into_a_write_protected_page…`,
//!    `write_protection_survives…`).
//! 7. `fallocate(PUNCH_HOLE)` takes a page from the mapping; the next access
//!    faults MISSING (test `a_punched_page…`).
//! 8. `UFFDIO_POISON` makes the next access `SIGBUS`, which kills a process
//!    that does not handle it (test `a_poisoned_page_kills…`).
//! 9. A task's uffd, passed over `SCM_RIGHTS`, is registered (in the task's
//!    address space) and served by the receiving process: `CONTINUE` after
//!    `pwrite`, `COPY`, write-protect (test `a_tasks_uffd_passed_over_a_socket…`).
//! 10. Each uffd has an inode of its own, so this process recognises its own
//!     uffd coming back (the soundness rule of [`uffd`]) (test
//!     `a_uffd_comes_from_the_device_too…`). Waiting faults are read many
//!     per `read`, no more than asked, and one fill over their pages wakes
//!     them all (test `waiting_faults_are_read_many_at_once…`).
//! 11. `lseek(SEEK_DATA/SEEK_HOLE)` finds the present pages of a memfd (a
//!     write of one byte makes its page present; a `pread` of a hole leaves
//!     it one); `F_SEAL_SHRINK | F_SEAL_SEAL` refuse shrinking and new seals
//!     (`EPERM`) (`memfd`'s unit tests). `mincore` on a mapping of the
//!     memfd answers the same (pages written by `pwrite` and never touched
//!     through the mapping count, also after `fchmod(0)` for root; checked
//!     with a C probe), but it needs a mapping and rustix lacks it.
//! 12. `CONTINUE` of a page reserved with `fallocate` and never written
//!     maps zeroes (also where the page held data before a punch), and a
//!     store through the mapping makes it the memfd's data (test
//!     `continue_of_a_reserved_page…`): a new page is mapped without
//!     writing its zeroes.
//!
//! `examples/uffd_costs.rs` measures the costs through this crate.
//!
//! # What the next layer needs from this one
//!
//! The fault server puts many uffds in one epoll set (each is `AsFd` and
//! non-blocking); on readiness it drains [`Userfaultfd::read_events`] and
//! handles the address-space events (fork, remap, remove, unmap) of a batch
//! before its faults: until they are read the process waits in its call and
//! every fill is [`uffd::Outcome::Changed`]. It serves each fault by a
//! cluster: the pages already in the object's [`ObjectMemory`] with one
//! `continue_` over cluster ∩ mapping ∩ grant (write-protected where the
//! grant is read-only), the rest asked of the pager once, written into the
//! memfd, then continued. The outcomes say what to do when it races with
//! the process: `Exists` (someone resolved it first), `Partial` (retry the
//! rest), `Changed` (read events, then retry), `Unmapped` (wake the range so
//! the faulting thread retries and takes its `SIGSEGV`); `Error::ProcessExited`
//! ends that uffd. On `EPOLLERR` from a uffd it calls
//! [`Userfaultfd::ensure_nonblocking`]: the task that shares the open file
//! may have made it blocking, which would otherwise keep it polling as an
//! error (a spinning event loop). The task library maps windows with [`Mapping::map`] and
//! hands its uffd over with [`fdpass::send_fds`]; the daemon takes it with
//! [`NewUserfaultfd::from_received`] and makes the handshake itself (it
//! holds `CAP_SYS_PTRACE`, which `EVENT_FORK` needs).
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]
#![warn(missing_debug_implementations)]

pub mod arena;
pub mod fdpass;
pub mod machine;
pub mod mapping;
pub mod memfd;
mod range;
pub mod staging;
pub mod store;
pub mod uffd;

pub use arena::Arena;
pub use machine::HostMachine;
pub use mapping::{Mapping, Prot};
pub use memfd::ObjectMemory;
pub use range::{page_size, PageRange};
pub use staging::{Staging, StagingSource};
pub use store::MemfdStore;
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
    /// The host's page size is not the VM's: the memfd page store keeps
    /// each VM page in one host page.
    #[error("the host's pages are {host} bytes, the VM's {vm}")]
    PageSize {
        /// The host's page size.
        host: u64,
        /// The VM's (`machvm_core::types::PAGE_SIZE`).
        vm: u64,
    },
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

//! [`Userfaultfd`]: a userfaultfd, from its creation to the resolution of
//! its faults, on rustix's `ioctl` with linux-raw-sys's structures (the
//! ioctl numbers are built here from those structures with
//! `rustix::ioctl::opcode`, and a test checks them against the kernel's).
//!
//! The life of a uffd:
//!
//! 1. **Creation** ([`NewUserfaultfd::create`]): the `userfaultfd` syscall,
//!    or where it is refused (an unprivileged process while
//!    `vm.unprivileged_userfaultfd = 0`) `USERFAULTFD_IOC_NEW` on
//!    `/dev/userfaultfd` (root-only on the development machines; a daemon
//!    can hand a task an open descriptor of it: [`NewUserfaultfd::from_device`]).
//!    Always `O_CLOEXEC | O_NONBLOCK`: `poll` on a blocking uffd reports
//!    `POLLERR`. Never `UFFD_USER_MODE_ONLY`, under which the kernel's own
//!    accesses to a task's memory (a `read(2)` into it) fail with `EFAULT`
//!    instead of faulting.
//! 2. **Hand-over**: a task sends the new uffd to the daemon
//!    ([`NewUserfaultfd::into_fd`], [`crate::fdpass::send_fds`]); the daemon
//!    takes it with [`NewUserfaultfd::from_received`], which checks that it
//!    is a uffd and makes it non-blocking.
//! 3. **Handshake** ([`NewUserfaultfd::handshake`]): `UFFDIO_API` with the
//!    features the caller needs, once. The kernel has no way to ask what it
//!    offers without spending the handshake, so [`Features::available`]
//!    asks a throwaway uffd. `UFFD_FEATURE_EVENT_FORK` needs
//!    `CAP_SYS_PTRACE` in the process making the handshake, which is why
//!    the daemon makes it, not the task.
//! 4. **Registration** ([`Userfaultfd::register`]) of ranges with
//!    `MISSING`, `MINOR` and `WP`; the kernel answers with the resolution
//!    ioctls the range allows ([`Ioctls`]).
//! 5. **Serving**: [`Userfaultfd::read_events`] reads many messages at once
//!    and decodes them ([`Event`]); each fault is resolved by
//!    [`continue_`](Userfaultfd::continue_), [`copy`](Userfaultfd::copy),
//!    [`zeropage`](Userfaultfd::zeropage) or [`poison`](Userfaultfd::poison),
//!    write-protection is set and lifted by
//!    [`writeprotect`](Userfaultfd::writeprotect), and
//!    [`wake`](Userfaultfd::wake) retries waiting threads. Each resolution
//!    returns an [`Outcome`] that says how it met the process's other
//!    activity.
//! 6. **Close**: dropping the last descriptor unregisters every range and
//!    wakes every waiting thread, whose faults are then handled by the
//!    kernel as if no uffd had been there.
//!
//! # Soundness: whose memory a uffd changes
//!
//! A uffd changes the memory of the process that created it. When that is
//! another process (a task's uffd in the daemon), nothing it does can touch
//! this process's memory. When it is this process, `UFFDIO_COPY` into a
//! page Rust believes untouched (a fresh heap allocation reads as zeros)
//! would change memory behind Rust's back. So a uffd created by this process
//! registers only [`Mapping`]s ([`Userfaultfd::register_mapping`]), whose
//! memory this crate never lends as references, and
//! [`Userfaultfd::register`] of a raw range is refused on it. A uffd
//! created here and received back over a socket is still known as this
//! process's own (by its inode, which the kernel makes unique per uffd).
//! One this process made by other means (which takes `unsafe` code, as
//! `rustix::mm::userfaultfd` is) is not known: keeping it away from
//! [`NewUserfaultfd::from_received`] is that code's duty.

use crate::mapping::Mapping;
use crate::{host, Error, PageRange, Result};
use linux_raw_sys::general as sys;
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use rustix::fs::OFlags;
use rustix::io::Errno;
use rustix::ioctl::{opcode, Ioctl, IoctlOutput, Opcode};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

bitflags::bitflags! {
    /// `UFFD_FEATURE_*`, asked for in the handshake. Those of events and
    /// messages (`EVENT_*`, `THREAD_ID`, `EXACT_ADDRESS`, `SIGBUS`,
    /// `WP_ASYNC`) change what the uffd does; those of memory kinds and
    /// ioctls (`*_SHMEM`, `*_HUGETLBFS`, `POISON`, `MOVE`) only say what the
    /// kernel can do: on 6.18 registration and `UFFDIO_POISON` work on a uffd
    /// whose handshake asked for none of them (a test checks it). Ask for
    /// them anyway: the handshake then fails on a kernel that lacks them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Features: u64 {
        /// Write-protect faults are reported (anonymous memory).
        const PAGEFAULT_FLAG_WP = sys::UFFD_FEATURE_PAGEFAULT_FLAG_WP as u64;
        /// A fork of the process reports [`Event::Fork`] with the child's uffd.
        const EVENT_FORK = sys::UFFD_FEATURE_EVENT_FORK as u64;
        /// `mremap` of a registered range reports [`Event::Remap`].
        const EVENT_REMAP = sys::UFFD_FEATURE_EVENT_REMAP as u64;
        /// `madvise(MADV_DONTNEED/MADV_REMOVE)` reports [`Event::Remove`].
        const EVENT_REMOVE = sys::UFFD_FEATURE_EVENT_REMOVE as u64;
        /// MISSING registration of hugetlbfs memory.
        const MISSING_HUGETLBFS = sys::UFFD_FEATURE_MISSING_HUGETLBFS as u64;
        /// MISSING registration of shmem (memfd) memory.
        const MISSING_SHMEM = sys::UFFD_FEATURE_MISSING_SHMEM as u64;
        /// `munmap` of a registered range reports [`Event::Unmap`].
        const EVENT_UNMAP = sys::UFFD_FEATURE_EVENT_UNMAP as u64;
        /// Faults raise `SIGBUS` instead of being reported.
        const SIGBUS = sys::UFFD_FEATURE_SIGBUS as u64;
        /// Fault messages carry the faulting thread's id.
        const THREAD_ID = sys::UFFD_FEATURE_THREAD_ID as u64;
        /// MINOR registration of hugetlbfs memory.
        const MINOR_HUGETLBFS = sys::UFFD_FEATURE_MINOR_HUGETLBFS as u64;
        /// MINOR registration of shmem (memfd) memory.
        const MINOR_SHMEM = sys::UFFD_FEATURE_MINOR_SHMEM as u64;
        /// Fault addresses are exact, not rounded down to the page.
        const EXACT_ADDRESS = sys::UFFD_FEATURE_EXACT_ADDRESS as u64;
        /// WP registration of hugetlbfs and shmem (memfd) memory.
        const WP_HUGETLBFS_SHMEM = sys::UFFD_FEATURE_WP_HUGETLBFS_SHMEM as u64;
        /// Write-protection of pages not yet populated (anonymous memory).
        const WP_UNPOPULATED = sys::UFFD_FEATURE_WP_UNPOPULATED as u64;
        /// `UFFDIO_POISON`.
        const POISON = sys::UFFD_FEATURE_POISON as u64;
        /// Write-protect faults are resolved by the kernel itself (for
        /// `PAGEMAP_SCAN` dirty tracking).
        const WP_ASYNC = sys::UFFD_FEATURE_WP_ASYNC as u64;
        /// `UFFDIO_MOVE`.
        const MOVE = sys::UFFD_FEATURE_MOVE as u64;
        /// Bits of later kernels, kept as reported.
        const _ = !0;
    }
}

impl Features {
    /// What the daemon's fault server asks of a task's uffd on memfd
    /// mappings: MISSING, MINOR and WP on shmem, and POISON.
    pub const SHMEM_SERVING: Features = Features::MISSING_SHMEM
        .union(Features::MINOR_SHMEM)
        .union(Features::WP_HUGETLBFS_SHMEM)
        .union(Features::POISON);

    /// `UFFDIO_API(features = 0)` on a throwaway uffd—The features this
    /// kernel offers, asked once per process (the answer is kept).
    ///
    /// Errors: as [`NewUserfaultfd::create`] (userfaultfd unavailable), or
    /// [`Error::Host`] if the kernel refuses the handshake.
    pub fn available() -> Result<Features> {
        static AVAILABLE: OnceLock<Features> = OnceLock::new();
        if let Some(f) = AVAILABLE.get() {
            return Ok(*f);
        }
        let probe = create_fd()?;
        let mut api = sys::uffdio_api { api: sys::UFFD_API as u64, features: 0, ioctls: 0 };
        uffd_ioctl(probe.as_fd(), &mut api).map_err(host("ioctl(UFFDIO_API)"))?;
        Ok(*AVAILABLE.get_or_init(|| Features::from_bits_retain(api.features)))
    }
}

bitflags::bitflags! {
    /// The ioctls a uffd, or a registered range, allows (bit `_UFFDIO_*`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Ioctls: u64 {
        /// `UFFDIO_REGISTER`.
        const REGISTER = 1 << sys::_UFFDIO_REGISTER;
        /// `UFFDIO_UNREGISTER`.
        const UNREGISTER = 1 << sys::_UFFDIO_UNREGISTER;
        /// `UFFDIO_WAKE`.
        const WAKE = 1 << sys::_UFFDIO_WAKE;
        /// `UFFDIO_COPY`.
        const COPY = 1 << sys::_UFFDIO_COPY;
        /// `UFFDIO_ZEROPAGE`.
        const ZEROPAGE = 1 << sys::_UFFDIO_ZEROPAGE;
        /// `UFFDIO_MOVE`.
        const MOVE = 1 << sys::_UFFDIO_MOVE;
        /// `UFFDIO_WRITEPROTECT`.
        const WRITEPROTECT = 1 << sys::_UFFDIO_WRITEPROTECT;
        /// `UFFDIO_CONTINUE`.
        const CONTINUE = 1 << sys::_UFFDIO_CONTINUE;
        /// `UFFDIO_POISON`.
        const POISON = 1 << sys::_UFFDIO_POISON;
        /// `UFFDIO_API`.
        const API = 1 << sys::_UFFDIO_API;
        /// Bits of later kernels, kept as reported.
        const _ = !0;
    }
}

bitflags::bitflags! {
    /// `UFFDIO_REGISTER_MODE_*`: which faults of a range are reported.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct RegisterMode: u64 {
        /// Faults on pages the memory does not have (a memfd hole).
        const MISSING = sys::UFFDIO_REGISTER_MODE_MISSING as u64;
        /// Stores into write-protected pages.
        const WP = sys::UFFDIO_REGISTER_MODE_WP as u64;
        /// Faults on pages the memfd has but the mapping does not map yet.
        const MINOR = sys::UFFDIO_REGISTER_MODE_MINOR as u64;
    }
}

bitflags::bitflags! {
    /// How [`Userfaultfd::copy`] and [`Userfaultfd::continue_`] install pages.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct FillMode: u8 {
        /// Install the pages write-protected (`*_MODE_WP`): the next store
        /// into one is a write-protect fault. Needs a range registered `WP`.
        const WRITE_PROTECT = 1;
        /// Do not wake the threads waiting on the range (`*_MODE_DONTWAKE`);
        /// wake them later with [`Userfaultfd::wake`].
        const DONT_WAKE = 2;
    }
}

// Mode bits the UAPI header writes as `((__u64)1 << n)`, which bindgen
// leaves out of linux-raw-sys.
const CONTINUE_MODE_DONTWAKE: u64 = 1 << 0;
const CONTINUE_MODE_WP: u64 = 1 << 1;
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;

/// How a resolution met the process's other activity. The kernel wakes the
/// threads waiting on what it installed (unless asked not to), and only
/// those.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The whole range was resolved.
    Done,
    /// Only the first `bytes` were (and their waiters woken); the kernel
    /// stopped at the next page. Retry from there: that call's outcome says
    /// why it stopped.
    Partial {
        /// How many bytes were resolved.
        bytes: u64,
    },
    /// `EEXIST`, nothing done: the first page is already mapped (another
    /// handler resolved it, whose call woke its waiters), or for `COPY` and
    /// `ZEROPAGE` the memfd already holds it (use `CONTINUE`).
    Exists,
    /// `EAGAIN`, nothing done: the address space is changing (a fork,
    /// `mremap`, `munmap` or `madvise` whose event is not read yet). Read the
    /// events, then retry.
    Changed,
    /// `ENOENT`, nothing done: no range registered with this uffd is there
    /// any more (the process unmapped or moved it). A thread that faulted
    /// there may still wait: [`Userfaultfd::wake`] lets it retry (and take
    /// its `SIGSEGV`).
    Unmapped,
}

/// A fault, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFault {
    /// The faulting address: rounded down to its page unless the uffd has
    /// [`Features::EXACT_ADDRESS`].
    pub addr: u64,
    /// The access was a store.
    pub write: bool,
    /// A store into a write-protected page (registration `WP`).
    pub wp: bool,
    /// The memfd holds the page; the mapping does not map it yet
    /// (registration `MINOR`). Neither `wp` nor `minor`: a MISSING fault.
    pub minor: bool,
    /// The faulting thread, with [`Features::THREAD_ID`].
    pub thread: Option<u32>,
}

impl PageFault {
    /// The page that faulted.
    pub fn page(&self) -> PageRange {
        let page = crate::page_size();
        PageRange::new(self.addr / page * page, page).expect("a page-aligned page range")
    }
}

/// One message read from a uffd.
#[derive(Debug)]
pub enum Event {
    /// A thread waits for a page.
    PageFault(PageFault),
    /// The process forked ([`Features::EVENT_FORK`]): the child's uffd,
    /// registered as the parent's was, with the same features. The forking
    /// thread waits until this message is read.
    Fork {
        /// The child's uffd (another process's: [`Userfaultfd::register`]
        /// works on it).
        child: Userfaultfd,
    },
    /// `[from, from + len)` moved to `to` ([`Features::EVENT_REMAP`]).
    Remap {
        /// The old start.
        from: u64,
        /// The new start.
        to: u64,
        /// The length.
        len: u64,
    },
    /// `[start, end)` was discarded by `madvise` ([`Features::EVENT_REMOVE`]).
    Remove {
        /// The first byte.
        start: u64,
        /// One past the last.
        end: u64,
    },
    /// `[start, end)` was unmapped ([`Features::EVENT_UNMAP`]).
    Unmap {
        /// The first byte.
        start: u64,
        /// One past the last.
        end: u64,
    },
    /// A message this code does not know (a later kernel's).
    Unknown {
        /// Its `event` byte.
        event: u8,
        /// The whole message.
        raw: [u8; MSG],
    },
}

/// The size of a `struct uffd_msg`.
pub const MSG: usize = std::mem::size_of::<sys::uffd_msg>();

// The decoder reads `uffd_msg` as bytes at these offsets.
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(MSG == 32);
    assert!(offset_of!(sys::uffd_msg, event) == 0);
    assert!(offset_of!(sys::uffd_msg, arg) == 8);
    assert!(offset_of!(sys::uffd_msg__bindgen_ty_1__bindgen_ty_1, flags) == 0);
    assert!(offset_of!(sys::uffd_msg__bindgen_ty_1__bindgen_ty_1, address) == 8);
    assert!(offset_of!(sys::uffd_msg__bindgen_ty_1__bindgen_ty_1, feat) == 16);
    assert!(offset_of!(sys::uffd_msg__bindgen_ty_1__bindgen_ty_2, ufd) == 0);
    assert!(offset_of!(sys::uffd_msg__bindgen_ty_1__bindgen_ty_3, from) == 0);
    assert!(offset_of!(sys::uffd_msg__bindgen_ty_1__bindgen_ty_3, to) == 8);
    assert!(offset_of!(sys::uffd_msg__bindgen_ty_1__bindgen_ty_3, len) == 16);
    assert!(offset_of!(sys::uffd_msg__bindgen_ty_1__bindgen_ty_4, start) == 0);
    assert!(offset_of!(sys::uffd_msg__bindgen_ty_1__bindgen_ty_4, end) == 8);
    assert!(size_of::<RawFd>() == 4);
};

/// How many messages one `read` takes at most.
const BATCH: usize = 64;

/// A uffd before its handshake: made by this process for itself, or
/// received from another process. See the module comment for the steps.
#[derive(Debug)]
pub struct NewUserfaultfd {
    fd: OwnedFd,
    own: bool,
}

/// A uffd after its handshake: registers ranges and resolves their faults.
/// `Sync`: its calls may come from many threads at once.
#[derive(Debug)]
pub struct Userfaultfd {
    fd: OwnedFd,
    features: Features,
    ioctls: Ioctls,
    own: bool,
}

impl NewUserfaultfd {
    /// `userfaultfd(O_CLOEXEC | O_NONBLOCK)`, or where that is refused,
    /// `open("/dev/userfaultfd")` and `ioctl(USERFAULTFD_IOC_NEW)`—A new
    /// uffd for this process's own memory.
    ///
    /// Errors: [`Error::Host`] naming the syscall's refusal (`EPERM`,
    /// `ENOSYS`) when `/dev/userfaultfd` is missing too, or the device's
    /// refusal (`EACCES` for a process that may not open it).
    pub fn create() -> Result<NewUserfaultfd> {
        let fd = create_fd()?;
        remember_own(&fd)?;
        Ok(NewUserfaultfd { fd, own: true })
    }

    /// `ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK)`—A new uffd
    /// for this process's memory from an open `/dev/userfaultfd` (which a
    /// process that may not open the device can be handed).
    ///
    /// Errors: [`Error::WrongDescriptor`] if `dev` is not that device;
    /// [`Error::Host`] if the ioctl fails.
    pub fn from_device(dev: impl AsFd) -> Result<NewUserfaultfd> {
        let dev = dev.as_fd();
        let st = rustix::fs::fstat(dev).map_err(host("fstat"))?;
        let want = rustix::fs::stat("/dev/userfaultfd").map_err(host("stat(/dev/userfaultfd)"))?;
        let is_char = rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::CharacterDevice;
        if !is_char || st.st_rdev != want.st_rdev {
            return Err(Error::WrongDescriptor { expected: "/dev/userfaultfd", found: describe(dev) });
        }
        let fd = ioc_new(dev)?;
        remember_own(&fd)?;
        Ok(NewUserfaultfd { fd, own: true })
    }

    /// Takes a descriptor received from another process as its uffd: checks
    /// what it is (`readlink("/proc/self/fd/N")`) and makes it non-blocking
    /// (`fcntl(F_SETFL, O_NONBLOCK)`; the flag is on the open file, so the
    /// sender's copy becomes non-blocking too).
    ///
    /// Errors: [`Error::WrongDescriptor`] if it is not a uffd;
    /// [`Error::Host`] if `/proc` cannot say or `fcntl` fails.
    pub fn from_received(fd: OwnedFd) -> Result<NewUserfaultfd> {
        let what = describe(fd.as_fd());
        if what != "anon_inode:[userfaultfd]" {
            return Err(Error::WrongDescriptor { expected: "a userfaultfd", found: what });
        }
        set_nonblocking(fd.as_fd())?;
        let own = is_own(&fd)?;
        Ok(NewUserfaultfd { fd, own })
    }

    /// The descriptor, to send to the process that will make the handshake.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Whether this uffd serves this process's own memory (module comment).
    pub fn is_own(&self) -> bool {
        self.own
    }

    /// `ioctl(UFFDIO_API, features = need)`—The handshake: enables exactly
    /// the features `need` (with `WP_UNPOPULATED` if `WP_ASYNC`, as the
    /// kernel does).
    ///
    /// Errors: [`Error::Unsupported`] if the kernel lacks some of them;
    /// [`Error::Host`] if the kernel refuses (`EPERM`: `EVENT_FORK` without
    /// `CAP_SYS_PTRACE`; `EINVAL`: the handshake was made already).
    pub fn handshake(self, need: Features) -> Result<Userfaultfd> {
        let missing = need.difference(Features::available()?);
        if !missing.is_empty() {
            return Err(Error::Unsupported { missing });
        }
        let mut api = sys::uffdio_api { api: sys::UFFD_API as u64, features: need.bits(), ioctls: 0 };
        uffd_ioctl(self.fd.as_fd(), &mut api).map_err(host("ioctl(UFFDIO_API)"))?;
        let mut features = need;
        if need.contains(Features::WP_ASYNC) {
            features |= Features::WP_UNPOPULATED;
        }
        Ok(Userfaultfd { fd: self.fd, features, ioctls: Ioctls::from_bits_retain(api.ioctls), own: self.own })
    }
}

impl AsFd for NewUserfaultfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Userfaultfd {
    /// [`NewUserfaultfd::create`] and its handshake.
    pub fn open(need: Features) -> Result<Userfaultfd> {
        NewUserfaultfd::create()?.handshake(need)
    }

    /// The features enabled by the handshake.
    pub fn features(&self) -> Features {
        self.features
    }

    /// The ioctls the handshake reported for the uffd itself (`API`,
    /// `REGISTER`, `UNREGISTER`).
    pub fn api_ioctls(&self) -> Ioctls {
        self.ioctls
    }

    /// Whether this uffd serves this process's own memory (module comment).
    pub fn is_own(&self) -> bool {
        self.own
    }

    /// `ioctl(UFFDIO_REGISTER, range, mode)`—Reports the faults `mode`
    /// names in `range` of another process's address space, and returns
    /// the resolution ioctls the range allows.
    ///
    /// Errors: [`Error::AddressSpace`] on a uffd of this process (register
    /// a [`Mapping`] instead); [`Error::Host`] if the kernel refuses
    /// (`EINVAL`: a mode the memory cannot have, as MINOR on anonymous
    /// memory; `EPERM`: a
    /// mapping of a read-only descriptor; `EBUSY`: registered with another
    /// uffd; `ENOMEM`: part of the range is not mapped).
    pub fn register(&self, range: PageRange, mode: RegisterMode) -> Result<Ioctls> {
        if self.own {
            return Err(Error::AddressSpace(
                "this process's own userfaultfd registers only Mappings (register_mapping), not raw ranges",
            ));
        }
        self.register_range(range, mode)
    }

    /// [`Userfaultfd::register`] of this process's `mapping`, on a uffd of
    /// this process. The registration ends with the mapping.
    ///
    /// Errors: [`Error::AddressSpace`] on another process's uffd; otherwise
    /// as [`Userfaultfd::register`].
    pub fn register_mapping(&self, mapping: &Mapping, mode: RegisterMode) -> Result<Ioctls> {
        if !self.own {
            return Err(Error::AddressSpace(
                "another process's userfaultfd: its address space has none of this process's mappings",
            ));
        }
        self.register_range(mapping.range(), mode)
    }

    fn register_range(&self, range: PageRange, mode: RegisterMode) -> Result<Ioctls> {
        let mut reg = sys::uffdio_register { range: raw(range), mode: mode.bits(), ioctls: 0 };
        self.ioctl(&mut reg).map_err(host("ioctl(UFFDIO_REGISTER)"))?;
        Ok(Ioctls::from_bits_retain(reg.ioctls))
    }

    /// `ioctl(UFFDIO_UNREGISTER, range)`—Stops reporting faults in `range`
    /// and wakes the threads waiting there (the kernel handles their faults
    /// itself).
    ///
    /// Errors: [`Error::Host`] if the kernel refuses (`EINVAL` for a range
    /// registered with another uffd).
    pub fn unregister(&self, range: PageRange) -> Result<()> {
        self.ioctl(&mut UnregisterArg(raw(range))).map_err(host("ioctl(UFFDIO_UNREGISTER)"))
    }

    /// `ioctl(UFFDIO_CONTINUE, range, mode)`—Maps the pages the memfd holds
    /// at `range` into the faulting mapping (after a MINOR fault, or after
    /// the handler wrote the page of a MISSING fault into the memfd).
    ///
    /// Any registered range takes it (the registration's mode decides only
    /// which faults are reported), and so for the other fills.
    ///
    /// Errors: [`Error::Host`] with `EFAULT` if the memfd has a hole at the
    /// first page (a hole further on ends a [`Outcome::Partial`]), `EINVAL`
    /// for `WRITE_PROTECT` on a range not registered WP;
    /// [`Error::ProcessExited`].
    pub fn continue_(&self, range: PageRange, mode: FillMode) -> Result<Outcome> {
        let mut bits = 0;
        if mode.contains(FillMode::WRITE_PROTECT) {
            bits |= CONTINUE_MODE_WP;
        }
        if mode.contains(FillMode::DONT_WAKE) {
            bits |= CONTINUE_MODE_DONTWAKE;
        }
        let mut arg = sys::uffdio_continue { range: raw(range), mode: bits, mapped: 0 };
        let res = self.ioctl(&mut arg);
        outcome("ioctl(UFFDIO_CONTINUE)", res, arg.mapped)
    }

    /// `ioctl(UFFDIO_COPY, dst, src, len, mode)`—Fills the missing pages at
    /// `dst` with `src` (whose length is a page multiple); on a memfd
    /// mapping the pages become the memfd's too.
    ///
    /// Errors: [`Error::BadRange`] if `dst` or the length of `src` is not
    /// page-aligned; [`Error::Host`] with `EINVAL` for `WRITE_PROTECT` on a
    /// range not registered WP; [`Error::ProcessExited`].
    pub fn copy(&self, dst: u64, src: &[u8], mode: FillMode) -> Result<Outcome> {
        let range = PageRange::new(dst, src.len() as u64)?;
        let mut bits = 0;
        if mode.contains(FillMode::WRITE_PROTECT) {
            bits |= sys::UFFDIO_COPY_MODE_WP as u64;
        }
        if mode.contains(FillMode::DONT_WAKE) {
            bits |= sys::UFFDIO_COPY_MODE_DONTWAKE as u64;
        }
        let mut arg =
            sys::uffdio_copy { dst: range.start(), src: src.as_ptr() as u64, len: range.len(), mode: bits, copy: 0 };
        let res = self.ioctl(&mut arg);
        outcome("ioctl(UFFDIO_COPY)", res, arg.copy)
    }

    /// `ioctl(UFFDIO_ZEROPAGE, range)`—Fills the missing pages of `range`
    /// with zeros and wakes their waiters.
    ///
    /// Errors: [`Error::Host`] if the kernel refuses; [`Error::ProcessExited`].
    pub fn zeropage(&self, range: PageRange) -> Result<Outcome> {
        let mut arg = sys::uffdio_zeropage { range: raw(range), mode: 0, zeropage: 0 };
        let res = self.ioctl(&mut arg);
        outcome("ioctl(UFFDIO_ZEROPAGE)", res, arg.zeropage)
    }

    /// `ioctl(UFFDIO_POISON, range)`—Marks the unmapped pages of `range` so
    /// that any access raises `SIGBUS` (how the daemon refuses a page), and
    /// wakes their waiters, who take it. A mapped page is
    /// [`Outcome::Exists`]: punch it from the memfd first. The poison lasts
    /// until a later fill replaces it (`COPY` does).
    ///
    /// Errors: [`Error::Host`] if the kernel refuses (`EINVAL` on a kernel
    /// without it, before 6.6); [`Error::ProcessExited`].
    pub fn poison(&self, range: PageRange) -> Result<Outcome> {
        let mut arg = sys::uffdio_poison { range: raw(range), mode: 0, updated: 0 };
        let res = self.ioctl(&mut arg);
        outcome("ioctl(UFFDIO_POISON)", res, arg.updated)
    }

    /// `ioctl(UFFDIO_WRITEPROTECT, range, on ? MODE_WP : 0)`—Sets or lifts
    /// write-protection of `range`; lifting it wakes the threads waiting on
    /// a write-protect fault there. The protection holds whatever
    /// `mprotect` the process makes.
    ///
    /// Returns [`Outcome::Done`], [`Outcome::Changed`] or
    /// [`Outcome::Unmapped`] (also for a range not registered WP).
    ///
    /// Errors: [`Error::Host`] if the kernel refuses; [`Error::ProcessExited`].
    pub fn writeprotect(&self, range: PageRange, on: bool) -> Result<Outcome> {
        let mut arg = sys::uffdio_writeprotect { range: raw(range), mode: if on { WRITEPROTECT_MODE_WP } else { 0 } };
        let res = self.ioctl(&mut arg);
        outcome("ioctl(UFFDIO_WRITEPROTECT)", res, 0)
    }

    /// `ioctl(UFFDIO_WAKE, range)`—Wakes the threads waiting on `range`;
    /// each retries its access (and faults again if nothing changed).
    ///
    /// Errors: [`Error::Host`] with `EINVAL` for a range past the end of a
    /// user address space.
    pub fn wake(&self, range: PageRange) -> Result<()> {
        self.ioctl(&mut WakeArg(raw(range))).map_err(host("ioctl(UFFDIO_WAKE)"))
    }

    /// `read(uffd, msgs)` without waiting, repeated while messages
    /// come—Appends up to `max` waiting messages to `out`, decoded, reading
    /// up to 64 per call; returns how many. 0 means none is waiting now
    /// (`EAGAIN` is not an error). A message of a later kernel is
    /// [`Event::Unknown`].
    ///
    /// Errors: [`Error::Host`] if `read` fails otherwise, or `fcntl` on a
    /// forked child's uffd does (the events read are in `out` all the same).
    pub fn read_events(&self, out: &mut Vec<Event>, max: usize) -> Result<usize> {
        let mut buf = [0u8; MSG * BATCH];
        let mut n = 0;
        let mut failed = None;
        while n < max {
            let want = (max - n).min(BATCH) * MSG;
            let got = match self.read_now(&mut buf[..want]) {
                Ok(got) => got,
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(host("read(userfaultfd)")(e)),
            };
            for msg in buf[..got].chunks_exact(MSG) {
                match self.decode(msg.try_into().expect("chunks of MSG bytes")) {
                    Ok(event) => out.push(event),
                    Err(e) => failed = failed.or(Some(e)),
                }
                n += 1;
            }
            if got < want {
                break;
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// `poll(uffd, POLLIN, timeout)`—Waits until a message is waiting (true)
    /// or `timeout` passes (false); `None` waits for ever. An interrupted
    /// wait returns false early. A uffd found blocking (`POLLERR`: a process
    /// sharing its open file cleared `O_NONBLOCK`) is made non-blocking again
    /// and reported as true: [`Userfaultfd::read_events`] then says whether
    /// anything waits.
    ///
    /// Errors: [`Error::Host`] if `poll` or `fcntl` fails.
    pub fn wait_readable(&self, timeout: Option<Duration>) -> Result<bool> {
        let ts = timeout.map(|d| {
            rustix::event::Timespec::try_from(d).unwrap_or(rustix::event::Timespec { tv_sec: i64::MAX, tv_nsec: 0 })
        });
        let mut fds = [rustix::event::PollFd::new(&self.fd, rustix::event::PollFlags::IN)];
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(_) if fds[0].revents().contains(rustix::event::PollFlags::ERR) => {
                self.ensure_nonblocking()?;
                Ok(true)
            }
            Ok(_) => Ok(fds[0].revents().contains(rustix::event::PollFlags::IN)),
            Err(Errno::INTR) => Ok(false),
            Err(e) => Err(host("poll")(e)),
        }
    }

    /// `fcntl(F_GETFL)`, and `fcntl(F_SETFL, O_NONBLOCK)` if it is
    /// missing—Makes the uffd non-blocking again; true if it had to. The
    /// flag belongs to the open file, which the process that made the uffd
    /// may share and change: an event loop that sees `EPOLLERR` on a uffd
    /// calls this (otherwise the uffd polls as an error for ever).
    /// [`Userfaultfd::read_events`] never blocks either way.
    ///
    /// Errors: [`Error::Host`] if `fcntl` fails.
    pub fn ensure_nonblocking(&self) -> Result<bool> {
        let fl = rustix::fs::fcntl_getfl(&self.fd).map_err(host("fcntl(F_GETFL)"))?;
        if fl.contains(OFlags::NONBLOCK) {
            return Ok(false);
        }
        rustix::fs::fcntl_setfl(&self.fd, fl | OFlags::NONBLOCK).map_err(host("fcntl(F_SETFL)"))?;
        Ok(true)
    }

    /// `preadv2(uffd, buf, -1, RWF_NOWAIT)`, or `read(uffd, buf)` on kernels
    /// whose uffd lacks `RWF_NOWAIT` (before 6.7)—A read that does not wait
    /// even if another process made the open file blocking.
    fn read_now(&self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        static NOWAIT: AtomicBool = AtomicBool::new(true);
        if NOWAIT.load(Ordering::Relaxed) {
            let flags = rustix::io::ReadWriteFlags::NOWAIT;
            // `u64::MAX` is rustix's "at the file offset" (a uffd has none).
            match rustix::io::preadv2(&self.fd, &mut [std::io::IoSliceMut::new(buf)], u64::MAX, flags) {
                Err(Errno::OPNOTSUPP | Errno::NOSYS) => NOWAIT.store(false, Ordering::Relaxed),
                other => return other,
            }
        }
        rustix::io::read(&self.fd, buf)
    }

    fn decode(&self, m: &[u8; MSG]) -> Result<Event> {
        let u64_at = |o: usize| u64::from_ne_bytes(m[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_ne_bytes(m[o..o + 4].try_into().expect("4 bytes"));
        Ok(match u32::from(m[0]) {
            sys::UFFD_EVENT_PAGEFAULT => {
                let flags = u64_at(8);
                Event::PageFault(PageFault {
                    addr: u64_at(16),
                    write: flags & sys::UFFD_PAGEFAULT_FLAG_WRITE as u64 != 0,
                    wp: flags & sys::UFFD_PAGEFAULT_FLAG_WP as u64 != 0,
                    minor: flags & sys::UFFD_PAGEFAULT_FLAG_MINOR as u64 != 0,
                    thread: self.features.contains(Features::THREAD_ID).then(|| u32_at(24)),
                })
            }
            sys::UFFD_EVENT_FORK => {
                // SAFETY: the kernel installed this descriptor in this
                // process's table for this read (the message is read once),
                // and nothing else owns it.
                let fd = unsafe { OwnedFd::from_raw_fd(u32_at(8) as RawFd) };
                set_nonblocking(fd.as_fd())?;
                Event::Fork { child: Userfaultfd { fd, features: self.features, ioctls: self.ioctls, own: false } }
            }
            sys::UFFD_EVENT_REMAP => Event::Remap { from: u64_at(8), to: u64_at(16), len: u64_at(24) },
            sys::UFFD_EVENT_REMOVE => Event::Remove { start: u64_at(8), end: u64_at(16) },
            sys::UFFD_EVENT_UNMAP => Event::Unmap { start: u64_at(8), end: u64_at(16) },
            _ => Event::Unknown { event: m[0], raw: *m },
        })
    }

    fn ioctl<T: UffdArg>(&self, arg: &mut T) -> rustix::io::Result<()> {
        uffd_ioctl(self.fd.as_fd(), arg)
    }
}

impl AsFd for Userfaultfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A resolution's result as an [`Outcome`]: `done` is the count the kernel
/// wrote back (bytes resolved, or a negated errno).
fn outcome(call: &'static str, res: rustix::io::Result<()>, done: i64) -> Result<Outcome> {
    match res {
        Ok(()) => Ok(Outcome::Done),
        // The kernel returns EAGAIN whenever it resolved less than asked.
        Err(_) if done > 0 => Ok(Outcome::Partial { bytes: done as u64 }),
        Err(Errno::EXIST) => Ok(Outcome::Exists),
        Err(Errno::AGAIN) => Ok(Outcome::Changed),
        Err(Errno::NOENT) => Ok(Outcome::Unmapped),
        Err(Errno::SRCH) => Err(Error::ProcessExited),
        Err(e) => Err(host(call)(e)),
    }
}

fn raw(range: PageRange) -> sys::uffdio_range {
    sys::uffdio_range { start: range.start(), len: range.len() }
}

/// The syscall, or the device (step 1 of the module comment). Not
/// remembered as this process's own: the callers decide.
fn create_fd() -> Result<OwnedFd> {
    let flags = rustix::mm::UserfaultfdFlags::CLOEXEC | rustix::mm::UserfaultfdFlags::NONBLOCK;
    // SAFETY: creating a uffd changes no memory; what it can do later is
    // confined by this module (the module comment's soundness rules).
    let refused = match unsafe { rustix::mm::userfaultfd(flags) } {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    match rustix::fs::open("/dev/userfaultfd", OFlags::RDWR | OFlags::CLOEXEC, rustix::fs::Mode::empty()) {
        Ok(dev) => ioc_new(dev.as_fd()),
        Err(Errno::NOENT) => Err(Error::Host { call: "userfaultfd", errno: refused }),
        Err(e) => Err(host("open(/dev/userfaultfd)")(e)),
    }
}

/// `ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK)` on a
/// descriptor known to be `/dev/userfaultfd`.
fn ioc_new(dev: BorrowedFd<'_>) -> Result<OwnedFd> {
    struct IocNew;
    // SAFETY: USERFAULTFD_IOC_NEW takes its flags as the integer argument and
    // returns a new descriptor, which `output_from_ptr` takes ownership of.
    unsafe impl Ioctl for IocNew {
        type Output = OwnedFd;
        const IS_MUTATING: bool = false;
        fn opcode(&self) -> Opcode {
            IOC_NEW
        }
        fn as_ptr(&mut self) -> *mut c_void {
            (OFlags::CLOEXEC | OFlags::NONBLOCK).bits() as usize as *mut c_void
        }
        unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<OwnedFd> {
            // SAFETY: on success the ioctl's result is a descriptor the
            // kernel just installed for this call; no one else owns it.
            Ok(unsafe { OwnedFd::from_raw_fd(out) })
        }
    }
    // SAFETY: callers pass only `/dev/userfaultfd`, whose ioctl this is.
    unsafe { rustix::ioctl::ioctl(dev, IocNew) }.map_err(host("ioctl(USERFAULTFD_IOC_NEW)"))
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<()> {
    let fl = rustix::fs::fcntl_getfl(fd).map_err(host("fcntl(F_GETFL)"))?;
    rustix::fs::fcntl_setfl(fd, fl | OFlags::NONBLOCK).map_err(host("fcntl(F_SETFL)"))
}

/// What `/proc/self/fd/N` says a descriptor is.
fn describe(fd: BorrowedFd<'_>) -> String {
    match rustix::fs::readlink(format!("/proc/self/fd/{}", fd.as_raw_fd()), Vec::new()) {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(e) => format!("unknown (readlink: {e})"),
    }
}

/// The identities (device, inode) of the uffds this process made for
/// itself: a uffd's inode is its own, so one received back is recognised.
static OWN: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

fn identity(fd: &OwnedFd) -> Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd).map_err(host("fstat"))?;
    Ok((st.st_dev, st.st_ino))
}

fn remember_own(fd: &OwnedFd) -> Result<()> {
    let id = identity(fd)?;
    OWN.lock().unwrap_or_else(|e| e.into_inner()).push(id);
    Ok(())
}

fn is_own(fd: &OwnedFd) -> Result<bool> {
    let id = identity(fd)?;
    Ok(OWN.lock().unwrap_or_else(|e| e.into_inner()).contains(&id))
}

// ----- the ioctls -----

const UFFDIO: u8 = sys::UFFDIO as u8;
const IOC_NEW: Opcode = opcode::none(sys::USERFAULTFD_IOC as u8, 0x00);

/// A userfaultfd ioctl's argument.
///
/// # Safety
///
/// `OPCODE` is the userfaultfd ioctl whose argument is `Self`: the kernel
/// reads and writes that many bytes at the pointer, no more.
unsafe trait UffdArg: Sized {
    const OPCODE: Opcode;
}

/// `UFFDIO_UNREGISTER`'s argument (a range, like `UFFDIO_WAKE`'s).
#[repr(transparent)]
struct UnregisterArg(sys::uffdio_range);
/// `UFFDIO_WAKE`'s argument.
#[repr(transparent)]
struct WakeArg(sys::uffdio_range);

// SAFETY: each opcode is the UAPI header's `_IOWR`/`_IOR` of the same
// number and structure (`tests::opcodes_are_the_kernels` compares them with
// linux-raw-sys's numbers where it has them). So for all below.
unsafe impl UffdArg for sys::uffdio_api {
    const OPCODE: Opcode = opcode::read_write::<Self>(UFFDIO, sys::_UFFDIO_API as u8);
}
// SAFETY: as above.
unsafe impl UffdArg for sys::uffdio_register {
    const OPCODE: Opcode = opcode::read_write::<Self>(UFFDIO, sys::_UFFDIO_REGISTER as u8);
}
// SAFETY: as above.
unsafe impl UffdArg for UnregisterArg {
    const OPCODE: Opcode = opcode::read::<sys::uffdio_range>(UFFDIO, sys::_UFFDIO_UNREGISTER as u8);
}
// SAFETY: as above.
unsafe impl UffdArg for WakeArg {
    const OPCODE: Opcode = opcode::read::<sys::uffdio_range>(UFFDIO, sys::_UFFDIO_WAKE as u8);
}
// SAFETY: as above.
unsafe impl UffdArg for sys::uffdio_copy {
    const OPCODE: Opcode = opcode::read_write::<Self>(UFFDIO, sys::_UFFDIO_COPY as u8);
}
// SAFETY: as above.
unsafe impl UffdArg for sys::uffdio_zeropage {
    const OPCODE: Opcode = opcode::read_write::<Self>(UFFDIO, sys::_UFFDIO_ZEROPAGE as u8);
}
// SAFETY: as above.
unsafe impl UffdArg for sys::uffdio_writeprotect {
    const OPCODE: Opcode = opcode::read_write::<Self>(UFFDIO, sys::_UFFDIO_WRITEPROTECT as u8);
}
// SAFETY: as above.
unsafe impl UffdArg for sys::uffdio_continue {
    const OPCODE: Opcode = opcode::read_write::<Self>(UFFDIO, sys::_UFFDIO_CONTINUE as u8);
}
// SAFETY: as above (linux-raw-sys has no number for this one).
unsafe impl UffdArg for sys::uffdio_poison {
    const OPCODE: Opcode = opcode::read_write::<Self>(UFFDIO, sys::_UFFDIO_POISON as u8);
}

/// The argument and its opcode, as rustix's `Ioctl`.
struct Op<'a, T: UffdArg>(&'a mut T);

// SAFETY: the pointer is to a live, exclusively borrowed `T`, of the size
// `T::OPCODE` says (`UffdArg`'s contract); there is no output to extract.
unsafe impl<T: UffdArg> Ioctl for Op<'_, T> {
    type Output = ();
    const IS_MUTATING: bool = true;
    fn opcode(&self) -> Opcode {
        T::OPCODE
    }
    fn as_ptr(&mut self) -> *mut c_void {
        (self.0 as *mut T).cast()
    }
    unsafe fn output_from_ptr(_: IoctlOutput, _: *mut c_void) -> rustix::io::Result<()> {
        Ok(())
    }
}

/// `ioctl(fd, T::OPCODE, arg)` on a descriptor known to be a uffd (every
/// caller holds one: made here, checked on receipt, or installed by the
/// kernel for a fork).
fn uffd_ioctl<T: UffdArg>(fd: BorrowedFd<'_>, arg: &mut T) -> rustix::io::Result<()> {
    // SAFETY: `fd` is a uffd, so the kernel's uffd ioctl handler reads and
    // writes only `*arg` (`UffdArg`'s contract); the memory the ioctl then
    // changes is the uffd's process's, confined by the module comment's
    // rules (a `src` pointer given to COPY is a live slice of this process).
    unsafe { rustix::ioctl::ioctl(fd, Op(arg)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linux_raw_sys::ioctl as nr;

    #[test]
    fn opcodes_are_the_kernels() {
        assert_eq!(sys::uffdio_api::OPCODE, nr::UFFDIO_API as Opcode);
        assert_eq!(sys::uffdio_register::OPCODE, nr::UFFDIO_REGISTER as Opcode);
        assert_eq!(UnregisterArg::OPCODE, nr::UFFDIO_UNREGISTER as Opcode);
        assert_eq!(WakeArg::OPCODE, nr::UFFDIO_WAKE as Opcode);
        assert_eq!(sys::uffdio_copy::OPCODE, nr::UFFDIO_COPY as Opcode);
        assert_eq!(sys::uffdio_zeropage::OPCODE, nr::UFFDIO_ZEROPAGE as Opcode);
        assert_eq!(sys::uffdio_writeprotect::OPCODE, nr::UFFDIO_WRITEPROTECT as Opcode);
        assert_eq!(sys::uffdio_continue::OPCODE, nr::UFFDIO_CONTINUE as Opcode);
        // From the UAPI header: _IOWR(0xAA, 0x08, struct uffdio_poison), 32 bytes.
        assert_eq!(sys::uffdio_poison::OPCODE, 0xc020_aa08);
        // _IO(0xAA, 0x00).
        assert_eq!(IOC_NEW, 0xaa00);
    }

    fn msg(event: u32, words: [u64; 3]) -> [u8; MSG] {
        let mut m = [0u8; MSG];
        m[0] = event as u8;
        for (i, w) in words.iter().enumerate() {
            m[8 + 8 * i..16 + 8 * i].copy_from_slice(&w.to_ne_bytes());
        }
        m
    }

    #[test]
    fn messages_decode_and_unknown_ones_are_kept() {
        // A uffd value only for its features; no kernel call is made.
        let (a, _b) = rustix::pipe::pipe().unwrap();
        let u = Userfaultfd { fd: a, features: Features::THREAD_ID, ioctls: Ioctls::empty(), own: false };
        let flags = (sys::UFFD_PAGEFAULT_FLAG_WRITE | sys::UFFD_PAGEFAULT_FLAG_WP) as u64;
        match u.decode(&msg(sys::UFFD_EVENT_PAGEFAULT, [flags, 0x7000_1000, 4242])).unwrap() {
            Event::PageFault(f) => {
                assert_eq!(f, PageFault { addr: 0x7000_1000, write: true, wp: true, minor: false, thread: Some(4242) })
            }
            other => panic!("{other:?}"),
        }
        match u.decode(&msg(sys::UFFD_EVENT_REMAP, [1 << 12, 2 << 12, 3 << 12])).unwrap() {
            Event::Remap { from, to, len } => assert_eq!((from, to, len), (1 << 12, 2 << 12, 3 << 12)),
            other => panic!("{other:?}"),
        }
        match u.decode(&msg(sys::UFFD_EVENT_UNMAP, [4096, 8192, 0])).unwrap() {
            Event::Unmap { start, end } => assert_eq!((start, end), (4096, 8192)),
            other => panic!("{other:?}"),
        }
        let strange = msg(0x7f, [1, 2, 3]);
        match u.decode(&strange).unwrap() {
            Event::Unknown { event, raw } => assert_eq!((event, raw), (0x7f, strange)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn outcomes_follow_the_kernels_conventions() {
        let call = "test";
        assert_eq!(outcome(call, Ok(()), 4096).unwrap(), Outcome::Done);
        assert_eq!(outcome(call, Err(Errno::AGAIN), 8192).unwrap(), Outcome::Partial { bytes: 8192 });
        assert_eq!(outcome(call, Err(Errno::AGAIN), -(Errno::AGAIN.raw_os_error() as i64)).unwrap(), Outcome::Changed);
        assert_eq!(outcome(call, Err(Errno::EXIST), -17).unwrap(), Outcome::Exists);
        assert_eq!(outcome(call, Err(Errno::NOENT), -2).unwrap(), Outcome::Unmapped);
        assert!(matches!(outcome(call, Err(Errno::SRCH), 0), Err(Error::ProcessExited)));
        assert_eq!(outcome(call, Err(Errno::FAULT), -14).unwrap_err().errno(), Some(Errno::FAULT));
    }
}

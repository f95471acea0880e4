//! [`Arena`]: the room a task process reserves for the memory the daemon
//! serves it: one range of its address space (anonymous memory, no swap
//! reserved, never populated: the daemon registers its holes with the
//! process's userfaultfd and answers every access there with `SIGSEGV`,
//! a Mach exception it reports), inside which windows of object memfds
//! are mapped at the addresses the kernel chose (`MAP_FIXED` within the
//! arena only, so no memory this process uses otherwise is replaced).
//! Neither the holes nor the windows are inherited by a child the process
//! forks (`MADV_DONTFORK`).
//!
//! The task's whole VM address space *is* the arena (the daemon bounds the
//! task's map to it): a kernel address is a process address, with no
//! translation.
//!
//! Access to the memory follows [`crate::mapping`]'s rules (copies made of
//! atomic word accesses, no slices), with one difference: the arena does
//! not check protection itself. What a store into a read-only window does
//! is up to the host MMU and the daemon (the process gets `SIGSEGV`), as
//! for any real program.

use crate::mapping::{read_words, write_words};
use crate::{host, Error, PageRange, Result};
use rustix::fd::AsFd;
use rustix::fs::OFlags;
use rustix::mm::{MapFlags, ProtFlags};
use std::ffi::c_void;
use std::ptr::NonNull;

/// The arena's holes: anonymous memory the daemon registers and never
/// fills, writable so that the userfaultfd accepts it (and reports stores
/// as well as loads).
const HOLE_PROT: ProtFlags = ProtFlags::READ.union(ProtFlags::WRITE);
const HOLE_FLAGS: MapFlags = MapFlags::PRIVATE.union(MapFlags::NORESERVE);

/// A reserved range of this process's address space (see the module
/// comment), unmapped when dropped.
#[derive(Debug)]
pub struct Arena {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the arena is plain memory owned by this value; every access this
// type makes is atomic (module comment), so sharing it between threads adds
// no race that atomics do not define.
unsafe impl Send for Arena {}
// SAFETY: as for `Send`.
unsafe impl Sync for Arena {}

impl Arena {
    /// `mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)`:
    /// reserves `len` bytes (a page multiple) where the kernel chooses.
    ///
    /// Errors: [`Error::BadRange`] for a length that is not a non-zero page
    /// multiple; [`Error::Host`] if `mmap` fails (`ENOMEM`).
    pub fn reserve(len: u64) -> Result<Arena> {
        let bad = || Error::BadRange { start: 0, len };
        if len == 0 || len % crate::page_size() != 0 {
            return Err(bad());
        }
        let n = usize::try_from(len).map_err(|_| bad())?;
        // SAFETY: a null hint without MAP_FIXED: the kernel picks addresses
        // nothing else of this process uses.
        let ptr = unsafe { rustix::mm::mmap_anonymous(std::ptr::null_mut(), n, HOLE_PROT, HOLE_FLAGS) }
            .map_err(host("mmap"))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Error::Host { call: "mmap", errno: crate::Errno::NOMEM })?;
        let arena = Arena { ptr, len: n };
        arena.dont_fork(arena.range())?;
        Ok(arena)
    }

    /// Reserves `range` exactly (`MAP_FIXED_NOREPLACE`): the arena of a
    /// child task, whose address space is a copy of its parent's at the
    /// parent's addresses.
    ///
    /// Errors: [`Error::Host`] with `EEXIST` if this process uses part of
    /// the range already; otherwise as [`Arena::reserve`].
    pub fn reserve_at(range: PageRange) -> Result<Arena> {
        let n = usize::try_from(range.len()).map_err(|_| Error::BadRange { start: range.start(), len: range.len() })?;
        // SAFETY: MAP_FIXED_NOREPLACE never replaces a mapping: the call fails
        // (EEXIST) where this process has one.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                range.start() as *mut c_void,
                n,
                HOLE_PROT,
                HOLE_FLAGS | MapFlags::FIXED_NOREPLACE,
            )
        }
        .map_err(host("mmap"))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Error::Host { call: "mmap", errno: crate::Errno::NOMEM })?;
        if ptr.as_ptr() as u64 != range.start() {
            // A kernel older than 4.17 takes the flag for a hint.
            let arena = Arena { ptr, len: n };
            drop(arena);
            return Err(Error::Host { call: "mmap(MAP_FIXED_NOREPLACE)", errno: crate::Errno::EXIST });
        }
        let arena = Arena { ptr, len: n };
        arena.dont_fork(range)?;
        Ok(arena)
    }

    /// `mprotect(range, prot)` inside the arena: what a program may do to
    /// its own memory. The daemon's write protection holds whatever this
    /// says (a store into memory the task may only read is still refused).
    ///
    /// Errors: [`Error::OutOfBounds`] outside the arena; [`Error::Host`] if
    /// `mprotect` fails.
    pub fn protect(&self, range: PageRange, prot: crate::Prot) -> Result<()> {
        self.check(range)?;
        let mut f = rustix::mm::MprotectFlags::empty();
        f.set(rustix::mm::MprotectFlags::READ, prot.contains(crate::Prot::READ));
        f.set(rustix::mm::MprotectFlags::WRITE, prot.contains(crate::Prot::WRITE));
        // SAFETY: the range lies inside the arena, which this value owns, and
        // no Rust reference points into it (module comment).
        unsafe { rustix::mm::mprotect(range.start() as *mut c_void, range.len() as usize, f) }.map_err(host("mprotect"))
    }

    /// The addresses the arena covers.
    pub fn range(&self) -> PageRange {
        PageRange::new(self.ptr.as_ptr() as u64, self.len as u64).expect("an arena is page-aligned")
    }

    fn check(&self, range: PageRange) -> Result<()> {
        if self.range().contains(&range) {
            Ok(())
        } else {
            let size = self.len as u64;
            Err(Error::OutOfBounds { what: "arena", offset: range.start(), len: range.len(), size })
        }
    }

    /// `mmap(range.start, range.len, PROT_READ | PROT_WRITE, MAP_SHARED |
    /// MAP_FIXED, fd, offset)` and `madvise(MADV_DONTFORK)`: maps the bytes
    /// of `fd` from `offset` at `range`, inside the arena, replacing what
    /// the arena had there. The window is writable to the host (the daemon
    /// write-protects what the task may only read, which holds whatever
    /// `mprotect` the process makes), and a child this process forks does
    /// not inherit it. A read-only descriptor (a window the task may never
    /// write, see [`crate::ObjectMemory::read_only`]) is mapped
    /// `MAP_PRIVATE` instead: the same pages until a store, which the
    /// daemon refuses, and which would land in a private copy if it ever
    /// got through.
    ///
    /// Errors: [`Error::OutOfBounds`] if `range` is not inside the arena;
    /// [`Error::Host`] if a call fails.
    pub fn place(&self, range: PageRange, fd: impl AsFd, offset: u64) -> Result<()> {
        self.check(range)?;
        let len = range.len() as usize;
        let at = range.start() as *mut c_void;
        let mode = rustix::fs::fcntl_getfl(&fd).map_err(host("fcntl(F_GETFL)"))? & OFlags::RWMODE;
        let sharing = if mode == OFlags::RDONLY { MapFlags::PRIVATE } else { MapFlags::SHARED };
        // SAFETY: the range lies inside the arena, which this value owns; no
        // Rust reference points into it (module comment), so replacing the
        // memory there breaks no reference.
        unsafe { rustix::mm::mmap(at, len, ProtFlags::READ | ProtFlags::WRITE, sharing | MapFlags::FIXED, fd, offset) }
            .map_err(host("mmap"))?;
        self.dont_fork(range)
    }

    /// `madvise(MADV_DONTFORK)` over `range` (inside the arena).
    fn dont_fork(&self, range: PageRange) -> Result<()> {
        // SAFETY: the range lies inside the arena, which this value owns; the
        // advice changes only what a fork inherits.
        unsafe {
            rustix::mm::madvise(range.start() as *mut c_void, range.len() as usize, rustix::mm::Advice::LinuxDontFork)
        }
        .map_err(host("madvise"))
    }

    /// Puts a hole of the arena back over `range` (a window there is
    /// unmapped; once the daemon registers the hole, an access there is
    /// `SIGSEGV` again).
    ///
    /// Errors: [`Error::OutOfBounds`] if `range` is not inside the arena;
    /// [`Error::Host`] if `mmap` fails.
    pub fn clear(&self, range: PageRange) -> Result<()> {
        self.check(range)?;
        // SAFETY: as for `place`.
        unsafe {
            rustix::mm::mmap_anonymous(
                range.start() as *mut c_void,
                range.len() as usize,
                HOLE_PROT,
                HOLE_FLAGS | MapFlags::FIXED,
            )
        }
        .map_err(host("mmap"))?;
        self.dont_fork(range)
    }

    /// Loads the bytes at address `addr` into `buf`: real loads, which the
    /// host MMU checks (a page the daemon has not mapped yet faults to it;
    /// a page it refuses is `SIGBUS`; a hole of the arena is `SIGSEGV`,
    /// reported by the daemon).
    ///
    /// Errors: [`Error::OutOfBounds`] outside the arena.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let offset = self.offset_of(addr, buf.len())?;
        // SAFETY: the bytes lie inside the arena, which lives as long as
        // `&self` and which this process touches only with atomic word
        // accesses (module comment).
        unsafe { read_words(self.ptr, offset, buf) };
        Ok(())
    }

    /// Stores `data` at address `addr`: real stores (a store into a page
    /// the task may only read is `SIGSEGV`, reported by the daemon).
    ///
    /// Errors: [`Error::OutOfBounds`] outside the arena.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<()> {
        let offset = self.offset_of(addr, data.len())?;
        // SAFETY: as for `read`.
        unsafe { write_words(self.ptr, offset, data) };
        Ok(())
    }

    /// The raw address of `addr` (for code that touches the memory itself,
    /// under the module comment's rules).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn offset_of(&self, addr: u64, len: usize) -> Result<usize> {
        let base = self.ptr.as_ptr() as u64;
        let off = addr.checked_sub(base).filter(|o| o.checked_add(len as u64).is_some_and(|e| e <= self.len as u64));
        off.map(|o| o as usize).ok_or(Error::OutOfBounds {
            what: "arena",
            offset: addr,
            len: len as u64,
            size: self.len as u64,
        })
    }
}

impl Drop for Arena {
    /// `munmap` of the whole arena, windows included.
    fn drop(&mut self) {
        // SAFETY: this value owns the range and nothing borrows from it.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast::<c_void>(), self.len) };
    }
}

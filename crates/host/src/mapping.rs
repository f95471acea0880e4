//! [`Mapping`]: an owned `MAP_SHARED` window of a descriptor (an object's
//! memfd, or one received from another process), unmapped on drop.
//!
//! # Aliasing: why there are no slices
//!
//! The memory of a shared mapping changes under this process's feet: other
//! processes store into it, a daemon fills it with `UFFDIO_COPY`, a punch
//! turns it to zeros, and any access may block on a userfaultfd or raise
//! `SIGBUS` (a poisoned page). A `&[u8]` would promise Rust that the bytes
//! do not change while it lives, and a `&mut [u8]` that no one else sees
//! them: both promises are false here, so this type never makes either.
//! Instead:
//!
//! - [`Mapping::read`] and [`Mapping::write`] copy out and in, bounds- and
//!   protection-checked, with atomic accesses of one size (aligned 64-bit
//!   words, relaxed; a partial word is written by compare-and-swap). Two
//!   threads of this process using them on the same bytes race only as
//!   atomics do, which is defined; other processes and the kernel are
//!   outside the program, like a device.
//! - [`Mapping::as_ptr`] gives the address for code that must touch the
//!   memory itself (with `unsafe`, on its own terms) and for handing the
//!   range to the kernel ([`Mapping::range`]).
//!
//! A mapping is made only where the kernel chooses (no `MAP_FIXED`), so it
//! never replaces memory this process already uses.

use crate::{host, Error, PageRange, Result};
use rustix::fd::AsFd;
use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

bitflags::bitflags! {
    /// A mapping's protection, as the host MMU enforces it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Prot: u32 {
        /// Loads allowed (`PROT_READ`).
        const READ = 1;
        /// Stores allowed (`PROT_WRITE`).
        const WRITE = 2;
    }
}

impl Prot {
    fn mmap_flags(self) -> ProtFlags {
        let mut f = ProtFlags::empty();
        f.set(ProtFlags::READ, self.contains(Prot::READ));
        f.set(ProtFlags::WRITE, self.contains(Prot::WRITE));
        f
    }

    fn mprotect_flags(self) -> MprotectFlags {
        let mut f = MprotectFlags::empty();
        f.set(MprotectFlags::READ, self.contains(Prot::READ));
        f.set(MprotectFlags::WRITE, self.contains(Prot::WRITE));
        f
    }
}

/// A `MAP_SHARED` mapping this value owns: `len` bytes at `ptr`, unmapped
/// when it drops.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    prot: AtomicU32,
}

// SAFETY: the mapping is plain memory owned by this value; every access this
// type makes is atomic (see the module comment), so sharing and sending it
// between threads adds no race that atomics do not define.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`.
unsafe impl Sync for Mapping {}

const WORD: usize = std::mem::size_of::<u64>();

impl Mapping {
    /// `mmap(NULL, window.len, prot, MAP_SHARED, fd, window.start)`—Maps the
    /// bytes `window` of `fd` anywhere the kernel chooses.
    ///
    /// The caller vouches that `window` lies inside the file: an access
    /// past its end raises `SIGBUS` ([`Mapping::of`] checks this for an
    /// [`crate::ObjectMemory`]). Registering the mapping with a userfaultfd
    /// needs a descriptor opened for writing, even for a read-only mapping.
    ///
    /// Errors: [`Error::BadRange`] if the window does not fit a `usize`;
    /// [`Error::Host`] if `mmap` fails (`EACCES` for a write mapping of a
    /// read-only descriptor, `ENODEV` for a descriptor that cannot be
    /// mapped, `ENOMEM`).
    pub fn map(fd: impl AsFd, window: PageRange, prot: Prot) -> Result<Mapping> {
        let len =
            usize::try_from(window.len()).map_err(|_| Error::BadRange { start: window.start(), len: window.len() })?;
        // SAFETY: a null hint without MAP_FIXED: the kernel picks an address
        // no other mapping uses, so no memory of this process is replaced.
        // The new memory is reached only through this value (module comment).
        let ptr = unsafe {
            rustix::mm::mmap(std::ptr::null_mut(), len, prot.mmap_flags(), MapFlags::SHARED, fd, window.start())
        }
        .map_err(host("mmap"))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Error::Host { call: "mmap", errno: crate::Errno::NOMEM })?;
        Ok(Mapping { ptr, len, prot: AtomicU32::new(prot.bits()) })
    }

    /// [`Mapping::map`] of the bytes `window` of `object`.
    ///
    /// Errors: [`Error::OutOfBounds`] if `window` reaches past the object;
    /// otherwise as [`Mapping::map`].
    pub fn of(object: &crate::ObjectMemory, window: PageRange, prot: Prot) -> Result<Mapping> {
        if window.end() > object.size() {
            return Err(Error::OutOfBounds {
                what: "object",
                offset: window.start(),
                len: window.len(),
                size: object.size(),
            });
        }
        Mapping::map(object, window, prot)
    }

    /// The first address.
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping is never empty (for clippy's sake).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The addresses the mapping covers, to register with a userfaultfd.
    pub fn range(&self) -> PageRange {
        PageRange::new(self.addr(), self.len as u64).expect("a mapping is page-aligned and does not wrap")
    }

    /// The address of the byte at `offset`, for code that touches the
    /// memory itself. Reads and writes through it must follow the module
    /// comment's rules (no references; atomics or volatile accesses), and
    /// end before the mapping drops.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The protection last set.
    pub fn prot(&self) -> Prot {
        Prot::from_bits_truncate(self.prot.load(Ordering::Acquire))
    }

    /// `mprotect(addr, len, prot)`—Changes the whole mapping's protection
    /// (a write-protected page stays write-protected: userfaultfd's
    /// protection is kept by the kernel beside this one).
    ///
    /// Errors: [`Error::Host`] if `mprotect` fails (`EACCES` for write on a
    /// mapping of a read-only descriptor).
    pub fn protect(&self, prot: Prot) -> Result<()> {
        // SAFETY: the range is exactly this mapping, which this value owns;
        // no references into it exist (module comment), so no Rust
        // reference loses the access it relies on. A later access the new
        // protection forbids is refused by `read`/`write`, or is a signal.
        unsafe { rustix::mm::mprotect(self.ptr.as_ptr().cast::<c_void>(), self.len, prot.mprotect_flags()) }
            .map_err(host("mprotect"))?;
        self.prot.store(prot.bits(), Ordering::Release);
        Ok(())
    }

    /// Copies the bytes at `offset` into `buf`. The access may fault: it
    /// blocks while a userfaultfd resolves the page, and a poisoned page
    /// raises `SIGBUS`.
    ///
    /// Errors: [`Error::OutOfBounds`] past the end; [`Error::Protection`]
    /// if the mapping is not readable.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len(), Prot::READ, "read")?;
        // SAFETY: the bytes lie inside this mapping (checked), which lives as
        // long as `&self`; this process touches them only with atomic word
        // accesses (module comment).
        unsafe { read_words(self.ptr, offset, buf) };
        Ok(())
    }

    /// Copies `data` into the mapping at `offset` (the stores may fault as
    /// for [`Mapping::read`]; a store into a write-protected page waits for
    /// its userfaultfd to lift the protection).
    ///
    /// Errors: [`Error::OutOfBounds`] past the end; [`Error::Protection`]
    /// if the mapping is not writable.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check(offset, data.len(), Prot::WRITE, "write")?;
        // SAFETY: as for `read`.
        unsafe { write_words(self.ptr, offset, data) };
        Ok(())
    }

    fn check(&self, offset: usize, len: usize, need: Prot, access: &'static str) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {}
            _ => {
                return Err(Error::OutOfBounds {
                    what: "mapping",
                    offset: offset as u64,
                    len: len as u64,
                    size: self.len as u64,
                })
            }
        }
        let prot = self.prot();
        if !prot.contains(need) {
            return Err(Error::Protection { prot, access });
        }
        Ok(())
    }
}

/// Copies the bytes at `base + offset` into `buf` with relaxed atomic loads
/// of aligned 64-bit words (see the module comment).
///
/// # Safety
///
/// `base` is page-aligned, and `[base + offset, + buf.len())` lies in memory
/// mapped for as long as the call runs, which this process touches only
/// with atomic word accesses.
pub(crate) unsafe fn read_words(base: NonNull<u8>, offset: usize, buf: &mut [u8]) {
    let mut at = offset;
    let mut out = 0;
    while out < buf.len() {
        let word_start = at / WORD * WORD;
        let skip = at - word_start;
        let n = (WORD - skip).min(buf.len() - out);
        // SAFETY: the caller's promise covers the word holding these bytes
        // (words never cross a page, and the memory is mapped by pages).
        let bytes = unsafe { word(base, word_start) }.load(Ordering::Relaxed).to_ne_bytes();
        buf[out..out + n].copy_from_slice(&bytes[skip..skip + n]);
        out += n;
        at += n;
    }
}

/// Copies `data` to `base + offset` with relaxed atomic stores of aligned
/// 64-bit words (a partial word by compare-and-swap).
///
/// # Safety
///
/// As for [`read_words`].
pub(crate) unsafe fn write_words(base: NonNull<u8>, offset: usize, data: &[u8]) {
    let mut at = offset;
    let mut from = 0;
    while from < data.len() {
        let word_start = at / WORD * WORD;
        let skip = at - word_start;
        let n = (WORD - skip).min(data.len() - from);
        // SAFETY: as in `read_words`.
        let word = unsafe { word(base, word_start) };
        if n == WORD {
            let mut bytes = [0u8; WORD];
            bytes.copy_from_slice(&data[from..from + WORD]);
            word.store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
        } else {
            let part = &data[from..from + n];
            // Never fails: the closure always returns `Some`.
            let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                let mut bytes = old.to_ne_bytes();
                bytes[skip..skip + n].copy_from_slice(part);
                Some(u64::from_ne_bytes(bytes))
            });
        }
        from += n;
        at += n;
    }
}

/// The word at `base + offset` (`offset` a multiple of 8).
///
/// # Safety
///
/// As for [`read_words`], for the 8 bytes of the word.
unsafe fn word<'a>(base: NonNull<u8>, offset: usize) -> &'a AtomicU64 {
    debug_assert!(offset % WORD == 0);
    // SAFETY: `base` is page-aligned, so `base + offset` is 8-aligned; the
    // caller promises it is mapped and touched only atomically, as
    // `from_ptr` requires.
    unsafe { AtomicU64::from_ptr(base.as_ptr().add(offset).cast::<u64>()) }
}

impl Drop for Mapping {
    /// `munmap(addr, len)`.
    fn drop(&mut self) {
        // SAFETY: this value owns the mapping and nothing borrows from it any
        // more (`&self` accessors have ended); the range is exactly what
        // `mmap` returned.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast::<c_void>(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{page_size, ObjectMemory};

    #[test]
    fn a_mapping_shares_the_object_both_ways() {
        let p = page_size();
        let obj = ObjectMemory::new("mapping test", 4 * p).unwrap();
        let m = Mapping::of(&obj, PageRange::pages(1, 2).unwrap(), Prot::READ | Prot::WRITE).unwrap();
        assert_eq!(m.len() as u64, 2 * p);
        assert_eq!(m.range().len(), 2 * p);
        obj.write_at(p + 5, b"from the memfd").unwrap();
        let mut buf = [0u8; 14];
        m.read(5, &mut buf).unwrap();
        assert_eq!(&buf, b"from the memfd");
        // Unaligned writes across word and page boundaries.
        let at = p as usize - 3;
        m.write(at, b"across a page boundary").unwrap();
        let mut back = [0u8; 22];
        obj.read_at(p + at as u64, &mut back).unwrap();
        assert_eq!(&back, b"across a page boundary");
        let mut via = [0u8; 22];
        m.read(at, &mut via).unwrap();
        assert_eq!(via, back);
        // A second mapping of the same pages sees the same bytes.
        let m2 = Mapping::of(&obj, PageRange::pages(2, 1).unwrap(), Prot::READ).unwrap();
        let mut b2 = [0u8; 19];
        m2.read(0, &mut b2).unwrap();
        assert_eq!(&b2, b"oss a page boundary");
    }

    #[test]
    fn bounds_and_protection_are_checked_before_touching() {
        let p = page_size();
        let obj = ObjectMemory::new("mapping test", 2 * p).unwrap();
        assert!(matches!(
            Mapping::of(&obj, PageRange::pages(1, 2).unwrap(), Prot::READ),
            Err(Error::OutOfBounds { .. })
        ));
        let m = Mapping::of(&obj, PageRange::pages(0, 1).unwrap(), Prot::READ).unwrap();
        assert!(matches!(m.write(0, b"x"), Err(Error::Protection { .. })));
        let mut b = [0u8; 2];
        assert!(matches!(m.read(p as usize - 1, &mut b), Err(Error::OutOfBounds { .. })));
        assert!(matches!(m.read(usize::MAX, &mut b), Err(Error::OutOfBounds { .. })));
        m.protect(Prot::READ | Prot::WRITE).unwrap();
        m.write(0, b"ok").unwrap();
        m.protect(Prot::empty()).unwrap();
        assert!(matches!(m.read(0, &mut b), Err(Error::Protection { .. })));
        assert_eq!(m.prot(), Prot::empty());
    }
}

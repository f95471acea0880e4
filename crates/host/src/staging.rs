//! Staging areas: where a pager process puts the pages it supplies, so
//! that they reach an object's memory without travelling in a message.
//!
//! ```text
//!   pager process                              machvmd
//!   ─────────────                              ───────
//!   Staging: a memfd, mapped read/write         StagingSource: the same memfd
//!     the backing reads page i of a request       (pidfd_getfd), never mapped
//!     straight into bytes_mut()[i * 4096..]             │
//!     data_supply_staged(offset, staging i) ──►  copy_file_range, inside the host
//!                                                       ▼
//!                                               the object's memfd at `offset`
//! ```
//!
//! A supply in a message copies each page four times on its way (into the
//! message, through the socket twice, into the memfd) and, at 1 MiB per
//! cluster, keeps both processes waking each other while the socket
//! buffer fills and drains. Staged, the page is written once by the pager
//! (where its backing reads it) and copied once by the host, and the
//! message that names it is a few dozen bytes.
//!
//! Trust runs one way. The pager trusts the daemon with the memfd (it
//! could write it; it only reads). The daemon trusts nothing the pager
//! does to it: it checks at attach that the descriptor is a memfd
//! (`F_GET_SEALS` answers only for memfds) at least as long as the area,
//! and seals it against shrinking if the pager did not, so no range
//! checked once can end early; it never maps it, so nothing the pager
//! does (punching, writing while the daemon copies) can fault or block the
//! daemon: a copy gives whatever bytes the memfd holds at that moment, a
//! punched page reads as zeroes, and memfd reads never wait for I/O.

use crate::{host, Error, ObjectMemory, Result};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::SealFlags;
use rustix::mm::{MapFlags, ProtFlags};
use std::ffi::c_void;
use std::ptr::NonNull;

/// A pager's staging area: a sealed memfd of its own, mapped read/write
/// into its process. The daemon is given the memfd
/// (`machvm_protocol::wire::Call::StagingAttach`) and reads it.
#[derive(Debug)]
pub struct Staging {
    memory: ObjectMemory,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is memory this value owns and reaches only through
// `&self`/`&mut self` (no interior mutability): moving it to another
// thread moves the only way in.
unsafe impl Send for Staging {}

impl Staging {
    /// `memfd_create`, `ftruncate(size)`, `F_ADD_SEALS(F_SEAL_SHRINK |
    /// F_SEAL_SEAL)`, `mmap(MAP_SHARED, PROT_READ | PROT_WRITE)`—A staging
    /// area of `size` bytes, zeroes.
    ///
    /// Errors: [`Error::BadRange`] if `size` is 0 or not a page multiple;
    /// [`Error::Host`] if a call fails.
    pub fn new(size: u64) -> Result<Staging> {
        let len = usize::try_from(size).ok().filter(|&n| n != 0).ok_or(Error::BadRange { start: 0, len: size })?;
        let memory = ObjectMemory::new("machvm staging", size)?;
        // SAFETY: a null hint without MAP_FIXED replaces no memory of this
        // process; the memfd is `size` bytes and sealed against shrinking,
        // so every byte of the mapping stays backed (no SIGBUS).
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &memory,
                0,
            )
        }
        .map_err(host("mmap"))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Error::Host { call: "mmap", errno: crate::Errno::NOMEM })?;
        Ok(Staging { memory, ptr, len })
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.len as u64
    }

    /// The memfd, to hand to the daemon.
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.memory.as_fd()
    }

    /// The area, to write pages into before naming them in a staged
    /// supply.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live read/write mapping of `len` bytes owned by
        // this value, every byte backed (see `new`). `&mut self` makes this
        // the only reference into it in this process. The other holder of
        // the memfd, the daemon, only reads it through its descriptor
        // (`copy_file_range`), which makes no reference into this process's
        // memory.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // SAFETY: the mapping is this value's own (made in `new`), and the
        // only reference into it, from `bytes_mut`, borrowed `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast::<c_void>(), self.len) };
    }
}

/// `TMPFS_MAGIC`: the file system of memfds (`statfs(2)`).
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// A staging area as the daemon holds it: a pager's memfd, checked, only
/// ever read.
#[derive(Debug)]
pub struct StagingSource {
    fd: OwnedFd,
    size: u64,
}

impl StagingSource {
    /// `F_GET_SEALS`, `fstatfs`, `fstat`, `F_ADD_SEALS(F_SEAL_SHRINK)`
    /// unless it is sealed so—Takes `fd`, received from a pager, as its
    /// staging area of `size` bytes.
    ///
    /// Errors: [`Error::BadRange`] if `size` is 0 or not a page multiple;
    /// [`Error::WrongDescriptor`] if `fd` is not a memfd (of tmpfs: not a
    /// hugetlbfs one either), cannot be sealed against shrinking, or is
    /// shorter than `size`; [`Error::Host`] if `fstat` or `fstatfs` fails.
    pub fn from_received(fd: OwnedFd, size: u64) -> Result<StagingSource> {
        if size == 0 || size % crate::page_size() != 0 {
            return Err(Error::BadRange { start: 0, len: size });
        }
        let wrong = |found: String| Error::WrongDescriptor { expected: "a memfd to stage pages in", found };
        let seals = rustix::fs::fcntl_get_seals(&fd)
            .map_err(|e| wrong(format!("a descriptor without seals (F_GET_SEALS: {e})")))?;
        // Seals answer for hugetlbfs files too, whose pages the host cannot
        // copy into an object's page by page.
        let fs = rustix::fs::fstatfs(&fd).map_err(host("fstatfs"))?.f_type;
        if fs as u64 != TMPFS_MAGIC {
            return Err(wrong(format!("a sealable file of another file system (magic {fs:#x})")));
        }
        let long_enough = |fd: &OwnedFd| -> Result<()> {
            let held = u64::try_from(rustix::fs::fstat(fd).map_err(host("fstat"))?.st_size).unwrap_or(0);
            if held < size {
                return Err(wrong(format!("a memfd of {held} bytes, not {size}")));
            }
            Ok(())
        };
        // Checked before sealing (a memfd refused is left as it was), and
        // again after (it cannot shrink in between any more).
        long_enough(&fd)?;
        if !seals.contains(SealFlags::SHRINK) {
            rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK)
                .map_err(|e| wrong(format!("a memfd that cannot be sealed against shrinking ({e})")))?;
        }
        long_enough(&fd)?;
        Ok(StagingSource { fd, size })
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Copies `len` bytes at `offset` of the area into `memory` at `at`.
    ///
    /// Errors: [`Error::OutOfBounds`] if the bytes are not inside the area
    /// or the object; [`Error::Host`] if the copy fails.
    pub fn copy_into(&self, memory: &ObjectMemory, at: u64, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(Error::OutOfBounds { what: "staging area", offset, len, size: self.size });
        }
        memory.copy_from(at, self.fd.as_fd(), offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PageRange;

    const P: u64 = 4096;

    fn received(s: &Staging) -> OwnedFd {
        s.memfd().try_clone_to_owned().unwrap()
    }

    #[test]
    fn pages_written_into_the_area_are_copied_into_an_object() {
        let mut s = Staging::new(4 * P).unwrap();
        s.bytes_mut()[P as usize..2 * P as usize].fill(7);
        let src = StagingSource::from_received(received(&s), 4 * P).unwrap();
        let object = ObjectMemory::new("object", 16 * P).unwrap();
        src.copy_into(&object, 8 * P, P, P).unwrap();
        let mut buf = vec![0; P as usize];
        object.read_at(8 * P, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        assert!(object.is_present(8 * P).unwrap());
        assert!(!object.is_present(7 * P).unwrap());
        // Outside the area or the object: refused, nothing written.
        assert!(matches!(src.copy_into(&object, 0, 4 * P, P), Err(Error::OutOfBounds { .. })));
        assert!(matches!(src.copy_into(&object, 0, u64::MAX - 1, P), Err(Error::OutOfBounds { .. })));
        assert!(matches!(src.copy_into(&object, 16 * P, 0, P), Err(Error::OutOfBounds { .. })));
        assert_eq!(object.present(PageRange::new(0, 16 * P).unwrap()).unwrap().len(), 1);
    }

    #[test]
    fn a_descriptor_that_is_not_a_long_enough_memfd_is_refused() {
        let s = Staging::new(2 * P).unwrap();
        assert!(matches!(StagingSource::from_received(received(&s), 4 * P), Err(Error::WrongDescriptor { .. })));
        assert!(matches!(StagingSource::from_received(received(&s), 0), Err(Error::BadRange { .. })));
        assert!(matches!(StagingSource::from_received(received(&s), 100), Err(Error::BadRange { .. })));
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        assert!(matches!(StagingSource::from_received(file.into(), P), Err(Error::WrongDescriptor { .. })));
    }

    #[test]
    fn an_unsealed_memfd_is_sealed_against_shrinking_at_attach() {
        let fd = rustix::fs::memfd_create("plain", rustix::fs::MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, 2 * P).unwrap();
        let keep = fd.try_clone().unwrap();
        let _src = StagingSource::from_received(fd, 2 * P).unwrap();
        assert_eq!(rustix::fs::ftruncate(&keep, P), Err(crate::Errno::PERM));
        // One that may not be sealed at all is refused.
        let fd = rustix::fs::memfd_create("unsealable", rustix::fs::MemfdFlags::empty()).unwrap();
        rustix::fs::ftruncate(&fd, 2 * P).unwrap();
        assert!(matches!(StagingSource::from_received(fd, 2 * P), Err(Error::WrongDescriptor { .. })));
    }
}

//! [`ObjectMemory`]: the resident pages of one VM object, kept in a memfd at
//! their object offsets. A page is resident when the memfd holds data there;
//! the pager's data goes in with [`ObjectMemory::write_at`] (`pwrite`), a
//! page leaves every mapping of every process with
//! [`ObjectMemory::punch`] (`fallocate(PUNCH_HOLE)`), and
//! [`ObjectMemory::present`] (`lseek(SEEK_DATA/SEEK_HOLE)`) says which pages
//! are there. [`ObjectMemory::reserve`] (`fallocate`) allocates pages
//! ahead, so that writing them later cannot fail.
//!
//! The life of the memfd:
//!
//! 1. `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL)`
//!    (without `MFD_NOEXEC_SEAL` on kernels before 6.3, which lack it);
//! 2. `ftruncate(size)`;
//! 3. `F_ADD_SEALS(F_SEAL_SHRINK | F_SEAL_SEAL)`: it never shrinks under a
//!    mapping (which would turn the mapping's tail into `SIGBUS`), and no
//!    holder of a descriptor can add a seal later (`F_SEAL_WRITE` or
//!    `F_SEAL_GROW` would stop the owner). Growth stays allowed:
//!    [`ObjectMemory::grow`].
//! 4. `fchmod(0)`: a process of another uid that is handed a descriptor
//!    cannot reopen it through `/proc/self/fd` with other rights.
//!
//! Offsets are bounds-checked against [`ObjectMemory::size`], the size this
//! handle gave the memfd: a lower bound, since another holder of a
//! writable descriptor could grow it further, never shrink it.
//!
//! Note for the next layer: `present` moves the file offset, which is shared
//! by every descriptor of the same open file, also those passed to other
//! processes. Nothing here reads or writes at the file offset (all I/O is
//! positional), and tasks only map the memfd, so this is harmless; a task
//! that must `read(2)` the memfd should be sent a descriptor reopened
//! through `/proc/self/fd` (a file of its own).

use crate::{host, Error, PageRange, Result};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{FallocateFlags, MemfdFlags, Mode, OFlags, SealFlags, SeekFrom};
use rustix::io::Errno;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// One VM object's pages: a sealed, mode-0 memfd. `Sync`: every call is a
/// positional host call, safe from many threads at once.
#[derive(Debug)]
pub struct ObjectMemory {
    fd: OwnedFd,
    size: AtomicU64,
    /// A read-only open file of the same memfd, made on first use
    /// ([`ObjectMemory::read_only`]).
    read_only: OnceLock<OwnedFd>,
}

impl ObjectMemory {
    /// `memfd_create(name, …)`, `ftruncate(size)`, `F_ADD_SEALS`,
    /// `fchmod(0)`—A new object memory of `size` bytes, all holes (the steps
    /// of the module comment).
    ///
    /// Errors: [`Error::BadRange`] if `size` is not a page multiple (0 is
    /// allowed: grow it later); [`Error::Host`] if a call fails (`EINVAL`
    /// for a name with a NUL byte or longer than 249 bytes, `EMFILE`,
    /// `ENOMEM`).
    pub fn new(name: &str, size: u64) -> Result<ObjectMemory> {
        if size % crate::page_size() != 0 {
            return Err(Error::BadRange { start: 0, len: size });
        }
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        let fd = match rustix::fs::memfd_create(name, flags | MemfdFlags::NOEXEC_SEAL) {
            Err(Errno::INVAL) => rustix::fs::memfd_create(name, flags),
            other => other,
        }
        .map_err(host("memfd_create"))?;
        rustix::fs::ftruncate(&fd, size).map_err(host("ftruncate"))?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::SEAL).map_err(host("fcntl(F_ADD_SEALS)"))?;
        rustix::fs::fchmod(&fd, Mode::empty()).map_err(host("fchmod"))?;
        Ok(ObjectMemory { fd, size: AtomicU64::new(size), read_only: OnceLock::new() })
    }

    /// `open("/proc/self/fd/N", O_RDONLY | O_CLOEXEC)`, once—A read-only
    /// descriptor of the memfd, an open file of its own: what a process
    /// that may only read the object is given. Nothing can be written
    /// through it (`pwrite`, `fallocate`, `ftruncate`, seals and a
    /// writable `MAP_SHARED` mapping all fail), and a `MAP_PRIVATE`
    /// mapping of it can be registered with a userfaultfd and served with
    /// `UFFDIO_CONTINUE` like a shared one, while any store the process
    /// makes there lands in a private copy, never in the memfd (host
    /// facts checked with a C probe: registration MISSING | MINOR | WP,
    /// `CONTINUE` with and without `MODE_WP`, a punch zapping the
    /// uncopied pages). Only a writable reopen through `/proc` by the same
    /// uid or root (what confinement is for) gets past it. Opening the
    /// mode-0 memfd needs this process to be privileged (root), as the
    /// daemon serving real memory is.
    ///
    /// Errors: [`Error::Host`] if `open` fails (no `/proc`, or no
    /// privilege over a mode-0 file).
    pub fn read_only(&self) -> Result<BorrowedFd<'_>> {
        if let Some(fd) = self.read_only.get() {
            return Ok(fd.as_fd());
        }
        let path = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        let fd = rustix::fs::open(path.as_str(), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(host("open(/proc/self/fd, O_RDONLY)"))?;
        // Another thread may have made one meanwhile: either serves.
        Ok(self.read_only.get_or_init(|| fd).as_fd())
    }

    /// The size this handle gave the memfd, in bytes (a lower bound on its
    /// real size; see the module comment).
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// `ftruncate(new_size)`—Grows the object to `new_size` bytes; the new
    /// pages are holes. A size no larger than the current one is a no-op.
    ///
    /// Errors: [`Error::BadRange`] if `new_size` is not a page multiple;
    /// [`Error::Host`] if `ftruncate` fails.
    pub fn grow(&self, new_size: u64) -> Result<()> {
        if new_size % crate::page_size() != 0 {
            return Err(Error::BadRange { start: 0, len: new_size });
        }
        if new_size <= self.size() {
            return Ok(());
        }
        rustix::fs::ftruncate(&self.fd, new_size).map_err(host("ftruncate"))?;
        self.size.fetch_max(new_size, Ordering::AcqRel);
        Ok(())
    }

    /// `pread(fd, buf, offset)`, repeated until `buf` is full—Reads the
    /// object's bytes at `offset`. A hole reads as zeros and stays a hole.
    ///
    /// Errors: [`Error::OutOfBounds`] past [`Self::size`];
    /// [`Error::Host`] if `pread` fails.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            match rustix::io::pread(&self.fd, &mut buf[done..], offset + done as u64) {
                Ok(0) => return Err(Error::Host { call: "pread", errno: Errno::IO }),
                Ok(n) => done += n,
                Err(Errno::INTR) => {}
                Err(e) => return Err(host("pread")(e)),
            }
        }
        Ok(())
    }

    /// `pwrite(fd, data, offset)`, repeated until all is written—Writes
    /// `data` into the object at `offset`; the pages it touches become
    /// present (what a pager's `data_supply` does before `UFFDIO_CONTINUE`).
    ///
    /// Errors: [`Error::OutOfBounds`] past [`Self::size`];
    /// [`Error::Host`] if `pwrite` fails (`ENOSPC`, `ENOMEM`).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check(offset, data.len())?;
        let mut done = 0;
        while done < data.len() {
            match rustix::io::pwrite(&self.fd, &data[done..], offset + done as u64) {
                Ok(0) => return Err(Error::Host { call: "pwrite", errno: Errno::IO }),
                Ok(n) => done += n,
                Err(Errno::INTR) => {}
                Err(e) => return Err(host("pwrite")(e)),
            }
        }
        Ok(())
    }

    /// `copy_file_range(source, source_offset, fd, offset, len)`, repeated
    /// until all is copied—Copies `len` bytes of another file (a pager's
    /// staging area) into the object at `offset`, inside the host: the
    /// bytes pass through no buffer of this process, and a source that
    /// another process changes meanwhile gives whatever it held.
    ///
    /// Errors: [`Error::OutOfBounds`] past [`Self::size`];
    /// [`Error::Host`] if `copy_file_range` fails (`EIO` if the source
    /// ends first, `EBADF` if it cannot be read, `ENOMEM`).
    pub fn copy_from(&self, offset: u64, source: BorrowedFd<'_>, source_offset: u64, len: u64) -> Result<()> {
        let n = usize::try_from(len).map_err(|_| Error::BadRange { start: offset, len })?;
        self.check(offset, n)?;
        let (mut from, mut to, mut left) = (source_offset, offset, n);
        while left > 0 {
            match rustix::fs::copy_file_range(source, Some(&mut from), &self.fd, Some(&mut to), left) {
                Ok(0) => return Err(Error::Host { call: "copy_file_range", errno: Errno::IO }),
                Ok(k) => left -= k,
                Err(Errno::INTR) => {}
                Err(e) => return Err(host("copy_file_range")(e)),
            }
        }
        Ok(())
    }

    /// `fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start,
    /// len)`—Frees the pages of `range`: they leave every mapping of every
    /// process, and the next access to them faults (MISSING where
    /// registered) and reads zeros if no one fills them.
    ///
    /// Errors: [`Error::OutOfBounds`] past [`Self::size`];
    /// [`Error::Host`] if `fallocate` fails.
    pub fn punch(&self, range: PageRange) -> Result<()> {
        self.check(range.start(), range.len() as usize)?;
        rustix::fs::fallocate(
            &self.fd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            range.start(),
            range.len(),
        )
        .map_err(host("fallocate(PUNCH_HOLE)"))
    }

    /// `fallocate(fd, FALLOC_FL_KEEP_SIZE, start, len)`—Allocates the pages
    /// of `range` now, so that later writes to them cannot fail for lack
    /// of memory: holes become zeroed pages (present from now on), pages
    /// holding data keep it.
    ///
    /// Errors: [`Error::OutOfBounds`] past [`Self::size`];
    /// [`Error::Host`] if `fallocate` fails (`ENOSPC`, `ENOMEM`).
    pub fn reserve(&self, range: PageRange) -> Result<()> {
        self.check(range.start(), range.len() as usize)?;
        rustix::fs::fallocate(&self.fd, FallocateFlags::KEEP_SIZE, range.start(), range.len())
            .map_err(host("fallocate"))
    }

    /// `lseek(SEEK_DATA)` and `lseek(SEEK_HOLE)` in turn—The runs of pages
    /// inside `range` that hold data (the pages `CONTINUE` would map), in
    /// order.
    ///
    /// Errors: [`Error::OutOfBounds`] past [`Self::size`];
    /// [`Error::Host`] if `lseek` fails.
    pub fn present(&self, range: PageRange) -> Result<Vec<PageRange>> {
        self.check(range.start(), range.len() as usize)?;
        let page = crate::page_size();
        let mut runs = Vec::new();
        let mut at = range.start();
        while at < range.end() {
            let data = match rustix::fs::seek(&self.fd, SeekFrom::Data(at)) {
                Ok(d) => d / page * page,
                // No data at or after `at`.
                Err(Errno::NXIO) => break,
                Err(e) => return Err(host("lseek(SEEK_DATA)")(e)),
            };
            if data >= range.end() {
                break;
            }
            let hole = rustix::fs::seek(&self.fd, SeekFrom::Hole(data)).map_err(host("lseek(SEEK_HOLE)"))?;
            let end = hole.div_ceil(page).saturating_mul(page).min(range.end());
            runs.push(PageRange::new(data, end - data)?);
            at = end;
        }
        Ok(runs)
    }

    /// Whether the page at `offset` (rounded down to its page) holds data.
    ///
    /// Errors: as [`Self::present`].
    pub fn is_present(&self, offset: u64) -> Result<bool> {
        let page = crate::page_size();
        Ok(!self.present(PageRange::new(offset / page * page, page)?)?.is_empty())
    }

    /// `fcntl(F_GET_SEALS)`—The memfd's seals.
    pub fn seals(&self) -> Result<SealFlags> {
        rustix::fs::fcntl_get_seals(&self.fd).map_err(host("fcntl(F_GET_SEALS)"))
    }

    fn check(&self, offset: u64, len: usize) -> Result<()> {
        let size = self.size();
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::OutOfBounds { what: "object", offset, len: len as u64, size }),
        }
    }
}

/// The memfd, to map ([`crate::Mapping::map`]) or to pass to another
/// process ([`crate::fdpass::send_fds`]).
impl AsFd for ObjectMemory {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page_size;

    #[test]
    fn a_new_object_is_sealed_mode_0_and_all_holes() {
        let p = page_size();
        let m = ObjectMemory::new("test object", 4 * p).unwrap();
        assert_eq!(m.size(), 4 * p);
        let seals = m.seals().unwrap();
        assert!(seals.contains(SealFlags::SHRINK | SealFlags::SEAL), "{seals:?}");
        assert!(!seals.intersects(SealFlags::GROW | SealFlags::WRITE | SealFlags::FUTURE_WRITE), "{seals:?}");
        let st = rustix::fs::fstat(&m).unwrap();
        assert_eq!(st.st_mode & 0o7777, 0, "mode {:o}", st.st_mode);
        assert_eq!(st.st_size as u64, 4 * p);
        assert_eq!(m.present(PageRange::pages(0, 4).unwrap()).unwrap(), vec![]);
        // Shrinking is sealed, for this handle and for anyone else.
        assert_eq!(rustix::fs::ftruncate(&m, p), Err(Errno::PERM));
        // No one can add a seal that would stop the owner's writes.
        assert_eq!(rustix::fs::fcntl_add_seals(&m, SealFlags::WRITE), Err(Errno::PERM));
        assert!(ObjectMemory::new("odd size", p + 1).is_err());
        assert!(ObjectMemory::new("nul\0name", p).is_err());
    }

    #[test]
    fn pages_written_read_punched_and_found() {
        let p = page_size();
        let m = ObjectMemory::new("test object", 8 * p).unwrap();
        let page = |b: u8| vec![b; p as usize];
        m.write_at(p, &page(1)).unwrap();
        m.write_at(2 * p, &page(2)).unwrap();
        m.write_at(5 * p + 10, b"x").unwrap();
        let all = PageRange::pages(0, 8).unwrap();
        assert_eq!(
            m.present(all).unwrap(),
            vec![PageRange::pages(1, 2).unwrap(), PageRange::pages(5, 1).unwrap()],
            "a write of one byte makes its whole page present"
        );
        // Runs are cut to the range asked about.
        assert_eq!(
            m.present(PageRange::pages(2, 4).unwrap()).unwrap(),
            vec![PageRange::pages(2, 1).unwrap(), PageRange::pages(5, 1).unwrap()]
        );
        let mut buf = vec![0u8; p as usize];
        m.read_at(2 * p, &mut buf).unwrap();
        assert_eq!(buf, page(2));
        // Reading a hole gives zeros and leaves it a hole.
        m.read_at(7 * p, &mut buf).unwrap();
        assert_eq!(buf, page(0));
        assert!(!m.is_present(7 * p).unwrap());
        m.punch(PageRange::pages(1, 1).unwrap()).unwrap();
        assert_eq!(m.present(all).unwrap(), vec![PageRange::pages(2, 1).unwrap(), PageRange::pages(5, 1).unwrap()]);
        m.read_at(p, &mut buf).unwrap();
        assert_eq!(buf, page(0), "a punched page reads as zeros");
        assert_eq!(m.size(), 8 * p, "punching keeps the size");
        // Bounds.
        assert!(matches!(m.write_at(8 * p - 1, b"ab"), Err(Error::OutOfBounds { .. })));
        assert!(matches!(m.read_at(u64::MAX, &mut buf), Err(Error::OutOfBounds { .. })));
        assert!(matches!(m.punch(PageRange::pages(8, 1).unwrap()), Err(Error::OutOfBounds { .. })));
        // Growth adds holes.
        m.grow(16 * p).unwrap();
        m.grow(4 * p).unwrap();
        assert_eq!(m.size(), 16 * p);
        m.write_at(15 * p, b"end").unwrap();
        assert_eq!(m.present(PageRange::pages(8, 8).unwrap()).unwrap(), vec![PageRange::pages(15, 1).unwrap()]);
    }
}

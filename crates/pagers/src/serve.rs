//! The pager server loop and the stores pagers keep their data in.
//!
//! [`serve`] answers the kernel for any [`Backing`] (a [`Pager`] made of
//! a store that reads and writes pages):
//!
//! 1. `init`: `ready`, or `change_attributes` if the backing picks a
//!    cluster size; either way with the backing's caching policy
//!    ([`Backing::may_cache`]) and delayed copy;
//! 2. `data_request`: read each page; runs of pages with data go back in
//!    one `data_supply`, runs of pages without data in one
//!    `data_unavailable` (zero fill), read errors as `data_error`;
//! 3. `data_unlock`: granted (a `lock_request` that clears the lock);
//! 4. `data_return`: written to the backing;
//! 5. `terminate`: the backing forgets the object.
//!
//! Malformed messages (anyone holding a send right to a memory object can
//! send one) are skipped. It returns when the pager's task is gone (its
//! receive fails).

use crate::conn::PagerConn;
use crate::link::KernelLink;
use crate::pager::{serve_pager, Answer, Attributes, Pager};
use machvm_core::ipc::PortName;
use machvm_core::{VmProt, PAGE_SIZE};
use machvm_protocol::emmi::CopyStrategy;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where a pager keeps the pages it serves.
pub trait Backing: Send {
    /// Fills `buf` (one page) with the page at `offset` of `object`;
    /// `Ok(false)` if there is no such data (the kernel zero-fills), an
    /// error fails the page (`data_error`).
    fn read(&mut self, object: PortName, offset: u64, buf: &mut [u8]) -> io::Result<bool>;
    /// Fills `buf` (whole pages) with the pages from `offset` on, saying
    /// of each what [`Backing::read`] would. The default reads page by
    /// page; a backing that can read a run at once (a file) does.
    fn read_pages(&mut self, object: PortName, offset: u64, buf: &mut [u8]) -> Vec<io::Result<bool>> {
        let page = PAGE_SIZE as usize;
        buf.chunks_mut(page).enumerate().map(|(i, b)| self.read(object, offset + (i * page) as u64, b)).collect()
    }
    /// Stores a page the kernel returned (an error is counted in
    /// [`PagerStats::errors`]; the kernel has let the page go).
    fn write(&mut self, object: PortName, offset: u64, data: &[u8]) -> io::Result<()>;
    /// The kernel is done with `object`.
    fn terminate(&mut self, _object: PortName) {}
    /// Pages the kernel should ask for per fault (`None`: the kernel's
    /// default).
    fn cluster_pages(&self) -> Option<u32> {
        None
    }
    /// May the kernel keep the object's pages cached after its last
    /// mapping goes? If not, dirty pages come back (`data_return`) and the
    /// object is terminated when it is unmapped.
    fn may_cache(&self) -> bool {
        true
    }
}

/// What a pager did, counted as it goes (shared with whoever watches).
#[derive(Debug, Default)]
pub struct PagerStats {
    pub requests: AtomicU64,
    pub pages_supplied: AtomicU64,
    pub pages_unavailable: AtomicU64,
    pub pages_returned: AtomicU64,
    pub unlocks: AtomicU64,
    pub errors: AtomicU64,
    pub terminates: AtomicU64,
}

impl PagerStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Serves kernel messages from `backing` until the pager's task is
/// terminated (see the module comment), counting in `stats`.
pub fn serve<L: KernelLink>(conn: &mut PagerConn<L>, backing: &mut dyn Backing, stats: &Arc<PagerStats>) {
    serve_pager(conn, &mut BackingPager { backing, stats })
}

/// A [`Backing`] as a [`Pager`].
struct BackingPager<'a> {
    backing: &'a mut dyn Backing,
    stats: &'a PagerStats,
}

impl Pager for BackingPager<'_> {
    fn init(&mut self, _object: PortName) -> Attributes {
        Attributes {
            may_cache: self.backing.may_cache(),
            copy_strategy: CopyStrategy::Delay,
            cluster_pages: self.backing.cluster_pages(),
        }
    }

    fn data_request(
        &mut self,
        obj: PortName,
        offset: u64,
        length: u64,
        _access: VmProt,
        answer: &mut dyn Answer,
    ) -> machvm_core::Result<()> {
        let (page, stats) = (PAGE_SIZE as usize, self.stats);
        bump(&stats.requests, 1);
        let Ok(len) = usize::try_from(length) else { return Err(machvm_core::KernError::InvalidArgument) };
        // The pages are read straight into the staging area if there is
        // one (the host copies them from there), else into one buffer
        // whose runs go in messages.
        let mut own = Vec::new();
        let staged = answer.staging().is_some();
        let got = match answer.staging() {
            Some(buf) => self.backing.read_pages(obj, offset, buf),
            None => {
                own.resize(len, 0);
                self.backing.read_pages(obj, offset, &mut own)
            }
        };
        // Runs of pages with data go back in one supply, runs of pages
        // without in one data_unavailable, failed pages as data_error:
        // one answer per run.
        let mut result = Ok(());
        let mut i = 0;
        while i < got.len() {
            let kind = |r: &std::io::Result<bool>| match r {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(_) => 2,
            };
            let k = kind(&got[i]);
            let n = got[i..].iter().take_while(|r| kind(r) == k).count();
            let (at, size) = (offset + (i * page) as u64, (n * page) as u64);
            let r = match k {
                0 if staged => answer.supply_staged(at, size),
                0 => answer.supply(at, &own[i * page..(i + n) * page]),
                1 => answer.unavailable(at, size),
                _ => answer.error(at, size),
            };
            let counter = [&stats.pages_supplied, &stats.pages_unavailable, &stats.errors][k];
            bump(counter, n as u64);
            result = result.and(r);
            i += n;
        }
        result
    }

    fn data_unlock(
        &mut self,
        _object: PortName,
        offset: u64,
        length: u64,
        _access: VmProt,
        answer: &mut dyn Answer,
    ) -> machvm_core::Result<()> {
        bump(&self.stats.unlocks, 1);
        answer.unlock(offset, length)
    }

    fn data_return(&mut self, obj: PortName, offset: u64, data: &[u8], _dirty: bool, _kernel_copy: bool) {
        let page = PAGE_SIZE as usize;
        bump(&self.stats.pages_returned, (data.len() / page) as u64);
        for (i, p) in data.chunks(page).enumerate() {
            if self.backing.write(obj, offset + (i * page) as u64, p).is_err() {
                bump(&self.stats.errors, 1);
            }
        }
    }

    fn terminate(&mut self, obj: PortName) {
        bump(&self.stats.terminates, 1);
        self.backing.terminate(obj);
    }
}

/// Pages kept in memory: a pager whose objects start as zeroes and keep
/// whatever the kernel returns, for as long as the pager runs (the
/// in-process zero-fill pager).
#[derive(Debug, Default)]
pub struct MemBacking {
    pages: HashMap<(PortName, u64), Vec<u8>>,
}

impl Backing for MemBacking {
    fn read(&mut self, object: PortName, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        match self.pages.get(&(object, offset)) {
            Some(p) => {
                buf.copy_from_slice(p);
                Ok(true)
            }
            None => Ok(false),
        }
    }
    fn write(&mut self, object: PortName, offset: u64, data: &[u8]) -> io::Result<()> {
        self.pages.insert((object, offset), data.to_vec());
        Ok(())
    }
    // `terminate` keeps the pages: the memory object lives on (its port is
    // still the pager's) and a later mapping must find what was returned.
}

/// Real files: each memory object is a file; pages past its end read as
/// zeroes, returned pages are written back within its length.
#[derive(Debug, Default)]
pub struct FileBacking {
    files: HashMap<PortName, (File, u64)>,
    cluster: u32,
}

impl FileBacking {
    /// A file backing asking the kernel for `cluster` pages per fault
    /// (at least 1).
    pub fn new(cluster: u32) -> FileBacking {
        FileBacking { files: HashMap::new(), cluster: cluster.max(1) }
    }

    /// `fstat(fd)`—Serves `file` (opened read/write, or read-only if
    /// returns are not expected) as `object`, at its current length.
    pub fn add(&mut self, object: PortName, file: File) -> io::Result<()> {
        let len = file.metadata()?.len();
        self.files.insert(object, (file, len));
        Ok(())
    }
}

impl Backing for FileBacking {
    /// `pread(fd, buf, n, offset)`—Reads the page at `offset` of the
    /// object's file; the part past the end of the file reads as zeroes,
    /// and a page wholly past it is `Ok(false)`.
    fn read(&mut self, object: PortName, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        let (f, len) = self.files.get(&object).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if offset >= *len {
            return Ok(false);
        }
        let n = ((*len - offset) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], offset)?;
        buf[n..].fill(0);
        Ok(true)
    }

    /// `pread(fd, buf, n, offset)` once for the whole run—The pages of the
    /// run that lie in the file (the last one zero-padded past its end);
    /// those wholly past it are `Ok(false)`. If the read fails, each page
    /// is read on its own, so that only the pages that fail are errors.
    fn read_pages(&mut self, object: PortName, offset: u64, buf: &mut [u8]) -> Vec<io::Result<bool>> {
        let page = PAGE_SIZE as usize;
        let pages = buf.len() / page;
        let Some((f, len)) = self.files.get(&object) else {
            return (0..pages).map(|_| Err(io::Error::from(io::ErrorKind::NotFound))).collect();
        };
        let inside = len.saturating_sub(offset).min(buf.len() as u64) as usize;
        if f.read_exact_at(&mut buf[..inside], offset).is_err() {
            return buf
                .chunks_mut(page)
                .enumerate()
                .map(|(i, b)| self.read(object, offset + (i * page) as u64, b))
                .collect();
        }
        let with_data = inside.div_ceil(page);
        buf[inside..with_data * page].fill(0);
        (0..pages).map(|i| Ok(i < with_data)).collect()
    }

    /// `pwrite(fd, data, n, offset)`—Writes a returned page back to the
    /// object's file, cut at the file's length (a file never grows).
    fn write(&mut self, object: PortName, offset: u64, data: &[u8]) -> io::Result<()> {
        let (f, len) = self.files.get(&object).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if offset >= *len {
            return Ok(());
        }
        let n = ((*len - offset) as usize).min(data.len());
        f.write_all_at(&data[..n], offset)
    }

    /// `fdatasync(fd)`—The kernel is done with the object: its data goes
    /// to the disk.
    fn terminate(&mut self, object: PortName) {
        if let Some((f, _)) = self.files.get(&object) {
            let _ = f.sync_data();
        }
    }

    fn cluster_pages(&self) -> Option<u32> {
        Some(self.cluster)
    }

    /// A file must get its data back when nobody maps it any more.
    fn may_cache(&self) -> bool {
        false
    }
}

/// A swap file: the default pager's backing store. Pages live in slots of
/// the file; a slot is allocated on first return and freed with its object.
#[derive(Debug)]
pub struct SwapBacking {
    file: File,
    slots: HashMap<(PortName, u64), u64>,
    free: Vec<u64>,
    next: u64,
}

impl SwapBacking {
    /// A swap store in `file` (created or truncated by the caller).
    pub fn new(file: File) -> SwapBacking {
        SwapBacking { file, slots: HashMap::new(), free: Vec::new(), next: 0 }
    }

    /// Slots in use.
    pub fn slots_used(&self) -> usize {
        self.slots.len()
    }
}

impl Backing for SwapBacking {
    /// `pread(fd, buf, PAGE_SIZE, slot * PAGE_SIZE)`—Reads the page's slot;
    /// `Ok(false)` for a page never returned (the kernel zero-fills it).
    fn read(&mut self, object: PortName, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        let Some(&slot) = self.slots.get(&(object, offset)) else { return Ok(false) };
        self.file.read_exact_at(buf, slot * PAGE_SIZE)?;
        Ok(true)
    }

    /// `pwrite(fd, data, PAGE_SIZE, slot * PAGE_SIZE)`—Writes the page into
    /// its slot, taking a free one on its first return.
    fn write(&mut self, object: PortName, offset: u64, data: &[u8]) -> io::Result<()> {
        let slot = match self.slots.get(&(object, offset)) {
            Some(&s) => s,
            None => {
                let s = self.free.pop().unwrap_or_else(|| {
                    self.next += 1;
                    self.next - 1
                });
                self.slots.insert((object, offset), s);
                s
            }
        };
        self.file.write_all_at(data, slot * PAGE_SIZE)
    }

    /// Frees the object's slots for reuse.
    fn terminate(&mut self, object: PortName) {
        let gone: Vec<_> = self.slots.keys().filter(|(o, _)| *o == object).copied().collect();
        for k in gone {
            if let Some(s) = self.slots.remove(&k) {
                self.free.push(s);
            }
        }
    }
}

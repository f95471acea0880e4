//! [`PageRange`]: a page-aligned, non-empty byte range that does not wrap,
//! checked once at construction. Ranges of object offsets (a memfd) and of
//! addresses (a mapping, maybe in another process) are both page ranges;
//! the host calls that take them (`fallocate`, the `UFFDIO_*` ioctls) want
//! exactly these properties, and a range that has them can be passed on
//! without checking again.

use crate::{Error, Result};
use std::sync::OnceLock;

/// The host's page size (`sysconf(_SC_PAGESIZE)`, from the auxiliary
/// vector).
pub fn page_size() -> u64 {
    static SIZE: OnceLock<u64> = OnceLock::new();
    *SIZE.get_or_init(|| rustix::param::page_size() as u64)
}

/// A range of bytes `[start, start + len)`: `start` and `len` multiples of
/// the page size, `len > 0`, and `start + len` representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageRange {
    start: u64,
    len: u64,
}

impl PageRange {
    /// The range `[start, start + len)`.
    ///
    /// Errors: [`Error::BadRange`] if either is not a page multiple, `len`
    /// is 0, or the end would wrap.
    pub fn new(start: u64, len: u64) -> Result<PageRange> {
        let page = page_size();
        if len == 0 || start % page != 0 || len % page != 0 || start.checked_add(len).is_none() {
            return Err(Error::BadRange { start, len });
        }
        Ok(PageRange { start, len })
    }

    /// `count` pages from page number `first` (byte `first * page_size()`).
    ///
    /// Errors: [`Error::BadRange`] if `count` is 0 or the bytes overflow.
    pub fn pages(first: u64, count: u64) -> Result<PageRange> {
        let page = page_size();
        match (first.checked_mul(page), count.checked_mul(page)) {
            (Some(start), Some(len)) => PageRange::new(start, len),
            _ => Err(Error::BadRange { start: first, len: count }),
        }
    }

    /// The first byte.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The number of bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: a page range is never empty (for clippy's sake).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }

    /// The number of pages.
    pub fn page_count(&self) -> u64 {
        self.len / page_size()
    }

    /// Whether `other` lies wholly inside this range.
    pub fn contains(&self, other: &PageRange) -> bool {
        other.start >= self.start && other.end() <= self.end()
    }

    /// The bytes both ranges cover, if any.
    pub fn intersect(&self, other: &PageRange) -> Option<PageRange> {
        let start = self.start.max(other.start);
        let end = self.end().min(other.end());
        (start < end).then(|| PageRange { start, len: end - start })
    }

    /// This range moved by `by` bytes (an offset within a mapping turned
    /// into an address, say).
    ///
    /// Errors: [`Error::BadRange`] if `by` is not a page multiple or the
    /// moved range would wrap.
    pub fn shifted(&self, by: u64) -> Result<PageRange> {
        match self.start.checked_add(by) {
            Some(start) => PageRange::new(start, self.len),
            None => Err(Error::BadRange { start: self.start, len: self.len }),
        }
    }

    /// The pages of the range, one range each, in order.
    pub fn each_page(&self) -> impl Iterator<Item = PageRange> {
        let page = page_size();
        (self.start..self.end()).step_by(page as usize).map(move |start| PageRange { start, len: page })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_once() {
        let p = page_size();
        assert!(PageRange::new(0, 0).is_err());
        assert!(PageRange::new(1, p).is_err());
        assert!(PageRange::new(0, p + 1).is_err());
        assert!(PageRange::new(u64::MAX - p + 1, p).is_err(), "the end would be 2^64");
        assert!(PageRange::pages(u64::MAX / 2, 4).is_err());
        let r = PageRange::pages(2, 3).unwrap();
        assert_eq!((r.start(), r.len(), r.end(), r.page_count()), (2 * p, 3 * p, 5 * p, 3));
        assert!(r.contains(&PageRange::pages(3, 2).unwrap()));
        assert!(!r.contains(&PageRange::pages(3, 3).unwrap()));
        assert_eq!(r.intersect(&PageRange::pages(4, 10).unwrap()), Some(PageRange::pages(4, 1).unwrap()));
        assert_eq!(r.intersect(&PageRange::pages(5, 1).unwrap()), None);
        assert_eq!(r.shifted(p).unwrap(), PageRange::pages(3, 3).unwrap());
        assert!(r.shifted(u64::MAX - p + 1).is_err());
        assert_eq!(r.each_page().map(|q| q.start() / p).collect::<Vec<_>>(), vec![2, 3, 4]);
    }
}

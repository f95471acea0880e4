//! Window arithmetic for proxies: pure functions, no kernel state.
//!
//! Everything a task passes in is a claim: every sum is checked, an
//! overflow is `KERN_INVALID_ARGUMENT` (never a wrap), and a range that
//! leaves the windows it claims to be inside is refused.
//!
//! One unaligned length is allowed: a window whose end is the last byte of
//! the offset space runs "to the end", and is kept as its last whole page
//! (see [`window_len`]).

use super::ProxyVersion;
use crate::types::{page_aligned, KernError, Result, VmProt, PAGE_SIZE};

/// The most windows [`compose`] builds (`memory_object_create_proxy`).
/// Nesting a proxy side by side in a new one copies its windows, so without
/// a bound a task could double them at every level and make each call cost
/// exponential time and memory under the kernel lock. (A region proxy has
/// one window per map entry, each made by a call of its own, so it is not
/// bounded here.)
pub const MAX_PROXY_WINDOWS: usize = 4096;

/// One window of a proxy over a target of type `T`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window<T> {
    /// Where the window starts in the proxy.
    pub offset: u64,
    pub len: u64,
    pub target: T,
    /// Where the window starts in the target.
    pub start: u64,
    /// What the window allows.
    pub prot: VmProt,
}

impl<T> Window<T> {
    /// One past the window's last proxy offset (no overflow: checked at
    /// creation).
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }

    /// The same window over another target.
    pub fn with_target<U>(&self, target: U) -> Window<U> {
        Window { offset: self.offset, len: self.len, target, start: self.start, prot: self.prot }
    }
}

/// What one entry of a `memory_object_create_proxy` call names.
#[derive(Clone, Debug)]
pub enum Source<T> {
    /// A real memory object.
    Object(T),
    /// An existing proxy: its version, windows and (paging) view.
    Proxy { version: ProxyVersion, windows: Vec<Window<T>>, view: Option<T> },
}

/// One requested entry: `len` bytes of `source` from `start`, at `offset`.
#[derive(Clone, Debug)]
pub struct Request<T> {
    pub source: Source<T>,
    pub offset: u64,
    pub start: u64,
    pub len: u64,
}

/// The length a window of `len` bytes at proxy offset `offset`, over
/// `start` of its target, is kept with.
///
/// A window whose end is exactly the last byte of the offset space runs
/// *to the end*: the larger of `offset + len` and `start + len` is
/// 2^64 − 1, and neither sum wraps (libpager's `pager_create_ro_port` and
/// tmpfs ask for offset 0, start 0, `len = ~0`). Its last byte is not on a
/// page boundary, so it is kept rounded down to its last whole page,
/// `2^64 − PAGE_SIZE − max(offset, start)`: the largest page-aligned length
/// there, so every later sum stays overflow-free. Nothing is lost: the
/// last page of the offset space cannot be mapped (`offset + size` of a
/// `vm_map` would wrap). From then on it *is* that page-aligned window:
/// nested proxies, `vm_map` and `memory_object_proxy_info` see the rounded
/// length, and it overlaps what that window overlaps.
///
/// Errors: `KERN_INVALID_ARGUMENT` for an unaligned `offset` or `start`, a
/// sum that would pass 2^64 − 1 (a wrap, as GNU Mach refuses too), any
/// other unaligned length, and a zero length (a window to the end from
/// the last page has nothing left).
pub fn window_len(offset: u64, start: u64, len: u64) -> Result<u64> {
    let end = offset.checked_add(len).ok_or(KernError::InvalidArgument)?;
    let target_end = start.checked_add(len).ok_or(KernError::InvalidArgument)?;
    let len = if end.max(target_end) == u64::MAX { len & !(PAGE_SIZE - 1) } else { len };
    if len == 0 || !page_aligned(offset) || !page_aligned(start) || !page_aligned(len) {
        return Err(KernError::InvalidArgument);
    }
    Ok(len)
}

/// The window containing `offset`, by binary search.
pub fn window_at<T>(windows: &[Window<T>], offset: u64) -> Option<&Window<T>> {
    let i = windows.partition_point(|w| w.offset <= offset);
    windows[..i].last().filter(|w| offset < w.end())
}

/// Splits `[offset, offset + len)` of a proxy into the pieces of windows
/// it covers, as `(window, offset within window, length)`. The whole range
/// must be covered with no gap, else `KERN_INVALID_ARGUMENT`.
pub fn cover<T>(windows: &[Window<T>], offset: u64, len: u64) -> Result<Vec<(&Window<T>, u64, u64)>> {
    let end = offset.checked_add(len).ok_or(KernError::InvalidArgument)?;
    if len == 0 {
        return Err(KernError::InvalidArgument);
    }
    let mut out = Vec::new();
    let mut at = offset;
    while at < end {
        let w = window_at(windows, at).ok_or(KernError::InvalidArgument)?;
        let piece = (w.end().min(end)) - at;
        out.push((w, at - w.offset, piece));
        at += piece;
    }
    Ok(out)
}

/// Builds a new proxy's windows from the requested entries, with `max`
/// the protection asked for. See the module comment of `proxy` for the
/// rules, and [`window_len`] for the lengths kept (a window to the end of
/// the offset space); errors are `KERN_INVALID_ARGUMENT`, and
/// `KERN_RESOURCE_SHORTAGE` past [`MAX_PROXY_WINDOWS`] windows.
pub fn compose<T: Copy>(max: VmProt, requests: &[Request<T>]) -> Result<Vec<Window<T>>> {
    compose_counting(max, requests, &mut 0)
}

/// As [`compose`], adding the windows it builds to `examined`.
pub fn compose_counting<T: Copy>(max: VmProt, requests: &[Request<T>], examined: &mut u64) -> Result<Vec<Window<T>>> {
    if requests.is_empty() {
        return Err(KernError::InvalidArgument);
    }
    let mut out: Vec<Window<T>> = Vec::new();
    for r in requests {
        let r_len = window_len(r.offset, r.start, r.len)?;
        match &r.source {
            Source::Object(t) => {
                *examined += 1;
                out.push(Window { offset: r.offset, len: r_len, target: *t, start: r.start, prot: max })
            }
            Source::Proxy { version, windows, view } => {
                let pieces = cover(windows, r.start, r_len)?;
                *examined += pieces.len() as u64;
                for (w, within, len) in pieces {
                    let offset = r.offset + (w.offset + within - r.start);
                    let prot = max & w.prot;
                    let (target, start) = match (version, view) {
                        // A paging proxy stays in the chain: its view is
                        // the target, at the same offsets.
                        (ProxyVersion::Paging, Some(v)) => (*v, w.offset + within),
                        // A mapping proxy is flattened to what it maps.
                        _ => (w.target, w.start + within),
                    };
                    out.push(Window { offset, len, target, start, prot });
                }
            }
        }
        if out.len() > MAX_PROXY_WINDOWS {
            return Err(KernError::ResourceShortage);
        }
    }
    out.sort_by_key(|w| w.offset);
    if out.windows(2).any(|p| p[0].end() > p[1].offset) {
        return Err(KernError::InvalidArgument);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    const P: u64 = crate::types::PAGE_SIZE;

    fn obj(t: u32, offset: u64, start: u64, len: u64) -> Request<u32> {
        Request { source: Source::Object(t), offset, start, len }
    }

    #[test]
    fn windows_may_not_overlap_or_wrap() {
        assert!(compose(VmProt::READ, &[obj(1, 0, 0, 2 * P), obj(2, 4 * P, 0, P)]).is_ok());
        assert_eq!(compose(VmProt::READ, &[obj(1, 0, 0, 2 * P), obj(2, P, 0, P)]), Err(KernError::InvalidArgument));
        let top = !(P - 1);
        assert_eq!(compose(VmProt::READ, &[obj(1, top, 0, 2 * P)]), Err(KernError::InvalidArgument));
        assert_eq!(compose(VmProt::READ, &[obj(1, 0, top, 2 * P)]), Err(KernError::InvalidArgument));
        assert_eq!(compose(VmProt::READ, &[obj(1, 0, 0, 0)]), Err(KernError::InvalidArgument));
        assert_eq!(compose(VmProt::READ, &[obj(1, 1, 0, P)]), Err(KernError::InvalidArgument));
        assert_eq!(compose::<u32>(VmProt::READ, &[]), Err(KernError::InvalidArgument));
    }

    #[test]
    fn nesting_intersects_protection_and_translates_ranges() {
        let inner = compose(VmProt::READ, &[obj(7, 0, 10 * P, 4 * P)]).unwrap();
        let outer = compose(
            VmProt::ALL,
            &[Request {
                source: Source::Proxy { version: ProxyVersion::Mapping, windows: inner.clone(), view: None },
                offset: 0,
                start: P,
                len: 2 * P,
            }],
        )
        .unwrap();
        assert_eq!(outer, vec![Window { offset: 0, len: 2 * P, target: 7, start: 11 * P, prot: VmProt::READ }]);
        // Reaching past the inner proxy's windows is refused.
        let past = Request {
            source: Source::Proxy { version: ProxyVersion::Mapping, windows: inner.clone(), view: None },
            offset: 0,
            start: 3 * P,
            len: 2 * P,
        };
        assert_eq!(compose(VmProt::ALL, &[past]), Err(KernError::InvalidArgument));
        // A paging proxy stays in the chain.
        let paging = Request {
            source: Source::Proxy { version: ProxyVersion::Paging, windows: inner, view: Some(99) },
            offset: 8 * P,
            start: P,
            len: P,
        };
        assert_eq!(
            compose(VmProt::ALL, &[paging]).unwrap(),
            vec![Window { offset: 8 * P, len: P, target: 99, start: P, prot: VmProt::READ }]
        );
    }

    #[test]
    fn a_length_to_the_last_byte_is_kept_as_the_last_whole_page() {
        let top = !(P - 1);
        let win = |offset, len, start| Window { offset, len, target: 1, start, prot: VmProt::READ };
        // The Hurd's read-only proxy: offset 0, start 0, len ~0.
        let hurd = compose(VmProt::READ, &[obj(1, 0, 0, !0)]).unwrap();
        assert_eq!(hurd, vec![win(0, top, 0)]);
        assert_eq!(compose(VmProt::READ, &[obj(1, 0, 0, top)]).unwrap(), hurd, "the whole-object proxy");
        // The larger of the two sums is the last byte; the other falls short.
        let one = |offset, start, len| compose(VmProt::READ, &[obj(1, offset, start, len)]);
        let rest = u64::MAX - 3 * P;
        assert_eq!(one(0, 3 * P, rest).unwrap(), vec![win(0, top - 3 * P, 3 * P)]);
        assert_eq!(one(3 * P, 0, rest).unwrap(), vec![win(3 * P, top - 3 * P, 0)]);
        let both = one(3 * P, P, rest).unwrap();
        assert_eq!(both, vec![win(3 * P, top - 3 * P, P)]);
        // It ends where the largest page-aligned length ends.
        assert_eq!((both[0].end(), both[0].start + both[0].len), (top, top - 2 * P));
        let bad = Err(KernError::InvalidArgument);
        // A sum past the last byte wraps, whichever side.
        assert_eq!(compose(VmProt::READ, &[obj(1, P, 0, !0)]), bad);
        assert_eq!(compose(VmProt::READ, &[obj(1, 0, P, !0)]), bad);
        assert_eq!(compose(VmProt::READ, &[obj(1, 2 * P, P, u64::MAX - P)]), bad);
        // Other unaligned lengths, and unaligned offsets or starts.
        for len in [u64::MAX - 1, u64::MAX - P, top + 1, P - 1, P + 1] {
            assert_eq!(compose(VmProt::READ, &[obj(1, 0, 0, len)]), bad, "{len:#x}");
        }
        assert_eq!(compose(VmProt::READ, &[obj(1, 1, 0, u64::MAX - 1)]), bad);
        assert_eq!(compose(VmProt::READ, &[obj(1, 0, 1, u64::MAX - 1)]), bad);
        // From the last page, nothing is left.
        assert_eq!(compose(VmProt::READ, &[obj(1, top, 0, P - 1)]), bad);
        assert_eq!(compose(VmProt::READ, &[obj(1, 0, top, P - 1)]), bad);
        // Nothing fits after it.
        assert_eq!(compose(VmProt::READ, &[obj(1, 0, 0, !0), obj(2, top - P, 0, P)]), bad);
        assert_eq!(compose(VmProt::READ, &[obj(2, 5 * P, 0, P), obj(1, 0, 0, !0)]), bad);
        // Nested, both versions: to the end of it, or from inside it.
        for (version, view) in [(ProxyVersion::Mapping, None), (ProxyVersion::Paging, Some(9))] {
            let over = |start, len| Request {
                source: Source::Proxy { version, windows: hurd.clone(), view },
                offset: 0,
                start,
                len,
            };
            let target = view.unwrap_or(1);
            let all = compose(VmProt::ALL, &[over(0, !0)]).unwrap();
            assert_eq!(all, vec![Window { target, ..win(0, top, 0) }], "{version:?}");
            let inside = compose(VmProt::ALL, &[over(2 * P, u64::MAX - 2 * P)]).unwrap();
            assert_eq!(inside, vec![Window { target, ..win(0, top - 2 * P, 2 * P) }], "{version:?}");
            assert_eq!(compose(VmProt::ALL, &[over(P, !0)]), bad, "{version:?}");
        }
    }

    #[test]
    fn cover_finds_gaps() {
        let w = compose(VmProt::READ, &[obj(1, 0, 0, 2 * P), obj(2, 2 * P, 0, P), obj(3, 5 * P, 0, P)]).unwrap();
        assert_eq!(cover(&w, P, 2 * P).unwrap().len(), 2);
        assert_eq!(cover(&w, P, 3 * P), Err(KernError::InvalidArgument));
        assert_eq!(cover(&w, u64::MAX, 2), Err(KernError::InvalidArgument));
        assert!(window_at(&w, 4 * P).is_none());
        assert_eq!(window_at(&w, 5 * P).unwrap().target, 3);
    }
}

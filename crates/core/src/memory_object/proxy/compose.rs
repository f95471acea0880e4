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

/// The most windows a [`Composer`] builds (`memory_object_create_proxy`;
/// `vm_region_create_proxy` keeps to it too). Nesting a proxy side by side
/// in a new one copies its windows, so without a bound a task could double
/// them at every level and make each call cost exponential time and memory
/// under the kernel lock. The bound is checked by counting before anything
/// is built (see [`Composer`]).
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

/// What one entry of a `memory_object_create_proxy` call names: a target
/// of type `T`, or a proxy whose windows are over targets of type `I`
/// (made into `T`s as they are copied into the new proxy).
#[derive(Clone, Copy, Debug)]
pub enum Source<'a, T, I = T> {
    /// A real memory object.
    Object(T),
    /// An existing proxy: its version, windows and (paging) view. The
    /// windows are borrowed: composing copies only the pieces the new
    /// proxy keeps, never a whole inner proxy.
    Proxy { version: ProxyVersion, windows: &'a [Window<I>], view: Option<I> },
}

/// One requested entry: `len` bytes of `source` from `start`, at `offset`.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a, T, I = T> {
    pub source: Source<'a, T, I>,
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

/// The index of the window containing `offset`, by binary search; each
/// window looked at is added to `examined`.
fn index_at<T>(windows: &[Window<T>], offset: u64, examined: &mut u64) -> Option<usize> {
    let i = windows.partition_point(|w| {
        *examined += 1;
        w.offset <= offset
    });
    let i = i.checked_sub(1)?;
    *examined += 1;
    (offset < windows[i].end()).then_some(i)
}

/// The window containing `offset`, by binary search.
pub fn window_at<T>(windows: &[Window<T>], offset: u64) -> Option<&Window<T>> {
    index_at(windows, offset, &mut 0).map(|i| &windows[i])
}

/// Splits `[offset, offset + len)` of a proxy into the pieces of windows
/// it covers, as `(window, offset within window, length)`. The whole range
/// must be covered with no gap, else `KERN_INVALID_ARGUMENT`. One binary
/// search finds the first window; the others follow it.
pub fn cover<T>(windows: &[Window<T>], offset: u64, len: u64) -> Result<Vec<(&Window<T>, u64, u64)>> {
    cover_counting(windows, offset, len, &mut 0)
}

/// As [`cover`], adding each window looked at to `examined`.
fn cover_counting<'w, T>(
    windows: &'w [Window<T>],
    offset: u64,
    len: u64,
    examined: &mut u64,
) -> Result<Vec<(&'w Window<T>, u64, u64)>> {
    let end = offset.checked_add(len).ok_or(KernError::InvalidArgument)?;
    if len == 0 {
        return Err(KernError::InvalidArgument);
    }
    let first = index_at(windows, offset, examined).ok_or(KernError::InvalidArgument)?;
    let mut out = Vec::new();
    let mut at = offset;
    for w in &windows[first..] {
        if at == end {
            break;
        }
        *examined += 1;
        // Sorted and apart: the next window starts where this piece ends,
        // or there is a gap.
        if w.offset > at {
            return Err(KernError::InvalidArgument);
        }
        let piece = w.end().min(end) - at;
        out.push((w, at - w.offset, piece));
        at += piece;
    }
    if at < end {
        return Err(KernError::InvalidArgument);
    }
    Ok(out)
}

/// How many pieces [`cover`] would split `[offset, offset + len)` into if
/// no gap lies inside: two binary searches, nothing walked. Each window
/// looked at is added to `examined`. `KERN_INVALID_ARGUMENT` if the first
/// or last byte is in no window (a gap in between is found by `cover`).
pub fn cover_count<T>(windows: &[Window<T>], offset: u64, len: u64, examined: &mut u64) -> Result<usize> {
    let end = offset.checked_add(len).ok_or(KernError::InvalidArgument)?;
    if len == 0 {
        return Err(KernError::InvalidArgument);
    }
    let first = index_at(windows, offset, examined).ok_or(KernError::InvalidArgument)?;
    let last = index_at(windows, end - 1, examined).ok_or(KernError::InvalidArgument)?;
    Ok(last - first + 1)
}

/// Builds a new proxy's windows entry by entry, with `max` the protection
/// asked for. See the module comment of `proxy` for the rules, and
/// [`window_len`] for the lengths kept (a window to the end of the offset
/// space).
///
/// The window limit is checked first: [`Composer::push`] checks an entry
/// and counts the windows it will make by binary search, and refuses it
/// once the total passes [`MAX_PROXY_WINDOWS`], before anything is built
/// or walked. So a call is refused after work and memory in proportion to
/// its entries (at most one past the limit are pushed, each costing two
/// binary searches) and never to the windows of the proxies they name;
/// [`Composer::finish`] then builds at most the limit. Everything a
/// composer looks at is added to the `examined` count its calls take.
#[derive(Debug)]
pub struct Composer<'a, T, I = T> {
    max: VmProt,
    /// The entries pushed, each with its kept length.
    requests: Vec<Request<'a, T, I>>,
    /// The windows they will make.
    windows: usize,
}

impl<'a, T: Copy + From<I>, I: Copy> Composer<'a, T, I> {
    pub fn new(max: VmProt) -> Self {
        Composer { max, requests: Vec::new(), windows: 0 }
    }

    /// Checks one entry and counts the windows it will make (one for an
    /// object; by binary search over a proxy's windows). Builds nothing.
    ///
    /// Errors: `KERN_INVALID_ARGUMENT` (see [`window_len`]; or the first or
    /// last byte of the range is outside the inner proxy's windows),
    /// `KERN_RESOURCE_SHORTAGE` (the entries pushed would make more than
    /// [`MAX_PROXY_WINDOWS`] windows: decided before their ranges are
    /// walked, so even if one of them has a gap).
    pub fn push(&mut self, mut r: Request<'a, T, I>, examined: &mut u64) -> Result<()> {
        r.len = window_len(r.offset, r.start, r.len)?;
        let n = match r.source {
            Source::Object(_) => 1,
            Source::Proxy { windows, .. } => cover_count(windows, r.start, r.len, examined)?,
        };
        self.windows += n;
        if self.windows > MAX_PROXY_WINDOWS {
            return Err(KernError::ResourceShortage);
        }
        self.requests.push(r);
        Ok(())
    }

    /// The new proxy's windows, sorted by offset.
    ///
    /// Errors: `KERN_INVALID_ARGUMENT` (no entry, a range with a gap
    /// inside an inner proxy's windows, overlapping windows).
    pub fn finish(self, examined: &mut u64) -> Result<Vec<Window<T>>> {
        if self.requests.is_empty() {
            return Err(KernError::InvalidArgument);
        }
        let max = self.max;
        let mut out: Vec<Window<T>> = Vec::with_capacity(self.windows);
        for r in &self.requests {
            match r.source {
                Source::Object(t) => {
                    *examined += 1;
                    out.push(Window { offset: r.offset, len: r.len, target: t, start: r.start, prot: max })
                }
                Source::Proxy { version, windows, view } => {
                    for (w, within, len) in cover_counting(windows, r.start, r.len, examined)? {
                        let offset = r.offset + (w.offset + within - r.start);
                        let prot = max & w.prot;
                        let (target, start) = match (version, view) {
                            // A paging proxy stays in the chain: its view is
                            // the target, at the same offsets.
                            (ProxyVersion::Paging, Some(v)) => (T::from(v), w.offset + within),
                            // A mapping proxy is flattened to what it maps.
                            _ => (T::from(w.target), w.start + within),
                        };
                        out.push(Window { offset, len, target, start, prot });
                    }
                }
            }
        }
        debug_assert!(out.len() <= MAX_PROXY_WINDOWS, "counted before they were built");
        out.sort_by_key(|w| w.offset);
        if out.windows(2).any(|p| p[0].end() > p[1].offset) {
            return Err(KernError::InvalidArgument);
        }
        Ok(out)
    }
}

/// The windows of a proxy made of `requests` at once (see [`Composer`]):
/// errors are `KERN_INVALID_ARGUMENT`, and `KERN_RESOURCE_SHORTAGE` past
/// [`MAX_PROXY_WINDOWS`] windows.
pub fn compose<T: Copy + From<I>, I: Copy>(max: VmProt, requests: &[Request<'_, T, I>]) -> Result<Vec<Window<T>>> {
    compose_counting(max, requests, &mut 0)
}

/// As [`compose`], adding the windows looked at to `examined`.
pub fn compose_counting<T: Copy + From<I>, I: Copy>(
    max: VmProt,
    requests: &[Request<'_, T, I>],
    examined: &mut u64,
) -> Result<Vec<Window<T>>> {
    let mut c = Composer::new(max);
    for &r in requests {
        c.push(r, examined)?;
    }
    c.finish(examined)
}

#[cfg(test)]
mod tests {
    use super::*;
    const P: u64 = crate::types::PAGE_SIZE;

    fn obj(t: u32, offset: u64, start: u64, len: u64) -> Request<'static, u32> {
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
        assert_eq!(compose::<u32, u32>(VmProt::READ, &[]), Err(KernError::InvalidArgument));
    }

    #[test]
    fn nesting_intersects_protection_and_translates_ranges() {
        let inner = compose(VmProt::READ, &[obj(7, 0, 10 * P, 4 * P)]).unwrap();
        let outer = compose(
            VmProt::ALL,
            &[Request::<u32> {
                source: Source::Proxy { version: ProxyVersion::Mapping, windows: &inner, view: None },
                offset: 0,
                start: P,
                len: 2 * P,
            }],
        )
        .unwrap();
        assert_eq!(outer, vec![Window { offset: 0, len: 2 * P, target: 7, start: 11 * P, prot: VmProt::READ }]);
        // Reaching past the inner proxy's windows is refused.
        let past = Request::<u32> {
            source: Source::Proxy { version: ProxyVersion::Mapping, windows: &inner, view: None },
            offset: 0,
            start: 3 * P,
            len: 2 * P,
        };
        assert_eq!(compose(VmProt::ALL, &[past]), Err(KernError::InvalidArgument));
        // A paging proxy stays in the chain.
        let paging = Request::<u32> {
            source: Source::Proxy { version: ProxyVersion::Paging, windows: &inner, view: Some(99) },
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
            let over =
                |start, len| Request { source: Source::Proxy { version, windows: &hurd, view }, offset: 0, start, len };
            let target = view.unwrap_or(1);
            let all = compose(VmProt::ALL, &[over(0, !0)]).unwrap();
            assert_eq!(all, vec![Window { target, ..win(0, top, 0) }], "{version:?}");
            let inside = compose(VmProt::ALL, &[over(2 * P, u64::MAX - 2 * P)]).unwrap();
            assert_eq!(inside, vec![Window { target, ..win(0, top - 2 * P, 2 * P) }], "{version:?}");
            assert_eq!(compose(VmProt::ALL, &[over(P, !0)]), bad, "{version:?}");
        }
    }

    /// `n` windows of one page each, side by side from offset 0, window
    /// `i` over page `i` of object `i`.
    fn pages(n: u32) -> Vec<Window<u32>> {
        (0..n).map(|i| Window { offset: u64::from(i) * P, len: P, target: i, start: 0, prot: VmProt::ALL }).collect()
    }

    /// An entry showing `count` windows of `inner` from window `first`.
    fn over(inner: &[Window<u32>], offset: u64, first: u64, count: u64) -> Request<'_, u32> {
        Request {
            source: Source::Proxy { version: ProxyVersion::Mapping, windows: inner, view: None },
            offset,
            start: first * P,
            len: count * P,
        }
    }

    #[test]
    fn the_window_limit_is_checked_before_any_window_is_walked_or_copied() {
        let inner = pages(100_000);
        let bound = MAX_PROXY_WINDOWS as u64 + 1;
        // Many entries, each over a thousand of the inner windows: refused
        // at the fifth, having looked at no more than the limit's worth.
        let many: Vec<_> = (0..1000).map(|i| over(&inner, i * 1000 * P, (i % 90) * 1000, 1000)).collect();
        let mut examined = 0;
        assert_eq!(compose_counting(VmProt::READ, &many, &mut examined), Err(KernError::ResourceShortage));
        assert!(examined <= bound, "{examined} windows looked at");
        // One entry over all of them.
        let mut examined = 0;
        let all = [over(&inner, 0, 0, 100_000)];
        assert_eq!(compose_counting(VmProt::READ, &all, &mut examined), Err(KernError::ResourceShortage));
        assert!(examined <= bound, "{examined} windows looked at");
        // Entries of objects count one window each.
        let objects: Vec<_> = (0..100_000).map(|i| obj(1, i * P, 0, P)).collect();
        let mut examined = 0;
        assert_eq!(compose_counting(VmProt::READ, &objects, &mut examined), Err(KernError::ResourceShortage));
        assert_eq!(examined, 0, "nothing built");
        // A composer is refused at the entry that passes the limit and
        // holds no more than the limit's worth of entries.
        let mut c = Composer::new(VmProt::READ);
        let mut examined = 0;
        for i in 0..MAX_PROXY_WINDOWS as u64 {
            c.push(obj(1, i * P, 0, P), &mut examined).unwrap();
        }
        assert_eq!(c.push(obj(1, TOP_PAGE, 0, P), &mut examined), Err(KernError::ResourceShortage));
        assert_eq!(c.requests.len(), MAX_PROXY_WINDOWS);
        assert_eq!(c.finish(&mut examined).unwrap().len(), MAX_PROXY_WINDOWS);
    }

    /// The highest page a window may start at.
    const TOP_PAGE: u64 = !(P - 1) - P;

    #[test]
    fn composing_looks_only_at_the_pieces_it_keeps() {
        let inner = pages(100_000);
        // Two windows from the middle of a hundred thousand: two binary
        // searches to count them, one to find the first, then the two.
        let mut examined = 0;
        let two = compose_counting(VmProt::READ, &[over(&inner, 0, 50_000, 2)], &mut examined).unwrap();
        assert_eq!(two.iter().map(|w| w.target).collect::<Vec<_>>(), [50_000, 50_001]);
        assert!(examined <= 2 + 3 * 19, "{examined} windows looked at");
        // Exactly the limit, from four entries: all of it is built, and
        // little else is looked at.
        let quarter = MAX_PROXY_WINDOWS as u64 / 4;
        let four: Vec<_> = (0..4).map(|i| over(&inner, i * quarter * P, i * 20_000, quarter)).collect();
        let mut examined = 0;
        let out = compose_counting(VmProt::READ, &four, &mut examined).unwrap();
        assert_eq!(out.len(), MAX_PROXY_WINDOWS);
        assert!(examined <= MAX_PROXY_WINDOWS as u64 + 4 * 3 * 19, "{examined} windows looked at");
        assert_eq!((out[quarter as usize].offset, out[quarter as usize].target), (quarter * P, 20_000));
        // A gap inside a range counts as if it had none, and is found when
        // the range is built.
        let mut gappy = pages(8);
        gappy.remove(4);
        assert_eq!(cover_count(&gappy, 0, 8 * P, &mut 0), Ok(7));
        assert_eq!(cover(&gappy, 0, 8 * P), Err(KernError::InvalidArgument));
        assert_eq!(compose(VmProt::READ, &[over(&gappy, 0, 0, 8)]), Err(KernError::InvalidArgument));
        assert_eq!(cover_count(&gappy, 4 * P, P, &mut 0), Err(KernError::InvalidArgument));
        assert_eq!(cover_count(&gappy, 2 * P, 3 * P, &mut 0), Err(KernError::InvalidArgument), "ends in the gap");
        assert_eq!(cover_count(&gappy, 0, 9 * P, &mut 0), Err(KernError::InvalidArgument), "past the end");
        assert_eq!(cover(&gappy, 5 * P, 3 * P).unwrap().len(), 3);
        assert_eq!(cover(&gappy, 0, 9 * P), Err(KernError::InvalidArgument), "past the end");
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

//! Window arithmetic for proxies: pure functions, no kernel state.
//!
//! Everything a task passes in is a claim: every sum is checked, an
//! overflow is `KERN_INVALID_ARGUMENT` (never a wrap), and a range that
//! leaves the windows it claims to be inside is refused.

use super::ProxyVersion;
use crate::types::{page_aligned, KernError, Result, VmProt};

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
/// rules; errors are `KERN_INVALID_ARGUMENT`, and `KERN_RESOURCE_SHORTAGE`
/// past [`MAX_PROXY_WINDOWS`] windows.
pub fn compose<T: Copy>(max: VmProt, requests: &[Request<T>]) -> Result<Vec<Window<T>>> {
    if requests.is_empty() {
        return Err(KernError::InvalidArgument);
    }
    let mut out: Vec<Window<T>> = Vec::new();
    for r in requests {
        if r.len == 0 || !page_aligned(r.offset) || !page_aligned(r.start) || !page_aligned(r.len) {
            return Err(KernError::InvalidArgument);
        }
        r.offset.checked_add(r.len).ok_or(KernError::InvalidArgument)?;
        r.start.checked_add(r.len).ok_or(KernError::InvalidArgument)?;
        match &r.source {
            Source::Object(t) => {
                out.push(Window { offset: r.offset, len: r.len, target: *t, start: r.start, prot: max })
            }
            Source::Proxy { version, windows, view } => {
                for (w, within, len) in cover(windows, r.start, r.len)? {
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
    fn cover_finds_gaps() {
        let w = compose(VmProt::READ, &[obj(1, 0, 0, 2 * P), obj(2, 2 * P, 0, P), obj(3, 5 * P, 0, P)]).unwrap();
        assert_eq!(cover(&w, P, 2 * P).unwrap().len(), 2);
        assert_eq!(cover(&w, P, 3 * P), Err(KernError::InvalidArgument));
        assert_eq!(cover(&w, u64::MAX, 2), Err(KernError::InvalidArgument));
        assert!(window_at(&w, 4 * P).is_none());
        assert_eq!(window_at(&w, 5 * P).unwrap().target, 3);
    }
}

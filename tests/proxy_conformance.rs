//! The proxy conformance suite: every rule of `memory_object_create_proxy`
//! and friends (DESIGN.md §3), each stated once as a function of the proxy
//! version and the transport, and run unchanged against both versions,
//! in-process and over `machvmd`'s socket ([`both!`] instantiates it in
//! `mapping::{local, socket}` and `paging::{local, socket}`). The kernel
//! is booted with the version under test as its default, so the suite goes
//! through the one interface user code sees; over the socket every task is
//! a connection and every call of a rule a call on the wire. A few rules
//! exist for one version only (revocation, request sharing with the real
//! pager); they are at the end, run on both transports ([`transports!`]).
//!
//! One rule is no rule of the proxies:
//! `terminating_a_task_wakes_its_blocked_receiver` checks the fixtures'
//! footing (a task's thread blocked in a receive returns when the task is
//! terminated from outside, as `Running::stop` ends a pager), on both
//! transports too. Nothing here is in-process only.

#[macro_use]
mod common;

use common::*;
use machvm_core::ipc::{Disposition, PortName, UserMessage, MACH_NOTIFY_NO_SENDERS};
use machvm_core::vm::paging::ReturnPolicy;
use machvm_core::*;

both!(
    windows_over_several_objects_with_nonzero_offsets,
    bad_window_arrays_are_invalid_argument,
    overlapping_windows_are_refused,
    hurd_read_only_proxy_to_the_end_is_the_whole_object_proxy,
    windows_to_the_end_from_nonzero_offsets_and_starts,
    lengths_past_the_end_or_unaligned_stay_invalid,
    nested_proxies_intersect_protection_at_every_depth,
    ranges_compose_along_chains,
    vm_map_request_must_lie_inside_the_windows,
    request_spanning_windows_makes_one_entry_per_window,
    requested_protections_are_masked_by_the_proxy,
    vm_protect_never_exceeds_the_proxy,
    copy_mapping_needs_read_only_and_is_private,
    proxy_and_revoke_ports_accept_no_messages,
    forged_no_senders_does_nothing,
    proxy_dies_with_its_last_send_right,
    dead_proxy_releases_what_it_holds,
    mappings_outlive_the_proxy_rights,
    region_proxy_leaves_holes_out,
    region_proxy_of_partial_entries,
    region_proxy_of_untouched_anonymous_memory_shares_it,
    region_proxy_of_copy_on_write_entries,
    region_proxy_respects_entry_maximum,
    region_proxy_errors,
    introspection_reports_what_a_proxy_grants,
    versions_are_indistinguishable_to_user_code,
);

transports!(
    paging_each_page_is_asked_of_the_pager_once,
    paging_resident_pages_are_shared_not_copied,
    paging_lock_request_flush_reaches_proxy_mappings,
    paging_lock_value_reaches_proxy_mappings,
    paging_data_error_reaches_proxy_mappings,
    paging_revocation_cuts_every_mapping_made_through_it,
    paging_revocation_of_an_inner_proxy_only,
    paging_revocation_cuts_only_the_windows_that_reach_the_revoked_proxy,
    paging_a_revoked_proxy_leaves_only_its_id_yet_its_copies_stay_dead,
    mapping_revoke_is_not_supported,
    terminating_a_task_wakes_its_blocked_receiver,
);

// ----- creation -----

fn windows_over_several_objects_with_nonzero_offsets(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let (a, b) = (w.objs[0], w.objs[1]);
    // Given out of order; the proxy sorts them.
    let px = w.proxy(VmProt::ALL, &[(a, 2 * P, 3 * P, 2 * P), (b, 6 * P, P, P), (a, 10 * P, 0, P)]).unwrap();
    let t = w.task();
    let name = w.give(px.proxy, &t);
    let x = w.map(&t, name, 2 * P, 2 * P).unwrap();
    w.assert_shows(&t, x, 2, 0, 3 * P);
    let y = w.map(&t, name, 6 * P, P).unwrap();
    w.assert_shows(&t, y, 1, 1, P);
    let z = w.map(&t, name, 10 * P, P).unwrap();
    w.assert_shows(&t, z, 1, 0, 0);
    // Part of a window from an offset inside it.
    let p = w.map(&t, name, 3 * P, P).unwrap();
    w.assert_shows(&t, p, 1, 0, 4 * P);
}

fn bad_window_arrays_are_invalid_argument(v: ProxyVersion, via: Transport) {
    let w = World::with_objects(v, via, 1, false);
    let o = w.objs[0];
    let k = &w.k;
    let before = k.stats();
    let create = |objs: &[_], offs: &[u64], starts: &[u64], lens: &[u64]| {
        w.owner.memory_object_create_proxy(VmProt::READ, objs, offs, starts, lens)
    };
    let bad = Err(KernError::InvalidArgument);
    // Lengths disagree, in each array.
    assert_eq!(create(&[o, o], &[0], &[0], &[P]), bad);
    assert_eq!(create(&[o], &[0, P], &[0], &[P]), bad);
    assert_eq!(create(&[o], &[0], &[0, P], &[P]), bad);
    assert_eq!(create(&[o], &[0], &[0], &[P, P]), bad);
    // Empty.
    assert_eq!(create(&[], &[], &[], &[]), bad);
    // Zero length.
    assert_eq!(create(&[o], &[0], &[0], &[0]), bad);
    // Unaligned offset, start, length.
    assert_eq!(create(&[o], &[1], &[0], &[P]), bad);
    assert_eq!(create(&[o], &[0], &[P / 2], &[P]), bad);
    assert_eq!(create(&[o], &[0], &[0], &[P + 8]), bad);
    // Overflow of offset + len and start + len.
    let top = TOP;
    assert_eq!(create(&[o], &[top], &[0], &[P]), bad);
    assert_eq!(create(&[o], &[0], &[top], &[P]), bad);
    assert_eq!(create(&[o], &[0], &[0], &[top]).map(|_| ()), Ok(()), "a huge but exact window is fine");
    // One bad window spoils the call; nothing was made by the failures.
    assert_eq!(create(&[o, o], &[0, P], &[0, 0], &[P, 0]), bad);
    assert_eq!(k.stats().proxies, before.proxies + 1);
    // Not a memory object at all.
    let not_object = w.proxy(VmProt::READ, &[(o, 0, 0, P)]).unwrap().revoke;
    assert_eq!(create(&[not_object], &[0], &[0], &[P]), bad);
    assert_eq!(create(&[PortName(0x7777)], &[0], &[0], &[P]), Err(KernError::InvalidName));
}

fn overlapping_windows_are_refused(v: ProxyVersion, via: Transport) {
    let w = World::with_objects(v, via, 2, false);
    let (a, b) = (w.objs[0], w.objs[1]);
    let bad = Err(KernError::InvalidArgument);
    let proxies = w.k.stats().proxies;
    assert_eq!(w.proxy(VmProt::READ, &[(a, 0, 0, 2 * P), (b, P, 0, P)]).map(|_| ()), bad);
    assert_eq!(w.proxy(VmProt::READ, &[(a, 4 * P, 0, P), (a, 4 * P, 8 * P, P)]).map(|_| ()), bad);
    assert_eq!(w.proxy(VmProt::READ, &[(a, 0, 0, 8 * P), (b, 2 * P, 0, P)]).map(|_| ()), bad);
    assert_eq!(w.proxy(VmProt::READ, &[(b, 3 * P, 0, 2 * P), (a, 0, 0, 4 * P)]).map(|_| ()), bad);
    assert_eq!(w.k.stats().proxies, proxies);
    // Adjacent windows touch but do not overlap.
    assert!(w.proxy(VmProt::READ, &[(a, 0, 0, 2 * P), (b, 2 * P, 0, P)]).is_ok());
}

// ----- windows to the end of the offset space -----

/// What a task sees of a read/execute proxy of object 0 mapped from offset
/// 0 as glibc's `mmap` maps it, and of a proxy the Hurd makes over it:
/// every answer, in order, so two proxies can be compared.
fn read_only_script(w: &World, proxy: PortName) -> Vec<String> {
    let t = w.task();
    let name = w.give(proxy, &t);
    let mut seen = Vec::new();
    let mut note = |what: &str, r: &dyn std::fmt::Debug| seen.push(format!("{what}: {r:?}"));
    let info = t.memory_object_proxy_info(name).unwrap();
    note("info", &(info.protection, &info.windows));
    // glibc's mmap asks for READ|WRITE / ALL and gets what the proxy allows.
    let size = OBJ_PAGES * P;
    let a = t.vm_map(MapRequest::anywhere(size, Some(name)).prot(VmProt::DEFAULT, VmProt::ALL)).unwrap();
    let r = t.vm_region(a).unwrap();
    assert_eq!((r.size, r.cur, r.max), (size, VmProt::READ, VmProt::READ | VmProt::EXECUTE));
    note("region", &(r.size, r.cur, r.max));
    w.assert_shows(&t, a, OBJ_PAGES, 0, 0);
    let fail = Err(KernError::ProtectionFailure);
    assert_eq!(t.write_u64(a, 1), fail);
    assert_eq!(t.vm_write(a.plus(P), &[1]), fail);
    assert_eq!(t.execute(a), fail, "cur is READ");
    assert_eq!(t.vm_protect(a, size, false, VmProt::WRITE), fail);
    assert_eq!(t.vm_protect(a, size, false, VmProt::DEFAULT), fail);
    assert_eq!(t.vm_protect(a, P, true, VmProt::ALL), fail);
    t.vm_protect(a, size, false, VmProt::READ | VmProt::EXECUTE).unwrap();
    assert_eq!(t.execute(a), Ok(()));
    assert_eq!(t.write_u64(a, 1), fail);
    // Asking for exactly what it allows, from an offset inside.
    let rx = VmProt::READ | VmProt::EXECUTE;
    let b = t.vm_map(MapRequest::anywhere(2 * P, Some(name)).offset(4 * P).prot(rx, rx)).unwrap();
    w.assert_shows(&t, b, 2, 0, 4 * P);
    note("write b", &t.write_u64(b, 1));
    // A private copy may be written; the object never sees it.
    let c = t.vm_map(MapRequest::anywhere(P, Some(name)).copy(true)).unwrap();
    note("write copy", &t.write_u64(c, 0xc0));
    note("read copy", &t.read_u64(c));
    // The Hurd's own call over this proxy: a proxy of it to the end.
    let nested = t.memory_object_create_proxy(VmProt::ALL, &[name], &[0], &[0], &[!0]).unwrap();
    let info = t.memory_object_proxy_info(nested.proxy).unwrap();
    note("nested info", &(info.protection, info.windows.iter().map(|w| (w.offset, w.len, w.prot)).collect::<Vec<_>>()));
    let n = t.vm_map(MapRequest::anywhere(size, Some(nested.proxy))).unwrap();
    w.assert_shows(&t, n, OBJ_PAGES, 0, 0);
    note("write nested", &t.write_u64(n, 1));
    note("protect nested", &t.vm_protect(n, P, false, VmProt::WRITE));
    assert_eq!(w.direct_word(0, 0), word(0, 0), "no write reached the object");
    seen
}

/// libpager's `pager_create_ro_port` and tmpfs make a read-only proxy with
/// `memory_object_create_proxy(READ|EXECUTE, [object], [0], [0], [~0])`:
/// a length of `~0` reaches the last byte of the offset space. The window
/// runs to the end (kept as its last whole page), and the proxy behaves
/// exactly like the whole-object proxy of the largest page-aligned length.
fn hurd_read_only_proxy_to_the_end_is_the_whole_object_proxy(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let rx = VmProt::READ | VmProt::EXECUTE;
    let o = w.objs[0];
    let hurd = w.owner.memory_object_create_proxy(rx, &[o], &[0], &[0], &[!0]).unwrap();
    let whole = w.proxy(rx, &[(o, 0, 0, TOP)]).unwrap();
    let info = w.owner.memory_object_proxy_info(hurd.proxy).unwrap();
    let windows: Vec<(u64, u64, u64, VmProt, bool)> =
        info.windows.iter().map(|w| (w.offset, w.len, w.start, w.prot, w.target_is_proxy)).collect();
    assert_eq!(windows, [(0, TOP, 0, rx, false)], "kept as its last whole page");
    assert_eq!(info, w.owner.memory_object_proxy_info(whole.proxy).unwrap());
    assert_eq!(read_only_script(&w, hurd.proxy), read_only_script(&w, whole.proxy));
    // Nothing fits after a window to the end.
    let bad = Err(KernError::InvalidArgument);
    let b = w.objs[1];
    let create = |objs: &[PortName], offs: &[u64], starts: &[u64], lens: &[u64]| {
        w.owner.memory_object_create_proxy(rx, objs, offs, starts, lens).map(|_| ())
    };
    assert_eq!(create(&[o, b], &[0, 4 * P], &[0, 0], &[!0, P]), bad, "overlaps it");
    assert_eq!(create(&[b, o], &[TOP - P, 0], &[0, 0], &[P, !0]), bad, "overlaps its last page");
    assert_eq!(create(&[o, b], &[0, TOP], &[0, 0], &[!0, P]), bad, "past the end");
    assert_eq!(create(&[o, b], &[0, TOP], &[0, 0], &[!0, P - 1]), bad, "nothing is left after it");
}

/// A window to the end from a nonzero proxy offset or object start: the
/// larger of `offset + len` and `start + len` is the last byte of the
/// offset space, the other falls short of it, and the window is kept as
/// the last whole page of the larger one.
fn windows_to_the_end_from_nonzero_offsets_and_starts(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let o = w.objs[0];
    let t = w.task();
    let window = |px: &ProxyRights| {
        let i = w.owner.memory_object_proxy_info(px.proxy).unwrap();
        i.windows.iter().map(|w| (w.offset, w.len, w.start)).collect::<Vec<_>>()
    };
    // From object page 2, at proxy offset 0.
    let s = w.proxy(VmProt::READ, &[(o, 0, 2 * P, u64::MAX - 2 * P)]).unwrap();
    assert_eq!(window(&s), [(0, TOP - 2 * P, 2 * P)]);
    let a = w.map(&t, w.give(s.proxy, &t), 0, 4 * P).unwrap();
    w.assert_shows(&t, a, 4, 0, 2 * P);
    // Object page 0 at proxy offset 3P.
    let off = w.proxy(VmProt::READ, &[(o, 3 * P, 0, u64::MAX - 3 * P)]).unwrap();
    assert_eq!(window(&off), [(3 * P, TOP - 3 * P, 0)]);
    let b = w.map(&t, w.give(off.proxy, &t), 3 * P, 2 * P).unwrap();
    w.assert_shows(&t, b, 2, 0, 0);
    assert_eq!(w.map(&t, w.give(off.proxy, &t), 0, P), Err(KernError::InvalidArgument), "before the window");
    // Both nonzero: the proxy side reaches the end, the object side not.
    let both = w.proxy(VmProt::READ, &[(o, 5 * P, P, u64::MAX - 5 * P)]).unwrap();
    assert_eq!(window(&both), [(5 * P, TOP - 5 * P, P)]);
    let c = w.map(&t, w.give(both.proxy, &t), 6 * P, P).unwrap();
    w.assert_shows(&t, c, 1, 0, 2 * P);
    // Nested: to the end of a proxy whose window runs to the end, from
    // inside that window.
    let nested = w.proxy(VmProt::ALL, &[(off.proxy, 0, 4 * P, u64::MAX - 4 * P)]).unwrap();
    assert_eq!(window(&nested)[0].1, TOP - 4 * P);
    assert_eq!(w.owner.memory_object_proxy_info(nested.proxy).unwrap().protection, VmProt::READ);
    let d = w.map(&t, w.give(nested.proxy, &t), 0, 2 * P).unwrap();
    w.assert_shows(&t, d, 2, 0, P);
    // `s` reached the end on the object side: its window stops two pages
    // short of the end of the proxy's offsets, and a window to the end of
    // the offset space over it reaches past it.
    assert_eq!(w.proxy(VmProt::READ, &[(s.proxy, 0, 0, !0)]).map(|_| ()), Err(KernError::InvalidArgument));
    assert_eq!(w.proxy(VmProt::READ, &[(s.proxy, 0, P, u64::MAX - P)]).map(|_| ()), Err(KernError::InvalidArgument));
    assert!(w.proxy(VmProt::READ, &[(s.proxy, 0, 0, TOP - 2 * P)]).is_ok());
}

/// Only a length that reaches the very last byte is read as "to the end":
/// a sum past it still wraps, and every other unaligned length is refused.
fn lengths_past_the_end_or_unaligned_stay_invalid(v: ProxyVersion, via: Transport) {
    let w = World::with_objects(v, via, 1, false);
    let o = w.objs[0];
    let proxies = w.k.stats().proxies;
    let bad = Err(KernError::InvalidArgument);
    let create = |off: u64, start: u64, len: u64| {
        w.owner.memory_object_create_proxy(VmProt::READ, &[o], &[off], &[start], &[len]).map(|_| ())
    };
    // Wraps: the other side passes the end.
    assert_eq!(create(0, P, !0), bad, "start + len wraps");
    assert_eq!(create(P, 0, !0), bad, "offset + len wraps");
    assert_eq!(create(P, 2 * P, u64::MAX - P), bad, "start + len wraps");
    assert_eq!(create(2 * P, P, u64::MAX - P), bad, "offset + len wraps");
    assert_eq!(create(TOP, TOP, !0), bad);
    // Unaligned lengths that stop short of the end.
    for len in [u64::MAX - 1, u64::MAX - P, u64::MAX - P + 2, TOP + 1, P - 1, P + 8, 1] {
        assert_eq!(create(0, 0, len), bad, "len {len:#x}");
    }
    assert_eq!(create(P, P, u64::MAX - 2 * P), bad, "one page short of the end");
    // To the end from the last page: nothing is left of it.
    assert_eq!(create(TOP, 0, P - 1), bad);
    assert_eq!(create(0, TOP, P - 1), bad);
    // Unaligned offsets and starts are refused even to the end.
    assert_eq!(create(1, 0, u64::MAX - 1), bad);
    assert_eq!(create(0, 1, u64::MAX - 1), bad);
    assert_eq!(w.k.stats().proxies, proxies, "nothing was made");
    // The largest page-aligned lengths are fine as they always were.
    assert_eq!(create(0, 0, TOP), Ok(()));
    assert_eq!(create(P, 0, TOP - P), Ok(()));
    assert_eq!(create(TOP - P, 0, P), Ok(()));
}

fn nested_proxies_intersect_protection_at_every_depth(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    // Each level asks for these; what a mapping may do is their intersection.
    let asked = [VmProt::ALL, VmProt::READ | VmProt::EXECUTE, VmProt::ALL, VmProt::READ | VmProt::WRITE, VmProt::ALL];
    let t = w.task();
    let mut inner = w.objs[0];
    let mut allowed = VmProt::ALL;
    for (depth, &max) in asked.iter().enumerate() {
        let px = w.proxy(max, &[(inner, 0, 0, 4 * P)]).unwrap();
        allowed &= max;
        inner = px.proxy;
        let name = w.give(px.proxy, &t);
        let a = t.vm_map(MapRequest::anywhere(4 * P, Some(name)).prot(VmProt::ALL, VmProt::ALL)).unwrap();
        let r = t.vm_region(a).unwrap();
        assert_eq!((r.cur, r.max), (allowed, allowed), "depth {}", depth + 1);
        let expect = |want: VmProt| if allowed.contains(want) { Ok(()) } else { Err(KernError::ProtectionFailure) };
        assert_eq!(t.read_u64(a).map(|_| ()), expect(VmProt::READ), "depth {}", depth + 1);
        let mark = 0xd0 + depth as u64 + 1;
        assert_eq!(t.write_u64(VmAddr(a.0 + P), mark), expect(VmProt::WRITE), "depth {}", depth + 1);
        assert_eq!(t.execute(a), expect(VmProt::EXECUTE), "depth {}", depth + 1);
        assert_eq!(w.owner.memory_object_proxy_info(px.proxy).unwrap().protection, allowed);
    }
    // Depth 5 allows only reading.
    assert_eq!(allowed, VmProt::READ);
    assert_eq!(w.direct_word(0, P), 0xd1, "only depth 1 could write");
}

fn ranges_compose_along_chains(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let a = w.objs[0];
    let b = w.objs[1];
    // p1: a[2P, 6P) at 4P, b[0, 2P) at 9P (a gap at 8P).
    let p1 = w.proxy(VmProt::ALL, &[(a, 4 * P, 2 * P, 4 * P), (b, 9 * P, 0, 2 * P)]).unwrap();
    // p2: p1[5P, 7P) at 0 = a[3P, 5P); p1[9P, 11P) at 2P = b[0, 2P).
    let p2 = w.proxy(VmProt::ALL, &[(p1.proxy, 0, 5 * P, 2 * P), (p1.proxy, 2 * P, 9 * P, 2 * P)]).unwrap();
    // p3: p2[P, 3P) at 7P = a[4P, 5P) then b[0, P).
    let p3 = w.proxy(VmProt::ALL, &[(p2.proxy, 7 * P, P, 2 * P)]).unwrap();
    let t = w.task();
    let x = w.map(&t, w.give(p2.proxy, &t), 0, 4 * P).unwrap();
    w.assert_shows(&t, x, 2, 0, 3 * P);
    w.assert_shows(&t, VmAddr(x.0 + 2 * P), 2, 1, 0);
    let y = w.map(&t, w.give(p3.proxy, &t), 7 * P, 2 * P).unwrap();
    w.assert_shows(&t, y, 1, 0, 4 * P);
    w.assert_shows(&t, VmAddr(y.0 + P), 1, 1, 0);
    // Asking an inner proxy for what it does not show is refused: past its
    // windows, or across the gap between them.
    let bad = Err(KernError::InvalidArgument);
    assert_eq!(w.proxy(VmProt::READ, &[(p1.proxy, 0, 10 * P, 2 * P)]).map(|_| ()), bad, "past the last window");
    assert_eq!(w.proxy(VmProt::READ, &[(p1.proxy, 0, 0, P)]).map(|_| ()), bad, "before the first window");
    assert_eq!(w.proxy(VmProt::READ, &[(p1.proxy, 0, 7 * P, 2 * P)]).map(|_| ()), bad, "across the gap");
    assert_eq!(w.proxy(VmProt::READ, &[(p1.proxy, 0, 8 * P, P)]).map(|_| ()), bad, "in the gap");
    assert_eq!(w.proxy(VmProt::READ, &[(p3.proxy, 0, 6 * P, 2 * P)]).map(|_| ()), bad);
}

// ----- vm_map -----

fn vm_map_request_must_lie_inside_the_windows(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let a = w.objs[0];
    let px = w.proxy(VmProt::ALL, &[(a, 0, 0, 2 * P), (a, 3 * P, 8 * P, P)]).unwrap();
    let t = w.task();
    let name = w.give(px.proxy, &t);
    let bad = Err(KernError::InvalidArgument);
    assert_eq!(w.map(&t, name, P, 2 * P), bad, "runs into the gap");
    assert_eq!(w.map(&t, name, 2 * P, P), bad, "in the gap");
    assert_eq!(w.map(&t, name, 4 * P, P), bad, "past the end");
    assert_eq!(w.map(&t, name, 3 * P, 2 * P), bad, "runs past the end");
    assert_eq!(w.map(&t, name, 0, 5 * P), bad, "all of it, gap included");
    assert_eq!(t.vm_region(VmAddr(0)), Err(KernError::InvalidAddress), "failed calls map nothing");
    let x = w.map(&t, name, 3 * P, P).unwrap();
    w.assert_shows(&t, x, 1, 0, 8 * P);
    let y = w.map(&t, name, P, P).unwrap();
    w.assert_shows(&t, y, 1, 0, P);
}

fn request_spanning_windows_makes_one_entry_per_window(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let (a, b) = (w.objs[0], w.objs[1]);
    let px = w.proxy(VmProt::ALL, &[(a, 0, 4 * P, 2 * P), (b, 2 * P, 0, P), (a, 3 * P, 12 * P, 2 * P)]).unwrap();
    let t = w.task();
    let name = w.give(px.proxy, &t);
    let x = w.map(&t, name, P, 3 * P).unwrap();
    let sizes: Vec<u64> = [0, P, 2 * P].iter().map(|&d| t.vm_region(VmAddr(x.0 + d)).unwrap().size).collect();
    assert_eq!(sizes, [P, P, P]);
    assert_eq!(t.vm_region(x).unwrap().start, x);
    assert_eq!(t.vm_region(VmAddr(x.0 + 2 * P)).unwrap().start, VmAddr(x.0 + 2 * P));
    w.assert_shows(&t, x, 1, 0, 5 * P);
    w.assert_shows(&t, VmAddr(x.0 + P), 1, 1, 0);
    w.assert_shows(&t, VmAddr(x.0 + 2 * P), 1, 0, 12 * P);
    // The whole proxy: three entries of 2, 1 and 2 pages.
    let y = w.map(&t, name, 0, 5 * P).unwrap();
    let regions: Vec<(u64, u64)> = [0, 2 * P, 3 * P]
        .iter()
        .map(|&d| {
            let r = t.vm_region(VmAddr(y.0 + d)).unwrap();
            (r.start.0 - y.0, r.size)
        })
        .collect();
    assert_eq!(regions, [(0, 2 * P), (2 * P, P), (3 * P, 2 * P)]);
    // Unmapping the whole range removes every piece.
    t.vm_deallocate(y, 5 * P).unwrap();
    assert_eq!(t.read_u64(y), Err(KernError::InvalidAddress));
}

fn requested_protections_are_masked_by_the_proxy(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let px = w.proxy(VmProt::READ, &[(w.objs[0], 0, 0, 2 * P)]).unwrap();
    let t = w.task();
    let name = w.give(px.proxy, &t);
    // glibc's mmap: cur = READ|WRITE, max = ALL. It succeeds, read-only.
    let a = t.vm_map(MapRequest::anywhere(2 * P, Some(name)).prot(VmProt::DEFAULT, VmProt::ALL)).unwrap();
    let r = t.vm_region(a).unwrap();
    assert_eq!((r.cur, r.max), (VmProt::READ, VmProt::READ));
    assert_eq!(t.read_u64(a), Ok(word(0, 0)));
    assert_eq!(t.write_u64(a, 1), Err(KernError::ProtectionFailure));
    assert_eq!(t.vm_write(a, &[1]), Err(KernError::ProtectionFailure));
    assert_eq!(t.execute(a), Err(KernError::ProtectionFailure));
    // A request for less than the proxy allows is kept as asked.
    let rw = w.proxy(VmProt::DEFAULT, &[(w.objs[0], 0, 0, P)]).unwrap();
    let b = t.vm_map(MapRequest::anywhere(P, Some(w.give(rw.proxy, &t))).prot(VmProt::READ, VmProt::ALL)).unwrap();
    let r = t.vm_region(b).unwrap();
    assert_eq!((r.cur, r.max), (VmProt::READ, VmProt::DEFAULT));
    assert_eq!(t.write_u64(b, 1), Err(KernError::ProtectionFailure));
    // cur above max is still refused before any masking.
    assert_eq!(
        t.vm_map(MapRequest::anywhere(P, Some(name)).prot(VmProt::ALL, VmProt::READ)),
        Err(KernError::InvalidArgument)
    );
    assert_eq!(w.direct_word(0, 0), word(0, 0));
}

fn vm_protect_never_exceeds_the_proxy(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let t = w.task();
    let ro = w.proxy(VmProt::READ, &[(w.objs[0], 0, 0, 2 * P)]).unwrap();
    let a = w.map(&t, w.give(ro.proxy, &t), 0, 2 * P).unwrap();
    let fail = Err(KernError::ProtectionFailure);
    let read_fail: Result<u64> = Err(KernError::ProtectionFailure);
    assert_eq!(t.vm_protect(a, 2 * P, false, VmProt::DEFAULT), fail);
    assert_eq!(t.vm_protect(a, P, false, VmProt::WRITE), fail);
    assert_eq!(t.vm_protect(a, 2 * P, true, VmProt::ALL), fail);
    assert_eq!(t.vm_protect(a, 2 * P, true, VmProt::READ | VmProt::EXECUTE), fail);
    // Down and back up to the proxy's protection is fine; never above.
    t.vm_protect(a, 2 * P, false, VmProt::NONE).unwrap();
    assert_eq!(t.read_u64(a), read_fail);
    t.vm_protect(a, 2 * P, false, VmProt::READ).unwrap();
    assert_eq!(t.read_u64(a), Ok(word(0, 0)));
    assert_eq!(t.write_u64(a, 1), fail);
    // Lowering max to NONE is for good.
    t.vm_protect(a, P, true, VmProt::NONE).unwrap();
    assert_eq!(t.vm_protect(a, P, false, VmProt::READ), fail);
    assert_eq!(t.read_u64(a), read_fail);
    assert_eq!(t.read_u64(VmAddr(a.0 + P)), Ok(word(0, P)));
    // A read/write proxy: lowered then raised again up to read/write.
    let rw = w.proxy(VmProt::DEFAULT, &[(w.objs[0], 0, 4 * P, P)]).unwrap();
    let b = w.map(&t, w.give(rw.proxy, &t), 0, P).unwrap();
    t.vm_protect(b, P, false, VmProt::READ).unwrap();
    assert_eq!(t.write_u64(b, 5), fail);
    t.vm_protect(b, P, false, VmProt::DEFAULT).unwrap();
    t.write_u64(b, 5).unwrap();
    assert_eq!(w.direct_word(0, 4 * P), 5);
    assert_eq!(t.vm_protect(b, P, false, VmProt::ALL), fail);
    assert_eq!(t.execute(b), fail);
}

fn copy_mapping_needs_read_only_and_is_private(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let t = w.task();
    let ro = w.proxy(VmProt::READ, &[(w.objs[0], 0, 0, 2 * P)]).unwrap();
    let name = w.give(ro.proxy, &t);
    let c = t.vm_map(MapRequest::anywhere(2 * P, Some(name)).copy(true).prot(VmProt::DEFAULT, VmProt::ALL)).unwrap();
    let r = t.vm_region(c).unwrap();
    assert!(r.cur.contains(VmProt::DEFAULT), "a copy is writable: {:?}", r.cur);
    assert!(!r.max.contains(VmProt::EXECUTE), "but gains nothing else: {:?}", r.max);
    assert_eq!(t.read_u64(c), Ok(word(0, 0)));
    t.write_u64(c, 0xc0b7).unwrap();
    assert_eq!(t.read_u64(c), Ok(0xc0b7));
    // The object never sees it, neither directly nor through the proxy.
    assert_eq!(w.direct_word(0, 0), word(0, 0));
    let m = w.map(&t, name, 0, 2 * P).unwrap();
    assert_eq!(t.read_u64(m), Ok(word(0, 0)));
    // A snapshot: later changes to the object do not reach the copy.
    w.owner.write_u64(VmAddr(w.direct[0].0 + P), 0x0717).unwrap();
    assert_eq!(t.read_u64(m.plus(P)), Ok(0x0717));
    assert_eq!(t.read_u64(c.plus(P)), Ok(word(0, P)));
    // Without read there is no copy.
    for p in [VmProt::WRITE, VmProt::EXECUTE, VmProt::WRITE | VmProt::EXECUTE, VmProt::NONE] {
        let px = w.proxy(p, &[(w.objs[0], 0, 0, P)]).unwrap();
        let n = w.give(px.proxy, &t);
        assert_eq!(t.vm_map(MapRequest::anywhere(P, Some(n)).copy(true)), Err(KernError::ProtectionFailure), "{p:?}");
    }
}

// ----- ports and lifetime -----

fn proxy_and_revoke_ports_accept_no_messages(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let px = w.proxy(VmProt::READ, &[(w.objs[0], 0, 0, P)]).unwrap();
    for dest in [px.proxy, px.revoke] {
        for id in [0, 1, 2200, 2210, u32::MAX] {
            assert_eq!(w.owner.msg_send(UserMessage::new(dest, id, vec![1, 2, 3])), Err(KernError::MigBadId));
        }
        // A message carrying a right is refused the same way; the right is
        // not lost to the proxy.
        let port = w.owner.port_allocate().unwrap();
        let mut m = UserMessage::new(dest, 7, Vec::new());
        m.rights.push((port, Disposition::MakeSend));
        assert_eq!(w.owner.msg_send(m), Err(KernError::MigBadId));
        assert_eq!(w.owner.port_lookup(dest).unwrap().send_urefs, 1, "the sender keeps its right");
    }
    let t = w.task();
    let a = w.map(&t, w.give(px.proxy, &t), 0, P).unwrap();
    assert_eq!(t.read_u64(a), Ok(word(0, 0)));
}

fn forged_no_senders_does_nothing(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let px = w.proxy(VmProt::READ, &[(w.objs[0], 0, 0, P)]).unwrap();
    let t = w.task();
    let name = w.give(px.proxy, &t);
    let a = w.map(&t, name, 0, P).unwrap();
    let proxies = w.k.stats().proxies;
    for dest in [px.proxy, px.revoke] {
        let forged = UserMessage::new(dest, MACH_NOTIFY_NO_SENDERS, 0u32.to_le_bytes().to_vec());
        assert_eq!(w.owner.msg_send(forged), Err(KernError::MigBadId));
    }
    assert_eq!(w.k.stats().proxies, proxies);
    assert_eq!(t.read_u64(a), Ok(word(0, 0)));
    let b = w.map(&t, name, 0, P).unwrap();
    assert_eq!(t.read_u64(b), Ok(word(0, 0)));
    let info = t.memory_object_proxy_info(name).unwrap();
    assert!(!info.revoked);
    match v {
        ProxyVersion::Mapping => {
            assert_eq!(w.owner.memory_object_proxy_revoke(px.revoke), Err(KernError::NotSupported))
        }
        ProxyVersion::Paging => w.owner.memory_object_proxy_revoke(px.revoke).unwrap(),
    }
}

fn proxy_dies_with_its_last_send_right(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let base = w.k.stats();
    let px = w.proxy(VmProt::READ, &[(w.objs[0], 0, 0, 2 * P)]).unwrap();
    let t = w.task();
    let name = w.give(px.proxy, &t);
    assert_eq!(w.k.stats().proxies, base.proxies + 1);
    // The owner drops both its rights: the client's right keeps it alive.
    w.owner.port_deallocate(px.proxy).unwrap();
    w.owner.port_deallocate(px.revoke).unwrap();
    assert_eq!(w.k.stats().proxies, base.proxies + 1);
    let a = w.map(&t, name, 0, 2 * P).unwrap();
    assert_eq!(t.read_u64(a), Ok(word(0, 0)));
    // The last send right goes, then the mapping: nothing is left.
    t.port_deallocate(name).unwrap();
    t.vm_deallocate(a, 2 * P).unwrap();
    let after = w.k.stats();
    assert_eq!(after.proxies, base.proxies);
    assert_eq!(after.objects, base.objects);
    // The name is gone with it.
    assert_eq!(w.map(&t, name, 0, P), Err(KernError::InvalidName));
}

fn dead_proxy_releases_what_it_holds(v: ProxyVersion, via: Transport) {
    let w = World::with_objects(v, via, 1, false);
    let t = w.task();
    let base = w.k.stats();
    // Anonymous memory touched once: one object, one page.
    let a = t.vm_allocate(VmAddr(0), 2 * P, true).unwrap();
    t.write_u64(a, 99).unwrap();
    let proxy = t.vm_region_create_proxy(a, VmProt::DEFAULT, 2 * P).unwrap();
    let b = w.map(&t, proxy.proxy, 0, 2 * P).unwrap();
    assert_eq!(t.read_u64(b), Ok(99));
    t.vm_deallocate(a, 2 * P).unwrap();
    t.vm_deallocate(b, 2 * P).unwrap();
    // Only the proxy holds the memory now.
    let held = w.k.stats();
    assert_eq!(held.proxies, base.proxies + 1);
    assert_eq!(held.resident, base.resident + 1);
    assert!(held.objects > base.objects);
    t.port_deallocate(proxy.proxy).unwrap();
    t.port_deallocate(proxy.revoke).unwrap();
    let after = w.k.stats();
    assert_eq!((after.proxies, after.objects, after.resident), (base.proxies, base.objects, base.resident));
}

fn mappings_outlive_the_proxy_rights(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let inner = w.proxy(VmProt::DEFAULT, &[(w.objs[1], 0, 2 * P, 2 * P)]).unwrap();
    let outer = w.proxy(VmProt::DEFAULT, &[(inner.proxy, 0, 0, 2 * P)]).unwrap();
    let t = w.task();
    let a = w.map(&t, w.give(outer.proxy, &t), 0, 2 * P).unwrap();
    for name in [inner.proxy, inner.revoke, outer.proxy, outer.revoke] {
        w.owner.port_deallocate(name).unwrap();
    }
    w.assert_shows(&t, a, 2, 1, 2 * P);
    t.write_u64(a, 42).unwrap();
    assert_eq!(w.direct_word(1, 2 * P), 42);
}

// ----- vm_region_create_proxy -----

fn region_proxy_leaves_holes_out(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let t = w.task();
    // [x, x+P) object 0 page 0 | hole | [x+2P, x+3P) object 1 page 5.
    let x = w.map(&t, w.give(w.objs[0], &t), 0, 3 * P).unwrap();
    t.vm_deallocate(x.plus(P), 2 * P).unwrap();
    t.vm_map(MapRequest::anywhere(P, Some(w.give(w.objs[1], &t))).offset(5 * P).at(x.plus(2 * P))).unwrap();
    let px = t.vm_region_create_proxy(x, VmProt::ALL, 3 * P).unwrap();
    let info = t.memory_object_proxy_info(px.proxy).unwrap();
    let windows: Vec<(u64, u64)> = info.windows.iter().map(|w| (w.offset, w.len)).collect();
    assert_eq!(windows, [(0, P), (2 * P, P)]);
    let u = w.task();
    let name = w.give_from(&t, px.proxy, &u);
    let a = w.map(&u, name, 0, P).unwrap();
    w.assert_shows(&u, a, 1, 0, 0);
    let b = w.map(&u, name, 2 * P, P).unwrap();
    w.assert_shows(&u, b, 1, 1, 5 * P);
    assert_eq!(w.map(&u, name, P, P), Err(KernError::InvalidArgument));
    assert_eq!(w.map(&u, name, 0, 3 * P), Err(KernError::InvalidArgument));
}

fn region_proxy_of_partial_entries(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let t = w.task();
    let x = w.map(&t, w.give(w.objs[0], &t), 4 * P, 4 * P).unwrap();
    let y = w.map(&t, w.give(w.objs[1], &t), 0, 4 * P).unwrap();
    assert_eq!(y, x.plus(4 * P), "best fit puts the second entry right after the first");
    // The last page of the first entry and the first page of the second.
    let px = t.vm_region_create_proxy(x.plus(3 * P), VmProt::READ, 2 * P).unwrap();
    let info = t.memory_object_proxy_info(px.proxy).unwrap();
    assert_eq!(info.windows.len(), 2);
    assert_eq!((info.windows[0].offset, info.windows[0].len), (0, P));
    assert_eq!((info.windows[1].offset, info.windows[1].len), (P, P));
    let a = w.map(&t, px.proxy, 0, 2 * P).unwrap();
    w.assert_shows(&t, a, 1, 0, 7 * P);
    w.assert_shows(&t, a.plus(P), 1, 1, 0);
    assert_eq!(w.map(&t, px.proxy, 0, 3 * P), Err(KernError::InvalidArgument), "nothing beyond the range");
}

fn region_proxy_of_untouched_anonymous_memory_shares_it(v: ProxyVersion, via: Transport) {
    let w = World::with_objects(v, via, 0, false);
    let t = w.task();
    let a = t.vm_allocate(VmAddr(0), 2 * P, true).unwrap();
    let px = t.vm_region_create_proxy(a, VmProt::DEFAULT, 2 * P).unwrap();
    let u = w.task();
    let name = w.give_from(&t, px.proxy, &u);
    let b = w.map(&u, name, 0, 2 * P).unwrap();
    // Proxy to task.
    u.write_u64(b, 11).unwrap();
    assert_eq!(t.read_u64(a), Ok(11));
    // Task to proxy, on a page neither has touched yet.
    t.write_u64(a.plus(P), 22).unwrap();
    assert_eq!(u.read_u64(b.plus(P)), Ok(22));
}

fn region_proxy_of_copy_on_write_entries(v: ProxyVersion, via: Transport) {
    let w = World::with_objects(v, via, 0, false);
    let parent = w.task();
    let a = parent.vm_allocate(VmAddr(0), 2 * P, true).unwrap();
    parent.write_u64(a, 1).unwrap();
    parent.write_u64(a.plus(P), 2).unwrap();
    let child = parent.task_create().unwrap(); // inherits a copy
    let px = child.vm_region_create_proxy(a, VmProt::DEFAULT, 2 * P).unwrap();
    let u = w.task();
    let name = w.give_from(&child, px.proxy, &u);
    let b = w.map(&u, name, 0, 2 * P).unwrap();
    assert_eq!(u.read_u64(b), Ok(1));
    // The proxy writes the child's copy, not the parent's memory.
    u.write_u64(b, 10).unwrap();
    assert_eq!(child.read_u64(a), Ok(10));
    assert_eq!(parent.read_u64(a), Ok(1));
    // The child's writes reach the proxy; the parent's reach neither.
    child.write_u64(a.plus(P), 20).unwrap();
    assert_eq!(u.read_u64(b.plus(P)), Ok(20));
    parent.write_u64(a, 100).unwrap();
    assert_eq!((child.read_u64(a), u.read_u64(b)), (Ok(10), Ok(10)));
    assert_eq!(parent.read_u64(a.plus(P)), Ok(2));

    // A copy mapping of an object is a copy-on-write entry too.
    let w = World::new(v, via);
    let t = w.task();
    let c = t.vm_map(MapRequest::anywhere(P, Some(w.give(w.objs[0], &t))).offset(3 * P).copy(true)).unwrap();
    let px = t.vm_region_create_proxy(c, VmProt::DEFAULT, P).unwrap();
    let d = w.map(&t, px.proxy, 0, P).unwrap();
    t.write_u64(d, 33).unwrap();
    assert_eq!(t.read_u64(c), Ok(33));
    assert_eq!(w.direct_word(0, 3 * P), word(0, 3 * P), "the object is untouched");
}

fn region_proxy_respects_entry_maximum(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let t = w.task();
    let x = t.vm_map(MapRequest::anywhere(P, Some(w.give(w.objs[0], &t))).prot(VmProt::READ, VmProt::READ)).unwrap();
    let y = t.vm_map(MapRequest::anywhere(P, Some(w.give(w.objs[1], &t))).at(x.plus(P))).unwrap();
    let px = t.vm_region_create_proxy(x, VmProt::ALL, 2 * P).unwrap();
    let info = t.memory_object_proxy_info(px.proxy).unwrap();
    assert_eq!(info.windows[0].prot, VmProt::READ);
    assert_eq!(info.windows[1].prot, VmProt::ALL);
    let a = w.map(&t, px.proxy, 0, 2 * P).unwrap();
    assert_eq!(t.write_u64(a, 1), Err(KernError::ProtectionFailure));
    t.write_u64(a.plus(P), 2).unwrap();
    assert_eq!(t.read_u64(y), Ok(2));
    assert_eq!(w.direct_word(0, 0), word(0, 0));
    // Entries granting none of what is asked are left out.
    let px = t.vm_region_create_proxy(x, VmProt::WRITE, 2 * P).unwrap();
    let info = t.memory_object_proxy_info(px.proxy).unwrap();
    assert_eq!(info.windows.len(), 1);
    assert_eq!((info.windows[0].offset, info.windows[0].prot), (P, VmProt::WRITE));
}

fn region_proxy_errors(v: ProxyVersion, via: Transport) {
    let w = World::with_objects(v, via, 0, false);
    let t = w.task();
    let a = t.vm_allocate(VmAddr(0), 2 * P, true).unwrap();
    let proxies = w.k.stats().proxies;
    assert_eq!(t.vm_region_create_proxy(a.plus(1), VmProt::READ, P).map(|_| ()), Err(KernError::InvalidArgument));
    assert_eq!(t.vm_region_create_proxy(a, VmProt::READ, 0).map(|_| ()), Err(KernError::InvalidArgument));
    assert_eq!(t.vm_region_create_proxy(a, VmProt::READ, u64::MAX - P).map(|_| ()), Err(KernError::InvalidArgument));
    assert_eq!(t.vm_region_create_proxy(a.plus(4 * P), VmProt::READ, P).map(|_| ()), Err(KernError::InvalidAddress));
    t.vm_protect(a, 2 * P, true, VmProt::READ).unwrap();
    assert_eq!(t.vm_region_create_proxy(a, VmProt::WRITE, P).map(|_| ()), Err(KernError::ProtectionFailure));
    assert_eq!(w.k.stats().proxies, proxies);
}

// ----- introspection -----

fn introspection_reports_what_a_proxy_grants(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let (a, b) = (w.objs[0], w.objs[1]);
    let px = w.proxy(VmProt::READ | VmProt::WRITE, &[(b, 4 * P, 2 * P, P), (a, 0, P, 2 * P)]).unwrap();
    let info = w.owner.memory_object_proxy_info(px.proxy).unwrap();
    assert_eq!(info.version, v);
    assert_eq!(info.protection, VmProt::DEFAULT);
    assert!(!info.revoked);
    let windows: Vec<(u64, u64, u64, VmProt, bool)> =
        info.windows.iter().map(|w| (w.offset, w.len, w.start, w.prot, w.target_is_proxy)).collect();
    assert_eq!(windows, [(0, 2 * P, P, VmProt::DEFAULT, false), (4 * P, P, 2 * P, VmProt::DEFAULT, false)]);
    // A nested proxy reports the intersection and the composed ranges.
    let nested = w.proxy(VmProt::READ | VmProt::EXECUTE, &[(px.proxy, 8 * P, P, P)]).unwrap();
    let info = w.owner.memory_object_proxy_info(nested.proxy).unwrap();
    assert_eq!(info.protection, VmProt::READ);
    assert_eq!(info.windows.len(), 1);
    let win = info.windows[0];
    assert_eq!((win.offset, win.len, win.prot), (8 * P, P, VmProt::READ));
    match v {
        // A mapping proxy is flattened onto the object.
        ProxyVersion::Mapping => assert_eq!((win.start, win.target_is_proxy), (2 * P, false)),
        // A paging proxy stays in the chain: the window is over it.
        ProxyVersion::Paging => assert_eq!((win.start, win.target_is_proxy), (P, true)),
    }
    // Any holder may ask; nothing but a proxy answers.
    let t = w.task();
    let name = w.give(px.proxy, &t);
    assert_eq!(t.memory_object_proxy_info(name).unwrap().protection, VmProt::DEFAULT);
    assert_eq!(w.owner.memory_object_proxy_info(px.revoke), Err(KernError::InvalidArgument));
    assert_eq!(w.owner.memory_object_proxy_info(a), Err(KernError::InvalidArgument));
    assert_eq!(w.owner.memory_object_proxy_info(PortName(0x5555)), Err(KernError::InvalidName));
}

fn versions_are_indistinguishable_to_user_code(v: ProxyVersion, via: Transport) {
    // The same script gives the same observations with either version as
    // the kernel default; only introspection tells which one served.
    let w = World::new(v, via);
    let t = w.task();
    let px = w.proxy(VmProt::DEFAULT, &[(w.objs[0], P, 2 * P, 2 * P), (w.objs[1], 4 * P, 0, P)]).unwrap();
    let name = w.give(px.proxy, &t);
    let a = w.map(&t, name, P, 4 * P);
    assert_eq!(a, Err(KernError::InvalidArgument));
    let a = w.map(&t, name, P, 2 * P).unwrap();
    let r = t.vm_region(a).unwrap();
    assert_eq!((r.size, r.cur, r.max, r.shared), (2 * P, VmProt::DEFAULT, VmProt::DEFAULT, true));
    t.write_u64(a.plus(P), 7).unwrap();
    assert_eq!(w.direct_word(0, 3 * P), 7);
    assert_eq!(t.memory_object_proxy_info(name).unwrap().version, v);
}

// ----- the fixtures' own footing -----

fn terminating_a_task_wakes_its_blocked_receiver(via: Transport) {
    // A pager task serving no object yet waits on an empty port set; when
    // the task ends, that thread must return, not sleep forever. The task
    // is ended from outside as `Running::stop` ends a pager (the kernel's
    // `task_terminate`; over the socket its connection stays open), and
    // then its other threads' calls fail too.
    let host = Host::boot(via, config(ProxyVersion::Paging));
    let pager = host.task();
    let set = pager.port_set_allocate().unwrap();
    let thread = pager.clone();
    let h = std::thread::spawn(move || thread.msg_receive(set, None).map(|m| m.id as u64));
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(!h.is_finished(), "the receive waits");
    host.k.task_terminate(pager.id()).unwrap();
    assert_eq!(join(h), Err(KernError::InvalidTask));
    assert_eq!(pager.port_allocate(), Err(KernError::InvalidTask));
}

// ----- paging proxies only -----

fn paging_each_page_is_asked_of_the_pager_once(via: Transport) {
    let w = World::with_objects(ProxyVersion::Paging, via, 1, false);
    let o = w.objs[0];
    let before = w.k.stats();
    let p1 = w.proxy(VmProt::ALL, &[(o, 0, 0, 8 * P)]).unwrap();
    let p2 = w.proxy(VmProt::READ, &[(p1.proxy, 0, 2 * P, 4 * P)]).unwrap();
    let p3 = w.proxy_v(ProxyVersion::Mapping, VmProt::READ, &[(p1.proxy, 0, 0, 8 * P)]).unwrap();
    let p4 = w.proxy(VmProt::READ, &[(p2.proxy, 0, 0, 4 * P), (p3.proxy, 4 * P, 0, 8 * P)]).unwrap();
    let tasks: Vec<Task> = (0..3).map(|_| w.task()).collect();
    for t in &tasks {
        let maps = [
            (w.map(t, w.give(p1.proxy, t), 0, 8 * P).unwrap(), 0),
            (w.map(t, w.give(p2.proxy, t), 0, 4 * P).unwrap(), 2 * P),
            (w.map(t, w.give(p3.proxy, t), 0, 8 * P).unwrap(), 0),
            (w.map(t, w.give(p4.proxy, t), 4 * P, 8 * P).unwrap(), 0),
            (w.map(t, w.give(o, t), 0, 8 * P).unwrap(), 0),
        ];
        // Pages 2..6 of the object, from every mapping.
        for &(a, at) in &maps {
            for page in 2..6 {
                t.read_u64(VmAddr(a.0 + page * P - at)).unwrap();
            }
        }
    }
    let after = w.k.stats();
    assert_eq!(after.sent("data_request") - before.sent("data_request"), 4);
    assert_eq!(after.resident - before.resident, 4);
}

fn paging_resident_pages_are_shared_not_copied(via: Transport) {
    let w = World::new(ProxyVersion::Paging, via);
    let resident = w.k.stats().resident;
    let p1 = w.proxy(VmProt::DEFAULT, &[(w.objs[0], 0, 4 * P, 2 * P)]).unwrap();
    let p2 = w.proxy(VmProt::DEFAULT, &[(p1.proxy, P, 0, 2 * P)]).unwrap();
    let t = w.task();
    let a = w.map(&t, w.give(p1.proxy, &t), 0, 2 * P).unwrap();
    let b = w.map(&t, w.give(p2.proxy, &t), P, 2 * P).unwrap();
    t.write_u64(a, 0xaa).unwrap();
    assert_eq!(t.read_u64(b), Ok(0xaa));
    t.write_u64(b.plus(P), 0xbb).unwrap();
    assert_eq!(t.read_u64(a.plus(P)), Ok(0xbb));
    assert_eq!(w.direct_word(0, 4 * P), 0xaa);
    assert_eq!(w.direct_word(0, 5 * P), 0xbb);
    assert_eq!(w.k.stats().resident, resident, "no page was copied for a proxy");
    assert_eq!(w.k.stats().sent("data_request"), OBJ_PAGES * 2, "only the fill asked the pager");
}

fn paging_lock_request_flush_reaches_proxy_mappings(via: Transport) {
    let mut s = Scripted::new(ProxyVersion::Paging, via);
    let px = s.client.memory_object_create_proxy(VmProt::READ, &[s.name], &[0], &[0], &[2 * P]).unwrap();
    let nested = s.client.memory_object_create_proxy(VmProt::READ, &[px.proxy], &[P], &[0], &[P]).unwrap();
    let a = s.client.vm_map(MapRequest::anywhere(2 * P, Some(px.proxy))).unwrap();
    let b = s.client.vm_map(MapRequest::anywhere(P, Some(nested.proxy)).offset(P)).unwrap();
    let r = spawn_read(&s.client, a);
    s.expect(0);
    s.supply(0, 1);
    assert_eq!(join(r), Ok(1));
    assert_eq!(s.client.read_u64(b), Ok(1));
    // The real pager flushes the page: both mappings ask again.
    s.pager.lock_request(s.obj, 0, P, ReturnPolicy::None, true, VmProt::NONE).unwrap();
    let r = spawn_read(&s.client, b);
    s.expect(0);
    s.supply(0, 2);
    assert_eq!(join(r), Ok(2));
    assert_eq!(s.client.read_u64(a), Ok(2));
    assert_eq!(s.k.stats().sent("data_request"), 2);
}

fn paging_lock_value_reaches_proxy_mappings(via: Transport) {
    use machvm_core::memory_object::emmi::KernelToPager;
    let mut s = Scripted::new(ProxyVersion::Paging, via);
    let px = s.client.memory_object_create_proxy(VmProt::DEFAULT, &[s.name], &[0], &[0], &[P]).unwrap();
    let a = s.client.vm_map(MapRequest::anywhere(P, Some(px.proxy))).unwrap();
    let r = spawn_read(&s.client, a);
    s.expect(0);
    s.supply(0, 1);
    assert_eq!(join(r), Ok(1));
    s.client.write_u64(a, 2).unwrap();
    // The pager locks writing: the proxy's writer must ask to unlock.
    s.pager.lock_request(s.obj, 0, P, ReturnPolicy::Dirty, false, VmProt::WRITE).unwrap();
    let client = s.client.clone();
    let writer = std::thread::spawn(move || client.write_u64(a, 3));
    let req = loop {
        let m = s.pager.recv(Some(WAIT)).unwrap();
        if !matches!(m.msg, KernelToPager::DataReturn { .. }) {
            break m;
        }
    };
    assert!(matches!(req.msg, KernelToPager::DataUnlock { offset: 0, .. }), "{req:?}");
    assert!(!writer.is_finished());
    s.pager.lock_request(s.obj, 0, P, ReturnPolicy::None, false, VmProt::NONE).unwrap();
    assert_eq!(join(writer), Ok(()));
    assert_eq!(s.client.read_u64(a), Ok(3));
}

fn paging_data_error_reaches_proxy_mappings(via: Transport) {
    let mut s = Scripted::new(ProxyVersion::Paging, via);
    let px = s.client.memory_object_create_proxy(VmProt::READ, &[s.name], &[0], &[0], &[P]).unwrap();
    let nested = s.client.memory_object_create_proxy(VmProt::READ, &[px.proxy], &[0], &[0], &[P]).unwrap();
    let a = s.client.vm_map(MapRequest::anywhere(P, Some(px.proxy))).unwrap();
    let b = s.client.vm_map(MapRequest::anywhere(P, Some(nested.proxy))).unwrap();
    let c = s.client.vm_map(MapRequest::anywhere(P, Some(s.name))).unwrap();
    let r = spawn_read(&s.client, a);
    s.expect(0);
    s.pager.error(s.obj, 0, P).unwrap();
    assert_eq!(join(r), Err(KernError::MemoryError));
    assert_eq!(s.client.read_u64(b), Err(KernError::MemoryError));
    assert_eq!(s.client.read_u64(c), Err(KernError::MemoryError));
    assert_eq!(s.k.stats().sent("data_request"), 1);
}

fn paging_revocation_cuts_every_mapping_made_through_it(via: Transport) {
    let w = World::new(ProxyVersion::Paging, via);
    let p = w.proxy(VmProt::DEFAULT, &[(w.objs[0], 0, 2 * P, 4 * P)]).unwrap();
    let q_paging = w.proxy(VmProt::ALL, &[(p.proxy, 0, P, 2 * P)]).unwrap();
    let q_mapping = w.proxy_v(ProxyVersion::Mapping, VmProt::ALL, &[(p.proxy, 0, 0, 4 * P)]).unwrap();
    let t = w.task();
    let u = w.task();
    let copy = |t: &Task, n| t.vm_map(MapRequest::anywhere(2 * P, Some(n)).copy(true)).unwrap();
    let pn = w.give(p.proxy, &t);
    let qpn = w.give(q_paging.proxy, &t);
    let qmn = w.give(q_mapping.proxy, &t);
    let mut maps = vec![
        (&t, w.map(&t, pn, 0, 4 * P).unwrap()),
        (&t, w.map(&t, qpn, 0, 2 * P).unwrap()),
        (&t, w.map(&t, qmn, 0, 4 * P).unwrap()),
        (&t, copy(&t, pn)),
        (&t, copy(&t, qpn)),
        (&t, copy(&t, qmn)),
    ];
    let un = w.give(p.proxy, &u);
    maps.push((&u, w.map(&u, un, 2 * P, 2 * P).unwrap()));
    for &(task, a) in &maps {
        task.read_u64(a).unwrap();
    }
    // A copy that was written to is revoked too.
    t.write_u64(maps[3].1, 5).unwrap();
    let inherit = t.task_create().unwrap();
    w.owner.memory_object_proxy_revoke(p.revoke).unwrap();
    for &(task, a) in maps.iter().chain([(&inherit, maps[0].1), (&inherit, maps[3].1)].iter()) {
        assert_eq!(task.read_u64(a), Err(KernError::MemoryError), "read at {a:?}");
        assert_eq!(task.write_u64(a, 1), Err(KernError::MemoryError), "write at {a:?}");
    }
    // Nothing new can be made of it or of what is built on it.
    for (task, name) in [(&t, pn), (&t, qpn), (&t, qmn), (&u, un)] {
        assert_eq!(w.map(task, name, 0, P), Err(KernError::InvalidCapability));
        assert_eq!(task.vm_map(MapRequest::anywhere(P, Some(name)).copy(true)), Err(KernError::InvalidCapability));
        assert_eq!(
            task.memory_object_create_proxy(VmProt::READ, &[name], &[0], &[0], &[P]).map(|_| ()),
            Err(KernError::InvalidCapability)
        );
        assert!(task.memory_object_proxy_info(name).unwrap().revoked);
    }
    // The object itself is untouched and still served.
    assert_eq!(w.direct_word(0, 2 * P), word(0, 2 * P));
    // Revoking again is harmless.
    w.owner.memory_object_proxy_revoke(p.revoke).unwrap();
}

fn paging_revocation_of_an_inner_proxy_only(via: Transport) {
    // Revoking an outer proxy leaves the inner one working.
    let w = World::new(ProxyVersion::Paging, via);
    let p = w.proxy(VmProt::DEFAULT, &[(w.objs[0], 0, 0, 2 * P)]).unwrap();
    let q = w.proxy(VmProt::DEFAULT, &[(p.proxy, 0, 0, 2 * P)]).unwrap();
    let t = w.task();
    let a = w.map(&t, w.give(p.proxy, &t), 0, 2 * P).unwrap();
    let b = w.map(&t, w.give(q.proxy, &t), 0, 2 * P).unwrap();
    w.owner.memory_object_proxy_revoke(q.revoke).unwrap();
    assert_eq!(t.read_u64(b), Err(KernError::MemoryError));
    assert_eq!(t.read_u64(a), Ok(word(0, 0)));
    assert!(!w.owner.memory_object_proxy_info(p.proxy).unwrap().revoked);
    assert!(w.owner.memory_object_proxy_info(q.proxy).unwrap().revoked);
}

fn paging_revocation_cuts_only_the_windows_that_reach_the_revoked_proxy(via: Transport) {
    // An outer paging proxy with one window through a paging proxy `p` and
    // one straight onto the object: revoking `p` cuts the first, not the
    // second, whether they were mapped before or after.
    let w = World::new(ProxyVersion::Paging, via);
    let p = w.proxy(VmProt::DEFAULT, &[(w.objs[0], 0, 0, 2 * P)]).unwrap();
    let outer = w.proxy(VmProt::DEFAULT, &[(p.proxy, 0, 0, 2 * P), (w.objs[1], 2 * P, 0, 2 * P)]).unwrap();
    let t = w.task();
    let name = w.give(outer.proxy, &t);
    let through = w.map(&t, name, 0, 2 * P).unwrap();
    let beside = w.map(&t, name, 2 * P, 2 * P).unwrap();
    let both = w.map(&t, name, 0, 4 * P).unwrap();
    w.owner.memory_object_proxy_revoke(p.revoke).unwrap();
    assert_eq!(t.read_u64(through), Err(KernError::MemoryError));
    assert_eq!(t.read_u64(both), Err(KernError::MemoryError));
    w.assert_shows(&t, beside, 2, 1, 0);
    w.assert_shows(&t, VmAddr(both.0 + 2 * P), 2, 1, 0);
    assert_eq!(w.map(&t, name, 0, P), Err(KernError::InvalidCapability));
    assert_eq!(w.map(&t, name, 0, 3 * P), Err(KernError::InvalidCapability));
    let again = w.map(&t, name, 2 * P, 2 * P).unwrap();
    w.assert_shows(&t, again, 2, 1, 0);
    // Introspection reports the proxy revoked: part of it is.
    assert!(t.memory_object_proxy_info(name).unwrap().revoked);
}

fn paging_a_revoked_proxy_leaves_only_its_id_yet_its_copies_stay_dead(via: Transport) {
    // Once nobody can map through a revoked proxy any more, its record and
    // the objects it held go; copies made through it stay cut off, and
    // revoking again still succeeds.
    let w = World::new(ProxyVersion::Paging, via);
    let (proxies, objects) = (w.k.stats().proxies, w.k.stats().objects);
    let p = w.proxy(VmProt::READ, &[(w.objs[0], 0, 0, 2 * P)]).unwrap();
    let t = w.task();
    let name = w.give(p.proxy, &t);
    let copy = t.vm_map(MapRequest::anywhere(P, Some(name)).copy(true)).unwrap();
    t.write_u64(copy, 9).unwrap();
    let region = t.vm_region_create_proxy(copy, VmProt::READ, P).unwrap();
    let r = w.map(&t, region.proxy, 0, P).unwrap();
    w.owner.memory_object_proxy_revoke(p.revoke).unwrap();
    for name in [name, p.proxy] {
        let task = if name == p.proxy { &w.owner } else { &t };
        task.port_deallocate(name).unwrap();
    }
    assert_eq!(w.k.stats().proxies, proxies + 1, "only the region proxy's record is left");
    assert_eq!(t.read_u64(copy), Err(KernError::MemoryError));
    assert_eq!(t.read_u64(r), Err(KernError::MemoryError));
    assert_eq!(w.map(&t, region.proxy, 0, P), Err(KernError::InvalidCapability));
    assert!(t.memory_object_proxy_info(region.proxy).unwrap().revoked);
    w.owner.memory_object_proxy_revoke(p.revoke).unwrap();
    w.owner.port_deallocate(p.revoke).unwrap();
    t.terminate().unwrap();
    assert_eq!(w.k.stats().proxies, proxies);
    assert!(w.k.stats().objects <= objects, "everything the proxies held is released");
}

// ----- mapping proxies only -----

fn mapping_revoke_is_not_supported(via: Transport) {
    let w = World::new(ProxyVersion::Mapping, via);
    let px = w.proxy(VmProt::READ, &[(w.objs[0], 0, 0, P)]).unwrap();
    let t = w.task();
    let a = w.map(&t, w.give(px.proxy, &t), 0, P).unwrap();
    assert_eq!(w.owner.memory_object_proxy_revoke(px.revoke), Err(KernError::NotSupported));
    assert!(!w.owner.memory_object_proxy_info(px.proxy).unwrap().revoked);
    assert_eq!(t.read_u64(a), Ok(word(0, 0)));
    assert!(w.map(&t, w.give(px.proxy, &t), 0, P).is_ok());
}

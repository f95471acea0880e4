//! Adversarial proxy tests: every way a holder of a proxy might try to get
//! more than it was given, each refused with the right Mach error. Rules
//! that hold for both versions run against both (as in the conformance
//! suite); revocation attacks are paging-only. Every rule runs in-process
//! and over `machvmd`'s socket ([`both!`], [`transports!`]): nothing here
//! is in-process only.

#[macro_use]
mod common;

use common::*;
use machvm_core::ipc::{Disposition, PortName, UserMessage, MACH_NOTIFY_NO_SENDERS};
use machvm_core::memory_object::emmi::PagerToKernel;
use machvm_core::vm::object::CopyStrategy;
use machvm_core::vm::paging::ReturnPolicy;
use machvm_core::*;

both!(
    nesting_up_never_gains_protection,
    nesting_never_widens_the_range,
    overlapping_windows_in_every_arrangement,
    wrap_around_offsets_and_sizes_are_refused,
    windows_at_the_top_of_the_offset_space_do_not_wrap,
    vm_protect_after_map_cannot_raise_anything,
    failed_vm_protect_changes_nothing,
    inheritance_cannot_raise_protection,
    copy_then_write_leaves_the_object_unchanged,
    copy_stays_a_snapshot_after_it_was_read,
    region_proxy_reaches_nothing_of_a_hole,
    region_proxy_follows_memory_not_addresses,
    pager_calls_sent_to_proxy_ports_are_refused,
    forged_no_senders_cannot_kill_a_proxy,
    revoke_rights_and_proxies_are_not_interchangeable,
    region_proxy_of_a_copy_made_through_a_revoked_paging_proxy,
);

transports!(
    paging_use_after_revoke_is_refused,
    paging_revoke_during_a_fault,
    paging_revoke_during_a_fault_through_a_nested_proxy,
    paging_revoke_while_the_pager_never_answers,
);

fn fail<T>() -> Result<T> {
    Err(KernError::ProtectionFailure)
}

fn invalid<T>() -> Result<T> {
    Err(KernError::InvalidArgument)
}

// ----- protection -----

fn nesting_up_never_gains_protection(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let other = match v {
        ProxyVersion::Mapping => ProxyVersion::Paging,
        ProxyVersion::Paging => ProxyVersion::Mapping,
    };
    let ro = w.proxy(VmProt::READ, &[(w.objs[0], 0, 0, 2 * P)]).unwrap();
    // ALL over READ, alternating versions, three levels up.
    let up1 = w.proxy_v(other, VmProt::ALL, &[(ro.proxy, 0, 0, 2 * P)]).unwrap();
    let up2 = w.proxy_v(v, VmProt::ALL, &[(up1.proxy, 0, 0, 2 * P)]).unwrap();
    let up3 = w.proxy_v(other, VmProt::ALL, &[(up2.proxy, 0, 0, 2 * P)]).unwrap();
    let t = w.task();
    for px in [up1, up2, up3] {
        let info = w.owner.memory_object_proxy_info(px.proxy).unwrap();
        assert_eq!(info.protection, VmProt::READ);
        let name = w.give(px.proxy, &t);
        let a = t.vm_map(MapRequest::anywhere(2 * P, Some(name)).prot(VmProt::ALL, VmProt::ALL)).unwrap();
        let r = t.vm_region(a).unwrap();
        assert_eq!((r.cur, r.max), (VmProt::READ, VmProt::READ));
        assert_eq!(t.write_u64(a, 1), fail());
        assert_eq!(t.execute(a), fail());
        assert_eq!(t.vm_protect(a, 2 * P, false, VmProt::DEFAULT), fail());
        assert_eq!(t.vm_protect(a, 2 * P, true, VmProt::ALL), fail());
        assert_eq!(t.vm_write(a, &[1; 16]), fail());
        assert_eq!(t.vm_copy(a.plus(P), P, a), fail());
    }
    assert_eq!(w.direct_word(0, 0), word(0, 0));
}

fn nesting_never_widens_the_range(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let inner = w.proxy(VmProt::ALL, &[(w.objs[0], 4 * P, 8 * P, 2 * P)]).unwrap();
    let i = inner.proxy;
    for (off, start, len) in [(0, 3 * P, 2 * P), (0, 5 * P, 2 * P), (0, 0, 16 * P), (0, 6 * P, P), (0, 4 * P, 3 * P)] {
        assert_eq!(w.proxy(VmProt::ALL, &[(i, off, start, len)]).map(|_| ()), invalid(), "{start:#x}+{len:#x}");
    }
    // Through a valid outer proxy, nothing past the inner window is mapped.
    let outer = w.proxy(VmProt::ALL, &[(i, 0, 4 * P, 2 * P)]).unwrap();
    let t = w.task();
    let name = w.give(outer.proxy, &t);
    assert_eq!(w.map(&t, name, 0, 3 * P), invalid());
    assert_eq!(w.map(&t, name, 2 * P, P), invalid());
    let a = w.map(&t, name, 0, 2 * P).unwrap();
    w.assert_shows(&t, a, 2, 0, 8 * P);
    assert_eq!(t.read_u64(a.plus(2 * P)), Err(KernError::InvalidAddress));
}

fn overlapping_windows_in_every_arrangement(v: ProxyVersion, via: Transport) {
    let w = World::with_objects(v, via, 2, false);
    let (a, b) = (w.objs[0], w.objs[1]);
    let proxies = w.k.stats().proxies;
    let arrangements: &[&[(PortName, u64, u64, u64)]] = &[
        &[(a, 2 * P, 0, 2 * P), (a, 2 * P, 0, 2 * P)],           // identical
        &[(a, 0, 0, 8 * P), (b, 3 * P, 0, P)],                   // contained
        &[(a, 2 * P, 0, 2 * P), (b, P, 0, 2 * P)],               // straddles the start
        &[(a, 2 * P, 0, 2 * P), (b, 3 * P, 0, 2 * P)],           // straddles the end
        &[(a, 0, 0, P), (b, 2 * P, 0, P), (a, 0, 4 * P, 4 * P)], // covers two
        &[(b, 5 * P, 0, P), (a, 0, 0, P), (b, 5 * P, 9 * P, P)], // out of order
        &[(a, TOP, 0, P), (a, TOP, 0, P)],                       // at the top
    ];
    for (i, windows) in arrangements.iter().enumerate() {
        assert_eq!(w.proxy(VmProt::READ, windows).map(|_| ()), Err(KernError::InvalidArgument), "arrangement {i}");
    }
    // Windows that overlap only once a nested proxy is expanded.
    let inner = w.proxy(VmProt::READ, &[(a, 0, 0, P), (b, P, 0, P)]).unwrap();
    assert_eq!(
        w.proxy(VmProt::READ, &[(inner.proxy, 0, 0, 2 * P), (a, P, 0, P)]).map(|_| ()),
        Err(KernError::InvalidArgument)
    );
    assert_eq!(w.k.stats().proxies, proxies + 1);
}

fn wrap_around_offsets_and_sizes_are_refused(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let o = w.objs[0];
    let top = TOP;
    let proxies = w.k.stats().proxies;
    for (off, start, len) in [
        (top, 0, P),
        (0, top, P),
        (P, 0, top),
        (0, P, top),
        (top, top, top),
        (top - P, 0, 2 * P),
        (u64::MAX, 0, P),
        (0, u64::MAX, P),
        // `(0, 0, u64::MAX)` runs to the end of the offset space (the
        // Hurd's read-only proxy, see the conformance suite); one byte
        // further on either side wraps.
        (P, 0, u64::MAX),
        (0, P, u64::MAX),
        (P, 0, u64::MAX - P + 1),
        (0, P, u64::MAX - P + 1),
    ] {
        assert_eq!(
            w.proxy(VmProt::ALL, &[(o, off, start, len)]).map(|_| ()),
            invalid(),
            "{off:#x} {start:#x} {len:#x}"
        );
    }
    assert_eq!(w.k.stats().proxies, proxies);
    let px = w.proxy(VmProt::READ, &[(o, 0, 0, 4 * P)]).unwrap();
    // Nested: a start or length that would wrap inside the inner proxy.
    for (start, len) in [(top, 2 * P), (top, P), (2 * P, top), (P, u64::MAX - P + 1)] {
        assert_eq!(w.proxy(VmProt::READ, &[(px.proxy, 0, start, len)]).map(|_| ()), invalid(), "{start:#x} {len:#x}");
    }
    // vm_map offsets and sizes.
    let t = w.task();
    let name = w.give(px.proxy, &t);
    for (off, size) in [
        (top, P),
        (top, 2 * P),
        (u64::MAX - P + 1, P),
        (P, u64::MAX),
        (P, top),
        (0, u64::MAX - P + 2),
        (2 * P, u64::MAX - 2 * P + 1),
        (3 * P, 2 * P),
    ] {
        let r = t.vm_map(MapRequest::anywhere(size, Some(name)).offset(off));
        assert_eq!(r, invalid(), "vm_map {off:#x} + {size:#x}");
        let r = t.vm_map(MapRequest::anywhere(size, Some(name)).offset(off).copy(true));
        assert_eq!(r, invalid(), "copy {off:#x} + {size:#x}");
    }
    assert_eq!(t.vm_region(VmAddr(0)), Err(KernError::InvalidAddress), "nothing was mapped");
    // vm_region_create_proxy.
    let a = w.map(&t, name, 0, 4 * P).unwrap();
    for len in [u64::MAX, top, u64::MAX - a.0 + 1] {
        assert!(t.vm_region_create_proxy(a, VmProt::READ, len).is_err(), "{len:#x}");
    }
    assert_eq!(t.vm_region_create_proxy(VmAddr(top), VmProt::READ, 2 * P).map(|_| ()), invalid());
    assert_eq!(w.k.stats().proxies, proxies + 1);
}

fn windows_at_the_top_of_the_offset_space_do_not_wrap(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let top = TOP;
    // The highest window there can be (it ends at the last page offset,
    // where one more page would wrap) shows pages 3 and 4.
    let px = w.proxy(VmProt::READ, &[(w.objs[0], top - 2 * P, 3 * P, 2 * P)]).unwrap();
    let t = w.task();
    let name = w.give(px.proxy, &t);
    let a = w.map(&t, name, top - 2 * P, 2 * P).unwrap();
    w.assert_shows(&t, a, 2, 0, 3 * P);
    assert_eq!(w.map(&t, name, top - P, 2 * P), invalid());
    assert_eq!(w.map(&t, name, top, P), invalid());
    assert_eq!(w.map(&t, name, 0, P), invalid(), "offset 0 is not a wrapped top");
    // A proxy over it reaching one page further wraps and is refused.
    assert_eq!(w.proxy(VmProt::READ, &[(px.proxy, 0, top - P, 2 * P)]).map(|_| ()), invalid());
    let nested = w.proxy(VmProt::ALL, &[(px.proxy, 0, top - P, P)]).unwrap();
    let b = w.map(&t, w.give(nested.proxy, &t), 0, P).unwrap();
    w.assert_shows(&t, b, 1, 0, 4 * P);
    assert_eq!(t.write_u64(b, 0), fail());
    // To the end of the offset space from there is that last page.
    let to_end = w.proxy(VmProt::ALL, &[(px.proxy, 0, top - P, u64::MAX - (top - P))]).unwrap();
    let c = w.map(&t, w.give(to_end.proxy, &t), 0, P).unwrap();
    w.assert_shows(&t, c, 1, 0, 4 * P);
    assert_eq!(w.map(&t, w.give(to_end.proxy, &t), 0, 2 * P), invalid());
}

fn vm_protect_after_map_cannot_raise_anything(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let t = w.task();
    for granted in all_prots() {
        let px = w.proxy(granted, &[(w.objs[0], 0, 0, P)]).unwrap();
        let a = t.vm_map(MapRequest::anywhere(P, Some(w.give(px.proxy, &t))).prot(granted, VmProt::ALL)).unwrap();
        for asked in all_prots() {
            let r = t.vm_protect(a, P, false, asked);
            let m = t.vm_protect(a, P, true, asked | granted);
            if granted.contains(asked) {
                assert_eq!(r, Ok(()), "{granted:?} cur {asked:?}");
            } else {
                assert_eq!(r, fail(), "{granted:?} cur {asked:?}");
                assert_eq!(m, fail(), "{granted:?} max {asked:?}");
            }
        }
        let region = t.vm_region(a).unwrap();
        assert!(granted.contains(region.max), "{granted:?} {region:?}");
        // Accesses follow what was granted, whatever was tried.
        t.vm_protect(a, P, false, granted).unwrap();
        let ok = |p: VmProt| if granted.contains(p) { Ok(()) } else { fail() };
        assert_eq!(t.read_u64(a).map(|_| ()), ok(VmProt::READ), "{granted:?}");
        assert_eq!(t.write(a, &[1]), ok(VmProt::WRITE), "{granted:?}");
        assert_eq!(t.execute(a), ok(VmProt::EXECUTE), "{granted:?}");
    }
}

fn failed_vm_protect_changes_nothing(v: ProxyVersion, via: Transport) {
    // Two windows with different protections side by side: raising both
    // to read/write fails, and neither entry changes.
    let w = World::new(v, via);
    let ro = w.proxy(VmProt::READ, &[(w.objs[0], 0, 0, P)]).unwrap();
    let rw = w.proxy(VmProt::DEFAULT, &[(w.objs[1], 0, 0, P)]).unwrap();
    let both = w.proxy(VmProt::ALL, &[(ro.proxy, 0, 0, P), (rw.proxy, P, 0, P)]).unwrap();
    let t = w.task();
    let a =
        t.vm_map(MapRequest::anywhere(2 * P, Some(w.give(both.proxy, &t))).prot(VmProt::READ, VmProt::ALL)).unwrap();
    assert_eq!(t.vm_protect(a, 2 * P, false, VmProt::DEFAULT), fail());
    assert_eq!(t.vm_region(a.plus(P)).unwrap().cur, VmProt::READ);
    assert_eq!(t.write_u64(a.plus(P), 1), fail());
    assert_eq!(t.vm_protect(a, 2 * P, true, VmProt::DEFAULT), fail());
    assert_eq!(t.vm_region(a).unwrap().max, VmProt::READ);
    assert_eq!(t.vm_region(a.plus(P)).unwrap().max, VmProt::DEFAULT);
    t.vm_protect(a.plus(P), P, false, VmProt::DEFAULT).unwrap();
    t.write_u64(a.plus(P), 1).unwrap();
    assert_eq!(t.write_u64(a, 1), fail());
}

fn inheritance_cannot_raise_protection(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let ro = w.proxy(VmProt::READ, &[(w.objs[0], 0, 0, 2 * P)]).unwrap();
    let t = w.task();
    let name = w.give(ro.proxy, &t);
    let a = w.map(&t, name, 0, P).unwrap();
    let b = w.map(&t, name, P, P).unwrap();
    t.vm_inherit(a, P, VmInherit::Share).unwrap();
    t.vm_inherit(b, P, VmInherit::Copy).unwrap();
    let child = t.task_create().unwrap();
    for addr in [a, b] {
        let r = child.vm_region(addr).unwrap();
        assert_eq!((r.cur, r.max), (VmProt::READ, VmProt::READ));
        assert_eq!(child.write_u64(addr, 1), fail());
        assert_eq!(child.vm_protect(addr, P, false, VmProt::DEFAULT), fail());
    }
    w.assert_shows(&child, a, 1, 0, 0);
    w.assert_shows(&child, b, 1, 0, P);
    assert_eq!((w.direct_word(0, 0), w.direct_word(0, P)), (word(0, 0), word(0, P)));
}

fn copy_then_write_leaves_the_object_unchanged(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let ro = w.proxy(VmProt::READ, &[(w.objs[0], 0, 0, 4 * P)]).unwrap();
    let up = w.proxy(VmProt::ALL, &[(ro.proxy, 0, 0, 4 * P)]).unwrap();
    let t = w.task();
    let shared = w.map(&t, w.give(ro.proxy, &t), 0, 4 * P).unwrap();
    for px in [ro, up] {
        let name = w.give(px.proxy, &t);
        let c = t.vm_map(MapRequest::anywhere(4 * P, Some(name)).copy(true)).unwrap();
        t.vm_write(c, &vec![0xee; (4 * P) as usize]).unwrap();
        t.vm_copy(c, P, c.plus(P)).unwrap();
        assert_eq!(t.read_u64(c.plus(3 * P)), Ok(0xeeee_eeee_eeee_eeee));
        // A copy gains writing only, never execution.
        assert_eq!(t.vm_protect(c, 4 * P, false, VmProt::ALL), fail());
        assert_eq!(t.vm_protect(c, 4 * P, true, VmProt::ALL), fail());
        assert_eq!(t.execute(c), fail());
        t.vm_deallocate(c, 4 * P).unwrap();
    }
    for page in 0..4 {
        assert_eq!(w.direct_word(0, page * P), word(0, page * P));
    }
    w.assert_shows(&t, shared, 4, 0, 0);
    let again = w.map(&t, w.give(ro.proxy, &t), 0, 4 * P).unwrap();
    w.assert_shows(&t, again, 4, 0, 0);
}

fn copy_stays_a_snapshot_after_it_was_read(v: ProxyVersion, via: Transport) {
    // The copy's first read maps the object's own page; a later write to the
    // object must not show through that translation.
    let w = World::new(v, via);
    let px = w.proxy(VmProt::READ, &[(w.objs[0], 0, 0, P)]).unwrap();
    let t = w.task();
    let c = t.vm_map(MapRequest::anywhere(P, Some(w.give(px.proxy, &t))).copy(true)).unwrap();
    assert_eq!(t.read_u64(c), Ok(word(0, 0)));
    w.owner.write_u64(w.direct[0], 0x5e5e).unwrap();
    assert_eq!(t.read_u64(c), Ok(word(0, 0)));
    // And the copy's own write does not reach the object.
    t.write_u64(c, 0xc0).unwrap();
    assert_eq!(w.direct_word(0, 0), 0x5e5e);
}

// ----- vm_region_create_proxy -----

fn region_proxy_reaches_nothing_of_a_hole(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let t = w.task();
    let x = w.map(&t, w.give(w.objs[0], &t), 0, 4 * P).unwrap();
    t.vm_deallocate(x.plus(P), 2 * P).unwrap(); // hole at [P, 3P)
    let px = t.vm_region_create_proxy(x, VmProt::ALL, 4 * P).unwrap();
    // Something is mapped into the hole afterwards.
    t.vm_map(MapRequest::anywhere(2 * P, Some(w.give(w.objs[1], &t))).at(x.plus(P))).unwrap();
    let u = w.task();
    let name = w.give_from(&t, px.proxy, &u);
    for (off, size) in [(P, P), (2 * P, P), (0, 2 * P), (P, 2 * P), (0, 4 * P), (2 * P, 2 * P)] {
        assert_eq!(w.map(&u, name, off, size), invalid(), "{off:#x}+{size:#x}");
        assert_eq!(w.proxy_from(&u, &[(name, 0, off, size)]).map(|_| ()), invalid(), "nested {off:#x}+{size:#x}");
    }
    let info = u.memory_object_proxy_info(name).unwrap();
    assert!(info.windows.iter().all(|win| win.offset + win.len <= P || win.offset >= 3 * P), "{info:?}");
    let a = w.map(&u, name, 0, P).unwrap();
    w.assert_shows(&u, a, 1, 0, 0);
    let b = w.map(&u, name, 3 * P, P).unwrap();
    w.assert_shows(&u, b, 1, 0, 3 * P);
    // No byte of the hole's new tenant is reachable through the proxy.
    for addr in [a, b] {
        let bytes = u.vm_read(addr, P).unwrap();
        assert!(bytes.chunks(8).all(|c| u64::from_le_bytes(c.try_into().unwrap()) >> 48 == 1));
    }
}

fn region_proxy_follows_memory_not_addresses(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let t = w.task();
    let x = w.map(&t, w.give(w.objs[0], &t), 2 * P, 2 * P).unwrap();
    let px = t.vm_region_create_proxy(x, VmProt::READ, 2 * P).unwrap();
    t.vm_deallocate(x, 2 * P).unwrap();
    let y = t.vm_map(MapRequest::anywhere(2 * P, Some(w.give(w.objs[1], &t))).at(x)).unwrap();
    assert_eq!(y, x);
    let a = w.map(&t, px.proxy, 0, 2 * P).unwrap();
    w.assert_shows(&t, a, 2, 0, 2 * P);
    assert_eq!(t.write_u64(a, 1), fail());
}

// ----- ports -----

fn pager_calls_sent_to_proxy_ports_are_refused(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let px = w.proxy(VmProt::READ, &[(w.objs[0], 0, 0, P)]).unwrap();
    let t = w.task();
    let a = w.map(&t, w.give(px.proxy, &t), 0, P).unwrap();
    assert_eq!(t.read_u64(a), Ok(word(0, 0)));
    let evil = vec![
        PagerToKernel::DataSupply { offset: 0, data: vec![0x66; P as usize], lock: VmProt::NONE, precious: false },
        PagerToKernel::DataUnavailable { offset: 0, size: P },
        PagerToKernel::DataError { offset: 0, size: P, reason: KernError::MemoryError },
        PagerToKernel::LockRequest {
            offset: 0,
            size: P,
            should_return: ReturnPolicy::None,
            should_flush: true,
            lock: VmProt::ALL,
        },
        PagerToKernel::Ready { may_cache: false, copy_strategy: CopyStrategy::None },
        PagerToKernel::ChangeAttributes { may_cache: false, copy_strategy: CopyStrategy::None, cluster_pages: 64 },
        PagerToKernel::GetAttributes,
        PagerToKernel::Destroy { reason: KernError::Terminated },
    ];
    for m in &evil {
        let (id, data) = m.encode();
        for dest in [w.give(px.proxy, &t), w.give(px.revoke, &t)] {
            let mut msg = UserMessage::new(dest, id, data.clone());
            let reply = t.port_allocate().unwrap();
            msg.reply = Some((reply, Disposition::MakeSendOnce));
            assert_eq!(t.msg_send(msg), Err(KernError::MigBadId), "{m:?}");
            assert_eq!(
                t.msg_receive(reply, Some(std::time::Duration::ZERO)).map(|_| ()),
                Err(KernError::RcvTimedOut),
                "no answer"
            );
        }
    }
    // Nothing changed: same data, same protection, the object still served.
    assert_eq!(t.read_u64(a), Ok(word(0, 0)));
    assert_eq!(t.write_u64(a, 1), fail());
    let b = w.map(&t, w.give(px.proxy, &t), 0, P).unwrap();
    assert_eq!(t.read_u64(b), Ok(word(0, 0)));
    assert_eq!(w.direct_word(0, 0), word(0, 0));
}

fn forged_no_senders_cannot_kill_a_proxy(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let px = w.proxy(VmProt::READ, &[(w.objs[0], 0, 0, P)]).unwrap();
    let t = w.task();
    let name = w.give(px.proxy, &t);
    let base = w.k.stats().proxies;
    // A holder forges the notification many times, with any mscount.
    for mscount in [0u32, 1, 2, u32::MAX] {
        for dest in [name, px.proxy, px.revoke] {
            let sender = if dest == name { &t } else { &w.owner };
            let m = UserMessage::new(dest, MACH_NOTIFY_NO_SENDERS, mscount.to_le_bytes().to_vec());
            assert_eq!(sender.msg_send(m), Err(KernError::MigBadId));
        }
    }
    assert_eq!(w.k.stats().proxies, base);
    let a = w.map(&t, name, 0, P).unwrap();
    assert_eq!(t.read_u64(a), Ok(word(0, 0)));
    // The real no-senders still frees it once every right and mapping is gone.
    t.vm_deallocate(a, P).unwrap();
    t.port_deallocate(name).unwrap();
    w.owner.port_deallocate(px.proxy).unwrap();
    w.owner.port_deallocate(px.revoke).unwrap();
    assert_eq!(w.k.stats().proxies, base - 1);
}

fn revoke_rights_and_proxies_are_not_interchangeable(v: ProxyVersion, via: Transport) {
    let w = World::new(v, via);
    let px = w.proxy(VmProt::DEFAULT, &[(w.objs[0], 0, 0, P)]).unwrap();
    let t = w.task();
    let revoke = w.give(px.revoke, &t);
    let proxy = w.give(px.proxy, &t);
    let object = w.give(w.objs[0], &t);
    let plain = t.port_allocate().unwrap();
    t.port_make_send(plain).unwrap();
    // A revoke right is no memory object.
    assert_eq!(w.map(&t, revoke, 0, P), invalid());
    assert_eq!(t.vm_map(MapRequest::anywhere(P, Some(revoke)).copy(true)), invalid());
    assert_eq!(t.memory_object_create_proxy(VmProt::READ, &[revoke], &[0], &[0], &[P]).map(|_| ()), invalid());
    assert_eq!(t.memory_object_proxy_info(revoke), invalid());
    // A proxy, an object or any other port is no revoke right.
    for name in [proxy, object, plain] {
        assert_eq!(t.memory_object_proxy_revoke(name), invalid(), "{name:?}");
    }
    assert_eq!(t.memory_object_proxy_revoke(PortName(0x4242)), Err(KernError::InvalidName));
    // The proxy is unharmed and the revoke right still works for its holder.
    let a = w.map(&t, proxy, 0, P).unwrap();
    assert_eq!(t.read_u64(a), Ok(word(0, 0)));
    match v {
        ProxyVersion::Mapping => assert_eq!(t.memory_object_proxy_revoke(revoke), Err(KernError::NotSupported)),
        ProxyVersion::Paging => {
            t.memory_object_proxy_revoke(revoke).unwrap();
            assert_eq!(t.read_u64(a), Err(KernError::MemoryError));
        }
    }
}

// ----- revocation (paging proxies) -----

fn paging_use_after_revoke_is_refused(via: Transport) {
    let w = World::new(ProxyVersion::Paging, via);
    let px = w.proxy(VmProt::ALL, &[(w.objs[0], 0, 0, 4 * P)]).unwrap();
    let t = w.task();
    let name = w.give(px.proxy, &t);
    let a = t.vm_map(MapRequest::anywhere(4 * P, Some(name)).prot(VmProt::ALL, VmProt::ALL)).unwrap();
    let scratch = t.vm_allocate(VmAddr(0), P, true).unwrap();
    w.assert_shows(&t, a, 4, 0, 0);
    w.owner.memory_object_proxy_revoke(px.revoke).unwrap();
    let gone = Err(KernError::MemoryError);
    assert_eq!(t.read_u64(a), gone);
    assert_eq!(t.write_u64(a.plus(P), 1), Err(KernError::MemoryError));
    assert_eq!(t.execute(a.plus(2 * P)), Err(KernError::MemoryError));
    assert_eq!(t.vm_read(a, P), Err(KernError::MemoryError));
    assert_eq!(t.vm_write(a, &[1]), Err(KernError::MemoryError));
    assert_eq!(t.vm_copy(a, P, scratch), Err(KernError::MemoryError));
    assert_eq!(t.read_u64(scratch), Ok(0), "nothing was copied out");
    // Protection changes do not bring it back.
    t.vm_protect(a, 4 * P, false, VmProt::READ).unwrap();
    assert_eq!(t.read_u64(a.plus(3 * P)), gone);
    // Neither does a child task, nor any new mapping or proxy.
    let child = t.task_create().unwrap();
    assert_eq!(child.read_u64(a), gone);
    let cap = Err(KernError::InvalidCapability);
    assert_eq!(w.map(&t, name, 0, P), cap);
    assert_eq!(t.vm_map(MapRequest::anywhere(P, Some(name)).copy(true)), cap);
    for version in [ProxyVersion::Mapping, ProxyVersion::Paging] {
        let r = t.memory_object_create_proxy_version(VmProt::READ, &[name], &[0], &[0], &[P], version);
        assert_eq!(r.map(|_| ()), Err(KernError::InvalidCapability), "{version:?}");
    }
    // A region proxy of the revoked mapping is no way back in.
    if let Ok(region) = t.vm_region_create_proxy(a, VmProt::READ, 4 * P) {
        assert!(t.memory_object_proxy_info(region.proxy).unwrap().revoked);
        assert_eq!(w.map(&t, region.proxy, 0, P), cap);
    }
}

fn region_proxy_of_a_copy_made_through_a_revoked_paging_proxy(v: ProxyVersion, via: Transport) {
    // A copy mapping made through a paging proxy is cut by its revocation;
    // a region proxy of that copy (of either version), or a proxy built on
    // that, must not keep or regain the access.
    let w = World::new(v, via);
    let px = w.proxy_v(ProxyVersion::Paging, VmProt::READ, &[(w.objs[0], 0, 0, 2 * P)]).unwrap();
    let t = w.task();
    let name = w.give(px.proxy, &t);
    let c = t.vm_map(MapRequest::anywhere(2 * P, Some(name)).copy(true)).unwrap();
    let d = t.vm_map(MapRequest::anywhere(2 * P, Some(name)).copy(true)).unwrap();
    w.assert_shows(&t, c, 2, 0, 0);
    // Made before the revocation, mapped before and after it.
    let before = t.vm_region_create_proxy(c, VmProt::READ, 2 * P).unwrap();
    let nested = w.proxy_from(&t, &[(before.proxy, 0, 0, 2 * P)]).unwrap();
    let early = w.map(&t, before.proxy, 0, 2 * P).unwrap();
    let early_nested = w.map(&t, nested.proxy, 0, 2 * P).unwrap();
    assert_eq!(t.read_u64(early), Ok(word(0, 0)));
    assert_eq!(t.read_u64(early_nested), Ok(word(0, 0)));
    w.owner.memory_object_proxy_revoke(px.revoke).unwrap();
    let gone = Err(KernError::MemoryError);
    assert_eq!(t.read_u64(c), gone);
    assert_eq!(t.read_u64(early), gone);
    assert_eq!(t.read_u64(early_nested.plus(P)), gone);
    let cap = Err(KernError::InvalidCapability);
    assert_eq!(w.map(&t, before.proxy, 0, 2 * P), cap);
    assert_eq!(w.map(&t, nested.proxy, 0, 2 * P), cap);
    assert!(t.memory_object_proxy_info(before.proxy).unwrap().revoked);
    // Made after the revocation.
    let after = t.vm_region_create_proxy(d, VmProt::READ, 2 * P).unwrap();
    assert_eq!(w.map(&t, after.proxy, 0, 2 * P), cap);
    assert_eq!(w.proxy_from(&t, &[(after.proxy, 0, 0, P)]).map(|_| ()), Err(KernError::InvalidCapability));
}

fn paging_revoke_during_a_fault(via: Transport) {
    // A thread waits on the real pager for a page through the proxy; the
    // proxy is revoked; the pager supplies; the fault fails.
    let mut s = Scripted::new(ProxyVersion::Paging, via);
    let px = s.client.memory_object_create_proxy(VmProt::READ, &[s.name], &[0], &[0], &[P]).unwrap();
    let a = s.client.vm_map(MapRequest::anywhere(P, Some(px.proxy))).unwrap();
    let direct = s.client.vm_map(MapRequest::anywhere(P, Some(s.name))).unwrap();
    let r = spawn_read(&s.client, a);
    s.expect(0);
    s.client.memory_object_proxy_revoke(px.revoke).unwrap();
    s.supply(0, 77);
    assert_eq!(join(r), Err(KernError::MemoryError));
    // The page itself arrived: the object's own mapping reads it.
    assert_eq!(s.client.read_u64(direct), Ok(77));
    assert_eq!(s.client.read_u64(a), Err(KernError::MemoryError));
}

fn paging_revoke_during_a_fault_through_a_nested_proxy(via: Transport) {
    let mut s = Scripted::new(ProxyVersion::Paging, via);
    let inner = s.client.memory_object_create_proxy(VmProt::READ, &[s.name], &[0], &[0], &[2 * P]).unwrap();
    let outer = s
        .client
        .memory_object_create_proxy_version(VmProt::ALL, &[inner.proxy], &[0], &[P], &[P], ProxyVersion::Mapping)
        .unwrap();
    let a = s.client.vm_map(MapRequest::anywhere(P, Some(outer.proxy))).unwrap();
    let r = spawn_read(&s.client, a);
    s.expect(P);
    s.client.memory_object_proxy_revoke(inner.revoke).unwrap();
    s.supply(P, 5);
    assert_eq!(join(r), Err(KernError::MemoryError));
}

fn paging_revoke_while_the_pager_never_answers(via: Transport) {
    // Revocation alone wakes the waiting fault: it does not wait for a pager
    // that may never answer.
    let mut s = Scripted::new(ProxyVersion::Paging, via);
    let px = s.client.memory_object_create_proxy(VmProt::READ, &[s.name], &[0], &[0], &[P]).unwrap();
    let a = s.client.vm_map(MapRequest::anywhere(P, Some(px.proxy))).unwrap();
    let r = spawn_read(&s.client, a);
    s.expect(0);
    s.client.memory_object_proxy_revoke(px.revoke).unwrap();
    assert_eq!(join(r), Err(KernError::MemoryError));
}

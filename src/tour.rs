//! `machvm tour`: the proxy story on a real file, step by step.
//!
//! 1. A file pager serves a real file; the owner task maps it.
//! 2. A read-only (mapping) proxy goes to a reader: reads work, writes and
//!    `vm_protect` up fail, a copy is private.
//! 3. A range-limited (paging) proxy goes to an editor: maps outside the
//!    window fail, an edit is seen by the owner at the file's offset.
//! 4. Nesting cannot escalate: a `VM_PROT_ALL` proxy over the read-only
//!    proxy still grants read only (GNU Mach maps it writable).
//! 5. A paging proxy handed to four viewers: each page is asked of the
//!    file pager once and is resident once.
//! 6. Introspection of every proxy.
//! 7. Revocation of the viewers' proxy, and of proxies built on it.
//! 8. Proxy ports take no messages.
//! 9. Real processes touching real memory ([`crate::tour_real`]): a store
//!    into a read-only proxy is `SIGSEGV`, reported by the daemon; a
//!    revoked reader's raw loads are `SIGBUS`; the owner's data stays.
//!
//! Every step checks what it shows; a failed check makes the exit status
//! non-zero.

use crate::util::{counts, prot_str, Checks, TempFile};
use machvm_core::ipc::{Disposition, UserMessage};
use machvm_core::{
    KernError, Kernel, KernelConfig, MapRequest, ProxyInfo, ProxyVersion, Result, TaskId, VmAddr, VmProt, PAGE_SIZE,
};
use machvm_pagers::{FileBacking, PagerConn, PagerStats, RunningPager};
use std::error::Error;
use std::io::Write;

const P: u64 = PAGE_SIZE;
/// Pages in the tour's file.
const PAGES: u64 = 64;
/// Pages the file pager supplies per `data_request`.
const CLUSTER: u32 = 4;

/// The first line of file page `p`.
fn page_line(p: u64) -> String {
    format!("tour.dat page {p:02} of {PAGES}")
}

/// File page `p`: its line, then filler.
fn page_text(p: u64) -> Vec<u8> {
    let mut page = format!("{}\n", page_line(p)).into_bytes();
    let filler = format!("(filler of page {p:02}) ");
    while page.len() < P as usize {
        page.extend_from_slice(filler.as_bytes());
    }
    page.truncate(P as usize);
    page
}

/// The first line of text at `addr`, read by a thread of `task`.
fn line(k: &Kernel, task: TaskId, addr: VmAddr) -> Result<String> {
    let mut buf = [0u8; 48];
    k.read(task, addr, &mut buf)?;
    let end = buf.iter().position(|&b| b == b'\n' || b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// A line read, or the error that stopped the read.
fn shown(l: &Result<String>) -> String {
    match l {
        Ok(l) => format!("{l:?}"),
        Err(e) => e.to_string(),
    }
}

fn step(n: u32, title: &str, about: &[&str]) {
    println!("\n[{n}] {title}");
    for l in about {
        println!("    {l}");
    }
}

fn say(s: impl std::fmt::Display) {
    println!("    {s}");
}

fn describe(info: &ProxyInfo) -> String {
    let windows: Vec<String> = info
        .windows
        .iter()
        .map(|w| {
            format!(
                "[proxy page {}, {} pages] = {} page {}.. ({})",
                w.offset / P,
                w.len / P,
                if w.target_is_proxy { "inner proxy" } else { "object" },
                w.start / P,
                prot_str(w.prot)
            )
        })
        .collect();
    format!(
        "{:?} proxy, grants {}, revoked: {}, windows: {}",
        info.version,
        prot_str(info.protection),
        info.revoked,
        windows.join(", ")
    )
}

/// Runs the tour, its chapter with real processes included. `Ok(true)`
/// if every check passed.
pub fn tour() -> std::result::Result<bool, Box<dyn Error>> {
    tour_with(true)
}

/// Runs the tour; `real_processes`: with its last chapter, whose
/// processes are this program's own binary (the `machvm` command).
pub fn tour_with(real_processes: bool) -> std::result::Result<bool, Box<dyn Error>> {
    let mut c = Checks::default();
    println!("machvm tour: proxy memory objects on a real file");
    println!("(each line marked ok/FAIL is checked; errors print as Mach names)");

    // 1. The file and its pager.
    let (file, mut f) = TempFile::create("tour", "dat")?;
    for p in 0..PAGES {
        f.write_all(&page_text(p))?;
    }
    f.sync_all()?;
    drop(f);
    let k = Kernel::new(KernelConfig::default());
    let mut conn = PagerConn::new(k.clone())?;
    let object = conn.new_object()?;
    let owner = k.task_create(None)?;
    let file_name = conn.give(object, owner)?;
    let mut backing = FileBacking::new(CLUSTER);
    backing.add(object, file.reopen()?)?;
    let pager = RunningPager::spawn(conn, backing);

    step(
        1,
        "A pager serves a real file",
        &[
            &format!("file   {} ({PAGES} pages)", file.path().display()),
            &format!("pager  task {} serves it as a memory object ({CLUSTER}-page clusters)", pager.task.number()),
            &format!("owner  task {} holds a send right to the memory object and maps it read/write", owner.number()),
        ],
    );
    let Some(base) = c.ok(k.vm_map(owner, MapRequest::anywhere(PAGES * P, Some(file_name))), "owner: vm_map(file)")
    else {
        return Ok(false);
    };
    let at = |b: VmAddr, page: u64| VmAddr(b.0 + page * P);
    let l = line(&k, owner, base);
    c.check(l.as_ref().is_ok_and(|l| *l == page_line(0)), format!("owner reads page 0: {}", shown(&l)));
    let s = k.stats();
    say(format!("kernel -> pager: {}", counts(&s.to_pagers)));
    say(format!("pager -> kernel: {}", counts(&s.from_pagers)));

    // 2. A read-only mapping proxy.
    step(
        2,
        "A read-only proxy for a reader task (mapping proxy)",
        &["owner: memory_object_create_proxy(READ, [file], offsets [0], starts [0], lens [64 pages])"],
    );
    let ro = k.memory_object_create_proxy_version(
        owner,
        VmProt::READ,
        &[file_name],
        &[0],
        &[0],
        &[PAGES * P],
        ProxyVersion::Mapping,
    )?;
    let reader = k.task_create(None)?;
    let ro_r = k.port_transfer(owner, ro.proxy, Disposition::MoveSend, reader)?;
    say(format!(
        "owner -> reader (task {}): port_transfer(proxy, MOVE_SEND); the owner keeps the revoke right",
        reader.number()
    ));
    let ra = c.ok(
        k.vm_map(reader, MapRequest::anywhere(PAGES * P, Some(ro_r)).prot(VmProt::DEFAULT, VmProt::ALL)),
        "reader: vm_map(proxy, cur READ|WRITE, max ALL), as glibc's mmap asks",
    );
    let Some(ra) = ra else { return Ok(false) };
    let r = k.vm_region(reader, ra)?;
    c.check(
        r.cur == VmProt::READ && r.max == VmProt::READ,
        format!("vm_region: the mapping is cur {} / max {}", prot_str(r.cur), prot_str(r.max)),
    );
    let l = line(&k, reader, at(ra, 5));
    c.check(l.as_ref().is_ok_and(|l| *l == page_line(5)), format!("reader reads page 5: {}", shown(&l)));
    c.fails(k.write_u64(reader, at(ra, 5), 1), KernError::ProtectionFailure, "reader writes page 5");
    c.fails(
        k.vm_protect(reader, ra, PAGES * P, false, VmProt::DEFAULT),
        KernError::ProtectionFailure,
        "reader: vm_protect(READ|WRITE)",
    );
    if let Some(cp) = c.ok(
        k.vm_map(reader, MapRequest::anywhere(P, Some(ro_r)).offset(5 * P).copy(true)),
        "reader: vm_map(proxy page 5, copy) -- a copy needs read permission only",
    ) {
        let w = k.write(reader, cp, b"reader's private copy\n");
        let copy_line = line(&k, reader, cp);
        let owner_line = line(&k, owner, at(base, 5));
        c.check(
            w.is_ok() && copy_line.as_deref() == Ok("reader's private copy") && owner_line == Ok(page_line(5)),
            format!(
                "reader writes its copy: copy reads {}, the owner still reads {}",
                shown(&copy_line),
                shown(&owner_line)
            ),
        );
    }

    // 3. A range-limited paging proxy.
    step(
        3,
        "A range-limited read/write proxy for an editor task (paging proxy)",
        &["owner: memory_object_create_proxy(READ|WRITE, [file], offsets [0], starts [page 16], lens [8 pages])"],
    );
    let win = k.memory_object_create_proxy_version(
        owner,
        VmProt::DEFAULT,
        &[file_name],
        &[0],
        &[16 * P],
        &[8 * P],
        ProxyVersion::Paging,
    )?;
    let editor = k.task_create(None)?;
    let ed = k.port_transfer(owner, win.proxy, Disposition::MoveSend, editor)?;
    say(format!("owner -> editor (task {}): port_transfer(proxy, MOVE_SEND)", editor.number()));
    let Some(ea) = c.ok(k.vm_map(editor, MapRequest::anywhere(8 * P, Some(ed))), "editor: vm_map(proxy, 8 pages)")
    else {
        return Ok(false);
    };
    let l = line(&k, editor, ea);
    c.check(l.as_ref().is_ok_and(|l| *l == page_line(16)), format!("editor reads proxy page 0: {}", shown(&l)));
    c.fails(
        k.vm_map(editor, MapRequest::anywhere(9 * P, Some(ed))),
        KernError::InvalidArgument,
        "editor: vm_map(proxy, 9 pages)",
    );
    c.fails(
        k.vm_map(editor, MapRequest::anywhere(P, Some(ed)).offset(8 * P)),
        KernError::InvalidArgument,
        "editor: vm_map(proxy page 8, outside the window)",
    );
    c.fails(
        k.memory_object_create_proxy(editor, VmProt::ALL, &[ed], &[0], &[0], &[16 * P]),
        KernError::InvalidArgument,
        "editor: create_proxy(ALL, 16 pages of its 8-page proxy)",
    );
    let edit = b"tour.dat page 17, EDITED through the window\n";
    c.ok(k.write(editor, at(ea, 1), edit), "editor writes proxy page 1");
    let l = line(&k, owner, at(base, 17));
    c.check(
        l.as_deref() == Ok("tour.dat page 17, EDITED through the window"),
        format!("owner reads file page 17 through its own mapping: {} (one page, shared)", shown(&l)),
    );

    // 4. Nested escalation.
    step(
        4,
        "Nesting cannot escalate",
        &[
            "GNU Mach takes only the outermost proxy's protection, so a VM_PROT_ALL proxy",
            "over a read-only proxy maps writable there. Here protection intersects along the chain.",
        ],
    );
    let mut outer = Vec::new();
    for version in [ProxyVersion::Mapping, ProxyVersion::Paging] {
        let Some(esc) = c.ok(
            k.memory_object_create_proxy_version(reader, VmProt::ALL, &[ro_r], &[0], &[0], &[PAGES * P], version),
            format!("reader: create_proxy(ALL, [its read-only proxy]) as a {version:?} proxy"),
        ) else {
            continue;
        };
        outer.push(esc.proxy);
        let info = k.memory_object_proxy_info(reader, esc.proxy)?;
        c.check(info.protection == VmProt::READ, format!("proxy_info: it grants {}", prot_str(info.protection)));
        let Some(ma) = c.ok(
            k.vm_map(reader, MapRequest::anywhere(PAGES * P, Some(esc.proxy)).prot(VmProt::DEFAULT, VmProt::ALL)),
            "reader: vm_map(it, cur READ|WRITE, max ALL)",
        ) else {
            continue;
        };
        let r = k.vm_region(reader, ma)?;
        c.check(
            r.cur == VmProt::READ && r.max == VmProt::READ,
            format!("vm_region: cur {} / max {}", prot_str(r.cur), prot_str(r.max)),
        );
        c.fails(k.write_u64(reader, at(ma, 3), 1), KernError::ProtectionFailure, "reader writes through it");
        c.fails(
            k.vm_protect(reader, ma, P, false, VmProt::DEFAULT),
            KernError::ProtectionFailure,
            "reader: vm_protect(READ|WRITE) on it",
        );
    }

    // 5. A paging proxy shared by four viewers.
    step(
        5,
        "A paging proxy forwards page requests; pages are shared, not copied",
        &["owner: memory_object_create_proxy(READ, [file], offsets [0], starts [page 32], lens [16 pages]) (paging)"],
    );
    let pp = k.memory_object_create_proxy_version(
        owner,
        VmProt::READ,
        &[file_name],
        &[0],
        &[32 * P],
        &[16 * P],
        ProxyVersion::Paging,
    )?;
    let before = k.stats();
    let supplied = PagerStats::get(&pager.stats.pages_supplied);
    let mut viewers = Vec::new();
    let mut all_read = true;
    for _ in 0..4 {
        let v = k.task_create(None)?;
        let name = k.port_transfer(owner, pp.proxy, Disposition::CopySend, v)?;
        let va = k.vm_map(v, MapRequest::anywhere(16 * P, Some(name)))?;
        for p in 0..16 {
            all_read &= line(&k, v, at(va, p)).is_ok_and(|l| l == page_line(32 + p));
        }
        viewers.push((v, name, va));
    }
    let tasks: Vec<String> = viewers.iter().map(|(v, _, _)| v.number().to_string()).collect();
    say(format!("owner -> viewer tasks {}: port_transfer(proxy, COPY_SEND)", tasks.join(", ")));
    c.check(all_read, "each viewer maps the proxy and reads all 16 pages (file pages 32..47)");
    let after = k.stats();
    let requests = after.sent("data_request") - before.sent("data_request");
    let asked = after.vm.pages_requested - before.vm.pages_requested;
    let resident = after.resident as i64 - before.resident as i64;
    let supplied = PagerStats::get(&pager.stats.pages_supplied) - supplied;
    say(format!(
        "64 page reads by 4 tasks: data_request +{requests}, pages asked +{asked}, supplied by the file pager +{supplied}, resident +{resident}"
    ));
    c.check(
        requests == 16 / u64::from(CLUSTER) && asked == 16 && supplied == 16,
        format!("each of the 16 pages was asked of the file pager once ({requests} requests of {CLUSTER} pages)"),
    );
    c.check(resident == 16, format!("16 pages resident, not 64: the viewers share the file's pages (+{resident})"));
    let before = k.stats();
    let mut owner_ok = true;
    for p in 32..48 {
        owner_ok &= line(&k, owner, at(base, p)).is_ok_and(|l| l == page_line(p));
    }
    let after = k.stats();
    c.check(
        owner_ok && after.sent("data_request") == before.sent("data_request") && after.resident == before.resident,
        "the owner's direct mapping finds the same pages: no new request, resident unchanged",
    );
    let (v0, v0_name, _) = viewers[0];
    let nested = k.memory_object_create_proxy(v0, VmProt::READ, &[v0_name], &[0], &[4 * P], &[4 * P])?;
    let na = k.vm_map(v0, MapRequest::anywhere(4 * P, Some(nested.proxy)))?;
    let l = line(&k, v0, na);
    c.check(
        l.as_ref().is_ok_and(|l| *l == page_line(36)),
        format!("viewer {} builds a proxy on its proxy (pages 4..8) and reads its page 0: {}", v0.number(), shown(&l)),
    );

    // 6. Introspection.
    step(6, "Introspection: memory_object_proxy_info", &[]);
    let mut infos = vec![
        ("reader's read-only proxy", reader, ro_r),
        ("editor's window proxy", editor, ed),
        ("viewers' proxy", owner, pp.proxy),
        ("viewer's nested proxy", v0, nested.proxy),
    ];
    for (i, &o) in outer.iter().enumerate() {
        infos.push((
            if i == 0 { "reader's ALL-over-READ (mapping)" } else { "reader's ALL-over-READ (paging)" },
            reader,
            o,
        ));
    }
    for (what, task, name) in infos {
        match k.memory_object_proxy_info(task, name) {
            Ok(info) => say(format!("{what:<34} {}", describe(&info))),
            Err(e) => {
                c.check(false, format!("{what}: proxy_info failed with {e}"));
            }
        }
    }
    let ro_info = k.memory_object_proxy_info(reader, ro_r)?;
    c.check(
        ro_info.version == ProxyVersion::Mapping
            && ro_info.protection == VmProt::READ
            && ro_info.windows.len() == 1
            && ro_info.windows[0].len == PAGES * P,
        "the read-only proxy: mapping version, READ, one 64-page window",
    );
    let win_info = k.memory_object_proxy_info(editor, ed)?;
    c.check(
        win_info.version == ProxyVersion::Paging
            && win_info.protection == VmProt::DEFAULT
            && win_info.windows.len() == 1
            && win_info.windows[0].start == 16 * P
            && win_info.windows[0].len == 8 * P,
        "the window proxy: paging version, READ|WRITE, 8 pages from file page 16",
    );
    let nested_info = k.memory_object_proxy_info(v0, nested.proxy)?;
    c.check(
        nested_info.windows.first().is_some_and(|w| w.target_is_proxy),
        "the nested proxy's window targets the viewers' paging proxy (so its revocation reaches it)",
    );

    // 7. Revocation.
    step(7, "Revocation", &["owner: memory_object_proxy_revoke(revoke right of the viewers' proxy)"]);
    c.ok(k.memory_object_proxy_revoke(owner, pp.revoke), "owner revokes the viewers' proxy");
    for (v, _, va) in &viewers {
        c.fails(k.read_u64(*v, *va), KernError::MemoryError, format!("viewer {} reads its mapping", v.number()));
    }
    c.fails(k.read_u64(v0, na), KernError::MemoryError, "viewer's mapping of the nested proxy");
    c.fails(
        k.vm_map(v0, MapRequest::anywhere(16 * P, Some(v0_name))),
        KernError::InvalidCapability,
        "viewer maps the revoked proxy again",
    );
    c.fails(
        k.memory_object_create_proxy(v0, VmProt::READ, &[v0_name], &[0], &[0], &[P]),
        KernError::InvalidCapability,
        "viewer builds a new proxy on the revoked one",
    );
    let info = k.memory_object_proxy_info(owner, pp.proxy)?;
    c.check(info.revoked, format!("proxy_info: revoked: {}", info.revoked));
    let l = line(&k, owner, at(base, 32));
    c.check(
        l.as_ref().is_ok_and(|l| *l == page_line(32)),
        format!("the owner's own mapping still reads page 32: {}", shown(&l)),
    );
    let l = line(&k, editor, ea);
    c.check(
        l.as_ref().is_ok_and(|l| *l == page_line(16)),
        format!("the editor's (other) proxy still works: {}", shown(&l)),
    );
    c.fails(
        k.memory_object_proxy_revoke(owner, ro.revoke),
        KernError::NotSupported,
        "owner revokes the reader's mapping proxy (its mappings are plain mappings of the file)",
    );

    // 8. No messages.
    step(8, "Proxy ports take no messages", &[]);
    c.fails(
        k.msg_send(reader, UserMessage::new(ro_r, 2200, vec![0; 8])),
        KernError::MigBadId,
        "reader sends a message to its proxy",
    );
    c.fails(
        k.msg_send(reader, UserMessage::new(ro_r, 0o106, Vec::new())),
        KernError::MigBadId,
        "reader forges a no-senders notification to its proxy",
    );
    let l = line(&k, reader, at(ra, 5));
    c.check(
        l.as_ref().is_ok_and(|l| *l == page_line(5)),
        format!("the proxy is unaffected: reader reads page 5: {}", shown(&l)),
    );

    let s = k.stats();
    if real_processes {
        if let Err(e) = crate::tour_real::chapter(9, &mut c) {
            c.check(false, format!("real processes: {e}"));
        }
    }
    println!("\nsummary");
    say(format!("kernel -> pager: {}", counts(&s.to_pagers)));
    say(format!("pager -> kernel: {}", counts(&s.from_pagers)));
    say(format!("faults {}, pages resident {}, proxies alive {}", s.vm.faults, s.resident, s.proxies));
    say(format!(
        "file pager: {} data_requests, {} pages supplied",
        PagerStats::get(&pager.stats.requests),
        PagerStats::get(&pager.stats.pages_supplied)
    ));
    println!();
    pager.stop();
    c.summary();
    Ok(c.all_passed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tour_passes_all_its_checks() {
        // The chapter with real processes runs the `machvm` binary: the
        // suite runs it whole (`tests/real_memory.rs`).
        assert!(tour_with(false).unwrap());
    }

    #[test]
    fn tour_pages_are_whole_and_start_with_their_line() {
        let t = page_text(7);
        assert_eq!(t.len() as u64, P);
        assert!(t.starts_with(format!("{}\n", page_line(7)).as_bytes()));
    }
}

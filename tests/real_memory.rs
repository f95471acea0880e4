//! Real memory, end to end: task processes map memory objects and touch
//! them with real loads and stores; machvmd serves their faults through
//! their userfaultfds, and the host MMU enforces their protection.
//!
//! Every test needs a daemon that can serve real memory (root and
//! userfaultfd, as on the development machines and in CI); elsewhere each
//! says why it skips.

mod common;

use common::daemon::*;
use machvm_client::memory::RealMemory;
use machvm_client::ClientError;
use machvm_protocol::{KernError, PAGE_SIZE};

/// Why real memory cannot be tested here, if it cannot.
fn skip() -> Option<String> {
    machvm_daemon::memory::unavailable()
}

macro_rules! need_real_memory {
    () => {
        if let Some(why) = skip() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

#[test]
fn a_process_stores_and_loads_zero_fill_memory_for_real() {
    need_real_memory!();
    let dir = Dir::new("real-zero");
    let _d = daemon(&dir.socket(), &["--memory", "real"]);
    let mem = RealMemory::attach(client(&dir.socket(), "real"), 1 << 30).unwrap();
    let r = mem.vm_allocate(16 * PAGE_SIZE).unwrap();
    assert_eq!(r.load_u64(0).unwrap(), 0, "zero fill");
    r.write(5 * PAGE_SIZE + 3, b"real memory").unwrap();
    let mut back = [0u8; 11];
    r.read(5 * PAGE_SIZE + 3, &mut back).unwrap();
    assert_eq!(&back, b"real memory");
    // The daemon's kernel sees the same bytes through a call.
    assert_eq!(
        mem.connection().load(machvm_protocol::VmAddr(r.addr().0 + 5 * PAGE_SIZE + 3), 11).unwrap(),
        b"real memory"
    );
    // A call's store is seen by the process's loads.
    mem.connection().store(machvm_protocol::VmAddr(r.addr().0 + 9 * PAGE_SIZE), b"from a call").unwrap();
    let mut b2 = [0u8; 11];
    r.read(9 * PAGE_SIZE, &mut b2).unwrap();
    assert_eq!(&b2, b"from a call");
    // The address is the arena's.
    assert!(mem.arena().range().contains(&machvm_host::PageRange::new(r.addr().0, r.len()).unwrap()));
    r.deallocate().unwrap();
    assert!(matches!(
        mem.connection().load(machvm_protocol::VmAddr(mem.arena().range().start()), 1),
        Err(ClientError::Kern(KernError::InvalidAddress))
    ));
}

use machvm_protocol::wire::{InspectWhat, Reply};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A `machvm probe` task process following `steps` (see `src/probe.rs`),
/// with a 1 GiB arena; its stderr goes to a file of `dir` for diagnosis.
fn probe(dir: &Dir, tag: &str, steps: &str) -> Proc {
    let err = std::fs::File::create(dir.0.join(format!("{tag}.err"))).unwrap();
    let child = Command::new(machvm())
        .arg("--socket")
        .arg(dir.socket())
        .args(["probe", "--"])
        .args(steps.split_whitespace().map(|s| s.replace("{}", &dir.0.to_string_lossy())))
        .env("MACHVM_ARENA_MIB", "1024")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("starting a probe");
    Proc(child)
}

/// The probe's exit status within 20 s (what it said on stderr if not).
#[track_caller]
fn ended(dir: &Dir, tag: &str, p: &mut Proc) -> ExitStatus {
    match p.wait_exit(Duration::from_secs(20)) {
        Some(s) => s,
        None => panic!("{tag} still runs: {}", stderr(dir, tag)),
    }
}

fn stderr(dir: &Dir, tag: &str) -> String {
    std::fs::read_to_string(dir.0.join(format!("{tag}.err"))).unwrap_or_default()
}

#[track_caller]
fn succeeded(dir: &Dir, tag: &str, p: &mut Proc) {
    let s = ended(dir, tag, p);
    assert!(s.success(), "{tag} ended with {s}: {}", stderr(dir, tag));
}

#[track_caller]
fn killed_by(dir: &Dir, tag: &str, p: &mut Proc, signal: i32) {
    let s = ended(dir, tag, p);
    assert_eq!(s.signal(), Some(signal), "{tag} ended with {s}, not signal {signal}: {}", stderr(dir, tag));
}

fn exceptions(socket: &Path) -> Vec<machvm_protocol::wire::ExceptionRow> {
    match client(socket, "look").inspect(InspectWhat::Exceptions).unwrap() {
        Reply::Exceptions(rows) => rows,
        other => panic!("{other:?}"),
    }
}

fn touch(dir: &Dir, name: &str) {
    std::fs::write(dir.0.join(name), b"").unwrap();
}

const SIGSEGV: i32 = 11;
const SIGBUS: i32 = 7;

#[test]
fn two_processes_share_an_object_and_see_each_others_stores() {
    need_real_memory!();
    let dir = Dir::new("real-share");
    let _d = daemon(&dir.socket(), &["--memory", "real"]);
    let _pager = pager(&dir.socket(), &["zero", "--name", "shared"], "shared");
    let mut a = probe(&dir, "a", "map shared 16 put 0 3 hello-from-a touch {}/A await {}/B expect 0 5 hello-from-b");
    let mut b = probe(&dir, "b", "await {}/A map shared 16 expect 0 3 hello-from-a put 0 5 hello-from-b touch {}/B");
    succeeded(&dir, "a", &mut a);
    succeeded(&dir, "b", &mut b);
}

#[test]
fn two_processes_share_memory_through_a_paging_proxy() {
    need_real_memory!();
    let dir = Dir::new("real-proxy");
    let _d = daemon(&dir.socket(), &["--memory", "real", "--proxy-version", "paging"]);
    let _pager = pager(&dir.socket(), &["zero", "--name", "shared"], "shared");
    let mut a = probe(
        &dir,
        "a",
        "map shared 16 put 0 3 from-the-owner proxy 0 rw p touch {}/A await {}/B expect 0 5 through-the-proxy",
    );
    let mut b = probe(&dir, "b", "await {}/A map p 16 expect 0 3 from-the-owner put 0 5 through-the-proxy touch {}/B");
    succeeded(&dir, "a", &mut a);
    succeeded(&dir, "b", &mut b);
    // One object holds the pages: the proxy's view has none of its own.
    let c = client(&dir.socket(), "look");
    let Reply::Objects(objects) = c.inspect(InspectWhat::Objects).unwrap() else { panic!() };
    let with_pages: Vec<_> = objects.iter().filter(|o| o.resident > 0).collect();
    assert!(with_pages.len() <= 1, "the pages live in the real object only: {with_pages:?}");
}

#[test]
fn a_store_into_a_read_only_proxy_is_sigsegv_and_reported_also_after_mprotect() {
    need_real_memory!();
    for version in ["paging", "mapping"] {
        let dir = Dir::new("real-ro");
        let d = daemon(&dir.socket(), &["--memory", "real", "--proxy-version", version]);
        let _pager = pager(&dir.socket(), &["zero", "--name", "shared"], "shared");
        let mut owner = probe(
            &dir,
            "owner",
            "map shared 4 put 0 0 owners-data proxy 0 read ro touch {}/A await {}/DONE expect 0 0 owners-data",
        );
        let mut reader = probe(&dir, "reader", "await {}/A map ro 4 expect 0 0 owners-data put 0 0 evil");
        killed_by(&dir, "reader", &mut reader, SIGSEGV);
        let mut sneaky = probe(&dir, "sneaky", "await {}/A map ro 4 expect 0 0 owners-data mprotect 0 rw put 0 0 evil");
        killed_by(&dir, "sneaky", &mut sneaky, SIGSEGV);
        touch(&dir, "DONE");
        succeeded(&dir, "owner", &mut owner);
        let ex = exceptions(&dir.socket());
        let pids = [reader.0.id(), sneaky.0.id()];
        for pid in pids {
            let row =
                ex.iter().find(|r| r.pid == pid).unwrap_or_else(|| panic!("{version}: no exception of {pid}: {ex:?}"));
            assert_eq!(row.error, KernError::ProtectionFailure, "{version}: {row:?}");
            assert!(row.access.contains(machvm_protocol::VmProt::WRITE), "{row:?}");
        }
        drop(d);
    }
}

#[test]
fn a_revoked_proxy_kills_a_raw_reading_loop_with_sigbus_and_the_owners_data_stays() {
    need_real_memory!();
    let dir = Dir::new("real-revoke");
    let _d = daemon(&dir.socket(), &["--memory", "real", "--proxy-version", "paging"]);
    let _pager = pager(&dir.socket(), &["zero", "--name", "shared"], "shared");
    let mut owner = probe(
        &dir,
        "owner",
        "map shared 16 fill 0 7 proxy 0 read rp touch {}/A await {}/R revoke touch {}/REVOKED await {}/DONE check 0 7",
    );
    let mut reader = probe(&dir, "reader", "await {}/A map rp 16 check 0 7 touch {}/L loop 0");
    let end = Instant::now() + Duration::from_secs(10);
    while !dir.0.join("L").exists() {
        assert!(Instant::now() < end, "the reader never looped: {}", stderr(&dir, "reader"));
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    touch(&dir, "R");
    killed_by(&dir, "reader", &mut reader, SIGBUS);
    touch(&dir, "DONE");
    succeeded(&dir, "owner", &mut owner);
}

#[test]
fn a_pager_killed_mid_fault_gives_the_faulting_process_sigbus_within_a_second() {
    need_real_memory!();
    let dir = Dir::new("real-pager-dies");
    let _d = daemon(&dir.socket(), &["--memory", "real"]);
    let mut slow = pager(&dir.socket(), &["zero", "--name", "slow", "--delay-ms", "5000"], "slow");
    let mut victim = probe(&dir, "victim", "map slow 4 touch {}/F expect 0 0 never");
    let mut bystander = probe(&dir, "bystander", "alloc 64 fill 0 3 await {}/GO check 0 3 fill 0 4 check 0 4");
    let end = Instant::now() + Duration::from_secs(10);
    while !dir.0.join("F").exists() {
        assert!(Instant::now() < end, "the victim never mapped: {}", stderr(&dir, "victim"));
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    let killed = Instant::now();
    slow.kill();
    let s = victim.wait_exit(Duration::from_secs(5)).expect("the victim still waits");
    let took = killed.elapsed();
    assert_eq!(s.signal(), Some(SIGBUS), "{s}: {}", stderr(&dir, "victim"));
    assert!(took < Duration::from_secs(1), "SIGBUS came {took:?} after the pager died");
    touch(&dir, "GO");
    succeeded(&dir, "bystander", &mut bystander);
}

#[test]
fn a_working_set_twenty_times_the_resident_limit_keeps_every_store() {
    need_real_memory!();
    let dir = Dir::new("real-pressure");
    let file = dir.0.join("backing");
    std::fs::write(&file, vec![0u8; 640 * PAGE_SIZE as usize]).unwrap();
    let _d = daemon(&dir.socket(), &["--memory", "real", "--max-resident", "32"]);
    let _pager = pager(&dir.socket(), &["file", "--name", "big", "--cluster", "4", file.to_str().unwrap()], "big");
    let mut p = probe(&dir, "p", "map big 640 fill 0 5 check 0 5 churn 0 9 6000");
    succeeded(&dir, "p", &mut p);
    let c = client(&dir.socket(), "look");
    assert!(stat(&c, "pageouts") + stat(&c, "task_reclaims") > 600, "pages went out and came back");
    // They went out of the process's page tables: zapped, and mapped again.
    assert!(stat(&c, "host_zapped") > 600 && stat(&c, "host_continued") > 600, "taken from the process and given back");
    assert_eq!(stat(&c, "host_failures"), 0, "no host call failed");
}

#[test]
fn copy_mappings_and_child_tasks_keep_machs_copy_semantics() {
    need_real_memory!();
    let dir = Dir::new("real-cow");
    let _d = daemon(&dir.socket(), &["--memory", "real"]);
    let _pager = pager(&dir.socket(), &["zero", "--name", "shared"], "shared");
    // A copy sees the data as of the copy; later stores on either side
    // stay on that side.
    let mut p = probe(
        &dir,
        "copy",
        "map shared 8 put 0 0 before put 0 2 orig2 copy shared 8 put 0 0 after expect 1 0 before \
         put 1 2 copy2 expect 0 2 orig2 expect 1 2 copy2 expect 0 0 after",
    );
    succeeded(&dir, "copy", &mut p);
    // A child task process: copy-inherited memory is its own copy,
    // share-inherited memory is shared.
    let mut parent = probe(
        &dir,
        "parent",
        "alloc 4 put 0 0 parents inherit 0 copy alloc 4 put 1 0 common inherit 1 share \
         child expect 0 0 parents put 0 0 childs expect 1 0 common put 1 1 from-child ; \
         expect 0 0 parents expect 1 1 from-child",
    );
    succeeded(&dir, "parent", &mut parent);
}

#[test]
fn the_tour_passes_every_check_with_its_real_processes() {
    // Without real memory the tour's last chapter says why and skips.
    let out = Command::new(machvm()).arg("tour").stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "machvm tour failed:\n{text}");
    if skip().is_none() {
        assert!(text.contains("killed by SIGSEGV") && text.contains("killed by SIGBUS"), "{text}");
    }
}

/// Waits (10 s at most) for a rendezvous file a probe makes.
#[track_caller]
fn awaited(dir: &Dir, name: &str, tag: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    while !dir.0.join(name).exists() {
        assert!(Instant::now() < end, "no {name} from {tag}: {}", stderr(dir, tag));
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn lock_request_flushes_and_cleans_a_processes_real_memory() {
    use machvm_pagers::PagerConn;
    use machvm_protocol::emmi::{KernelToPager, ReturnPolicy};
    use machvm_protocol::wire::Role;
    need_real_memory!();
    let dir = Dir::new("real-lock");
    let _d = daemon(&dir.socket(), &["--memory", "real"]);
    let link = machvm_client::Connection::connect(&dir.socket(), Role::Pager, "scripted").unwrap();
    let mut pager = PagerConn::over(link).unwrap();
    let obj = pager.new_object().unwrap();
    pager.link.name_register("scripted", obj).unwrap();
    let page = |text: &str| {
        let mut p = vec![0u8; PAGE_SIZE as usize];
        p[..text.len()].copy_from_slice(text.as_bytes());
        p
    };
    let supply = |pager: &mut PagerConn<machvm_client::Connection>, first: &str| {
        let (o, offset, len, _) = pager.expect_request(Duration::from_secs(10)).unwrap();
        let mut data = Vec::new();
        for p in 0..len / PAGE_SIZE {
            data.extend(page(if offset + p * PAGE_SIZE == 0 { first } else { "" }));
        }
        pager.supply(o, offset, &data).unwrap();
    };
    let mut p = probe(
        &dir,
        "p",
        "map scripted 4 expect 0 0 v1 touch {}/A await {}/B expect 0 0 v2 put 0 1 dirty touch {}/C await {}/D expect 0 0 v2",
    );
    supply(&mut pager, "v1");
    awaited(&dir, "A", "p");
    // Flush: the page leaves the process's page tables and memory; its
    // next load asks the pager again, which now says v2.
    pager.lock_request(obj, 0, 4 * PAGE_SIZE, ReturnPolicy::None, true, machvm_protocol::VmProt::NONE).unwrap();
    touch(&dir, "B");
    supply(&mut pager, "v2");
    awaited(&dir, "C", "p");
    // Clean: the page the process stored into comes back dirty, and stays.
    pager.lock_request(obj, 0, 4 * PAGE_SIZE, ReturnPolicy::Dirty, false, machvm_protocol::VmProt::NONE).unwrap();
    let mut returned = Vec::new();
    while let Ok(r) = pager.recv(Some(Duration::from_millis(500))) {
        if let KernelToPager::DataReturn { offset, data, dirty, .. } = r.msg {
            returned.push((offset, data, dirty));
        }
    }
    let p1 = returned.iter().find(|(o, d, _)| *o <= PAGE_SIZE && *o + d.len() as u64 > PAGE_SIZE);
    let (o, d, dirty) =
        p1.unwrap_or_else(|| panic!("page 1 was not returned: {:?}", returned.iter().map(|r| r.0).collect::<Vec<_>>()));
    let at = (PAGE_SIZE - o) as usize;
    assert!(*dirty && d[at..at + 5] == *b"dirty", "page 1 came back with the process's store");
    touch(&dir, "D");
    succeeded(&dir, "p", &mut p);
}

#[test]
fn an_access_outside_every_mapping_is_sigsegv_reported_as_an_invalid_address() {
    need_real_memory!();
    let dir = Dir::new("real-stray");
    let _d = daemon(&dir.socket(), &["--memory", "real"]);
    let mut p = probe(&dir, "p", "alloc 4 put 0 0 fine stray");
    killed_by(&dir, "p", &mut p, SIGSEGV);
    let ex = exceptions(&dir.socket());
    let row = ex.iter().find(|r| r.pid == p.0.id()).unwrap_or_else(|| panic!("not reported: {ex:?}"));
    assert_eq!(row.error, KernError::InvalidAddress, "{row:?}");
    // Memory given back is a hole again: a use after vm_deallocate too.
    let mut q = probe(&dir, "q", "alloc 4 put 0 0 fine free 0 stray");
    killed_by(&dir, "q", &mut q, SIGSEGV);
    let ex = exceptions(&dir.socket());
    let row = ex.iter().find(|r| r.pid == q.0.id()).unwrap_or_else(|| panic!("not reported: {ex:?}"));
    assert_eq!(row.error, KernError::InvalidAddress, "{row:?}");
}

/// A file of `len` bytes in `dir` whose page `p` begins with the word
/// `first(p)` (zeroes elsewhere).
fn numbered_file(dir: &Dir, len: u64, first: impl Fn(u64) -> u64) -> std::path::PathBuf {
    let file = dir.0.join("data");
    let mut bytes = vec![0u8; len as usize];
    for (i, c) in bytes.chunks_mut(PAGE_SIZE as usize).enumerate() {
        c[..8].copy_from_slice(&first(i as u64).to_ne_bytes());
    }
    std::fs::write(&file, &bytes).unwrap();
    file
}

#[test]
fn a_file_pager_stages_its_pages_and_the_process_sees_the_files_bytes() {
    need_real_memory!();
    let dir = Dir::new("real-staged");
    let pages = 600u64;
    let file = numbered_file(&dir, pages * PAGE_SIZE - 100, |p| p * 3 + 1);
    let _d = daemon(&dir.socket(), &["--memory", "real"]);
    let f = file.to_str().unwrap();
    let _staged = pager(&dir.socket(), &["file", "--name", "staged", "--cluster", "64", f], "staged");
    let _msgs = pager(&dir.socket(), &["--data-in-message", "file", "--name", "msgs", "--cluster", "64", f], "msgs");
    let mem = RealMemory::attach(client(&dir.socket(), "reader"), 1 << 30).unwrap();
    let c = client(&dir.socket(), "look");
    for (name, staged) in [("staged", true), ("msgs", false)] {
        let (s0, m0) = (stat(&c, "received data_supply_staged"), stat(&c, "received data_supply"));
        let r = mem.map_name(name, (pages + 4) * PAGE_SIZE, false).unwrap();
        for p in 0..pages {
            assert_eq!(r.load_u64(p * PAGE_SIZE).unwrap(), p * 3 + 1, "{name}: page {p}");
        }
        // The tail of the last page and the pages past the file are zeroes.
        assert_eq!(r.load_u64(pages * PAGE_SIZE - 8).unwrap(), 0);
        assert_eq!(r.load_u64((pages + 2) * PAGE_SIZE).unwrap(), 0);
        let (s1, m1) = (stat(&c, "received data_supply_staged"), stat(&c, "received data_supply"));
        let clusters = pages.div_ceil(64);
        if staged {
            assert_eq!((s1 - s0, m1 - m0), (clusters, 0), "{name}: every page staged, none in a message");
        } else {
            assert_eq!((s1 - s0, m1 - m0), (0, clusters), "{name}: every page in a message");
        }
        r.deallocate().unwrap();
    }
}

#[test]
fn pages_a_process_only_reads_stay_clean_and_a_store_makes_its_page_dirty() {
    need_real_memory!();
    let dir = Dir::new("real-clean");
    let pages = 300u64;
    let file = numbered_file(&dir, pages * PAGE_SIZE, |p| p + 7);
    let _d = daemon(&dir.socket(), &["--memory", "real"]);
    let _p = pager(&dir.socket(), &["file", "--name", "f", "--cluster", "32", file.to_str().unwrap()], "f");
    let mem = RealMemory::attach(client(&dir.socket(), "reader"), 1 << 30).unwrap();
    let c = client(&dir.socket(), "look");
    let returned = || stat(&c, "sent data_return");
    // Read end to end, then unmapped: the file pager's object ends (it is
    // not cached), and nothing comes back to it.
    let r = mem.map_name("f", pages * PAGE_SIZE, false).unwrap();
    for p in 0..pages {
        assert_eq!(r.load_u64(p * PAGE_SIZE).unwrap(), p + 7);
    }
    r.deallocate().unwrap();
    wait_until("the object to end", || stat(&c, "sent terminate") == 1);
    assert_eq!(returned(), 0, "pages only read were written back");
    // Read, then one store: its page (and at most its run) comes back, with
    // the store, and the file has it.
    let r = mem.map_name("f", pages * PAGE_SIZE, false).unwrap();
    for p in 0..pages {
        assert_eq!(r.load_u64(p * PAGE_SIZE).unwrap(), p + 7);
    }
    r.store_u64(100 * PAGE_SIZE + 8, 0xfeed).unwrap();
    assert_eq!(r.load_u64(100 * PAGE_SIZE + 8).unwrap(), 0xfeed);
    r.deallocate().unwrap();
    wait_until("the object to end again", || stat(&c, "sent terminate") == 2);
    let pages_back = stat(&c, "pages_returned");
    assert!((1..=16).contains(&pages_back), "{pages_back} pages came back for one store");
    // The pager writes it back as it takes the returns (after the kernel
    // has sent them, maybe after the terminate is out too).
    let word = |at: u64| {
        let on_disk = std::fs::read(&file).unwrap();
        u64::from_ne_bytes(on_disk[at as usize..at as usize + 8].try_into().unwrap())
    };
    wait_until("the pager to write the store back", || word(100 * PAGE_SIZE + 8) == 0xfeed);
    assert_eq!(word(0), 7);
}

#[test]
fn under_pressure_fault_around_maps_only_each_addresss_own_page() {
    // Zero-fill ahead next to resident pages, with the task at its limit:
    // making room must not free a frame fault-around holds, which would
    // enter another offset's page at an address (the host refuses such a
    // page and counts a failure).
    need_real_memory!();
    let dir = Dir::new("real-around");
    let swap = dir.0.join("swap");
    let _d = daemon(&dir.socket(), &["--memory", "real", "--max-resident", "32", "--swap", swap.to_str().unwrap()]);
    let mut p = probe(&dir, "p", "alloc 300 fill 0 5 alloc 100 churn 1 9 20000 check 0 5");
    succeeded(&dir, "p", &mut p);
    let c = client(&dir.socket(), "look");
    assert!(stat(&c, "task_reclaims") > 300, "the task paged out");
    assert_eq!(stat(&c, "host_failures"), 0, "a page entered at another offset's address");
}

#[test]
fn a_large_cluster_under_a_tiny_resident_limit_does_not_thrash() {
    // Clusters are cut to half the kernel's resident limit: a 256-page
    // request under a limit of 8 would otherwise page out its own pages as
    // they arrive, 30 times per page.
    need_real_memory!();
    let dir = Dir::new("real-tiny");
    let _d = daemon(&dir.socket(), &["--memory", "real", "--resident-limit", "8"]);
    let _z = pager(&dir.socket(), &["zero", "--name", "z", "--cluster", "256"], "z");
    let mut p = probe(&dir, "p", "map z 256 fill 0 5 check 0 5 churn 0 3 2000");
    succeeded(&dir, "p", &mut p);
    let c = client(&dir.socket(), "look");
    let (pageouts, faults) = (stat(&c, "pageouts"), stat(&c, "faults"));
    assert!(pageouts <= 4 * faults + 64, "{pageouts} pageouts for {faults} faults");
}

//! Real memory under attack: hostile `memory_attach` arguments, hostile
//! memory-channel peers, and races. Tests of good behaviour pass; those
//! that show a defect are `#[ignore = "defect: ..."]`.

mod common;

use common::daemon::*;
use machvm_client::memory::RealMemory;
use machvm_client::{ClientError, Connection};
use machvm_host::{Arena, NewUserfaultfd};
use machvm_protocol::memory::{self as mem, MemReply, MemRequest};
use machvm_protocol::wire::{Call, MapArgs, Reply};
use machvm_protocol::{KernError, VmAddr, VmProt, PAGE_SIZE};
use rustix::fd::{AsFd, AsRawFd, OwnedFd};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use std::os::unix::fs::FileExt;
use std::time::Duration;

macro_rules! need_real_memory {
    () => {
        if let Some(why) = machvm_daemon::memory::unavailable() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

fn seqpacket() -> (OwnedFd, OwnedFd) {
    let (a, b) = rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
        .expect("socketpair");
    rustix::net::sockopt::set_socket_timeout(&a, rustix::net::sockopt::Timeout::Recv, Some(Duration::from_secs(10)))
        .unwrap();
    (a, b)
}

fn attach_call(conn: &Connection, uffd: i32, channel: i32, start: u64, len: u64) -> Result<Reply, ClientError> {
    conn.call(Call::MemoryAttach { uffd, channel, arena_start: VmAddr(start), arena_len: len })
}

/// A task attached by hand: the test holds the channel (and so the memfds
/// the daemon sends) itself.
struct Raw {
    arena: Arena,
    chan: OwnedFd,
    conn: Connection,
}

fn raw_attach(conn: Connection, len: u64) -> Raw {
    let arena = Arena::reserve(len).unwrap();
    let uffd = NewUserfaultfd::create().unwrap();
    let (mine, theirs) = seqpacket();
    let r = arena.range();
    attach_call(&conn, uffd.as_fd().as_raw_fd(), theirs.as_raw_fd(), r.start(), r.len()).expect("memory_attach");
    drop((uffd, theirs));
    Raw { arena, chan: mine, conn }
}

/// Sends raw bytes on the channel, and reads one reply (10 s at most).
fn ask_raw(chan: &OwnedFd, bytes: &[u8]) -> (MemReply, Vec<OwnedFd>) {
    machvm_host::fdpass::send_fds(chan, bytes, &[]).expect("send");
    let mut buf = vec![0u8; mem::MAX_PACKET];
    let got = machvm_host::fdpass::recv_fds(chan, &mut buf, mem::MAX_WINDOWS).expect("a reply within 10 s");
    assert!(got.bytes > 0, "the daemon closed the channel");
    (mem::decode(&buf[..got.bytes]).expect("a reply that decodes"), got.fds)
}

fn ask(chan: &OwnedFd, req: &MemRequest) -> (MemReply, Vec<OwnedFd>) {
    ask_raw(chan, &mem::encode(req))
}

/// The daemon still answers another client, and serves real memory.
#[track_caller]
fn daemon_still_serves(dir: &Dir) {
    let mem = RealMemory::attach(client(&dir.socket(), "bystander"), 1 << 28).expect("a bystander attaches");
    let r = mem.vm_allocate(4 * PAGE_SIZE).unwrap();
    r.write(PAGE_SIZE + 5, b"still here").unwrap();
    let mut b = [0u8; 10];
    r.read(PAGE_SIZE + 5, &mut b).unwrap();
    assert_eq!(&b, b"still here");
}

#[test]
fn memory_attach_refuses_hostile_descriptors_and_the_daemon_goes_on() {
    need_real_memory!();
    let dir = Dir::new("atk-fds");
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(60));
    let arena = Arena::reserve(1 << 24).unwrap();
    let (s, e) = (arena.range().start(), arena.range().len());
    let uffd = NewUserfaultfd::create().unwrap();
    let (_mine, theirs) = seqpacket();
    let (stream_a, _stream_b) =
        rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None).unwrap();
    let file = std::fs::File::open("/proc/self/status").unwrap();
    let (u, c, st, f) = (uffd.as_fd().as_raw_fd(), theirs.as_raw_fd(), stream_a.as_raw_fd(), file.as_raw_fd());
    let cases: Vec<(&str, i32, i32, u64, u64)> = vec![
        ("-1 -1", -1, -1, s, e),
        ("huge fds", i32::MAX, i32::MAX - 1, s, e),
        ("uffd as both", u, u, s, e),
        ("channel as both", c, c, s, e),
        ("a stream channel", u, st, s, e),
        ("a file as uffd", f, c, s, e),
        ("a file as channel", u, f, s, e),
        ("arena wraps", u, c, u64::MAX - 4095, 2 * PAGE_SIZE),
        ("arena unaligned", u, c, s + 1, e),
        ("arena zero", u, c, s, 0),
        ("arena at 0", u, c, 0, 1 << 20),
        ("arena past the top", u, c, 0x7fff_ffff_0000, 1 << 40),
    ];
    for (what, uf, ch, start, len) in cases {
        let conn = client(&dir.socket(), what);
        match attach_call(&conn, uf, ch, start, len) {
            Err(ClientError::Kern(_)) => {}
            other => panic!("{what}: memory_attach gave {other:?}"),
        }
        // The task is no worse for it: it can still attach properly.
        let mem = RealMemory::attach(conn, 1 << 24).unwrap_or_else(|e| panic!("{what}: then attach: {e:?}"));
        let r = mem.vm_allocate(PAGE_SIZE).unwrap();
        r.store_u64(8, 42).unwrap();
        assert_eq!(r.load_u64(8).unwrap(), 42, "{what}");
    }
    daemon_still_serves(&dir);
}

#[test]
fn memory_attach_of_a_uffd_handshaked_already_is_refused_and_the_task_can_attach_after() {
    need_real_memory!();
    let dir = Dir::new("atk-handshaked");
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(60));
    let arena = Arena::reserve(1 << 24).unwrap();
    let uffd = NewUserfaultfd::create().unwrap();
    let raw = rustix::io::fcntl_dupfd_cloexec(&uffd, 0).unwrap();
    let _shaken = uffd.handshake(machvm_host::uffd::Features::empty()).unwrap();
    let (_mine, theirs) = seqpacket();
    let conn = client(&dir.socket(), "handshaked");
    let r = attach_call(&conn, raw.as_raw_fd(), theirs.as_raw_fd(), arena.range().start(), arena.range().len());
    assert!(matches!(r, Err(ClientError::Kern(KernError::InvalidArgument))), "{r:?}");
    let mem = RealMemory::attach(conn, 1 << 24).unwrap();
    let r = mem.vm_allocate(PAGE_SIZE).unwrap();
    r.store_u64(0, 7).unwrap();
    assert_eq!(r.load_u64(0).unwrap(), 7);
    daemon_still_serves(&dir);
}

#[test]
fn a_second_memory_attach_is_refused_and_the_first_arena_keeps_working() {
    need_real_memory!();
    let dir = Dir::new("atk-twice");
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(60));
    let mem = RealMemory::attach(client(&dir.socket(), "twice"), 1 << 24).unwrap();
    let other = Arena::reserve(1 << 24).unwrap();
    let uffd = NewUserfaultfd::create().unwrap();
    let (_mine, theirs) = seqpacket();
    let r = attach_call(
        mem.connection(),
        uffd.as_fd().as_raw_fd(),
        theirs.as_raw_fd(),
        other.range().start(),
        other.range().len(),
    );
    assert!(matches!(r, Err(ClientError::Kern(_))), "a second attach: {r:?}");
    // The task's address space is still the first arena.
    let r = mem.vm_allocate(PAGE_SIZE).expect("vm_allocate after a refused second attach");
    assert!(mem.arena().range().contains(&machvm_host::PageRange::new(r.addr().0, r.len()).unwrap()));
    r.store_u64(0, 9).unwrap();
    assert_eq!(r.load_u64(0).unwrap(), 9);
    daemon_still_serves(&dir);
}

#[test]
fn garbage_oversized_and_fd_carrying_packets_are_malformed_and_the_channel_goes_on() {
    need_real_memory!();
    let dir = Dir::new("atk-garbage");
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(60));
    let raw = raw_attach(client(&dir.socket(), "garbage"), 1 << 24);
    for bytes in [vec![0xffu8; 1], vec![0xffu8; 17], vec![0u8; 1], vec![2u8; 5], vec![7u8; mem::MAX_PACKET + 4096]] {
        let (reply, fds) = ask_raw(&raw.chan, &bytes);
        assert!(matches!(reply, MemReply::Malformed(_)), "{} bytes: {reply:?}", bytes.len());
        assert!(fds.is_empty());
    }
    // A good request carrying descriptors: they are not kept.
    let f = std::fs::File::open("/proc/self/status").unwrap();
    let req = mem::encode(&MemRequest::Windows { start: VmAddr(raw.arena.range().start()), len: PAGE_SIZE });
    machvm_host::fdpass::send_fds(&raw.chan, &req, &[f.as_fd(), f.as_fd(), f.as_fd()]).unwrap();
    let mut buf = vec![0u8; mem::MAX_PACKET];
    let got = machvm_host::fdpass::recv_fds(&raw.chan, &mut buf, mem::MAX_WINDOWS).unwrap();
    let reply: MemReply = mem::decode(&buf[..got.bytes]).unwrap();
    assert!(matches!(reply, MemReply::Windows { .. }), "{reply:?}");
    // Many requests never read: the daemon does not block on its replies.
    for _ in 0..2000 {
        if machvm_host::fdpass::send_fds(&raw.chan, &req, &[]).is_err() {
            break;
        }
    }
    daemon_still_serves(&dir);
    let _ = raw.conn.task();
}

#[test]
fn windows_and_mapped_for_hostile_ranges_are_errors() {
    need_real_memory!();
    let dir = Dir::new("atk-ranges");
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(60));
    let raw = raw_attach(client(&dir.socket(), "ranges"), 1 << 24);
    let a = raw.arena.range();
    let bad = [
        (u64::MAX - 4095, 2 * PAGE_SIZE),
        (0, u64::MAX),
        (a.start() + 1, PAGE_SIZE),
        (a.start(), u64::MAX - a.start() + 1),
    ];
    for (start, len) in bad {
        for req in [MemRequest::Windows { start: VmAddr(start), len }, MemRequest::Mapped { start: VmAddr(start), len }]
        {
            let (reply, fds) = ask(&raw.chan, &req);
            assert!(matches!(reply, MemReply::Error(_)), "{req:?}: {reply:?}");
            assert!(fds.is_empty());
        }
    }
    // Outside the arena entirely, and the whole arena empty: no windows.
    let (reply, _) = ask(&raw.chan, &MemRequest::Windows { start: VmAddr(a.start()), len: a.len() });
    assert_eq!(reply, MemReply::Windows { windows: vec![], next: None });
    // Memory the task has but the process did not map (its arena's hole
    // is still anonymous PROT_NONE): Mapped is refused.
    let at = raw.conn.vm_allocate(VmAddr(0), 4 * PAGE_SIZE, true).unwrap();
    let (reply, _) = ask(&raw.chan, &MemRequest::Mapped { start: at, len: 4 * PAGE_SIZE });
    assert!(matches!(reply, MemReply::Error(_)), "Mapped of an unmapped window: {reply:?}");
    daemon_still_serves(&dir);
}

#[test]
fn windows_of_a_range_with_hundreds_of_entries_come_in_parts() {
    need_real_memory!();
    let dir = Dir::new("atk-many");
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(60));
    let mem = RealMemory::attach(client(&dir.socket(), "many"), 1 << 26).unwrap();
    let n = 600u64;
    let c = mem.connection();
    let at = c.vm_allocate(VmAddr(0), n * PAGE_SIZE, true).unwrap();
    // Every other page read-only: n entries.
    for i in (0..n).step_by(2) {
        c.vm_protect(VmAddr(at.0 + i * PAGE_SIZE), PAGE_SIZE, false, VmProt::READ).unwrap();
    }
    mem.map_windows(at, n * PAGE_SIZE).unwrap();
    let r = mem.region(at, n * PAGE_SIZE).unwrap();
    for i in (1..n).step_by(2) {
        r.store_u64(i * PAGE_SIZE, i).unwrap();
    }
    for i in 0..n {
        assert_eq!(r.load_u64(i * PAGE_SIZE).unwrap(), if i % 2 == 1 { i } else { 0 });
    }
}

#[test]
fn many_threads_fault_the_same_pages_at_once() {
    need_real_memory!();
    let dir = Dir::new("atk-threads");
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(60));
    let mem = RealMemory::attach(client(&dir.socket(), "threads"), 1 << 26).unwrap();
    let pages = 64u64;
    let r = mem.vm_allocate(pages * PAGE_SIZE).unwrap();
    let threads = 16u64;
    std::thread::scope(|s| {
        for t in 0..threads {
            let r = &r;
            s.spawn(move || {
                for round in 0..4 {
                    for p in 0..pages {
                        let p = (p + t * 3) % pages;
                        r.store_u64(p * PAGE_SIZE + t * 8, round * 1000 + t).unwrap();
                    }
                }
            });
        }
    });
    for p in 0..pages {
        for t in 0..threads {
            assert_eq!(r.load_u64(p * PAGE_SIZE + t * 8).unwrap(), 3000 + t, "page {p} thread {t}");
        }
    }
    // The daemon's view agrees.
    let back = mem.connection().load(VmAddr(r.addr().0 + 5 * PAGE_SIZE), 16 * 8).unwrap();
    for t in 0..threads as usize {
        assert_eq!(u64::from_ne_bytes(back[t * 8..t * 8 + 8].try_into().unwrap()), 3000 + t as u64);
    }
}

/// `r` of `owner` shared as the read-only proxy "ro", mapped by a raw
/// reader that asked for its windows: the reader, its windows and the
/// first window's memfd (what a hostile reader holds).
fn read_only_window_of(
    dir: &Dir,
    owner: &RealMemory,
    r: &machvm_client::memory::Region<'_>,
) -> (Raw, Vec<machvm_protocol::memory::MemWindow>, std::fs::File) {
    let oc = owner.connection();
    let proxy = match oc.call(Call::RegionProxy { address: r.addr(), max: VmProt::READ, len: r.len() }).unwrap() {
        Reply::Names { proxy, .. } => proxy,
        other => panic!("{other:?}"),
    };
    oc.name_register("ro", proxy).unwrap();
    let reader = raw_attach(client(&dir.socket(), "reader"), 1 << 26);
    let p = reader.conn.name_lookup("ro").unwrap();
    let ro = VmProt::READ;
    let at = reader
        .conn
        .vm_map(MapArgs { cur: ro, max: ro, ..machvm_client::map_anywhere(4 * PAGE_SIZE, Some(p)) })
        .unwrap();
    let (reply, fds) = ask(&reader.chan, &MemRequest::Windows { start: at, len: 4 * PAGE_SIZE });
    let MemReply::Windows { windows, .. } = reply else { panic!("{reply:?}") };
    assert!(!windows.is_empty());
    assert!(!windows[0].prot.contains(VmProt::WRITE));
    let file = std::fs::File::from(fds.into_iter().next().unwrap());
    (reader, windows, file)
}

/// A task given only a read-only proxy of another task's memory gets,
/// on its memory channel, a read-only descriptor of the real object's
/// memfd: it can neither write nor punch the memory it may only read.
#[test]
fn a_read_only_proxy_does_not_let_its_holder_change_the_owners_memory() {
    need_real_memory!();
    let dir = Dir::new("atk-ro-memfd");
    let d = daemon(&dir.socket(), &["--memory", "real", "--proxy-version", "paging"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(60));
    let owner = RealMemory::attach(client(&dir.socket(), "owner"), 1 << 26).unwrap();
    let r = owner.vm_allocate(4 * PAGE_SIZE).unwrap();
    r.write(0, b"the owner's secret").unwrap();
    r.write(PAGE_SIZE, b"second page").unwrap();
    let (_reader, windows, file) = read_only_window_of(&dir, &owner, &r);
    let wrote = file.write_at(b"EVIL", windows[0].offset);
    let punched = rustix::fs::fallocate(
        &file,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        windows[0].offset + PAGE_SIZE,
        PAGE_SIZE,
    );
    let mut b = [0u8; 18];
    r.read(0, &mut b).unwrap();
    let mut b2 = [0u8; 11];
    r.read(PAGE_SIZE, &mut b2).unwrap();
    assert_eq!(
        (&b[..], &b2[..]),
        (&b"the owner's secret"[..], &b"second page"[..]),
        "the reader's pwrite gave {wrote:?}, its punch {punched:?}"
    );
}

/// A hole punched behind the daemon's back, by a reader of a read-only
/// proxy that reopened its (read-only) descriptor writable through
/// `/proc` (root can; confinement is what will stop it): the owner's next
/// load of the page must not hang (nor the daemon's other clients).
#[test]
fn a_page_punched_by_a_reader_does_not_wedge_the_owner() {
    need_real_memory!();
    let dir = Dir::new("atk-punch");
    let d = daemon(&dir.socket(), &["--memory", "real", "--proxy-version", "paging"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(40));
    let owner = RealMemory::attach(client(&dir.socket(), "owner"), 1 << 26).unwrap();
    let r = owner.vm_allocate(4 * PAGE_SIZE).unwrap();
    r.write(0, b"the owner's secret").unwrap();
    r.write(PAGE_SIZE, b"second page").unwrap();
    let (_reader, windows, read_only) = read_only_window_of(&dir, &owner, &r);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", read_only.as_raw_fd()))
        .expect("root reopens the read-only descriptor writable");
    rustix::fs::fallocate(
        &file,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        windows[0].offset + PAGE_SIZE,
        PAGE_SIZE,
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        let r = &r;
        s.spawn(move || {
            let v = r.load_u64(PAGE_SIZE);
            let _ = tx.send(v.map_err(|e| format!("{e:?}")));
        });
        let got = rx.recv_timeout(Duration::from_secs(5));
        let other = std::thread::spawn({
            let dir_socket = dir.socket();
            move || {
                let mem = RealMemory::attach(client(&dir_socket, "bystander"), 1 << 24).unwrap();
                let r = mem.vm_allocate(PAGE_SIZE).unwrap();
                r.store_u64(0, 5).unwrap();
                r.load_u64(0).unwrap()
            }
        });
        let mut by = None;
        for _ in 0..100 {
            if other.is_finished() {
                by = Some(other.join().map_err(|_| "panicked"));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("owner's load: {got:?} after {:?}; bystander: {by:?}", start.elapsed());
        assert!(got.is_ok(), "the owner's load of the punched page hangs (bystander meanwhile: {by:?})");
    });
}

/// A raw task whose window is placed and registered, and the test's own
/// Region-like access to it (volatile word loads and stores).
fn raw_window(raw: &Raw, pages: u64) -> u64 {
    let at = raw.conn.vm_allocate(VmAddr(0), pages * PAGE_SIZE, true).unwrap();
    let (reply, fds) = ask(&raw.chan, &MemRequest::Windows { start: at, len: pages * PAGE_SIZE });
    let MemReply::Windows { windows, next: None } = reply else { panic!("{reply:?}") };
    for (w, fd) in windows.iter().zip(&fds) {
        raw.arena.place(machvm_host::PageRange::new(w.start.0, w.len).unwrap(), fd, w.offset).unwrap();
    }
    let (reply, _) = ask(&raw.chan, &MemRequest::Mapped { start: at, len: pages * PAGE_SIZE });
    assert_eq!(reply, MemReply::Mapped);
    at.0
}

fn store(raw: &Raw, at: u64, v: u64) {
    raw.arena.write(at, &v.to_ne_bytes()).unwrap();
}

fn load(raw: &Raw, at: u64) -> u64 {
    let mut b = [0u8; 8];
    raw.arena.read(at, &mut b).unwrap();
    u64::from_ne_bytes(b)
}

#[test]
fn faults_are_still_served_after_the_process_closes_its_channel() {
    need_real_memory!();
    let dir = Dir::new("atk-close");
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(30));
    let mut raw = raw_attach(client(&dir.socket(), "closer"), 1 << 24);
    let at = raw_window(&raw, 8);
    store(&raw, at, 11);
    // Close the channel (replace it with a fresh, unconnected end).
    raw.chan = seqpacket().0;
    for p in 0..8 {
        store(&raw, at + p * PAGE_SIZE + 8, p);
    }
    assert_eq!(load(&raw, at), 11);
    for p in 0..8 {
        assert_eq!(load(&raw, at + p * PAGE_SIZE + 8), p);
    }
    daemon_still_serves(&dir);
}

#[test]
fn madvise_dontneed_on_a_window_keeps_its_data() {
    need_real_memory!();
    let dir = Dir::new("atk-dontneed");
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(30));
    let mem = RealMemory::attach(client(&dir.socket(), "dontneed"), 1 << 24).unwrap();
    let r = mem.vm_allocate(8 * PAGE_SIZE).unwrap();
    for p in 0..8 {
        r.store_u64(p * PAGE_SIZE, 100 + p).unwrap();
    }
    // SAFETY: the region is this test's own window; no reference into it.
    unsafe { rustix::mm::madvise(r.as_ptr().cast(), r.len() as usize, rustix::mm::Advice::LinuxDontNeed) }.unwrap();
    for p in 0..8 {
        assert_eq!(r.load_u64(p * PAGE_SIZE).unwrap(), 100 + p);
    }
    assert_eq!(mem.connection().load(VmAddr(r.addr().0 + 3 * PAGE_SIZE), 8).unwrap(), 103u64.to_ne_bytes().to_vec());
}

/// A process punching its own window (`MADV_REMOVE`) loses what it
/// stored there; its next access must not hang (zeroes, its data, or a
/// signal would all do).
#[test]
fn madvise_remove_on_a_window_then_a_load_does_not_hang() {
    need_real_memory!();
    let dir = Dir::new("atk-remove");
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(20));
    let mem = RealMemory::attach(client(&dir.socket(), "remove"), 1 << 24).unwrap();
    let r = mem.vm_allocate(2 * PAGE_SIZE).unwrap();
    r.store_u64(0, 77).unwrap();
    // SAFETY: as above.
    unsafe { rustix::mm::madvise(r.as_ptr().cast(), PAGE_SIZE as usize, rustix::mm::Advice::LinuxRemove) }.unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let r = &r;
        s.spawn(move || {
            let _ = tx.send(r.load_u64(0).map_err(|e| format!("{e:?}")));
        });
        let got = rx.recv_timeout(Duration::from_secs(5));
        assert!(got.is_ok(), "the load after MADV_REMOVE hangs");
    });
}

static ITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// This test binary run again as a hostile task process (`ATTACK_CHILD`
/// names what it does); as a test of its own, it does nothing.
#[test]
fn attack_child() {
    let Ok(mode) = std::env::var("ATTACK_CHILD") else { return };
    let quiet = mode.ends_with("-quiet");
    let mode = mode.trim_end_matches("-quiet").to_string();
    let socket = std::path::PathBuf::from(std::env::var("ATTACK_SOCKET").unwrap());
    let mem = RealMemory::attach(client(&socket, &mode), 1 << 30).unwrap();
    let pages = 64u64;
    let r = mem.vm_allocate(pages * PAGE_SIZE).unwrap();
    for p in 0..pages {
        r.store_u64(p * PAGE_SIZE, p).unwrap();
    }
    let (addr, len) = (r.addr(), r.len());
    let go = std::sync::atomic::AtomicBool::new(false);
    let big = if mode == "exit-mid-fault" { Some(mem.vm_allocate(512 << 20).unwrap()) } else { None };
    std::thread::scope(|s| {
        let (r, go) = (&r, &go);
        let stores = mode == "protect-race";
        s.spawn(move || {
            let mut p = 0;
            loop {
                if stores {
                    r.store_u64(p * PAGE_SIZE + 8, p).unwrap();
                } else {
                    std::hint::black_box(r.load_u64(p * PAGE_SIZE).unwrap());
                }
                p = (p + 1) % pages;
                go.store(true, std::sync::atomic::Ordering::Relaxed);
                ITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        while !go.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(50));
        match mode.as_str() {
            // The windows stay mapped in this process.
            "dealloc-race" => mem.connection().vm_deallocate(addr, len).unwrap(),
            "protect-race" => mem.connection().vm_protect(addr, len, false, VmProt::READ).unwrap(),
            "exit-mid-fault" => {
                // Many threads fault fresh pages; the parent kills us.
                let big = big.as_ref().unwrap();
                for t in 0..16u64 {
                    s.spawn(move || {
                        let mut p = t;
                        loop {
                            big.store_u64((p % (128 << 10)) * PAGE_SIZE, p).unwrap();
                            p += 16;
                        }
                    });
                }
                std::thread::sleep(Duration::from_secs(30));
            }
            other => panic!("no mode {other}"),
        }
        let before = ITERS.load(std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(2));
        let after = ITERS.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("{mode}: the racing thread did {} accesses in the 2 s after the call", after - before);
        if quiet {
            // Only the racing thread touched the range.
        } else if mode == "protect-race" {
            r.store_u64(0, 99).unwrap();
            eprintln!(
                "{mode}: and a store after vm_protect(READ) returned; the daemon reads {:?}",
                mem.connection().load(addr, 8)
            );
        } else {
            eprintln!("{mode}: a load after vm_deallocate returned {:?}", r.load_u64(0));
        }
        eprintln!("{mode}: still alive after the race");
        std::process::exit(3);
    });
}

fn spawn_child(dir: &Dir, mode: &str) -> Proc {
    let err = std::fs::File::create(dir.0.join(format!("{mode}.err"))).unwrap();
    Proc(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["attack_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("ATTACK_CHILD", mode)
            .env("ATTACK_SOCKET", dir.socket())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap(),
    )
}

#[track_caller]
fn child_killed_by(dir: &Dir, mode: &str, p: &mut Proc, sig: i32) {
    use std::os::unix::process::ExitStatusExt;
    let s = p.wait_exit(Duration::from_secs(20)).unwrap_or_else(|| panic!("{mode} still runs"));
    let err = std::fs::read_to_string(dir.0.join(format!("{mode}.err"))).unwrap_or_default();
    eprintln!("{mode}: {s}: {err}");
    assert_eq!(s.signal(), Some(sig), "{mode} ended with {s}: {err}");
}

#[test]
fn vm_deallocate_under_a_thread_that_loads_there_is_sigsegv() {
    need_real_memory!();
    let dir = Dir::new("atk-dealloc");
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(60));
    let mut c = spawn_child(&dir, "dealloc-race");
    child_killed_by(&dir, "dealloc-race", &mut c, 11);
    daemon_still_serves(&dir);
}

#[test]
fn vm_protect_read_only_under_a_thread_that_stores_there_is_sigsegv() {
    need_real_memory!();
    let dir = Dir::new("atk-protect");
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(60));
    let mut c = spawn_child(&dir, "protect-race");
    child_killed_by(&dir, "protect-race", &mut c, 11);
    daemon_still_serves(&dir);
}

#[test]
fn a_process_killed_while_many_threads_fault_leaves_the_daemon_clean() {
    need_real_memory!();
    let dir = Dir::new("atk-exit");
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let pid = d.0.id();
    let _w = Watchdog::new(pid, Duration::from_secs(90));
    let base = threads_and_fds(pid);
    for round in 0..5 {
        let mut c = spawn_child(&dir, "exit-mid-fault");
        std::thread::sleep(Duration::from_millis(300 + 100 * round));
        c.kill();
        // The daemon answers (a plain task: this test process itself
        // attaches no real memory, which it would hold until it exits).
        client(&dir.socket(), "plain").vm_allocate(VmAddr(0), PAGE_SIZE, true).unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    let links: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| std::fs::read_link(e.path()).map(|l| l.to_string_lossy().into_owned()).unwrap_or_default())
        .collect();
    eprintln!(
        "the daemon's fds now: {links:?}; stats: {:?}",
        client(&dir.socket(), "look").inspect(machvm_protocol::wire::InspectWhat::Stats)
    );
    wait_threads_and_fds_back(pid, base, "after five processes were killed mid-fault");
}

/// The racing thread alone: its access after the call must end the
/// process (SIGSEGV) promptly, not block for good.
fn racing_thread_alone(tag: &str, child: &str) {
    let dir = Dir::new(tag);
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(60));
    let mut c = spawn_child(&dir, child);
    let _ = c.wait_exit(Duration::from_secs(20));
    let rows = client(&dir.socket(), "look").inspect(machvm_protocol::wire::InspectWhat::Exceptions);
    eprintln!("exceptions: {rows:?}");
    child_killed_by(&dir, child, &mut c, 11);
}

#[test]
fn the_racing_thread_alone_gets_sigsegv_after_vm_deallocate() {
    need_real_memory!();
    racing_thread_alone("atk-dealloc-quiet", "dealloc-race-quiet");
}

#[test]
fn the_racing_thread_alone_gets_sigsegv_after_vm_protect() {
    need_real_memory!();
    racing_thread_alone("atk-protect-quiet", "protect-race-quiet");
}

/// A live process that attaches and ends its task again and again: the
/// daemon keeps each uffd and pidfd until the process exits, so one
/// process grows the daemon's descriptor table without bound (and can
/// exhaust it: then no one can connect).
#[test]
fn attaching_and_detaching_in_a_loop_does_not_grow_the_daemons_descriptors() {
    need_real_memory!();
    let dir = Dir::new("atk-loop");
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let pid = d.0.id();
    let _w = Watchdog::new(pid, Duration::from_secs(120));
    let base = threads_and_fds(pid);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let nofile = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or("").to_string();
    let mut failed = None;
    let attach_once = || -> Result<(), String> {
        let role = machvm_protocol::wire::Role::Task { child_token: None };
        let conn = Connection::connect(&dir.socket(), role, "loop").map_err(|e| format!("connect: {e:?}"))?;
        RealMemory::attach(conn, 16 * PAGE_SIZE).map(drop).map_err(|e| format!("attach: {e:?}"))
    };
    // 400 rounds: a descriptor pair kept per round would be 800.
    for i in 0..400 {
        if let Err(first) = attach_once() {
            // Said, and tried once more: only a failure that stays fails
            // the test (a loaded machine may refuse one round).
            eprintln!("round {i}: {first}");
            std::thread::sleep(Duration::from_millis(50));
            if let Err(again) = attach_once() {
                failed = Some(format!("round {i}: {first}, then {again}"));
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let now = threads_and_fds(pid);
    eprintln!("base {base:?}, now {now:?}, {nofile}, failed: {failed:?}");
    assert!(failed.is_none(), "{failed:?} (daemon fds {now:?}, {nofile})");
    assert!(now.1 < base.1 + 64, "the daemon holds {} descriptors, {} before", now.1, base.1);
}

/// An arena the process never reserved (addresses with nothing mapped):
/// refused, and the task can still attach a real one after.
#[test]
fn memory_attach_of_an_unreserved_arena_is_refused_and_the_task_can_attach_after() {
    need_real_memory!();
    let dir = Dir::new("atk-unreserved");
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(60));
    // Reserve, note the range, and give it back: nothing is mapped there.
    let range = Arena::reserve(1 << 24).unwrap().range();
    let uffd = NewUserfaultfd::create().unwrap();
    let (_mine, theirs) = seqpacket();
    let conn = client(&dir.socket(), "unreserved");
    let r = attach_call(&conn, uffd.as_fd().as_raw_fd(), theirs.as_raw_fd(), range.start(), range.len());
    assert!(matches!(r, Err(ClientError::Kern(_))), "an unreserved arena: {r:?}");
    let mem = RealMemory::attach(conn, 1 << 24).expect("a real attach after the refused one");
    let r = mem.vm_allocate(PAGE_SIZE).unwrap();
    r.store_u64(0, 1).unwrap();
    assert_eq!(r.load_u64(0).unwrap(), 1);
}

#[test]
fn memory_attach_after_mapping_memory_is_refused() {
    need_real_memory!();
    let dir = Dir::new("atk-after-map");
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(60));
    let conn = client(&dir.socket(), "after-map");
    conn.vm_allocate(VmAddr(0), 4 * PAGE_SIZE, true).unwrap();
    let r = RealMemory::attach(conn, 1 << 24);
    assert!(matches!(r, Err(ClientError::Kern(KernError::Failure))), "{r:?}");
    daemon_still_serves(&dir);
}

/// A process that keeps its copy of the channel end it gave the daemon
/// and makes the shared open file blocking: the daemon must not block on
/// it (its fault server serves every process).
#[test]
fn a_channel_made_blocking_by_its_process_does_not_hang_the_fault_server() {
    need_real_memory!();
    let dir = Dir::new("atk-blocking");
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(30));
    let conn = client(&dir.socket(), "blocker");
    let arena = Arena::reserve(1 << 24).unwrap();
    let uffd = NewUserfaultfd::create().unwrap();
    let (mine, theirs) = seqpacket();
    let r = arena.range();
    attach_call(&conn, uffd.as_fd().as_raw_fd(), theirs.as_raw_fd(), r.start(), r.len()).unwrap();
    // The daemon's copy shares the open file: clear its O_NONBLOCK.
    rustix::fs::fcntl_setfl(&theirs, rustix::fs::OFlags::empty()).unwrap();
    let (reply, _) = ask(&mine, &MemRequest::Windows { start: VmAddr(r.start()), len: PAGE_SIZE });
    assert!(matches!(reply, MemReply::Windows { .. }), "{reply:?}");
    let socket = dir.socket();
    let by = std::thread::spawn(move || {
        let mem = RealMemory::attach(client(&socket, "bystander"), 1 << 24).unwrap();
        let r = mem.vm_allocate(PAGE_SIZE).unwrap();
        r.store_u64(0, 5).unwrap();
        r.load_u64(0).unwrap()
    });
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while !by.is_finished() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(by.is_finished(), "a bystander's first store hangs for 5 s");
    assert_eq!(by.join().unwrap(), 5);
    drop((conn, uffd));
}

/// No descriptor kept, no raw protocol: a reader of a read-only proxy,
/// through the client library, punches the owner's page with one
/// `madvise(MADV_REMOVE)` of its (host-writable) window.
#[test]
fn madvise_remove_by_a_read_only_reader_leaves_the_owners_data() {
    need_real_memory!();
    let dir = Dir::new("atk-ro-remove");
    let d = daemon(&dir.socket(), &["--memory", "real", "--proxy-version", "paging"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(60));
    let owner = RealMemory::attach(client(&dir.socket(), "owner"), 1 << 26).unwrap();
    let r = owner.vm_allocate(4 * PAGE_SIZE).unwrap();
    r.write(0, b"the owner's secret").unwrap();
    let oc = owner.connection();
    let proxy = match oc.call(Call::RegionProxy { address: r.addr(), max: VmProt::READ, len: r.len() }).unwrap() {
        Reply::Names { proxy, .. } => proxy,
        other => panic!("{other:?}"),
    };
    oc.name_register("ro", proxy).unwrap();
    let reader = RealMemory::attach(client(&dir.socket(), "reader"), 1 << 26).unwrap();
    let rr = reader.map_name("ro", 4 * PAGE_SIZE, false).unwrap();
    let mut b = [0u8; 18];
    rr.read(0, &mut b).unwrap();
    assert_eq!(&b, b"the owner's secret");
    // SAFETY: the reader's own window; no reference into it.
    let removed =
        unsafe { rustix::mm::madvise(rr.as_ptr().cast(), PAGE_SIZE as usize, rustix::mm::Advice::LinuxRemove) };
    let seen = oc.load(r.addr(), 18).unwrap();
    assert_eq!(&seen[..], b"the owner's secret", "after the reader's MADV_REMOVE ({removed:?})");
}

/// A process killed while its fault waits for a slow pager: the pager's
/// late answer finds no one, and the page serves the next process.
#[test]
fn a_process_killed_while_its_fault_waits_for_a_pager_leaves_the_page_usable() {
    need_real_memory!();
    let dir = Dir::new("atk-parked-exit");
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(60));
    let _slow = pager(&dir.socket(), &["zero", "--name", "slow", "--delay-ms", "1500"], "slow");
    let err = std::fs::File::create(dir.0.join("victim.err")).unwrap();
    let mut victim = Proc(
        std::process::Command::new(machvm())
            .arg("--socket")
            .arg(dir.socket())
            .args(["probe", "--", "map", "slow", "4", "touch"])
            .arg(dir.0.join("F"))
            .args(["expect", "0", "0", "never"])
            .env("MACHVM_ARENA_MIB", "1024")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap(),
    );
    wait_until("the victim to map", || dir.0.join("F").exists());
    std::thread::sleep(Duration::from_millis(300));
    victim.kill();
    // Many threads of this process fault the same pages of the same slow
    // object at once, while the dead process's request is still out.
    let mem = RealMemory::attach(client(&dir.socket(), "after"), 1 << 26).unwrap();
    let r = mem.map_name("slow", 4 * PAGE_SIZE, false).unwrap();
    std::thread::scope(|s| {
        for t in 0..12u64 {
            let r = &r;
            s.spawn(move || {
                assert_eq!(r.load_u64((t % 4) * PAGE_SIZE + 4000).unwrap(), 0);
                r.store_u64((t % 4) * PAGE_SIZE + t * 8, t + 1).unwrap();
            });
        }
    });
    for t in 0..12u64 {
        assert_eq!(r.load_u64((t % 4) * PAGE_SIZE + t * 8).unwrap(), t + 1);
    }
    daemon_still_serves(&dir);
}

/// A hostile pager's staged supplies: one longer than a cluster is
/// refused, and an unrequested cluster into a kernel at its resident
/// limit stays within the limit (the message path's rule), however large
/// the staging area the pager attached.
#[test]
fn staged_supplies_stay_within_a_cluster_and_the_resident_limit() {
    use machvm_pagers::PagerConn;
    use machvm_protocol::emmi::{KernelToPager, PagerToKernel};
    use machvm_protocol::wire::Role;
    need_real_memory!();
    let dir = Dir::new("atk-staged-flood");
    let d = daemon(&dir.socket(), &["--memory", "real", "--resident-limit", "32"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(60));
    let conn = Connection::connect(&dir.socket(), Role::Pager, "flood").unwrap();
    let mut p = PagerConn::over(conn).unwrap();
    let obj = p.new_object().unwrap();
    p.link.name_register("flood", obj).unwrap();
    let size = 128u64 << 20;
    let mut staging = p.link.staging_attach(size).unwrap();
    staging.bytes_mut().fill(0x5a);
    let mem = RealMemory::attach(client(&dir.socket(), "reader"), 1 << 30).unwrap();
    let r = mem.map_name("flood", 4 * PAGE_SIZE, false).unwrap();
    let t = Duration::from_secs(10);
    std::thread::scope(|s| {
        let read = s.spawn(|| r.load_u64(0).unwrap());
        let init = p.recv(Some(t)).unwrap();
        assert!(matches!(init.msg, KernelToPager::Init { .. }), "{:?}", init.msg);
        p.ready(obj).unwrap();
        let (_, offset, len, _) = p.expect_request(t).unwrap();
        assert_eq!(offset, 0);
        p.supply(obj, 0, &vec![7u8; len as usize]).unwrap();
        assert_eq!(read.join().unwrap(), u64::from_ne_bytes([7; 8]));
    });
    let staged = |offset: u64, length: u64| {
        let m =
            PagerToKernel::DataSupplyStaged { offset, length, staging_offset: 0, lock: VmProt::NONE, precious: false };
        p.call_with_reply(obj, m)
    };
    let cluster = 256 * PAGE_SIZE;
    assert_eq!(staged(1 << 30, 2 * cluster), Err(KernError::InvalidArgument), "more than a cluster at once");
    assert!(staged(1 << 30, cluster).is_ok());
    let c = client(&dir.socket(), "look");
    assert!(stat(&c, "resident") <= 32, "{} pages resident, over the limit of 32", stat(&c, "resident"));
    // The reader's page is still right (paged out and asked again, or kept).
    std::thread::scope(|s| {
        let read = s.spawn(|| r.load_u64(0).unwrap());
        if let Ok((_, offset, len, _)) = p.expect_request(Duration::from_millis(500)) {
            p.supply(obj, offset, &vec![7u8; len as usize]).unwrap();
        }
        assert_eq!(read.join().unwrap(), u64::from_ne_bytes([7; 8]));
    });
    daemon_still_serves(&dir);
}

/// Descriptors a hostile pager may name as its staging area: everything
/// but a memfd of tmpfs at least as long as the area is refused with
/// `KERN_INVALID_ARGUMENT`, and the daemon goes on.
#[test]
fn staging_attach_refuses_every_descriptor_but_a_long_enough_memfd() {
    use rustix::fs::{MemfdFlags as M, OFlags};
    need_real_memory!();
    let dir = Dir::new("atk-staging-fds");
    let d = daemon(&dir.socket(), &["--memory", "real"]);
    let _w = Watchdog::new(d.0.id(), Duration::from_secs(60));
    let c = Connection::connect(&dir.socket(), machvm_protocol::wire::Role::Pager, "pager").unwrap();
    let attach = |fd: i32, len: u64| c.call(Call::StagingAttach { memfd: fd, len });
    let memfd = |flags: M, size: u64| {
        let fd = rustix::fs::memfd_create("staging", flags).unwrap();
        rustix::fs::ftruncate(&fd, size).unwrap();
        fd
    };
    let reopen = |fd: &OwnedFd, how: OFlags| {
        rustix::fs::open(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(), how, rustix::fs::Mode::empty()).unwrap()
    };
    let uffd = NewUserfaultfd::create().unwrap();
    let (sock, _other) = seqpacket();
    let (pipe, _w2) = std::io::pipe().unwrap();
    let zero = std::fs::File::open("/dev/zero").unwrap();
    let good = memfd(M::ALLOW_SEALING, 4 * PAGE_SIZE);
    let path = reopen(&good, OFlags::PATH);
    let unsealable = memfd(M::empty(), 4 * PAGE_SIZE);
    let sealed = memfd(M::ALLOW_SEALING, 4 * PAGE_SIZE);
    rustix::fs::fcntl_add_seals(&sealed, rustix::fs::SealFlags::SEAL).unwrap();
    let huge = rustix::fs::memfd_create("huge", M::ALLOW_SEALING | M::HUGETLB).ok();
    let mut cases: Vec<(&str, i32, u64)> = vec![
        ("a userfaultfd", uffd.as_fd().as_raw_fd(), PAGE_SIZE),
        ("a socket", sock.as_raw_fd(), PAGE_SIZE),
        ("a pipe", pipe.as_raw_fd(), PAGE_SIZE),
        ("/dev/zero", zero.as_raw_fd(), PAGE_SIZE),
        ("an O_PATH memfd", path.as_raw_fd(), PAGE_SIZE),
        ("a memfd without sealing", unsealable.as_raw_fd(), PAGE_SIZE),
        ("a memfd sealed against seals", sealed.as_raw_fd(), PAGE_SIZE),
        ("longer than the memfd", good.as_raw_fd(), 8 * PAGE_SIZE),
        ("a huge length", good.as_raw_fd(), !(PAGE_SIZE - 1)),
        ("an unaligned length", good.as_raw_fd(), 100),
        ("no length", good.as_raw_fd(), 0),
        ("no such descriptor", 999_999, PAGE_SIZE),
        ("a negative descriptor", -1, PAGE_SIZE),
    ];
    if let Some(h) = &huge {
        if rustix::fs::ftruncate(h, 2 << 20).is_ok() {
            cases.push(("a hugetlb memfd", h.as_raw_fd(), 2 << 20));
        }
    }
    for (what, fd, len) in cases {
        match attach(fd, len) {
            Err(ClientError::Kern(KernError::InvalidArgument)) => {}
            other => panic!("{what}: staging_attach gave {other:?}"),
        }
    }
    // A memfd refused for its length is left as it was (not sealed).
    assert!(rustix::fs::ftruncate(&good, 2 * PAGE_SIZE).is_ok());
    assert!(matches!(attach(good.as_raw_fd(), 2 * PAGE_SIZE), Ok(Reply::Unit)));
    daemon_still_serves(&dir);
}

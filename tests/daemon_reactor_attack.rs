//! Adversarial probes of machvmd's event loops (`crates/daemon/src/reactor.rs`
//! and `conn.rs`): each test states a rule a hostile or merely unusual
//! client broke. Every process is killed by its guard; every wait has a
//! deadline.

mod common;
use common::daemon::{client, daemon, stat, Dir, Watchdog};
use machvm_client::{map_anywhere, ClientError, Connection};
use machvm_pagers::PagerConn;
use machvm_protocol::emmi::{CopyStrategy, KernelToPager, PagerToKernel};
use machvm_protocol::frame::{encode_frame, read_frame, MAX_FRAME};
use machvm_protocol::wire::{
    Call, InspectWhat, ProxyVersion, Reply, Request, Response, Role, MAX_NAME_LEN, PROTOCOL_VERSION,
};
use machvm_protocol::{VmAddr, VmProt, PAGE_SIZE};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const P: u64 = PAGE_SIZE;

fn hello_frame(name: &str) -> Vec<u8> {
    encode_frame(&Request::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Task { child_token: None },
        name: name.into(),
    })
    .unwrap()
}

/// Found by attack: a peer that writes its calls and then half-closes
/// (`shutdown(SHUT_WR)`, as a batch client or `nc -N` does) had its task
/// terminated as soon as the end of its stream was read, before the calls
/// read with it were made: when the calls and the end of stream arrived
/// in one read (a hello, three calls and the end written at once), every
/// call was answered `KERN_INVALID_TASK`, while the same bytes with a
/// pause before the end were made. The calls a peer sent before its end
/// are made, in order.
#[test]
fn calls_sent_before_a_half_close_are_made() {
    let dir = Dir::new("reactor-halfclose");
    let _d = daemon(&dir.socket(), &[]);
    for round in 0..10 {
        let mut s = UnixStream::connect(dir.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut bytes = hello_frame("batch");
        for seq in 1..=3 {
            let call = Call::VmAllocate { address: VmAddr(0), size: P, anywhere: true };
            bytes.extend(encode_frame(&Request::Call { seq, call }).unwrap());
        }
        s.write_all(&bytes).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(matches!(read_frame::<Response>(&mut s), Ok(Some(Response::Welcome { .. }))), "round {round}");
        for seq in 1..=3 {
            match read_frame::<Response>(&mut s) {
                Ok(Some(Response::Reply { seq: got, result: Ok(_) })) if got == seq => {}
                other => panic!("round {round}, call {seq}: {other:?}"),
            }
        }
        assert!(matches!(read_frame::<Response>(&mut s), Ok(None)), "round {round}: the connection closes");
    }
    let c = client(&dir.socket(), "after");
    assert!(c.vm_allocate(VmAddr(0), P, true).is_ok());
}

/// The soft and hard limits on this process's open files.
fn nofile() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let n: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (n[0], n[1])
}

/// Found by attack: `inspect(Tasks)` (`machvm ps`) answered with every
/// connection's row whatever the size, unlike the other listings, which
/// are `KERN_RESOURCE_SHORTAGE` past a frame: with some 8000 connections
/// named with 255 bytes each, the reply could not be framed and the
/// daemon closed the connection that asked ("reply not sent"). Whoever
/// opens enough connections so breaks `machvm ps` for everyone. The
/// listing is a Mach error when too large, and the asker stays connected.
#[test]
fn a_tasks_listing_too_large_for_a_frame_does_not_cost_the_connection() {
    // Each row holds at least the name and 9 bytes more.
    let rows = MAX_FRAME / (MAX_NAME_LEN + 9) + 1;
    let want = rows as u64 + 64;
    let (soft, hard) = nofile();
    if soft < want {
        if hard < want {
            eprintln!("skipped: {want} descriptors needed, the hard limit is {hard}");
            return;
        }
        let me = std::process::id().to_string();
        let ok = std::process::Command::new("prlimit")
            .args(["--pid", &me, &format!("--nofile={hard}:{hard}")])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: {want} descriptors needed, the limit is {soft} and prlimit failed");
            return;
        }
    }
    let dir = Dir::new("reactor-ps");
    let _d = daemon(&dir.socket(), &[]);
    let probe = client(&dir.socket(), "probe");
    let long = "n".repeat(MAX_NAME_LEN);
    let mut conns = Vec::new();
    for _ in 0..rows {
        let mut s = UnixStream::connect(dir.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&hello_frame(&long)).unwrap();
        assert!(matches!(read_frame::<Response>(&mut s), Ok(Some(Response::Welcome { .. }))));
        conns.push(s);
    }
    let listed = probe.inspect(InspectWhat::Tasks);
    assert!(matches!(listed, Ok(_) | Err(ClientError::Kern(_))), "{rows} tasks listed: {listed:?}");
    assert!(probe.vm_allocate(VmAddr(0), P, true).is_ok(), "the asker is still connected");
}

/// The daemon's resident set, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Found by attack: a connection kept, for as long as it lived, buffers
/// as large as its largest call and reply: after one `vm_write` and one
/// `vm_read` of 2 MiB, each idle connection held some 4 MiB of the
/// daemon's memory (its reply buffer and its frame decoder never gave
/// back what they had grown to), although the memory the calls touched
/// was deallocated. A hundred clients that each once moved 2 MiB so held
/// 400 MiB. An idle connection costs a few KiB whatever it did before.
#[test]
fn an_idle_connection_keeps_no_buffer_of_its_largest_call() {
    const CONNS: u64 = 100;
    const BIG: u64 = 2 << 20;
    let dir = Dir::new("reactor-idle");
    let d = daemon(&dir.socket(), &[]);
    let pid = d.0.id();
    let conns: Vec<_> = (0..CONNS).map(|i| client(&dir.socket(), &format!("idle {i}"))).collect();
    // One round first, so that the daemon's allocator and the kernel's
    // frames have grown to what one such call needs.
    let warm = client(&dir.socket(), "warm");
    let a = warm.vm_allocate(VmAddr(0), BIG, true).unwrap();
    warm.vm_write(a, &vec![5; BIG as usize]).unwrap();
    assert_eq!(warm.vm_read(a, BIG).unwrap().len(), BIG as usize);
    warm.vm_deallocate(a, BIG).unwrap();
    let before = rss_kib(pid);
    for c in &conns {
        let a = c.vm_allocate(VmAddr(0), BIG, true).unwrap();
        c.vm_write(a, &vec![5; BIG as usize]).unwrap();
        assert_eq!(c.vm_read(a, BIG).unwrap().len(), BIG as usize);
        c.vm_deallocate(a, BIG).unwrap();
    }
    assert_eq!(stat(&warm, "resident"), 0, "the memory the calls touched is gone");
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(grown < 64 << 10, "{CONNS} idle connections that each moved 2 MiB once hold {grown} KiB");
}

/// Found by attack: a fork of a task with many entries of an object whose
/// pager asks for eager copies (`MEMORY_OBJECT_COPY_NONE`) never ended,
/// the daemon's loop busy all along and no other call on it answered.
/// Each step of the fork's copies matched every copy it plans against
/// every copy it has begun (quadratic in the entries, under the kernel
/// lock), and registered one waiter per three copies, all on the same
/// object: each page the pager supplied woke the connection once per
/// registration, and the loop made that quadratic step again for each.
/// With 8192 entries and a pager answering at once, the fork took hours.
/// It takes about as long as copying its pages.
#[test]
fn a_fork_of_many_eagerly_copied_entries_ends_promptly() {
    const WINDOWS: u64 = 4096;
    const PROXIES: u64 = 2;
    let dir = Dir::new("reactor-eager-fork");
    let d = daemon(&dir.socket(), &["--loops", "1"]);
    let _watchdog = Watchdog::new(d.0.id(), Duration::from_secs(8));
    let link = Connection::connect(&dir.socket(), Role::Pager, "copy-none").unwrap();
    let mut pager = PagerConn::over(link).unwrap();
    let object = pager.new_object().unwrap();
    pager.link.name_register("copy-none", object).unwrap();
    let c = client(&dir.socket(), "forker");
    let o = c.name_lookup("copy-none").unwrap();
    c.vm_map(map_anywhere(P, Some(o))).unwrap();
    let init = pager.recv(Some(Duration::from_secs(5))).unwrap();
    assert!(matches!(init.msg, KernelToPager::Init { .. }), "{init:?}");
    let eager =
        PagerToKernel::ChangeAttributes { may_cache: true, copy_strategy: CopyStrategy::None, cluster_pages: 64 };
    pager.call(object, eager).unwrap();
    // One entry per window: a page of the object, every other page.
    for k in 0..PROXIES {
        let offsets: Vec<u64> = (0..WINDOWS).map(|i| i * P).collect();
        let starts: Vec<u64> = (0..WINDOWS).map(|i| 2 * (k * WINDOWS + i) * P).collect();
        let objects = vec![o; WINDOWS as usize];
        let lens = vec![P; WINDOWS as usize];
        let (px, _) =
            c.proxy_create(VmProt::ALL, &objects, &offsets, &starts, &lens, Some(ProxyVersion::Mapping)).unwrap();
        c.vm_map(map_anywhere(WINDOWS * P, Some(px))).unwrap();
    }
    // The pager answers every request at once.
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let serving = std::thread::spawn(move || {
        while !s2.load(Ordering::Relaxed) {
            if let Ok(r) = pager.recv(Some(Duration::from_millis(50))) {
                if let KernelToPager::DataRequest { offset, length, .. } = r.msg {
                    let _ = pager.supply(r.object, offset, &vec![7; length as usize]);
                }
            }
        }
    });
    let t = Instant::now();
    let forked = c.call(Call::TaskCreate { inherit_memory: true });
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    serving.join().unwrap();
    let entries = WINDOWS * PROXIES;
    assert!(matches!(forked, Ok(Reply::ChildToken(_))), "a fork of {entries} entries: {forked:?} after {took:?}");
    assert!(took < Duration::from_secs(3), "a fork of {entries} entries took {took:?}");
}

/// Found by attack: after a bad frame behind a call that waits, the daemon
/// read and threw away whatever the peer sent for as long as the call
/// waited (23 GB in 3 s, half a CPU). Now nothing more is read from it,
/// only its end is watched: the peer's writes stop once the socket's
/// buffers are full, and its end closes the connection.
#[test]
fn bytes_after_a_bad_frame_are_not_read() {
    let dir = Dir::new("reactor-junk");
    let _d = daemon(&dir.socket(), &[]);
    let watcher = client(&dir.socket(), "watcher");
    let mut s = UnixStream::connect(dir.socket()).unwrap();
    s.write_all(&hello_frame("junk")).unwrap();
    assert!(matches!(read_frame::<Response>(&mut s), Ok(Some(Response::Welcome { .. }))));
    let call = |seq, call| encode_frame(&Request::Call { seq, call }).unwrap();
    s.write_all(&call(1, Call::PortAllocate)).unwrap();
    let Ok(Some(Response::Reply { result: Ok(Reply::Name(port)), .. })) = read_frame::<Response>(&mut s) else {
        panic!("a port")
    };
    // A receive that waits for good, then a frame that does not decode.
    s.write_all(&call(2, Call::MsgReceive { name: port, timeout_ms: None })).unwrap();
    s.write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff]).unwrap();
    s.set_nonblocking(true).unwrap();
    let junk = vec![0x5au8; 64 << 10];
    let (mut sent, end) = (0usize, Instant::now() + Duration::from_millis(500));
    while Instant::now() < end {
        match s.write(&junk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(sent < 16 << 20, "the daemon took {sent} bytes after the bad frame");
    let connections = stat(&watcher, "connections");
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    while stat(&watcher, "connections") >= connections {
        assert!(Instant::now() < deadline, "the connection outlives its peer");
        std::thread::sleep(Duration::from_millis(10));
    }
}

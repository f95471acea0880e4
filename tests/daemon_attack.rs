//! Adversarial probes of machvmd: each test states a rule a hostile local
//! client once broke (a file deleted at the socket path, memory and time
//! taken through unclaimed children and forks, a daemon kept from stopping
//! by a late or trickled hello). Every process is killed by its guard;
//! every wait has a deadline.

mod common;
use common::daemon::{client, daemon, machvmd, Dir, Proc};
use machvm_client::{map_anywhere, Connection};
use machvm_protocol::frame::{encode_frame, read_frame};
use machvm_protocol::ipc::PortName;
use machvm_protocol::wire::{Call, Reply, Request, Response, Role, PROTOCOL_VERSION};
use machvm_protocol::{VmAddr, VmProt, PAGE_SIZE};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const P: u64 = PAGE_SIZE;

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn hello_frame(name: &str) -> Vec<u8> {
    encode_frame(&Request::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Task { child_token: None },
        name: name.into(),
    })
    .unwrap()
}

/// A proxy with `n` one-page windows over one page of `c`'s memory:
/// mapping it all makes `n` map entries in one call.
fn many_window_proxy(c: &Connection, n: usize) -> PortName {
    let a = c.vm_allocate(VmAddr(0), P, true).unwrap();
    let inner = match c.call(Call::RegionProxy { address: a, max: VmProt::ALL, len: P }).unwrap() {
        Reply::Names { proxy, .. } => proxy,
        o => panic!("{o:?}"),
    };
    let offsets: Vec<u64> = (0..n as u64).map(|i| i * P).collect();
    c.proxy_create(VmProt::ALL, &vec![inner; n], &offsets, &vec![0; n], &vec![P; n], None).unwrap().0
}

/// Fills `c`'s map with `rounds * 4096` entries, 4096 per call.
fn fill_map(c: &Connection, rounds: usize) {
    let px = many_window_proxy(c, 4096);
    for _ in 0..rounds {
        c.vm_map(map_anywhere(4096 * P, Some(px))).unwrap();
    }
}

/// Found by attack: `listen::bind` removes whatever is at `--socket` when a connection
/// to it fails: a regular file that happens to be there (a typo, a
/// hostile `--socket` in a unit file or wrapper script) is deleted.
#[test]
fn a_regular_file_at_the_socket_path_is_not_deleted() {
    let dir = Dir::new("attack2-file");
    let path = dir.0.join("precious.txt");
    std::fs::write(&path, b"do not delete me").unwrap();
    let mut d = Proc(
        Command::new(machvmd())
            .arg("--socket")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Either it refuses to start, or it serves: give it a moment either way.
    let _ = d.wait_exit(Duration::from_millis(1500));
    d.kill();
    assert_eq!(std::fs::read(&path).ok().as_deref(), Some(&b"do not delete me"[..]), "machvmd deleted a regular file");
}

/// Found by attack: Children `task_create` makes wait, unclaimed, until their parent
/// goes; nothing bounds how many a connection may have. Each copies the
/// parent's map (up to `--max-entries` entries, copy objects and all), so
/// one connection within its limits grows the daemon without bound.
#[test]
fn unclaimed_children_cannot_grow_the_daemon_without_bound() {
    let dir = Dir::new("attack2-children");
    let d = daemon(&dir.socket(), &["--max-entries", "70000"]);
    let pid = d.0.id();
    let c = client(&dir.socket(), "forker");
    fill_map(&c, 16); // 65536 entries, within the limit
    let before = rss_kib(pid);
    let budget_kib = 512 * 1024;
    let mut made = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && made < 64 {
        match c.call(Call::TaskCreate { inherit_memory: true }) {
            Ok(Reply::ChildToken(_)) => made += 1,
            Ok(o) => panic!("{o:?}"),
            Err(_) => break, // refused: bounded, as it should be
        }
        let grown = rss_kib(pid).saturating_sub(before);
        assert!(grown < budget_kib, "{made} unclaimed children grew machvmd by {grown} KiB");
    }
}

/// Found by attack: `task_create` with `inherit_memory` copies the parent's whole map
/// under the kernel lock: every other connection stalls for as long, so
/// the daemon's default `--max-entries` (2^16) keeps a fork short.
#[test]
fn a_fork_of_a_large_map_does_not_stall_other_connections() {
    let dir = Dir::new("attack2-stall");
    let _d = daemon(&dir.socket(), &[]);
    let c = client(&dir.socket(), "forker");
    fill_map(&c, 15); // 61440 entries, under the default limit
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, socket) = (stop.clone(), dir.socket());
    let bystander = std::thread::spawn(move || {
        let b = client(&socket, "bystander");
        let mut worst = Duration::ZERO;
        while !s2.load(Ordering::Relaxed) {
            let t = Instant::now();
            b.call(Call::VmRegion { address: VmAddr(0) }).ok();
            worst = worst.max(t.elapsed());
            std::thread::sleep(Duration::from_millis(5));
        }
        worst
    });
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..3 {
        c.call(Call::TaskCreate { inherit_memory: true }).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let worst = bystander.join().unwrap();
    assert!(worst < Duration::from_millis(500), "a bystander's vm_region waited {worst:?}");
}

/// Found by attack: On SIGTERM the daemon closes the connections it knows, then joins
/// every connection thread. A connection accepted before the signal but
/// whose hello comes after the closing is welcomed (it becomes a task
/// nobody will close) and the join waits for it forever: the daemon
/// never exits.
#[test]
fn a_hello_after_sigterm_does_not_keep_the_daemon_running() {
    let dir = Dir::new("attack2-late-hello");
    let mut d = daemon(&dir.socket(), &[]);
    let mut s = UnixStream::connect(dir.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::thread::sleep(Duration::from_millis(200)); // accepted
    d.signal("TERM");
    std::thread::sleep(Duration::from_millis(500)); // the closing is done
                                                    // The daemon may have closed the connection (and exited) already.
    let _ = s.write_all(&hello_frame("late"));
    let welcomed = matches!(read_frame::<Response>(&mut s), Ok(Some(Response::Welcome { .. })));
    let exited = d.wait_exit(Duration::from_secs(15));
    assert!(exited.is_some(), "machvmd still running 15 s after SIGTERM (late hello welcomed: {welcomed})");
}

/// Found by attack: `HELLO_TIMEOUT` ("how long a new connection may take to say
/// hello", 10 s) is a read timeout, renewed by every byte: a peer that
/// trickles its hello one byte at a time keeps a thread (and its file
/// descriptors) for as long as it likes, without ever becoming a task.
#[test]
fn a_trickled_hello_is_cut_off_at_the_hello_timeout() {
    let dir = Dir::new("attack2-trickle");
    let _d = daemon(&dir.socket(), &[]);
    let mut s = UnixStream::connect(dir.socket()).unwrap();
    // A header claiming a 255-byte body, then one byte a second.
    s.write_all(&255u32.to_le_bytes()).unwrap();
    let start = Instant::now();
    let mut cut = false;
    while start.elapsed() < Duration::from_secs(14) {
        if s.write_all(&[0]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(cut, "still reading the hello {:?} after connecting (HELLO_TIMEOUT is 10 s)", start.elapsed());
}

/// One uid cannot open connections without bound: past
/// `--max-conns-per-uid` its hello is refused, saying why, and a place
/// freed is taken again. (The test's uid is made unprivileged: the
/// host-privilege uid has no such limit.)
#[test]
fn one_uid_may_hold_only_so_many_connections() {
    let dir = Dir::new("attack-per-uid");
    let _d = daemon(&dir.socket(), &["--host-priv-uid", "4242", "--max-conns-per-uid", "3"]);
    let held: Vec<Connection> = (0..3).map(|i| client(&dir.socket(), &format!("c{i}"))).collect();
    match Connection::connect(&dir.socket(), Role::Task { child_token: None }, "one too many") {
        Err(machvm_client::ClientError::Refused(reason)) => {
            assert!(reason.contains("3 connections"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(held[0].vm_allocate(VmAddr(0), P, true).is_ok(), "those held carry on");
    drop(held);
    common::daemon::wait_until("a place is free again", || {
        Connection::connect(&dir.socket(), Role::Task { child_token: None }, "again").is_ok()
    });
}

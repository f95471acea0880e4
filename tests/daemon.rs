//! `machvmd` end to end: the daemon, pager programs and clients as
//! separate processes (the clients here are connections of the test
//! process; each connection is a task of its own). Each test has its own
//! socket; every process is killed when its guard drops.

mod common;
use common::daemon::{client, daemon, machvmd, pager, stat, wait_until, Dir, Proc};
use machvm_client::{map_anywhere, ClientError, Connection};
use machvm_protocol::frame::{read_frame, write_frame};
use machvm_protocol::ipc::Disposition;
use machvm_protocol::wire::{Call, InspectWhat, Reply, Request, Response, Role, PROTOCOL_VERSION};
use machvm_protocol::{KernError, VmAddr, VmProt, PAGE_SIZE};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const P: u64 = PAGE_SIZE;

fn tasks(c: &Connection) -> Vec<(u32, Option<u32>, String)> {
    match c.inspect(InspectWhat::Tasks).unwrap() {
        Reply::Tasks(rows) => rows.into_iter().map(|r| (r.task, r.pid, r.name)).collect(),
        other => panic!("{other:?}"),
    }
}

fn kern<T: std::fmt::Debug>(r: Result<T, ClientError>) -> KernError {
    match r {
        Err(ClientError::Kern(e)) => e,
        other => panic!("expected a Mach error, got {other:?}"),
    }
}

#[test]
fn a_client_maps_memory_a_pager_process_serves() {
    let dir = Dir::new("daemon-map");
    let _d = daemon(&dir.socket(), &[]);
    let _p = pager(&dir.socket(), &["zero", "--name", "zero"], "zero");
    let c = client(&dir.socket(), "client");
    let obj = c.name_lookup("zero").unwrap();
    let a = c.vm_map(map_anywhere(4 * P, Some(obj))).unwrap();
    assert_eq!(c.load(VmAddr(a.0 + P), 8).unwrap(), vec![0; 8]);
    c.store(VmAddr(a.0 + 2 * P + 5), b"through the daemon").unwrap();
    assert_eq!(c.load(VmAddr(a.0 + 2 * P + 5), 18).unwrap(), b"through the daemon");
    // A second client shares the object: it sees the store.
    let other = client(&dir.socket(), "other");
    let obj2 = other.name_lookup("zero").unwrap();
    let b = other.vm_map(map_anywhere(4 * P, Some(obj2))).unwrap();
    assert_eq!(other.load(VmAddr(b.0 + 2 * P + 5), 18).unwrap(), b"through the daemon");
    // The daemon shows every task, with the process behind it.
    let names: Vec<String> = tasks(&c).into_iter().map(|t| t.2).collect();
    assert!(names.iter().any(|n| n.contains("pager zero")) && names.contains(&"client".to_string()), "{names:?}");
    assert!(tasks(&c).iter().all(|t| t.1 == Some(std::process::id()) || t.2.contains("pager") || t.2 == "probe"));
    // A client that goes is a task that ends.
    drop(other);
    wait_until("the other task to end", || !tasks(&c).iter().any(|t| t.2 == "other"));
}

#[test]
fn a_read_only_proxy_passed_in_a_message_is_read_only_for_its_receiver() {
    let dir = Dir::new("daemon-proxy");
    let _d = daemon(&dir.socket(), &[]);
    let _p = pager(&dir.socket(), &["zero", "--name", "data"], "data");
    let owner = client(&dir.socket(), "owner");
    let reader = client(&dir.socket(), "reader");
    let obj = owner.name_lookup("data").unwrap();
    let a = owner.vm_map(map_anywhere(2 * P, Some(obj))).unwrap();
    owner.store(a, b"owner's data").unwrap();
    let (proxy, _revoke) = owner.proxy_create(VmProt::READ, &[obj], &[0], &[0], &[2 * P], None).unwrap();
    // The reader's inbox, found through the name table.
    let inbox = reader.port_allocate().unwrap();
    reader.port_make_send(inbox).unwrap();
    reader.name_register("reader-inbox", inbox).unwrap();
    let to_reader = owner.name_lookup("reader-inbox").unwrap();
    owner.send(to_reader, 7, b"a proxy for you".to_vec(), vec![(proxy, Disposition::MoveSend)]).unwrap();
    let m = reader.msg_receive(inbox, Some(5000)).unwrap();
    assert_eq!((m.id, &m.data[..]), (7, &b"a proxy for you"[..]));
    let got = m.rights[0].0;
    let r = reader.vm_map(map_anywhere(2 * P, Some(got))).unwrap();
    assert_eq!(reader.load(r, 12).unwrap(), b"owner's data");
    assert_eq!(kern(reader.store(r, b"mine")), KernError::ProtectionFailure);
    assert_eq!(kern(reader.vm_protect(r, P, false, VmProt::DEFAULT)), KernError::ProtectionFailure);
    // The reader cannot reach the object itself.
    assert_eq!(kern(reader.name_lookup("no-such-name")), KernError::InvalidName);
}

#[test]
fn killing_a_pager_fails_its_waiting_faults_within_a_second_and_spares_the_others() {
    let dir = Dir::new("daemon-kill");
    let _d = daemon(&dir.socket(), &[]);
    let mut slow = pager(&dir.socket(), &["zero", "--name", "slow", "--delay-ms", "5000"], "slow");
    let _fast = pager(&dir.socket(), &["zero", "--name", "fast"], "fast");
    let socket = dir.socket();
    let (mapped_tx, mapped) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let c = client(&socket, "waits on the slow pager");
        let obj = c.name_lookup("slow").unwrap();
        let a = c.vm_map(map_anywhere(P, Some(obj))).unwrap();
        let _ = mapped_tx.send(());
        let _ = tx.send(c.load(a, 8));
    });
    mapped.recv_timeout(Duration::from_secs(10)).expect("the client mapped the slow object");
    std::thread::sleep(Duration::from_millis(100));
    // Meanwhile the slow pager delays no one else.
    let c = client(&dir.socket(), "uses the fast pager");
    let fast = c.name_lookup("fast").unwrap();
    let f = c.vm_map(map_anywhere(P, Some(fast))).unwrap();
    let started = Instant::now();
    assert_eq!(c.load(f, 8).unwrap(), vec![0; 8]);
    assert!(started.elapsed() < Duration::from_secs(3), "a slow pager delayed another object's fault");
    slow.kill();
    let killed = Instant::now();
    let r = rx.recv_timeout(Duration::from_secs(5)).expect("the waiting fault ended");
    assert!(killed.elapsed() < Duration::from_secs(1), "took {:?}", killed.elapsed());
    assert_eq!(kern(r), KernError::MemoryError);
    // The daemon and the other pager carry on.
    assert_eq!(c.load(f, 8).unwrap(), vec![0; 8]);
}

#[test]
fn a_second_daemon_refuses_a_live_socket_and_replaces_a_stale_one() {
    let dir = Dir::new("daemon-socket");
    let mut first = daemon(&dir.socket(), &[]);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.socket()).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let out = std::process::Command::new(machvmd()).arg("--socket").arg(dir.socket()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another machvmd"), "{out:?}");
    // Killed, it leaves its socket behind; the next daemon replaces it.
    first.kill();
    assert!(dir.socket().exists());
    let _second = daemon(&dir.socket(), &[]);
    let c = client(&dir.socket(), "after");
    assert!(c.vm_allocate(VmAddr(0), P, true).is_ok());
}

#[test]
fn sigterm_stops_the_daemon_cleanly_and_its_clients_get_a_clean_error() {
    let dir = Dir::new("daemon-term");
    let mut d = daemon(&dir.socket(), &[]);
    let c = client(&dir.socket(), "client");
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(5)).expect("the daemon stopped");
    assert!(status.success(), "{status:?}");
    assert!(!dir.socket().exists(), "the socket is removed");
    assert!(matches!(c.vm_allocate(VmAddr(0), P, true), Err(ClientError::Closed | ClientError::Io(_))));
}

/// Raw frames: what a hostile or broken peer can send.
fn raw(socket: &std::path::Path) -> UnixStream {
    let s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn answer(s: &mut UnixStream) -> Option<Response> {
    read_frame::<Response>(s).ok().flatten()
}

#[test]
fn bad_frames_get_a_protocol_error_and_close_only_their_connection() {
    let dir = Dir::new("daemon-frames");
    let _d = daemon(&dir.socket(), &[]);
    let good = client(&dir.socket(), "good");
    // Garbage as a first frame.
    let mut s = raw(&dir.socket());
    s.write_all(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap();
    assert!(matches!(answer(&mut s), Some(Response::ProtocolError { .. })));
    // A length of 4 GiB: refused, nothing allocated.
    let mut s = raw(&dir.socket());
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    match answer(&mut s) {
        Some(Response::ProtocolError { what }) => assert!(what.contains("frame"), "{what}"),
        other => panic!("{other:?}"),
    }
    // A call before the hello.
    let mut s = raw(&dir.socket());
    write_frame(&mut s, &Request::Call { seq: 1, call: Call::PortAllocate }).unwrap();
    assert!(matches!(answer(&mut s), Some(Response::ProtocolError { .. })));
    // Another version is refused by name.
    let mut s = raw(&dir.socket());
    write_frame(&mut s, &Request::Hello { version: 999, role: Role::Pager, name: "old".into() }).unwrap();
    assert!(matches!(answer(&mut s), Some(Response::Refused { .. })));
    // A frame cut short, then the peer goes.
    let mut s = raw(&dir.socket());
    s.write_all(&[100, 0, 0, 0, 1, 2]).unwrap();
    drop(s);
    // A second hello after a good one.
    let mut s = raw(&dir.socket());
    let hello =
        Request::Hello { version: machvm_protocol::wire::PROTOCOL_VERSION, role: Role::Pager, name: "x".into() };
    write_frame(&mut s, &hello).unwrap();
    assert!(matches!(answer(&mut s), Some(Response::Welcome { .. })));
    write_frame(&mut s, &hello).unwrap();
    assert!(matches!(answer(&mut s), Some(Response::ProtocolError { .. })));
    // The good client was never disturbed.
    let a = good.vm_allocate(VmAddr(0), P, true).unwrap();
    good.store(a, b"fine").unwrap();
    assert_eq!(good.load(a, 4).unwrap(), b"fine");
}

#[test]
fn only_the_privileged_uid_may_set_the_default_pager() {
    let dir = Dir::new("daemon-priv");
    // Nobody connecting here is uid 4242.
    let _d = daemon(&dir.socket(), &["--host-priv-uid", "4242"]);
    let c = client(&dir.socket(), "unprivileged");
    assert_eq!(c.host_priv(), None);
    let mine = c.port_allocate().unwrap();
    c.port_make_send(mine).unwrap();
    assert_eq!(kern(c.set_default_memory_manager(mine, mine)), KernError::InvalidHost);
    let swap = dir.0.join("swap");
    let mut p = Proc(
        std::process::Command::new(common::daemon::machvm())
            .arg("--socket")
            .arg(dir.socket())
            .args(["pager", "swap"])
            .arg(&swap)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let status = p.wait_exit(Duration::from_secs(10)).expect("the swap pager gives up");
    assert!(!status.success());
    // Where the daemon's own uid is privileged, it may.
    let dir2 = Dir::new("daemon-priv2");
    let _d2 = daemon(&dir2.socket(), &[]);
    let root = client(&dir2.socket(), "privileged");
    let hp = root.host_priv().expect("the daemon's uid gets the host privilege");
    let dp = root.port_allocate().unwrap();
    root.port_make_send(dp).unwrap();
    assert!(root.set_default_memory_manager(hp, dp).is_ok());
}

/// A client that disconnects is a task that terminates: the send right it
/// held goes, so the port's receiver gets its no-senders notification.
#[test]
fn a_client_that_disconnects_releases_its_rights() {
    let dir = Dir::new("daemon-release");
    let _d = daemon(&dir.socket(), &[]);
    let owner = client(&dir.socket(), "owner");
    let holder = client(&dir.socket(), "holder");
    let inbox = holder.port_allocate().unwrap();
    holder.port_make_send(inbox).unwrap();
    holder.name_register("holder-inbox", inbox).unwrap();
    let port = owner.port_allocate().unwrap();
    let notify = owner.port_allocate().unwrap();
    // The holder gets the only send right to `port`, in a message.
    let to_holder = owner.name_lookup("holder-inbox").unwrap();
    owner.send(to_holder, 1, Vec::new(), vec![(port, Disposition::MakeSend)]).unwrap();
    let m = holder.msg_receive(inbox, Some(5000)).unwrap();
    assert_eq!(m.rights.len(), 1);
    owner
        .call(Call::PortRequestNotification { name: port, kind: machvm_protocol::wire::NotifyKind::NoSenders, notify })
        .unwrap();
    assert_eq!(kern(owner.msg_receive(notify, Some(50))), KernError::RcvTimedOut);
    drop(holder);
    let n = owner.msg_receive(notify, Some(5000)).expect("a no-senders notification");
    assert_eq!(n.id, machvm_core::ipc::MACH_NOTIFY_NO_SENDERS);
    assert!(n.from_kernel);
    // Its names went with it.
    wait_until("the holder's name to go", || owner.name_lookup("holder-inbox").is_err());
}

/// SIGTERM: the daemon ends its tasks first, so their dirty pages go back
/// to their pagers, and lets the pagers go only once they have taken them:
/// a file written through the daemon holds the write after the stop.
#[test]
fn sigterm_returns_dirty_pages_to_their_pagers_before_it_stops() {
    let dir = Dir::new("daemon-term-file");
    let file = dir.0.join("data");
    std::fs::write(&file, vec![b'.'; 4 * P as usize]).unwrap();
    let mut d = daemon(&dir.socket(), &[]);
    let f = file.to_str().unwrap().to_string();
    let mut p = pager(&dir.socket(), &["file", "--name", "data", &f], "data");
    let c = client(&dir.socket(), "writer");
    let obj = c.name_lookup("data").unwrap();
    let a = c.vm_map(map_anywhere(4 * P, Some(obj))).unwrap();
    c.store(VmAddr(a.0 + P + 10), b"written through machvmd").unwrap();
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(10)).expect("the daemon stopped").success());
    assert!(p.wait_exit(Duration::from_secs(10)).is_some(), "the pager exits when the daemon goes");
    let data = std::fs::read(&file).unwrap();
    assert_eq!(&data[P as usize + 10..P as usize + 33], b"written through machvmd");
    drop(c);
}

/// One client over its limits gets `KERN_RESOURCE_SHORTAGE`; the others
/// carry on.
#[test]
fn a_client_over_its_limits_gets_resource_shortage_and_the_others_carry_on() {
    let dir = Dir::new("daemon-limits");
    let _d = daemon(&dir.socket(), &["--max-ports", "8", "--max-entries", "4"]);
    let greedy = client(&dir.socket(), "greedy");
    let mut refused = None;
    for i in 0..16 {
        if let Err(e) = greedy.port_allocate() {
            refused = Some((i, e.kern()));
            break;
        }
    }
    assert!(matches!(refused, Some((_, KernError::ResourceShortage))), "{refused:?}");
    for _ in 0..4 {
        greedy.vm_allocate(VmAddr(0), P, true).unwrap();
    }
    assert_eq!(kern(greedy.vm_allocate(VmAddr(0), P, true)), KernError::ResourceShortage);
    let other = client(&dir.socket(), "other");
    let a = other.vm_allocate(VmAddr(0), P, true).unwrap();
    other.store(a, b"fine").unwrap();
    assert!(other.port_allocate().is_ok());
}

/// What each task is charged, by the name in its hello: `(charged pages,
/// limit)`.
fn charges(c: &Connection) -> HashMap<String, (u64, Option<u64>)> {
    let names: HashMap<u32, String> = tasks(c).into_iter().map(|t| (t.0, t.2)).collect();
    match c.inspect(InspectWhat::Charges).unwrap() {
        Reply::Charges(rows) => {
            rows.into_iter().filter_map(|r| Some((names.get(&r.task)?.clone(), (r.charged, r.limit)))).collect()
        }
        other => panic!("{other:?}"),
    }
}

/// A client past its resident limit (`--max-resident`) pages out its own
/// memory, and keeps every byte; with nowhere to page it (no swap file),
/// it gets `KERN_RESOURCE_SHORTAGE`. Either way the others carry on, and
/// their pages are never taken for it.
#[test]
fn a_client_over_its_resident_limit_is_held_to_it_and_the_others_carry_on() {
    for swap in [false, true] {
        let dir = Dir::new("daemon-resident");
        let swapfile = dir.0.join("swap").to_str().unwrap().to_string();
        let mut args = vec!["--max-resident", "8"];
        if swap {
            args.extend(["--swap", swapfile.as_str()]);
        }
        let _d = daemon(&dir.socket(), &args);
        let quiet = client(&dir.socket(), "quiet");
        let q = quiet.vm_allocate(VmAddr(0), 6 * P, true).unwrap();
        for i in 0..6 {
            quiet.store(VmAddr(q.0 + i * P), &(i + 1).to_le_bytes()).unwrap();
        }
        let greedy = client(&dir.socket(), "greedy");
        let pages = 64;
        let g = greedy.vm_allocate(VmAddr(0), pages * P, true).unwrap();
        let mut stored = 0;
        for i in 0..pages {
            match greedy.store(VmAddr(g.0 + i * P), &(i + 1000).to_le_bytes()) {
                Ok(()) => stored += 1,
                Err(e) => {
                    assert_eq!((swap, e.kern()), (false, KernError::ResourceShortage), "page {i}");
                    break;
                }
            }
            assert!(charges(&quiet)["greedy"].0 <= 8, "swap {swap}, page {i}");
        }
        assert_eq!(stored, if swap { pages } else { 8 }, "swap {swap}");
        for i in 0..stored {
            assert_eq!(greedy.load(VmAddr(g.0 + i * P), 8).unwrap(), (i + 1000).to_le_bytes(), "page {i}");
        }
        let c = charges(&quiet);
        assert_eq!((c["quiet"], c["greedy"].1), ((6, Some(8)), Some(8)), "swap {swap}: {c:?}");
        assert!(c["greedy"].0 <= 8);
        assert_eq!(stat(&quiet, "task_reclaims") > 0, swap);
        // The others carry on: the quiet client's pages are all there,
        // and a newcomer gets its own limit's worth.
        for i in 0..6 {
            assert_eq!(quiet.load(VmAddr(q.0 + i * P), 8).unwrap(), (i + 1).to_le_bytes());
        }
        let other = client(&dir.socket(), "other");
        let o = other.vm_allocate(VmAddr(0), 8 * P, true).unwrap();
        for i in 0..8 {
            other.store(VmAddr(o.0 + i * P), b"fine").unwrap();
        }
        assert_eq!(charges(&quiet)["other"].0, 8);
    }
}

/// A task process killed mid-call (waiting in a receive) is a task that
/// terminates: it leaves the daemon's task list and its names go.
#[test]
fn killing_a_task_process_mid_call_releases_what_it_held() {
    let dir = Dir::new("daemon-kill-task");
    let _d = daemon(&dir.socket(), &[]);
    let probe = client(&dir.socket(), "probe");
    let mut reader = Proc(
        std::process::Command::new(common::daemon::machvm())
            .arg("--socket")
            .arg(dir.socket())
            .args(["client", "read", "--inbox", "doomed"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the reader to register its inbox", || probe.name_lookup("doomed").is_ok());
    assert!(tasks(&probe).iter().any(|t| t.2 == "client read"));
    reader.kill();
    wait_until("the reader's task to end", || !tasks(&probe).iter().any(|t| t.2 == "client read"));
    wait_until("its name to go", || probe.name_lookup("doomed").is_err());
}

/// The daemon killed: its pagers and clients get a clean error and exit;
/// nothing hangs.
#[test]
fn when_the_daemon_is_killed_pagers_and_clients_end_cleanly() {
    let dir = Dir::new("daemon-killed");
    let mut d = daemon(&dir.socket(), &[]);
    let mut p = pager(&dir.socket(), &["zero", "--name", "z"], "z");
    let c = client(&dir.socket(), "client");
    d.kill();
    let status = p.wait_exit(Duration::from_secs(5)).expect("the pager exits");
    assert!(status.success(), "{status:?}");
    assert!(matches!(c.port_allocate(), Err(ClientError::Closed | ClientError::Io(_))));
}

/// A client may have at most 16 calls being made and 16 more waiting to
/// start; one that sends more while they all wait breaks the protocol and
/// is closed (the daemon holds no more of it than that), and no one else
/// notices.
#[test]
fn a_client_flooding_calls_behind_a_waiting_one_is_closed() {
    let dir = Dir::new("daemon-flood");
    let _d = daemon(&dir.socket(), &[]);
    let mut s = raw(&dir.socket());
    let hello =
        Request::Hello { version: machvm_protocol::wire::PROTOCOL_VERSION, role: Role::Pager, name: "f".into() };
    write_frame(&mut s, &hello).unwrap();
    assert!(matches!(answer(&mut s), Some(Response::Welcome { .. })));
    write_frame(&mut s, &Request::Call { seq: 1, call: Call::PortAllocate }).unwrap();
    let Some(Response::Reply { result: Ok(Reply::Name(port)), .. }) = answer(&mut s) else { panic!() };
    // Each waits for good: nothing will ever come.
    for seq in 2..64 {
        let call = Call::MsgReceive { name: port, timeout_ms: None };
        if write_frame(&mut s, &Request::Call { seq, call }).is_err() {
            break;
        }
    }
    match answer(&mut s) {
        Some(Response::ProtocolError { what }) => assert!(what.contains("calls waiting"), "{what}"),
        other => panic!("{other:?}"),
    }
    let good = client(&dir.socket(), "good");
    assert!(good.vm_allocate(VmAddr(0), P, true).is_ok());
}

/// The EMMI over the socket, scripted: a pager connection (the pager
/// library over `machvm_client::Connection`) gets `init` and a
/// `data_request` for a client's fault, supplies it, and a `lock_request`
/// with a reply port gets its `lock_completed` back; a forged message
/// from the client is dropped.
#[test]
fn the_emmi_travels_over_the_socket() {
    use machvm_pagers::PagerConn;
    use machvm_protocol::emmi::{KernelToPager, ReturnPolicy};
    let dir = Dir::new("daemon-emmi");
    let _d = daemon(&dir.socket(), &[]);
    let link = Connection::connect(&dir.socket(), Role::Pager, "scripted").unwrap();
    let mut pager = PagerConn::over(link).unwrap();
    let obj = pager.new_object().unwrap();
    pager.link.name_register("scripted", obj).unwrap();
    let socket = dir.socket();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let c = client(&socket, "faulting client");
        let o = c.name_lookup("scripted").unwrap();
        // A forged data_request from the client: the pager drops it.
        let forged = KernelToPager::DataRequest { offset: 0, length: P, access: VmProt::READ }.encode();
        let _ = c.send(o, forged.0, forged.1, Vec::new());
        let a = c.vm_map(map_anywhere(P, Some(o))).unwrap();
        let _ = tx.send(c.load(VmAddr(a.0 + 8), 8));
    });
    // The kernel's default cluster: 8 pages.
    let (object, offset, length, _) = pager.expect_request(Duration::from_secs(10)).unwrap();
    assert_eq!((object, offset, length), (obj, 0, 8 * P));
    let data: Vec<u8> = (0..length).map(|i| (i % 256) as u8).collect();
    pager.supply(obj, 0, &data).unwrap();
    let got = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(got, data[8..16].to_vec());
    assert!(pager.ignored >= 1, "the forged request was dropped");
    // A lock_request with a reply port: lock_completed comes back.
    pager.lock_request(obj, 0, 8 * P, ReturnPolicy::All, true, VmProt::NONE).unwrap();
    assert!(pager.link.port_allocate().is_ok());
}

/// `task_create` over the socket makes a child task a process claims with
/// the token it returns (once): the child sees its parent's memory as of
/// the call, and later writes on either side stay private.
#[test]
fn a_child_task_is_claimed_once_by_its_token_and_inherits_a_copy() {
    let dir = Dir::new("daemon-child");
    let _d = daemon(&dir.socket(), &[]);
    let parent = client(&dir.socket(), "parent");
    let a = parent.vm_allocate(VmAddr(0), 2 * P, true).unwrap();
    parent.store(a, b"before the fork").unwrap();
    let Reply::ChildToken(token) = parent.call(Call::TaskCreate { inherit_memory: true }).unwrap() else {
        panic!("no token")
    };
    let child = Connection::connect(&dir.socket(), Role::Task { child_token: Some(token) }, "child").unwrap();
    assert_eq!(child.load(a, 15).unwrap(), b"before the fork");
    child.store(a, b"the child's").unwrap();
    parent.store(VmAddr(a.0 + P), b"parent's later").unwrap();
    assert_eq!(parent.load(a, 15).unwrap(), b"before the fork");
    assert_eq!(child.load(VmAddr(a.0 + P), 4).unwrap(), vec![0; 4]);
    // A token works once.
    let again = Connection::connect(&dir.socket(), Role::Task { child_token: Some(token) }, "again");
    assert!(matches!(again, Err(ClientError::Refused(_))), "{again:?}");
    let bogus = Connection::connect(&dir.socket(), Role::Task { child_token: Some(token ^ 1) }, "bogus");
    assert!(matches!(bogus, Err(ClientError::Refused(_))));
}

/// Waiting costs no thread: a hundred clients whose calls all wait at once
/// (each a fault on a pager that sleeps, or a receive on an empty port)
/// leave the daemon with the threads it had, and a bystander's calls are
/// answered meanwhile.
#[test]
fn a_hundred_waiting_clients_cost_the_daemon_no_thread() {
    const WAITERS: usize = 100;
    let dir = Dir::new("daemon-waiters");
    let d = daemon(&dir.socket(), &["--loops", "2"]);
    let _slow = pager(&dir.socket(), &["zero", "--name", "slow", "--delay-ms", "5000"], "slow");
    let bystander = client(&dir.socket(), "bystander");
    wait_until("the slow pager registers", || bystander.name_lookup("slow").is_ok());
    let base = common::daemon::threads_and_fds(d.0.id());
    let mut streams = Vec::new();
    for i in 0..WAITERS {
        // A raw connection, so that a call can be written and its reply
        // not awaited.
        let mut s = UnixStream::connect(dir.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Task { child_token: None },
            name: format!("waiter {i}"),
        };
        write_frame(&mut s, &hello).unwrap();
        assert!(matches!(read_frame::<Response>(&mut s), Ok(Some(Response::Welcome { .. }))));
        let mut call = |seq: u64, call: Call| -> Reply {
            write_frame(&mut s, &Request::Call { seq, call }).unwrap();
            match read_frame::<Response>(&mut s) {
                Ok(Some(Response::Reply { result: Ok(r), .. })) => r,
                other => panic!("{other:?}"),
            }
        };
        // Half fault on the slow pager, half wait for a message.
        let waiting = if i % 2 == 0 {
            let Reply::Name(obj) = call(1, Call::NameLookup { name: "slow".into() }) else { panic!() };
            let Reply::Addr(at) = call(2, Call::VmMap(map_anywhere(P, Some(obj)))) else { panic!() };
            Call::Load { address: at, len: 8 }
        } else {
            let Reply::Name(port) = call(1, Call::PortAllocate) else { panic!() };
            Call::MsgReceive { name: port, timeout_ms: None }
        };
        write_frame(&mut s, &Request::Call { seq: 3, call: waiting }).unwrap();
        streams.push(s);
    }
    wait_until("every waiter's call is waiting", || common::daemon::stat(&bystander, "waiters") >= WAITERS as u64);
    let (threads, fds) = common::daemon::threads_and_fds(d.0.id());
    // One descriptor per new connection, and not one thread.
    assert_eq!(threads, base.0, "threads with {WAITERS} waiting clients");
    assert!(fds <= base.1 + WAITERS as u64 + 2, "{fds} descriptors, {base:?} before");
    let t = Instant::now();
    for _ in 0..20 {
        bystander.call(Call::VmRegion { address: VmAddr(0) }).ok();
    }
    assert!(t.elapsed() < Duration::from_secs(2), "20 calls of a bystander took {:?}", t.elapsed());
    drop(streams);
    wait_until("the waiters' calls are gone", || common::daemon::stat(&bystander, "waiters") == 0);
}

#[test]
fn proxy_version_and_cluster_pages_flags_set_the_kernel_defaults() {
    let dir = Dir::new("daemon-flags");
    let _d = daemon(&dir.socket(), &["--proxy-version", "mapping", "--cluster-pages", "3"]);
    let _p = pager(&dir.socket(), &["zero", "--name", "zero"], "zero");
    let c = client(&dir.socket(), "client");
    let obj = c.name_lookup("zero").unwrap();
    let (proxy, _revoke) = c.proxy_create(VmProt::READ, &[obj], &[0], &[0], &[P], None).unwrap();
    assert_eq!(c.proxy_info(proxy).unwrap().version, machvm_protocol::wire::ProxyVersion::Mapping);
    let a = c.vm_map(map_anywhere(8 * P, Some(obj))).unwrap();
    c.load(a, 8).unwrap();
    let objects = match c.inspect(InspectWhat::Objects).unwrap() {
        Reply::Objects(rows) => rows,
        other => panic!("{other:?}"),
    };
    let clusters: Vec<u32> = objects.iter().filter_map(|o| o.pager_state.as_ref()).map(|s| s.cluster_pages).collect();
    assert!(clusters.contains(&3), "{clusters:?}");
}

/// A connection is a task with as many threads as call through it: a
/// thread waiting in a receive holds up no other thread's calls, and one
/// of them sends the message that wakes it.
#[test]
fn threads_of_one_connection_call_at_once() {
    let dir = Dir::new("daemon-threads");
    let _d = daemon(&dir.socket(), &[]);
    let c = std::sync::Arc::new(client(&dir.socket(), "threaded"));
    let port = c.port_allocate().unwrap();
    c.port_make_send(port).unwrap();
    let (tx, rx) = mpsc::channel();
    let waiter = {
        let c = c.clone();
        std::thread::spawn(move || tx.send(c.msg_receive(port, Some(10_000))).unwrap())
    };
    // The receive is waiting in the daemon: other calls are answered.
    wait_until("the receive waits", || common::daemon::stat(&c, "waiters") == 1);
    for _ in 0..10 {
        assert!(c.vm_allocate(VmAddr(0), P, true).is_ok());
    }
    assert!(rx.try_recv().is_err(), "the receive is still waiting");
    c.send(port, 7, b"wake".to_vec(), Vec::new()).unwrap();
    let m = rx.recv_timeout(Duration::from_secs(5)).expect("the waiting thread is answered").unwrap();
    assert_eq!((m.id, m.data), (7, b"wake".to_vec()));
    waiter.join().unwrap();
}

/// `mach_msg(SEND|RCV)` in one call: the send, then the receive; a send
/// that fails receives nothing (the message waiting stays queued).
#[test]
fn a_send_and_receive_is_one_call_and_a_failed_send_receives_nothing() {
    let dir = Dir::new("daemon-sendrecv");
    let _d = daemon(&dir.socket(), &[]);
    let c = client(&dir.socket(), "c");
    let port = c.port_allocate().unwrap();
    c.port_make_send(port).unwrap();
    let args = |dest, id| machvm_protocol::wire::SendArgs {
        dest,
        dest_disposition: Disposition::CopySend,
        reply: None,
        id,
        data: vec![id as u8],
        rights: Vec::new(),
        timeout_ms: Some(0),
    };
    let m = c.msg_send_receive(args(port, 1), port, Some(1000)).unwrap();
    assert_eq!((m.id, m.data), (1, vec![1]));
    c.send(port, 2, vec![2], Vec::new()).unwrap();
    let bogus = machvm_protocol::ipc::PortName(0x7777);
    assert_eq!(kern(c.msg_send_receive(args(bogus, 3), port, Some(0))), KernError::SendInvalidDest);
    let m = c.msg_receive(port, Some(0)).unwrap();
    assert_eq!(m.id, 2, "the failed call received nothing");
    assert_eq!(kern(c.msg_send_receive(args(port, 4), bogus, Some(0))), KernError::RcvInvalidName);
    assert_eq!(c.msg_receive(port, Some(0)).unwrap().id, 4, "the send was made before the receive failed");
}

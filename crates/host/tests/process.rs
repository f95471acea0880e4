//! userfaultfd across processes: a poisoned page kills the process that
//! touches it with `SIGBUS`, and a task's uffd passed to another process
//! over `SCM_RIGHTS` is registered and served there, as the daemon will
//! serve its tasks. The children are this test binary run again
//! ([`child_process`]); each is killed and reaped on every path, and
//! nothing waits for one without a deadline.

mod common;

use common::{pattern, uffd_or_skip, watchdog, ChildProc, Handler, PATIENCE};
use machvm_host::fdpass::{recv_fds, send_fds};
use machvm_host::uffd::{Event, Features, FillMode, Ioctls, Outcome, RegisterMode};
use machvm_host::{page_size, Mapping, NewUserfaultfd, ObjectMemory, PageRange, Prot, Userfaultfd};
use rustix::fd::AsFd;
use rustix::process::Signal;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pages of the task's window in the cross-process test.
const PAGES: u64 = 8;

/// Not a test of its own (so ignored by the suite): the tests below run
/// this binary again as their child processes, with `MACHVM_HOST_CHILD`
/// naming the child's part; without it this returns at once.
#[test]
#[ignore = "the body of the child processes the tests start"]
fn child_process() {
    let Ok(role) = std::env::var("MACHVM_HOST_CHILD") else { return };
    watchdog(3 * PATIENCE);
    match role.as_str() {
        "poison" => poisoned_child(),
        "task" => task_child(),
        other => panic!("unknown child role {other}"),
    }
}

/// Poisons a page of its own mapping and loads from it; it must not live
/// to exit.
fn poisoned_child() {
    let p = page_size();
    let obj = ObjectMemory::new("poisoned", 2 * p).unwrap();
    let m = Mapping::of(&obj, PageRange::pages(0, 2).unwrap(), Prot::READ | Prot::WRITE).unwrap();
    let u = Userfaultfd::open(Features::MISSING_SHMEM | Features::POISON).unwrap();
    u.register_mapping(&m, RegisterMode::MISSING).unwrap();
    let page0 = PageRange::pages(0, 1).unwrap().shifted(m.addr()).unwrap();
    assert_eq!(u.poison(page0).unwrap(), Outcome::Done);
    eprintln!("child: page 0 poisoned; loading from it");
    let mut b = [0u8; 1];
    m.read(0, &mut b).unwrap();
    eprintln!("child: the load from a poisoned page returned {b:?}");
    std::process::exit(0);
}

#[test]
fn a_poisoned_page_kills_the_process_that_touches_it_with_sigbus() {
    if !uffd_or_skip("poison", Features::MISSING_SHMEM | Features::POISON) {
        return;
    }
    let mut child = ChildProc::spawn("poison", &[]);
    let status = child.wait(PATIENCE).unwrap_or_else(|| panic!("the child still runs: {}", child.output()));
    let out = child.output();
    assert_eq!(status.terminating_signal(), Some(Signal::BUS.as_raw()), "status {status:?}, output:\n{out}");
    assert!(out.contains("page 0 poisoned"), "{out}");
}

/// The task's side: receives the object's memfd, maps it, makes a uffd and
/// sends it with the window's address to the daemon (its parent), then
/// touches every page and reports what it saw.
fn task_child() {
    let p = page_size();
    let path = std::env::var("MACHVM_HOST_SOCKET").expect("MACHVM_HOST_SOCKET");
    let mut sock = UnixStream::connect(path).expect("connecting to the parent");
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 16];
    let mut got = recv_fds(&sock, &mut buf, 1).expect("receiving the memfd");
    assert_eq!(&buf[..got.bytes], b"memfd");
    let memfd = got.fds.pop().expect("a memfd");
    let m = Mapping::map(&memfd, PageRange::pages(0, PAGES).unwrap(), Prot::READ | Prot::WRITE).unwrap();
    drop(memfd);
    let uffd = NewUserfaultfd::create().unwrap();
    send_fds(&sock, &m.addr().to_ne_bytes(), &[uffd.as_fd()]).unwrap();
    // The task keeps no copy: if the parent stops serving, the uffd closes
    // and the faults are the kernel's again.
    drop(uffd);
    let mut go = [0u8; 2];
    sock.read_exact(&mut go).unwrap();
    assert_eq!(&go, b"go");
    let mut report = String::new();
    let mut page = vec![0u8; p as usize];
    for n in 0..7 {
        m.read((n * p) as usize, &mut page).unwrap();
        if page != pattern(n) {
            report.push_str(&format!("page {n} has the wrong data; "));
        }
    }
    // Page 6 was installed write-protected: this store waits for the parent.
    m.write((6 * p) as usize, b"task was here").unwrap();
    let mut back = [0u8; 13];
    m.read((6 * p) as usize, &mut back).unwrap();
    if &back != b"task was here" {
        report.push_str("the store into page 6 is lost; ");
    }
    if report.is_empty() {
        report.push_str("ok");
    }
    sock.write_all(report.as_bytes()).unwrap();
    std::process::exit(0);
}

struct SocketDir(PathBuf);

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_tasks_uffd_passed_over_a_socket_is_registered_and_served_by_another_process() {
    if !uffd_or_skip("cross-process", Features::SHMEM_SERVING) {
        return;
    }
    let p = page_size();
    let dir = SocketDir(std::env::temp_dir().join(format!("machvm-host-test-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("sock");
    let listener = UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut child = ChildProc::spawn("task", &[("MACHVM_HOST_SOCKET", path.to_str().unwrap())]);

    let end = Instant::now() + PATIENCE;
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("the task did not connect: {e}; output:\n{}", child.output()),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    assert_eq!(machvm_host::fdpass::peer_credentials(&conn).unwrap().pid, child.pid());

    let obj = Arc::new(ObjectMemory::new("served object", PAGES * p).unwrap());
    send_fds(&conn, b"memfd", &[obj.as_fd()]).unwrap();
    let mut buf = [0u8; 8];
    let mut got = recv_fds(&conn, &mut buf, 1).unwrap();
    assert_eq!(got.bytes, 8);
    let base = u64::from_ne_bytes(buf);
    let theirs = NewUserfaultfd::from_received(got.fds.pop().expect("the task's uffd")).unwrap();
    assert!(!theirs.is_own(), "the task's uffd serves the task's memory");
    let u = Arc::new(theirs.handshake(Features::SHMEM_SERVING).unwrap());
    let window = PageRange::new(base, PAGES * p).unwrap();
    let io = u.register(window, RegisterMode::MISSING | RegisterMode::MINOR | RegisterMode::WP).unwrap();
    assert!(io.contains(Ioctls::CONTINUE | Ioctls::COPY | Ioctls::WRITEPROTECT), "{io:?}");

    // Pages 0-3: the pager's data goes into the memfd, then CONTINUE;
    // 4-5: COPY; 6: COPY write-protected, then lifted on the store.
    let o = obj.clone();
    let h = Handler::spawn(u.clone(), move |u, e| {
        let Event::PageFault(f) = e else { panic!("{e:?}") };
        let n = (f.addr - base) / page_size();
        let done = if f.wp {
            u.writeprotect(f.page(), false).unwrap()
        } else if n < 4 {
            o.write_at(n * page_size(), &pattern(n)).unwrap();
            u.continue_(f.page(), FillMode::empty()).unwrap()
        } else if n < 6 {
            u.copy(f.page().start(), &pattern(n), FillMode::empty()).unwrap()
        } else {
            u.copy(f.page().start(), &pattern(n), FillMode::WRITE_PROTECT).unwrap()
        };
        assert_eq!(done, Outcome::Done, "page {n}: {f:?}");
    });
    conn.write_all(b"go").unwrap();
    let mut report = String::new();
    let read = conn.read_to_string(&mut report);
    let status = child.wait(PATIENCE);
    let out = child.output();
    assert!(read.is_ok(), "no report from the task ({read:?}); output:\n{out}");
    assert_eq!(report, "ok", "output:\n{out}");
    assert_eq!(status.and_then(|s| s.exit_status()), Some(0), "output:\n{out}");
    let faults = h.finish();
    assert_eq!(faults.iter().filter(|f| !f.wp && !f.minor).count(), 7, "seven MISSING faults: {faults:?}");
    assert_eq!(faults.iter().filter(|f| f.wp && f.write).count(), 1, "one write-protect fault: {faults:?}");
    // The task's store went into the object's memfd.
    let mut back = [0u8; 13];
    obj.read_at(6 * p, &mut back).unwrap();
    assert_eq!(&back, b"task was here");
    assert_eq!(obj.present(PageRange::pages(0, PAGES).unwrap()).unwrap(), vec![PageRange::pages(0, 7).unwrap()]);
}

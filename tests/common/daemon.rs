//! Processes for the daemon suites: `machvmd` and pager programs, each
//! test on its own socket in a temporary directory. Every process started
//! is killed when its guard drops (also when the test fails), and every
//! wait has a deadline.

use machvm_client::Connection;
use machvm_protocol::wire::{InspectWhat, Reply, Role};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A temporary directory, removed on drop.
#[derive(Debug)]
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Dir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("machvm-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    pub fn socket(&self) -> PathBuf {
        self.0.join("machvm.sock")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Proc {
    /// SIGKILL now, and reap it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
    /// Its exit status within `within`, if it exits.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.0.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
    /// Sends a signal by number (`kill(1)`).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.0.id().to_string()).status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn machvmd() -> &'static str {
    env!("CARGO_BIN_EXE_machvmd")
}

pub fn machvm() -> &'static str {
    env!("CARGO_BIN_EXE_machvm")
}

/// Starts `machvmd` on `socket` with `args` and waits until it accepts.
pub fn daemon(socket: &Path, args: &[&str]) -> Proc {
    let child = Command::new(machvmd())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting machvmd");
    let p = Proc(child);
    wait_until("the daemon to listen", || std::os::unix::net::UnixStream::connect(socket).is_ok());
    p
}

/// Starts `machvm pager ...` and waits until `name` is registered.
pub fn pager(socket: &Path, args: &[&str], name: &str) -> Proc {
    let child = Command::new(machvm())
        .arg("--socket")
        .arg(socket)
        .arg("pager")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting a pager");
    let p = Proc(child);
    let probe = client(socket, "probe");
    wait_until("the pager to register", || probe.name_lookup(name).is_ok());
    p
}

/// A client connection (a task).
pub fn client(socket: &Path, name: &str) -> Connection {
    Connection::connect(socket, Role::Task { child_token: None }, name).expect("connecting to machvmd")
}

/// Polls `f` for up to 10 s.
#[track_caller]
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

/// Kills the daemon if the test is still running after `limit`: every
/// call blocked on it then fails, so that even a wedged daemon (a call
/// that never returns, a connection never welcomed) cannot hang the test.
pub struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    pub fn new(pid: u32, limit: Duration) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        std::thread::spawn(move || {
            let end = Instant::now() + limit;
            while Instant::now() < end {
                if d.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("watchdog: the test is still running after {limit:?}: killing the daemon (pid {pid})");
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The daemon's threads and open file descriptors, but the memfds of its
/// VM objects (one per object with memory, on a daemon with real memory:
/// they come and go with the objects, which tests count themselves).
pub fn threads_and_fds(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon's /proc status");
    let threads = status.lines().find_map(|l| l.strip_prefix("Threads:")).expect("Threads").trim().parse().unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's fds")
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_link(e.path()).map_or(true, |l| !l.to_string_lossy().starts_with("/memfd:machvm object"))
        })
        .count() as u64;
    (threads, fds)
}

pub fn stat(c: &Connection, key: &str) -> u64 {
    match c.inspect(InspectWhat::Stats).unwrap() {
        Reply::Stats(rows) => rows.into_iter().find(|(k, _)| k == key).map_or(0, |(_, v)| v),
        other => panic!("{other:?}"),
    }
}

/// Waits (up to 10 s) until the daemon `pid` has no more threads and open
/// descriptors than `base`; fails naming `what` otherwise.
#[track_caller]
pub fn wait_threads_and_fds_back(pid: u32, base: (u64, u64), what: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let now = threads_and_fds(pid);
        if now.0 <= base.0 && now.1 <= base.1 {
            return;
        }
        assert!(Instant::now() < end, "the daemon has {now:?} threads and fds, {base:?} {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! Helpers of the host crate's tests, once: the skip when userfaultfd is
//! unavailable, a handler thread that serves a uffd, accesses made on a
//! thread of their own under a deadline (a fault nobody resolves fails the
//! test instead of hanging it), and child processes that are always killed
//! and reaped.
#![allow(dead_code)]

use machvm_host::uffd::{Event, Features, PageFault};
use machvm_host::{page_size, Userfaultfd};
use rustix::fd::{AsFd, OwnedFd};
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, WaitIdStatus};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long any one step may take before the test calls it a hang.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Whether userfaultfd with `need` is there; if not, prints why the test
/// `name` is skipped.
pub fn uffd_or_skip(name: &str, need: Features) -> bool {
    match Features::available() {
        Ok(have) if have.contains(need) => true,
        Ok(have) => {
            eprintln!("SKIP {name}: the kernel's userfaultfd lacks {:?}", need.difference(have));
            false
        }
        Err(e) => {
            eprintln!(
                "SKIP {name}: userfaultfd is unavailable here ({e}); it needs root or vm.unprivileged_userfaultfd=1"
            );
            false
        }
    }
}

/// The byte pattern of page `n` in the tests.
pub fn pattern(n: u64) -> Vec<u8> {
    (0..page_size()).map(|i| (n as u8).wrapping_mul(31).wrapping_add(i as u8)).collect()
}

/// Runs `f` on a thread of its own and waits for it for [`PATIENCE`]. A
/// thread still blocked in a fault then is left behind (it wakes when the
/// uffd closes) and the test fails saying `what`.
pub fn timed<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(v) => v,
        Err(_) => panic!("{what}: no result within {PATIENCE:?} (a fault nobody resolved?)"),
    }
}

/// A thread serving a uffd: every event read is handed to `serve`, and the
/// faults are kept for the test to look at.
pub struct Handler {
    stop: Arc<AtomicBool>,
    faults: Arc<Mutex<Vec<PageFault>>>,
    thread: Option<JoinHandle<()>>,
}

impl Handler {
    pub fn spawn(uffd: Arc<Userfaultfd>, mut serve: impl FnMut(&Userfaultfd, &Event) + Send + 'static) -> Handler {
        let stop = Arc::new(AtomicBool::new(false));
        let faults = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, faults) = (stop.clone(), faults.clone());
            std::thread::spawn(move || {
                let end = Instant::now() + 3 * PATIENCE;
                let mut events = Vec::new();
                while !stop.load(Ordering::Acquire) && Instant::now() < end {
                    if !uffd.wait_readable(Some(Duration::from_millis(20))).expect("poll") {
                        continue;
                    }
                    events.clear();
                    uffd.read_events(&mut events, 64).expect("reading events");
                    for e in &events {
                        if let Event::PageFault(f) = e {
                            faults.lock().unwrap().push(*f);
                        }
                        serve(&uffd, e);
                    }
                }
            })
        };
        Handler { stop, faults, thread: Some(thread) }
    }

    /// The faults seen so far.
    pub fn faults(&self) -> Vec<PageFault> {
        self.faults.lock().unwrap().clone()
    }

    /// Stops the thread and returns every fault it saw; a panic of the
    /// handler (an assertion in `serve`) fails the test here.
    pub fn finish(mut self) -> Vec<PageFault> {
        self.stop.store(true, Ordering::Release);
        if let Err(p) = self.thread.take().unwrap().join() {
            std::panic::resume_unwind(p);
        }
        self.faults()
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A child process running this test binary's `child_process` body as
/// `role`. Dropping it kills and reaps it, on every path.
pub struct ChildProc {
    child: Child,
    pidfd: OwnedFd,
    reaped: bool,
}

impl ChildProc {
    /// Starts the child. (`std::process::Command` forks and execs: a bare
    /// `fork` in the multi-threaded test harness could leave the child with
    /// another thread's locks held, and rustix's only fork is an
    /// experimental raw syscall that skips the C library's fork handling.)
    pub fn spawn(role: &str, env: &[(&str, &str)]) -> ChildProc {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "child_process", "--ignored", "--nocapture", "--test-threads", "1"])
            .env("MACHVM_HOST_CHILD", role)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("starting a child process");
        let pidfd = rustix::process::pidfd_open(Pid::from_child(&child), PidfdFlags::empty()).expect("pidfd_open");
        ChildProc { child, pidfd, reaped: false }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `poll(pidfd)` up to `within`, then `waitid(P_PIDFD)`: the child's
    /// end, or `None` if it is still running.
    pub fn wait(&mut self, within: Duration) -> Option<WaitIdStatus> {
        let ts = rustix::event::Timespec::try_from(within).unwrap();
        let mut fds = [rustix::event::PollFd::new(&self.pidfd, rustix::event::PollFlags::IN)];
        let end = Instant::now() + within;
        loop {
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(0) => return None,
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) if Instant::now() < end => continue,
                Err(e) => panic!("poll(pidfd): {e}"),
            }
        }
        let status = rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED)
            .expect("waitid")
            .expect("an exited child");
        self.reaped = true;
        Some(status)
    }

    /// What the child printed (after it ended).
    pub fn output(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_string(&mut s);
        }
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = rustix::process::pidfd_send_signal(&self.pidfd, Signal::KILL);
            if self.wait(PATIENCE).is_none() {
                eprintln!("child {} did not die within {PATIENCE:?} of SIGKILL", self.pid());
            }
        }
    }
}

/// Kills the process after `limit`: a child's own guard against a parent
/// that stops serving it.
pub fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("child: watchdog fired after {limit:?}");
        std::process::exit(3);
    });
}

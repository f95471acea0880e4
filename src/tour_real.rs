//! The tour's last chapter: real processes touching real memory.
//!
//! A daemon, a zero-fill pager and three task processes (`machvm probe`):
//! an owner maps the pager's object, writes into it and registers a
//! read-only paging proxy of it; a reader's store into the proxy dies of
//! `SIGSEGV`, which the daemon reports as a Mach exception; a second
//! reader loads the proxy's pages in a tight loop of raw loads until the
//! owner revokes the proxy, and dies of `SIGBUS`, while the owner's data
//! stays intact.
//!
//! Where the daemon cannot serve real memory (it needs root and
//! userfaultfd), the chapter says why and is skipped.

use crate::util::Checks;
use machvm_client::{socket_path, Connection};
use machvm_protocol::wire::{InspectWhat, Reply, Role};
use machvm_protocol::{KernError, VmProt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed and reaped on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guard {
    fn wait(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.0.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

/// How a process ended, in words.
fn how(s: Option<std::process::ExitStatus>) -> String {
    match s {
        None => "still running".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (_, Some(7)) => "killed by SIGBUS".into(),
            (_, Some(11)) => "killed by SIGSEGV".into(),
            (_, Some(n)) => format!("killed by signal {n}"),
            _ => s.to_string(),
        },
    }
}

fn wait_for(what: impl Fn() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn spawn(args: &[&str], socket: &Path) -> std::io::Result<Guard> {
    let child = Command::new(std::env::current_exe()?)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("MACHVM_ARENA_MIB", "1024")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Guard(child))
}

/// Runs the chapter as step `n`, recording its checks in `c`.
pub fn chapter(n: u32, c: &mut Checks) -> Result<(), Box<dyn std::error::Error>> {
    println!("\n[{n}] Real processes, real memory");
    if let Some(why) = machvm_daemon::memory::unavailable() {
        println!("    skipped: {why}");
        return Ok(());
    }
    let dir = crate::util::TempDir::new("tour")?;
    let socket = dir.0.join("machvm.sock");
    let _daemon = spawn(&["daemon", "--memory", "real", "--proxy-version", "paging"], &socket)?;
    c.check(wait_for(|| std::os::unix::net::UnixStream::connect(&socket).is_ok()), "machvmd serves real memory");
    let _pager = spawn(&["pager", "zero", "--name", "shared"], &socket)?;
    let look = Connection::connect(&socket_path(Some(&socket)), Role::Task { child_token: None }, "tour")?;
    c.check(wait_for(|| look.name_lookup("shared").is_ok()), "a zero-fill pager serves the object \"shared\"");
    let f = |name: &str| dir.0.join(name).to_string_lossy().into_owned();
    println!("    owner   maps \"shared\", stores into it, and registers a read-only paging proxy \"ro\"");
    let mut owner = spawn(
        &[
            "probe",
            "--",
            "map",
            "shared",
            "16",
            "fill",
            "0",
            "42",
            "proxy",
            "0",
            "read",
            "ro",
            "touch",
            &f("A"),
            "await",
            &f("R"),
            "revoke",
            "await",
            &f("DONE"),
            "check",
            "0",
            "42",
        ],
        &socket,
    )?;
    println!("    reader  maps \"ro\", reads it, then stores into it");
    let mut reader = spawn(
        &["probe", "--", "await", &f("A"), "map", "ro", "16", "check", "0", "42", "put", "0", "0", "x"],
        &socket,
    )?;
    let s = reader.wait(Duration::from_secs(20));
    c.check(s.and_then(|s| s.signal()) == Some(11), format!("the reader's store into its read-only proxy: {}", how(s)));
    let pid = reader.0.id();
    let reported = match look.inspect(InspectWhat::Exceptions)? {
        Reply::Exceptions(rows) => rows.into_iter().find(|r| r.pid == pid),
        _ => None,
    };
    c.check(
        reported.as_ref().is_some_and(|r| r.error == KernError::ProtectionFailure && r.access.contains(VmProt::WRITE)),
        match &reported {
            Some(r) => format!("machvmd reports the exception: task {} at {:#x}, write, {}", r.task, r.addr.0, r.error),
            None => "machvmd reports the exception".to_string(),
        },
    );
    println!("    looper  maps \"ro\" and loads its pages with raw loads, round and round");
    let mut looper =
        spawn(&["probe", "--", "await", &f("A"), "map", "ro", "16", "touch", &f("L"), "loop", "0"], &socket)?;
    c.check(wait_for(|| dir.0.join("L").exists()), "the looper is reading");
    std::thread::sleep(Duration::from_millis(100));
    println!("    owner   revokes the proxy");
    std::fs::write(dir.0.join("R"), b"")?;
    let s = looper.wait(Duration::from_secs(10));
    c.check(
        s.and_then(|s| s.signal()) == Some(7),
        format!("the looper's next raw load after the revocation: {}", how(s)),
    );
    std::fs::write(dir.0.join("DONE"), b"")?;
    let s = owner.wait(Duration::from_secs(20));
    c.check(s.is_some_and(|s| s.success()), format!("the owner's data is intact, every word checked: {}", how(s)));
    Ok(())
}

//! What the subcommands share: temporary files that clean up after
//! themselves, a list of checks that decides the exit status, and the
//! formatting of kernel counters.

use machvm_core::{KernError, Result, VmProt};
use std::collections::BTreeMap;
use std::fmt::{Debug, Display};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A file in the system's temporary directory with a name no other run
/// uses; removed when dropped unless kept.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    /// Creates `machvm-<tag>-<pid>-<time>-<n>.<ext>` (read/write, new).
    pub fn create(tag: &str, ext: &str) -> io::Result<(TempFile, File)> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("machvm-{tag}-{}-{nanos}-{n}.{ext}", std::process::id());
        let path = std::env::temp_dir().join(name);
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        Ok((TempFile { path, keep: false }, file))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the file in place when dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Opens the file again, read/write (one handle per user).
    pub fn reopen(&self) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).open(&self.path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The checks a subcommand made; any failure makes the exit status
/// non-zero.
#[derive(Debug, Default)]
pub struct Checks {
    pub passed: usize,
    pub failed: Vec<String>,
}

impl Checks {
    /// Records `ok` for `what`, printing a marked line. Returns `ok`.
    pub fn check(&mut self, ok: bool, what: impl Display) -> bool {
        if ok {
            self.passed += 1;
            println!("    ok    {what}");
        } else {
            self.failed.push(what.to_string());
            println!("    FAIL  {what}");
        }
        ok
    }

    /// A call that must succeed; returns its value if it did.
    pub fn ok<T>(&mut self, r: Result<T>, what: impl Display) -> Option<T> {
        match r {
            Ok(v) => {
                self.check(true, what);
                Some(v)
            }
            Err(e) => {
                self.check(false, format!("{what}: failed with {e}"));
                None
            }
        }
    }

    /// A call that must fail with `want` (printed by its Mach name).
    pub fn fails<T: Debug>(&mut self, r: Result<T>, want: KernError, what: impl Display) -> bool {
        match r {
            Err(e) if e == want => self.check(true, format!("{what} -> {e}")),
            Err(e) => self.check(false, format!("{what} -> {e}, expected {want}")),
            Ok(v) => self.check(false, format!("{what} succeeded ({v:?}), expected {want}")),
        }
    }

    pub fn all_passed(&self) -> bool {
        self.failed.is_empty()
    }

    /// Prints the verdict.
    pub fn summary(&self) {
        if self.all_passed() {
            println!("all {} checks passed", self.passed);
        } else {
            println!("{} of {} checks FAILED:", self.failed.len(), self.passed + self.failed.len());
            for f in &self.failed {
                println!("  - {f}");
            }
        }
    }
}

/// `name=count` pairs of a message-count table, in name order.
pub fn counts(m: &BTreeMap<&'static str, u64>) -> String {
    if m.is_empty() {
        return "(none)".into();
    }
    m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("  ")
}

/// `READ|WRITE`-style name of a protection (`NONE` if empty).
pub fn prot_str(p: VmProt) -> String {
    let names: Vec<&str> = [(VmProt::READ, "READ"), (VmProt::WRITE, "WRITE"), (VmProt::EXECUTE, "EXECUTE")]
        .into_iter()
        .filter(|(f, _)| p.contains(*f))
        .map(|(_, n)| n)
        .collect();
    if names.is_empty() {
        "NONE".into()
    } else {
        names.join("|")
    }
}

/// Waits until `done` holds, polling; false on timeout.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    done()
}

/// Today's date and time in UTC, `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_files_are_unique_and_removed_unless_kept() {
        let (a, _) = TempFile::create("t", "dat").unwrap();
        let (mut b, _) = TempFile::create("t", "dat").unwrap();
        assert_ne!(a.path(), b.path());
        let (pa, pb) = (a.path().to_owned(), b.path().to_owned());
        b.keep();
        drop(a);
        drop(b);
        assert!(!pa.exists());
        assert!(pb.exists());
        std::fs::remove_file(pb).unwrap();
    }

    #[test]
    fn a_failed_check_fails_the_run() {
        let mut c = Checks::default();
        c.fails(Err::<(), _>(KernError::ProtectionFailure), KernError::ProtectionFailure, "write");
        assert!(c.all_passed());
        c.fails(Ok(()), KernError::ProtectionFailure, "write");
        c.fails(Err::<(), _>(KernError::InvalidAddress), KernError::ProtectionFailure, "write");
        assert_eq!(c.failed.len(), 2);
    }
}

/// A temporary directory, removed on drop (sockets and rendezvous files of
/// the commands that start a daemon).
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `$TMPDIR/machvm-TAG-PID-N`, made empty.
    pub fn new(tag: &str) -> std::io::Result<TempDir> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("machvm-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

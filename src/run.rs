//! `machvm run`: a real workload, end to end.
//!
//! 1. A file in the temporary directory is filled with a pattern (each
//!    little-endian `u64` word holds `0x4d414348` "MACH" and its own
//!    offset) and served by the file pager, which answers `init` with
//!    `may_cache = false`: the kernel writes the file back and terminates
//!    it as soon as the last mapping goes.
//! 2. Task A maps the file shared; task B maps it shared and, before
//!    anyone writes, maps a copy of it (copy-on-write, private).
//! 3. The kernel keeps at most `resident_limit` pages resident, with a
//!    default pager (swap file) for anonymous memory: every phase pages.
//! 4. A reads the file and fills anonymous memory; A and B (two threads)
//!    write marks into the shared mappings and B into its copy; each task
//!    then checks every word it can see; A marks the last pages once more,
//!    so that they are still resident and dirty at the end.
//! 5. Both tasks end; the file on disk must hold the shared marks and none
//!    of the copy's, and every page the kernel returned must have been
//!    written by a pager.

use crate::util::{counts, wait_until, Checks, TempFile};
use machvm_core::{Kernel, KernelConfig, KernelStats, MapRequest, TaskId, VmAddr, PAGE_SIZE};
use machvm_pagers::{start_default_pager, FileBacking, PagerConn, PagerStats, RunningPager};
use std::error::Error;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

const P: u64 = PAGE_SIZE;
const WORDS: usize = (PAGE_SIZE / 8) as usize;

/// The file's words: "MACH" and the word's byte offset.
const PATTERN: u64 = 0x4d41_4348_0000_0000;
/// Task A's shared writes (word 1 of every 4th page).
const MARK_A: u64 = 0xa000_5348_0000_0000;
/// Task B's shared writes (word 2 of pages 2 mod 4).
const MARK_B: u64 = 0xb000_5348_0000_0000;
/// Task B's writes to its copy (word 3 of every 3rd page).
const MARK_COPY: u64 = 0xc000_c0b7_0000_0000;
/// Task A's last writes (word 4 of the last pages), still resident and
/// dirty when the tasks end.
const MARK_TAIL: u64 = 0xe000_7a11_0000_0000;

/// What `machvm run` does.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Pages in the file.
    pub pages: u64,
    /// Pages of anonymous memory task A fills (paged to the swap file).
    pub anon_pages: u64,
    pub resident_limit: usize,
    /// Pages the file pager supplies per fault.
    pub cluster: u32,
    /// Leave the file in place afterwards.
    pub keep: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { pages: 1024, anon_pages: 256, resident_limit: 64, cluster: 8, keep: false }
    }
}

fn original(p: u64, w: usize) -> u64 {
    PATTERN | (p * P + w as u64 * 8)
}

/// What a shared mapping must hold after phase 3.
fn shared_word(p: u64, w: usize) -> u64 {
    match w {
        1 if p % 4 == 0 => MARK_A | p,
        2 if p % 4 == 2 => MARK_B | p,
        _ => original(p, w),
    }
}

/// What the file must hold in the end: the shared writes, and A's tail
/// marks on pages from `tail`.
fn file_word(p: u64, w: usize, tail: u64) -> u64 {
    if w == 4 && p >= tail {
        MARK_TAIL | p
    } else {
        shared_word(p, w)
    }
}

/// What the copy must hold: the file as it was when the copy was made,
/// and B's own writes.
fn copy_word(p: u64, w: usize) -> u64 {
    if w == 3 && p % 3 == 0 {
        MARK_COPY | p
    } else {
        original(p, w)
    }
}

/// Task A's anonymous page `p`: a xorshift stream seeded by `p`.
fn anon_page(p: u64) -> Vec<u8> {
    let mut x = p.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(P as usize);
    for _ in 0..WORDS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn words(page: &[u8]) -> impl Iterator<Item = u64> + '_ {
    page.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
}

/// Reads `pages` pages at `base` in `task` and compares every word with
/// `want`; returns (mismatching words, first mismatch) or the error that
/// stopped the read.
fn verify(
    k: &Kernel,
    task: TaskId,
    base: VmAddr,
    pages: u64,
    want: impl Fn(u64, usize) -> u64,
) -> Result<(u64, Option<String>), String> {
    let mut buf = vec![0u8; P as usize];
    let (mut bad, mut first) = (0, None);
    for p in 0..pages {
        k.read(task, VmAddr(base.0 + p * P), &mut buf).map_err(|e| format!("page {p}: {e}"))?;
        for (w, v) in words(&buf).enumerate() {
            if v != want(p, w) {
                bad += 1;
                first.get_or_insert_with(|| format!("page {p} word {w}: {v:#018x}, expected {:#018x}", want(p, w)));
            }
        }
    }
    Ok((bad, first))
}

fn verified(c: &mut Checks, r: Result<(u64, Option<String>), String>, what: &str) {
    match r {
        Ok((0, _)) => c.check(true, what),
        Ok((n, first)) => c.check(false, format!("{what}: {n} words wrong, first {}", first.unwrap_or_default())),
        Err(e) => c.check(false, format!("{what}: read failed at {e}")),
    };
}

/// One row of the phase table: what changed since `before`.
fn phase_row(before: &KernelStats, after: &KernelStats) -> String {
    format!(
        "faults {:>6}  data_request {:>5}  data_return {:>5}  pageouts {:>6}  resident {}/{}",
        after.vm.faults - before.vm.faults,
        after.sent("data_request") - before.sent("data_request"),
        after.sent("data_return") - before.sent("data_return"),
        after.vm.pageouts - before.vm.pageouts,
        after.resident,
        after.resident_limit,
    )
}

struct Phase<'a> {
    k: &'a Kernel,
    n: usize,
    before: KernelStats,
    started: Instant,
}

impl<'a> Phase<'a> {
    fn start(k: &'a Kernel, n: usize, title: &str) -> Phase<'a> {
        println!("\n[{n}] {title}");
        Phase { k, n, before: k.stats(), started: Instant::now() }
    }

    /// Prints what the phase did and checks the resident limit held.
    fn end(self, c: &mut Checks) -> KernelStats {
        let after = self.k.stats();
        println!("      {}  ({:.0} ms)", phase_row(&self.before, &after), self.started.elapsed().as_secs_f64() * 1e3);
        c.check(
            after.resident <= after.resident_limit,
            format!(
                "phase {}: {} resident pages, within the limit of {}",
                self.n, after.resident, after.resident_limit
            ),
        );
        after
    }
}

/// Runs the workload and prints the report. `Ok(true)` if every check
/// passed.
pub fn run(opts: &RunOptions) -> Result<bool, Box<dyn Error>> {
    let pages = opts.pages.max(4);
    let size = pages * P;
    let mut c = Checks::default();
    println!(
        "machvm run: a real file mapped shared and copied by two tasks, {} resident pages at most",
        opts.resident_limit
    );

    // 1. The file and its pager; 3. the kernel's resident limit and default pager.
    let (mut file, mut f) = TempFile::create("run", "dat")?;
    if opts.keep {
        file.keep();
    }
    let mut data = Vec::with_capacity(size as usize);
    for p in 0..pages {
        for w in 0..WORDS {
            data.extend_from_slice(&original(p, w).to_le_bytes());
        }
    }
    f.write_all(&data)?;
    f.sync_all()?;
    drop((f, data));
    let (swap_file, swap) = TempFile::create("swap", "swap")?;

    let k = Kernel::new(KernelConfig { resident_limit: opts.resident_limit, ..KernelConfig::default() });
    // The booter holds the host privilege and lends it to the default pager.
    let boot = k.task_create(None)?;
    let host_priv = k.boot_host_priv(boot)?;
    let default_pager = start_default_pager(&k, boot, host_priv, swap)?;
    let mut conn = PagerConn::new(k.clone())?;
    let object = conn.new_object()?;
    let (a, b) = (k.task_create(None)?, k.task_create(None)?);
    let (name_a, name_b) = (conn.give(object, a)?, conn.give(object, b)?);

    let mut backing = FileBacking::new(opts.cluster);
    backing.add(object, file.reopen()?)?;
    let file_pager = RunningPager::spawn(conn, backing);

    // 2. The mappings (the first binds the file: `init`, answered by the
    // pager with its cluster size and `may_cache = false`).
    let shared_a = k.vm_map(a, MapRequest::anywhere(size, Some(name_a)))?;
    let shared_b = k.vm_map(b, MapRequest::anywhere(size, Some(name_b)))?;
    let copy_b = k.vm_map(b, MapRequest::anywhere(size, Some(name_b)).copy(true))?;
    let anon_a = k.vm_allocate(a, VmAddr(0), opts.anon_pages.max(1) * P, true)?;

    println!("\nsetup");
    println!("  file         {} ({} KiB = {pages} pages)", file.path().display(), size / 1024);
    println!("               every u64 word = {PATTERN:#x} | its byte offset");
    println!("  swap file    {} (the default pager's store)", swap_file.path().display());
    println!(
        "  kernel       resident limit {} pages; file pager: {}-page clusters, may_cache = false",
        opts.resident_limit, opts.cluster
    );
    println!(
        "  task {} (A)   file shared at {:#x}; {} anonymous pages at {:#x}",
        a.number(),
        shared_a.0,
        opts.anon_pages,
        anon_a.0
    );
    println!("  task {} (B)   file shared at {:#x}; a copy of the file at {:#x}", b.number(), shared_b.0, copy_b.0);

    // 4. A reads the file; A fills anonymous memory.
    let ph = Phase::start(&k, 1, "A reads the whole file through its shared mapping");
    verified(&mut c, verify(&k, a, shared_a, pages, original), "A reads the file's pattern");
    ph.end(&mut c);

    let ph = Phase::start(&k, 2, "A fills its anonymous memory (paged to the swap file)");
    let mut wrote = Ok(());
    for p in 0..opts.anon_pages {
        wrote = wrote.and(k.write(a, VmAddr(anon_a.0 + p * P), &anon_page(p)));
    }
    c.ok(wrote, format!("A writes {} anonymous pages", opts.anon_pages));
    ph.end(&mut c);

    // Concurrent writes, then each task checks what it sees.
    let ph = Phase::start(&k, 3, "A and B write to the shared file, B to its copy (two threads)");
    let (wa, wb) = std::thread::scope(|s| {
        let ta = s.spawn(|| {
            (0..pages).step_by(4).try_for_each(|p| k.write_u64(a, VmAddr(shared_a.0 + p * P + 8), MARK_A | p))
        });
        let tb = s.spawn(|| {
            for p in 0..pages {
                if p % 4 == 2 {
                    k.write_u64(b, VmAddr(shared_b.0 + p * P + 16), MARK_B | p)?;
                }
                if p % 3 == 0 {
                    k.write_u64(b, VmAddr(copy_b.0 + p * P + 24), MARK_COPY | p)?;
                }
            }
            Ok(())
        });
        (ta.join().expect("task A's thread"), tb.join().expect("task B's thread"))
    });
    c.ok(wa, format!("A marks word 1 of every 4th page ({:#x} | page)", MARK_A));
    c.ok(wb, format!("B marks word 2 of pages 2 mod 4 ({MARK_B:#x} | page) and word 3 of every 3rd page of its copy"));
    ph.end(&mut c);

    let ph = Phase::start(&k, 4, "each task checks every word it can see (two threads)");
    let (ra, rb, rcopy, ranon) = std::thread::scope(|s| {
        let ta = s.spawn(|| {
            let shared = verify(&k, a, shared_a, pages, shared_word);
            let anon = (0..opts.anon_pages).try_fold(0u64, |bad, p| {
                let mut buf = vec![0u8; P as usize];
                k.read(a, VmAddr(anon_a.0 + p * P), &mut buf).map_err(|e| format!("page {p}: {e}"))?;
                Ok::<_, String>(bad + u64::from(buf != anon_page(p)))
            });
            (shared, anon)
        });
        let tb = s.spawn(|| (verify(&k, b, shared_b, pages, shared_word), verify(&k, b, copy_b, pages, copy_word)));
        let (ra, ranon) = ta.join().expect("task A's thread");
        let (rb, rcopy) = tb.join().expect("task B's thread");
        (ra, rb, rcopy, ranon)
    });
    verified(&mut c, ra, "A sees its own writes and B's through the shared mapping");
    verified(&mut c, rb, "B sees its own writes and A's through the shared mapping");
    verified(&mut c, rcopy, "B's copy holds the file as it was when copied, plus B's writes only");
    match ranon {
        Ok(0) => c.check(true, "A's anonymous pages came back from the swap file intact"),
        Ok(n) => c.check(false, format!("A's anonymous memory: {n} pages differ")),
        Err(e) => c.check(false, format!("A's anonymous memory: read failed at {e}")),
    };
    let working = ph.end(&mut c);
    if pages + opts.anon_pages > opts.resident_limit as u64 {
        c.check(working.vm.pageouts > 0, format!("the kernel paged out ({} pageouts)", working.vm.pageouts));
        c.check(
            working.vm.pages_returned > 0,
            format!("dirty pages went back to pagers ({})", working.vm.pages_returned),
        );
    } else {
        println!("    (the working set fits in the resident limit: no pageout expected)");
    }

    let tail_pages = (opts.resident_limit as u64 / 4).clamp(1, pages);
    let tail = pages - tail_pages;
    let ph =
        Phase::start(&k, 5, &format!("A marks word 4 of the last {tail_pages} pages (they stay resident and dirty)"));
    let r = (tail..pages).try_for_each(|p| k.write_u64(a, VmAddr(shared_a.0 + p * P + 32), MARK_TAIL | p));
    c.ok(r, format!("A writes {MARK_TAIL:#x} | page to pages {tail}..{pages}"));
    ph.end(&mut c);

    // 5. Teardown: the file is written back and terminated.
    let ph = Phase::start(&k, 6, "both tasks end: the kernel returns dirty file pages and terminates the file");
    let before = k.stats();
    k.task_terminate(a)?;
    k.task_terminate(b)?;
    let fp: Arc<PagerStats> = file_pager.stats.clone();
    let dp: Arc<PagerStats> = default_pager.stats.clone();
    let terminated = wait_until(Duration::from_secs(10), || PagerStats::get(&fp.terminates) >= 1);
    c.check(terminated, "the file pager got memory_object_terminate");
    let returned_by_kernel = k.stats().vm.pages_returned;
    let written = || PagerStats::get(&fp.pages_returned) + PagerStats::get(&dp.pages_returned);
    let all_written = wait_until(Duration::from_secs(10), || written() == returned_by_kernel);
    c.check(
        all_written,
        format!(
            "no data lost: the kernel returned {returned_by_kernel} pages, pagers wrote {} (file {}, swap {})",
            written(),
            PagerStats::get(&fp.pages_returned),
            PagerStats::get(&dp.pages_returned)
        ),
    );
    let end = ph.end(&mut c);
    let at_end = end.sent("data_return") - before.sent("data_return");
    c.check(at_end >= 1, format!("dirty pages still resident went back at termination ({at_end} data_return)"));
    c.check(end.resident == 0, format!("every frame released ({} resident)", end.resident));
    file_pager.stop();
    default_pager.stop();

    let disk = std::fs::read(file.path())?;
    let mut bad_shared = 0u64;
    let mut copy_leaks = 0u64;
    for (i, v) in words(&disk).enumerate() {
        let (p, w) = (i as u64 / WORDS as u64, i % WORDS);
        if v != file_word(p, w, tail) {
            bad_shared += 1;
        }
        if v == MARK_COPY | p {
            copy_leaks += 1;
        }
    }
    println!("\n[7] the file on disk");
    c.check(disk.len() as u64 == size, format!("the file is still {} bytes", size));
    c.check(
        bad_shared == 0,
        format!("the file holds all of A's and B's shared writes and the pattern elsewhere ({bad_shared} words wrong)"),
    );
    c.check(copy_leaks == 0, format!("none of the copy's writes reached the file ({copy_leaks} found)"));

    // The report.
    let s = k.stats();
    println!("\nreport");
    println!(
        "  faults          {} (zero-fill {}, copy-on-write copies {}, pushes to the copy {})",
        s.vm.faults, s.vm.zero_fills, s.vm.cow_copies, s.vm.copy_pushes
    );
    println!("  kernel->pagers  {}", counts(&s.to_pagers));
    println!("  pagers->kernel  {}", counts(&s.from_pagers));
    println!(
        "  pages           asked of pagers {}, paged out {}, returned to pagers {}, reclaimed {}",
        s.vm.pages_requested, s.vm.pageouts, s.vm.pages_returned, s.vm.pages_reclaimed
    );
    println!("  resident        {} now (limit {})", s.resident, s.resident_limit);
    for (who, st) in [("file pager", &fp), ("default pager", &dp)] {
        println!(
            "  {who:<15} data_requests {}, pages supplied {}, zero-filled {}, written back {}",
            PagerStats::get(&st.requests),
            PagerStats::get(&st.pages_supplied),
            PagerStats::get(&st.pages_unavailable),
            PagerStats::get(&st.pages_returned)
        );
    }
    if opts.keep {
        println!("  kept            {}", file.path().display());
    }
    println!();
    c.summary();
    Ok(c.all_passed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_passes_all_its_checks_on_a_small_file() {
        let opts = RunOptions { pages: 128, anon_pages: 48, resident_limit: 24, cluster: 4, keep: false };
        assert!(run(&opts).unwrap());
    }

    #[test]
    fn expected_contents_tell_shared_and_copy_writes_apart() {
        assert_eq!(shared_word(4, 1), MARK_A | 4);
        assert_eq!(shared_word(6, 2), MARK_B | 6);
        assert_eq!(shared_word(3, 3), original(3, 3));
        assert_eq!(copy_word(4, 1), original(4, 1));
        assert_eq!(copy_word(3, 3), MARK_COPY | 3);
    }
}

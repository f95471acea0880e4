//! The address space against a reference model.
//!
//! Random sequences of `vm_allocate` (anywhere and fixed), `vm_map` of
//! pager objects (shared and copy), `vm_protect`, `vm_inherit`,
//! `vm_deallocate`, `task_create`, `task_terminate`, thread reads, writes
//! and instruction fetches, and `vm_read` / `vm_write` / `vm_copy` run on
//! the kernel and on a plain model side by side:
//!
//! - each task is a `BTreeMap` from page address to `(cur, max, inherit,
//!   cell)`;
//! - a *cell* is the contents of one page of memory; pages that share
//!   memory (inheritance share, shared mappings of one object page) name
//!   the same cell, a copy (inheritance copy, copy mapping) gets a new cell
//!   holding the contents at the time of the copy;
//! - cells copied from one another form a *family*: after a write, every
//!   page of the written cell's family is read back, so both sharing
//!   (same cell) and copy-on-write isolation (other cells) are checked.
//!
//! After every step the model's prediction of the call's result (value or
//! Mach error) must match, and every live task's `vm_region` layout must
//! match the model page for page (and `vm_map_info`'s must match it). At
//! the end every readable page of every task is read in full and compared.
//!
//! The same sequences run a second time with six resident pages and a
//! default pager, so that anonymous pages, copies and pager-object pages
//! go out and come back between steps; the model does not change.
//!
//! Tasks and pages in an [`Op`] are selectors, resolved against the model
//! when the step runs (see [`resolve`]), so that most calls hit mapped
//! memory of live tasks and a shrunk failing case stays meaningful.

use machvm_core::ipc::{Disposition, PortName};
use machvm_core::vm::map::VM_MIN_ADDRESS;
use machvm_core::*;
use machvm_pagers::{boot_default_pager, MemBacking, PagerConn, RunningPager};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

const P: u64 = PAGE_SIZE;
/// Fixed-address operations and ranges land in this many pages from the
/// bottom of the map (anywhere allocations mostly land there too: best fit).
const WINDOW: u64 = 16;
/// The u64 slots of a page that single reads and writes touch.
const SLOTS: [u64; 4] = [0, 1, 256, 511];
const OBJECTS: usize = 2;
const MAX_TASKS: usize = 5;

/// Task selectors below this pick among all tasks ever made (dead ones
/// too); the others pick among the live ones.
const ANY_TASK: usize = 4;

fn addr(idx: u64) -> VmAddr {
    VmAddr(VM_MIN_ADDRESS + idx * P)
}

fn prot(bits: u8) -> VmProt {
    VmProt::from_bits_truncate(u32::from(bits))
}

fn inherit(i: u8) -> VmInherit {
    [VmInherit::Share, VmInherit::Copy, VmInherit::None][usize::from(i % 3)]
}

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        task: usize,
        pages: u64,
        fixed: Option<u64>,
        align_shift: u8,
    },
    MapObject {
        task: usize,
        obj: usize,
        offset: u64,
        pages: u64,
        fixed: Option<u64>,
        copy: bool,
        cur: u8,
        max: u8,
        inh: u8,
        /// Read the new mapping back at once.
        touch: bool,
    },
    Protect {
        task: usize,
        idx: u64,
        pages: u64,
        set_max: bool,
        prot: u8,
    },
    Inherit {
        task: usize,
        idx: u64,
        pages: u64,
        inh: u8,
    },
    Dealloc {
        task: usize,
        idx: u64,
        pages: u64,
    },
    /// `touch`: read the parent's and the child's memory back at once.
    Fork {
        parent: usize,
        touch: bool,
    },
    Terminate {
        task: usize,
    },
    Read {
        task: usize,
        idx: u64,
        slot: usize,
    },
    /// `observe`: read the page's family back before the write too.
    Write {
        task: usize,
        idx: u64,
        slot: usize,
        observe: bool,
    },
    Execute {
        task: usize,
        idx: u64,
    },
    VmRead {
        task: usize,
        idx: u64,
        pages: u64,
    },
    VmWrite {
        task: usize,
        idx: u64,
        pages: u64,
    },
    VmCopy {
        task: usize,
        src: u64,
        dst: u64,
        pages: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let t = prop_oneof![1 => 0..ANY_TASK, 9 => ANY_TASK..ANY_TASK + 8];
    let idx = prop_oneof![1 => 0..WINDOW, 3 => WINDOW..WINDOW + 64];
    let n = 1..5u64;
    // `cur` within `max`, but now and then not.
    let prots = (0..8u8, 0..8u8, proptest::bool::weighted(0.1))
        .prop_map(|(cur, max, bad)| (if bad { cur } else { cur & max }, max));
    let fixed = proptest::option::weighted(0.6, 0..WINDOW);
    prop_oneof![
        4 => (t.clone(), n.clone(), fixed.clone(), 0..3u8)
            .prop_map(|(task, pages, fixed, align_shift)| Op::Alloc { task, pages, fixed, align_shift }),
        4 => (t.clone(), 0..OBJECTS, 0..6u64, n.clone(), fixed, any::<bool>(), prots, 0..3u8, any::<bool>()).prop_map(
            |(task, obj, offset, pages, fixed, copy, (cur, max), inh, touch)| Op::MapObject {
                task, obj, offset, pages, fixed, copy, cur, max, inh, touch
            }
        ),
        3 => (t.clone(), idx.clone(), n.clone(), any::<bool>(), 0..8u8)
            .prop_map(|(task, idx, pages, set_max, prot)| Op::Protect { task, idx, pages, set_max, prot }),
        2 => (t.clone(), idx.clone(), n.clone(), 0..3u8)
            .prop_map(|(task, idx, pages, inh)| Op::Inherit { task, idx, pages, inh }),
        2 => (t.clone(), idx.clone(), n.clone()).prop_map(|(task, idx, pages)| Op::Dealloc { task, idx, pages }),
        3 => (t.clone(), any::<bool>()).prop_map(|(parent, touch)| Op::Fork { parent, touch }),
        1 => t.clone().prop_map(|task| Op::Terminate { task }),
        5 => (t.clone(), idx.clone(), 0..SLOTS.len()).prop_map(|(task, idx, slot)| Op::Read { task, idx, slot }),
        8 => (t.clone(), idx.clone(), 0..SLOTS.len(), any::<bool>())
            .prop_map(|(task, idx, slot, observe)| Op::Write { task, idx, slot, observe }),
        1 => (t.clone(), idx.clone()).prop_map(|(task, idx)| Op::Execute { task, idx }),
        1 => (t.clone(), idx.clone(), 1..4u64).prop_map(|(task, idx, pages)| Op::VmRead { task, idx, pages }),
        2 => (t.clone(), idx.clone(), 1..4u64).prop_map(|(task, idx, pages)| Op::VmWrite { task, idx, pages }),
        1 => (t, idx.clone(), idx, 1..4u64).prop_map(|(task, src, dst, pages)| Op::VmCopy { task, src, dst, pages }),
    ]
}

// ----- the model -----

/// A page's contents: every u64 is `fill` except the overridden slots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Contents {
    fill: u64,
    over: BTreeMap<u64, u64>,
}

impl Contents {
    fn slot(&self, i: u64) -> u64 {
        self.over.get(&i).copied().unwrap_or(self.fill)
    }
    fn bytes(&self) -> Vec<u8> {
        (0..P / 8).flat_map(|i| self.slot(i).to_le_bytes()).collect()
    }
}

#[derive(Clone, Debug)]
struct Cell {
    contents: Contents,
    family: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MPage {
    cur: VmProt,
    max: VmProt,
    inherit: VmInherit,
    cell: usize,
}

#[derive(Debug)]
struct MTask {
    id: TaskId,
    alive: bool,
    pages: BTreeMap<u64, MPage>,
    /// Send rights to the pager objects, given on first use.
    names: HashMap<usize, PortName>,
}

#[derive(Debug, Default)]
struct Model {
    cells: Vec<Cell>,
    families: usize,
    /// Object pages: (object, offset) → cell.
    objects: HashMap<(usize, u64), usize>,
    tasks: Vec<MTask>,
}

impl Model {
    fn new_cell(&mut self, contents: Contents, family: Option<usize>) -> usize {
        let family = family.unwrap_or_else(|| {
            self.families += 1;
            self.families
        });
        self.cells.push(Cell { contents, family });
        self.cells.len() - 1
    }

    fn copy_cell(&mut self, c: usize) -> usize {
        let Cell { contents, family } = self.cells[c].clone();
        self.new_cell(contents, Some(family))
    }

    fn object_cell(&mut self, obj: usize, offset: u64) -> usize {
        if let Some(&c) = self.objects.get(&(obj, offset)) {
            return c;
        }
        let c = self.new_cell(Contents::default(), None);
        self.objects.insert((obj, offset), c);
        c
    }

    fn pages_in(&self, t: usize, idx: u64, n: u64) -> Vec<Option<MPage>> {
        (idx..idx + n).map(|i| self.tasks[t].pages.get(&addr(i).0).copied()).collect()
    }

    fn is_free(&self, t: usize, start: u64, n: u64) -> bool {
        self.tasks[t].pages.range(start..start + n * P).next().is_none()
    }

    /// The error an access of `want` to pages `[idx, idx + n)` gets.
    fn access_error(&self, t: usize, idx: u64, n: u64, want: VmProt) -> Option<KernError> {
        let pages = self.pages_in(t, idx, n);
        if !self.tasks[t].alive {
            Some(KernError::InvalidTask)
        } else if pages.iter().any(Option::is_none) {
            Some(KernError::InvalidAddress)
        } else if pages.iter().any(|p| !p.unwrap().cur.contains(want)) {
            Some(KernError::ProtectionFailure)
        } else {
            None
        }
    }
}

// ----- the system under test -----

struct Sut {
    k: Arc<Kernel>,
    pager: RunningPager,
    /// The pager objects, named in the pager's space.
    objects: Vec<PortName>,
    /// The default pager, when memory is tight.
    _default_pager: Option<RunningPager>,
}

impl Sut {
    /// A kernel with a zero-fill pager; with `resident_limit`, also a
    /// default pager with a swap file, so that anonymous memory pages out.
    fn new(resident_limit: Option<usize>) -> Sut {
        let limit = resident_limit.unwrap_or(4096);
        let k = Kernel::new(KernelConfig { phys_pages: 4096, resident_limit: limit, ..KernelConfig::default() });
        let default_pager = resident_limit.map(|_| boot_default_pager(&k, swap_file()).unwrap());
        let mut conn = PagerConn::new(k.clone()).unwrap();
        let objects = (0..OBJECTS).map(|_| conn.new_object().unwrap()).collect();
        let pager = RunningPager::spawn(conn, MemBacking::default());
        Sut { k, pager, objects, _default_pager: default_pager }
    }
}

/// A fresh swap file, already unlinked.
fn swap_file() -> std::fs::File {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("vm-model-swap-{}-{n}", std::process::id()));
    let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    f
}

/// The page attributes `vm_region` reports for `t`, page by page.
fn kernel_layout(k: &Kernel, t: TaskId) -> BTreeMap<u64, (VmProt, VmProt, VmInherit)> {
    let mut out = BTreeMap::new();
    let mut a = VmAddr(0);
    loop {
        match k.vm_region(t, a) {
            Ok(r) => {
                assert!(r.start >= a && r.start.is_page_aligned() && r.size > 0 && r.size % P == 0, "{r:?}");
                for p in (r.start.0..r.start.0 + r.size).step_by(P as usize) {
                    out.insert(p, (r.cur, r.max, r.inherit));
                }
                a = VmAddr(r.start.0 + r.size);
            }
            Err(e) => {
                assert_eq!(e, KernError::InvalidAddress);
                return out;
            }
        }
    }
}

/// The same attributes from `vm_map_info`, which must agree with
/// `vm_region`'s.
fn map_info_layout(k: &Kernel, t: TaskId) -> BTreeMap<u64, (VmProt, VmProt, VmInherit)> {
    let mut out = BTreeMap::new();
    for e in k.vm_map_info(t).unwrap() {
        assert!(e.start < e.end && e.start.is_page_aligned() && e.end.is_page_aligned(), "{e:?}");
        for p in (e.start.0..e.end.0).step_by(P as usize) {
            assert!(out.insert(p, (e.cur, e.max, e.inherit)).is_none(), "entries overlap at {p:#x}");
        }
    }
    out
}

fn model_layout(m: &Model, t: usize) -> BTreeMap<u64, (VmProt, VmProt, VmInherit)> {
    m.tasks[t].pages.iter().map(|(&a, p)| (a, (p.cur, p.max, p.inherit))).collect()
}

/// Reads back slot `slot` of every readable page, in every live task, whose
/// cell is of the same family as `cell`.
fn check_family(s: &Sut, m: &Model, cell: usize, slot: u64, what: &str) {
    let family = m.cells[cell].family;
    for t in m.tasks.iter().filter(|t| t.alive) {
        for (&a, p) in &t.pages {
            if m.cells[p.cell].family != family || !p.cur.contains(VmProt::READ) {
                continue;
            }
            let got = s.k.read_u64(t.id, VmAddr(a + slot * 8));
            let want = m.cells[p.cell].contents.slot(slot);
            assert_eq!(got, Ok(want), "{what}: task {} page {a:#x} slot {slot}", t.id.number());
        }
    }
}

/// Turns selectors into task indices and page indices: a task selector
/// below `ANY_TASK` picks among all tasks, one above among live ones; a
/// page selector below `WINDOW` is a page index, one above picks among
/// the pages the task has mapped (so most accesses hit something).
fn resolve(m: &Model, op: &Op) -> Op {
    let task = |sel: usize| {
        let live: Vec<usize> = (0..m.tasks.len()).filter(|&i| m.tasks[i].alive).collect();
        if sel < ANY_TASK || live.is_empty() {
            sel % m.tasks.len()
        } else {
            live[(sel - ANY_TASK) % live.len()]
        }
    };
    let page = |t: usize, sel: u64| {
        let pages = &m.tasks[t].pages;
        if sel < WINDOW || pages.is_empty() {
            return sel % WINDOW;
        }
        let a = *pages.keys().nth(((sel - WINDOW) as usize) % pages.len()).unwrap();
        (a - VM_MIN_ADDRESS) / P
    };
    let mut op = op.clone();
    match &mut op {
        Op::Alloc { task: t, .. } | Op::MapObject { task: t, .. } | Op::Terminate { task: t } => *t = task(*t),
        Op::Fork { parent, .. } => *parent = task(*parent),
        Op::Protect { task: t, idx, .. }
        | Op::Inherit { task: t, idx, .. }
        | Op::Dealloc { task: t, idx, .. }
        | Op::Read { task: t, idx, .. }
        | Op::Write { task: t, idx, .. }
        | Op::Execute { task: t, idx }
        | Op::VmRead { task: t, idx, .. }
        | Op::VmWrite { task: t, idx, .. } => {
            *t = task(*t);
            *idx = page(*t, *idx);
        }
        Op::VmCopy { task: t, src, dst, .. } => {
            *t = task(*t);
            *src = page(*t, *src);
            *dst = page(*t, *dst);
        }
    }
    op
}

/// Runs one operation on both sides and compares.
fn step(s: &Sut, m: &mut Model, op: &Op, value: u64) {
    let k = &s.k;
    let op = &resolve(m, op);
    let what = format!("{op:?}");
    // Cells written by this step, to read back with their families.
    let mut written: Vec<(usize, u64)> = Vec::new();
    // Ranges `(task, start, pages)` to read back whole after this step.
    let mut touched: Vec<(usize, u64, u64)> = Vec::new();
    match *op {
        Op::Alloc { task, pages, fixed, align_shift } => {
            let t = task;
            let mask = (P << align_shift) - 1;
            let mut r = MapRequest::anywhere(pages * P, None).mask(mask);
            if let Some(i) = fixed {
                r = r.at(addr(i));
            }
            let got = k.vm_map(m.tasks[t].id, r);
            let want_err = if !m.tasks[t].alive {
                Some(KernError::InvalidTask)
            } else {
                match fixed {
                    Some(i) if addr(i).0 & mask != 0 => Some(KernError::InvalidArgument),
                    Some(i) if !m.is_free(t, addr(i).0, pages) => Some(KernError::NoSpace),
                    _ => None,
                }
            };
            match want_err {
                Some(e) => assert_eq!(got, Err(e), "{what}"),
                None => {
                    let a = got.unwrap_or_else(|e| panic!("{what}: {e}"));
                    if let Some(i) = fixed {
                        assert_eq!(a, addr(i), "{what}");
                    }
                    assert_eq!(a.0 & mask, 0, "{what}: misaligned {a:?}");
                    assert!(a.0 >= VM_MIN_ADDRESS && m.is_free(t, a.0, pages), "{what}: {a:?} not free");
                    for i in 0..pages {
                        let cell = m.new_cell(Contents::default(), None);
                        let page = MPage { cur: VmProt::DEFAULT, max: VmProt::ALL, inherit: VmInherit::Copy, cell };
                        m.tasks[t].pages.insert(a.0 + i * P, page);
                    }
                }
            }
        }
        Op::MapObject { task, obj, offset, pages, fixed, copy, cur, max, inh, touch } => {
            let t = task;
            let (cur, max, inh) = (prot(cur), prot(max), inherit(inh));
            let alive = m.tasks[t].alive;
            let name = if alive {
                let id = m.tasks[t].id;
                *m.tasks[t].names.entry(obj).or_insert_with(|| {
                    k.port_transfer(s.pager.task, s.objects[obj], Disposition::MakeSend, id).unwrap()
                })
            } else {
                PortName(0xdead)
            };
            let mut r =
                MapRequest::anywhere(pages * P, Some(name)).offset(offset * P).copy(copy).prot(cur, max).inherit(inh);
            if let Some(i) = fixed {
                r = r.at(addr(i));
            }
            let got = k.vm_map(m.tasks[t].id, r);
            let want_err = if !max.contains(cur) {
                Some(KernError::InvalidArgument)
            } else if !alive {
                Some(KernError::InvalidTask)
            } else {
                match fixed {
                    Some(i) if !m.is_free(t, addr(i).0, pages) => Some(KernError::NoSpace),
                    _ => None,
                }
            };
            match want_err {
                Some(e) => assert_eq!(got, Err(e), "{what}"),
                None => {
                    let a = got.unwrap_or_else(|e| panic!("{what}: {e}"));
                    if let Some(i) = fixed {
                        assert_eq!(a, addr(i), "{what}");
                    }
                    assert!(a.0 >= VM_MIN_ADDRESS && m.is_free(t, a.0, pages), "{what}: {a:?} not free");
                    for i in 0..pages {
                        let shared = m.object_cell(obj, (offset + i) * P);
                        let cell = if copy { m.copy_cell(shared) } else { shared };
                        m.tasks[t].pages.insert(a.0 + i * P, MPage { cur, max, inherit: inh, cell });
                    }
                    if touch {
                        touched.push((t, a.0, pages));
                    }
                }
            }
        }
        Op::Protect { task, idx, pages, set_max, prot: bits } => {
            let t = task;
            let p = prot(bits);
            let got = k.vm_protect(m.tasks[t].id, addr(idx), pages * P, set_max, p);
            let range = m.pages_in(t, idx, pages);
            let want = if !m.tasks[t].alive {
                Err(KernError::InvalidTask)
            } else if range.iter().any(Option::is_none) {
                Err(KernError::InvalidAddress)
            } else if range.iter().any(|pg| !pg.unwrap().max.contains(p)) {
                Err(KernError::ProtectionFailure)
            } else {
                Ok(())
            };
            assert_eq!(got, want, "{what}");
            if want.is_ok() {
                for i in idx..idx + pages {
                    let pg = m.tasks[t].pages.get_mut(&addr(i).0).unwrap();
                    if set_max {
                        pg.max = p;
                        pg.cur &= p;
                    } else {
                        pg.cur = p;
                    }
                }
            }
        }
        Op::Inherit { task, idx, pages, inh } => {
            let t = task;
            let got = k.vm_inherit(m.tasks[t].id, addr(idx), pages * P, inherit(inh));
            let want = if m.tasks[t].alive { Ok(()) } else { Err(KernError::InvalidTask) };
            assert_eq!(got, want, "{what}");
            for (_, pg) in m.tasks[t].pages.range_mut(addr(idx).0..addr(idx + pages).0) {
                pg.inherit = inherit(inh);
            }
        }
        Op::Dealloc { task, idx, pages } => {
            let t = task;
            let got = k.vm_deallocate(m.tasks[t].id, addr(idx), pages * P);
            let want = if m.tasks[t].alive { Ok(()) } else { Err(KernError::InvalidTask) };
            assert_eq!(got, want, "{what}");
            for i in idx..idx + pages {
                m.tasks[t].pages.remove(&addr(i).0);
            }
        }
        Op::Fork { parent, touch } => {
            if m.tasks.len() >= MAX_TASKS {
                return;
            }
            let t = parent;
            let got = k.task_create(Some(m.tasks[t].id));
            if !m.tasks[t].alive {
                assert_eq!(got, Err(KernError::InvalidTask), "{what}");
                return;
            }
            let id = got.unwrap_or_else(|e| panic!("{what}: {e}"));
            let mut pages = BTreeMap::new();
            for (a, pg) in m.tasks[t].pages.clone() {
                match pg.inherit {
                    VmInherit::None => {}
                    VmInherit::Share => {
                        pages.insert(a, pg);
                    }
                    VmInherit::Copy => {
                        let cell = m.copy_cell(pg.cell);
                        pages.insert(a, MPage { cell, ..pg });
                    }
                }
            }
            m.tasks.push(MTask { id, alive: true, pages, names: HashMap::new() });
            if touch {
                touched.push((t, 0, u64::MAX / P));
                touched.push((m.tasks.len() - 1, 0, u64::MAX / P));
            }
        }
        Op::Terminate { task } => {
            let t = task;
            if m.tasks[t].alive && m.tasks.iter().filter(|t| t.alive).count() == 1 {
                return;
            }
            let got = k.task_terminate(m.tasks[t].id);
            let want = if m.tasks[t].alive { Ok(()) } else { Err(KernError::InvalidTask) };
            assert_eq!(got, want, "{what}");
            m.tasks[t].alive = false;
            m.tasks[t].pages.clear();
        }
        Op::Read { task, idx, slot } => {
            let t = task;
            let got = k.read_u64(m.tasks[t].id, VmAddr(addr(idx).0 + SLOTS[slot] * 8));
            let want = match m.access_error(t, idx, 1, VmProt::READ) {
                Some(e) => Err(e),
                None => Ok(m.cells[m.pages_in(t, idx, 1)[0].unwrap().cell].contents.slot(SLOTS[slot])),
            };
            assert_eq!(got, want, "{what}");
        }
        Op::Write { task, idx, slot, observe } => {
            let t = task;
            if let (true, Some(pg)) = (observe, m.pages_in(t, idx, 1)[0]) {
                check_family(s, m, pg.cell, SLOTS[slot], &what);
            }
            let got = k.write_u64(m.tasks[t].id, VmAddr(addr(idx).0 + SLOTS[slot] * 8), value);
            match m.access_error(t, idx, 1, VmProt::WRITE) {
                Some(e) => assert_eq!(got, Err(e), "{what}"),
                None => {
                    assert_eq!(got, Ok(()), "{what}");
                    let cell = m.pages_in(t, idx, 1)[0].unwrap().cell;
                    m.cells[cell].contents.over.insert(SLOTS[slot], value);
                    written.push((cell, SLOTS[slot]));
                }
            }
        }
        Op::Execute { task, idx } => {
            let t = task;
            let got = k.execute(m.tasks[t].id, VmAddr(addr(idx).0 + 16));
            let want = m.access_error(t, idx, 1, VmProt::EXECUTE).map_or(Ok(()), Err);
            assert_eq!(got, want, "{what}");
        }
        Op::VmRead { task, idx, pages } => {
            let t = task;
            let got = k.vm_read(m.tasks[t].id, addr(idx), pages * P);
            let want = match m.access_error(t, idx, pages, VmProt::READ) {
                Some(e) => Err(e),
                None => Ok(m
                    .pages_in(t, idx, pages)
                    .into_iter()
                    .flat_map(|pg| m.cells[pg.unwrap().cell].contents.bytes())
                    .collect::<Vec<u8>>()),
            };
            assert!(got == want, "{what}: contents differ");
        }
        Op::VmWrite { task, idx, pages } => {
            let t = task;
            let data: Vec<u8> = (0..pages * P / 8).flat_map(|_| value.to_le_bytes()).collect();
            let got = k.vm_write(m.tasks[t].id, addr(idx), &data);
            match m.access_error(t, idx, pages, VmProt::WRITE) {
                Some(e) => assert_eq!(got, Err(e), "{what}"),
                None => {
                    assert_eq!(got, Ok(()), "{what}");
                    for pg in m.pages_in(t, idx, pages) {
                        let cell = pg.unwrap().cell;
                        m.cells[cell].contents = Contents { fill: value, over: BTreeMap::new() };
                        written.extend(SLOTS.iter().map(|&s| (cell, s)));
                    }
                }
            }
        }
        Op::VmCopy { task, src, dst, pages } => {
            let t = task;
            let got = k.vm_copy(m.tasks[t].id, addr(src), pages * P, addr(dst));
            let err =
                m.access_error(t, dst, pages, VmProt::WRITE).or_else(|| m.access_error(t, src, pages, VmProt::READ));
            match err {
                Some(e) => assert_eq!(got, Err(e), "{what}"),
                None => {
                    assert_eq!(got, Ok(()), "{what}");
                    let data: Vec<Contents> =
                        m.pages_in(t, src, pages).iter().map(|pg| m.cells[pg.unwrap().cell].contents.clone()).collect();
                    for (pg, c) in m.pages_in(t, dst, pages).into_iter().zip(data) {
                        let cell = pg.unwrap().cell;
                        m.cells[cell].contents = c;
                        written.extend(SLOTS.iter().map(|&s| (cell, s)));
                    }
                }
            }
        }
    }
    for (i, t) in m.tasks.iter().enumerate().filter(|(_, t)| t.alive) {
        let layout = kernel_layout(k, t.id);
        assert_eq!(layout, model_layout(m, i), "after {what}: layout of task {}", t.id.number());
        assert_eq!(map_info_layout(k, t.id), layout, "after {what}: vm_map_info of task {}", t.id.number());
    }
    written.sort_unstable();
    written.dedup();
    for (cell, slot) in written {
        check_family(s, m, cell, slot, &what);
    }
    for (t, start, pages) in touched {
        let t = &m.tasks[t];
        for (&a, p) in t.pages.range(start..start.saturating_add(pages * P)) {
            if p.cur.contains(VmProt::READ) {
                let got = k.vm_read(t.id, VmAddr(a), P);
                assert!(got == Ok(m.cells[p.cell].contents.bytes()), "{what}: task {} page {a:#x}", t.id.number());
            }
        }
    }
}

/// Reads every readable page of every live task in full.
fn final_sweep(s: &Sut, m: &Model) {
    for t in m.tasks.iter().filter(|t| t.alive) {
        for (&a, p) in t.pages.iter().filter(|(_, p)| p.cur.contains(VmProt::READ)) {
            let got = s.k.vm_read(t.id, VmAddr(a), P).unwrap();
            assert!(got == m.cells[p.cell].contents.bytes(), "final: task {} page {a:#x}", t.id.number());
        }
    }
}

fn run(ops: &[Op]) {
    run_with(ops, None)
}

fn run_with(ops: &[Op], resident_limit: Option<usize>) {
    let s = Sut::new(resident_limit);
    let first = s.k.task_create(None).unwrap();
    let mut m = Model::default();
    m.tasks.push(MTask { id: first, alive: true, pages: BTreeMap::new(), names: HashMap::new() });
    for (i, op) in ops.iter().enumerate() {
        step(&s, &mut m, op, 1000 + i as u64);
    }
    final_sweep(&s, &m);
}

proptest! {
    // 256 cases by default (a fraction of a second: each case is a fresh
    // kernel and a few dozen calls); set PROPTEST_CASES for a longer search.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn address_space_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(&ops);
    }

    /// The same with a handful of resident pages: pages of every kind
    /// (anonymous, copies, pager objects) go out and come back.
    #[test]
    fn address_space_matches_the_model_under_pageout(ops in proptest::collection::vec(op(), 1..40)) {
        run_with(&ops, Some(6));
    }
}

/// A fixed sequence through the interesting paths, so a regression shows
/// without relying on the random search.
#[test]
fn model_walkthrough() {
    use Op::*;
    run(&[
        Alloc { task: 0, pages: 4, fixed: Some(0), align_shift: 0 },
        MapObject {
            task: 0,
            obj: 0,
            offset: 0,
            pages: 3,
            fixed: Some(8),
            copy: false,
            cur: 3,
            max: 7,
            inh: 0,
            touch: false,
        },
        MapObject {
            task: 0,
            obj: 0,
            offset: 1,
            pages: 2,
            fixed: Some(12),
            copy: true,
            cur: 3,
            max: 7,
            inh: 1,
            touch: true,
        },
        Write { task: 0, idx: 9, slot: 0, observe: false },
        Read { task: 0, idx: 12, slot: 0 },
        Write { task: 0, idx: 1, slot: 1, observe: false },
        Write { task: 0, idx: 2, slot: 1, observe: false },
        Inherit { task: 0, idx: 0, pages: 2, inh: 0 },
        Inherit { task: 0, idx: 3, pages: 1, inh: 2 },
        Fork { parent: 0, touch: false },
        Read { task: 1, idx: 2, slot: 1 },
        Read { task: 1, idx: 13, slot: 0 },
        Write { task: 1, idx: 0, slot: 2, observe: false },
        Write { task: 0, idx: 2, slot: 2, observe: false },
        Write { task: 1, idx: 2, slot: 3, observe: false },
        Write { task: 0, idx: 9, slot: 1, observe: false },
        Write { task: 1, idx: 12, slot: 1, observe: false },
        Protect { task: 0, idx: 1, pages: 2, set_max: true, prot: 1 },
        Write { task: 0, idx: 1, slot: 0, observe: false },
        Protect { task: 0, idx: 1, pages: 1, set_max: false, prot: 3 },
        Dealloc { task: 0, idx: 1, pages: 1 },
        Protect { task: 0, idx: 0, pages: 3, set_max: false, prot: 1 },
        VmWrite { task: 1, idx: 0, pages: 3 },
        VmCopy { task: 1, src: 8, dst: 0, pages: 2 },
        VmRead { task: 1, idx: 0, pages: 3 },
        Terminate { task: 0 },
        Read { task: 0, idx: 0, slot: 0 },
        Fork { parent: 1, touch: true },
        Execute { task: 2, idx: 0 },
    ]);
}

/// Sequences the random search found (each exposed a stale translation
/// left behind by a copy-on-write step), kept as fixed cases.
#[test]
fn model_regressions() {
    use Op::*;
    // A copy-on-write entry shared at fork: the child's write copies the
    // page up into the shared shadow; the parent had mapped the page below.
    run(&[
        MapObject {
            task: 0,
            obj: 0,
            offset: 0,
            pages: 1,
            fixed: None,
            copy: true,
            cur: 3,
            max: 3,
            inh: 0,
            touch: true,
        },
        Fork { parent: 0, touch: false },
        Write { task: 1, idx: 0, slot: 0, observe: false },
    ]);
    // A copy mapping read, then the object written through a shared
    // mapping: the old contents are pushed to the copy, whose reader had
    // mapped the object's page.
    run(&[
        MapObject {
            task: 0,
            obj: 1,
            offset: 0,
            pages: 1,
            fixed: Some(0),
            copy: false,
            cur: 3,
            max: 7,
            inh: 1,
            touch: false,
        },
        MapObject {
            task: 0,
            obj: 1,
            offset: 0,
            pages: 1,
            fixed: Some(1),
            copy: true,
            cur: 3,
            max: 7,
            inh: 1,
            touch: true,
        },
        Write { task: 0, idx: 0, slot: 0, observe: true },
        Read { task: 0, idx: 1, slot: 0 },
    ]);
}

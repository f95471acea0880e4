//! Property: whatever chain of proxies a holder builds and however it maps,
//! protects and touches them, no access succeeds that the intersection
//! along the chain does not allow, and every byte it reads is the byte the
//! chain says it should see: never one outside the windows.
//!
//! The test composes the chain itself, in a model: for each proxy page,
//! the real object and page behind it and the protection allowed there.
//! Chains mix both versions at random, up to four levels deep; windows are
//! mostly valid (so chains get deep) and sometimes not (the call must then
//! fail with `KERN_INVALID_ARGUMENT`). Each 8-byte word of the objects
//! starts as [`word`]`(object, offset)`, so a read identifies exactly where
//! its data came from; writes store fresh tokens the model tracks.

mod common;

use common::*;
use machvm_core::ipc::PortName;
use machvm_core::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};

/// Pages of each object the chains draw from.
const PAGES: u8 = 8;

/// What the model knows of one proxy page.
#[derive(Clone, Copy, Debug)]
struct Cell {
    obj: usize,
    page: u64,
    prot: VmProt,
}

/// A proxy as the model sees it: proxy page → cell.
type Model = BTreeMap<u64, Cell>;

#[derive(Clone, Debug)]
struct LevelSpec {
    paging: bool,
    max: u8,
    /// (kind, a, b, c) per window, interpreted against the model.
    windows: Vec<(u8, u8, u8, u8)>,
}

#[derive(Clone, Debug)]
struct OpSpec {
    kind: u8,
    a: u8,
    b: u8,
    c: u8,
    d: u8,
    word: u16,
}

/// One page of a live mapping, as the model sees it.
#[derive(Clone, Copy, Debug)]
struct MPage {
    obj: usize,
    page: u64,
    cur: VmProt,
    max: VmProt,
    /// A copy mapping's own first word (a snapshot, then its writes).
    private: Option<u64>,
}

struct Mapping {
    addr: VmAddr,
    pages: Vec<MPage>,
}

fn level_spec() -> impl Strategy<Value = LevelSpec> {
    (any::<bool>(), 0u8..8, prop::collection::vec(any::<(u8, u8, u8, u8)>(), 1..=3))
        .prop_map(|(paging, max, windows)| LevelSpec { paging, max, windows })
}

fn op_spec() -> impl Strategy<Value = OpSpec> {
    (0u8..16, any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), 0u16..512)
        .prop_map(|(kind, a, b, c, d, word)| OpSpec { kind, a, b, c, d, word })
}

/// `(name, offset, start, len)` per window, as the kernel call takes them.
type Windows = Vec<(PortName, u64, u64, u64)>;

/// Builds the windows of one level from its spec: `(name, offset, start,
/// len)` in pages for the kernel call, and the model of the result if the
/// call must succeed.
fn plan_level(spec: &LevelSpec, objs: &[PortName], inner: Option<(PortName, &Model)>) -> (Windows, Option<Model>) {
    let max = prot(spec.max as u32);
    let mut windows = Vec::new();
    let mut model = Model::new();
    let mut valid = true;
    let mut cursor = 0u64;
    for &(kind, a, b, c) in &spec.windows {
        let offset = if kind % 8 == 7 { u64::from(c % 6) } else { cursor + u64::from(c % 3) };
        let (name, start, len, source) = match inner {
            Some((name, m)) if kind % 4 != 0 => {
                if kind % 8 == 1 {
                    // Anywhere, perhaps outside the inner proxy's windows.
                    (name, u64::from(a % 12), 1 + u64::from(b % 3), Ok(m))
                } else {
                    // Inside one run of the inner proxy's pages.
                    let keys: Vec<u64> = m.keys().copied().collect();
                    let start = keys[a as usize % keys.len()];
                    let run = (start..).take_while(|p| m.contains_key(p)).count().min(3) as u64;
                    (name, start, 1 + u64::from(b) % run, Ok(m))
                }
            }
            _ => {
                let obj = a as usize % objs.len();
                (objs[obj], u64::from(b % PAGES), 1 + u64::from(c % 3), Err(obj))
            }
        };
        cursor = offset + len;
        for i in 0..len {
            let cell = match source {
                Ok(m) => match m.get(&(start + i)) {
                    Some(cell) => Cell { prot: cell.prot & max, ..*cell },
                    None => {
                        valid = false;
                        continue;
                    }
                },
                Err(obj) => Cell { obj, page: start + i, prot: max },
            };
            if model.insert(offset + i, cell).is_some() {
                valid = false; // overlapping windows
            }
        }
        windows.push((name, offset * P, start * P, len * P));
    }
    (windows, valid.then_some(model))
}

fn run(levels: Vec<LevelSpec>, ops: Vec<OpSpec>) -> Result<(), TestCaseError> {
    let w = World::new(ProxyVersion::Paging, Transport::Local);
    let t = w.task();
    // The chain: each level's proxy name (owner's space, client's space) and model.
    let mut chain: Vec<(PortName, PortName, Model)> = Vec::new();
    for spec in &levels {
        let inner = chain.last().map(|(n, _, m)| (*n, m));
        let (windows, model) = plan_level(spec, &w.objs, inner);
        let version = if spec.paging { ProxyVersion::Paging } else { ProxyVersion::Mapping };
        let r = w.proxy_v(version, prot(spec.max as u32), &windows);
        match model {
            Some(model) => {
                let px = r.map_err(|e| TestCaseError::fail(format!("{windows:x?}: {e}")))?;
                let info = w.owner.memory_object_proxy_info(px.proxy).unwrap();
                let union = model.values().fold(VmProt::NONE, |u, c| u | c.prot);
                prop_assert_eq!(info.protection, union);
                chain.push((px.proxy, w.give(px.proxy, &t), model));
            }
            None => {
                prop_assert_eq!(r.map(|_| ()), Err(KernError::InvalidArgument), "{:x?}", windows);
                break;
            }
        }
    }
    if chain.is_empty() {
        return Ok(());
    }

    let mut shared: HashMap<(usize, u64), u64> = HashMap::new();
    let first_word = |shared: &HashMap<(usize, u64), u64>, obj: usize, page: u64| {
        shared.get(&(obj, page)).copied().unwrap_or(word(obj, page * P))
    };
    let mut maps: Vec<Mapping> = Vec::new();
    let mut token = 0xf00d_0000_0000u64;
    for op in ops {
        match op.kind {
            // vm_map of one level of the chain.
            0..=3 => {
                let (_, name, model) = &chain[op.a as usize % chain.len()];
                let keys: Vec<u64> = model.keys().copied().collect();
                let raw = op.d & 1 != 0 && op.d & 2 != 0;
                let (off, n) = if raw {
                    (u64::from(op.b % 12), 1 + u64::from(op.c % 4))
                } else {
                    (keys[op.b as usize % keys.len()], 1 + u64::from(op.c % 3))
                };
                let cur = prot(u32::from(op.d >> 2) & 7);
                let max = prot(u32::from(op.word) & 7);
                let max = if op.d & 0xc0 == 0xc0 { max } else { max | cur };
                let copy = op.word & 0x30 == 0x30;
                let cells: Option<Vec<Cell>> = (off..off + n).map(|p| model.get(&p).copied()).collect();
                let expect = match &cells {
                    Some(_) if !max.contains(cur) => Err(KernError::InvalidArgument),
                    None => Err(KernError::InvalidArgument),
                    Some(c) if copy && c.iter().any(|c| !c.prot.contains(VmProt::READ)) => {
                        Err(KernError::ProtectionFailure)
                    }
                    Some(_) => Ok(()),
                };
                let r = t.vm_map(MapRequest::anywhere(n * P, Some(*name)).offset(off * P).prot(cur, max).copy(copy));
                prop_assert_eq!(r.map(|_| ()), expect, "map {}+{} {:?}/{:?} copy {}", off, n, cur, max, copy);
                let Ok(addr) = r else { continue };
                let pages: Vec<MPage> = cells
                    .unwrap()
                    .into_iter()
                    .map(|c| {
                        let allowed = if copy { c.prot | VmProt::WRITE } else { c.prot };
                        MPage {
                            obj: c.obj,
                            page: c.page,
                            cur: cur & allowed,
                            max: max & allowed,
                            private: copy.then(|| first_word(&shared, c.obj, c.page)),
                        }
                    })
                    .collect();
                for (i, p) in pages.iter().enumerate() {
                    let region = t.vm_region(addr.plus(i as u64 * P)).unwrap();
                    prop_assert_eq!((region.cur, region.max), (p.cur, p.max), "region of page {}", i);
                }
                maps.push(Mapping { addr, pages });
            }
            // vm_protect over part of one mapping.
            4 | 5 if !maps.is_empty() => {
                let count = maps.len();
                let m = &mut maps[op.a as usize % count];
                let n = m.pages.len();
                let first = op.b as usize % n;
                let count = 1 + op.c as usize % (n - first);
                let set_max = op.d & 1 != 0;
                let new = prot(u32::from(op.d >> 1) & 7);
                let range = &mut m.pages[first..first + count];
                let expect =
                    if range.iter().all(|p| p.max.contains(new)) { Ok(()) } else { Err(KernError::ProtectionFailure) };
                let r = t.vm_protect(m.addr.plus(first as u64 * P), count as u64 * P, set_max, new);
                prop_assert_eq!(r, expect, "protect {:?} max {}", new, set_max);
                if r.is_ok() {
                    for p in range {
                        if set_max {
                            p.max = new;
                            p.cur &= new;
                        } else {
                            p.cur = new;
                        }
                    }
                }
            }
            // A store of a fresh token at the start of a page.
            10 | 11 if !maps.is_empty() => {
                let count = maps.len();
                let m = &mut maps[op.a as usize % count];
                let i = op.b as usize % m.pages.len();
                token += 1;
                let r = t.write_u64(m.addr.plus(i as u64 * P), token);
                let p = &mut m.pages[i];
                if p.cur.contains(VmProt::WRITE) {
                    prop_assert_eq!(r, Ok(()), "write {:?}", p);
                    match &mut p.private {
                        Some(v) => *v = token,
                        None => {
                            shared.insert((p.obj, p.page), token);
                        }
                    }
                } else {
                    prop_assert_eq!(r, Err(KernError::ProtectionFailure), "write {:?}", p);
                }
            }
            12 if !maps.is_empty() => {
                let m = &maps[op.a as usize % maps.len()];
                let i = op.b as usize % m.pages.len();
                let r = t.execute(m.addr.plus(i as u64 * P));
                let p = m.pages[i];
                let expect = if p.cur.contains(VmProt::EXECUTE) { Ok(()) } else { Err(KernError::ProtectionFailure) };
                prop_assert_eq!(r, expect, "execute {:?}", p);
            }
            13 if !maps.is_empty() => {
                let m = maps.swap_remove(op.a as usize % maps.len());
                t.vm_deallocate(m.addr, m.pages.len() as u64 * P).unwrap();
            }
            // A load of any word of a page.
            _ if !maps.is_empty() => {
                let m = &maps[op.a as usize % maps.len()];
                let i = op.b as usize % m.pages.len();
                check_read(&t, m, i, u64::from(op.word) * 8, &shared)?;
            }
            _ => {}
        }
    }
    // Finally every page of every mapping, first and last word.
    for m in &maps {
        for i in 0..m.pages.len() {
            check_read(&t, m, i, 0, &shared)?;
            check_read(&t, m, i, P - 8, &shared)?;
        }
    }
    Ok(())
}

/// Reads the word at `at` in page `i` of `m` and compares with the model.
fn check_read(
    t: &Task,
    m: &Mapping,
    i: usize,
    at: u64,
    shared: &HashMap<(usize, u64), u64>,
) -> Result<(), TestCaseError> {
    let p = m.pages[i];
    let r = t.read_u64(m.addr.plus(i as u64 * P + at));
    if !p.cur.contains(VmProt::READ) {
        prop_assert_eq!(r, Err(KernError::ProtectionFailure), "read {:?}", p);
        return Ok(());
    }
    let expect = match (at, p.private) {
        (0, Some(v)) => v,
        (0, None) => shared.get(&(p.obj, p.page)).copied().unwrap_or(word(p.obj, p.page * P)),
        _ => word(p.obj, p.page * P + at),
    };
    prop_assert_eq!(r, Ok(expect), "read {:#x} of {:?}", at, p);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn no_chain_grants_more_than_its_intersection(
        levels in prop::collection::vec(level_spec(), 1..=4),
        ops in prop::collection::vec(op_spec(), 1..64),
    ) {
        run(levels, ops)?;
    }
}

//! A working set written at random and read back: the words a task
//! stored, checked against a model, whatever paging happened between.

use super::Task;
use machvm_core::{VmAddr, PAGE_SIZE};
use std::collections::BTreeMap;

const P: u64 = PAGE_SIZE;
/// Words in a page.
pub const WORDS: u64 = P / 8;

/// xorshift64*: the same sequence every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Touches every page of `pages` at `base`, then writes random words all
/// over them (most to pages paged out since); returns the model, words
/// by (page, word).
pub fn scribble(t: &Task, base: VmAddr, pages: u64, writes: u64, seed: u64) -> BTreeMap<(u64, u64), u64> {
    let mut model = BTreeMap::new();
    for p in 0..pages {
        t.write_u64(VmAddr(base.0 + p * P), seed ^ p).unwrap();
        model.insert((p, 0), seed ^ p);
    }
    let mut rng = Rng(seed);
    for _ in 0..writes {
        let (p, w, v) = (rng.below(pages), rng.below(WORDS), rng.next());
        t.write_u64(VmAddr(base.0 + p * P + w * 8), v).unwrap();
        model.insert((p, w), v);
    }
    model
}

/// Reads every page back: each word is the model's, or zero.
#[track_caller]
pub fn verify(t: &Task, base: VmAddr, pages: u64, model: &BTreeMap<(u64, u64), u64>) {
    for p in 0..pages {
        let data = t.vm_read(VmAddr(base.0 + p * P), P).unwrap();
        for w in 0..WORDS {
            let got = u64::from_le_bytes(data[w as usize * 8..][..8].try_into().unwrap());
            assert_eq!(got, model.get(&(p, w)).copied().unwrap_or(0), "page {p} word {w}");
        }
    }
}

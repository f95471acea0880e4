//! A program whose memory is real, served by machvmd: copy it to start
//! your own. Run it as a task with
//!
//! ```text
//! cargo build --release --example real_memory
//! machvm run --name zero -- target/release/examples/real_memory
//! ```
//!
//! (a daemon running as root, and a pager serving `zero`: see the README).
//! It maps each object `machvm run --name` gave it (or, without names, a
//! megabyte of anonymous memory), stores into every page with ordinary
//! stores, and reads it all back.

use machvm_client::memory::RealMemory;
use machvm_protocol::PAGE_SIZE;

const SIZE: u64 = 1 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First, before touching any of its memory: the program becomes a task.
    let mem = RealMemory::from_env("example")?;
    let names = RealMemory::names_from_env();
    let regions = if names.is_empty() {
        vec![("anonymous memory".to_string(), mem.vm_allocate(SIZE)?)]
    } else {
        names
            .iter()
            .map(|n| Ok((n.clone(), mem.map_name(n, SIZE, false)?)))
            .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()?
    };
    for (name, region) in &regions {
        let before = region.load_u64(0)?;
        // One store per page: each first touch is a fault the daemon serves.
        for page in 0..region.len() / PAGE_SIZE {
            region.store_u64(page * PAGE_SIZE, page + 1)?;
        }
        let sum: u64 = (0..region.len() / PAGE_SIZE).map(|p| region.load_u64(p * PAGE_SIZE)).sum::<Result<u64, _>>()?;
        let pages = region.len() / PAGE_SIZE;
        println!(
            "{name}: {pages} pages at {:#x}, first word was {before}, sum of first words now {sum} (expected {})",
            region.addr().0,
            pages * (pages + 1) / 2
        );
    }
    Ok(())
}

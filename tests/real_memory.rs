//! Real memory, end to end: task processes map memory objects and touch
//! them with real loads and stores; machvmd serves their faults through
//! their userfaultfds, and the host MMU enforces their protection.
//!
//! Every test needs a daemon that can serve real memory (root and
//! userfaultfd, as on the development machines and in CI); elsewhere each
//! says why it skips.

mod common;

use common::daemon::*;
use machvm_client::memory::RealMemory;
use machvm_client::ClientError;
use machvm_protocol::{KernError, PAGE_SIZE};

/// Why real memory cannot be tested here, if it cannot.
fn skip() -> Option<String> {
    machvm_daemon::memory::unavailable()
}

macro_rules! need_real_memory {
    () => {
        if let Some(why) = skip() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

#[test]
fn a_process_stores_and_loads_zero_fill_memory_for_real() {
    need_real_memory!();
    let dir = Dir::new("real-zero");
    let _d = daemon(&dir.socket(), &["--memory", "real"]);
    let mem = RealMemory::attach(client(&dir.socket(), "real"), 1 << 30).unwrap();
    let r = mem.vm_allocate(16 * PAGE_SIZE).unwrap();
    assert_eq!(r.load_u64(0).unwrap(), 0, "zero fill");
    r.write(5 * PAGE_SIZE + 3, b"real memory").unwrap();
    let mut back = [0u8; 11];
    r.read(5 * PAGE_SIZE + 3, &mut back).unwrap();
    assert_eq!(&back, b"real memory");
    // The daemon's kernel sees the same bytes through a call.
    assert_eq!(
        mem.connection().load(machvm_protocol::VmAddr(r.addr().0 + 5 * PAGE_SIZE + 3), 11).unwrap(),
        b"real memory"
    );
    // A call's store is seen by the process's loads.
    mem.connection().store(machvm_protocol::VmAddr(r.addr().0 + 9 * PAGE_SIZE), b"from a call").unwrap();
    let mut b2 = [0u8; 11];
    r.read(9 * PAGE_SIZE, &mut b2).unwrap();
    assert_eq!(&b2, b"from a call");
    // The address is the arena's.
    assert!(mem.arena().range().contains(&machvm_host::PageRange::new(r.addr().0, r.len()).unwrap()));
    r.deallocate().unwrap();
    assert!(matches!(
        mem.connection().load(machvm_protocol::VmAddr(mem.arena().range().start()), 1),
        Err(ClientError::Kern(KernError::InvalidAddress))
    ));
}

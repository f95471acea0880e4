//! What userfaultfd costs here, through this crate, in one process (a
//! toucher thread faults, a handler thread resolves): per page, a fault
//! resolved by COPY and by CONTINUE, against Linux's own first touch of a
//! memfd page; a cluster installed by one CONTINUE against one call per
//! page; and a write-protect toggle. Needs userfaultfd (root).
//!
//! `cargo run --release -p machvm-host --example uffd_costs`

use machvm_host::uffd::{Event, Features, FillMode, Outcome, RegisterMode};
use machvm_host::{page_size, Mapping, ObjectMemory, PageRange, Prot, Userfaultfd};
use std::sync::Arc;
use std::time::Instant;

const PAGES: u64 = 4096;

fn setup(fill: bool) -> (Arc<ObjectMemory>, Arc<Mapping>) {
    let p = page_size();
    let obj = Arc::new(ObjectMemory::new("costs", PAGES * p).unwrap());
    if fill {
        let data = vec![7u8; (PAGES * p) as usize];
        obj.write_at(0, &data).unwrap();
    }
    let m = Arc::new(Mapping::of(&obj, PageRange::pages(0, PAGES).unwrap(), Prot::READ | Prot::WRITE).unwrap());
    (obj, m)
}

/// Touches every page once (a load of one word per page); µs per page.
fn touch_all(m: &Mapping) -> f64 {
    let p = page_size() as usize;
    let mut b = [0u8; 8];
    let t = Instant::now();
    for n in 0..PAGES as usize {
        m.read(n * p, &mut b).unwrap();
    }
    t.elapsed().as_secs_f64() * 1e6 / PAGES as f64
}

/// Faults every page of a registered mapping, served one fault at a time by
/// a handler thread; µs per page.
fn served(minor: bool) -> f64 {
    let (_obj, m) = setup(minor);
    let need = Features::MISSING_SHMEM | Features::MINOR_SHMEM;
    let u = Arc::new(Userfaultfd::open(need).unwrap());
    u.register_mapping(&m, if minor { RegisterMode::MINOR } else { RegisterMode::MISSING }).unwrap();
    let h = {
        let u = u.clone();
        std::thread::spawn(move || {
            let src = vec![7u8; page_size() as usize];
            let mut events = Vec::new();
            let mut served = 0;
            while served < PAGES {
                u.wait_readable(None).unwrap();
                events.clear();
                u.read_events(&mut events, 64).unwrap();
                for e in &events {
                    let Event::PageFault(f) = e else { continue };
                    let done = if minor {
                        u.continue_(f.page(), FillMode::empty()).unwrap()
                    } else {
                        u.copy(f.page().start(), &src, FillMode::empty()).unwrap()
                    };
                    assert!(matches!(done, Outcome::Done | Outcome::Exists), "{done:?}");
                    served += 1;
                }
            }
        })
    };
    let us = touch_all(&m);
    h.join().unwrap();
    us
}

fn main() {
    if let Err(e) = Features::available() {
        eprintln!("userfaultfd is unavailable here: {e}");
        return;
    }
    let p = page_size();
    let (_o, m) = setup(false);
    println!("Linux first touch of an empty memfd page:      {:6.2} µs/page", touch_all(&m));
    let (_o, m) = setup(true);
    println!("Linux first touch of a cached memfd page:      {:6.2} µs/page", touch_all(&m));
    println!("MISSING fault served by COPY (handler thread): {:6.2} µs/page", served(false));
    println!("MINOR fault served by CONTINUE (handler):      {:6.2} µs/page", served(true));

    let (_o, m) = setup(true);
    let u = Userfaultfd::open(Features::MINOR_SHMEM | Features::WP_HUGETLBFS_SHMEM).unwrap();
    u.register_mapping(&m, RegisterMode::MINOR | RegisterMode::WP).unwrap();
    let half = PAGES / 2;
    let t = Instant::now();
    for n in 0..half {
        let r = PageRange::pages(n, 1).unwrap().shifted(m.addr()).unwrap();
        assert_eq!(u.continue_(r, FillMode::empty()).unwrap(), Outcome::Done);
    }
    let single = t.elapsed().as_secs_f64() * 1e6 / half as f64;
    let t = Instant::now();
    for c in (half..PAGES).step_by(256) {
        let r = PageRange::pages(c, 256).unwrap().shifted(m.addr()).unwrap();
        assert_eq!(u.continue_(r, FillMode::empty()).unwrap(), Outcome::Done);
    }
    let cluster = t.elapsed().as_secs_f64() * 1e6 / half as f64;
    println!("eager CONTINUE, one page per call:             {single:6.2} µs/page");
    println!("eager CONTINUE, 256 pages per call:            {cluster:6.2} µs/page");
    let r = PageRange::new(m.addr(), p).unwrap();
    let rounds = 10_000;
    let t = Instant::now();
    for _ in 0..rounds {
        assert_eq!(u.writeprotect(r, true).unwrap(), Outcome::Done);
        assert_eq!(u.writeprotect(r, false).unwrap(), Outcome::Done);
    }
    println!(
        "WRITEPROTECT on then off, one mapped page:     {:6.2} µs/pair",
        t.elapsed().as_secs_f64() * 1e6 / rounds as f64
    );
}

//! userfaultfd in one process: a handler thread serves the faults that
//! other threads take on memfd mappings. Each test states a host fact the
//! fault server will rely on (the crate doc lists them) and checks it on
//! this kernel. They need userfaultfd (root here); elsewhere each skips,
//! saying why.

mod common;

use common::{pattern, timed, uffd_or_skip, Handler, PATIENCE};
use machvm_host::uffd::{Event, Features, FillMode, Ioctls, Outcome, RegisterMode};
use machvm_host::{page_size, Errno, Error, Mapping, NewUserfaultfd, ObjectMemory, PageRange, Prot, Userfaultfd};
use rustix::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

fn page(n: u64) -> PageRange {
    PageRange::pages(n, 1).unwrap()
}

/// The address range of page `n` of `m`.
fn at(m: &Mapping, n: u64) -> PageRange {
    page(n).shifted(m.addr()).unwrap()
}

/// The page number of a fault in `m`.
fn page_of(base: u64, addr: u64) -> u64 {
    (addr - base) / page_size()
}

fn object(pages: u64) -> Arc<ObjectMemory> {
    Arc::new(ObjectMemory::new("uffd test", pages * page_size()).unwrap())
}

fn map(obj: &ObjectMemory, prot: Prot) -> Arc<Mapping> {
    Arc::new(Mapping::of(obj, PageRange::new(0, obj.size()).unwrap(), prot).unwrap())
}

fn read_page(m: &Mapping, n: u64) -> Vec<u8> {
    let mut buf = vec![0u8; page_size() as usize];
    m.read((n * page_size()) as usize, &mut buf).unwrap();
    buf
}

fn memfd_page(obj: &ObjectMemory, n: u64) -> Vec<u8> {
    let mut buf = vec![0u8; page_size() as usize];
    obj.read_at(n * page_size(), &mut buf).unwrap();
    buf
}

#[test]
fn the_handshake_grants_what_was_asked_and_registration_says_what_it_allows() {
    if !uffd_or_skip("handshake", Features::SHMEM_SERVING) {
        return;
    }
    let have = Features::available().unwrap();
    eprintln!("userfaultfd features offered: {have:?} ({:#x})", have.bits());
    let u = Userfaultfd::open(Features::SHMEM_SERVING).unwrap();
    assert_eq!(u.features(), Features::SHMEM_SERVING);
    assert!(u.api_ioctls().contains(Ioctls::API | Ioctls::REGISTER | Ioctls::UNREGISTER), "{:?}", u.api_ioctls());
    assert!(u.is_own());
    let fl = rustix::fs::fcntl_getfl(&u).unwrap();
    assert!(fl.contains(rustix::fs::OFlags::NONBLOCK), "every uffd is non-blocking");
    // The handshake is made once per uffd: a second one (through another
    // descriptor of the same uffd) is refused.
    let again = NewUserfaultfd::from_received(rustix::io::fcntl_dupfd_cloexec(&u, 0).unwrap()).unwrap();
    assert_eq!(again.handshake(Features::SHMEM_SERVING).unwrap_err().errno(), Some(Errno::INVAL));

    let obj = object(4);
    let m = map(&obj, Prot::READ | Prot::WRITE);
    let all = RegisterMode::MISSING | RegisterMode::MINOR | RegisterMode::WP;
    let io = u.register_mapping(&m, all).unwrap();
    eprintln!("ioctls of a memfd range registered MISSING|MINOR|WP: {io:?}");
    let serving =
        Ioctls::WAKE | Ioctls::COPY | Ioctls::ZEROPAGE | Ioctls::WRITEPROTECT | Ioctls::CONTINUE | Ioctls::POISON;
    assert!(io.contains(serving), "{io:?}");

    // Nothing waits: a read finds nothing (EAGAIN is not an error), a poll times out.
    let mut events = Vec::new();
    assert_eq!(u.read_events(&mut events, 16).unwrap(), 0);
    assert!(!u.wait_readable(Some(Duration::from_millis(10))).unwrap());

    // The soundness rules: this process's uffd registers Mappings only.
    assert!(matches!(u.register(m.range(), RegisterMode::MISSING), Err(Error::AddressSpace(_))));
    // A range belongs to one uffd at a time.
    let other = Userfaultfd::open(Features::MISSING_SHMEM).unwrap();
    assert_eq!(other.register_mapping(&m, RegisterMode::MISSING).unwrap_err().errno(), Some(Errno::BUSY));
    // The *_SHMEM features announce what the kernel can do; they do not
    // gate registration: a uffd whose handshake asked for nothing registers
    // a memfd mapping in every mode.
    let obj2 = object(1);
    let bare = Userfaultfd::open(Features::empty()).unwrap();
    let m2 = map(&obj2, Prot::READ | Prot::WRITE);
    let io = bare.register_mapping(&m2, all).unwrap();
    assert!(io.contains(serving), "{io:?}");
    assert_eq!(bare.poison(m2.range()).unwrap(), Outcome::Done, "nor does POISON need its feature");
    bare.unregister(m2.range()).unwrap();
    // Registration needs a descriptor opened for writing, even for a read-only mapping.
    let ro = rustix::fs::open(
        format!("/proc/self/fd/{}", rustix::fd::AsRawFd::as_raw_fd(&obj2.as_fd())),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let m3 = Mapping::map(&ro, page(0), Prot::READ).unwrap();
    assert_eq!(other.register_mapping(&m3, RegisterMode::MISSING).unwrap_err().errno(), Some(Errno::PERM));
}

#[test]
fn a_uffd_comes_from_the_device_too_and_a_received_one_is_checked() {
    if !uffd_or_skip("creation paths", Features::MISSING_SHMEM) {
        return;
    }
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/userfaultfd") {
        Ok(dev) => {
            let n = NewUserfaultfd::from_device(&dev).unwrap();
            assert!(n.is_own());
            let u = n.handshake(Features::MISSING_SHMEM).unwrap();
            let obj = object(1);
            let m = map(&obj, Prot::READ | Prot::WRITE);
            u.register_mapping(&m, RegisterMode::MISSING).unwrap();
            assert_eq!(u.zeropage(at(&m, 0)).unwrap(), Outcome::Done);
        }
        Err(e) => eprintln!("(the /dev/userfaultfd part is skipped: {e})"),
    }
    let null = std::fs::File::open("/dev/null").unwrap();
    assert!(matches!(NewUserfaultfd::from_device(&null), Err(Error::WrongDescriptor { .. })));

    // A received descriptor that is not a uffd is refused, saying what it is.
    let obj = object(1);
    let dup = rustix::io::fcntl_dupfd_cloexec(&obj, 0).unwrap();
    match NewUserfaultfd::from_received(dup) {
        Err(Error::WrongDescriptor { found, .. }) => assert!(found.starts_with("/memfd:uffd test"), "{found}"),
        other => panic!("{other:?}"),
    }

    // Each uffd has an inode of its own, so one of this process's sent and
    // received back is still known as its own.
    let a = NewUserfaultfd::create().unwrap();
    let b = NewUserfaultfd::create().unwrap();
    assert_ne!(rustix::fs::fstat(&a).unwrap().st_ino, rustix::fs::fstat(&b).unwrap().st_ino);
    let (s1, s2) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    machvm_host::fdpass::send_fds(&s1, b"u", &[a.as_fd()]).unwrap();
    let mut buf = [0u8; 1];
    let mut got = machvm_host::fdpass::recv_fds(&s2, &mut buf, 1).unwrap();
    let back = NewUserfaultfd::from_received(got.fds.pop().unwrap()).unwrap();
    assert!(back.is_own());

    // poll() on a blocking uffd reports POLLERR: why every uffd is made
    // non-blocking, also one received blocking.
    // SAFETY: the uffd is only polled and handed to from_received; it never
    // registers anything.
    let blocking = unsafe { rustix::mm::userfaultfd(rustix::mm::UserfaultfdFlags::CLOEXEC) }.unwrap();
    let fixed = NewUserfaultfd::from_received(blocking).unwrap();
    assert!(rustix::fs::fcntl_getfl(&fixed).unwrap().contains(rustix::fs::OFlags::NONBLOCK));
    let poll_now = |fd: &dyn AsFd| {
        let mut fds = [rustix::event::PollFd::from_borrowed_fd(fd.as_fd(), rustix::event::PollFlags::IN)];
        rustix::event::poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })).unwrap();
        fds[0].revents()
    };
    let err = rustix::event::PollFlags::ERR;
    assert_eq!(poll_now(&fixed), err, "before its handshake a uffd polls as an error");
    let u = fixed.handshake(Features::empty()).unwrap();
    assert!(poll_now(&u).is_empty());
    // Another process sharing the open file (the task that made the uffd)
    // can make it blocking again: reads still do not wait, and a wait
    // restores the flag.
    let fl = rustix::fs::fcntl_getfl(&u).unwrap();
    rustix::fs::fcntl_setfl(&u, fl - rustix::fs::OFlags::NONBLOCK).unwrap();
    assert_eq!(poll_now(&u), err, "a blocking uffd polls as an error");
    let u = Arc::new(u);
    let u2 = u.clone();
    assert_eq!(timed("reading a uffd made blocking", move || u2.read_events(&mut Vec::new(), 8).unwrap()), 0);
    assert!(u.wait_readable(Some(Duration::from_millis(10))).unwrap());
    assert!(rustix::fs::fcntl_getfl(&*u).unwrap().contains(rustix::fs::OFlags::NONBLOCK));
    assert!(poll_now(&*u).is_empty());
    assert!(!u.ensure_nonblocking().unwrap());
}

#[test]
fn missing_faults_are_resolved_by_copy_and_zeropage_from_a_handler_thread() {
    if !uffd_or_skip("missing faults", Features::MISSING_SHMEM) {
        return;
    }
    let obj = object(2);
    let m = map(&obj, Prot::READ | Prot::WRITE);
    let u = Arc::new(Userfaultfd::open(Features::MISSING_SHMEM).unwrap());
    u.register_mapping(&m, RegisterMode::MISSING).unwrap();
    let base = m.addr();
    let h = Handler::spawn(u.clone(), move |u, e| {
        let Event::PageFault(f) = e else { panic!("{e:?}") };
        let done = match page_of(base, f.addr) {
            0 => u.copy(f.page().start(), &pattern(0), FillMode::empty()).unwrap(),
            _ => u.zeropage(f.page()).unwrap(),
        };
        assert_eq!(done, Outcome::Done);
    });
    let mm = m.clone();
    let (p0, p1) = timed("reading two missing pages", move || (read_page(&mm, 0), read_page(&mm, 1)));
    assert_eq!(p0, pattern(0));
    assert_eq!(p1, vec![0u8; page_size() as usize]);
    let faults = h.finish();
    assert_eq!(faults.len(), 2, "{faults:?}");
    for f in &faults {
        assert!(!f.minor && !f.wp && !f.write, "{f:?}");
    }
    // On a memfd mapping the filled pages are the memfd's.
    assert_eq!(memfd_page(&obj, 0), pattern(0));
    assert_eq!(obj.present(PageRange::pages(0, 2).unwrap()).unwrap(), vec![PageRange::pages(0, 2).unwrap()]);
}

#[test]
fn minor_and_missing_faults_are_resolved_by_continue_after_the_memfd_has_the_page() {
    if !uffd_or_skip("minor faults", Features::MISSING_SHMEM | Features::MINOR_SHMEM) {
        return;
    }
    let obj = object(2);
    obj.write_at(0, &pattern(10)).unwrap();
    let m = map(&obj, Prot::READ | Prot::WRITE);
    let u = Arc::new(Userfaultfd::open(Features::MISSING_SHMEM | Features::MINOR_SHMEM).unwrap());
    u.register_mapping(&m, RegisterMode::MISSING | RegisterMode::MINOR).unwrap();
    let (base, o) = (m.addr(), obj.clone());
    let h = Handler::spawn(u.clone(), move |u, e| {
        let Event::PageFault(f) = e else { panic!("{e:?}") };
        let n = page_of(base, f.addr);
        if !f.minor {
            // A hole: the pager's data goes into the memfd, then CONTINUE maps it.
            o.write_at(n * page_size(), &pattern(11)).unwrap();
        }
        assert_eq!(u.continue_(f.page(), FillMode::empty()).unwrap(), Outcome::Done);
    });
    let mm = m.clone();
    let (p0, p1) = timed("reading a cached page and a hole", move || (read_page(&mm, 0), read_page(&mm, 1)));
    assert_eq!(p0, pattern(10));
    assert_eq!(p1, pattern(11));
    let faults = h.finish();
    assert_eq!(faults.len(), 2, "{faults:?}");
    let kind = |n: u64| faults.iter().find(|f| page_of(base, f.addr) == n).map(|f| f.minor);
    assert_eq!(kind(0), Some(true), "a page the memfd holds faults MINOR");
    assert_eq!(kind(1), Some(false), "a hole faults MISSING");
}

#[test]
fn fills_that_meet_a_mapped_page_a_cached_page_or_a_hole_say_so() {
    let need = Features::MISSING_SHMEM | Features::MINOR_SHMEM | Features::POISON;
    if !uffd_or_skip("fill outcomes", need) {
        return;
    }
    let p = page_size();
    let obj = object(8);
    let m = map(&obj, Prot::READ | Prot::WRITE);
    let u = Userfaultfd::open(need).unwrap();
    u.register_mapping(&m, RegisterMode::MISSING | RegisterMode::MINOR).unwrap();
    let none = FillMode::empty();

    // Page 0: filled, then every fill of it again finds it mapped.
    assert_eq!(u.copy(at(&m, 0).start(), &pattern(0), none).unwrap(), Outcome::Done);
    assert_eq!(u.copy(at(&m, 0).start(), &pattern(1), none).unwrap(), Outcome::Exists);
    assert_eq!(u.continue_(at(&m, 0), none).unwrap(), Outcome::Exists);
    assert_eq!(u.poison(at(&m, 0)).unwrap(), Outcome::Exists, "POISON never takes a mapped page");
    assert_eq!(memfd_page(&obj, 0), pattern(0), "nothing overwrote the first copy");

    // Pages 1-2, page 2 in the memfd but not mapped: COPY stops there.
    obj.write_at(2 * p, &pattern(2)).unwrap();
    let two = PageRange::pages(1, 2).unwrap().shifted(m.addr()).unwrap();
    let mut src = pattern(1);
    src.extend(pattern(9));
    assert_eq!(u.copy(two.start(), &src, none).unwrap(), Outcome::Partial { bytes: p });
    assert_eq!(u.copy(at(&m, 2).start(), &pattern(9), none).unwrap(), Outcome::Exists, "COPY over a cached page");
    assert_eq!(memfd_page(&obj, 2), pattern(2));
    assert_eq!(u.continue_(at(&m, 2), none).unwrap(), Outcome::Done, "CONTINUE maps the cached page");

    // CONTINUE of a hole is EFAULT; over a cached page then a hole, partial.
    assert_eq!(u.continue_(at(&m, 3), none).unwrap_err().errno(), Some(Errno::FAULT));
    obj.write_at(4 * p, &pattern(4)).unwrap();
    let four = PageRange::pages(4, 2).unwrap().shifted(m.addr()).unwrap();
    assert_eq!(u.continue_(four, none).unwrap(), Outcome::Partial { bytes: p });

    // A poisoned hole can be filled again: COPY replaces the poison.
    assert_eq!(u.poison(at(&m, 5)).unwrap(), Outcome::Done);
    assert_eq!(u.copy(at(&m, 5).start(), &pattern(5), none).unwrap(), Outcome::Done);

    // ZEROPAGE fills a hole once.
    assert_eq!(u.zeropage(at(&m, 6)).unwrap(), Outcome::Done);
    assert_eq!(u.zeropage(at(&m, 6)).unwrap(), Outcome::Exists);

    // Where nothing is registered any more: ENOENT, and a wake is harmless.
    u.unregister(at(&m, 7)).unwrap();
    assert_eq!(u.copy(at(&m, 7).start(), &pattern(7), none).unwrap(), Outcome::Unmapped);
    u.wake(at(&m, 7)).unwrap();

    // The filled pages read without faulting (a fault here would hang:
    // nobody serves this uffd).
    let mm = m.clone();
    let got = timed("reading filled pages", move || [0, 1, 2, 4, 5, 6].map(|n| read_page(&mm, n)));
    assert_eq!(got, [pattern(0), pattern(1), pattern(2), pattern(4), pattern(5), vec![0u8; p as usize]]);

    // A fill works on any registered range (MINOR's CONTINUE on a range
    // registered MISSING only, here); only write-protection needs WP.
    let obj2 = object(1);
    obj2.write_at(0, &pattern(3)).unwrap();
    let m2 = map(&obj2, Prot::READ | Prot::WRITE);
    let only = Userfaultfd::open(Features::empty()).unwrap();
    only.register_mapping(&m2, RegisterMode::MISSING).unwrap();
    assert_eq!(only.continue_(at(&m2, 0), FillMode::WRITE_PROTECT).unwrap_err().errno(), Some(Errno::INVAL));
    assert_eq!(only.continue_(at(&m2, 0), none).unwrap(), Outcome::Done);
    assert_eq!(only.writeprotect(at(&m2, 0), true).unwrap(), Outcome::Unmapped, "no WP registration there");

    // Argument checks happen before the kernel sees anything.
    assert!(matches!(u.copy(m.addr() + 1, &pattern(0), none), Err(Error::BadRange { .. })));
    assert!(matches!(u.copy(m.addr(), &pattern(0)[..100], none), Err(Error::BadRange { .. })));
}

#[test]
fn a_fill_while_an_address_space_event_is_unread_is_changed_and_succeeds_after_it() {
    let need = Features::MISSING_SHMEM | Features::EVENT_REMOVE;
    if !uffd_or_skip("changing address space", need) {
        return;
    }
    let obj = object(2);
    let m = map(&obj, Prot::READ | Prot::WRITE);
    let u = Userfaultfd::open(need).unwrap();
    u.register_mapping(&m, RegisterMode::MISSING).unwrap();
    assert_eq!(u.zeropage(at(&m, 0)).unwrap(), Outcome::Done);
    // A thread discards page 0: it waits in madvise until its REMOVE event is read.
    let (tx, rx) = std::sync::mpsc::channel();
    let (addr, len) = (m.addr() as usize, page_size() as usize);
    std::thread::spawn(move || {
        // SAFETY: the range is page 0 of a live MAP_SHARED mapping of this
        // test (the Mapping outlives this thread's call: the test waits for
        // it below); on a shared mapping MADV_DONTNEED only drops this
        // process's page table entries, the memfd keeps the data.
        let r = unsafe { rustix::mm::madvise(addr as *mut std::ffi::c_void, len, rustix::mm::Advice::LinuxDontNeed) };
        let _ = tx.send(r);
    });
    assert!(u.wait_readable(Some(PATIENCE)).unwrap(), "the REMOVE event is waiting");
    assert_eq!(u.zeropage(at(&m, 1)).unwrap(), Outcome::Changed);
    assert!(rx.try_recv().is_err(), "madvise waits for its event to be read");
    let mut events = Vec::new();
    assert_eq!(u.read_events(&mut events, 16).unwrap(), 1);
    match &events[0] {
        Event::Remove { start, end } => assert_eq!((*start, *end), (m.addr(), m.addr() + page_size())),
        other => panic!("{other:?}"),
    }
    rx.recv_timeout(PATIENCE).expect("madvise returns once its event is read").unwrap();
    assert_eq!(u.zeropage(at(&m, 1)).unwrap(), Outcome::Done);
}

#[test]
fn a_store_into_a_write_protected_page_waits_until_the_handler_lifts_the_protection() {
    let need = Features::MINOR_SHMEM | Features::WP_HUGETLBFS_SHMEM;
    if !uffd_or_skip("write-protect", need) {
        return;
    }
    let obj = object(1);
    obj.write_at(0, b"before").unwrap();
    let m = map(&obj, Prot::READ | Prot::WRITE);
    let u = Arc::new(Userfaultfd::open(need).unwrap());
    u.register_mapping(&m, RegisterMode::MINOR | RegisterMode::WP).unwrap();
    assert_eq!(u.continue_(at(&m, 0), FillMode::WRITE_PROTECT).unwrap(), Outcome::Done);
    let o = obj.clone();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let h = Handler::spawn(u.clone(), move |u, e| {
        let Event::PageFault(f) = e else { panic!("{e:?}") };
        assert!(f.wp && f.write && !f.minor, "{f:?}");
        // What the memfd holds while the store waits.
        let mut now = [0u8; 6];
        o.read_at(0, &mut now).unwrap();
        s2.lock().unwrap().push(now);
        assert_eq!(u.writeprotect(f.page(), false).unwrap(), Outcome::Done);
    });
    // Loads of a write-protected page do not fault.
    let mm = m.clone();
    assert_eq!(&timed("reading a protected page", move || read_page(&mm, 0))[..6], b"before");
    assert!(h.faults().is_empty());
    let mm = m.clone();
    timed("storing into a protected page", move || mm.write(0, b"after!").unwrap());
    assert_eq!(&memfd_page(&obj, 0)[..6], b"after!");
    // Protected again from outside the faulting thread, it faults again.
    assert_eq!(u.writeprotect(at(&m, 0), true).unwrap(), Outcome::Done);
    let mm = m.clone();
    timed("storing into a re-protected page", move || mm.write(0, b"third!").unwrap());
    assert_eq!(&memfd_page(&obj, 0)[..6], b"third!");
    assert_eq!(h.finish().len(), 2);
    assert_eq!(*seen.lock().unwrap(), [*b"before", *b"after!"], "each store waited while its page was protected");
}

#[test]
fn write_protection_survives_the_processs_own_mprotect() {
    let need = Features::MINOR_SHMEM | Features::WP_HUGETLBFS_SHMEM;
    if !uffd_or_skip("write-protect and mprotect", need) {
        return;
    }
    let obj = object(2);
    obj.write_at(0, b"kept").unwrap();
    obj.write_at(page_size(), b"free").unwrap();
    // Read-only, as the daemon maps a read-only grant (from a writable descriptor).
    let m = map(&obj, Prot::READ);
    let u = Arc::new(Userfaultfd::open(need).unwrap());
    u.register_mapping(&m, RegisterMode::MINOR | RegisterMode::WP).unwrap();
    assert_eq!(u.continue_(at(&m, 0), FillMode::WRITE_PROTECT).unwrap(), Outcome::Done);
    assert_eq!(u.continue_(at(&m, 1), FillMode::empty()).unwrap(), Outcome::Done);
    let o = obj.clone();
    let h = Handler::spawn(u.clone(), move |u, e| {
        let Event::PageFault(f) = e else { panic!("{e:?}") };
        assert!(f.wp && f.write, "{f:?}");
        let mut now = [0u8; 4];
        o.read_at(0, &mut now).unwrap();
        assert_eq!(&now, b"kept", "mprotect did not let the store through");
        assert_eq!(u.writeprotect(f.page(), false).unwrap(), Outcome::Done);
    });
    // The process makes its mapping writable itself.
    m.protect(Prot::READ | Prot::WRITE).unwrap();
    let mm = m.clone();
    timed("storing after mprotect", move || {
        mm.write(page_size() as usize, b"FREE").unwrap();
        mm.write(0, b"KEPT").unwrap();
    });
    let faults = h.finish();
    assert_eq!(faults.len(), 1, "only the protected page faulted: {faults:?}");
    assert_eq!(page_of(m.addr(), faults[0].addr), 0);
    assert_eq!(&memfd_page(&obj, 0)[..4], b"KEPT");
    assert_eq!(&memfd_page(&obj, 1)[..4], b"FREE");
}

#[test]
fn a_punched_page_leaves_the_mapping_and_faults_again() {
    let need = Features::MISSING_SHMEM | Features::MINOR_SHMEM;
    if !uffd_or_skip("punch", need) {
        return;
    }
    let obj = object(1);
    obj.write_at(0, &pattern(1)).unwrap();
    let m = map(&obj, Prot::READ | Prot::WRITE);
    let u = Arc::new(Userfaultfd::open(need).unwrap());
    u.register_mapping(&m, RegisterMode::MISSING | RegisterMode::MINOR).unwrap();
    assert_eq!(u.continue_(at(&m, 0), FillMode::empty()).unwrap(), Outcome::Done);
    let mm = m.clone();
    assert_eq!(timed("reading a mapped page", move || read_page(&mm, 0)), pattern(1));
    obj.punch(page(0)).unwrap();
    assert!(!obj.is_present(0).unwrap());
    let o = obj.clone();
    let h = Handler::spawn(u.clone(), move |u, e| {
        let Event::PageFault(f) = e else { panic!("{e:?}") };
        o.write_at(0, &pattern(2)).unwrap();
        assert_eq!(u.continue_(f.page(), FillMode::empty()).unwrap(), Outcome::Done);
    });
    let mm = m.clone();
    assert_eq!(timed("reading a punched page", move || read_page(&mm, 0)), pattern(2));
    let faults = h.finish();
    assert_eq!(faults.len(), 1, "{faults:?}");
    assert!(!faults[0].minor && !faults[0].wp, "a punched page faults MISSING: {:?}", faults[0]);
}

#[test]
fn waiting_faults_are_read_many_at_once_and_no_more_than_asked() {
    if !uffd_or_skip("batched reads", Features::MISSING_SHMEM) {
        return;
    }
    const N: u64 = 4;
    let obj = object(N);
    let m = map(&obj, Prot::READ | Prot::WRITE);
    let u = Userfaultfd::open(Features::MISSING_SHMEM).unwrap();
    u.register_mapping(&m, RegisterMode::MISSING).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for n in 0..N {
        let (mm, tx) = (m.clone(), tx.clone());
        std::thread::spawn(move || {
            let _ = tx.send((n, read_page(&mm, n)));
        });
    }
    // Wait until all N faults are queued (fdinfo counts the unread ones).
    let fdinfo = format!("/proc/self/fdinfo/{}", rustix::fd::AsRawFd::as_raw_fd(&u.as_fd()));
    let pending = || -> u64 {
        let s = std::fs::read_to_string(&fdinfo).unwrap();
        let line = s.lines().find(|l| l.starts_with("pending:")).expect("a uffd's fdinfo has pending:");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let end = std::time::Instant::now() + PATIENCE;
    while pending() < N {
        assert!(std::time::Instant::now() < end, "only {} of {N} faults queued", pending());
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut events = Vec::new();
    assert_eq!(u.read_events(&mut events, 2).unwrap(), 2, "a bound of 2 reads 2");
    assert_eq!(u.read_events(&mut events, 64).unwrap(), 2, "the rest in one call");
    assert_eq!(u.read_events(&mut events, 64).unwrap(), 0);
    let mut pages: Vec<u64> = events
        .iter()
        .map(|e| match e {
            Event::PageFault(f) => page_of(m.addr(), f.addr),
            other => panic!("{other:?}"),
        })
        .collect();
    pages.sort();
    assert_eq!(pages, (0..N).collect::<Vec<_>>());
    // One COPY over the whole range wakes all four.
    let mut src = Vec::new();
    for n in 0..N {
        src.extend(pattern(n));
    }
    assert_eq!(u.copy(m.addr(), &src, FillMode::empty()).unwrap(), Outcome::Done);
    for _ in 0..N {
        let (n, data) = rx.recv_timeout(PATIENCE).expect("every waiting reader is woken");
        assert_eq!(data, pattern(n));
    }
}

#[test]
fn continue_of_a_reserved_page_never_written_maps_zeroes_and_a_store_makes_it_data() {
    if !uffd_or_skip("continue of a reserved page", Features::MISSING_SHMEM | Features::MINOR_SHMEM) {
        return;
    }
    let obj = object(2);
    // Garbage first, punched: the reservation must not resurrect it.
    obj.write_at(0, &pattern(9)).unwrap();
    obj.punch(page(0)).unwrap();
    obj.reserve(page(0)).unwrap();
    let m = map(&obj, Prot::READ | Prot::WRITE);
    let u = Arc::new(Userfaultfd::open(Features::MISSING_SHMEM | Features::MINOR_SHMEM).unwrap());
    u.register_mapping(&m, RegisterMode::MISSING | RegisterMode::MINOR).unwrap();
    // A reserved page is a page of the memfd to CONTINUE: no fault at all
    // comes to a handler once it is continued ahead of the access.
    assert_eq!(u.continue_(at(&m, 0), FillMode::empty()).unwrap(), Outcome::Done);
    assert_eq!(read_page(&m, 0), vec![0u8; page_size() as usize], "continued zeroes");
    m.write(8, b"stored").unwrap();
    let mut b = [0u8; 6];
    obj.read_at(8, &mut b).unwrap();
    assert_eq!(&b, b"stored", "the store is the memfd's");
    assert!(obj.is_present(0).unwrap(), "the page holds data now");
}

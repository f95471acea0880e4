//! Adversarial probes of machvmd's event loops (`crates/daemon/src/reactor.rs`
//! and `conn.rs`): each test states a rule a hostile or merely unusual
//! client broke. Every process is killed by its guard; every wait has a
//! deadline.

mod common;
use common::daemon::{client, daemon, Dir};
use machvm_protocol::frame::{encode_frame, read_frame};
use machvm_protocol::wire::{Call, Request, Response, Role, PROTOCOL_VERSION};
use machvm_protocol::{VmAddr, PAGE_SIZE};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

const P: u64 = PAGE_SIZE;

fn hello_frame(name: &str) -> Vec<u8> {
    encode_frame(&Request::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Task { child_token: None },
        name: name.into(),
    })
    .unwrap()
}

/// Found by attack: a peer that writes its calls and then half-closes
/// (`shutdown(SHUT_WR)`, as a batch client or `nc -N` does) had its task
/// terminated as soon as the end of its stream was read, before the calls
/// read with it were made: when the calls and the end of stream arrived
/// in one read (a hello, three calls and the end written at once), every
/// call was answered `KERN_INVALID_TASK`, while the same bytes with a
/// pause before the end were made. The calls a peer sent before its end
/// are made, in order.
#[test]
fn calls_sent_before_a_half_close_are_made() {
    let dir = Dir::new("reactor-halfclose");
    let _d = daemon(&dir.socket(), &[]);
    for round in 0..10 {
        let mut s = UnixStream::connect(dir.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut bytes = hello_frame("batch");
        for seq in 1..=3 {
            let call = Call::VmAllocate { address: VmAddr(0), size: P, anywhere: true };
            bytes.extend(encode_frame(&Request::Call { seq, call }).unwrap());
        }
        s.write_all(&bytes).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(matches!(read_frame::<Response>(&mut s), Ok(Some(Response::Welcome { .. }))), "round {round}");
        for seq in 1..=3 {
            match read_frame::<Response>(&mut s) {
                Ok(Some(Response::Reply { seq: got, result: Ok(_) })) if got == seq => {}
                other => panic!("round {round}, call {seq}: {other:?}"),
            }
        }
        assert!(matches!(read_frame::<Response>(&mut s), Ok(None)), "round {round}: the connection closes");
    }
    let c = client(&dir.socket(), "after");
    assert!(c.vm_allocate(VmAddr(0), P, true).is_ok());
}

//! Descriptors over a Unix socket: `sendmsg`/`recvmsg` with `SCM_RIGHTS`
//! (a task hands the daemon its userfaultfd; the daemon hands a task an
//! object's memfd), and who is at the other end (`SCM_CREDENTIALS`,
//! `SO_PEERCRED`).
//!
//! Receipt is bounded: [`recv_fds`] takes at most the number of descriptors
//! it is told. The kernel installs only what fits the control buffer and
//! closes the rest (reporting `MSG_CTRUNC`), but a buffer holds a little
//! more than asked (its size is rounded up for alignment), so what the
//! kernel installed beyond the bound is closed here; either way
//! [`Received::dropped_fds`] says some were sent and not kept. Every
//! descriptor received is close-on-exec (`MSG_CMSG_CLOEXEC`).
//!
//! Prefer `SOCK_SEQPACKET`: a message and its descriptors arrive together
//! or not at all. On a stream socket the descriptors ride with the first
//! byte of the data they were sent with.

use crate::{host, Error, Result};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;

/// The most descriptors one message can carry (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;

/// Who sent a message, as the kernel vouches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// The sender's process id (in the receiver's pid namespace).
    pub pid: u32,
    /// Its user id.
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
}

impl From<rustix::net::UCred> for Credentials {
    fn from(c: rustix::net::UCred) -> Credentials {
        Credentials { pid: c.pid.as_raw_nonzero().get() as u32, uid: c.uid.as_raw(), gid: c.gid.as_raw() }
    }
}

/// What [`recv_fds`] received.
#[derive(Debug)]
pub struct Received {
    /// How many bytes of data arrived in the buffer (0: the peer closed a
    /// stream socket, or sent an empty message).
    pub bytes: usize,
    /// The descriptors kept, in the order sent: at most the bound asked.
    pub fds: Vec<OwnedFd>,
    /// More descriptors were sent than kept: the rest are closed.
    pub dropped_fds: bool,
    /// The message was longer than the buffer: its tail is lost
    /// (`MSG_TRUNC`, datagram and seqpacket sockets only).
    pub truncated: bool,
    /// The sender's credentials, if the receiving socket asked for them
    /// ([`pass_credentials`]).
    pub credentials: Option<Credentials>,
}

/// `sendmsg(sock, data, SCM_RIGHTS(fds))`—Sends `data` with the
/// descriptors `fds` attached (the sender keeps its own copies). On a
/// stream socket, data the kernel did not take at once is sent after,
/// without descriptors. Returns the bytes sent (all of `data`).
///
/// Errors: [`Error::Host`] with `EINVAL` if `data` is empty (a stream
/// socket would drop the descriptors of an empty message) or there are more
/// than [`MAX_FDS`]; otherwise what `sendmsg` says (`EPIPE`, `EAGAIN` on a
/// non-blocking socket, `ETOOMANYREFS`).
pub fn send_fds(sock: impl AsFd, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<usize> {
    send_fds_with(sock, data, fds, SendFlags::empty())
}

/// [`send_fds`] that never waits (`MSG_DONTWAIT`), whatever the socket's
/// own flag says: for a socket whose open file another process shares
/// (and may make blocking). `EAGAIN` if the socket has no room.
///
/// Errors: as [`send_fds`].
pub fn send_fds_nowait(sock: impl AsFd, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<usize> {
    send_fds_with(sock, data, fds, SendFlags::DONTWAIT)
}

fn send_fds_with(sock: impl AsFd, data: &[u8], fds: &[BorrowedFd<'_>], flags: SendFlags) -> Result<usize> {
    if data.is_empty() || fds.len() > MAX_FDS {
        return Err(Error::Host { call: "sendmsg", errno: Errno::INVAL });
    }
    let sock = sock.as_fd();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Error::Host { call: "sendmsg", errno: Errno::INVAL });
    }
    let mut sent = loop {
        match rustix::net::sendmsg(sock, &[IoSlice::new(data)], &mut control, SendFlags::NOSIGNAL | flags) {
            Err(Errno::INTR) => continue,
            other => break other.map_err(host("sendmsg"))?,
        }
    };
    while sent < data.len() {
        match rustix::net::send(sock, &data[sent..], SendFlags::NOSIGNAL | flags) {
            Ok(0) => return Err(Error::Host { call: "send", errno: Errno::PIPE }),
            Ok(n) => sent += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(host("send")(e)),
        }
    }
    Ok(sent)
}

/// `recvmsg(sock, buf, MSG_CMSG_CLOEXEC)`—Receives one message into `buf`
/// and keeps at most `max_fds` of the descriptors that came with it (the
/// module comment says what happens to the others). Blocks unless the
/// socket is non-blocking.
///
/// Errors: [`Error::Host`] with what `recvmsg` says (`EAGAIN` on a
/// non-blocking socket with nothing to read, `EINVAL` for `max_fds` above
/// [`MAX_FDS`]).
pub fn recv_fds(sock: impl AsFd, buf: &mut [u8], max_fds: usize) -> Result<Received> {
    recv_fds_with(sock, buf, max_fds, RecvFlags::empty())
}

/// [`recv_fds`] that never waits (`MSG_DONTWAIT`), whatever the socket's
/// own flag says (see [`send_fds_nowait`]). `EAGAIN` if nothing is there.
///
/// Errors: as [`recv_fds`].
pub fn recv_fds_nowait(sock: impl AsFd, buf: &mut [u8], max_fds: usize) -> Result<Received> {
    recv_fds_with(sock, buf, max_fds, RecvFlags::DONTWAIT)
}

fn recv_fds_with(sock: impl AsFd, buf: &mut [u8], max_fds: usize, flags: RecvFlags) -> Result<Received> {
    if max_fds > MAX_FDS {
        return Err(Error::Host { call: "recvmsg", errno: Errno::INVAL });
    }
    let sock = sock.as_fd();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(max_fds), ScmCredentials(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(sock, &mut [IoSliceMut::new(buf)], &mut control, RecvFlags::CMSG_CLOEXEC | flags) {
            Err(Errno::INTR) => continue,
            other => break other.map_err(host("recvmsg"))?,
        }
    };
    let mut got = Received {
        bytes: msg.bytes.min(buf.len()),
        fds: Vec::new(),
        dropped_fds: false,
        truncated: false,
        credentials: None,
    };
    got.dropped_fds = msg.flags.contains(ReturnFlags::CTRUNC);
    got.truncated = msg.flags.contains(ReturnFlags::TRUNC);
    for m in control.drain() {
        match m {
            RecvAncillaryMessage::ScmRights(fds) => {
                for fd in fds {
                    if got.fds.len() < max_fds {
                        got.fds.push(fd);
                    } else {
                        got.dropped_fds = true;
                        drop(fd);
                    }
                }
            }
            RecvAncillaryMessage::ScmCredentials(c) => got.credentials = Some(c.into()),
            _ => {}
        }
    }
    Ok(got)
}

/// `setsockopt(sock, SOL_SOCKET, SO_PASSCRED, on)`—Asks the kernel to
/// attach the sender's credentials to every message this socket receives
/// ([`Received::credentials`]).
pub fn pass_credentials(sock: impl AsFd, on: bool) -> Result<()> {
    rustix::net::sockopt::set_socket_passcred(sock, on).map_err(host("setsockopt(SO_PASSCRED)"))
}

/// `getsockopt(sock, SOL_SOCKET, SO_PEERCRED)`—Who connected (or made the
/// socket pair), as of the connection.
pub fn peer_credentials(sock: impl AsFd) -> Result<Credentials> {
    rustix::net::sockopt::socket_peercred(sock).map(Credentials::from).map_err(host("getsockopt(SO_PEERCRED)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap()
    }

    #[test]
    fn descriptors_cross_with_their_data_and_credentials() {
        let (a, b) = pair();
        pass_credentials(&b, true).unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        assert_eq!(send_fds(&a, b"hello", &[w.as_fd()]).unwrap(), 5);
        let mut buf = [0u8; 16];
        let got = recv_fds(&b, &mut buf, 4).unwrap();
        assert_eq!(&buf[..got.bytes], b"hello");
        assert_eq!(got.fds.len(), 1);
        assert!(!got.dropped_fds && !got.truncated);
        let me = std::process::id();
        assert_eq!(got.credentials.map(|c| c.pid), Some(me));
        assert_eq!(peer_credentials(&b).unwrap().pid, me);
        // The received descriptor is the same pipe, close-on-exec.
        rustix::io::write(&got.fds[0], b"!").unwrap();
        let mut one = [0u8; 1];
        rustix::io::read(&r, &mut one).unwrap();
        assert_eq!(&one, b"!");
        let fl = rustix::io::fcntl_getfd(&got.fds[0]).unwrap();
        assert!(fl.contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn a_receiver_never_keeps_more_than_it_asked_for() {
        let (a, b) = pair();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let copies: Vec<OwnedFd> = (0..5).map(|_| w.try_clone().unwrap()).collect();
        let borrowed: Vec<BorrowedFd<'_>> = copies.iter().map(|f| f.as_fd()).collect();
        send_fds(&a, b"five", &borrowed).unwrap();
        for max in [0usize, 1] {
            let mut buf = [0u8; 8];
            let got = recv_fds(&b, &mut buf, max).unwrap();
            assert_eq!(got.fds.len(), max, "bound {max}");
            assert!(got.dropped_fds, "bound {max}");
            assert_eq!(&buf[..got.bytes], b"five");
            drop(got);
            if max == 0 {
                send_fds(&a, b"five", &borrowed).unwrap();
            }
        }
        // Every write end is closed now (ours, and every copy that crossed),
        // so the pipe reads end-of-file: none was left open in this process.
        drop(borrowed);
        drop(copies);
        drop(w);
        let mut one = [0u8; 1];
        assert_eq!(rustix::io::read(&r, &mut one).unwrap(), 0);
    }

    #[test]
    fn an_empty_message_is_refused_before_it_loses_descriptors() {
        let (a, _b) = pair();
        assert_eq!(send_fds(&a, b"", &[a.as_fd()]).unwrap_err().errno(), Some(Errno::INVAL));
    }
}

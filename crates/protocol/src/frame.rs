//! Framing for the daemon's socket: how messages are cut out of a byte
//! stream.
//!
//! A frame is a 4-byte little-endian length `n` followed by `n` bytes of
//! body, the message encoded with postcard:
//!
//! ```text
//!  ┌──────────────┬─────────────────────────────┐
//!  │ n: u32 (LE)  │ body: n bytes (postcard)    │   n ≤ MAX_FRAME
//!  └──────────────┴─────────────────────────────┘
//! ```
//!
//! Reading never trusts the peer's claim:
//!
//! 1. the 4 header bytes are read; end of stream before the first of them
//!    is a clean end (`Ok(None)`), after it a [`FrameError::Truncated`];
//! 2. a length over [`MAX_FRAME`] is [`FrameError::Oversized`], before
//!    anything is allocated for the body;
//! 3. the body is read in pieces of at most 64 KiB, the buffer growing only
//!    as bytes actually arrive, so a peer that claims a megabyte and sends
//!    ten bytes costs ten bytes (and a [`FrameError::Truncated`]);
//! 4. the body must decode to exactly one message with no byte left over
//!    ([`FrameError::Malformed`] otherwise). postcard checks every length
//!    inside the body against the bytes that remain, so decoding is total
//!    and bounded by the body's size.
//!
//! [`read_frame`] and [`write_frame`] are for blocking streams;
//! [`FrameDecoder`] cuts frames out of bytes as a non-blocking socket hands
//! them over, and [`encode_frame`] gives the bytes to queue for writing.

#![warn(missing_docs)]

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{self, Read, Write};

/// The length of a frame's header.
pub const HEADER_LEN: usize = 4;

/// The largest body a frame may have: 2 MiB of data (twice the largest
/// `data_supply` a pager is asked for, 256 pages) and 64 KiB for the rest
/// of the message.
pub const MAX_FRAME: usize = (2 << 20) + (64 << 10);

/// The most [`read_frame`] reads (and so allocates) at a time for a body.
const READ_CHUNK: usize = 64 << 10;

/// The most buffer a [`FrameDecoder`] keeps once it holds no byte.
const KEEP: usize = 64 << 10;

/// What was wrong with a frame, or with the stream it came from.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The header claims (or a message to send would need) a body of `len`
    /// bytes, more than `max` ([`MAX_FRAME`]).
    #[error("frame of {len} bytes is over the limit of {max}")]
    Oversized {
        /// The body length claimed or needed.
        len: usize,
        /// The limit, [`MAX_FRAME`].
        max: usize,
    },
    /// The stream ended inside a frame: `got` of the `want` bytes of its
    /// header (`want` = 4) or of its body (`want` = the length claimed)
    /// arrived.
    #[error("truncated frame: wanted {want} bytes, got {got}")]
    Truncated {
        /// The bytes the header or body needed.
        want: usize,
        /// The bytes that arrived.
        got: usize,
    },
    /// The body is not one message of the expected type (postcard's
    /// complaint, or the number of bytes left after the message); or, when
    /// sending, the message cannot be encoded.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The stream failed.
    #[error("i/o error on the frame stream: {0}")]
    Io(#[from] io::Error),
}

/// The whole frame (header and body) for `msg`, ready to be written.
///
/// Errors: [`FrameError::Oversized`] if the body would be longer than
/// [`MAX_FRAME`] (nothing the peer could read); [`FrameError::Malformed`]
/// if `msg` cannot be encoded.
pub fn encode_frame(msg: &impl Serialize) -> Result<Vec<u8>, FrameError> {
    let mut frame =
        postcard::to_extend(msg, vec![0u8; HEADER_LEN]).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = frame.len() - HEADER_LEN;
    let claim = u32::try_from(len).ok().filter(|_| len <= MAX_FRAME);
    let claim = claim.ok_or(FrameError::Oversized { len, max: MAX_FRAME })?;
    frame[..HEADER_LEN].copy_from_slice(&claim.to_le_bytes());
    Ok(frame)
}

/// Writes `msg` as one frame (one `write_all`, so frames written whole by
/// one writer never interleave).
///
/// Errors: as [`encode_frame`], and [`FrameError::Io`].
pub fn write_frame(w: &mut impl Write, msg: &impl Serialize) -> Result<(), FrameError> {
    let frame = encode_frame(msg)?;
    w.write_all(&frame)?;
    Ok(())
}

/// Reads one frame from a blocking stream and decodes it: `Ok(None)` if the
/// stream ends cleanly before the frame's first byte.
///
/// Errors: [`FrameError::Truncated`] (the stream ended inside the frame),
/// [`FrameError::Oversized`] (read no further than the header),
/// [`FrameError::Malformed`], [`FrameError::Io`] (`Interrupted` is retried;
/// a non-blocking stream's `WouldBlock` is an error here, with the bytes of
/// the frame read so far lost: use [`FrameDecoder`] for such streams).
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<Option<T>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    match read_full(r, &mut header)? {
        0 => return Ok(None),
        HEADER_LEN => {}
        got => return Err(FrameError::Truncated { want: HEADER_LEN, got }),
    }
    let len = body_len(header)?;
    let mut body = Vec::new();
    while body.len() < len {
        let have = body.len();
        let step = (len - have).min(READ_CHUNK);
        body.resize(have + step, 0);
        let n = read_full(r, &mut body[have..])?;
        if n < step {
            return Err(FrameError::Truncated { want: len, got: have + n });
        }
    }
    decode_body(&body).map(Some)
}

/// Decodes a frame's body: exactly one `T`, nothing after it.
///
/// Errors: [`FrameError::Malformed`].
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!("message followed by {} trailing byte(s)", rest.len())));
    }
    Ok(msg)
}

/// The body length a header claims, if it is within [`MAX_FRAME`].
fn body_len(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = usize::try_from(u32::from_le_bytes(header)).unwrap_or(usize::MAX);
    if len > MAX_FRAME {
        return Err(FrameError::Oversized { len, max: MAX_FRAME });
    }
    Ok(len)
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Cuts frames out of a byte stream that arrives in pieces (a non-blocking
/// socket): [`push`](FrameDecoder::push) what was read, then call
/// [`next`](FrameDecoder::next) until it returns `Ok(None)`.
///
/// Used that way, what the decoder holds between reads is at most one
/// incomplete frame, under [`MAX_FRAME`] + 4 bytes whatever the peer sends:
/// a header claiming more is refused as soon as its 4 bytes are in, and no
/// byte of that frame's body is kept. (Bytes pushed and not yet taken by
/// `next` are held too: the bound assumes the caller drains the decoder
/// after each push, as it must anyway to see the messages.) Memory grows
/// only with bytes actually pushed, never with a length the peer claims,
/// and a decoder emptied of a large frame gives its buffer back.
///
/// After [`FrameError::Oversized`] the stream cannot be resynchronised: the
/// decoder drops whatever is pushed after it and `next` keeps returning the
/// error. After [`FrameError::Malformed`] the bad frame has been skipped and
/// the next one can be decoded, though the daemon closes the connection.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// Bytes pushed; those before `start` have been decoded.
    buf: Vec<u8>,
    start: usize,
    /// The length an oversized header claimed; nothing is decoded after it.
    oversized: Option<usize>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.oversized.is_some() {
            return;
        }
        if self.start > 0 {
            // Only the tail of the last read is left: moving it is cheap.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
        // Refuse a bad header before its body piles up.
        if let Some(header) = self.header() {
            if let Err(e) = body_len(header) {
                self.fail(e);
            }
        }
    }

    /// The next complete message, `Ok(None)` if the bytes pushed so far end
    /// inside a frame (or hold none).
    ///
    /// Errors: [`FrameError::Oversized`] (for good), [`FrameError::Malformed`]
    /// (the frame is skipped).
    // Not `Iterator::next`: the message type is the caller's choice per
    // call, and "no message yet" is not the end of the stream.
    #[allow(clippy::should_implement_trait)]
    pub fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        if let Some(len) = self.oversized {
            return Err(FrameError::Oversized { len, max: MAX_FRAME });
        }
        let Some(header) = self.header() else {
            return Ok(None);
        };
        let len = match body_len(header) {
            Ok(len) => len,
            Err(e) => return Err(self.fail(e)),
        };
        let body_start = self.start + HEADER_LEN;
        if self.buf.len() - body_start < len {
            return Ok(None);
        }
        let msg = decode_body(&self.buf[body_start..body_start + len]);
        self.start = body_start + len;
        if self.start == self.buf.len() {
            // Emptied: a buffer grown for a large frame is given back, so
            // an idle stream costs little whatever it carried before.
            if self.buf.capacity() > KEEP {
                self.buf = Vec::new();
            } else {
                self.buf.clear();
            }
            self.start = 0;
        }
        msg.map(Some)
    }

    /// Bytes pushed and not yet decoded (an incomplete frame, or frames
    /// `next` has not taken yet).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Call at the end of the stream (after `next` returned `Ok(None)`):
    /// `Ok` if it ended between frames.
    ///
    /// Errors: [`FrameError::Truncated`] (it ended inside a frame: `want`
    /// and `got` as for [`read_frame`]), [`FrameError::Oversized`] (an
    /// oversized header was seen).
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(len) = self.oversized {
            return Err(FrameError::Oversized { len, max: MAX_FRAME });
        }
        let got = self.buffered();
        match self.header() {
            None if got == 0 => Ok(()),
            None => Err(FrameError::Truncated { want: HEADER_LEN, got }),
            Some(header) => {
                let want = body_len(header)?;
                let got = got - HEADER_LEN;
                if got < want {
                    Err(FrameError::Truncated { want, got })
                } else {
                    // A whole frame is waiting for `next`.
                    Ok(())
                }
            }
        }
    }

    /// The header of the next frame, once its 4 bytes are in.
    fn header(&self) -> Option<[u8; HEADER_LEN]> {
        self.buf.get(self.start..self.start + HEADER_LEN).map(|h| h.try_into().expect("4 bytes"))
    }

    /// Records an oversized header and drops what is buffered.
    fn fail(&mut self, e: FrameError) -> FrameError {
        if let FrameError::Oversized { len, .. } = e {
            self.oversized = Some(len);
            self.buf = Vec::new();
            self.start = 0;
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out `data` and records every read it is asked
    /// for (the size of the buffer offered).
    struct Spy<'a> {
        data: &'a [u8],
        asked: Vec<usize>,
    }

    impl Read for Spy<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.asked.push(buf.len());
            let n = buf.len().min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_four_gib_claim_is_refused_after_the_header_alone() {
        let header = u32::MAX.to_le_bytes();
        let mut spy = Spy { data: &header, asked: Vec::new() };
        let e = read_frame::<u32>(&mut spy).unwrap_err();
        assert!(matches!(e, FrameError::Oversized { len, max: MAX_FRAME } if len == u32::MAX as usize), "{e}");
        // One read, for the header: nothing was read (or allocated) for a body.
        assert_eq!(spy.asked, vec![HEADER_LEN]);

        let mut d = FrameDecoder::new();
        d.push(&header);
        d.push(&[0u8; 1000]);
        assert_eq!(d.buffered(), 0, "nothing of the refused frame is kept");
        assert!(matches!(d.next::<u32>(), Err(FrameError::Oversized { .. })));
        assert!(matches!(d.next::<u32>(), Err(FrameError::Oversized { .. })), "and it stays refused");
        assert!(matches!(d.finish(), Err(FrameError::Oversized { .. })));
    }

    #[test]
    fn one_over_the_limit_is_refused_and_the_limit_itself_is_not() {
        let over = u32::try_from(MAX_FRAME + 1).unwrap().to_le_bytes();
        let e = read_frame::<u32>(&mut &over[..]).unwrap_err();
        assert!(matches!(e, FrameError::Oversized { len, .. } if len == MAX_FRAME + 1));
        let at = u32::try_from(MAX_FRAME).unwrap().to_le_bytes();
        let e = read_frame::<u32>(&mut &at[..]).unwrap_err();
        assert!(matches!(e, FrameError::Truncated { want: MAX_FRAME, got: 0 }), "{e}");
    }

    #[test]
    fn a_claim_the_peer_does_not_fill_costs_only_what_arrived() {
        let mut stream = u32::try_from(MAX_FRAME).unwrap().to_le_bytes().to_vec();
        stream.extend_from_slice(&[7; 10]);
        let mut spy = Spy { data: &stream, asked: Vec::new() };
        let e = read_frame::<Vec<u8>>(&mut spy).unwrap_err();
        assert!(matches!(e, FrameError::Truncated { want: MAX_FRAME, got: 10 }), "{e}");
        assert!(spy.asked.iter().all(|&n| n <= READ_CHUNK), "reads of at most 64 KiB: {:?}", spy.asked);
    }

    #[test]
    fn end_of_stream_between_frames_is_clean_and_inside_one_is_not() {
        let frame = encode_frame(&(1u32, String::from("hello"))).unwrap();
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        let mut r = &two[..];
        assert_eq!(read_frame::<(u32, String)>(&mut r).unwrap(), Some((1, "hello".into())));
        assert_eq!(read_frame::<(u32, String)>(&mut r).unwrap(), Some((1, "hello".into())));
        assert_eq!(read_frame::<(u32, String)>(&mut r).unwrap(), None);
        for cut in 1..frame.len() {
            let e = read_frame::<(u32, String)>(&mut &frame[..cut]).unwrap_err();
            let (want, got) =
                if cut < HEADER_LEN { (HEADER_LEN, cut) } else { (frame.len() - HEADER_LEN, cut - HEADER_LEN) };
            assert!(matches!(e, FrameError::Truncated { want: w, got: g } if w == want && g == got), "cut {cut}: {e}");
            let mut d = FrameDecoder::new();
            d.push(&frame[..cut]);
            assert_eq!(d.next::<(u32, String)>().unwrap(), None);
            assert!(matches!(d.finish(), Err(FrameError::Truncated { want: w, got: g }) if w == want && g == got));
        }
    }

    #[test]
    fn a_body_must_be_exactly_one_message() {
        // Trailing bytes.
        let mut frame = encode_frame(&5u32).unwrap();
        frame.push(0);
        frame[0] += 1;
        let e = read_frame::<u32>(&mut &frame[..]).unwrap_err();
        assert!(matches!(&e, FrameError::Malformed(m) if m.contains("1 trailing byte")), "{e}");
        // An empty body, and a body too short for its message.
        let e = read_frame::<u32>(&mut &[0u8, 0, 0, 0][..]).unwrap_err();
        assert!(matches!(e, FrameError::Malformed(_)), "{e}");
        // The decoder skips a malformed frame and goes on.
        let mut d = FrameDecoder::new();
        d.push(&frame);
        d.push(&encode_frame(&6u32).unwrap());
        assert!(matches!(d.next::<u32>(), Err(FrameError::Malformed(_))));
        assert_eq!(d.next::<u32>().unwrap(), Some(6));
        assert_eq!(d.next::<u32>().unwrap(), None);
        d.finish().unwrap();
    }

    #[test]
    fn a_message_too_big_to_frame_is_not_sent() {
        let big = vec![0u8; MAX_FRAME];
        let mut out = Vec::new();
        let e = write_frame(&mut out, &big).unwrap_err();
        assert!(matches!(e, FrameError::Oversized { len, .. } if len > MAX_FRAME));
        assert!(out.is_empty());
    }
}

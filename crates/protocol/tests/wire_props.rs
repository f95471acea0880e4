//! Properties of the daemon's wire protocol: every request and response
//! survives framing unchanged, whichever way the bytes arrive, and no byte
//! string makes the decoders panic.

use machvm_protocol::frame::{encode_frame, read_frame, FrameDecoder, FrameError, HEADER_LEN};
use machvm_protocol::ipc::{Disposition, PortName, RightKind};
use machvm_protocol::wire::*;
use machvm_protocol::{KernError, VmAddr, VmInherit, VmOffset, VmProt};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use serde::de::DeserializeOwned;

fn addr() -> impl Strategy<Value = VmAddr> {
    prop_oneof![any::<u64>(), (0u64..1 << 20).prop_map(|p| p * 4096)].prop_map(VmAddr)
}

fn offset() -> impl Strategy<Value = VmOffset> {
    any::<u64>().prop_map(VmOffset)
}

/// Any bits, unknown ones included: they must travel unchanged.
fn prot() -> impl Strategy<Value = VmProt> {
    prop_oneof![0u32..8, any::<u32>()].prop_map(VmProt::from_bits_retain)
}

fn inherit() -> impl Strategy<Value = VmInherit> {
    prop_oneof![Just(VmInherit::Share), Just(VmInherit::Copy), Just(VmInherit::None)]
}

fn name() -> impl Strategy<Value = PortName> {
    prop_oneof![0u32..64, any::<u32>()].prop_map(PortName)
}

fn disposition() -> impl Strategy<Value = Disposition> {
    prop_oneof![
        Just(Disposition::MoveReceive),
        Just(Disposition::MoveSend),
        Just(Disposition::MoveSendOnce),
        Just(Disposition::CopySend),
        Just(Disposition::MakeSend),
        Just(Disposition::MakeSendOnce),
    ]
}

fn right_kind() -> impl Strategy<Value = RightKind> {
    prop_oneof![Just(RightKind::Receive), Just(RightKind::Send), Just(RightKind::SendOnce), Just(RightKind::DeadName)]
}

/// Known codes mostly; any code decodes to one of them.
fn kern_error() -> impl Strategy<Value = KernError> {
    prop_oneof![0u32..64, 0x1000_0000u32..0x1000_5000, any::<u32>()].prop_map(KernError::from_code)
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..48)
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn proxy_version() -> impl Strategy<Value = ProxyVersion> {
    prop_oneof![Just(ProxyVersion::Mapping), Just(ProxyVersion::Paging)]
}

fn object_kind() -> impl Strategy<Value = ObjectKind> {
    prop_oneof![Just(ObjectKind::External), Just(ObjectKind::Temporary), Just(ObjectKind::View)]
}

fn copy_strategy() -> impl Strategy<Value = machvm_protocol::emmi::CopyStrategy> {
    use machvm_protocol::emmi::CopyStrategy;
    prop_oneof![Just(CopyStrategy::None), Just(CopyStrategy::Call), Just(CopyStrategy::Delay)]
}

fn notify_kind() -> impl Strategy<Value = NotifyKind> {
    prop_oneof![Just(NotifyKind::NoSenders), Just(NotifyKind::DeadName)]
}

fn map_args() -> impl Strategy<Value = MapArgs> {
    (
        addr(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        option::of(name()),
        offset(),
        any::<bool>(),
        prot(),
        prot(),
        inherit(),
    )
        .prop_map(|(address, size, mask, anywhere, object, offset, copy, cur, max, inherit)| MapArgs {
            address,
            size,
            mask,
            anywhere,
            object,
            offset,
            copy,
            cur,
            max,
            inherit,
        })
}

fn send_args() -> impl Strategy<Value = SendArgs> {
    (
        name(),
        disposition(),
        option::of((name(), disposition())),
        any::<u32>(),
        bytes(),
        vec((name(), disposition()), 0..6),
        option::of(any::<u64>()),
    )
        .prop_map(|(dest, dest_disposition, reply, id, data, rights, timeout_ms)| SendArgs {
            dest,
            dest_disposition,
            reply,
            id,
            data,
            rights,
            timeout_ms,
        })
}

fn inspect_what() -> impl Strategy<Value = InspectWhat> {
    prop_oneof![
        Just(InspectWhat::Tasks),
        any::<u32>().prop_map(|task| InspectWhat::VmMap { task }),
        Just(InspectWhat::Objects),
        Just(InspectWhat::Proxies),
        Just(InspectWhat::Stats),
        Just(InspectWhat::Charges),
    ]
}

/// Every variant of [`Call`].
fn call() -> impl Strategy<Value = Call> {
    let u = any::<u64>;
    prop_oneof![
        (addr(), u(), any::<bool>()).prop_map(|(address, size, anywhere)| Call::VmAllocate { address, size, anywhere }),
        map_args().prop_map(Call::VmMap),
        (addr(), u()).prop_map(|(address, size)| Call::VmDeallocate { address, size }),
        (addr(), u(), any::<bool>(), prot()).prop_map(|(address, size, set_max, prot)| Call::VmProtect {
            address,
            size,
            set_max,
            prot
        }),
        (addr(), u(), inherit()).prop_map(|(address, size, inherit)| Call::VmInherit { address, size, inherit }),
        addr().prop_map(|address| Call::VmRegion { address }),
        (addr(), prop_oneof![0..=MAX_DATA as u64, u()]).prop_map(|(address, size)| Call::VmRead { address, size }),
        (addr(), bytes()).prop_map(|(address, data)| Call::VmWrite { address, data }),
        (addr(), u(), addr()).prop_map(|(source, size, dest)| Call::VmCopy { source, size, dest }),
        (addr(), prop_oneof![0..=MAX_DATA as u32, any::<u32>()]).prop_map(|(address, len)| Call::Load { address, len }),
        (addr(), bytes()).prop_map(|(address, data)| Call::Store { address, data }),
        addr().prop_map(|address| Call::Execute { address }),
        any::<bool>().prop_map(|inherit_memory| Call::TaskCreate { inherit_memory }),
        Just(Call::PortAllocate),
        Just(Call::PortSetAllocate),
        (name(), option::of(name())).prop_map(|(member, set)| Call::PortMoveMember { member, set }),
        name().prop_map(|name| Call::PortMakeSend { name }),
        name().prop_map(|name| Call::PortDeallocate { name }),
        name().prop_map(|name| Call::PortDestroy { name }),
        (name(), right_kind(), any::<i32>()).prop_map(|(name, right, delta)| Call::PortModRefs { name, right, delta }),
        name().prop_map(|name| Call::PortLookup { name }),
        (name(), notify_kind(), name()).prop_map(|(name, kind, notify)| Call::PortRequestNotification {
            name,
            kind,
            notify
        }),
        send_args().prop_map(Call::MsgSend),
        (name(), option::of(u())).prop_map(|(name, timeout_ms)| Call::MsgReceive { name, timeout_ms }),
        (prot(), vec(name(), 0..5), vec(u(), 0..5), vec(u(), 0..5), vec(u(), 0..5), option::of(proxy_version()))
            .prop_map(|(max, objects, offsets, starts, lens, version)| Call::ProxyCreate {
                max,
                objects,
                offsets,
                starts,
                lens,
                version
            }),
        (addr(), prot(), u()).prop_map(|(address, max, len)| Call::RegionProxy { address, max, len }),
        name().prop_map(|revoke| Call::ProxyRevoke { revoke }),
        name().prop_map(|proxy| Call::ProxyInfo { proxy }),
        (name(), name()).prop_map(|(host_priv, manager)| Call::SetDefaultMemoryManager { host_priv, manager }),
        (text(), name()).prop_map(|(name, object)| Call::NameRegister { name, object }),
        text().prop_map(|name| Call::NameLookup { name }),
        inspect_what().prop_map(Call::Inspect),
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![option::of(any::<u64>()).prop_map(|child_token| Role::Task { child_token }), Just(Role::Pager)]
}

/// Every variant of [`Request`].
fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        1 => (any::<u32>(), role(), text()).prop_map(|(version, role, name)| Request::Hello { version, role, name }),
        6 => (any::<u64>(), call()).prop_map(|(seq, call)| Request::Call { seq, call }),
    ]
}

fn window() -> impl Strategy<Value = WindowWire> {
    (any::<u64>(), any::<u64>(), any::<u64>(), prot(), any::<bool>()).prop_map(
        |(offset, len, start, prot, target_is_proxy)| WindowWire { offset, len, start, prot, target_is_proxy },
    )
}

fn counters() -> impl Strategy<Value = Vec<(String, u64)>> {
    vec((text(), any::<u64>()), 0..4)
}

/// Every variant of [`Reply`].
fn reply() -> impl Strategy<Value = Reply> {
    let u = any::<u64>;
    let region = (addr(), u(), prot(), prot(), inherit(), offset(), any::<bool>()).prop_map(
        |(start, size, cur, max, inherit, offset, shared)| RegionWire {
            start,
            size,
            cur,
            max,
            inherit,
            offset,
            shared,
        },
    );
    let message =
        (name(), any::<u32>(), bytes(), option::of(name()), vec((name(), right_kind()), 0..6), any::<bool>()).prop_map(
            |(local, id, data, reply, rights, from_kernel)| MessageWire { local, id, data, reply, rights, from_kernel },
        );
    let name_info = (any::<bool>(), any::<u32>(), any::<bool>(), any::<u32>(), any::<bool>()).prop_map(
        |(receive, send_urefs, send_once, dead_urefs, port_set)| NameInfoWire {
            receive,
            send_urefs,
            send_once,
            dead_urefs,
            port_set,
        },
    );
    let proxy_info = (proxy_version(), prot(), vec(window(), 0..4), any::<bool>())
        .prop_map(|(version, protection, windows, revoked)| ProxyInfoWire { version, protection, windows, revoked });
    let task = (any::<u32>(), option::of(any::<u32>()), option::of(any::<u32>()), text(), u(), u())
        .prop_map(|(task, pid, uid, name, entries, resident)| TaskRow { task, pid, uid, name, entries, resident });
    let entry = (
        addr(),
        addr(),
        prot(),
        prot(),
        inherit(),
        option::of(u()),
        offset(),
        vec(u(), 0..3),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(start, end, cur, max, inherit, object, offset, via, shared, needs_copy)| EntryRow {
            start,
            end,
            cur,
            max,
            inherit,
            object,
            offset,
            via,
            shared,
            needs_copy,
        });
    let pager_state = (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), copy_strategy(), any::<u32>())
        .prop_map(|(default_pager, ready, dead, may_cache, copy_strategy, cluster_pages)| PagerState {
            default_pager,
            ready,
            dead,
            may_cache,
            copy_strategy,
            cluster_pages,
        });
    let object = (
        (u(), object_kind(), option::of(text()), option::of(any::<u32>()), option::of(pager_state)),
        (u(), u(), any::<u32>(), option::of((u(), u())), option::of(u()), option::of(u())),
        (counters(), counters()),
    )
        .prop_map(
            |(
                (object, kind, pager, pager_task, pager_state),
                (resident, size, refs, shadow, copy, proxy),
                (sent, received),
            )| ObjectRow {
                object,
                kind,
                pager,
                pager_task,
                pager_state,
                resident,
                size,
                refs,
                shadow,
                copy,
                proxy,
                sent,
                received,
            },
        );
    let proxy =
        (
            (u(), proxy_version(), vec(window(), 0..3), prot(), any::<bool>()),
            (vec(u(), 0..3), option::of(u()), any::<bool>(), vec(u(), 0..3)),
        )
            .prop_map(|((proxy, version, windows, protection, revoked), (targets, view, port_dead, via))| {
                ProxyRow { proxy, version, windows, protection, revoked, targets, view, port_dead, via }
            });
    prop_oneof![
        Just(Reply::Unit),
        addr().prop_map(Reply::Addr),
        name().prop_map(Reply::Name),
        (name(), name()).prop_map(|(proxy, revoke)| Reply::Names { proxy, revoke }),
        region.prop_map(Reply::Region),
        bytes().prop_map(Reply::Data),
        message.prop_map(Reply::Message),
        name_info.prop_map(Reply::NameInfo),
        proxy_info.prop_map(Reply::ProxyInfo),
        u().prop_map(Reply::ChildToken),
        vec(task, 0..3).prop_map(Reply::Tasks),
        vec(entry, 0..3).prop_map(Reply::VmMap),
        vec(object, 0..3).prop_map(Reply::Objects),
        vec(proxy, 0..3).prop_map(Reply::Proxies),
        counters().prop_map(Reply::Stats),
        vec((any::<u32>(), u(), option::of(u())), 0..3).prop_map(|rows| Reply::Charges(
            rows.into_iter().map(|(task, charged, limit)| ChargeRow { task, charged, limit }).collect()
        )),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        any::<u64>().prop_map(|seq| Event::Waiting { seq }),
        text().prop_map(|reason| Event::Shutdown { reason })
    ]
}

/// Every variant of [`Response`].
fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (any::<u32>(), any::<u32>(), option::of(name())).prop_map(|(version, task, host_priv)| Response::Welcome {
            version,
            task,
            host_priv
        }),
        (any::<u32>(), text()).prop_map(|(version, reason)| Response::Refused { version, reason }),
        (any::<u64>(), reply()).prop_map(|(seq, r)| Response::Reply { seq, result: Ok(r) }),
        (any::<u64>(), kern_error()).prop_map(|(seq, e)| Response::Reply { seq, result: Err(e) }),
        event().prop_map(Response::Event),
        text().prop_map(|what| Response::ProtocolError { what }),
    ]
}

/// The messages in `stream`, by [`read_frame`] until the clean end.
fn read_all<T: DeserializeOwned>(stream: &[u8]) -> Vec<T> {
    let mut r = stream;
    let mut out = Vec::new();
    while let Some(m) = read_frame(&mut r).expect("a well-formed stream") {
        out.push(m);
    }
    out
}

/// The messages in `stream` pushed to a [`FrameDecoder`] in pieces of the
/// sizes `chunks` gives, cyclically.
fn decode_in_chunks<T: DeserializeOwned>(stream: &[u8], chunks: &[usize]) -> Vec<T> {
    let mut d = FrameDecoder::new();
    let mut out = Vec::new();
    let mut rest = stream;
    for &n in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        d.push(piece);
        while let Some(m) = d.next().expect("a well-formed stream") {
            out.push(m);
        }
        assert!(d.buffered() <= stream.len());
    }
    d.finish().expect("the stream ends between frames");
    out
}

/// Feeds arbitrary bytes to a decoder until it has nothing more to say;
/// it must neither panic nor loop.
fn drain_garbage<T: DeserializeOwned>(bytes: &[u8]) {
    let mut d = FrameDecoder::new();
    d.push(bytes);
    for _ in 0..=bytes.len() {
        match d.next::<T>() {
            Ok(Some(_)) | Err(FrameError::Malformed(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let _ = d.finish();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_request_survives_a_frame(req in request()) {
        let frame = encode_frame(&req).unwrap();
        prop_assert_eq!(read_frame::<Request>(&mut &frame[..]).unwrap(), Some(req.clone()));
        let mut d = FrameDecoder::new();
        d.push(&frame);
        prop_assert_eq!(d.next::<Request>().unwrap(), Some(req.clone()));
        prop_assert_eq!(d.next::<Request>().unwrap(), None);
        // The strategies make small data and short names: only a length
        // asked for can be over the bounds.
        let asks_too_much = match &req {
            Request::Call { call: Call::VmRead { size, .. }, .. } => *size > MAX_DATA as u64,
            Request::Call { call: Call::Load { len, .. }, .. } => *len as usize > MAX_DATA,
            _ => false,
        };
        prop_assert_eq!(req.check().is_err(), asks_too_much, "{:?}", req.check());
    }

    #[test]
    fn every_response_survives_a_frame(resp in response()) {
        let frame = encode_frame(&resp).unwrap();
        prop_assert_eq!(read_frame::<Response>(&mut &frame[..]).unwrap(), Some(resp.clone()));
        let mut d = FrameDecoder::new();
        d.push(&frame);
        prop_assert_eq!(d.next::<Response>().unwrap(), Some(resp));
    }

    #[test]
    fn the_decoder_sees_what_read_frame_sees_however_the_bytes_arrive(
        reqs in vec(request(), 1..6),
        resps in vec(response(), 1..6),
        chunks in vec(1usize..40, 1..8),
    ) {
        let mut stream = Vec::new();
        for r in &reqs {
            stream.extend_from_slice(&encode_frame(r).unwrap());
        }
        let read: Vec<Request> = read_all(&stream);
        prop_assert_eq!(&read, &reqs);
        prop_assert_eq!(&decode_in_chunks::<Request>(&stream, &[1]), &reqs);
        prop_assert_eq!(&decode_in_chunks::<Request>(&stream, &chunks), &reqs);
        prop_assert_eq!(&decode_in_chunks::<Request>(&stream, &[stream.len()]), &reqs);

        let mut stream = Vec::new();
        for r in &resps {
            stream.extend_from_slice(&encode_frame(r).unwrap());
        }
        prop_assert_eq!(&read_all::<Response>(&stream), &resps);
        prop_assert_eq!(&decode_in_chunks::<Response>(&stream, &[1]), &resps);
        prop_assert_eq!(&decode_in_chunks::<Response>(&stream, &chunks), &resps);
    }

    #[test]
    fn a_cut_frame_is_truncated_everywhere(req in request(), at in any::<prop::sample::Index>()) {
        let frame = encode_frame(&req).unwrap();
        let cut = 1 + at.index(frame.len() - 1);
        let (want, got) = if cut < HEADER_LEN { (HEADER_LEN, cut) } else { (frame.len() - HEADER_LEN, cut - HEADER_LEN) };
        let e = read_frame::<Request>(&mut &frame[..cut]).unwrap_err();
        prop_assert!(matches!(e, FrameError::Truncated { want: w, got: g } if w == want && g == got), "{}", e);
        let mut d = FrameDecoder::new();
        d.push(&frame[..cut]);
        prop_assert!(d.next::<Request>().unwrap().is_none());
        let e = d.finish().unwrap_err();
        prop_assert!(matches!(e, FrameError::Truncated { want: w, got: g } if w == want && g == got), "{}", e);
    }

    #[test]
    fn arbitrary_bytes_are_a_message_or_an_error(bytes in vec(any::<u8>(), 0..200)) {
        let _ = postcard::from_bytes::<Request>(&bytes);
        let _ = postcard::from_bytes::<Response>(&bytes);
        drain_garbage::<Request>(&bytes);
        drain_garbage::<Response>(&bytes);
        // The same bytes as a body behind an honest header.
        let mut framed = u32::try_from(bytes.len()).unwrap().to_le_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        let _ = read_frame::<Request>(&mut &framed[..]);
        drain_garbage::<Request>(&framed);
        drain_garbage::<Response>(&framed);
    }

    #[test]
    fn damaged_messages_are_a_message_or_an_error(
        req in request(),
        resp in response(),
        hits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        // Random bytes rarely get past the first tag; damage to real
        // messages reaches every field's decoder.
        for mut body in [postcard::to_stdvec(&req).unwrap(), postcard::to_stdvec(&resp).unwrap()] {
            for (i, b) in &hits {
                let at = i.index(body.len());
                body[at] = *b;
            }
            let _ = postcard::from_bytes::<Request>(&body);
            let _ = postcard::from_bytes::<Response>(&body);
            let mut framed = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
            framed.extend_from_slice(&body);
            drain_garbage::<Request>(&framed);
            drain_garbage::<Response>(&framed);
        }
    }
}

#[test]
fn a_four_gib_header_is_refused_without_reading_on() {
    // A reader that has the header and nothing else, and counts the reads.
    struct HeaderOnly {
        header: Option<[u8; 4]>,
        reads: usize,
    }
    impl std::io::Read for HeaderOnly {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.reads += 1;
            match self.header.take() {
                Some(h) => {
                    buf[..4].copy_from_slice(&h);
                    Ok(4)
                }
                None => panic!("read past a refused header (offered {} bytes)", buf.len()),
            }
        }
    }
    let mut r = HeaderOnly { header: Some(u32::MAX.to_le_bytes()), reads: 0 };
    let e = read_frame::<Request>(&mut r).unwrap_err();
    assert!(matches!(e, FrameError::Oversized { len: 0xffff_ffff, .. }), "{e}");
    assert_eq!(r.reads, 1);
}

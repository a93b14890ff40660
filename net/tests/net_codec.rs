//! Codec tests: every client and peer message round-trips through the frame decoder, decoders
//! enforce their bounds with typed errors, and a seeded randomized run of the fuzz bodies
//! (mutated valid frames, truncations, random bytes) never panics.
//!
//! Replay a randomized failure with `RINGLOG_SEED=<seed> cargo test -p ringlog-net --test
//! net_codec`.

use bytes::{Bytes, BytesMut};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use ringlog_net::fuzzing::{self, samples};
use ringlog_net::limits::{FRAME_BODY_SIZE_MAX, FRAME_HEADER_SIZE, HEARTBEATS_PER_FRAME_MAX};
use ringlog_net::{
    encode_frame, Frame, FrameBuf, FrameChecksumOnly, FrameDecoder, FrameKind, Handshake,
    HandshakeReply, PeerMessage, ProtocolError, Request, RequestId, Response,
};
use ringlog_raft::{Entry, EntryKind, LogIndex, Message, Term};

/// Decodes `frame` through the streaming decoder, as a receiver would.
fn receive(frame: &FrameBuf) -> Frame {
    let mut decoder = FrameDecoder::new(FRAME_BODY_SIZE_MAX);
    let mut buf = BytesMut::from(&frame.to_bytes()[..]);
    let decoded = decoder.decode(&mut buf).expect("valid frame").expect("complete frame");
    assert!(buf.is_empty());
    decoded
}

#[test]
fn every_request_round_trips() {
    for (n, request) in samples::requests().into_iter().enumerate() {
        let frame = receive(&request.encode(RequestId(n as u64)));
        assert_eq!(frame.kind, request.kind());
        assert_eq!(frame.request_id, RequestId(n as u64));
        assert_eq!(Request::decode(&frame).unwrap(), request);
    }
}

#[test]
fn every_response_and_error_reply_round_trips() {
    for response in samples::responses() {
        let frame = receive(&response.encode(RequestId(77)));
        assert_eq!(Response::decode(&frame).unwrap(), response);
    }
}

#[test]
fn every_peer_message_and_raft_variant_round_trips() {
    for message in samples::peer_messages() {
        let frame = receive(&message.encode());
        assert_eq!(PeerMessage::decode(&frame, &FrameChecksumOnly).unwrap(), message);
    }
    for handshake in samples::handshakes() {
        assert_eq!(Handshake::decode(&receive(&handshake.encode())).unwrap(), handshake);
    }
    for reply in samples::handshake_replies() {
        assert_eq!(HandshakeReply::decode(&receive(&reply.encode())).unwrap(), reply);
    }
}

#[test]
fn term_query_and_its_response_have_the_documented_wire_layout() {
    // docs/format.md, Raft message: `partition u32`, `tag u8`, `term u64`; tags 11 and 12
    // carry nothing after the term.
    for (message, tag) in [
        (Message::TermQuery { term: Term(7) }, 11u8),
        (Message::TermQueryResponse { term: Term(9) }, 12),
    ] {
        let term = message.term();
        let peer = PeerMessage::Raft { partition: ringlog_net::PartitionId(3), message };
        let frame = receive(&peer.encode());
        assert_eq!(frame.kind, FrameKind::PeerRaft);
        let mut expected = 3u32.to_le_bytes().to_vec();
        expected.push(tag);
        expected.extend_from_slice(&term.0.to_le_bytes());
        assert_eq!(&frame.body[..], &expected[..]);
        assert_eq!(PeerMessage::decode(&frame, &FrameChecksumOnly).unwrap(), peer);
    }
}

#[test]
fn entry_payloads_and_fetched_batches_are_slices_of_the_received_frame() {
    let append = samples::peer_messages().into_iter().find(|m| {
        matches!(m, PeerMessage::Raft { message: Message::Append { entries, .. }, .. } if !entries.is_empty())
    });
    let frame = receive(&append.unwrap().encode());
    let body = frame.body.as_ptr_range();
    let PeerMessage::Raft { message: Message::Append { entries, .. }, .. } =
        PeerMessage::decode(&frame, &FrameChecksumOnly).unwrap()
    else {
        panic!("not an append")
    };
    for entry in entries.iter().filter(|e| !e.payload.is_empty()) {
        assert!(body.contains(&entry.payload.as_ptr()), "entry {} payload copied", entry.index);
    }

    let fetch = samples::responses().into_iter().find(|r| matches!(r, Response::Fetch(_)));
    let frame = receive(&fetch.unwrap().encode(RequestId(1)));
    let body = frame.body.as_ptr_range();
    let Response::Fetch(fetched) = Response::decode(&frame).unwrap() else { panic!() };
    assert!(body.contains(&fetched.batches[0].as_ptr()), "fetched batch copied");
}

fn append_of(entries: Vec<Entry>) -> PeerMessage {
    let message = Message::Append {
        term: Term(5),
        prev_index: LogIndex(10),
        prev_term: Term(4),
        commit: LogIndex(9),
        entries,
    };
    PeerMessage::Raft { partition: ringlog_net::PartitionId(0), message }
}

fn entry(term: u64, index: u64, payload: &'static [u8]) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        kind: EntryKind::Normal,
        payload: Bytes::from_static(payload),
    }
}

#[test]
fn append_whose_batch_fails_its_check_is_rejected_with_the_entry_named() {
    let frame = receive(&append_of(vec![entry(5, 11, b"good"), entry(5, 12, b"bad!")]).encode());
    let check = |entry: &Entry| -> Result<(), String> {
        if entry.payload == b"bad!"[..] {
            return Err("batch crc mismatch".into());
        }
        Ok(())
    };
    assert_eq!(
        PeerMessage::decode(&frame, &check),
        Err(ProtocolError::BadBatch {
            term: Term(5),
            index: LogIndex(12),
            reason: "batch crc mismatch".into()
        })
    );
}

#[test]
fn append_with_a_gap_or_a_future_term_is_rejected() {
    let gap = receive(&append_of(vec![entry(5, 11, b"a"), entry(5, 13, b"b")]).encode());
    assert_eq!(
        PeerMessage::decode(&gap, &FrameChecksumOnly),
        Err(ProtocolError::BadValue { what: "entry index", value: 13 })
    );
    let future = receive(&append_of(vec![entry(6, 11, b"a")]).encode());
    assert_eq!(
        PeerMessage::decode(&future, &FrameChecksumOnly),
        Err(ProtocolError::BadValue { what: "entry term", value: 6 })
    );
}

#[test]
fn huge_counts_are_refused_before_allocation() {
    // A heartbeat frame claiming u32::MAX entries in an 8-byte body.
    let mut body = u32::MAX.to_le_bytes().to_vec();
    body.extend_from_slice(&[0; 4]);
    let frame = receive(&encode_frame(FrameKind::PeerHeartbeats, RequestId(0), &body));
    assert_eq!(
        PeerMessage::decode(&frame, &FrameChecksumOnly),
        Err(ProtocolError::TooMany {
            what: "heartbeats",
            count: u64::from(u32::MAX),
            max: HEARTBEATS_PER_FRAME_MAX as u64
        })
    );
    // Within the limit but more than the body can hold.
    let mut body = 1000u32.to_le_bytes().to_vec();
    body.extend_from_slice(&[0; 28]);
    let frame = receive(&encode_frame(FrameKind::PeerHeartbeats, RequestId(0), &body));
    assert_eq!(
        PeerMessage::decode(&frame, &FrameChecksumOnly),
        Err(ProtocolError::Truncated { what: "heartbeats" })
    );
}

#[test]
fn request_with_trailing_bytes_or_unknown_acks_is_rejected() {
    let mut body = 3u32.to_le_bytes().to_vec();
    body.push(9); // acks
    body.extend_from_slice(&0u32.to_le_bytes());
    let frame = receive(&encode_frame(FrameKind::ProduceRequest, RequestId(1), &body));
    assert_eq!(Request::decode(&frame), Err(ProtocolError::BadValue { what: "acks", value: 9 }));

    let mut frame = receive(&samples::requests()[7].encode(RequestId(1)));
    let mut body = frame.body.to_vec();
    body.push(0);
    frame.body = body.into();
    assert_eq!(Request::decode(&frame), Err(ProtocolError::TrailingBytes { count: 1 }));
}

#[test]
fn a_response_is_not_accepted_as_a_request_nor_a_peer_message() {
    let frame = receive(&samples::responses()[0].encode(RequestId(1)));
    assert!(matches!(Request::decode(&frame), Err(ProtocolError::WrongKind { .. })));
    assert!(matches!(
        PeerMessage::decode(&frame, &FrameChecksumOnly),
        Err(ProtocolError::WrongKind { .. })
    ));
}

fn seed() -> u64 {
    let seed =
        std::env::var("RINGLOG_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                as u64
        });
    println!("seed: RINGLOG_SEED={seed}");
    seed
}

/// Every valid encoded frame of every sample, as (kind, request id, body).
fn corpus() -> Vec<(FrameKind, RequestId, Vec<u8>)> {
    let mut frames: Vec<FrameBuf> = Vec::new();
    frames.extend(samples::requests().iter().map(|r| r.encode(RequestId(3))));
    frames.extend(samples::responses().iter().map(|r| r.encode(RequestId(4))));
    frames.extend(samples::peer_messages().iter().map(PeerMessage::encode));
    frames.extend(samples::handshakes().iter().map(Handshake::encode));
    frames.extend(samples::handshake_replies().iter().map(HandshakeReply::encode));
    frames
        .iter()
        .map(|f| {
            let bytes = f.to_bytes();
            let frame = receive(f);
            (frame.kind, frame.request_id, bytes[FRAME_HEADER_SIZE..].to_vec())
        })
        .collect()
}

fn mutate(rng: &mut SmallRng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.gen_range(1..4) {
        match rng.gen_range(0..5) {
            0 if !bytes.is_empty() => {
                let at = rng.gen_range(0..bytes.len());
                bytes[at] ^= 1 << rng.gen_range(0..8);
            }
            1 if !bytes.is_empty() => {
                let at = rng.gen_range(0..bytes.len());
                bytes[at] = rng.gen();
            }
            2 => bytes.truncate(rng.gen_range(0..=bytes.len())),
            3 => {
                // Overwrite a little-endian u32 somewhere with an extreme value.
                if bytes.len() >= 4 {
                    let at = rng.gen_range(0..=bytes.len() - 4);
                    let value: u32 = [0, 1, u32::MAX, 0x8000_0000, 65536][rng.gen_range(0..5)];
                    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
                }
            }
            _ => {
                let extra = rng.gen_range(0..16);
                bytes.extend((0..extra).map(|_| rng.gen::<u8>()));
            }
        }
    }
    bytes
}

#[test]
fn decoders_never_panic_on_mutated_truncated_or_random_input() {
    let seed = seed();
    let mut rng = SmallRng::seed_from_u64(seed);
    let corpus = corpus();
    let kinds_peer =
        [FrameKind::PeerRaft, FrameKind::PeerHeartbeats, FrameKind::PeerHeartbeatResponses];
    for _ in 0..20_000 {
        let (kind, request_id, body) = corpus[rng.gen_range(0..corpus.len())].clone();
        let body = mutate(&mut rng, body);

        // Body decoders on the mutated body, reached past the checksums.
        let mut selected = vec![FrameKind::ALL.iter().position(|k| *k == kind).unwrap() as u8];
        selected.extend_from_slice(&body);
        fuzzing::client_message(&selected);
        if let Some(at) = kinds_peer.iter().position(|k| *k == kind) {
            let mut selected = vec![at as u8];
            selected.extend_from_slice(&body);
            fuzzing::peer_message(&selected);
        }

        // The frame decoder on a resealed frame (valid checksums), mutated again half the time.
        let mut wire = encode_frame(kind, request_id, &body).to_bytes().to_vec();
        if rng.gen_bool(0.5) {
            wire = mutate(&mut rng, wire);
        }
        fuzzing::frame_decoder(&[&[0u8][..], &wire].concat());
        // The same, resealed by the fuzz body after mutating the frame header too.
        let mut resealed = vec![1u8];
        resealed.extend(mutate(&mut rng, wire));
        fuzzing::frame_decoder(&resealed);

        // Pure noise, and noise after a valid magic.
        let noise: Vec<u8> = (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect();
        fuzzing::frame_decoder(&noise);
        let mut magic = b"RLNF\x01".to_vec();
        magic.extend_from_slice(&noise);
        fuzzing::frame_decoder(&magic);
        fuzzing::peer_message(&noise);
        fuzzing::client_message(&noise);
    }
}

#[test]
fn every_truncation_of_every_frame_is_waited_for_then_reported_at_end_of_stream() {
    for (kind, request_id, body) in corpus() {
        let wire = encode_frame(kind, request_id, &body).to_bytes();
        // Cut every 7th byte position (and the last one) to keep the test fast.
        for cut in (0..wire.len()).step_by(7).chain([wire.len() - 1]) {
            let mut decoder = FrameDecoder::new(FRAME_BODY_SIZE_MAX);
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(decoder.decode(&mut buf), Ok(None), "{kind:?} cut at {cut}");
            let at_end = decoder.finish(&buf);
            assert!(
                matches!(at_end, Err(ringlog_net::FrameError::Truncated { .. })) || cut == 0,
                "{kind:?} cut at {cut}: {at_end:?}"
            );
            fuzzing::frame_decoder(&wire[..cut]);
        }
    }
}

//! Frame: the length-prefixed unit of every connection, client and peer alike. No IO here.
//!
//! A frame is a fixed 32-byte little-endian header followed by `body_len` bytes of body.
//! Layout and checksum coverage: docs/format.md#frame.
//!
//! ```text
//! 0  magic u32 "RLNF"   4 version u8   5 kind u8   6 flags u16 (0)
//! 8  request_id u64     16 body_len u32   20 body_crc u32   24 reserved u32 (0)
//! 28 header_crc u32 (crc32 of bytes 0..28)
//! ```
//!
//! Invariants:
//! - The decoder validates magic, version, header checksum, flags, kind and the body length
//!   (against its `body_size_max`) from the 32 header bytes alone, before it waits for or
//!   reserves anything for the body. It never allocates more than one bounded body per frame.
//! - A decoded body is a zero-copy `Bytes` slice of the receive buffer, and its checksum has
//!   been verified.
//! - After an error the stream cannot be resynchronised: the decoder stays failed and the
//!   connection must be closed.
//! - No input makes the decoder panic.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::ids::RequestId;
use crate::limits::{FRAME_BODY_SIZE_CEILING, FRAME_HEADER_SIZE, ZERO_COPY_PAYLOAD_MIN};

/// "RLNF" read as a little-endian u32: the bytes `R L N F` on the wire.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"RLNF");

/// The frame format version this build writes and accepts.
pub const FRAME_VERSION: u8 = 1;

/// The fixed frame header, exactly as on the wire.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct FrameHeader {
    pub magic: U32,
    pub version: u8,
    pub kind: u8,
    /// No flags are defined in version 1: must be zero.
    pub flags: U16,
    pub request_id: U64,
    pub body_len: U32,
    /// crc32 (IEEE, crc32fast) of the body bytes.
    pub body_crc: U32,
    /// Must be zero in version 1.
    pub reserved: U32,
    /// crc32 of header bytes 0..28 (everything before this field).
    pub header_crc: U32,
}

const _: () = assert!(std::mem::size_of::<FrameHeader>() == FRAME_HEADER_SIZE);
const _: () = assert!(std::mem::align_of::<FrameHeader>() == 1);
const HEADER_CRC_OFFSET: usize = 28;

/// What a frame carries. Client requests are `0x01..`, their responses `0x81..` (request kind
/// with the top bit set), peer traffic `0x20..`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum FrameKind {
    ProduceRequest = 0x01,
    FetchRequest = 0x02,
    MetadataRequest = 0x03,
    GroupStatusRequest = 0x04,
    TransferLeaderRequest = 0x05,
    MembershipRequest = 0x06,
    /// Presents an admin token for the rest of the connection (since the Authenticate
    /// addition to version 1; docs/format.md#authenticate).
    AuthenticateRequest = 0x07,
    /// A typed error reply to any request (or to a malformed frame, before closing).
    ErrorReply = 0x7F,
    ProduceResponse = 0x81,
    FetchResponse = 0x82,
    MetadataResponse = 0x83,
    GroupStatusResponse = 0x84,
    TransferLeaderResponse = 0x85,
    MembershipResponse = 0x86,
    AuthenticateResponse = 0x87,
    PeerHandshake = 0x20,
    PeerHandshakeAccepted = 0x21,
    PeerHandshakeRefused = 0x22,
    PeerRaft = 0x23,
    PeerHeartbeats = 0x24,
    PeerHeartbeatResponses = 0x25,
    /// An idle link's liveness signal; empty body, never delivered.
    PeerKeepalive = 0x26,
}

impl FrameKind {
    /// Every kind, for tests and docs.
    pub const ALL: [FrameKind; 22] = [
        FrameKind::ProduceRequest,
        FrameKind::FetchRequest,
        FrameKind::MetadataRequest,
        FrameKind::GroupStatusRequest,
        FrameKind::TransferLeaderRequest,
        FrameKind::MembershipRequest,
        FrameKind::AuthenticateRequest,
        FrameKind::ErrorReply,
        FrameKind::ProduceResponse,
        FrameKind::FetchResponse,
        FrameKind::MetadataResponse,
        FrameKind::GroupStatusResponse,
        FrameKind::TransferLeaderResponse,
        FrameKind::MembershipResponse,
        FrameKind::AuthenticateResponse,
        FrameKind::PeerHandshake,
        FrameKind::PeerHandshakeAccepted,
        FrameKind::PeerHandshakeRefused,
        FrameKind::PeerRaft,
        FrameKind::PeerHeartbeats,
        FrameKind::PeerHeartbeatResponses,
        FrameKind::PeerKeepalive,
    ];

    /// The kind with wire value `value`, if any.
    pub fn from_u8(value: u8) -> Option<FrameKind> {
        FrameKind::ALL.iter().copied().find(|kind| *kind as u8 == value)
    }
}

/// Why a byte stream is not a valid sequence of frames. Any of these closes the connection.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("bad frame magic {found:#010x} (expected {FRAME_MAGIC:#010x})")]
    BadMagic { found: u32 },
    #[error("unsupported frame version {version} (this build speaks {FRAME_VERSION})")]
    UnsupportedVersion { version: u8 },
    #[error("frame header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadHeaderChecksum { stored: u32, computed: u32 },
    #[error("frame body checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadBodyChecksum { stored: u32, computed: u32 },
    #[error("frame uses undefined flags {flags:#06x} or reserved bits {reserved:#010x}")]
    BadFlags { flags: u16, reserved: u32 },
    #[error("unknown frame kind {kind:#04x}")]
    UnknownKind { kind: u8 },
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    Oversize { len: u64, max: u64 },
    #[error("stream ended inside a frame ({buffered} bytes buffered, {needed} more needed)")]
    Truncated { buffered: usize, needed: usize },
    #[error("decoder already failed; the connection must be closed")]
    Failed,
}

/// A decoded, checksum-verified frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub request_id: RequestId,
    /// A zero-copy slice of the receive buffer.
    pub body: Bytes,
}

/// An encoded frame ready to write: the header and the body as a list of chunks, so that a
/// large payload (a batch) is carried by reference instead of copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameBuf {
    chunks: Vec<Bytes>,
    len: usize,
}

impl FrameBuf {
    /// Total bytes on the wire (header included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a frame has at least its header.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunks to write, in order; the first is the 32-byte header.
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// The whole frame as one contiguous buffer (copies; for tests, fuzzing and tools).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len);
        for chunk in &self.chunks {
            out.extend_from_slice(chunk);
        }
        out.freeze()
    }
}

/// Builds a frame body: fixed-width little-endian fields are copied into a growing head
/// buffer, large payloads are appended by reference.
#[derive(Debug, Default)]
pub struct BodyWriter {
    head: BytesMut,
    chunks: Vec<Bytes>,
    len: usize,
}

impl BodyWriter {
    pub fn new() -> Self {
        BodyWriter { head: BytesMut::with_capacity(64), chunks: Vec::new(), len: 0 }
    }

    /// Body bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn put_u8(&mut self, value: u8) {
        self.put_slice(&[value]);
    }

    pub fn put_u16(&mut self, value: u16) {
        self.put_slice(&value.to_le_bytes());
    }

    pub fn put_u32(&mut self, value: u32) {
        self.put_slice(&value.to_le_bytes());
    }

    pub fn put_u64(&mut self, value: u64) {
        self.put_slice(&value.to_le_bytes());
    }

    /// Copies `bytes` into the body.
    pub fn put_slice(&mut self, bytes: &[u8]) {
        self.head.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Appends `payload` to the body, by reference if it is at least `ZERO_COPY_PAYLOAD_MIN`
    /// bytes long, else by copy.
    pub fn put_payload(&mut self, payload: &Bytes) {
        if payload.len() < ZERO_COPY_PAYLOAD_MIN {
            self.put_slice(payload);
            return;
        }
        if !self.head.is_empty() {
            self.chunks.push(self.head.split().freeze());
        }
        self.chunks.push(payload.clone());
        self.len += payload.len();
    }

    /// Seals the body into a frame of `kind`: computes the body checksum and the header.
    pub fn finish(mut self, kind: FrameKind, request_id: RequestId) -> FrameBuf {
        if !self.head.is_empty() {
            self.chunks.push(self.head.split().freeze());
        }
        let mut hasher = crc32fast::Hasher::new();
        for chunk in &self.chunks {
            hasher.update(chunk);
        }
        let body_len = u32::try_from(self.len).expect("frame body over 4 GiB is a caller bug");
        let header = encode_header(kind, request_id, body_len, hasher.finalize());
        let mut chunks = Vec::with_capacity(self.chunks.len() + 1);
        chunks.push(Bytes::copy_from_slice(header.as_bytes()));
        chunks.append(&mut self.chunks);
        FrameBuf { chunks, len: FRAME_HEADER_SIZE + self.len }
    }
}

/// The header of a frame of `kind` whose body has `body_len` bytes and checksum `body_crc`.
pub fn encode_header(
    kind: FrameKind,
    request_id: RequestId,
    body_len: u32,
    body_crc: u32,
) -> FrameHeader {
    let mut header = FrameHeader {
        magic: U32::new(FRAME_MAGIC),
        version: FRAME_VERSION,
        kind: kind as u8,
        flags: U16::new(0),
        request_id: U64::new(request_id.0),
        body_len: U32::new(body_len),
        body_crc: U32::new(body_crc),
        reserved: U32::new(0),
        header_crc: U32::new(0),
    };
    header.header_crc = U32::new(crc32fast::hash(&header.as_bytes()[..HEADER_CRC_OFFSET]));
    header
}

/// Encodes a frame whose body is one contiguous buffer (copies it once).
pub fn encode_frame(kind: FrameKind, request_id: RequestId, body: &[u8]) -> FrameBuf {
    let mut writer = BodyWriter::new();
    writer.put_slice(body);
    writer.finish(kind, request_id)
}

/// Header fields that passed validation, kept while waiting for the body.
#[derive(Clone, Copy, Debug)]
struct PendingHeader {
    kind: FrameKind,
    request_id: RequestId,
    body_len: usize,
    body_crc: u32,
}

/// Streaming frame decoder over a receive buffer (see the module invariants).
#[derive(Debug)]
pub struct FrameDecoder {
    body_size_max: usize,
    pending: Option<PendingHeader>,
    failed: bool,
}

impl FrameDecoder {
    /// A decoder accepting bodies up to `body_size_max` bytes (at most
    /// `FRAME_BODY_SIZE_CEILING`; a larger value is a configuration bug).
    pub fn new(body_size_max: usize) -> Self {
        assert!(body_size_max <= FRAME_BODY_SIZE_CEILING, "frame body limit above ceiling");
        FrameDecoder { body_size_max, pending: None, failed: false }
    }

    pub fn body_size_max(&self) -> usize {
        self.body_size_max
    }

    /// Takes the next complete frame from the front of `buf`. `Ok(None)` means more bytes are
    /// needed (see [`FrameDecoder::bytes_needed`]); an error is final.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if self.failed {
            return Err(FrameError::Failed);
        }
        let result = self.decode_inner(buf);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Whether part of a frame was received (in `buf` or as a decoded header) and the rest
    /// is still to come.
    pub fn is_mid_frame(&self, buf: &BytesMut) -> bool {
        !buf.is_empty() || self.pending.is_some()
    }

    /// How many more bytes must arrive before `decode` can make progress (at least 1). Bounded
    /// by `FRAME_HEADER_SIZE + body_size_max`: a reader may reserve this much.
    pub fn bytes_needed(&self, buf: &BytesMut) -> usize {
        let wanted = match self.pending {
            Some(header) => header.body_len,
            None => FRAME_HEADER_SIZE,
        };
        wanted.saturating_sub(buf.len()).max(1)
    }

    /// Call at end of stream: an error if the stream stopped inside a frame.
    pub fn finish(&self, buf: &BytesMut) -> Result<(), FrameError> {
        if self.failed {
            return Err(FrameError::Failed);
        }
        if buf.is_empty() && self.pending.is_none() {
            return Ok(());
        }
        Err(FrameError::Truncated { buffered: buf.len(), needed: self.bytes_needed(buf) })
    }

    fn decode_inner(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let header = match self.pending {
            Some(header) => header,
            None => {
                check_magic_prefix(buf)?;
                if buf.len() < FRAME_HEADER_SIZE {
                    return Ok(None);
                }
                let header = validate_header(&buf[..FRAME_HEADER_SIZE], self.body_size_max)?;
                buf.advance(FRAME_HEADER_SIZE);
                self.pending = Some(header);
                header
            }
        };
        if buf.len() < header.body_len {
            return Ok(None);
        }
        self.pending = None;
        let body = buf.split_to(header.body_len).freeze();
        verify_body(&header, &body)?;
        Ok(Some(Frame { kind: header.kind, request_id: header.request_id, body }))
    }
}

/// Decodes one frame from the front of `input` without a streaming buffer. Returns the frame
/// (its body a slice of `input`) and the number of bytes it used; `Truncated` if `input` ends
/// inside the frame.
pub fn decode_frame(input: &Bytes, body_size_max: usize) -> Result<(Frame, usize), FrameError> {
    check_magic_prefix(input)?;
    if input.len() < FRAME_HEADER_SIZE {
        return Err(FrameError::Truncated {
            buffered: input.len(),
            needed: FRAME_HEADER_SIZE - input.len(),
        });
    }
    let header = validate_header(&input[..FRAME_HEADER_SIZE], body_size_max)?;
    let end = FRAME_HEADER_SIZE + header.body_len;
    if input.len() < end {
        return Err(FrameError::Truncated { buffered: input.len(), needed: end - input.len() });
    }
    let body = input.slice(FRAME_HEADER_SIZE..end);
    verify_body(&header, &body)?;
    Ok((Frame { kind: header.kind, request_id: header.request_id, body }, end))
}

/// Rejects a stream whose first bytes cannot start a frame, without waiting for a full header.
fn check_magic_prefix(buf: &[u8]) -> Result<(), FrameError> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let n = buf.len().min(magic.len());
    if buf[..n] == magic[..n] {
        return Ok(());
    }
    let mut found = [0u8; 4];
    found[..n].copy_from_slice(&buf[..n]);
    Err(FrameError::BadMagic { found: u32::from_le_bytes(found) })
}

fn validate_header(bytes: &[u8], body_size_max: usize) -> Result<PendingHeader, FrameError> {
    let header = FrameHeader::read_from_bytes(bytes).expect("caller passes exactly 32 bytes");
    let magic = header.magic.get();
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    if header.version != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion { version: header.version });
    }
    let computed = crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]);
    let stored = header.header_crc.get();
    if stored != computed {
        return Err(FrameError::BadHeaderChecksum { stored, computed });
    }
    let (flags, reserved) = (header.flags.get(), header.reserved.get());
    if flags != 0 || reserved != 0 {
        return Err(FrameError::BadFlags { flags, reserved });
    }
    let kind =
        FrameKind::from_u8(header.kind).ok_or(FrameError::UnknownKind { kind: header.kind })?;
    let body_len = header.body_len.get() as usize;
    if body_len > body_size_max {
        return Err(FrameError::Oversize { len: body_len as u64, max: body_size_max as u64 });
    }
    Ok(PendingHeader {
        kind,
        request_id: RequestId(header.request_id.get()),
        body_len,
        body_crc: header.body_crc.get(),
    })
}

fn verify_body(header: &PendingHeader, body: &[u8]) -> Result<(), FrameError> {
    let computed = crc32fast::hash(body);
    if computed != header.body_crc {
        return Err(FrameError::BadBodyChecksum { stored: header.body_crc, computed });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::FRAME_BODY_SIZE_MAX;

    fn sample(kind: FrameKind, body_len: usize) -> FrameBuf {
        let body: Vec<u8> = (0..body_len).map(|i| (i * 7) as u8).collect();
        encode_frame(kind, RequestId(42), &body)
    }

    #[test]
    fn every_kind_round_trips_through_the_streaming_decoder() {
        for kind in FrameKind::ALL {
            let frame = sample(kind, 100);
            let mut buf = BytesMut::from(&frame.to_bytes()[..]);
            let mut decoder = FrameDecoder::new(FRAME_BODY_SIZE_MAX);
            let decoded = decoder.decode(&mut buf).unwrap().unwrap();
            assert_eq!(decoded.kind, kind);
            assert_eq!(decoded.request_id, RequestId(42));
            assert_eq!(decoded.body.len(), 100);
            assert!(buf.is_empty());
            decoder.finish(&buf).unwrap();
        }
    }

    #[test]
    fn large_payload_is_carried_by_reference_and_decodes_identically() {
        let payload = Bytes::from(vec![0xAB; 64 * 1024]);
        let mut writer = BodyWriter::new();
        writer.put_u32(7);
        writer.put_payload(&payload);
        writer.put_u8(1);
        let frame = writer.finish(FrameKind::ProduceRequest, RequestId(1));
        assert_eq!(frame.chunks().len(), 4, "header, head, payload, tail");
        assert_eq!(frame.chunks()[2].as_ptr(), payload.as_ptr(), "payload not copied");
        let (decoded, used) = decode_frame(&frame.to_bytes(), FRAME_BODY_SIZE_MAX).unwrap();
        assert_eq!(used, frame.len());
        assert_eq!(&decoded.body[4..4 + payload.len()], &payload[..]);
    }

    #[test]
    fn decoder_waits_for_bytes_fed_one_at_a_time() {
        let frames = [sample(FrameKind::PeerRaft, 0), sample(FrameKind::FetchResponse, 300)];
        let wire: Vec<u8> = frames.iter().flat_map(|f| f.to_bytes().to_vec()).collect();
        let mut decoder = FrameDecoder::new(FRAME_BODY_SIZE_MAX);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire {
            assert!(decoder.bytes_needed(&buf) >= 1);
            buf.extend_from_slice(&[byte]);
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                got.push(frame);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].body.len(), 300);
        decoder.finish(&buf).unwrap();
    }

    #[test]
    fn oversize_length_is_rejected_from_the_header_alone() {
        let frame = sample(FrameKind::ProduceRequest, 2000).to_bytes();
        let mut buf = BytesMut::from(&frame[..FRAME_HEADER_SIZE]);
        let mut decoder = FrameDecoder::new(1000);
        assert_eq!(decoder.decode(&mut buf), Err(FrameError::Oversize { len: 2000, max: 1000 }));
        assert_eq!(decoder.decode(&mut buf), Err(FrameError::Failed));
    }

    #[test]
    fn garbage_is_rejected_by_its_first_byte() {
        let mut decoder = FrameDecoder::new(FRAME_BODY_SIZE_MAX);
        let mut buf = BytesMut::from(&b"G"[..]);
        assert!(matches!(decoder.decode(&mut buf), Err(FrameError::BadMagic { .. })));
    }

    #[test]
    fn each_corrupted_header_field_yields_its_typed_error() {
        let good = sample(FrameKind::MetadataRequest, 10).to_bytes().to_vec();
        let decode = |bytes: &[u8]| decode_frame(&Bytes::copy_from_slice(bytes), 1 << 20);

        let mut bad = good.clone();
        bad[4] = 9;
        assert_eq!(decode(&bad).unwrap_err(), FrameError::UnsupportedVersion { version: 9 });

        let mut bad = good.clone();
        bad[8] ^= 1;
        assert!(matches!(decode(&bad).unwrap_err(), FrameError::BadHeaderChecksum { .. }));

        let mut bad = good.clone();
        bad[FRAME_HEADER_SIZE + 3] ^= 0x10;
        assert!(matches!(decode(&bad).unwrap_err(), FrameError::BadBodyChecksum { .. }));

        let mut bad = good.clone();
        bad[5] = 0x60;
        reseal_header(&mut bad);
        assert_eq!(decode(&bad).unwrap_err(), FrameError::UnknownKind { kind: 0x60 });

        let mut bad = good.clone();
        bad[6] = 1;
        reseal_header(&mut bad);
        assert!(matches!(decode(&bad).unwrap_err(), FrameError::BadFlags { flags: 1, .. }));

        assert!(matches!(
            decode(&good[..good.len() - 1]).unwrap_err(),
            FrameError::Truncated { needed: 1, .. }
        ));
    }

    #[test]
    fn end_of_stream_inside_a_frame_is_truncated() {
        let frame = sample(FrameKind::FetchRequest, 50).to_bytes();
        let mut decoder = FrameDecoder::new(FRAME_BODY_SIZE_MAX);
        let mut buf = BytesMut::from(&frame[..40]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(decoder.finish(&buf), Err(FrameError::Truncated { buffered: 8, needed: 42 }));
    }

    fn reseal_header(bytes: &mut [u8]) {
        let crc = crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]);
        bytes[HEADER_CRC_OFFSET..FRAME_HEADER_SIZE].copy_from_slice(&crc.to_le_bytes());
    }
}

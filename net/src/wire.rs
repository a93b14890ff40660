//! Primitive body decoding shared by the client and peer protocols, and their error type.
//!
//! Invariants: every read checks the bytes remaining first; every count or length is checked
//! against its named limit *and* against the bytes remaining (count × smallest element size)
//! before anything is allocated for it; byte strings are zero-copy slices of the frame body.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, Bytes};
use ringlog_raft::{LogIndex, NodeId, Term};
use thiserror::Error;

use crate::frame::{BodyWriter, FrameKind};
use crate::limits::MESSAGE_LEN_MAX;

/// Why a frame body is not a valid message. The connection that sent it is closed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error("body ends inside {what}")]
    Truncated { what: &'static str },
    #[error("{what}: count {count} exceeds the limit of {max}")]
    TooMany { what: &'static str, count: u64, max: u64 },
    #[error("{what}: length {len} exceeds the limit of {max}")]
    TooLong { what: &'static str, len: u64, max: u64 },
    #[error("{what}: invalid value {value}")]
    BadValue { what: &'static str, value: u64 },
    #[error("{what} is not valid UTF-8")]
    BadUtf8 { what: &'static str },
    #[error("{count} unexpected bytes after the message")]
    TrailingBytes { count: usize },
    #[error("frame kind {kind:?} is not a {expected}")]
    WrongKind { expected: &'static str, kind: FrameKind },
    #[error("entry {index} (term {term}) failed its batch check: {reason}")]
    BadBatch { term: Term, index: LogIndex, reason: String },
}

/// A cursor over a frame body.
#[derive(Debug)]
pub struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(body: Bytes) -> Self {
        Reader { buf: body }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, len: usize, what: &'static str) -> Result<(), ProtocolError> {
        if self.buf.len() < len {
            return Err(ProtocolError::Truncated { what });
        }
        Ok(())
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        self.need(2, what)?;
        Ok(self.buf.get_u16_le())
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32_le())
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, ProtocolError> {
        self.need(8, what)?;
        Ok(self.buf.get_u64_le())
    }

    pub fn bool(&mut self, what: &'static str) -> Result<bool, ProtocolError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(ProtocolError::BadValue { what, value: value.into() }),
        }
    }

    pub fn term(&mut self, what: &'static str) -> Result<Term, ProtocolError> {
        self.u64(what).map(Term)
    }

    pub fn index(&mut self, what: &'static str) -> Result<LogIndex, ProtocolError> {
        self.u64(what).map(LogIndex)
    }

    pub fn node(&mut self, what: &'static str) -> Result<NodeId, ProtocolError> {
        self.u32(what).map(NodeId)
    }

    /// An optional node: a presence byte, then the id.
    pub fn opt_node(&mut self, what: &'static str) -> Result<Option<NodeId>, ProtocolError> {
        if self.bool(what)? {
            return self.node(what).map(Some);
        }
        Ok(None)
    }

    /// A u32 count of elements each at least `elem_size_min` bytes, bounded by `max` and by the
    /// bytes remaining.
    pub fn count(
        &mut self,
        what: &'static str,
        max: usize,
        elem_size_min: usize,
    ) -> Result<usize, ProtocolError> {
        let count = self.u32(what)? as usize;
        if count > max {
            return Err(ProtocolError::TooMany { what, count: count as u64, max: max as u64 });
        }
        if count.saturating_mul(elem_size_min) > self.buf.len() {
            return Err(ProtocolError::Truncated { what });
        }
        Ok(count)
    }

    /// A u32 length-prefixed byte string of at most `max` bytes, as a zero-copy slice.
    pub fn bytes(&mut self, what: &'static str, max: usize) -> Result<Bytes, ProtocolError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(ProtocolError::TooLong { what, len: len as u64, max: max as u64 });
        }
        self.need(len, what)?;
        Ok(self.buf.split_to(len))
    }

    /// A u16 length-prefixed UTF-8 string of at most `MESSAGE_LEN_MAX` bytes.
    pub fn string(&mut self, what: &'static str) -> Result<String, ProtocolError> {
        let len = self.u16(what)? as usize;
        if len > MESSAGE_LEN_MAX {
            let max = MESSAGE_LEN_MAX as u64;
            return Err(ProtocolError::TooLong { what, len: len as u64, max });
        }
        self.need(len, what)?;
        let bytes = self.buf.split_to(len);
        String::from_utf8(bytes.to_vec()).map_err(|_| ProtocolError::BadUtf8 { what })
    }

    /// An optional socket address: 0 = none, 4 = IPv4 (4 bytes), 6 = IPv6 (16 bytes); then
    /// the port.
    pub fn opt_addr(&mut self, what: &'static str) -> Result<Option<SocketAddr>, ProtocolError> {
        let ip = match self.u8(what)? {
            0 => return Ok(None),
            4 => {
                self.need(4, what)?;
                let mut octets = [0u8; 4];
                self.buf.copy_to_slice(&mut octets);
                IpAddr::V4(Ipv4Addr::from(octets))
            }
            6 => {
                self.need(16, what)?;
                let mut octets = [0u8; 16];
                self.buf.copy_to_slice(&mut octets);
                IpAddr::V6(Ipv6Addr::from(octets))
            }
            tag => return Err(ProtocolError::BadValue { what, value: tag.into() }),
        };
        let port = self.u16(what)?;
        Ok(Some(SocketAddr::new(ip, port)))
    }

    /// Succeeds only if the whole body was consumed.
    pub fn finish(self) -> Result<(), ProtocolError> {
        if !self.buf.is_empty() {
            return Err(ProtocolError::TrailingBytes { count: self.buf.len() });
        }
        Ok(())
    }
}

/// Encoding counterparts of the `Reader` methods that have a shape beyond a fixed integer.
pub trait BodyWriterExt {
    fn put_bool(&mut self, value: bool);
    fn put_opt_node(&mut self, node: Option<NodeId>);
    fn put_count(&mut self, count: usize);
    fn put_bytes(&mut self, bytes: &Bytes);
    /// Writes at most `MESSAGE_LEN_MAX` bytes of `text`, cut at a character boundary.
    fn put_string(&mut self, text: &str);
    fn put_opt_addr(&mut self, addr: Option<SocketAddr>);
}

impl BodyWriterExt for BodyWriter {
    fn put_bool(&mut self, value: bool) {
        self.put_u8(value.into());
    }

    fn put_opt_node(&mut self, node: Option<NodeId>) {
        self.put_bool(node.is_some());
        if let Some(node) = node {
            self.put_u32(node.0);
        }
    }

    fn put_count(&mut self, count: usize) {
        self.put_u32(u32::try_from(count).expect("count over u32 is a caller bug"));
    }

    fn put_bytes(&mut self, bytes: &Bytes) {
        self.put_count(bytes.len());
        self.put_payload(bytes);
    }

    fn put_string(&mut self, text: &str) {
        let mut end = text.len().min(MESSAGE_LEN_MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.put_u16(end as u16);
        self.put_slice(&text.as_bytes()[..end]);
    }

    fn put_opt_addr(&mut self, addr: Option<SocketAddr>) {
        match addr {
            None => self.put_u8(0),
            Some(SocketAddr::V4(v4)) => {
                self.put_u8(4);
                self.put_slice(&v4.ip().octets());
                self.put_u16(v4.port());
            }
            Some(SocketAddr::V6(v6)) => {
                self.put_u8(6);
                self.put_slice(&v6.ip().octets());
                self.put_u16(v6.port());
            }
        }
    }
}

//! The address book: where every member of the shard's groups listens, and the membership
//! record stored in a `CONTROL_MEMBERSHIP` batch (the membership plus the addresses).
//!
//! Existing nodes start from the config's `[[peers]]`; a node added by a membership change
//! brings its addresses in the change, and every membership batch carries the addresses of
//! every member (so the latest membership batch in a log is enough to rebuild the book after
//! a restart, and followers learn added nodes from the replicated log).
//!
//! Membership record layout (little-endian, docs in the replica's report):
//! `version u8 (=1) | voters u16 + u32 each | learners u16 + u32 each | addresses u16 +
//! (node u32, peer addr, client addr) each`, an address being `family u8 (4|6) | ip (4|16
//! bytes) | port u16`. Decoding bounds every count by `GROUP_MEMBERS_MAX` and by the bytes
//! present; it never panics.
//!
//! Invariant: a shard's peer and client ports are the node's shard-0 ports plus the shard
//! index (`shard_addr`).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, Bytes, BytesMut};
use ringlog_net::limits::GROUP_MEMBERS_MAX;
use ringlog_raft::{Membership, NodeId};

use crate::config::NodeConfig;
use crate::node::api::NodeAddresses;

/// Version byte of the membership record.
const MEMBERSHIP_RECORD_VERSION: u8 = 1;

/// The address of shard `shard` of a node whose shard 0 listens on `addr`.
pub(crate) fn shard_addr(addr: SocketAddr, shard: usize) -> SocketAddr {
    let mut out = addr;
    out.set_port(addr.port().saturating_add(shard as u16));
    out
}

/// Addresses (of shard 0) of every node this shard knows, by node id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct AddressBook {
    nodes: BTreeMap<NodeId, NodeAddresses>,
}

impl AddressBook {
    /// The book of a node as configured: its `[[peers]]`.
    pub(crate) fn from_config(config: &NodeConfig) -> AddressBook {
        let nodes = config
            .peers
            .iter()
            .map(|p| (NodeId(p.id), NodeAddresses { peer: p.peer, client: p.client }))
            .collect();
        AddressBook { nodes }
    }

    pub(crate) fn get(&self, node: NodeId) -> Option<NodeAddresses> {
        self.nodes.get(&node).copied()
    }

    /// Records `node`'s addresses; returns true if they changed.
    pub(crate) fn insert(&mut self, node: NodeId, addresses: NodeAddresses) -> bool {
        self.nodes.insert(node, addresses) != Some(addresses)
    }

    /// The addresses of `members` that the book knows, ascending by node.
    pub(crate) fn entries_for(&self, members: &Membership) -> Vec<(NodeId, NodeAddresses)> {
        let mut out: Vec<(NodeId, NodeAddresses)> = members
            .voters
            .iter()
            .chain(&members.learners)
            .filter_map(|&n| self.get(n).map(|a| (n, a)))
            .collect();
        out.sort_by_key(|(n, _)| *n);
        out.dedup_by_key(|(n, _)| *n);
        out
    }
}

/// A membership with the addresses of its members: the payload of a membership batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MembershipRecord {
    pub membership: Membership,
    pub addresses: Vec<(NodeId, NodeAddresses)>,
}

/// Why a membership record did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("membership record: {0}")]
pub(crate) struct RecordError(pub &'static str);

impl MembershipRecord {
    pub(crate) fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        out.put_u8(MEMBERSHIP_RECORD_VERSION);
        for list in [&self.membership.voters, &self.membership.learners] {
            out.put_u16_le(list.len() as u16);
            for node in list {
                out.put_u32_le(node.0);
            }
        }
        out.put_u16_le(self.addresses.len() as u16);
        for (node, addresses) in &self.addresses {
            out.put_u32_le(node.0);
            put_addr(&mut out, addresses.peer);
            put_addr(&mut out, addresses.client);
        }
        out.freeze()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<MembershipRecord, RecordError> {
        let mut r = Cursor { bytes, at: 0 };
        if r.u8()? != MEMBERSHIP_RECORD_VERSION {
            return Err(RecordError("unknown version"));
        }
        let voters = r.nodes()?;
        let learners = r.nodes()?;
        let count = r.count()?;
        let mut addresses = Vec::with_capacity(count);
        for _ in 0..count {
            let node = NodeId(r.u32()?);
            let peer = r.addr()?;
            let client = r.addr()?;
            addresses.push((node, NodeAddresses { peer, client }));
        }
        if r.at != bytes.len() {
            return Err(RecordError("trailing bytes"));
        }
        Ok(MembershipRecord { membership: Membership { voters, learners }, addresses })
    }
}

fn put_addr(out: &mut BytesMut, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.put_u8(4);
            out.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.put_u8(6);
            out.put_slice(&ip.octets());
        }
    }
    out.put_u16_le(addr.port());
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, len: usize) -> Result<&[u8], RecordError> {
        let end = self.at.checked_add(len).ok_or(RecordError("length overflow"))?;
        let slice = self.bytes.get(self.at..end).ok_or(RecordError("truncated"))?;
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn count(&mut self) -> Result<usize, RecordError> {
        let count = self.u16()? as usize;
        if count > GROUP_MEMBERS_MAX {
            return Err(RecordError("too many members"));
        }
        Ok(count)
    }
    fn nodes(&mut self) -> Result<Vec<NodeId>, RecordError> {
        let count = self.count()?;
        (0..count).map(|_| self.u32().map(NodeId)).collect()
    }
    fn addr(&mut self) -> Result<SocketAddr, RecordError> {
        let ip = match self.u8()? {
            4 => {
                let b = self.take(4)?;
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            6 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(self.take(16)?);
                IpAddr::V6(Ipv6Addr::from(octets))
            }
            _ => return Err(RecordError("unknown address family")),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> MembershipRecord {
        let a = |s: &str| s.parse::<SocketAddr>().expect("address");
        MembershipRecord {
            membership: Membership {
                voters: vec![NodeId(1), NodeId(2)],
                learners: vec![NodeId(4)],
            },
            addresses: vec![
                (
                    NodeId(1),
                    NodeAddresses { peer: a("127.0.0.1:7000"), client: a("127.0.0.1:9000") },
                ),
                (NodeId(4), NodeAddresses { peer: a("[::1]:7100"), client: a("[::1]:9100") }),
            ],
        }
    }

    #[test]
    fn membership_record_round_trips_with_v4_and_v6_addresses() {
        let r = record();
        assert_eq!(MembershipRecord::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn membership_record_rejects_every_truncation_and_trailing_bytes() {
        let bytes = record().encode();
        for len in 0..bytes.len() {
            assert!(MembershipRecord::decode(&bytes[..len]).is_err(), "prefix {len} decoded");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(MembershipRecord::decode(&longer).is_err());
    }

    #[test]
    fn shard_addresses_add_the_shard_index_to_the_port() {
        let base: SocketAddr = "10.0.0.1:7000".parse().expect("address");
        assert_eq!(shard_addr(base, 3).port(), 7003);
    }
}

//! Record values: unique, derived from (seed, writer, seq), self-describing and checkable
//! byte by byte, so the final check needs no copy of what was sent.
//!
//! Layout: magic `NMS1`, partition u32, writer u32, seq u64, length u32 (whole value), then
//! filler bytes from a splitmix64 stream seeded by (seed, writer, seq). Lengths 32..=519.

/// Header bytes before the filler.
pub const HEADER_SIZE: usize = 24;
const MAGIC: [u8; 4] = *b"NMS1";
const FILLER_MAX: u64 = 488;

/// Which writer sent a value, and its sequence number (0, 1, 2, ... per writer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId {
    pub partition: u32,
    pub writer: u32,
    pub seq: u64,
}

/// The value writer `id.writer` sends as its record `id.seq`.
pub fn make(seed: u64, id: RecordId) -> Vec<u8> {
    let mut stream = stream_seed(seed, id);
    let filler_len = 8 + (splitmix(&mut stream) % FILLER_MAX) as usize;
    let len = HEADER_SIZE + filler_len;
    let mut value = Vec::with_capacity(len);
    value.extend_from_slice(&MAGIC);
    value.extend_from_slice(&id.partition.to_le_bytes());
    value.extend_from_slice(&id.writer.to_le_bytes());
    value.extend_from_slice(&id.seq.to_le_bytes());
    value.extend_from_slice(&(len as u32).to_le_bytes());
    while value.len() < len {
        let word = splitmix(&mut stream).to_le_bytes();
        let take = (len - value.len()).min(8);
        value.extend_from_slice(&word[..take]);
    }
    value
}

/// The id of a value this soak could have sent with `seed`: its header parses and every byte
/// equals what `make` produces for that id. `None` for anything else (foreign or corrupt).
pub fn parse(seed: u64, value: &[u8]) -> Option<RecordId> {
    if value.len() < HEADER_SIZE || value[0..4] != MAGIC {
        return None;
    }
    let u32_at = |at: usize| u32::from_le_bytes(value[at..at + 4].try_into().unwrap());
    let id = RecordId {
        partition: u32_at(4),
        writer: u32_at(8),
        seq: u64::from_le_bytes(value[12..20].try_into().unwrap()),
    };
    (make(seed, id) == value).then_some(id)
}

fn stream_seed(seed: u64, id: RecordId) -> u64 {
    let mut state = seed ^ u64::from(id.writer).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mixed = splitmix(&mut state) ^ id.seq.wrapping_mul(0xD1B5_4A32_D192_ED03);
    mixed ^ u64::from(id.partition).rotate_left(32)
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_made_value_parses_back_to_its_id_and_any_flipped_bit_is_refused() {
        let id = RecordId { partition: 2, writer: 5, seq: 77 };
        let value = make(42, id);
        assert!((HEADER_SIZE + 8..HEADER_SIZE + 8 + FILLER_MAX as usize).contains(&value.len()));
        assert_eq!(parse(42, &value), Some(id));
        assert_eq!(parse(43, &value), None, "another seed's value is not ours");
        for bit in 0..value.len() * 8 {
            let mut flipped = value.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(parse(42, &flipped), None, "bit {bit}");
        }
        assert_eq!(parse(42, &value[..value.len() - 1]), None);
    }

    #[test]
    fn values_of_different_ids_differ() {
        let a = make(1, RecordId { partition: 0, writer: 0, seq: 1 });
        let b = make(1, RecordId { partition: 0, writer: 0, seq: 2 });
        let c = make(1, RecordId { partition: 0, writer: 1, seq: 1 });
        assert!(a != b && a != c && b != c);
    }
}

//! Pack objects (ADR 0030, docs/format.md "Pack object"): many small
//! sealed chunk objects written as one file, so that a batch of small
//! datasets costs one object instead of one per chunk.
//!
//! ```text
//! sealed chunk object ‖ sealed chunk object ‖ …      the bodies, as written
//! entry × count: chunk id (16) ‖ offset (u64 BE) ‖ length (u32 BE)
//! count (u32 BE) ‖ "CUSTOSPK" ‖ version 1 ‖ 3 zero bytes
//! ```
//!
//! A packed chunk's id names its pack: its first 12 bytes are the pack's
//! id, its last 4 the entry's number. The index is not sealed: every entry
//! is itself a sealed chunk object whose tag covers its id, so an altered
//! index only leads a reader to bytes that fail authentication. The index
//! holds no key material and no plaintext, so packs copy key-free.

use custos_model::ChunkId;

pub const MAGIC: &[u8; 8] = b"CUSTOSPK";
pub const VERSION: u8 = 1;
/// Bytes of the trailer at the end of every pack.
pub const TRAILER_LEN: usize = 16;
/// Bytes of one index entry.
pub const ENTRY_LEN: usize = 28;
/// The most entries one pack may hold (a batch holds far fewer).
pub const MAX_ENTRIES: u32 = 1 << 20;

/// The pack a packed chunk id names (its first 12 bytes).
pub type PackId = [u8; 12];

/// The pack `id` would be in, if it is a packed chunk.
pub fn pack_of(id: &ChunkId) -> PackId {
    id.0[..12].try_into().expect("12 bytes")
}

/// The `n`th chunk id of pack `pack`.
pub fn chunk_in(pack: &PackId, n: u32) -> ChunkId {
    let mut b = [0u8; 16];
    b[..12].copy_from_slice(pack);
    b[12..].copy_from_slice(&n.to_be_bytes());
    ChunkId(b)
}

/// The entry number of a packed chunk id.
pub fn entry_number(id: &ChunkId) -> u32 {
    u32::from_be_bytes(id.0[12..].try_into().expect("4 bytes"))
}

/// One chunk object inside a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub id: ChunkId,
    pub offset: u64,
    pub len: u32,
}

/// Why a pack's index cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error("it is shorter than a pack trailer")]
    Short,
    #[error("its trailer is not a Custos pack's (magic or version)")]
    Trailer,
    #[error("its index claims {0} entries, more than the pack holds")]
    Count(u32),
    #[error("index entry {0} is not one of this pack's chunks, lies outside its bodies, or repeats an id")]
    Entry(usize),
}

/// The index and trailer that end a pack whose bodies are `entries`.
pub fn encode_index(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_LEN + TRAILER_LEN);
    for e in entries {
        out.extend_from_slice(&e.id.0);
        out.extend_from_slice(&e.offset.to_be_bytes());
        out.extend_from_slice(&e.len.to_be_bytes());
    }
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&[0; 3]);
    out
}

/// How many entries the trailer (the last [`TRAILER_LEN`] bytes of a pack
/// of `pack_len` bytes) announces; checked against the pack's length.
pub fn parse_trailer(trailer: &[u8], pack_len: u64) -> Result<u32, PackError> {
    if trailer.len() != TRAILER_LEN || pack_len < TRAILER_LEN as u64 {
        return Err(PackError::Short);
    }
    if &trailer[4..12] != MAGIC || trailer[12] != VERSION || trailer[13..] != [0; 3] {
        return Err(PackError::Trailer);
    }
    let count = u32::from_be_bytes(trailer[..4].try_into().expect("4 bytes"));
    if count > MAX_ENTRIES || (count as u64) * ENTRY_LEN as u64 + TRAILER_LEN as u64 > pack_len {
        return Err(PackError::Count(count));
    }
    Ok(count)
}

/// The entries of pack `pack` from its index bytes (`count` ×
/// [`ENTRY_LEN`]), sorted by id. Every entry must be one of the pack's own
/// ids, lie within the bodies (`bodies_len` bytes before the index), be
/// non-empty, and appear once.
pub fn parse_index(pack: &PackId, index: &[u8], bodies_len: u64) -> Result<Vec<Entry>, PackError> {
    let mut out: Vec<Entry> = Vec::with_capacity(index.len() / ENTRY_LEN);
    for (i, e) in index.chunks(ENTRY_LEN).enumerate() {
        if e.len() != ENTRY_LEN {
            return Err(PackError::Entry(i));
        }
        let id = ChunkId(e[..16].try_into().expect("16 bytes"));
        let offset = u64::from_be_bytes(e[16..24].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(e[24..28].try_into().expect("4 bytes"));
        let inside = offset.checked_add(len as u64).is_some_and(|end| end <= bodies_len);
        if pack_of(&id) != *pack || len == 0 || !inside {
            return Err(PackError::Entry(i));
        }
        out.push(Entry { id, offset, len });
    }
    out.sort_by_key(|e| e.id.0);
    if let Some(i) = out.windows(2).position(|w| w[0].id == w[1].id) {
        return Err(PackError::Entry(i + 1));
    }
    Ok(out)
}

/// The entries of a whole pack `bytes` (for tools and the fuzzer; volumes
/// read the trailer and the index alone).
pub fn parse_pack(pack: &PackId, bytes: &[u8]) -> Result<Vec<Entry>, PackError> {
    let len = bytes.len() as u64;
    let trailer = bytes.get(bytes.len().saturating_sub(TRAILER_LEN)..).unwrap_or_default();
    let count = parse_trailer(trailer, len)?;
    let index_len = count as usize * ENTRY_LEN;
    let bodies = bytes.len() - TRAILER_LEN - index_len;
    parse_index(pack, &bytes[bodies..bodies + index_len], bodies as u64)
}

/// The entry numbers a pack's dead list records (4 bytes each, big-endian;
/// a torn last record is ignored).
pub fn parse_dead(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks_exact(4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_reads_back_and_refuses_what_does_not_fit() {
        let p: PackId = [7; 12];
        let entries =
            [Entry { id: chunk_in(&p, 1), offset: 0, len: 40 }, Entry { id: chunk_in(&p, 0), offset: 40, len: 60 }];
        let tail = encode_index(&entries);
        let pack_len = 100 + tail.len() as u64;
        let count = parse_trailer(&tail[tail.len() - TRAILER_LEN..], pack_len).unwrap();
        assert_eq!(count, 2);
        let got = parse_index(&p, &tail[..2 * ENTRY_LEN], 100).unwrap();
        assert_eq!(got[0].id, chunk_in(&p, 0), "sorted by id");
        assert_eq!(entry_number(&got[1].id), 1);
        // Outside the bodies, another pack's id, a repeated id, a short
        // pack, a wrong magic, a count the pack cannot hold.
        assert_eq!(parse_index(&p, &tail[..2 * ENTRY_LEN], 99), Err(PackError::Entry(1)));
        assert_eq!(parse_index(&[8; 12], &tail[..2 * ENTRY_LEN], 100), Err(PackError::Entry(0)));
        let twice = encode_index(&[entries[0], entries[0]]);
        assert_eq!(parse_index(&p, &twice[..2 * ENTRY_LEN], 100), Err(PackError::Entry(1)));
        assert_eq!(parse_trailer(&tail[tail.len() - TRAILER_LEN..], 10), Err(PackError::Short));
        let mut bad = tail[tail.len() - TRAILER_LEN..].to_vec();
        bad[5] ^= 1;
        assert_eq!(parse_trailer(&bad, pack_len), Err(PackError::Trailer));
        assert_eq!(parse_trailer(&tail[tail.len() - TRAILER_LEN..], 60), Err(PackError::Count(2)));
        assert_eq!(parse_dead(&[0, 0, 0, 1, 0, 0, 0, 2, 9]), [1, 2]);
    }
}

//! Pack objects (ADR 0030, ADR 0035, docs/format.md "Pack object"): many
//! small sealed chunk objects (and, from version 2, the manifests of their
//! generations) written as one file, so that a batch of small datasets
//! costs one object instead of two per dataset.
//!
//! ```text
//! sealed object ‖ sealed object ‖ …                  the bodies, as written
//! chunk entry × count: chunk id (16) ‖ offset (u64 BE) ‖ length (u32 BE)
//! manifest entry × m: dataset id (16) ‖ generation (u64 BE) ‖ number (u32 BE)
//!                     ‖ offset (u64 BE) ‖ length (u32 BE)            (version 2)
//! m (u32 BE, version 2 only) ‖ count (u32 BE) ‖ "CUSTOSPK" ‖ version ‖ 3 zero bytes
//! ```
//!
//! A packed chunk's id names its pack: its first 12 bytes are the pack's
//! id, its last 4 the entry's number. A packed manifest has a number from
//! the same series (the pack's dead list names either). The index is not
//! sealed: every entry is itself a sealed object whose tag covers its id
//! (or its dataset and generation), so an altered index only leads a
//! reader to bytes that fail authentication. The index holds no key
//! material and no plaintext, so packs copy key-free.

use custos_model::{ChunkId, DatasetId};

pub const MAGIC: &[u8; 8] = b"CUSTOSPK";
/// Packs of chunks alone.
pub const VERSION: u8 = 1;
/// Packs that also hold manifests (volume layout 4).
pub const VERSION_2: u8 = 2;
/// Bytes of the trailer at the end of a version 1 pack.
pub const TRAILER_LEN: usize = 16;
/// Bytes of the trailer at the end of a version 2 pack.
pub const TRAILER_LEN_2: usize = 20;
/// Bytes of one chunk entry.
pub const ENTRY_LEN: usize = 28;
/// Bytes of one manifest entry.
pub const MANIFEST_ENTRY_LEN: usize = 40;
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

/// One manifest object inside a pack (version 2): the manifest of
/// `generation` of the dataset (or copy) `dataset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestEntry {
    pub dataset: DatasetId,
    pub generation: u64,
    /// Its number in the pack's series (shared with the chunks' entry
    /// numbers), which the dead list records when it is deleted.
    pub number: u32,
    pub offset: u64,
    pub len: u32,
}

/// A pack's index: its chunk entries sorted by id, its manifest entries by
/// dataset and generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    pub chunks: Vec<Entry>,
    pub manifests: Vec<ManifestEntry>,
}

impl Index {
    /// Every entry number in the pack, chunks' and manifests'.
    pub fn numbers(&self) -> impl Iterator<Item = u32> + '_ {
        self.chunks.iter().map(|e| entry_number(&e.id)).chain(self.manifests.iter().map(|m| m.number))
    }

    /// The manifest entries of `dataset`'s `generation` (one, unless the
    /// pack was made by hand).
    pub fn manifests_of(&self, dataset: &DatasetId, generation: u64) -> &[ManifestEntry] {
        let key = (dataset.0, generation);
        let from = self.manifests.partition_point(|m| (m.dataset.0, m.generation) < key);
        let to = self.manifests.partition_point(|m| (m.dataset.0, m.generation) <= key);
        &self.manifests[from..to]
    }
}

/// What a pack's trailer announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub chunks: u32,
    pub manifests: u32,
    /// The trailer's own length ([`TRAILER_LEN`] or [`TRAILER_LEN_2`]).
    pub len: usize,
}

impl Trailer {
    /// Bytes of the index before the trailer.
    pub fn index_len(&self) -> u64 {
        self.chunks as u64 * ENTRY_LEN as u64 + self.manifests as u64 * MANIFEST_ENTRY_LEN as u64
    }
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
    #[error("manifest entry {0} lies outside the pack's bodies, is empty, or repeats a number or a generation")]
    Manifest(usize),
}

/// The index and trailer that end a pack holding `index`: version 1 when
/// it holds no manifest (what builds before layout 4 read), else version 2.
pub fn encode_index(index: &Index) -> Vec<u8> {
    let m = index.manifests.len();
    let mut out = Vec::with_capacity(index.chunks.len() * ENTRY_LEN + m * MANIFEST_ENTRY_LEN + TRAILER_LEN_2);
    for e in &index.chunks {
        out.extend_from_slice(&e.id.0);
        out.extend_from_slice(&e.offset.to_be_bytes());
        out.extend_from_slice(&e.len.to_be_bytes());
    }
    for e in &index.manifests {
        out.extend_from_slice(&e.dataset.0);
        out.extend_from_slice(&e.generation.to_be_bytes());
        out.extend_from_slice(&e.number.to_be_bytes());
        out.extend_from_slice(&e.offset.to_be_bytes());
        out.extend_from_slice(&e.len.to_be_bytes());
    }
    if m > 0 {
        out.extend_from_slice(&(m as u32).to_be_bytes());
    }
    out.extend_from_slice(&(index.chunks.len() as u32).to_be_bytes());
    out.extend_from_slice(MAGIC);
    out.push(if m > 0 { VERSION_2 } else { VERSION });
    out.extend_from_slice(&[0; 3]);
    out
}

/// What the trailer announces, from the last bytes of a pack of
/// `pack_len` bytes (`tail`: its last [`TRAILER_LEN_2`] bytes, or all of
/// it when shorter); checked against the pack's length.
pub fn parse_trailer(tail: &[u8], pack_len: u64) -> Result<Trailer, PackError> {
    if tail.len() < TRAILER_LEN || pack_len < TRAILER_LEN as u64 || tail.len() as u64 > pack_len {
        return Err(PackError::Short);
    }
    let t = &tail[tail.len() - TRAILER_LEN..];
    if &t[4..12] != MAGIC || t[13..] != [0; 3] {
        return Err(PackError::Trailer);
    }
    let chunks = u32::from_be_bytes(t[..4].try_into().expect("4 bytes"));
    let trailer = match t[12] {
        VERSION => Trailer { chunks, manifests: 0, len: TRAILER_LEN },
        VERSION_2 if tail.len() >= TRAILER_LEN_2 => {
            let m = &tail[tail.len() - TRAILER_LEN_2..];
            Trailer { chunks, manifests: u32::from_be_bytes(m[..4].try_into().expect("4 bytes")), len: TRAILER_LEN_2 }
        }
        VERSION_2 => return Err(PackError::Short),
        _ => return Err(PackError::Trailer),
    };
    let total = trailer.chunks as u64 + trailer.manifests as u64;
    if total > MAX_ENTRIES as u64 || trailer.index_len() + trailer.len as u64 > pack_len {
        return Err(PackError::Count(total.min(u32::MAX as u64) as u32));
    }
    Ok(trailer)
}

/// The index of pack `pack` from its index bytes (as `trailer` announced
/// them). Every chunk entry must be one of the pack's own ids; every entry
/// must lie within the bodies (`bodies_len` bytes before the index), be
/// non-empty, and have a number and (a manifest) a generation of its own.
pub fn parse_index(pack: &PackId, index: &[u8], trailer: &Trailer, bodies_len: u64) -> Result<Index, PackError> {
    if index.len() as u64 != trailer.index_len() {
        return Err(PackError::Count(trailer.chunks));
    }
    let inside = |offset: u64, len: u32| len > 0 && offset.checked_add(len as u64).is_some_and(|end| end <= bodies_len);
    let split = trailer.chunks as usize * ENTRY_LEN;
    let mut chunks: Vec<Entry> = Vec::with_capacity(trailer.chunks as usize);
    for (i, e) in index[..split].chunks(ENTRY_LEN).enumerate() {
        let id = ChunkId(e[..16].try_into().expect("16 bytes"));
        let offset = u64::from_be_bytes(e[16..24].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(e[24..28].try_into().expect("4 bytes"));
        if pack_of(&id) != *pack || !inside(offset, len) {
            return Err(PackError::Entry(i));
        }
        chunks.push(Entry { id, offset, len });
    }
    chunks.sort_by_key(|e| e.id.0);
    if let Some(i) = chunks.windows(2).position(|w| w[0].id == w[1].id) {
        return Err(PackError::Entry(i + 1));
    }
    let mut manifests: Vec<ManifestEntry> = Vec::with_capacity(trailer.manifests as usize);
    for (i, e) in index[split..].chunks(MANIFEST_ENTRY_LEN).enumerate() {
        let m = ManifestEntry {
            dataset: DatasetId(e[..16].try_into().expect("16 bytes")),
            generation: u64::from_be_bytes(e[16..24].try_into().expect("8 bytes")),
            number: u32::from_be_bytes(e[24..28].try_into().expect("4 bytes")),
            offset: u64::from_be_bytes(e[28..36].try_into().expect("8 bytes")),
            len: u32::from_be_bytes(e[36..40].try_into().expect("4 bytes")),
        };
        if !inside(m.offset, m.len) {
            return Err(PackError::Manifest(i));
        }
        manifests.push(m);
    }
    manifests.sort_by_key(|m| (m.dataset.0, m.generation));
    if let Some(i) =
        manifests.windows(2).position(|w| (w[0].dataset, w[0].generation) == (w[1].dataset, w[1].generation))
    {
        return Err(PackError::Manifest(i + 1));
    }
    let out = Index { chunks, manifests };
    let mut numbers: Vec<u32> = out.numbers().collect();
    numbers.sort_unstable();
    if let Some(i) = numbers.windows(2).position(|w| w[0] == w[1]) {
        return Err(PackError::Manifest(i));
    }
    Ok(out)
}

/// The index of a whole pack `bytes` (for tools and the fuzzer; volumes
/// read the trailer and the index alone).
pub fn parse_pack(pack: &PackId, bytes: &[u8]) -> Result<Index, PackError> {
    let len = bytes.len() as u64;
    let trailer = parse_trailer(&bytes[bytes.len().saturating_sub(TRAILER_LEN_2)..], len)?;
    let index_len = trailer.index_len() as usize;
    let bodies = bytes.len() - trailer.len - index_len;
    parse_index(pack, &bytes[bodies..bodies + index_len], &trailer, bodies as u64)
}

/// The entry numbers a pack's dead list records (4 bytes each, big-endian;
/// a torn last record is ignored).
pub fn parse_dead(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks_exact(4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks_only(entries: &[Entry]) -> Index {
        Index { chunks: entries.to_vec(), manifests: Vec::new() }
    }

    #[test]
    fn an_index_reads_back_and_refuses_what_does_not_fit() {
        let p: PackId = [7; 12];
        let entries =
            [Entry { id: chunk_in(&p, 1), offset: 0, len: 40 }, Entry { id: chunk_in(&p, 0), offset: 40, len: 60 }];
        let tail = encode_index(&chunks_only(&entries));
        assert_eq!(tail[tail.len() - 4], VERSION, "chunks alone make a version 1 pack");
        let pack_len = 100 + tail.len() as u64;
        let t = parse_trailer(&tail[tail.len() - TRAILER_LEN..], pack_len).unwrap();
        assert_eq!((t.chunks, t.manifests, t.len), (2, 0, TRAILER_LEN));
        let got = parse_index(&p, &tail[..2 * ENTRY_LEN], &t, 100).unwrap();
        assert_eq!(got.chunks[0].id, chunk_in(&p, 0), "sorted by id");
        assert_eq!(entry_number(&got.chunks[1].id), 1);
        // Outside the bodies, another pack's id, a repeated id, a short
        // pack, a wrong magic, a count the pack cannot hold.
        assert_eq!(parse_index(&p, &tail[..2 * ENTRY_LEN], &t, 99), Err(PackError::Entry(1)));
        assert_eq!(parse_index(&[8; 12], &tail[..2 * ENTRY_LEN], &t, 100), Err(PackError::Entry(0)));
        let twice = encode_index(&chunks_only(&[entries[0], entries[0]]));
        assert_eq!(parse_index(&p, &twice[..2 * ENTRY_LEN], &t, 100), Err(PackError::Entry(1)));
        assert_eq!(parse_trailer(&tail[tail.len() - TRAILER_LEN..], 10), Err(PackError::Short));
        let mut bad = tail[tail.len() - TRAILER_LEN..].to_vec();
        bad[5] ^= 1;
        assert_eq!(parse_trailer(&bad, pack_len), Err(PackError::Trailer));
        assert_eq!(parse_trailer(&tail[tail.len() - TRAILER_LEN..], 60), Err(PackError::Count(2)));
        assert_eq!(parse_dead(&[0, 0, 0, 1, 0, 0, 0, 2, 9]), [1, 2]);
    }

    #[test]
    fn manifests_make_a_version_2_pack_found_by_dataset_and_generation() {
        let p: PackId = [9; 12];
        let (a, b) = (DatasetId([1; 16]), DatasetId([2; 16]));
        let m = |dataset, generation, number, offset| ManifestEntry { dataset, generation, number, offset, len: 10 };
        let index = Index {
            chunks: vec![Entry { id: chunk_in(&p, 0), offset: 0, len: 50 }],
            manifests: vec![m(b, 3, 2, 60), m(a, 7, 1, 50)],
        };
        let bodies = [0u8; 70];
        let pack = [&bodies[..], &encode_index(&index)].concat();
        assert_eq!(pack[pack.len() - 4], VERSION_2);
        let got = parse_pack(&p, &pack).unwrap();
        assert_eq!(got.manifests[0].dataset, a, "sorted by dataset");
        assert_eq!(got.manifests_of(&b, 3), &[m(b, 3, 2, 60)]);
        assert!(got.manifests_of(&b, 4).is_empty() && got.manifests_of(&a, 3).is_empty());
        assert_eq!(got.numbers().collect::<Vec<_>>(), [0, 1, 2]);
        // A number a chunk has, a generation twice, outside the bodies, a
        // version 2 trailer cut short.
        let refused = |manifests: Vec<ManifestEntry>| {
            let ix = Index { chunks: index.chunks.clone(), manifests };
            parse_pack(&p, &[&bodies[..], &encode_index(&ix)].concat())
        };
        assert!(matches!(refused(vec![m(a, 7, 0, 50)]), Err(PackError::Manifest(_))));
        assert!(matches!(refused(vec![m(a, 7, 1, 50), m(a, 7, 2, 60)]), Err(PackError::Manifest(1))));
        assert!(matches!(refused(vec![m(a, 7, 1, 65)]), Err(PackError::Manifest(0))));
        let tail = &pack[pack.len() - TRAILER_LEN..];
        assert_eq!(parse_trailer(tail, pack.len() as u64), Err(PackError::Short));
    }
}

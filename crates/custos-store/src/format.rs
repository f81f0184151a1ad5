//! On-volume byte layouts (docs/format.md is the reference).
//!
//! Chunk object (version 2; version 1, the same without a codec, is still read):
//!
//! ```text
//! 0..8    magic "CUSTOSCK"
//! 8       format version (2)
//! 9       codec of the sealed body: 0 stored, 1 LZ4 block
//! 10..12  reserved, zero
//! 12..24  AES-GCM nonce (random)
//! 24..    ciphertext of the encoded chunk, then the 16-byte GCM tag
//! AAD   = bytes 0..24 ‖ dataset id (16) ‖ chunk id (16) ‖ chunk index (u64 BE)
//! ```
//!
//! Manifest object (version 1): the same 24-byte header with magic
//! "CUSTOSMF" and no codec, then the sealed manifest body; AAD = header ‖
//! dataset id ‖ generation (u64 BE). The body is described at [`Manifest`].

use aws_lc_rs::digest;
use custos_crypto::{open_in_place, seal_in_place, CryptoError, DataKey, Kcv, Nonce, TAG_LEN};
use custos_model::{ChunkId, ChunkRef, DatasetId};
use jiff::Timestamp;
use thiserror::Error;

pub const CHUNK_MAGIC: &[u8; 8] = b"CUSTOSCK";
pub const MANIFEST_MAGIC: &[u8; 8] = b"CUSTOSMF";
/// Manifest format version.
pub const VERSION: u8 = 1;
/// Chunk format version written (1 is still read).
pub const CHUNK_VERSION: u8 = 2;
/// Bytes before the ciphertext in every sealed object.
pub const HEADER_LEN: usize = 24;
/// Bytes a sealed chunk adds to its plaintext.
pub const CHUNK_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Largest chunk size a manifest may declare (64 MiB).
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;

/// Why an object could not be opened. The engine adds the dataset,
/// generation and chunk to the message.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    #[error("it is not a Custos {0} object (bad magic)")]
    Magic(&'static str),
    #[error("it has format version {0}, which this Custos cannot read: upgrade Custos")]
    Version(u8),
    #[error("it is too short to be a sealed object")]
    Short,
    #[error("it failed authentication: it was modified, truncated, moved to another position or dataset, or replaced")]
    Authentication,
    #[error("its plaintext length {got} differs from the {want} bytes the manifest records")]
    Length { got: usize, want: u32 },
    #[error("its compressed body does not decompress to the {want} bytes the manifest records")]
    Decompress { want: u32 },
    #[error("its contents are inconsistent: {0}")]
    Inconsistent(&'static str),
    #[error("sealing failed: {0}")]
    Crypto(CryptoError),
}

/// How a chunk's plaintext is encoded inside its seal (header byte 9).
/// The codec is part of the authenticated header, so it cannot be changed
/// without the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// The plaintext as it is.
    Stored,
    /// One LZ4 block; the manifest's chunk length is its decompressed size.
    Lz4,
}

impl Codec {
    fn byte(self) -> u8 {
        match self {
            Codec::Stored => 0,
            Codec::Lz4 => 1,
        }
    }
}

/// How long the output buffer given to [`compress`] must be for `len`
/// bytes of plaintext (LZ4's worst case).
pub const fn compress_bound(len: usize) -> usize {
    lz4_flex::block::get_maximum_output_size(len)
}

/// Compress `plain` into `out` (at least [`compress_bound`] long) as one
/// LZ4 block, and return the compressed length when that saves at least
/// 1/16 of the size; `None` means store it as it is. A chunk whose first
/// 64 KiB do not shrink by that much is taken as incompressible without
/// compressing the rest: trying a whole random 1 MiB chunk cost 0.1–0.17 s
/// per GiB on `ds put`, the probe a sixteenth of that.
pub fn compress(plain: &[u8], out: &mut [u8]) -> Option<usize> {
    const PROBE: usize = 64 << 10;
    if plain.len() < 64 || out.len() < compress_bound(plain.len()) {
        return None;
    }
    let saves = |n: usize, of: usize| n < of - of / 16;
    if plain.len() >= 4 * PROBE {
        let n = lz4_flex::block::compress_into(&plain[..PROBE], out).ok()?;
        if !saves(n, PROBE) {
            return None;
        }
    }
    lz4_flex::block::compress_into(plain, out).ok().filter(|&n| saves(n, plain.len()))
}

fn header(magic: &[u8; 8], version: u8, codec: u8, nonce: &Nonce) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(magic);
    h[8] = version;
    h[9] = codec;
    h[12..].copy_from_slice(&nonce.0);
    h
}

fn check_header(bytes: &[u8], magic: &[u8; 8], what: &'static str) -> Result<Nonce, FormatError> {
    if bytes.len() < HEADER_LEN + TAG_LEN {
        return Err(FormatError::Short);
    }
    if &bytes[..8] != magic {
        return Err(FormatError::Magic(what));
    }
    Ok(Nonce(bytes[12..24].try_into().expect("12 bytes")))
}

fn check_reserved(bytes: &[u8]) -> Result<(), FormatError> {
    if bytes.iter().any(|&b| b != 0) {
        return Err(FormatError::Inconsistent("reserved header bytes are not zero"));
    }
    Ok(())
}

/// The codec a chunk header declares (version 1 chunks are all stored).
fn chunk_codec(h: &[u8]) -> Result<Codec, FormatError> {
    match h[8] {
        1 => check_reserved(&h[9..12]).map(|_| Codec::Stored),
        2 => {
            check_reserved(&h[10..12])?;
            match h[9] {
                0 => Ok(Codec::Stored),
                1 => Ok(Codec::Lz4),
                _ => Err(FormatError::Inconsistent("unknown chunk codec")),
            }
        }
        v => Err(FormatError::Version(v)),
    }
}

fn chunk_aad(header: &[u8], ds: &DatasetId, id: &ChunkId, index: u64) -> [u8; HEADER_LEN + 40] {
    let mut aad = [0u8; HEADER_LEN + 40];
    aad[..HEADER_LEN].copy_from_slice(header);
    aad[HEADER_LEN..HEADER_LEN + 16].copy_from_slice(&ds.0);
    aad[HEADER_LEN + 16..HEADER_LEN + 32].copy_from_slice(&id.0);
    aad[HEADER_LEN + 32..].copy_from_slice(&index.to_be_bytes());
    aad
}

/// Seal a chunk in place. `buf` must be `HEADER_LEN + body + TAG_LEN` long
/// with the body (the plaintext, encoded as `codec` says) already at
/// `buf[HEADER_LEN..len - TAG_LEN]`, so the caller reads data straight into
/// its final place and nothing is copied.
pub fn seal_chunk(
    key: &DataKey,
    ds: &DatasetId,
    id: &ChunkId,
    index: u64,
    codec: Codec,
    buf: &mut [u8],
) -> Result<(), FormatError> {
    if buf.len() < CHUNK_OVERHEAD {
        return Err(FormatError::Short);
    }
    let nonce = Nonce::random().map_err(FormatError::Crypto)?;
    let h = header(CHUNK_MAGIC, CHUNK_VERSION, codec.byte(), &nonce);
    buf[..HEADER_LEN].copy_from_slice(&h);
    let aad = chunk_aad(&h, ds, id, index);
    seal_in_place(key, nonce, &aad, &mut buf[HEADER_LEN..]).map_err(FormatError::Crypto)
}

/// An opened chunk: its codec and the length of its body, which sits at
/// `buf[HEADER_LEN..HEADER_LEN + body_len]` of the buffer it was opened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub codec: Codec,
    pub body_len: usize,
}

impl Opened {
    /// Where the plaintext is: in place for a stored chunk, in `spare`
    /// (the one given to [`open_chunk`]) for a compressed one.
    pub fn in_spare(&self) -> bool {
        self.codec != Codec::Stored
    }
}

/// Open a sealed chunk in place; its plaintext must be `expected_len` bytes.
/// A stored chunk's plaintext is left at `buf[HEADER_LEN..]`; a compressed
/// chunk's body stays there (still encoded) and its plaintext is written to
/// `spare[..expected_len]`.
pub fn open_chunk(
    key: &DataKey,
    ds: &DatasetId,
    id: &ChunkId,
    index: u64,
    expected_len: u32,
    buf: &mut [u8],
    spare: &mut [u8],
) -> Result<Opened, FormatError> {
    let opened = open_chunk_body(key, ds, id, index, expected_len, buf)?;
    if opened.codec == Codec::Lz4 {
        let want = expected_len as usize;
        let room = spare.len();
        let out = spare.get_mut(..want).ok_or(FormatError::Length { got: room, want: expected_len })?;
        let body = &buf[HEADER_LEN..HEADER_LEN + opened.body_len];
        match lz4_flex::block::decompress_into(body, out) {
            Ok(n) if n == want => {}
            _ => return Err(FormatError::Decompress { want: expected_len }),
        }
    }
    Ok(opened)
}

/// Authenticate and decrypt a sealed chunk in place, leaving its body as it
/// was encoded, for a copy that seals the body again as it is. A stored
/// body must be `expected_len` bytes; a compressed one is not decompressed
/// (only [`open_chunk`] checks its decompressed length).
pub fn open_chunk_body(
    key: &DataKey,
    ds: &DatasetId,
    id: &ChunkId,
    index: u64,
    expected_len: u32,
    buf: &mut [u8],
) -> Result<Opened, FormatError> {
    let nonce = check_header(buf, CHUNK_MAGIC, "chunk")?;
    let codec = chunk_codec(buf)?;
    let (h, body) = buf.split_at_mut(HEADER_LEN);
    let aad = chunk_aad(h, ds, id, index);
    let body = open_in_place(key, nonce, &aad, body).map_err(|_| FormatError::Authentication)?;
    match codec {
        Codec::Stored if body.len() != expected_len as usize => {
            Err(FormatError::Length { got: body.len(), want: expected_len })
        }
        Codec::Lz4 if body.len() >= expected_len as usize => {
            Err(FormatError::Inconsistent("a compressed chunk is not smaller than its plaintext"))
        }
        _ => Ok(Opened { codec, body_len: body.len() }),
    }
}

/// The body of a manifest: one generation of a dataset. Big-endian:
///
/// ```text
/// dataset id (16) ‖ generation u64 ‖ created_at i64 (µs since the epoch)
/// ‖ chunk_size u32 ‖ size u64 ‖ chunk_count u64
/// ‖ name_len u16 ‖ name ‖ key_label_len u16 ‖ key label ‖ key KCV (5)
/// ‖ chunk_count × (chunk id (16) ‖ plaintext length u32 ‖ fingerprint (32))
/// ```
///
/// Rules checked on decode: every chunk but the last is exactly
/// `chunk_size` bytes, the last is 1..=chunk_size, the lengths add up to
/// `size`, and nothing follows the last entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub dataset_id: DatasetId,
    pub generation: u64,
    pub created_at: Timestamp,
    pub chunk_size: u32,
    pub size: u64,
    pub name: String,
    pub key_label: String,
    pub key_kcv: Kcv,
    pub chunks: Vec<ChunkRef>,
}

const ENTRY_LEN: usize = 16 + 4 + 32;

impl Manifest {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(80 + self.name.len() + self.key_label.len() + self.chunks.len() * ENTRY_LEN);
        b.extend_from_slice(&self.dataset_id.0);
        b.extend_from_slice(&self.generation.to_be_bytes());
        b.extend_from_slice(&self.created_at.as_microsecond().to_be_bytes());
        b.extend_from_slice(&self.chunk_size.to_be_bytes());
        b.extend_from_slice(&self.size.to_be_bytes());
        b.extend_from_slice(&(self.chunks.len() as u64).to_be_bytes());
        for s in [&self.name, &self.key_label] {
            b.extend_from_slice(&(s.len() as u16).to_be_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        b.extend_from_slice(&self.key_kcv.0);
        for c in &self.chunks {
            b.extend_from_slice(&c.id.0);
            b.extend_from_slice(&c.len.to_be_bytes());
            b.extend_from_slice(&c.fingerprint);
        }
        b
    }

    fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let bad = FormatError::Inconsistent;
        let mut r = Reader(b);
        let dataset_id = DatasetId(r.take(16)?.try_into().expect("16"));
        let generation = r.u64()?;
        let created_at = Timestamp::from_microsecond(r.u64()? as i64).map_err(|_| bad("timestamp out of range"))?;
        let chunk_size = r.u32()?;
        let size = r.u64()?;
        let count = r.u64()?;
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(bad("chunk size out of range"));
        }
        let mut strs = [String::new(), String::new()];
        for s in &mut strs {
            let n = r.u16()? as usize;
            *s = String::from_utf8(r.take(n)?.to_vec()).map_err(|_| bad("a name is not UTF-8"))?;
        }
        let key_kcv = Kcv(r.take(5)?.try_into().expect("5"));
        if r.0.len() as u64 != count.saturating_mul(ENTRY_LEN as u64) {
            return Err(bad("the chunk list length disagrees with the chunk count"));
        }
        let mut chunks = Vec::with_capacity(count as usize);
        let mut total = 0u64;
        for i in 0..count {
            let id = ChunkId(r.take(16)?.try_into().expect("16"));
            let len = r.u32()?;
            let fingerprint = r.take(32)?.try_into().expect("32");
            let last = i + 1 == count;
            if len == 0 || len > chunk_size || (!last && len != chunk_size) {
                return Err(bad("a chunk length breaks the fixed-size rule"));
            }
            total += len as u64;
            chunks.push(ChunkRef { id, len, fingerprint });
        }
        if total != size {
            return Err(bad("chunk lengths do not add up to the dataset size"));
        }
        let [name, key_label] = strs;
        Ok(Self { dataset_id, generation, created_at, chunk_size, size, name, key_label, key_kcv, chunks })
    }

    /// Seal the manifest under the dataset key. Returns the object bytes.
    pub fn seal(&self, key: &DataKey) -> Result<Vec<u8>, FormatError> {
        let nonce = Nonce::random().map_err(FormatError::Crypto)?;
        let h = header(MANIFEST_MAGIC, VERSION, 0, &nonce);
        let mut out = Vec::new();
        out.extend_from_slice(&h);
        out.extend_from_slice(&self.encode());
        out.extend_from_slice(&[0u8; TAG_LEN]);
        let aad = manifest_aad(&h, &self.dataset_id, self.generation);
        seal_in_place(key, nonce, &aad, &mut out[HEADER_LEN..]).map_err(FormatError::Crypto)?;
        Ok(out)
    }

    /// Open a sealed manifest that must be generation `generation` of
    /// dataset `ds`: one taken from another generation or dataset fails.
    pub fn open(key: &DataKey, ds: &DatasetId, generation: u64, sealed: &[u8]) -> Result<Self, FormatError> {
        let nonce = check_header(sealed, MANIFEST_MAGIC, "manifest")?;
        if sealed[8] != VERSION {
            return Err(FormatError::Version(sealed[8]));
        }
        check_reserved(&sealed[9..12])?;
        let mut buf = sealed.to_vec();
        let (h, body) = buf.split_at_mut(HEADER_LEN);
        let aad = manifest_aad(h, ds, generation);
        let plain = open_in_place(key, nonce, &aad, body).map_err(|_| FormatError::Authentication)?;
        let m = Self::decode(plain)?;
        if m.dataset_id != *ds || m.generation != generation {
            return Err(FormatError::Inconsistent("it names another dataset or generation"));
        }
        Ok(m)
    }
}

/// The magic of a plaintext copy's manifest (see [`Manifest::plain`]).
pub const PLAIN_MANIFEST_MAGIC: &[u8; 8] = b"CUSTOSPM";
/// Its header: magic ‖ version ‖ 7 zero bytes.
const PLAIN_HEADER_LEN: usize = 16;

impl Manifest {
    /// The manifest of a plaintext copy, unsealed: a 16-byte header (magic
    /// `CUSTOSPM`, version, seven zero bytes) and the body as [`Manifest`]
    /// lays it out. Its chunks are the plaintext itself and each entry's
    /// fingerprint is the SHA-256 of its chunk ([`plain_fingerprint`]); the
    /// catalog records the SHA-256 of these bytes, so nothing in the copy
    /// needs a key and every byte of it is still checked.
    pub fn plain(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PLAIN_HEADER_LEN + 80 + self.chunks.len() * ENTRY_LEN);
        out.extend_from_slice(PLAIN_MANIFEST_MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&[0u8; PLAIN_HEADER_LEN - 9]);
        out.extend_from_slice(&self.encode());
        out
    }

    /// Read a plaintext copy's manifest, which must be generation
    /// `generation` of copy `ds`.
    pub fn open_plain(ds: &DatasetId, generation: u64, bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() < PLAIN_HEADER_LEN {
            return Err(FormatError::Short);
        }
        if &bytes[..8] != PLAIN_MANIFEST_MAGIC {
            return Err(FormatError::Magic("plaintext manifest"));
        }
        if bytes[8] != VERSION {
            return Err(FormatError::Version(bytes[8]));
        }
        check_reserved(&bytes[9..PLAIN_HEADER_LEN])?;
        let m = Self::decode(&bytes[PLAIN_HEADER_LEN..])?;
        if m.dataset_id != *ds || m.generation != generation {
            return Err(FormatError::Inconsistent("it names another dataset or generation"));
        }
        Ok(m)
    }
}

/// A plaintext chunk's fingerprint in a plaintext copy's manifest: its
/// SHA-256 (no key: the copy is readable without Custos).
pub fn plain_fingerprint(chunk: &[u8]) -> [u8; 32] {
    object_hash(chunk)
}

fn manifest_aad(header: &[u8], ds: &DatasetId, generation: u64) -> [u8; HEADER_LEN + 24] {
    let mut aad = [0u8; HEADER_LEN + 24];
    aad[..HEADER_LEN].copy_from_slice(header);
    aad[HEADER_LEN..HEADER_LEN + 16].copy_from_slice(&ds.0);
    aad[HEADER_LEN + 16..].copy_from_slice(&generation.to_be_bytes());
    aad
}

/// SHA-256 of a sealed object, as the catalog records manifests.
pub fn object_hash(bytes: &[u8]) -> [u8; 32] {
    digest::digest(&digest::SHA256, bytes).as_ref().try_into().expect("32 bytes")
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.0.len() < n {
            return Err(FormatError::Inconsistent("it ends early"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed_chunk(key: &DataKey, ds: &DatasetId, id: &ChunkId, index: u64, codec: Codec, body: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN];
        buf.extend_from_slice(body);
        buf.extend_from_slice(&[0; TAG_LEN]);
        seal_chunk(key, ds, id, index, codec, &mut buf).unwrap();
        buf
    }

    /// Open `s` and return its plaintext, wherever it was left.
    fn open(
        key: &DataKey,
        ds: &DatasetId,
        id: &ChunkId,
        index: u64,
        len: u32,
        s: &[u8],
    ) -> Result<Vec<u8>, FormatError> {
        let (mut buf, mut spare) = (s.to_vec(), vec![0u8; len as usize]);
        let o = open_chunk(key, ds, id, index, len, &mut buf, &mut spare)?;
        Ok(if o.in_spare() { spare } else { buf[HEADER_LEN..HEADER_LEN + o.body_len].to_vec() })
    }

    #[test]
    fn chunk_round_trip_and_binding() {
        let key = DataKey::generate().unwrap();
        let (ds, id) = (DatasetId([1; 16]), ChunkId([2; 16]));
        let s = sealed_chunk(&key, &ds, &id, 5, Codec::Stored, b"hello");
        assert_eq!(s.len(), 5 + CHUNK_OVERHEAD);
        assert_eq!(s[8..10], [CHUNK_VERSION, 0]);
        assert_eq!(open(&key, &ds, &id, 5, 5, &s).unwrap(), b"hello");
        let auth = Err(FormatError::Authentication);
        assert_eq!(open(&key, &ds, &id, 6, 5, &s), auth, "other position");
        assert_eq!(open(&key, &DatasetId([9; 16]), &id, 5, 5, &s), auth, "other dataset");
        assert_eq!(open(&key, &ds, &ChunkId([3; 16]), 5, 5, &s), auth, "other id");
        assert_eq!(open(&DataKey::generate().unwrap(), &ds, &id, 5, 5, &s), auth, "other key");
        assert_eq!(open(&key, &ds, &id, 5, 4, &s), Err(FormatError::Length { got: 5, want: 4 }));
        let mut v = s.clone();
        v[8] = 3;
        assert_eq!(open(&key, &ds, &id, 5, 5, &v), Err(FormatError::Version(3)));
        let mut c = s.clone();
        c[9] = 1;
        assert_eq!(open(&key, &ds, &id, 5, 5, &c), auth, "the codec byte is authenticated");
        c[9] = 7;
        assert!(matches!(open(&key, &ds, &id, 5, 5, &c), Err(FormatError::Inconsistent(_))), "unknown codec");
        let mut m = s.clone();
        m[0] = b'X';
        assert_eq!(open(&key, &ds, &id, 5, 5, &m), Err(FormatError::Magic("chunk")));
        assert_eq!(open(&key, &ds, &id, 5, 5, &s[..20]), Err(FormatError::Short));
    }

    #[test]
    fn compressed_chunk_round_trip() {
        let key = DataKey::generate().unwrap();
        let (ds, id) = (DatasetId([1; 16]), ChunkId([2; 16]));
        let plain: Vec<u8> = b"name,department,salary\n".iter().cycle().take(100_000).copied().collect();
        let mut out = vec![0u8; compress_bound(plain.len())];
        let n = compress(&plain, &mut out).expect("repetitive text compresses");
        assert!(n < plain.len() / 10, "{n}");
        let s = sealed_chunk(&key, &ds, &id, 0, Codec::Lz4, &out[..n]);
        assert_eq!(s[8..10], [CHUNK_VERSION, 1]);
        assert_eq!(s.len(), n + CHUNK_OVERHEAD);
        assert_eq!(open(&key, &ds, &id, 0, plain.len() as u32, &s).unwrap(), plain);
        // The body is left in place, still compressed, for a copy to re-seal.
        let (mut buf, mut spare) = (s.clone(), vec![0u8; plain.len()]);
        let o = open_chunk(&key, &ds, &id, 0, plain.len() as u32, &mut buf, &mut spare).unwrap();
        assert_eq!((o.codec, o.body_len), (Codec::Lz4, n));
        assert_eq!(&buf[HEADER_LEN..HEADER_LEN + n], &out[..n]);
        // A manifest length that disagrees with the decompressed size is refused.
        let want = plain.len() as u32 - 1;
        assert_eq!(open(&key, &ds, &id, 0, want, &s), Err(FormatError::Decompress { want }));
        assert_eq!(open(&key, &ds, &id, 0, want + 2, &s), Err(FormatError::Decompress { want: want + 2 }));
        // A body that is not LZ4 at all, sealed by a key holder, is refused, not trusted.
        let junk = sealed_chunk(&key, &ds, &id, 0, Codec::Lz4, &[0xff; 40]);
        assert_eq!(open(&key, &ds, &id, 0, 1000, &junk), Err(FormatError::Decompress { want: 1000 }));
        // Opening only the body (for a copy) still checks what it can without decompressing.
        let mut body = s.clone();
        assert_eq!(open_chunk_body(&key, &ds, &id, 0, plain.len() as u32, &mut body).unwrap().body_len, n);
        assert!(matches!(open_chunk_body(&key, &ds, &id, 0, 40, &mut junk.clone()), Err(FormatError::Inconsistent(_))));
        assert!(open_chunk_body(&key, &ds, &id, 0, 1, &mut junk.clone()).is_err());
    }

    #[test]
    fn plain_manifest_round_trip_and_refusals() {
        let (ds, a, b) = (DatasetId([3; 16]), b"first chunk".to_vec(), b"last".to_vec());
        let chunk = |id: u8, data: &[u8]| ChunkRef {
            id: ChunkId([id; 16]),
            len: data.len() as u32,
            fingerprint: plain_fingerprint(data),
        };
        let m = Manifest {
            dataset_id: ds,
            generation: 2,
            created_at: Timestamp::from_second(1_700_000_000).unwrap(),
            chunk_size: a.len() as u32,
            size: (a.len() + b.len()) as u64,
            name: "PAY.DATA".into(),
            key_label: String::new(),
            key_kcv: Kcv([0; 5]),
            chunks: vec![chunk(1, &a), chunk(2, &b)],
        };
        let bytes = m.plain();
        assert_eq!(&bytes[..8], PLAIN_MANIFEST_MAGIC);
        assert_eq!(Manifest::open_plain(&ds, 2, &bytes).unwrap(), m);
        // The wrong copy or generation, another magic, a sealed manifest's
        // magic, a set reserved byte, a short or a longer object: refused.
        assert!(Manifest::open_plain(&DatasetId([4; 16]), 2, &bytes).is_err());
        assert!(Manifest::open_plain(&ds, 3, &bytes).is_err());
        let mut x = bytes.clone();
        x[..8].copy_from_slice(MANIFEST_MAGIC);
        assert_eq!(Manifest::open_plain(&ds, 2, &x), Err(FormatError::Magic("plaintext manifest")));
        let mut x = bytes.clone();
        x[12] = 1;
        assert!(matches!(Manifest::open_plain(&ds, 2, &x), Err(FormatError::Inconsistent(_))));
        assert_eq!(Manifest::open_plain(&ds, 2, &bytes[..10]), Err(FormatError::Short));
        let mut x = bytes.clone();
        x.push(0);
        assert!(Manifest::open_plain(&ds, 2, &x).is_err(), "trailing bytes");
        assert!(Manifest::open_plain(&ds, 2, &bytes[..bytes.len() - 1]).is_err(), "cut short");
    }

    #[test]
    fn compress_gives_up_on_random_and_tiny_data() {
        let mut random = vec![0u8; 1 << 16];
        aws_lc_rs::rand::fill(&mut random).unwrap();
        assert_eq!(compress(&random, &mut vec![0u8; compress_bound(random.len())]), None);
        assert_eq!(compress(&[0u8; 63], &mut [0u8; 200]), None);
        assert_eq!(compress(&[0u8; 4096], &mut [0u8; 4096]), None, "output shorter than the bound");
        assert!(compress(&[0u8; 4096], &mut [0u8; 5000]).is_some());
        // A chunk that starts random is taken as incompressible whatever follows;
        // one that starts compressible is compressed whole.
        let mut mixed = random[..1 << 16].to_vec();
        mixed.extend_from_slice(&[0u8; 3 << 16]);
        let mut out = vec![0u8; compress_bound(mixed.len())];
        assert_eq!(compress(&mixed, &mut out), None);
        mixed.reverse();
        assert!(compress(&mixed, &mut out).is_some());
    }

    #[test]
    fn version_1_chunks_still_open() {
        let key = DataKey::generate().unwrap();
        let (ds, id) = (DatasetId([1; 16]), ChunkId([2; 16]));
        let nonce = Nonce::random().unwrap();
        let h = header(CHUNK_MAGIC, 1, 0, &nonce);
        let mut buf = h.to_vec();
        buf.extend_from_slice(b"old chunk");
        buf.extend_from_slice(&[0; TAG_LEN]);
        seal_in_place(&key, nonce, &chunk_aad(&h, &ds, &id, 0), &mut buf[HEADER_LEN..]).unwrap();
        assert_eq!(open(&key, &ds, &id, 0, 9, &buf).unwrap(), b"old chunk");
    }

    fn manifest(n: usize, chunk: u32, last: u32) -> Manifest {
        let chunks: Vec<ChunkRef> = (0..n)
            .map(|i| ChunkRef {
                id: ChunkId([i as u8; 16]),
                len: if i + 1 == n { last } else { chunk },
                fingerprint: [i as u8; 32],
            })
            .collect();
        Manifest {
            dataset_id: DatasetId([7; 16]),
            generation: 3,
            created_at: Timestamp::from_microsecond(1_700_000_000_000_001).unwrap(),
            chunk_size: chunk,
            size: chunks.iter().map(|c| c.len as u64).sum(),
            name: "PAYROLL.MASTER".into(),
            key_label: "DSET.PRIM.PAYROLL.key001".into(),
            key_kcv: Kcv([1, 2, 3, 4, 5]),
            chunks,
        }
    }

    #[test]
    fn manifest_round_trip_and_binding() {
        let key = DataKey::generate().unwrap();
        for m in [manifest(0, 1024, 0), manifest(1, 1024, 1), manifest(5, 1024, 1024), manifest(3, 1024, 7)] {
            let s = m.seal(&key).unwrap();
            assert_eq!(Manifest::open(&key, &m.dataset_id, 3, &s).unwrap(), m);
            assert_eq!(
                Manifest::open(&key, &m.dataset_id, 2, &s),
                Err(FormatError::Authentication),
                "replayed as another generation"
            );
            assert_eq!(Manifest::open(&key, &DatasetId([8; 16]), 3, &s), Err(FormatError::Authentication));
            for i in [0, 12, 30, s.len() - 1] {
                let mut t = s.clone();
                t[i] ^= 1;
                assert!(Manifest::open(&key, &m.dataset_id, 3, &t).is_err(), "byte {i}");
            }
            assert!(Manifest::open(&key, &m.dataset_id, 3, &s[..s.len() - 1]).is_err());
        }
    }

    #[test]
    fn fail_manifest_breaking_fixed_size_rules() {
        let key = DataKey::generate().unwrap();
        let mut m = manifest(3, 1024, 10);
        m.chunks[1].len = 1000; // a short chunk in the middle
        m.size = m.chunks.iter().map(|c| c.len as u64).sum();
        let s = m.seal(&key).unwrap();
        assert!(matches!(Manifest::open(&key, &m.dataset_id, 3, &s), Err(FormatError::Inconsistent(_))));
        let mut m = manifest(3, 1024, 10);
        m.size += 1; // sizes do not add up
        let s = m.seal(&key).unwrap();
        assert!(matches!(Manifest::open(&key, &m.dataset_id, 3, &s), Err(FormatError::Inconsistent(_))));
    }

    proptest::proptest! {
        #[test]
        fn open_chunk_never_panics(mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200), index in 0u64..4) {
            let key = DataKey::from_bytes([3; 32]);
            let r = open_chunk(&key, &DatasetId([1; 16]), &ChunkId([2; 16]), index, 10, &mut bytes, &mut [0u8; 10]);
            proptest::prop_assert!(r.is_err());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = Manifest::decode(&bytes);
        }
    }
}

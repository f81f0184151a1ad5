//! On-volume byte layouts, version 1 (docs/format.md is the reference).
//!
//! Chunk object:
//!
//! ```text
//! 0..8    magic "CUSTOSCK"
//! 8       format version (1)
//! 9..12   reserved, zero
//! 12..24  AES-GCM nonce (random)
//! 24..    ciphertext of the chunk plaintext, then the 16-byte GCM tag
//! AAD   = bytes 0..24 ‖ dataset id (16) ‖ chunk id (16) ‖ chunk index (u64 BE)
//! ```
//!
//! Manifest object: the same 24-byte header with magic "CUSTOSMF", then the
//! sealed manifest body; AAD = header ‖ dataset id ‖ generation (u64 BE).
//! The body is described at [`Manifest`].

use aws_lc_rs::digest;
use custos_crypto::{open_in_place, seal_in_place, CryptoError, DataKey, Kcv, Nonce, TAG_LEN};
use custos_model::{ChunkId, ChunkRef, DatasetId};
use jiff::Timestamp;
use thiserror::Error;

pub const CHUNK_MAGIC: &[u8; 8] = b"CUSTOSCK";
pub const MANIFEST_MAGIC: &[u8; 8] = b"CUSTOSMF";
pub const VERSION: u8 = 1;
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
    #[error("its contents are inconsistent: {0}")]
    Inconsistent(&'static str),
    #[error("sealing failed: {0}")]
    Crypto(CryptoError),
}

fn header(magic: &[u8; 8], nonce: &Nonce) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(magic);
    h[8] = VERSION;
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
    if bytes[8] != VERSION {
        return Err(FormatError::Version(bytes[8]));
    }
    if bytes[9..12] != [0, 0, 0] {
        return Err(FormatError::Inconsistent("reserved header bytes are not zero"));
    }
    Ok(Nonce(bytes[12..24].try_into().expect("12 bytes")))
}

fn chunk_aad(header: &[u8], ds: &DatasetId, id: &ChunkId, index: u64) -> [u8; HEADER_LEN + 40] {
    let mut aad = [0u8; HEADER_LEN + 40];
    aad[..HEADER_LEN].copy_from_slice(header);
    aad[HEADER_LEN..HEADER_LEN + 16].copy_from_slice(&ds.0);
    aad[HEADER_LEN + 16..HEADER_LEN + 32].copy_from_slice(&id.0);
    aad[HEADER_LEN + 32..].copy_from_slice(&index.to_be_bytes());
    aad
}

/// Seal a chunk in place. `buf` must be `HEADER_LEN + plaintext + TAG_LEN`
/// long with the plaintext already at `buf[HEADER_LEN..len - TAG_LEN]`, so
/// the caller reads data straight into its final place and nothing is copied.
pub fn seal_chunk(key: &DataKey, ds: &DatasetId, id: &ChunkId, index: u64, buf: &mut [u8]) -> Result<(), FormatError> {
    if buf.len() < CHUNK_OVERHEAD {
        return Err(FormatError::Short);
    }
    let nonce = Nonce::random().map_err(FormatError::Crypto)?;
    let h = header(CHUNK_MAGIC, &nonce);
    buf[..HEADER_LEN].copy_from_slice(&h);
    let aad = chunk_aad(&h, ds, id, index);
    seal_in_place(key, nonce, &aad, &mut buf[HEADER_LEN..]).map_err(FormatError::Crypto)
}

/// Open a sealed chunk in place and return its plaintext, which must be
/// `expected_len` bytes long.
pub fn open_chunk<'a>(
    key: &DataKey,
    ds: &DatasetId,
    id: &ChunkId,
    index: u64,
    expected_len: u32,
    buf: &'a mut [u8],
) -> Result<&'a mut [u8], FormatError> {
    let nonce = check_header(buf, CHUNK_MAGIC, "chunk")?;
    let (h, body) = buf.split_at_mut(HEADER_LEN);
    let aad = chunk_aad(h, ds, id, index);
    let plain = open_in_place(key, nonce, &aad, body).map_err(|_| FormatError::Authentication)?;
    if plain.len() != expected_len as usize {
        return Err(FormatError::Length { got: plain.len(), want: expected_len });
    }
    Ok(plain)
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
        let h = header(MANIFEST_MAGIC, &nonce);
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

    fn sealed_chunk(key: &DataKey, ds: &DatasetId, id: &ChunkId, index: u64, data: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN];
        buf.extend_from_slice(data);
        buf.extend_from_slice(&[0; TAG_LEN]);
        seal_chunk(key, ds, id, index, &mut buf).unwrap();
        buf
    }

    #[test]
    fn chunk_round_trip_and_binding() {
        let key = DataKey::generate().unwrap();
        let (ds, id) = (DatasetId([1; 16]), ChunkId([2; 16]));
        let s = sealed_chunk(&key, &ds, &id, 5, b"hello");
        assert_eq!(s.len(), 5 + CHUNK_OVERHEAD);
        assert_eq!(open_chunk(&key, &ds, &id, 5, 5, &mut s.clone()).unwrap(), b"hello");
        let auth = Err(FormatError::Authentication);
        assert_eq!(open_chunk(&key, &ds, &id, 6, 5, &mut s.clone()).map(|p| p.to_vec()), auth, "other position");
        assert_eq!(
            open_chunk(&key, &DatasetId([9; 16]), &id, 5, 5, &mut s.clone()).map(|p| p.to_vec()),
            auth,
            "other dataset"
        );
        assert_eq!(
            open_chunk(&key, &ds, &ChunkId([3; 16]), 5, 5, &mut s.clone()).map(|p| p.to_vec()),
            auth,
            "other id"
        );
        assert_eq!(
            open_chunk(&DataKey::generate().unwrap(), &ds, &id, 5, 5, &mut s.clone()).map(|p| p.to_vec()),
            auth,
            "other key"
        );
        assert_eq!(
            open_chunk(&key, &ds, &id, 5, 4, &mut s.clone()).map(|p| p.to_vec()),
            Err(FormatError::Length { got: 5, want: 4 })
        );
        let mut v = s.clone();
        v[8] = 2;
        assert_eq!(open_chunk(&key, &ds, &id, 5, 5, &mut v).map(|p| p.to_vec()), Err(FormatError::Version(2)));
        let mut m = s.clone();
        m[0] = b'X';
        assert_eq!(open_chunk(&key, &ds, &id, 5, 5, &mut m).map(|p| p.to_vec()), Err(FormatError::Magic("chunk")));
        assert_eq!(
            open_chunk(&key, &ds, &id, 5, 5, &mut s[..20].to_vec()).map(|p| p.to_vec()),
            Err(FormatError::Short)
        );
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
            let r = open_chunk(&key, &DatasetId([1; 16]), &ChunkId([2; 16]), index, 10, &mut bytes);
            proptest::prop_assert!(r.is_err());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = Manifest::decode(&bytes);
        }
    }
}

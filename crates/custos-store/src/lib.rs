//! Volumes and what is written on them.
//!
//! * [`Volume`]: the storage seam — immutable chunk objects and manifests,
//!   named by ID. It moves sealed bytes and knows nothing of keys, so a raw
//!   copy can run through it with no key access at all.
//! * [`LocalVolume`]: a directory.
//! * [`format`]: the byte layouts of chunk and manifest objects (versioned;
//!   see docs/format.md).
#![forbid(unsafe_code)]

pub mod audit_segment;
mod buf;
mod direct;
pub mod durable;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod keystore_backup;
mod local;
mod mirror;
pub mod pack;
mod packing;
pub mod vault_backup;

use std::path::PathBuf;

use custos_model::{ChunkId, DatasetId};
use thiserror::Error;

pub use buf::{ChunkBuf, PooledBuf, ALIGN};
pub use direct::DirectWriter;
pub use local::LocalVolume;
pub use mirror::MirroredVolume;
pub use packing::{PackWriter, Packing};

pub type Result<T> = std::result::Result<T, StoreError>;

/// What an object on a volume is, by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectName {
    Chunk(ChunkId),
    Manifest(DatasetId, u64),
    /// A temp file of a write that never finished (its path on the volume).
    Temp(String),
}

/// An object found by [`Volume::list`].
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: ObjectName,
    pub len: u64,
    pub modified: std::time::SystemTime,
}

/// Why a volume operation failed; each message names the volume and path.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{what} is missing from {volume} ({path})")]
    Missing { volume: String, what: String, path: PathBuf },
    #[error("{volume} is not reachable at {path}: {source}; {}", unreachable_hint(path))]
    Unreachable { volume: String, path: PathBuf, source: std::io::Error },
    #[error("{path} is not a Custos volume (no CUSTOS-VOLUME label): check the path, or create the volume with `custos volume add`")]
    NotAVolume { path: PathBuf },
    /// The directory is labelled as a volume of another vault.
    #[error(
        "{path} is volume {name} of another vault ({vault}): a volume belongs to one vault; choose an empty directory"
    )]
    OtherVault { path: PathBuf, vault: String, name: String },
    #[error("{volume} is full while writing {path}: free space on it or direct the data to another volume; nothing was committed")]
    Full { volume: String, path: PathBuf },
    #[error("{what} on {volume} ({path}) is {size} bytes, larger than any chunk ({max} at most)")]
    TooLarge { volume: String, what: String, path: PathBuf, size: u64, max: usize },
    #[error("I/O error on {volume} at {path}: {source}; check the volume's disk and permissions, then run the command again")]
    Io { volume: String, path: PathBuf, source: std::io::Error },
    /// An object that is created once already exists; nothing was overwritten.
    #[error("{what} already exists on {volume} ({path}); it was not overwritten")]
    Exists { volume: String, what: String, path: PathBuf },
    /// An object store that overwrites an object a conditional write should
    /// have refused: a tape volume there would not be written once.
    #[error(
        "{volume}: the object store at {location} overwrote an object it was asked to create only if absent (If-None-Match: *), so a tape volume there would not be write-once; use a store that honours conditional writes (AWS S3, MinIO, Ceph RGW) or a disk volume"
    )]
    NotWriteOnce { volume: String, location: String },
}

/// The storage seam. Writes of chunks are made durable by [`Volume::sync`];
/// manifests are durable and atomic when [`Volume::put_manifest`] returns.
pub trait Volume: Send + Sync {
    /// "volume NAME" plus where it is, for messages.
    fn describe(&self) -> String;
    /// Store a new sealed chunk. IDs are never reused: storing an existing ID
    /// fails with [`StoreError::Exists`] and leaves the existing object as it
    /// was. The object appears whole or not at all, whatever happens to the
    /// writing process (a kill never leaves a short object under the name).
    /// A page-aligned `sealed` (from a [`ChunkBuf`]) may be written with
    /// direct I/O.
    fn put_chunk(&self, id: &ChunkId, sealed: &[u8]) -> Result<()>;
    /// Read a sealed chunk into the start of `buf`, growing it as needed up
    /// to `max_len` bytes; returns its length. A chunk object longer than
    /// `max_len` is refused with [`StoreError::TooLarge`] before it is read.
    fn read_chunk(&self, id: &ChunkId, buf: &mut ChunkBuf, max_len: usize) -> Result<usize>;
    fn has_chunk(&self, id: &ChunkId) -> Result<bool>;
    /// The size of a stored chunk object, or `None` when there is none.
    fn chunk_len(&self, id: &ChunkId) -> Result<Option<u64>>;
    /// Delete a chunk; deleting a missing chunk is not an error.
    fn delete_chunk(&self, id: &ChunkId) -> Result<()>;
    /// Make every chunk, pack and deferred manifest this process stored so
    /// far on the volume durable. A local volume syncs its own files when
    /// they are few (what other processes wrote is not waited for) and the
    /// filesystem when they are many (ADR 0034).
    fn sync(&self) -> Result<()>;
    /// Store a manifest durably and atomically. An existing manifest of the
    /// same dataset and generation is never replaced: that fails with
    /// [`StoreError::Exists`], so two writers can never overwrite (or, on
    /// failure, delete) each other's manifest.
    fn put_manifest(&self, dataset: &DatasetId, generation: u64, sealed: &[u8]) -> Result<()>;
    /// [`Volume::put_manifest`] for a write that stores many: as atomic
    /// and as exclusive, but durable only once [`Volume::sync`] returns, so
    /// a batch of manifests costs one flush. Returns where it went
    /// ([`Placed::Own`] here), which is what
    /// [`Volume::delete_placed_manifest`] takes. A volume whose objects are
    /// durable when stored keeps the default.
    fn put_manifest_deferred(&self, dataset: &DatasetId, generation: u64, sealed: &[u8]) -> Result<Placed> {
        self.put_manifest(dataset, generation, sealed).map(|()| Placed::Own)
    }
    /// [`Volume::put_manifest_deferred`] for a generation that has the
    /// chunk `anchor` among those this write stored. Through [`Packing`]
    /// on a layout 4 volume, when `anchor` is in the batch's pack, the
    /// manifest goes into that pack (ADR 0035): it takes no name another
    /// writer could see (the catalog's commit decides whose generation
    /// counts), and it lives as long as the pack, which lives as long as
    /// any of its chunks, `anchor` among them. Elsewhere, as
    /// [`Volume::put_manifest_deferred`].
    fn put_manifest_beside(
        &self,
        dataset: &DatasetId,
        generation: u64,
        sealed: &[u8],
        anchor: &ChunkId,
    ) -> Result<Placed> {
        let _ = anchor;
        self.put_manifest_deferred(dataset, generation, sealed)
    }
    /// The manifest of `generation` of `dataset`: its own object, or one in
    /// a pack (ADR 0035).
    fn read_manifest(&self, dataset: &DatasetId, generation: u64) -> Result<Vec<u8>>;
    /// [`Volume::read_manifest`], preferring what `accept` takes (the
    /// object the catalog committed, by its hash) where a killed or beaten
    /// writer left another manifest of the same generation in a pack. When
    /// none is accepted, the first found is returned for the caller to
    /// refuse.
    fn read_manifest_where(
        &self,
        dataset: &DatasetId,
        generation: u64,
        accept: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Vec<u8>> {
        let _ = accept;
        self.read_manifest(dataset, generation)
    }
    /// Delete a manifest, wherever it is (its own object and any pack
    /// holding one of that generation); deleting a missing one is not an
    /// error. For a manifest no longer referenced (`gc`, pruning).
    fn delete_manifest(&self, dataset: &DatasetId, generation: u64) -> Result<()>;
    /// Delete the manifest this writer stored where
    /// [`Volume::put_manifest_deferred`] said it went, and nothing another
    /// writer stored: for a write that will not be committed.
    fn delete_placed_manifest(&self, dataset: &DatasetId, generation: u64, placed: Placed) -> Result<()> {
        match placed {
            Placed::Own => self.delete_manifest(dataset, generation),
            Placed::Pack(_) => Ok(()),
        }
    }
    /// Every chunk, manifest and leftover temp file on the volume (keystore
    /// backups and the label are not listed). Names that are none of these
    /// are passed over.
    fn list(&self) -> Result<Vec<Listed>>;
    /// Delete a leftover temp file named by [`Volume::list`].
    fn delete_temp(&self, name: &str) -> Result<()>;
    /// Store a keystore backup durably and atomically under its id.
    fn put_keystore_backup(&self, id: &str, bytes: &[u8]) -> Result<()>;
    fn read_keystore_backup(&self, id: &str) -> Result<Vec<u8>>;
    /// Store a kept object (a vault backup, an audit segment) durably and
    /// atomically under its id, once: an existing one is never replaced
    /// ([`StoreError::Exists`]; on a tape volume, a conditional write).
    fn put_kept(&self, kind: Kept, id: &str, bytes: &[u8]) -> Result<()>;
    fn read_kept(&self, kind: Kept, id: &str) -> Result<Vec<u8>>;
    /// The ids of the objects of `kind` stored here, in any order: a reader
    /// without a catalog (a recovery on a fresh machine, an audit) has no
    /// other way to name them.
    fn list_kept(&self, kind: Kept) -> Result<Vec<String>>;
    /// Delete a kept object (retention); deleting a missing one is not an
    /// error.
    fn delete_kept(&self, kind: Kept, id: &str) -> Result<()>;
    /// The id for a new chunk object this volume is about to store: a
    /// random one, or (through [`Packing`]) one that names its pack.
    fn new_chunk_id(&self) -> ChunkId {
        ChunkId::random()
    }
    /// Start a pack (ADR 0030): chunk objects put through it share one
    /// object on the volume, made durable by the volume's next
    /// [`Volume::sync`] after [`PackWriter::finish`]. `None` where the
    /// volume keeps every chunk as an object of its own; callers then write
    /// chunks one by one.
    fn start_pack(&self) -> Result<Option<Box<dyn PackWriter + '_>>> {
        Ok(None)
    }
}

/// Where a manifest of a batch went (ADR 0035).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// An object of its own, under its name.
    Own,
    /// Inside this pack, beside the batch's chunks.
    Pack(pack::PackId),
}

/// Objects a volume keeps once under an id, to be found without a catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// `vault/<id>.cvb`: a sealed copy of the catalog and the HSM's state.
    VaultBackup,
    /// `audit/<id>.jsonl`: audit entries exported from the catalog.
    AuditSegment,
}

impl Kept {
    /// The directory (or key prefix) they live under, and their extension.
    pub fn place(self) -> (&'static str, &'static str) {
        match self {
            Kept::VaultBackup => ("vault", "cvb"),
            Kept::AuditSegment => ("audit", "jsonl"),
        }
    }

    /// What one is called in messages.
    pub fn what(self) -> &'static str {
        match self {
            Kept::VaultBackup => "vault backup",
            Kept::AuditSegment => "audit segment",
        }
    }
}

/// Conformance checks every [`Volume`] implementation must pass.
pub mod conformance {
    use super::*;

    pub fn run(v: &dyn Volume) {
        let id = ChunkId([0xAA; 16]);
        assert!(!v.has_chunk(&id).unwrap());
        v.put_chunk(&id, b"sealed bytes").unwrap();
        assert!(v.has_chunk(&id).unwrap());
        assert!(matches!(v.put_chunk(&id, b"other"), Err(StoreError::Exists { .. })), "chunk IDs are write-once");
        assert_eq!(v.chunk_len(&id).unwrap(), Some(12), "the first object stays");
        assert_eq!(v.chunk_len(&ChunkId([0xAB; 16])).unwrap(), None);
        v.sync().unwrap();
        let mut buf = ChunkBuf::new(4);
        let n = v.read_chunk(&id, &mut buf, 1 << 20).unwrap();
        assert_eq!(buf.slice(n), b"sealed bytes");
        // Aligned buffers of every awkward length, as the pipeline hands them over.
        for (i, len) in [1usize, 4095, 4096, 4097, 3 * 4096, 100_000, (1 << 20) + 40].into_iter().enumerate() {
            let mut src = ChunkBuf::new(len);
            for (j, b) in src.slice_mut(len).iter_mut().enumerate() {
                *b = (j * 31 + i) as u8;
            }
            let cid = ChunkId([i as u8; 16]);
            v.put_chunk(&cid, src.slice(len)).unwrap();
            v.sync().unwrap();
            let mut dst = ChunkBuf::new(16);
            let n = v.read_chunk(&cid, &mut dst, (1 << 20) + 40).unwrap();
            assert_eq!(n, len);
            assert_eq!(dst.slice(n), src.slice(len), "length {len}");
            v.delete_chunk(&cid).unwrap();
        }
        // Objects larger than the caller allows are refused, not read.
        v.put_chunk(&ChunkId([0xCC; 16]), &[0u8; 10_000]).unwrap();
        assert!(matches!(v.read_chunk(&ChunkId([0xCC; 16]), &mut buf, 9_999), Err(StoreError::TooLarge { .. })));
        v.delete_chunk(&ChunkId([0xCC; 16])).unwrap();
        v.delete_chunk(&id).unwrap();
        v.delete_chunk(&id).unwrap();
        match v.read_chunk(&id, &mut buf, 1 << 20) {
            Err(StoreError::Missing { what, .. }) => assert!(what.contains(&id.to_hex())),
            other => panic!("a missing chunk must be reported by name, got {other:?}"),
        }
        let ds = DatasetId([0xBB; 16]);
        v.put_manifest(&ds, 1, b"m1").unwrap();
        v.put_manifest(&ds, 2, b"m2").unwrap();
        // Deferred: the same rules, readable at once, durable after sync.
        let other = DatasetId::random();
        v.put_manifest_deferred(&other, 1, b"d1").unwrap();
        assert!(matches!(v.put_manifest_deferred(&other, 1, b"x"), Err(StoreError::Exists { .. })));
        assert!(matches!(v.put_manifest(&other, 1, b"x"), Err(StoreError::Exists { .. })));
        assert!(matches!(v.put_manifest_deferred(&ds, 2, b"x"), Err(StoreError::Exists { .. })));
        v.sync().unwrap();
        assert_eq!(v.read_manifest(&other, 1).unwrap(), b"d1");
        v.delete_manifest(&other, 1).unwrap();
        assert!(
            matches!(v.put_manifest(&ds, 2, b"other"), Err(StoreError::Exists { .. })),
            "manifests are created once"
        );
        assert_eq!(v.read_manifest(&ds, 1).unwrap(), b"m1");
        assert_eq!(v.read_manifest(&ds, 2).unwrap(), b"m2");
        v.delete_manifest(&ds, 1).unwrap();
        assert!(matches!(v.read_manifest(&ds, 1), Err(StoreError::Missing { .. })));
        v.delete_manifest(&ds, 1).unwrap();
        v.put_keystore_backup("20261124T120000Z-ab12", b"backup").unwrap();
        assert_eq!(v.read_keystore_backup("20261124T120000Z-ab12").unwrap(), b"backup");
        assert!(matches!(v.read_keystore_backup("nope"), Err(StoreError::Missing { .. })));
        assert!(v.describe().contains("volume"));
        // A listing names what is there (and nothing deleted).
        v.put_chunk(&id, b"listed").unwrap();
        let listed = v.list().unwrap();
        let names: Vec<&ObjectName> = listed.iter().map(|l| &l.name).collect();
        assert!(names.contains(&&ObjectName::Chunk(id)), "{names:?}");
        assert!(names.contains(&&ObjectName::Manifest(ds, 2)), "{names:?}");
        assert!(!names.contains(&&ObjectName::Manifest(ds, 1)), "{names:?}");
        assert_eq!(listed.iter().find(|l| l.name == ObjectName::Chunk(id)).unwrap().len, 6);
        v.delete_chunk(&id).unwrap();
        v.delete_manifest(&ds, 2).unwrap();
        assert!(v.list().unwrap().iter().all(|l| !matches!(l.name, ObjectName::Chunk(_) | ObjectName::Manifest(..))));
        // Kept objects: written once, read back, listed by kind.
        let vb = Kept::VaultBackup;
        assert!(v.list_kept(vb).unwrap().is_empty());
        v.put_kept(vb, "20261202T000000Z-aa", b"sealed vault").unwrap();
        assert!(matches!(v.put_kept(vb, "20261202T000000Z-aa", b"other"), Err(StoreError::Exists { .. })));
        v.put_kept(vb, "20261202T000001Z-bb", b"second").unwrap();
        assert_eq!(v.read_kept(vb, "20261202T000000Z-aa").unwrap(), b"sealed vault");
        let mut ids = v.list_kept(vb).unwrap();
        ids.sort();
        assert_eq!(ids, ["20261202T000000Z-aa", "20261202T000001Z-bb"]);
        assert!(v.read_kept(vb, "nope").is_err());
        v.put_kept(Kept::AuditSegment, "1-9", b"{}").unwrap();
        assert_eq!(v.list_kept(Kept::AuditSegment).unwrap(), ["1-9"], "each kind apart");
        assert_eq!(v.list_kept(vb).unwrap().len(), 2);
        v.delete_kept(vb, "20261202T000000Z-aa").unwrap();
        v.delete_kept(vb, "20261202T000000Z-aa").expect("deleting a missing one is not an error");
        assert_eq!(v.list_kept(vb).unwrap(), ["20261202T000001Z-bb"]);
        assert!(v.read_kept(vb, "20261202T000000Z-aa").is_err());
        assert_eq!(v.list_kept(Kept::AuditSegment).unwrap(), ["1-9"], "the other kind is untouched");
        packs(v);
    }

    /// Packs, on a volume that makes them (ADR 0030): what goes in through
    /// [`Packing`] reads back by id like any chunk, a forgotten or deleted
    /// entry is gone, and an unfinished pack leaves nothing.
    pub fn packs(v: &dyn Volume) {
        let listed_chunks = || -> Vec<ChunkId> {
            let mut ids: Vec<ChunkId> = v
                .list()
                .unwrap()
                .into_iter()
                .filter_map(|l| match l.name {
                    ObjectName::Chunk(id) => Some(id),
                    _ => None,
                })
                .collect();
            ids.sort_by_key(|i| i.0);
            ids
        };
        let before = listed_chunks();
        let Some(pack) = v.start_pack().unwrap() else { return };
        let ids: Vec<ChunkId> = (0..4).map(|_| pack.new_id()).collect();
        assert!(ids.iter().all(|i| pack.owns(i)) && !pack.owns(&ChunkId::random()));
        assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), 4, "ids are distinct");
        for (i, id) in ids.iter().enumerate() {
            pack.put(id, &vec![i as u8 + 1; 100 * (i + 1)]).unwrap();
        }
        assert!(matches!(pack.put(&ids[0], b"again"), Err(StoreError::Exists { .. })), "write-once inside a pack too");
        pack.forget(&ids[3]);
        assert!(!v.has_chunk(&ids[0]).unwrap(), "nothing is there before the pack is finished");
        pack.finish().unwrap();
        v.sync().unwrap();
        assert!(matches!(v.put_chunk(&ids[0], b"loose"), Err(StoreError::Exists { .. })), "a packed id is taken");
        let mut buf = ChunkBuf::new(8);
        for (i, id) in ids[..3].iter().enumerate() {
            let n = v.read_chunk(id, &mut buf, 1 << 20).unwrap();
            assert_eq!(buf.slice(n), &vec![i as u8 + 1; 100 * (i + 1)][..]);
            assert_eq!(v.chunk_len(id).unwrap(), Some(100 * (i as u64 + 1)));
        }
        assert!(matches!(v.read_chunk(&ids[2], &mut buf, 299), Err(StoreError::TooLarge { .. })));
        assert!(matches!(v.read_chunk(&ids[3], &mut buf, 1 << 20), Err(StoreError::Missing { .. })), "forgotten");
        let mut with: Vec<ChunkId> = before.iter().chain(&ids[..3]).copied().collect();
        with.sort_by_key(|i| i.0);
        assert_eq!(listed_chunks(), with);
        assert_eq!(v.list().unwrap().iter().find(|l| l.name == ObjectName::Chunk(ids[1])).unwrap().len, 200);
        v.delete_chunk(&ids[1]).unwrap();
        v.delete_chunk(&ids[1]).unwrap();
        assert!(!v.has_chunk(&ids[1]).unwrap());
        assert!(matches!(v.read_chunk(&ids[1], &mut buf, 1 << 20), Err(StoreError::Missing { .. })));
        assert_eq!(v.read_chunk(&ids[0], &mut buf, 1 << 20).unwrap(), 100, "the rest of the pack stays");
        v.delete_chunk(&ids[0]).unwrap();
        v.delete_chunk(&ids[2]).unwrap();
        assert_eq!(listed_chunks(), before);

        // Through `Packing`: new ids come from the pack, a chunk deleted
        // before the finish is left out of it, and one never finished
        // leaves no object and no temp file.
        let p = Packing::start(v).unwrap();
        let (a, b) = (p.new_chunk_id(), p.new_chunk_id());
        p.put_chunk(&a, b"packed a").unwrap();
        p.put_chunk(&b, b"packed b").unwrap();
        p.delete_chunk(&b).unwrap();
        let loose = ChunkId::random();
        p.put_chunk(&loose, b"loose").unwrap();
        p.finish().unwrap();
        v.sync().unwrap();
        let n = v.read_chunk(&a, &mut buf, 1 << 20).unwrap();
        assert_eq!(buf.slice(n), b"packed a");
        assert!(!v.has_chunk(&b).unwrap());
        assert_eq!(v.chunk_len(&loose).unwrap(), Some(5));
        v.delete_chunk(&a).unwrap();
        v.delete_chunk(&loose).unwrap();
        let p = Packing::start(v).unwrap();
        let c = p.new_chunk_id();
        p.put_chunk(&c, b"never finished").unwrap();
        drop(p);
        assert!(!v.has_chunk(&c).unwrap());
        assert_eq!(listed_chunks(), before);
        assert!(v.list().unwrap().iter().all(|l| !matches!(l.name, ObjectName::Temp(_))), "no temp file left");
    }
}

/// What to check when a volume cannot be reached: a directory's mount, or
/// an object store's endpoint and credentials.
fn unreachable_hint(path: &std::path::Path) -> &'static str {
    if path.to_string_lossy().contains("://") {
        "check that the object store answers at its endpoint (`custos config set s3.endpoint`, or AWS_ENDPOINT_URL) and accepts the credentials in the environment"
    } else {
        "check that it is mounted, or re-add it with `custos volume add`"
    }
}

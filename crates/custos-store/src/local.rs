//! A volume in a local directory. Layout (docs/format.md, "Volume layout"):
//!
//! ```text
//! CUSTOS-VOLUME                       label: format version and volume id
//! chunks/<2 hex>/<32 hex>             sealed chunk objects, fanned out by first byte
//! packs/<2 hex>/<24 hex>              pack objects: many small chunk objects (layout 3, ADR 0030)
//! packs/<2 hex>/<24 hex>.dead         entries of a pack deleted since it was written
//! manifests/<2 hex>/<32 hex dataset id>.<16 hex generation>   (layouts 3, 4)
//! manifests/<32 hex dataset id>/<16 hex generation>           (layouts 1, 2)
//! ```
//!
//! Layout 3 keeps every manifest in one of 256 fan-out directories, as
//! chunks are kept; layouts 1 and 2 gave each dataset a directory of its
//! own, which cost an inode and a 4 KiB block per dataset. Layout 4 (new
//! volumes) also keeps a batch's manifests in its pack (ADR 0035).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use custos_model::{ChunkId, DatasetId};
use rustix::fs::OFlags;

use crate::durable::Pending;
use crate::pack::{self, Entry, PackId};
use crate::{ChunkBuf, Kept, PackWriter, Placed, Result, StoreError, Volume, ALIGN};

const LABEL: &str = "CUSTOS-VOLUME";
/// The first label, which named no owner; still read.
const LABEL_V1: &str = "custos-volume 1\n";
const LABEL_V2: &str = "custos-volume 2\n";
/// Manifests in fan-out directories (`manifests/<2 hex>/<id>.<generation>`).
const LABEL_V3: &str = "custos-volume 3\n";
/// Layout 3, and packs may hold manifests (ADR 0035).
const LABEL_V4: &str = "custos-volume 4\n";

/// What a volume label says: its layout version and the vault that owns
/// the volume (none on a first-format label, or a test's unowned volume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Label {
    pub version: u8,
    pub owner: Option<String>,
}

/// Chunk writes use direct I/O where the filesystem allows it: the
/// page-aligned body of each object goes straight from the caller's buffer
/// to the device, the unaligned tail through the page cache. Large writes
/// then neither fill nor wait on the page cache, and the final flush has
/// only metadata and tails left to write. Reads use the page cache.
///
/// Chunks, packs and deferred manifests are made durable by [`Volume::sync`]:
/// the files this process wrote on the volume, and their directories, are
/// synced one by one when they are few, the filesystem when they are many
/// (see [`crate::durable`]; ADR 0034).
pub struct LocalVolume {
    name: String,
    root: PathBuf,
    /// Cleared the first time the filesystem refuses O_DIRECT (tmpfs does).
    direct: AtomicBool,
    /// The vault the label names (none on a first-format label).
    owner: Option<String>,
    /// The label's layout version: from 3, manifests in fan-out
    /// directories, not one per dataset, and small chunks in packs; from 4,
    /// a batch's manifests in its pack. Known once the label was read (an
    /// attached volume reads it when first used).
    layout: std::sync::OnceLock<u8>,
    /// Indexes of the packs read so far (immutable once a pack is in
    /// place); cleared when it grows past [`PACK_CACHE`].
    packs: Mutex<HashMap<PackId, Arc<pack::Index>>>,
    /// Which packs hold which manifests (layout 4), shared by every
    /// `LocalVolume` on the same directory in the process.
    manifests: Arc<Mutex<ManifestDir>>,
    /// What this process wrote on the volume since the last `sync`, shared
    /// by every `LocalVolume` on the same directory.
    pending: Arc<Pending>,
}

/// The buffer a pack is written through.
const PACK_BUFFER: usize = 1 << 20;

/// How many pack indexes a volume keeps in memory at most.
const PACK_CACHE: usize = 256;

impl LocalVolume {
    /// Create (or adopt, if it is already one) a volume directory, with no
    /// owner in its label (for tests and tools; vaults use
    /// [`LocalVolume::create_owned`]). New volumes have layout 3.
    pub fn create(name: &str, root: &Path) -> Result<Self> {
        Self::make(name, root, None)
    }

    /// Create a volume directory whose label names the vault `owner` and
    /// the volume's name, or adopt one labelled for the same vault (or
    /// unlabelled by owner). One labelled for another vault is refused.
    pub fn create_owned(name: &str, root: &Path, owner: &str) -> Result<Self> {
        Self::make(name, root, Some(owner))
    }

    fn make(name: &str, root: &Path, owner: Option<&str>) -> Result<Self> {
        let v = Self::new(name, root);
        let label = root.join(LABEL);
        if label.exists() {
            let found = Self::open(name, root)?;
            if let (Some(theirs), Some(ours)) = (found.owner.as_deref(), owner) {
                if theirs != ours {
                    return Err(StoreError::OtherVault {
                        path: root.into(),
                        vault: theirs.to_string(),
                        name: label_field(&fs::read_to_string(&label).unwrap_or_default(), "name").unwrap_or_default(),
                    });
                }
            }
            return Ok(found);
        }
        fs::create_dir_all(root).map_err(|e| v.err(root, e))?;
        for top in ["chunks", "manifests"] {
            for i in 0..=255u8 {
                let d = root.join(top).join(format!("{i:02x}"));
                fs::create_dir_all(&d).map_err(|e| v.err(&d, e))?;
            }
            // The fan-out directories are durable before anything is
            // written into them (the label's write syncs the root).
            let d = root.join(top);
            File::open(&d).and_then(|d| d.sync_all()).map_err(|e| v.err(&d, e))?;
        }
        let text = match owner {
            Some(o) => format!("{LABEL_V4}vault {o}\nname {name}\n"),
            None => LABEL_V4.to_string(),
        };
        v.write_durable(&label, text.as_bytes())?;
        Ok(Self { owner: owner.map(String::from), layout: 4.into(), ..v })
    }

    /// The vault this volume's label names, if it names one.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// Attach to a volume directory without checking it is there: every
    /// operation then reports it unreachable. For the primary of a mirror,
    /// whose reads must fail over when it is gone.
    pub fn attach(name: &str, root: &Path) -> Self {
        Self::new(name, root)
    }

    /// Open an existing volume directory; fails when it is gone or unlabelled.
    pub fn open(name: &str, root: &Path) -> Result<Self> {
        let v = Self::new(name, root);
        let meta = fs::metadata(root).map_err(|source| StoreError::Unreachable {
            volume: v.name.clone(),
            path: root.into(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(StoreError::NotAVolume { path: root.into() });
        }
        match fs::read(root.join(LABEL)).ok().as_deref().and_then(parse_label) {
            Some(Label { version, owner }) => Ok(Self { owner, layout: version.into(), ..v }),
            None => Err(StoreError::NotAVolume { path: root.into() }),
        }
    }

    fn new(name: &str, root: &Path) -> Self {
        Self {
            name: format!("volume {name}"),
            root: root.into(),
            direct: AtomicBool::new(true),
            owner: None,
            layout: std::sync::OnceLock::new(),
            packs: Mutex::new(HashMap::new()),
            manifests: manifest_dir_for(root),
            pending: crate::durable::pending_for(root),
        }
    }

    /// Open a chunk file, with O_DIRECT when `direct` and the filesystem allows.
    fn open_chunk(&self, path: &Path, write: bool, direct: bool) -> std::io::Result<(File, bool)> {
        let mut o = OpenOptions::new();
        if write {
            o.write(true).create_new(true);
        } else {
            o.read(true);
        }
        if direct && self.direct.load(Ordering::Relaxed) {
            let mut od = o.clone();
            od.custom_flags(OFlags::DIRECT.bits() as i32);
            match od.open(path) {
                Ok(f) => return Ok((f, true)),
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    self.direct.store(false, Ordering::Relaxed);
                    if write {
                        // The failed attempt may have created the file.
                        let _ = fs::remove_file(path);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        o.open(path).map(|f| (f, false))
    }

    fn err(&self, path: &Path, e: std::io::Error) -> StoreError {
        match e.kind() {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
                StoreError::Full { volume: self.name.clone(), path: path.into() }
            }
            ErrorKind::NotFound if !self.root.exists() => {
                StoreError::Unreachable { volume: self.name.clone(), path: self.root.clone(), source: e }
            }
            _ => StoreError::Io { volume: self.name.clone(), path: path.into(), source: e },
        }
    }

    /// Whether this volume has layout 3, from its label. An attached
    /// volume whose label cannot be read yet (it is not there) is taken as
    /// layout 1 for now and read again next time: nothing can be written
    /// or read there until it is back anyway.
    fn flat(&self) -> bool {
        self.layout() >= 3
    }

    /// The layout version from the label; 1 while the label cannot be read
    /// (see [`LocalVolume::flat`]).
    fn layout(&self) -> u8 {
        if let Some(v) = self.layout.get() {
            return *v;
        }
        match fs::read(self.root.join(LABEL)).ok().as_deref().and_then(parse_label) {
            Some(l) => *self.layout.get_or_init(|| l.version),
            None => 1,
        }
    }

    /// Where this volume keeps the chunk object `id` (for tests and tools
    /// that look at the files themselves).
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let h = id.to_hex();
        self.root.join("chunks").join(&h[..2]).join(h)
    }

    /// Where this volume keeps the manifest of `generation` of the dataset
    /// (or copy) `ds`, by its layout.
    pub fn manifest_path(&self, ds: &DatasetId, generation: u64) -> PathBuf {
        let h = ds.to_hex();
        if self.flat() {
            self.root.join("manifests").join(&h[..2]).join(format!("{h}.{generation:016x}"))
        } else {
            self.root.join("manifests").join(h).join(format!("{generation:016x}"))
        }
    }

    /// Where this volume keeps pack `p` (layout 3).
    pub fn pack_path(&self, p: &PackId) -> PathBuf {
        let h = hex::encode(p);
        self.root.join("packs").join(&h[..2]).join(h)
    }

    /// The index of pack `p` and the pack opened for reading; `None` when
    /// there is no such pack.
    fn pack_index(&self, p: &PackId) -> Result<Option<(File, Arc<pack::Index>)>> {
        let path = self.pack_path(p);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound && self.root.exists() => return Ok(None),
            Err(e) => return Err(self.err(&path, e)),
        };
        if let Some(ix) = self.packs.lock().expect("pack cache").get(p) {
            return Ok(Some((f, ix.clone())));
        }
        let damaged = |why: String| StoreError::Missing {
            volume: self.name.clone(),
            what: format!("the index of pack {} ({why})", hex::encode(p)),
            path: path.clone(),
        };
        let len = f.metadata().map_err(|e| self.err(&path, e))?.len();
        let mut tail = vec![0u8; len.min(pack::TRAILER_LEN_2 as u64) as usize];
        let at = len - tail.len() as u64;
        f.read_exact_at(&mut tail, at).map_err(|e| self.err(&path, e))?;
        let trailer = pack::parse_trailer(&tail, len).map_err(|e| damaged(e.to_string()))?;
        let bodies = len - trailer.len as u64 - trailer.index_len();
        let mut index = vec![0u8; trailer.index_len() as usize];
        f.read_exact_at(&mut index, bodies).map_err(|e| self.err(&path, e))?;
        let entries = Arc::new(pack::parse_index(p, &index, &trailer, bodies).map_err(|e| damaged(e.to_string()))?);
        let mut cache = self.packs.lock().expect("pack cache");
        if cache.len() >= PACK_CACHE {
            cache.clear();
        }
        cache.insert(*p, entries.clone());
        Ok(Some((f, entries)))
    }

    /// The entry numbers deleted from pack `p` since it was written.
    fn pack_dead(&self, p: &PackId) -> Result<HashSet<u32>> {
        let path = dead_path(&self.pack_path(p));
        match fs::read(&path) {
            Ok(b) => Ok(pack::parse_dead(&b).into_iter().collect()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(HashSet::new()),
            Err(e) => Err(self.err(&path, e)),
        }
    }

    /// A live packed chunk: its pack opened and its entry. `None` when `id`
    /// is in no pack here (or was deleted from one).
    fn packed(&self, id: &ChunkId) -> Result<Option<(File, Entry)>> {
        if !self.flat() {
            return Ok(None);
        }
        let p = pack::pack_of(id);
        let Some((f, ix)) = self.pack_index(&p)? else { return Ok(None) };
        let Ok(i) = ix.chunks.binary_search_by_key(&id.0, |e| e.id.0) else { return Ok(None) };
        if self.pack_dead(&p)?.contains(&pack::entry_number(id)) {
            return Ok(None);
        }
        Ok(Some((f, ix.chunks[i])))
    }

    /// The packs that may hold a manifest of `generation` of `ds`, from the
    /// directory of this volume's packs (ADR 0035). When it names none,
    /// packs written since it was last read are looked at: always for a
    /// reader (`fresh`), only the first time in the process otherwise (a
    /// deleter of many manifests that are files of their own would else
    /// list the packs once for each).
    fn packs_with_manifest(&self, ds: &DatasetId, generation: u64, fresh: bool) -> Result<Vec<PackId>> {
        if self.layout() < 4 {
            return Ok(Vec::new());
        }
        let mut dir = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = dir.at.get(&(*ds, generation)) {
            return Ok(found.clone());
        }
        if !fresh && dir.listed {
            return Ok(Vec::new());
        }
        dir.listed = true;
        let packs = self.root.join("packs");
        let fans = match fs::read_dir(&packs) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound && self.root.exists() => return Ok(Vec::new()),
            Err(e) => return Err(self.err(&packs, e)),
        };
        for fan in fans {
            let fan = fan.map_err(|e| self.err(&packs, e))?.path();
            let Ok(names) = fs::read_dir(&fan) else { continue };
            for name in names {
                let name = name.map_err(|e| self.err(&fan, e))?.file_name();
                let Some(p) = name.to_str().and_then(unhex12) else { continue };
                if dir.seen.contains(&p) {
                    continue;
                }
                // A pack whose index cannot be read adds nothing (and is
                // looked at again next time); `fsck` reports its objects.
                if let Ok(Some((_, ix))) = self.pack_index(&p) {
                    dir.add(p, &ix);
                }
            }
        }
        Ok(dir.at.get(&(*ds, generation)).cloned().unwrap_or_default())
    }

    /// The live manifests of `generation` of `ds` in pack `p`, with the
    /// pack opened; `None` when it holds none.
    fn manifests_in(
        &self,
        p: &PackId,
        ds: &DatasetId,
        generation: u64,
    ) -> Result<Option<(File, Vec<pack::ManifestEntry>)>> {
        let Some((f, ix)) = self.pack_index(p)? else { return Ok(None) };
        let found = ix.manifests_of(ds, generation);
        if found.is_empty() {
            return Ok(None);
        }
        let dead = self.pack_dead(p)?;
        Ok(Some((f, found.iter().filter(|m| !dead.contains(&m.number)).copied().collect())))
    }

    /// The bytes of a packed manifest.
    fn read_packed_manifest(&self, p: &PackId, f: &File, m: &pack::ManifestEntry) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; m.len as usize];
        f.read_exact_at(&mut buf, m.offset).map_err(|e| self.err(&self.pack_path(p), e))?;
        Ok(buf)
    }

    /// A file written and moved into place, made durable by the next `sync`.
    fn written(&self, f: File, path: PathBuf) {
        self.pending.file(f, path);
    }

    fn flush_err(&self, e: crate::durable::FlushError) -> StoreError {
        self.err(&e.path, e.source)
    }

    /// Make a directory inside the volume that a copy of it left out (or a
    /// first pack's): its entry in its parent is flushed by the next `sync`.
    /// Made by another writer meanwhile is as good.
    fn make_fan_out(&self, dir: &Path) -> std::io::Result<()> {
        match fs::create_dir(dir) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => Err(e),
            _ => {
                self.pending.dir(dir.parent().expect("inside the volume"));
                Ok(())
            }
        }
    }

    /// Write a whole file atomically and durably: a temp file of this
    /// attempt's own, fsync, rename (replacing), fsync dir.
    fn write_durable(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = tmp_path(path);
        let res = (|| {
            write_synced(&tmp, bytes)?;
            fs::rename(&tmp, path)?;
            sync_parent(path)
        })();
        res.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.err(path, e)
        })
    }

    /// Write a whole file that must not exist yet, atomically and durably:
    /// a temp file of this attempt's own, fsync, then a rename that refuses
    /// to replace, fsync dir. An existing file is left as it is.
    fn create_durable(&self, path: &Path, bytes: &[u8], what: impl FnOnce() -> String) -> Result<()> {
        let tmp = tmp_path(path);
        let res = (|| {
            write_synced(&tmp, bytes)?;
            let placed = publish(&tmp, path)?;
            if placed {
                sync_parent(path)?;
            }
            Ok(placed)
        })();
        match res {
            Ok(true) => Ok(()),
            Ok(false) => Err(StoreError::Exists { volume: self.name.clone(), what: what(), path: path.into() }),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(self.err(path, e))
            }
        }
    }

    fn read_file(&self, path: &Path, what: impl FnOnce() -> String, buf: &mut Vec<u8>) -> Result<()> {
        buf.clear();
        let mut f = File::open(path).map_err(|e| match e.kind() {
            ErrorKind::NotFound if self.root.join(LABEL).exists() => {
                StoreError::Missing { volume: self.name.clone(), what: what(), path: path.into() }
            }
            _ => self.err(path, e),
        })?;
        if let Ok(m) = f.metadata() {
            buf.reserve(m.len() as usize);
        }
        f.read_to_end(buf).map_err(|e| self.err(path, e))?;
        Ok(())
    }
}

impl LocalVolume {
    fn read_packed(&self, id: &ChunkId, f: &File, e: Entry, buf: &mut ChunkBuf, max_len: usize) -> Result<usize> {
        let path = self.pack_path(&pack::pack_of(id));
        let size = e.len as usize;
        if size > max_len {
            return Err(StoreError::TooLarge {
                volume: self.name.clone(),
                what: format!("chunk {id}"),
                path,
                size: size as u64,
                max: max_len,
            });
        }
        buf.ensure(size.div_ceil(ALIGN) * ALIGN);
        f.read_exact_at(&mut buf.slice_mut(size)[..size], e.offset).map_err(|err| self.err(&path, err))?;
        Ok(size)
    }

    /// Delete a packed chunk: its entry number goes on the pack's dead
    /// list, and once every entry is dead the pack and the list go.
    fn delete_packed(&self, id: &ChunkId) -> Result<()> {
        let p = pack::pack_of(id);
        let ix = match self.pack_index(&p) {
            Ok(Some((_, ix))) if ix.chunks.binary_search_by_key(&id.0, |e| e.id.0).is_ok() => ix,
            // Not in a pack (nothing to delete), or in one whose index
            // cannot be read (left for `fsck` to report).
            Ok(_) | Err(StoreError::Missing { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.kill_entry(&p, &ix, pack::entry_number(id))
    }

    /// Delete the manifests of `generation` of `ds` in pack `p` (those
    /// the index lists; none is no error).
    fn delete_packed_manifest(&self, p: &PackId, ds: &DatasetId, generation: u64) -> Result<()> {
        let ix = match self.pack_index(p) {
            Ok(Some((_, ix))) => ix,
            Ok(None) | Err(StoreError::Missing { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        for m in ix.manifests_of(ds, generation) {
            self.kill_entry(p, &ix, m.number)?;
        }
        Ok(())
    }

    /// Put entry `n` of pack `p` (index `ix`) on its dead list; once every
    /// chunk entry is dead, the pack and the list go, with whatever
    /// manifests it holds: each is there only beside a chunk of its own
    /// generation (ADR 0035), so none of them is still committed.
    fn kill_entry(&self, p: &PackId, ix: &pack::Index, n: u32) -> Result<()> {
        let path = self.pack_path(p);
        let dead_file = dead_path(&path);
        if !self.pack_dead(p)?.contains(&n) {
            // One 4-byte append: whole or not at all, beside other deleters.
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(&dead_file)
                .and_then(|mut f| f.write_all(&n.to_be_bytes()))
                .map_err(|e| self.err(&dead_file, e))?;
        }
        // Read again after the append: of two deleters appending at once,
        // the later to read sees both, so a pack whose last entries die
        // together still goes.
        let dead = self.pack_dead(p)?;
        if ix.chunks.iter().all(|e| dead.contains(&pack::entry_number(&e.id))) {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(self.err(&path, e)),
                _ => {}
            }
            self.packs.lock().expect("pack cache").remove(p);
            self.manifests.lock().unwrap_or_else(|p| p.into_inner()).remove(p, ix);
            match fs::remove_file(&dead_file) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(self.err(&dead_file, e)),
                _ => {}
            }
        }
        Ok(())
    }
}

struct PackState {
    /// The temp file, until the pack is finished.
    /// Buffered: a batch's many small objects go out in large writes.
    file: Option<std::io::BufWriter<File>>,
    len: u64,
    entries: Vec<Entry>,
    /// The ids of `entries`, to refuse one written twice.
    ids: HashSet<ChunkId>,
    forgotten: HashSet<ChunkId>,
    manifests: Vec<pack::ManifestEntry>,
    /// The dataset and generation of each of `manifests`, to refuse one
    /// written twice.
    manifest_names: HashSet<(DatasetId, u64)>,
    forgotten_manifests: HashSet<(DatasetId, u64)>,
    /// A write failed part way: the file's end is unknown.
    failed: bool,
}

/// A pack being written on a local volume: a temp file of its own,
/// appended to under a lock, then indexed and moved into place.
struct LocalPack<'a> {
    volume: &'a LocalVolume,
    id: PackId,
    path: PathBuf,
    tmp: PathBuf,
    next: AtomicU32,
    state: Mutex<PackState>,
    finished: AtomicBool,
    /// Whether manifests go in (layout 4).
    keeps_manifests: bool,
}

impl LocalPack<'_> {
    /// A write into the pack failed part way: where its file ends is
    /// unknown, so nothing more goes in and it is never put in place.
    fn failed_earlier(&self) -> StoreError {
        StoreError::Io {
            volume: self.volume.name.clone(),
            path: self.tmp.clone(),
            source: std::io::Error::other("a write into this pack failed earlier"),
        }
    }
}

impl PackWriter for LocalPack<'_> {
    fn new_id(&self) -> ChunkId {
        pack::chunk_in(&self.id, self.next.fetch_add(1, Ordering::Relaxed))
    }

    fn owns(&self, id: &ChunkId) -> bool {
        pack::pack_of(id) == self.id
    }

    fn put(&self, id: &ChunkId, sealed: &[u8]) -> Result<()> {
        let mut st = self.state.lock().expect("pack state");
        if st.failed {
            return Err(self.failed_earlier());
        }
        let len = u32::try_from(sealed.len()).ok().filter(|l| *l > 0 && !st.ids.contains(id));
        let (Some(len), Some(f)) = (len, st.file.as_mut()) else {
            return Err(StoreError::Exists {
                volume: self.volume.name.clone(),
                what: format!("chunk {id} (in the pack being written)"),
                path: self.tmp.clone(),
            });
        };
        if let Err(e) = f.write_all(sealed) {
            st.failed = true;
            return Err(self.volume.err(&self.tmp, e));
        }
        let offset = st.len;
        st.entries.push(Entry { id: *id, offset, len });
        st.ids.insert(*id);
        st.len += len as u64;
        Ok(())
    }

    fn forget(&self, id: &ChunkId) {
        self.state.lock().expect("pack state").forgotten.insert(*id);
    }

    fn id(&self) -> PackId {
        self.id
    }

    fn put_manifest(&self, dataset: &DatasetId, generation: u64, sealed: &[u8]) -> Result<bool> {
        if !self.keeps_manifests {
            return Ok(false);
        }
        let mut st = self.state.lock().expect("pack state");
        if st.failed {
            return Err(self.failed_earlier());
        }
        let taken = st.manifest_names.contains(&(*dataset, generation));
        let len = u32::try_from(sealed.len()).ok().filter(|l| *l > 0 && !taken);
        let (Some(len), Some(f)) = (len, st.file.as_mut()) else {
            return Err(StoreError::Exists {
                volume: self.volume.name.clone(),
                what: format!(
                    "the manifest of generation {generation} of dataset id {dataset} (in the pack being written)"
                ),
                path: self.tmp.clone(),
            });
        };
        if let Err(e) = f.write_all(sealed) {
            st.failed = true;
            return Err(self.volume.err(&self.tmp, e));
        }
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let offset = st.len;
        st.manifests.push(pack::ManifestEntry { dataset: *dataset, generation, number, offset, len });
        st.manifest_names.insert((*dataset, generation));
        st.len += len as u64;
        Ok(true)
    }

    fn forget_manifest(&self, dataset: &DatasetId, generation: u64) {
        self.state.lock().expect("pack state").forgotten_manifests.insert((*dataset, generation));
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let mut st = self.state.lock().expect("pack state");
        if st.failed {
            return Err(self.failed_earlier());
        }
        let Some(mut f) = st.file.take() else { return Ok(()) };
        let live = pack::Index {
            chunks: st.entries.iter().filter(|e| !st.forgotten.contains(&e.id)).copied().collect(),
            manifests: st
                .manifests
                .iter()
                .filter(|m| !st.forgotten_manifests.contains(&(m.dataset, m.generation)))
                .copied()
                .collect(),
        };
        if live.chunks.is_empty() && live.manifests.is_empty() {
            drop(f);
            let _ = fs::remove_file(&self.tmp);
            self.finished.store(true, Ordering::Relaxed);
            return Ok(());
        }
        let placed = f
            .write_all(&pack::encode_index(&live))
            .and_then(|()| f.into_inner().map_err(|e| e.into_error()))
            .and_then(|f| Ok((publish(&self.tmp, &self.path)?, f)));
        match placed {
            Ok((true, f)) => {
                self.finished.store(true, Ordering::Relaxed);
                self.volume.written(f, self.path.clone());
                // Readers in this process find its manifests without
                // looking for new packs.
                if !live.manifests.is_empty() {
                    self.volume.manifests.lock().unwrap_or_else(|p| p.into_inner()).add(self.id, &live);
                }
                Ok(())
            }
            Ok((false, _)) => Err(StoreError::Exists {
                volume: self.volume.name.clone(),
                what: format!("pack {}", hex::encode(self.id)),
                path: self.path.clone(),
            }),
            Err(e) => Err(self.volume.err(&self.path, e)),
        }
    }
}

impl Drop for LocalPack<'_> {
    fn drop(&mut self) {
        if !self.finished.load(Ordering::Relaxed) {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A pack's name read back: 24 lower-case hex digits, as written.
fn unhex12(s: &str) -> Option<PackId> {
    let id: PackId = hex::decode(s).ok()?.try_into().ok()?;
    (hex::encode(id) == s).then_some(id)
}

/// The dead list beside a pack.
fn dead_path(pack: &Path) -> PathBuf {
    let mut name = pack.file_name().expect("pack name").to_os_string();
    name.push(".dead");
    pack.with_file_name(name)
}

impl Volume for LocalVolume {
    fn describe(&self) -> String {
        format!("{} ({})", self.name, self.root.display())
    }

    fn put_chunk(&self, id: &ChunkId, sealed: &[u8]) -> Result<()> {
        // Written under a name of this attempt's own, then moved into place
        // without replacing: a killed writer leaves at most a temp file
        // (which `gc` removes), never a short chunk under the chunk's name.
        let path = self.chunk_path(id);
        // Write-once holds across layouts: an id a pack holds is taken.
        if self.flat() && matches!(self.packed(id), Ok(Some(_))) {
            return Err(StoreError::Exists {
                volume: self.name.clone(),
                what: format!("chunk {id} (in a pack)"),
                path,
            });
        }
        let tmp = tmp_path(&path);
        let body = sealed.len() / ALIGN * ALIGN;
        let aligned = (sealed.as_ptr() as usize).is_multiple_of(ALIGN) && body > 0;
        let opened = match self.open_chunk(&tmp, true, aligned) {
            // A fan-out directory a copy of the volume left out (a drill's
            // clone copies no empty ones): made here, once. Only the fan-out
            // level: a volume whose `chunks` is gone stays an error.
            Err(e) if e.kind() == ErrorKind::NotFound => match self.make_fan_out(path.parent().expect("fan-out dir")) {
                Err(e) => Err(e),
                Ok(()) => self.open_chunk(&tmp, true, aligned),
            },
            r => r,
        };
        let (mut f, direct) = opened.map_err(|e| self.err(&path, e))?;
        let written = (|| {
            let mut rest = sealed;
            if direct {
                f.write_all(&sealed[..body])?;
                rustix::fs::fcntl_setfl(&f, rustix::fs::fcntl_getfl(&f)? - OFlags::DIRECT)?;
                rest = &sealed[body..];
            }
            f.write_all(rest)?;
            Ok(publish(&tmp, &path)?.then_some(f))
        })();
        match written {
            Ok(Some(f)) => {
                self.written(f, path);
                Ok(())
            }
            Ok(None) => Err(StoreError::Exists { volume: self.name.clone(), what: format!("chunk {id}"), path }),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(self.err(&path, e))
            }
        }
    }

    fn read_chunk(&self, id: &ChunkId, buf: &mut ChunkBuf, max_len: usize) -> Result<usize> {
        let path = self.chunk_path(id);
        let missing = |e: std::io::Error| match e.kind() {
            ErrorKind::NotFound if self.root.join(LABEL).exists() => {
                StoreError::Missing { volume: self.name.clone(), what: format!("chunk {id}"), path: path.clone() }
            }
            _ => self.err(&path, e),
        };
        // Reads go through the page cache: a warm cache then serves them at
        // memory speed (direct reads would always wait on the device).
        let (mut f, mut direct) = match self.open_chunk(&path, false, false) {
            Err(e) if e.kind() == ErrorKind::NotFound && self.flat() => {
                let found = self.packed(id).map_err(|e| match e {
                    StoreError::Missing { what, .. } => StoreError::Missing {
                        volume: self.name.clone(),
                        what: format!("chunk {id}: {what}"),
                        path: path.clone(),
                    },
                    e => e,
                })?;
                let Some((f, entry)) = found else { return Err(missing(e)) };
                return self.read_packed(id, &f, entry, buf, max_len);
            }
            r => r.map_err(missing)?,
        };
        let size = f.metadata().map_err(|e| self.err(&path, e))?.len();
        if size > max_len as u64 {
            return Err(StoreError::TooLarge {
                volume: self.name.clone(),
                what: format!("chunk {id}"),
                path,
                size,
                max: max_len,
            });
        }
        let size = size as usize;
        let room = size.div_ceil(ALIGN) * ALIGN;
        buf.ensure(room);
        let window = buf.slice_mut(room);
        let mut n = 0;
        while n < size {
            if direct && !n.is_multiple_of(ALIGN) {
                rustix::fs::fcntl_setfl(
                    &f,
                    rustix::fs::fcntl_getfl(&f).map_err(|e| self.err(&path, e.into()))? - OFlags::DIRECT,
                )
                .map_err(|e| self.err(&path, e.into()))?;
                direct = false;
            }
            match f.read(&mut window[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err(&path, e)),
            }
        }
        Ok(n.min(size))
    }

    fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.chunk_len(id)?.is_some())
    }

    fn chunk_len(&self, id: &ChunkId) -> Result<Option<u64>> {
        let p = self.chunk_path(id);
        match fs::symlink_metadata(&p) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound && self.root.exists() => match self.packed(id) {
                Ok(found) => Ok(found.map(|(_, e)| e.len as u64)),
                // A pack whose index cannot be read holds nothing usable.
                Err(StoreError::Missing { .. }) => Ok(None),
                Err(e) => Err(e),
            },
            Err(e) => Err(self.err(&p, e)),
        }
    }

    fn delete_chunk(&self, id: &ChunkId) -> Result<()> {
        let p = self.chunk_path(id);
        match fs::remove_file(&p) {
            Err(e) if e.kind() == ErrorKind::NotFound && self.flat() => self.delete_packed(id),
            Err(e) if e.kind() != ErrorKind::NotFound => Err(self.err(&p, e)),
            _ => Ok(()),
        }
    }

    fn sync(&self) -> Result<()> {
        self.pending.flush().map_err(|e| self.flush_err(e))
    }

    fn put_manifest(&self, ds: &DatasetId, generation: u64, sealed: &[u8]) -> Result<()> {
        let path = self.manifest_path(ds, generation);
        let dir = path.parent().expect("manifest dir");
        if !dir.exists() {
            // A dataset's directory (layouts 1, 2), or a fan-out directory
            // a copy of the volume left out (layout 3).
            fs::create_dir_all(dir).map_err(|e| self.err(dir, e))?;
            File::open(dir.parent().expect("manifests dir"))
                .and_then(|d| d.sync_all())
                .map_err(|e| self.err(dir, e))?;
        }
        self.create_durable(&path, sealed, || format!("the manifest of generation {generation} of dataset id {ds}"))
    }

    fn put_manifest_deferred(&self, ds: &DatasetId, generation: u64, sealed: &[u8]) -> Result<Placed> {
        // As `put_chunk` writes a chunk: a temp file, moved into place
        // without replacing; `sync` makes the file, its name and its
        // directory durable together.
        let path = self.manifest_path(ds, generation);
        let dir = path.parent().expect("manifest dir");
        if !dir.exists() {
            self.make_fan_out(dir).map_err(|e| self.err(dir, e))?;
        }
        let tmp = tmp_path(&path);
        let written = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(sealed)?;
            Ok(publish(&tmp, &path)?.then_some(f))
        })();
        match written {
            Ok(Some(f)) => {
                self.written(f, path);
                Ok(Placed::Own)
            }
            Ok(None) => Err(StoreError::Exists {
                volume: self.name.clone(),
                what: format!("the manifest of generation {generation} of dataset id {ds}"),
                path,
            }),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(self.err(&path, e))
            }
        }
    }

    fn read_manifest(&self, ds: &DatasetId, generation: u64) -> Result<Vec<u8>> {
        self.read_manifest_where(ds, generation, &|_| true)
    }

    fn read_manifest_where(&self, ds: &DatasetId, generation: u64, accept: &dyn Fn(&[u8]) -> bool) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        let (mut found, missing) = match self.read_file(
            &self.manifest_path(ds, generation),
            || format!("the manifest of generation {generation} of dataset id {ds}"),
            &mut buf,
        ) {
            Ok(()) if accept(&buf) => return Ok(buf),
            Ok(()) => (Some(buf), None),
            Err(e @ StoreError::Missing { .. }) if self.layout() >= 4 => (None, Some(e)),
            Err(e) => return Err(e),
        };
        // Then in packs (layout 4): the first that `accept` takes.
        for p in self.packs_with_manifest(ds, generation, true)? {
            let Some((f, entries)) = self.manifests_in(&p, ds, generation)? else { continue };
            for m in entries {
                let bytes = self.read_packed_manifest(&p, &f, &m)?;
                if accept(&bytes) {
                    return Ok(bytes);
                }
                found.get_or_insert(bytes);
            }
        }
        match (found, missing) {
            (Some(b), _) => Ok(b),
            (None, Some(e)) => Err(e),
            (None, None) => unreachable!("either read or missing"),
        }
    }

    fn list(&self) -> Result<Vec<crate::Listed>> {
        use crate::{Listed, ObjectName};
        let mut out = Vec::new();
        let entries = |dir: &Path| -> Result<Vec<(String, fs::Metadata)>> {
            let rd = match fs::read_dir(dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound && self.root.exists() => return Ok(Vec::new()),
                Err(e) => return Err(self.err(dir, e)),
            };
            let mut v = Vec::new();
            for entry in rd {
                let entry = entry.map_err(|e| self.err(dir, e))?;
                // A concurrent writer may move its temp file into place, or
                // a deleter remove an object, between the listing and this
                // look: what is gone is simply not listed.
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(self.err(&entry.path(), e)),
                };
                v.push((entry.file_name().to_string_lossy().to_string(), meta));
            }
            Ok(v)
        };
        let listed = |name, m: &fs::Metadata| Listed {
            name,
            len: m.len(),
            modified: m.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH),
        };
        for (fan, m) in entries(&self.root.join("chunks"))? {
            if !m.is_dir() {
                continue;
            }
            for (name, m) in entries(&self.root.join("chunks").join(&fan))? {
                if name.ends_with(".tmp") {
                    out.push(listed(ObjectName::Temp(format!("chunks/{fan}/{name}")), &m));
                } else if let Some(id) = ChunkId::from_hex(&name).filter(|_| m.is_file()) {
                    out.push(listed(ObjectName::Chunk(id), &m));
                }
            }
        }
        for (fan, m) in entries(&self.root.join("packs"))? {
            if !m.is_dir() {
                continue;
            }
            for (name, m) in entries(&self.root.join("packs").join(&fan))? {
                if name.ends_with(".tmp") {
                    out.push(listed(ObjectName::Temp(format!("packs/{fan}/{name}")), &m));
                    continue;
                }
                let Some(p) = unhex12(&name).filter(|_| m.is_file()) else { continue };
                // A pack whose index cannot be read lists nothing: its
                // chunks read as missing, which is what `fsck` reports.
                let Ok(Some((_, ix))) = self.pack_index(&p) else { continue };
                if !ix.manifests.is_empty() {
                    self.manifests.lock().unwrap_or_else(|p| p.into_inner()).add(p, &ix);
                }
                let dead = self.pack_dead(&p)?;
                let modified = m.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                for e in ix.chunks.iter().filter(|e| !dead.contains(&pack::entry_number(&e.id))) {
                    out.push(Listed { name: ObjectName::Chunk(e.id), len: e.len as u64, modified });
                }
                for e in ix.manifests.iter().filter(|e| !dead.contains(&e.number)) {
                    out.push(Listed {
                        name: ObjectName::Manifest(e.dataset, e.generation),
                        len: e.len as u64,
                        modified,
                    });
                }
            }
        }
        for (dir, m) in entries(&self.root.join("manifests"))? {
            if !m.is_dir() {
                continue;
            }
            // Layout 3: `<2 hex>/<32 hex>.<16 hex>`; layouts 1, 2:
            // `<32 hex>/<16 hex>`. Each volume is read by its own layout.
            let owner = if self.flat() {
                if dir.len() != 2 {
                    continue;
                }
                None
            } else {
                let Some(id) = DatasetId::from_hex(&dir) else { continue };
                Some(id)
            };
            for (name, m) in entries(&self.root.join("manifests").join(&dir))? {
                if name.ends_with(".tmp") {
                    out.push(listed(ObjectName::Temp(format!("manifests/{dir}/{name}")), &m));
                    continue;
                }
                let named = match owner {
                    Some(id) => Some(id).zip((name.len() == 16).then(|| u64::from_str_radix(&name, 16).ok()).flatten()),
                    None => name.split_once('.').and_then(|(d, g)| {
                        let id = DatasetId::from_hex(d).filter(|id| id.to_hex().starts_with(&dir))?;
                        let g = (g.len() == 16).then(|| u64::from_str_radix(g, 16).ok()).flatten()?;
                        Some((id, g))
                    }),
                };
                if let Some((id, g)) = named.filter(|_| m.is_file()) {
                    out.push(listed(ObjectName::Manifest(id, g), &m));
                }
            }
        }
        Ok(out)
    }

    fn delete_temp(&self, name: &str) -> Result<()> {
        let p = self.root.join(name);
        let inside = Path::new(name).components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside || !name.ends_with(".tmp") {
            return Err(StoreError::Missing { volume: self.name.clone(), what: format!("temp file {name}"), path: p });
        }
        match fs::remove_file(&p) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(self.err(&p, e)),
            _ => Ok(()),
        }
    }

    fn put_keystore_backup(&self, id: &str, bytes: &[u8]) -> Result<()> {
        let dir = self.root.join("keystore");
        fs::create_dir_all(&dir).map_err(|e| self.err(&dir, e))?;
        self.write_durable(&dir.join(format!("{id}.ksb")), bytes)
    }

    fn read_keystore_backup(&self, id: &str) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_file(
            &self.root.join("keystore").join(format!("{id}.ksb")),
            || format!("keystore backup {id}"),
            &mut buf,
        )?;
        Ok(buf)
    }

    fn delete_manifest(&self, ds: &DatasetId, generation: u64) -> Result<()> {
        self.delete_placed_manifest(ds, generation, Placed::Own)?;
        for p in self.packs_with_manifest(ds, generation, false)? {
            self.delete_packed_manifest(&p, ds, generation)?;
        }
        Ok(())
    }

    fn delete_placed_manifest(&self, ds: &DatasetId, generation: u64, placed: Placed) -> Result<()> {
        match placed {
            Placed::Own => {
                let p = self.manifest_path(ds, generation);
                match fs::remove_file(&p) {
                    Err(e) if e.kind() != ErrorKind::NotFound => Err(self.err(&p, e)),
                    _ => Ok(()),
                }
            }
            Placed::Pack(p) => self.delete_packed_manifest(&p, ds, generation),
        }
    }

    fn put_kept(&self, kind: Kept, id: &str, bytes: &[u8]) -> Result<()> {
        let (sub, ext) = kind.place();
        let dir = self.root.join(sub);
        fs::create_dir_all(&dir).map_err(|e| self.err(&dir, e))?;
        self.create_durable(&dir.join(format!("{id}.{ext}")), bytes, || format!("{} {id}", kind.what()))
    }

    fn read_kept(&self, kind: Kept, id: &str) -> Result<Vec<u8>> {
        let (sub, ext) = kind.place();
        let mut buf = Vec::new();
        self.read_file(&self.root.join(sub).join(format!("{id}.{ext}")), || format!("{} {id}", kind.what()), &mut buf)?;
        Ok(buf)
    }

    fn delete_kept(&self, kind: Kept, id: &str) -> Result<()> {
        let (sub, ext) = kind.place();
        let p = self.root.join(sub).join(format!("{id}.{ext}"));
        match fs::remove_file(&p) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(self.err(&p, e)),
            _ => Ok(()),
        }
    }

    fn start_pack(&self) -> Result<Option<Box<dyn PackWriter + '_>>> {
        if !self.flat() {
            return Ok(None);
        }
        let id: PackId = ChunkId::random().0[..12].try_into().expect("12 bytes");
        let path = self.pack_path(&id);
        let fan = path.parent().expect("fan-out dir");
        // Made here when missing, but never the volume itself.
        for d in [fan.parent().expect("packs dir"), fan] {
            if !d.is_dir() {
                self.make_fan_out(d).map_err(|e| self.err(d, e))?;
            }
        }
        let tmp = tmp_path(&path);
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| self.err(&tmp, e))?;
        Ok(Some(Box::new(LocalPack {
            volume: self,
            id,
            path,
            tmp,
            next: AtomicU32::new(0),
            state: Mutex::new(PackState {
                file: Some(std::io::BufWriter::with_capacity(PACK_BUFFER, file)),
                len: 0,
                entries: Vec::new(),
                ids: HashSet::new(),
                forgotten: HashSet::new(),
                manifests: Vec::new(),
                manifest_names: HashSet::new(),
                forgotten_manifests: HashSet::new(),
                failed: false,
            }),
            finished: AtomicBool::new(false),
            keeps_manifests: self.layout() >= 4,
        })))
    }

    fn list_kept(&self, kind: Kept) -> Result<Vec<String>> {
        let (sub, ext) = kind.place();
        let dir = self.root.join(sub);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(&dir, e)),
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(|e| self.err(&dir, e))?;
            if let Some(id) = e.file_name().to_str().and_then(|n| n.strip_suffix(ext)?.strip_suffix('.')) {
                if !id.starts_with('.') {
                    out.push(id.to_string());
                }
            }
        }
        Ok(out)
    }
}

/// The value of a `key value` line of a label.
/// Read a volume label: `None` when it is not one, else its layout
/// version and the vault that owns the volume (none for a version 1 label,
/// and for a version 3 label without a `vault` line).
pub(crate) fn parse_label(bytes: &[u8]) -> Option<Label> {
    let s = std::str::from_utf8(bytes).ok()?;
    if s == LABEL_V1 {
        return Some(Label { version: 1, owner: None });
    }
    if s.starts_with(LABEL_V2) {
        return label_field(s, "vault").map(|o| Label { version: 2, owner: Some(o) });
    }
    if s.starts_with(LABEL_V3) {
        return Some(Label { version: 3, owner: label_field(s, "vault") });
    }
    if s.starts_with(LABEL_V4) {
        return Some(Label { version: 4, owner: label_field(s, "vault") });
    }
    None
}

/// Which packs of a layout 4 volume hold which manifests: filled from the
/// packs' indexes as they are first needed, and by this process's own
/// packs as they are put in place.
#[derive(Default)]
pub(crate) struct ManifestDir {
    /// Packs whose manifests are recorded.
    seen: HashSet<PackId>,
    /// Whether the volume's packs were listed at least once.
    listed: bool,
    at: HashMap<(DatasetId, u64), Vec<PackId>>,
}

impl ManifestDir {
    fn add(&mut self, p: PackId, ix: &pack::Index) {
        if self.seen.insert(p) {
            for m in &ix.manifests {
                self.at.entry((m.dataset, m.generation)).or_default().push(p);
            }
        }
    }

    fn remove(&mut self, p: &PackId, ix: &pack::Index) {
        if self.seen.remove(p) {
            for m in &ix.manifests {
                if let Some(v) = self.at.get_mut(&(m.dataset, m.generation)) {
                    v.retain(|q| q != p);
                    if v.is_empty() {
                        self.at.remove(&(m.dataset, m.generation));
                    }
                }
            }
        }
    }
}

/// The one [`ManifestDir`] of the volume at `root` in this process, while
/// any volume object on it lives.
fn manifest_dir_for(root: &Path) -> Arc<Mutex<ManifestDir>> {
    static DIRS: crate::durable::Roots<Mutex<ManifestDir>> = std::sync::OnceLock::new();
    crate::durable::shared_for(&DIRS, root, |_| Mutex::default())
}

fn label_field(label: &str, key: &str) -> Option<String> {
    label.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ').map(str::to_string))
}

/// A temp name beside `path` that no other attempt uses.
fn tmp_path(path: &Path) -> PathBuf {
    let stem = path.file_name().and_then(|n| n.to_str()).unwrap_or("object");
    path.with_file_name(format!(".{stem}.{}.tmp", ChunkId::random().to_hex()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    File::open(path.parent().expect("volume paths have a parent"))?.sync_all()
}

/// Move `tmp` to `path` unless `path` exists. Returns false (and removes
/// `tmp`) when it exists: the object already there is left untouched.
fn publish(tmp: &Path, path: &Path) -> std::io::Result<bool> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    let exists = |e: &std::io::Error| e.kind() == ErrorKind::AlreadyExists;
    match renameat_with(CWD, tmp, CWD, path, RenameFlags::NOREPLACE) {
        Ok(()) => return Ok(true),
        Err(rustix::io::Errno::EXIST) => {
            let _ = fs::remove_file(tmp);
            return Ok(false);
        }
        // A filesystem without RENAME_NOREPLACE: a hard link is as exclusive.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {}
        Err(e) => return Err(e.into()),
    }
    let linked = fs::hard_link(tmp, path);
    let _ = fs::remove_file(tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if exists(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let v = LocalVolume::create("t", &dir.path().join("vol")).unwrap();
        crate::conformance::run(&v);
    }

    /// A volume an earlier Custos made (layout 2: a directory per dataset)
    /// stays in its layout and passes the same suite.
    #[test]
    fn conformance_suite_on_layout_2() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        for i in 0..=255u8 {
            fs::create_dir_all(root.join("chunks").join(format!("{i:02x}"))).unwrap();
        }
        fs::create_dir_all(root.join("manifests")).unwrap();
        fs::write(root.join(LABEL), "custos-volume 2\nvault 00ff\nname t\n").unwrap();
        let v = LocalVolume::open("t", &root).unwrap();
        assert_eq!(v.owner(), Some("00ff"));
        crate::conformance::run(&v);
        let ds = DatasetId([7; 16]);
        v.put_manifest(&ds, 3, b"m").unwrap();
        assert_eq!(v.manifest_path(&ds, 3), root.join("manifests").join(ds.to_hex()).join(format!("{:016x}", 3)));
        assert!(v.manifest_path(&ds, 3).is_file());
    }

    /// Layouts 3 and 4 keep manifests in the 256 fan-out directories: no
    /// directory per dataset, whatever the number of datasets; a listing
    /// finds them, their temp files, and nothing misnamed.
    #[test]
    fn manifests_share_fan_out_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        let v = LocalVolume::create_owned("t", &root, "vault-a").unwrap();
        assert!(fs::read_to_string(root.join(LABEL)).unwrap().starts_with("custos-volume 4\n"));
        let dirs_before = fs::read_dir(root.join("manifests")).unwrap().count();
        assert_eq!(dirs_before, 256);
        for i in 0..40u8 {
            let ds = DatasetId([i.wrapping_mul(37); 16]);
            v.put_manifest_deferred(&ds, 1, b"m").unwrap();
            v.put_manifest(&ds, 2, b"n").unwrap();
            assert_eq!(v.manifest_path(&ds, 2).parent().unwrap().parent().unwrap(), root.join("manifests"));
        }
        assert_eq!(fs::read_dir(root.join("manifests")).unwrap().count(), 256);
        // A mirror's attached side reads its layout from its label.
        let attached = LocalVolume::attach("t", &root);
        assert_eq!(attached.read_manifest(&DatasetId([37; 16]), 2).unwrap(), b"n");
        // Misnamed files are not manifests: a wrong fan-out, a short
        // generation, a stray name.
        let fan = root.join("manifests").join("00");
        fs::write(fan.join(format!("{}.{:016x}", DatasetId([1; 16]).to_hex(), 1)), b"x").unwrap();
        fs::write(fan.join(format!("{}.{:x}", DatasetId([0; 16]).to_hex(), 1)), b"x").unwrap();
        fs::write(fan.join("notes.txt"), b"x").unwrap();
        fs::write(fan.join(format!(".{}.{:016x}.abc.tmp", DatasetId([0; 16]).to_hex(), 1)), b"x").unwrap();
        let listed = v.list().unwrap();
        let manifests = listed.iter().filter(|l| matches!(l.name, crate::ObjectName::Manifest(..))).count();
        let temps = listed.iter().filter(|l| matches!(l.name, crate::ObjectName::Temp(..))).count();
        assert_eq!((manifests, temps), (80, 1));
        // A copy without the empty fan-out directories (a drill's clone)
        // makes them again on first write.
        let ds = DatasetId([0xab; 16]);
        fs::remove_dir_all(root.join("manifests").join("ab")).unwrap();
        v.put_manifest_deferred(&ds, 1, b"m").unwrap();
        fs::remove_dir_all(root.join("manifests").join("ab")).unwrap();
        v.put_manifest(&ds, 1, b"m").unwrap();
        assert_eq!(v.read_manifest(&ds, 1).unwrap(), b"m");
    }

    #[test]
    fn fail_open_missing_or_unlabelled() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(LocalVolume::open("t", &dir.path().join("gone")), Err(StoreError::Unreachable { .. })));
        assert!(matches!(LocalVolume::open("t", dir.path()), Err(StoreError::NotAVolume { .. })));
        LocalVolume::create("t", &dir.path().join("v")).unwrap();
        LocalVolume::open("t", &dir.path().join("v")).unwrap();
        // Adopting an existing volume keeps it.
        LocalVolume::create("t", &dir.path().join("v")).unwrap();
        // A label names its vault; another vault cannot adopt the volume.
        let owned = dir.path().join("owned");
        LocalVolume::create_owned("o", &owned, "vault-a").unwrap();
        assert_eq!(LocalVolume::open("o", &owned).unwrap().owner(), Some("vault-a"));
        LocalVolume::create_owned("o", &owned, "vault-a").unwrap();
        let e = LocalVolume::create_owned("o", &owned, "vault-b").err().unwrap();
        assert!(matches!(e, StoreError::OtherVault { .. }), "{e}");
        assert!(e.to_string().contains("another vault (vault-a)") && e.to_string().contains("volume o "), "{e}");
    }

    #[test]
    fn fail_volume_removed_under_us() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("v");
        let v = LocalVolume::create("t", &root).unwrap();
        fs::remove_dir_all(&root).unwrap();
        let e = v.read_chunk(&ChunkId([1; 16]), &mut ChunkBuf::new(16), 1 << 20).unwrap_err();
        assert!(matches!(e, StoreError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("not reachable"));
        assert!(matches!(v.put_chunk(&ChunkId([1; 16]), b"x"), Err(StoreError::Unreachable { .. })));
    }

    /// A copy of a volume without its empty fan-out directories (a drill's
    /// clone) takes chunks as the volume did; one without `chunks` at all
    /// does not get a new one.
    #[test]
    fn a_missing_fan_out_directory_is_made_on_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("v");
        let v = LocalVolume::create("t", &root).unwrap();
        fs::remove_dir(root.join("chunks").join("01")).unwrap();
        v.put_chunk(&ChunkId([1; 16]), b"sealed bytes").unwrap();
        v.sync().unwrap();
        let mut buf = ChunkBuf::new(64);
        let n = v.read_chunk(&ChunkId([1; 16]), &mut buf, 1 << 20).unwrap();
        assert_eq!(buf.slice(n), b"sealed bytes");
        fs::remove_dir_all(root.join("chunks")).unwrap();
        assert!(v.put_chunk(&ChunkId([2; 16]), b"x").is_err());
        assert!(!root.join("chunks").exists());
    }

    /// A pack is one file with its index at the end; deleting its last
    /// live entry removes it and its dead list; a damaged index makes its
    /// chunks read as missing, naming the pack, and lists none of them.
    #[test]
    fn a_pack_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("v");
        let v = LocalVolume::create("t", &root).unwrap();
        let p = crate::Packing::start(&v).unwrap();
        let ids: Vec<ChunkId> = (0..3).map(|_| p.new_chunk_id()).collect();
        for id in &ids {
            p.put_chunk(id, &[7u8; 1000]).unwrap();
        }
        p.finish().unwrap();
        let path = v.pack_path(&pack::pack_of(&ids[0]));
        assert_eq!(fs::metadata(&path).unwrap().len(), 3000 + 3 * 28 + 16);
        assert_eq!(
            fs::read_dir(root.join("chunks"))
                .unwrap()
                .flatten()
                .map(|d| fs::read_dir(d.path()).unwrap().count())
                .sum::<usize>(),
            0
        );
        v.delete_chunk(&ids[0]).unwrap();
        assert_eq!(fs::read(dead_path(&path)).unwrap(), pack::entry_number(&ids[0]).to_be_bytes());
        // Damage the index: a fresh reader (no cache) finds nothing there.
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.len() - 16 - 28 + 17;
        bytes[at] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let fresh = LocalVolume::open("t", &root).unwrap();
        let e = fresh.read_chunk(&ids[1], &mut ChunkBuf::new(8), 1 << 20).unwrap_err();
        assert!(matches!(e, StoreError::Missing { .. }) && e.to_string().contains("index of pack"), "{e}");
        assert!(fresh.list().unwrap().iter().all(|l| !matches!(l.name, crate::ObjectName::Chunk(_))));
        assert!(!fresh.has_chunk(&ids[1]).unwrap());
        bytes[at] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let fresh = LocalVolume::open("t", &root).unwrap();
        fresh.delete_chunk(&ids[1]).unwrap();
        fresh.delete_chunk(&ids[2]).unwrap();
        assert!(!path.exists() && !dead_path(&path).exists(), "the last entry takes the pack with it");
        // A layout 2 volume makes no packs.
        let old = dir.path().join("old");
        fs::create_dir_all(old.join("chunks")).unwrap();
        fs::write(old.join(LABEL), "custos-volume 2\nvault 00ff\nname t\n").unwrap();
        assert!(LocalVolume::open("t", &old).unwrap().start_pack().unwrap().is_none());
    }

    /// Layout 4 (ADR 0035): a batch's manifest goes into its pack when one
    /// of its chunks is there; a reader that never saw the pack (another
    /// process) finds it, a listing shows it, and it goes with the pack's
    /// last chunk. One anchored elsewhere is a file of its own. Two
    /// writers of one generation each leave one: a reader takes the one
    /// its caller accepts, and the loser deletes only its own.
    #[test]
    fn manifests_go_beside_their_chunks_in_a_pack() {
        use crate::{ObjectName, Placed};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("v");
        let (a, b) = (DatasetId([1; 16]), DatasetId([2; 16]));
        let chunk = {
            let v = LocalVolume::create("t", &root).unwrap();
            let p = crate::Packing::start(&v).unwrap();
            let chunk = p.new_chunk_id();
            p.put_chunk(&chunk, b"sealed chunk").unwrap();
            assert_eq!(
                p.put_manifest_beside(&a, 1, b"manifest a1", &chunk).unwrap(),
                Placed::Pack(pack::pack_of(&chunk))
            );
            let elsewhere = ChunkId([9; 16]);
            assert_eq!(p.put_manifest_beside(&b, 1, b"manifest b1", &elsewhere).unwrap(), Placed::Own);
            p.finish().unwrap();
            v.sync().unwrap();
            assert_eq!(v.read_manifest(&a, 1).unwrap(), b"manifest a1");
            assert!(!v.manifest_path(&a, 1).exists() && v.manifest_path(&b, 1).is_file());
            chunk
        };
        let pack_path = LocalVolume::attach("t", &root).pack_path(&pack::pack_of(&chunk));
        let tail = fs::read(&pack_path).unwrap();
        assert_eq!(tail[tail.len() - 4], pack::VERSION_2);
        // Another process: the directory is built from the packs' indexes.
        let v = LocalVolume::open("t", &root).unwrap();
        assert_eq!(v.read_manifest(&a, 1).unwrap(), b"manifest a1");
        assert!(matches!(v.read_manifest(&a, 2), Err(StoreError::Missing { .. })));
        let listed: Vec<_> = v
            .list()
            .unwrap()
            .into_iter()
            .filter_map(|l| match l.name {
                ObjectName::Manifest(d, g) => Some((d, g, l.len)),
                _ => None,
            })
            .collect();
        assert!(listed.contains(&(a, 1, 11)) && listed.contains(&(b, 1, 11)), "{listed:?}");
        // A second writer of the same generation, in a pack of its own.
        let p = crate::Packing::start(&v).unwrap();
        let c2 = p.new_chunk_id();
        p.put_chunk(&c2, b"other chunk").unwrap();
        let theirs = p.put_manifest_beside(&a, 1, b"manifest A1", &c2).unwrap();
        p.finish().unwrap();
        assert_eq!(v.read_manifest_where(&a, 1, &|m| m == b"manifest A1").unwrap(), b"manifest A1");
        assert_eq!(v.read_manifest_where(&a, 1, &|m| m == b"manifest a1").unwrap(), b"manifest a1");
        v.delete_placed_manifest(&a, 1, theirs).unwrap();
        assert_eq!(
            v.read_manifest_where(&a, 1, &|m| m == b"manifest A1").unwrap(),
            b"manifest a1",
            "only its own went"
        );
        // The manifest goes with the last chunk of its pack.
        v.delete_chunk(&chunk).unwrap();
        assert!(!pack_path.exists());
        assert!(matches!(v.read_manifest(&a, 1), Err(StoreError::Missing { .. })));
        assert_eq!(v.read_manifest(&b, 1).unwrap(), b"manifest b1");
        // A manifest its writer gave up before the pack was finished is
        // left out of it.
        let p = crate::Packing::start(&v).unwrap();
        let c3 = p.new_chunk_id();
        p.put_chunk(&c3, b"third").unwrap();
        let given_up = p.put_manifest_beside(&a, 5, b"manifest a5", &c3).unwrap();
        let twice = p.put_manifest_beside(&a, 5, b"manifest a5 again", &c3).unwrap_err();
        assert!(matches!(twice, StoreError::Exists { .. }), "one manifest of a generation per pack: {twice}");
        p.delete_placed_manifest(&a, 5, given_up).unwrap();
        p.finish().unwrap();
        assert!(matches!(v.read_manifest(&a, 5), Err(StoreError::Missing { .. })));
        // Layout 3 keeps manifests out of its packs (builds that read it
        // would not find them).
        let old = dir.path().join("old");
        drop(LocalVolume::create("t", &old).unwrap());
        fs::write(old.join(LABEL), "custos-volume 3\n").unwrap();
        let o = LocalVolume::open("t", &old).unwrap();
        let p = crate::Packing::start(&o).unwrap();
        let id = p.new_chunk_id();
        p.put_chunk(&id, b"sealed").unwrap();
        assert_eq!(p.put_manifest_beside(&a, 1, b"m", &id).unwrap(), Placed::Own);
        p.finish().unwrap();
        let bytes = fs::read(o.pack_path(&pack::pack_of(&id))).unwrap();
        assert_eq!(bytes[bytes.len() - 4], pack::VERSION);
        assert!(o.manifest_path(&a, 1).is_file());
    }

    /// Two deleters taking a pack's last two entries at the same moment:
    /// whichever reads the dead list last sees both, so the pack goes.
    #[test]
    fn the_last_entries_deleted_together_take_the_pack() {
        let dir = tempfile::tempdir().unwrap();
        let v = std::sync::Arc::new(LocalVolume::create("t", &dir.path().join("v")).unwrap());
        for _ in 0..300 {
            let p = crate::Packing::start(v.as_ref()).unwrap();
            let ids = [p.new_chunk_id(), p.new_chunk_id()];
            for id in &ids {
                p.put_chunk(id, b"sealed").unwrap();
            }
            p.finish().unwrap();
            let go = std::sync::Arc::new(std::sync::Barrier::new(2));
            let threads: Vec<_> = ids
                .iter()
                .map(|id| {
                    let (v, go, id) = (v.clone(), go.clone(), *id);
                    std::thread::spawn(move || {
                        // A fresh handle each, as two processes would be.
                        let mine = LocalVolume::open("t", &v.root).unwrap();
                        go.wait();
                        mine.delete_chunk(&id).unwrap();
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let path = v.pack_path(&pack::pack_of(&ids[0]));
            assert!(!path.exists() && !dead_path(&path).exists(), "a pack whose entries all died stayed");
        }
    }

    #[test]
    fn list_while_objects_come_and_go() {
        // A listing races writers moving temp files into place and deleters
        // removing objects: what vanishes mid-listing is left out, never an
        // error (gc beside a busy writer once failed on exactly this).
        let dir = tempfile::tempdir().unwrap();
        let v = std::sync::Arc::new(LocalVolume::create("t", &dir.path().join("v")).unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let (v, stop) = (v.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u8;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let ids: Vec<ChunkId> =
                        (0..64u8).map(|i| ChunkId([i, n, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])).collect();
                    for id in &ids {
                        v.put_chunk(id, b"sealed bytes").unwrap();
                    }
                    for id in &ids {
                        v.delete_chunk(id).unwrap();
                    }
                    n = n.wrapping_add(1);
                }
            })
        };
        for _ in 0..400 {
            v.list().expect("a listing beside writers and deleters succeeds");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        churn.join().unwrap();
    }
}

//! A volume in a local directory. Layout (docs/format.md, "Volume layout"):
//!
//! ```text
//! CUSTOS-VOLUME                       label: format version and volume id
//! chunks/<2 hex>/<32 hex>             sealed chunk objects, fanned out by first byte
//! manifests/<32 hex dataset id>/<16 hex generation>
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use custos_model::{ChunkId, DatasetId};
use rustix::fs::OFlags;

use crate::{ChunkBuf, Kept, Result, StoreError, Volume, ALIGN};

const LABEL: &str = "CUSTOS-VOLUME";
/// The first label, which named no owner; still read.
const LABEL_V1: &str = "custos-volume 1\n";
const LABEL_V2: &str = "custos-volume 2\n";

/// Chunk writes use direct I/O where the filesystem allows it: the
/// page-aligned body of each object goes straight from the caller's buffer
/// to the device, the unaligned tail through the page cache. Large writes
/// then neither fill nor wait on the page cache, and the final `syncfs` has
/// only metadata and tails left to flush. Reads use the page cache.
pub struct LocalVolume {
    name: String,
    root: PathBuf,
    /// Cleared the first time the filesystem refuses O_DIRECT (tmpfs does).
    direct: AtomicBool,
    /// The vault the label names (none on a first-format label).
    owner: Option<String>,
}

impl LocalVolume {
    /// Create (or adopt, if it is already one) a volume directory, with no
    /// owner in its label (for tests and tools; vaults use
    /// [`LocalVolume::create_owned`]).
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
        for i in 0..=255u8 {
            let d = root.join("chunks").join(format!("{i:02x}"));
            fs::create_dir_all(&d).map_err(|e| v.err(&d, e))?;
        }
        fs::create_dir_all(root.join("manifests")).map_err(|e| v.err(root, e))?;
        let text = match owner {
            Some(o) => format!("{LABEL_V2}vault {o}\nname {name}\n"),
            None => LABEL_V1.to_string(),
        };
        v.write_durable(&label, text.as_bytes())?;
        Ok(Self { owner: owner.map(String::from), ..v })
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
            Some(owner) => Ok(Self { owner, ..v }),
            None => Err(StoreError::NotAVolume { path: root.into() }),
        }
    }

    fn new(name: &str, root: &Path) -> Self {
        Self { name: format!("volume {name}"), root: root.into(), direct: AtomicBool::new(true), owner: None }
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

    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let h = id.to_hex();
        self.root.join("chunks").join(&h[..2]).join(h)
    }

    fn manifest_path(&self, ds: &DatasetId, generation: u64) -> PathBuf {
        self.root.join("manifests").join(ds.to_hex()).join(format!("{generation:016x}"))
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

impl Volume for LocalVolume {
    fn describe(&self) -> String {
        format!("{} ({})", self.name, self.root.display())
    }

    fn put_chunk(&self, id: &ChunkId, sealed: &[u8]) -> Result<()> {
        // Written under a name of this attempt's own, then moved into place
        // without replacing: a killed writer leaves at most a temp file
        // (which `gc` removes), never a short chunk under the chunk's name.
        let path = self.chunk_path(id);
        let tmp = tmp_path(&path);
        let body = sealed.len() / ALIGN * ALIGN;
        let aligned = (sealed.as_ptr() as usize).is_multiple_of(ALIGN) && body > 0;
        let opened = match self.open_chunk(&tmp, true, aligned) {
            // A fan-out directory a copy of the volume left out (a drill's
            // clone copies no empty ones): made here, once. Only the fan-out
            // level: a volume whose `chunks` is gone stays an error.
            Err(e) if e.kind() == ErrorKind::NotFound => match fs::create_dir(path.parent().expect("fan-out dir")) {
                Err(e) if e.kind() != ErrorKind::AlreadyExists => Err(e),
                _ => self.open_chunk(&tmp, true, aligned),
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
            drop(f);
            publish(&tmp, &path)
        })();
        match written {
            Ok(true) => Ok(()),
            Ok(false) => Err(StoreError::Exists { volume: self.name.clone(), what: format!("chunk {id}"), path }),
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
        let (mut f, mut direct) = self.open_chunk(&path, false, false).map_err(missing)?;
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
        let p = self.chunk_path(id);
        match fs::symlink_metadata(&p) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound && self.root.exists() => Ok(false),
            Err(e) => Err(self.err(&p, e)),
        }
    }

    fn chunk_len(&self, id: &ChunkId) -> Result<Option<u64>> {
        let p = self.chunk_path(id);
        match fs::symlink_metadata(&p) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound && self.root.exists() => Ok(None),
            Err(e) => Err(self.err(&p, e)),
        }
    }

    fn delete_chunk(&self, id: &ChunkId) -> Result<()> {
        let p = self.chunk_path(id);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(self.err(&p, e)),
            _ => Ok(()),
        }
    }

    fn sync(&self) -> Result<()> {
        let dir = File::open(&self.root).map_err(|e| self.err(&self.root, e))?;
        rustix::fs::syncfs(&dir).map_err(|e| self.err(&self.root, e.into()))
    }

    fn put_manifest(&self, ds: &DatasetId, generation: u64, sealed: &[u8]) -> Result<()> {
        let path = self.manifest_path(ds, generation);
        let dir = path.parent().expect("manifest dir");
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(|e| self.err(dir, e))?;
            File::open(dir.parent().expect("manifests dir"))
                .and_then(|d| d.sync_all())
                .map_err(|e| self.err(dir, e))?;
        }
        self.create_durable(&path, sealed, || format!("the manifest of generation {generation} of dataset id {ds}"))
    }

    fn put_manifest_deferred(&self, ds: &DatasetId, generation: u64, sealed: &[u8]) -> Result<()> {
        // As `put_chunk` writes a chunk: a temp file, moved into place
        // without replacing; `sync` makes the file, its name and its
        // directory durable together.
        let path = self.manifest_path(ds, generation);
        let dir = path.parent().expect("manifest dir");
        if !dir.exists() {
            match fs::create_dir(dir) {
                Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(self.err(dir, e)),
                _ => {}
            }
        }
        let tmp = tmp_path(&path);
        let written = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(sealed)?;
            drop(f);
            publish(&tmp, &path)
        })();
        match written {
            Ok(true) => Ok(()),
            Ok(false) => Err(StoreError::Exists {
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
        let mut buf = Vec::new();
        self.read_file(
            &self.manifest_path(ds, generation),
            || format!("the manifest of generation {generation} of dataset id {ds}"),
            &mut buf,
        )?;
        Ok(buf)
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
        for (ds, m) in entries(&self.root.join("manifests"))? {
            let Some(id) = DatasetId::from_hex(&ds).filter(|_| m.is_dir()) else { continue };
            for (name, m) in entries(&self.root.join("manifests").join(&ds))? {
                if name.ends_with(".tmp") {
                    out.push(listed(ObjectName::Temp(format!("manifests/{ds}/{name}")), &m));
                } else if let Ok(g) = u64::from_str_radix(&name, 16) {
                    if name.len() == 16 && m.is_file() {
                        out.push(listed(ObjectName::Manifest(id, g), &m));
                    }
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
        let p = self.manifest_path(ds, generation);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(self.err(&p, e)),
            _ => Ok(()),
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

/// Make everything written to the filesystem holding `dir` durable (one
/// `syncfs`).
pub fn sync_filesystem(dir: &Path) -> std::io::Result<()> {
    let d = File::open(dir)?;
    rustix::fs::syncfs(&d).map_err(Into::into)
}

/// The value of a `key value` line of a label.
/// Read a volume label: `None` when it is not one, else the vault that
/// owns the volume (`Some(None)` for a version 1 label, which names none).
pub(crate) fn parse_label(bytes: &[u8]) -> Option<Option<String>> {
    let s = std::str::from_utf8(bytes).ok()?;
    if s == LABEL_V1 {
        return Some(None);
    }
    if s.starts_with(LABEL_V2) {
        return label_field(s, "vault").map(Some);
    }
    None
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

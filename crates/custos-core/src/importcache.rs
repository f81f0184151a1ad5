//! What the last import of a directory found each file to be (ADR 0036):
//! its size, times, inode and device, and the manifest of the generation it
//! matched. `ds import --replace` passes over a file whose metadata is as
//! recorded while the dataset's current generation is still that one, as
//! restic, borg and kopia do, instead of reading and fingerprinting it.
//!
//! A hint kept in the vault directory, never the catalog: a missing,
//! unreadable or malformed cache (or line) only means files are read.
//!
//! ```text
//! custos-import-cache 1
//! <dataset name> \t <size> \t <mtime ns> \t <ctime ns> \t <inode> \t <device> \t <manifest SHA-256 hex>
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use custos_model::DatasetName;

const HEADER: &str = "custos-import-cache 1";

/// A file's metadata as an import saw it before reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
}

impl Stamp {
    pub(crate) fn of(m: &std::fs::Metadata) -> Self {
        let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
        Self {
            size: m.len(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        }
    }

    /// Changed within `RACY_NS` before `now_ns`: a write in the same
    /// clock tick as the look could leave the times as they were, so such
    /// a file is not recorded (it is read again next time).
    fn racy(&self, now_ns: i128) -> bool {
        self.mtime_ns.max(self.ctime_ns) > now_ns - RACY_NS
    }
}

/// How recent a change must be for its file not to be recorded.
const RACY_NS: i128 = 2_000_000_000;

/// The cache of one directory imported under one prefix.
pub(crate) struct ImportCache {
    path: PathBuf,
    entries: HashMap<DatasetName, (Stamp, [u8; 32])>,
}

impl ImportCache {
    /// The cache of `dir` imported under `prefix`, in the vault directory
    /// `vault` (empty when there is none or it cannot be read).
    pub(crate) fn load(vault: &Path, dir: &Path, prefix: &DatasetName) -> Self {
        let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let mut key = abs.as_os_str().as_encoded_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(prefix.as_str().as_bytes());
        let name = hex::encode(&custos_store::format::object_hash(&key)[..16]);
        let path = vault.join("cache").join("import").join(format!("{name}.tsv"));
        let mut entries = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            let mut lines = text.lines();
            if lines.next() == Some(HEADER) {
                entries.extend(lines.filter_map(parse_line));
            }
        }
        Self { path, entries }
    }

    /// Whether `name`'s file, as `stamp` says it is now, is what the cache
    /// recorded for the generation whose manifest has `hash`.
    pub(crate) fn unchanged(&self, name: &DatasetName, stamp: &Stamp, hash: &[u8; 32]) -> bool {
        self.entries.get(name).is_some_and(|(s, h)| s == stamp && h == hash)
    }

    /// Replace the cache by `entries` (name, the file's metadata before it
    /// was read, the manifest hash of the generation it now matches),
    /// leaving out files changed too recently to be told apart. Written
    /// atomically; a failure leaves the old cache or none, which is only
    /// slower.
    pub(crate) fn store(
        self,
        entries: impl IntoIterator<Item = (DatasetName, Stamp, [u8; 32])>,
        now: std::time::SystemTime,
    ) {
        let now_ns = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
        let mut out = String::from(HEADER);
        out.push('\n');
        for (name, s, hash) in entries {
            if s.racy(now_ns) {
                continue;
            }
            out.push_str(&format!(
                "{name}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                s.size,
                s.mtime_ns,
                s.ctime_ns,
                s.ino,
                s.dev,
                hex::encode(hash)
            ));
        }
        let Some(dir) = self.path.parent() else { return };
        let tmp = self.path.with_extension(format!("{}.tmp", std::process::id()));
        // Readable by the vault's owner alone, as the catalog is: it names
        // datasets and the files they came from.
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)
            })
            .and_then(|mut f| f.write_all(out.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

fn parse_line(line: &str) -> Option<(DatasetName, (Stamp, [u8; 32]))> {
    let f: Vec<&str> = line.split('\t').collect();
    let [name, size, mtime, ctime, ino, dev, hash] = f.as_slice() else { return None };
    let stamp = Stamp {
        size: size.parse().ok()?,
        mtime_ns: mtime.parse().ok()?,
        ctime_ns: ctime.parse().ok()?,
        ino: ino.parse().ok()?,
        dev: dev.parse().ok()?,
    };
    let hash: [u8; 32] = hex::decode(hash).ok()?.try_into().ok()?;
    Some((DatasetName::new(*name).ok()?, (stamp, hash)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_reads_back_and_passes_over_what_it_cannot_trust() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let stamp = Stamp::of(&std::fs::metadata(&f).unwrap());
        let name = DatasetName::new("P.F").unwrap();
        let other = DatasetName::new("P.G").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(10);
        let c = ImportCache::load(dir.path(), dir.path(), &name);
        assert!(!c.unchanged(&name, &stamp, &[1; 32]));
        c.store([(name.clone(), stamp, [1; 32]), (other.clone(), stamp, [2; 32])], later);
        let c = ImportCache::load(dir.path(), dir.path(), &name);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&c.path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(c.unchanged(&name, &stamp, &[1; 32]));
        assert!(!c.unchanged(&name, &stamp, &[2; 32]), "another generation");
        assert!(!c.unchanged(&name, &Stamp { ctime_ns: stamp.ctime_ns + 1, ..stamp }, &[1; 32]), "changed");
        assert!(c.unchanged(&other, &stamp, &[2; 32]));
        // Another prefix or directory has a cache of its own.
        assert!(!ImportCache::load(dir.path(), dir.path(), &other).unchanged(&name, &stamp, &[1; 32]));
        // A file changed just now is not recorded.
        let c = ImportCache::load(dir.path(), dir.path(), &name);
        c.store([(name.clone(), stamp, [1; 32])], std::time::SystemTime::now());
        assert!(!ImportCache::load(dir.path(), dir.path(), &name).unchanged(&name, &stamp, &[1; 32]));
        // A damaged line, or a cache of another version, is passed over.
        let c = ImportCache::load(dir.path(), dir.path(), &name);
        let path = c.path.clone();
        c.store([(name.clone(), stamp, [1; 32]), (other.clone(), stamp, [2; 32])], later);
        let text = std::fs::read_to_string(&path).unwrap().replacen("\t", "\tx", 1);
        std::fs::write(&path, &text).unwrap();
        let c = ImportCache::load(dir.path(), dir.path(), &name);
        assert!(!c.unchanged(&name, &stamp, &[1; 32]) && c.unchanged(&other, &stamp, &[2; 32]));
        std::fs::write(&path, text.replace("cache 1", "cache 9")).unwrap();
        assert!(!ImportCache::load(dir.path(), dir.path(), &name).unchanged(&other, &stamp, &[2; 32]));
    }
}

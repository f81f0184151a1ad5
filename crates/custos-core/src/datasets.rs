//! Datasets: the access method. Plaintext in, plaintext out; keys and
//! ciphertext stay inside.
//!
//! A write seals the input into chunks on the dataset's volume, makes them
//! durable, writes the sealed manifest durably, and only then commits the
//! generation in one repository transaction. A failure or a crash before the
//! commit leaves the previous generation current and untouched; the chunks
//! written so far are deleted (or, after a crash, are unreferenced).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use custos_crypto::DataKey;
use custos_model::{
    ChunkId, ChunkRef, DatasetId, DatasetName, DatasetRecord, GenerationRecord, KeyLabel, KeyRecord, KeyState, KeyUse,
    PolicyTarget, Purpose, VolumeName, VolumeRecord,
};
use custos_repo::{Garbage, GenerationCommit, RepoError};
use custos_store::format::{object_hash, Manifest};
use custos_store::{StoreError, Volume};
use jiff::Timestamp;
use serde::Serialize;

use crate::keys::NewKey;
use crate::pipeline::{open_stream, seal_stream, OpenError, OpenJob, SealError, SealJob};
use crate::{Error, Open, Result, Vault, VaultState};

/// Overrides for a write; by default the dataset's policy decides.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub key: Option<KeyLabel>,
    pub volume: Option<VolumeName>,
    /// Seal every chunk afresh, sharing none with the previous generation:
    /// a restore must not trust a stored chunk it has not verified.
    pub fresh: bool,
}

/// What a write did.
#[derive(Debug, Clone, Serialize)]
pub struct PutReport {
    pub dataset: DatasetName,
    pub generation: u64,
    pub size: u64,
    pub chunks: u64,
    /// Chunks sealed and stored by this write (the rest were unchanged and shared).
    pub new_chunks: u64,
    /// Bytes those new chunks take on the volume, sealed and compressed.
    pub stored: u64,
    pub key_label: KeyLabel,
    pub volume: VolumeName,
    /// The key was created for this dataset by its policy's template.
    pub created_key: bool,
    /// The input equalled the current generation chunk for chunk, so nothing
    /// was committed and `generation` is the existing one.
    pub unchanged: bool,
}

/// What a read did.
#[derive(Debug, Clone, Serialize)]
pub struct GetReport {
    pub dataset: DatasetName,
    pub generation: u64,
    pub bytes: u64,
}

/// A dataset with its key and volume, for `ds info`.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetInfo {
    #[serde(flatten)]
    pub record: DatasetRecord,
    pub key_state: KeyState,
    pub volume: VolumeRecord,
}

impl<S: VaultState> Vault<S> {
    pub fn datasets(&self) -> Result<Vec<DatasetRecord>> {
        Ok(self.repo.datasets()?)
    }

    /// A page of the datasets matching `pattern`, in name order after
    /// `after` (`ds ls --limit N --after NAME`), read as [`Vault::keys_page`]
    /// reads keys.
    pub fn datasets_page(
        &self,
        pattern: Option<&custos_model::Pattern>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DatasetRecord>> {
        page(pattern, after, limit, |from, after, n| self.repo.datasets_from(from, after, n), |d| d.name.to_string())
    }

    pub fn dataset(&self, name: &DatasetName) -> Result<DatasetRecord> {
        self.repo.dataset(name)?.ok_or_else(|| Error::DatasetNotFound { name: name.clone() })
    }

    pub fn dataset_info(&self, name: &DatasetName) -> Result<DatasetInfo> {
        let record = self.dataset(name)?;
        let key_state = self.key_record(&record.current.key_label)?.state;
        let volume = self.volume_record(&record.current.volume)?;
        Ok(DatasetInfo { record, key_state, volume })
    }

    /// Remove a dataset and everything only it referenced, at once. Needs
    /// no key. Returns how many objects were deleted; when some could not
    /// be (the volume is unreachable or read-only), the dataset is gone from
    /// the catalog all the same, and the error names what is left in the
    /// trash for `custos gc`.
    pub fn remove_dataset(&self, name: &DatasetName) -> Result<u64> {
        self.dataset(name)?;
        let garbage = self.repo.remove_dataset(name)?;
        let (deleted, _, failed) = self.delete_claimed(&garbage);
        if let Some(first) = failed.first() {
            return Err(Error::LeftInTrash {
                what: format!("dataset {name} was removed from the catalog"),
                count: failed.len() as u64,
                first: first.clone(),
            });
        }
        Ok(deleted)
    }
}

/// Where a write goes and under which key; `new_key` is a template-made key
/// to be stored in the same transaction as the generation.
struct Target {
    volume: VolumeName,
    key: KeyRecord,
    new_key: Option<KeyRecord>,
}

impl Vault<Open> {
    fn resolve_target(
        &self,
        name: &DatasetName,
        existing: Option<&DatasetRecord>,
        opts: &PutOptions,
    ) -> Result<Target> {
        let policy = if existing.is_none() && (opts.key.is_none() || opts.volume.is_none()) {
            Some(self.policy_for(name)?.ok_or_else(|| Error::NoPolicy { dataset: name.clone() })?)
        } else {
            None
        };
        let volume = match (&opts.volume, existing, &policy) {
            (Some(v), _, _) => v.clone(),
            (None, Some(d), _) => d.current.volume.clone(),
            (None, None, Some(p)) => p.volume.clone(),
            (None, None, None) => unreachable!("a policy is required when nothing else names the volume"),
        };
        self.volume_record(&volume)?;
        let label = match (&opts.key, existing, &policy) {
            (Some(k), _, _) => Some(k.clone()),
            (None, Some(d), _) => Some(d.current.key_label.clone()),
            (None, None, Some(p)) => match &p.target {
                PolicyTarget::Key(k) => Some(k.clone()),
                PolicyTarget::Template { .. } => None,
            },
            (None, None, None) => unreachable!("a policy is required when nothing else names the key"),
        };
        match label {
            Some(label) => {
                let key = self.key_record(&label)?;
                if key.purpose != Purpose::Prim {
                    return Err(Error::KeyPurpose {
                        label,
                        state: key.state,
                        why: "it is a backup (BACK) key; datasets are sealed under primary (PRIM) keys",
                    });
                }
                Ok(Target { volume, key, new_key: None })
            }
            None => {
                let app = match policy.as_ref().map(|p| &p.target) {
                    Some(PolicyTarget::Template { app: Some(a) }) => a.clone(),
                    _ => name.hlq().to_string(),
                };
                let new =
                    NewKey { label: None, app: Some(app), purpose: Purpose::Prim, expires_at: None, activate: true };
                // The next label may be taken by a concurrent write between
                // reading the keystore and checking it: take the one after.
                for _ in 0..PLACE_ATTEMPTS {
                    match self.new_key_record(&new) {
                        Err(Error::Repo(RepoError::Exists { kind: "key", .. })) => continue,
                        made => {
                            let rec = made?;
                            return Ok(Target { volume, key: rec.clone(), new_key: Some(rec) });
                        }
                    }
                }
                Err(Error::Invalid {
                    what: "write",
                    why: format!(
                        "{name}: every label tried for its new key was taken by concurrent writes; run it again"
                    ),
                })
            }
        }
    }

    /// Write a new generation of a dataset from `input`.
    pub fn put(&self, name: &DatasetName, input: &mut dyn Read, opts: &PutOptions) -> Result<PutReport> {
        // Before any object of the volume is looked at (see `GenerationCommit::since`).
        let since = self.repo.deletion_seq()?;
        let existing = self.repo.dataset(name)?;
        let target = self.resolve_target(name, existing.as_ref(), opts)?;
        let key = self.unwrap_for(&target.key, KeyUse::Encrypt, name)?;
        let volume = self.open_volume(&target.volume)?;
        let chunk_size = self.chunk_size()?;
        let (dataset_id, previous) = match &existing {
            Some(d) => (d.id, d.current.generation),
            None => (DatasetId::random(), 0),
        };
        // Unchanged chunks can be shared with the previous generation when
        // it is on the same volume, under the same key, with the same chunking.
        let reusable: Vec<ChunkRef> = match &existing {
            Some(d)
                if !opts.fresh
                    && d.current.volume == target.volume
                    && d.current.key_label == target.key.label
                    && d.current.chunk_size == chunk_size =>
            {
                self.load_manifest(d, &key, volume.as_ref()).map(|m| m.chunks).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let job = SealJob {
            key: &key,
            dataset: dataset_id,
            volume: volume.as_ref(),
            chunk_size: chunk_size as usize,
            previous: &reusable,
            threads: self.threads,
            compress: self.compression()?,
        };
        let outcome = seal_stream(&job, input);
        let cleanup = |extra_manifest: Option<u64>| {
            for id in &outcome.written {
                let _ = volume.delete_chunk(id);
            }
            if let Some(g) = extra_manifest {
                let _ = volume.delete_manifest(&dataset_id, g);
            }
        };
        let chunks = match outcome.result {
            Ok(c) => c,
            Err(e) => {
                cleanup(None);
                return Err(match e {
                    SealError::Input(source) => Error::Input { dataset: name.clone(), source },
                    SealError::Store(e) => e.into(),
                    SealError::Format(e) => Error::Invalid { what: "chunk", why: e.to_string() },
                });
            }
        };
        let size: u64 = chunks.iter().map(|c| c.len as u64).sum();
        if outcome.written.is_empty() && !reusable.is_empty() && chunks == reusable {
            // Same content, key and volume: a new generation would add nothing.
            return Ok(PutReport {
                dataset: name.clone(),
                generation: previous,
                size,
                chunks: chunks.len() as u64,
                new_chunks: 0,
                stored: 0,
                key_label: target.key.label,
                volume: target.volume,
                created_key: false,
                unchanged: true,
            });
        }
        // Chunks listed but not written by this attempt: the commit checks
        // the catalog still holds them.
        let written: std::collections::HashSet<ChunkId> = outcome.written.iter().copied().collect();
        let reused: Vec<ChunkId> = chunks.iter().map(|c| c.id).filter(|id| !written.contains(id)).collect();
        let mut new_key = target.new_key.clone();
        let mut placed = None;
        let committed = (|| -> Result<(Garbage, u64, KeyLabel)> {
            if !outcome.written.is_empty() {
                volume.sync()?;
            }
            let created_at = Timestamp::now();
            for _ in 0..PLACE_ATTEMPTS {
                let label = new_key.as_ref().map_or(&target.key.label, |k| &k.label).clone();
                let (generation, sealed) =
                    place_manifest(volume.as_ref(), name, &dataset_id, previous + 1, |generation| {
                        Manifest {
                            dataset_id,
                            generation,
                            created_at,
                            chunk_size,
                            size,
                            name: name.to_string(),
                            key_label: label.to_string(),
                            key_kcv: target.key.kcv,
                            chunks: chunks.clone(),
                        }
                        .seal(&key)
                        .map_err(|e| Error::Invalid { what: "manifest", why: e.to_string() })
                    })?;
                placed = Some(generation);
                let commit = GenerationCommit {
                    dataset_id,
                    name: name.clone(),
                    previous,
                    generation: GenerationRecord {
                        generation,
                        volume: target.volume.clone(),
                        key_label: label.clone(),
                        size,
                        chunk_size,
                        chunk_count: chunks.len() as u64,
                        manifest_hash: object_hash(&sealed),
                        created_at,
                    },
                    chunks: chunks.iter().map(|c| c.id).collect(),
                    new_key: new_key.clone(),
                    reused: reused.clone(),
                    since,
                };
                match self.repo.commit_generation(&commit) {
                    Err(RepoError::Exists { kind: "key", .. }) if new_key.is_some() => {
                        // A concurrent write took this label for a key of its
                        // own: name ours anew (its manifest names the label).
                        let _ = volume.delete_manifest(&dataset_id, generation);
                        placed = None;
                        self.relabel_new_key(new_key.as_mut().expect("checked"))?;
                    }
                    r => return Ok((r?, generation, label)),
                }
            }
            Err(Error::Invalid {
                what: "write",
                why: format!("{name}: every label tried for its new key was taken by concurrent writes; run it again"),
            })
        })();
        let (_released, generation, key_label) = match committed {
            Ok(c) => c,
            Err(e) => {
                cleanup(placed);
                return Err(e);
            }
        };
        // The generation it replaced waits in the trash for `gc`, so readers
        // that opened it can finish.
        self.repo.record_key_use(&key_label)?;
        Ok(PutReport {
            dataset: name.clone(),
            generation,
            size,
            chunks: chunks.len() as u64,
            new_chunks: outcome.written.len() as u64,
            stored: outcome.stored,
            key_label,
            volume: target.volume,
            created_key: target.new_key.is_some(),
            unchanged: false,
        })
    }

    /// Read a dataset (or the byte range `start..end` of it) into `out`.
    /// A dataset migrated to tape is recalled first, and the read counts as
    /// a use for migration.
    pub fn get(&self, name: &DatasetName, out: &mut dyn Write, range: Option<(u64, u64)>) -> Result<GetReport> {
        self.recall(name)?;
        let report = self.read(name, out, range)?;
        self.repo.touch_dataset(&self.dataset(name)?.id)?;
        Ok(report)
    }

    fn read(&self, name: &DatasetName, out: &mut dyn Write, range: Option<(u64, u64)>) -> Result<GetReport> {
        let d = self.dataset(name)?;
        let rec = self.key_record(&d.current.key_label)?;
        let key = self.unwrap_for(&rec, KeyUse::Decrypt, name)?;
        let volume = self.open_volume(&d.current.volume)?;
        let manifest = self.load_manifest(&d, &key, volume.as_ref())?;
        let size = manifest.size;
        let (start, end) = range.unwrap_or((0, size));
        if start > end || end > size {
            return Err(Error::Range { dataset: name.clone(), start, end, size });
        }
        let job = OpenJob {
            key: &key,
            dataset: d.id,
            volume: volume.as_ref(),
            chunks: &manifest.chunks,
            chunk_size: manifest.chunk_size as u64,
            threads: self.threads,
        };
        open_stream(&job, start, end, out).map_err(|e| match e {
            OpenError::Chunk { index, id, problem } => Error::Chunk {
                dataset: name.clone(),
                generation: d.current.generation,
                index,
                id,
                volume: volume.describe(),
                problem,
            },
            OpenError::Store(e) => e.into(),
            OpenError::Output(source) => Error::Output { dataset: name.clone(), source },
        })?;
        out.flush().map_err(|source| Error::Output { dataset: name.clone(), source })?;
        self.repo.record_key_use(&rec.label)?;
        Ok(GetReport { dataset: name.clone(), generation: d.current.generation, bytes: end - start })
    }

    /// Read every chunk of a dataset and check it, writing nothing. Where
    /// the dataset is (tape included) and its last use stay as they were.
    pub fn verify(&self, name: &DatasetName) -> Result<GetReport> {
        self.read(name, &mut std::io::sink(), None)
    }

    /// Read, check against the catalog and open the current manifest.
    pub(crate) fn load_manifest(&self, d: &DatasetRecord, key: &DataKey, volume: &dyn Volume) -> Result<Manifest> {
        let g = &d.current;
        let m = open_manifest(volume, &d.name, &d.id, g.generation, &g.manifest_hash, key)?;
        if m.size != g.size || m.chunks.len() as u64 != g.chunk_count || m.name != d.name.as_str() {
            return Err(Error::Manifest {
                dataset: d.name.clone(),
                generation: g.generation,
                volume: volume.describe(),
                why: "disagrees with the catalog on size, chunk count or name".into(),
            });
        }
        Ok(m)
    }

    /// Import a directory tree: every regular file below `dir` becomes the
    /// dataset `PREFIX.<path qualifiers>`. All names are checked (valid and
    /// distinct, and not existing datasets unless `replace`) before anything
    /// is written.
    pub fn import(
        &self,
        dir: &Path,
        prefix: &DatasetName,
        replace: bool,
        mut progress: impl FnMut(&PutReport),
    ) -> Result<Vec<PutReport>> {
        let mut files = Vec::new();
        walk(dir, &mut files).map_err(|source| Error::VaultIo { path: dir.into(), source })?;
        files.sort();
        let mut planned: Vec<(DatasetName, PathBuf)> = Vec::with_capacity(files.len());
        let mut seen = std::collections::HashMap::new();
        for f in files {
            let rel = f.strip_prefix(dir).expect("walked below dir");
            let name = import_name(prefix, rel)?;
            if let Some(other) = seen.insert(name.clone(), f.clone()) {
                return Err(Error::Invalid {
                    what: "import",
                    why: format!(
                        "{} and {} would both become dataset {name}; rename one",
                        other.display(),
                        f.display()
                    ),
                });
            }
            if !replace && self.repo.dataset(&name)?.is_some() {
                return Err(Error::Invalid {
                    what: "import",
                    why: format!(
                        "dataset {name} (from {}) already exists; pass --replace to write new generations",
                        f.display()
                    ),
                });
            }
            planned.push((name, f));
        }
        let mut reports = Vec::with_capacity(planned.len());
        for (name, path) in planned {
            let mut file =
                std::fs::File::open(&path).map_err(|source| Error::Input { dataset: name.clone(), source })?;
            let r = self.put(&name, &mut file, &PutOptions::default())?;
            progress(&r);
            reports.push(r);
        }
        Ok(reports)
    }
}

/// How many generation numbers (and key labels) a write tries past those
/// that interrupted or concurrent writes have taken.
const PLACE_ATTEMPTS: u64 = 64;

/// Seal a manifest (by `seal`) for the first generation from `first` whose
/// object name is free on `volume`, and store it there. Manifests are
/// created once, so the one stored is this attempt's own: it alone may
/// delete it again. Objects that interrupted or concurrent writes left
/// under taken names are skipped, never touched. Returns the generation and
/// the sealed bytes.
pub(crate) fn place_manifest(
    volume: &dyn Volume,
    name: &DatasetName,
    id: &DatasetId,
    first: u64,
    seal: impl Fn(u64) -> Result<Vec<u8>>,
) -> Result<(u64, Vec<u8>)> {
    for generation in first..first.saturating_add(PLACE_ATTEMPTS) {
        let sealed = seal(generation)?;
        match volume.put_manifest(id, generation, &sealed) {
            Ok(()) => return Ok((generation, sealed)),
            Err(StoreError::Exists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Manifest {
        dataset: name.clone(),
        generation: first,
        volume: volume.describe(),
        why: format!(
            "and the {PLACE_ATTEMPTS} after it are all taken by objects that interrupted writes left; nothing was stored: run `custos gc`, then run the command again"
        ),
    })
}

/// Read manifest `generation` of `id` from a volume, check it is the object
/// the catalog committed (`hash`), and open it with `key`. `name` is for
/// messages.
pub(crate) fn open_manifest(
    volume: &dyn Volume,
    name: &DatasetName,
    id: &DatasetId,
    generation: u64,
    hash: &[u8; 32],
    key: &DataKey,
) -> Result<Manifest> {
    let fail = |why: String| Error::Manifest { dataset: name.clone(), generation, volume: volume.describe(), why };
    let sealed = volume.read_manifest(id, generation).map_err(|e| match e {
        custos_store::StoreError::Missing { .. } => fail("is missing".into()),
        e => e.into(),
    })?;
    if object_hash(&sealed) != *hash {
        return Err(fail(
            "does not match the one the catalog committed: it was replaced (for example by an older generation's manifest) or altered".into(),
        ));
    }
    Manifest::open(key, id, generation, &sealed).map_err(|e| fail(e.to_string()))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            walk(&entry.path(), out)?;
        } else if ft.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// `a/b/c.txt` under prefix `P` → `P.a.b.c_txt`: characters a qualifier
/// cannot hold become `_`.
fn import_name(prefix: &DatasetName, rel: &Path) -> Result<DatasetName> {
    let mut name = prefix.to_string();
    for comp in rel.components() {
        let s = comp.as_os_str().to_string_lossy();
        let q: String =
            s.chars().map(|c| if c.is_ascii_alphanumeric() || "_-$#@".contains(c) { c } else { '_' }).collect();
        name.push('.');
        name.push_str(&q);
    }
    DatasetName::new(name).map_err(|e| Error::Invalid { what: "import", why: format!("{}: {e}", rel.display()) })
}

/// Rows read a batch at a time while paging.
const PAGE_BATCH: u32 = 512;

/// Collect up to `limit` rows whose names match `pattern`, in name order
/// after `after`, from `fetch(from, after, n)` (rows in name order, at
/// least `from`, after `after`); stops at the first name past the
/// pattern's literal prefix.
/// Up to `limit` rows matching `pattern` (on `name`), read from `fetch` in
/// batches keyed by an id: `fetch(cursor, n)` gives up to `n` rows past
/// `cursor` in the listing's order, and `id` each row's cursor. For
/// listings ordered by id, where a pattern cannot narrow the range read.
pub(crate) fn page_by_id<T>(
    pattern: Option<&custos_model::Pattern>,
    start: u64,
    limit: usize,
    fetch: impl Fn(u64, u32) -> std::result::Result<Vec<T>, custos_repo::RepoError>,
    id: impl Fn(&T) -> u64,
    name: impl Fn(&T) -> &str,
) -> Result<Vec<T>> {
    page_through(
        start,
        limit,
        |c, n| fetch(*c, n),
        |row| Some(id(row)),
        |row| pattern.is_none_or(|p| p.matches(name(row))),
    )
}

/// Up to `limit` rows whose names match `pattern`, in name order after
/// `after`: `fetch(prefix, cursor, n)` reads from the pattern's literal
/// prefix, and the first name past the prefix ends the listing.
pub(crate) fn page<T>(
    pattern: Option<&custos_model::Pattern>,
    after: Option<&str>,
    limit: usize,
    fetch: impl Fn(&str, &str, u32) -> std::result::Result<Vec<T>, custos_repo::RepoError>,
    name: impl Fn(&T) -> String,
) -> Result<Vec<T>> {
    let prefix = pattern.map_or("", |p| p.literal_prefix());
    page_through(
        after.unwrap_or("").to_string(),
        limit,
        |c, n| fetch(prefix, c, n),
        |row| Some(name(row)).filter(|n| n.starts_with(prefix)),
        |row| pattern.is_none_or(|p| p.matches(&name(row))),
    )
}

/// The paging loop: batches of [`PAGE_BATCH`] from `fetch(cursor, n)`, the
/// cursor moved to each row's `step` (`None` ends the listing there), rows
/// `keep` accepts gathered until there are `limit`.
fn page_through<C, T>(
    start: C,
    limit: usize,
    fetch: impl Fn(&C, u32) -> std::result::Result<Vec<T>, custos_repo::RepoError>,
    step: impl Fn(&T) -> Option<C>,
    keep: impl Fn(&T) -> bool,
) -> Result<Vec<T>> {
    let mut cursor = start;
    let mut out = Vec::new();
    while out.len() < limit {
        let batch = fetch(&cursor, PAGE_BATCH)?;
        let full = batch.len() == PAGE_BATCH as usize;
        for row in batch {
            let Some(next) = step(&row) else { return Ok(out) };
            cursor = next;
            if keep(&row) {
                out.push(row);
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        if !full {
            break;
        }
    }
    Ok(out)
}

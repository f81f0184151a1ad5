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
use custos_repo::{GenerationCommit, RepoError};
use custos_store::format::{object_hash, Manifest};
use custos_store::{Placed, StoreError, Volume};
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
    #[serde(rename = "chunk_count")]
    pub chunks: u64,
    /// Chunks sealed and stored by this write (the rest were unchanged and shared).
    #[serde(rename = "new_chunk_count")]
    pub new_chunks: u64,
    /// Bytes those new chunks take on the volume, sealed and compressed.
    #[serde(rename = "stored_size")]
    pub stored: u64,
    pub key_label: KeyLabel,
    pub volume: VolumeName,
    /// The key was created for this dataset by its policy's template.
    pub created_key: bool,
    /// The input equalled the current generation chunk for chunk, so nothing
    /// was committed and `generation` is the existing one.
    pub unchanged: bool,
    /// The SHA-256 of the manifest of the generation the dataset is at
    /// after the write (for the import cache, ADR 0036).
    #[serde(skip)]
    pub(crate) committed: Option<[u8; 32]>,
}

/// What a read did.
#[derive(Debug, Clone, Serialize)]
pub struct GetReport {
    pub dataset: DatasetName,
    pub generation: u64,
    #[serde(rename = "size")]
    pub bytes: u64,
}

/// A dataset with its key and volume, for `ds info`.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetInfo {
    #[serde(flatten)]
    pub record: DatasetRecord,
    pub key_state: KeyState,
    /// The volume's record (`volume` is its name, as everywhere).
    #[serde(rename = "volume_detail")]
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

    /// Every dataset matching `pattern` (all when `None`), by name, read
    /// from the pattern's literal prefix to its end (not every dataset).
    pub fn datasets_matching(&self, pattern: Option<&custos_model::Pattern>) -> Result<Vec<DatasetRecord>> {
        match pattern {
            None => self.datasets(),
            Some(p) => self.datasets_page(Some(p), None, usize::MAX),
        }
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
#[derive(Clone)]
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
        let volume = self.open_volume(&target.volume)?;
        let mut s = self.stage(name, existing.as_ref(), target, input, opts, volume.as_ref(), self.threads, since)?;
        if s.unchanged {
            return Ok(s.report());
        }
        let committed = (|| -> Result<()> {
            if !s.written.is_empty() {
                volume.sync()?;
            }
            self.place(&mut s, volume.as_ref(), false)?;
            self.commit_staged(&mut s, volume.as_ref())
        })();
        if let Err(e) = committed {
            s.abandon(volume.as_ref());
            return Err(e);
        }
        // The generation it replaced waits in the trash for `gc`, so readers
        // that opened it can finish.
        self.repo.record_key_use(&s.key_label())?;
        Ok(s.report())
    }

    /// Seal `input` into chunks on `volume` under the target's key (with
    /// `threads` workers; one seals on this thread), ready for a manifest
    /// and a commit. On failure, the chunks written are deleted again.
    #[allow(clippy::too_many_arguments)]
    fn stage(
        &self,
        name: &DatasetName,
        existing: Option<&DatasetRecord>,
        target: Target,
        input: &mut dyn Read,
        opts: &PutOptions,
        volume: &dyn Volume,
        threads: usize,
        since: u64,
    ) -> Result<Staged> {
        let key = if target.new_key.is_some() {
            // Made for this write and not in the catalog yet: no
            // destruction can be scheduled for it.
            target.key.state.permits(KeyUse::Encrypt).map_err(|source| Error::KeyUnusable {
                label: target.key.label.clone(),
                dataset: Some(name.clone()),
                source,
            })?;
            self.unwrap_checked(&target.key)?
        } else {
            self.unwrap_for(&target.key, KeyUse::Encrypt, name)?
        };
        let chunk_size = self.chunk_size()?;
        let (dataset_id, previous) = match existing {
            Some(d) => (d.id, d.current.generation),
            None => (DatasetId::random(), 0),
        };
        // Unchanged chunks can be shared with the previous generation when
        // it is on the same volume, under the same key, with the same chunking.
        let reusable: Vec<ChunkRef> = match existing {
            Some(d)
                if !opts.fresh
                    && d.current.volume == target.volume
                    && d.current.key_label == target.key.label
                    && d.current.chunk_size == chunk_size =>
            {
                self.load_manifest(d, &key, volume).map(|m| m.chunks).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let job = SealJob {
            key: &key,
            dataset: dataset_id,
            volume,
            chunk_size: chunk_size as usize,
            previous: &reusable,
            threads,
            compress: self.compression()?,
        };
        let outcome = seal_stream(&job, input);
        let chunks = match outcome.result {
            Ok(c) => c,
            Err(e) => {
                for id in &outcome.written {
                    let _ = volume.delete_chunk(id);
                }
                return Err(match e {
                    SealError::Input(source) => Error::Input { dataset: name.clone(), source },
                    SealError::Store(e) => e.into(),
                    SealError::Format(e) => Error::Invalid { what: "chunk", why: e.to_string() },
                });
            }
        };
        let size: u64 = chunks.iter().map(|c| c.len as u64).sum();
        // Same content, key and volume: a new generation would add nothing.
        let unchanged = outcome.written.is_empty() && !reusable.is_empty() && chunks == reusable;
        // Chunks listed but not written by this attempt: the commit checks
        // the catalog still holds them.
        let written: std::collections::HashSet<ChunkId> = outcome.written.iter().copied().collect();
        let reused: Vec<ChunkId> = chunks.iter().map(|c| c.id).filter(|id| !written.contains(id)).collect();
        Ok(Staged {
            name: name.clone(),
            dataset_id,
            previous,
            previous_hash: existing.map(|d| d.current.manifest_hash),
            new_key: target.new_key.clone(),
            target,
            key,
            chunks,
            written: outcome.written,
            reused,
            stored: outcome.stored,
            size,
            chunk_size,
            created_at: Timestamp::now(),
            placed: None,
            unchanged,
            since,
        })
    }

    /// Seal and store the manifest of a staged write (durable now, or at
    /// the volume's next sync when `deferred`).
    fn place(&self, s: &mut Staged, volume: &dyn Volume, deferred: bool) -> Result<()> {
        let label = s.key_label();
        let manifest = |generation| Manifest {
            dataset_id: s.dataset_id,
            generation,
            created_at: s.created_at,
            chunk_size: s.chunk_size,
            size: s.size,
            name: s.name.to_string(),
            key_label: label.to_string(),
            key_kcv: s.target.key.kcv,
            chunks: s.chunks.clone(),
        };
        let seal = |generation| {
            manifest(generation).seal(&s.key).map_err(|e| Error::Invalid { what: "manifest", why: e.to_string() })
        };
        let (generation, sealed, placed) = if deferred {
            // Beside one of its new chunks, in the batch's pack where
            // there is one (ADR 0035).
            place_manifest_with(volume, &s.name, s.previous + 1, seal, |g, b| match s.written.first() {
                Some(anchor) => volume.put_manifest_beside(&s.dataset_id, g, b, anchor),
                None => volume.put_manifest_deferred(&s.dataset_id, g, b),
            })?
        } else {
            let (g, sealed) = place_manifest(volume, &s.name, &s.dataset_id, s.previous + 1, seal)?;
            (g, sealed, Placed::Own)
        };
        s.placed = Some((generation, object_hash(&sealed), placed));
        Ok(())
    }

    /// Commit a staged write whose manifest is durable. When a concurrent
    /// write took the label of the key made for it, the key is named anew
    /// (and the manifest, which names it, stored again) until one is free.
    fn commit_staged(&self, s: &mut Staged, volume: &dyn Volume) -> Result<()> {
        for _ in 0..PLACE_ATTEMPTS {
            match self.repo.commit_generation(&s.commit()) {
                Err(RepoError::Exists { kind: "key", .. }) if s.new_key.is_some() => {
                    // A concurrent write took this label for a key of its
                    // own: name ours anew (its manifest names the label).
                    if let Some((g, _, at)) = s.placed.take() {
                        let _ = volume.delete_placed_manifest(&s.dataset_id, g, at);
                    }
                    self.relabel_new_key(s.new_key.as_mut().expect("checked"))?;
                    self.place(s, volume, false)?;
                }
                r => return r.map(|_released| ()).map_err(Into::into),
            }
        }
        Err(Error::Invalid {
            what: "write",
            why: format!("{}: every label tried for its new key was taken by concurrent writes; run it again", s.name),
        })
    }

    /// Seal and store a batch of small datasets (each with the record the
    /// caller read of it, `None` when new): the files are sealed side by
    /// side by `self.threads` workers (each file on one thread) and the
    /// batch's chunks and manifests go into one pack per volume, placed but
    /// not yet made durable or committed ([`Vault::commit_batch`] does both).
    /// A dataset that cannot be planned or sealed ends the batch there: those
    /// before it are kept for the commit, the rest dropped, and the failure
    /// comes back from the commit.
    fn stage_batch(
        &self,
        items: Vec<(DatasetName, PathBuf, Option<DatasetRecord>)>,
        gate: &std::sync::RwLock<()>,
    ) -> Result<StagedBatch> {
        let mut batch = StagedBatch { staged: Vec::new(), volumes: Default::default(), error: None };
        if items.is_empty() {
            return Ok(batch);
        }
        // Settings and policies are read once for the batch.
        let _memo = self.batch_memo();
        let since = self.repo.deletion_seq()?;
        let opts = PutOptions::default();
        // Targets one after another: keys made for the batch take labels in
        // sequence, each after the last.
        let mut planned = Vec::with_capacity(items.len());
        let volumes = &mut batch.volumes;
        for (name, path, existing) in items {
            let target = match self.resolve_target(&name, existing.as_ref(), &opts) {
                Ok(t) => t,
                Err(e) => {
                    batch.error = Some(e);
                    break;
                }
            };
            if let Some(k) = &target.new_key {
                self.label_taken(&k.label);
            }
            if !volumes.contains_key(&target.volume) {
                match self.open_volume(&target.volume) {
                    Ok(v) => volumes.insert(target.volume.clone(), v),
                    Err(e) => {
                        batch.error = Some(e);
                        break;
                    }
                };
            }
            planned.push((planned.len(), (name, path, existing, target)));
        }
        // Small chunks of the batch go into one pack per volume (ADR 0030),
        // on volumes that make packs.
        let mut packing = std::collections::BTreeMap::new();
        for (name, v) in volumes.iter() {
            packing.insert(name.clone(), custos_store::Packing::start(v.as_ref())?.gated(gate));
        }
        // Sealing side by side, each worker taking the next file; no new
        // one after a failure.
        let sealed = self.in_parallel(planned, |(name, path, existing, target)| {
            let volume: &dyn Volume = &packing[&target.volume];
            let mut f = std::fs::File::open(path).map_err(|source| Error::Input { dataset: name.clone(), source })?;
            let mut s = self.stage(name, existing.as_ref(), target.clone(), &mut f, &opts, volume, 1, since)?;
            if !s.unchanged {
                if let Err(e) = self.place(&mut s, volume, true) {
                    s.abandon(volume);
                    return Err(e);
                }
            }
            Ok(Box::new(s))
        });
        // What came before the first failure is kept; the rest is not. A
        // sealing failure comes before one in planning.
        let mut error = None;
        batch.staged.reserve_exact(sealed.len());
        for (_, r) in sealed {
            match r {
                Ok(s) if error.is_none() => batch.staged.push(s),
                Ok(s) => s.abandon(&packing[&s.target.volume]),
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = error {
            batch.error = Some(e);
        }
        let packed = packing.into_values().try_for_each(custos_store::Packing::finish);
        if let Err(e) = packed {
            batch.abandon();
            return Err(e.into());
        }
        Ok(batch)
    }

    /// Make a staged batch durable (one flush of each volume it wrote) and
    /// commit every generation in one transaction. A kill leaves each
    /// dataset as it was or whole; a failure, those before the failing one
    /// written (as one `put` after another would), the rest untouched. Keys
    /// made for the batch are recorded as used once; the other keys' uses
    /// are counted after the commit. Holds `gate` from the flush to its
    /// last catalog write, so that every object a batch staged behind it
    /// placed meanwhile is in the flush.
    fn commit_batch(&self, mut batch: StagedBatch, gate: &std::sync::RwLock<()>) -> Result<Vec<PutReport>> {
        let _memo = self.batch_memo();
        let _flushing = gate.write().unwrap_or_else(|p| p.into_inner());
        let staged = &mut batch.staged;
        let volumes = &batch.volumes;
        let abandon = |rest: &[Box<Staged>]| {
            for s in rest {
                s.abandon(volumes[&s.target.volume].as_ref());
            }
        };
        let synced = (|| -> Result<()> {
            for (name, v) in volumes {
                if staged.iter().any(|s| &s.target.volume == name && !s.unchanged) {
                    v.sync()?;
                }
            }
            Ok(())
        })();
        if let Err(e) = synced {
            abandon(staged);
            return Err(e);
        }
        let now = Timestamp::now();
        for k in staged.iter_mut().filter_map(|s| s.new_key.as_mut()) {
            k.use_count = 1;
            k.last_used_at = Some(now);
        }
        // Keys that were in the catalog before: their use is counted apart.
        let uses = |done: &[Box<Staged>]| -> Vec<KeyLabel> {
            done.iter().filter(|s| !s.unchanged && s.new_key.is_none()).map(|s| s.key_label()).collect()
        };
        let mut commits: Vec<GenerationCommit> = Vec::with_capacity(staged.len());
        commits.extend(staged.iter().filter(|s| !s.unchanged).map(|s| s.commit()));
        let committed = if commits.is_empty() { Ok(Vec::new()) } else { self.repo.commit_generations(&commits) };
        drop(commits);
        if let Err(first) = committed {
            // One of them cannot be committed as staged (a concurrent write
            // took a key label or the dataset): each on its own, as `put`
            // would, up to the first that fails.
            self.forget_labels();
            if !matches!(first, RepoError::Exists { .. } | RepoError::Conflict { .. } | RepoError::Raced { .. }) {
                abandon(staged);
                return Err(first.into());
            }
            for i in 0..staged.len() {
                if staged[i].unchanged {
                    continue;
                }
                let v = volumes[&staged[i].target.volume].clone();
                if let Err(e) = self.commit_staged(&mut staged[i], v.as_ref()) {
                    abandon(&staged[i..]);
                    let _ = self.repo.record_key_uses(&uses(&staged[..i]));
                    return Err(e);
                }
            }
        }
        self.repo.record_key_uses(&uses(staged))?;
        let reports = staged.iter().map(|s| s.report()).collect();
        match batch.error {
            Some(e) => Err(e),
            None => Ok(reports),
        }
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
        let volume = self.open_volume(&d.current.volume)?;
        let report = self.read_record(&d, volume.as_ref(), out, range, self.threads)?;
        self.repo.record_key_use(&d.current.key_label)?;
        Ok(report)
    }

    /// Read a dataset's current generation (or bytes `start..end` of it)
    /// from `volume`, where it is, into `out` with `threads` workers (one
    /// reads on this thread). Its key's use is the caller's to count.
    pub(crate) fn read_record(
        &self,
        d: &DatasetRecord,
        volume: &dyn Volume,
        out: &mut dyn Write,
        range: Option<(u64, u64)>,
        threads: usize,
    ) -> Result<GetReport> {
        let name = &d.name;
        let rec = self.key_record(&d.current.key_label)?;
        let key = self.unwrap_for(&rec, KeyUse::Decrypt, name)?;
        let manifest = self.load_manifest(d, &key, volume)?;
        let size = manifest.size;
        let (start, end) = range.unwrap_or((0, size));
        if start > end || end > size {
            return Err(Error::Range { dataset: name.clone(), start, end, size });
        }
        let job = OpenJob {
            key: &key,
            dataset: d.id,
            volume,
            chunks: &manifest.chunks,
            chunk_size: manifest.chunk_size as u64,
            threads,
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
    /// dataset `PREFIX.<path qualifiers>`. Everything is checked before
    /// anything is written, and every problem is named at once: names that
    /// are not valid, that collide, that exist (unless `replace`), and
    /// entries that are not regular files (symbolic links are never
    /// followed). With `skip_other` those entries are skipped instead and
    /// returned, described, beside the reports.
    pub fn import(
        &self,
        dir: &Path,
        prefix: &DatasetName,
        replace: bool,
        skip_other: bool,
        mut progress: impl FnMut(&PutReport),
    ) -> Result<(Vec<PutReport>, Vec<String>)> {
        let (mut files, mut others) = (Vec::new(), Vec::new());
        walk(dir, &mut files, &mut others).map_err(|source| Error::Io {
            what: "the directory to import",
            path: dir.into(),
            source,
        })?;
        files.sort();
        others.sort();
        let mut problems: Vec<String> = Vec::new();
        let skipped: Vec<String> = others.iter().map(|(p, kind)| format!("{} ({kind})", p.display())).collect();
        if !skip_other && !skipped.is_empty() {
            problems.push(format!(
                "{} entries are not regular files and would be left out: {}; pass --skip-other to import the rest",
                skipped.len(),
                shortlist(&skipped)
            ));
        }
        let started = std::time::SystemTime::now();
        // What the catalog holds under the prefix, read in pages rather than
        // one look-up per file when the import is big (and the prefix holds
        // not many more datasets than it has files).
        let under = format!("{prefix}.");
        let known = if files.len() > IMPORT_LOOKUPS { self.datasets_under(&under, 4 * files.len())? } else { None };
        let look_up = |n: &DatasetName| -> Result<Option<DatasetRecord>> {
            match &known {
                Some(m) if n.as_str().starts_with(&under) => Ok(m.get(n).cloned()),
                _ => Ok(self.repo.dataset(n)?),
            }
        };
        let mut planned: Vec<(DatasetName, PathBuf, Option<DatasetRecord>)> = Vec::with_capacity(files.len());
        let mut seen = std::collections::HashMap::new();
        let (mut bad, mut twice, mut exist) = (Vec::new(), Vec::new(), Vec::new());
        for f in files {
            let rel = f.strip_prefix(dir).expect("walked below dir");
            let mut name = match import_name(prefix, rel) {
                Ok(n) => n,
                Err(e) => {
                    bad.push(e.to_string());
                    continue;
                }
            };
            // A dataset an earlier Custos imported from this file under
            // its old, lossy name goes on under that name (so importing the
            // tree again without --replace is refused as existing, and with
            // it writes there, never a second copy beside it).
            let mut existing = look_up(&name)?;
            if existing.is_none() {
                if let Some(old) = legacy_import_name(prefix, rel).filter(|o| *o != name) {
                    if let Some(d) = look_up(&old)? {
                        name = old;
                        existing = Some(d);
                    }
                }
            }
            if let Some(other) = seen.insert(name.clone(), f.clone()) {
                twice.push(format!("{} and {} would both become {name}", other.display(), f.display()));
                continue;
            }
            if !replace && existing.is_some() {
                exist.push(format!("{name} (from {})", f.display()));
            }
            planned.push((name, f, existing));
        }
        if !bad.is_empty() {
            problems.push(format!("{} paths make no valid dataset name: {}; rename them", bad.len(), shortlist(&bad)));
        }
        if !twice.is_empty() {
            problems.push(format!("{} names collide: {}; rename one of each", twice.len(), shortlist(&twice)));
        }
        if !exist.is_empty() {
            problems.push(format!(
                "{} datasets exist already: {}; pass --replace to write new generations",
                exist.len(),
                shortlist(&exist)
            ));
        }
        if !problems.is_empty() {
            return Err(Error::Invalid { what: "import (nothing was written)", why: problems.join(". ") });
        }
        // Small files in batches (one flush and one commit each), a big
        // one on its own with every worker on its chunks.
        let alone = self.chunk_size()? as u64 * 4;
        // A file whose size, times, inode and device are what the last
        // import of this directory recorded, while its dataset is still at
        // the generation that import left, is not read again (ADR 0036).
        let cache = crate::importcache::ImportCache::load(&self.dir, dir, prefix);
        let mut reports = Vec::with_capacity(planned.len());
        // Settings, policies and key labels are read once for the import.
        let _memo = self.batch_memo();
        // Objects go into a volume only while no flush and commit runs
        // (ADR 0034: whatever a command placed is durable at its next commit).
        let gate = std::sync::RwLock::new(());
        let gate = &gate;
        let files = planned.len();
        // A thread of its own reads and seals the next batch while this one
        // makes the last durable and commits it (and writes big files), in
        // the order of the files. When a commit fails, the import ends
        // there and the batch sealed behind it is deleted again.
        let stamps = std::thread::scope(|scope| -> Result<_> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Step>(1);
            let cache = &cache;
            let stager = scope.spawn(move || {
                let mut stamps = std::collections::HashMap::with_capacity(files);
                let mut unchanged = Vec::new();
                let mut batch: Vec<(DatasetName, PathBuf, Option<DatasetRecord>)> = Vec::new();
                let mut bytes = 0u64;
                // Each step handed on; false once the committing side stopped.
                let send = |step: Step| match tx.send(step) {
                    Ok(()) => true,
                    Err(std::sync::mpsc::SendError(step)) => {
                        if let Step::Batch(Ok(b)) = step {
                            b.abandon();
                        }
                        false
                    }
                };
                let flush = |unchanged: &mut Vec<PutReport>| {
                    unchanged.is_empty() || send(Step::Unchanged(std::mem::take(unchanged)))
                };
                let stage = |batch: &mut Vec<_>| {
                    batch.is_empty() || send(Step::Batch(self.stage_batch(std::mem::take(batch), gate)))
                };
                for (name, path, existing) in planned {
                    let meta = match std::fs::metadata(&path) {
                        Ok(m) => m,
                        Err(source) => {
                            let _ = flush(&mut unchanged) && stage(&mut batch);
                            send(Step::Failed(Error::Input { dataset: name, source }));
                            return stamps;
                        }
                    };
                    let len = meta.len();
                    let stamp = crate::importcache::Stamp::of(&meta);
                    stamps.insert(name.clone(), stamp);
                    if let Some(d) =
                        existing.as_ref().filter(|d| cache.unchanged(&name, &stamp, &d.current.manifest_hash))
                    {
                        unchanged.push(PutReport {
                            dataset: name,
                            generation: d.current.generation,
                            size: d.current.size,
                            chunks: d.current.chunk_count,
                            new_chunks: 0,
                            stored: 0,
                            key_label: d.current.key_label.clone(),
                            volume: d.current.volume.clone(),
                            created_key: false,
                            unchanged: true,
                            committed: Some(d.current.manifest_hash),
                        });
                        if unchanged.len() >= BATCH_FILES && !flush(&mut unchanged) {
                            return stamps;
                        }
                        continue;
                    }
                    if len > alone {
                        if !(flush(&mut unchanged) && stage(&mut batch) && send(Step::Big(name, path))) {
                            return stamps;
                        }
                        bytes = 0;
                        continue;
                    }
                    bytes += len;
                    batch.push((name, path, existing));
                    if batch.len() >= BATCH_FILES || bytes >= BATCH_BYTES {
                        if !(flush(&mut unchanged) && stage(&mut batch)) {
                            return stamps;
                        }
                        bytes = 0;
                    }
                }
                let _ = flush(&mut unchanged) && stage(&mut batch);
                stamps
            });
            let mut outcome = Ok(());
            for step in rx {
                let done = match step {
                    Step::Unchanged(rs) => Ok(rs),
                    Step::Batch(Ok(b)) => self.commit_batch(b, gate),
                    Step::Batch(Err(e)) | Step::Failed(e) => Err(e),
                    Step::Big(name, path) => {
                        let _flushing = gate.write().unwrap_or_else(|p| p.into_inner());
                        std::fs::File::open(&path)
                            .map_err(|source| Error::Input { dataset: name.clone(), source })
                            .and_then(|mut file| self.put(&name, &mut file, &PutOptions::default()))
                            .map(|r| vec![r])
                    }
                };
                match done {
                    Ok(rs) => {
                        for r in rs {
                            progress(&r);
                            reports.push(r);
                        }
                    }
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            // The receiver is gone: a stager still sealing stops at its next hand-on.
            let stamps = stager.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            outcome.map(|()| stamps)
        })?;
        cache.store(
            reports.iter().filter_map(|r| Some((r.dataset.clone(), *stamps.get(&r.dataset)?, r.committed?))),
            started,
        );
        Ok((reports, skipped))
    }
}

/// What an import's stager hands on to be committed, in the order of the files.
enum Step {
    /// Files passed over as unchanged since the last import (ADR 0036).
    Unchanged(Vec<PutReport>),
    /// A batch of small files, sealed and stored.
    Batch(Result<StagedBatch>),
    /// A big file, written on its own with every worker on its chunks.
    Big(DatasetName, PathBuf),
    /// A file that could not be looked at: the import ends there.
    Failed(Error),
}

/// An import of more files than this reads the datasets under its prefix
/// in pages instead of looking each up.
const IMPORT_LOOKUPS: usize = 64;

impl Vault<Open> {
    /// The datasets whose names start with `under`, by name; `None` when
    /// there are more than `most` (reading them would cost more than the
    /// look-ups it saves).
    fn datasets_under(
        &self,
        under: &str,
        most: usize,
    ) -> Result<Option<std::collections::HashMap<DatasetName, DatasetRecord>>> {
        const PAGE: u32 = 4096;
        let mut found = std::collections::HashMap::new();
        let mut after = String::new();
        loop {
            let page = self.repo.datasets_from(under, &after, PAGE)?;
            let full = page.len() == PAGE as usize;
            for d in page {
                if !d.name.as_str().starts_with(under) {
                    return Ok(Some(found));
                }
                after = d.name.to_string();
                found.insert(d.name.clone(), d);
            }
            if found.len() > most {
                return Ok(None);
            }
            if !full {
                return Ok(Some(found));
            }
        }
    }
}

/// The first few of a list, and how many more.
fn shortlist(items: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut s = items.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
}

/// An import's batch: at most this many files, or this many bytes of them.
pub(crate) const BATCH_FILES: usize = 1024;
pub(crate) const BATCH_BYTES: u64 = 256 << 20;

/// A write sealed and stored, not yet committed (see [`Vault::put`]).
struct Staged {
    name: DatasetName,
    dataset_id: DatasetId,
    previous: u64,
    /// The manifest hash of the generation it would follow.
    previous_hash: Option<[u8; 32]>,
    target: Target,
    /// The key made for this write, as it will be committed (its label may
    /// change when a concurrent write takes the first one).
    new_key: Option<KeyRecord>,
    key: DataKey,
    chunks: Vec<ChunkRef>,
    /// Chunks this write stored.
    written: Vec<ChunkId>,
    /// Chunks it shares with the previous generation.
    reused: Vec<ChunkId>,
    stored: u64,
    size: u64,
    chunk_size: u32,
    created_at: Timestamp,
    /// The generation its manifest was stored as, the manifest's hash, and
    /// where it went.
    placed: Option<(u64, [u8; 32], Placed)>,
    /// The input equalled the current generation: nothing to commit.
    unchanged: bool,
    since: u64,
}

impl Staged {
    fn key_label(&self) -> KeyLabel {
        self.new_key.as_ref().map_or(&self.target.key.label, |k| &k.label).clone()
    }

    fn commit(&self) -> GenerationCommit {
        let (generation, manifest_hash, _) = self.placed.expect("placed before it is committed");
        GenerationCommit {
            dataset_id: self.dataset_id,
            name: self.name.clone(),
            previous: self.previous,
            generation: GenerationRecord {
                generation,
                volume: self.target.volume.clone(),
                key_label: self.key_label(),
                size: self.size,
                chunk_size: self.chunk_size,
                chunk_count: self.chunks.len() as u64,
                manifest_hash,
                created_at: self.created_at,
            },
            chunks: self.chunks.iter().map(|c| c.id).collect(),
            new_key: self.new_key.clone(),
            reused: self.reused.clone(),
            since: self.since,
        }
    }

    /// Delete what this write stored: it will not be committed.
    fn abandon(&self, volume: &dyn Volume) {
        for id in &self.written {
            let _ = volume.delete_chunk(id);
        }
        // Only the manifest this write stored: in a pack, another writer's
        // manifest of the same generation may be the one committed.
        if let Some((g, _, at)) = self.placed {
            let _ = volume.delete_placed_manifest(&self.dataset_id, g, at);
        }
    }

    fn report(&self) -> PutReport {
        PutReport {
            dataset: self.name.clone(),
            generation: self.placed.map_or(self.previous, |(g, _, _)| g),
            size: self.size,
            chunks: self.chunks.len() as u64,
            new_chunks: self.written.len() as u64,
            stored: self.stored,
            key_label: self.key_label(),
            volume: self.target.volume.clone(),
            created_key: self.target.new_key.is_some() && !self.unchanged,
            unchanged: self.unchanged,
            committed: match self.placed {
                Some((_, hash, _)) => Some(hash),
                None => self.previous_hash,
            },
        }
    }
}

/// A batch of small datasets sealed and stored, not yet durable or
/// committed (see [`Vault::stage_batch`]).
struct StagedBatch {
    /// Boxed: a staged write is a large value (1.7 KB); moving a batch of
    /// a thousand of them between threads and vectors, with the fresh
    /// pages that took, cost about a tenth of an import's CPU (issue 19).
    #[allow(clippy::vec_box)] // measured: see above
    staged: Vec<Box<Staged>>,
    volumes: std::collections::BTreeMap<VolumeName, std::sync::Arc<dyn Volume>>,
    /// What ended the batch early: returned once those before it are committed.
    error: Option<Error>,
}

impl StagedBatch {
    /// Delete what the batch stored: it will not be committed.
    fn abandon(&self) {
        for s in &self.staged {
            s.abandon(self.volumes[&s.target.volume].as_ref());
        }
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
    let (generation, sealed, _) =
        place_manifest_with(volume, name, first, seal, |g, b| volume.put_manifest(id, g, b).map(|()| Placed::Own))?;
    Ok((generation, sealed))
}

/// [`place_manifest`], storing by `put`, which says where the manifest
/// went (its own object, or a batch's pack).
pub(crate) fn place_manifest_with(
    volume: &dyn Volume,
    name: &DatasetName,
    first: u64,
    seal: impl Fn(u64) -> Result<Vec<u8>>,
    put: impl Fn(u64, &[u8]) -> std::result::Result<Placed, StoreError>,
) -> Result<(u64, Vec<u8>, Placed)> {
    for generation in first..first.saturating_add(PLACE_ATTEMPTS) {
        let sealed = seal(generation)?;
        match put(generation, &sealed) {
            Ok(placed) => return Ok((generation, sealed, placed)),
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
    // The object the catalog committed, where a pack also holds another
    // writer's manifest of the same generation (ADR 0035).
    let sealed = volume.read_manifest_where(id, generation, &|b| object_hash(b) == *hash).map_err(|e| match e {
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

/// Regular files below `dir` into `out`; anything else that is not a
/// directory (never followed) into `others`, with what it is.
fn walk(dir: &Path, out: &mut Vec<PathBuf>, others: &mut Vec<(PathBuf, &'static str)>) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            walk(&entry.path(), out, others)?;
        } else if ft.is_file() {
            out.push(entry.path());
        } else {
            let kind = if ft.is_symlink() {
                "a symbolic link"
            } else if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else if ft.is_block_device() || ft.is_char_device() {
                "a device"
            } else {
                "not a regular file"
            };
            others.push((entry.path(), kind));
        }
    }
    Ok(())
}

/// `a/b/c.txt` under prefix `P` → `P.a.b.c#2Etxt`: each path component
/// as a qualifier, reversibly ([`custos_model::file_qualifier`]), so `ds
/// export` gives the names back.
fn import_name(prefix: &DatasetName, rel: &Path) -> Result<DatasetName> {
    use std::os::unix::ffi::OsStrExt;
    let mut name = prefix.to_string();
    for comp in rel.components() {
        name.push('.');
        name.push_str(&custos_model::file_qualifier(comp.as_os_str().as_bytes()));
    }
    DatasetName::new(name).map_err(|e| Error::Invalid { what: "import", why: format!("{}: {e}", rel.display()) })
}

/// The name an import made before names mapped reversibly (Custos before
/// issue 18): each character a qualifier cannot hold became `_`. A
/// `--replace` import keeps writing to a dataset named so, rather than
/// making a second one beside it.
fn legacy_import_name(prefix: &DatasetName, rel: &Path) -> Option<DatasetName> {
    let mut name = prefix.to_string();
    for comp in rel.components() {
        let s = comp.as_os_str().to_string_lossy();
        let q: String =
            s.chars().map(|c| if c.is_ascii_alphanumeric() || "_-$#@".contains(c) { c } else { '_' }).collect();
        name.push('.');
        name.push_str(&q);
    }
    DatasetName::new(name).ok()
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

//! Backups: the two named copy paths, and restore.
//!
//! * **raw** ([`Vault::backup_raw`]): sealed chunks and the manifest move
//!   byte for byte through the volume layer. It exists on a sealed vault, so
//!   it cannot use a key: a storage administrator without key access can run
//!   it. The copy shares the primary's key and its fate.
//! * **logical** ([`Vault::backup_logical`]): plaintext streams from the
//!   primary (opened with its key) into the sealing pipeline under a
//!   separate backup (BACK) key. It survives the loss of the primary's key.
//!
//! Both are incremental: a raw copy skips chunks the target already holds; a
//! logical copy reuses, without reading them, the previous copy's chunks
//! wherever the source chunk is the very object that copy was made from.
//! A backup is recorded only after its chunks and manifest are durable, so
//! an interrupted backup is never listed.

use std::collections::HashMap;
use std::io::{Read, Write};

use crossbeam_channel::{bounded, Receiver, Sender};
use custos_crypto::DataKey;
use custos_model::{
    BackupRecord, CheckedCopy, ChunkId, ChunkRef, CopyCheck, CopyMethod, DatasetId, DatasetName, DatasetRecord,
    KeyLabel, KeyRecord, KeyState, KeyUse, Pattern, Purpose, SnapshotRecord, VolumeName,
};
use custos_store::format::{object_hash, Manifest, CHUNK_OVERHEAD};
use jiff::Timestamp;
use serde::Serialize;

use crate::datasets::{open_manifest, place_manifest, place_manifest_with};
use crate::keys::NewKey;
use crate::pipeline::{copy_raw, open_stream, transcode, OpenError, OpenJob, SealError, TranscodeError, TranscodeJob};
use crate::{Error, Open, PutOptions, Result, Vault, VaultState};

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub backup: u64,
    pub method: CopyMethod,
    pub dataset: DatasetName,
    pub generation: u64,
    pub size: u64,
    pub key_label: KeyLabel,
    /// A new key was created because the dataset's own can no longer encrypt.
    pub new_key: bool,
}

/// What `prune` decided for one backup.
#[derive(Debug, Clone, Serialize)]
pub struct PruneDecision {
    #[serde(flatten)]
    pub backup: BackupRecord,
    pub keep: bool,
}

impl<S: VaultState> Vault<S> {
    /// Pin the dataset's current generation. Costs metadata only (chunks are
    /// immutable and shared) and needs no key. The snapshot is exactly one
    /// committed generation, whatever writers are doing.
    pub fn snapshot_create(&self, name: &DatasetName) -> Result<SnapshotRecord> {
        self.dataset(name)?;
        Ok(self.repo.create_snapshot(name)?)
    }

    /// Snapshots of datasets matching `pattern`, oldest first.
    pub fn snapshots(&self, pattern: Option<&Pattern>) -> Result<Vec<SnapshotRecord>> {
        Ok(self
            .repo
            .snapshots()?
            .into_iter()
            .filter(|s| pattern.is_none_or(|p| p.matches(s.dataset.as_str())))
            .collect())
    }

    /// Up to `limit` snapshots of datasets matching `pattern`, by id, after
    /// `after` (the last id of the previous page).
    pub fn snapshots_page(
        &self,
        pattern: Option<&Pattern>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<SnapshotRecord>> {
        crate::datasets::page_by_id(
            pattern,
            after.unwrap_or(0),
            limit,
            |after, n| self.repo.snapshots_after(after, n),
            |s| s.id,
            |s| s.dataset.as_str(),
        )
    }

    pub fn snapshot_record(&self, id: u64) -> Result<SnapshotRecord> {
        self.repo.snapshot(id)?.ok_or_else(|| Error::NotFound {
            what: "snapshot",
            name: id.to_string(),
            see: "custos snapshot ls",
        })
    }

    /// Remove a snapshot and whatever only it kept.
    pub fn snapshot_rm(&self, id: u64) -> Result<()> {
        self.snapshot_record(id)?;
        // What only the snapshot kept waits in the trash for `gc`.
        self.repo.remove_snapshot(id)?;
        Ok(())
    }

    /// Apply `retention` to every series (dataset, method, volume) of backups
    /// of datasets matching `pattern`, and, unless `dry_run`, remove the
    /// backups it does not keep and the chunks only they used. Needs no key.
    pub fn prune_backups(
        &self,
        pattern: Option<&Pattern>,
        retention: &crate::Retention,
        dry_run: bool,
    ) -> Result<Vec<PruneDecision>> {
        if retention.is_empty() {
            return Err(Error::Invalid {
                what: "retention",
                why: "give at least one of --keep-last, --keep-daily, --keep-monthly, --keep-yearly".into(),
            });
        }
        let all = self.backups(pattern)?;
        let mut series: std::collections::BTreeMap<(String, &str, String), Vec<&BackupRecord>> = Default::default();
        for b in &all {
            series.entry((b.dataset_id.to_hex(), b.method.as_str(), b.volume.to_string())).or_default().push(b);
        }
        let mut out = Vec::new();
        for members in series.values() {
            let items: Vec<_> = members.iter().map(|b| (b.id, b.source_generation, b.created_at)).collect();
            let keep = retention.keep(&items);
            for b in members {
                out.push(PruneDecision { backup: (*b).clone(), keep: keep.contains(&b.id) });
            }
        }
        out.sort_by_key(|d| d.backup.id);
        if !dry_run {
            self.remove_backups(out.iter().filter(|d| !d.keep).map(|d| d.backup.id))?;
        }
        Ok(out)
    }

    /// Apply `retention` to one series (one dataset, method and volume);
    /// returns how many backups it drops (or would, dry).
    pub(crate) fn prune_series(
        &self,
        series: Vec<BackupRecord>,
        retention: &crate::Retention,
        dry_run: bool,
    ) -> Result<usize> {
        let items: Vec<_> = series.iter().map(|b| (b.id, b.source_generation, b.created_at)).collect();
        let keep = retention.keep(&items);
        let drop: Vec<u64> = series.iter().map(|b| b.id).filter(|id| !keep.contains(id)).collect();
        if !dry_run {
            self.remove_backups(drop.iter().copied())?;
        }
        Ok(drop.len())
    }

    fn remove_backups(&self, ids: impl Iterator<Item = u64>) -> Result<()> {
        // What only these backups kept waits in the trash for `gc`.
        for id in ids {
            match self.repo.remove_backup(id) {
                // A concurrent prune removed it first: the same outcome.
                Err(custos_repo::RepoError::NotFound { kind: "backup", .. }) => {}
                r => {
                    r?;
                }
            }
        }
        Ok(())
    }

    /// Backups of datasets matching `pattern` (all when `None`), oldest first.
    pub fn backups(&self, pattern: Option<&Pattern>) -> Result<Vec<BackupRecord>> {
        Ok(self.repo.backups()?.into_iter().filter(|b| pattern.is_none_or(|p| p.matches(b.dataset.as_str()))).collect())
    }

    /// Up to `limit` backups of datasets matching `pattern`, by id, after
    /// `after` (the last id of the previous page).
    pub fn backups_page(
        &self,
        pattern: Option<&Pattern>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<BackupRecord>> {
        crate::datasets::page_by_id(
            pattern,
            after.unwrap_or(0),
            limit,
            |after, n| self.repo.backups_after(after, n),
            |b| b.id,
            |b| b.dataset.as_str(),
        )
    }

    pub fn backup_record(&self, id: u64) -> Result<BackupRecord> {
        self.repo.backup(id)?.ok_or_else(|| Error::NotFound {
            what: "backup",
            name: id.to_string(),
            see: "custos backup ls",
        })
    }

    /// Raw copy of a dataset's current generation to `to`. Uses no key.
    /// Returns `None` when that generation already has a raw copy there.
    pub fn backup_raw(&self, name: &DatasetName, to: &VolumeName) -> Result<Option<BackupRecord>> {
        let d = self.dataset(name)?;
        self.backup_raw_of(d, to)
    }

    /// [`Vault::backup_raw`] of a dataset already read.
    pub(crate) fn backup_raw_of(&self, d: DatasetRecord, to: &VolumeName) -> Result<Option<BackupRecord>> {
        let all = self.repo.dataset_backups(&d.name)?;
        let mine: Vec<&BackupRecord> = all.iter().filter(|b| b.dataset_id == d.id).collect();
        self.backup_raw_given(d, to, &mine)
    }

    /// [`Vault::backup_raw`] of `d` given its backups in the catalog, read
    /// beforehand (to tell whether the copy exists already).
    fn backup_raw_given(
        &self,
        d: DatasetRecord,
        to: &VolumeName,
        all: &[&BackupRecord],
    ) -> Result<Option<BackupRecord>> {
        let (name, g) = (&d.name, &d.current);
        if *to == g.volume {
            return Err(Error::Invalid {
                what: "raw backup",
                why: format!(
                    "{name} is on volume {to} already; a raw copy there would be the same files: choose another volume"
                ),
            });
        }
        let already =
            all.iter().any(|b| b.source_generation == g.generation && b.method == CopyMethod::Raw && b.volume == *to);
        if already {
            return Ok(None);
        }
        let (src, dst) = (self.open_volume(&g.volume)?, self.open_volume(to)?);
        let since = self.repo.deletion_seq()?;
        self.copy_generation_raw(&d, src.as_ref(), dst.as_ref(), to, false, |chunks, reused| {
            let mut rec = BackupRecord {
                id: 0,
                dataset: name.clone(),
                dataset_id: d.id,
                source_generation: g.generation,
                method: CopyMethod::Raw,
                volume: to.clone(),
                key_label: g.key_label.clone(),
                copy_id: d.id,
                generation: g.generation,
                size: g.size,
                chunk_size: g.chunk_size,
                chunk_count: g.chunk_count,
                manifest_hash: g.manifest_hash,
                created_at: Timestamp::now(),
                checked: None,
            };
            match self.repo.insert_backup(&rec, chunks, &[], None, reused, since) {
                // A concurrent run recorded this very copy first.
                Err(custos_repo::RepoError::Exists { kind: "backup", .. }) => Ok(None),
                r => {
                    rec.id = r?;
                    Ok(Some(rec))
                }
            }
        })
    }

    /// Raw copies of many datasets to `to`, a few at a time (see
    /// [`Vault::backup_logical_many`]); stops at the first failure.
    pub fn backup_raw_many(
        &self,
        names: &[DatasetName],
        to: &VolumeName,
    ) -> Result<Vec<(DatasetName, Option<BackupRecord>)>> {
        self.volume_record(to)?;
        let datasets = Preloaded::new(self.repo.datasets()?, |d: &DatasetRecord| &d.name);
        let backups = backups_by_dataset(self.repo.backups()?);
        let jobs: Vec<(usize, &DatasetName)> = names.iter().enumerate().collect();
        let results = self.in_parallel(jobs, |name| {
            let d = datasets.get(name, |n| self.dataset(n))?;
            let mine: Vec<&BackupRecord> = backups.get(&d.id).into_iter().flatten().collect();
            self.backup_raw_given(d, to, &mine)
        });
        let mut out = Vec::with_capacity(names.len());
        let mut first_error = None;
        for (i, r) in results {
            match r {
                Ok(b) => out.push((names[i].clone(), b)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Run `work` on each job, a few jobs at a time, so that the device and
    /// catalog waits of one overlap the work of another; stops taking new
    /// jobs after the first failure. Results come back in job order, for the
    /// jobs that ran. `F` returns a `Result` or a pair ending in one.
    pub(crate) fn in_parallel<J: Send, R: Send + Failable>(
        &self,
        jobs: Vec<(usize, J)>,
        work: impl Fn(&J) -> R + Sync,
    ) -> Vec<(usize, R)> {
        let workers = self.threads.clamp(1, 4).min(jobs.len().max(1));
        // Each result goes into the slot of its place in the queue: no
        // growing and no sorting of what may be large values (a batch's
        // staged datasets), and no fresh memory for either.
        let mut slots = Vec::with_capacity(jobs.len());
        slots.resize_with(jobs.len(), || None);
        let results: std::sync::Mutex<Vec<Option<(usize, R)>>> = std::sync::Mutex::new(slots);
        let queue = std::sync::Mutex::new(jobs.into_iter().enumerate());
        let abort = std::sync::atomic::AtomicBool::new(false);
        let worker = || loop {
            if abort.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let Some((at, (i, job))) = queue.lock().expect("job queue").next() else { break };
            let r = work(&job);
            if r.failed() {
                abort.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            results.lock().expect("results")[at] = Some((i, r));
        };
        if workers == 1 {
            // One worker: this thread.
            worker();
        } else {
            std::thread::scope(|s| {
                for _ in 0..workers {
                    s.spawn(worker);
                }
            });
        }
        let slots = results.into_inner().expect("results");
        let mut results: Vec<(usize, R)> = Vec::with_capacity(slots.len());
        results.extend(slots.into_iter().flatten());
        if !results.is_sorted_by_key(|(i, _)| *i) {
            results.sort_by_key(|(i, _)| *i);
        }
        results
    }

    /// Copy the sealed objects of a dataset's current generation from `src`
    /// to volume `dst_name` (opened as `dst`) byte for byte (no key), make
    /// them durable, then run `record` with the chunk list and the chunks
    /// it found recorded on the target already, to commit the copy in the
    /// catalog. Objects already on the target are trusted only as
    /// [`copy_raw`] says. When anything fails, nothing is deleted: these
    /// objects carry the source's names, so a concurrent copy may rely on
    /// them; what no commit records is left for `custos gc`.
    pub(crate) fn copy_generation_raw<T>(
        &self,
        d: &DatasetRecord,
        src: &dyn custos_store::Volume,
        dst: &dyn custos_store::Volume,
        dst_name: &VolumeName,
        read_back: bool,
        record: impl FnOnce(&[custos_model::ChunkId], &[custos_model::ChunkId]) -> Result<T>,
    ) -> Result<T> {
        let g = &d.current;
        let chunks = self.repo.generation_chunks(&d.id, g.generation)?;
        if chunks.len() as u64 != g.chunk_count {
            // `d` was read earlier, and the generation it names has been
            // replaced and dropped since: its chunk list is gone (copying
            // its manifest alone recorded a copy whose chunks were never
            // copied, as the eight-worker soak found).
            return Err(custos_repo::RepoError::Raced {
                what: format!("the copy of {}", d.name),
                why: format!("its generation {} was replaced while the copy started", g.generation),
            }
            .into());
        }
        let max = g.chunk_size as usize + CHUNK_OVERHEAD;
        let layout = Some((g.chunk_size as u64, g.size));
        let committed = |id: &custos_model::ChunkId| self.repo.chunk_referenced(dst_name, id).unwrap_or(false);
        let copied = copy_raw(&chunks, layout, src, dst, max, self.threads, &committed);
        copied.result?;
        dst.sync()?;
        if read_back {
            // Every object read back from the target and compared with the
            // source; one that had to be written again did not read back.
            let check = copy_raw(&chunks, None, src, dst, max, self.threads, &|_| false);
            check.result?;
            if let Some(id) = check.written.first() {
                return Err(Error::Invalid {
                    what: "copy",
                    why: format!(
                        "chunk {id} of {} did not read back from {} as written; nothing was moved: check the volume and run the command again",
                        d.name,
                        dst.describe()
                    ),
                });
            }
        }
        let manifest = src.read_manifest_where(&d.id, g.generation, &|b| object_hash(b) == g.manifest_hash)?;
        if object_hash(&manifest) != g.manifest_hash {
            return Err(Error::Manifest {
                dataset: d.name.clone(),
                generation: g.generation,
                volume: src.describe(),
                why: "does not match the one the catalog committed, so it was not copied".into(),
            });
        }
        match dst.put_manifest(&d.id, g.generation, &manifest) {
            Err(custos_store::StoreError::Exists { .. }) => {
                // Left by an interrupted or concurrent copy: the same object is reused.
                if dst.read_manifest_where(&d.id, g.generation, &|b| b == manifest)? != manifest {
                    return Err(Error::Manifest {
                        dataset: d.name.clone(),
                        generation: g.generation,
                        volume: dst.describe(),
                        why: "already exists there with other content, left by an interrupted write; nothing was recorded: run `custos gc` (it removes objects nothing records once the grace period is over), then run the command again".into(),
                    });
                }
            }
            r => r?,
        }
        record(&chunks, &copied.reused)
    }
}

/// Why the producing side of [`Vault::pipe`] stopped: a failure of its
/// own, or its output closed (the consumer stopped reading).
pub(crate) enum Produced {
    Failed(Error),
    Output(std::io::Error),
}

/// A result that may be a failure, for [`Vault::in_parallel`].
pub(crate) trait Failable {
    fn failed(&self) -> bool;
}

impl<T> Failable for Result<T> {
    fn failed(&self) -> bool {
        self.is_err()
    }
}

impl<A, T> Failable for (A, Result<T>) {
    fn failed(&self) -> bool {
        self.1.is_err()
    }
}

/// A logical copy decided on (dataset, previous copy of its series, BACK
/// key, and that key's record when it is new) but not made yet.
struct LogicalPlan {
    d: DatasetRecord,
    previous: Option<BackupRecord>,
    back: KeyRecord,
    new_key: Option<KeyRecord>,
    /// The key of the source's current generation, as read when planned.
    primary: KeyRecord,
}

/// Results of a batch of logical copies under the run's index: the key
/// labels whose use is still to count, and the copy's record.
type CopyResults = Vec<(usize, (Vec<KeyLabel>, Result<BackupRecord>))>;

/// A batch of logical copies stored on `dst`, not yet durable or recorded.
struct StagedCopies {
    dst: std::sync::Arc<dyn custos_store::Volume>,
    /// By their place in the batch.
    copies: Vec<(usize, StagedCopy)>,
    failed: Vec<(usize, Error)>,
}

impl StagedCopies {
    /// Delete what the batch stored: it will not be recorded.
    fn abandon(&self) {
        for (_, c) in &self.copies {
            c.abandon(self.dst.as_ref());
        }
    }

    /// Give up every copy for `e`: what they stored is deleted, the first
    /// carries the error itself, the rest its words.
    fn fail_all(&mut self, e: Error) {
        self.abandon();
        let why = e.to_string();
        let mut first = Some(e);
        for (k, _) in std::mem::take(&mut self.copies) {
            let err = first.take().unwrap_or_else(|| Error::Invalid { what: "logical copy", why: why.clone() });
            self.failed.push((k, err));
        }
    }
}

/// A logical copy whose chunks are stored, not yet recorded.
struct StagedCopy {
    /// The record to insert (its id once inserted).
    rec: BackupRecord,
    chunks: Vec<ChunkRef>,
    ids: Vec<ChunkId>,
    /// The source chunk each was made from.
    sources: Vec<ChunkId>,
    /// Chunks of the previous copy it shares.
    reused: Vec<ChunkId>,
    /// The BACK key made for it, as it will be recorded.
    new_key: Option<KeyRecord>,
    /// Chunks it stored.
    written: Vec<ChunkId>,
    /// The generation its manifest was stored as, and where.
    placed: Option<(u64, custos_store::Placed)>,
    back_key: DataKey,
    since: u64,
}

impl StagedCopy {
    /// Seal and store the manifest (durable now, or at the next sync when
    /// `deferred`) as the series' next free generation: one that an
    /// interrupted or concurrent copy took is skipped, never touched.
    fn place(&mut self, plan: &LogicalPlan, dst: &dyn custos_store::Volume, deferred: bool) -> Result<()> {
        let kcv = self.new_key.as_ref().unwrap_or(&plan.back).kcv;
        let (name, copy_id) = (&self.rec.dataset, self.rec.copy_id);
        let seal = |generation| {
            Manifest {
                dataset_id: copy_id,
                generation,
                created_at: self.rec.created_at,
                chunk_size: self.rec.chunk_size,
                size: self.rec.size,
                name: name.to_string(),
                key_label: self.rec.key_label.to_string(),
                key_kcv: kcv,
                chunks: self.chunks.clone(),
            }
            .seal(&self.back_key)
            .map_err(|e| Error::Invalid { what: "manifest", why: e.to_string() })
        };
        let (generation, sealed, placed) = if deferred {
            place_manifest_with(dst, name, self.rec.generation, seal, |g, b| match self.written.first() {
                Some(anchor) => dst.put_manifest_beside(&copy_id, g, b, anchor),
                None => dst.put_manifest_deferred(&copy_id, g, b),
            })?
        } else {
            let (g, sealed) = place_manifest(dst, name, &copy_id, self.rec.generation, seal)?;
            (g, sealed, custos_store::Placed::Own)
        };
        self.placed = Some((generation, placed));
        self.rec.generation = generation;
        self.rec.manifest_hash = object_hash(&sealed);
        Ok(())
    }

    /// Delete what this copy stored: it will not be recorded. Only what it
    /// created: its chunks have fresh random ids, and its manifest was
    /// created under a name it alone took or in a pack of its own.
    fn abandon(&self, dst: &dyn custos_store::Volume) {
        for id in &self.written {
            let _ = dst.delete_chunk(id);
        }
        if let Some((g, at)) = self.placed {
            let _ = dst.delete_placed_manifest(&self.rec.copy_id, g, at);
        }
    }
}

/// Catalog records read once for a run over many datasets, by name; a
/// name missing from the snapshot is looked up again.
/// Above this many datasets, a run of copies reads the catalog whole
/// rather than one dataset at a time.
const PRELOAD_ABOVE: usize = 64;

struct Preloaded<K, V>(HashMap<K, V>);

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Preloaded<K, V> {
    fn new(all: Vec<V>, key: impl Fn(&V) -> &K) -> Self {
        Self(all.into_iter().map(|v| (key(&v).clone(), v)).collect())
    }

    fn get(&self, k: &K, look_up: impl FnOnce(&K) -> Result<V>) -> Result<V> {
        match self.0.get(k) {
            Some(v) => Ok(v.clone()),
            None => look_up(k),
        }
    }
}

type KeyCache = Preloaded<KeyLabel, KeyRecord>;

/// The catalog's backups grouped by dataset, in catalog order.
fn backups_by_dataset(all: Vec<BackupRecord>) -> HashMap<DatasetId, Vec<BackupRecord>> {
    let mut m: HashMap<DatasetId, Vec<BackupRecord>> = HashMap::new();
    for b in all {
        m.entry(b.dataset_id).or_default().push(b);
    }
    m
}

/// Names new keys by the naming standard for a run that creates many before
/// any is stored: the keystore is read once, then numbers count on.
#[derive(Default)]
struct LabelAllocator {
    next: HashMap<(String, Purpose), u32>,
}

impl LabelAllocator {
    fn next<S: VaultState>(&mut self, v: &Vault<S>, app: &str, purpose: Purpose) -> Result<KeyLabel> {
        let ns = v.naming()?;
        let seq = match self.next.get_mut(&(app.to_string(), purpose)) {
            Some(n) => {
                *n += 1;
                *n
            }
            None => {
                let first = v.next_label(app, purpose)?;
                let n = ns.parse(first.as_str())?.seq;
                self.next.insert((app.to_string(), purpose), n);
                n
            }
        };
        Ok(KeyLabel::new(ns.label(purpose, app, seq))?)
    }
}

/// Plaintext handed from a reading pipeline to a sealing one. The reader
/// sees end-of-data only when the writer finished successfully; a writer
/// that failed or vanished makes the reader fail, so a short source can
/// never be committed as a complete copy.
enum Msg {
    Data(Vec<u8>),
    End,
    Failed,
}

struct ChannelWriter {
    tx: Sender<Msg>,
    buf: Vec<u8>,
}

const PIPE_PIECE: usize = 1 << 20;

impl Write for ChannelWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= PIPE_PIECE {
            self.flush()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIPE_PIECE));
            self.tx.send(Msg::Data(piece)).map_err(|_| std::io::Error::other("the sealing side stopped"))?;
        }
        Ok(())
    }
}

struct ChannelReader {
    rx: Receiver<Msg>,
    cur: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Msg::Data(v)) => (self.cur, self.pos) = (v, 0),
                Ok(Msg::End) => self.ended = true,
                Ok(Msg::Failed) | Err(_) => return Err(std::io::Error::other("the source of the copy failed")),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn channel() -> (ChannelWriter, ChannelReader) {
    let (tx, rx) = bounded(4);
    (
        ChannelWriter { tx, buf: Vec::with_capacity(PIPE_PIECE) },
        ChannelReader { rx, cur: Vec::new(), pos: 0, ended: false },
    )
}

impl Vault<Open> {
    /// Stream the plaintext of a sealed object set into `consume`, on two
    /// threads (see [`Vault::pipe`]).
    fn stream_copy<T>(
        &self,
        name: &DatasetName,
        generation: u64,
        open: &OpenJob<'_>,
        size: u64,
        consume: impl FnOnce(&mut dyn Read) -> Result<T>,
    ) -> Result<T> {
        let produce = |w: &mut dyn Write| {
            open_stream(open, 0, size, w).map_err(|e| match e {
                OpenError::Chunk { index, id, problem } => Produced::Failed(Error::Chunk {
                    dataset: name.clone(),
                    generation,
                    index,
                    id,
                    volume: open.volume.describe(),
                    problem,
                }),
                OpenError::Store(e) => Produced::Failed(e.into()),
                OpenError::Output(e) => Produced::Output(e),
            })
        };
        self.pipe(produce, consume)
    }

    /// Run `produce` on a thread of its own, writing into a pipe that
    /// `consume` reads on this one. The producer's own failure wins over
    /// the consumer's, since it is the cause; a producer that stopped only
    /// because the consumer stopped reading gives the consumer's answer.
    pub(crate) fn pipe<T>(
        &self,
        produce: impl FnOnce(&mut dyn Write) -> std::result::Result<(), Produced> + Send,
        consume: impl FnOnce(&mut dyn Read) -> Result<T>,
    ) -> Result<T> {
        let (mut w, mut r) = channel();
        std::thread::scope(|s| {
            let producer = s.spawn(move || {
                let res = produce(&mut w).and_then(|_| w.flush().map_err(Produced::Output));
                let _ = w.tx.send(if res.is_ok() { Msg::End } else { Msg::Failed });
                res
            });
            let consumed = consume(&mut r);
            drop(r);
            match producer.join().expect("copy producer does not panic") {
                Err(Produced::Failed(e)) => Err(e),
                Err(Produced::Output(_)) | Ok(()) => consumed,
            }
        })
    }

    /// The BACK key for a logical copy: the one named, else the one the
    /// previous copy used if it still encrypts, else a new one by the naming
    /// standard (returned to be stored with the backup).
    fn backup_key(
        &self,
        d: &DatasetRecord,
        named: Option<&KeyLabel>,
        previous: Option<&BackupRecord>,
        labels: &mut LabelAllocator,
        keys: &KeyCache,
    ) -> Result<(KeyRecord, Option<KeyRecord>)> {
        let primary = keys.get(&d.current.key_label, |l| self.key_record(l))?;
        if let Some(label) = named {
            if *label == primary.label {
                return Err(Error::Invalid {
                    what: "logical backup",
                    why: format!(
                        "{label} is the primary's own key; a copy under it would be lost with it: name a BACK key"
                    ),
                });
            }
            let k = keys.get(label, |l| self.key_record(l))?;
            if k.purpose != Purpose::Back {
                return Err(Error::KeyPurpose {
                    label: label.clone(),
                    state: k.state,
                    why: "logical copies are sealed under backup (BACK) keys",
                });
            }
            return Ok((k, None));
        }
        if let Some(p) = previous {
            let k = keys.get(&p.key_label, |l| self.key_record(l))?;
            if k.state.permits(KeyUse::Encrypt).is_ok() && k.expires_at.is_none_or(|e| e > Timestamp::now()) {
                return Ok((k, None));
            }
        }
        // A label another run took since the keystore was read is passed over.
        for _ in 0..64 {
            let made = self.new_key_record(&NewKey {
                label: Some(labels.next(self, &primary.app, Purpose::Back)?),
                app: Some(primary.app.clone()),
                purpose: Purpose::Back,
                expires_at: None,
                activate: true,
            });
            match made {
                Err(Error::Repo(custos_repo::RepoError::Exists { kind: "key", .. })) => continue,
                made => {
                    let rec = made?;
                    return Ok((rec.clone(), Some(rec)));
                }
            }
        }
        Err(Error::Invalid {
            what: "logical backup",
            why: format!("{}: every label tried for a new BACK key was taken by concurrent runs; run it again", d.name),
        })
    }

    /// Logical copy of a dataset's current generation to `to`, re-sealed
    /// under a BACK key. Returns `None` when that generation already has a
    /// logical copy there.
    pub fn backup_logical(
        &self,
        name: &DatasetName,
        to: &VolumeName,
        key: Option<&KeyLabel>,
    ) -> Result<Option<BackupRecord>> {
        let mut made = self.backup_logical_many(std::slice::from_ref(name), to, key)?;
        Ok(made.pop().and_then(|(_, b)| b))
    }

    /// Logical copies of many datasets to `to`. Keys are chosen (and new
    /// BACK keys named) first, in order; then the copies run a few datasets
    /// at a time, each committed on its own as soon as it is durable, so the
    /// waits of one (device flushes, catalog commits) overlap the work of
    /// another. Stops at the first failure, which it returns once the copies
    /// under way have finished; copies committed before it stay.
    pub fn backup_logical_many(
        &self,
        names: &[DatasetName],
        to: &VolumeName,
        key: Option<&KeyLabel>,
    ) -> Result<Vec<(DatasetName, Option<BackupRecord>)>> {
        let results = self.logical_run(names, to, key, false)?;
        let mut out = Vec::with_capacity(names.len());
        let mut first_error = None;
        for (name, r) in names.iter().zip(results) {
            match r {
                Some(Err(e)) => {
                    first_error.get_or_insert(e);
                    out.push((name.clone(), None));
                }
                Some(Ok(b)) => out.push((name.clone(), b)),
                None => out.push((name.clone(), None)),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Logical copies of many datasets to `to`, as
    /// [`Vault::backup_logical_many`] makes them, except that one dataset's
    /// failure does not stop the others: each name gets its own outcome
    /// (`hsm run`).
    #[allow(clippy::type_complexity)]
    pub fn backup_logical_each(
        &self,
        names: &[DatasetName],
        to: &VolumeName,
        key: Option<&KeyLabel>,
    ) -> Result<Vec<(DatasetName, Result<Option<BackupRecord>>)>> {
        let mut done: Vec<Option<Result<Option<BackupRecord>>>> = names.iter().map(|_| None).collect();
        loop {
            let left: Vec<usize> = (0..names.len()).filter(|&i| done[i].is_none()).collect();
            if left.is_empty() {
                break;
            }
            let batch: Vec<DatasetName> = left.iter().map(|&i| names[i].clone()).collect();
            let results = self.logical_run(&batch, to, key, true)?;
            let mut progress = false;
            for (&i, r) in left.iter().zip(results) {
                progress |= r.is_some();
                done[i] = r;
            }
            // A run always settles at least its first dataset; should one
            // not, say so rather than loop.
            if !progress {
                let why = "the copy run stopped before it reached it; run the command again".to_string();
                for d in done.iter_mut().filter(|d| d.is_none()) {
                    *d = Some(Err(Error::Invalid { what: "logical backup", why: why.clone() }));
                }
            }
        }
        Ok(names.iter().cloned().zip(done.into_iter().map(|r| r.expect("settled above"))).collect())
    }

    /// The run behind [`Vault::backup_logical_many`] and
    /// [`Vault::backup_logical_each`]: an outcome per name (`Ok(None)`: it
    /// has that copy already), or `None` for a dataset not reached because
    /// an earlier failure stopped the run. A failure to plan a copy (its
    /// key, say) ends the whole call unless `keep_going`.
    #[allow(clippy::type_complexity)]
    fn logical_run(
        &self,
        names: &[DatasetName],
        to: &VolumeName,
        key: Option<&KeyLabel>,
        keep_going: bool,
    ) -> Result<Vec<Option<Result<Option<BackupRecord>>>>> {
        // Settings, the key-backup key and the destruction schedule are
        // read once for the run, as for a batch.
        let _memo = self.batch_memo();
        self.volume_record(to)?;
        // For a large run the catalog is read once, whole: datasets, keys,
        // backups. A few datasets (`hsm run` after a handful of changes) are
        // looked up one by one instead, so the cost follows the change, not
        // the size of the vault.
        let whole = names.len() > PRELOAD_ABOVE;
        let datasets = Preloaded::new(if whole { self.repo.datasets()? } else { vec![] }, |d: &DatasetRecord| &d.name);
        let keys = Preloaded::new(if whole { self.repo.keys()? } else { vec![] }, |k: &KeyRecord| &k.label);
        let backups = backups_by_dataset(if whole {
            self.repo.backups()?
        } else {
            let mut mine = Vec::new();
            for n in names {
                mine.extend(self.repo.dataset_backups(n)?);
            }
            mine
        });
        let mut labels = LabelAllocator::default();
        let mut out: Vec<Option<Result<Option<BackupRecord>>>> = Vec::with_capacity(names.len());
        // Boxed: a plan holds four records, and a run may plan 100,000.
        let mut plans: Vec<(usize, Box<LogicalPlan>)> = Vec::with_capacity(names.len());
        for name in names {
            let planned = (|| {
                let d = datasets.get(name, |n| self.dataset(n))?;
                let series: Vec<&BackupRecord> = backups
                    .get(&d.id)
                    .into_iter()
                    .flatten()
                    .filter(|b| b.method == CopyMethod::Logical && b.volume == *to)
                    .collect();
                let previous = series.last().map(|b| (*b).clone());
                // Arguments are checked before anything is skipped as done already.
                let (back, new_key) = self.backup_key(&d, key, previous.as_ref(), &mut labels, &keys)?;
                if series.iter().any(|b| b.source_generation == d.current.generation) {
                    return Ok(None);
                }
                let primary = keys.get(&d.current.key_label, |l| self.key_record(l))?;
                Ok(Some(Box::new(LogicalPlan { d, previous, back, new_key, primary })))
            })();
            match planned {
                Ok(Some(plan)) => {
                    plans.push((out.len(), plan));
                    out.push(None);
                }
                Ok(None) => out.push(Some(Ok(None))),
                Err(e) if keep_going => out.push(Some(Err(e))),
                Err(e) => return Err(e),
            }
        }
        // Big datasets one at a time, every worker on their chunks; small
        // ones in batches, side by side, each batch made durable by one
        // flush and recorded in one transaction.
        let (small, big): (Vec<_>, Vec<_>) =
            plans.into_iter().partition(|(_, p)| p.d.current.size <= 4 * u64::from(p.d.current.chunk_size));
        let mut results = self.in_parallel(big, |plan| {
            let r = self.copy_logical(plan, to);
            let uses = match &r {
                Ok(b) => vec![plan.d.current.key_label.clone(), b.key_label.clone()],
                Err(_) => vec![],
            };
            (uses, r)
        });
        // A thread of its own seals the next batch while this one makes the
        // last durable and records it; none is recorded after one failed,
        // and the batch sealed behind it is deleted again. Objects go into
        // the target only while no flush and record runs (ADR 0034).
        let gate = std::sync::RwLock::new(());
        let gate = &gate;
        std::thread::scope(|scope| -> Result<()> {
            if results.iter().any(|(_, r)| r.failed()) {
                return Ok(());
            }
            type Handed<'p> = (&'p [(usize, Box<LogicalPlan>)], Result<StagedCopies>);
            let (tx, rx) = std::sync::mpsc::sync_channel::<Handed<'_>>(1);
            let small = small.as_slice();
            scope.spawn(move || {
                let mut rest = small;
                while !rest.is_empty() {
                    let (mut n, mut bytes) = (0, 0u64);
                    while n < rest.len() && n < crate::datasets::BATCH_FILES && bytes < crate::datasets::BATCH_BYTES {
                        bytes += rest[n].1.d.current.size;
                        n += 1;
                    }
                    let batch = &rest[..n];
                    rest = &rest[n..];
                    let staged = self.stage_copies(batch, to, gate);
                    let failed = staged.is_err();
                    if let Err(std::sync::mpsc::SendError((_, Ok(b)))) = tx.send((batch, staged)) {
                        b.abandon();
                        return;
                    }
                    if failed {
                        return;
                    }
                }
            });
            for (batch, staged) in rx {
                let recorded = self.record_copies(batch, staged?, gate);
                let failed = recorded.iter().any(|(_, r)| r.failed());
                results.extend(recorded);
                if failed {
                    break;
                }
            }
            Ok(())
        })?;
        // Uses of keys the batches did not count are counted once for the
        // whole run, in one transaction.
        let mut used = Vec::new();
        for (i, (uses, r)) in results {
            used.extend(uses);
            out[i] = Some(r.map(Some));
        }
        self.repo.record_key_uses(&used)?;
        Ok(out)
    }

    /// Seal a batch of planned logical copies of small datasets side by side
    /// (each on one worker) into one pack on the target, placed but not yet
    /// durable or recorded ([`Vault::record_copies`] does both).
    fn stage_copies(
        &self,
        batch: &[(usize, Box<LogicalPlan>)],
        to: &VolumeName,
        gate: &std::sync::RwLock<()>,
    ) -> Result<StagedCopies> {
        // Settings and opened volumes are read once for the batch (a
        // source volume then parses each pack's index once).
        let _memo = self.batch_memo();
        let since = self.repo.deletion_seq()?;
        let dst = self.open_volume(to)?;
        // Jobs by their place in the batch; results go out under the run's index.
        let jobs: Vec<(usize, &LogicalPlan)> = batch.iter().map(|(_, p)| p.as_ref()).enumerate().collect();
        // The batch's chunks go into one pack where the target makes packs (ADR 0030).
        let packing = custos_store::Packing::start(dst.as_ref())?.gated(gate);
        let staged = self.in_parallel(jobs, |plan| self.stage_logical(plan, to, &packing, since, 1, true));
        let mut b = StagedCopies { dst: dst.clone(), copies: Vec::with_capacity(staged.len()), failed: Vec::new() };
        for (k, r) in staged {
            match r {
                Ok(c) => b.copies.push((k, c)),
                Err(e) => b.failed.push((k, e)),
            }
        }
        if let Err(e) = packing.finish() {
            b.fail_all(e.into());
        }
        Ok(b)
    }

    /// Make a staged batch of logical copies durable (one flush of the
    /// target) and record them in one transaction (one at a time when that
    /// fails, as [`Vault::copy_logical`] would), counting their keys' uses.
    /// Each result as `copy_logical`'s, under the run's index, with the key
    /// labels whose use is still to count. Holds `gate` from the flush to
    /// its last catalog write, as [`Vault::commit_batch`] does.
    fn record_copies(
        &self,
        batch: &[(usize, Box<LogicalPlan>)],
        mut b: StagedCopies,
        gate: &std::sync::RwLock<()>,
    ) -> CopyResults {
        let _memo = self.batch_memo();
        let _flushing = gate.write().unwrap_or_else(|p| p.into_inner());
        let dst = b.dst.clone();
        if let Err(e) = dst.sync() {
            b.fail_all(e.into());
        }
        let primary = |k: usize| batch[k].1.d.current.key_label.clone();
        let mut out: CopyResults = b.failed.into_iter().map(|(k, e)| (batch[k].0, (vec![], Err(e)))).collect();
        // BACK keys made for the batch are recorded as used once.
        let now = Timestamp::now();
        for k in b.copies.iter_mut().filter_map(|(_, c)| c.new_key.as_mut()) {
            k.use_count = 1;
            k.last_used_at = Some(now);
        }
        let inserts: Vec<custos_repo::BackupInsert<'_>> = b
            .copies
            .iter()
            .map(|(_, c)| custos_repo::BackupInsert {
                record: &c.rec,
                chunks: &c.ids,
                sources: &c.sources,
                new_key: c.new_key.as_ref(),
                reused: &c.reused,
                since: c.since,
            })
            .collect();
        let recorded = if inserts.is_empty() { Ok(Vec::new()) } else { self.repo.insert_backups(&inserts) };
        drop(inserts);
        let mut done = Vec::with_capacity(b.copies.len());
        match recorded {
            Ok(ids) => {
                for ((k, mut c), id) in b.copies.into_iter().zip(ids) {
                    c.rec.id = id;
                    done.push((k, c));
                }
            }
            // One of them cannot be recorded as staged (a concurrent run
            // took a BACK key's label, or an object it shares): each on
            // its own.
            Err(_) => {
                for (k, mut c) in b.copies {
                    match self.record_copy(&mut c, &batch[k].1, dst.as_ref()) {
                        Ok(()) => done.push((k, c)),
                        Err(e) => {
                            c.abandon(dst.as_ref());
                            out.push((batch[k].0, (vec![], Err(e))));
                        }
                    }
                }
            }
        }
        // The sources' keys, and BACK keys that were in the catalog before.
        let mut uses = Vec::with_capacity(done.len() * 2);
        for (k, c) in &done {
            uses.push(primary(*k));
            if c.new_key.is_none() {
                uses.push(c.rec.key_label.clone());
            }
        }
        let counted = self.repo.record_key_uses(&uses).is_ok();
        for (k, c) in done {
            // Uncounted here, they are counted again with the run's.
            let again = if counted {
                vec![]
            } else {
                let mut v = vec![primary(k)];
                v.extend(c.new_key.is_none().then(|| c.rec.key_label.clone()));
                v
            };
            out.push((batch[k].0, (again, Ok(c.rec))));
        }
        out.sort_by_key(|(i, _)| *i);
        out
    }

    /// Make one planned logical copy and commit it.
    fn copy_logical(&self, plan: &LogicalPlan, to: &VolumeName) -> Result<BackupRecord> {
        // Before any object of the target is looked at (see `GenerationCommit::since`).
        let since = self.repo.deletion_seq()?;
        let dst = self.open_volume(to)?;
        let mut c = self.stage_logical(plan, to, dst.as_ref(), since, self.threads, false)?;
        match self.record_copy(&mut c, plan, dst.as_ref()) {
            Ok(()) => Ok(c.rec),
            Err(e) => {
                c.abandon(dst.as_ref());
                Err(e)
            }
        }
    }

    /// Re-seal a planned logical copy's chunks onto `dst` under its BACK
    /// key (with `threads` workers; one works on this thread) and store its
    /// manifest: durable now (after a flush of the chunks), or, when
    /// `deferred`, at `dst`'s next sync. On failure, what it stored is
    /// deleted again.
    fn stage_logical(
        &self,
        plan: &LogicalPlan,
        to: &VolumeName,
        dst: &dyn custos_store::Volume,
        since: u64,
        threads: usize,
        deferred: bool,
    ) -> Result<StagedCopy> {
        let LogicalPlan { d, previous, back, new_key, primary } = plan;
        let (name, g, previous) = (&d.name, &d.current, previous.as_ref());
        let back_key = match new_key {
            // Made for this copy and not in the catalog yet: no destruction
            // can be scheduled for it.
            Some(_) => {
                back.state.permits(KeyUse::Encrypt).map_err(|source| Error::KeyUnusable {
                    label: back.label.clone(),
                    dataset: Some(name.clone()),
                    source,
                })?;
                self.unwrap_checked(back)?
            }
            None => self.unwrap_for(back, KeyUse::Encrypt, name)?,
        };
        let primary_key = self.unwrap_for(primary, KeyUse::Decrypt, name)?;
        let src = self.open_volume(&g.volume)?;
        let source = self.load_manifest(d, &primary_key, src.as_ref())?;
        // Continue the previous copy's series. Its chunks are reused, unread,
        // wherever the source chunk is the very object that copy was made from
        // (source chunks are immutable and bound to their position).
        let (copy_id, generation) = match previous {
            Some(p) => (p.copy_id, p.generation + 1),
            None => (DatasetId::random(), 1),
        };
        let mut reuse: Vec<Option<ChunkRef>> = vec![None; source.chunks.len()];
        if let Some(p) = previous.filter(|p| p.key_label == back.label && p.chunk_size == source.chunk_size) {
            if let Ok(m) = open_manifest(dst, name, &p.copy_id, p.generation, &p.manifest_hash, &back_key) {
                let made_from = self.repo.backup_sources(p.id)?;
                for (i, c) in source.chunks.iter().enumerate() {
                    if let (Some(Some(was)), Some(copy)) = (made_from.get(i), m.chunks.get(i)) {
                        if *was == c.id && copy.len == c.len {
                            reuse[i] = Some(*copy);
                        }
                    }
                }
            }
        }
        let job = TranscodeJob {
            from: OpenJob {
                key: &primary_key,
                dataset: d.id,
                volume: src.as_ref(),
                chunks: &source.chunks,
                chunk_size: source.chunk_size as u64,
                threads,
            },
            to_key: &back_key,
            to_id: copy_id,
            to_volume: dst,
            reuse: &reuse,
        };
        let outcome = transcode(&job);
        let mut c = StagedCopy {
            rec: BackupRecord {
                id: 0,
                dataset: name.clone(),
                dataset_id: d.id,
                source_generation: g.generation,
                method: CopyMethod::Logical,
                volume: to.clone(),
                key_label: new_key.as_ref().unwrap_or(back).label.clone(),
                copy_id,
                generation,
                size: source.size,
                chunk_size: source.chunk_size,
                chunk_count: 0,
                manifest_hash: [0; 32],
                created_at: Timestamp::now(),
                checked: None,
            },
            chunks: Vec::new(),
            ids: Vec::new(),
            sources: source.chunks.iter().map(|c| c.id).collect(),
            reused: reuse.iter().flatten().map(|c| c.id).collect(),
            new_key: new_key.clone(),
            written: outcome.written,
            placed: None,
            back_key,
            since,
        };
        let staged = (|| -> Result<()> {
            c.chunks = outcome.result.map_err(|e| match e {
                TranscodeError::Source(OpenError::Chunk { index, id, problem }) => Error::Chunk {
                    dataset: name.clone(),
                    generation: g.generation,
                    index,
                    id,
                    volume: src.describe(),
                    problem,
                },
                TranscodeError::Source(OpenError::Store(e)) | TranscodeError::Target(SealError::Store(e)) => e.into(),
                TranscodeError::Source(OpenError::Output(e)) | TranscodeError::Target(SealError::Input(e)) => {
                    Error::Invalid { what: "logical copy", why: e.to_string() }
                }
                TranscodeError::Target(SealError::Format(e)) => Error::Invalid { what: "chunk", why: e.to_string() },
            })?;
            c.ids = c.chunks.iter().map(|c| c.id).collect();
            c.rec.chunk_count = c.chunks.len() as u64;
            if !deferred && !c.written.is_empty() {
                dst.sync()?;
            }
            c.place(plan, dst, deferred)
        })();
        match staged {
            Ok(()) => Ok(c),
            Err(e) => {
                c.abandon(dst);
                Err(e)
            }
        }
    }

    /// Record a staged copy whose objects are durable. When a concurrent
    /// run took the label of the BACK key made for it, the key is named
    /// anew (and the manifest, which names it, stored again).
    fn record_copy(&self, c: &mut StagedCopy, plan: &LogicalPlan, dst: &dyn custos_store::Volume) -> Result<()> {
        for _ in 0..64 {
            match self.repo.insert_backup(&c.rec, &c.ids, &c.sources, c.new_key.as_ref(), &c.reused, c.since) {
                Err(custos_repo::RepoError::Exists { kind: "key", .. }) if c.new_key.is_some() => {
                    // A concurrent run took this label for a BACK key of its own.
                    if let Some((g, at)) = c.placed.take() {
                        let _ = dst.delete_placed_manifest(&c.rec.copy_id, g, at);
                    }
                    self.relabel_new_key(c.new_key.as_mut().expect("checked"))?;
                    c.rec.key_label = c.new_key.as_ref().expect("checked").label.clone();
                    c.place(plan, dst, false)?;
                }
                Err(custos_repo::RepoError::Exists { kind: "backup", .. }) => {
                    // A concurrent run of the same series recorded this
                    // generation first: its manifest in a pack took no
                    // name this one could have seen (ADR 0035). The copy
                    // takes the next generation, as it would have had it
                    // found the name taken.
                    if let Some((g, at)) = c.placed.take() {
                        let _ = dst.delete_placed_manifest(&c.rec.copy_id, g, at);
                    }
                    c.rec.generation += 1;
                    c.place(plan, dst, false)?;
                }
                r => {
                    c.rec.id = r?;
                    return Ok(());
                }
            }
        }
        Err(Error::Invalid {
            what: "logical backup",
            why: format!(
                "{}: every label tried for its new BACK key was taken by concurrent runs; run it again",
                c.rec.dataset
            ),
        })
    }

    /// Check a backup: its manifest is the one recorded and opens under its
    /// key; with `read_data`, every chunk opens and matches the manifest.
    /// What it finds about the copy's bytes is recorded on the backup (the
    /// risk model counts a damaged copy out).
    pub fn verify_backup(&self, b: &BackupRecord, read_data: bool) -> Result<()> {
        let r = self.check_backup(b, read_data);
        self.record_check(CheckedCopy::Backup, b.id, read_data, &r)?;
        r
    }

    /// Record what a check found, when it reached the copy's bytes: a
    /// failure of the key, the HSM or the volume's reachability says
    /// nothing about them and is not recorded. (The repository keeps a full
    /// read or a finding of damage over a later pass of the manifest alone.)
    fn record_check(&self, what: CheckedCopy, id: u64, read_data: bool, r: &Result<()>) -> Result<()> {
        let problem = match r {
            Ok(()) => None,
            Err(e @ (Error::Chunk { .. } | Error::Manifest { .. })) => Some(e.to_string()),
            Err(
                e @ Error::Store(custos_store::StoreError::Missing { .. } | custos_store::StoreError::TooLarge { .. }),
            ) => Some(e.to_string()),
            Err(_) => return Ok(()),
        };
        let check = CopyCheck { at: Timestamp::now(), read_data, problem };
        match self.repo.record_check(what, id, &check) {
            Ok(()) => Ok(()),
            // The check's own failure is the answer that matters.
            Err(_) if r.is_err() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn check_backup(&self, b: &BackupRecord, read_data: bool) -> Result<()> {
        if b.method == CopyMethod::Plaintext {
            return self.check_plaintext(b, read_data);
        }
        let k = self.key_record(&b.key_label)?;
        let key = match self.unwrap_for(&k, KeyUse::Decrypt, &b.dataset) {
            Err(Error::KeyDestroyed { .. }) if b.method == CopyMethod::Raw => {
                return Err(Error::RawCopyKeyGone { backup: b.id, dataset: b.dataset.clone(), label: k.label })
            }
            other => other?,
        };
        let vol = self.open_volume(&b.volume)?;
        let m = open_manifest(vol.as_ref(), &b.dataset, &b.copy_id, b.generation, &b.manifest_hash, &key)?;
        if m.size != b.size || m.chunks.len() as u64 != b.chunk_count {
            return Err(Error::Manifest {
                dataset: b.dataset.clone(),
                generation: b.source_generation,
                volume: vol.describe(),
                why: format!("of backup {} disagrees with the catalog on size or chunk count", b.id),
            });
        }
        if read_data {
            let place = format!("{} (backup {})", vol.describe(), b.id);
            self.read_every_chunk(&key, &b.dataset, b.source_generation, b.copy_id, vol.as_ref(), &m, place)?;
        }
        Ok(())
    }

    /// Check a snapshot: its manifest is the one pinned, and every chunk
    /// opens and matches it.
    pub fn verify_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        let r = self.check_snapshot(s);
        self.record_check(CheckedCopy::Snapshot, s.id, true, &r)?;
        r
    }

    fn check_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        let k = self.key_record(&s.key_label)?;
        let key = self.unwrap_for(&k, KeyUse::Decrypt, &s.dataset)?;
        let vol = self.open_volume(&s.volume)?;
        let m = open_manifest(vol.as_ref(), &s.dataset, &s.dataset_id, s.generation, &s.manifest_hash, &key)?;
        let place = format!("{} (snapshot {})", vol.describe(), s.id);
        self.read_every_chunk(&key, &s.dataset, s.generation, s.dataset_id, vol.as_ref(), &m, place)
    }

    /// Read and authenticate every chunk of an opened manifest, writing
    /// nothing; a failure names the chunk and `place`.
    #[allow(clippy::too_many_arguments)]
    fn read_every_chunk(
        &self,
        key: &custos_crypto::DataKey,
        name: &DatasetName,
        generation: u64,
        bound_id: DatasetId,
        vol: &dyn custos_store::Volume,
        m: &Manifest,
        place: String,
    ) -> Result<()> {
        let job = OpenJob {
            key,
            dataset: bound_id,
            volume: vol,
            chunks: &m.chunks,
            chunk_size: m.chunk_size as u64,
            threads: self.threads,
        };
        open_stream(&job, 0, m.size, &mut std::io::sink()).map_err(|e| match e {
            OpenError::Chunk { index, id, problem } => {
                Error::Chunk { dataset: name.clone(), generation, index, id, volume: place, problem }
            }
            OpenError::Store(e) => e.into(),
            OpenError::Output(e) => Error::Invalid { what: "verify", why: e.to_string() },
        })
    }

    /// Write the contents of a backup back as a new generation of its
    /// dataset (or of `as_name`), sealed under that dataset's key, or under
    /// a new key when that one can no longer encrypt; then verify it.
    pub fn restore(&self, backup: &BackupRecord, as_name: Option<&DatasetName>) -> Result<RestoreReport> {
        let (put, new_key) = if backup.method == CopyMethod::Plaintext {
            // Needs no key to read: the dataset's own (or a new one) seals it again.
            self.restore_plaintext(backup, as_name)?
        } else {
            let copy_key = self.key_record(&backup.key_label)?;
            let key = match self.unwrap_for(&copy_key, KeyUse::Decrypt, &backup.dataset) {
                Err(Error::KeyDestroyed { .. }) if backup.method == CopyMethod::Raw => {
                    return Err(Error::RawCopyKeyGone {
                        backup: backup.id,
                        dataset: backup.dataset.clone(),
                        label: copy_key.label,
                    })
                }
                other => other?,
            };
            let done = self.write_back(
                &backup.dataset,
                backup.source_generation,
                &backup.volume,
                &backup.copy_id,
                backup.generation,
                &backup.manifest_hash,
                &key,
                as_name,
            )?;
            self.repo.record_key_use(&copy_key.label)?;
            done
        };
        Ok(RestoreReport {
            backup: backup.id,
            method: backup.method,
            dataset: put.dataset,
            generation: put.generation,
            size: put.size,
            key_label: put.key_label,
            new_key,
        })
    }

    /// Write a snapshot's generation back as the dataset's newest generation
    /// (or as `as_name`), then verify it.
    pub fn snapshot_restore(&self, snap: &SnapshotRecord, as_name: Option<&DatasetName>) -> Result<crate::PutReport> {
        let k = self.key_record(&snap.key_label)?;
        let key = self.unwrap_for(&k, KeyUse::Decrypt, &snap.dataset)?;
        let (put, _) = self.write_back(
            &snap.dataset,
            snap.generation,
            &snap.volume,
            &snap.dataset_id,
            snap.generation,
            &snap.manifest_hash,
            &key,
            as_name,
        )?;
        self.repo.record_key_use(&k.label)?;
        Ok(put)
    }

    /// Stream a sealed object set (bound to `bound_id`/`generation`, on
    /// `volume`, opened with `key`) into `put` of `as_name` or `dataset`,
    /// and verify the result. Returns the put and whether a new key had to
    /// be made because the target's own can no longer encrypt.
    #[allow(clippy::too_many_arguments)]
    fn write_back(
        &self,
        dataset: &DatasetName,
        source_generation: u64,
        volume: &VolumeName,
        bound_id: &DatasetId,
        generation: u64,
        manifest_hash: &[u8; 32],
        key: &custos_crypto::DataKey,
        as_name: Option<&DatasetName>,
    ) -> Result<(crate::PutReport, bool)> {
        let target = as_name.unwrap_or(dataset).clone();
        let vol = self.open_volume(volume)?;
        let m = open_manifest(vol.as_ref(), dataset, bound_id, generation, manifest_hash, key)?;
        let (opts, new_key) = self.restore_options(&target)?;
        let open = OpenJob {
            key,
            dataset: *bound_id,
            volume: vol.as_ref(),
            chunks: &m.chunks,
            chunk_size: m.chunk_size as u64,
            threads: self.threads,
        };
        let put =
            self.stream_copy(dataset, source_generation, &open, m.size, |input| self.put(&target, input, &opts))?;
        self.verify(&target)?;
        Ok((put, new_key))
    }

    /// How a restore into `target` seals: under the target's own key if it
    /// still encrypts, else under a new key (and then true).
    pub(crate) fn restore_options(&self, target: &DatasetName) -> Result<(PutOptions, bool)> {
        let mut new_key = false;
        let opts = match self.repo.dataset(target)? {
            Some(d) => {
                let k = self.key_record(&d.current.key_label)?;
                // Usable: its state allows encryption, it has not expired,
                // and the HSM can unwrap it (its record may be damaged).
                let usable = k.state.permits(KeyUse::Encrypt).is_ok()
                    && k.expires_at.is_none_or(|e| e > Timestamp::now())
                    && self.unwrap_for(&k, KeyUse::Encrypt, target).is_ok();
                if usable {
                    PutOptions { fresh: true, ..PutOptions::default() }
                } else {
                    let app = if k.state == KeyState::Destroyed { k.app.clone() } else { target.hlq().to_string() };
                    let rec = self.create_key(&NewKey {
                        label: None,
                        app: Some(app),
                        purpose: Purpose::Prim,
                        expires_at: None,
                        activate: true,
                    })?;
                    new_key = true;
                    PutOptions { key: Some(rec.label), volume: None, fresh: true }
                }
            }
            None => PutOptions { fresh: true, ..PutOptions::default() },
        };
        Ok((opts, new_key))
    }
}

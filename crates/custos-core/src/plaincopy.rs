//! Plaintext copies: the paper's "access method to tape" copy made without
//! encryption (its Table 2: "Yes (but backups not secured i.e. not
//! encrypted)"). The dataset is opened with its key and written to a tape
//! volume as it is: plaintext chunk objects and an unsealed manifest that
//! lists them with their SHA-256 (format.md, "Plaintext copies"). Nothing
//! in the copy needs a key, so it survives the loss of every key and master
//! key; and whoever holds the medium reads the data.
//!
//! So it is refused unless the vault's `backup.plaintext` setting says
//! `allow` (a setting change, under dual control where that is set), only
//! ever goes to a tape volume, is never made by an `hsm run` rule, and the
//! risk report lists every such copy as an exposure.

use std::collections::HashSet;
use std::io::Write;

use custos_model::{BackupRecord, ChunkId, ChunkRef, CopyMethod, DatasetId, DatasetName, KeyUse, Medium, VolumeName};
use custos_store::format::{object_hash, plain_fingerprint, FormatError, Manifest};
use custos_store::{ChunkBuf, Volume};
use jiff::Timestamp;

use crate::backup::Produced;
use crate::datasets::place_manifest;
use crate::error::ChunkProblem;
use crate::pipeline::{open_stream, OpenError, OpenJob};
use crate::{Error, Open, Result, Vault, VaultState};

/// The setting that allows plaintext copies: `refuse` (the default) or `allow`.
pub const SETTING_PLAINTEXT: &str = "backup.plaintext";

impl<S: VaultState> Vault<S> {
    /// Whether plaintext copies are allowed (`backup.plaintext = allow`).
    pub fn plaintext_allowed(&self) -> Result<bool> {
        Ok(self.repo.setting(SETTING_PLAINTEXT)?.as_deref() == Some("allow"))
    }

    pub fn set_plaintext_allowed(&self, value: &str) -> Result<()> {
        match value {
            "allow" | "refuse" => Ok(self.repo.set_setting(SETTING_PLAINTEXT, value)?),
            _ => Err(Error::Invalid {
                what: SETTING_PLAINTEXT,
                why: format!("{value:?}: give allow (plaintext copies to tape may be made) or refuse"),
            }),
        }
    }
}

impl Vault<Open> {
    /// Plaintext copies of the current generation of each of `names` to
    /// the tape volume `to`; `None` for a dataset whose current generation
    /// has one there already. Each copy is committed on its own once its
    /// objects are durable; the first failure stops the run and is returned
    /// (copies made before it stay).
    pub fn backup_plaintext_many(
        &self,
        names: &[DatasetName],
        to: &VolumeName,
    ) -> Result<Vec<(DatasetName, Option<BackupRecord>)>> {
        if !self.plaintext_allowed()? {
            return Err(Error::Invalid {
                what: "plaintext copy",
                why: format!(
                    "the vault's {SETTING_PLAINTEXT} setting is refuse: a plaintext copy exposes the data to whoever holds the tape; to allow it: `custos config set {SETTING_PLAINTEXT} allow`"
                ),
            });
        }
        let vol = self.volume_record(to)?;
        if vol.medium != Medium::Tape {
            return Err(Error::Invalid {
                what: "plaintext copy",
                why: format!("{to} is a disk volume: plaintext copies go to tape volumes only (the paper's access method to tape)"),
            });
        }
        // The copies there already, as (dataset, generation), read once.
        let have: HashSet<(DatasetId, u64)> = self
            .repo
            .backups()?
            .into_iter()
            .filter(|b| b.method == CopyMethod::Plaintext && b.volume == *to)
            .map(|b| (b.dataset_id, b.source_generation))
            .collect();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let d = self.dataset(name)?;
            if have.contains(&(d.id, d.current.generation)) {
                out.push((name.clone(), None));
                continue;
            }
            let b = self.copy_plaintext(&d, to)?;
            self.repo.record_key_uses(std::slice::from_ref(&d.current.key_label))?;
            out.push((name.clone(), Some(b)));
        }
        Ok(out)
    }

    fn copy_plaintext(&self, d: &custos_model::DatasetRecord, to: &VolumeName) -> Result<BackupRecord> {
        let since = self.repo.deletion_seq()?;
        let g = &d.current;
        let primary = self.key_record(&g.key_label)?;
        let key = self.unwrap_for(&primary, KeyUse::Decrypt, &d.name)?;
        let src = self.open_volume(&g.volume)?;
        let source = self.load_manifest(d, &key, src.as_ref())?;
        let dst = self.open_volume(to)?;
        let copy_id = DatasetId::random();
        let mut w = PlainWriter {
            dst: dst.as_ref(),
            chunk_size: source.chunk_size as usize,
            buf: Vec::with_capacity(source.chunk_size as usize),
            chunks: Vec::with_capacity(source.chunks.len()),
        };
        let job = OpenJob {
            key: &key,
            dataset: d.id,
            volume: src.as_ref(),
            chunks: &source.chunks,
            chunk_size: source.chunk_size as u64,
            threads: self.threads,
        };
        let mut placed = None;
        let made = (|| -> Result<BackupRecord> {
            open_stream(&job, 0, source.size, &mut w).map_err(|e| match e {
                OpenError::Chunk { index, id, problem } => Error::Chunk {
                    dataset: d.name.clone(),
                    generation: g.generation,
                    index,
                    id,
                    volume: src.describe(),
                    problem,
                },
                OpenError::Store(e) => e.into(),
                OpenError::Output(e) => Error::Invalid { what: "plaintext copy", why: e.to_string() },
            })?;
            w.flush().map_err(|e| Error::Invalid { what: "plaintext copy", why: e.to_string() })?;
            dst.sync()?;
            let created_at = Timestamp::now();
            let manifest = |generation| {
                Ok(Manifest {
                    dataset_id: copy_id,
                    generation,
                    created_at,
                    chunk_size: source.chunk_size,
                    size: source.size,
                    name: d.name.to_string(),
                    key_label: String::new(),
                    key_kcv: custos_crypto::Kcv([0; 5]),
                    chunks: w.chunks.clone(),
                }
                .plain())
            };
            let (generation, bytes) = place_manifest(dst.as_ref(), &d.name, &copy_id, 1, manifest)?;
            placed = Some(generation);
            let mut rec = BackupRecord {
                id: 0,
                dataset: d.name.clone(),
                dataset_id: d.id,
                source_generation: g.generation,
                method: CopyMethod::Plaintext,
                volume: to.clone(),
                // The key its source was sealed under; the copy needs none.
                key_label: g.key_label.clone(),
                copy_id,
                generation,
                size: source.size,
                chunk_size: source.chunk_size,
                chunk_count: w.chunks.len() as u64,
                manifest_hash: object_hash(&bytes),
                created_at,
                checked: None,
            };
            let ids: Vec<ChunkId> = w.chunks.iter().map(|c| c.id).collect();
            rec.id = self.repo.insert_backup(&rec, &ids, &[], None, &[], since)?;
            Ok(rec)
        })();
        if made.is_err() {
            for c in &w.chunks {
                let _ = dst.delete_chunk(&c.id);
            }
            if let Some(g) = placed {
                let _ = dst.delete_manifest(&copy_id, g);
            }
        }
        made
    }

    /// Write a plaintext copy back as a new generation of its dataset (or
    /// of `as_name`), sealed as a restore seals; then verify it.
    pub(crate) fn restore_plaintext(
        &self,
        b: &BackupRecord,
        as_name: Option<&DatasetName>,
    ) -> Result<(crate::PutReport, bool)> {
        let vol = self.open_volume(&b.volume)?;
        let m = open_plain_manifest(vol.as_ref(), b)?;
        let target = as_name.unwrap_or(&b.dataset).clone();
        let (opts, new_key) = self.restore_options(&target)?;
        let put = self.pipe(|w| read_plain(vol.as_ref(), b, &m, w), |r| self.put(&target, r, &opts))?;
        self.verify(&target)?;
        Ok((put, new_key))
    }
}

impl<S: VaultState> Vault<S> {
    /// Check a plaintext copy: its manifest is the one recorded; with
    /// `read_data`, every chunk is there and matches its SHA-256.
    pub(crate) fn check_plaintext(&self, b: &BackupRecord, read_data: bool) -> Result<()> {
        let vol = self.open_volume(&b.volume)?;
        let m = open_plain_manifest(vol.as_ref(), b)?;
        if read_data {
            read_plain(vol.as_ref(), b, &m, &mut std::io::sink()).map_err(|e| match e {
                Produced::Failed(e) => e,
                Produced::Output(e) => Error::Invalid { what: "verify", why: e.to_string() },
            })?;
        }
        Ok(())
    }
}

/// Read a plaintext copy's manifest and check it against its record.
fn open_plain_manifest(vol: &dyn Volume, b: &BackupRecord) -> Result<Manifest> {
    let fail = |why: String| Error::Manifest {
        dataset: b.dataset.clone(),
        generation: b.source_generation,
        volume: vol.describe(),
        why: format!("of plaintext copy (backup {}) {why}", b.id),
    };
    let bytes = vol.read_manifest(&b.copy_id, b.generation).map_err(|e| match e {
        custos_store::StoreError::Missing { .. } => fail("is missing".into()),
        e => e.into(),
    })?;
    if object_hash(&bytes) != b.manifest_hash {
        return Err(fail("does not match the one the catalog recorded: it was replaced or altered".into()));
    }
    let m = Manifest::open_plain(&b.copy_id, b.generation, &bytes).map_err(|e| fail(e.to_string()))?;
    if m.size != b.size || m.chunks.len() as u64 != b.chunk_count || m.name != b.dataset.as_str() {
        return Err(fail("disagrees with the catalog on name, size or chunk count".into()));
    }
    Ok(m)
}

/// Stream a plaintext copy's data into `out`, each chunk checked against
/// the length and SHA-256 its manifest records.
fn read_plain(
    vol: &dyn Volume,
    b: &BackupRecord,
    m: &Manifest,
    out: &mut dyn Write,
) -> std::result::Result<(), Produced> {
    let mut buf = ChunkBuf::new(m.chunk_size as usize);
    for (index, c) in m.chunks.iter().enumerate() {
        let bad = |problem| {
            Produced::Failed(Error::Chunk {
                dataset: b.dataset.clone(),
                generation: b.source_generation,
                index: index as u64,
                id: c.id,
                volume: format!("{} (backup {})", vol.describe(), b.id),
                problem,
            })
        };
        let n = match vol.read_chunk(&c.id, &mut buf, m.chunk_size as usize) {
            Ok(n) => n,
            Err(custos_store::StoreError::Missing { .. }) => return Err(bad(ChunkProblem::Missing)),
            Err(custos_store::StoreError::TooLarge { size, .. }) => return Err(bad(ChunkProblem::Oversized { size })),
            Err(e) => return Err(Produced::Failed(e.into())),
        };
        let data = buf.slice(n);
        if n != c.len as usize {
            return Err(bad(ChunkProblem::Format(FormatError::Length { got: n, want: c.len })));
        }
        if plain_fingerprint(data) != c.fingerprint {
            return Err(bad(ChunkProblem::Format(FormatError::Inconsistent(
                "its bytes do not match the SHA-256 its manifest records",
            ))));
        }
        out.write_all(data).map_err(Produced::Output)?;
    }
    Ok(())
}

/// Cuts the plaintext into chunks of the source's size and stores each as
/// it fills, with a fresh id, remembering its length and SHA-256.
struct PlainWriter<'a> {
    dst: &'a dyn Volume,
    chunk_size: usize,
    buf: Vec<u8>,
    chunks: Vec<ChunkRef>,
}

impl PlainWriter<'_> {
    fn store(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let id = ChunkId::random();
        self.dst.put_chunk(&id, &self.buf).map_err(std::io::Error::other)?;
        self.chunks.push(ChunkRef { id, len: self.buf.len() as u32, fingerprint: plain_fingerprint(&self.buf) });
        self.buf.clear();
        Ok(())
    }
}

impl Write for PlainWriter<'_> {
    fn write(&mut self, mut b: &[u8]) -> std::io::Result<usize> {
        let n = b.len();
        while !b.is_empty() {
            let take = (self.chunk_size - self.buf.len()).min(b.len());
            self.buf.extend_from_slice(&b[..take]);
            b = &b[take..];
            if self.buf.len() == self.chunk_size {
                self.store()?;
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.store()
    }
}

//! `ds export`: many datasets back out as files, the way `ds import`
//! brought them in: `PREFIX.a.b.c` becomes `DIR/a/b/c`.
//!
//! Every target is checked before anything is written. The datasets are
//! then read side by side (each on one worker), each written to a temp file
//! beside its target and moved into place; one flush makes them durable
//! (each file and directory synced when there are at most 64 files, else the
//! filesystem; ADR 0034), and the reads are recorded (key uses, last
//! access) in one transaction each.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use custos_model::{DatasetName, DatasetRecord, KeyLabel, Pattern, VolumeName};
use custos_store::Volume;
use serde::Serialize;

use crate::{Error, Open, Result, Vault};

/// Datasets of at least this size are written with direct I/O.
const DIRECT_FROM: u64 = 1 << 20;

/// One dataset written out.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub dataset: DatasetName,
    pub generation: u64,
    #[serde(rename = "size")]
    pub bytes: u64,
    pub path: PathBuf,
}

/// The path below the export directory for `name` under `prefix`: the
/// qualifiers after the prefix, one path component each, with the file
/// names `ds import` escaped given back (`#2E` is `.` again); the
/// prefix's own last qualifier for the dataset named by the prefix itself.
/// `None` when a qualifier stands for no file name (`#2E#2E`, `a#2Fb`):
/// nothing is ever written outside the export directory.
fn relative(prefix: &DatasetName, name: &DatasetName) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let rest = name.as_str().strip_prefix(prefix.as_str()).and_then(|r| r.strip_prefix('.'));
    let parts: Vec<&str> = match rest {
        Some(r) => r.split('.').collect(),
        None => vec![name.as_str().rsplit('.').next().unwrap_or(name.as_str())],
    };
    parts
        .into_iter()
        .map(|q| custos_model::qualifier_file(q).map(std::ffi::OsString::from_vec))
        .collect::<Option<Vec<_>>>()
        .map(|c| c.into_iter().collect())
}

impl Vault<Open> {
    /// Write every dataset named `prefix` or `prefix.…` below `dir` (made
    /// when missing). Refuses, before writing anything, when two datasets
    /// would need one path as a file and as a directory, or (unless
    /// `replace`) when a target exists.
    pub fn export(
        &self,
        prefix: &DatasetName,
        dir: &Path,
        replace: bool,
        mut progress: impl FnMut(&ExportReport),
    ) -> Result<Vec<ExportReport>> {
        let pattern = Pattern::new(format!("{prefix}.**"))?;
        let mut datasets: Vec<DatasetRecord> = Vec::new();
        loop {
            let after = datasets.last().map(|d| d.name.to_string());
            let page = self.datasets_page(Some(&pattern), after.as_deref(), 4096)?;
            if page.is_empty() {
                break;
            }
            datasets.extend(page);
        }
        if datasets.is_empty() {
            return Err(Error::Invalid {
                what: "export",
                why: format!("no dataset is named {prefix} or {prefix}.…: see `custos ds ls`"),
            });
        }
        let fail =
            |path: &Path, why: String| Error::Invalid { what: "export", why: format!("{}: {why}", path.display()) };
        match std::fs::symlink_metadata(dir) {
            Ok(m) if !m.is_dir() => return Err(fail(dir, "exists and is not a directory; name a directory".into())),
            _ => {}
        }
        // Every target: none both a file and another's directory, none an
        // existing directory, none existing at all unless replacing.
        let mut targets: Vec<PathBuf> = Vec::with_capacity(datasets.len());
        for d in &datasets {
            match relative(prefix, &d.name) {
                Some(r) => targets.push(dir.join(r)),
                None => {
                    return Err(Error::Invalid {
                        what: "export",
                        why: format!(
                            "dataset {} names no file (a qualifier stands for '.', '..', '/' or NUL); export the others with a narrower prefix, or copy it out with `custos ds get`",
                            d.name
                        ),
                    })
                }
            }
        }
        let mut dirs = HashSet::new();
        for t in &targets {
            for a in t.ancestors().skip(1) {
                if a == dir || !dirs.insert(a.to_path_buf()) {
                    break;
                }
            }
        }
        let mut seen = std::collections::HashMap::new();
        for (t, d) in targets.iter().zip(&datasets) {
            if let Some(other) = seen.insert(t, &d.name) {
                return Err(fail(
                    t,
                    format!("datasets {other} and {} would both be written to this file; export them apart", d.name),
                ));
            }
            if dirs.contains(t) {
                return Err(fail(
                    t,
                    format!("dataset {} and others under it would need this path as a file and as a directory; export them apart", d.name),
                ));
            }
            match std::fs::symlink_metadata(t) {
                Ok(m) if m.is_dir() => {
                    return Err(fail(t, format!("is a directory; dataset {} cannot replace it", d.name)))
                }
                Ok(_) if !replace => {
                    return Err(fail(t, format!("exists (dataset {}); pass --replace to overwrite it", d.name)))
                }
                _ => {}
            }
        }
        for a in &dirs {
            if let Ok(m) = std::fs::symlink_metadata(a) {
                if !m.is_dir() {
                    return Err(fail(a, "exists and is not a directory; move it away or export elsewhere".into()));
                }
            }
        }
        // Datasets migrated to tape come home first, as `ds get` brings them.
        for d in datasets.iter_mut().filter(|d| d.migrated_from.is_some()) {
            self.recall(&d.name)?;
            *d = self.dataset(&d.name)?;
        }
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            what: "the export directory",
            path: dir.into(),
            source,
        })?;
        let mut volumes: BTreeMap<VolumeName, Arc<dyn Volume>> = BTreeMap::new();
        for d in &datasets {
            if !volumes.contains_key(&d.current.volume) {
                volumes.insert(d.current.volume.clone(), self.open_volume(&d.current.volume)?);
            }
        }
        let jobs: Vec<(usize, usize)> = (0..datasets.len()).map(|i| (i, i)).collect();
        let pending = custos_store::durable::Pending::new(dir);
        // The export directory's own entry, when it was made here.
        if let Some(parent) = dir.parent() {
            pending.dir(if parent.as_os_str().is_empty() { Path::new(".") } else { parent });
        }
        let done = self.in_parallel(jobs, |&i| {
            let d = &datasets[i];
            self.export_one(d, volumes[&d.current.volume].as_ref(), &targets[i], dir, replace, &pending)
        });
        let mut reports = Vec::with_capacity(datasets.len());
        let mut first_error = None;
        for (_, r) in done {
            match r {
                Ok(r) => reports.push(r),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        // What was written is durable, and its reads are on record, even
        // when a later dataset failed.
        if !reports.is_empty() {
            // The files written and the directories they went into (or, for
            // many files, the filesystem).
            pending.flush().map_err(|e| Error::Io { what: "an exported file", path: e.path, source: e.source })?;
            let by_name: std::collections::HashMap<&DatasetName, &DatasetRecord> =
                datasets.iter().map(|d| (&d.name, d)).collect();
            let read: Vec<&DatasetRecord> = reports.iter().map(|r| by_name[&r.dataset]).collect();
            let labels: Vec<KeyLabel> = read.iter().map(|d| d.current.key_label.clone()).collect();
            self.repo.record_key_uses(&labels)?;
            self.repo.touch_datasets(&read.iter().map(|d| d.id).collect::<Vec<_>>())?;
        }
        for r in &reports {
            progress(r);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(reports),
        }
    }

    /// Read one dataset into a temp file beside `target` and move it into
    /// place (over an existing file only when `replace`); the file and the
    /// directories between it and `dir` wait in `pending` for the flush.
    fn export_one(
        &self,
        d: &DatasetRecord,
        volume: &dyn Volume,
        target: &Path,
        dir: &Path,
        replace: bool,
        pending: &custos_store::durable::Pending,
    ) -> Result<ExportReport> {
        let parent = target.parent().expect("below the export directory");
        let io = |source: std::io::Error, path: &Path| Error::Output {
            dataset: d.name.clone(),
            source: std::io::Error::new(source.kind(), format!("{}: {source}", path.display())),
        };
        std::fs::create_dir_all(parent).map_err(|e| io(e, parent))?;
        let file_name = target.file_name().and_then(|n| n.to_str()).unwrap_or("dataset");
        let tmp = parent.join(format!(".{file_name}.{}.custos-export", custos_model::ChunkId::random().to_hex()));
        let written = (|| {
            let f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| io(e, &tmp))?;
            // A large dataset goes to the disk with direct I/O, as `ds get
            // -o` writes: no page cache to fill (slow to fault in on some
            // virtual machines) and nothing left for the flush but tails.
            let (got, f) = if d.current.size >= DIRECT_FROM {
                let mut w = custos_store::DirectWriter::new(f);
                let got = self.read_record(d, volume, &mut w, None, 1)?;
                (got, w.finish().map_err(|e| io(e, &tmp))?)
            } else {
                let mut w = std::io::BufWriter::with_capacity(256 << 10, f);
                let got = self.read_record(d, volume, &mut w, None, 1)?;
                (got, w.into_inner().map_err(|e| io(e.into_error(), &tmp))?)
            };
            if replace {
                std::fs::rename(&tmp, target).map_err(|e| io(e, target))?;
            } else {
                // Never over a file that appeared since the check.
                std::fs::hard_link(&tmp, target).map_err(|e| io(e, target))?;
                let _ = std::fs::remove_file(&tmp);
            }
            for up in parent.ancestors().take_while(|a| a.starts_with(dir) && *a != dir) {
                pending.dir(up.parent().expect("below the export directory"));
            }
            pending.file(f, target.into());
            Ok(got)
        })();
        match written {
            Ok(got) => Ok(ExportReport {
                dataset: d.name.clone(),
                generation: got.generation,
                bytes: got.bytes,
                path: target.into(),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}

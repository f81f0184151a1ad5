//! Housekeeping of volumes: `gc` deletes what the catalog no longer needs,
//! `fsck` checks that what it needs is there.
//!
//! Deletion follows one protocol, so that it can never take an object a
//! concurrent command still relies on:
//!
//! 1. The catalog transaction that stops referencing an object puts it in
//!    the trash (same transaction). Objects found on a volume that nothing
//!    records (what a killed command left) are old enough to be claimed
//!    only after the grace period, judged by their modification time.
//! 2. A deleter *claims* the objects it will delete, in one transaction
//!    that checks nothing references them now. From then on no commit may
//!    list a claimed object (it fails with a retryable message). A claim is
//!    exclusive: it names the deleter's session, and another deleter takes
//!    it over only once that session is gone (its process died).
//! 3. The deleter deletes the objects, then turns their trash entries into
//!    tombstones numbered by a deletion count in the catalog (kept 7 days).
//!    A deletion that fails leaves the entry claimed, for the next `gc`.
//! 4. A writer reads the deletion count before it looks at any object; its
//!    commit is refused if an object it lists has a tombstone numbered
//!    higher (deleted while it worked: what it found may be gone). A
//!    count, not a clock, decides.
//!
//! Replaced generations, pruned backups and removed snapshots wait in the
//! trash for the grace period (setting `gc.grace`, default 24 h), so a
//! reader that opened them first can finish; `ds rm` and the source of a
//! migration are deleted at once.

use std::collections::HashSet;
use std::time::SystemTime;

use custos_model::{ChunkId, DatasetId, VolumeName};
use custos_repo::Garbage;
use custos_store::format::CHUNK_OVERHEAD;
use custos_store::{ObjectName, Volume};
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::{Error, Open, Result, Vault, VaultState};

/// The setting that holds the grace period.
pub(crate) const SETTING_GC_GRACE: &str = "gc.grace";

/// What `gc` deleted (or, dry, would delete).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Objects the catalog released that are past the grace period.
    #[serde(rename = "released_count")]
    pub released: u64,
    /// Objects no catalog record names (left by interrupted commands).
    #[serde(rename = "orphan_count")]
    pub orphans: u64,
    /// Temp files of writes that never finished.
    #[serde(rename = "temp_file_count")]
    pub temp_files: u64,
    /// Bytes those objects took.
    #[serde(rename = "size")]
    pub bytes: u64,
    /// Objects released but still within the grace period.
    #[serde(rename = "waiting_count")]
    pub waiting: u64,
    /// What could not be deleted now (it stays in the trash for the next run).
    pub failed: Vec<String>,
}

/// What `fsck` found on one volume.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeCheck {
    pub volume: VolumeName,
    /// Objects the catalog references there.
    #[serde(rename = "referenced_count")]
    pub referenced: u64,
    /// Referenced objects that are not there, or too short to be what they
    /// should (names them).
    pub missing: Vec<String>,
    /// Referenced objects that fail authentication (with `--read-data`).
    pub damaged: Vec<String>,
    /// Objects nothing references (`gc` deletes them after the grace period).
    #[serde(rename = "unreferenced_count")]
    pub unreferenced: u64,
    #[serde(rename = "unreferenced_size")]
    pub unreferenced_bytes: u64,
    /// Of those, released objects waiting in the trash.
    #[serde(rename = "in_trash_count")]
    pub in_trash: u64,
    #[serde(rename = "temp_file_count")]
    pub temp_files: u64,
    /// The volume could not be read (why).
    pub unreachable: Option<String>,
}

/// What `fsck` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FsckReport {
    pub volumes: Vec<VolumeCheck>,
    /// Catalog records that contradict each other or point nowhere.
    pub catalog: Vec<String>,
    pub read_data: bool,
}

impl FsckReport {
    /// Whether anything the catalog needs is missing, damaged or unreadable.
    pub fn clean(&self) -> bool {
        self.catalog.is_empty()
            && self.volumes.iter().all(|v| v.missing.is_empty() && v.damaged.is_empty() && v.unreachable.is_none())
    }
}

/// A chunk or manifest on a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Obj {
    Chunk(ChunkId),
    Manifest(DatasetId, u64),
}

impl<S: VaultState> Vault<S> {
    /// How long released objects wait before `gc` deletes them.
    pub fn gc_grace(&self) -> Result<SignedDuration> {
        match self.repo.setting(SETTING_GC_GRACE)? {
            None => Ok(SignedDuration::from_hours(24)),
            Some(s) => crate::parse_duration(&s).map_err(|why| Error::Invalid { what: SETTING_GC_GRACE, why }),
        }
    }

    pub fn set_gc_grace(&self, text: &str) -> Result<()> {
        crate::parse_duration(text).map_err(|why| Error::Invalid { what: SETTING_GC_GRACE, why })?;
        Ok(self.repo.set_setting(SETTING_GC_GRACE, text)?)
    }

    /// The volume whose catalog records an object on `v` names: a mirror's
    /// secondary holds its primary's objects.
    fn owner_of(&self, v: &VolumeName) -> Result<VolumeName> {
        Ok(self.repo.mirrors()?.into_iter().find(|(_, s, _)| s == v).map(|(p, _, _)| p).unwrap_or_else(|| v.clone()))
    }

    /// Delete claimed objects from their volumes and forget those deleted.
    /// Returns how many were deleted and what failed.
    pub(crate) fn delete_claimed(&self, g: &Garbage) -> (u64, u64, Vec<String>) {
        let mut opened: std::collections::HashMap<VolumeName, Result<std::sync::Arc<dyn Volume>>> = Default::default();
        let mut gone = Garbage::default();
        let mut left = Garbage::default();
        let (mut bytes, mut failed) = (0u64, Vec::new());
        for (vol, id) in &g.chunks {
            let v = opened.entry(vol.clone()).or_insert_with(|| self.open_volume(vol));
            let r = v.as_ref().map_err(|e| e.to_string()).and_then(|v| {
                let len = v.chunk_len(id).ok().flatten().unwrap_or(0);
                v.delete_chunk(id).map(|_| len).map_err(|e| e.to_string())
            });
            match r {
                Ok(len) => {
                    bytes += len;
                    gone.chunks.push((vol.clone(), *id));
                }
                Err(e) => {
                    failed.push(format!("chunk {id} on volume {vol}: {e}"));
                    left.chunks.push((vol.clone(), *id));
                }
            }
        }
        for (vol, ds, generation) in &g.manifests {
            let v = opened.entry(vol.clone()).or_insert_with(|| self.open_volume(vol));
            match v
                .as_ref()
                .map_err(|e| e.to_string())
                .and_then(|v| v.delete_manifest(ds, *generation).map_err(|e| e.to_string()))
            {
                Ok(()) => gone.manifests.push((vol.clone(), *ds, *generation)),
                Err(e) => {
                    failed.push(format!("manifest {generation} of {ds} on volume {vol}: {e}"));
                    left.manifests.push((vol.clone(), *ds, *generation));
                }
            }
        }
        if let Err(e) = self.repo.abandon_claims(&left) {
            failed.push(format!("the trash entries of {} objects left: {e}", left.chunks.len() + left.manifests.len()));
        }
        let deleted = (gone.chunks.len() + gone.manifests.len()) as u64;
        if let Err(e) = self.repo.forget_trash(&gone) {
            failed.push(format!("the trash entries of {deleted} deleted objects: {e}"));
        }
        (deleted, bytes, failed)
    }

    /// Delete what the catalog released more than `grace` ago and, with
    /// `scan`, objects and temp files that nothing records, last changed
    /// more than `grace` ago (which lists every volume: `hsm run` leaves that
    /// to an explicit `custos gc`). See the module docs. With `dry_run`,
    /// only count them.
    pub fn gc(&self, grace: SignedDuration, dry_run: bool, scan: bool) -> Result<GcReport> {
        let now = Timestamp::now();
        let cutoff = now.checked_sub(grace).map_err(|e| Error::Invalid { what: "grace", why: e.to_string() })?;
        let mut r = GcReport { dry_run, ..Default::default() };
        let trash = self.repo.trash()?;
        r.waiting = trash.iter().filter(|t| !t.claimed && t.released_at >= cutoff).count() as u64;
        if dry_run {
            // What `claim_trash` would take: entries released (or claimed by
            // a deleter) before the cutoff; a deleter still at work is left alone.
            r.released = trash.iter().filter(|t| t.released_at < cutoff).count() as u64;
        } else {
            let claimed = self.repo.claim_trash(cutoff)?;
            let (n, bytes, failed) = self.delete_claimed(&claimed);
            r.released = n;
            r.bytes += bytes;
            r.failed.extend(failed);
        }
        // Orphans and temp files, volume by volume.
        let old = |m: SystemTime| Timestamp::try_from(m).is_ok_and(|t| t < cutoff);
        for rec in self.volumes()?.into_iter().filter(|_| scan) {
            let owner = self.owner_of(&rec.name)?;
            let plain = match self.open_plain_volume(&rec.name) {
                Ok(v) => v,
                Err(e) => {
                    r.failed.push(format!("volume {}: {e}", rec.name));
                    continue;
                }
            };
            let listed = match plain.list() {
                Ok(l) => l,
                Err(e) => {
                    r.failed.push(format!("volume {}: {e}", rec.name));
                    continue;
                }
            };
            let known = self.known_objects(&owner)?;
            let mut found = Garbage::default();
            let mut sizes = std::collections::HashMap::new();
            for l in listed.into_iter().filter(|l| old(l.modified)) {
                match l.name {
                    ObjectName::Temp(name) => {
                        r.temp_files += 1;
                        r.bytes += l.len;
                        if !dry_run {
                            if let Err(e) = plain.delete_temp(&name) {
                                r.failed.push(format!("temp file {name} on volume {}: {e}", rec.name));
                            }
                        }
                    }
                    ObjectName::Chunk(id) if !known.contains(&Obj::Chunk(id)) => {
                        sizes.insert(Obj::Chunk(id), l.len);
                        found.chunks.push((owner.clone(), id));
                    }
                    ObjectName::Manifest(d, g) if !known.contains(&Obj::Manifest(d, g)) => {
                        sizes.insert(Obj::Manifest(d, g), l.len);
                        found.manifests.push((owner.clone(), d, g));
                    }
                    _ => {}
                }
            }
            if dry_run {
                r.orphans += (found.chunks.len() + found.manifests.len()) as u64;
                r.bytes += sizes.values().sum::<u64>();
                continue;
            }
            let claimed = self.repo.claim_orphans(&found)?;
            // Deleted from this volume's own storage (a mirror's sides are
            // listed, and cleaned, one by one).
            let mut gone = Garbage::default();
            let mut left = Garbage::default();
            for (v, id) in &claimed.chunks {
                match plain.delete_chunk(id) {
                    Ok(()) => {
                        r.orphans += 1;
                        r.bytes += sizes.get(&Obj::Chunk(*id)).copied().unwrap_or(0);
                        gone.chunks.push((v.clone(), *id));
                    }
                    Err(e) => {
                        r.failed.push(format!("chunk {id} on volume {}: {e}", rec.name));
                        left.chunks.push((v.clone(), *id));
                    }
                }
            }
            for (v, d, g) in &claimed.manifests {
                match plain.delete_manifest(d, *g) {
                    Ok(()) => {
                        r.orphans += 1;
                        r.bytes += sizes.get(&Obj::Manifest(*d, *g)).copied().unwrap_or(0);
                        gone.manifests.push((v.clone(), *d, *g));
                    }
                    Err(e) => {
                        r.failed.push(format!("manifest {g} of {d} on volume {}: {e}", rec.name));
                        left.manifests.push((v.clone(), *d, *g));
                    }
                }
            }
            self.repo.forget_trash(&gone)?;
            self.repo.abandon_claims(&left)?;
        }
        Ok(r)
    }

    /// Every chunk and manifest the catalog references on `vol`, and those
    /// waiting in its trash there.
    fn known_objects(&self, vol: &VolumeName) -> Result<HashSet<Obj>> {
        let objs = self.repo.volume_objects(vol)?;
        let mut known: HashSet<Obj> = objs.chunks.into_iter().map(Obj::Chunk).collect();
        known.extend(objs.manifests.into_iter().map(|(d, g)| Obj::Manifest(d, g)));
        for t in self.repo.trash()?.into_iter().filter(|t| t.volume == *vol) {
            match (t.chunk, t.manifest) {
                (Some(c), _) => known.insert(Obj::Chunk(c)),
                (None, Some((d, g))) => known.insert(Obj::Manifest(d, g)),
                _ => false,
            };
        }
        Ok(known)
    }

    /// Check every volume against the catalog, changing nothing: what is
    /// referenced must be there (and at least as long as an empty sealed
    /// chunk); what is not referenced is counted for `gc`; catalog records
    /// must agree with each other.
    pub fn fsck(&self) -> Result<FsckReport> {
        let mut report = FsckReport::default();
        let trash = self.repo.trash()?;
        for rec in self.volumes()? {
            let owner = self.owner_of(&rec.name)?;
            let mut check = VolumeCheck {
                volume: rec.name.clone(),
                referenced: 0,
                missing: Vec::new(),
                damaged: Vec::new(),
                unreferenced: 0,
                unreferenced_bytes: 0,
                in_trash: 0,
                temp_files: 0,
                unreachable: None,
            };
            let listed = self.open_plain_volume(&rec.name).and_then(|v| Ok(v.list()?));
            let listed = match listed {
                Ok(l) => l,
                Err(e) => {
                    check.unreachable = Some(e.to_string());
                    report.volumes.push(check);
                    continue;
                }
            };
            let objs = self.repo.volume_objects(&owner)?;
            let mut present: std::collections::HashMap<Obj, u64> = Default::default();
            for l in &listed {
                match &l.name {
                    ObjectName::Chunk(id) => {
                        present.insert(Obj::Chunk(*id), l.len);
                    }
                    ObjectName::Manifest(d, g) => {
                        present.insert(Obj::Manifest(*d, *g), l.len);
                    }
                    ObjectName::Temp(_) => {
                        check.temp_files += 1;
                        check.unreferenced_bytes += l.len;
                    }
                }
            }
            check.referenced = (objs.chunks.len() + objs.manifests.len()) as u64;
            for c in &objs.chunks {
                match present.remove(&Obj::Chunk(*c)) {
                    None => check.missing.push(format!("chunk {c}")),
                    Some(len) if len < CHUNK_OVERHEAD as u64 => {
                        check.missing.push(format!("chunk {c} (truncated to {len} bytes)"))
                    }
                    Some(_) => {}
                }
            }
            for (d, g) in &objs.manifests {
                if present.remove(&Obj::Manifest(*d, *g)).is_none() {
                    check.missing.push(format!("manifest {g} of dataset id {d}"));
                }
            }
            let trashed: HashSet<Obj> = trash
                .iter()
                .filter(|t| t.volume == owner)
                .filter_map(|t| t.chunk.map(Obj::Chunk).or(t.manifest.map(|(d, g)| Obj::Manifest(d, g))))
                .collect();
            for (o, len) in present {
                check.unreferenced += 1;
                check.unreferenced_bytes += len;
                check.in_trash += trashed.contains(&o) as u64;
            }
            report.volumes.push(check);
        }
        // Catalog records that must agree.
        for d in self.repo.datasets()? {
            let n = self.repo.generation_chunks(&d.id, d.current.generation)?.len() as u64;
            if n != d.current.chunk_count {
                report.catalog.push(format!(
                    "dataset {} generation {} lists {n} chunks, its record says {}",
                    d.name, d.current.generation, d.current.chunk_count
                ));
            }
        }
        for b in self.repo.backups()? {
            let n = self.repo.backup_chunks(b.id)?.len() as u64;
            if n != b.chunk_count {
                report.catalog.push(format!("backup {} lists {n} chunks, its record says {}", b.id, b.chunk_count));
            }
            if self.repo.key(&b.key_label)?.is_none() {
                report.catalog.push(format!("backup {} names key {}, which the keystore lacks", b.id, b.key_label));
            }
        }
        for s in self.repo.snapshots()? {
            let n = self.repo.snapshot_chunks(s.id)?.len() as u64;
            if n != s.chunk_count {
                report.catalog.push(format!("snapshot {} lists {n} chunks, its record says {}", s.id, s.chunk_count));
            }
        }
        Ok(report)
    }
}

impl Vault<Open> {
    /// [`Vault::fsck`], and every generation, backup and snapshot read back
    /// and authenticated, chunk by chunk.
    pub fn fsck_read_data(&self) -> Result<FsckReport> {
        let mut report = self.fsck()?;
        report.read_data = true;
        let mut damage = |vol: &VolumeName, what: String| {
            if let Some(v) = report.volumes.iter_mut().find(|c| c.volume == *vol) {
                v.damaged.push(what);
            } else {
                report.catalog.push(what);
            }
        };
        for d in self.repo.datasets()? {
            if let Err(e) = self.verify(&d.name) {
                damage(&d.current.volume, format!("dataset {} generation {}: {e}", d.name, d.current.generation));
            }
        }
        for b in self.repo.backups()? {
            if let Err(e) = self.verify_backup(&b, true) {
                damage(&b.volume, format!("backup {} ({} copy of {}): {e}", b.id, b.method.as_str(), b.dataset));
            }
        }
        for s in self.repo.snapshots()? {
            if let Err(e) = self.verify_snapshot(&s) {
                damage(&s.volume, format!("snapshot {} of {}: {e}", s.id, s.dataset));
            }
        }
        Ok(report)
    }
}

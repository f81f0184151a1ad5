//! Mirrors (PPRC): a volume mirrored synchronously to another. Once a
//! mirror is added, every write to the primary is acknowledged only when it
//! is durable on both, and reads fail over to the secondary when the
//! primary is gone (see `custos_store::MirroredVolume`). Adding a mirror
//! first copies everything the catalog records on the primary.

use custos_model::VolumeName;
use custos_store::format::{CHUNK_OVERHEAD, MAX_CHUNK_SIZE};
use jiff::Timestamp;
use serde::Serialize;

use crate::pipeline::copy_raw;
use crate::{Error, Result, Vault, VaultState};

/// One mirror, as `mirror ls` and `mirror status` show it.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorStatus {
    pub primary: VolumeName,
    pub secondary: VolumeName,
    /// When mirroring began.
    #[serde(rename = "created_at")]
    pub since: Timestamp,
    /// Objects the catalog records on the primary.
    #[serde(rename = "object_count")]
    pub objects: u64,
    /// Of those, how many the secondary lacks (0 when in sync). `None` when
    /// not checked.
    #[serde(rename = "missing_count")]
    pub missing: Option<u64>,
}

impl<S: VaultState> Vault<S> {
    /// Mirror `primary` to `secondary`: record the mirror (so new writes go
    /// to both), then copy what the primary already holds. Needs no key.
    pub fn mirror_add(&self, primary: &VolumeName, secondary: &VolumeName) -> Result<MirrorStatus> {
        if primary == secondary {
            return Err(Error::Invalid { what: "mirror", why: "a volume cannot mirror itself".into() });
        }
        self.volume_record(primary)?;
        self.volume_record(secondary)?;
        // The same mirror again: an earlier run was interrupted, or the
        // secondary was emptied; copy what it lacks (idempotent).
        let resume = self.repo.mirrors()?.iter().any(|(p, s, _)| p == primary && s == secondary);
        for (p, s, _) in self.repo.mirrors()?.into_iter().filter(|_| !resume) {
            for v in [primary, secondary] {
                if *v == p || *v == s {
                    return Err(Error::Invalid {
                        what: "mirror",
                        why: format!("volume {v} is already in the mirror {p} → {s}; remove it first"),
                    });
                }
            }
        }
        let on_secondary = self.repo.volume_objects(secondary)?;
        if !resume && (!on_secondary.chunks.is_empty() || !on_secondary.manifests.is_empty()) {
            return Err(Error::Invalid {
                what: "mirror",
                why: format!("volume {secondary} already holds data of its own; a mirror's secondary must be empty"),
            });
        }
        let (src, dst) = (self.open_plain_volume(primary)?, self.open_plain_volume(secondary)?);
        if !resume {
            self.repo.insert_mirror(primary, secondary)?;
        }
        let synced = (|| -> Result<u64> {
            let objs = self.repo.volume_objects(primary)?;
            // Nothing on the secondary is recorded yet: whatever an earlier,
            // interrupted run left there is compared with the primary.
            let copied = copy_raw(
                &objs.chunks,
                None,
                src.as_ref(),
                dst.as_ref(),
                MAX_CHUNK_SIZE as usize + CHUNK_OVERHEAD,
                self.threads,
                &|_| false,
            );
            copied.result?;
            for (id, g) in &objs.manifests {
                let m = src.read_manifest(id, *g)?;
                match dst.put_manifest(id, *g, &m) {
                    Err(custos_store::StoreError::Exists { .. }) if dst.read_manifest(id, *g)? == m => {}
                    r => r?,
                }
            }
            for k in &objs.keystore_backups {
                dst.put_keystore_backup(k, &src.read_keystore_backup(k)?)?;
            }
            dst.sync()?;
            Ok((objs.chunks.len() + objs.manifests.len() + objs.keystore_backups.len()) as u64)
        })();
        match synced {
            Ok(objects) => Ok(MirrorStatus {
                primary: primary.clone(),
                secondary: secondary.clone(),
                since: Timestamp::now(),
                objects,
                missing: Some(0),
            }),
            Err(e) if !resume => {
                let _ = self.repo.remove_mirror(primary);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Every mirror; with `check`, count what each secondary lacks.
    pub fn mirrors(&self, check: bool) -> Result<Vec<MirrorStatus>> {
        let mut out = Vec::new();
        for (primary, secondary, since) in self.repo.mirrors()? {
            let objs = self.repo.volume_objects(&primary)?;
            let objects = (objs.chunks.len() + objs.manifests.len() + objs.keystore_backups.len()) as u64;
            let missing = if check {
                let dst = self.open_plain_volume(&secondary)?;
                let mut n = 0u64;
                // An object counts as there only with the primary's size.
                let src = self.open_plain_volume(&primary)?;
                for c in &objs.chunks {
                    let there = dst.chunk_len(c)?;
                    n += (there.is_none() || there != src.chunk_len(c)?) as u64;
                }
                for (id, g) in &objs.manifests {
                    n += dst.read_manifest(id, *g).is_err() as u64;
                }
                for k in &objs.keystore_backups {
                    n += dst.read_keystore_backup(k).is_err() as u64;
                }
                Some(n)
            } else {
                None
            };
            out.push(MirrorStatus { primary, secondary, since, objects, missing });
        }
        Ok(out)
    }

    /// Stop mirroring `primary` (the secondary keeps what it has).
    pub fn mirror_rm(&self, primary: &VolumeName) -> Result<()> {
        if !self.repo.remove_mirror(primary)? {
            return Err(Error::NotFound {
                what: "mirror of volume",
                name: primary.to_string(),
                see: "custos mirror ls",
            });
        }
        Ok(())
    }
}

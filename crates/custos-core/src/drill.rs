//! Destructive operations for risk drills. They run only on a scratch clone
//! made by [`Vault::clone_to`], never on a live vault: each drill applies a
//! threat for real (a lost key, corrupted chunks, a lost master key) and
//! then the normal recovery commands are tried against the result.

use std::path::{Path, PathBuf};

use custos_crypto::{KdfParams, Passphrase};
use custos_hsm::SoftHsm;
use custos_model::{KeyLabel, Medium, VolumeName};

use crate::softhome::SoftHome;
use crate::vault::{HsmKind, Sealed, Vault, VaultState, DB_FILE, HSM_FILE};
use crate::{Error, Result};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::VaultIo { path: path.into(), source }
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    for e in std::fs::read_dir(from).map_err(io(from))? {
        let e = e.map_err(io(from))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().map_err(io(&src))?.is_dir() {
            // A volume's empty chunk fan-out directories are left out (a
            // volume makes one when it first writes there): on a clone of
            // a few small datasets, they were most of its cost.
            let fan_out = from.file_name().is_some_and(|n| n == "chunks");
            if fan_out && std::fs::read_dir(&src).map_err(io(&src))?.next().is_none() {
                continue;
            }
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(io(&src))?;
        }
    }
    Ok(())
}

impl<S: VaultState> Vault<S> {
    /// Copy this vault under the empty directory `dest`, laid out as it is
    /// laid out here, so a drill can destroy each part on its own: the
    /// vault directory in `dest/vault` (a consistent copy of the catalog,
    /// the software HSM file, and the volumes kept inside the directory, at
    /// the same relative place), and every other volume in
    /// `dest/volumes/<name>`, the catalog pointed at the copies. Refused for
    /// a PKCS#11 vault (a clone would share the token, and a drill would
    /// destroy its keys) and for volumes on S3. Returns the clone, sealed.
    pub fn clone_to(&self, dest: &Path) -> Result<Vault<Sealed>> {
        if self.hsm_kind()? != HsmKind::Soft {
            return Err(Error::Invalid {
                what: "clone",
                why: "this vault's master keys are on a PKCS#11 token, which a clone would share: drill a software-HSM copy".into(),
            });
        }
        let vols = self.volumes()?;
        if let Some(v) = vols.iter().find(|v| v.location.contains("://")) {
            return Err(Error::Invalid {
                what: "clone",
                why: format!("volume {} is on object storage ({}), which a drill cannot copy", v.name, v.location),
            });
        }
        let vault_dir = dest.join("vault");
        std::fs::create_dir_all(&vault_dir).map_err(io(&vault_dir))?;
        self.repo.copy_to(&vault_dir.join(DB_FILE))?;
        // A software HSM the catalog keeps came along in its copy.
        if let SoftHome::File(p) = self.soft_home()? {
            std::fs::copy(&p, vault_dir.join(HSM_FILE)).map_err(io(&self.dir))?;
        }
        let clone = Vault::open(&vault_dir)?;
        // The clone's HSM file is this one's, catalog key included: rows
        // this vault's HSM seals are the clone's too.
        clone.repo.set_row_auth(self.repo.row_auth());
        for v in &vols {
            let relative = Path::new(&v.location).is_relative();
            let from = if relative { self.dir.join(&v.location) } else { PathBuf::from(&v.location) };
            let to = if relative { vault_dir.join(&v.location) } else { dest.join("volumes").join(v.name.as_str()) };
            if from.exists() {
                copy_tree(&from, &to)?;
            }
            if !relative {
                clone.repo.relocate_volume(&v.name, &to.display().to_string())?;
            }
        }
        Ok(clone)
    }

    /// Where a volume's objects are, when they are in a local directory.
    pub fn volume_dir(&self, name: &VolumeName) -> Result<Option<PathBuf>> {
        let v = self.volume_record(name)?;
        Ok((!v.location.contains("://")).then(|| {
            let p = PathBuf::from(&v.location);
            if p.is_relative() {
                self.dir.join(p)
            } else {
                p
            }
        }))
    }

    /// Point volume `name` at `location`, for a drill whose vault was
    /// recovered from a vault backup that names the live vault's volumes:
    /// the recovered clone must read (and write) its own copies.
    pub fn drill_relocate_volume(&self, name: &VolumeName, location: &Path) -> Result<()> {
        self.repo.relocate_volume(name, &location.display().to_string())?;
        Ok(())
    }

    /// Damage one key's record in the keystore: one bit of its wrapped
    /// material flipped, the rest of the record (check value, escrow copy)
    /// as it was (the paper's Example 2). Unwrapping it then fails, or
    /// gives a key whose check value differs.
    pub fn drill_corrupt_key(&self, label: &KeyLabel) -> Result<()> {
        self.change_key(label, |k| {
            if let Some(w) = k.wrapped.as_mut() {
                let mid = w.0.len() / 2;
                if let Some(b) = w.0.get_mut(mid) {
                    *b ^= 0x01;
                }
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Whether a volume stands for tape.
    pub fn is_tape(&self, name: &VolumeName) -> Result<bool> {
        Ok(self.volume_record(name)?.medium == Medium::Tape)
    }
}

impl Vault<Sealed> {
    /// Lose the software HSM whole (its file, or its row in the catalog):
    /// master keys, catalog key, audit key. The vault no longer opens.
    pub fn drill_lose_hsm(&self) -> Result<()> {
        self.soft_home()?.remove()
    }

    /// Lose the catalog: its file and the SQLite journal beside it. Only
    /// for a clone, whose catalog is the SQLite file in its directory.
    pub fn drill_lose_catalog(self) -> Result<()> {
        let dir = self.dir.clone();
        drop(self);
        for name in [DB_FILE, "custos.db-wal", "custos.db-shm"] {
            let p = dir.join(name);
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&p)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Lose the keystore as a whole: every key record deleted from the
    /// catalog (material, states, the escrow copies kept with them).
    /// Keystore backups on volumes, and their records, are untouched. Only
    /// for a clone, whose catalog is the SQLite file in its directory.
    pub fn drill_erase_keystore(&self) -> Result<u64> {
        let path = self.dir.join(DB_FILE);
        Ok(custos_repo::SqliteRepository::open_existing(&path)?.drill_erase_keystore()?)
    }

    /// Lose the HSM's master keys: its file is replaced by a new software
    /// HSM (same passphrase) holding a fresh master key and nothing else.
    pub fn drill_lose_master_keys(&self, passphrase: &Passphrase) -> Result<()> {
        let home = self.soft_home()?;
        home.remove()?;
        SoftHsm::create_in(home.store(), passphrase, KdfParams::MINIMUM)?;
        Ok(())
    }
}

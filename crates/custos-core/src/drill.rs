//! Destructive operations for risk drills. They run only on a scratch clone
//! made by [`Vault::clone_to`], never on a live vault: each drill applies a
//! threat for real (a lost key, corrupted chunks, a lost master key) and
//! then the normal recovery commands are tried against the result.

use std::path::{Path, PathBuf};

use custos_crypto::{KdfParams, Passphrase};
use custos_hsm::SoftHsm;
use custos_model::{DatasetName, KeyLabel, Medium, VolumeName};

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
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(io(&src))?;
        }
    }
    Ok(())
}

impl<S: VaultState> Vault<S> {
    /// Copy this vault into the empty directory `dest`: a consistent copy of
    /// the catalog, the software HSM file, and every volume (each into
    /// `dest/volumes/<name>`, the catalog pointed at the copies). Refused for
    /// a PKCS#11 vault (a clone would share the token, and a drill would
    /// destroy its keys) and for volumes on S3.
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
        std::fs::create_dir_all(dest).map_err(io(dest))?;
        self.repo.copy_to(&dest.join(DB_FILE))?;
        // A software HSM the catalog keeps came along in its copy.
        if let SoftHome::File(p) = self.soft_home()? {
            std::fs::copy(&p, dest.join(HSM_FILE)).map_err(io(&self.dir))?;
        }
        let clone = Vault::open(dest)?;
        // The clone's HSM file is this one's, catalog key included: rows
        // this vault's HSM seals are the clone's too.
        clone.repo.set_row_auth(self.repo.row_auth());
        for v in &vols {
            let to = clone.dir.join("volumes").join(v.name.as_str());
            let from = Path::new(&v.location);
            if from.exists() {
                copy_tree(from, &to)?;
            }
            // Inside the clone's directory, so stored relative to it.
            clone.repo.relocate_volume(&v.name, &format!("volumes/{}", v.name))?;
        }
        Ok(clone)
    }

    /// Where a volume's objects are, when they are in a local directory.
    pub fn volume_dir(&self, name: &VolumeName) -> Result<Option<PathBuf>> {
        let v = self.volume_record(name)?;
        Ok((!v.location.contains("://")).then(|| PathBuf::from(&v.location)))
    }

    /// The files of a dataset's current chunks on its volume and on that
    /// volume's mirror: what an attacker on the storage tier would corrupt.
    pub fn drill_chunk_files(&self, name: &DatasetName) -> Result<Vec<PathBuf>> {
        let d = self.dataset(name)?;
        let mut vols = vec![d.current.volume.clone()];
        if let Some((_, s)) = self.mirror_pairs()?.into_iter().find(|(p, _)| *p == d.current.volume) {
            vols.push(s);
        }
        let chunks = self.repo.generation_chunks(&d.id, d.current.generation)?;
        let mut out = Vec::new();
        for v in vols {
            if let Some(dir) = self.volume_dir(&v)? {
                for c in &chunks {
                    let hex = c.to_hex();
                    out.push(dir.join("chunks").join(&hex[..2]).join(&hex));
                }
            }
        }
        Ok(out)
    }

    /// Lose one key's material from the keystore (a deleted or corrupted
    /// key record, as in the paper's Example 2). Its escrow copy stays.
    pub fn drill_lose_key(&self, label: &KeyLabel) -> Result<()> {
        self.change_key(label, |k| {
            k.wrapped = None;
            Ok(())
        })?;
        Ok(())
    }

    /// Lose the whole keystore: every key's material and the escrow copies
    /// kept with it. Keystore backups on volumes are untouched.
    pub fn drill_lose_keystore(&self) -> Result<()> {
        for k in self.repo.keys()? {
            self.change_key(&k.label, |k| {
                k.wrapped = None;
                k.escrow = None;
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Whether a volume stands for tape.
    pub fn is_tape(&self, name: &VolumeName) -> Result<bool> {
        Ok(self.volume_record(name)?.medium == Medium::Tape)
    }
}

impl Vault<Sealed> {
    /// Lose the HSM's master keys: its file is replaced by a new software
    /// HSM (same passphrase) holding a fresh master key and nothing else.
    pub fn drill_lose_master_keys(&self, passphrase: &Passphrase) -> Result<()> {
        let home = self.soft_home()?;
        home.remove()?;
        SoftHsm::create_in(home.store(), passphrase, KdfParams::MINIMUM)?;
        Ok(())
    }
}

//! Destructive operations for risk drills. They run only on a scratch clone
//! made by [`Vault::clone_to`], never on a live vault: each drill applies a
//! threat for real (a lost key, corrupted chunks, a lost master key) and
//! then the normal recovery commands are tried against the result.

use std::path::{Path, PathBuf};

use custos_crypto::{KdfParams, Passphrase};
use custos_hsm::SoftHsm;
use custos_model::{KeyLabel, Medium, VolumeName};

use crate::softhome::SoftHome;
use crate::vault::{HsmKind, Open, Sealed, Vault, VaultState, DB_FILE, HSM_FILE};
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
            // A volume's empty chunk and manifest fan-out directories are left out (a
            // volume makes one when it first writes there): on a clone of
            // a few small datasets, they were most of its cost.
            let fan_out = from.file_name().is_some_and(|n| n == "chunks" || n == "manifests");
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
    /// `dest/volumes/<name>`, the catalog pointed at the copies. A PKCS#11
    /// vault's clone has no HSM of its own: it is opened through the live
    /// vault's token, guarded ([`Vault::drill_token_guard`]), so nothing
    /// done to it reaches the token. Refused for volumes on S3. Returns the
    /// clone, sealed.
    pub fn clone_to(&self, dest: &Path) -> Result<Vault<Sealed>> {
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
        let soft = self.hsm_kind()? == HsmKind::Soft;
        if let (true, SoftHome::File(p)) = (soft, self.soft_home()?) {
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

/// A PKCS#11 token as a drill's clones use it: every key operation goes to
/// the token (whose master keys a clone cannot copy), and nothing a clone
/// does changes the token. The audit anchor a clone moves is kept here, as
/// it stood when the guard was made; loading or activating master keys and
/// making or rotating catalog keys are refused (no drill does them on a
/// token).
#[derive(Clone)]
pub struct TokenGuard {
    token: std::sync::Arc<dyn custos_hsm::Hsm>,
    /// Shared by every clone of the guard (one drill's clones).
    anchor: std::sync::Arc<std::sync::Mutex<Option<custos_hsm::AuditAnchor>>>,
}

impl TokenGuard {
    fn refuse(&self, what: &str) -> custos_hsm::HsmError {
        custos_hsm::HsmError::Pkcs11Config(format!(
            "a drill does not {what} on the token {}: its clones use the token as it is",
            self.token.describe()
        ))
    }
}

impl custos_hsm::Hsm for TokenGuard {
    fn describe(&self) -> String {
        format!("{} (guarded for a drill)", self.token.describe())
    }
    fn registers(&self) -> std::result::Result<Vec<custos_hsm::RegisterInfo>, custos_hsm::HsmError> {
        self.token.registers()
    }
    fn generate_key(&self) -> std::result::Result<custos_hsm::WrappedKey, custos_hsm::HsmError> {
        self.token.generate_key()
    }
    fn wrap_key(
        &self,
        key: &custos_crypto::DataKey,
    ) -> std::result::Result<custos_hsm::WrappedKey, custos_hsm::HsmError> {
        self.token.wrap_key(key)
    }
    fn unwrap_key(
        &self,
        mkvp: &custos_crypto::Mkvp,
        wrapped: &[u8],
    ) -> std::result::Result<custos_crypto::DataKey, custos_hsm::HsmError> {
        self.token.unwrap_key(mkvp, wrapped)
    }
    fn rewrap_key(
        &self,
        mkvp: &custos_crypto::Mkvp,
        wrapped: &[u8],
    ) -> std::result::Result<custos_hsm::WrappedKey, custos_hsm::HsmError> {
        self.token.rewrap_key(mkvp, wrapped)
    }
    fn load_new(
        &self,
        _: custos_hsm::NewMasterKey,
        _: Option<custos_crypto::Mkvp>,
    ) -> std::result::Result<custos_crypto::Mkvp, custos_hsm::HsmError> {
        Err(self.refuse("load a master key"))
    }
    fn clear_new(&self) -> std::result::Result<(), custos_hsm::HsmError> {
        Err(self.refuse("clear a master key register"))
    }
    fn activate(&self) -> std::result::Result<(), custos_hsm::HsmError> {
        Err(self.refuse("activate a master key"))
    }
    fn anchor(&self) -> std::result::Result<Option<custos_hsm::AuditAnchor>, custos_hsm::HsmError> {
        Ok(*self.anchor.lock().unwrap_or_else(|p| p.into_inner()))
    }
    fn set_anchor(
        &self,
        anchor: &custos_hsm::AuditAnchor,
        force: bool,
    ) -> std::result::Result<(), custos_hsm::HsmError> {
        let mut a = self.anchor.lock().unwrap_or_else(|p| p.into_inner());
        if force || a.as_ref().is_none_or(|x| x.seq < anchor.seq) {
            *a = Some(*anchor);
        }
        Ok(())
    }
    fn catalog_key_state(&self) -> std::result::Result<custos_hsm::CatalogKeyState, custos_hsm::HsmError> {
        self.token.catalog_key_state()
    }
    fn make_catalog_key(&self) -> std::result::Result<(), custos_hsm::HsmError> {
        match self.token.catalog_key_state()? {
            custos_hsm::CatalogKeyState::None => Err(self.refuse("make a catalog key")),
            _ => Ok(()),
        }
    }
    fn catalog_key_sealed(&self) -> std::result::Result<(), custos_hsm::HsmError> {
        match self.token.catalog_key_state()? {
            custos_hsm::CatalogKeyState::Sealed => Ok(()),
            _ => Err(self.refuse("mark the catalog sealed")),
        }
    }
    fn catalog_mac(&self, msg: &[u8]) -> std::result::Result<[u8; 32], custos_hsm::HsmError> {
        self.token.catalog_mac(msg)
    }
    fn begin_catalog_rotation(&self) -> std::result::Result<(), custos_hsm::HsmError> {
        Err(self.refuse("rotate the catalog key"))
    }
    fn catalog_rotation_pending(&self) -> std::result::Result<bool, custos_hsm::HsmError> {
        self.token.catalog_rotation_pending()
    }
    fn catalog_mac_next(&self, msg: &[u8]) -> std::result::Result<Option<[u8; 32]>, custos_hsm::HsmError> {
        self.token.catalog_mac_next(msg)
    }
    fn finish_catalog_rotation(&self) -> std::result::Result<(), custos_hsm::HsmError> {
        Err(self.refuse("finish a catalog key rotation"))
    }
    fn refresh_catalog_keys(&self) -> std::result::Result<(), custos_hsm::HsmError> {
        self.token.refresh_catalog_keys()
    }
}

impl Vault<Open> {
    /// This vault's HSM guarded for a drill's clones, when it is a PKCS#11
    /// token (`None` for the software HSM, whose file each clone copies).
    pub fn drill_token_guard(&self) -> Result<Option<TokenGuard>> {
        if self.hsm_kind()? == HsmKind::Soft {
            return Ok(None);
        }
        let token = self.state.hsm.clone();
        let anchor = std::sync::Arc::new(std::sync::Mutex::new(token.anchor()?));
        Ok(Some(TokenGuard { token, anchor }))
    }
}

impl Vault<Sealed> {
    /// Open a drill's clone of a PKCS#11 vault through `guard`, its
    /// catalog authenticated under the token's catalog key as the live
    /// vault's is.
    pub fn open_guarded(self, guard: &TokenGuard) -> Result<Vault<Open>> {
        if self.hsm_kind()? == HsmKind::Soft {
            return Err(Error::Invalid {
                what: "drill",
                why: "this clone uses the software HSM: open it with its passphrase".into(),
            });
        }
        let v = self.with_hsm(Box::new(guard.clone()));
        v.arm_catalog()?;
        Ok(v)
    }
}

impl<S: VaultState> Vault<S> {
    /// Each dataset's last drill under each threat or pair (`risk drill`).
    pub fn drill_results(&self) -> Result<Vec<custos_model::DrillRecord>> {
        Ok(self.repo.drills()?)
    }
}

impl Vault<Open> {
    /// Keep drill results (each replaces the earlier of its dataset and
    /// threats): authenticated rows, so the console's "proven on" cannot be
    /// planted by someone who can write the catalog's file.
    pub fn record_drill_results(&self, rows: &[custos_model::DrillRecord]) -> Result<()> {
        Ok(self.repo.record_drills(rows)?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use custos_hsm::{AuditAnchor, Hsm, NewMasterKey};

    use super::*;

    /// What a drill's clone does through the guard never reaches the token:
    /// the anchor it moves stays in the guard, master key and catalog key
    /// changes are refused; key operations are the token's.
    #[test]
    fn a_token_guard_keeps_the_token_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let pass = Passphrase::from("guarded token passphrase".to_string());
        let token: Arc<dyn Hsm> =
            Arc::new(SoftHsm::create(&dir.path().join("hsm"), &pass, KdfParams::MINIMUM).unwrap());
        token.set_anchor(&AuditAnchor { seq: 4, head: [4; 32] }, false).unwrap();
        let guard = TokenGuard { token: token.clone(), anchor: Arc::new(Mutex::new(token.anchor().unwrap())) };
        guard.set_anchor(&AuditAnchor { seq: 9, head: [9; 32] }, false).unwrap();
        assert_eq!(guard.anchor().unwrap().map(|a| a.seq), Some(9));
        assert_eq!(token.anchor().unwrap().map(|a| a.seq), Some(4), "the token's anchor did not move");
        let registers = token.registers().unwrap().len();
        assert!(guard.load_new(NewMasterKey::Generate, None).is_err());
        assert!(guard.activate().is_err() && guard.begin_catalog_rotation().is_err());
        assert_eq!(token.registers().unwrap().len(), registers);
        let w = guard.generate_key().unwrap();
        assert!(token.unwrap_key(&w.mkvp, &w.bytes).is_ok(), "keys are the token's");
    }
}

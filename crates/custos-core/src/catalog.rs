//! Authenticated catalog rows (ADR 0019): the HSM's catalog key MACs every
//! row of the tables that decide security; the repository seals rows as
//! they are written and checks them as they are read.

use std::sync::Arc;

use custos_hsm::{CatalogKeyState, Hsm};
use custos_repo::{CatalogCheck, RowAuth};

use crate::vault::{Open, Vault};
use crate::Result;

/// Row MACs computed by the HSM under its catalog key.
struct HsmRowAuth {
    hsm: Arc<dyn Hsm>,
}

impl RowAuth for HsmRowAuth {
    fn mac(&self, msg: &[u8]) -> std::result::Result<[u8; 32], String> {
        // A token key another process retired fails to sign: look again.
        self.hsm
            .catalog_mac(msg)
            .or_else(|_| {
                self.hsm.refresh_catalog_keys()?;
                self.hsm.catalog_mac(msg)
            })
            .map_err(|e| e.to_string())
    }

    fn seal(&self, msg: &[u8]) -> std::result::Result<[u8; 32], String> {
        match self.hsm.catalog_mac_next(msg).map_err(|e| e.to_string())? {
            Some(m) => Ok(m),
            None => self.mac(msg),
        }
    }

    fn refresh(&self) -> std::result::Result<(), String> {
        self.hsm.refresh_catalog_keys().map_err(|e| e.to_string())
    }

    fn others(&self, msg: &[u8]) -> std::result::Result<Vec<[u8; 32]>, String> {
        // The keys as the HSM holds them now: a rotation (here or in
        // another process) may be under way or over.
        self.refresh()?;
        let mut macs = vec![self.mac(msg)?];
        macs.extend(self.hsm.catalog_mac_next(msg).map_err(|e| e.to_string())?);
        Ok(macs)
    }
}

/// Row MACs under the HSM's NEXT catalog key, for a rotation.
struct NextRowAuth {
    hsm: Arc<dyn Hsm>,
}

impl RowAuth for NextRowAuth {
    fn mac(&self, msg: &[u8]) -> std::result::Result<[u8; 32], String> {
        self.hsm
            .catalog_mac_next(msg)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the HSM holds no next catalog key".to_string())
    }
}

impl Vault<Open> {
    /// Authenticate the catalog's rows from now on under the HSM's catalog
    /// key. The first time (a new vault, one from before catalog keys, or a
    /// rebuilt HSM) the key is made and every row sealed under it, and only
    /// then is the key recorded as sealed, so a process killed in between
    /// leaves the sealing to the next one rather than a catalog whose rows
    /// fail. A catalog key rotation that was cut short is finished here.
    /// Returns how many rows were sealed now (0: they already were).
    pub(crate) fn arm_catalog(&self) -> Result<u64> {
        let hsm = self.state.hsm.clone();
        let state = hsm.catalog_key_state()?;
        if state == CatalogKeyState::None {
            hsm.make_catalog_key()?;
        }
        self.repo.set_row_auth(Some(Arc::new(HsmRowAuth { hsm: hsm.clone() })));
        if state == CatalogKeyState::Sealed {
            if hsm.catalog_rotation_pending()? {
                hsm.refresh_catalog_keys()?;
                return self.finish_catalog_rotation();
            }
            return Ok(0);
        }
        let n = self.repo.seal_rows()?;
        hsm.catalog_key_sealed()?;
        Ok(n)
    }

    /// Seal every row as it stands under the HSM's catalog key, unchecked:
    /// only for a catalog whose integrity something else vouched for (a
    /// vault backup's seal), recovered onto an HSM whose catalog key may
    /// have been rotated since the backup was taken.
    pub(crate) fn seal_catalog_as_recovered(&self) -> Result<u64> {
        let hsm = self.state.hsm.clone();
        hsm.make_catalog_key()?;
        if hsm.catalog_rotation_pending()? {
            hsm.finish_catalog_rotation()?;
        }
        self.repo.set_row_auth(Some(Arc::new(HsmRowAuth { hsm: hsm.clone() })));
        let n = self.repo.seal_rows()?;
        hsm.catalog_key_sealed()?;
        Ok(n)
    }

    /// Check every authenticated row of the catalog (`catalog verify`).
    pub fn catalog_verify(&self) -> Result<CatalogCheck> {
        Ok(self.repo.verify_rows()?)
    }

    /// Rotate the catalog key (`catalog rotate-key`): the HSM makes a NEXT
    /// key, every row is checked under the current key and sealed under
    /// the next one in one transaction, and the HSM then retires the old
    /// key. Killed anywhere, the catalog still verifies (rows are under one
    /// key or the other, and readers accept the pending one), and the next
    /// process to open the HSM finishes the rotation. Returns how many rows
    /// were sealed anew.
    pub fn catalog_rotate_key(&self) -> Result<u64> {
        self.state.hsm.begin_catalog_rotation()?;
        self.finish_catalog_rotation()
    }

    fn finish_catalog_rotation(&self) -> Result<u64> {
        let hsm = self.state.hsm.clone();
        let n = self.repo.reseal_rows(Arc::new(NextRowAuth { hsm: hsm.clone() }))?;
        hsm.finish_catalog_rotation()?;
        Ok(n)
    }
}

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
        self.hsm.catalog_mac(msg).map_err(|e| e.to_string())
    }
}

impl Vault<Open> {
    /// Authenticate the catalog's rows from now on under the HSM's catalog
    /// key. The first time (a new vault, one from before catalog keys, or a
    /// rebuilt HSM) the key is made and every row sealed under it, and only
    /// then is the key recorded as sealed, so a process killed in between
    /// leaves the sealing to the next one rather than a catalog whose rows
    /// fail. Returns how many rows were sealed now (0: they already were).
    pub(crate) fn arm_catalog(&self) -> Result<u64> {
        let hsm = self.state.hsm.clone();
        let state = hsm.catalog_key_state()?;
        if state == CatalogKeyState::None {
            hsm.make_catalog_key()?;
        }
        self.repo.set_row_auth(Some(Arc::new(HsmRowAuth { hsm: hsm.clone() })));
        if state == CatalogKeyState::Sealed {
            return Ok(0);
        }
        let n = self.repo.seal_rows()?;
        hsm.catalog_key_sealed()?;
        Ok(n)
    }

    /// Check every authenticated row of the catalog (`catalog verify`).
    pub fn catalog_verify(&self) -> Result<CatalogCheck> {
        Ok(self.repo.verify_rows()?)
    }
}

//! Read-only views of the vault for analysis (the risk report): cheap
//! listings that the administrative commands do not need.

use std::collections::HashSet;

use custos_model::{SnapshotRecord, VolumeName};

use crate::vault::{Open, Vault, VaultState};
use crate::Result;

const SETTING_HELD: &str = "hsm.held";

impl<S: VaultState> Vault<S> {
    /// (primary, secondary) for every mirror, without checking either.
    pub fn mirror_pairs(&self) -> Result<Vec<(VolumeName, VolumeName)>> {
        Ok(self.repo.mirrors()?.into_iter().map(|(p, s, _)| (p, s)).collect())
    }

    /// Whether a snapshot shares any chunk object with its dataset's current
    /// generation (so damage to those objects reaches the snapshot too).
    pub fn snapshot_shares_current(&self, s: &SnapshotRecord) -> Result<bool> {
        let Some(d) = self.repo.dataset(&s.dataset)? else { return Ok(false) };
        if d.id != s.dataset_id || d.current.volume != s.volume {
            return Ok(false);
        }
        if d.current.generation == s.generation {
            return Ok(true);
        }
        let current: HashSet<_> = self.repo.generation_chunks(&d.id, d.current.generation)?.into_iter().collect();
        Ok(self.repo.snapshot_chunks(s.id)?.iter().any(|c| current.contains(c)))
    }

    /// The MKVPs the HSM held when the vault was last unsealed (a sealed
    /// vault cannot ask the HSM); `None` if it never was.
    pub fn held_mkvps_seen(&self) -> Result<Option<Vec<String>>> {
        Ok(self
            .repo
            .setting(SETTING_HELD)?
            .map(|s| s.split(',').filter(|m| !m.is_empty()).map(str::to_string).collect()))
    }
}

impl Vault<Open> {
    /// The MKVPs of the master keys the HSM holds now (CURRENT and OLD;
    /// a NEW one cannot unwrap yet). Remembered for sealed readers.
    pub fn held_mkvps(&self) -> Result<Vec<String>> {
        let held: Vec<String> = self
            .hsm()
            .registers()?
            .into_iter()
            .filter(|r| r.register != custos_hsm::Register::New)
            .map(|r| r.mkvp.to_hex())
            .collect();
        let joined = held.join(",");
        if self.repo.setting(SETTING_HELD)?.as_deref() != Some(joined.as_str()) {
            self.repo.set_setting(SETTING_HELD, &joined)?;
        }
        Ok(held)
    }
}

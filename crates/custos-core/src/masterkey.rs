//! Master key change, as ICSF does it: load NEW (from custodians' parts or
//! generated in the HSM), activate (NEW → CURRENT → OLD, the previous OLD
//! discarded), and re-encipher the keystore from OLD to CURRENT.
//!
//! Safety rules, enforced here:
//! * activation is refused while any key is still wrapped under the OLD
//!   master key it would discard;
//! * re-encipherment moves keys in compare-and-set batches, so it can be
//!   killed anywhere and run again: every key is at all times wrapped under
//!   OLD or CURRENT, both of which the HSM holds.

use custos_crypto::Mkvp;
use custos_hsm::{NewMasterKey, Register};
use custos_model::KeyLabel;
use jiff::Timestamp;
use serde::Serialize;

use crate::{Error, Open, Result, Vault};

/// One register as `mk status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RegisterStatus {
    pub register: String,
    pub mkvp: String,
    #[serde(rename = "loaded_at")]
    pub since: Timestamp,
    /// Keys with material wrapped under this master key.
    #[serde(rename = "key_count")]
    pub keys: u64,
}

/// Registers, and keys wrapped under master keys no register holds.
#[derive(Debug, Clone, Serialize)]
pub struct MkStatus {
    pub registers: Vec<RegisterStatus>,
    /// (MKVP, key count) for keys whose master key is in no register: they
    /// cannot be used until recovered from a keystore backup or escrow.
    #[serde(serialize_with = "ser_orphaned")]
    pub orphaned: Vec<(String, u64)>,
}

/// `orphaned` in JSON: `{"mkvp": …, "key_count": …}` each.
fn ser_orphaned<S: serde::Serializer>(v: &[(String, u64)], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|(mkvp, n)| serde_json::json!({ "mkvp": mkvp, "key_count": n })))
}

/// What a re-encipherment run did.
#[derive(Debug, Clone, Serialize)]
pub struct ReencipherReport {
    pub from: Option<String>,
    pub to: String,
    #[serde(rename = "moved_count")]
    pub moved: u64,
    /// Keys that could not be moved (damaged records), by label.
    pub failed: Vec<String>,
}

impl Vault<Open> {
    pub fn mk_status(&self) -> Result<MkStatus> {
        let counts = self.repo.key_counts_by_mkvp()?;
        let regs = self.state.hsm.registers()?;
        let count = |m: &Mkvp| counts.iter().find(|(c, _)| c == m).map(|(_, n)| *n).unwrap_or(0);
        let registers = regs
            .iter()
            .map(|r| RegisterStatus {
                register: r.register.to_string(),
                mkvp: r.mkvp.to_hex(),
                since: r.since,
                keys: count(&r.mkvp),
            })
            .collect();
        let orphaned =
            counts.iter().filter(|(m, _)| !regs.iter().any(|r| r.mkvp == *m)).map(|(m, n)| (m.to_hex(), *n)).collect();
        Ok(MkStatus { registers, orphaned })
    }

    pub fn mk_load_new(&self, new: NewMasterKey, expect: Option<Mkvp>) -> Result<Mkvp> {
        let m = self.state.hsm.load_new(new, expect)?;
        self.held_mkvps()?;
        Ok(m)
    }

    pub fn mk_clear_new(&self) -> Result<()> {
        self.state.hsm.clear_new()?;
        self.held_mkvps()?;
        Ok(())
    }

    fn register(&self, which: Register) -> Result<Option<Mkvp>> {
        Ok(self.state.hsm.registers()?.into_iter().find(|r| r.register == which).map(|r| r.mkvp))
    }

    /// NEW → CURRENT → OLD. Refused while keys are still wrapped under the
    /// OLD master key that activation would discard.
    pub fn mk_activate(&self) -> Result<MkStatus> {
        if self.register(Register::New)?.is_none() {
            return Err(custos_hsm::HsmError::NoNewMasterKey.into());
        }
        if let Some(old) = self.register(Register::Old)? {
            // The audit key is one key: move it along rather than lose it.
            self.rewrap_audit_key(&old)?;
            let n = self.repo.key_counts_by_mkvp()?.into_iter().find(|(m, _)| *m == old).map(|(_, n)| n).unwrap_or(0);
            if n > 0 {
                return Err(Error::WouldOrphanKeys { mkvp: old.to_hex(), count: n });
            }
        }
        self.state.hsm.activate()?;
        // Reports on a sealed vault read what the HSM holds from the
        // catalog: keep it true after every change of registers.
        self.held_mkvps()?;
        self.mk_status()
    }

    /// Re-wrap every key under OLD to CURRENT, `batch` keys per transaction.
    /// `progress` is called with the running count after each batch.
    pub fn mk_reencipher(&self, batch: usize, mut progress: impl FnMut(u64)) -> Result<ReencipherReport> {
        let to = self.register(Register::Current)?.ok_or(custos_hsm::HsmError::NoCurrentMasterKey)?;
        let Some(from) = self.register(Register::Old)? else {
            return Ok(ReencipherReport { from: None, to: to.to_hex(), moved: 0, failed: Vec::new() });
        };
        let batch = batch.max(1);
        let mut moved = 0u64;
        let mut failed = Vec::new();
        let mut after: Option<KeyLabel> = None;
        let hsm = &self.state.hsm;
        loop {
            let page = self.repo.rewrap_page(&from, after.as_ref(), batch, &mut |k| {
                let wrapped = k.wrapped.as_ref()?;
                // A record whose material does not open, or opens to a
                // key of another check value, is damaged: it stays.
                hsm.rewrap_key(&from, &wrapped.0).ok().filter(|w| w.kcv == k.kcv).map(|w| (w.mkvp, w.bytes))
            })?;
            failed.extend(page.failed.iter().map(|l| l.to_string()));
            moved += page.moved as u64;
            progress(moved);
            let Some(last) = page.last else { break };
            after = Some(last);
        }
        if !failed.is_empty() {
            return Err(Error::ReencipherFailed { moved, failed });
        }
        self.rewrap_audit_key(&from)?;
        Ok(ReencipherReport { from: Some(from.to_hex()), to: to.to_hex(), moved, failed })
    }
}

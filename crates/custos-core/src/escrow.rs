//! Escrow: every data key, when created, is also sealed to the key-backup
//! key (KBK), whose private half exists only as k-of-n custodians' shares.
//! Escrow copies depend on no master key, so they recover keys that
//! keystore backups cannot after master key changes (the paper's Example 1).

use custos_crypto::shamir::{self, Share};
use custos_crypto::{escrow_open, escrow_seal, kbk_generate, kbk_public, Kcv};
use custos_model::{EscrowCopy, KbkRecord, KeyLabel, KeyRecord, KeyState, WrappedMaterial};
use jiff::Timestamp;
use serde::Serialize;

use crate::{Error, Open, Recovered, Result, ShareFile, Vault, VaultState};

/// Escrow coverage, for `escrow status`.
#[derive(Debug, Clone, Serialize)]
pub struct EscrowStatus {
    pub kbks: Vec<KbkRecord>,
    pub keys_escrowed: u64,
    /// Keys with material and no escrow copy.
    pub keys_not_escrowed: Vec<String>,
}

impl<S: VaultState> Vault<S> {
    pub fn escrow_status(&self) -> Result<EscrowStatus> {
        let keys = self.repo.keys()?;
        Ok(EscrowStatus {
            kbks: self.repo.kbks()?,
            keys_escrowed: keys.iter().filter(|k| k.escrow.is_some()).count() as u64,
            keys_not_escrowed: keys
                .iter()
                .filter(|k| k.escrow.is_none() && k.wrapped.is_some())
                .map(|k| k.label.to_string())
                .collect(),
        })
    }

    /// Erase a key's escrow copy (for a deliberate crypto-erase).
    pub fn escrow_purge(&self, label: &KeyLabel) -> Result<()> {
        let mut rec = self.key_record(label)?;
        if rec.escrow.take().is_none() {
            return Err(Error::Invalid { what: "escrow purge", why: format!("key {label} has no escrow copy") });
        }
        self.repo.update_key(&rec)?;
        Ok(())
    }

    pub(crate) fn current_kbk(&self) -> Result<Option<KbkRecord>> {
        Ok(self.repo.kbks()?.pop())
    }
}

impl Vault<Open> {
    /// Create a key-backup key split `threshold`-of-n among `custodians`,
    /// escrow every existing key under it, and return the shares to hand
    /// out. The KBK's private half is never stored. `deliver` must make the
    /// shares durable (write and fsync the files) before the catalog
    /// switches to the new KBK: if it fails, or the process dies before the
    /// switch, every key keeps its previous escrow copy; the switch itself is
    /// one transaction.
    pub fn escrow_init(
        &self,
        custodians: &[String],
        threshold: u8,
        deliver: impl FnOnce(&[ShareFile]) -> Result<()>,
    ) -> Result<(KbkRecord, Vec<ShareFile>)> {
        let mut names = custodians.to_vec();
        names.sort();
        names.dedup();
        if names.len() != custodians.len() || custodians.iter().any(|c| c.trim().is_empty() || c.contains(',')) {
            return Err(Error::Invalid {
                what: "custodians",
                why: "give distinct, non-empty names without commas".into(),
            });
        }
        let n = u8::try_from(custodians.len())
            .map_err(|_| Error::Invalid { what: "custodians", why: "at most 255".into() })?;
        if threshold < 2 || threshold > n {
            return Err(Error::Invalid {
                what: "threshold",
                why: format!(
                    "{threshold} of {n}: the threshold must be at least 2 and at most the number of custodians"
                ),
            });
        }
        let crypto = |e: custos_crypto::CryptoError| Error::Invalid { what: "escrow", why: e.to_string() };
        let (public, secret) = kbk_generate().map_err(crypto)?;
        let shares = shamir::split(&secret, threshold, n).map_err(crypto)?;
        drop(secret);
        let now = Timestamp::now();
        // Named for its time, and unique even for two made in one second.
        let id = format!("KBK.{}.{}", now.strftime("%Y%m%dT%H%M%SZ"), &custos_model::ChunkId::random().to_hex()[..8]);
        let rec = KbkRecord { id: id.clone(), public, threshold, custodians: custodians.to_vec(), created_at: now };
        // Escrow copies of the keys that exist, made before anything is stored.
        let mut copies = Vec::new();
        for k in self.repo.keys()?.into_iter().filter(|k| k.wrapped.is_some()) {
            copies.push((k.label.clone(), self.escrow_copy(&rec, &k)?));
        }
        let files: Vec<ShareFile> = custodians
            .iter()
            .zip(shares)
            .map(|(c, share)| ShareFile { kbk: id.clone(), custodian: c.clone(), threshold, share })
            .collect();
        deliver(&files)?;
        self.repo.insert_kbk(&rec, &copies)?;
        // Keys created meanwhile were escrowed to the previous KBK: move them too.
        for mut k in self.repo.keys()?.into_iter().filter(|k| k.wrapped.is_some()) {
            if k.escrow.as_ref().is_none_or(|e| e.kbk != id) {
                k.escrow = Some(self.escrow_copy(&rec, &k)?);
                self.repo.update_key(&k)?;
            }
        }
        Ok((rec, files))
    }

    /// Seal a key record's material to a KBK.
    pub(crate) fn escrow_copy(&self, kbk: &KbkRecord, rec: &KeyRecord) -> Result<EscrowCopy> {
        let wrapped = rec.wrapped.as_ref().ok_or_else(|| Error::KeyNoMaterial { label: rec.label.clone() })?;
        let key = self.state.hsm.unwrap_key(&rec.mkvp, &wrapped.0)?;
        let blob = escrow_seal(&kbk.public, rec.label.as_str(), &key)
            .map_err(|e| Error::Invalid { what: "escrow", why: e.to_string() })?;
        Ok(EscrowCopy { kbk: kbk.id.clone(), blob })
    }

    /// Recover a key from its escrow copy with custodians' shares, and put it
    /// back into the keystore under the CURRENT master key. A destroyed key
    /// comes back inactive (decrypt only).
    pub fn recover_from_escrow(&self, label: &KeyLabel, shares: &[ShareFile]) -> Result<Recovered> {
        let mut rec = self.key_record(label)?;
        let copy = rec.escrow.clone().ok_or_else(|| Error::Invalid {
            what: "escrow recovery",
            why: format!(
                "key {label} has no escrow copy; it was created before escrow was set up, or its copy was purged"
            ),
        })?;
        let kbk = self.repo.kbks()?.into_iter().find(|k| k.id == copy.kbk).ok_or_else(|| Error::Invalid {
            what: "escrow recovery",
            why: format!("key-backup key {} is not in this keystore", copy.kbk),
        })?;
        if let Some(s) = shares.iter().find(|s| s.kbk != kbk.id) {
            return Err(Error::Invalid {
                what: "escrow recovery",
                why: format!(
                    "the share of {} belongs to {}, but key {label} is escrowed under {}",
                    s.custodian, s.kbk, kbk.id
                ),
            });
        }
        let pieces: Vec<Share> = shares.iter().map(|s| s.share.clone()).collect();
        let need = || Error::Invalid {
            what: "escrow recovery",
            why: format!(
                "the shares given do not reassemble {}: it needs {} distinct shares of {}",
                kbk.id,
                kbk.threshold,
                kbk.custodians.join(", ")
            ),
        };
        if pieces.len() < kbk.threshold as usize {
            return Err(need());
        }
        let secret = shamir::combine(&pieces).map_err(|_| need())?;
        if kbk_public(&secret).ok() != Some(kbk.public) {
            return Err(need());
        }
        let key = escrow_open(&secret, label.as_str(), &copy.blob).map_err(|_| Error::Invalid {
            what: "escrow recovery",
            why: format!("the escrow copy of {label} does not open: it was altered; try a keystore backup"),
        })?;
        let got = Kcv::of(&key);
        if got != rec.kcv {
            return Err(Error::KeyMismatch { label: label.clone(), got: got.to_hex(), want: rec.kcv.to_hex() });
        }
        let w = self.state.hsm.wrap_key(&key)?;
        rec.wrapped = Some(WrappedMaterial(w.bytes));
        rec.mkvp = w.mkvp;
        if rec.state == KeyState::Destroyed {
            rec.state = KeyState::Inactive;
            rec.destroyed_at = None;
        }
        self.repo.update_key(&rec)?;
        Ok(Recovered::Restored { label: label.to_string(), state: rec.state })
    }
}

//! Keystore backups and key recovery from them.
//!
//! A backup copies every key that still has material, wrapped as it is, and
//! records the MKVPs of the master keys it depends on. Recovery re-wraps a
//! key to the CURRENT master key and writes it back into the live keystore.
//! When the master key a backup needs is in no register, recovery says
//! which MKVP it needs: the paper's Example 1.

use custos_crypto::{Kcv, Mkvp};
use custos_model::{
    EscrowCopy, KeyLabel, KeyRecord, KeyState, KeystoreBackupRecord, Pattern, VolumeName, WrappedMaterial,
};
use custos_store::format::object_hash;
use custos_store::keystore_backup::{self, BackedUpKey};
use jiff::Timestamp;
use serde::Serialize;

use crate::{Error, Open, Result, Vault, VaultState};

/// What recovery did with one key.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum Recovered {
    /// Restored into the live keystore under the CURRENT master key.
    Restored { label: String, state: KeyState },
    /// The live keystore already holds this key's material, and it
    /// unwraps to the key its check value names; left alone.
    AlreadyPresent { label: String },
    /// The live record was damaged (its material did not unwrap, or
    /// unwrapped to another key than its check value names): its material
    /// was replaced with the backup's, re-wrapped under the CURRENT master
    /// key, and the rest of the record (state, dates, use) kept.
    Repaired { label: String, state: KeyState, damage: String },
}

impl<S: VaultState> Vault<S> {
    pub fn keystore_backups(&self) -> Result<Vec<KeystoreBackupRecord>> {
        Ok(self.repo.keystore_backups()?)
    }

    /// Copy every key with material to a backup object on `volume`.
    pub fn keystore_backup(&self, volume: &VolumeName) -> Result<KeystoreBackupRecord> {
        let vol = self.open_volume(volume)?;
        let now = Timestamp::now();
        let suffix: [u8; 4] =
            custos_crypto::random_array().map_err(|e| Error::Invalid { what: "random", why: e.to_string() })?;
        let id = format!("{}-{}", now.strftime("%Y%m%dT%H%M%S%.6fZ"), hex::encode(suffix));
        let keys: Vec<KeyRecord> = self.repo.keys()?.into_iter().filter(|k| k.wrapped.is_some()).collect();
        let mut mkvps: Vec<String> = keys.iter().map(|k| k.mkvp.to_hex()).collect();
        mkvps.sort();
        mkvps.dedup();
        let backed: Vec<BackedUpKey> = keys
            .iter()
            .map(|k| BackedUpKey {
                label: k.label.to_string(),
                state: k.state,
                purpose: k.purpose,
                app: k.app.clone(),
                mkvp: k.mkvp.to_hex(),
                kcv: k.kcv.to_hex(),
                wrapped: hex::encode(&k.wrapped.as_ref().expect("filtered").0),
                created_at: k.created_at,
                activated_at: k.activated_at,
                expires_at: k.expires_at,
                escrow_kbk: k.escrow.as_ref().map(|e| e.kbk.clone()),
                escrow: k.escrow.as_ref().map(|e| hex::encode(&e.blob)),
                attributes: k.attributes.clone(),
            })
            .collect();
        let out = keystore_backup::encode(&id, now, &backed);
        vol.put_keystore_backup(&id, &out)?;
        let rec = KeystoreBackupRecord {
            id,
            volume: volume.clone(),
            created_at: now,
            key_count: keys.len() as u64,
            mkvps,
            sha256: object_hash(&out),
        };
        self.repo.insert_keystore_backup(&rec)?;
        Ok(rec)
    }
}

/// What a keystore backup object holds, as read back from its volume.
#[derive(Debug, Clone)]
pub enum KeystoreBackupContents {
    /// It matches the hash recorded when it was written: each key's label
    /// and the MKVP of the master key it is wrapped under there.
    Intact(Vec<(String, String)>),
    /// It cannot be used: why (unreadable, altered, unparsable, a format
    /// this Custos does not read), naming it and its volume.
    Unusable(String),
}

impl<S: VaultState> Vault<S> {
    /// Read keystore backup `b` from its volume and check it against the
    /// hash the catalog recorded (no key is needed). The risk model uses
    /// this instead of trusting the record.
    pub fn keystore_backup_contents(&self, b: &KeystoreBackupRecord) -> KeystoreBackupContents {
        match self.read_keystore_backup_checked(b) {
            Ok(keys) => KeystoreBackupContents::Intact(keys.into_iter().map(|k| (k.label, k.mkvp)).collect()),
            Err(e) => KeystoreBackupContents::Unusable(e.to_string()),
        }
    }

    /// Keystore backup `b`'s keys, read from its volume: refused unless it
    /// matches the hash recorded when it was written and is a format this
    /// Custos reads. What recovery and the risk model both rely on.
    fn read_keystore_backup_checked(&self, b: &KeystoreBackupRecord) -> Result<Vec<BackedUpKey>> {
        let damaged = |why: String| Error::Invalid {
            what: "keystore backup",
            why: format!("{} on volume {} {why}; use another backup", b.id, b.volume),
        };
        let bytes = self.open_volume(&b.volume)?.read_keystore_backup(&b.id)?;
        if object_hash(&bytes) != b.sha256 {
            return Err(damaged("does not match the hash recorded when it was written: it was altered".into()));
        }
        keystore_backup::parse(&bytes).map_err(damaged)
    }
}

impl Vault<Open> {
    /// Whether key `rec`'s material unwraps in the HSM to the key its check
    /// value names; the error says what is wrong.
    pub fn check_key(&self, rec: &KeyRecord) -> Result<()> {
        self.unwrap_checked(rec).map(|_| ())
    }
}

impl Vault<Open> {
    /// Restore the keys matching `pattern` from keystore backup `id`.
    /// Keys the live keystore still holds are left alone. A key whose
    /// master key no register holds fails the whole call, naming the MKVP
    /// it needs; nothing is written in that case.
    pub fn recover_keys(&self, pattern: &Pattern, id: &str) -> Result<Vec<Recovered>> {
        let backup = self.repo.keystore_backups()?.into_iter().find(|b| b.id == id).ok_or_else(|| Error::NotFound {
            what: "keystore backup",
            name: id.to_string(),
            see: "custos keystore backups",
        })?;
        let damaged = |why: String| Error::Invalid {
            what: "keystore backup",
            why: format!("{id} on volume {} {why}; use another backup", backup.volume),
        };
        let held: Vec<Mkvp> = self.state.hsm.registers()?.iter().map(|r| r.mkvp).collect();
        let mut plan = Vec::new();
        for b in self.read_keystore_backup_checked(&backup)? {
            if !pattern.matches(&b.label) {
                continue;
            }
            let mkvp = Mkvp::from_hex(&b.mkvp).map_err(|_| damaged("has a bad MKVP".into()))?;
            if !held.contains(&mkvp) {
                let live = self.repo.key(&KeyLabel::new(b.label.clone())?)?;
                let hint = match live.and_then(|k| k.escrow) {
                    Some(e) => format!(
                        "it has an escrow copy under {}: recover it with `custos key recover {} --escrow --share FILE …`",
                        e.kbk, b.label
                    ),
                    None => "it has no escrow copy, so unless that master key was archived the key is lost".into(),
                };
                return Err(Error::MasterKeyUnavailable {
                    label: b.label,
                    backup: id.into(),
                    mkvp: b.mkvp,
                    held: held.iter().map(|m| m.to_hex()).collect::<Vec<_>>().join(", "),
                    hint,
                });
            }
            plan.push((b, mkvp));
        }
        if plan.is_empty() {
            return Err(Error::Invalid {
                what: "key recovery",
                why: format!("no key in backup {id} matches {pattern}"),
            });
        }
        let mut out = Vec::new();
        for (b, mkvp) in plan {
            let label = KeyLabel::new(b.label.clone())?;
            let live = self.repo.key(&label)?;
            // A live key counts as present only if the HSM unwraps it to
            // the key its check value (and the backup's) names.
            let damage = match &live {
                Some(k) if k.wrapped.is_some() && held.contains(&k.mkvp) => match self.unwrap_checked(k) {
                    Ok(_) if k.kcv.to_hex() == b.kcv => None,
                    Ok(_) => Some(format!("its check value {} is not the backup's {}", k.kcv.to_hex(), b.kcv)),
                    Err(e) => Some(e.to_string()),
                },
                _ => None,
            };
            if live.as_ref().is_some_and(|k| k.wrapped.is_some() && held.contains(&k.mkvp)) && damage.is_none() {
                out.push(Recovered::AlreadyPresent { label: b.label });
                continue;
            }
            let wrapped = hex::decode(&b.wrapped).map_err(|_| damaged("has bad wrapped material".into()))?;
            let backed_escrow = match (&b.escrow_kbk, &b.escrow) {
                (Some(kbk), Some(blob)) => Some(EscrowCopy {
                    kbk: kbk.clone(),
                    blob: hex::decode(blob).map_err(|_| damaged("has a bad escrow copy".into()))?,
                }),
                _ => None,
            };
            let w = self.state.hsm.rewrap_key(&mkvp, &wrapped)?;
            let want = Kcv::from_hex(&b.kcv).map_err(|_| damaged("has a bad KCV".into()))?;
            if w.kcv != want {
                return Err(Error::KeyMismatch { label, got: w.kcv.to_hex(), want: want.to_hex() });
            }
            let rec = KeyRecord {
                label: label.clone(),
                state: b.state,
                purpose: b.purpose,
                app: b.app,
                wrapped: Some(WrappedMaterial(w.bytes)),
                mkvp: w.mkvp,
                kcv: w.kcv,
                created_at: b.created_at,
                activated_at: b.activated_at,
                deactivated_at: live.as_ref().and_then(|k| k.deactivated_at),
                destroyed_at: None,
                expires_at: b.expires_at,
                last_used_at: live.as_ref().and_then(|k| k.last_used_at),
                use_count: live.as_ref().map(|k| k.use_count).unwrap_or(0),
                // The catalog's copy if it kept one, else the backup's.
                escrow: live.as_ref().and_then(|k| k.escrow.clone()).or(backed_escrow),
                // The catalog's if it has the key (they may have changed
                // since), else the backup's.
                attributes: live.as_ref().map_or(b.attributes, |k| k.attributes.clone()),
            };
            match (&live, damage) {
                (Some(live), Some(damage)) => {
                    // The live record's state and history stand; only its
                    // material (and what names it) comes from the backup.
                    let fixed = KeyRecord {
                        wrapped: rec.wrapped,
                        mkvp: rec.mkvp,
                        kcv: rec.kcv,
                        escrow: rec.escrow,
                        ..live.clone()
                    };
                    self.repo.update_key(&fixed, live)?;
                    out.push(Recovered::Repaired { label: b.label, state: live.state, damage });
                }
                (Some(live), None) => {
                    self.repo.update_key(&rec, live)?;
                    out.push(Recovered::Restored { label: b.label, state: b.state });
                }
                (None, _) => {
                    self.repo.insert_key(&rec)?;
                    out.push(Recovered::Restored { label: b.label, state: b.state });
                }
            }
        }
        Ok(out)
    }
}

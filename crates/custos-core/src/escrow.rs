//! Escrow: every data key, when created, is also sealed to the key-backup
//! key (KBK), whose private half exists only as k-of-n custodians' shares.
//! Escrow copies depend on no master key, so they recover keys that
//! keystore backups cannot after master key changes (the paper's Example 1).

use custos_crypto::shamir::{self, Share};
use custos_crypto::{escrow_open, escrow_seal, kbk_generate, kbk_public, Kcv};
use custos_model::{CustodianKey, EscrowCopy, KbkRecord, KeyLabel, KeyRecord, KeyState, SealedShare, WrappedMaterial};
use jiff::Timestamp;
use serde::Serialize;

use crate::{Error, Open, Recovered, Result, ShareFile, Vault, VaultState};
use custos_hsm::files::seal_share;

/// Escrow coverage, for `escrow status`.
#[derive(Debug, Clone, Serialize)]
pub struct EscrowStatus {
    pub kbks: Vec<KbkRecord>,
    #[serde(rename = "escrowed_count")]
    pub keys_escrowed: u64,
    /// Keys with material and no escrow copy.
    #[serde(rename = "not_escrowed")]
    pub keys_not_escrowed: Vec<String>,
    /// The current KBK's shares: a share nobody confirmed may be sealed to
    /// a key its custodian no longer has.
    pub shares: Vec<ShareStatus>,
    /// Registered custodian recipients.
    pub recipients: Vec<CustodianKey>,
}

/// Whether a custodian has shown they can open their share.
#[derive(Debug, Clone, Serialize)]
pub struct ShareStatus {
    pub kbk: String,
    pub custodian: String,
    pub confirmed_at: Option<Timestamp>,
}

impl<S: VaultState> Vault<S> {
    pub fn escrow_status(&self) -> Result<EscrowStatus> {
        self.escrow_status_of(&self.repo.keys()?)
    }

    /// [`Vault::escrow_status`] given the keystore, read by the caller
    /// (the risk report reads it once for everything).
    pub fn escrow_status_of(&self, keys: &[KeyRecord]) -> Result<EscrowStatus> {
        let kbks = self.repo.kbks()?;
        let shares = match kbks.last() {
            Some(k) => self
                .repo
                .escrow_shares(&k.id)?
                .into_iter()
                .map(|s| ShareStatus { kbk: s.kbk, custodian: s.custodian, confirmed_at: s.confirmed_at })
                .collect(),
            None => Vec::new(),
        };
        Ok(EscrowStatus {
            shares,
            recipients: self.repo.custodian_keys()?,
            kbks,
            keys_escrowed: keys.iter().filter(|k| k.escrow.is_some()).count() as u64,
            keys_not_escrowed: keys
                .iter()
                .filter(|k| k.escrow.is_none() && k.wrapped.is_some())
                .map(|k| k.label.to_string())
                .collect(),
        })
    }

    /// Register `principal`'s custodian recipient (the public half of a key
    /// pair it made with `escrow keygen`). A recipient another user has
    /// registered is refused: two custodians never share a key pair, so no
    /// one can collect a second share by naming someone else's recipient.
    /// Shares already sealed stay sealed to the recipient of their day.
    pub fn custodian_register(&self, principal: &str, recipient: &str) -> Result<CustodianKey> {
        let public = custos_crypto::recipient_from_text(recipient)
            .map_err(|e| Error::Invalid { what: "recipient", why: e.to_string() })?;
        let user = self.user(principal)?;
        if user.disabled {
            return Err(Error::Invalid { what: "recipient", why: format!("user {principal} is disabled") });
        }
        let key = CustodianKey { principal: principal.into(), public, registered_at: Timestamp::now() };
        match self.repo.set_custodian_key(&key) {
            Err(custos_repo::RepoError::Exists { .. }) => Err(Error::Invalid {
                what: "recipient",
                why: "another user registered this recipient: each custodian registers the recipient of their own key (`custos escrow keygen`)".into(),
            }),
            r => r.map(|_| key).map_err(Error::from),
        }
    }

    /// `custodian`'s sealed share of `kbk` (the one in use when `None`).
    pub fn escrow_share(&self, custodian: &str, kbk: Option<&str>) -> Result<SealedShare> {
        let kbk = match kbk {
            Some(k) => k.to_string(),
            None => {
                self.current_kbk()?
                    .ok_or_else(|| Error::Invalid {
                        what: "escrow share",
                        why: "escrow is not set up: run `custos escrow init` first".into(),
                    })?
                    .id
            }
        };
        self.repo.escrow_shares(&kbk)?.into_iter().find(|s| s.custodian == custodian).ok_or_else(|| Error::Invalid {
            what: "escrow share",
            why: format!("{custodian} holds no share of {kbk} (a share made before shares were sealed is not kept)"),
        })
    }

    /// Check a share against the digest kept beside the share sealed to its
    /// custodian: only the very share that was sealed to them passes. (A
    /// key-backup key made before shares were sealed has no digests; its
    /// shares are checked when they are combined.)
    pub fn escrow_share_check(&self, share: &ShareFile) -> Result<()> {
        let Some(sealed) = self.repo.escrow_shares(&share.kbk)?.into_iter().find(|s| s.custodian == share.custodian)
        else {
            if self.repo.escrow_shares(&share.kbk)?.is_empty() {
                return Ok(());
            }
            return Err(Error::Invalid {
                what: "escrow share",
                why: format!("{} holds no share of {}", share.custodian, share.kbk),
            });
        };
        let digest = crate::share_confirmation(share);
        if aws_lc_rs::constant_time::verify_slices_are_equal(&sealed.confirm, &digest).is_err() {
            return Err(Error::Invalid {
                what: "escrow share",
                why: format!(
                    "the share given as {}'s is not the one sealed to {} for {}: {} fetches it again (`custos escrow share`) and opens it with their own key",
                    share.custodian, share.custodian, share.kbk, share.custodian
                ),
            });
        }
        Ok(())
    }

    /// The key-backup key `shares` are of, and its secret reassembled from
    /// them (each the share sealed to its custodian, at least the threshold,
    /// all of one key): checked before anything depends on them.
    pub(crate) fn escrow_secret(&self, shares: &[ShareFile]) -> Result<(KbkRecord, zeroize::Zeroizing<[u8; 32]>)> {
        let first = shares.first().ok_or_else(|| Error::Invalid {
            what: "escrow shares",
            why: "none were given: give a threshold of custodians' --share and --key".into(),
        })?;
        let kbk = self.repo.kbks()?.into_iter().find(|k| k.id == first.kbk).ok_or_else(|| Error::Invalid {
            what: "escrow shares",
            why: format!("key-backup key {} is not in this keystore", first.kbk),
        })?;
        let secret =
            self.kbk_secret(&kbk, shares, "escrow shares", &format!("the first share given is of {}", kbk.id))?;
        Ok((kbk, secret))
    }

    /// Reassemble the secret of `kbk` from `shares`: each must be of `kbk`
    /// and the very share sealed to its custodian, at least the threshold of
    /// them, and together they must give the key's public half. `whose`
    /// ends the message for a share of another key ("…, but `whose`").
    fn kbk_secret(
        &self,
        kbk: &KbkRecord,
        shares: &[ShareFile],
        what: &'static str,
        whose: &str,
    ) -> Result<zeroize::Zeroizing<[u8; 32]>> {
        if let Some(s) = shares.iter().find(|s| s.kbk != kbk.id) {
            return Err(Error::Invalid {
                what,
                why: format!("the share of {} belongs to {}, but {whose}", s.custodian, s.kbk),
            });
        }
        for s in shares {
            self.escrow_share_check(s)?;
        }
        let need = || Error::Invalid {
            what,
            why: format!(
                "the shares given do not reassemble {}: it needs {} distinct shares of {}",
                kbk.id,
                kbk.threshold,
                kbk.custodians.join(", ")
            ),
        };
        if shares.len() < kbk.threshold as usize {
            return Err(need());
        }
        let pieces: Vec<Share> = shares.iter().map(|s| s.share.clone()).collect();
        let secret = shamir::combine(&pieces).map_err(|_| need())?;
        if kbk_public(&secret).ok() != Some(kbk.public) {
            return Err(need());
        }
        Ok(secret)
    }

    /// Record that `custodian` opened their share of `kbk`: `confirm` is
    /// [`crate::share_confirmation`] of the opened share.
    pub fn escrow_confirm(&self, custodian: &str, kbk: &str, confirm: &[u8; 32]) -> Result<SealedShare> {
        let mut share = self.escrow_share(custodian, Some(kbk))?;
        if aws_lc_rs::constant_time::verify_slices_are_equal(&share.confirm, confirm).is_err() {
            return Err(Error::Invalid {
                what: "escrow confirm",
                why: format!("that is not {custodian}'s share of {kbk}: fetch it again with `custos escrow share`"),
            });
        }
        let now = Timestamp::now();
        self.repo.confirm_escrow_share(kbk, custodian, now)?;
        share.confirmed_at = Some(now);
        Ok(share)
    }

    /// Erase a key's escrow copy (for a deliberate crypto-erase).
    pub fn escrow_purge(&self, label: &KeyLabel) -> Result<()> {
        self.change_key(label, |rec| match rec.escrow.take() {
            Some(_) => Ok(()),
            None => Err(Error::Invalid { what: "escrow purge", why: format!("key {label} has no escrow copy") }),
        })?;
        Ok(())
    }

    /// The key-backup key `label` is escrowed to.
    pub fn escrow_kbk_of(&self, label: &KeyLabel) -> Result<KbkRecord> {
        let rec = self.key_record(label)?;
        let copy = rec.escrow.ok_or_else(|| Error::Invalid {
            what: "escrow recovery",
            why: format!(
                "key {label} has no escrow copy; it was created before escrow was set up, or its copy was purged"
            ),
        })?;
        self.repo.kbks()?.into_iter().find(|k| k.id == copy.kbk).ok_or_else(|| Error::Invalid {
            what: "escrow recovery",
            why: format!("key-backup key {} is not in this keystore", copy.kbk),
        })
    }

    pub(crate) fn current_kbk(&self) -> Result<Option<KbkRecord>> {
        self.memoized(|m| m.kbk.clone(), |m, v| m.kbk = Some(v), || Ok(self.repo.kbks()?.pop()))
    }
}

impl Vault<Open> {
    /// Create a key-backup key split `threshold`-of-n among `custodians`,
    /// escrow every existing key under it, and seal each custodian's share
    /// to the recipient they registered. The KBK's private half is never
    /// stored and no share is ever handed out in the clear: the catalog
    /// keeps the sealed shares, in the same transaction as the KBK, for each
    /// custodian to fetch (`escrow share`). A failure or a kill leaves every
    /// key with its previous escrow copy.
    pub fn escrow_init(&self, custodians: &[String], threshold: u8) -> Result<KbkRecord> {
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
        // Every custodian is an enabled user with a registered recipient.
        let registered = self.repo.custodian_keys()?;
        let users = self.repo.principals()?;
        let mut recipients = Vec::with_capacity(custodians.len());
        for c in custodians {
            match users.iter().find(|u| &u.name == c) {
                Some(u) if !u.disabled => {}
                Some(_) => {
                    return Err(Error::Invalid {
                        what: "custodians",
                        why: format!("user {c} is disabled and cannot hold a share"),
                    })
                }
                None => {
                    return Err(Error::Invalid {
                        what: "custodians",
                        why: format!("{c} is not a user: each custodian is a user who registered a recipient"),
                    })
                }
            }
            let k = registered.iter().find(|k| &k.principal == c).ok_or_else(|| Error::Invalid {
                what: "custodians",
                why: format!(
                    "{c} has registered no recipient: {c} runs `custos escrow keygen` and then `custos escrow register`"
                ),
            })?;
            recipients.push(k.public);
        }
        let crypto = |e: custos_crypto::CryptoError| Error::Invalid { what: "escrow", why: e.to_string() };
        let (public, secret) = kbk_generate().map_err(crypto)?;
        let pieces = shamir::split(&secret, threshold, n).map_err(crypto)?;
        drop(secret);
        let now = Timestamp::now();
        // Named for its time, and unique even for two made in one second.
        let id = format!("KBK.{}.{}", now.strftime("%Y%m%dT%H%M%SZ"), &custos_model::ChunkId::random().to_hex()[..8]);
        let rec = KbkRecord { id: id.clone(), public, threshold, custodians: custodians.to_vec(), created_at: now };
        let mut sealed = Vec::with_capacity(custodians.len());
        for ((c, share), recipient) in custodians.iter().zip(pieces).zip(&recipients) {
            let file = ShareFile { kbk: id.clone(), custodian: c.clone(), threshold, share };
            sealed.push(seal_share(&file, recipient)?);
        }
        // Escrow copies of the keys that exist, made before anything is stored.
        let mut copies = Vec::new();
        for k in self.repo.keys()?.into_iter().filter(|k| k.wrapped.is_some()) {
            copies.push((k.label.clone(), self.escrow_copy(&rec, &k)?));
        }
        self.repo.insert_kbk(&rec, &copies, &sealed)?;
        // Keys created meanwhile were escrowed to the previous KBK: move them too.
        for k in self.repo.keys()?.into_iter().filter(|k| k.wrapped.is_some()) {
            if k.escrow.as_ref().is_none_or(|e| e.kbk != id) {
                self.change_key(&k.label, |k| {
                    if k.wrapped.is_some() && k.escrow.as_ref().is_none_or(|e| e.kbk != id) {
                        k.escrow = Some(self.escrow_copy(&rec, k)?);
                    }
                    Ok(())
                })?;
            }
        }
        Ok(rec)
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
        let rec = self.key_record(label)?;
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
        let secret =
            self.kbk_secret(&kbk, shares, "escrow recovery", &format!("key {label} is escrowed under {}", kbk.id))?;
        self.restore_escrowed(rec, &secret)
    }

    /// Put a key back from its escrow copy, opened with its key-backup
    /// key's reassembled `secret`, under the CURRENT master key.
    pub(crate) fn restore_escrowed(&self, was: KeyRecord, secret: &[u8; 32]) -> Result<Recovered> {
        let mut rec = was.clone();
        let label = rec.label.clone();
        let copy = rec.escrow.clone().ok_or_else(|| Error::Invalid {
            what: "escrow recovery",
            why: format!("key {label} has no escrow copy"),
        })?;
        let key = escrow_open(secret, label.as_str(), &copy.blob).map_err(|_| Error::Invalid {
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
        self.repo.update_key(&rec, &was)?;
        Ok(Recovered::Restored { label: label.to_string(), state: rec.state })
    }
}

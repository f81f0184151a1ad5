//! Keys: creation under the naming standard, lifecycle actions (through the
//! one table in `custos_model::KeyState::apply`), and unwrapping for use.

use custos_crypto::{DataKey, Kcv};
use custos_model::{
    DatasetName, KeyAction, KeyAttributes, KeyLabel, KeyRecord, KeyState, KeyUse, Purpose, WrappedMaterial,
};
use jiff::Timestamp;

use crate::{Error, Open, Result, Vault, VaultState};

/// A key to create. Either `label` (checked against the naming standard) or
/// `app` (the next label in the application's sequence) must be given. It
/// holds no key material (the HSM generates that), so `Debug` shows nothing
/// secret.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub label: Option<KeyLabel>,
    pub app: Option<String>,
    pub purpose: Purpose,
    pub expires_at: Option<Timestamp>,
    /// Activate at once instead of leaving the key pre-active.
    pub activate: bool,
}

/// What [`Vault::destroy_due`] did.
#[derive(Debug, Default)]
pub struct DueDestructions {
    /// Keys erased now.
    pub done: Vec<KeyLabel>,
    /// Keys whose erasure failed this time (it is tried again by the next command).
    pub failed: Vec<(KeyLabel, Error)>,
}

impl<S: VaultState> Vault<S> {
    pub fn keys(&self) -> Result<Vec<KeyRecord>> {
        Ok(self.repo.keys()?)
    }

    /// A page of the keys matching `pattern`, in label order after `after`
    /// (`key ls --limit N --after LABEL`). The catalog is read in label
    /// order from the pattern's literal prefix, a batch at a time, so time
    /// and memory follow the page and the matching labels, not the keystore.
    pub fn keys_page(
        &self,
        pattern: Option<&custos_model::Pattern>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>> {
        crate::datasets::page(
            pattern,
            after,
            limit,
            |from, after, n| self.repo.keys_from(from, after, n),
            |k| k.label.to_string(),
        )
    }

    pub fn key(&self, label: &KeyLabel) -> Result<KeyRecord> {
        self.key_record(label)
    }

    /// Datasets with data sealed under a key.
    pub fn datasets_using_key(&self, label: &KeyLabel) -> Result<Vec<DatasetName>> {
        Ok(self.repo.datasets_using_key(label)?)
    }

    /// Apply a lifecycle action. Destroying a key that datasets still need
    /// is refused unless `crypto_erase` says so on purpose; destruction
    /// erases the wrapped material from the keystore.
    pub fn key_action(&self, label: &KeyLabel, action: KeyAction, crypto_erase: bool) -> Result<KeyRecord> {
        self.change_key(label, |rec| {
            let next = rec.state.apply(action).map_err(|source| Error::Lifecycle { label: label.clone(), source })?;
            let now = Timestamp::now();
            if action == KeyAction::Destroy {
                let users = self.needing_key(label)?;
                if !users.is_empty() && !crypto_erase {
                    return Err(Error::KeyInUse { label: label.clone(), datasets: users });
                }
                rec.wrapped = None;
                rec.destroyed_at = Some(now);
            }
            match next {
                KeyState::Active => rec.activated_at = Some(now),
                KeyState::Inactive if rec.state == KeyState::Active => rec.deactivated_at = Some(now),
                _ => {}
            }
            rec.state = next;
            Ok(())
        })
    }

    /// Change a key's record by `f`, written only over the record `f` saw:
    /// when another command (another server's, or a re-encipherment)
    /// changed it meanwhile, it is read again and `f` decides afresh, so a
    /// change is never laid over one it did not see. Returns the record
    /// as written.
    pub(crate) fn change_key(
        &self,
        label: &KeyLabel,
        mut f: impl FnMut(&mut KeyRecord) -> Result<()>,
    ) -> Result<KeyRecord> {
        let mut tries = 0;
        loop {
            let was = self.key_record(label)?;
            let mut rec = was.clone();
            f(&mut rec)?;
            match self.repo.update_key(&rec, &was) {
                Err(custos_repo::RepoError::Raced { .. }) if tries < 8 => tries += 1,
                r => return r.map(|()| rec).map_err(Into::into),
            }
        }
    }

    /// Whether key `label` may be destroyed now (deactivated first; with
    /// `crypto_erase` when datasets still need it): the datasets that would
    /// become unreadable. A dual-control request is checked so before it
    /// is made, so that none waits for an approval that cannot succeed.
    pub fn check_destroy(&self, label: &KeyLabel, crypto_erase: bool) -> Result<Vec<String>> {
        let rec = self.key_record(label)?;
        rec.state.apply(KeyAction::Destroy).map_err(|source| Error::Lifecycle { label: label.clone(), source })?;
        let users = self.needing_key(label)?;
        if !users.is_empty() && !crypto_erase {
            return Err(Error::KeyInUse { label: label.clone(), datasets: users });
        }
        Ok(users)
    }

    /// Schedule a key's destruction after `wait` (AWS KMS's waiting
    /// period): checked now as `key_action(Destroy)` would be (deactivated
    /// first; `crypto_erase` when datasets still need it), unusable from
    /// now on, erased by the first command run after the time. `min_wait`
    /// is the policy's floor. Returns the time and the datasets that would
    /// become unreadable.
    pub fn schedule_destroy(
        &self,
        label: &KeyLabel,
        wait: jiff::SignedDuration,
        crypto_erase: bool,
    ) -> Result<(Timestamp, Vec<String>)> {
        let min = self.destroy_min_wait()?;
        if wait < min {
            return Err(Error::Invalid {
                what: "waiting period",
                why: format!("{wait:#} is shorter than the policy's minimum of {min:#} (setting key.destroy.min-wait)"),
            });
        }
        if wait.is_zero() {
            // No waiting period: destroyed now, in one write, by this
            // command (whose own audit entry records it).
            // (Without crypto-erase, a key anything still needs is refused.)
            let users = if crypto_erase { self.needing_key(label)? } else { Vec::new() };
            let rec = self.key_action(label, KeyAction::Destroy, crypto_erase)?;
            return Ok((rec.destroyed_at.unwrap_or_else(Timestamp::now), users));
        }
        let users = self.check_destroy(label, crypto_erase)?;
        let at = Timestamp::now() + wait;
        self.repo.set_destroy_after(label, Some(at))?;
        self.destroy_due()?;
        Ok((at, users))
    }

    /// Everything sealed under `label` that its destruction would erase:
    /// datasets, backup copies and snapshots.
    pub fn needing_key(&self, label: &KeyLabel) -> Result<Vec<String>> {
        let mut out: Vec<String> =
            self.repo.datasets_using_key(label)?.into_iter().map(|d| format!("dataset {d}")).collect();
        // A plaintext copy records its source's key but needs none.
        for b in self.repo.key_backups(label)?.into_iter().filter(|b| b.method != custos_model::CopyMethod::Plaintext) {
            out.push(format!("backup {} ({} copy of {})", b.id, b.method.as_str(), b.dataset));
        }
        for sn in self.repo.key_snapshots(label)? {
            out.push(format!("snapshot {} of {}", sn.id, sn.dataset));
        }
        Ok(out)
    }

    /// Take a key off the destruction schedule; it is usable again as its
    /// state allows.
    pub fn cancel_destroy(&self, label: &KeyLabel) -> Result<KeyRecord> {
        let rec = self.key_record(label)?;
        let not_scheduled = || Error::Invalid {
            what: "cancel-destroy",
            why: format!("key {label} is not scheduled for destruction (state {})", rec.state),
        };
        let at = self.repo.destroy_after(label)?.ok_or_else(not_scheduled)?;
        // Past its time the key is another command's (another server's) to
        // destroy: a cancel then would race that destruction.
        if at <= Timestamp::now() {
            return Err(Error::Invalid {
                what: "cancel-destroy",
                why: format!(
                    "key {label}'s waiting period ended at {at}: it is being destroyed; recover it afterwards from escrow or a keystore backup if it is needed"
                ),
            });
        }
        if !self.repo.unschedule_destroy(label, at)? {
            return Err(not_scheduled());
        }
        Ok(rec)
    }

    /// Every key on the destruction schedule, and when it falls due.
    pub fn destroy_schedule(&self) -> Result<Vec<(KeyLabel, Timestamp)>> {
        Ok(self.repo.destroy_schedule()?)
    }

    /// When a key is scheduled to be destroyed, if it is.
    pub fn destroy_scheduled_at(&self, label: &KeyLabel) -> Result<Option<Timestamp>> {
        // While a batch runs, the whole schedule (a handful of keys) is read
        // once rather than once for each dataset's key.
        if self.memo.lock().unwrap_or_else(|e| e.into_inner()).batches == 0 {
            return Ok(self.repo.destroy_after(label)?);
        }
        let schedule = self.memoized(
            |m| m.destroy.clone(),
            |m, v| m.destroy = Some(v),
            || Ok(std::sync::Arc::new(self.repo.destroy_schedule()?.into_iter().collect())),
        )?;
        Ok(schedule.get(label).copied())
    }

    /// Destroy every key whose waiting period is over. Run by every command
    /// that opens the vault, so it must never stop one: each key is done on
    /// its own and idempotently (a key a killed run already erased only has
    /// its schedule cleared), and a key that fails is reported in the
    /// outcome and audited, while the rest go on.
    pub fn destroy_due(&self) -> Result<DueDestructions> {
        let now = Timestamp::now();
        let mut out = DueDestructions::default();
        for (label, at) in self.repo.destroy_schedule()? {
            if at > now {
                break;
            }
            let what = "key destroy (waiting period over)";
            // Several servers (or commands) may find the same key due at
            // once: the state change is written only over the record it
            // was decided from, and only the one that takes the key off the
            // schedule (still at `at`) reports and audits it, so a key is
            // destroyed and audited once. A run killed between the two
            // steps leaves a destroyed key on the schedule, which the next
            // run only takes off.
            let done = (|| -> Result<bool> {
                match self.key_action(&label, KeyAction::Destroy, true) {
                    Ok(_) => {}
                    Err(e) if self.key_record(&label)?.state == KeyState::Destroyed => drop(e),
                    Err(e) => return Err(e),
                }
                Ok(self.repo.unschedule_destroy(&label, at)?)
            })();
            match done {
                // A command run without the HSM may not change keys: the
                // next one that holds it (every server does) carries it out.
                Ok(false) | Err(Error::Repo(custos_repo::RepoError::NeedsKey { .. })) => {}
                Ok(true) => {
                    self.audit_append("custos", what, label.as_str(), "ok")?;
                    out.done.push(label);
                }
                Err(e) => {
                    let _ = self.audit_append("custos", what, label.as_str(), &format!("failed: {e}"));
                    out.failed.push((label, e));
                }
            }
        }
        Ok(out)
    }

    /// The policy's shortest waiting period before destruction (default 7 days).
    pub fn destroy_min_wait(&self) -> Result<jiff::SignedDuration> {
        self.duration_setting(SETTING_DESTROY_MIN_WAIT)
    }

    pub fn set_destroy_min_wait(&self, text: &str) -> Result<()> {
        self.set_duration_setting(SETTING_DESTROY_MIN_WAIT, text)
    }

    /// The waiting period `key destroy` uses when none is given (default 7 days).
    pub fn destroy_default_wait(&self) -> Result<jiff::SignedDuration> {
        self.duration_setting(SETTING_DESTROY_WAIT)
    }

    pub fn set_destroy_default_wait(&self, text: &str) -> Result<()> {
        self.set_duration_setting(SETTING_DESTROY_WAIT, text)
    }

    fn duration_setting(&self, key: &'static str) -> Result<jiff::SignedDuration> {
        match self.repo.setting(key)? {
            None => Ok(jiff::SignedDuration::from_hours(7 * 24)),
            Some(s) => parse_duration(&s).map_err(|why| Error::Invalid { what: key, why }),
        }
    }

    fn set_duration_setting(&self, key: &'static str, text: &str) -> Result<()> {
        parse_duration(text).map_err(|why| Error::Invalid { what: key, why })?;
        Ok(self.repo.set_setting(key, text)?)
    }

    /// The next label for an application and purpose under the naming standard.
    pub fn next_label(&self, app: &str, purpose: Purpose) -> Result<KeyLabel> {
        let ns = self.naming()?;
        let at = (ns.template().to_string(), app.to_string(), purpose);
        let known = self.labels.lock().unwrap_or_else(|e| e.into_inner()).get(&at).copied();
        // The sequence this process saw last: the labels after it are
        // probed one by one (keys are made in sequence, so the next free one
        // is usually the first or second probed). Only when several in a row
        // are taken (another process made many) is every label read.
        if let Some(mut seq) = known {
            if self.label_trusted(&at) {
                if let Some(next) = seq.checked_add(1) {
                    // Taken by whoever asked: the next call offers the one after.
                    let label = KeyLabel::new(ns.label(purpose, app, next))?;
                    self.labels.lock().unwrap_or_else(|e| e.into_inner()).insert(at, next);
                    return Ok(label);
                }
            }
            for _ in 0..8 {
                let Some(next) = seq.checked_add(1) else { break };
                let label = KeyLabel::new(ns.label(purpose, app, next))?;
                if self.repo.key(&label)?.is_none() {
                    self.labels.lock().unwrap_or_else(|e| e.into_inner()).insert(at.clone(), seq);
                    self.trust_label(at);
                    return Ok(label);
                }
                seq = next;
            }
        }
        let max = self
            .repo
            .key_labels()?
            .iter()
            .filter_map(|l| ns.parse(l.as_str()).ok())
            .filter(|p| p.app == app && p.purpose == purpose)
            .map(|p| p.seq)
            .max()
            .unwrap_or(0);
        self.labels.lock().unwrap_or_else(|e| e.into_inner()).insert(at.clone(), max);
        self.trust_label(at);
        let label = ns.label(
            purpose,
            app,
            max.checked_add(1).ok_or_else(|| Error::Invalid {
                what: "key label",
                why: format!("application {app}'s sequence is exhausted: name the key explicitly"),
            })?,
        );
        ns.parse(&label)?;
        Ok(KeyLabel::new(label)?)
    }
}

impl<S: VaultState> Vault<S> {
    /// Note that `label` is taken (by a key not yet committed), so that
    /// [`Vault::next_label`] offers the ones after it.
    pub(crate) fn label_taken(&self, label: &KeyLabel) {
        let Ok(ns) = self.naming() else { return };
        let Ok(p) = ns.parse(label.as_str()) else { return };
        let mut known = self.labels.lock().unwrap_or_else(|e| e.into_inner());
        let seen = known.entry((ns.template().to_string(), p.app, p.purpose)).or_insert(0);
        *seen = (*seen).max(p.seq);
    }

    /// Forget the labels noted taken: keys that were not committed leave
    /// their labels free again.
    pub(crate) fn forget_labels(&self) {
        self.labels.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.memo.lock().unwrap_or_else(|e| e.into_inner()).trusted.clear();
    }

    /// Whether a batch running now found this label sequence free already.
    fn label_trusted(&self, at: &(String, String, Purpose)) -> bool {
        let m = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        m.batches > 0 && m.trusted.contains(at)
    }

    /// Note, while a batch runs, that this label sequence was found free.
    fn trust_label(&self, at: (String, String, Purpose)) {
        let mut m = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        if m.batches > 0 {
            m.trusted.insert(at);
        }
    }
}

impl Vault<Open> {
    /// Generate a key in the HSM and record it, wrapped, in the keystore.
    pub fn create_key(&self, k: &NewKey) -> Result<KeyRecord> {
        self.create_key_with(k, &KeyAttributes::default())
    }

    /// [`Vault::create_key`] with attributes a key-management client gave
    /// (KMIP Create). A name another key has already is refused.
    pub fn create_key_with(&self, k: &NewKey, attributes: &KeyAttributes) -> Result<KeyRecord> {
        self.create_from(k, attributes, None)
    }

    /// Record a key a client brings (KMIP Register): its material, of
    /// `attributes.bits` bits (256 when unset), fills the key slot's
    /// leading bytes, and fresh random bytes the rest; the HSM wraps it.
    pub fn import_key(&self, k: &NewKey, attributes: &KeyAttributes, material: &[u8]) -> Result<KeyRecord> {
        let n = usize::from(attributes.length_bits() / 8);
        if material.len() != n {
            return Err(Error::Invalid {
                what: "key material",
                why: format!("{} bytes given for a key of {} bits: give {n} bytes", material.len(), n * 8),
            });
        }
        let mut slot = zeroize::Zeroizing::new(
            custos_crypto::random_array::<{ custos_crypto::KEY_LEN }>()
                .map_err(|e| Error::Invalid { what: "key material", why: e.to_string() })?,
        );
        slot[..n].copy_from_slice(material);
        let key = custos_crypto::DataKey::from_bytes(*slot);
        self.create_from(k, attributes, Some(&key))
    }

    fn create_from(
        &self,
        k: &NewKey,
        attributes: &KeyAttributes,
        given: Option<&custos_crypto::DataKey>,
    ) -> Result<KeyRecord> {
        self.check_attributes(None, attributes)?;
        // A label taken from the application's sequence may be taken by a
        // concurrent command before this one stores it: take the next one.
        // A label the caller named is its own to clash.
        for _ in 0..64 {
            let (ns, kbk) = (self.naming()?, self.current_kbk()?);
            let made = self.build_key_record(k, &ns, kbk.as_ref(), true, given).and_then(|mut rec| {
                rec.attributes = attributes.clone();
                Ok(self.repo.insert_key(&rec).map(|_| rec)?)
            });
            match made {
                Err(Error::Repo(custos_repo::RepoError::Exists { kind: "key", .. })) if k.label.is_none() => continue,
                made => return made,
            }
        }
        Err(Error::Invalid {
            what: "key",
            why: "every label tried in the application's sequence was taken by concurrent commands; run it again"
                .into(),
        })
    }

    /// Create `count` keys for an application in one transaction: all or
    /// none. Labels continue the application's sequence.
    pub fn create_keys(&self, template: &NewKey, count: u32) -> Result<Vec<KeyRecord>> {
        if !(1..=MAX_BULK_KEYS).contains(&count) {
            return Err(Error::Invalid {
                what: "bulk key creation",
                why: format!("--count {count}: give 1 to {MAX_BULK_KEYS} (run it again for more)"),
            });
        }
        let app = template.app.clone().ok_or_else(|| Error::Invalid {
            what: "bulk key creation",
            why: "give --app; labels are taken from the naming standard".into(),
        })?;
        let ns = self.naming()?;
        let first = self.next_label(&app, template.purpose)?;
        let start = ns.parse(first.as_str())?.seq;
        // Read once, not per key (a catalog on PostgreSQL pays a round trip
        // for each read); a label taken meanwhile fails the one insert, all
        // or none.
        let kbk = self.current_kbk()?;
        let mut recs = Vec::with_capacity(count as usize);
        for i in 0..count {
            let label = KeyLabel::new(ns.label(template.purpose, &app, start + i))?;
            let k = NewKey { label: Some(label), app: Some(app.clone()), ..template.clone() };
            recs.push(self.build_key_record(&k, &ns, kbk.as_ref(), false, None)?);
        }
        self.repo.insert_keys(&recs)?;
        Ok(recs)
    }

    /// Build (but do not store) a new key record: the HSM generates and
    /// wraps the material.
    pub(crate) fn new_key_record(&self, k: &NewKey) -> Result<KeyRecord> {
        let (ns, kbk) = (self.naming()?, self.current_kbk()?);
        self.build_key_record(k, &ns, kbk.as_ref(), true, None)
    }

    /// [`Vault::new_key_record`] with the naming standard and the current
    /// key-backup key given; `check` says whether to refuse a label taken
    /// already (a bulk insert is refused whole instead).
    fn build_key_record(
        &self,
        k: &NewKey,
        ns: &custos_model::NamingStandard,
        kbk: Option<&custos_model::KbkRecord>,
        check: bool,
        given: Option<&custos_crypto::DataKey>,
    ) -> Result<KeyRecord> {
        let (label, app) = match (&k.label, &k.app) {
            (Some(label), app) => {
                let parts = ns.parse(label.as_str())?;
                if parts.purpose != k.purpose {
                    return Err(Error::Invalid {
                        what: "key label",
                        why: format!("{label} names purpose {} but {} was asked for", parts.purpose, k.purpose),
                    });
                }
                if let Some(a) = app.as_ref().filter(|a| **a != parts.app) {
                    return Err(Error::Invalid {
                        what: "key label",
                        why: format!("{label} names application {} but --app says {a}", parts.app),
                    });
                }
                (label.clone(), parts.app)
            }
            (None, Some(app)) => (self.next_label(app, k.purpose)?, app.clone()),
            (None, None) => {
                return Err(Error::Invalid {
                    what: "key",
                    why: "give a label or --app to name the key by the naming standard".into(),
                })
            }
        };
        // A label from `next_label` was just looked up and found free; one
        // given is looked up here, except in a batch, which takes its labels
        // in sequence (the insert refuses a taken one anyway, and the batch
        // then commits each dataset on its own, relabelled).
        let in_batch = self.memo.lock().unwrap_or_else(|e| e.into_inner()).batches > 0;
        if check && k.label.is_some() && !in_batch && self.repo.key(&label)?.is_some() {
            return Err(custos_repo::RepoError::Exists { kind: "key", name: label.to_string() }.into());
        }
        let now = Timestamp::now();
        if let Some(exp) = k.expires_at.filter(|e| *e <= now) {
            return Err(Error::Invalid { what: "expiry", why: format!("{exp} is in the past") });
        }
        let wrapped = match given {
            Some(key) => self.state.hsm.wrap_key(key)?,
            None => self.state.hsm.generate_key()?,
        };
        let mut rec = KeyRecord {
            label,
            state: if k.activate { KeyState::Active } else { KeyState::PreActive },
            purpose: k.purpose,
            app,
            wrapped: Some(WrappedMaterial(wrapped.bytes)),
            mkvp: wrapped.mkvp,
            kcv: wrapped.kcv,
            created_at: now,
            activated_at: k.activate.then_some(now),
            deactivated_at: None,
            destroyed_at: None,
            expires_at: k.expires_at,
            last_used_at: None,
            use_count: 0,
            escrow: None,
            attributes: KeyAttributes::default(),
        };
        if let Some(kbk) = kbk {
            rec.escrow = Some(self.escrow_copy(kbk, &rec)?);
        }
        Ok(rec)
    }

    /// Give a new key record, not stored yet, the next free label of its
    /// application (another command took the one it had) and escrow it
    /// again under that label.
    pub(crate) fn relabel_new_key(&self, rec: &mut KeyRecord) -> Result<()> {
        rec.label = self.next_label(&rec.app, rec.purpose)?;
        self.label_taken(&rec.label);
        if let Some(kbk) = self.current_kbk()? {
            rec.escrow = Some(self.escrow_copy(&kbk, rec)?);
        }
        Ok(())
    }

    /// Check that a key may be used as asked, and unwrap it in the HSM.
    pub(crate) fn unwrap_for(&self, rec: &KeyRecord, usage: KeyUse, dataset: &DatasetName) -> Result<DataKey> {
        self.check_use(rec, usage, Some(dataset))?;
        self.unwrap_checked(rec)
    }

    /// Unwrap a key record's material in the HSM and check it against the
    /// recorded check value.
    pub(crate) fn unwrap_checked(&self, rec: &KeyRecord) -> Result<DataKey> {
        let wrapped = rec.wrapped.as_ref().ok_or_else(|| Error::KeyNoMaterial { label: rec.label.clone() })?;
        let key = self.state.hsm.unwrap_key(&rec.mkvp, &wrapped.0)?;
        let got = Kcv::of(&key);
        if got != rec.kcv {
            return Err(Error::KeyMismatch { label: rec.label.clone(), got: got.to_hex(), want: rec.kcv.to_hex() });
        }
        Ok(key)
    }
}

impl<S: VaultState> Vault<S> {
    /// Whether a key may be used as asked now: not pending destruction nor
    /// destroyed, its state allows the use, and it has not expired for new
    /// encryption. `dataset` names what it was needed for, when anything.
    pub(crate) fn check_use(&self, rec: &KeyRecord, usage: KeyUse, dataset: Option<&DatasetName>) -> Result<()> {
        if let Some(at) = self.destroy_scheduled_at(&rec.label)? {
            return Err(Error::KeyPendingDestruction { label: rec.label.clone(), at });
        }
        if rec.state == KeyState::Destroyed {
            return Err(match dataset {
                Some(d) => Error::KeyDestroyed {
                    dataset: d.clone(),
                    label: rec.label.clone(),
                    at: rec.destroyed_at,
                    escrow: match &rec.escrow {
                        None => None,
                        Some(copy) => Some(match self.repo.kbks()?.into_iter().find(|k| k.id == copy.kbk) {
                            Some(k) => format!(
                                "{} of its {} custodians ({}) together",
                                k.threshold,
                                k.custodians.len(),
                                k.custodians.join(", ")
                            ),
                            None => format!("the custodians of key-backup key {}", copy.kbk),
                        }),
                    },
                },
                None => Error::KeyNoMaterial { label: rec.label.clone() },
            });
        }
        rec.state.permits(usage).map_err(|source| Error::KeyUnusable {
            label: rec.label.clone(),
            dataset: dataset.cloned(),
            source,
        })?;
        if usage == KeyUse::Encrypt {
            if let Some(at) = rec.expires_at.filter(|e| *e <= Timestamp::now()) {
                return Err(Error::KeyExpired { label: rec.label.clone(), at });
            }
        }
        Ok(())
    }

    /// Whether `name`'s current generation can be read now: its key may be
    /// used to decrypt. Checked from the catalog alone (nothing is
    /// unwrapped), so that a server can refuse a read with the right error
    /// before it commits to streaming an answer.
    pub fn check_readable(&self, name: &DatasetName) -> Result<()> {
        let d = self.dataset(name)?;
        let rec = self.key_record(&d.current.key_label)?;
        self.check_use(&rec, KeyUse::Decrypt, Some(name))
    }
}

/// The most keys one bulk creation makes.
pub const MAX_BULK_KEYS: u32 = 100_000;

const SETTING_DESTROY_MIN_WAIT: &str = "key.destroy.min-wait";
const SETTING_DESTROY_WAIT: &str = "key.destroy.wait";

/// The longest duration a setting or option takes: 100 years.
const MAX_DURATION_SECS: i64 = 100 * 366 * 86_400;

/// "7d", "12h", "30m", "45s", or "0s"; at most 100 years, so that a time
/// this far from now is always one the time library can hold.
pub fn parse_duration(s: &str) -> std::result::Result<jiff::SignedDuration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 7d, 12h, 30m or 45s"))?;
    let secs = match unit {
        "d" => n.checked_mul(86_400),
        "h" => n.checked_mul(3_600),
        "m" => n.checked_mul(60),
        "s" => Some(n),
        _ => None,
    }
    .ok_or_else(|| format!("{s:?} is not a duration like 7d, 12h, 30m or 45s"))?;
    if secs > MAX_DURATION_SECS {
        return Err(format!("{s:?} is longer than 100 years (36600d); give a shorter duration"));
    }
    Ok(jiff::SignedDuration::from_secs(secs))
}

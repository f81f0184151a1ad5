//! Storage management (DFSMShsm): rules, and `hsm run`, which applies them.
//!
//! A run is idempotent and safe to start from cron. For each dataset, the
//! most specific matching rule says:
//! - back the dataset up to a volume, by a method, whenever its current
//!   generation has no such copy yet, then prune that series by the rule's
//!   retention;
//! - migrate it to a tape volume when it has not been read or written for N
//!   days. Migration moves the sealed objects byte for byte and uses no key;
//!   the next read recalls the dataset to the volume it came from.

use jiff::{Timestamp, ToSpan};
use serde::Serialize;

use custos_model::{CopyMethod, DatasetName, DatasetRecord, HsmRule, Medium, Pattern, VolumeName};

use crate::vault::{Open, Sealed, Vault, VaultState};
use crate::{Error, Result, Retention};

/// Makes one logical copy (dataset, target volume); only an open vault has one.
type LogicalCopier<'a> = dyn Fn(&DatasetName, &VolumeName) -> Result<Option<custos_model::BackupRecord>> + 'a;

/// A rule to add.
#[derive(Debug, Clone)]
pub struct NewHsmRule {
    pub name: String,
    pub pattern: Pattern,
    pub method: CopyMethod,
    pub backup_to: Option<VolumeName>,
    pub retention: Retention,
    pub migrate_after_days: Option<u32>,
    pub migrate_to: Option<VolumeName>,
}

/// What a run did (or, dry, would do) to one dataset.
#[derive(Debug, Clone, Serialize)]
pub struct HsmAction {
    pub dataset: DatasetName,
    pub rule: String,
    /// "backup", "prune", "migrate", "skip" or "failed".
    pub action: &'static str,
    pub detail: String,
}

/// A dataset moved between volumes by migration or recall.
#[derive(Debug, Clone, Serialize)]
pub struct MoveReport {
    pub dataset: DatasetName,
    pub generation: u64,
    pub from: VolumeName,
    pub to: VolumeName,
    #[serde(rename = "chunk_count")]
    pub chunks: u64,
}

impl<S: VaultState> Vault<S> {
    pub fn hsm_rule_add(&self, r: &NewHsmRule) -> Result<HsmRule> {
        if r.migrate_after_days.is_some_and(|d| d > 36_600) {
            return Err(Error::Invalid {
                what: "hsm rule",
                why: "--migrate-after-days is at most 36600 (100 years)".into(),
            });
        }
        if r.name.is_empty() || !r.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(Error::Invalid {
                what: "rule name",
                why: format!("{:?}: use letters, digits and - _ .", r.name),
            });
        }
        if r.method == CopyMethod::Plaintext {
            return Err(Error::Invalid {
                what: "hsm rule",
                why: "a plaintext copy is never made by a rule: make one by hand with `custos backup run --plaintext`, so each exposure is a decision someone took".into(),
            });
        }
        if r.backup_to.is_none() && r.migrate_to.is_none() {
            return Err(Error::Invalid {
                what: "hsm rule",
                why: "it does nothing: give --backup-to VOLUME, or --migrate-to VOLUME with --migrate-after-days N"
                    .into(),
            });
        }
        if let Some(v) = &r.backup_to {
            self.volume_record(v)?;
        }
        if r.backup_to.is_none() && !r.retention.is_empty() {
            return Err(Error::Invalid { what: "hsm rule", why: "retention needs --backup-to".into() });
        }
        match (&r.migrate_to, r.migrate_after_days) {
            (Some(v), Some(_)) => {
                if self.volume_record(v)?.medium != Medium::Tape {
                    return Err(Error::Invalid {
                        what: "hsm rule",
                        why: format!("{v} is a disk volume: datasets migrate to tape volumes"),
                    });
                }
            }
            (None, None) => {}
            _ => {
                return Err(Error::Invalid {
                    what: "hsm rule",
                    why: "--migrate-to and --migrate-after-days go together".into(),
                })
            }
        }
        let rule = HsmRule {
            name: r.name.clone(),
            pattern: r.pattern.clone(),
            method: r.method,
            backup_to: r.backup_to.clone(),
            keep_last: r.retention.last,
            keep_daily: r.retention.daily,
            keep_monthly: r.retention.monthly,
            keep_yearly: r.retention.yearly,
            migrate_after_days: r.migrate_after_days,
            migrate_to: r.migrate_to.clone(),
            created_at: Timestamp::now(),
        };
        self.repo.insert_hsm_rule(&rule)?;
        Ok(rule)
    }

    pub fn hsm_rules(&self) -> Result<Vec<HsmRule>> {
        Ok(self.repo.hsm_rules()?)
    }

    pub fn hsm_rule_rm(&self, name: &str) -> Result<()> {
        if !self.repo.remove_hsm_rule(name)? {
            return Err(Error::NotFound { what: "hsm rule", name: format!("{name:?}"), see: "custos hsm rule ls" });
        }
        Ok(())
    }

    /// Move a dataset's current generation to the tape volume `to`, byte
    /// for byte, and mark it migrated. Uses no key.
    pub fn migrate(&self, name: &DatasetName, to: &VolumeName) -> Result<MoveReport> {
        let d = self.dataset(name)?;
        if self.volume_record(to)?.medium != Medium::Tape {
            return Err(Error::Invalid { what: "migration", why: format!("{to} is not a tape volume") });
        }
        if d.current.volume == *to {
            // Done already (an earlier run may have been interrupted after
            // its commit): nothing moves, and that is success.
            return Ok(MoveReport {
                dataset: d.name.clone(),
                generation: d.current.generation,
                from: to.clone(),
                to: to.clone(),
                chunks: 0,
            });
        }
        // Recalled to where it was; a second migration keeps the first home.
        let home = d.migrated_from.clone().unwrap_or_else(|| d.current.volume.clone());
        self.move_current(&d, to, Some(&home))
    }

    /// Bring a migrated dataset back to the volume it came from.
    pub fn recall(&self, name: &DatasetName) -> Result<Option<MoveReport>> {
        let d = self.dataset(name)?;
        match d.migrated_from.clone() {
            None => Ok(None),
            Some(home) => self.move_current(&d, &home, None).map(Some),
        }
    }

    fn move_current(&self, d: &DatasetRecord, to: &VolumeName, mark: Option<&VolumeName>) -> Result<MoveReport> {
        let from = d.current.volume.clone();
        let (src, dst) = (self.open_volume(&from)?, self.open_volume(to)?);
        let since = self.repo.deletion_seq()?;
        // The source goes only after every object read back from the target.
        let garbage = self.copy_generation_raw(d, src.as_ref(), dst.as_ref(), to, true, |_, reused| {
            Ok(self.repo.move_generation(&d.id, d.current.generation, &from, to, mark, reused, since)?)
        })?;
        // The source's objects go at once: moving them is the point.
        let (_, _, failed) = self.delete_claimed(&garbage);
        if let Some(first) = failed.first() {
            return Err(Error::LeftInTrash {
                what: format!("{} was moved to {to}", d.name),
                count: failed.len() as u64,
                first: first.clone(),
            });
        }
        Ok(MoveReport {
            dataset: d.name.clone(),
            generation: d.current.generation,
            from,
            to: to.clone(),
            chunks: d.current.chunk_count,
        })
    }

    /// The rule that governs a dataset: the most specific matching pattern;
    /// among equals, the first by name.
    pub fn hsm_rule_for(&self, rules: &[HsmRule], dataset: &DatasetName) -> Option<HsmRule> {
        let mut best: Option<&HsmRule> = None;
        for r in rules {
            if r.pattern.matches(dataset.as_str())
                && best.is_none_or(|b| r.pattern.specificity() > b.pattern.specificity())
            {
                best = Some(r);
            }
        }
        best.cloned()
    }

    /// One pass over every dataset. `logical` makes a logical copy (only an
    /// open vault can); without it, logical rules are reported as skipped.
    fn hsm_pass(&self, now: Timestamp, dry_run: bool, logical: Option<&LogicalCopier<'_>>) -> Result<Vec<HsmAction>> {
        let rules = self.hsm_rules()?;
        let mut out = Vec::new();
        // The catalog's backups, read once: a pass touches every dataset.
        let mut by_dataset: std::collections::HashMap<[u8; 16], Vec<custos_model::BackupRecord>> = Default::default();
        for b in self.repo.backups()? {
            by_dataset.entry(b.dataset_id.0).or_default().push(b);
        }
        for d in self.datasets()? {
            let Some(rule) = self.hsm_rule_for(&rules, &d.name) else { continue };
            let act =
                |action, detail: String| HsmAction { dataset: d.name.clone(), rule: rule.name.clone(), action, detail };
            // One dataset's failure is reported and the pass goes on with the others.
            let mut done = Vec::new();
            let r = (|| -> Result<()> {
                if let Some(to) = &rule.backup_to {
                    let mine = by_dataset.entry(d.id.0).or_default();
                    let has = mine.iter().any(|b| {
                        b.source_generation == d.current.generation && b.method == rule.method && b.volume == *to
                    });
                    if !has {
                        let what =
                            format!("{} copy of generation {} to {to}", rule.method.as_str(), d.current.generation);
                        match (rule.method, dry_run) {
                            (_, true) => done.push(act("backup", format!("would make a {what}"))),
                            (CopyMethod::Raw, false) => {
                                mine.extend(self.backup_raw(&d.name, to)?);
                                done.push(act("backup", format!("made a {what}")));
                            }
                            (CopyMethod::Logical, false) => match logical {
                                Some(f) => {
                                    mine.extend(f(&d.name, to)?);
                                    done.push(act("backup", format!("made a {what}")));
                                }
                                None => done.push(act(
                                    "skip",
                                    format!("a {what} needs the passphrase (CUSTOS_PASSPHRASE or --passphrase-file)"),
                                )),
                            },
                            // Refused when the rule was added.
                            (CopyMethod::Plaintext, false) => done
                                .push(act("skip", format!("a {what} is made by hand only (backup run --plaintext)"))),
                        }
                    }
                    let retention = Retention {
                        last: rule.keep_last,
                        daily: rule.keep_daily,
                        monthly: rule.keep_monthly,
                        yearly: rule.keep_yearly,
                    };
                    if !retention.is_empty() {
                        let series: Vec<_> = by_dataset
                            .get(&d.id.0)
                            .into_iter()
                            .flatten()
                            .filter(|b| b.method == rule.method && b.volume == *to)
                            .cloned()
                            .collect();
                        let dropped = self.prune_series(series, &retention, dry_run)?;
                        if dropped > 0 {
                            let verb = if dry_run { "would delete" } else { "deleted" };
                            done.push(act(
                                "prune",
                                format!("{verb} {dropped} backup(s) on {to} that the retention does not keep"),
                            ));
                        }
                    }
                }
                if let (Some(tape), Some(days)) = (&rule.migrate_to, rule.migrate_after_days) {
                    let idle_since = now - (days as i64).hours() * 24;
                    if d.current.volume != *tape && d.last_access <= idle_since {
                        let detail = format!(
                            "unused since {} ({} days or more): generation {} from {} to {tape}",
                            d.last_access.strftime("%Y-%m-%d"),
                            days,
                            d.current.generation,
                            d.current.volume
                        );
                        if !dry_run {
                            self.migrate(&d.name, tape)?;
                        }
                        done.push(act("migrate", if dry_run { format!("would migrate: {detail}") } else { detail }));
                    }
                }

                Ok(())
            })();
            out.extend(done);
            if let Err(e) = r {
                out.push(act("failed", e.to_string()));
            }
        }
        Ok(out)
    }
}

impl Vault<Open> {
    /// Apply every rule once (see the module docs).
    pub fn hsm_run(&self, now: Timestamp, dry_run: bool) -> Result<Vec<HsmAction>> {
        let logical = |name: &DatasetName, to: &VolumeName| self.backup_logical(name, to, None);
        self.hsm_pass(now, dry_run, Some(&logical))
    }
}

impl Vault<Sealed> {
    /// Apply every rule that needs no key: raw copies, pruning, migration.
    /// Logical copies are reported as skipped.
    pub fn hsm_run(&self, now: Timestamp, dry_run: bool) -> Result<Vec<HsmAction>> {
        self.hsm_pass(now, dry_run, None)
    }
}

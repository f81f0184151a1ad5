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

/// Makes logical copies (datasets, target volume), an outcome per dataset;
/// only an open vault has one.
#[allow(clippy::type_complexity)]
type LogicalCopier<'a> =
    dyn Fn(&[DatasetName], &VolumeName) -> Result<Vec<(DatasetName, Result<Option<custos_model::BackupRecord>>)>> + 'a;

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

    /// The datasets whose logical copies a run would make now: what its
    /// caller must be allowed to read.
    pub fn hsm_logical_todo(&self) -> Result<Vec<DatasetRecord>> {
        let rules = self.hsm_rules()?;
        let mut out = Vec::new();
        for rule in rules.iter().filter(|r| r.method == CopyMethod::Logical) {
            let Some(to) = &rule.backup_to else { continue };
            out.extend(self.rule_todo(&rules, rule, to)?);
        }
        Ok(out)
    }

    /// The datasets `rule` governs whose current generation lacks its copy on `to`.
    fn rule_todo(&self, rules: &[HsmRule], rule: &HsmRule, to: &VolumeName) -> Result<Vec<DatasetRecord>> {
        Ok(self
            .repo
            .datasets_without_copy(rule.pattern.literal_prefix(), rule.method, to)?
            .into_iter()
            .filter(|d| self.hsm_rule_for(rules, &d.name).is_some_and(|r| r.name == rule.name))
            .collect())
    }

    /// One pass of every rule. `logical` makes logical copies (only an
    /// open vault can); without it, logical rules are reported as skipped.
    ///
    /// The work follows what changed, not the size of the vault: the
    /// catalog names the datasets whose current generation lacks a rule's
    /// copy and those idle past a rule's days; retention looks only at the
    /// series that gained a copy since the last pass that pruned them all
    /// (retention keeps by position in a series, not by the clock, so a
    /// series changes only when it gains a copy; one that loses a copy
    /// keeps what it kept). A change of the rules starts that over.
    fn hsm_pass(&self, now: Timestamp, dry_run: bool, logical: Option<&LogicalCopier<'_>>) -> Result<Vec<HsmAction>> {
        let rules = self.hsm_rules()?;
        let mut out = Vec::new();
        let governed = |name: &DatasetName| self.hsm_rule_for(&rules, name);
        let act = |d: &DatasetName, rule: &HsmRule, action, detail: String| HsmAction {
            dataset: d.clone(),
            rule: rule.name.clone(),
            action,
            detail,
        };

        // Copies the current generations lack.
        for rule in &rules {
            let Some(to) = &rule.backup_to else { continue };
            let todo = self.rule_todo(&rules, rule, to)?;
            let what = |d: &DatasetRecord| {
                format!("{} copy of generation {} to {to}", rule.method.as_str(), d.current.generation)
            };
            match (rule.method, dry_run, logical) {
                (_, true, _) => {
                    for d in &todo {
                        out.push(act(&d.name, rule, "backup", format!("would make a {}", what(d))));
                    }
                }
                (CopyMethod::Raw, false, _) => {
                    for d in todo {
                        let (name, detail) = (d.name.clone(), what(&d));
                        out.push(match self.backup_raw_of(d, to) {
                            Ok(_) => act(&name, rule, "backup", format!("made a {detail}")),
                            Err(e) => act(&name, rule, "failed", e.to_string()),
                        });
                    }
                }
                (CopyMethod::Logical, false, Some(copy)) => {
                    let names: Vec<DatasetName> = todo.iter().map(|d| d.name.clone()).collect();
                    match copy(&names, to) {
                        Ok(made) => {
                            for (d, (name, r)) in todo.iter().zip(made) {
                                out.push(match r {
                                    Ok(_) => act(&name, rule, "backup", format!("made a {}", what(d))),
                                    Err(e) => act(&name, rule, "failed", e.to_string()),
                                });
                            }
                        }
                        // The run could not start (its target, say): each of its datasets failed.
                        Err(e) => {
                            let why = e.to_string();
                            out.extend(todo.iter().map(|d| act(&d.name, rule, "failed", why.clone())));
                        }
                    }
                }
                (CopyMethod::Logical, false, None) => {
                    for d in &todo {
                        let why =
                            format!("a {} needs the passphrase (CUSTOS_PASSPHRASE or --passphrase-file)", what(d));
                        out.push(act(&d.name, rule, "skip", why));
                    }
                }
                // Refused when the rule was added.
                (CopyMethod::Plaintext, false, _) => {
                    for d in &todo {
                        let why = format!("a {} is made by hand only (backup run --plaintext)", what(d));
                        out.push(act(&d.name, rule, "skip", why));
                    }
                }
            }
        }

        // A dataset whose copy failed is not migrated in this pass (its
        // series is still pruned: retention always keeps the newest copy).
        let copy_failed: std::collections::HashSet<DatasetName> =
            out.iter().filter(|a| a.action == "failed").map(|a| a.dataset.clone()).collect();
        // Retention, for the series that gained a copy since the mark.
        if rules.iter().any(|r| r.backup_to.is_some() && !retention_of(r).is_empty()) {
            let fingerprint = rules_fingerprint(&rules);
            let mark = self.repo.setting(SETTING_PRUNED)?.and_then(|v| {
                let (fp, id) = v.split_once(' ')?;
                (fp == fingerprint).then(|| id.parse::<u64>().ok()).flatten()
            });
            let (newest, changed) = self.repo.backups_since(mark.unwrap_or(u64::MAX))?;
            // (name, its backups): every dataset's when the rules changed or
            // no pass has pruned yet; otherwise those that gained a copy.
            let mut series: Vec<(DatasetRecord, Vec<custos_model::BackupRecord>)> = Vec::new();
            if mark.is_some() {
                for name in changed {
                    if let Some(d) = self.repo.dataset(&name)? {
                        let mine = self.repo.dataset_backups(&name)?;
                        series.push((d, mine));
                    }
                }
            } else {
                let mut by_dataset: std::collections::HashMap<[u8; 16], Vec<custos_model::BackupRecord>> =
                    Default::default();
                for b in self.repo.backups()? {
                    by_dataset.entry(b.dataset_id.0).or_default().push(b);
                }
                for d in self.datasets()? {
                    if let Some(mine) = by_dataset.remove(&d.id.0) {
                        series.push((d, mine));
                    }
                }
            }
            let mut clean = true;
            for (d, mine) in series {
                let Some(rule) = governed(&d.name) else { continue };
                let (Some(to), retention) = (&rule.backup_to, retention_of(&rule)) else { continue };
                if retention.is_empty() {
                    continue;
                }
                let series: Vec<_> = mine
                    .into_iter()
                    .filter(|b| b.dataset_id == d.id && b.method == rule.method && b.volume == *to)
                    .collect();
                match self.prune_series(series, &retention, dry_run) {
                    Ok(0) => {}
                    Ok(dropped) => {
                        let verb = if dry_run { "would delete" } else { "deleted" };
                        let detail = format!("{verb} {dropped} backup(s) on {to} that the retention does not keep");
                        out.push(act(&d.name, &rule, "prune", detail));
                    }
                    Err(e) => {
                        clean = false;
                        out.push(act(&d.name, &rule, "failed", e.to_string()));
                    }
                }
            }
            // The next pass starts after what this one saw, unless a series
            // is left to do again. A run without the catalog key cannot
            // record the mark (settings are authenticated rows): the next
            // pass then looks at every series again, which costs time only.
            if clean && !dry_run {
                let _ = self.repo.set_setting(SETTING_PRUNED, &format!("{fingerprint} {newest}"));
            }
        }

        // Migration of what has been idle past a rule's days.
        for rule in &rules {
            let (Some(tape), Some(days)) = (&rule.migrate_to, rule.migrate_after_days) else { continue };
            let idle_since = now - (days as i64).hours() * 24;
            let idle = self.repo.datasets_idle(rule.pattern.literal_prefix(), idle_since, tape)?;
            let mine = |d: &DatasetRecord| governed(&d.name).is_some_and(|r| r.name == rule.name);
            for d in idle.into_iter().filter(|d| mine(d) && !copy_failed.contains(&d.name)) {
                let detail = format!(
                    "unused since {} ({} days or more): generation {} from {} to {tape}",
                    d.last_access.strftime("%Y-%m-%d"),
                    days,
                    d.current.generation,
                    d.current.volume
                );
                out.push(if dry_run {
                    act(&d.name, rule, "migrate", format!("would migrate: {detail}"))
                } else {
                    match self.migrate(&d.name, tape) {
                        Ok(_) => act(&d.name, rule, "migrate", detail),
                        Err(e) => act(&d.name, rule, "failed", e.to_string()),
                    }
                });
            }
        }
        // Dataset by dataset, each one's actions in the order they ran.
        out.sort_by(|a, b| a.dataset.cmp(&b.dataset));
        Ok(out)
    }
}

/// Where `hsm run` keeps its retention mark: the rules' fingerprint and the
/// newest backup id the last clean pass saw.
const SETTING_PRUNED: &str = "hsm.pruned";

fn retention_of(r: &HsmRule) -> Retention {
    Retention { last: r.keep_last, daily: r.keep_daily, monthly: r.keep_monthly, yearly: r.keep_yearly }
}

/// What the rules are, as a short hash: a pass under other rules than the
/// mark's looks at every series again.
fn rules_fingerprint(rules: &[HsmRule]) -> String {
    let text = serde_json::to_vec(rules).unwrap_or_default();
    hex::encode(&aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &text).as_ref()[..16])
}

impl Vault<Open> {
    /// Apply every rule once (see the module docs).
    pub fn hsm_run(&self, now: Timestamp, dry_run: bool) -> Result<Vec<HsmAction>> {
        let logical = |names: &[DatasetName], to: &VolumeName| self.backup_logical_each(names, to, None);
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

//! The risk report: the threat × verdict matrix per dataset and rolled up per
//! application (the paper's Table 2 for this vault), every pair of threats
//! with `dual`, and the recoverability audit.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use jiff::Timestamp;
use serde::Serialize;

use crate::model::{evaluate, CopyKind, Graph, KeyPath, Threat, Verdict};

/// A verdict as one JSON object with what it is about in front:
/// `{"threat": …, "verdict": …, …}` (or `"threats": [a, b]`, and an
/// application's `surviving_count`), written without an intermediate tree.
#[derive(Serialize)]
struct Cell<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    threat: Option<Threat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    threats: Option<[Threat; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    surviving_count: Option<usize>,
    #[serde(flatten)]
    verdict: &'a Verdict,
}

fn ser_single<S: serde::Serializer>(v: &[(Threat, Verdict)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|(t, v)| Cell { threat: Some(*t), threats: None, surviving_count: None, verdict: v }))
}

fn ser_dual<S: serde::Serializer>(v: &[((Threat, Threat), Verdict)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|((a, b), v)| Cell {
        threat: None,
        threats: Some([*a, *b]),
        surviving_count: None,
        verdict: v,
    }))
}

fn ser_app_single<S: serde::Serializer>(v: &[(Threat, usize, Verdict)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|(t, n, v)| Cell {
        threat: Some(*t),
        threats: None,
        surviving_count: Some(*n),
        verdict: v,
    }))
}

fn ser_app_dual<S: serde::Serializer>(v: &[((Threat, Threat), usize, Verdict)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|((a, b), n, v)| Cell {
        threat: None,
        threats: Some([*a, *b]),
        surviving_count: Some(*n),
        verdict: v,
    }))
}

/// One dataset's row.
#[derive(Clone, Debug, Serialize)]
pub struct DatasetRisk {
    pub dataset: String,
    pub app: String,
    /// One verdict per threat, in [`Threat::ALL`] order. In JSON, one
    /// object per threat: `threat` and the verdict's fields.
    #[serde(serialize_with = "ser_single")]
    pub single: Vec<(Threat, Verdict)>,
    /// With `dual`: one verdict per pair of threats (`threats`, a pair).
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "ser_dual")]
    pub dual: Vec<((Threat, Threat), Verdict)>,
}

/// An application's row: the worst verdict among its datasets, per threat.
#[derive(Clone, Debug, Serialize)]
pub struct AppRisk {
    pub app: String,
    #[serde(rename = "dataset_count")]
    pub datasets: usize,
    /// Per threat: how many datasets survive, and the verdict of the worst
    /// one (in JSON: `threat`, `surviving_count`, then the verdict's fields).
    #[serde(serialize_with = "ser_app_single")]
    pub single: Vec<(Threat, usize, Verdict)>,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "ser_app_dual")]
    pub dual: Vec<((Threat, Threat), usize, Verdict)>,
}

/// Something the paper warns about, found in this vault.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// A stable code: shared-key, retired-master-key, key-needs-recovery,
    /// same-site, same-volume, rarely-used, inactive-key-needed,
    /// undecryptable, no-copy, no-vault-backup, damaged-key,
    /// unusable-keystore-backup, retired-keystore-backups,
    /// keystore-backups-at-vault-site, backup-with-data, shared-back-key,
    /// escrow-custody, escrow-unconfirmed, escrow-below-threshold,
    /// home-volume-gone, damaged-copy, unverified-copies,
    /// one-person-destruction, plaintext-copy; with a horizon also
    /// retention-shorter-than-horizon, destruction-within-horizon,
    /// expiry-within-horizon.
    pub code: &'static str,
    pub subject: String,
    pub detail: String,
}

/// Whether a backup or snapshot can be decrypted today, and how.
#[derive(Clone, Debug, Serialize)]
pub struct CopyAudit {
    pub dataset: String,
    pub copy: String,
    pub kind: CopyKind,
    #[serde(rename = "key_label")]
    pub key: String,
    pub created_at: Timestamp,
    /// `None` when it cannot be decrypted.
    #[serde(rename = "key_path")]
    pub path: Option<KeyPath>,
    pub why: Option<String>,
    /// Its last check of its bytes, if any.
    #[serde(rename = "last_check", skip_serializing_if = "Option::is_none")]
    pub checked: Option<custos_core::model::CopyCheck>,
}

/// A copy not read back in full for this long is named in the
/// `unverified-copies` finding (as is one never read back, once it is older
/// than [`VERIFY_GRACE`]).
pub const VERIFY_EVERY: jiff::SignedDuration = jiff::SignedDuration::from_hours(90 * 24);
/// A copy younger than this that was never read back is not yet named.
pub const VERIFY_GRACE: jiff::SignedDuration = jiff::SignedDuration::from_hours(7 * 24);

/// The report. Its per-dataset rows are not held: they are judged from
/// the graph when they are read ([`Report::rows`]), so a vault of 100,000
/// datasets does not hold a million verdicts (ADR 0032). Writing the report
/// as JSON judges each dataset once, and sums up the applications (which
/// follow the rows) on the way; a renderer that shows the applications first
/// judges the datasets twice.
#[derive(Clone, Debug)]
pub struct Report {
    pub generated_at: Timestamp,
    pub threats: Vec<Threat>,
    rows: Rows,
    pub copies: Vec<CopyAudit>,
    pub findings: Vec<Finding>,
    /// Plaintext copies (`backup run --plaintext`, allowed by the
    /// `backup.plaintext` setting): they need no key, and expose the data.
    pub unencrypted_copies: usize,
    /// Judged as if nothing were encrypted (`--as-if-unencrypted`): the
    /// paper's Table 1, with only the threats to data.
    pub as_if_unencrypted: bool,
    /// The HSM checked every key the verdicts rely on (unwrap, check
    /// value). False for a report on a sealed vault, which trusts the key
    /// records (a damaged one counts as usable).
    pub keys_checked: bool,
    /// Why the HSM was not opened, when it was not.
    pub sealed_because: Option<String>,
    /// How far ahead the report looked (`--horizon`), in days.
    pub horizon_days: Option<i64>,
    /// The last drill of each dataset in the report under each threat or
    /// pair (`risk drill`), shown beside the model's verdicts.
    pub drills: Vec<custos_core::model::DrillRecord>,
}

impl Serialize for Report {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut o = s.serialize_struct("Report", 13)?;
        o.serialize_field("generated_at", &self.generated_at)?;
        o.serialize_field("threats", &self.threats)?;
        // The rows first: writing them sums up the applications.
        o.serialize_field("datasets", &self.rows)?;
        o.serialize_field("apps", self.apps())?;
        o.serialize_field("copies", &self.copies)?;
        o.serialize_field("findings", &self.findings)?;
        o.serialize_field("unencrypted_copy_count", &self.unencrypted_copies)?;
        if self.as_if_unencrypted {
            o.serialize_field("as_if_unencrypted", &true)?;
        }
        o.serialize_field("keys_checked", &self.keys_checked)?;
        if let Some(w) = &self.sealed_because {
            o.serialize_field("sealed_because", w)?;
        }
        if let Some(d) = &self.horizon_days {
            o.serialize_field("horizon_days", d)?;
        }
        if !self.drills.is_empty() {
            o.serialize_field("drills", &self.drills)?;
        }
        o.end()
    }
}

impl Report {
    /// Keep the drill results of the datasets this report covers.
    pub fn attach_drills(&mut self, all: Vec<custos_core::model::DrillRecord>) {
        let names: HashSet<&str> = self.rows.graph.datasets.iter().map(|d| d.name.as_str()).collect();
        self.drills = all.into_iter().filter(|d| names.contains(d.dataset.as_str())).collect();
    }

    /// Hand every row to `f` (judged on two threads), summing the
    /// applications up on the way unless that was done already.
    pub fn each_row(&self, f: &mut dyn FnMut(&DatasetRisk)) {
        self.rows
            .each_summing(&mut |d| {
                f(d);
                Ok::<(), std::convert::Infallible>(())
            })
            .unwrap_or_else(|never| match never {});
    }

    /// The per-dataset rows, judged as they are read.
    pub fn rows(&self) -> &Rows {
        &self.rows
    }

    /// One row per application: the worst of its datasets per threat
    /// (judged in one pass over the datasets, the first time it is asked
    /// for, unless writing the rows did it already).
    pub fn apps(&self) -> &[AppRisk] {
        if self.rows.apps.get().is_none() {
            self.each_row(&mut |_| {});
        }
        // Set by the pass above (or by a reader that raced it).
        self.rows.apps.get().map_or(&[], Vec::as_slice)
    }
}

/// The datasets' rows, judged from the graph when read. Cloning shares the
/// graph.
#[derive(Clone)]
pub struct Rows {
    graph: Arc<Graph>,
    threats: Vec<Threat>,
    pairs: Vec<(Threat, Threat)>,
    apps: Arc<OnceLock<Vec<AppRisk>>>,
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rows").field("datasets", &self.len()).field("pairs", &!self.pairs.is_empty()).finish()
    }
}

/// Datasets judged per piece on a worker thread ahead of the reader.
const ROWS_PER_PIECE: usize = 256;

impl Rows {
    pub fn len(&self) -> usize {
        self.graph.datasets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.datasets.is_empty()
    }

    /// The datasets' names, in the rows' order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.graph.datasets.iter().map(|d| d.name.as_str())
    }

    /// One dataset's row.
    fn judge(&self, d: &crate::model::DatasetNode) -> DatasetRisk {
        let g = &self.graph;
        DatasetRisk {
            dataset: d.name.clone(),
            app: d.app.clone(),
            single: self.threats.iter().map(|t| (*t, evaluate(g, d, &[*t]))).collect(),
            dual: self.pairs.iter().map(|(a, b)| ((*a, *b), evaluate(g, d, &[*a, *b]))).collect(),
        }
    }

    /// Every row, in order, one at a time (on this thread).
    pub fn iter(&self) -> impl Iterator<Item = DatasetRisk> + '_ {
        self.graph.datasets.iter().map(|d| self.judge(d))
    }

    /// Every row, judged on two threads.
    pub fn all(&self) -> Vec<DatasetRisk> {
        let mut out = Vec::with_capacity(self.len());
        self.each(&mut |d| {
            out.push(d);
            Ok::<(), std::convert::Infallible>(())
        })
        .unwrap_or_else(|never| match never {});
        out
    }

    /// The row of dataset `name`.
    pub fn find(&self, name: &str) -> Option<DatasetRisk> {
        self.graph.datasets.iter().find(|d| d.name == name).map(|d| self.judge(d))
    }

    /// Hand every row to `f`, in order, judged on two worker threads a
    /// piece ahead of it; stops at `f`'s first error. At most four pieces
    /// are held at once, whatever the number of datasets.
    pub fn each<E>(&self, f: &mut dyn FnMut(DatasetRisk) -> Result<(), E>) -> Result<(), E> {
        let ds = &self.graph.datasets;
        if ds.len() <= ROWS_PER_PIECE {
            return self.iter().try_for_each(f);
        }
        let pieces: Vec<&[crate::model::DatasetNode]> = ds.chunks(ROWS_PER_PIECE).collect();
        std::thread::scope(|s| {
            let workers: Vec<std::sync::mpsc::Receiver<Vec<DatasetRisk>>> = (0..2)
                .map(|w| {
                    let (tx, rx) = std::sync::mpsc::sync_channel(1);
                    let mine: Vec<&[crate::model::DatasetNode]> = pieces.iter().skip(w).step_by(2).copied().collect();
                    s.spawn(move || {
                        for piece in mine {
                            // The reader stopped: so do we.
                            if tx.send(piece.iter().map(|d| self.judge(d)).collect()).is_err() {
                                return;
                            }
                        }
                    });
                    rx
                })
                .collect();
            for i in 0..pieces.len() {
                // A worker that panicked closes its channel; the scope's join
                // then carries the panic on.
                let Ok(rows) = workers[i % 2].recv() else { break };
                for r in rows {
                    f(r)?;
                }
            }
            Ok(())
        })
    }
}

impl Rows {
    /// [`Rows::each`], summing the applications up on the way unless that
    /// was done already; a pass that ends early sums nothing.
    fn each_summing<E>(&self, f: &mut dyn FnMut(&DatasetRisk) -> Result<(), E>) -> Result<(), E> {
        let mut sum = self.apps.get().is_none().then(AppSum::default);
        self.each(&mut |d| {
            if let Some(sum) = sum.as_mut() {
                sum.add(&d);
            }
            f(&d)
        })?;
        if let Some(sum) = sum {
            let _ = self.apps.set(sum.finish(&self.threats, &self.pairs));
        }
        Ok(())
    }
}

/// Written as the JSON array of rows; the applications are summed up on
/// the way unless they were already.
impl Serialize for Rows {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.len()))?;
        self.each_summing(&mut |d| seq.serialize_element(d))?;
        seq.end()
    }
}

/// The applications' rows, summed up one dataset at a time: per threat,
/// how many survive and the first of the worst verdicts.
#[derive(Default)]
struct AppSum {
    /// Per application: its datasets, and per threat (then per pair) how
    /// many survive and the worst verdict.
    apps: BTreeMap<String, (usize, Tally, Tally)>,
}

type Tally = Vec<(usize, Verdict)>;

impl AppSum {
    fn add(&mut self, d: &DatasetRisk) {
        let fold = |acc: &mut Tally, verdicts: &mut dyn Iterator<Item = &Verdict>| {
            for (i, v) in verdicts.enumerate() {
                match acc.get_mut(i) {
                    None => acc.push((usize::from(v.survives()), v.clone())),
                    Some((ok, worst)) => {
                        *ok += usize::from(v.survives());
                        if rank(v) < rank(worst) {
                            *worst = v.clone();
                        }
                    }
                }
            }
        };
        let (n, single, dual) = match self.apps.get_mut(d.app.as_str()) {
            Some(a) => a,
            None => self.apps.entry(d.app.clone()).or_default(),
        };
        *n += 1;
        fold(single, &mut d.single.iter().map(|(_, v)| v));
        fold(dual, &mut d.dual.iter().map(|(_, v)| v));
    }

    fn finish(self, threats: &[Threat], pairs: &[(Threat, Threat)]) -> Vec<AppRisk> {
        self.apps
            .into_iter()
            .map(|(app, (datasets, single, dual))| AppRisk {
                app,
                datasets,
                single: threats.iter().zip(single).map(|(t, (ok, v))| (*t, ok, v)).collect(),
                dual: pairs.iter().zip(dual).map(|(p, (ok, v))| (*p, ok, v)).collect(),
            })
            .collect()
    }
}

fn rank(v: &Verdict) -> u8 {
    match v {
        Verdict::Lost { .. } => 0,
        Verdict::Stale { .. } => 1,
        Verdict::SurvivesIf { .. } => 2,
        Verdict::Survives { .. } => 3,
        Verdict::Unaffected => 4,
    }
}

/// Compute the report. `dual` adds every pair of threats.
pub fn report(g: impl Into<Arc<Graph>>, dual: bool, now: Timestamp) -> Report {
    report_ahead(g, dual, now, None)
}

/// The report, looking `horizon` ahead as well: retention rules whose
/// copies would not reach back that far when a bad write is noticed only
/// then, and keys due for destruction before then that something needs.
pub fn report_ahead(
    g: impl Into<Arc<Graph>>,
    dual: bool,
    now: Timestamp,
    horizon: Option<jiff::SignedDuration>,
) -> Report {
    let g = g.into();
    let mut r = report_now(g.clone(), dual, now);
    if let Some(h) = horizon {
        r.findings.extend(ahead(&g, now, h));
        r.horizon_days = Some((h.as_hours() + 23) / 24);
    }
    r
}

fn report_now(g: Arc<Graph>, dual: bool, now: Timestamp) -> Report {
    // Judged as if unencrypted (the paper's Table 1), only the threats to
    // data apply.
    let threats: Vec<Threat> = if g.as_if_unencrypted { Threat::UNENCRYPTED.to_vec() } else { Threat::ALL.to_vec() };
    let pairs = if dual { Threat::pairs_of(&threats) } else { Vec::new() };
    let (mut copies, mut findings) = audit(&g, now);
    let unencrypted_copies = copies.iter().filter(|c| c.kind == CopyKind::Plaintext).count();
    if g.as_if_unencrypted {
        // Whether copies decrypt, and what keys need, does not arise.
        copies.clear();
        findings.retain(|f| DATA_FINDINGS.contains(&f.code));
    }
    Report {
        generated_at: now,
        threats: threats.clone(),
        as_if_unencrypted: g.as_if_unencrypted,
        keys_checked: g.keys_checked,
        sealed_because: g.sealed_because.clone(),
        rows: Rows { graph: g, threats, pairs, apps: Arc::default() },
        copies,
        findings,
        unencrypted_copies,
        horizon_days: None,
        drills: Vec::new(),
    }
}

/// The findings about data and copies alone, kept when the vault is judged
/// as if unencrypted.
const DATA_FINDINGS: [&str; 9] = [
    "no-copy",
    "same-site",
    "same-volume",
    "damaged-copy",
    "unverified-copies",
    "home-volume-gone",
    "backup-with-data",
    "no-vault-backup",
    "plaintext-copy",
];

/// How far back, in days, the copies a rule keeps reach, assuming one `hsm
/// run` a day that finds a change each time (the worst case: a bad write
/// is a change, and every run after it copies it again).
pub fn retention_reach_days(r: &custos_core::model::HsmRule) -> i64 {
    [i64::from(r.keep_last), i64::from(r.keep_daily), i64::from(r.keep_monthly) * 30, i64::from(r.keep_yearly) * 365]
        .into_iter()
        .max()
        .unwrap_or(0)
}

/// The findings only a look ahead shows.
fn ahead(g: &Graph, now: Timestamp, horizon: jiff::SignedDuration) -> Vec<Finding> {
    let mut out = Vec::new();
    let days = (horizon.as_hours() + 23) / 24;
    // A rule whose retention does not reach past the horizon: a bad write
    // noticed only then finds every copy it kept made after it. Datasets
    // with a snapshot or a copy elsewhere do not rest on the rule alone.
    for r in g.hsm_rules.iter().filter(|r| r.backup_to.is_some()) {
        let reach = retention_reach_days(r);
        if reach >= days {
            continue;
        }
        let to = r.backup_to.as_ref().map(|v| v.as_str()).unwrap_or_default();
        let alone: Vec<&str> = g
            .datasets
            .iter()
            .filter(|d| r.pattern.matches(&d.name))
            .filter(|d| d.copies.iter().all(|c| c.kind != CopyKind::Snapshot && c.volume == to))
            .map(|d| d.name.as_str())
            .collect();
        if alone.is_empty() {
            continue;
        }
        let some: Vec<&str> = alone.iter().take(3).copied().collect();
        out.push(Finding {
            code: "retention-shorter-than-horizon",
            subject: format!("hsm rule {}", r.name),
            detail: format!(
                "it keeps copies reaching back about {reach} day{} (keep last {}, daily {}, monthly {}, yearly {}; one `hsm run` a day assumed), less than the {days}-day horizon: a bad write noticed only then finds every kept copy made after it, for {} dataset{} that rest on this rule alone ({}{}); keep dailies or monthlies that reach past it, or pin a good state with a snapshot",
                if reach == 1 { "" } else { "s" },
                r.keep_last,
                r.keep_daily,
                r.keep_monthly,
                r.keep_yearly,
                alone.len(),
                if alone.len() == 1 { "" } else { "s" },
                some.join(", "),
                if alone.len() > some.len() { ", …" } else { "" }
            ),
        });
    }
    // Keys falling due for destruction before the horizon that data or a
    // copy still needs.
    let end = now + horizon;
    let due_by = |label: &str| g.keys.get(label).and_then(|k| k.destroy_after).filter(|t| *t <= end);
    for (key, (n, first)) in key_users(g, |label| due_by(label).is_some()) {
        let at = due_by(key).unwrap_or(end);
        out.push(Finding {
            code: "destruction-within-horizon",
            subject: key.to_string(),
            detail: format!(
                "it is due for destruction on {}, within the {days}-day horizon, and {n} dataset{} or cop{} still need it (e.g. {first}): they are lost then unless `custos key cancel-destroy`",
                at.strftime("%Y-%m-%d %H:%M UTC"),
                if n == 1 { "" } else { "s" },
                if n == 1 { "y" } else { "ies" },
            ),
        });
    }
    // Primary keys that stop encrypting before the horizon: the datasets
    // sealed under them read as before, but refuse new writes from then.
    let expires_by = |label: &str| g.keys.get(label).and_then(|k| k.expires_at).filter(|t| *t <= end);
    let mut writers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for d in g.datasets.iter().filter(|d| expires_by(&d.key).is_some()) {
        writers.entry(d.key.as_str()).or_default().push(d.name.as_str());
    }
    for (key, ds) in writers {
        let at = expires_by(key).unwrap_or(end);
        out.push(Finding {
            code: "expiry-within-horizon",
            subject: key.to_string(),
            detail: format!(
                "it {} on {}, within the {days}-day horizon: the {} dataset{} sealed under it ({}{}) refuse new writes from then (reads and copies are not affected); write them under a new key before then (`custos ds put NAME --key NEW`)",
                if at <= now { "expired" } else { "expires" },
                at.strftime("%Y-%m-%d %H:%M UTC"),
                ds.len(),
                if ds.len() == 1 { "" } else { "s" },
                ds.iter().take(3).copied().collect::<Vec<_>>().join(", "),
                if ds.len() > 3 { ", …" } else { "" }
            ),
        });
    }
    out
}

/// The recoverability audit: every backup and snapshot, and the findings.
fn audit(g: &Graph, now: Timestamp) -> (Vec<CopyAudit>, Vec<Finding>) {
    let mut copies = Vec::new();
    let mut findings = Vec::new();
    let oldest_ksb = g.keystore_backups.iter().map(|b| b.created_at).min();
    // Copies whose bytes were not read back lately: how many, how many of
    // them never, and the first few.
    let (mut unverified, mut never) = (0usize, 0usize);
    let mut some_unverified: Vec<String> = Vec::new();
    // The catalog and the HSM file are at the vault's own site: without a
    // vault backup elsewhere, losing that site loses every key and record.
    let away = |vol: &String| g.volumes.get(vol).is_some_and(|v| !g.vault_sites.contains(&v.site));
    if !g.datasets.is_empty() && !g.vault_backups.iter().any(|b| away(&b.volume)) {
        findings.push(Finding {
            code: "no-vault-backup",
            subject: "vault".into(),
            detail: format!(
                "no vault backup at a site other than the vault's own ({}): losing that site loses the catalog and the HSM, and with them every key and every record of the copies; run `custos vault backup --to` a volume at another site",
                if g.vault_sites.is_empty() { "unknown".to_string() } else { g.vault_sites.join(", ") }
            ),
        });
    }
    // The key survives only in keystore backups under master keys the HSM
    // no longer holds (the paper's Example 1).
    let retired = |label: &str| -> bool {
        let Some(k) = g.keys.get(label) else { return false };
        // Per backup, the master keys the key depends on there: its own
        // wrapping when the object was read back, else every one it lists.
        let holding: Vec<Vec<&String>> = g
            .keystore_backups
            .iter()
            .filter(|b| b.unusable.is_none())
            .filter(|b| b.created_at >= k.created_at && k.destroyed_at.is_none_or(|t| t > b.created_at))
            .filter_map(|b| match &b.keys {
                Some(keys) => keys.get(label).map(|m| vec![m]),
                None => Some(b.mkvps.iter().collect()),
            })
            .collect();
        !holding.is_empty() && holding.iter().all(|ms| !ms.iter().all(|m| g.held_mkvps.contains(m)))
    };
    let mut damaged: Vec<(&String, &String)> =
        g.keys.iter().filter_map(|(l, k)| k.damaged.as_ref().map(|d| (l, d))).collect();
    damaged.sort();
    for (label, why) in damaged {
        findings.push(Finding {
            code: "damaged-key",
            subject: label.clone(),
            detail: format!(
                "its keystore record does not unwrap to its check value ({why}): `custos key recover {label} --from BACKUP` repairs it from a keystore backup"
            ),
        });
    }
    for b in &g.keystore_backups {
        if let Some(why) = &b.unusable {
            findings.push(Finding {
                code: "unusable-keystore-backup",
                subject: format!("keystore backup {}", b.id),
                detail: format!("it restores no key ({why}): take a new one with `custos keystore backup`"),
            });
        }
    }
    // Escrow holds only if a threshold of its custodians can still act.
    if let Some(e) = &g.escrow {
        let able = e.able();
        let detail = format!(
            "key-backup key {}: {} of {} custodians ({}) must act together; {} confirmed they can open their share{}",
            e.kbk,
            e.threshold,
            e.custodians.len(),
            e.custodians.join(", "),
            if e.confirmed.is_empty() { "none".to_string() } else { e.confirmed.join(", ") },
            if e.unavailable.is_empty() {
                String::new()
            } else {
                format!("; disabled or removed: {}", e.unavailable.join(", "))
            }
        );
        let code = if able < e.threshold as usize {
            "escrow-below-threshold"
        } else if e.confirmed.len() < e.threshold as usize {
            "escrow-unconfirmed"
        } else {
            "escrow-custody"
        };
        let detail = match code {
            "escrow-below-threshold" => format!("{detail}: fewer custodians can act than the threshold, so no escrowed key can be recovered; run `custos escrow init` again with custodians who can (it escrows every key anew)"),
            "escrow-unconfirmed" => format!("{detail}: until a threshold confirm (`custos escrow confirm`), escrow is unproven"),
            _ => detail,
        };
        findings.push(Finding { code, subject: "escrow".into(), detail });
    }
    // Keystore backups that cannot help when they are most needed.
    let usable: Vec<&crate::model::KeystoreBackupNode> =
        g.keystore_backups.iter().filter(|b| b.unusable.is_none()).collect();
    if !usable.is_empty() && usable.iter().all(|b| !b.mkvps.iter().any(|m| g.held_mkvps.contains(m))) {
        findings.push(Finding {
            code: "retired-keystore-backups",
            subject: "keystore".into(),
            detail: format!(
                "every keystore backup ({}) is wrapped under master keys the HSM no longer holds: none restores a key today (the paper's Example 1); take one now with `custos keystore backup`",
                usable.len()
            ),
        });
    }
    if !usable.is_empty() && !usable.iter().any(|b| away(&b.volume)) {
        findings.push(Finding {
            code: "keystore-backups-at-vault-site",
            subject: "keystore".into(),
            detail: format!(
                "every keystore backup is at the vault's own site ({}): a loss of that site takes them with the keystore; keep one at another site",
                g.vault_sites.join(", ")
            ),
        });
    }
    let data_volumes: HashSet<&str> = g.datasets.iter().map(|d| d.volume.as_str()).collect();
    let backups = usable
        .iter()
        .map(|b| ("keystore backup", &b.id, &b.volume, "whose keys it holds"))
        .chain(g.vault_backups.iter().map(|b| ("vault backup", &b.id, &b.volume, "it would help recover")));
    for (what, id, volume, why) in backups {
        if data_volumes.contains(volume.as_str()) {
            findings.push(Finding {
                code: "backup-with-data",
                subject: format!("{what} {id}"),
                detail: format!(
                    "it is on volume {volume}, with data {why}: losing or corrupting that volume takes both"
                ),
            });
        }
    }
    // One BACK key for the copies of many datasets: one damaged record loses
    // every one of those copies.
    let mut back: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for d in &g.datasets {
        for c in d.copies.iter().filter(|c| c.kind == CopyKind::Logical) {
            back.entry(c.key.as_str()).or_default().insert(d.name.as_str());
        }
    }
    let mut shared: Vec<_> = back.into_iter().filter(|(_, ds)| ds.len() > 1).collect();
    shared.sort();
    for (key, ds) in shared {
        findings.push(Finding {
            code: "shared-back-key",
            subject: key.to_string(),
            detail: format!(
                "it seals the logical copies of {} datasets ({}): losing or damaging it loses every one of those copies at once; keep it in keystore backups and escrow",
                ds.len(),
                ds.iter().take(5).copied().collect::<Vec<_>>().join(", ") + if ds.len() > 5 { ", …" } else { "" }
            ),
        });
    }
    // The datasets' own findings and copies, in halves on two threads for
    // a large vault, joined in order.
    let part = |ds: &[crate::model::DatasetNode]| audit_datasets(g, ds, now, oldest_ksb, &retired);
    let parts = if g.datasets.len() < 2048 {
        vec![part(&g.datasets)]
    } else {
        let (first, second) = g.datasets.split_at(g.datasets.len() / 2);
        std::thread::scope(|s| {
            let later = s.spawn(|| part(second));
            vec![part(first), later.join().unwrap_or_else(|p| std::panic::resume_unwind(p))]
        })
    };
    for p in parts {
        copies.extend(p.copies);
        findings.extend(p.findings);
        unverified += p.unverified;
        never += p.never;
        some_unverified.extend(p.some_unverified);
    }
    some_unverified.truncate(5);
    if unverified > 0 {
        findings.push(Finding {
            code: "unverified-copies",
            subject: "copies".into(),
            detail: format!(
                "{unverified} copies were not read back in full in the last {} days ({never} never): {}{}; a copy that rotted unseen saves nothing, so run `custos backup verify --read-data` and `custos snapshot verify` on a schedule (each records what it found)",
                VERIFY_EVERY.as_hours() / 24,
                some_unverified.join(", "),
                if unverified > some_unverified.len() { ", …" } else { "" }
            ),
        });
    }
    findings.extend(lone_destroyers(g));
    // Keys revoked as compromised (KMIP Revoke): whoever holds one reads
    // everything still sealed under it.
    let compromised = |label: &str| g.keys.get(label).is_some_and(|k| k.present && k.state == "compromised");
    let exposed = key_users(g, compromised);
    let mut revoked: Vec<&String> = g.keys.keys().filter(|l| compromised(l)).collect();
    revoked.sort();
    for label in revoked {
        findings.push(Finding {
            code: "compromised-key",
            subject: label.clone(),
            detail: match exposed.get(label.as_str()) {
                Some((count, first)) => format!(
                    "revoked as compromised, yet {count} (e.g. {first}) are still sealed under it: whoever holds the key reads them; write them again under a new key, then destroy it"
                ),
                None => "revoked as compromised; nothing Custos keeps is sealed under it: destroy it (`custos key destroy`)".into(),
            },
        });
    }
    // Keys that are not active but still needed by a retained copy.
    let inactive =
        |label: &str| g.keys.get(label).is_some_and(|k| k.present && k.state != "active" && k.state != "compromised");
    for (label, (count, first)) in key_users(g, inactive) {
        let state = g.keys.get(label).map_or("", |k| k.state.as_str());
        findings.push(Finding {
            code: "inactive-key-needed",
            subject: label.to_string(),
            detail: format!("key is {state} but still needed by {count} (e.g. {first}): destroying it would lose them"),
        });
    }
    (copies, findings)
}

/// What the audit finds about a run of datasets and their copies.
#[derive(Default)]
struct DatasetsAudit {
    copies: Vec<CopyAudit>,
    findings: Vec<Finding>,
    /// Copies not read back lately, how many of them never, the first few.
    unverified: usize,
    never: usize,
    some_unverified: Vec<String>,
}

fn audit_datasets(
    g: &Graph,
    datasets: &[crate::model::DatasetNode],
    now: Timestamp,
    oldest_ksb: Option<Timestamp>,
    retired: &(dyn Fn(&str) -> bool + Sync),
) -> DatasetsAudit {
    let none = crate::model::evaluate_key_today;
    let mut out = DatasetsAudit::default();
    for d in datasets {
        if let Some(home) = d.migrated_from.as_ref().filter(|h| g.volumes.get(*h).is_none_or(|v| v.missing)) {
            out.findings.push(Finding {
                code: "home-volume-gone",
                subject: d.name.clone(),
                detail: format!(
                    "it is migrated to {} and its home volume {home} is not there: a recall (or a read that recalls it) fails until the volume is back or re-added with `custos volume add`",
                    d.volume
                ),
            });
        }
        let own = none(g, &d.key);
        match &own {
            Ok(KeyPath::Live) => {}
            Ok(p) => out.findings.push(Finding {
                code: "key-needs-recovery",
                subject: d.name.clone(),
                detail: format!(
                    "its key {} is not usable in the keystore; it can be recovered only from {}",
                    d.key,
                    match p {
                        KeyPath::KeystoreBackup { id } => format!("keystore backup {id}"),
                        KeyPath::Archived => "the archive: it is archived; `custos key restore` brings it back".to_string(),
                        KeyPath::PendingDestruction { due } => format!(
                            "the destruction schedule: it is destroyed at {due} unless `custos key cancel-destroy` runs before"
                        ),
                        _ => "escrow (the custodians' shares)".to_string(),
                    }
                ),
            }),
            Err(w) => out.findings.push(Finding {
                code: "undecryptable",
                subject: d.name.clone(),
                detail: format!("the dataset itself cannot be decrypted today: {w}"),
            }),
        }
        if !matches!(own, Ok(KeyPath::Live) | Ok(KeyPath::KeystoreBackup { .. })) && retired(&d.key) {
            out.findings.push(Finding {
                code: "retired-master-key",
                subject: d.name.clone(),
                detail: format!(
                    "its key {} survives in keystore backups only under master keys the HSM no longer holds (the paper's Example 1)",
                    d.key
                ),
            });
        }
        for c in &d.copies {
            let (path, why) = if c.kind == CopyKind::Plaintext {
                (Some(KeyPath::NoKey), None)
            } else {
                match none(g, &c.key) {
                    Ok(p) => (Some(p), None),
                    Err(w) => (None, Some(w)),
                }
            };
            if c.kind == CopyKind::Plaintext {
                out.findings.push(Finding {
                    code: "plaintext-copy",
                    subject: format!("{} {}", d.name, c.id),
                    detail: format!(
                        "a plaintext copy on {}: it survives the loss of every key, but it is not encrypted, so whoever holds that medium reads the data (the paper's \"backups not secured\"); keep the medium as you would the data in the clear: `custos backup prune` removes older plaintext copies but keeps the newest of each dataset, as it does for every series",
                        c.volume
                    ),
                });
            }
            if let Some(w) = &why {
                out.findings.push(Finding {
                    code: "undecryptable",
                    subject: format!("{} {}", d.name, c.id),
                    detail: format!("the {} cannot be decrypted today: {w}", c.kind.as_str()),
                });
            }
            if path.is_none() && retired(&c.key) {
                out.findings.push(Finding {
                    code: "retired-master-key",
                    subject: format!("{} {}", d.name, c.id),
                    detail: format!(
                        "key {} survives only in keystore backups wrapped under master keys the HSM no longer holds (the paper's Example 1)",
                        c.key
                    ),
                });
            }
            if let (Some(problem), Some(at)) = (c.damage(), c.checked.as_ref().map(|k| k.at)) {
                out.findings.push(Finding {
                    code: "damaged-copy",
                    subject: format!("{} {}", d.name, c.id),
                    detail: format!(
                        "its last check ({}) found it damaged, so it saves nothing: {problem}; remove it (`custos backup prune` or `custos snapshot rm`) and make a new copy",
                        at.strftime("%Y-%m-%d %H:%M UTC")
                    ),
                });
            } else {
                let full = c.checked.as_ref().filter(|k| k.read_data).map(|k| k.at);
                let due = match full {
                    Some(at) => now.duration_since(at) > VERIFY_EVERY,
                    None => now.duration_since(c.created_at) > VERIFY_GRACE,
                };
                if due {
                    out.unverified += 1;
                    out.never += usize::from(full.is_none());
                    if out.some_unverified.len() < 5 {
                        out.some_unverified.push(format!("{} {}", d.name, c.id));
                    }
                }
            }
            out.copies.push(CopyAudit {
                dataset: d.name.clone(),
                copy: c.id.clone(),
                kind: c.kind,
                key: c.key.clone(),
                created_at: c.created_at,
                path,
                why,
                checked: c.checked.clone(),
            });
        }
        let mirror = g.volumes.get(&d.volume).and_then(|v| v.mirror.clone());
        if d.copies.is_empty() && mirror.is_none() {
            out.findings.push(Finding {
                code: "no-copy",
                subject: d.name.clone(),
                detail: "no backup, snapshot or mirror: any threat to it is a loss".into(),
            });
            continue;
        }
        if !d.copies.is_empty() && d.copies.iter().all(|c| c.key == d.key) {
            out.findings.push(Finding {
                code: "shared-key",
                subject: d.name.clone(),
                detail: format!(
                    "every copy is sealed under the primary's key {}: losing it loses them all (the paper's Example 2); add a logical copy",
                    d.key
                ),
            });
        }
        let site = g.volumes.get(&d.volume).map(|v| v.site.clone()).unwrap_or_default();
        let elsewhere = |vol: &str| g.volumes.get(vol).is_some_and(|v| v.site != site);
        if !d.copies.iter().any(|c| elsewhere(&c.volume)) && !mirror.as_deref().is_some_and(elsewhere) {
            out.findings.push(Finding {
                code: "same-site",
                subject: d.name.clone(),
                detail: format!("every copy is at site {site}, as the dataset is: a site loss loses them all"),
            });
        }
        if !d.copies.is_empty() && d.copies.iter().all(|c| c.volume == d.volume) && mirror.is_none() {
            out.findings.push(Finding {
                code: "same-volume",
                subject: d.name.clone(),
                detail: format!("every copy is on the dataset's own volume {}", d.volume),
            });
        }
        if let Some(oldest) = oldest_ksb {
            if d.last_access < oldest {
                out.findings.push(Finding {
                    code: "rarely-used",
                    subject: d.name.clone(),
                    detail: format!(
                        "last used {}, before the oldest keystore backup ({}): a lost key would be noticed only after every backup that holds it is gone",
                        d.last_access.strftime("%Y-%m-%d"),
                        oldest.strftime("%Y-%m-%d")
                    ),
                });
            }
        }
    }
    out
}

/// For each key `pick` selects: how many datasets and copies need it, and
/// the first of them ("DATASET" or "DATASET backup N"). Only those are
/// named, so the copy loop allocates nothing for the others.
fn key_users(g: &Graph, pick: impl Fn(&str) -> bool) -> BTreeMap<&str, (usize, String)> {
    let mut out: BTreeMap<&str, (usize, String)> = BTreeMap::new();
    for d in &g.datasets {
        let users =
            std::iter::once((d.key.as_str(), None)).chain(d.copies.iter().map(|c| (c.key.as_str(), Some(&c.id))));
        for (key, copy) in users.filter(|(k, _)| pick(k)) {
            out.entry(key)
                .or_insert_with(|| (0, copy.map_or_else(|| d.name.clone(), |c| format!("{} {c}", d.name))))
                .0 += 1;
        }
    }
    out
}

/// Principals who could destroy every copy of a dataset on their own: by
/// removing it and everything pinned to it (`ds rm`, `snapshot rm`: only
/// for datasets without backups, since `backup prune` keeps the newest of
/// each series), or by destroying every key (crypto-erase, after the
/// shortest waiting period). An action under dual control stops them only
/// where another enabled principal could approve it: one who holds an
/// approving role and may do the operation itself, as the engine decides.
fn lone_destroyers(g: &Graph) -> Vec<Finding> {
    use custos_core::model::{Op, PrincipalRecord};
    let able =
        |p: &PrincipalRecord, op: Op, ds: Option<&str>, key: Option<&str>| custos_core::permits(p, op, ds, key).is_ok();
    let alone = |p: &PrincipalRecord, action: &str, op: Op, ds: Option<&str>, key: Option<&str>| {
        able(p, op, ds, key)
            && !(g.dual_control.iter().any(|a| a == action)
                && g.principals
                    .iter()
                    .any(|q| q.name != p.name && able(q, Op::Approve, None, None) && able(q, op, ds, key)))
    };
    let mut out = Vec::new();
    for p in g.principals.iter().filter(|p| !p.disabled) {
        let mut why = Vec::new();
        if alone(p, "key-destroy", Op::KeyDestroy, None, None) && !g.datasets.is_empty() {
            let wait = g.destroy_min_wait.map(|w| format!("{w:#}")).unwrap_or_else(|| "its waiting period".into());
            why.push(format!(
                "it can destroy every key by itself (crypto-erase), which takes every dataset and copy after {wait} unless someone cancels: put key-destroy under dual control (`custos config set dual-control`) with a second security administrator"
            ));
        }
        let removable: Vec<&str> = g
            .datasets
            .iter()
            .filter(|d| {
                !d.copies.iter().any(|c| c.kind != CopyKind::Snapshot)
                    && alone(p, "data-removal", Op::DataWrite, Some(&d.name), Some(&d.key))
                    && (d.copies.is_empty() || alone(p, "data-removal", Op::StorageCopy, None, None))
            })
            .map(|d| d.name.as_str())
            .collect();
        if !removable.is_empty() {
            let some: Vec<&str> = removable.iter().take(3).copied().collect();
            why.push(format!(
                "it can remove {} dataset{} with every copy by itself (no backup; `ds rm`, `snapshot rm`): {}{}; back them up, or put data-removal under dual control",
                removable.len(),
                if removable.len() == 1 { "" } else { "s" },
                some.join(", "),
                if removable.len() > some.len() { ", …" } else { "" }
            ));
        }
        if !why.is_empty() {
            out.push(Finding { code: "one-person-destruction", subject: p.name.clone(), detail: why.join("; ") });
        }
    }
    out
}

// ---- rendering --------------------------------------------------------------

/// The paper's Table 2 shape: one row per threat, one column per
/// application (the worst of its datasets).
pub fn render_threat_rows(r: &Report) -> String {
    let mut rows = vec![std::iter::once("THREAT".to_string())
        .chain(r.apps().iter().map(|a| format!("{} ({})", a.app, a.datasets)))
        .collect::<Vec<_>>()];
    for (i, t) in r.threats.iter().enumerate() {
        rows.push(
            std::iter::once(t.title().to_string())
                .chain(r.apps().iter().map(|a| {
                    let (_, ok, v) = &a.single[i];
                    app_cell(*ok, a.datasets, v)
                }))
                .collect(),
        );
    }
    grid(&rows)
}

/// A plain-text table for a terminal.
pub fn render_table(r: &Report, dual: bool) -> String {
    let mut out = Vec::new();
    // Writing to memory fails only when memory does.
    let _ = write_table(r, dual, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The table, written as it is made: the datasets are judged twice (once
/// for the applications and the columns' widths, keeping only each row's
/// short cells, once for the reasons), never held whole.
pub fn write_table(r: &Report, dual: bool, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    if r.as_if_unencrypted {
        writeln!(
            out,
            "As if unencrypted (the paper's Table 1): no copy needs a key, so only the threats to data are judged. Without --as-if-unencrypted the report adds the key threats (Table 2).\n"
        )?;
    }
    let header: Vec<String> =
        std::iter::once("DATASET".to_string()).chain(r.threats.iter().map(|t| t.name().to_string())).collect();
    let mut cells: Vec<Vec<String>> = Vec::with_capacity(r.rows().len());
    r.each_row(&mut |d| {
        cells.push(std::iter::once(d.dataset.clone()).chain(d.single.iter().map(|(_, v)| v.cell())).collect());
    });
    writeln!(out, "Risk by application (worst dataset; yes = survives, NO = lost)\n")?;
    out.write_all(render_threat_rows(r).as_bytes())?;
    writeln!(out, "\nPer dataset\n")?;
    let widths = widths(std::iter::once(&header).chain(&cells));
    for row in std::iter::once(&header).chain(&cells) {
        grid_line(out, row, &widths)?;
    }
    drop(cells);
    writeln!(out, "\nWhy\n")?;
    r.rows().each::<std::io::Error>(&mut |d| {
        for (t, v) in &d.single {
            if !matches!(v, Verdict::Unaffected) {
                writeln!(out, "  {} / {}: {}", d.dataset, t.name(), v.explain())?;
            }
        }
        Ok(())
    })?;
    if dual {
        writeln!(out, "\nDual events by application (datasets surviving / all)\n")?;
        for a in r.apps() {
            writeln!(out, "{} ({} datasets)", a.app, a.datasets)?;
            for ((x, y), ok, v) in &a.dual {
                writeln!(out, "  {:<22} + {:<22} {}", x.name(), y.name(), app_cell(*ok, a.datasets, v))?;
            }
        }
    }
    out.write_all(render_audit(r).as_bytes())
}

fn app_cell(ok: usize, n: usize, worst: &Verdict) -> String {
    match worst {
        Verdict::Lost { .. } if ok == 0 => "NO".into(),
        Verdict::Lost { .. } => format!("NO ({ok}/{n})"),
        v => v.cell(),
    }
}

fn grid(rows: &[Vec<String>]) -> String {
    let widths = widths(rows.iter());
    let mut out = Vec::new();
    for r in rows {
        // Writing to memory fails only when memory does.
        let _ = grid_line(&mut out, r, &widths);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Each column's width: its widest cell, in characters.
fn widths<'a>(rows: impl Iterator<Item = &'a Vec<String>>) -> Vec<usize> {
    let mut w: Vec<usize> = Vec::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            let n = c.chars().count();
            match w.get_mut(i) {
                Some(m) => *m = (*m).max(n),
                None => w.push(n),
            }
        }
    }
    w
}

/// One line of a grid: cells padded to their column's width, two spaces
/// apart, no trailing blanks.
fn grid_line(out: &mut dyn std::io::Write, row: &[String], widths: &[usize]) -> std::io::Result<()> {
    let line: Vec<String> =
        row.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0))).collect();
    writeln!(out, "{}", line.join("  ").trim_end())
}

fn render_audit(r: &Report) -> String {
    let mut out = String::new();
    let damaged = |c: &&CopyAudit| c.checked.as_ref().is_some_and(|k| k.problem.is_some());
    let ok = r.copies.iter().filter(|c| c.path.is_some() && !damaged(c)).count();
    let bad = r.copies.iter().filter(damaged).count();
    let _ = writeln!(
        out,
        "\nRecoverability audit: {} of {} backups and snapshots can be decrypted today{}; {} unencrypted copies",
        ok,
        r.copies.len(),
        if bad > 0 { format!(" ({bad} found damaged by their last check)") } else { String::new() },
        r.unencrypted_copies
    );
    if r.keys_checked {
        let _ = writeln!(out, "Every key with material was checked in the HSM (it unwraps to its check value).");
    } else {
        let _ = writeln!(
            out,
            "The HSM was not opened{}: key records are trusted, not checked (a damaged one counts as usable), and the master keys are those it held when last opened. Give the passphrase (or run on a server) for a checked report.",
            r.sealed_because.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()
        );
    }
    for c in r.copies.iter().filter(|c| !matches!(c.path, Some(KeyPath::Live))) {
        let how = match &c.path {
            Some(KeyPath::KeystoreBackup { id }) => format!("only through keystore backup {id}"),
            Some(KeyPath::Escrow) => "only through escrow".into(),
            Some(KeyPath::Archived) => "after `custos key restore` (its key is archived)".into(),
            Some(KeyPath::PendingDestruction { due }) => {
                format!("only until {due}, when its key is destroyed, unless `custos key cancel-destroy`")
            }
            Some(KeyPath::NoKey) => "needs no key: NOT ENCRYPTED, whoever holds the medium reads it".into(),
            Some(KeyPath::Live) => unreachable!(),
            None => format!("NOT decryptable: {}", c.why.clone().unwrap_or_default()),
        };
        let _ = writeln!(out, "  {} {} ({}, key {}): {how}", c.dataset, c.copy, c.kind.as_str(), c.key);
    }
    if let Some(last) = r.drills.iter().map(|d| d.at).max() {
        let disagree = r.drills.iter().filter(|d| !d.agrees).count();
        let _ = writeln!(
            out,
            "Drilled: {} cells, the last on {}; {}",
            r.drills.len(),
            last.strftime("%Y-%m-%d"),
            if disagree == 0 {
                "every drill agrees with the model".to_string()
            } else {
                format!("{disagree} DISAGREE with the model (`custos risk report --format json` names them)")
            }
        );
    }
    if let Some(d) = r.horizon_days {
        let _ = writeln!(out, "Looked {d} days ahead: retention rules and keys falling due were weighed against it.");
    }
    if r.findings.is_empty() {
        let _ = writeln!(out, "\nFindings: none");
    } else {
        let _ = writeln!(out, "\nFindings ({})", r.findings.len());
        for f in &r.findings {
            let _ = writeln!(out, "  [{}] {}: {}", f.code, f.subject, f.detail);
        }
    }
    out
}

/// Markdown: the application table (the paper's Table 2 shape: threats as
/// rows, applications as columns), then the details.
pub fn render_markdown(r: &Report, dual: bool) -> String {
    let mut out = Vec::new();
    // Writing to memory fails only when memory does.
    let _ = write_markdown(r, dual, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The Markdown, written as it is made (the datasets judged twice: once
/// for the applications, once for their own sections).
pub fn write_markdown(r: &Report, dual: bool, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    writeln!(out, "# Custos risk report\n")?;
    writeln!(out, "Generated {}.\n", r.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC"))?;
    writeln!(out, "## By application (worst dataset)\n")?;
    write!(out, "| Threat |")?;
    for a in r.apps() {
        write!(out, " {} |", md(&a.app))?;
    }
    write!(out, "\n|---|")?;
    for _ in r.apps() {
        write!(out, "---|")?;
    }
    writeln!(out)?;
    for (i, t) in r.threats.iter().enumerate() {
        write!(out, "| {} |", t.title())?;
        for a in r.apps() {
            let (_, ok, v) = &a.single[i];
            write!(out, " {} |", md(&app_cell(*ok, a.datasets, v)))?;
        }
        writeln!(out)?;
    }
    writeln!(out, "\n## Per dataset\n")?;
    r.rows().each::<std::io::Error>(&mut |d| {
        writeln!(out, "### {}\n", md(&d.dataset))?;
        for (t, v) in &d.single {
            writeln!(out, "- **{}**: {}", t.title(), md(&v.explain()))?;
        }
        if dual {
            for ((a, b), v) in &d.dual {
                writeln!(out, "- {} + {}: {}", a.title(), b.title(), md(&v.explain()))?;
            }
        }
        writeln!(out)
    })?;
    writeln!(out, "## Recoverability audit\n\n```text{}```", render_audit(r))
}

fn md(s: &str) -> String {
    s.replace('|', "\\|")
}

/// A self-contained HTML page: the console's risk page ([`crate::html`]).
pub fn render_html(r: &Report, dual: bool) -> String {
    crate::html::render_document(r, dual)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CopyNode, DatasetNode, KeyNode, VolumeNode};

    /// A graph of `n` datasets in three applications, a third of them with
    /// a logical copy at another site, some of those copies stale.
    fn graph(n: usize) -> Graph {
        let mut g = Graph::default();
        for (name, site) in [("a", "A"), ("b", "B")] {
            g.volumes.insert(name.into(), VolumeNode { site: site.into(), missing: false, tape: false, mirror: None });
        }
        g.vault_sites = vec!["A".into()];
        g.held_mkvps = vec!["M".into()];
        let at = Timestamp::UNIX_EPOCH;
        // Every dataset's key but one in five, and every BACK key.
        for i in 0..n {
            for label in [format!("K{i}"), format!("B{i}")].into_iter().filter(|l| i % 5 != 0 || l.starts_with('B')) {
                let key = KeyNode {
                    present: true,
                    escrowed: false,
                    mkvp: "M".into(),
                    created_at: at,
                    destroyed_at: None,
                    state: "active".into(),
                    destroy_after: None,
                    damaged: None,
                    expires_at: None,
                };
                g.keys.insert(label, key);
            }
        }
        g.datasets = (0..n)
            .map(|i| DatasetNode {
                name: format!("APP{}.D{i:05}", i % 3),
                app: format!("APP{}", i % 3),
                volume: "a".into(),
                key: format!("K{i}"),
                generation: 2,
                current_at: at,
                migrated_from: None,
                last_access: at,
                copies: (i % 3 == 1 || i % 7 == 0)
                    .then(|| CopyNode {
                        kind: CopyKind::Logical,
                        id: format!("backup {i}"),
                        volume: "b".into(),
                        key: format!("B{i}"),
                        created_at: at,
                        generation: if i % 7 == 0 { 1 } else { 2 },
                        shares_current: false,
                        checked: None,
                    })
                    .into_iter()
                    .collect(),
            })
            .collect();
        g
    }

    #[test]
    fn rows_come_in_order_from_the_workers_and_writing_them_sums_up_the_apps() {
        let g = graph(3 * ROWS_PER_PIECE + 17);
        let r = report(g.clone(), true, Timestamp::UNIX_EPOCH);
        // The threaded pieces arrive in the graph's order, and equal the
        // rows judged one by one.
        let one_by_one: Vec<String> = r.rows().iter().map(|d| serde_json::to_string(&d).unwrap()).collect();
        let threaded: Vec<String> = r.rows().all().iter().map(|d| serde_json::to_string(d).unwrap()).collect();
        assert_eq!(one_by_one.len(), g.datasets.len());
        assert_eq!(threaded, one_by_one);
        assert!(
            one_by_one.iter().any(|d| d.contains("\"stale\"")) && one_by_one.iter().any(|d| d.contains("\"lost\""))
        );
        // Written first, the report sums the applications up from the rows
        // it writes; a report asked for them first makes a pass of its own.
        // Both agree, and count as the rows do.
        let written: serde_json::Value = serde_json::to_value(&r).unwrap();
        let fresh = report(g, true, Timestamp::UNIX_EPOCH);
        assert_eq!(written["apps"], serde_json::to_value(fresh.apps()).unwrap());
        let app1 = fresh.apps().iter().find(|a| a.app == "APP1").unwrap();
        let rows1: Vec<DatasetRisk> = fresh.rows().iter().filter(|d| d.app == "APP1").collect();
        assert_eq!(app1.datasets, rows1.len());
        for (i, (_, ok, worst)) in app1.single.iter().enumerate() {
            assert_eq!(*ok, rows1.iter().filter(|d| d.single[i].1.survives()).count());
            let first_worst = rows1.iter().map(|d| &d.single[i].1).min_by_key(|v| rank(v)).unwrap();
            assert_eq!(worst, first_worst);
        }
        assert_eq!(written["datasets"].as_array().unwrap().len(), 3 * ROWS_PER_PIECE + 17);
    }

    #[test]
    fn a_reader_that_fails_stops_the_workers() {
        let r = report(graph(8 * ROWS_PER_PIECE), false, Timestamp::UNIX_EPOCH);
        let mut seen = 0;
        let out = r.rows().each(&mut |_| {
            seen += 1;
            if seen == ROWS_PER_PIECE + 3 {
                Err("disk full")
            } else {
                Ok(())
            }
        });
        assert_eq!(out, Err("disk full"));
        assert_eq!(seen, ROWS_PER_PIECE + 3);
    }

    #[test]
    fn the_table_and_markdown_written_as_made_hold_every_row_in_order_and_aligned() {
        let g = graph(3 * ROWS_PER_PIECE + 17);
        let names: Vec<String> = g.datasets.iter().map(|d| d.name.clone()).collect();
        let r = report(g, false, Timestamp::UNIX_EPOCH);
        let rows = r.rows().all();
        let text = render_table(&r, false);
        let grid: Vec<&str> =
            text.split("\nPer dataset\n\n").nth(1).unwrap().split("\n\nWhy\n").next().unwrap().lines().collect();
        assert!(grid[0].starts_with("DATASET "));
        assert_eq!(grid.len(), names.len() + 1);
        // Every line's second column starts where the header's does.
        let col = grid[0].find("file-corruption").unwrap();
        for (line, (name, row)) in grid[1..].iter().zip(names.iter().zip(&rows)) {
            assert!(line.starts_with(name.as_str()), "{line}");
            assert_eq!(&line[col..col + row.single[0].1.cell().len()], row.single[0].1.cell());
            assert_eq!(&line[col - 2..col], "  ");
        }
        let why = text.split("\n\nWhy\n\n").nth(1).unwrap();
        let reasons = rows.iter().flat_map(|d| &d.single).filter(|(_, v)| !matches!(v, Verdict::Unaffected)).count();
        assert_eq!(why.lines().take_while(|l| l.starts_with("  ")).count(), reasons);
        // The Markdown: a section per dataset, in order.
        let md = render_markdown(&r, false);
        let sections: Vec<&str> = md.lines().filter_map(|l| l.strip_prefix("### ")).collect();
        assert_eq!(sections, names);
        // A writer that fails stops the table with its error.
        struct Full;
        impl std::io::Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk full"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        assert_eq!(write_table(&r, false, &mut Full).unwrap_err().to_string(), "disk full");
    }
}

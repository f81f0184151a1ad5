//! What an operation returns: typed results, their JSON (what `--json` and
//! the HTTP API give) and their text for people (what the CLI prints, in
//! embedded and client mode alike). A result can carry a failure (an
//! out-of-sync mirror, a damaged backup) that is shown and then exits
//! non-zero.

use std::fmt::Write as _;

use custos_core::model::{
    BackupRecord, CopyMethod, CustodianKey, DatasetName, DatasetRecord, HsmRule, KbkRecord, KeyRecord, KeyState,
    KeystoreBackupRecord, PolicyRecord, PolicyTarget, PrincipalRecord, SnapshotRecord, VolumeRecord,
};
use custos_core::{
    AuditRow, AuditVerdict, DatasetInfo, EscrowStatus, FsckReport, GcReport, GetReport, HsmAction, MirrorStatus,
    MkStatus, MonitorReport, MoveReport, PruneDecision, PutReport, Recovered, ReencipherReport, RestoreReport,
};
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::Code;
use crate::render::{bytes, checked, escape, when, Table};
use crate::requests::RequestView;

/// One key's line in a bulk lifecycle action.
#[derive(Clone, Debug, Serialize)]
pub struct BulkLine {
    pub label: String,
    /// "changed", "skipped", "failed" or "would change".
    pub result: &'static str,
    pub detail: String,
}

/// A key scheduled for destruction.
#[derive(Clone, Debug, Serialize)]
pub struct Destruction {
    pub label: String,
    pub destroy_at: jiff::Timestamp,
    pub state: KeyState,
    pub unreadable: Vec<String>,
    #[serde(skip)]
    pub wait: String,
    #[serde(skip)]
    pub escrowed: bool,
}

/// One backup's verification.
#[derive(Clone, Debug, Serialize)]
pub struct Verified {
    pub id: u64,
    pub ok: bool,
    /// What was wrong, when it failed.
    #[serde(rename = "problem")]
    pub error: Option<String>,
    #[serde(skip)]
    pub method: CopyMethod,
    #[serde(skip)]
    pub dataset: String,
    /// What kind of failure, when it failed (damage is `integrity`).
    #[serde(skip)]
    pub code: Option<Code>,
}

/// The result of an operation.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Reply {
    /// A change carried out: the operation's name (as a request stores it),
    /// what it changed (a JSON object: `{"policy": "p"}`), and the sentence
    /// people read. Its JSON is those fields with `op` and `message`.
    Done {
        op: &'static str,
        fields: Value,
        message: String,
    },
    Key(KeyRecord, &'static str),
    /// Keys, and when those scheduled for destruction fall due.
    Keys(Vec<KeyRecord>, std::collections::BTreeMap<String, jiff::Timestamp>),
    KeysCreated(Vec<KeyRecord>),
    KeyDetail {
        key: KeyRecord,
        datasets: Vec<DatasetName>,
        /// When its scheduled destruction falls due, if it is scheduled.
        destroy_after: Option<jiff::Timestamp>,
    },
    KeyBulk {
        lines: Vec<BulkLine>,
        dry_run: bool,
    },
    Destroy(Destruction),
    Recovered(Vec<Recovered>),
    /// A key's material (base64), exported to a client that must hold it.
    KeyExported {
        key: KeyRecord,
        material: crate::SecretText,
    },
    /// AES-GCM under a key (base64): a ciphertext with its IV and tag, or
    /// a plaintext.
    KeyGcm {
        key: String,
        data: crate::SecretText,
        iv: Option<String>,
        tag: Option<String>,
    },
    /// A key-service answer: data (base64) sealed or opened under `key`.
    KeyService {
        key: String,
        plaintext: Option<crate::SecretText>,
        ciphertext: Option<String>,
    },
    Volume(VolumeRecord),
    Volumes(Vec<VolumeRecord>),
    VolumeRemoved(VolumeRecord),
    Policy(PolicyRecord),
    Policies(Vec<PolicyRecord>),
    Put(PutReport),
    Got(GetReport),
    Datasets(Vec<DatasetRecord>),
    DatasetInfo(Box<DatasetInfo>),
    DatasetRemoved {
        name: DatasetName,
        objects: u64,
    },
    DatasetVerified(GetReport),
    /// The datasets written, and the entries skipped (not regular files).
    Imported(Vec<PutReport>, Vec<String>),
    Exported {
        dir: std::path::PathBuf,
        reports: Vec<custos_core::ExportReport>,
    },
    Settings(Vec<(String, String)>),
    MkStatus(MkStatus),
    MkLoaded(String),
    MkActivated(MkStatus),
    Reenciphered(ReencipherReport),
    KeystoreBackup(KeystoreBackupRecord),
    KeystoreBackups(Vec<KeystoreBackupRecord>),
    VaultBackup(custos_core::VaultBackupReport),
    VaultBackups(Vec<custos_core::model::VaultBackupRecord>),
    VaultPruned {
        decisions: Vec<custos_core::VaultPruneDecision>,
        dry_run: bool,
    },
    EscrowCreated(KbkRecord),
    EscrowStatus(EscrowStatus),
    CustodianRegistered(CustodianKey),
    /// The caller's share, sealed to their recipient (a sealed share file).
    SealedShare {
        kbk: String,
        custodian: String,
        text: String,
    },
    ShareConfirmed(custos_core::ShareStatus),
    /// A share given towards an escrow recovery that needs more.
    Contributed {
        request: RequestView,
        given: Vec<String>,
        need: u8,
    },
    Mirrors {
        list: Vec<MirrorStatus>,
        check: bool,
    },
    Snapshot(SnapshotRecord),
    Snapshots(Vec<SnapshotRecord>),
    SnapshotRestored {
        id: u64,
        report: PutReport,
    },
    BackupsMade {
        made: Vec<(DatasetName, Option<BackupRecord>)>,
        method: CopyMethod,
        to: String,
    },
    Backups(Vec<BackupRecord>),
    Backup {
        backup: BackupRecord,
        volume: VolumeRecord,
    },
    Pruned {
        decisions: Vec<PruneDecision>,
        dry_run: bool,
    },
    BackupsVerified {
        list: Vec<Verified>,
        read_data: bool,
    },
    Restored(Vec<(DatasetName, RestoreReport)>),
    HsmRun {
        actions: Vec<HsmAction>,
        gc: Option<GcReport>,
    },
    HsmRule(HsmRule),
    HsmRules(Vec<HsmRule>),
    Moved(MoveReport),
    NotMigrated(DatasetName),
    RiskReport(Box<custos_risk::report::Report>, bool),
    Drill(Vec<custos_risk::drill::DrillCell>),
    Audit(Vec<AuditRow>),
    AuditExport(usize),
    /// The verdict, and the comparison with a volume's exported segments.
    AuditVerdict(AuditVerdict, Option<custos_core::AuditComparison>),
    AuditExported(custos_core::AuditExported),
    CatalogCheck(custos_core::CatalogCheck),
    /// A principal's new credential (a token shown once).
    CredentialChanged {
        name: String,
        token: Option<crate::SecretText>,
    },
    UserAdded {
        user: PrincipalRecord,
        token: Option<crate::SecretText>,
    },
    Users(Vec<PrincipalRecord>),
    Requests(Vec<RequestView>),
    Request(RequestView),
    /// A controlled operation became a request.
    RequestCreated {
        request: RequestView,
        token: Option<crate::SecretText>,
    },
    /// A request was approved and its operation ran.
    Approved {
        request: RequestView,
        result: Box<Reply>,
    },
    Monitor(MonitorReport),
    Fsck(FsckReport),
    Gc {
        report: GcReport,
        grace: String,
    },
}

/// What a result says went wrong, after it is shown.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

fn to(v: impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A key in a listing: its record, and when its destruction is due if it is.
fn key_row(k: &KeyRecord, due: &std::collections::BTreeMap<String, jiff::Timestamp>) -> Value {
    let mut row = to(k);
    if let Some(t) = due.get(k.label.as_str()) {
        row["destroy_at"] = to(t);
    }
    row
}

/// A list serialized an element at a time through `f` (see [`Reply::write_json`]).
struct Each<'a, T, F: Fn(&T) -> Value>(&'a [T], F);

impl<T, F: Fn(&T) -> Value> Serialize for Each<'_, T, F> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(&self.1))
    }
}

fn methods(m: CopyMethod) -> &'static str {
    match m {
        CopyMethod::Raw => "raw",
        CopyMethod::Logical => "logical",
        CopyMethod::Plaintext => "plaintext",
    }
}

fn target_text(t: &PolicyTarget) -> String {
    match t {
        PolicyTarget::Key(k) => format!("key {k}"),
        PolicyTarget::Template { app: Some(a) } => format!("new key per dataset for application {a}"),
        PolicyTarget::Template { app: None } => "new key per dataset, application = first qualifier".into(),
    }
}

fn mirror_table(ms: &[MirrorStatus]) -> String {
    let mut t = Table::new(&["PRIMARY", "SECONDARY", "SINCE", "OBJECTS", "STATE"]);
    for m in ms {
        let state = match m.missing {
            None => "-".to_string(),
            Some(0) => "in sync".to_string(),
            Some(n) => format!("{n} missing on the secondary"),
        };
        t.row(vec![m.primary.to_string(), m.secondary.to_string(), when(Some(m.since)), m.objects.to_string(), state]);
    }
    t.render()
}

impl Reply {
    /// Whether the answer carries a secret (a plaintext, a new token, a
    /// share): never kept for an idempotent retry's replay.
    pub fn holds_secret(&self) -> bool {
        use Reply::*;
        matches!(
            self,
            KeyService { .. }
                | KeyExported { .. }
                | KeyGcm { .. }
                | UserAdded { token: Some(_), .. }
                | CredentialChanged { token: Some(_), .. }
                | RequestCreated { token: Some(_), .. }
                | SealedShare { .. }
                | Approved { .. }
                | Contributed { .. }
        )
    }

    /// Write [`Reply::json`], pretty-printed, to `w`. A long list is
    /// written an element at a time (each element's JSON is made, written
    /// and dropped), so that 100,000 datasets do not first become a tree of
    /// JSON values in memory; the text is the same.
    pub fn write_json(&self, w: &mut dyn std::io::Write) -> serde_json::Result<()> {
        use Reply::*;
        match self {
            Datasets(d) => serde_json::to_writer_pretty(w, &Each(d, |x| to(x))),
            Backups(b) => serde_json::to_writer_pretty(w, &Each(b, |x| to(x))),
            Snapshots(s) => serde_json::to_writer_pretty(w, &Each(s, |x| to(x))),
            Audit(rows) => serde_json::to_writer_pretty(w, &Each(rows, |x| to(x))),
            Keys(ks, due) => serde_json::to_writer_pretty(w, &Each(ks, |k| key_row(k, due))),
            other => serde_json::to_writer_pretty(w, &other.json()),
        }
    }

    /// The JSON a script gets (`--json`, or the HTTP API's `result`).
    pub fn json(&self) -> Value {
        use Reply::*;
        match self {
            Done { op, fields, message } => {
                let mut j = json!({ "op": op });
                if let Value::Object(m) = fields {
                    for (k, v) in m {
                        j[k.as_str()] = v.clone();
                    }
                }
                j["message"] = json!(message);
                j
            }
            Key(k, _) => to(k),
            Keys(ks, due) => Value::Array(ks.iter().map(|k| key_row(k, due)).collect()),
            KeysCreated(ks) => to(ks),
            KeyDetail { key, datasets, destroy_after } => {
                let mut j = to(key);
                j["datasets"] = to(datasets);
                if let Some(t) = destroy_after {
                    j["destroy_at"] = to(t);
                }
                j
            }
            KeyBulk { lines, .. } => to(lines),
            Destroy(d) => to(d),
            Recovered(r) => to(r),
            KeyExported { key, material } => {
                let mut j = to(key);
                j["material"] = Value::String(material.expose().to_string());
                j
            }
            KeyGcm { key, data, iv, tag } => {
                let mut j = json!({ "key_label": key, "data": data.expose() });
                if let Some(iv) = iv {
                    j["iv"] = Value::String(iv.clone());
                }
                if let Some(t) = tag {
                    j["tag"] = Value::String(t.clone());
                }
                j
            }
            KeyService { key, plaintext, ciphertext } => {
                let mut j = json!({ "key_label": key });
                if let Some(p) = plaintext {
                    j["plaintext"] = Value::String(p.expose().to_string());
                }
                if let Some(c) = ciphertext {
                    j["ciphertext"] = Value::String(c.clone());
                }
                j
            }
            Volume(v) => to(v),
            VolumeRemoved(v) => json!({ "op": "volume-rm", "volume": v.name, "message": self.text().trim_end() }),
            Volumes(v) => to(v),
            Policy(p) => to(p),
            Policies(p) => to(p),
            Put(r) | SnapshotRestored { report: r, .. } => to(r),
            Got(r) | DatasetVerified(r) => to(r),
            Datasets(d) => to(d),
            DatasetInfo(i) => to(i),
            DatasetRemoved { name, objects } => json!({
                "op": "ds-rm",
                "dataset": name,
                "deleted_count": objects,
                "message": self.text().trim_end(),
            }),
            Imported(r, skipped) => json!({ "imported": r, "skipped": skipped }),
            Exported { reports, .. } => to(reports),
            // A number is a number, an unset value null; the rest (names,
            // durations such as `7d`, lists) are strings as `config set` takes them.
            Settings(pairs) => Value::Object(
                pairs
                    .iter()
                    .map(|(k, v)| {
                        let value = match v.parse::<u64>() {
                            _ if v.is_empty() => Value::Null,
                            Ok(n) => json!(n),
                            Err(_) => Value::String(v.clone()),
                        };
                        (k.clone(), value)
                    })
                    .collect(),
            ),
            MkStatus(s) | MkActivated(s) => to(s),
            MkLoaded(m) => json!({ "new_mkvp": m }),
            Reenciphered(r) => to(r),
            KeystoreBackup(b) => to(b),
            KeystoreBackups(b) => to(b),
            VaultBackup(b) => to(b),
            VaultBackups(b) => to(b),
            VaultPruned { decisions, .. } => to(decisions),
            EscrowCreated(kbk) => to(kbk),
            EscrowStatus(s) => to(s),
            CustodianRegistered(k) => json!({
                "custodian": k.principal,
                "recipient": custos_core::recipient_to_text(&k.public),
                "registered_at": k.registered_at,
            }),
            SealedShare { kbk, custodian, text } => json!({ "kbk": kbk, "custodian": custodian, "sealed_share": text }),
            ShareConfirmed(s) => to(s),
            Contributed { request, given, need } => {
                json!({ "request": request, "shares_given_by": given, "threshold": need })
            }
            Mirrors { list, .. } => to(list),
            Snapshot(s) => to(s),
            Snapshots(s) => to(s),
            BackupsMade { made, .. } => to(made.iter().filter_map(|(_, b)| b.clone()).collect::<Vec<_>>()),
            Backups(b) => to(b),
            Backup { backup, .. } => to(backup),
            Pruned { decisions, .. } => to(decisions),
            BackupsVerified { list, .. } => to(list),
            Restored(r) => to(r.iter().map(|(_, r)| r).collect::<Vec<_>>()),
            HsmRun { actions, .. } => to(actions),
            HsmRule(r) => to(r),
            HsmRules(r) => to(r),
            Moved(m) => to(m),
            NotMigrated(d) => json!({ "dataset": d, "migrated": false }),
            RiskReport(r, _) => to(r),
            Drill(c) => to(c),
            Audit(rows) => to(rows),
            AuditExport(n) => json!({ "entry_count": n }),
            AuditVerdict(v, None) => to(v),
            AuditVerdict(v, Some(c)) => {
                let mut j = to(v);
                if let Value::Object(m) = &mut j {
                    m.insert("against".into(), to(c));
                }
                j
            }
            AuditExported(x) => to(x),
            CatalogCheck(c) => to(c),
            UserAdded { user, token } => {
                let mut j = to(user);
                j["token"] = to(token);
                j
            }
            CredentialChanged { name, token } => json!({
                "op": "user-credential",
                "user": name,
                "token": token,
                "message": self.text().trim_end(),
            }),
            Users(u) => to(u),
            Requests(r) => to(r),
            Request(r) => to(r),
            RequestCreated { request, token } => {
                let mut j = to(request);
                if let Some(t) = token {
                    j["token"] = to(t);
                }
                j
            }
            Approved { result, .. } => result.json(),
            Monitor(r) => to(r),
            Fsck(r) => to(r),
            Gc { report, .. } => to(report),
        }
    }

    /// What went wrong, when the result itself says so.
    pub fn failure(&self) -> Option<Failure> {
        use Reply::*;
        let fail = |code, message: String| Some(Failure { code, message });
        match self {
            Mirrors { list, check: true } => {
                let out = list.iter().filter(|m| m.missing.unwrap_or(0) > 0).count();
                (out > 0).then(|| Failure {
                    code: Code::Other,
                    message: format!("{out} mirrors are out of sync: remove and add them again to resynchronise"),
                })
            }
            BackupsVerified { list, .. } => {
                let bad = list.iter().filter(|v| !v.ok).count();
                // Damage found is what the exit code says (4), before a
                // copy that could not be checked for another reason.
                // Then a key that is gone (permanent), then an unreachable
                // volume (try again later).
                let codes: Vec<Code> = list.iter().filter(|v| !v.ok).map(|v| v.code.unwrap_or(Code::Other)).collect();
                let code = [Code::Integrity, Code::KeyState, Code::Unavailable]
                    .into_iter()
                    .find(|c| codes.contains(c))
                    .or_else(|| codes.first().copied())
                    .unwrap_or(Code::Other);
                (bad > 0).then(|| Failure {
                    code,
                    message: format!(
                        "{bad} of {} backups failed verification (listed above): restore what is damaged from another copy, then make a new backup; bring back what is unreachable and verify again",
                        list.len()
                    ),
                })
            }
            HsmRun { actions, gc } => {
                let failed = actions.iter().filter(|a| a.action == "failed").count()
                    + gc.as_ref().map_or(0, |g| g.failed.len());
                (failed > 0).then(|| Failure { code: Code::Other, message: format!("{failed} dataset(s) or object(s) failed (listed above); the others were processed: mend what the messages say and run `custos hsm run` again") })
            }
            Drill(cells) => {
                let skipped = cells.iter().filter(|c| c.not_drilled.is_some()).count();
                let bad = cells.iter().filter(|c| !c.agrees).count() - skipped;
                let message = match (bad, skipped) {
                    (0, 0) => return None,
                    (0, s) => format!("{s} cells could not be drilled (see the rows marked NOT DRILLED and why); the others agree with the model"),
                    (b, 0) => format!("{b} drilled cells disagree with the model: the analyzer is wrong about them (see the rows marked DISAGREES)"),
                    (b, s) => format!("{b} drilled cells disagree with the model (rows marked DISAGREES: the analyzer is wrong about them) and {s} could not be drilled (rows marked NOT DRILLED)"),
                };
                Some(Failure { code: Code::Other, message })
            }
            CatalogCheck(c) if !c.faults.is_empty() => fail(
                Code::Integrity,
                format!("{} catalog row(s) were written or changed outside Custos (listed above): nothing that depends on them will be done until they are restored (custos.db from a vault backup) or undone", c.faults.len()),
            ),
            AuditVerdict(v, c) => v
                .problem
                .as_ref()
                .map(|p| Failure {
                    code: Code::Integrity,
                    message: custos_core::Error::AuditTampered { problem: p.clone() }.to_string(),
                })
                .or_else(|| {
                    let c = c.as_ref().filter(|c| !c.problems.is_empty())?;
                    Some(Failure {
                        code: Code::Integrity,
                        message: format!(
                            "the audit log disagrees with what was exported to volume {} ({} problem(s), listed above): the catalog's log was changed after the export; keep both as evidence",
                            c.volume,
                            c.problems.len()
                        ),
                    })
                }),
            Monitor(r) if !r.alerts.is_empty() => {
                fail(Code::Alerts, format!("{} alert(s) raised; see above", r.alerts.len()))
            }
            Fsck(r) if !r.clean() => {
                let bad: usize = r.volumes.iter().map(|v| v.missing.len() + v.damaged.len()).sum::<usize>()
                    + r.catalog.len()
                    + r.volumes.iter().filter(|v| v.unreachable.is_some()).count();
                fail(Code::Integrity, format!("{bad} problem(s) found (listed above): restore the datasets and backups they name from another copy, or reach the unreachable volumes, then run `custos fsck` again"))
            }
            Gc { report, .. } if !report.failed.is_empty() => fail(
                Code::Other,
                format!("{} object(s) could not be deleted (listed above); they stay in the trash: reach or repair the volume, then run `custos gc` again", report.failed.len()),
            ),
            Approved { result, .. } => result.failure(),
            _ => None,
        }
    }

    /// Other renderings a front end may ask for by name: a risk report as
    /// "markdown" or "html", monitor metrics as "prometheus".
    pub fn renderings(&self) -> Vec<(&'static str, String)> {
        match self {
            Reply::RiskReport(r, dual) => vec![
                ("markdown", custos_risk::report::render_markdown(r, *dual)),
                ("html", custos_risk::report::render_html(r, *dual)),
            ],
            Reply::Monitor(r) => vec![("prometheus", custos_core::prometheus_text(&r.metrics))],
            _ => Vec::new(),
        }
    }

    /// The text for people, as the CLI prints it on standard output.
    pub fn text(&self) -> String {
        let mut o = String::new();
        macro_rules! out { ($($t:tt)*) => {{ let _ = writeln!(o, $($t)*); }} }
        use Reply::*;
        match self {
            Done { message, .. } => out!("{message}"),
            Key(k, verb) => match *verb {
                "created" => {
                    out!("created key {} ({}, KCV {}, wrapped under MKVP {})", k.label, k.state, k.kcv, k.mkvp)
                }
                "cancelled" => out!("key {} will not be destroyed; it is {}", k.label, k.state),
                _ => out!("key {} is now {}", k.label, k.state),
            },
            KeysCreated(ks) => match (ks.first(), ks.last()) {
                (Some(a), Some(b)) => out!("created {} keys, {} … {}", ks.len(), a.label, b.label),
                _ => out!("created no keys"),
            },
            Keys(keys, due) => {
                let mut t =
                    Table::new(&["LABEL", "STATE", "PURPOSE", "APP", "KCV", "MKVP", "CREATED", "EXPIRES", "USES"]);
                for k in keys {
                    t.row(vec![
                        k.label.to_string(),
                        match due.get(k.label.as_str()) {
                            Some(at) => format!("{} (destruction due {})", k.state, when(Some(*at))),
                            None => k.state.to_string(),
                        },
                        k.purpose.to_string(),
                        k.app.clone(),
                        k.kcv.to_string(),
                        k.mkvp.to_string(),
                        when(Some(k.created_at)),
                        when(k.expires_at),
                        k.use_count.to_string(),
                    ]);
                }
                o.push_str(&t.render());
            }
            KeyDetail { key: k, datasets, destroy_after } => {
                out!("label        {}", k.label);
                out!("state        {}", k.state);
                if let Some(at) = destroy_after {
                    out!(
                        "destruction  scheduled: its material is erased at {} (`custos key cancel-destroy` stops it)",
                        when(Some(*at))
                    );
                }
                out!("purpose      {}", k.purpose);
                out!("application  {}", k.app);
                out!("KCV          {}", k.kcv);
                out!("wrapped by   master key MKVP {}", k.mkvp);
                out!("material     {}", if k.wrapped.is_some() { "present (wrapped)" } else { "erased" });
                out!("created      {}", when(Some(k.created_at)));
                out!("activated    {}", when(k.activated_at));
                out!("deactivated  {}", when(k.deactivated_at));
                out!("destroyed    {}", when(k.destroyed_at));
                out!("expires      {}", when(k.expires_at));
                out!("last used    {}", when(k.last_used_at));
                out!("use count    {}", k.use_count);
                out!(
                    "datasets     {}",
                    if datasets.is_empty() {
                        "-".into()
                    } else {
                        datasets.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                    }
                );
            }
            KeyBulk { lines, dry_run } => {
                for l in lines {
                    out!("{}: {}", l.label, l.detail);
                }
                let done = lines.iter().filter(|l| l.result == "changed").count();
                let skipped = lines.iter().filter(|l| l.result == "skipped").count();
                if *dry_run {
                    out!("dry run: nothing changed ({skipped} would be skipped)");
                } else {
                    out!("{done} keys changed, {skipped} skipped");
                }
            }
            Destroy(d) => {
                if d.state == KeyState::Destroyed {
                    out!("key {} is now destroyed", d.label);
                } else {
                    out!("key {} will be destroyed at {} (in {}); until then it cannot be used, and `custos key cancel-destroy {}` brings it back", d.label, d.destroy_at, d.wait, d.label);
                }
                if !d.unreadable.is_empty() {
                    out!("then unreadable: {}", d.unreadable.join(", "));
                }
                if d.escrowed {
                    out!("an escrow copy remains; `custos escrow purge {}` erases it too", d.label);
                }
            }
            Recovered(rs) => {
                for r in rs {
                    match r {
                        custos_core::Recovered::Restored { label, state } => {
                            out!("recovered key {label} ({state}) under the CURRENT master key")
                        }
                        custos_core::Recovered::AlreadyPresent { label } => {
                            out!("key {label} is already in the keystore and unwraps to its check value; left alone")
                        }
                        custos_core::Recovered::Repaired { label, state, damage } => {
                            out!("repaired key {label} ({state}): the keystore's record was damaged ({damage}); its material now comes from the backup, under the CURRENT master key")
                        }
                    }
                }
            }
            KeyExported { key, material } => out!("key {} ({} bits): {}", key.label, key.attributes.length_bits(), material.expose()),
            KeyGcm { data, iv, tag, .. } => {
                out!("data {}", data.expose());
                if let (Some(iv), Some(tag)) = (iv, tag) {
                    out!("iv   {iv}");
                    out!("tag  {tag}");
                }
            }
            KeyService { ciphertext: Some(c), plaintext: None, .. } => out!("{c}"),
            KeyService { plaintext: Some(p), ciphertext: None, .. } => out!("{}", p.expose()),
            KeyService { key, plaintext, ciphertext } => {
                out!("key        {key}");
                out!("plaintext  {}", plaintext.as_ref().map(|p| p.expose()).unwrap_or("-"));
                out!("ciphertext {}", ciphertext.as_deref().unwrap_or("-"));
            }
            Volume(r) => out!("added volume {} at {} (site {}, {})", r.name, r.location, r.site, r.medium),
            VolumeRemoved(r) => out!(
                "removed volume {}; what is at {} was left as it is (remove it by hand once nothing there is needed)",
                r.name,
                r.location
            ),
            Volumes(vols) => {
                let mut t = Table::new(&["NAME", "SITE", "MEDIUM", "LOCATION"]);
                for r in vols {
                    t.row(vec![r.name.to_string(), r.site.clone(), r.medium.to_string(), r.location.clone()]);
                }
                o.push_str(&t.render());
            }
            Policy(p) => {
                out!("added policy {}: {} → volume {}, {}", p.name, p.pattern, p.volume, target_text(&p.target))
            }
            Policies(ps) => {
                let mut t = Table::new(&["NAME", "PATTERN", "VOLUME", "KEY"]);
                for p in ps {
                    t.row(vec![p.name.clone(), p.pattern.to_string(), p.volume.to_string(), target_text(&p.target)]);
                }
                o.push_str(&t.render());
            }
            Put(r) => {
                if r.unchanged {
                    out!(
                        "{} is unchanged: generation {} already holds these {}",
                        r.dataset,
                        r.generation,
                        bytes(r.size)
                    );
                } else {
                    out!(
                        "stored {} generation {}: {} in {} chunks ({} new, {} on the volume) under key {}{} on volume {}",
                        r.dataset,
                        r.generation,
                        bytes(r.size),
                        r.chunks,
                        r.new_chunks,
                        bytes(r.stored),
                        r.key_label,
                        if r.created_key { " (created)" } else { "" },
                        r.volume
                    );
                }
            }
            // The data went to the output stream.
            Got(_) | AuditExport(_) => {}
            Datasets(ds) => {
                let mut t = Table::new(&["NAME", "SIZE", "GEN", "KEY", "VOLUME", "UPDATED"]);
                for d in ds {
                    t.row(vec![
                        d.name.to_string(),
                        bytes(d.current.size),
                        d.current.generation.to_string(),
                        d.current.key_label.to_string(),
                        match &d.migrated_from {
                            Some(_) => format!("{} (migrated)", d.current.volume),
                            None => d.current.volume.to_string(),
                        },
                        when(Some(d.current.created_at)),
                    ]);
                }
                o.push_str(&t.render());
            }
            DatasetInfo(i) => {
                let (d, g) = (&i.record, &i.record.current);
                out!("name         {}", d.name);
                out!("id           {}", d.id);
                out!("size         {} ({} bytes)", bytes(g.size), g.size);
                out!("generation   {} (written {})", g.generation, when(Some(g.created_at)));
                out!("chunks       {} of {}", g.chunk_count, bytes(g.chunk_size as u64));
                out!("key          {} ({})", g.key_label, i.key_state);
                out!(
                    "volume       {} (site {}, {}, {})",
                    i.volume.name,
                    i.volume.site,
                    i.volume.medium,
                    i.volume.location
                );
                if let Some(home) = &d.migrated_from {
                    out!("migrated     from volume {home}; the next read recalls it there");
                }
                out!("last used    {}", when(Some(d.last_access)));
                out!("manifest     sha256 {}", hex::encode(g.manifest_hash));
                out!("created      {}", when(Some(d.created_at)));
            }
            DatasetRemoved { name, objects } => out!("removed dataset {name} ({objects} objects deleted)"),
            DatasetVerified(r) => out!(
                "dataset {} generation {}: every chunk opened and checked ({})",
                r.dataset,
                r.generation,
                bytes(r.bytes)
            ),
            Imported(reports, skipped) => {
                for r in reports {
                    out!("stored {} ({}) under key {}", r.dataset, bytes(r.size), r.key_label);
                }
                for s in skipped {
                    out!("skipped {s}");
                }
                let total: u64 = reports.iter().map(|r| r.size).sum();
                let stored: u64 = reports.iter().map(|r| r.stored).sum();
                out!(
                    "imported {} files, {} ({} new on the volume){}",
                    reports.len(),
                    bytes(total),
                    bytes(stored),
                    if skipped.is_empty() { String::new() } else { format!("; skipped {} entries that are not regular files", skipped.len()) }
                );
            }
            Exported { dir, reports } => {
                let total: u64 = reports.iter().map(|r| r.bytes).sum();
                out!("exported {} datasets, {}, below {}", reports.len(), bytes(total), dir.display());
            }
            Settings(pairs) => {
                for (k, v) in pairs {
                    out!("{k} = {v}");
                }
            }
            MkStatus(st) => {
                let mut t = Table::new(&["REGISTER", "MKVP", "SINCE", "KEYS"]);
                for r in &st.registers {
                    t.row(vec![r.register.clone(), r.mkvp.clone(), when(Some(r.since)), r.keys.to_string()]);
                }
                o.push_str(&t.render());
                for (m, n) in &st.orphaned {
                    out!("warning: {n} keys are wrapped under master key {m}, which no register holds: recover them from a keystore backup or escrow");
                }
            }
            MkLoaded(m) => {
                out!("loaded the NEW master key register: MKVP {m}");
                out!("next: `custos mk activate`, then `custos mk reencipher`");
            }
            MkActivated(st) => {
                out!("activated: NEW is now CURRENT, the previous CURRENT is OLD");
                for r in &st.registers {
                    out!("  {:<8} {}  {} keys", r.register, r.mkvp, r.keys);
                }
                if st.registers.iter().any(|r| r.register == "OLD" && r.keys > 0) {
                    out!("next: `custos mk reencipher` moves the keys still under OLD to CURRENT");
                }
            }
            Reenciphered(r) => match &r.from {
                Some(f) => out!("re-enciphered {} keys from master key {f} to {}", r.moved, r.to),
                None => out!("no OLD master key: nothing to re-encipher"),
            },
            KeystoreBackup(b) => out!(
                "keystore backup {} on volume {}: {} keys, under master keys {}",
                b.id,
                b.volume,
                b.key_count,
                b.mkvps.join(", ")
            ),
            VaultBackup(b) => out!(
                "vault backup {} on volume {}: the catalog up to audit entry {} ({} datasets, {} keys) and the HSM's state, {} bytes, read back and opened",
                b.id,
                b.volume,
                b.audit_seq,
                b.datasets,
                b.keys,
                b.bytes
            ),
            VaultPruned { decisions, dry_run } => {
                let gone = decisions.iter().filter(|d| !d.keep).count();
                for d in decisions.iter().filter(|d| !d.keep) {
                    let b = &d.backup;
                    out!(
                        "{} vault backup {} on volume {} ({}, up to audit entry {})",
                        if *dry_run { "would delete" } else { "deleted" },
                        b.id,
                        b.volume,
                        when(Some(b.created_at)),
                        b.audit_seq
                    );
                }
                out!(
                    "{} of {} vault backups kept{}",
                    decisions.len() - gone,
                    decisions.len(),
                    if *dry_run { " (dry run: nothing deleted)" } else { "" }
                );
            }
            VaultBackups(bs) => {
                let mut t = Table::new(&["ID", "VOLUME", "CREATED", "AUDIT ENTRIES", "BYTES"]);
                for b in bs {
                    t.row(vec![
                        b.id.clone(),
                        b.volume.to_string(),
                        b.created_at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
                        b.audit_seq.to_string(),
                        b.bytes.to_string(),
                    ]);
                }
                o.push_str(&t.render());
            }
            KeystoreBackups(bs) => {
                let mut t = Table::new(&["ID", "VOLUME", "CREATED", "KEYS", "MASTER KEYS (MKVP)"]);
                for b in bs {
                    t.row(vec![
                        b.id.clone(),
                        b.volume.to_string(),
                        when(Some(b.created_at)),
                        b.key_count.to_string(),
                        b.mkvps.join(", "),
                    ]);
                }
                o.push_str(&t.render());
            }
            EscrowCreated(kbk) => {
                out!(
                    "created key-backup key {}: any {} of {} custodians can recover escrowed keys",
                    kbk.id,
                    kbk.threshold,
                    kbk.custodians.len()
                );
                out!(
                    "each share is sealed to its custodian's registered recipient; each of {} now runs `custos escrow share --out FILE` and `custos escrow confirm`",
                    escape(&kbk.custodians.join(", "))
                );
            }
            CustodianRegistered(k) => out!(
                "registered {} as the custodian recipient of {}; shares sealed from now on go to it",
                custos_core::recipient_to_text(&k.public),
                escape(&k.principal)
            ),
            SealedShare { text, .. } => o.push_str(text),
            ShareConfirmed(s) => out!(
                "{} confirmed holding a share of {} that opens",
                escape(&s.custodian),
                escape(&s.kbk)
            ),
            Contributed { request, given, need } => out!(
                "request {}: shares given by {} ({} of {} needed); the recovery runs when the next custodian approves with theirs",
                request.id,
                escape(&given.join(", ")),
                given.len(),
                need
            ),
            EscrowStatus(st) => {
                for k in &st.kbks {
                    out!(
                        "{}  {} of {}  created {}",
                        k.id,
                        k.threshold,
                        k.custodians.join(", "),
                        when(Some(k.created_at))
                    );
                }
                for sh in &st.shares {
                    match sh.confirmed_at {
                        Some(t) => out!("  share of {}: confirmed {}", escape(&sh.custodian), when(Some(t))),
                        None => out!(
                            "  share of {}: NOT confirmed ({} has not shown it opens: `custos escrow confirm`)",
                            escape(&sh.custodian),
                            escape(&sh.custodian)
                        ),
                    }
                }
                out!("{} keys escrowed, {} keys without an escrow copy", st.keys_escrowed, st.keys_not_escrowed.len());
                for l in &st.keys_not_escrowed {
                    out!("  not escrowed: {l}");
                }
            }
            Mirrors { list, .. } => o.push_str(&mirror_table(list)),
            Snapshot(sn) => {
                out!("snapshot {}: {} generation {} ({})", sn.id, sn.dataset, sn.generation, bytes(sn.size))
            }
            Snapshots(sns) => {
                let mut t = Table::new(&["ID", "DATASET", "GEN", "VOLUME", "KEY", "SIZE", "CREATED", "CHECKED"]);
                for s in sns {
                    t.row(vec![
                        s.id.to_string(),
                        s.dataset.to_string(),
                        s.generation.to_string(),
                        s.volume.to_string(),
                        s.key_label.to_string(),
                        bytes(s.size),
                        when(Some(s.created_at)),
                        checked(s.checked.as_ref()),
                    ]);
                }
                o.push_str(&t.render());
            }
            SnapshotRestored { id, report: r } => out!(
                "restored snapshot {} as {} generation {} ({}); verified",
                id,
                r.dataset,
                r.generation,
                bytes(r.size)
            ),
            BackupsMade { made, method, to } => {
                for (n, b) in made {
                    match b {
                        Some(b) => out!(
                            "backup {}: {} copy of {} generation {} ({}) on volume {} under key {}",
                            b.id,
                            b.method,
                            n,
                            b.source_generation,
                            bytes(b.size),
                            b.volume,
                            b.key_label
                        ),
                        None => {
                            out!("{n}: its current generation already has a {} copy on {to}", methods(*method))
                        }
                    }
                }
            }
            Backups(bs) => {
                let mut t =
                    Table::new(&["ID", "DATASET", "GEN", "METHOD", "VOLUME", "KEY", "SIZE", "CREATED", "CHECKED"]);
                for b in bs {
                    t.row(vec![
                        b.id.to_string(),
                        b.dataset.to_string(),
                        b.source_generation.to_string(),
                        b.method.to_string(),
                        b.volume.to_string(),
                        b.key_label.to_string(),
                        bytes(b.size),
                        when(Some(b.created_at)),
                        checked(b.checked.as_ref()),
                    ]);
                }
                o.push_str(&t.render());
            }
            Backup { backup: b, volume: vol } => {
                out!("backup       {}", b.id);
                out!("dataset      {} generation {}", b.dataset, b.source_generation);
                out!(
                    "method       {}",
                    match b.method {
                        CopyMethod::Raw => "raw (sealed bytes copied as they are; shares the primary's key)",
                        CopyMethod::Logical => "logical (re-sealed under a separate backup key)",
                        CopyMethod::Plaintext =>
                            "plaintext (NOT ENCRYPTED: needs no key, and whoever holds the medium reads it)",
                    }
                );
                out!("volume       {} (site {}, {})", vol.name, vol.site, vol.medium);
                if b.method == CopyMethod::Plaintext {
                    out!("key          none (its source was sealed under {})", b.key_label);
                } else {
                    out!("key          {}", b.key_label);
                }
                out!("size         {} in {} chunks", bytes(b.size), b.chunk_count);
                out!("created      {}", when(Some(b.created_at)));
                match &b.checked {
                    Some(c) => match &c.problem {
                        Some(p) => out!("checked      {}: DAMAGED: {p}", checked(Some(c))),
                        None => out!("checked      {}: intact", checked(Some(c))),
                    },
                    None => out!("checked      never (`custos backup verify --read-data` reads it back)"),
                }
            }
            Pruned { decisions, dry_run } => {
                let gone = decisions.iter().filter(|d| !d.keep).count();
                for d in decisions.iter().filter(|d| !d.keep) {
                    let b = &d.backup;
                    out!(
                        "{} backup {} ({} of {} generation {}, {})",
                        if *dry_run { "would delete" } else { "deleted" },
                        b.id,
                        b.method,
                        b.dataset,
                        b.source_generation,
                        when(Some(b.created_at))
                    );
                }
                out!(
                    "{} of {} backups kept{}",
                    decisions.len() - gone,
                    decisions.len(),
                    if *dry_run { " (dry run)" } else { "" }
                );
            }
            BackupsVerified { list, read_data } => {
                for v in list {
                    match &v.error {
                        None => out!("backup {} ({} of {}): ok", v.id, v.method, v.dataset),
                        // Say what is wrong with the copy, not more: an
                        // unreachable volume or a missing key says nothing
                        // about its bytes.
                        Some(e) => {
                            let what = match v.code {
                                Some(Code::Integrity) | None => "DAMAGED",
                                Some(Code::KeyState) => "UNREADABLE (its key)",
                                Some(Code::Unavailable) => "NOT CHECKED (unreachable)",
                                Some(_) => "FAILED",
                            };
                            out!("backup {} ({} of {}): {what}: {e}", v.id, v.method, v.dataset)
                        }
                    }
                }
                if list.iter().all(|v| v.ok) {
                    out!("{} backups verified{}", list.len(), if *read_data { ", every chunk read" } else { "" });
                }
            }
            Restored(rs) => {
                for (source, r) in rs {
                    out!(
                        "restored backup {} ({} copy of {}) as {} generation {}: {} under key {}{}; verified",
                        r.backup,
                        r.method,
                        source,
                        r.dataset,
                        r.generation,
                        bytes(r.size),
                        r.key_label,
                        if r.new_key { " (new: the dataset's own key can no longer encrypt)" } else { "" }
                    );
                }
            }
            HsmRun { actions, gc } => {
                if let Some(g) = gc {
                    if g.released + g.orphans + g.temp_files > 0 {
                        out!(
                            "gc: deleted {} released and {} unreferenced objects and {} temp files ({})",
                            g.released,
                            g.orphans,
                            g.temp_files,
                            bytes(g.bytes)
                        );
                    }
                    for f in &g.failed {
                        out!("gc: NOT DELETED {f}");
                    }
                }
                if actions.is_empty() {
                    out!("nothing to do: every dataset is backed up as its rule says, and none is due for migration");
                }
                for a in actions {
                    out!("{} [{}] {}: {}", a.dataset, a.rule, a.action, a.detail);
                }
            }
            HsmRule(r) => out!("added hsm rule {} for {}", r.name, r.pattern),
            HsmRules(rules) => {
                let mut t = Table::new(&["NAME", "PATTERN", "BACKUP", "KEEP (last/daily/monthly/yearly)", "MIGRATE"]);
                for r in rules {
                    t.row(vec![
                        r.name.clone(),
                        r.pattern.to_string(),
                        r.backup_to
                            .as_ref()
                            .map(|v| format!("{} to {v}", r.method.as_str()))
                            .unwrap_or_else(|| "-".into()),
                        format!("{}/{}/{}/{}", r.keep_last, r.keep_daily, r.keep_monthly, r.keep_yearly),
                        match (r.migrate_after_days, &r.migrate_to) {
                            (Some(d), Some(v)) => format!("to {v} after {d} days unused"),
                            _ => "-".into(),
                        },
                    ]);
                }
                o.push_str(&t.render());
            }
            Moved(m) => {
                if m.from == m.to {
                    out!("{}: generation {} is on {} already; nothing moved", m.dataset, m.generation, m.to);
                } else {
                    out!(
                        "{}: generation {} ({} chunks) moved from {} to {}",
                        m.dataset,
                        m.generation,
                        m.chunks,
                        m.from,
                        m.to
                    );
                }
            }
            NotMigrated(d) => out!("{d} is not migrated"),
            RiskReport(r, dual) => o.push_str(&custos_risk::report::render_table(r, *dual)),
            Drill(cells) => {
                let skipped = cells.iter().filter(|c| c.not_drilled.is_some()).count();
                let bad = cells.iter().filter(|c| !c.agrees).count() - skipped;
                let mut t = Table::new(&["DATASET", "THREATS", "MODELED", "PROVEN", "HOW"]);
                for c in cells {
                    let (proven, how) = match &c.not_drilled {
                        Some(why) => ("NOT DRILLED".to_string(), why.clone()),
                        None => (
                            format!(
                                "{}{}",
                                if c.proven { "survives" } else { "lost" },
                                if c.agrees { "" } else { "  <- DISAGREES" }
                            ),
                            c.how.clone(),
                        ),
                    };
                    t.row(vec![
                        c.dataset.clone(),
                        c.threats.iter().map(|t| t.name()).collect::<Vec<_>>().join(" + "),
                        c.modeled.cell(),
                        proven,
                        how,
                    ]);
                }
                o.push_str(&t.render());
                out!(
                    "\n{} cells: {} agree with the model, {} disagree, {} could not be drilled",
                    cells.len(),
                    cells.len() - bad - skipped,
                    bad,
                    skipped
                );
            }
            Audit(rows) => {
                let mut t = Table::new(&["SEQ", "TIME", "PRINCIPAL", "ACTION", "OBJECT", "RESULT"]);
                for r in rows {
                    t.row(vec![
                        r.seq.to_string(),
                        when(Some(r.at)),
                        crate::render::escape(&r.principal),
                        crate::render::escape(&r.action),
                        crate::render::escape(&r.object),
                        crate::render::escape(&r.result),
                    ]);
                }
                o.push_str(&t.render());
            }
            CatalogCheck(c) => {
                for f in &c.faults {
                    out!("{} {}: {}", f.table, crate::render::escape(&f.row), f.why);
                }
                if c.faults.is_empty() {
                    out!("catalog intact: {} rows checked against the HSM's catalog key", c.rows);
                }
                if c.unsealed > 0 {
                    out!(
                        "{} rows (raw copies, snapshots or mirrors made without the passphrase) carry no MAC: they are not authenticated",
                        c.unsealed
                    );
                }
            }
            AuditVerdict(v, c) => {
                if let Some(c) = c {
                    for p in &c.problems {
                        out!("{}", crate::render::escape(p));
                    }
                    if c.problems.is_empty() {
                        out!(
                            "matches volume {}: {} entries in {} segments, through entry {}; {} newer entries not exported yet",
                            c.volume,
                            c.exported,
                            c.segments,
                            c.through,
                            c.not_exported
                        );
                    }
                }
                if v.problem.is_none() {
                    out!(
                        "audit log intact: {} entries ({} keyed), anchored in the HSM up to entry {}, {} signed checkpoints",
                        v.entries,
                        v.keyed,
                        v.anchored.unwrap_or(0),
                        v.checkpoints
                    );
                    if v.unverifiable > 0 {
                        out!(
                            "{} entries were keyed under an audit key lost with its HSM (vault rebuild): their links were taken as they are",
                            v.unverifiable
                        );
                    }
                }
            }
            AuditExported(x) => match &x.segment {
                Some(id) => out!(
                    "exported audit entries {} to {} ({} entries) to volume {} as segment {id}, read back",
                    x.first,
                    x.last,
                    x.entries,
                    x.volume
                ),
                None => out!("nothing to export: volume {} holds every entry through {}", x.volume, x.last),
            },
            CredentialChanged { name, token } => {
                out!("user {name} has a new credential; the old one no longer works");
                if let Some(t) = token {
                    out!("token (shown once; store it where the script reads CUSTOS_CREDENTIAL): {}", t.expose());
                }
            }
            UserAdded { user, token } => {
                out!(
                    "added user {} ({})",
                    user.name,
                    user.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
                );
                if let Some(t) = token {
                    out!("token (shown once; store it where the script reads CUSTOS_CREDENTIAL): {}", t.expose());
                }
            }
            Users(us) => {
                let mut t = Table::new(&["USER", "ROLES", "DATA GRANTS", "KEY GRANTS", "STATE"]);
                for u in us {
                    let list = |ps: &[custos_core::model::Pattern]| {
                        ps.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" ")
                    };
                    t.row(vec![
                        u.name.clone(),
                        u.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(","),
                        list(&u.data_grants),
                        list(&u.key_grants),
                        if u.disabled { "disabled".into() } else { "enabled".into() },
                    ]);
                }
                o.push_str(&t.render());
            }
            Requests(rs) => {
                for r in rs {
                    out!("{}", r.line());
                }
            }
            Request(r) => o.push_str(&r.detail()),
            RequestCreated { request: r, token } => {
                out!(
                    "request {}: {} is under dual control; it runs when another authorized principal approves it with `custos request approve {}` (before {})",
                    r.id,
                    r.action,
                    r.id,
                    r.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC")
                );
                if let Some(t) = token {
                    out!("token of the new user, valid once the request is approved (shown once; store it where the script reads CUSTOS_CREDENTIAL): {}", t.expose());
                }
            }
            Approved { request, result } => {
                out!(
                    "request {} approved by {}; running: {}",
                    request.id,
                    request.decided_by.as_deref().unwrap_or("?"),
                    request.summary
                );
                o.push_str(&result.text());
            }
            Monitor(r) => {
                if r.alerts.is_empty() {
                    out!("no alerts");
                }
                for a in &r.alerts {
                    out!("[{}] {}: {}", a.code, a.subject, a.detail);
                }
            }
            Fsck(r) => {
                for v in &r.volumes {
                    match &v.unreachable {
                        Some(why) => out!("volume {}: UNREACHABLE: {why}", v.volume),
                        None => out!(
                            "volume {}: {} objects referenced, {} missing, {} damaged; {} unreferenced ({}, {} in the trash), {} temp files",
                            v.volume,
                            v.referenced,
                            v.missing.len(),
                            v.damaged.len(),
                            v.unreferenced,
                            bytes(v.unreferenced_bytes),
                            v.in_trash,
                            v.temp_files
                        ),
                    }
                    for m in &v.missing {
                        out!("  MISSING {m}");
                    }
                    for d in &v.damaged {
                        out!("  DAMAGED {d}");
                    }
                }
                for c in &r.catalog {
                    out!("catalog: {c}");
                }
                if r.clean() {
                    let reclaim: u64 = r.volumes.iter().map(|v| v.unreferenced + v.temp_files).sum();
                    if reclaim > 0 {
                        out!("everything the catalog needs is there; {reclaim} objects are not needed: `custos gc` deletes them after the grace period");
                    } else {
                        out!(
                            "everything the catalog needs is there{}",
                            if r.read_data { ", and every chunk opened" } else { "" }
                        );
                    }
                }
            }
            Gc { report: r, grace } => {
                let verb = if r.dry_run { "would delete" } else { "deleted" };
                out!(
                    "{verb} {} released objects, {} unreferenced objects and {} temp files ({}); {} released objects are within the grace period of {grace}",
                    r.released,
                    r.orphans,
                    r.temp_files,
                    bytes(r.bytes),
                    r.waiting
                );
                for f in &r.failed {
                    out!("  NOT DELETED {f}");
                }
            }
        }
        o
    }
}

#[cfg(test)]
mod write_json_tests {
    use super::*;
    use custos_core::model::{KeyLabel, Purpose};

    fn key(label: &str) -> KeyRecord {
        KeyRecord {
            label: KeyLabel::new(label).unwrap(),
            state: KeyState::Active,
            purpose: Purpose::Prim,
            app: "APP".into(),
            wrapped: None,
            mkvp: custos_crypto::Mkvp([1; 8]),
            kcv: custos_crypto::Kcv([2; 5]),
            created_at: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
            activated_at: None,
            deactivated_at: None,
            destroyed_at: None,
            expires_at: None,
            last_used_at: None,
            use_count: 3,
            escrow: None,
            attributes: Default::default(),
        }
    }

    /// What a list writes an element at a time is the text of its tree.
    #[test]
    fn a_list_written_element_by_element_reads_as_its_json_tree() {
        let due: std::collections::BTreeMap<String, jiff::Timestamp> =
            [("A.PRIM.APP.key002".to_string(), jiff::Timestamp::from_second(1_800_000_000).unwrap())].into();
        let keys = Reply::Keys(vec![key("A.PRIM.APP.key001"), key("A.PRIM.APP.key002")], due);
        let mut streamed = Vec::new();
        keys.write_json(&mut streamed).unwrap();
        assert_eq!(String::from_utf8(streamed).unwrap(), serde_json::to_string_pretty(&keys.json()).unwrap());
        let text = serde_json::to_string_pretty(&keys.json()).unwrap();
        assert_eq!(text.matches("destroy_at").count(), 1, "only the key due for destruction: {text}");
        for empty in [Reply::Datasets(vec![]), Reply::Backups(vec![])] {
            let mut w = Vec::new();
            empty.write_json(&mut w).unwrap();
            assert_eq!(w, b"[]");
        }
    }
}

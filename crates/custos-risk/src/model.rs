//! The threat model, in one place: the vault as a graph (dataset → copies →
//! keys → master keys and keystore backups), the threats, and what each
//! does to the graph. [`evaluate`] answers, for one dataset and a set of
//! threats striking together, whether it survives and through which copy.

use std::collections::{BTreeMap, HashMap, HashSet};

use jiff::Timestamp;
use serde::Serialize;

/// A threat, as the paper's tables list them, plus the key-management ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Threat {
    /// A process error writes bad data through the access method; mirrors
    /// replicate it.
    FileCorruption,
    /// Someone corrupts the dataset's stored chunks on its volume (and, as
    /// writes replicate, on that volume's mirror).
    MaliciousCorruption,
    /// The dataset is deleted (`ds rm`); mirrors replicate the deletion.
    AccidentalDeletion,
    /// The dataset's volume is lost.
    DiskFailure,
    /// Every volume at the dataset's site is lost.
    SiteLoss,
    /// The dataset's data key is destroyed or corrupted in the keystore.
    DataKeyLoss,
    /// The HSM's master keys are lost: every wrapped key is unreadable.
    MasterKeyLoss,
    /// The keystore (every wrapped key, and the escrow copies kept with it)
    /// is lost.
    KeystoreLoss,
}

impl Threat {
    pub const ALL: [Threat; 8] = [
        Threat::FileCorruption,
        Threat::MaliciousCorruption,
        Threat::AccidentalDeletion,
        Threat::DiskFailure,
        Threat::SiteLoss,
        Threat::DataKeyLoss,
        Threat::MasterKeyLoss,
        Threat::KeystoreLoss,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::FileCorruption => "file-corruption",
            Self::MaliciousCorruption => "malicious-corruption",
            Self::AccidentalDeletion => "accidental-deletion",
            Self::DiskFailure => "disk-failure",
            Self::SiteLoss => "site-loss",
            Self::DataKeyLoss => "data-key-loss",
            Self::MasterKeyLoss => "master-key-loss",
            Self::KeystoreLoss => "keystore-loss",
        }
    }

    /// The row title in the paper's words where it has them.
    pub fn title(self) -> &'static str {
        match self {
            Self::FileCorruption => "File corruption",
            Self::MaliciousCorruption => "Malicious corruption",
            Self::AccidentalDeletion => "Accidental data set deletion",
            Self::DiskFailure => "Disk failure",
            Self::SiteLoss => "Data centre loss",
            Self::DataKeyLoss => "Key loss",
            Self::MasterKeyLoss => "Master key loss",
            Self::KeystoreLoss => "Keystore loss",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Every unordered pair of distinct threats.
    pub fn pairs() -> Vec<(Threat, Threat)> {
        let mut out = Vec::new();
        for (i, a) in Self::ALL.iter().enumerate() {
            for b in &Self::ALL[i + 1..] {
                out.push((*a, *b));
            }
        }
        out
    }
}

/// What a copy is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyKind {
    /// The dataset itself.
    Primary,
    /// The dataset on its volume's synchronous mirror.
    Mirror,
    /// A snapshot (same volume, same key).
    Snapshot,
    /// A logical backup (its own BACK key).
    Logical,
    /// A raw backup (the primary's key).
    Raw,
}

impl CopyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Mirror => "mirror",
            Self::Snapshot => "snapshot",
            Self::Logical => "logical copy",
            Self::Raw => "raw copy",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct VolumeNode {
    pub site: String,
    pub tape: bool,
    /// The secondary this volume is mirrored to.
    pub mirror: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KeyNode {
    /// Has material in the keystore (not destroyed).
    pub present: bool,
    pub escrowed: bool,
    pub mkvp: String,
    pub created_at: Timestamp,
    pub destroyed_at: Option<Timestamp>,
    /// Active, pre-active, deactivated, compromised, destroyed.
    pub state: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct KeystoreBackupNode {
    pub id: String,
    pub volume: String,
    pub created_at: Timestamp,
    pub mkvps: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CopyNode {
    pub kind: CopyKind,
    /// "backup 12", "snapshot 3", or the volume for the primary and mirror.
    pub id: String,
    pub volume: String,
    pub key: String,
    pub created_at: Timestamp,
    /// For a snapshot: it shares chunk objects with the current generation,
    /// so corrupting those corrupts it too.
    pub shares_current: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct DatasetNode {
    pub name: String,
    pub app: String,
    pub volume: String,
    pub key: String,
    pub generation: u64,
    pub last_access: Timestamp,
    /// Snapshots and backups, newest first (the primary and mirror are
    /// derived from `volume`).
    pub copies: Vec<CopyNode>,
}

/// The vault as the analyzer sees it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Graph {
    pub volumes: BTreeMap<String, VolumeNode>,
    pub keys: HashMap<String, KeyNode>,
    /// MKVPs of the master keys the HSM holds (CURRENT, OLD).
    pub held_mkvps: Vec<String>,
    /// A key-backup key exists whose custodians hold shares.
    pub escrow_ready: bool,
    pub keystore_backups: Vec<KeystoreBackupNode>,
    pub datasets: Vec<DatasetNode>,
    /// The sites of the vault's own directory (catalog and HSM file).
    pub vault_sites: Vec<String>,
    /// The volumes that hold a vault backup.
    pub vault_backup_volumes: Vec<String>,
}

/// How a key is reached after the threats.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "path", rename_all = "kebab-case")]
pub enum KeyPath {
    /// The keystore holds it, under a master key the HSM holds.
    Live,
    /// Restored from a keystore backup.
    KeystoreBackup { id: String },
    /// Unsealed from its escrow copy by the custodians.
    Escrow,
}

/// The answer for one dataset under one set of threats.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// The dataset itself is untouched.
    Unaffected,
    /// A copy saves it with no key recovery.
    Survives { kind: CopyKind, copy: String, volume: String, key: String },
    /// A copy saves it once its key is recovered by `path`.
    SurvivesIf { kind: CopyKind, copy: String, volume: String, key: String, path: KeyPath },
    /// Nothing saves it.
    Lost { why: String },
}

impl Verdict {
    pub fn survives(&self) -> bool {
        !matches!(self, Verdict::Lost { .. })
    }

    /// A short cell for tables.
    pub fn cell(&self) -> String {
        match self {
            Verdict::Unaffected => "unaffected".into(),
            Verdict::Survives { kind, copy, .. } => format!("yes: {}", short(*kind, copy)),
            Verdict::SurvivesIf { kind, copy, path, .. } => format!(
                "if key from {}: {}",
                match path {
                    KeyPath::Live => "keystore".to_string(),
                    KeyPath::KeystoreBackup { .. } => "ks backup".to_string(),
                    KeyPath::Escrow => "escrow".to_string(),
                },
                short(*kind, copy)
            ),
            Verdict::Lost { .. } => "NO".into(),
        }
    }

    /// One sentence.
    pub fn explain(&self) -> String {
        match self {
            Verdict::Unaffected => "the dataset itself is untouched".into(),
            Verdict::Survives { kind: CopyKind::Mirror, volume, key, .. } => {
                format!("survives on its mirror {volume} (reads fail over) under {key}")
            }
            Verdict::Survives { kind, copy, volume, key } => {
                format!("survives through the {} ({copy}) on {volume} under {key}", kind.as_str())
            }
            Verdict::SurvivesIf { kind, copy, volume, key, path } => format!(
                "{} if its key {key} is recovered from {}",
                match kind {
                    CopyKind::Primary => format!("the dataset itself (on {volume}) survives"),
                    CopyKind::Mirror => format!("survives on its mirror {volume}"),
                    k => format!("survives through the {} ({copy}) on {volume}", k.as_str()),
                },
                match path {
                    KeyPath::Live => "the keystore".to_string(),
                    KeyPath::KeystoreBackup { id } => format!("keystore backup {id}"),
                    KeyPath::Escrow => "escrow (the custodians' shares)".to_string(),
                }
            ),
            Verdict::Lost { why } => format!("lost: {why}"),
        }
    }
}

fn short(kind: CopyKind, copy: &str) -> String {
    match kind {
        CopyKind::Primary | CopyKind::Mirror => format!("{} {copy}", kind.as_str()),
        _ => copy.to_string(),
    }
}

/// What a set of threats does to one dataset's world.
#[derive(Default)]
struct Damage<'a> {
    lost_volumes: HashSet<&'a str>,
    lost_keys: HashSet<&'a str>,
    master_lost: bool,
    keystore_lost: bool,
    content_bad: bool,
    chunks_bad: bool,
    deleted: bool,
}

fn damage<'a>(g: &'a Graph, d: &'a DatasetNode, threats: &[Threat]) -> Damage<'a> {
    let mut dmg = Damage::default();
    for t in threats {
        match t {
            Threat::FileCorruption => dmg.content_bad = true,
            Threat::MaliciousCorruption => dmg.chunks_bad = true,
            Threat::AccidentalDeletion => dmg.deleted = true,
            Threat::DiskFailure => {
                dmg.lost_volumes.insert(d.volume.as_str());
            }
            Threat::SiteLoss => {
                if let Some(site) = g.volumes.get(&d.volume).map(|v| &v.site) {
                    dmg.lost_volumes.extend(g.volumes.iter().filter(|(_, v)| v.site == *site).map(|(n, _)| n.as_str()));
                }
            }
            Threat::DataKeyLoss => {
                dmg.lost_keys.insert(d.key.as_str());
            }
            Threat::MasterKeyLoss => dmg.master_lost = true,
            Threat::KeystoreLoss => dmg.keystore_lost = true,
        }
    }
    dmg
}

impl Damage<'_> {
    fn volume_lost(&self, v: &str) -> bool {
        self.lost_volumes.contains(v)
    }
}

/// Whether a volume can still be read: it, or its mirror, survives.
fn readable(g: &Graph, dmg: &Damage<'_>, v: &str) -> bool {
    !dmg.volume_lost(v) || g.volumes.get(v).and_then(|n| n.mirror.as_deref()).is_some_and(|m| !dmg.volume_lost(m))
}

/// How key `label` can be had after the damage, if at all.
fn key_path(g: &Graph, dmg: &Damage<'_>, label: &str) -> Result<KeyPath, String> {
    let Some(k) = g.keys.get(label) else { return Err(format!("key {label} is not in the keystore")) };
    let held: &[String] = if dmg.master_lost { &[] } else { &g.held_mkvps };
    if k.present && !dmg.lost_keys.contains(label) && !dmg.keystore_lost && held.contains(&k.mkvp) {
        return Ok(KeyPath::Live);
    }
    // Keystore backups taken while the key had material, readable, and
    // wrapped under master keys the HSM still holds. Newest first.
    let mut ksbs: Vec<&KeystoreBackupNode> = g
        .keystore_backups
        .iter()
        .filter(|b| b.created_at >= k.created_at && k.destroyed_at.is_none_or(|t| t > b.created_at))
        .collect();
    ksbs.sort_by_key(|b| std::cmp::Reverse(b.created_at));
    let mut retired = false;
    for b in &ksbs {
        if !readable(g, dmg, &b.volume) {
            continue;
        }
        let mkvp = if b.mkvps.contains(&k.mkvp) { &k.mkvp } else { b.mkvps.first().unwrap_or(&k.mkvp) };
        if held.contains(mkvp) {
            return Ok(KeyPath::KeystoreBackup { id: b.id.clone() });
        }
        retired = true;
    }
    if k.escrowed && g.escrow_ready && !dmg.keystore_lost {
        return Ok(KeyPath::Escrow);
    }
    let mut why = format!("key {label}");
    why += if !k.present {
        " was destroyed"
    } else if dmg.lost_keys.contains(label) {
        " is lost"
    } else if dmg.keystore_lost {
        " went with the keystore"
    } else {
        " is wrapped under a master key the HSM no longer holds"
    };
    if retired {
        why += ", and its keystore backups are wrapped under master keys the HSM no longer holds";
    } else if ksbs.is_empty() {
        why += ", no keystore backup holds it";
    } else {
        why += ", and no keystore backup that holds it can be read";
    }
    if !k.escrowed {
        why += ", it has no escrow copy";
    }
    Err(why)
}

/// Evaluate one dataset under a set of threats striking together.
pub fn evaluate(g: &Graph, d: &DatasetNode, threats: &[Threat]) -> Verdict {
    let dmg = damage(g, d, threats);
    let primary_data = !dmg.content_bad && !dmg.chunks_bad && !dmg.deleted;
    // Candidates in order of preference.
    let mut candidates: Vec<(CopyKind, String, &str, &str, bool)> = Vec::new();
    candidates.push((
        CopyKind::Primary,
        d.volume.clone(),
        &d.volume,
        &d.key,
        primary_data && !dmg.volume_lost(&d.volume),
    ));
    if let Some(m) = g.volumes.get(&d.volume).and_then(|v| v.mirror.as_deref()) {
        candidates.push((CopyKind::Mirror, m.to_string(), m, &d.key, primary_data && !dmg.volume_lost(m)));
    }
    let mut rest: Vec<&CopyNode> = d.copies.iter().collect();
    rest.sort_by_key(|c| (c.kind, std::cmp::Reverse(c.created_at)));
    for c in rest {
        let data = readable(g, &dmg, &c.volume)
            && match c.kind {
                CopyKind::Snapshot => !(dmg.chunks_bad && c.shares_current),
                _ => true,
            };
        candidates.push((c.kind, c.id.clone(), &c.volume, &c.key, data));
    }
    let mut first_if: Option<Verdict> = None;
    let mut reasons: Vec<String> = Vec::new();
    for (kind, id, volume, key, data) in candidates {
        if !data {
            continue;
        }
        match key_path(g, &dmg, key) {
            Ok(KeyPath::Live) if kind == CopyKind::Primary => return Verdict::Unaffected,
            Ok(KeyPath::Live) => {
                return Verdict::Survives { kind, copy: id, volume: volume.to_string(), key: key.to_string() }
            }
            Ok(path) => {
                first_if.get_or_insert(Verdict::SurvivesIf {
                    kind,
                    copy: id,
                    volume: volume.to_string(),
                    key: key.to_string(),
                    path,
                });
            }
            Err(why) => {
                if !reasons.contains(&why) {
                    reasons.push(why);
                }
            }
        }
    }
    if let Some(v) = first_if {
        return v;
    }
    let mut why = Vec::new();
    let names: Vec<&str> = threats.iter().map(|t| t.name()).collect();
    if d.copies.is_empty() && g.volumes.get(&d.volume).is_none_or(|v| v.mirror.is_none()) {
        why.push("the dataset has no copy at all".to_string());
    } else if reasons.is_empty() {
        why.push(format!("{} reaches every copy", names.join(" + ")));
    } else {
        why.push(format!(
            "every copy that {} leaves intact needs a key that is gone: {}",
            names.join(" + "),
            reasons.join("; ")
        ));
    }
    Verdict::Lost { why: why.join("; ") }
}

/// How key `label` can be had today, with no threat applied.
pub fn evaluate_key_today(g: &Graph, label: &str) -> Result<KeyPath, String> {
    key_path(g, &Damage::default(), label)
}

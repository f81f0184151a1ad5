//! The threat model, in one place: the vault as a graph (dataset → copies →
//! keys → master keys and keystore backups), the threats, and what each
//! does to the graph. [`evaluate`] answers, for one dataset and a set of
//! threats striking together, whether it survives and through which copy.

use std::collections::{BTreeMap, HashMap, HashSet};

use custos_core::model::CopyCheck;
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
    /// The catalog is lost (the record of datasets, copies and keys).
    CatalogLoss,
    /// The software HSM is lost whole: its master keys, and the catalog and
    /// audit keys kept in it.
    HsmLoss,
}

impl Threat {
    pub const ALL: [Threat; 10] = [
        Threat::FileCorruption,
        Threat::MaliciousCorruption,
        Threat::AccidentalDeletion,
        Threat::DiskFailure,
        Threat::SiteLoss,
        Threat::DataKeyLoss,
        Threat::MasterKeyLoss,
        Threat::KeystoreLoss,
        Threat::CatalogLoss,
        Threat::HsmLoss,
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
            Self::CatalogLoss => "catalog-loss",
            Self::HsmLoss => "hsm-loss",
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
            Self::CatalogLoss => "Catalog loss",
            Self::HsmLoss => "HSM loss",
        }
    }

    /// The paper's Table 1 (no encryption): the threats to data alone.
    pub const UNENCRYPTED: [Threat; 5] = [
        Threat::FileCorruption,
        Threat::MaliciousCorruption,
        Threat::AccidentalDeletion,
        Threat::DiskFailure,
        Threat::SiteLoss,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Every unordered pair of distinct threats.
    pub fn pairs() -> Vec<(Threat, Threat)> {
        Self::pairs_of(&Self::ALL)
    }

    /// Every unordered pair of distinct threats among `of`.
    pub fn pairs_of(of: &[Threat]) -> Vec<(Threat, Threat)> {
        let mut out = Vec::new();
        for (i, a) in of.iter().enumerate() {
            for b in &of[i + 1..] {
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
    /// A plaintext copy on tape: needs no key, and is not encrypted.
    Plaintext,
}

impl CopyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Mirror => "mirror",
            Self::Snapshot => "snapshot",
            Self::Logical => "logical copy",
            Self::Raw => "raw copy",
            Self::Plaintext => "plaintext copy",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct VolumeNode {
    pub site: String,
    /// A local volume whose directory (or label) is not there now.
    pub missing: bool,
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
    /// When its scheduled destruction falls due: until then it cannot be
    /// used, and `key cancel-destroy` brings it back.
    pub destroy_after: Option<Timestamp>,
    /// Why its record does not unwrap to its check value, when the HSM
    /// checked it and it did not.
    pub damaged: Option<String>,
    /// When it stops encrypting new data (it still decrypts after).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KeystoreBackupNode {
    pub id: String,
    pub volume: String,
    pub created_at: Timestamp,
    pub mkvps: Vec<String>,
    /// Each key it holds and the MKVP it is wrapped under there, when the
    /// object was read back and matched its recorded hash.
    #[serde(skip)]
    pub keys: Option<HashMap<String, String>>,
    /// Why it cannot be used, when it was read back and did not match.
    pub unusable: Option<String>,
}

/// The custody of the current key-backup key.
#[derive(Clone, Debug, Serialize)]
pub struct EscrowNode {
    pub kbk: String,
    pub threshold: u8,
    pub custodians: Vec<String>,
    /// Custodians who showed they can open their share.
    pub confirmed: Vec<String>,
    /// Custodians whose accounts are disabled or gone.
    pub unavailable: Vec<String>,
}

impl EscrowNode {
    /// How many custodians can still act.
    pub fn able(&self) -> usize {
        self.custodians.iter().filter(|c| !self.unavailable.contains(c)).count()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct VaultBackupNode {
    pub id: String,
    pub volume: String,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, Serialize)]
pub struct CopyNode {
    pub kind: CopyKind,
    /// "backup 12", "snapshot 3", or the volume for the primary and mirror.
    pub id: String,
    pub volume: String,
    pub key: String,
    pub created_at: Timestamp,
    /// The dataset's generation it holds (a backup's source generation).
    pub generation: u64,
    /// For a snapshot: it shares chunk objects with the current generation,
    /// so corrupting those corrupts it too.
    pub shares_current: bool,
    /// The last check of its bytes (`backup verify`, `snapshot verify`,
    /// `fsck --read-data`): one that found damage counts the copy out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked: Option<CopyCheck>,
}

impl CopyNode {
    /// What its last check found wrong, if anything.
    pub fn damage(&self) -> Option<&str> {
        self.checked.as_ref().and_then(|c| c.problem.as_deref())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct DatasetNode {
    pub name: String,
    pub app: String,
    pub volume: String,
    pub key: String,
    pub generation: u64,
    /// When the current generation was written.
    pub current_at: Timestamp,
    /// For a dataset `hsm run` migrated to tape: the volume a recall brings
    /// it back to.
    pub migrated_from: Option<String>,
    pub last_access: Timestamp,
    /// Snapshots and backups in the order a recovery prefers them: by kind
    /// (snapshots, logical, raw), newest first within each (the primary and
    /// mirror are derived from `volume`).
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
    /// Who holds the current key-backup key's shares, when there is one.
    pub escrow: Option<EscrowNode>,
    /// Newest first.
    pub keystore_backups: Vec<KeystoreBackupNode>,
    pub datasets: Vec<DatasetNode>,
    /// The sites of the vault's own directory (catalog and HSM file).
    pub vault_sites: Vec<String>,
    /// The HSM checked every key with material (unwrap, check value); a
    /// report on a sealed vault trusts the records instead.
    pub keys_checked: bool,
    /// Why the HSM was not opened for this report, when it was not.
    pub sealed_because: Option<String>,
    /// The vault backups (catalog and HSM file) on volumes.
    pub vault_backups: Vec<VaultBackupNode>,
    /// Who can do what: principals with their roles and grants (never
    /// serialized: the report names them in findings only).
    #[serde(skip)]
    pub principals: Vec<custos_core::model::PrincipalRecord>,
    /// The actions under dual control (`config set dual-control`).
    #[serde(skip)]
    pub dual_control: Vec<String>,
    /// The shortest wait a key's destruction may be scheduled with.
    #[serde(skip)]
    pub destroy_min_wait: Option<jiff::SignedDuration>,
    /// The storage-management rules `hsm run` applies (copies, retention).
    #[serde(skip)]
    pub hsm_rules: Vec<custos_core::model::HsmRule>,
    /// The PKCS#11 token holding the master keys, for a vault on one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hsm_token: Option<String>,
    /// Judge the vault as if nothing were encrypted (the paper's Table 1):
    /// no copy needs a key, and only the threats to data apply.
    #[serde(skip)]
    pub as_if_unencrypted: bool,
}

/// How a key is reached after the threats.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "via", rename_all = "kebab-case")]
pub enum KeyPath {
    /// The keystore holds it, under a master key the HSM holds.
    Live,
    /// Restored from a keystore backup.
    KeystoreBackup { id: String },
    /// Unsealed from its escrow copy by the custodians.
    Escrow,
    /// In the keystore, archived: usable after `key restore`.
    Archived,
    /// In the keystore, scheduled for destruction: usable after `key
    /// cancel-destroy` (and lost for good once the time passes).
    PendingDestruction {
        #[serde(rename = "destroy_at")]
        due: Timestamp,
    },
    /// No key is needed: the copy is not encrypted (a plaintext copy).
    NoKey,
}

/// The answer for one dataset under one set of threats.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// The dataset itself is untouched.
    Unaffected,
    /// A copy saves it with no key recovery (after the vault itself is
    /// recovered from `vault_backup`, when the threat took it).
    Survives {
        kind: CopyKind,
        copy: String,
        volume: String,
        #[serde(rename = "key_label")]
        key: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        vault_backup: Option<String>,
    },
    /// A copy saves it once its key is recovered by `path`.
    SurvivesIf {
        kind: CopyKind,
        copy: String,
        volume: String,
        #[serde(rename = "key_label")]
        key: String,
        #[serde(rename = "key_path")]
        path: KeyPath,
        #[serde(skip_serializing_if = "Option::is_none")]
        vault_backup: Option<String>,
    },
    /// Only an older state survives: a copy of an earlier generation (a
    /// recovery point), not today's data.
    Stale {
        kind: CopyKind,
        copy: String,
        volume: String,
        #[serde(rename = "key_label")]
        key: String,
        generation: u64,
        created_at: Timestamp,
        #[serde(rename = "key_path")]
        path: KeyPath,
        #[serde(skip_serializing_if = "Option::is_none")]
        vault_backup: Option<String>,
    },
    /// Nothing saves it.
    Lost { why: String },
}

impl Verdict {
    /// Today's data comes back (a stale copy's older state does not count).
    pub fn survives(&self) -> bool {
        !matches!(self, Verdict::Lost { .. } | Verdict::Stale { .. })
    }

    /// A short cell for tables.
    pub fn cell(&self) -> String {
        match self {
            Verdict::Unaffected => "unaffected".into(),
            Verdict::Survives { kind: CopyKind::Plaintext, copy, vault_backup, .. } => {
                format!("yes, not encrypted: {}{copy}", if vault_backup.is_some() { "vault backup, " } else { "" })
            }
            Verdict::Survives { kind, copy, vault_backup, .. } => {
                format!("yes: {}{}", if vault_backup.is_some() { "vault backup, " } else { "" }, short(*kind, copy))
            }
            Verdict::SurvivesIf { kind, copy, path, vault_backup, .. } => format!(
                "if key from {}: {}{}",
                match path {
                    KeyPath::Live | KeyPath::NoKey => "keystore".to_string(),
                    KeyPath::KeystoreBackup { .. } => "ks backup".to_string(),
                    KeyPath::Escrow => "escrow".to_string(),
                    KeyPath::Archived => "key restore".to_string(),
                    KeyPath::PendingDestruction { .. } => "cancel-destroy".to_string(),
                },
                if vault_backup.is_some() { "vault backup, " } else { "" },
                short(*kind, copy)
            ),
            Verdict::Stale { kind, copy, generation, .. } => {
                format!("old: {} (gen {generation})", short(*kind, copy))
            }
            Verdict::Lost { .. } => "NO".into(),
        }
    }

    /// One sentence.
    pub fn explain(&self) -> String {
        let vb = match self {
            Verdict::Survives { vault_backup: Some(id), .. }
            | Verdict::SurvivesIf { vault_backup: Some(id), .. }
            | Verdict::Stale { vault_backup: Some(id), .. } => {
                format!("once the vault is recovered from vault backup {id}, ")
            }
            _ => String::new(),
        };
        vb + &self.explain_copy()
    }

    fn explain_copy(&self) -> String {
        match self {
            Verdict::Unaffected => "the dataset itself is untouched".into(),
            Verdict::Survives { kind: CopyKind::Mirror, volume, key, .. } => format!(
                "survives on its mirror {volume} (reads fail over){}",
                if key.is_empty() { String::new() } else { format!(" under {key}") }
            ),
            Verdict::Survives { kind: CopyKind::Plaintext, copy, volume, .. } => format!(
                "survives through the plaintext copy ({copy}) on {volume}, which needs no key; but the backup is not secured: whoever holds that medium reads the data"
            ),
            Verdict::Survives { kind, copy, volume, key, .. } if key.is_empty() => {
                format!("survives through the {} ({copy}) on {volume}", kind.as_str())
            }
            Verdict::Survives { kind, copy, volume, key, .. } => {
                format!("survives through the {} ({copy}) on {volume} under {key}", kind.as_str())
            }
            Verdict::SurvivesIf { kind, copy, volume, key, path, .. } => format!(
                "{} if its key {key} is recovered from {}",
                match kind {
                    CopyKind::Primary => format!("the dataset itself (on {volume}) survives"),
                    CopyKind::Mirror => format!("survives on its mirror {volume}"),
                    k => format!("survives through the {} ({copy}) on {volume}", k.as_str()),
                },
                match path {
                    KeyPath::Live | KeyPath::NoKey => "the keystore".to_string(),
                    KeyPath::KeystoreBackup { id } => format!("keystore backup {id}"),
                    KeyPath::Escrow => "escrow (the custodians' shares)".to_string(),
                    KeyPath::Archived => "the archive (`custos key restore`)".to_string(),
                    KeyPath::PendingDestruction { due } => {
                        format!("the destruction schedule before {due} (`custos key cancel-destroy`)")
                    }
                }
            ),
            Verdict::Stale { kind, copy, volume, key, generation, created_at, path, .. } => format!(
                "today's data is lost; only an older state survives: the {} ({copy}) on {volume} holds generation {generation}, as of {created_at}{}{}",
                kind.as_str(),
                match (kind, key.as_str()) {
                    (CopyKind::Plaintext, _) => ", not encrypted".to_string(),
                    (_, "") => String::new(),
                    (_, k) => format!(", under {k}"),
                },
                match path {
                    KeyPath::Live | KeyPath::NoKey => String::new(),
                    KeyPath::KeystoreBackup { id } => format!(" (its key from keystore backup {id})"),
                    KeyPath::Escrow => " (its key from escrow)".into(),
                    KeyPath::Archived => " (after `custos key restore`)".into(),
                    KeyPath::PendingDestruction { .. } => " (after `custos key cancel-destroy`)".into(),
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
    /// The catalog went (with the vault directory, at a site, or on its
    /// own): what was lost, for messages.
    vault_lost: Option<String>,
}

fn damage<'a>(g: &'a Graph, d: &'a DatasetNode, threats: &[Threat]) -> Damage<'a> {
    let mut dmg = Damage::default();
    for t in threats {
        match t {
            Threat::FileCorruption => dmg.content_bad = true,
            Threat::MaliciousCorruption => {
                // Everything on the dataset's volume, and on its mirror,
                // which receives every write.
                dmg.chunks_bad = true;
                dmg.lost_volumes.insert(d.volume.as_str());
                if let Some(m) = g.volumes.get(&d.volume).and_then(|v| v.mirror.as_deref()) {
                    dmg.lost_volumes.insert(m);
                }
            }
            Threat::AccidentalDeletion => dmg.deleted = true,
            Threat::DiskFailure => {
                dmg.lost_volumes.insert(d.volume.as_str());
            }
            Threat::SiteLoss => {
                if let Some(site) = g.volumes.get(&d.volume).map(|v| &v.site) {
                    dmg.lost_volumes.extend(g.volumes.iter().filter(|(_, v)| v.site == *site).map(|(n, _)| n.as_str()));
                    if g.vault_sites.contains(site) {
                        dmg.vault_lost = Some(format!("the vault directory (catalog and HSM) was at site {site}"));
                    }
                }
            }
            Threat::DataKeyLoss => {
                dmg.lost_keys.insert(d.key.as_str());
            }
            Threat::MasterKeyLoss => dmg.master_lost = true,
            Threat::KeystoreLoss => dmg.keystore_lost = true,
            Threat::CatalogLoss => {
                dmg.vault_lost.get_or_insert_with(|| "the catalog is lost".to_string());
            }
            // Without a vault backup, `vault rebuild` makes a new HSM and
            // brings back what escrow holds: as for lost master keys.
            Threat::HsmLoss => dmg.master_lost = true,
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
fn key_path(g: &Graph, dmg: &Damage<'_>, label: &str, as_of: Option<Timestamp>) -> Result<KeyPath, String> {
    let Some(k) = g.keys.get(label) else { return Err(format!("key {label} is not in the keystore")) };
    if as_of.is_some_and(|t| k.created_at > t) {
        return Err(format!(
            "key {label} was made after the newest vault backup that survives, so the recovered keystore lacks it"
        ));
    }
    let held: &[String] = if dmg.master_lost { &[] } else { &g.held_mkvps };
    let whole = k.present && k.damaged.is_none() && !dmg.lost_keys.contains(label) && !dmg.keystore_lost;
    if whole && held.contains(&k.mkvp) {
        return Ok(match (k.destroy_after, k.state.as_str()) {
            (Some(due), _) => KeyPath::PendingDestruction { due },
            (None, "archived") => KeyPath::Archived,
            _ => KeyPath::Live,
        });
    }
    // Keystore backups taken while the key had material, readable, and
    // wrapped under master keys the HSM still holds. Newest first.
    // The graph keeps them newest first.
    let ksbs = g
        .keystore_backups
        .iter()
        .filter(|b| b.created_at >= k.created_at && k.destroyed_at.is_none_or(|t| t > b.created_at))
        // A recovered catalog knows only the backups made before its copy.
        .filter(|b| as_of.is_none_or(|t| b.created_at <= t));
    let mut retired = false;
    let mut any = false;
    for b in ksbs {
        any = true;
        if !readable(g, dmg, &b.volume) {
            continue;
        }
        if b.unusable.is_some() {
            continue;
        }
        // The key's own wrapping in that backup, when the object was read;
        // otherwise the record's list of master keys, and the key's own
        // master key if the backup depends on it.
        let mkvp = match &b.keys {
            Some(keys) => match keys.get(label) {
                Some(m) => m,
                None => continue,
            },
            None if b.mkvps.contains(&k.mkvp) => &k.mkvp,
            None => b.mkvps.first().unwrap_or(&k.mkvp),
        };
        if held.contains(mkvp) {
            return Ok(KeyPath::KeystoreBackup { id: b.id.clone() });
        }
        retired = true;
    }
    if k.escrowed && g.escrow_ready && !dmg.keystore_lost {
        return Ok(KeyPath::Escrow);
    }
    let mut why = format!("key {label}");
    why += &if !k.present {
        " was destroyed".to_string()
    } else if let Some(d) = &k.damaged {
        format!("'s record is damaged ({d})")
    } else if dmg.lost_keys.contains(label) {
        " is lost".to_string()
    } else if dmg.keystore_lost {
        " went with the keystore".to_string()
    } else {
        " is wrapped under a master key the HSM no longer holds".to_string()
    };
    if retired {
        why += ", and its keystore backups are wrapped under master keys the HSM no longer holds";
    } else if !any {
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
    // A token's master keys are in no vault backup, and `vault rebuild`
    // (a new HSM, keys back from escrow) is for the software HSM: losing
    // the token is beyond what Custos can undo.
    if let Some(token) = g.hsm_token.as_ref().filter(|_| !g.as_if_unencrypted) {
        if threats.iter().any(|t| matches!(t, Threat::MasterKeyLoss | Threat::HsmLoss)) {
            return Verdict::Lost {
                why: format!(
                    "the master keys are on the PKCS#11 token {token}: no vault backup holds them and `vault rebuild` is for the software HSM, so only the token's own backup (its vendor's tools) brings them back"
                ),
            };
        }
    }
    let dmg = damage(g, d, threats);
    let newest = g.vault_backups.iter().filter(|b| readable(g, &dmg, &b.volume)).max_by_key(|b| (b.created_at, &b.id));
    // With the vault directory gone, everything rests on the newest vault
    // backup that survives.
    if let Some(what) = dmg.vault_lost.clone() {
        return match newest {
            Some(b) => evaluate_in(g, d, threats, rolled_back(dmg), Some(b)),
            None => Verdict::Lost {
                why: format!(
                    "{what}, and no vault backup survives elsewhere: nothing left records the copies or holds their keys"
                ),
            },
        };
    }
    let v = evaluate_in(g, d, threats, dmg, None);
    match newest {
        // When nothing else saves it, an administrator can still bring the
        // vault back as it was at its newest backup, in a directory of its
        // own, and recover from there.
        Some(b) if !v.survives() => {
            let r = evaluate_in(g, d, threats, rolled_back(damage(g, d, threats)), Some(b));
            if r.survives() {
                r
            } else {
                v
            }
        }
        _ => v,
    }
}

/// The damage as a vault recovered from a vault backup sees it: the
/// catalog and HSM as they were then, so what the threats did to them
/// since (a junk generation, a damaged key record, lost master keys or
/// keystore) is not in that copy; the generation a junk one replaced keeps
/// its objects until it is pruned. What the threats did to volumes stays
/// done, and so does a removal: `ds rm` deletes the dataset's objects at
/// once.
fn rolled_back(mut dmg: Damage<'_>) -> Damage<'_> {
    dmg.content_bad = false;
    dmg.lost_keys.clear();
    dmg.master_lost = false;
    dmg.keystore_lost = false;
    dmg.vault_lost = None;
    dmg
}

/// Evaluate under `dmg`, in the vault as it is, or (`vb`) as recovered
/// from that vault backup: then only what it records counts.
fn evaluate_in(
    g: &Graph,
    d: &DatasetNode,
    threats: &[Threat],
    dmg: Damage<'_>,
    vb: Option<&VaultBackupNode>,
) -> Verdict {
    let vault_backup = vb.map(|b| b.id.clone());
    let as_of = vb.map(|b| b.created_at);
    let known = |t: Timestamp| as_of.is_none_or(|a| t <= a);
    let primary_data = !dmg.content_bad && !dmg.chunks_bad && !dmg.deleted && known(d.current_at);
    // Candidates in order of preference.
    // (kind, id, volume, key, its data is there, the generation it holds
    // and when it was made, for a copy).
    type Candidate<'a> = (CopyKind, &'a str, &'a str, &'a str, bool, Option<(u64, Timestamp)>);
    let mut candidates: Vec<Candidate<'_>> = Vec::with_capacity(d.copies.len() + 2);
    candidates.push((
        CopyKind::Primary,
        &d.volume,
        &d.volume,
        &d.key,
        primary_data && !dmg.volume_lost(&d.volume),
        None,
    ));
    if let Some(m) = g.volumes.get(&d.volume).and_then(|v| v.mirror.as_deref()) {
        candidates.push((CopyKind::Mirror, m, m, &d.key, primary_data && !dmg.volume_lost(m), None));
    }
    // The copies are in order of preference already (see DatasetNode).
    // Copies their last check found damaged save nothing, whatever the threat.
    let mut damaged: Vec<&str> = Vec::new();
    for c in d.copies.iter().filter(|c| known(c.created_at)) {
        if c.damage().is_some() {
            damaged.push(&c.id);
            continue;
        }
        let data = readable(g, &dmg, &c.volume)
            && match c.kind {
                CopyKind::Snapshot => !(dmg.chunks_bad && c.shares_current),
                _ => true,
            };
        candidates.push((c.kind, &c.id, &c.volume, &c.key, data, Some((c.generation, c.created_at))));
    }
    let mut first_if: Option<Verdict> = None;
    let mut stale: Option<Verdict> = None;
    let mut reasons: Vec<String> = Vec::new();
    // Copies share keys (raw copies the primary's, logical ones a BACK
    // key): each key's path is worked out once.
    let mut paths: Vec<(&str, Result<KeyPath, String>)> = Vec::new();
    for (kind, id, volume, key, data, held) in candidates {
        if !data {
            continue;
        }
        // A plaintext copy (and, judged as if unencrypted, every copy) needs no key.
        let keyless = kind == CopyKind::Plaintext || g.as_if_unencrypted;
        let key = if keyless { "" } else { key };
        let path = match paths.iter().find(|(k, _)| *k == key) {
            Some((_, p)) => p.clone(),
            None if keyless => Ok(KeyPath::Live),
            None => {
                let p = key_path(g, &dmg, key, as_of);
                paths.push((key, p.clone()));
                p
            }
        };
        let id = id.to_string();
        if let Some((generation, created_at)) = held.filter(|(g, _)| *g < d.generation) {
            match path {
                Ok(path) => {
                    stale.get_or_insert(Verdict::Stale {
                        kind,
                        copy: id,
                        volume: volume.to_string(),
                        key: key.to_string(),
                        generation,
                        created_at,
                        path,
                        vault_backup: vault_backup.clone(),
                    });
                }
                Err(why) if !reasons.contains(&why) => reasons.push(why),
                Err(_) => {}
            }
            continue;
        }
        match path {
            Ok(KeyPath::Live) if kind == CopyKind::Primary && vault_backup.is_none() => return Verdict::Unaffected,
            Ok(KeyPath::Live) => {
                return Verdict::Survives {
                    kind,
                    copy: id,
                    volume: volume.to_string(),
                    key: key.to_string(),
                    vault_backup,
                }
            }
            Ok(path) => {
                first_if.get_or_insert(Verdict::SurvivesIf {
                    kind,
                    copy: id,
                    volume: volume.to_string(),
                    key: key.to_string(),
                    path,
                    vault_backup: vault_backup.clone(),
                });
            }
            Err(why) => {
                if !reasons.contains(&why) {
                    reasons.push(why);
                }
            }
        }
    }
    if let Some(v) = first_if.or(stale) {
        return v;
    }
    let mut why = Vec::new();
    let names: Vec<&str> = threats.iter().map(|t| t.name()).collect();
    if d.copies.is_empty() && g.volumes.get(&d.volume).is_none_or(|v| v.mirror.is_none()) {
        why.push("the dataset has no copy at all".to_string());
    } else if reasons.is_empty() {
        let but = match damaged.as_slice() {
            [] => String::new(),
            [one] => format!(" but {one}, which its last check found damaged"),
            many => format!(" but {}, which their last checks found damaged", many.join(", ")),
        };
        why.push(format!("{} reaches every copy{but}", names.join(" + ")));
        damaged.clear();
    } else {
        why.push(format!(
            "every copy that {} leaves intact needs a key that is gone: {}",
            names.join(" + "),
            reasons.join("; ")
        ));
    }
    match damaged.as_slice() {
        [] => {}
        [one] => why.push(format!("{one}, which its last check found damaged, saves nothing")),
        many => why.push(format!("{}, which their last checks found damaged, save nothing", many.join(", "))),
    }
    Verdict::Lost { why: why.join("; ") }
}

/// How key `label` can be had today, with no threat applied.
pub fn evaluate_key_today(g: &Graph, label: &str) -> Result<KeyPath, String> {
    key_path(g, &Damage::default(), label, None)
}

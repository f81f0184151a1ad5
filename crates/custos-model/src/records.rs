//! The records the repository keeps. Wrapped key material is kept in a field
//! that never prints and never serializes.

use std::fmt;

use custos_crypto::{Kcv, Mkvp};
use jiff::Timestamp;
use serde::{Deserialize, Serialize, Serializer};

use crate::{DatasetName, KeyLabel, KeyState, Pattern, VolumeName};

/// What a key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Purpose {
    /// Seals primary datasets.
    #[serde(rename = "PRIM")]
    Prim,
    /// Seals logical backup copies.
    #[serde(rename = "BACK")]
    Back,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prim => "PRIM",
            Self::Back => "BACK",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "PRIM" => Some(Self::Prim),
            "BACK" => Some(Self::Back),
            _ => None,
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The medium a volume stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Medium {
    Disk,
    Tape,
}

impl Medium {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disk => "disk",
            Self::Tape => "tape",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "disk" => Some(Self::Disk),
            "tape" => Some(Self::Tape),
            _ => None,
        }
    }
}

impl fmt::Display for Medium {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn ser_display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A data key as the keystore holds it: wrapped under a master key, named
/// by label, with its check value and lifecycle.
#[derive(Clone, Debug, Serialize)]
pub struct KeyRecord {
    pub label: KeyLabel,
    pub state: KeyState,
    pub purpose: Purpose,
    pub app: String,
    /// Key material wrapped under the master key named by `mkvp`; `None`
    /// once destroyed.
    #[serde(skip)]
    pub wrapped: Option<WrappedMaterial>,
    #[serde(serialize_with = "ser_display")]
    pub mkvp: Mkvp,
    #[serde(serialize_with = "ser_display")]
    pub kcv: Kcv,
    pub created_at: Timestamp,
    pub activated_at: Option<Timestamp>,
    pub deactivated_at: Option<Timestamp>,
    pub destroyed_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    pub use_count: u64,
    /// A copy of the key sealed to a key-backup key, if escrow was set up
    /// when the key was created. Independent of master keys.
    #[serde(skip)]
    pub escrow: Option<EscrowCopy>,
    /// What key-management clients (KMIP) recorded about it; empty for
    /// keys they never touched.
    #[serde(default, skip_serializing_if = "KeyAttributes::is_empty")]
    pub attributes: KeyAttributes,
}

/// A key's attributes beyond Custos's own fields, as KMIP clients set
/// them. Stored with the key (one JSON column, inside the row's MAC).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyAttributes {
    /// Names clients gave it (KMIP Name); a name belongs to one key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Its length in bits when shorter than the 256-bit key slot: a
    /// 128- or 192-bit key is the slot's leading bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits: Option<u16>,
    /// Secret data (a password, a seed: KMIP Secret Data, its type), not
    /// a key; its length is `bits`, any whole number of bytes up to 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<u32>,
    /// KMIP Cryptographic Usage Mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_mask: Option<u32>,
    /// KMIP Contact Information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    /// Clients' own attributes (`x-…`), as text.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub custom: std::collections::BTreeMap<String, String>,
    /// Why and when it was revoked, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation: Option<Revocation>,
}

impl KeyAttributes {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The key's length in bits.
    pub fn length_bits(&self) -> u16 {
        self.bits.unwrap_or(256)
    }
}

/// A key's revocation (KMIP Revoke).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// KMIP's reason code, as a word: `key-compromise`, `cessation-of-operation`, …
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(rename = "revoked_at", alias = "at")]
    pub at: Timestamp,
    /// When the compromise happened, as the client says (compromise only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compromised_at: Option<Timestamp>,
}

/// A data key sealed to a key-backup key (see `custos_crypto::escrow_seal`).
#[derive(Clone, PartialEq, Eq)]
pub struct EscrowCopy {
    /// Id of the key-backup key.
    pub kbk: String,
    pub blob: Vec<u8>,
}

impl fmt::Debug for EscrowCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EscrowCopy(kbk {}, {} bytes)", self.kbk, self.blob.len())
    }
}

/// A key-backup key: its public half; the private half exists only as
/// custodians' shares.
#[derive(Clone, Debug, Serialize)]
pub struct KbkRecord {
    pub id: String,
    #[serde(serialize_with = "ser_hex")]
    pub public: [u8; 32],
    pub threshold: u8,
    pub custodians: Vec<String>,
    pub created_at: Timestamp,
}

/// A custodian's registered recipient: the public half of a key pair the
/// custodian made and keeps (the private half never reaches Custos, so
/// nothing here is secret). Escrow shares are sealed to it.
#[derive(Clone, Debug, Serialize)]
pub struct CustodianKey {
    pub principal: String,
    #[serde(serialize_with = "ser_hex")]
    pub public: [u8; 32],
    pub registered_at: Timestamp,
}

/// One custodian's share of a key-backup key, sealed to their recipient.
/// Only that custodian's private key opens it; the catalog keeps it so the
/// custodian can fetch it (again) at any time.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedShare {
    pub kbk: String,
    pub custodian: String,
    /// The recipient it was sealed to.
    pub recipient: [u8; 32],
    pub sealed: Vec<u8>,
    /// SHA-256 over the share in the clear (domain-separated): a custodian
    /// proves they opened it by presenting this.
    pub confirm: [u8; 32],
    pub confirmed_at: Option<Timestamp>,
}

impl fmt::Debug for SealedShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedShare({} for {}, confirmed {:?})", self.kbk, self.custodian, self.confirmed_at)
    }
}

/// Wrapped key bytes. Opaque without the master key, yet kept out of every
/// `Debug`, log line and JSON all the same.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedMaterial(pub Vec<u8>);

impl fmt::Debug for WrappedMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedMaterial({} bytes)", self.0.len())
    }
}

/// A place that stores chunks and manifests.
#[derive(Clone, Debug, Serialize)]
pub struct VolumeRecord {
    pub name: VolumeName,
    /// A local directory (absolute path).
    pub location: String,
    pub site: String,
    pub medium: Medium,
    pub created_at: Timestamp,
}

/// Where a policy takes a dataset's key from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyTarget {
    /// An existing key, by label.
    Key(KeyLabel),
    /// A fresh key per new dataset, named by the naming standard for this
    /// application (the dataset's first qualifier when `None`).
    Template { app: Option<String> },
}

/// Dataset-name pattern → volume and key (the paper's SMS ACS routines).
#[derive(Clone, Debug, Serialize)]
pub struct PolicyRecord {
    pub name: String,
    pub pattern: Pattern,
    pub volume: VolumeName,
    pub target: PolicyTarget,
    pub created_at: Timestamp,
}

macro_rules! id16 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            pub fn random() -> Self {
                Self(custos_crypto::random_array().expect("system RNG"))
            }
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            pub fn from_hex(s: &str) -> Option<Self> {
                let v = hex::decode(s).ok()?;
                Some(Self(v.try_into().ok()?))
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.to_hex())
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

id16!(
    /// The identity of a dataset, stable across generations and renames;
    /// chunks are bound to it.
    DatasetId
);
id16!(
    /// The name of one sealed chunk object on a volume.
    ChunkId
);

/// One chunk of a generation, as its manifest lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub id: ChunkId,
    /// Plaintext length.
    pub len: u32,
    /// Keyed fingerprint of the plaintext (see `custos_crypto::Fingerprinter`).
    pub fingerprint: [u8; 32],
}

/// One committed generation of a dataset.
#[derive(Clone, Debug, Serialize)]
pub struct GenerationRecord {
    pub generation: u64,
    pub volume: VolumeName,
    pub key_label: KeyLabel,
    pub size: u64,
    pub chunk_size: u32,
    pub chunk_count: u64,
    /// SHA-256 of the sealed manifest object, as committed.
    #[serde(serialize_with = "ser_hex")]
    pub manifest_hash: [u8; 32],
    pub created_at: Timestamp,
}

fn ser_hex<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}

/// A dataset and its current generation.
#[derive(Clone, Debug, Serialize)]
pub struct DatasetRecord {
    pub id: DatasetId,
    pub name: DatasetName,
    pub created_at: Timestamp,
    pub current: GenerationRecord,
    /// The last read or write (the current generation's time if never read).
    #[serde(rename = "last_used_at")]
    pub last_access: Timestamp,
    /// Set while `hsm run` has migrated the dataset to a tape volume: the
    /// volume it is recalled to on its next read.
    pub migrated_from: Option<VolumeName>,
}

/// A keystore backup as the catalog records it.
#[derive(Clone, Debug, Serialize)]
pub struct KeystoreBackupRecord {
    pub id: String,
    pub volume: VolumeName,
    pub created_at: Timestamp,
    pub key_count: u64,
    /// MKVPs of the master keys the backed-up keys are wrapped under.
    pub mkvps: Vec<String>,
    /// SHA-256 of the backup object.
    #[serde(serialize_with = "ser_hex")]
    pub sha256: [u8; 32],
}

/// A vault backup as the catalog records it (the backup itself holds the
/// catalog as it was just before its own record).
#[derive(Clone, Debug, Serialize)]
pub struct VaultBackupRecord {
    pub id: String,
    pub volume: VolumeName,
    pub created_at: Timestamp,
    /// The last audit entry the copy holds.
    pub audit_seq: u64,
    #[serde(rename = "size")]
    pub bytes: u64,
}

/// How a backup copy was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CopyMethod {
    /// Sealed bytes copied as they are: needs no key, shares the primary's key.
    Raw,
    /// Opened with the primary's key and re-sealed under a separate backup key.
    Logical,
    /// Opened with the primary's key and written out unencrypted (to tape
    /// only, when the vault's `backup.plaintext` setting allows it): the
    /// paper's access-method copy without encryption. Needs no key to read,
    /// and exposes the data to whoever holds the medium.
    Plaintext,
}

impl CopyMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Logical => "logical",
            Self::Plaintext => "plaintext",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "raw" => Some(Self::Raw),
            "logical" => Some(Self::Logical),
            "plaintext" => Some(Self::Plaintext),
            _ => None,
        }
    }
}

impl fmt::Display for CopyMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last check of a copy's bytes (`backup verify`, `snapshot verify`,
/// `fsck --read-data`): when, how deep, and what it found wrong. Only a
/// check that reached the copy is recorded: one stopped by a key or an
/// unreachable volume says nothing about the copy's bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CopyCheck {
    #[serde(rename = "checked_at")]
    pub at: Timestamp,
    /// Every chunk was read and authenticated (otherwise the manifest only).
    pub read_data: bool,
    /// What was found damaged; `None` when the copy checked out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The last drill of one dataset under one threat or pair of threats
/// (`custos risk drill`): what the risk page shows beside the model's
/// verdict ("proven on …"). A later drill of the same cell replaces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DrillRecord {
    pub dataset: String,
    /// The threats' names joined with `+`, in the drill's order.
    pub threats: String,
    #[serde(rename = "drilled_at")]
    pub at: Timestamp,
    /// The drill got the dataset back, byte for byte.
    pub survived: bool,
    /// The drill's outcome is the model's verdict.
    pub agrees: bool,
    /// How it came back, or why nothing worked.
    pub how: String,
    /// Who ran the drill.
    pub by: String,
}

/// Which kind of copy a [`CopyCheck`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckedCopy {
    Backup,
    Snapshot,
}

/// One backup copy of one dataset generation, complete when recorded.
#[derive(Clone, Debug, Serialize)]
pub struct BackupRecord {
    pub id: u64,
    pub dataset: DatasetName,
    pub dataset_id: DatasetId,
    pub source_generation: u64,
    pub method: CopyMethod,
    pub volume: VolumeName,
    pub key_label: KeyLabel,
    /// The id the copy's chunks and manifest are bound to: the dataset's own
    /// for a raw copy, a series of its own for logical copies.
    pub copy_id: DatasetId,
    /// The manifest generation under `copy_id`.
    pub generation: u64,
    pub size: u64,
    pub chunk_size: u32,
    pub chunk_count: u64,
    #[serde(serialize_with = "ser_hex")]
    pub manifest_hash: [u8; 32],
    pub created_at: Timestamp,
    /// The last check of its bytes, if any.
    #[serde(rename = "last_check")]
    pub checked: Option<CopyCheck>,
}

/// A snapshot: one generation of a dataset pinned, at no data cost.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotRecord {
    pub id: u64,
    pub dataset: DatasetName,
    pub dataset_id: DatasetId,
    pub generation: u64,
    pub volume: VolumeName,
    pub key_label: KeyLabel,
    pub size: u64,
    pub chunk_count: u64,
    #[serde(serialize_with = "ser_hex")]
    pub manifest_hash: [u8; 32],
    pub created_at: Timestamp,
    /// The last check of its bytes, if any.
    #[serde(rename = "last_check")]
    pub checked: Option<CopyCheck>,
}

/// A storage-management rule for `custos hsm run` (DFSMShsm's management
/// class): for datasets matching `pattern`, a backup to `backup_to` by
/// `method` whenever the dataset changed, pruned by the retention counts, and
/// migration to the tape volume `migrate_to` after `migrate_after_days`
/// days without access.
#[derive(Clone, Debug, Serialize)]
pub struct HsmRule {
    pub name: String,
    pub pattern: Pattern,
    pub method: CopyMethod,
    pub backup_to: Option<VolumeName>,
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    pub migrate_after_days: Option<u32>,
    pub migrate_to: Option<VolumeName>,
    pub created_at: Timestamp,
}

/// A principal: who runs a command. The credential is stored only as a
/// hash (Argon2id for a passphrase, SHA-256 for a random token), and is
/// left out of `Debug` and serialization: a hash is still a verifier.
#[derive(Clone, Serialize)]
pub struct PrincipalRecord {
    pub name: String,
    pub roles: Vec<crate::Role>,
    #[serde(skip)]
    pub credential: String,
    pub disabled: bool,
    pub created_at: Timestamp,
    /// Dataset-name patterns it may read and write (role app).
    pub data_grants: Vec<Pattern>,
    /// Key-label patterns it may use (role app).
    pub key_grants: Vec<Pattern>,
}

impl fmt::Debug for PrincipalRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrincipalRecord")
            .field("name", &self.name)
            .field("roles", &self.roles)
            .field("credential", &"[redacted]")
            .field("disabled", &self.disabled)
            .field("data_grants", &self.data_grants)
            .field("key_grants", &self.key_grants)
            .finish()
    }
}

#[cfg(test)]
mod principal_tests {
    use super::*;

    #[test]
    fn principal_debug_and_json_never_show_the_credential() {
        let p = PrincipalRecord {
            name: "alice".into(),
            roles: vec![crate::Role::App],
            credential: "argon2id$19456$2$00$deadbeef".into(),
            disabled: false,
            created_at: Timestamp::now(),
            data_grants: Vec::new(),
            key_grants: Vec::new(),
        };
        assert!(!format!("{p:?}").contains("deadbeef"));
        assert!(!serde_json::to_string(&p).unwrap().contains("deadbeef"));
    }
}

//! Every command as a typed, serializable value. A front end builds one
//! from what its user typed (or sent); the [`Engine`](crate::Engine) checks,
//! audits and runs it. A dual-control request stores one (versioned, see
//! [`Stored`]), never a command line.

use std::path::PathBuf;

use custos_core::model::{
    CopyMethod, DatasetName, KeyAction, KeyAttributes, KeyLabel, Medium, Pattern, Purpose, Role, VolumeName,
};
use custos_core::{Retention, StoredCredential};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A secret carried by an operation (a share, a key part, a new
/// passphrase): zeroized on drop, `[redacted]` in `Debug`. It crosses the
/// wire inside TLS or a Unix socket, and is never stored in a request.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretText(String);

impl schemars::JsonSchema for SecretText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SecretText".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "writeOnly": true, "description": "a secret: never stored, never logged" })
    }
}

impl SecretText {
    pub fn new(s: String) -> Self {
        Self(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A new principal's credential as an operation carries it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NewCredential {
    /// A passphrase, hashed by the engine before anything is stored.
    Passphrase(SecretText),
    /// A new random token, made by the engine and given to the requester once.
    Token,
    /// The stored form: what a pending request keeps.
    Stored(StoredCredential),
}

impl NewCredential {
    /// The stored form (a passphrase hashed, a token made now), and the
    /// token to show once when one was made.
    pub fn prepare(self) -> custos_core::Result<(StoredCredential, Option<SecretText>)> {
        let (stored, token) = match self {
            NewCredential::Passphrase(p) => {
                custos_core::new_credential(Some(&custos_core::Passphrase::from(p.expose().to_string())))?
            }
            NewCredential::Token => custos_core::new_credential(None)?,
            NewCredential::Stored(s) => (s, None),
        };
        Ok((stored, token.map(SecretText::new)))
    }
}

/// Which grant.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GrantOn {
    Data,
    Key,
}

/// Where a policy sends a dataset's key from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKey {
    /// One existing key for every matching dataset.
    Key(KeyLabel),
    /// A new key per dataset, for this application (default: the dataset's first qualifier).
    Template { app: Option<String> },
}

/// A byte range of a dataset: START..END, either end open.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Range {
    pub start: Option<u64>,
    pub end: Option<u64>,
}

fn default_datakey_bytes() -> u8 {
    32
}

/// One command. The variants are grouped as the CLI's command groups are.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Operation {
    // Keys.
    KeyCreate {
        label: Option<KeyLabel>,
        app: Option<String>,
        purpose: Purpose,
        expires_at: Option<Timestamp>,
        activate: bool,
        count: Option<u32>,
        /// What a key-management client says about the key (KMIP Create).
        #[serde(default, skip_serializing_if = "KeyAttributes::is_empty")]
        attributes: KeyAttributes,
    },
    KeyList {
        pattern: Option<Pattern>,
        /// At most this many (a page); none: every matching key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        /// Only labels after this one (the last of the previous page).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
    },
    KeyShow {
        label: KeyLabel,
    },
    /// Activate, deactivate, archive or restore one key, or every key a
    /// pattern matches (each checked and audited on its own).
    KeyLifecycle {
        target: String,
        action: KeyAction,
        dry_run: bool,
    },
    KeyDestroy {
        label: KeyLabel,
        crypto_erase: bool,
        /// How long to wait (`7d`); the vault's default when absent.
        wait: Option<String>,
    },
    KeyCancelDestroy {
        label: KeyLabel,
    },
    /// Revoke a key (KMIP Revoke): a compromise makes it compromised, any
    /// other reason deactivates it; the reason is kept with the key.
    KeyRevoke {
        label: KeyLabel,
        /// KMIP's reason as a word: `key-compromise`, `cessation-of-operation`, …
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compromised_at: Option<Timestamp>,
    },
    /// Replace the attributes clients set on a key (names, usage mask,
    /// contact, `x-` attributes); its length and revocation stay.
    KeySetAttributes {
        label: KeyLabel,
        attributes: KeyAttributes,
    },
    /// A key's material in the clear, for a device that must hold it
    /// (KMIP Get): the key grant applies, and each export is audited.
    KeyExport {
        label: KeyLabel,
    },
    /// Record a key (or secret data) a client brings (KMIP Register):
    /// `material` (base64) is `attributes.bits` long (256 bits when unset).
    KeyImport {
        app: String,
        material: SecretText,
        #[serde(default, skip_serializing_if = "KeyAttributes::is_empty")]
        attributes: KeyAttributes,
        activate: bool,
    },
    /// AES-GCM under a key for a client that frames its own data (KMIP
    /// Encrypt): base64 in and out; a random IV unless one is given.
    KeyGcmEncrypt {
        label: KeyLabel,
        plaintext: SecretText,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        iv: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        aad: Option<String>,
    },
    /// The reverse of `key-gcm-encrypt` (KMIP Decrypt).
    KeyGcmDecrypt {
        label: KeyLabel,
        ciphertext: String,
        iv: String,
        tag: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        aad: Option<String>,
    },
    /// Recover keys from a keystore backup.
    KeyRecover {
        pattern: Pattern,
        from: String,
    },
    /// Recover one key from escrow with custodians' shares.
    EscrowRecover {
        label: KeyLabel,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        shares: Vec<SecretText>,
    },

    // The key service (applications' own data, under Custos keys).
    /// Seal `plaintext` (base64) under a key, bound to `context`.
    KeyEncrypt {
        label: KeyLabel,
        plaintext: SecretText,
        #[serde(default)]
        context: std::collections::BTreeMap<String, String>,
    },
    /// Open a key-service ciphertext (base64; it names its key).
    KeyDecrypt {
        ciphertext: String,
        #[serde(default)]
        context: std::collections::BTreeMap<String, String>,
    },
    /// A new data key: in the clear and sealed under `label`.
    KeyDataKey {
        label: KeyLabel,
        #[serde(default = "default_datakey_bytes")]
        bytes: u8,
        #[serde(default)]
        context: std::collections::BTreeMap<String, String>,
    },

    // Volumes and policies.
    VolumeAdd {
        name: VolumeName,
        location: String,
        site: String,
        medium: Medium,
    },
    VolumeList,
    /// Forget a volume nothing refers to; its directory or bucket is left
    /// as it is.
    VolumeRm {
        name: VolumeName,
    },
    PolicyAdd {
        name: String,
        pattern: Pattern,
        volume: VolumeName,
        key: PolicyKey,
    },
    PolicyList,
    PolicyRm {
        name: String,
    },

    // Datasets.
    /// Write a new generation; the data is the operation's input stream.
    DsPut {
        name: DatasetName,
        key: Option<KeyLabel>,
        volume: Option<VolumeName>,
    },
    /// Read a dataset; the data goes to the operation's output stream.
    DsGet {
        name: DatasetName,
        range: Option<Range>,
    },
    DsList {
        pattern: Option<Pattern>,
        /// At most this many (a page); none: every matching dataset.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        /// Only names after this one (the last of the previous page).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
    },
    DsInfo {
        name: DatasetName,
    },
    DsRm {
        name: DatasetName,
    },
    DsVerify {
        name: DatasetName,
    },
    /// Import a directory tree of the engine's own machine (embedded mode).
    DsImport {
        dir: PathBuf,
        prefix: DatasetName,
        replace: bool,
        /// Import the regular files and skip (and list) what is not one:
        /// symbolic links, FIFOs, sockets, devices. Without it such an
        /// entry refuses the import, which writes nothing.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        skip_other: bool,
    },
    /// Write datasets out as files on the engine's own machine (embedded mode).
    DsExport {
        prefix: DatasetName,
        dir: PathBuf,
        replace: bool,
    },

    // Settings.
    ConfigList,
    ConfigGet {
        key: String,
    },
    ConfigSet {
        key: String,
        value: String,
    },

    // Master keys.
    MkStatus,
    MkLoadNew {
        generate: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        parts: Vec<SecretText>,
        expect_mkvp: Option<String>,
    },
    MkClearNew,
    MkActivate,
    MkReencipher {
        batch: usize,
    },

    // Keystore backups and escrow.
    KeystoreBackup {
        to: VolumeName,
    },
    KeystoreBackups,
    /// A sealed copy of the catalog and the HSM's state on a volume, from
    /// which `custos vault recover` brings the vault back elsewhere.
    VaultBackup {
        to: VolumeName,
    },
    VaultBackups,
    /// Retention for vault backups: per volume, keep what `keep` says and
    /// delete the rest.
    VaultPrune {
        keep: Retention,
        dry_run: bool,
    },
    /// Make a key-backup key split among `custodians` (users with a
    /// registered recipient); each share is sealed to its custodian.
    EscrowInit {
        custodians: Vec<String>,
        threshold: u8,
    },
    /// Register the caller's own custodian recipient.
    EscrowRegister {
        recipient: String,
    },
    /// The caller's own share, sealed to their recipient.
    EscrowShare {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kbk: Option<String>,
    },
    /// Prove the caller opened their share: `confirm` is its digest (hex).
    EscrowConfirm {
        kbk: String,
        confirm: String,
    },
    EscrowStatus,
    EscrowPurge {
        label: KeyLabel,
    },

    // Mirrors and snapshots.
    MirrorAdd {
        primary: VolumeName,
        secondary: VolumeName,
    },
    MirrorList,
    MirrorStatus,
    MirrorRm {
        primary: VolumeName,
    },
    SnapshotCreate {
        dataset: DatasetName,
    },
    SnapshotList {
        pattern: Option<Pattern>,
        /// At most this many (a page); none: every match.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        /// Only ids after this one (the last of the previous page).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
    },
    SnapshotRm {
        id: u64,
    },
    SnapshotRestore {
        id: u64,
        as_name: Option<DatasetName>,
    },

    // Backups.
    BackupRun {
        pattern: Option<Pattern>,
        method: CopyMethod,
        to: VolumeName,
        key: Option<KeyLabel>,
    },
    BackupList {
        pattern: Option<Pattern>,
        /// At most this many (a page); none: every match.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        /// Only ids after this one (the last of the previous page).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
    },
    BackupShow {
        id: u64,
    },
    BackupPrune {
        pattern: Option<Pattern>,
        keep: Retention,
        dry_run: bool,
    },
    BackupVerify {
        pattern: Option<Pattern>,
        read_data: bool,
    },
    /// Write backups back: one dataset (or every one a pattern matches).
    Restore {
        dataset: String,
        backup: Option<u64>,
        generation: Option<u64>,
        at: Option<Timestamp>,
        as_name: Option<DatasetName>,
    },

    // Storage management (DFSMShsm).
    HsmRun {
        dry_run: bool,
        without_keys: bool,
    },
    HsmRuleAdd {
        name: String,
        pattern: Pattern,
        method: CopyMethod,
        backup_to: Option<VolumeName>,
        keep: Retention,
        migrate_after_days: Option<u32>,
        migrate_to: Option<VolumeName>,
    },
    HsmRuleList,
    HsmRuleRm {
        name: String,
    },
    HsmMigrate {
        dataset: DatasetName,
        to: VolumeName,
    },
    HsmRecall {
        dataset: DatasetName,
    },

    // Risk.
    RiskReport {
        pattern: Option<Pattern>,
        dual: bool,
        /// Look this far ahead ("90d"): retention rules whose copies would
        /// not reach back that far, and keys due for destruction before it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        horizon: Option<String>,
        /// Judge the vault as if nothing were encrypted: the paper's Table 1.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        as_if_unencrypted: bool,
    },
    RiskDrill {
        pattern: Option<Pattern>,
        /// Threat names (`custos risk drill --help` lists them); empty: all.
        threats: Vec<String>,
        dual: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        shares: Vec<SecretText>,
        /// Where the clones go (embedded mode only; a temporary directory otherwise).
        scratch: Option<PathBuf>,
    },

    // Audit.
    AuditList {
        since: Option<Timestamp>,
        principal: Option<String>,
        object: Option<String>,
        /// Only entries after this one (the last of the previous page).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        /// At most this many (a page); none: every matching entry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    AuditVerify {
        /// Also compare with the segments exported to this volume.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        against: Option<VolumeName>,
    },
    CatalogVerify,
    /// Rotate the HSM's catalog key: every row checked under the old key
    /// and sealed under a new one; the old key is destroyed.
    CatalogRotateKey,
    AuditExport,
    /// Write the entries not yet on a volume there, as one segment written
    /// once (a tape volume for a copy nobody can rewrite).
    AuditExportTo {
        volume: VolumeName,
    },
    /// Carry on with a catalog older than the HSM's anchor (restored from
    /// a backup on purpose): the anchor moves to this catalog's head.
    AuditAcceptRollback,

    // Principals.
    UserAdd {
        name: String,
        roles: Vec<Role>,
        credential: NewCredential,
    },
    UserList,
    UserDisable {
        name: String,
    },
    UserEnable {
        name: String,
    },
    /// Remove a principal and its grants (the audit log keeps its name).
    UserRemove {
        name: String,
    },
    /// A new credential for a principal: a passphrase, or a random token
    /// made now and shown once. A principal may change its own; a
    /// security-admin anyone's (a role change, under dual control when
    /// `role-change` is).
    UserCredential {
        name: String,
        credential: NewCredential,
    },
    /// Add and remove roles of a principal.
    UserRole {
        name: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        add: Vec<Role>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        remove: Vec<Role>,
    },
    UserGrant {
        name: String,
        on: GrantOn,
        pattern: Pattern,
    },
    UserRevoke {
        name: String,
        on: GrantOn,
        pattern: Pattern,
    },

    // Dual control.
    /// Newest first.
    RequestList {
        /// At most this many (a page); none: every request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        /// Only ids before this one (the last of the previous page).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
    },
    RequestShow {
        id: u64,
    },
    /// Approve a request, which runs its stored operation now. Shares for an
    /// escrow recovery come with the approvals, never with the stored
    /// request: on a server each custodian gives their own, and the
    /// recovery runs once a threshold of custodians has.
    RequestApprove {
        id: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        shares: Vec<SecretText>,
    },
    RequestDeny {
        id: u64,
    },
    /// The requester takes back a pending request of their own.
    RequestWithdraw {
        id: u64,
    },

    // Housekeeping.
    Monitor {
        expiring_days: i64,
        unused_days: i64,
    },
    Fsck {
        read_data: bool,
    },
    Gc {
        dry_run: bool,
        /// How old released objects must be (`24h`); the vault's setting when absent.
        grace: Option<String>,
    },
}

/// The version of the stored form of operations (in dual-control requests).
pub const STORED_VERSION: u32 = 1;

/// An operation as a request stores it: versioned, so a later Custos reads
/// it or refuses it by name.
#[derive(Serialize, Deserialize)]
pub struct Stored {
    pub v: u32,
    pub operation: Operation,
}

impl Operation {
    /// Parse an operation from JSON, refusing fields it does not have
    /// (serde ignores extra fields beside the tag of a variant without
    /// fields; this does not).
    pub fn from_json(bytes: &[u8]) -> Result<Operation, String> {
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let op: Operation = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        let back = serde_json::to_value(&op).map_err(|e| e.to_string())?;
        if let (Some(given), Some(known)) = (v.as_object(), back.as_object()) {
            if known.len() == 1 {
                if let Some(extra) = given.keys().find(|k| *k != "op") {
                    return Err(format!("unknown field `{extra}`: {} takes no fields", op.audit_name().0));
                }
            }
        }
        Ok(op)
    }

    /// The audit log's name for it ("key destroy") and its object (the
    /// first thing it names), as the CLI spells them.
    pub fn audit_name(&self) -> (&'static str, String) {
        use Operation::*;
        let s = |x: &dyn std::fmt::Display| x.to_string();
        let opt = |x: Option<&dyn std::fmt::Display>| x.map(|x| x.to_string()).unwrap_or_default();
        match self {
            KeyCreate { label, .. } => ("key create", opt(label.as_ref().map(|l| l as _))),
            KeyList { pattern, .. } => ("key ls", opt(pattern.as_ref().map(|l| l as _))),
            KeyShow { label } => ("key show", s(label)),
            KeyLifecycle { target, action, .. } => (
                match action {
                    KeyAction::Activate => "key activate",
                    KeyAction::Deactivate => "key deactivate",
                    KeyAction::Archive => "key archive",
                    KeyAction::Restore => "key restore",
                    KeyAction::Compromise => "key compromise",
                    _ => "key lifecycle",
                },
                target.clone(),
            ),
            KeyDestroy { label, .. } => ("key destroy", s(label)),
            KeyRevoke { label, .. } => ("key revoke", s(label)),
            KeySetAttributes { label, .. } => ("key set-attributes", s(label)),
            KeyExport { label } => ("key export", s(label)),
            KeyImport { app, .. } => ("key import", app.clone()),
            KeyGcmEncrypt { label, .. } => ("key gcm-encrypt", s(label)),
            KeyGcmDecrypt { label, .. } => ("key gcm-decrypt", s(label)),
            KeyCancelDestroy { label } => ("key cancel-destroy", s(label)),
            KeyRecover { pattern, .. } => ("key recover", s(pattern)),
            EscrowRecover { label, .. } => ("key recover", s(label)),
            KeyEncrypt { label, .. } => ("key encrypt", s(label)),
            KeyDecrypt { ciphertext, .. } => (
                "key decrypt",
                base64_decode(ciphertext)
                    .ok()
                    .and_then(|b| custos_core::ciphertext_key(&b).ok())
                    .map(|l| l.to_string())
                    .unwrap_or_default(),
            ),
            KeyDataKey { label, .. } => ("key datakey", s(label)),
            VolumeAdd { name, .. } => ("volume add", s(name)),
            VolumeList => ("volume ls", String::new()),
            VolumeRm { name } => ("volume rm", s(name)),
            PolicyAdd { name, .. } => ("policy add", name.clone()),
            PolicyList => ("policy ls", String::new()),
            PolicyRm { name } => ("policy rm", name.clone()),
            DsPut { name, .. } => ("ds put", s(name)),
            DsGet { name, .. } => ("ds get", s(name)),
            DsList { pattern, .. } => ("ds ls", opt(pattern.as_ref().map(|l| l as _))),
            DsInfo { name } => ("ds info", s(name)),
            DsRm { name } => ("ds rm", s(name)),
            DsVerify { name } => ("ds verify", s(name)),
            DsImport { dir, .. } => ("ds import", dir.display().to_string()),
            DsExport { prefix, .. } => ("ds export", s(prefix)),
            ConfigList => ("config ls", String::new()),
            ConfigGet { key } => ("config get", key.clone()),
            ConfigSet { key, .. } => ("config set", key.clone()),
            MkStatus => ("mk status", String::new()),
            MkLoadNew { .. } => ("mk load-new", String::new()),
            MkClearNew => ("mk clear-new", String::new()),
            MkActivate => ("mk activate", String::new()),
            MkReencipher { .. } => ("mk reencipher", String::new()),
            KeystoreBackup { to } => ("keystore backup", s(to)),
            KeystoreBackups => ("keystore backups", String::new()),
            VaultBackup { to } => ("vault backup", s(to)),
            VaultBackups => ("vault backups", String::new()),
            VaultPrune { .. } => ("vault prune", String::new()),
            EscrowInit { .. } => ("escrow init", String::new()),
            EscrowRegister { .. } => ("escrow register", String::new()),
            EscrowShare { kbk } => ("escrow share", kbk.clone().unwrap_or_default()),
            EscrowConfirm { kbk, .. } => ("escrow confirm", kbk.clone()),
            EscrowStatus => ("escrow status", String::new()),
            EscrowPurge { label } => ("escrow purge", s(label)),
            MirrorAdd { primary, .. } => ("mirror add", s(primary)),
            MirrorList => ("mirror ls", String::new()),
            MirrorStatus => ("mirror status", String::new()),
            MirrorRm { primary } => ("mirror rm", s(primary)),
            SnapshotCreate { dataset } => ("snapshot create", s(dataset)),
            SnapshotList { pattern, .. } => ("snapshot ls", opt(pattern.as_ref().map(|l| l as _))),
            SnapshotRm { id } => ("snapshot rm", id.to_string()),
            SnapshotRestore { id, .. } => ("snapshot restore", id.to_string()),
            // A copy that exposes the data says so in the audit log's action.
            BackupRun { pattern, method: custos_core::model::CopyMethod::Plaintext, .. } => {
                ("backup run --plaintext", opt(pattern.as_ref().map(|l| l as _)))
            }
            BackupRun { pattern, .. } => ("backup run", opt(pattern.as_ref().map(|l| l as _))),
            BackupList { pattern, .. } => ("backup ls", opt(pattern.as_ref().map(|l| l as _))),
            BackupShow { id } => ("backup show", id.to_string()),
            BackupPrune { pattern, .. } => ("backup prune", opt(pattern.as_ref().map(|l| l as _))),
            BackupVerify { pattern, .. } => ("backup verify", opt(pattern.as_ref().map(|l| l as _))),
            Restore { dataset, .. } => ("restore", dataset.clone()),
            HsmRun { .. } => ("hsm run", String::new()),
            HsmRuleAdd { name, .. } => ("hsm rule add", name.clone()),
            HsmRuleList => ("hsm rule ls", String::new()),
            HsmRuleRm { name } => ("hsm rule rm", name.clone()),
            HsmMigrate { dataset, .. } => ("hsm migrate", s(dataset)),
            HsmRecall { dataset } => ("hsm recall", s(dataset)),
            RiskReport { pattern, .. } => ("risk report", opt(pattern.as_ref().map(|l| l as _))),
            RiskDrill { pattern, .. } => ("risk drill", opt(pattern.as_ref().map(|l| l as _))),
            AuditList { .. } => ("audit ls", String::new()),
            AuditVerify { against } => ("audit verify", against.as_ref().map(|v| v.to_string()).unwrap_or_default()),
            AuditExportTo { volume } => ("audit export", volume.to_string()),
            CatalogVerify => ("catalog verify", String::new()),
            CatalogRotateKey => ("catalog rotate-key", String::new()),
            AuditExport => ("audit export", String::new()),
            AuditAcceptRollback => ("audit accept-rollback", String::new()),
            UserAdd { name, .. } => ("user add", name.clone()),
            UserList => ("user ls", String::new()),
            UserDisable { name } => ("user disable", name.clone()),
            UserEnable { name } => ("user enable", name.clone()),
            UserGrant { name, .. } => ("user grant", name.clone()),
            UserRole { name, .. } => ("user role", name.clone()),
            UserCredential { name, .. } => ("user credential", name.clone()),
            UserRemove { name } => ("user rm", name.clone()),
            UserRevoke { name, .. } => ("user revoke", name.clone()),
            RequestList { .. } => ("request ls", String::new()),
            RequestShow { id } => ("request show", id.to_string()),
            RequestApprove { id, .. } => ("request approve", id.to_string()),
            RequestDeny { id } => ("request deny", id.to_string()),
            RequestWithdraw { id } => ("request withdraw", id.to_string()),
            Monitor { .. } => ("monitor", String::new()),
            Fsck { .. } => ("fsck", String::new()),
            Gc { .. } => ("gc", String::new()),
        }
    }

    /// The dual-control action this operation is, if it can be controlled.
    pub fn controlled(&self) -> Option<&'static str> {
        use Operation::*;
        Some(match self {
            KeyDestroy { .. } => "key-destroy",
            KeyRecover { .. } => "key-recover",
            EscrowRecover { .. } => "escrow-recover",
            MkActivate => "mk-activate",
            PolicyAdd { .. } | PolicyRm { .. } | ConfigSet { .. } | AuditAcceptRollback => "policy-change",
            UserAdd { .. }
            | UserGrant { .. }
            | UserRevoke { .. }
            | UserDisable { .. }
            | UserEnable { .. }
            | UserRole { .. }
            | UserCredential { .. }
            | UserRemove { .. } => "role-change",
            EscrowInit { .. } | EscrowPurge { .. } => "escrow-change",
            BackupPrune { dry_run: false, .. }
            | VaultPrune { dry_run: false, .. }
            | SnapshotRm { .. }
            | DsRm { .. } => "data-removal",
            KeyLifecycle { action: KeyAction::Archive, dry_run: false, .. } => "key-archive",
            VolumeAdd { .. } | VolumeRm { .. } | MirrorAdd { .. } | MirrorRm { .. } => "volume-change",
            _ => return None,
        })
    }

    /// The operation with every secret taken out, as a request stores it.
    /// `None` when it cannot be stored without one (a key part).
    pub fn without_secrets(&self) -> Option<Operation> {
        let mut op = self.clone();
        match &mut op {
            Operation::EscrowRecover { shares, .. } | Operation::RiskDrill { shares, .. } => shares.clear(),
            Operation::UserAdd { credential: NewCredential::Passphrase(_), .. }
            | Operation::UserCredential { credential: NewCredential::Passphrase(_), .. } => return None,
            Operation::MkLoadNew { parts, .. } if !parts.is_empty() => return None,
            Operation::KeyEncrypt { .. } | Operation::KeyImport { .. } | Operation::KeyGcmEncrypt { .. } => {
                return None
            }
            _ => {}
        }
        Some(op)
    }

    /// Whether everything it does is a write or a read of the catalog,
    /// and nothing of it leaves before its outcome is audited: key
    /// creation, import, lifecycle, attributes, destruction, and reading
    /// keys. Its intent and its writes then go to the catalog's log in
    /// order without each waiting for the disk, and the durable outcome
    /// after them makes them all durable at once: a crash before it loses
    /// the intent only with everything the operation did.
    pub fn effects_in_catalog(&self) -> bool {
        matches!(
            self,
            Operation::KeyCreate { .. }
                | Operation::KeyImport { .. }
                | Operation::KeyLifecycle { .. }
                | Operation::KeyRevoke { .. }
                | Operation::KeySetAttributes { .. }
                | Operation::KeyDestroy { .. }
                | Operation::KeyCancelDestroy { .. }
                | Operation::KeyShow { .. }
                | Operation::KeyList { .. }
        )
    }

    /// Whether one audit entry, written durably after it runs and before
    /// its answer leaves, records it completely: it changes nothing that
    /// matters if it is cut off (a use count), and nothing of its result
    /// reaches the caller before that entry exists. The key service's
    /// requests are such; everything else records its intent first.
    pub fn audited_once(&self) -> bool {
        matches!(
            self,
            Operation::KeyEncrypt { .. }
                | Operation::KeyDecrypt { .. }
                | Operation::KeyDataKey { .. }
                | Operation::KeyExport { .. }
                | Operation::KeyGcmEncrypt { .. }
                | Operation::KeyGcmDecrypt { .. }
        )
    }

    /// Whether it only reads: running it twice changes nothing, so a
    /// client may simply send it again (writes carry an idempotency key
    /// instead, so that a retry on another server never runs one twice).
    pub fn only_reads(&self) -> bool {
        use Operation::*;
        matches!(
            self,
            DsList { .. }
                | DsInfo { .. }
                | DsGet { .. }
                | KeyList { .. }
                | KeyShow { .. }
                | VolumeList
                | PolicyList
                | ConfigList
                | ConfigGet { .. }
                | KeystoreBackups
                | VaultBackups
                | EscrowStatus
                | MirrorList
                | MirrorStatus
                | SnapshotList { .. }
                | BackupList { .. }
                | BackupShow { .. }
                | HsmRuleList
                | AuditList { .. }
                | AuditExport
                | UserList
                | RequestList { .. }
                | RequestShow { .. }
        )
    }

    /// Whether it can run without the HSM in embedded mode: it reads, or
    /// it writes only what a storage administrator without the passphrase
    /// may (raw copies, snapshots, mirrors, migration, the trash), none of
    /// which the catalog key must seal (ADR 0019). Every other operation
    /// opens the HSM first, so that the rows it reads are checked and the
    /// rows it writes sealed.
    pub fn needs_no_key(&self) -> bool {
        use Operation::*;
        match self {
            BackupRun { method, .. } => *method == custos_core::model::CopyMethod::Raw,
            BackupVerify { read_data, .. } | Fsck { read_data } => !read_data,
            HsmRun { without_keys, dry_run } => *without_keys || *dry_run,
            DsList { .. }
            | DsInfo { .. }
            | KeyList { .. }
            | KeyShow { .. }
            | VolumeList
            | PolicyList
            | ConfigList
            | ConfigGet { .. }
            | KeystoreBackups
            | VaultBackups
            | EscrowStatus
            | MirrorList
            | MirrorStatus
            | MirrorAdd { .. }
            | MirrorRm { .. }
            | SnapshotCreate { .. }
            | SnapshotRm { .. }
            | SnapshotList { .. }
            | BackupList { .. }
            | BackupShow { .. }
            | BackupPrune { .. }
            | HsmRuleList
            | HsmMigrate { .. }
            | HsmRecall { .. }
            | RiskReport { .. }
            | AuditList { .. }
            | AuditExport
            | AuditExportTo { .. }
            | UserList
            | Monitor { .. }
            | Gc { .. }
            | RequestList { .. }
            | RequestShow { .. } => true,
            _ => false,
        }
    }

    /// Whether it reads or writes a stream of dataset bytes.
    pub fn streams(&self) -> Stream {
        match self {
            Operation::DsPut { .. } => Stream::In,
            Operation::DsGet { .. } | Operation::AuditExport => Stream::Out,
            _ => Stream::None,
        }
    }

    /// Whether it names a path on the engine's machine (honoured in
    /// embedded mode only: a server never takes a path from a client).
    pub fn names_a_local_path(&self) -> bool {
        matches!(
            self,
            Operation::DsImport { .. } | Operation::DsExport { .. } | Operation::RiskDrill { scratch: Some(_), .. }
        )
    }
}

/// Which way an operation's data flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    None,
    In,
    Out,
}

/// Standard base64, as the key service's JSON carries bytes.
pub fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s.trim()).map_err(|e| format!("not base64: {e}"))
}

pub fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_round_trip_in_their_stored_form() {
        let ops = [
            Operation::KeyDestroy {
                label: KeyLabel::new("DSET.PRIM.PAY.key001").unwrap(),
                crypto_erase: true,
                wait: None,
            },
            Operation::UserGrant { name: "alice".into(), on: GrantOn::Data, pattern: Pattern::new("PAY.**").unwrap() },
            Operation::BackupPrune { pattern: None, keep: Retention { last: 3, ..Default::default() }, dry_run: false },
        ];
        for op in ops {
            let text = crate::requests::encode(&op);
            let back: Stored = serde_json::from_str(&text).unwrap();
            assert_eq!(back.v, STORED_VERSION);
            assert_eq!(back.operation, op);
        }
        // Unknown operations and fields are refused, not guessed at.
        assert!(serde_json::from_str::<Operation>(r#"{"op":"key-eat","label":"x"}"#).is_err());
        assert!(serde_json::from_str::<Operation>(r#"{"op":"ds-rm","name":"A.B","force":true}"#).is_err());
        // Nor beside a variant without fields.
        assert!(Operation::from_json(br#"{"op":"mk-activate","x":42}"#).unwrap_err().contains("unknown field `x`"));
        assert_eq!(Operation::from_json(br#"{"op":"mk-activate"}"#).unwrap(), Operation::MkActivate);
        // Names are validated on the way in.
        assert!(serde_json::from_str::<Operation>(r#"{"op":"ds-rm","name":"../etc"}"#).is_err());
    }

    #[test]
    fn secrets_never_reach_a_request_or_debug() {
        let share = SecretText::new("custos-share-v1 very secret".into());
        let op =
            Operation::EscrowRecover { label: KeyLabel::new("DSET.PRIM.PAY.key001").unwrap(), shares: vec![share] };
        assert!(!format!("{op:?}").contains("very secret"));
        let stored = op.without_secrets().unwrap();
        assert!(!crate::requests::encode(&stored).contains("very secret"));
        let add = Operation::UserAdd {
            name: "bob".into(),
            roles: vec![Role::App],
            credential: NewCredential::Passphrase(SecretText::new("bob's passphrase".into())),
        };
        assert!(add.without_secrets().is_none(), "a passphrase is hashed first, never stored");
        assert!(!format!("{add:?}").contains("bob's passphrase"));
    }

    #[test]
    fn controlled_actions_are_known_to_the_engine() {
        let all = [
            Operation::MkActivate,
            Operation::DsRm { name: DatasetName::new("A.B").unwrap() },
            Operation::EscrowInit { custodians: vec![], threshold: 2 },
            Operation::MirrorRm { primary: VolumeName::new("v").unwrap() },
        ];
        for op in all {
            let a = op.controlled().unwrap();
            assert!(custos_core::CONTROLLABLE.contains(&a), "{a}");
        }
    }
}

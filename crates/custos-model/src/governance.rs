//! Who may do what: built-in roles, the operations they are checked
//! against, and the one table that joins them.

use std::fmt;

use serde::Serialize;

/// A built-in role. A principal holds one or more.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Keys, policies, users, settings.
    SecurityAdmin,
    /// Master key parts and changes, escrow.
    KeyCustodian,
    /// Volumes, raw copies, snapshots, mirrors, migration: no key use.
    StorageAdmin,
    /// Reads and writes the datasets it is granted, under the keys it is granted.
    App,
    /// Read-only: listings, the audit log, the risk report.
    Auditor,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::SecurityAdmin, Role::KeyCustodian, Role::StorageAdmin, Role::App, Role::Auditor];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SecurityAdmin => "security-admin",
            Self::KeyCustodian => "key-custodian",
            Self::StorageAdmin => "storage-admin",
            Self::App => "app",
            Self::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operation, as rights are checked. Data operations additionally need
/// a data grant on the dataset and a key grant on its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// List and show keys, policies, volumes, datasets' metadata, settings.
    Inspect,
    /// Create keys and change their lifecycle; recover keys from backups.
    KeyAdmin,
    /// Destroy a key (scheduled) or cancel that.
    KeyDestroy,
    /// Add or remove policies, change settings.
    PolicyAdmin,
    /// Add, disable, grant, revoke principals.
    UserAdmin,
    /// Load, activate and re-encipher master keys.
    MasterKey,
    /// Set up escrow and recover keys from it.
    Escrow,
    /// Copy the keystore (wrapped keys) to a volume.
    KeystoreBackup,
    /// Add volumes, mirrors, storage-management rules.
    StorageAdmin,
    /// Raw copies, snapshots, migration and recall: sealed bytes, no key.
    StorageCopy,
    /// Prune and verify (metadata) backups.
    BackupAdmin,
    /// Read a dataset's plaintext (get, verify with data, logical copy source).
    DataRead,
    /// Write or remove a dataset (put, import, restore, rm).
    DataWrite,
    /// Read the audit log.
    AuditRead,
    /// The risk report.
    RiskReport,
    /// Risk drills (they clone the vault and use every key).
    RiskDrill,
    /// Decide on dual-control requests.
    Approve,
    /// Encrypt, decrypt and make data keys with a key, through the key
    /// service (key grants apply).
    KeyUse,
}

impl Op {
    pub const ALL: [Op; 18] = [
        Op::Inspect,
        Op::KeyAdmin,
        Op::KeyDestroy,
        Op::PolicyAdmin,
        Op::UserAdmin,
        Op::MasterKey,
        Op::Escrow,
        Op::KeystoreBackup,
        Op::StorageAdmin,
        Op::StorageCopy,
        Op::BackupAdmin,
        Op::DataRead,
        Op::DataWrite,
        Op::AuditRead,
        Op::RiskReport,
        Op::RiskDrill,
        Op::Approve,
        Op::KeyUse,
    ];

    /// Whether the operation touches data, so grants apply.
    pub fn is_data(self) -> bool {
        matches!(self, Op::DataRead | Op::DataWrite | Op::KeyUse)
    }
}

/// The rights table: which roles may perform which operations.
pub fn role_permits(role: Role, op: Op) -> bool {
    use Op::*;
    match role {
        Role::SecurityAdmin => matches!(
            op,
            Inspect
                | KeyAdmin
                | KeyDestroy
                | PolicyAdmin
                | UserAdmin
                | KeystoreBackup
                | AuditRead
                | RiskReport
                | RiskDrill
                | Approve
        ),
        Role::KeyCustodian => matches!(op, Inspect | MasterKey | Escrow | KeystoreBackup | Approve),
        Role::StorageAdmin => matches!(op, Inspect | StorageAdmin | StorageCopy | BackupAdmin | RiskReport),
        Role::App => matches!(op, Inspect | DataRead | DataWrite | KeyUse),
        Role::Auditor => matches!(op, Inspect | AuditRead | RiskReport),
    }
}

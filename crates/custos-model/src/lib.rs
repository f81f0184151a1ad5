//! The Custos vocabulary shared by every other crate: validated names,
//! dataset-name patterns, the key lifecycle (the one table of allowed state
//! changes), the key naming standard, and the records the repository keeps.
//! No I/O.
#![forbid(unsafe_code)]

mod governance;
mod lifecycle;
mod names;
mod naming;
mod records;

pub use governance::{role_permits, Op, Role};
pub use lifecycle::{KeyAction, KeyState, KeyUse, LifecycleError};
pub use names::{file_qualifier, qualifier_file, DatasetName, KeyLabel, NameError, Pattern, VolumeName};
pub use naming::{LabelParts, NamingError, NamingStandard};
pub use records::{
    BackupRecord, CheckedCopy, ChunkId, ChunkRef, CopyCheck, CopyMethod, CustodianKey, DatasetId, DatasetRecord,
    DrillRecord, EscrowCopy, GenerationRecord, HsmRule, KbkRecord, KeyAttributes, KeyRecord, KeystoreBackupRecord,
    Medium, PolicyRecord, PolicyTarget, PrincipalRecord, Purpose, Revocation, SealedShare, SnapshotRecord,
    VaultBackupRecord, VolumeRecord, WrappedMaterial,
};

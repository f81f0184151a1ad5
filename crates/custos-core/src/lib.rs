//! The Custos engine.
//!
//! A [`Vault`] is a directory holding the repository (SQLite), the software
//! HSM file and the default volume. It starts [`Sealed`]: catalog and
//! keystore metadata can be read and administered, but no method that uses a
//! key exists until [`Vault::unseal`] opens the HSM and yields `Vault<Open>`.
//!
//! Datasets are written and read only through [`Vault::put`] and
//! [`Vault::get`] (the access method): callers hand plaintext in and get
//! plaintext out; keys and ciphertext never reach them.
#![forbid(unsafe_code)]

mod audit;
mod auditexport;
mod backup;
mod catalog;
mod datasets;
mod drill;
pub use drill::TokenGuard;
mod error;
mod escrow;
mod export;
mod gc;
mod hsm;
mod importcache;
mod keyattrs;
mod keys;
mod keyservice;
mod keystore;
mod masterkey;
mod migrate;
mod mirror;
mod monitor;
mod pipeline;
mod plaincopy;
pub use plaincopy::SETTING_PLAINTEXT;
mod principals;
pub mod progress;
mod requests;
mod retention;
mod softhome;
mod state;
mod vault;
mod vaultbackup;

pub use audit::{AuditFilter, AuditVerdict, AUDIT_KEY};
pub use auditexport::{AuditComparison, AuditExported};
pub use backup::{PruneDecision, RestoreReport};
pub use custos_hsm::files::{
    seal_share, share_confirmation, CustodianIdentity, FileError, KeyPartFile, SealedShareFile, ShareFile,
    MIN_CUSTODIAN_PASSPHRASE_CHARS,
};
pub use custos_repo::{
    end_snapshot, with_snapshot, with_sync, AuditCheckpoint, AuditRow, CatalogCheck, Idempotency, RepoError,
    RequestRow, RowFault,
};
pub use custos_store::StoreError;
pub use datasets::{DatasetInfo, GetReport, PutOptions, PutReport};
pub use error::{ChunkProblem, Error, Result};
pub use escrow::{EscrowStatus, ShareStatus};
pub use export::ExportReport;
pub use gc::{FsckReport, GcReport, VolumeCheck};
pub use hsm::{HsmAction, MoveReport, NewHsmRule};
pub use keyattrs::{MAX_ATTRIBUTE_LEN, MAX_ATTRIBUTE_VALUES, MAX_CIPHER_DATA, REVOCATION_REASONS};
pub use keys::{parse_duration, DueDestructions, NewKey, MAX_BULK_KEYS};
pub use keyservice::{ciphertext_key, Context as KeyContext, MAX_PLAINTEXT};
pub use keystore::{KeystoreBackupContents, Recovered};
pub use masterkey::{MkStatus, ReencipherReport, RegisterStatus};
pub use migrate::{MigrateReport, MigrateTarget};
pub use mirror::MirrorStatus;
pub use monitor::{prometheus_text, Alert, Metric, MonitorReport, MAX_DAYS as MAX_MONITOR_DAYS};
pub use pipeline::default_threads;
pub use principals::{new_credential, permits, GrantKind, StoredCredential};
pub use requests::{CONTROLLABLE, DEFAULT_DUAL_CONTROL};
pub use retention::Retention;
pub use vault::{
    HsmChoice, HsmKind, InitOptions, NewPolicy, NewVolume, Open, Sealed, Vault, VaultState, DEFAULT_CHUNK_SIZE,
};
pub use vaultbackup::{
    rebuild, rebuild_from_parts, recover, vault_backups_at, RebuildReport, RecoverReport, RecoverWith,
    VaultBackupReport, VaultPruneDecision,
};

pub use custos_crypto::{recipient_from_text, recipient_to_text, KdfParams, Mkvp, Passphrase};
pub use custos_hsm::{HsmError, KeyPart, NewMasterKey, Pkcs11Config};
pub use custos_model as model;
pub use custos_store::DirectWriter;

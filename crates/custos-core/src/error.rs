//! Engine errors.
//!
//! Policy: every variant names the object that failed (dataset, generation,
//! chunk, key, volume, policy) and its message ends with what to do next.
//! Nothing secret is ever part of an error. Variants are matched by callers
//! (the CLI picks exit codes from them); messages are for people.

use std::path::PathBuf;

use custos_model::{ChunkId, DatasetName, KeyLabel, KeyState, LifecycleError};
use custos_store::format::FormatError;
use thiserror::Error;

pub type Result<T> = std::result::Result<T, Error>;

/// What was wrong with one chunk.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ChunkProblem {
    #[error("it is missing")]
    Missing,
    #[error("it is {size} bytes, larger than any chunk of this dataset can be")]
    Oversized { size: u64 },
    #[error("{0}")]
    Format(FormatError),
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    #[error("no vault at {path}: create one with `custos init`, or point --vault / CUSTOS_VAULT at an existing one")]
    NoVault { path: PathBuf },
    #[error("{path} already exists and is not empty: choose a new directory for the vault")]
    VaultExists { path: PathBuf },
    #[error("cannot use the vault directory {path}: {source}")]
    VaultIo { path: PathBuf, source: std::io::Error },
    /// A file or directory that is not the vault's own (a directory to
    /// import, an export or scratch directory, a volume's directory).
    #[error("cannot use {what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },

    #[error("no dataset named {name}: see `custos ds ls`")]
    DatasetNotFound { name: DatasetName },
    #[error("no key labelled {label}: see `custos key ls`")]
    KeyNotFound { label: KeyLabel },
    #[error("no volume named {name}: see `custos volume ls`, or add it with `custos volume add`")]
    VolumeNotFound { name: String },
    #[error("no policy named {name}: see `custos policy ls`")]
    PolicyNotFound { name: String },
    #[error("no user {name:?}: see `custos user ls`")]
    UserNotFound { name: String },
    /// Another named thing that does not exist (a backup, a snapshot, a
    /// request, an `hsm run` rule, a mirror, a keystore backup).
    #[error("no {what} {name}: see `{see}`")]
    NotFound { what: &'static str, name: String, see: &'static str },
    #[error("no policy matches dataset {dataset}: add one with `custos policy add`, or pass --key and --volume")]
    NoPolicy { dataset: DatasetName },

    #[error("dataset {dataset} is sealed under key {label}, which was destroyed{}: {}", at.map(|t| format!(" at {t}")).unwrap_or_default(), if let Some(who) = escrow { format!("the key has an escrow copy; {who} can bring it back with `custos key recover {label} --escrow --share FILE …`") } else { "its data is cryptographically erased and cannot be read back from this copy; restore it from a copy sealed under another key, if one exists".to_string() })]
    /// `escrow`: who can recover it from its escrow copy ("2 of its
    /// custodians alice, bob, carol"), when it has one.
    KeyDestroyed { dataset: DatasetName, label: KeyLabel, at: Option<jiff::Timestamp>, escrow: Option<String> },
    #[error("key {label} cannot be used{}: {source}", dataset.as_ref().map(|d| format!(" for dataset {d}")).unwrap_or_default())]
    KeyUnusable { label: KeyLabel, dataset: Option<DatasetName>, source: LifecycleError },
    #[error("key {label} expired at {at}: it no longer encrypts new data; create a new key with `custos key create` and write under it")]
    KeyExpired { label: KeyLabel, at: jiff::Timestamp },
    #[error("key {label}: {source}")]
    Lifecycle { label: KeyLabel, source: LifecycleError },
    #[error("destroying key {label} would make {} unreadable: {}; re-run with --crypto-erase to erase them on purpose", if datasets.len() == 1 { "this".to_string() } else { format!("these {}", datasets.len()) }, datasets.join(", "))]
    KeyInUse { label: KeyLabel, datasets: Vec<String> },
    #[error("key {label} unwrapped to material whose check value {got} differs from the recorded {want}: the keystore record was altered or swapped; restore the keystore from a backup")]
    KeyMismatch { label: KeyLabel, got: String, want: String },
    #[error("key {label} is {state}: {why}")]
    KeyPurpose { label: KeyLabel, state: KeyState, why: &'static str },
    #[error("key {label} has no material to use: the keystore record is damaged; restore the keystore from a backup")]
    KeyNoMaterial { label: KeyLabel },
    #[error("activating would discard the OLD master key (MKVP {mkvp}), which still wraps {count} keys: run `custos mk reencipher` first")]
    WouldOrphanKeys { mkvp: String, count: u64 },
    #[error("re-encipherment moved {moved} keys but could not move {}: {}; their records are damaged (they keep their old wrapping); recover them from a keystore backup", failed.len(), failed.join(", "))]
    ReencipherFailed { moved: u64, failed: Vec<String> },
    #[error("key {label} in keystore backup {backup} is wrapped under master key MKVP {mkvp}, which no register holds (registers hold: {held}): this backup cannot restore it; {hint}")]
    MasterKeyUnavailable { label: String, backup: String, mkvp: String, held: String, hint: String },
    #[error("backup {backup} is a raw copy of {dataset}, sealed under the primary's key {label}, which was destroyed: a raw copy cannot outlive its key, so its data is erased too; restore from a logical copy (see `custos backup ls`)")]
    RawCopyKeyGone { backup: u64, dataset: DatasetName, label: KeyLabel },
    #[error(transparent)]
    Naming(#[from] custos_model::NamingError),
    #[error(transparent)]
    Name(#[from] custos_model::NameError),
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    /// The catalog change is done, but some objects could not be deleted.
    #[error("{what}, but {count} of its objects could not be deleted now (first: {first}); they wait in the trash: `custos fsck` lists them and `custos gc` deletes them once the volume is back")]
    LeftInTrash { what: String, count: u64, first: String },

    #[error("chunk {index} (id {id}) of dataset {dataset} generation {generation} on {volume}: {problem}. Restore the dataset from a backup copy, or remove it with `custos ds rm` if it is no longer needed")]
    Chunk { dataset: DatasetName, generation: u64, index: u64, id: ChunkId, volume: String, problem: ChunkProblem },
    #[error("the manifest of dataset {dataset} generation {generation} on {volume} {why}. Restore the dataset from a backup copy")]
    Manifest { dataset: DatasetName, generation: u64, volume: String, why: String },
    #[error("user {name} could not be authenticated: wrong or missing credential, or the user is disabled; give --user and the credential (CUSTOS_CREDENTIAL, --credential-file, or the prompt)")]
    AuthFailed { name: String },
    #[error("{principal} may not do this: {why}")]
    Forbidden { principal: String, why: String },
    #[error("key {label} is scheduled for destruction at {at} and cannot be used; `custos key cancel-destroy {label}` brings it back before then")]
    KeyPendingDestruction { label: KeyLabel, at: jiff::Timestamp },
    #[error("the audit log was tampered with: {problem}; keep this vault's catalog as evidence and compare it with an earlier export")]
    AuditTampered { problem: String },
    #[error("the catalog is older than its HSM's record: its audit log ends at entry {catalog}, but the HSM recorded entry {anchored} as written. custos.db was replaced by an older copy, or lost its newest transactions. Put the newest custos.db back; to carry on with this one instead, a security-admin runs `custos audit accept-rollback`")]
    CatalogRollback { catalog: u64, anchored: u64 },
    #[error("the catalog's audit entry {seq} is not the one its HSM recorded: the log was rewritten up to there, or custos.db is another vault's or an older fork. Keep it as evidence and put the right custos.db back; to carry on with this one instead, a security-admin runs `custos audit accept-rollback`")]
    CatalogForked { seq: u64 },
    #[error("the ciphertext does not open under {label} with this encryption context: it was altered, or sealed with another context; give the context it was sealed with")]
    Ciphertext { label: KeyLabel },
    #[error(
        "range {start}..{end} is outside dataset {dataset} ({size} bytes): give START..END with START <= END <= {size}"
    )]
    Range { dataset: DatasetName, start: u64, end: u64, size: u64 },
    #[error("reading the input for dataset {dataset} failed: {source}; nothing was stored")]
    Input { dataset: DatasetName, source: std::io::Error },
    #[error("writing dataset {dataset} to the output failed: {source}")]
    Output { dataset: DatasetName, source: std::io::Error },

    #[error(transparent)]
    Hsm(#[from] custos_hsm::HsmError),
    #[error(transparent)]
    Repo(#[from] custos_repo::RepoError),
    #[error(transparent)]
    Store(#[from] custos_store::StoreError),
}

impl From<custos_hsm::files::FileError> for Error {
    fn from(e: custos_hsm::files::FileError) -> Self {
        Error::Invalid { what: e.what, why: e.why }
    }
}

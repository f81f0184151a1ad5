//! Errors of the operation boundary, and the one place where an error's
//! kind becomes an exit code (the CLI), an HTTP status (the server) or a
//! problem document's `code`.

use custos_core::{Error as CoreError, HsmError, RepoError};

/// What went wrong running an operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Engine(Box<CoreError>),
    #[error(transparent)]
    Risk(Box<custos_risk::RiskError>),
    /// The operation asks for what cannot be done as given (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The operation ran and its result says something is wrong (the
    /// result is shown, then this).
    #[error("{message}")]
    Failed { code: Code, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<custos_core::model::NameError> for Error {
    fn from(e: custos_core::model::NameError) -> Self {
        Error::Engine(Box::new(e.into()))
    }
}

impl From<custos_core::FileError> for Error {
    fn from(e: custos_core::FileError) -> Self {
        Error::Engine(Box::new(e.into()))
    }
}

impl From<CoreError> for Error {
    fn from(e: CoreError) -> Self {
        Error::Engine(Box::new(e))
    }
}

impl From<custos_risk::RiskError> for Error {
    fn from(e: custos_risk::RiskError) -> Self {
        Error::Risk(Box::new(e))
    }
}

/// An error's kind: what callers match on and what decides exit codes
/// and HTTP statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    Other,
    /// Cannot be done in the vault's current state (exit 1, HTTP 409).
    Conflict,
    /// A value in the request is not valid (exit 1, HTTP 400).
    Invalid,
    Usage,
    NotFound,
    Integrity,
    KeyState,
    Authentication,
    Unavailable,
    Forbidden,
    Busy,
    Alerts,
}

impl Code {
    /// The CLI's exit code (documented in `custos --help`).
    pub fn exit(self) -> u8 {
        match self {
            Code::Other | Code::Conflict | Code::Invalid => 1,
            Code::Usage => 2,
            Code::NotFound => 3,
            Code::Integrity => 4,
            Code::KeyState => 5,
            Code::Authentication => 6,
            Code::Unavailable => 7,
            Code::Forbidden => 8,
            Code::Busy => 1,
            Code::Alerts => 10,
        }
    }

    /// The HTTP status of a problem document of this kind.
    pub fn http_status(self) -> u16 {
        match self {
            Code::Other => 500,
            Code::Conflict => 409,
            Code::Invalid | Code::Usage => 400,
            Code::NotFound => 404,
            Code::Integrity => 422,
            Code::KeyState => 409,
            Code::Authentication => 401,
            Code::Unavailable => 503,
            Code::Forbidden => 403,
            Code::Busy => 503,
            Code::Alerts => 200,
        }
    }

    pub fn from_exit(code: u8) -> Code {
        match code {
            2 => Code::Usage,
            3 => Code::NotFound,
            4 => Code::Integrity,
            5 => Code::KeyState,
            6 => Code::Authentication,
            7 => Code::Unavailable,
            8 => Code::Forbidden,
            10 => Code::Alerts,
            _ => Code::Other,
        }
    }
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::Usage(_) => Code::Usage,
            Error::Failed { code, .. } => *code,
            Error::Risk(r) => match r.as_ref() {
                custos_risk::RiskError::Core(e) => core_code(e),
                _ => Code::Other,
            },
            Error::Engine(e) => core_code(e),
        }
    }
}

/// The kind of an engine error.
pub fn core_code(e: &CoreError) -> Code {
    match e {
        CoreError::NoVault { .. }
        | CoreError::DatasetNotFound { .. }
        | CoreError::KeyNotFound { .. }
        | CoreError::VolumeNotFound { .. }
        | CoreError::PolicyNotFound { .. }
        | CoreError::UserNotFound { .. }
        | CoreError::NotFound { .. }
        | CoreError::NoPolicy { .. } => Code::NotFound,
        CoreError::Chunk { .. }
        | CoreError::Manifest { .. }
        | CoreError::KeyMismatch { .. }
        | CoreError::KeyNoMaterial { .. }
        | CoreError::AuditTampered { .. }
        | CoreError::CatalogRollback { .. }
        | CoreError::CatalogForked { .. }
        | CoreError::Ciphertext { .. }
        | CoreError::ReencipherFailed { .. }
        | CoreError::Repo(RepoError::NotACatalog { .. } | RepoError::Tampered { .. }) => Code::Integrity,
        CoreError::KeyDestroyed { .. }
        | CoreError::KeyUnusable { .. }
        | CoreError::KeyExpired { .. }
        | CoreError::Lifecycle { .. }
        | CoreError::KeyInUse { .. }
        | CoreError::KeyPurpose { .. }
        | CoreError::WouldOrphanKeys { .. }
        | CoreError::MasterKeyUnavailable { .. }
        | CoreError::RawCopyKeyGone { .. }
        | CoreError::KeyPendingDestruction { .. } => Code::KeyState,
        CoreError::Hsm(HsmError::WrongPassphrase { .. }) | CoreError::AuthFailed { .. } => Code::Authentication,
        CoreError::Hsm(HsmError::Pkcs11Config(m)) if m.contains("wrong PIN") => Code::Authentication,
        CoreError::Forbidden { .. } => Code::Forbidden,
        CoreError::Repo(RepoError::NeedsKey { .. }) => Code::Authentication,
        CoreError::Store(custos_core::StoreError::NotWriteOnce { .. }) => Code::Invalid,
        CoreError::Store(_)
        | CoreError::LeftInTrash { .. }
        | CoreError::Repo(RepoError::Postgres { .. } | RepoError::PostgresTls { .. } | RepoError::RowKey { .. }) => {
            Code::Unavailable
        }
        CoreError::Hsm(HsmError::Unreachable { .. }) => Code::Unavailable,
        CoreError::Repo(RepoError::Busy { .. }) | CoreError::Hsm(HsmError::Busy { .. }) => Code::Busy,
        CoreError::Invalid { .. }
        | CoreError::VaultExists { .. }
        | CoreError::Hsm(
            HsmError::NoCurrentMasterKey
            | HsmError::NewLoaded { .. }
            | HsmError::NoNewMasterKey
            | HsmError::TooFewCustodians(_)
            | HsmError::AlreadyExists { .. },
        )
        | CoreError::Repo(
            RepoError::Exists { .. }
            | RepoError::Raced { .. }
            | RepoError::NotEmpty { .. }
            | RepoError::InUse { .. }
            | RepoError::LastAdmin { .. }
            | RepoError::NameTaken { .. },
        ) => Code::Conflict,
        CoreError::Name(_) | CoreError::Naming(_) | CoreError::Range { .. } => Code::Invalid,
        CoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Code::NotFound,
        CoreError::Io { .. } => Code::Invalid,
        CoreError::Hsm(
            HsmError::PartMismatch { .. } | HsmError::MkvpMismatch { .. } | HsmError::WeakPassphrase { .. },
        ) => Code::Invalid,
        _ => Code::Other,
    }
}

use thiserror::Error;

/// What went wrong in a cryptographic operation. Deliberately coarse: an
/// authentication failure never says which byte or why, so it cannot be used
/// as an oracle. Callers add the object (dataset, chunk, key) to the message.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// The ciphertext, its tag or its associated data did not authenticate.
    #[error("authentication failed: the data was modified, truncated, moved or sealed under another key")]
    Authentication,
    /// A wrapped key did not unwrap under the given key-encryption key.
    #[error("key unwrap failed: the wrapped key was modified or was wrapped under another master key")]
    Unwrap,
    /// A buffer or input had the wrong length.
    #[error("invalid length: {0}")]
    Length(&'static str),
    /// Argon2id parameters are out of range.
    #[error("invalid key derivation parameters: {0}")]
    KdfParams(String),
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A custodian recipient was mistyped, truncated or is not one.
    #[error("not a valid custodian recipient: expected `custos-recipient-v1:` then 64 hex digits, `:` and an 8-digit check, as `custos escrow keygen` prints it")]
    Recipient,
}

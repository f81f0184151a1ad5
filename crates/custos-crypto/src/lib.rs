//! Cryptography for Custos, with no I/O.
//!
//! * [`DataKey`] / [`MasterKey`]: 256-bit secrets that zeroize on drop, print
//!   `[redacted]`, are neither `Copy` nor `Default`, and compare in constant time.
//! * [`seal_in_place`] / [`open_in_place`]: AES-256-GCM with a 96-bit random nonce.
//! * [`wrap_key`] / [`unwrap_key`]: AES key wrap with padding (RFC 5649, KWP).
//! * [`Kdf`]: Argon2id from a passphrase.
//! * [`Kcv`] / [`Mkvp`]: check values that name a key without revealing it.
//! * [`Fingerprinter`]: a keyed hash of chunk plaintext (BLAKE3, key derived
//!   from the data key with HKDF) so that unchanged chunks can be shared
//!   between generations without revealing anything to a volume reader.
#![forbid(unsafe_code)]

mod aead;
pub mod check;
mod custodian;
mod error;
mod escrow;
mod kdf;
mod secret;
pub mod shamir;
mod wrap;

pub use aead::{
    gcm_open_any, gcm_seal_any, open_in_place, open_with_passphrase_key, seal_in_place, seal_with_passphrase_key,
    Nonce, NONCE_LEN, TAG_LEN,
};
pub use check::{Kcv, Mkvp, KCV_LEN, MKVP_LEN};
pub use custodian::{custodian_keypair, open_sealed, recipient_from_text, recipient_to_text, seal_to, SEALED_OVERHEAD};
pub use error::CryptoError;
pub use escrow::{escrow_open, escrow_seal, kbk_generate, kbk_public, ESCROW_BLOB_LEN};
pub use kdf::{Kdf, KdfParams};
pub use secret::{prime_random, random_array, DataKey, Fingerprinter, MasterKey, Passphrase, PassphraseKey, KEY_LEN};
pub use wrap::{unwrap_key, wrap_key, WRAPPED_KEY_LEN};

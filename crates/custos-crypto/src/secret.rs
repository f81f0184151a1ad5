use std::fmt;

use aws_lc_rs::{constant_time, hkdf, rand};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::CryptoError;

/// Length in bytes of every symmetric key Custos uses (AES-256).
pub const KEY_LEN: usize = 32;

/// Fill an array from the system CSPRNG.
pub fn random_array<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    rand::fill(&mut out).map_err(|_| CryptoError::Random)?;
    Ok(out)
}

/// Start the random generator on a background thread and return at once.
/// aws-lc seeds its generator on first use. Built as this repository builds
/// it (ADR 0021: no CPU-jitter collector) that is one `getrandom`; with
/// aws-lc's default build it is tens of milliseconds of CPU, which this
/// overlaps with a command's start-up (authentication, opening the vault)
/// instead of delaying its first write. Any failure surfaces later, at the
/// first real use.
///
/// The caller joins the thread before the process exits: a command done
/// sooner than the seeding (`ds ls`) would otherwise exit while the thread
/// is inside aws-lc, and aws-lc's exit-time clean-up under a running
/// thread aborted the process now and then (SIGABRT after its output, with
/// nothing on stderr).
pub fn prime_random() -> std::thread::JoinHandle<()> {
    std::thread::spawn(|| {
        let _ = random_array::<1>();
    })
}

macro_rules! secret_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Zeroize, ZeroizeOnDrop)]
        pub struct $name([u8; KEY_LEN]);

        impl $name {
            /// A fresh random key from the system CSPRNG.
            pub fn generate() -> Result<Self, CryptoError> {
                Ok(Self(random_array()?))
            }

            /// Take ownership of key bytes. The caller's copy should be zeroized.
            pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                Self(bytes)
            }

            /// Build from a slice of exactly [`KEY_LEN`] bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
                let arr: [u8; KEY_LEN] = bytes
                    .try_into()
                    .map_err(|_| CryptoError::Length("a key is 32 bytes"))?;
                Ok(Self(arr))
            }

            /// The key bytes. This is the one explicit way to reach key
            /// material; callers must not log, print or persist the result.
            pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "([redacted])"))
            }
        }

        impl PartialEq for $name {
            /// Constant-time comparison.
            fn eq(&self, other: &Self) -> bool {
                constant_time::verify_slices_are_equal(&self.0, &other.0).is_ok()
            }
        }
        impl Eq for $name {}
    };
}

secret_key!(
    /// A data encryption key: seals the chunks and manifests of datasets.
    /// Lives in clear only in memory, after the HSM unwrapped it.
    DataKey
);
secret_key!(
    /// A master key: wraps data keys. Only an HSM implementation holds one.
    MasterKey
);
secret_key!(
    /// A key derived from a passphrase (Argon2id); seals the software HSM file.
    PassphraseKey
);

/// A passphrase. Zeroized on drop, never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Passphrase(Zeroizing<Vec<u8>>);

impl Passphrase {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Passphrase {
    fn from(s: String) -> Self {
        Self::new(s.into_bytes())
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase([redacted])")
    }
}

/// Keyed hash of chunk plaintext, used to recognise unchanged chunks between
/// generations. The key is derived from the data key (HKDF-SHA256, info
/// `custos/v1/chunk-fingerprint`), so fingerprints reveal nothing without it;
/// they are only ever stored inside encrypted manifests.
pub struct Fingerprinter(blake3::Hasher);

impl Fingerprinter {
    /// Fingerprints of plaintext under `key`.
    pub fn new(key: &DataKey) -> Self {
        Self::derive(key, b"custos/v1/chunk-fingerprint")
    }

    /// Fingerprints for a logical copy sealed under `key`, computed from the
    /// source chunk's fingerprint instead of its plaintext (HKDF info
    /// `custos/v1/copy-fingerprint`, a separate domain): a copy need not
    /// decompress or hash the data it re-seals.
    pub fn for_copy(key: &DataKey) -> Self {
        Self::derive(key, b"custos/v1/copy-fingerprint")
    }

    fn derive(key: &DataKey, info: &[u8]) -> Self {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"custos");
        let prk = salt.extract(key.expose_secret());
        let mut sub = Zeroizing::new([0u8; 32]);
        prk.expand(&[info], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut sub[..]))
            .expect("HKDF-SHA256 can always produce 32 bytes");
        Self(blake3::Hasher::new_keyed(&sub))
    }

    /// The 32-byte fingerprint of `data` (a chunk's plaintext, or for
    /// [`Fingerprinter::for_copy`] the source chunk's fingerprint).
    pub fn fingerprint(&self, data: &[u8]) -> [u8; 32] {
        let mut h = self.0.clone();
        h.update(data);
        *h.finalize().as_bytes()
    }
}

impl Drop for Fingerprinter {
    fn drop(&mut self) {
        // The hasher holds the derived fingerprint key.
        self.0.zeroize();
    }
}

impl fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprinter([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_material() {
        let k = DataKey::from_bytes([0xAB; 32]);
        let s = format!("{k:?}");
        assert_eq!(s, "DataKey([redacted])");
        assert!(!s.to_lowercase().contains("ab"));
        let p = Passphrase::from("hunter2".to_string());
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn keys_compare_by_value() {
        assert_eq!(DataKey::from_bytes([1; 32]), DataKey::from_bytes([1; 32]));
        assert_ne!(DataKey::from_bytes([1; 32]), DataKey::from_bytes([2; 32]));
        assert_ne!(DataKey::generate().unwrap(), DataKey::generate().unwrap());
    }

    #[test]
    fn fingerprint_depends_on_key_and_data() {
        let a = Fingerprinter::new(&DataKey::from_bytes([1; 32]));
        let b = Fingerprinter::new(&DataKey::from_bytes([2; 32]));
        assert_eq!(a.fingerprint(b"x"), a.fingerprint(b"x"));
        assert_ne!(a.fingerprint(b"x"), a.fingerprint(b"y"));
        assert_ne!(a.fingerprint(b"x"), b.fingerprint(b"x"));
        assert_ne!(a.fingerprint(b"x"), *blake3::hash(b"x").as_bytes());
        let c = Fingerprinter::for_copy(&DataKey::from_bytes([1; 32]));
        assert_ne!(a.fingerprint(b"x"), c.fingerprint(b"x"), "copy fingerprints are another domain");
        assert_eq!(c.fingerprint(b"x"), c.fingerprint(b"x"));
    }

    #[test]
    fn from_slice_rejects_wrong_length() {
        assert!(DataKey::from_slice(&[0; 31]).is_err());
        assert!(DataKey::from_slice(&[0; 33]).is_err());
        assert!(DataKey::from_slice(&[0; 32]).is_ok());
    }
}

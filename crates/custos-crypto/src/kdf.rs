//! Argon2id key derivation from a passphrase.

use argon2::{Algorithm, Argon2, Params, Version};

use crate::{CryptoError, Passphrase, PassphraseKey, KEY_LEN};

/// Argon2id cost parameters. Stored beside whatever they protect so that a
/// later change of defaults keeps old files openable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// The default: 64 MiB, 3 passes, 1 lane (OWASP's first Argon2id choice
    /// is 46 MiB, 1 pass; this is stronger and still ~0.2 s here).
    pub const DEFAULT: KdfParams = KdfParams { memory_kib: 64 * 1024, iterations: 3, parallelism: 1 };
    /// The floor for anything new: 19 MiB, 2 passes (OWASP's minimum for
    /// Argon2id). Test suites use it too.
    pub const MINIMUM: KdfParams = KdfParams { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 };
    /// What older files may still carry and be read with: 8 MiB, 1 pass.
    const READABLE: KdfParams = KdfParams { memory_kib: 8 * 1024, iterations: 1, parallelism: 1 };

    /// Whether a file sealed with these parameters may be opened.
    pub fn validate(&self) -> Result<(), CryptoError> {
        if self.memory_kib < Self::READABLE.memory_kib || self.memory_kib > 4 * 1024 * 1024 {
            return Err(CryptoError::KdfParams(format!("memory {} KiB is outside 8 MiB..4 GiB", self.memory_kib)));
        }
        if self.iterations == 0 || self.iterations > 64 || self.parallelism == 0 || self.parallelism > 16 {
            return Err(CryptoError::KdfParams("iterations must be 1..64 and parallelism 1..16".into()));
        }
        Ok(())
    }

    /// Whether something new may be sealed with these parameters: at least
    /// [`KdfParams::MINIMUM`].
    pub fn validate_new(&self) -> Result<(), CryptoError> {
        self.validate()?;
        if self.memory_kib < Self::MINIMUM.memory_kib || self.iterations < Self::MINIMUM.iterations {
            return Err(CryptoError::KdfParams(format!(
                "{} MiB and {} pass(es) is below the floor of {} MiB and {} passes (OWASP's minimum for Argon2id): raise --kdf-memory-mib or --kdf-iterations",
                self.memory_kib / 1024,
                self.iterations,
                Self::MINIMUM.memory_kib / 1024,
                Self::MINIMUM.iterations
            )));
        }
        Ok(())
    }
}

/// A configured Argon2id derivation.
#[derive(Clone, Copy, Debug)]
pub struct Kdf {
    pub params: KdfParams,
    pub salt: [u8; 16],
}

impl Kdf {
    pub fn derive(&self, passphrase: &Passphrase) -> Result<PassphraseKey, CryptoError> {
        self.params.validate()?;
        let params =
            Params::new(self.params.memory_kib, self.params.iterations, self.params.parallelism, Some(KEY_LEN))
                .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut out = zeroize::Zeroizing::new([0u8; KEY_LEN]);
        argon
            .hash_password_into(passphrase.expose_secret(), &self.salt, &mut out[..])
            .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
        Ok(PassphraseKey::from_bytes(*out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9106 section 5.3 Argon2id test vector.
    #[test]
    fn rfc9106_argon2id_vector() {
        let params = argon2::ParamsBuilder::new()
            .m_cost(32)
            .t_cost(3)
            .p_cost(4)
            .output_len(32)
            .data(argon2::AssociatedData::new(&[4u8; 12]).unwrap())
            .build()
            .unwrap();
        let argon = Argon2::new_with_secret(&[3u8; 8], Algorithm::Argon2id, Version::V0x13, params).unwrap();
        let mut out = [0u8; 32];
        argon.hash_password_into(&[1u8; 32], &[2u8; 16], &mut out).unwrap();
        assert_eq!(hex::encode(out), "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659");
    }

    #[test]
    fn derivation_depends_on_passphrase_and_salt() {
        let k = |p: &str, s: u8| {
            Kdf { params: KdfParams::MINIMUM, salt: [s; 16] }.derive(&Passphrase::from(p.to_string())).unwrap()
        };
        assert_eq!(k("a", 1), k("a", 1));
        assert_ne!(k("a", 1), k("b", 1));
        assert_ne!(k("a", 1), k("a", 2));
    }

    #[test]
    fn fail_params_out_of_range() {
        let bad = KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 };
        assert!(Kdf { params: bad, salt: [0; 16] }.derive(&Passphrase::from("x".to_string())).is_err());
    }
}

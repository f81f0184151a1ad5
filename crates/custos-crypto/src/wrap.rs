//! AES key wrap with padding (RFC 5649 / NIST SP 800-38F KWP).

use aws_lc_rs::key_wrap::{AesKek, KeyWrapPadded, AES_256};

use crate::{CryptoError, DataKey, MasterKey, KEY_LEN};

/// Length of a wrapped 256-bit key: 32 bytes padded to semiblocks plus the
/// 8-byte integrity check value.
pub const WRAPPED_KEY_LEN: usize = KEY_LEN + 8;

/// Wrap a data key under a master key with AES-256 KWP.
pub fn wrap_key(kek: &MasterKey, key: &DataKey) -> Result<Vec<u8>, CryptoError> {
    let kek = AesKek::new(&AES_256, kek.expose_secret()).map_err(|_| CryptoError::Length("KEK"))?;
    let mut out = vec![0u8; WRAPPED_KEY_LEN + 8];
    let n = kek.wrap_with_padding(key.expose_secret(), &mut out).map_err(|_| CryptoError::Length("wrap output"))?.len();
    out.truncate(n);
    Ok(out)
}

/// Unwrap a key produced by [`wrap_key`]. Fails with [`CryptoError::Unwrap`]
/// when the bytes were altered or wrapped under a different master key.
pub fn unwrap_key(kek: &MasterKey, wrapped: &[u8]) -> Result<DataKey, CryptoError> {
    if wrapped.len() != WRAPPED_KEY_LEN {
        return Err(CryptoError::Unwrap);
    }
    let kek = AesKek::new(&AES_256, kek.expose_secret()).map_err(|_| CryptoError::Length("KEK"))?;
    let mut out = zeroize::Zeroizing::new([0u8; WRAPPED_KEY_LEN]);
    let plain = kek.unwrap_with_padding(wrapped, &mut out[..]).map_err(|_| CryptoError::Unwrap)?;
    DataKey::from_slice(plain).map_err(|_| CryptoError::Unwrap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::{Aes192, Aes256};
    use aes_kw::Kek;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// RFC 5649 section 6 publishes its two vectors with a 192-bit KEK, which
    /// the AES-256-only wrap used here cannot take. They validate an
    /// independent implementation (RustCrypto `aes-kw`), which the next test
    /// then uses as the oracle for AES-256 KWP.
    #[test]
    fn rfc5649_vectors_validate_the_oracle() {
        let kek = Kek::<Aes192>::new(h("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")[..].into());
        let w = kek.wrap_with_padding_vec(&h("c37b7e6492584340bed12207808941155068f738")).unwrap();
        assert_eq!(hex::encode(w), "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a");
        let w = kek.wrap_with_padding_vec(&h("466f7250617369")).unwrap();
        assert_eq!(hex::encode(w), "afbeb0f07dfbf5419200f2ccb50bb24f");
    }

    #[test]
    fn aes256_kwp_agrees_with_independent_implementation() {
        for i in 0..64u8 {
            let mk = MasterKey::from_bytes([i.wrapping_mul(7); 32]);
            let dk = DataKey::generate().unwrap();
            let ours = wrap_key(&mk, &dk).unwrap();
            let oracle =
                Kek::<Aes256>::new(mk.expose_secret()[..].into()).wrap_with_padding_vec(dk.expose_secret()).unwrap();
            assert_eq!(ours, oracle);
            assert_eq!(ours.len(), WRAPPED_KEY_LEN);
            assert_eq!(unwrap_key(&mk, &ours).unwrap(), dk);
        }
    }

    #[test]
    fn fail_unwrap_under_other_master_key_or_altered_bytes() {
        let mk = MasterKey::generate().unwrap();
        let dk = DataKey::generate().unwrap();
        let w = wrap_key(&mk, &dk).unwrap();
        assert_eq!(unwrap_key(&MasterKey::generate().unwrap(), &w).unwrap_err(), CryptoError::Unwrap);
        for i in 0..w.len() {
            let mut bad = w.clone();
            bad[i] ^= 0x01;
            assert_eq!(unwrap_key(&mk, &bad).unwrap_err(), CryptoError::Unwrap);
        }
        assert!(unwrap_key(&mk, &w[..39]).is_err());
        assert!(unwrap_key(&mk, &[]).is_err());
    }
}

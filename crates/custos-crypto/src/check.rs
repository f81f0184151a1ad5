//! Check values: short public patterns that name a key without revealing it.
//!
//! * KCV (key check value) of a data key: the leftmost 5 bytes of
//!   AES-CMAC(key, 16 zero bytes), as ANSI X9.24-1:2017 defines it for AES.
//!   CMAC is used rather than the older "encrypt a zero block", which for a
//!   GCM key would reveal part of the GHASH subkey H = E_K(0).
//! * MKVP (master key verification pattern): the leftmost 8 bytes of
//!   AES-CMAC(master key, "CUSTOS-MKVP-V1" padded with zeros to 16 bytes).
//!   A PKCS#11 token computes the same with CKM_AES_CMAC on a key it never
//!   releases.

use std::fmt;

use aws_lc_rs::cmac;

use crate::{CryptoError, DataKey, MasterKey};

pub const KCV_LEN: usize = 5;
pub const MKVP_LEN: usize = 8;

/// The block a master key is CMAC'ed over for its MKVP.
pub const MKVP_BLOCK: [u8; 16] = *b"CUSTOS-MKVP-V1\0\0";

fn cmac16(key: &[u8], block: &[u8; 16]) -> [u8; 16] {
    let k = cmac::Key::new(cmac::AES_256, key).expect("AES-256 key");
    let tag = cmac::sign(&k, block).expect("CMAC");
    tag.as_ref().try_into().expect("16-byte tag")
}

macro_rules! check_value {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub fn to_hex(&self) -> String {
                hex::encode_upper(self.0)
            }
            pub fn from_hex(s: &str) -> Result<Self, CryptoError> {
                let v = hex::decode(s).map_err(|_| CryptoError::Length(concat!(stringify!($name), " is hexadecimal")))?;
                Self::from_slice(&v)
            }
            pub fn from_slice(b: &[u8]) -> Result<Self, CryptoError> {
                Ok(Self(b.try_into().map_err(|_| CryptoError::Length(concat!(stringify!($name), " length")))?))
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.to_hex())
            }
        }
    };
}

check_value!(
    /// Key check value of a data key.
    Kcv,
    KCV_LEN
);
check_value!(
    /// Master key verification pattern.
    Mkvp,
    MKVP_LEN
);

impl Kcv {
    pub fn of(key: &DataKey) -> Self {
        let t = cmac16(key.expose_secret(), &[0u8; 16]);
        Self(t[..KCV_LEN].try_into().expect("5 bytes"))
    }
}

impl Kcv {
    /// KCV of a master key or master key part, computed as for data keys.
    pub fn of_master(key: &MasterKey) -> Self {
        let t = cmac16(key.expose_secret(), &[0u8; 16]);
        Self(t[..KCV_LEN].try_into().expect("5 bytes"))
    }
}

impl Mkvp {
    pub fn of(key: &MasterKey) -> Self {
        Self::from_cmac(&cmac16(key.expose_secret(), &MKVP_BLOCK))
    }
    /// Build the MKVP from a full 16-byte CMAC over [`MKVP_BLOCK`], for HSMs
    /// that compute the CMAC themselves.
    pub fn from_cmac(tag: &[u8; 16]) -> Self {
        Self(tag[..MKVP_LEN].try_into().expect("8 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4493 gives AES-128 vectors only; NIST SP 800-38B Appendix D.3
    /// gives AES-256 CMAC, Example 9: the empty message.
    #[test]
    fn cmac_matches_sp800_38b_aes256_example() {
        let key = hex::decode("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4").unwrap();
        let k = cmac::Key::new(cmac::AES_256, &key).unwrap();
        let tag = cmac::sign(&k, b"").unwrap();
        assert_eq!(hex::encode(tag.as_ref()), "028962f61b7bf89efc6b551f4667d983");
        let msg = hex::decode("6bc1bee22e409f96e93d7e117393172a").unwrap();
        let tag = cmac::sign(&k, &msg).unwrap();
        assert_eq!(hex::encode(tag.as_ref()), "28a7023f452e8f82bd4bf28d8c37c35c");
    }

    #[test]
    fn check_values_identify_keys() {
        let a = DataKey::from_bytes([1; 32]);
        let b = DataKey::from_bytes([2; 32]);
        assert_eq!(Kcv::of(&a), Kcv::of(&DataKey::from_bytes([1; 32])));
        assert_ne!(Kcv::of(&a), Kcv::of(&b));
        let m = MasterKey::from_bytes([1; 32]);
        assert_eq!(Mkvp::of(&m).to_hex().len(), 16);
        assert_eq!(Mkvp::from_hex(&Mkvp::of(&m).to_hex()).unwrap(), Mkvp::of(&m));
        // Same bytes as a data key and as a master key give unrelated values.
        assert_ne!(&Kcv::of(&a).0[..], &Mkvp::of(&m).0[..KCV_LEN]);
    }
}

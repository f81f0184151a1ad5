//! Shamir secret sharing of 32-byte secrets over GF(2^8) (the AES field,
//! x^8 + x^4 + x^3 + x + 1), byte by byte. Share `x` coordinates are 1..=n.
//! Field arithmetic is bitwise with no secret-indexed tables, so timing
//! does not depend on the secret.

use zeroize::{Zeroize, Zeroizing};

use crate::{random_array, CryptoError};

/// One share: its x coordinate (1..=255) and 32 y bytes. Secret.
#[derive(Clone, Zeroize, zeroize::ZeroizeOnDrop)]
pub struct Share {
    pub x: u8,
    pub y: [u8; 32],
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Share(x={}, [redacted])", self.x)
    }
}

fn mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    for _ in 0..8 {
        p ^= a & 0u8.wrapping_sub(b & 1);
        let carry = 0u8.wrapping_sub(a >> 7);
        a = (a << 1) ^ (0x1b & carry);
        b >>= 1;
    }
    p
}

fn inv(a: u8) -> u8 {
    // a^254 = a^-1 in GF(2^8) (and 0 for 0, never used).
    let mut r = 1u8;
    let mut base = a;
    let mut e = 254u8;
    while e > 0 {
        if e & 1 == 1 {
            r = mul(r, base);
        }
        base = mul(base, base);
        e >>= 1;
    }
    r
}

/// Split `secret` into `n` shares of which any `k` recover it.
pub fn split(secret: &[u8; 32], k: u8, n: u8) -> Result<Vec<Share>, CryptoError> {
    if k < 2 || n < k {
        return Err(CryptoError::Length("secret sharing needs 2 <= k <= n <= 255"));
    }
    // coeffs[i] holds the degree-(i+1) coefficients for all 32 bytes.
    let mut coeffs: Vec<Zeroizing<[u8; 32]>> = Vec::with_capacity(k as usize - 1);
    for _ in 1..k {
        coeffs.push(Zeroizing::new(random_array()?));
    }
    Ok((1..=n)
        .map(|x| {
            let mut y = [0u8; 32];
            for (b, out) in y.iter_mut().enumerate() {
                // Horner: ((c_{k-1} x + c_{k-2}) x + ...) x + secret
                let mut acc = 0u8;
                for c in coeffs.iter().rev() {
                    acc = mul(acc ^ c[b], x);
                }
                *out = acc ^ secret[b];
            }
            Share { x, y }
        })
        .collect())
}

/// Recover the secret from `k` or more distinct shares. With fewer than the
/// threshold the result is a different, uniformly random value: callers
/// must check it (for example against a public key).
pub fn combine(shares: &[Share]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let mut xs: Vec<u8> = shares.iter().map(|s| s.x).collect();
    xs.sort_unstable();
    xs.dedup();
    if shares.len() < 2 || xs.len() != shares.len() || xs[0] == 0 {
        return Err(CryptoError::Length("give at least two shares with distinct, non-zero x"));
    }
    let mut out = Zeroizing::new([0u8; 32]);
    for (j, sj) in shares.iter().enumerate() {
        // Lagrange basis at 0: prod_{m != j} x_m / (x_m - x_j); minus is xor.
        let mut l = 1u8;
        for (m, sm) in shares.iter().enumerate() {
            if m != j {
                l = mul(l, mul(sm.x, inv(sm.x ^ sj.x)));
            }
        }
        for b in 0..32 {
            out[b] ^= mul(sj.y[b], l);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_arithmetic() {
        // FIPS-197 section 4.2: {57} • {83} = {c1}, {57} • {13} = {fe}.
        assert_eq!(mul(0x57, 0x83), 0xc1);
        assert_eq!(mul(0x57, 0x13), 0xfe);
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "{a}");
        }
    }

    #[test]
    fn any_k_of_n_recover_and_fewer_do_not() {
        let secret: [u8; 32] = random_array().unwrap();
        let shares = split(&secret, 3, 5).unwrap();
        assert_eq!(shares.len(), 5);
        for a in 0..5 {
            for b in a + 1..5 {
                for c in b + 1..5 {
                    let pick = [shares[a].clone(), shares[b].clone(), shares[c].clone()];
                    assert_eq!(*combine(&pick).unwrap(), secret);
                }
                let two = [shares[a].clone(), shares[b].clone()];
                assert_ne!(*combine(&two).unwrap(), secret, "two of a 3-of-5 split must not recover it");
            }
        }
        assert_eq!(*combine(&shares).unwrap(), secret, "more than k also works");
        let dup = [shares[0].clone(), shares[0].clone(), shares[1].clone()];
        assert!(combine(&dup).is_err());
        assert!(split(&secret, 1, 3).is_err() && split(&secret, 4, 3).is_err());
        assert_eq!(format!("{:?}", shares[0]), "Share(x=1, [redacted])");
    }
}

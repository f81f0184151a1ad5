//! Who is calling: HTTP Basic (a principal's name and its passphrase or
//! script token), or a TLS client certificate the configuration maps to a
//! principal. A verified credential is remembered for a few minutes under
//! an HMAC with a key this process made, so repeated requests do not each
//! pay for Argon2id; the principal's record (roles, grants, disabled) is
//! read afresh on every request, and a remembered login counts only while
//! the stored credential is the one it was verified against.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use base64::Engine as _;
use custos_core::Passphrase;
use custos_ops::{Caller, Engine};

/// How long a verified credential is remembered.
const REMEMBER: Duration = Duration::from_secs(300);
/// At most this many remembered credentials (oldest dropped first).
const MAX_REMEMBERED: usize = 10_000;

pub struct Authenticator {
    key: hmac::Key,
    /// By tag: the principal, its stored credential (hash) when verified,
    /// and when. A remembered login counts only while the principal's
    /// stored credential is still that one: a rotation ends it at once.
    seen: Mutex<HashMap<[u8; 32], (String, String, Instant)>>,
}

/// Why a request has no caller.
#[derive(Debug)]
pub enum AuthError {
    /// No credential at all.
    Missing,
    /// A malformed Authorization header.
    Malformed,
    /// The engine refused the credential (audited there).
    Refused(custos_ops::Error),
}

impl Authenticator {
    pub fn new() -> Self {
        let mut raw = zeroize::Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(&mut raw[..]).expect("the system's random source works");
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, &raw[..]), seen: Mutex::new(HashMap::new()) }
    }

    fn tag(&self, user: &str, secret: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&(user.len() as u64).to_be_bytes());
        ctx.update(user.as_bytes());
        ctx.update(secret);
        ctx.sign().as_ref().try_into().expect("32 bytes")
    }

    /// The caller a request's `Authorization` header names, or the
    /// principal its client certificate maps to.
    pub fn caller(
        &self,
        engine: &Engine,
        authorization: Option<&str>,
        cert_principal: Option<&str>,
    ) -> Result<Caller, AuthError> {
        if let Some(header) = authorization {
            let (user, secret) = parse_basic(header).ok_or(AuthError::Malformed)?;
            return self.login(engine, &user, secret);
        }
        if let Some(name) = cert_principal {
            return match engine.vault().user(name) {
                Ok(p) if !p.disabled => Ok(Caller::Principal(p)),
                _ => Err(AuthError::Refused(custos_core::Error::AuthFailed { name: name.into() }.into())),
            };
        }
        Err(AuthError::Missing)
    }

    /// The caller, when that needs no credential check now: a credential
    /// verified within the last minutes, or a pinned client certificate.
    /// `None` means [`Auth::caller`] must decide (it may be slow).
    pub fn remembered(
        &self,
        engine: &Engine,
        authorization: Option<&str>,
        cert_principal: Option<&str>,
    ) -> Option<Caller> {
        match (authorization, cert_principal) {
            (Some(header), _) => {
                let (user, secret) = parse_basic(header)?;
                let tag = self.tag(&user, &secret);
                let stored = {
                    let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                    seen.get(&tag).filter(|(u, _, at)| *u == user && at.elapsed() < REMEMBER).map(|(_, c, _)| c.clone())
                }?;
                engine
                    .vault()
                    .user(&user)
                    .ok()
                    .filter(|p| !p.disabled && constant_eq(&p.credential, &stored))
                    .map(Caller::Principal)
            }
            (None, Some(_)) => self.caller(engine, None, cert_principal).ok(),
            (None, None) => None,
        }
    }

    /// Check a principal's credential (the console's sign-in): the engine
    /// decides and audits, as for any login.
    pub fn password(&self, engine: &Engine, user: &str, secret: &Passphrase) -> Result<Caller, custos_ops::Error> {
        engine.login(user, secret)
    }

    fn login(&self, engine: &Engine, user: &str, secret: zeroize::Zeroizing<Vec<u8>>) -> Result<Caller, AuthError> {
        let tag = self.tag(user, &secret);
        let remembered = {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.get(&tag).filter(|(u, _, at)| u == user && at.elapsed() < REMEMBER).map(|(_, c, _)| c.clone())
        };
        if let Some(stored) = remembered {
            if let Ok(p) = engine.vault().user(user) {
                if !p.disabled && constant_eq(&p.credential, &stored) {
                    return Ok(Caller::Principal(p));
                }
            }
        }
        let caller = engine.login(user, &Passphrase::new(secret.to_vec())).map_err(AuthError::Refused)?;
        let stored = caller.principal().map(|p| p.credential.clone()).unwrap_or_default();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_REMEMBERED {
            seen.retain(|_, (_, _, at)| at.elapsed() < REMEMBER);
            if seen.len() >= MAX_REMEMBERED {
                seen.clear();
            }
        }
        seen.insert(tag, (user.to_string(), stored, Instant::now()));
        Ok(caller)
    }
}

/// Whether two strings are equal, in time that does not depend on where
/// they differ.
pub(crate) fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

/// `Basic base64(user:secret)`.
fn parse_basic(header: &str) -> Option<(String, zeroize::Zeroizing<Vec<u8>>)> {
    let b64 = header.strip_prefix("Basic ")?;
    let raw = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?);
    let colon = raw.iter().position(|b| *b == b':')?;
    let user = String::from_utf8(raw[..colon].to_vec()).ok()?;
    Some((user, zeroize::Zeroizing::new(raw[colon + 1..].to_vec())))
}

/// The `Authorization` header for `user` and `secret` (for clients).
pub fn basic(user: &str, secret: &[u8]) -> zeroize::Zeroizing<String> {
    let mut raw = zeroize::Zeroizing::new(Vec::with_capacity(user.len() + 1 + secret.len()));
    raw.extend_from_slice(user.as_bytes());
    raw.push(b':');
    raw.extend_from_slice(secret);
    zeroize::Zeroizing::new(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(&raw[..])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_round_trips_and_rejects_garbage() {
        let h = basic("alice", b"pass:with:colons");
        let (u, s) = parse_basic(&h).unwrap();
        assert_eq!((u.as_str(), &s[..]), ("alice", &b"pass:with:colons"[..]));
        assert!(parse_basic("Bearer x").is_none());
        assert!(parse_basic("Basic !!!").is_none());
        assert!(parse_basic("Basic bm9jb2xvbg==").is_none()); // "nocolon"
    }
}

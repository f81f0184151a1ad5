//! Principals, their credentials and grants, and the one place where a
//! principal's right to an operation is decided ([`Vault::authorize`]).

use aws_lc_rs::{constant_time, digest};
use custos_crypto::{Kdf, KdfParams, Passphrase};
use custos_model::{role_permits, DatasetName, KeyLabel, Op, Pattern, PrincipalRecord, Role};
use jiff::Timestamp;

use crate::vault::{Vault, VaultState};
use crate::{Error, Result};

/// Argon2id for passphrases: 19 MiB, 2 passes (OWASP's recommendation),
/// fast enough to run on every command.
const CREDENTIAL_KDF: KdfParams = KdfParams { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 };
const TOKEN_PREFIX: &str = "cst_";

fn hash_passphrase(secret: &Passphrase, params: KdfParams, salt: [u8; 16]) -> Result<[u8; 32]> {
    let k =
        Kdf { params, salt }.derive(secret).map_err(|e| Error::Invalid { what: "credential", why: e.to_string() })?;
    Ok(*k.expose_secret())
}

fn sha256(b: &[u8]) -> [u8; 32] {
    digest::digest(&digest::SHA256, b).as_ref().try_into().expect("32 bytes")
}

/// Check `secret` against a stored credential, in constant time.
fn credential_matches(stored: &str, secret: &Passphrase) -> bool {
    let parts: Vec<&str> = stored.split('$').collect();
    let want = match parts.as_slice() {
        ["argon2id", m, t, salt, hash] => {
            let (Ok(m), Ok(t), Ok(salt), Ok(hash)) = (m.parse(), t.parse(), hex::decode(salt), hex::decode(hash))
            else {
                return false;
            };
            let Ok(salt): std::result::Result<[u8; 16], _> = salt.try_into() else { return false };
            let params = KdfParams { memory_kib: m, iterations: t, parallelism: 1 };
            match hash_passphrase(secret, params, salt) {
                Ok(got) => return constant_time::verify_slices_are_equal(&got, &hash).is_ok(),
                Err(_) => return false,
            }
        }
        ["token", hash] => hex::decode(hash).unwrap_or_default(),
        _ => return false,
    };
    constant_time::verify_slices_are_equal(&sha256(secret.expose_secret()), &want).is_ok()
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
        return Err(Error::Invalid {
            what: "user name",
            why: format!("{name:?}: use 1 to 64 letters, digits and - _ . @"),
        });
    }
    Ok(())
}

/// A credential as the catalog stores it: an Argon2id hash of a
/// passphrase, or a SHA-256 hash of a token. Holds no secret, so a pending
/// request may keep it.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StoredCredential(String);

/// A hash is not a secret, but an offline guess needs nothing else: it
/// stays out of logs and panics.
impl std::fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = self.0.split('$').next().unwrap_or("?");
        write!(f, "StoredCredential({kind}, [redacted])")
    }
}

impl schemars::JsonSchema for StoredCredential {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StoredCredential".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(argon2id\\$[0-9]+\\$[0-9]+\\$[0-9a-f]{32}\\$[0-9a-f]{64}|token\\$[0-9a-f]{64})$",
            "description": "a credential as the catalog stores it: argon2id$m$t$salt$hash or token$sha256"
        })
    }
}

impl TryFrom<String> for StoredCredential {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        let parts: Vec<&str> = s.split('$').collect();
        let ok = match parts.as_slice() {
            ["argon2id", m, t, salt, hash] => {
                m.parse::<u32>().is_ok_and(|m| m >= CREDENTIAL_KDF.memory_kib)
                    && t.parse::<u32>().is_ok_and(|t| t >= CREDENTIAL_KDF.iterations)
                    && salt.len() == 32
                    && hash.len() == 64
                    && hex::decode(salt).is_ok()
                    && hex::decode(hash).is_ok()
            }
            ["token", hash] => hash.len() == 64 && hex::decode(hash).is_ok(),
            _ => false,
        };
        if ok {
            Ok(Self(s))
        } else {
            Err(Error::Invalid { what: "credential", why: "not a stored credential this Custos writes".into() })
        }
    }
}

impl From<StoredCredential> for String {
    fn from(c: StoredCredential) -> String {
        c.0
    }
}

/// The stored form of a new principal's credential: the passphrase's
/// Argon2id hash; without one, a new random token (returned once, for the
/// principal's scripts) and its SHA-256 hash.
pub fn new_credential(passphrase: Option<&Passphrase>) -> Result<(StoredCredential, Option<String>)> {
    let random = |what| -> Result<[u8; 32]> {
        custos_crypto::random_array().map_err(|e| Error::Invalid { what, why: e.to_string() })
    };
    match passphrase {
        Some(p) => {
            if p.expose_secret().len() < 8 {
                return Err(Error::Invalid { what: "credential", why: "it is shorter than 8 characters".into() });
            }
            let salt: [u8; 16] =
                custos_crypto::random_array().map_err(|e| Error::Invalid { what: "random", why: e.to_string() })?;
            let h = hash_passphrase(p, CREDENTIAL_KDF, salt)?;
            Ok((
                StoredCredential(format!(
                    "argon2id${}${}${}${}",
                    CREDENTIAL_KDF.memory_kib,
                    CREDENTIAL_KDF.iterations,
                    hex::encode(salt),
                    hex::encode(h)
                )),
                None,
            ))
        }
        None => {
            let token = format!("{TOKEN_PREFIX}{}", hex::encode(random("random")?));
            Ok((StoredCredential(format!("token${}", hex::encode(sha256(token.as_bytes())))), Some(token)))
        }
    }
}

impl<S: VaultState> Vault<S> {
    /// Add a principal. With a passphrase, it is stored as an Argon2id hash;
    /// without, a random token is made, stored as a SHA-256 hash, and
    /// returned once (for scripts).
    pub fn user_add(
        &self,
        name: &str,
        roles: &[Role],
        passphrase: Option<&Passphrase>,
    ) -> Result<(PrincipalRecord, Option<String>)> {
        check_name(name)?;
        let (stored, token) = new_credential(passphrase)?;
        Ok((self.user_add_stored(name, roles, stored)?, token))
    }

    /// Add a principal whose credential was prepared by [`new_credential`]
    /// (a dual-controlled `user add` stores only that, never the secret).
    pub fn user_add_stored(&self, name: &str, roles: &[Role], credential: StoredCredential) -> Result<PrincipalRecord> {
        check_name(name)?;
        if roles.is_empty() {
            return Err(Error::Invalid { what: "roles", why: "give at least one --role".into() });
        }
        let mut roles = roles.to_vec();
        roles.sort();
        roles.dedup();
        let rec = PrincipalRecord {
            name: name.into(),
            roles,
            credential: credential.0,
            disabled: false,
            created_at: Timestamp::now(),
            data_grants: Vec::new(),
            key_grants: Vec::new(),
        };
        self.repo.insert_principal(&rec)?;
        Ok(rec)
    }

    pub fn users(&self) -> Result<Vec<PrincipalRecord>> {
        Ok(self.repo.principals()?)
    }

    pub fn user(&self, name: &str) -> Result<PrincipalRecord> {
        self.repo.principal(name)?.ok_or_else(|| Error::UserNotFound { name: name.to_string() })
    }

    /// How many enabled security-admins there are besides `name`.
    fn enabled_admins_besides(&self, name: &str) -> Result<usize> {
        Ok(self
            .users()?
            .into_iter()
            .filter(|p| !p.disabled && p.roles.contains(&Role::SecurityAdmin) && p.name != name)
            .count())
    }

    /// Remove a principal and its grants. The audit log keeps its name.
    /// Refused for the last enabled security-admin, and for an escrow
    /// custodian (its share is part of escrow: disable it instead).
    pub fn user_remove(&self, name: &str) -> Result<()> {
        let u = self.user(name)?;
        if u.roles.contains(&Role::SecurityAdmin) && !u.disabled && self.enabled_admins_besides(&u.name)? == 0 {
            return Err(Error::Invalid {
                what: "user rm",
                why: format!("{name} is the last enabled security-admin; add another first"),
            });
        }
        if self.repo.custodian_keys()?.iter().any(|k| k.principal == name) {
            return Err(Error::Invalid {
                what: "user rm",
                why: format!(
                    "{name} is an escrow custodian: its share is part of escrow; disable it instead (`custos user disable {name}`), or re-initialise escrow without it first"
                ),
            });
        }
        if !self.repo.remove_principal(name)? {
            return Err(Error::UserNotFound { name: name.into() });
        }
        Ok(())
    }

    /// Replace a principal's credential with one prepared by
    /// [`new_credential`]. Its sessions and remembered logins end with the
    /// old credential (a server compares the stored hash it remembered).
    pub fn user_set_credential(&self, name: &str, credential: StoredCredential) -> Result<()> {
        self.user(name)?;
        Ok(self.repo.set_principal_credential(name, &credential.0)?)
    }

    /// Add and remove roles of a principal. It keeps at least one, and the
    /// last enabled security-admin keeps that role (else nobody could
    /// manage principals again). The principal as it now is.
    pub fn user_roles(&self, name: &str, add: &[Role], remove: &[Role]) -> Result<PrincipalRecord> {
        let u = self.user(name)?;
        if let Some(r) = add.iter().find(|r| remove.contains(r)) {
            return Err(Error::Invalid { what: "user role", why: format!("{} is both added and removed", r.as_str()) });
        }
        if let Some(r) = remove.iter().find(|r| !u.roles.contains(r)) {
            return Err(Error::Invalid {
                what: "user role",
                why: format!("{name} does not have the role {}", r.as_str()),
            });
        }
        let mut roles: Vec<Role> = u.roles.iter().copied().filter(|r| !remove.contains(r)).collect();
        for r in add {
            if !roles.contains(r) {
                roles.push(*r);
            }
        }
        if roles.is_empty() {
            return Err(Error::Invalid {
                what: "user role",
                why: format!("{name} would have no role left: add another, or `custos user disable {name}`"),
            });
        }
        if u.roles.contains(&Role::SecurityAdmin)
            && !roles.contains(&Role::SecurityAdmin)
            && !u.disabled
            && self.enabled_admins_besides(&u.name)? == 0
        {
            return Err(Error::Invalid {
                what: "user role",
                why: format!("{name} is the last enabled security-admin; give the role to another principal first"),
            });
        }
        if roles == u.roles {
            return Ok(u);
        }
        self.repo.set_principal_roles(name, &roles)?;
        self.user(name)
    }

    /// Disable a principal; the last enabled security-admin cannot be.
    pub fn user_disable(&self, name: &str) -> Result<()> {
        let u = self.user(name)?;
        if u.roles.contains(&Role::SecurityAdmin) && self.enabled_admins_besides(&u.name)? == 0 {
            return Err(Error::Invalid {
                what: "user disable",
                why: format!("{name} is the last enabled security-admin; add another first"),
            });
        }
        Ok(self.repo.set_principal_disabled(name, true)?)
    }

    /// Enable a disabled principal again (its roles, grants and credential
    /// as they were). Enabling one that is enabled is a no-op.
    pub fn user_enable(&self, name: &str) -> Result<()> {
        self.user(name)?;
        Ok(self.repo.set_principal_disabled(name, false)?)
    }

    /// Grant access to datasets (`data`) or keys (`key`) matching `pattern`.
    pub fn grant(&self, name: &str, kind: GrantKind, pattern: &Pattern) -> Result<()> {
        self.user(name)?;
        Ok(self.repo.add_grant(name, kind.as_str(), pattern)?)
    }

    pub fn revoke(&self, name: &str, kind: GrantKind, pattern: &Pattern) -> Result<()> {
        if !self.repo.remove_grant(name, kind.as_str(), pattern)? {
            return Err(Error::Invalid {
                what: "revoke",
                why: format!("{name} has no {} grant {pattern}", kind.as_str()),
            });
        }
        Ok(())
    }

    /// Whether the vault has principals at all (vaults made before
    /// governance have none, and run as before until the first is added).
    pub fn has_users(&self) -> Result<bool> {
        Ok(!self.repo.principals()?.is_empty())
    }

    /// Who is acting: the principal `name`, if `secret` is its credential
    /// and it is enabled. One message for every failure, so it tells an
    /// attacker nothing.
    pub fn authenticate(&self, name: &str, secret: &Passphrase) -> Result<PrincipalRecord> {
        match self.repo.principal(name)? {
            Some(p) if !p.disabled && credential_matches(&p.credential, secret) => Ok(p),
            _ => Err(Error::AuthFailed { name: name.into() }),
        }
    }

    /// The one place where rights are decided: may `p` perform `op`, on
    /// `dataset` sealed under `key` when it is a data operation?
    pub fn authorize(
        &self,
        p: &PrincipalRecord,
        op: Op,
        dataset: Option<&DatasetName>,
        key: Option<&KeyLabel>,
    ) -> Result<()> {
        permits(p, op, dataset.map(DatasetName::as_str), key.map(KeyLabel::as_str))
            .map_err(|why| Error::Forbidden { principal: p.name.clone(), why })
    }
}

/// Whether `p` may do `op` (on `dataset`, under `key`): its state, its
/// roles, and for data operations its data and key grants. The reason when
/// not. The one rule [`Vault::authorize`] enforces, also read by the risk
/// report (who could destroy what alone).
pub fn permits(
    p: &PrincipalRecord,
    op: Op,
    dataset: Option<&str>,
    key: Option<&str>,
) -> std::result::Result<(), String> {
    let name = &p.name;
    if p.disabled {
        return Err(format!("the user is disabled; a security-admin can enable it (`custos user enable {name}`)"));
    }
    if !p.roles.iter().any(|r| role_permits(*r, op)) {
        let roles: Vec<&str> = p.roles.iter().map(|r| r.as_str()).collect();
        let allow: Vec<&str> = Role::ALL.iter().filter(|r| role_permits(**r, op)).map(|r| r.as_str()).collect();
        let needs = match allow.as_slice() {
            [one] => format!("the role {one}"),
            many => format!("one of the roles {}", many.join(", ")),
        };
        return Err(format!(
            "its roles ({}) do not allow {op:?}, which needs {needs}; a security-admin can add it (`custos user role {name} --add {}`)",
            roles.join(", "),
            allow.first().copied().unwrap_or("ROLE")
        ));
    }
    if op.is_data() {
        if let Some(d) = dataset {
            if !p.data_grants.iter().any(|g| g.matches(d)) {
                return Err(format!(
                    "it has no data grant that covers dataset {d}; a security-admin can grant one (`custos user grant {name} --data PATTERN`)"
                ));
            }
        }
        if let Some(k) = key {
            if !p.key_grants.iter().any(|g| g.matches(k)) {
                return Err(format!(
                    "it has no key grant that covers key {k}; a security-admin can grant one (`custos user grant {name} --key PATTERN`)"
                ));
            }
        }
    }
    Ok(())
}

/// What a grant covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantKind {
    Data,
    Key,
}

impl GrantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Key => "key",
        }
    }
}

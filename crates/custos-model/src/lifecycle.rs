//! Key lifecycle: every allowed state change is in [`KeyState::apply`], and
//! what each state allows a key to do is in [`KeyState::permits`]. Nothing
//! else in Custos decides either.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// States of a data key, after the paper and KMIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum KeyState {
    /// Created, not yet usable.
    PreActive,
    /// Encrypts and decrypts.
    Active,
    /// Decrypts only (existing data stays readable; no new data).
    Inactive,
    /// Offline: unusable until restored.
    Archived,
    /// Revoked because its material may be known to someone else (KMIP's
    /// "compromised"): decrypts what exists, never seals anything new, and
    /// can only be destroyed.
    Compromised,
    /// Material erased: everything sealed only under it is cryptographically erased.
    Destroyed,
}

/// Lifecycle commands an administrator gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAction {
    Activate,
    Deactivate,
    Archive,
    Restore,
    Destroy,
    /// Revoke it as compromised.
    Compromise,
}

/// What a key is used for in one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyUse {
    /// Sealing new data.
    Encrypt,
    /// Opening existing data.
    Decrypt,
}

impl KeyState {
    pub const ALL: [KeyState; 6] =
        [Self::PreActive, Self::Active, Self::Inactive, Self::Archived, Self::Compromised, Self::Destroyed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PreActive => "pre-active",
            Self::Active => "active",
            Self::Inactive => "inactive",
            Self::Archived => "archived",
            Self::Compromised => "compromised",
            Self::Destroyed => "destroyed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The state after `action`, or why it is not allowed.
    ///
    /// | from \ action | activate | deactivate | archive | restore | destroy | compromise |
    /// |---|---|---|---|---|---|---|
    /// | pre-active | active | – | – | – | destroyed | compromised |
    /// | active | – | inactive | – | – | – (deactivate first) | compromised |
    /// | inactive | active | – | archived | – | destroyed | compromised |
    /// | archived | – | – | – | inactive | destroyed | compromised |
    /// | compromised | – | – | – | – | destroyed | – |
    /// | destroyed | – | – | – | – | – | – |
    pub fn apply(self, action: KeyAction) -> Result<KeyState, LifecycleError> {
        use KeyAction as A;
        use KeyState as S;
        let next = match (self, action) {
            (S::PreActive, A::Activate) => S::Active,
            (S::PreActive, A::Destroy) => S::Destroyed,
            (S::Active, A::Deactivate) => S::Inactive,
            (S::Inactive, A::Activate) => S::Active,
            (S::Inactive, A::Archive) => S::Archived,
            (S::Inactive, A::Destroy) => S::Destroyed,
            (S::Archived, A::Restore) => S::Inactive,
            (S::Archived, A::Destroy) => S::Destroyed,
            (S::PreActive | S::Active | S::Inactive | S::Archived, A::Compromise) => S::Compromised,
            (S::Compromised, A::Destroy) => S::Destroyed,
            (from, action) => return Err(LifecycleError::Transition { from, action }),
        };
        Ok(next)
    }

    /// Whether a key in this state may be used for `usage`.
    pub fn permits(self, usage: KeyUse) -> Result<(), LifecycleError> {
        let ok = matches!((self, usage), (Self::Active, _) | (Self::Inactive | Self::Compromised, KeyUse::Decrypt));
        if ok {
            Ok(())
        } else {
            Err(LifecycleError::Use { state: self, usage })
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl KeyAction {
    pub const ALL: [KeyAction; 6] =
        [Self::Activate, Self::Deactivate, Self::Archive, Self::Restore, Self::Destroy, Self::Compromise];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Activate => "activate",
            Self::Deactivate => "deactivate",
            Self::Archive => "archive",
            Self::Restore => "restore",
            Self::Destroy => "destroy",
            Self::Compromise => "compromise",
        }
    }
}

impl fmt::Display for KeyAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lifecycle rule was broken. The message says what to do instead.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LifecycleError {
    #[error("cannot {action} a key that is {from}: {}", transition_hint(*from, *action))]
    Transition { from: KeyState, action: KeyAction },
    #[error("a key that is {state} cannot be used to {}: {}", usage_verb(*usage), use_hint(*state, *usage))]
    Use { state: KeyState, usage: KeyUse },
}

fn usage_verb(u: KeyUse) -> &'static str {
    match u {
        KeyUse::Encrypt => "encrypt new data",
        KeyUse::Decrypt => "decrypt data",
    }
}

fn transition_hint(from: KeyState, action: KeyAction) -> &'static str {
    match (from, action) {
        (KeyState::Active, KeyAction::Destroy) => "deactivate it first, and make sure no data still needs it",
        (KeyState::Compromised, _) => "a compromised key can only be destroyed",
        (KeyState::Archived, _) => "restore it first",
        (KeyState::Destroyed, _) => "its material is erased and it can never be used again",
        (_, KeyAction::Activate) | (_, KeyAction::Deactivate) | (_, KeyAction::Archive) | (_, KeyAction::Restore)
            if from.apply(action).is_err() =>
        {
            "see `custos key show` for its state; allowed moves: pre-active→active, active→inactive, inactive→active|archived, archived→inactive, any but active→destroyed"
        }
        _ => "not allowed",
    }
}

fn use_hint(state: KeyState, usage: KeyUse) -> &'static str {
    match (state, usage) {
        (KeyState::PreActive, _) => "activate it first with `custos key activate`",
        (KeyState::Inactive, KeyUse::Encrypt) => "it only decrypts; activate it again or write under another key",
        (KeyState::Compromised, KeyUse::Encrypt) => {
            "it was revoked as compromised: it only decrypts; write under another key"
        }
        (KeyState::Archived, _) => "restore it first with `custos key restore`",
        (KeyState::Destroyed, _) => "its material was erased, so data sealed only under it is cryptographically erased",
        _ => "not allowed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use KeyAction as A;
    use KeyState as S;

    /// Every (state, action) pair, spelled out: the table in `apply`'s docs.
    #[test]
    fn every_state_action_pair() {
        let expected: &[(S, A, Option<S>)] = &[
            (S::PreActive, A::Activate, Some(S::Active)),
            (S::PreActive, A::Deactivate, None),
            (S::PreActive, A::Archive, None),
            (S::PreActive, A::Restore, None),
            (S::PreActive, A::Destroy, Some(S::Destroyed)),
            (S::Active, A::Activate, None),
            (S::Active, A::Deactivate, Some(S::Inactive)),
            (S::Active, A::Archive, None),
            (S::Active, A::Restore, None),
            (S::Active, A::Destroy, None),
            (S::Inactive, A::Activate, Some(S::Active)),
            (S::Inactive, A::Deactivate, None),
            (S::Inactive, A::Archive, Some(S::Archived)),
            (S::Inactive, A::Restore, None),
            (S::Inactive, A::Destroy, Some(S::Destroyed)),
            (S::Archived, A::Activate, None),
            (S::Archived, A::Deactivate, None),
            (S::Archived, A::Archive, None),
            (S::Archived, A::Restore, Some(S::Inactive)),
            (S::Archived, A::Destroy, Some(S::Destroyed)),
            (S::Destroyed, A::Activate, None),
            (S::Destroyed, A::Deactivate, None),
            (S::Destroyed, A::Archive, None),
            (S::Destroyed, A::Restore, None),
            (S::Destroyed, A::Destroy, None),
            (S::PreActive, A::Compromise, Some(S::Compromised)),
            (S::Active, A::Compromise, Some(S::Compromised)),
            (S::Inactive, A::Compromise, Some(S::Compromised)),
            (S::Archived, A::Compromise, Some(S::Compromised)),
            (S::Destroyed, A::Compromise, None),
            (S::Compromised, A::Activate, None),
            (S::Compromised, A::Deactivate, None),
            (S::Compromised, A::Archive, None),
            (S::Compromised, A::Restore, None),
            (S::Compromised, A::Destroy, Some(S::Destroyed)),
            (S::Compromised, A::Compromise, None),
        ];
        assert_eq!(expected.len(), S::ALL.len() * A::ALL.len());
        for &(from, action, to) in expected {
            match (from.apply(action), to) {
                (Ok(got), Some(want)) => assert_eq!(got, want, "{from} {action}"),
                (Err(e), None) => {
                    assert_eq!(e, LifecycleError::Transition { from, action });
                    let msg = e.to_string();
                    assert!(msg.contains(from.as_str()) && msg.contains(action.as_str()), "{msg}");
                }
                (got, want) => panic!("{from} {action}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn every_state_use_pair() {
        for s in S::ALL {
            for u in [KeyUse::Encrypt, KeyUse::Decrypt] {
                let want = matches!((s, u), (S::Active, _) | (S::Inactive | S::Compromised, KeyUse::Decrypt));
                let got = s.permits(u);
                assert_eq!(got.is_ok(), want, "{s} {u:?}");
                if let Err(e) = got {
                    let msg = e.to_string();
                    assert!(msg.contains(s.as_str()), "{msg}");
                }
            }
        }
        assert!(S::Destroyed.permits(KeyUse::Decrypt).unwrap_err().to_string().contains("cryptographically erased"));
    }

    #[test]
    fn destroyed_is_terminal_and_reachable_from_every_non_active_state() {
        for s in S::ALL {
            let r = s.apply(A::Destroy);
            assert_eq!(r.is_ok(), !matches!(s, S::Active | S::Destroyed), "{s}");
        }
        for a in A::ALL {
            assert!(S::Destroyed.apply(a).is_err());
        }
    }

    #[test]
    fn names_round_trip() {
        for s in S::ALL {
            assert_eq!(S::parse(s.as_str()), Some(s));
        }
        assert_eq!(S::parse("bogus"), None);
    }
}

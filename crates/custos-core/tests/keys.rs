mod common;

use common::*;
use custos_core::model::{KeyAction, KeyLabel, KeyState, Purpose};
use custos_core::{Error, NewKey, Passphrase, PutOptions, Vault};

fn label(s: &str) -> KeyLabel {
    s.parse().unwrap()
}

fn new_key(t: &T, app: &str) -> KeyLabel {
    t.vault
        .create_key(&NewKey {
            label: None,
            app: Some(app.into()),
            purpose: Purpose::Prim,
            expires_at: None,
            activate: false,
        })
        .unwrap()
        .label
}

fn put_with(t: &T, name: &str, key: &KeyLabel, bytes: &[u8]) -> custos_core::Result<custos_core::PutReport> {
    t.vault.put(&ds(name), &mut &bytes[..], &PutOptions { key: Some(key.clone()), volume: None, fresh: false })
}

#[test]
fn lifecycle_governs_use_end_to_end() {
    let t = vault();
    let k = new_key(&t, "LIFE");
    assert_eq!(k.as_str(), "DSET.PRIM.LIFE.key001");
    assert_eq!(t.vault.key(&k).unwrap().state, KeyState::PreActive);

    let e = put_with(&t, "LIFE.DATA", &k, b"x").unwrap_err();
    assert!(e.to_string().contains("activate it first"), "{e}");

    t.vault.key_action(&k, KeyAction::Activate, false).unwrap();
    put_with(&t, "LIFE.DATA", &k, b"payload").unwrap();

    t.vault.key_action(&k, KeyAction::Deactivate, false).unwrap();
    assert_eq!(t.get("LIFE.DATA").unwrap(), b"payload", "inactive keys still decrypt");
    let e = put_with(&t, "LIFE.DATA", &k, b"new").unwrap_err();
    assert!(e.to_string().contains("only decrypts"), "{e}");

    t.vault.key_action(&k, KeyAction::Archive, false).unwrap();
    let e = t.get("LIFE.DATA").unwrap_err();
    assert!(matches!(e, Error::KeyUnusable { .. }) && e.to_string().contains("restore it first"), "{e}");

    t.vault.key_action(&k, KeyAction::Restore, false).unwrap();
    assert_eq!(t.get("LIFE.DATA").unwrap(), b"payload");
    let rec = t.vault.key(&k).unwrap();
    assert!(rec.use_count >= 2 && rec.last_used_at.is_some());

    let e = t.vault.key_action(&k, KeyAction::Restore, false).unwrap_err();
    assert!(matches!(e, Error::Lifecycle { .. }) && e.to_string().contains("inactive"), "{e}");
}

#[test]
fn destroy_refuses_while_needed_then_crypto_erases() {
    let t = vault();
    let r = t.put("ERASE.ME", &data(3 * CS, 5));
    let k = r.key_label;
    let wrapped = t.vault.key(&k).unwrap().wrapped.unwrap().0;

    let e = t.vault.key_action(&k, KeyAction::Destroy, true).unwrap_err();
    assert!(e.to_string().contains("deactivate it first"), "{e}");
    t.vault.key_action(&k, KeyAction::Deactivate, false).unwrap();
    let e = t.vault.key_action(&k, KeyAction::Destroy, false).unwrap_err();
    assert!(matches!(e, Error::KeyInUse { .. }) && e.to_string().contains("ERASE.ME"), "{e}");
    assert_eq!(t.vault.key(&k).unwrap().state, KeyState::Inactive, "a refused destroy changes nothing");
    assert_eq!(t.get("ERASE.ME").unwrap(), data(3 * CS, 5));

    let rec = t.vault.key_action(&k, KeyAction::Destroy, true).unwrap();
    assert_eq!(rec.state, KeyState::Destroyed);
    assert!(rec.wrapped.is_none() && rec.destroyed_at.is_some());
    let e = t.get("ERASE.ME").unwrap_err();
    assert!(matches!(e, Error::KeyDestroyed { .. }), "{e}");
    assert!(e.to_string().contains("cryptographically erased") && e.to_string().contains("ERASE.ME"), "{e}");

    // The wrapped material is gone from the database file and its WAL.
    for f in ["custos.db", "custos.db-wal"] {
        if let Ok(bytes) = std::fs::read(t.path.join(f)) {
            assert!(!bytes.windows(wrapped.len()).any(|w| w == wrapped), "wrapped key still in {f}");
        }
    }
    for a in [KeyAction::Activate, KeyAction::Restore, KeyAction::Destroy] {
        assert!(t.vault.key_action(&k, a, true).is_err());
    }
}

#[test]
fn naming_standard_is_enforced_and_configurable() {
    let t = vault();
    let mk = |l: &str, p: Purpose| {
        t.vault.create_key(&NewKey { label: Some(label(l)), app: None, purpose: p, expires_at: None, activate: true })
    };
    mk("DSET.PRIM.PAY.key007", Purpose::Prim).unwrap();
    assert!(mk("DSET.PRIM.PAY.key007", Purpose::Prim).is_err(), "duplicate label");
    let e = mk("PAY.KEY1", Purpose::Prim).unwrap_err();
    assert!(e.to_string().contains("naming standard"), "{e}");
    let e = mk("DSET.BACK.PAY.key001", Purpose::Prim).unwrap_err();
    assert!(e.to_string().contains("purpose"), "{e}");
    // The next label follows the highest existing one.
    assert_eq!(new_key(&t, "PAY").as_str(), "DSET.PRIM.PAY.key008");
    t.vault.set_naming("KEYS.{app}.{purpose}.N{NNNN}").unwrap();
    assert_eq!(new_key(&t, "PAY").as_str(), "KEYS.PAY.PRIM.N0001");
    assert!(t.vault.set_naming("{app}").is_err());
    // A backup key cannot seal a primary dataset.
    let back = mk("KEYS.PAY.BACK.N0001", Purpose::Back).unwrap();
    let e = put_with(&t, "PAY.X", &back.label, b"x").unwrap_err();
    assert!(e.to_string().contains("BACK"), "{e}");
}

#[test]
fn expired_keys_stop_encrypting_but_still_decrypt() {
    let t = vault();
    let past = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
    let e = t
        .vault
        .create_key(&NewKey {
            label: None,
            app: Some("EXP".into()),
            purpose: Purpose::Prim,
            expires_at: Some(past),
            activate: true,
        })
        .unwrap_err();
    assert!(e.to_string().contains("in the past"), "{e}");
    let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(1500);
    let k = t
        .vault
        .create_key(&NewKey {
            label: None,
            app: Some("EXP".into()),
            purpose: Purpose::Prim,
            expires_at: Some(soon),
            activate: true,
        })
        .unwrap()
        .label;
    put_with(&t, "EXP.DATA", &k, b"before").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1600));
    let e = put_with(&t, "EXP.DATA", &k, b"after").unwrap_err();
    assert!(matches!(e, Error::KeyExpired { .. }), "{e}");
    assert_eq!(t.get("EXP.DATA").unwrap(), b"before");
}

#[test]
fn fail_wrong_passphrase_and_no_key_use_while_sealed() {
    let t = vault();
    t.put("SEAL.DATA", b"secret");
    let dir = t.path.clone();
    drop(t.vault);
    let sealed = Vault::open(&dir).unwrap();
    // Metadata is readable without the passphrase.
    assert_eq!(sealed.datasets().unwrap().len(), 1);
    let e = sealed.unseal(&Passphrase::from("wrong".to_string())).err().unwrap();
    assert!(e.to_string().contains("wrong passphrase"), "{e}");
    let open = Vault::open(&dir).unwrap().unseal(&pass()).unwrap();
    let mut out = Vec::new();
    open.get(&ds("SEAL.DATA"), &mut out, None).unwrap();
    assert_eq!(out, b"secret");
    let e = Vault::open(&dir.join("nope")).err().unwrap();
    assert!(e.to_string().contains("custos init"), "{e}");
}

#[test]
fn tampered_keystore_record_is_caught_by_its_check_value() {
    let t = vault();
    let a = t.put("KCV.A", b"aaa").key_label;
    let b = t.put("KCV.B", b"bbb").key_label;
    // Swap the wrapped material of two records (both under the same master key).
    let was = t.vault.key(&a).unwrap();
    let mut ra = was.clone();
    let rb = t.vault.key(&b).unwrap();
    ra.wrapped = rb.wrapped.clone();
    t.vault.repository().update_key(&ra, &was).unwrap();
    let e = t.get("KCV.A").unwrap_err();
    assert!(matches!(e, Error::KeyMismatch { .. }) && e.to_string().contains(a.as_str()), "{e}");
}

/// Naming a key remembers the application's sequence (so it costs a lookup
/// or two, not a scan of every key), and still never hands out a label
/// another process took meanwhile: a few are probed past, many send it back
/// to reading every label.
#[test]
fn next_label_skips_what_another_process_took() {
    let t = vault();
    assert_eq!(new_key(&t, "SEQ").as_str(), "DSET.PRIM.SEQ.key001");
    let other = Vault::open(&t.path).unwrap().unseal(&pass()).unwrap();
    let other_key = || {
        other
            .create_key(&NewKey {
                label: None,
                app: Some("SEQ".into()),
                purpose: Purpose::Prim,
                expires_at: None,
                activate: false,
            })
            .unwrap()
            .label
    };
    assert_eq!(other_key().as_str(), "DSET.PRIM.SEQ.key002");
    assert_eq!(new_key(&t, "SEQ").as_str(), "DSET.PRIM.SEQ.key003", "probed past one taken");
    for _ in 0..20 {
        other_key();
    }
    assert_eq!(new_key(&t, "SEQ").as_str(), "DSET.PRIM.SEQ.key024", "twenty taken: every label read again");
    // A label named by hand past the sequence is seen by a fresh process.
    t.vault
        .create_key(&NewKey {
            label: Some(label("DSET.PRIM.SEQ.key100")),
            app: None,
            purpose: Purpose::Prim,
            expires_at: None,
            activate: false,
        })
        .unwrap();
    let fresh = Vault::open(&t.path).unwrap().unseal(&pass()).unwrap();
    assert_eq!(fresh.next_label("SEQ", Purpose::Prim).unwrap().as_str(), "DSET.PRIM.SEQ.key101");
}

mod common;

use common::*;
use custos_core::model::{KeyAction, KeyState, Pattern, VolumeName};
use custos_core::{Error, NewMasterKey, Recovered};

fn pat(s: &str) -> Pattern {
    Pattern::new(s).unwrap()
}

#[test]
fn destroyed_key_comes_back_from_a_keystore_backup() {
    let t = vault();
    let bytes = data(2 * CS + 9, 3);
    let label = t.put("KS.DATA", &bytes).key_label;
    t.put("KS.OTHER", b"other");
    let b = t.vault.keystore_backup(&VolumeName::new("default").unwrap()).unwrap();
    assert_eq!(b.key_count, 2);
    assert_eq!(t.vault.keystore_backups().unwrap().len(), 1);

    t.vault.key_action(&label, KeyAction::Deactivate, false).unwrap();
    t.vault.key_action(&label, KeyAction::Destroy, true).unwrap();
    assert!(matches!(t.get("KS.DATA"), Err(Error::KeyDestroyed { .. })));

    let r = t.vault.recover_keys(&pat("DSET.PRIM.KS.**"), &b.id).unwrap();
    assert_eq!(r.len(), 2);
    assert!(r
        .iter()
        .any(|x| matches!(x, Recovered::Restored { label: l, state: KeyState::Active } if *l == label.to_string())));
    assert!(r.iter().any(|x| matches!(x, Recovered::AlreadyPresent { .. })), "the live key is left alone");
    assert_eq!(t.get("KS.DATA").unwrap(), bytes);
}

/// The paper's Example 2 with real damage: one bit of a key's wrapped
/// material flipped in its record. Recovery used to find the record
/// present and leave it alone; it now checks it (unwrap, check value) and
/// repairs its material from the backup, keeping the record's state.
#[test]
fn a_damaged_key_record_is_repaired_from_a_keystore_backup() {
    let t = vault();
    let bytes = data(CS + 5, 11);
    let label = t.put("EX2.DATA", &bytes).key_label;
    t.vault.key_action(&label, KeyAction::Deactivate, false).unwrap();
    let b = t.vault.keystore_backup(&VolumeName::new("default").unwrap()).unwrap();
    t.vault.drill_corrupt_key(&label).unwrap();
    let e = t.get("EX2.DATA").unwrap_err().to_string();
    assert!(e.contains("altered") || e.contains("check value"), "{e}");

    let r = t.vault.recover_keys(&pat(label.as_str()), &b.id).unwrap();
    assert!(
        matches!(&r[..], [Recovered::Repaired { label: l, state: KeyState::Inactive, damage }] if *l == label.to_string() && !damage.is_empty()),
        "{r:?}"
    );
    assert_eq!(t.get("EX2.DATA").unwrap(), bytes);
    assert_eq!(t.vault.key(&label).unwrap().state, KeyState::Inactive, "the record's state stands");
    // Once whole, the record is left alone.
    let again = t.vault.recover_keys(&pat(label.as_str()), &b.id).unwrap();
    assert!(matches!(&again[..], [Recovered::AlreadyPresent { .. }]), "{again:?}");
}

#[test]
fn recovery_survives_one_master_key_change_but_not_two() {
    let t = vault();
    let label = t.put("EX1.RARE", b"rarely used").key_label;
    let b = t.vault.keystore_backup(&VolumeName::new("default").unwrap()).unwrap();
    let first_mk = b.mkvps[0].clone();
    t.vault.key_action(&label, KeyAction::Deactivate, false).unwrap();
    t.vault.key_action(&label, KeyAction::Destroy, true).unwrap();

    // One change: the backup's master key is now OLD, still held.
    t.vault.mk_load_new(NewMasterKey::Generate, None).unwrap();
    t.vault.mk_activate().unwrap();
    t.vault.mk_reencipher(100, |_| {}).unwrap();
    // Two changes: it is discarded.
    t.vault.mk_load_new(NewMasterKey::Generate, None).unwrap();
    t.vault.mk_activate().unwrap();
    let e = t.vault.recover_keys(&pat(label.as_str()), &b.id).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::MasterKeyUnavailable { .. }), "{msg}");
    assert!(msg.contains(&first_mk) && msg.contains(label.as_str()) && msg.contains("escrow"), "{msg}");
    assert!(matches!(t.get("EX1.RARE"), Err(Error::KeyDestroyed { .. })), "nothing was written");
}

#[test]
fn fail_altered_or_unknown_backup() {
    let t = vault();
    t.put("ALT.DATA", b"x");
    let b = t.vault.keystore_backup(&VolumeName::new("default").unwrap()).unwrap();
    let p = t.path.join("volumes/default/keystore").join(format!("{}.ksb", b.id));
    let mut bytes = std::fs::read(&p).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 1;
    std::fs::write(&p, &bytes).unwrap();
    let e = t.vault.recover_keys(&pat("**"), &b.id).unwrap_err();
    assert!(e.to_string().contains("altered"), "{e}");
    let e = t.vault.recover_keys(&pat("**"), "no-such-backup").unwrap_err();
    assert!(e.to_string().contains("keystore backups"), "{e}");
}

mod common;

use common::*;
use custos_core::model::Purpose;
use custos_core::{Error, NewKey, NewMasterKey};

fn count(st: &custos_core::MkStatus, reg: &str) -> Option<u64> {
    st.registers.iter().find(|r| r.register == reg).map(|r| r.keys)
}

#[test]
fn data_stays_readable_across_master_key_changes() {
    let t = vault();
    let bytes = data(3 * CS + 5, 1);
    t.put("MK.A", &bytes);
    t.put("MK.B", b"small");
    let first = t.vault.mk_status().unwrap();
    assert_eq!(count(&first, "CURRENT"), Some(2));
    let first_mkvp = first.registers[0].mkvp.clone();

    assert!(matches!(t.vault.mk_activate(), Err(Error::Hsm(custos_core::HsmError::NoNewMasterKey))));
    let m2 = t.vault.mk_load_new(NewMasterKey::Generate, None).unwrap();
    let st = t.vault.mk_activate().unwrap();
    assert_eq!(count(&st, "CURRENT"), Some(0));
    assert_eq!(count(&st, "OLD"), Some(2));
    assert_eq!(t.get("MK.A").unwrap(), bytes, "keys under OLD keep working");
    // New keys are wrapped under the new CURRENT.
    let k = t.put("MK.C", b"c").key_label;
    assert_eq!(t.vault.key(&k).unwrap().mkvp, m2);

    // A second change now would orphan the two keys under OLD.
    t.vault.mk_load_new(NewMasterKey::Generate, None).unwrap();
    let e = t.vault.mk_activate().unwrap_err();
    assert!(matches!(e, Error::WouldOrphanKeys { count: 2, .. }), "{e}");
    assert!(e.to_string().contains("mk reencipher"), "{e}");

    let r = t.vault.mk_reencipher(1, |_| {}).unwrap();
    assert_eq!(r.moved, 2);
    assert_eq!(r.from.as_deref(), Some(first_mkvp.as_str()));
    assert_eq!(t.vault.mk_reencipher(1, |_| {}).unwrap().moved, 0, "a second run finds nothing");
    let st = t.vault.mk_status().unwrap();
    assert_eq!((count(&st, "CURRENT"), count(&st, "OLD")), (Some(3), Some(0)));

    let st = t.vault.mk_activate().unwrap();
    assert!(!st.registers.iter().any(|r| r.mkvp == first_mkvp), "the first master key is gone");
    assert_eq!(count(&st, "OLD"), Some(3));
    for (name, want) in [("MK.A", &bytes[..]), ("MK.B", b"small"), ("MK.C", b"c")] {
        assert_eq!(t.get(name).unwrap(), want);
    }
}

#[test]
fn reencipher_skips_and_names_damaged_records() {
    let t = vault();
    t.put("DMG.A", b"a");
    let bad = t.put("DMG.B", b"b").key_label;
    t.put("DMG.C", b"c");
    let was = t.vault.key(&bad).unwrap();
    let mut rec = was.clone();
    let mut w = rec.wrapped.clone().unwrap();
    w.0[5] ^= 1;
    rec.wrapped = Some(w);
    t.vault.repository().update_key(&rec, &was).unwrap();
    t.vault.mk_load_new(NewMasterKey::Generate, None).unwrap();
    t.vault.mk_activate().unwrap();
    let e = t.vault.mk_reencipher(1, |_| {}).unwrap_err();
    assert!(matches!(&e, Error::ReencipherFailed { moved: 2, failed } if failed == &[bad.to_string()]), "{e}");
    assert_eq!(t.get("DMG.A").unwrap(), b"a");
    assert_eq!(t.get("DMG.C").unwrap(), b"c");
}

#[test]
fn bulk_created_keys_continue_the_sequence() {
    let t = vault();
    let nk = NewKey { label: None, app: Some("BULK".into()), purpose: Purpose::Prim, expires_at: None, activate: true };
    t.vault.create_key(&nk).unwrap();
    let recs = t.vault.create_keys(&nk, 500).unwrap();
    assert_eq!(recs.len(), 500);
    assert_eq!(recs[0].label.as_str(), "DSET.PRIM.BULK.key002");
    assert_eq!(recs[499].label.as_str(), "DSET.PRIM.BULK.key501");
    assert_eq!(t.vault.keys().unwrap().len(), 501);
    let kcvs: std::collections::HashSet<_> = recs.iter().map(|r| r.kcv).collect();
    assert_eq!(kcvs.len(), 500, "every key is distinct");
}

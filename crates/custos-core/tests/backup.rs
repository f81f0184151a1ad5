mod common;

use common::*;
use custos_core::model::{CopyMethod, KeyAction, VolumeName};
use custos_core::{Error, Vault};

fn files(t: &T, vol: &str) -> usize {
    let root = t.path.join("volumes").join(vol).join("chunks");
    std::fs::read_dir(root).unwrap().map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count()).sum()
}

#[test]
fn raw_copy_needs_no_key_and_restores() {
    let t = vault();
    let off = offsite(&t);
    let bytes = data(5 * CS + 3, 1);
    t.put("RAW.DATA", &bytes);
    // A caller with no passphrase at all: the sealed vault.
    let sealed = Vault::open(&t.path).unwrap();
    let b = sealed.backup_raw(&ds("RAW.DATA"), &off).unwrap().expect("a new copy");
    assert_eq!((b.method, b.chunk_count, b.size), (CopyMethod::Raw, 6, bytes.len() as u64));
    assert!(sealed.backup_raw(&ds("RAW.DATA"), &off).unwrap().is_none(), "the same generation is not copied twice");
    let e = sealed.backup_raw(&ds("RAW.DATA"), &VolumeName::new("default").unwrap()).unwrap_err();
    assert!(e.to_string().contains("same files"), "{e}");
    // Accidental deletion of the dataset; the raw copy brings it back.
    t.vault.remove_dataset(&ds("RAW.DATA")).unwrap();
    let r = t.vault.restore(&b, None).unwrap();
    assert_eq!(r.dataset.as_str(), "RAW.DATA");
    assert_eq!(t.get("RAW.DATA").unwrap(), bytes);
}

#[test]
fn after_the_primary_key_is_destroyed_logical_restores_and_raw_does_not() {
    let t = vault();
    let off = offsite(&t);
    let bytes = data(3 * CS + 11, 2);
    let primary = t.put("PAY.MASTER", &bytes).key_label;
    let raw = t.vault.backup_raw(&ds("PAY.MASTER"), &off).unwrap().unwrap();
    let logical = t.vault.backup_logical(&ds("PAY.MASTER"), &off, None).unwrap().unwrap();
    assert_eq!(logical.key_label.as_str(), "DSET.BACK.PAY.key001", "a BACK key by the naming standard");
    assert_ne!(logical.copy_id, raw.copy_id);
    let e = t.vault.backup_logical(&ds("PAY.MASTER"), &off, Some(&primary)).unwrap_err();
    assert!(e.to_string().contains("primary's own key"), "{e}");

    t.vault.key_action(&primary, KeyAction::Deactivate, false).unwrap();
    t.vault.key_action(&primary, KeyAction::Destroy, true).unwrap();
    assert!(matches!(t.get("PAY.MASTER"), Err(Error::KeyDestroyed { .. })));

    let e = t.vault.restore(&raw, None).unwrap_err();
    assert!(matches!(e, Error::RawCopyKeyGone { .. }), "{e}");
    assert!(e.to_string().contains("cannot outlive its key") && e.to_string().contains("logical copy"), "{e}");

    let r = t.vault.restore(&logical, None).unwrap();
    assert!(r.new_key, "the dataset's own key is gone, so a new one seals it");
    assert_eq!(r.key_label.as_str(), "DSET.PRIM.PAY.key002");
    assert_eq!(t.get("PAY.MASTER").unwrap(), bytes);
}

#[test]
fn copies_are_incremental() {
    let t = vault();
    let off = offsite(&t);
    let mut bytes = data(8 * CS, 3);
    t.put("INC.DATA", &bytes);
    t.vault.backup_raw(&ds("INC.DATA"), &off).unwrap().unwrap();
    let l1 = t.vault.backup_logical(&ds("INC.DATA"), &off, None).unwrap().unwrap();
    assert_eq!(files(&t, "offsite"), 16);
    bytes[5 * CS + 1] ^= 1;
    t.put("INC.DATA", &bytes);
    t.vault.backup_raw(&ds("INC.DATA"), &off).unwrap().unwrap();
    assert_eq!(files(&t, "offsite"), 17, "raw: only the changed chunk moved");
    let l2 = t.vault.backup_logical(&ds("INC.DATA"), &off, None).unwrap().unwrap();
    assert_eq!(files(&t, "offsite"), 18, "logical: only the changed chunk was re-sealed");
    assert_eq!((l2.copy_id, l2.generation, l2.key_label.clone()), (l1.copy_id, 2, l1.key_label.clone()));
    // Every generation is a complete point in time.
    t.vault.restore(&l1, Some(&ds("INC.OLD"))).unwrap();
    let mut old = bytes.clone();
    old[5 * CS + 1] ^= 1;
    assert_eq!(t.get("INC.OLD").unwrap(), old);
    t.vault.restore(&l2, Some(&ds("INC.NEW"))).unwrap();
    assert_eq!(t.get("INC.NEW").unwrap(), bytes);
}

#[test]
fn fail_damaged_source_records_no_backup_and_leaves_nothing() {
    let t = vault();
    let off = offsite(&t);
    t.put("BAD.SRC", &data(4 * CS, 4));
    let p = t.chunk_paths("BAD.SRC");
    let mut b = std::fs::read(&p[2]).unwrap();
    b[77] ^= 1;
    std::fs::write(&p[2], b).unwrap();
    let e = t.vault.backup_logical(&ds("BAD.SRC"), &off, None).unwrap_err();
    assert!(matches!(e, Error::Chunk { index: 2, generation: 1, .. }), "{e}");
    assert!(t.vault.backups(None).unwrap().is_empty());
    assert_eq!(files(&t, "offsite"), 0, "chunks of the failed copy were removed");
    assert!(t.vault.keys().unwrap().iter().all(|k| !k.label.as_str().starts_with("DSET.BACK")), "no stray BACK key");
}

#[test]
fn incremental_logical_copy_does_not_read_unchanged_chunks() {
    let t = vault();
    let off = offsite(&t);
    let mut bytes = data(6 * CS, 5);
    t.put("SKIP.DATA", &bytes);
    t.vault.backup_logical(&ds("SKIP.DATA"), &off, None).unwrap().unwrap();
    // Damage a chunk the next copy should not need to read...
    let p = t.chunk_paths("SKIP.DATA");
    let mut b = std::fs::read(&p[1]).unwrap();
    b[99] ^= 1;
    std::fs::write(&p[1], b).unwrap();
    // ...and change another one through the access method.
    bytes[4 * CS + 7] ^= 1;
    t.put("SKIP.DATA", &bytes);
    let before = files(&t, "offsite");
    let l2 = t.vault.backup_logical(&ds("SKIP.DATA"), &off, None).unwrap().unwrap();
    assert_eq!(files(&t, "offsite"), before + 1, "only the changed chunk was re-sealed");
    assert!(t.get("SKIP.DATA").is_err(), "the primary really is damaged");
    // The copy kept its own intact chunk 1, so it restores whole.
    t.vault.restore(&l2, Some(&ds("SKIP.BACK"))).unwrap();
    assert_eq!(t.get("SKIP.BACK").unwrap(), bytes);
}

#[test]
fn verify_names_damage_in_a_copy() {
    let t = vault();
    let off = offsite(&t);
    t.put("VER.DATA", &data(4 * CS, 6));
    let b = t.vault.backup_logical(&ds("VER.DATA"), &off, None).unwrap().unwrap();
    t.vault.verify_backup(&b, true).unwrap();
    let ids = t.vault.repository().backup_chunks(b.id).unwrap();
    let h = ids[3].to_hex();
    let p = t.path.join("volumes/offsite/chunks").join(&h[..2]).join(&h);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[50] ^= 1;
    std::fs::write(&p, bytes).unwrap();
    t.vault.verify_backup(&b, false).expect("the manifest alone is intact");
    let e = t.vault.verify_backup(&b, true).unwrap_err();
    assert!(matches!(e, Error::Chunk { index: 3, .. }), "{e}");
    assert!(e.to_string().contains(&format!("backup {}", b.id)) && e.to_string().contains("VER.DATA"), "{e}");
}

#[test]
fn prune_keeps_what_it_says_and_every_kept_backup_restores() {
    use custos_core::Retention;
    let t = vault();
    let off = offsite(&t);
    let mut versions = Vec::new();
    let mut bytes = data(6 * CS, 7);
    for g in 0..4 {
        bytes[g * CS + 3] ^= 0x5A; // one chunk changes per generation
        t.put("PRUNE.DATA", &bytes);
        t.vault.backup_logical(&ds("PRUNE.DATA"), &off, None).unwrap().unwrap();
        t.vault.backup_raw(&ds("PRUNE.DATA"), &off).unwrap().unwrap();
        versions.push(bytes.clone());
    }
    assert_eq!(t.vault.backups(None).unwrap().len(), 8);
    let files_before = files(&t, "offsite");
    let keep2 = Retention { last: 2, ..Default::default() };
    let dry = t.vault.prune_backups(None, &keep2, true).unwrap();
    assert_eq!(dry.iter().filter(|d| !d.keep).count(), 4);
    assert_eq!(t.vault.backups(None).unwrap().len(), 8, "a dry run removes nothing");
    assert!(t.vault.prune_backups(None, &Retention::default(), false).is_err(), "no rule, no prune");

    t.vault.prune_backups(None, &keep2, false).unwrap();
    let kept = t.vault.backups(None).unwrap();
    assert_eq!(kept.len(), 4);
    assert!(kept.iter().all(|b| b.source_generation >= 3), "the two newest generations of each series");
    assert_eq!(files(&t, "offsite"), files_before, "what pruned backups used waits in the trash");
    t.vault.gc(jiff::SignedDuration::ZERO, false, true).unwrap();
    assert!(files(&t, "offsite") < files_before, "chunks only pruned backups used are gone");
    for b in &kept {
        let as_name = ds(&format!("PRUNE.R{}", b.id));
        t.vault.restore(b, Some(&as_name)).unwrap();
        assert_eq!(t.get(as_name.as_str()).unwrap(), versions[b.source_generation as usize - 1], "backup {}", b.id);
        t.vault.verify_backup(b, true).unwrap();
    }
}

/// Many datasets of one application at once: each gets its own new BACK
/// key, named in order; every copy restores; a second run copies nothing;
/// raw copies of many run the same way.
#[test]
fn many_datasets_at_once_get_distinct_back_keys() {
    let t = vault();
    let off = offsite(&t);
    let names: Vec<_> = (0..7).map(|i| ds(&format!("MANY.DS{i}"))).collect();
    let contents: Vec<Vec<u8>> = (0..7).map(|i| data(i * CS + 5, 40 + i as u64)).collect();
    for (n, c) in names.iter().zip(&contents) {
        t.put(n.as_str(), c);
    }
    let made = t.vault.backup_logical_many(&names, &off, None).unwrap();
    let mut labels: Vec<String> = made.iter().map(|(_, b)| b.as_ref().unwrap().key_label.to_string()).collect();
    assert_eq!(labels[0], "DSET.BACK.MANY.key001");
    assert_eq!(labels[6], "DSET.BACK.MANY.key007");
    labels.sort();
    labels.dedup();
    assert_eq!(labels.len(), 7, "one BACK key per dataset");
    for ((n, b), want) in made.iter().zip(&contents) {
        assert_eq!(b.as_ref().unwrap().dataset, *n, "results come back in the order asked");
        t.vault.verify_backup(b.as_ref().unwrap(), true).unwrap();
        t.vault.restore(b.as_ref().unwrap(), Some(&ds(&format!("{n}.BACK")))).unwrap();
        assert_eq!(t.get(&format!("{n}.BACK")).unwrap(), *want);
    }
    assert!(t.vault.backup_logical_many(&names, &off, None).unwrap().iter().all(|(_, b)| b.is_none()));
    let raw = Vault::open(&t.path).unwrap().backup_raw_many(&names, &off).unwrap();
    assert!(raw.iter().all(|(_, b)| b.as_ref().is_some_and(|b| b.method == CopyMethod::Raw)));
    assert_eq!(raw.len(), 7);
}

mod common;

use common::*;
use custos_core::model::KeyAction;
use custos_core::{Error, PutOptions, Vault};

#[test]
fn snapshots_cost_metadata_only_and_outlive_later_writes_and_removal() {
    let t = vault();
    let v1 = data(5 * CS, 1);
    t.put("SNAP.DATA", &v1);
    let files = t.chunk_file_count();
    // Needs no key: the sealed vault can snapshot.
    let s1 = Vault::open(&t.path).unwrap().snapshot_create(&ds("SNAP.DATA")).unwrap();
    assert_eq!(t.chunk_file_count(), files, "a snapshot writes no data");
    let mut v2 = v1.clone();
    v2[2 * CS] ^= 1;
    t.put("SNAP.DATA", &v2);
    assert_eq!(t.chunk_file_count(), files + 1, "the replaced chunk is kept for the snapshot");
    t.vault.remove_dataset(&ds("SNAP.DATA")).unwrap();
    // The snapshot still holds generation 1.
    t.vault.snapshot_restore(&s1, None).unwrap();
    assert_eq!(t.get("SNAP.DATA").unwrap(), v1);
    t.vault.snapshot_rm(s1.id).unwrap();
    assert!(t.vault.snapshots(None).unwrap().is_empty());
    assert!(t.vault.snapshot_rm(s1.id).is_err());
    assert!(matches!(t.vault.snapshot_create(&ds("NO.SUCH")), Err(Error::DatasetNotFound { .. })));
}

#[test]
fn snapshot_taken_during_writes_is_one_whole_generation() {
    let t = vault();
    let versions: Vec<Vec<u8>> = (0..12).map(|i| data(4 * CS + 100, 100 + i)).collect();
    t.put("HOT.DATA", &versions[0]);
    let mut snaps = Vec::new();
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            for v in &versions[1..] {
                t.vault.put(&ds("HOT.DATA"), &mut &v[..], &PutOptions::default()).unwrap();
            }
        });
        while !writer.is_finished() {
            snaps.push(t.vault.snapshot_create(&ds("HOT.DATA")).unwrap());
        }
        writer.join().unwrap();
    });
    assert!(snaps.len() >= 2, "snapshots were taken while the writer ran");
    let mut seen = std::collections::HashSet::new();
    for sn in &snaps {
        let name = ds(&format!("HOT.S{}", sn.id));
        t.vault.snapshot_restore(sn, Some(&name)).unwrap();
        let got = t.get(name.as_str()).unwrap();
        let which = versions.iter().position(|v| *v == got).expect("a snapshot is exactly one written version");
        assert_eq!(which as u64 + 1, sn.generation, "and it is the generation it names");
        seen.insert(which);
    }
    eprintln!("{} snapshots covered {} distinct generations", snaps.len(), seen.len());
}

#[test]
fn a_snapshot_shares_the_key_of_its_dataset() {
    let t = vault();
    let k = t.put("SK.DATA", b"secret").key_label;
    let sn = t.vault.snapshot_create(&ds("SK.DATA")).unwrap();
    t.vault.key_action(&k, KeyAction::Deactivate, false).unwrap();
    t.vault.key_action(&k, KeyAction::Destroy, true).unwrap();
    let e = t.vault.snapshot_restore(&sn, Some(&ds("SK.BACK"))).unwrap_err();
    assert!(matches!(e, Error::KeyDestroyed { .. }), "{e}");
}

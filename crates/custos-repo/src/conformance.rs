//! The contract every [`Repository`] backend must meet. Each backend's tests
//! call [`run`] on a fresh, empty repository.

use custos_crypto::{Kcv, Mkvp};
use custos_model::{
    BackupRecord, CheckedCopy, ChunkId, CopyCheck, CopyMethod, CustodianKey, DatasetId, DatasetName, EscrowCopy,
    GenerationRecord, HsmRule, KbkRecord, KeyLabel, KeyRecord, KeyState, KeystoreBackupRecord, Medium, Pattern,
    PolicyRecord, PolicyTarget, PrincipalRecord, Purpose, Role, SealedShare, VolumeName, VolumeRecord, WrappedMaterial,
};
use jiff::Timestamp;

use crate::{Garbage, GenerationCommit, RepoError, Repository, Rewrap};

/// What a `gc` now would claim from the trash.
fn due(repo: &dyn Repository) -> Garbage {
    repo.claim_trash(Timestamp::now() + jiff::SignedDuration::from_secs(1)).unwrap()
}

fn key(label: &str) -> KeyRecord {
    KeyRecord {
        label: KeyLabel::new(label).unwrap(),
        state: KeyState::PreActive,
        purpose: Purpose::Prim,
        app: "APP".into(),
        wrapped: Some(WrappedMaterial(vec![7; 40])),
        mkvp: Mkvp([1; 8]),
        kcv: Kcv([2; 5]),
        created_at: Timestamp::from_second(1_700_000_000).unwrap(),
        activated_at: None,
        deactivated_at: None,
        destroyed_at: None,
        expires_at: Some(Timestamp::from_second(1_800_000_000).unwrap()),
        last_used_at: None,
        use_count: 0,
        escrow: None,
        attributes: Default::default(),
    }
}

fn share(kbk: &str, custodian: &str, n: u8) -> SealedShare {
    SealedShare {
        kbk: kbk.into(),
        custodian: custodian.into(),
        recipient: [n; 32],
        sealed: vec![n; 109],
        confirm: [n + 100; 32],
        confirmed_at: None,
    }
}

fn generation(n: u64, label: &str, vol: &str) -> GenerationRecord {
    GenerationRecord {
        generation: n,
        volume: VolumeName::new(vol).unwrap(),
        key_label: KeyLabel::new(label).unwrap(),
        size: 100 * n,
        chunk_size: 1 << 20,
        chunk_count: 2,
        manifest_hash: [n as u8; 32],
        created_at: Timestamp::from_microsecond(1_700_000_000_123_456 + n as i64).unwrap(),
    }
}

/// Panics with a description of the first broken rule.
pub fn run(repo: &dyn Repository) {
    // Settings.
    assert_eq!(repo.setting("key.naming").unwrap(), None);
    repo.set_setting("key.naming", "A.{purpose}.{app}.{NNN}").unwrap();
    repo.set_setting("key.naming", "B.{purpose}.{app}.{NNN}").unwrap();
    assert_eq!(repo.setting("key.naming").unwrap().as_deref(), Some("B.{purpose}.{app}.{NNN}"));
    // A value set once keeps the first writer's.
    assert_eq!(repo.set_setting_once("once", "first").unwrap(), "first");
    assert_eq!(repo.set_setting_once("once", "second").unwrap(), "first");
    // A write that did not wait for the disk is there, and a backend that
    // syncs apart from commits does so without complaint.
    crate::with_sync(false, || repo.set_setting("unsynced", "1")).unwrap();
    if repo.syncs_apart() {
        repo.sync_written().unwrap();
    } else {
        // One that cannot says so, rather than pretending it synced.
        assert!(matches!(repo.sync_written(), Err(crate::RepoError::Unsupported { .. })));
    }
    assert_eq!(repo.setting("unsynced").unwrap().as_deref(), Some("1"));

    // Idempotency keys: the first attempt carries a request out; a retry
    // finds it running (this process is alive), then its answer; the key
    // is the one request's, from the one principal.
    use crate::Idempotency;
    let asked = [7u8; 32];
    assert_eq!(repo.idempotency_begin("req-1", "alice", &asked).unwrap(), Idempotency::New);
    assert_eq!(repo.idempotency_begin("req-1", "alice", &asked).unwrap(), Idempotency::Running);
    assert_eq!(repo.idempotency_begin("req-1", "bob", &asked).unwrap(), Idempotency::Mismatch);
    assert_eq!(repo.idempotency_begin("req-1", "alice", &[8; 32]).unwrap(), Idempotency::Mismatch);
    repo.idempotency_finish("req-1", 201, Some(b"{\"ok\":1}")).unwrap();
    assert_eq!(
        repo.idempotency_begin("req-1", "alice", &asked).unwrap(),
        Idempotency::Done { status: 201, reply: Some(b"{\"ok\":1}".to_vec()) }
    );
    assert_eq!(repo.idempotency_begin("req-2", "alice", &asked).unwrap(), Idempotency::New, "keys are independent");
    repo.idempotency_finish("req-2", 200, None).unwrap();
    assert_eq!(
        repo.idempotency_begin("req-2", "alice", &asked).unwrap(),
        Idempotency::Done { status: 200, reply: None }
    );

    // The software HSM's sealed state: stored once, then changed only by
    // whoever read the generation that is still current.
    assert_eq!(repo.hsm_state().unwrap(), None);
    assert_eq!(repo.hsm_state_generation().unwrap(), None);
    assert_eq!(repo.put_hsm_state(b"sealed one", Some(1)).unwrap(), None, "nothing to change yet");
    let g1 = repo.put_hsm_state(b"sealed one", None).unwrap().expect("the first state is stored");
    assert_eq!(repo.put_hsm_state(b"a second first", None).unwrap(), None, "a second first state is refused");
    assert_eq!(repo.hsm_state().unwrap(), Some((b"sealed one".to_vec(), g1)));
    let g2 = repo.put_hsm_state(b"sealed two", Some(g1)).unwrap().expect("a change from the current generation");
    assert_ne!(g1, g2);
    assert_eq!(repo.put_hsm_state(b"from a stale read", Some(g1)).unwrap(), None, "a change from a stale read");
    assert_eq!(repo.hsm_state().unwrap(), Some((b"sealed two".to_vec(), g2)), "the refused change changed nothing");
    assert_eq!(repo.hsm_state_generation().unwrap(), Some(g2));
    assert!(repo.remove_hsm_state().unwrap());
    assert!(!repo.remove_hsm_state().unwrap());
    assert_eq!(repo.hsm_state().unwrap(), None);

    // Key-backup keys, and escrow copies that travel with key records.
    repo.insert_kbk(
        &KbkRecord {
            id: "kbk1".into(),
            public: [5; 32],
            threshold: 2,
            custodians: vec!["alice".into(), "bob".into(), "carol".into()],
            created_at: Timestamp::from_second(1_700_000_000).unwrap(),
        },
        &[],
        &[share("kbk1", "alice", 1), share("kbk1", "bob", 2), share("kbk1", "carol", 3)],
    )
    .unwrap();
    let kb = repo.kbks().unwrap();
    assert_eq!((kb.len(), kb[0].public, kb[0].threshold, kb[0].custodians.len()), (1, [5; 32], 2, 3));
    // Sealed shares, stored with their KBK, confirmed one by one.
    let got = repo.escrow_shares("kbk1").unwrap();
    assert_eq!(got, vec![share("kbk1", "alice", 1), share("kbk1", "bob", 2), share("kbk1", "carol", 3)]);
    assert!(repo.escrow_shares("no-such-kbk").unwrap().is_empty());
    let at = Timestamp::from_second(1_700_000_100).unwrap();
    assert!(repo.confirm_escrow_share("kbk1", "bob", at).unwrap());
    assert!(!repo.confirm_escrow_share("kbk1", "dave", at).unwrap());
    let got = repo.escrow_shares("kbk1").unwrap();
    assert_eq!(got.iter().map(|s| s.confirmed_at).collect::<Vec<_>>(), vec![None, Some(at), None]);

    // Keys: insert, read back every field, duplicates refused, update.
    let mut k = key("DSET.PRIM.APP.key001");
    k.escrow = Some(EscrowCopy { kbk: "kbk1".into(), blob: vec![8; 92] });
    repo.insert_key(&k).unwrap();
    assert!(matches!(repo.insert_key(&k), Err(RepoError::Exists { kind: "key", .. })));
    let got = repo.key(&k.label).unwrap().expect("stored key");
    assert_eq!(got.wrapped, k.wrapped);
    assert_eq!((got.mkvp, got.kcv, got.state, got.purpose), (k.mkvp, k.kcv, k.state, k.purpose));
    assert_eq!((got.created_at, got.expires_at), (k.created_at, k.expires_at));
    assert_eq!(got.escrow, k.escrow);
    let mut upd = got.clone();
    upd.state = KeyState::Destroyed;
    upd.wrapped = None;
    upd.destroyed_at = Some(Timestamp::from_second(1_750_000_000).unwrap());
    // Written only over the record it was made from: a change made from
    // an older read (another server's) is refused, not laid over this one.
    let mut stale = got.clone();
    stale.state = KeyState::Inactive;
    let mut older = got.clone();
    older.state = KeyState::Active;
    assert!(matches!(repo.update_key(&stale, &older), Err(RepoError::Raced { .. })));
    let mut moved = got.clone();
    moved.mkvp = Mkvp([7; 8]);
    assert!(matches!(repo.update_key(&stale, &moved), Err(RepoError::Raced { .. })));
    let mut escrowless = got.clone();
    escrowless.escrow = None;
    assert!(matches!(repo.update_key(&stale, &escrowless), Err(RepoError::Raced { .. })));
    assert_eq!(repo.key(&k.label).unwrap().unwrap().state, got.state, "a refused update changed nothing");
    repo.record_key_use(&k.label).unwrap();
    repo.update_key(&upd, &got).unwrap();
    let before = got;
    let got = repo.key(&k.label).unwrap().unwrap();
    assert_eq!((got.state, got.wrapped.is_none(), got.destroyed_at), (KeyState::Destroyed, true, upd.destroyed_at));
    assert_eq!(got.escrow, k.escrow, "destroying the keystore copy keeps the escrow copy");
    assert_eq!(got.use_count, upd.use_count + 1, "a use counted meanwhile is kept");
    assert!(matches!(repo.update_key(&upd, &before), Err(RepoError::Raced { .. })), "the same change twice");
    assert!(matches!(repo.update_key(&key("NO.SUCH.KEY"), &key("NO.SUCH.KEY")), Err(RepoError::NotFound { .. })));
    let mut named = key("DSET.PRIM.APP.key002");
    named.attributes.names = vec!["array1-volume".into()];
    named.attributes.bits = Some(128);
    named.attributes.custom.insert("x-site".into(), "Boston".into());
    repo.insert_key(&named).unwrap();
    assert_eq!(repo.key(&named.label).unwrap().unwrap().attributes, named.attributes);
    assert_eq!(
        repo.key_labels().unwrap().iter().map(|l| l.as_str()).collect::<Vec<_>>(),
        ["DSET.PRIM.APP.key001", "DSET.PRIM.APP.key002"]
    );
    repo.record_key_use(&KeyLabel::new("DSET.PRIM.APP.key002").unwrap()).unwrap();
    repo.record_key_use(&KeyLabel::new("DSET.PRIM.APP.key002").unwrap()).unwrap();
    let k2 = KeyLabel::new("DSET.PRIM.APP.key002").unwrap();
    repo.record_key_uses(&[k2.clone(), k2.clone()]).unwrap();
    repo.record_key_uses(&[]).unwrap();
    let used = repo.key(&k2).unwrap().unwrap();
    assert_eq!(used.use_count, 4, "two single uses and a batch of two");
    assert!(used.last_used_at.is_some());
    let labels: Vec<String> = repo.keys().unwrap().iter().map(|k| k.label.to_string()).collect();
    assert_eq!(labels, ["DSET.PRIM.APP.key001", "DSET.PRIM.APP.key002"]);
    assert!(repo.key(&KeyLabel::new("NOPE").unwrap()).unwrap().is_none());

    // Attributes clients set (KMIP) travel with the key, and an update
    // made from a read with other attributes is refused.
    let named = repo.key(&k2).unwrap().unwrap();
    assert_eq!(named.attributes.names, ["array1-volume"]);
    let got = named.clone();
    let mut renamed = got.clone();
    renamed.attributes.names = vec!["array1-volume-2".into()];
    let mut seen_other = got.clone();
    seen_other.attributes.names.clear();
    assert!(matches!(repo.update_key(&renamed, &seen_other), Err(RepoError::Raced { .. })));
    repo.update_key(&renamed, &got).unwrap();
    assert_eq!(repo.key(&named.label).unwrap().unwrap().attributes.names, ["array1-volume-2"]);
    let mut cleared = renamed.clone();
    cleared.attributes = Default::default();
    repo.update_key(&cleared, &renamed).unwrap();
    assert!(repo.key(&named.label).unwrap().unwrap().attributes.is_empty());

    // Bulk insert is all or none; re-encipherment is compare-and-set.
    let mut bulk: Vec<KeyRecord> = (10..20).map(|i| key(&format!("DSET.PRIM.BULK.key{i:03}"))).collect();
    bulk[3].attributes.names = vec!["bulk-named".into()];
    repo.insert_keys(&bulk).unwrap();
    assert_eq!(repo.key(&bulk[3].label).unwrap().unwrap().attributes, bulk[3].attributes);
    // Pages: in label order, from a prefix, after a cursor, at most a limit.
    let page = |from: &str, after: &str, n: u32| -> Vec<String> {
        repo.keys_from(from, after, n).unwrap().iter().map(|k| k.label.to_string()).collect()
    };
    assert_eq!(page("DSET.PRIM.BULK", "", 2), ["DSET.PRIM.BULK.key010", "DSET.PRIM.BULK.key011"]);
    assert_eq!(page("DSET.PRIM.BULK", "DSET.PRIM.BULK.key018", 5), ["DSET.PRIM.BULK.key019"]);
    assert_eq!(page("", "", 1), ["DSET.PRIM.APP.key001"]);
    assert_eq!(page("DSET.PRIM.APP.key002", "", 1), ["DSET.PRIM.APP.key002"], "from is inclusive");
    assert!(page("Z", "", 10).is_empty());
    let mut dup = vec![key("DSET.PRIM.BULK.key999"), key("DSET.PRIM.BULK.key010")];
    assert!(repo.insert_keys(&dup).is_err());
    assert!(repo.key(&KeyLabel::new("DSET.PRIM.BULK.key999").unwrap()).unwrap().is_none(), "all or none");
    dup.clear();
    let (m1, m2) = (Mkvp([1; 8]), Mkvp([2; 8]));
    // key001 was destroyed above: it has no material and does not count.
    assert_eq!(repo.key_counts_by_mkvp().unwrap(), vec![(m1, 11)]);
    let first = repo.keys_wrapped_under(&m1, None, 4).unwrap();
    let next = repo.keys_wrapped_under(&m1, Some(&first[3].label), 2).unwrap();
    assert!(next[0].label > first[3].label, "the cursor starts after the given label");
    assert_eq!(first.len(), 4);
    assert_eq!(first[0].label.as_str(), "DSET.PRIM.APP.key002");
    let batch: Vec<Rewrap> =
        first.iter().map(|k| Rewrap { label: k.label.clone(), from: m1, to: m2, wrapped: vec![9; 40] }).collect();
    assert_eq!(repo.rewrap_keys(&batch).unwrap(), 4);
    assert_eq!(repo.rewrap_keys(&batch).unwrap(), 0, "a repeated batch changes nothing");
    assert_eq!(repo.key_counts_by_mkvp().unwrap(), vec![(m1, 7), (m2, 4)]);
    let moved = repo.key(&first[0].label).unwrap().unwrap();
    assert_eq!((moved.mkvp, moved.wrapped.unwrap().0), (m2, vec![9; 40]));
    assert_eq!(repo.keys_wrapped_under(&m1, None, 100).unwrap().len(), 7);
    // A page at a time: three keys after the one given, one refused by the
    // caller (left under m1 and named); the next page starts after it.
    let mut seen = Vec::new();
    let page = repo
        .rewrap_page(&m1, Some(&first[3].label), 3, &mut |k| {
            seen.push(k.label.clone());
            (seen.len() != 2).then(|| (m2, vec![6; 40]))
        })
        .unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen[0] > first[3].label && seen.windows(2).all(|w| w[0] < w[1]), "in label order after the cursor");
    assert_eq!((page.moved, page.failed.as_slice(), page.last.as_ref()), (2, &seen[1..2], Some(&seen[2])));
    assert_eq!(repo.key(&seen[2]).unwrap().unwrap().wrapped.unwrap().0, vec![6; 40]);
    assert_eq!(repo.key(&seen[1]).unwrap().unwrap().mkvp, m1, "a refused key stays");
    assert_eq!(repo.key_counts_by_mkvp().unwrap(), vec![(m1, 5), (m2, 6)]);
    let rest = repo.rewrap_page(&m1, page.last.as_ref(), 100, &mut |_| Some((m2, vec![6; 40]))).unwrap();
    let end = repo.rewrap_page(&m1, rest.last.as_ref(), 100, &mut |_| panic!("no key is left")).unwrap();
    assert_eq!((end.moved, end.last), (0, None));
    // Put back as the rest of the suite expects: seven under m1.
    let back: Vec<Rewrap> = repo
        .keys_wrapped_under(&m2, None, 100)
        .unwrap()
        .into_iter()
        .filter(|k| k.wrapped.as_ref().unwrap().0 == vec![6; 40])
        .map(|k| Rewrap { label: k.label, from: m2, to: m1, wrapped: vec![5; 40] })
        .collect();
    assert_eq!(repo.rewrap_keys(&back).unwrap(), back.len());
    assert_eq!(repo.key_counts_by_mkvp().unwrap(), vec![(m1, 7), (m2, 4)]);

    // Volumes and policies.
    for name in ["v1", "v2"] {
        repo.insert_volume(&VolumeRecord {
            name: VolumeName::new(name).unwrap(),
            location: format!("/tmp/{name}"),
            site: "A".into(),
            medium: Medium::Tape,
            created_at: Timestamp::now(),
        })
        .unwrap();
    }
    let v1 = VolumeName::new("v1").unwrap();
    assert_eq!(repo.volume(&v1).unwrap().unwrap().medium, Medium::Tape);
    for (id, at) in [("b2", 20), ("b1", 10)] {
        repo.insert_keystore_backup(&KeystoreBackupRecord {
            id: id.into(),
            volume: v1.clone(),
            created_at: Timestamp::from_second(1_700_000_000 + at).unwrap(),
            key_count: 3,
            mkvps: vec!["AA".into(), "BB".into()],
            sha256: [7; 32],
        })
        .unwrap();
    }
    let kb = repo.keystore_backups().unwrap();
    assert_eq!(kb.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), ["b1", "b2"], "oldest first");
    assert_eq!(
        (kb[0].mkvps.clone(), kb[0].sha256, kb[0].key_count),
        (vec!["AA".to_string(), "BB".to_string()], [7; 32], 3)
    );
    // Vault backups: listed oldest first; one id is recorded once.
    for (id, at) in [("vb2", 20), ("vb1", 10)] {
        repo.insert_vault_backup(&custos_model::VaultBackupRecord {
            id: id.into(),
            volume: v1.clone(),
            created_at: Timestamp::from_second(1_700_000_000 + at).unwrap(),
            audit_seq: at as u64,
            bytes: 1000,
        })
        .unwrap();
    }
    let vb = repo.vault_backups().unwrap();
    assert_eq!(vb.iter().map(|b| (b.id.as_str(), b.audit_seq)).collect::<Vec<_>>(), [("vb1", 10), ("vb2", 20)]);
    assert!(repo.insert_vault_backup(&custos_model::VaultBackupRecord { id: "vb1".into(), ..vb[0].clone() }).is_err());
    repo.delete_vault_backup("vb1").unwrap();
    repo.delete_vault_backup("vb1").expect("forgetting a missing one is not an error");
    assert_eq!(repo.vault_backups().unwrap().iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), ["vb2"]);
    repo.insert_vault_backup(&vb[0]).unwrap();
    assert_eq!(repo.volumes().unwrap().len(), 2);
    assert!(matches!(
        repo.insert_volume(&repo.volume(&v1).unwrap().unwrap()),
        Err(RepoError::Exists { kind: "volume", .. })
    ));
    // A volume is forgotten only when nothing refers to it, and the refusal
    // says what does.
    match repo.remove_volume(&v1) {
        Err(RepoError::InUse { kind: "volume", uses, .. }) => {
            assert_eq!(uses, "2 keystore backups, 2 vault backups", "{uses}")
        }
        other => panic!("v1 is in use: {other:?}"),
    }
    assert!(repo.volume(&v1).unwrap().is_some());
    let v3 = VolumeName::new("v3").unwrap();
    repo.insert_volume(&VolumeRecord { name: v3.clone(), ..repo.volume(&v1).unwrap().unwrap() }).unwrap();
    repo.remove_volume(&v3).unwrap();
    assert!(repo.volume(&v3).unwrap().is_none());
    assert!(matches!(repo.remove_volume(&v3), Err(RepoError::NotFound { kind: "volume", .. })));
    let pol = PolicyRecord {
        name: "payroll".into(),
        pattern: Pattern::new("PAYROLL.**").unwrap(),
        volume: v1.clone(),
        target: PolicyTarget::Template { app: Some("PAY".into()) },
        created_at: Timestamp::now(),
    };
    repo.insert_policy(&pol).unwrap();
    repo.insert_policy(&PolicyRecord {
        name: "fixed".into(),
        target: PolicyTarget::Key(KeyLabel::new("DSET.PRIM.APP.key002").unwrap()),
        ..pol.clone()
    })
    .unwrap();
    assert!(matches!(repo.insert_policy(&pol), Err(RepoError::Exists { kind: "policy", .. })));
    let ps = repo.policies().unwrap();
    assert_eq!(ps.len(), 2);
    assert_eq!(ps[1].target, PolicyTarget::Template { app: Some("PAY".into()) });
    assert!(repo.remove_policy("fixed").unwrap());
    assert!(!repo.remove_policy("fixed").unwrap());

    // Datasets: commit, advance, conflicts, garbage, removal.
    let name = DatasetName::new("PAYROLL.MASTER").unwrap();
    let id = DatasetId([9; 16]);
    let (a, b, c) = (ChunkId([1; 16]), ChunkId([2; 16]), ChunkId([3; 16]));
    let label = "DSET.PRIM.APP.key002";
    let g1 = GenerationCommit {
        dataset_id: id,
        name: name.clone(),
        previous: 0,
        generation: generation(1, label, "v1"),
        chunks: vec![a, b],
        new_key: Some(key("DSET.PRIM.APP.key003")),
        reused: vec![],
        since: repo.deletion_seq().unwrap(),
    };
    assert_eq!(repo.commit_generation(&g1).unwrap(), Default::default());
    let d = repo.dataset(&name).unwrap().expect("committed dataset");
    assert_eq!((d.id, d.current.generation, d.current.size), (id, 1, 100));
    assert_eq!(d.current.created_at, g1.generation.created_at, "timestamps keep microseconds");
    assert_eq!(repo.generation_chunks(&id, 1).unwrap(), vec![a, b]);
    assert!(
        repo.key(&KeyLabel::new("DSET.PRIM.APP.key003").unwrap()).unwrap().is_some(),
        "new key stored with the commit"
    );
    // A second writer that also started from nothing loses.
    assert!(matches!(repo.commit_generation(&g1), Err(RepoError::Conflict { .. })));
    // A failed commit stores none of its parts, its new key included.
    let conflicting = GenerationCommit { new_key: Some(key("DSET.PRIM.APP.key004")), ..g1.clone() };
    assert!(repo.commit_generation(&conflicting).is_err());
    assert!(repo.key(&KeyLabel::new("DSET.PRIM.APP.key004").unwrap()).unwrap().is_none());
    let g2 = GenerationCommit {
        previous: 1,
        generation: generation(2, label, "v1"),
        chunks: vec![a, c],
        new_key: None,
        ..g1.clone()
    };
    // A commit that reuses a chunk the catalog no longer references on the
    // volume (a concurrent removal released it) is refused, whole.
    let stale = GenerationCommit { reused: vec![ChunkId([0x77; 16])], ..g2.clone() };
    assert!(matches!(repo.commit_generation(&stale), Err(RepoError::Raced { .. })));
    assert_eq!(repo.dataset(&name).unwrap().unwrap().current.generation, 1);
    let g2 = GenerationCommit { reused: vec![a], ..g2 };
    let garbage = repo.commit_generation(&g2).unwrap();
    assert_eq!(garbage.chunks, vec![(v1.clone(), b)], "only the chunk no generation keeps is garbage");
    assert_eq!(garbage.manifests, vec![(v1.clone(), id, 1)]);
    assert!(matches!(repo.commit_generation(&g2), Err(RepoError::Conflict { expected: 1, found: 2, .. })));
    assert_eq!(repo.dataset(&name).unwrap().unwrap().current.generation, 2);
    assert_eq!(repo.datasets_using_key(&KeyLabel::new(label).unwrap()).unwrap(), vec![name.clone()]);
    assert!(repo.datasets_using_key(&KeyLabel::new("DSET.PRIM.APP.key001").unwrap()).unwrap().is_empty());
    assert_eq!(repo.datasets().unwrap().len(), 1);
    let only = repo.datasets().unwrap()[0].name.to_string();
    assert_eq!(repo.datasets_from("", "", 10).unwrap().len(), 1);
    assert_eq!(repo.datasets_from(&only, "", 10).unwrap()[0].name.as_str(), only, "from is inclusive");
    assert!(repo.datasets_from("", &only, 10).unwrap().is_empty(), "after is exclusive");
    let garbage = repo.remove_dataset(&name).unwrap();
    let mut chunks: Vec<ChunkId> = garbage.chunks.iter().map(|(_, c)| *c).collect();
    chunks.sort();
    assert_eq!(chunks, vec![a, c]);
    assert_eq!(garbage.manifests, vec![(v1, id, 2)]);
    assert!(repo.dataset(&name).unwrap().is_none());
    assert!(matches!(repo.remove_dataset(&name), Err(RepoError::NotFound { .. })));
    assert!(repo.generation_chunks(&id, 2).unwrap().is_empty());

    // Backups outlive their dataset; ids grow; chunk lists come back in order.
    let b = BackupRecord {
        id: 0,
        dataset: name.clone(),
        dataset_id: id,
        source_generation: 2,
        method: CopyMethod::Logical,
        volume: VolumeName::new("v2").unwrap(),
        key_label: KeyLabel::new(label).unwrap(),
        copy_id: DatasetId([4; 16]),
        generation: 1,
        size: 200,
        chunk_size: 1 << 20,
        chunk_count: 2,
        manifest_hash: [3; 32],
        created_at: Timestamp::from_microsecond(1_700_000_000_000_007).unwrap(),
        checked: None,
    };
    let b1 = repo
        .insert_backup(
            &b,
            &[c, a],
            &[ChunkId([0x51; 16]), ChunkId([0x52; 16])],
            Some(&key("DSET.BACK.APP.key001")),
            &[],
            repo.deletion_seq().unwrap(),
        )
        .unwrap();
    assert!(repo.key(&KeyLabel::new("DSET.BACK.APP.key001").unwrap()).unwrap().is_some(), "stored with the backup");
    // The same copy object cannot be recorded twice (two racing runs).
    assert!(matches!(
        repo.insert_backup(&b, &[c, a], &[], Some(&key("DSET.BACK.APP.key009")), &[], repo.deletion_seq().unwrap()),
        Err(RepoError::Exists { .. })
    ));
    assert!(repo.key(&KeyLabel::new("DSET.BACK.APP.key009").unwrap()).unwrap().is_none(), "nothing of it stored");
    // A chunk list that does not match the record's count is refused (a
    // copy that read a generation's list after the generation was dropped).
    let short = BackupRecord { copy_id: DatasetId([0x44; 16]), ..b.clone() };
    assert!(matches!(
        repo.insert_backup(&short, &[c], &[], None, &[], repo.deletion_seq().unwrap()),
        Err(RepoError::Raced { .. })
    ));
    // Reusing a chunk nothing on the volume references is refused.
    let raw = BackupRecord { method: CopyMethod::Raw, copy_id: DatasetId([5; 16]), chunk_count: 1, ..b.clone() };
    assert!(matches!(
        repo.insert_backup(&raw, &[a], &[], None, &[ChunkId([0x78; 16])], repo.deletion_seq().unwrap()),
        Err(RepoError::Raced { .. })
    ));
    assert!(repo.chunk_referenced(&VolumeName::new("v2").unwrap(), &a).unwrap());
    assert!(!repo.chunk_referenced(&VolumeName::new("v2").unwrap(), &ChunkId([0x78; 16])).unwrap());
    let b2 = repo.insert_backup(&raw, &[a], &[], None, &[a], repo.deletion_seq().unwrap()).unwrap();
    assert!(b2 > b1);
    let all = repo.backups().unwrap();
    assert_eq!(
        all.iter().map(|x| (x.id, x.method)).collect::<Vec<_>>(),
        [(b1, CopyMethod::Logical), (b2, CopyMethod::Raw)]
    );
    assert_eq!((all[0].copy_id, all[0].created_at, all[0].manifest_hash), (b.copy_id, b.created_at, b.manifest_hash));
    // By the key they are sealed under.
    let of_key = |l: &KeyLabel| repo.key_backups(l).unwrap().iter().map(|x| x.id).collect::<Vec<_>>();
    assert_eq!(of_key(&b.key_label), [b1, b2]);
    assert!(of_key(&KeyLabel::new("NO.SUCH.KEY").unwrap()).is_empty());
    // A page at a time, and one by id.
    let ids = |v: Vec<BackupRecord>| v.iter().map(|x| x.id).collect::<Vec<_>>();
    assert_eq!(ids(repo.backups_after(0, 1).unwrap()), [b1]);
    assert_eq!(ids(repo.backups_after(b1, 5).unwrap()), [b2]);
    assert!(repo.backups_after(b2, 5).unwrap().is_empty());
    assert_eq!(repo.backup(b2).unwrap().map(|x| x.method), Some(CopyMethod::Raw));
    assert!(repo.backup(b2 + 1).unwrap().is_none() && repo.backup(0).unwrap().is_none());
    assert_eq!(repo.backup_chunks(b1).unwrap(), vec![c, a]);
    assert_eq!(repo.backup_sources(b1).unwrap(), vec![Some(ChunkId([0x51; 16])), Some(ChunkId([0x52; 16]))]);
    assert_eq!(repo.backup_sources(b2).unwrap(), vec![None]);
    // A copy's last check: recorded, replaced by the next, kept apart per copy.
    assert_eq!(repo.backup(b1).unwrap().unwrap().checked, None);
    let at = |us: i64| Timestamp::from_microsecond(1_700_000_100_000_000 + us).unwrap();
    let good = CopyCheck { at: at(0), read_data: true, problem: None };
    repo.record_check(CheckedCopy::Backup, b1, &good).unwrap();
    assert_eq!(repo.backup(b1).unwrap().unwrap().checked, Some(good.clone()));
    let bad = CopyCheck { at: at(1), read_data: false, problem: Some("chunk 3 fails authentication".into()) };
    repo.record_check(CheckedCopy::Backup, b1, &bad).unwrap();
    assert_eq!(repo.backups_after(0, 1).unwrap()[0].checked.as_ref(), Some(&bad));
    // A later pass of the manifest alone does not erase what was found, nor
    // a full read that passed; a full read replaces either.
    let shallow = CopyCheck { at: at(2), read_data: false, problem: None };
    repo.record_check(CheckedCopy::Backup, b1, &shallow).unwrap();
    assert_eq!(repo.backup(b1).unwrap().unwrap().checked.as_ref(), Some(&bad));
    let full = CopyCheck { at: at(3), read_data: true, problem: None };
    repo.record_check(CheckedCopy::Backup, b1, &full).unwrap();
    repo.record_check(CheckedCopy::Backup, b1, &shallow).unwrap();
    assert_eq!(repo.backup(b1).unwrap().unwrap().checked.as_ref(), Some(&full));
    assert_eq!(repo.backup(b2).unwrap().unwrap().checked, None, "kept apart per copy");
    // Shallow over shallow (or nothing) is recorded.
    repo.record_check(CheckedCopy::Backup, b2, &shallow).unwrap();
    let later = CopyCheck { at: at(4), ..shallow.clone() };
    repo.record_check(CheckedCopy::Backup, b2, &later).unwrap();
    assert_eq!(repo.backup(b2).unwrap().unwrap().checked, Some(later));
    repo.record_check(CheckedCopy::Backup, b2 + 100, &good).unwrap();
    // Many backups in one transaction: all, or (one cannot be) none.
    let recs: Vec<BackupRecord> =
        (0..3u8).map(|i| BackupRecord { copy_id: DatasetId([0xD0 + i; 16]), chunk_count: 1, ..b.clone() }).collect();
    let lists: Vec<[ChunkId; 1]> = (0..3u8).map(|i| [ChunkId([0xE0 + i; 16])]).collect();
    let bkey = key("DSET.BACK.BAT.key001");
    let since = repo.deletion_seq().unwrap();
    let batch: Vec<crate::BackupInsert<'_>> = (0..3)
        .map(|i| crate::BackupInsert {
            record: &recs[i],
            chunks: &lists[i],
            sources: &[],
            new_key: (i == 1).then_some(&bkey),
            reused: &[],
            since,
        })
        .collect();
    let before = repo.backups().unwrap().len();
    let mut spoilt = batch.clone();
    spoilt[2].chunks = &[]; // short of its record's count
    assert!(matches!(repo.insert_backups(&spoilt), Err(RepoError::Raced { .. })));
    assert_eq!(repo.backups().unwrap().len(), before, "none of the batch recorded");
    assert!(repo.key(&bkey.label).unwrap().is_none(), "the batch's new key went with it");
    let made = repo.insert_backups(&batch).unwrap();
    assert!(made.len() == 3 && made[0] < made[1] && made[1] < made[2], "{made:?}");
    assert!(repo.key(&bkey.label).unwrap().is_some());
    assert_eq!(repo.backup_chunks(made[2]).unwrap(), lists[2]);
    assert!(matches!(repo.insert_backups(&batch[..1]), Err(RepoError::Exists { kind: "backup", .. })));
    for id in &made {
        repo.remove_backup(*id).unwrap();
    }
    // Removing b1 frees c (only b1 lists it) but not a (b2 does).
    let g = repo.remove_backup(b1).unwrap();
    // What a removal releases goes to the trash in the same transaction.
    let on_v2 = |t: &crate::TrashEntry, c: ChunkId| t.volume.as_str() == "v2" && t.chunk == Some(c);
    let trash = repo.trash().unwrap();
    assert!(trash.iter().any(|t| on_v2(t, c) && !t.claimed), "{trash:?}");
    assert!(trash.iter().any(|t| t.manifest == Some((b.copy_id, 1))), "{trash:?}");
    // A commit that lists an unclaimed trashed object takes it back out.
    let again = BackupRecord { copy_id: DatasetId([0x33; 16]), chunk_count: 1, ..b.clone() };
    let b3 = repo.insert_backup(&again, &[c], &[], None, &[], repo.deletion_seq().unwrap()).unwrap();
    assert!(!repo.trash().unwrap().iter().any(|t| on_v2(t, c)), "c is in use again");
    // Claiming takes what is due and still unreferenced; claimed objects
    // may not be committed again until forgotten.
    repo.remove_backup(b3).unwrap();
    let claimed = due(repo);
    assert!(claimed.chunks.contains(&(VolumeName::new("v2").unwrap(), c)), "{claimed:?}");
    // A claim is exclusive: while its deleter lives, nobody else gets it,
    // as trash or as an orphan (taking over a gone deleter's claims is
    // each implementation's own test: it needs a second session).
    let again_due = due(repo);
    assert!(!again_due.chunks.contains(&(VolumeName::new("v2").unwrap(), c)), "{again_due:?}");
    let as_orphan = Garbage { chunks: vec![(VolumeName::new("v2").unwrap(), c)], manifests: vec![] };
    assert!(repo.claim_orphans(&as_orphan).unwrap().chunks.is_empty(), "claimed by a deleter at work");
    assert!(matches!(
        repo.insert_backup(&again, &[c], &[], None, &[], repo.deletion_seq().unwrap()),
        Err(RepoError::Raced { .. })
    ));
    let seen_before_deletion = repo.deletion_seq().unwrap();
    repo.forget_trash(&claimed).unwrap();
    assert!(!repo.trash().unwrap().iter().any(|t| t.volume.as_str() == "v2"), "what was deleted is forgotten");
    // ... but leaves a tombstone: a writer that began before the deletion
    // may have found c stored and not written it again, so its commit is
    // refused; one that began after it found (or wrote) c since, and is not.
    let before = seen_before_deletion;
    assert!(
        matches!(repo.insert_backup(&again, &[c], &[], None, &[], before), Err(RepoError::Raced { .. })),
        "c was deleted while this copy ran"
    );
    let after = repo.deletion_seq().unwrap();
    assert!(after > before, "the deletion was counted");
    let b4 = repo.insert_backup(&again, &[c], &[], None, &[], after).unwrap();
    assert!(repo.chunk_referenced(&VolumeName::new("v2").unwrap(), &c).unwrap());
    repo.remove_backup(b4).unwrap();
    let claimed = due(repo);
    assert!(claimed.chunks.contains(&(VolumeName::new("v2").unwrap(), c)), "released again, claimed again");
    repo.forget_trash(&claimed).unwrap();
    assert!(!repo.trash().unwrap().iter().any(|t| t.volume.as_str() == "v2"), "tombstones are not trash");
    let none = due(repo);
    assert!(none.chunks.is_empty() && none.manifests.is_empty(), "a tombstone is never claimed again");
    // Orphans are claimed only while nothing references them.
    let orphans = Garbage {
        chunks: vec![(VolumeName::new("v2").unwrap(), a), (VolumeName::new("v2").unwrap(), ChunkId([0x99; 16]))],
        manifests: vec![],
    };
    let claimed = repo.claim_orphans(&orphans).unwrap();
    assert_eq!(claimed.chunks, vec![(VolumeName::new("v2").unwrap(), ChunkId([0x99; 16]))], "a is b2's");
    assert!(repo.claim_orphans(&orphans).unwrap().chunks.is_empty(), "one deleter per orphan");
    repo.forget_trash(&claimed).unwrap();
    // Once deleted, its tombstone does not stop a later scan from claiming
    // the object found there again.
    assert_eq!(repo.claim_orphans(&orphans).unwrap().chunks.len(), 1, "found again after its deletion");
    repo.forget_trash(&claimed).unwrap();
    assert_eq!(g.chunks, vec![(VolumeName::new("v2").unwrap(), c)]);
    assert_eq!(g.manifests, vec![(VolumeName::new("v2").unwrap(), b.copy_id, 1)]);
    assert!(matches!(repo.remove_backup(b1), Err(RepoError::NotFound { .. })));
    assert!(repo.backup_chunks(b1).unwrap().is_empty());

    // A chunk a backup on the same volume still references is not garbage.
    let shared = ChunkId([6; 16]);
    let ds2 = DatasetName::new("SHARED.DATA").unwrap();
    let id2 = DatasetId([8; 16]);
    let v2 = VolumeName::new("v2").unwrap();
    let first = GenerationCommit {
        dataset_id: id2,
        name: ds2.clone(),
        previous: 0,
        generation: generation(1, label, "v2"),
        chunks: vec![shared],
        new_key: None,
        reused: vec![],
        since: repo.deletion_seq().unwrap(),
    };
    repo.commit_generation(&first).unwrap();
    repo.insert_backup(
        &BackupRecord { method: CopyMethod::Raw, volume: v2.clone(), chunk_count: 1, ..b.clone() },
        &[shared],
        &[],
        None,
        &[],
        repo.deletion_seq().unwrap(),
    )
    .unwrap();
    let garbage = repo.remove_dataset(&ds2).unwrap();
    assert!(garbage.chunks.is_empty(), "the raw copy on v2 still needs the chunk: {garbage:?}");

    // Many generations in one transaction: all of them, or (when one
    // cannot be committed) none, new keys included.
    let batch: Vec<GenerationCommit> = (0..3u8)
        .map(|i| GenerationCommit {
            dataset_id: DatasetId([0xB0 + i; 16]),
            name: DatasetName::new(format!("BATCH.N{i}")).unwrap(),
            previous: 0,
            generation: generation(1, label, "v2"),
            chunks: vec![ChunkId([0xC0 + i; 16])],
            new_key: Some(key(&format!("DSET.PRIM.BAT.key00{}", i + 1))),
            reused: vec![],
            since: repo.deletion_seq().unwrap(),
        })
        .collect();
    let mut spoilt = batch.clone();
    spoilt[2].previous = 7; // BATCH.N2 has no generation 7
    assert!(matches!(
        repo.commit_generations(&spoilt),
        Err(RepoError::Conflict { ref name, .. }) if name == "BATCH.N2"
    ));
    let none = |b: &[GenerationCommit]| {
        b.iter().all(|c| {
            repo.dataset(&c.name).unwrap().is_none() && repo.key(&c.new_key.as_ref().unwrap().label).unwrap().is_none()
        })
    };
    assert!(none(&batch), "a batch with one bad commit commits none of it");
    let mut twice = batch.clone();
    twice[1].new_key = Some(key("DSET.PRIM.BAT.key001")); // the label N0's key takes
    assert!(repo.commit_generations(&twice).is_err());
    assert!(none(&batch), "a label taken twice in one batch commits none of it");
    let garbage = repo.commit_generations(&batch).unwrap();
    assert_eq!(garbage.len(), 3);
    for c in &batch {
        let d = repo.dataset(&c.name).unwrap().expect("committed");
        assert_eq!((d.id, d.current.generation), (c.dataset_id, 1));
        assert_eq!(repo.generation_chunks(&c.dataset_id, 1).unwrap(), c.chunks);
    }
    assert!(repo.commit_generations(&[]).unwrap().is_empty());
    // Reads of many datasets recorded in one go (an id not there is passed over).
    let ids: Vec<DatasetId> = batch.iter().map(|c| c.dataset_id).chain([DatasetId([0xEE; 16])]).collect();
    repo.touch_datasets(&ids).unwrap();
    repo.touch_datasets(&[]).unwrap();
    for c in &batch {
        assert!(repo.dataset(&c.name).unwrap().unwrap().last_access > c.generation.created_at, "{}", c.name);
    }
    assert!(matches!(repo.commit_generations(&batch[1..2]), Err(RepoError::Conflict { .. })));

    // What a rule has left to do, found by the catalog (hsm run): copies
    // that the current generations lack, copies made since a mark, and
    // datasets idle since a time.
    let v1 = VolumeName::new("v1").unwrap();
    let names = |v: Vec<custos_model::DatasetRecord>| v.into_iter().map(|d| d.name.to_string()).collect::<Vec<_>>();
    let lacking =
        |prefix: &str, method, vol: &VolumeName| names(repo.datasets_without_copy(prefix, method, vol).unwrap());
    assert_eq!(lacking("BATCH", CopyMethod::Logical, &v1), ["BATCH.N0", "BATCH.N1", "BATCH.N2"]);
    assert_eq!(lacking("BATCH.N1", CopyMethod::Logical, &v1), ["BATCH.N1"], "a name is under its own prefix");
    assert!(
        lacking("BATCI", CopyMethod::Logical, &v1).is_empty() && lacking("BATCH.N3", CopyMethod::Raw, &v1).is_empty()
    );
    assert!(lacking("", CopyMethod::Logical, &v1).len() >= 3, "the empty prefix covers every name");
    let (mark, _) = repo.backups_since(0).unwrap();
    let n1 = &batch[1];
    let copy = BackupRecord {
        dataset: n1.name.clone(),
        dataset_id: n1.dataset_id,
        source_generation: 1,
        method: CopyMethod::Logical,
        volume: v1.clone(),
        copy_id: DatasetId([0xF1; 16]),
        chunk_count: 1,
        ..b.clone()
    };
    let made = repo.insert_backup(&copy, &[ChunkId([0xF2; 16])], &[], None, &[], repo.deletion_seq().unwrap()).unwrap();
    assert_eq!(lacking("BATCH", CopyMethod::Logical, &v1), ["BATCH.N0", "BATCH.N2"]);
    assert_eq!(lacking("BATCH", CopyMethod::Raw, &v1).len(), 3, "another method is another copy");
    assert_eq!(lacking("BATCH", CopyMethod::Logical, &v2).len(), 3, "another volume is another copy");
    assert_eq!(repo.backups_since(mark).unwrap(), (made, vec![n1.name.clone()]));
    assert_eq!(repo.backups_since(made).unwrap(), (made, vec![]));
    assert_eq!(repo.dataset_backups(&n1.name).unwrap().iter().map(|x| x.id).collect::<Vec<_>>(), [made]);
    assert!(repo.dataset_backups(&batch[0].name).unwrap().is_empty());
    // A copy of an older generation is not a copy of the current one.
    let next = GenerationCommit {
        previous: 1,
        generation: generation(2, label, "v2"),
        chunks: vec![ChunkId([0xC1; 16])],
        new_key: None,
        reused: vec![ChunkId([0xC1; 16])],
        ..n1.clone()
    };
    repo.commit_generation(&next).unwrap();
    assert_eq!(lacking("BATCH", CopyMethod::Logical, &v1), ["BATCH.N0", "BATCH.N1", "BATCH.N2"]);
    // Idle: the later of the last access (touched above, now) and the
    // generation's time; a dataset on the rule's volume is not a candidate.
    let idle = |before: Timestamp, vol: &VolumeName| names(repo.datasets_idle("BATCH", before, vol).unwrap());
    let tomorrow = Timestamp::now() + jiff::SignedDuration::from_hours(24);
    assert_eq!(idle(tomorrow, &v1), ["BATCH.N0", "BATCH.N1", "BATCH.N2"]);
    assert!(idle(tomorrow, &v2).is_empty(), "already on v2");
    let after_generations = Timestamp::from_microsecond(1_700_000_100_000_000).unwrap();
    // N0 and N2 were read since; N1's new generation (of 2023) is its last use.
    assert_eq!(idle(after_generations, &v1), ["BATCH.N1"]);
    assert!(names(repo.datasets_idle("NOPE", tomorrow, &v1).unwrap()).is_empty());
    repo.remove_backup(made).unwrap();
    repo.forget_trash(&due(repo)).unwrap();

    // Snapshots pin a generation: its chunks and manifest outlive the
    // generation until the snapshot goes.
    let sname = DatasetName::new("SNAP.DATA").unwrap();
    let sid = DatasetId([0x5A; 16]);
    let (p, q, r) = (ChunkId([0x61; 16]), ChunkId([0x62; 16]), ChunkId([0x63; 16]));
    let g1 = GenerationCommit {
        dataset_id: sid,
        name: sname.clone(),
        previous: 0,
        generation: generation(1, label, "v1"),
        chunks: vec![p, q],
        new_key: None,
        reused: vec![],
        since: repo.deletion_seq().unwrap(),
    };
    repo.commit_generation(&g1).unwrap();
    let snap = repo.create_snapshot(&sname).unwrap();
    assert_eq!((snap.generation, snap.volume.as_str()), (1, "v1"));
    assert_eq!(repo.snapshot_chunks(snap.id).unwrap(), vec![p, q]);
    assert!(matches!(repo.create_snapshot(&DatasetName::new("NO.SUCH").unwrap()), Err(RepoError::NotFound { .. })));
    let g2 = GenerationCommit { previous: 1, generation: generation(2, label, "v1"), chunks: vec![p, r], ..g1.clone() };
    let garbage = repo.commit_generation(&g2).unwrap();
    assert!(garbage.chunks.is_empty() && garbage.manifests.is_empty(), "the snapshot pins generation 1: {garbage:?}");
    assert_eq!(repo.snapshots().unwrap().len(), 1);
    assert_eq!(repo.key_snapshots(&snap.key_label).unwrap().iter().map(|x| x.id).collect::<Vec<_>>(), [snap.id]);
    assert!(repo.key_snapshots(&KeyLabel::new("NO.SUCH.KEY").unwrap()).unwrap().is_empty());
    assert_eq!(repo.snapshots_after(0, 1).unwrap()[0].id, snap.id);
    assert!(repo.snapshots_after(snap.id, 1).unwrap().is_empty());
    assert_eq!(repo.snapshot(snap.id).unwrap().map(|x| x.generation), Some(1));
    assert!(repo.snapshot(snap.id + 1).unwrap().is_none());
    let checked = CopyCheck {
        at: Timestamp::from_microsecond(1_700_000_200_000_000).unwrap(),
        read_data: true,
        problem: Some("a chunk is missing".into()),
    };
    repo.record_check(CheckedCopy::Snapshot, snap.id, &checked).unwrap();
    assert_eq!(repo.snapshot(snap.id).unwrap().unwrap().checked, Some(checked));
    let garbage = repo.remove_snapshot(snap.id).unwrap();
    assert_eq!(garbage.chunks, vec![(VolumeName::new("v1").unwrap(), q)], "p is still in generation 2");
    assert_eq!(garbage.manifests, vec![(VolumeName::new("v1").unwrap(), sid, 1)]);
    assert!(repo.snapshots().unwrap().is_empty());

    // Mirrors, and what the catalog says a volume holds.
    let (v1, v2) = (VolumeName::new("v1").unwrap(), VolumeName::new("v2").unwrap());
    repo.insert_mirror(&v1, &v2).unwrap();
    assert!(matches!(repo.insert_mirror(&v1, &v2), Err(RepoError::Exists { .. })));
    match repo.remove_volume(&v2) {
        Err(RepoError::InUse { uses, .. }) => assert!(uses.contains("mirror v1 to v2"), "{uses}"),
        other => panic!("v2 is a mirror's secondary: {other:?}"),
    }
    assert_eq!(
        repo.mirrors().unwrap().iter().map(|(p, s, _)| (p.clone(), s.clone())).collect::<Vec<_>>(),
        [(v1.clone(), v2.clone())]
    );
    let objs = repo.volume_objects(&v1).unwrap();
    assert_eq!(objs.chunks, vec![p, r], "generation 2 of SNAP.DATA lives on v1");
    assert_eq!(objs.manifests, vec![(sid, 2)]);
    assert_eq!(objs.keystore_backups.len(), 2);
    assert!(repo.remove_mirror(&v1).unwrap());
    assert!(!repo.remove_mirror(&v1).unwrap());

    // Drill results: one row per dataset and threats, a later drill
    // replacing the earlier, all written or none.
    let drill = |dataset: &str, threats: &str, at: i64, survived: bool| custos_model::DrillRecord {
        dataset: dataset.into(),
        threats: threats.into(),
        at: Timestamp::from_microsecond(at).unwrap(),
        survived,
        agrees: survived,
        how: format!("{dataset} under {threats} at {at}"),
        by: "auditor1".into(),
    };
    assert!(repo.drills().unwrap().is_empty());
    let first = [
        drill("B.DATA", "site-loss", 1_700_000_000_000_000, true),
        drill("A.DATA", "disk-failure+site-loss", 1_700_000_000_000_000, false),
        drill("A.DATA", "disk-failure", 1_700_000_000_000_000, true),
    ];
    repo.record_drills(&first).unwrap();
    let got = repo.drills().unwrap();
    assert_eq!(got, vec![first[2].clone(), first[1].clone(), first[0].clone()], "ordered by dataset, then threats");
    let again = drill("A.DATA", "disk-failure", 1_700_000_500_000_000, false);
    repo.record_drills(std::slice::from_ref(&again)).unwrap();
    let got = repo.drills().unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], again, "the later drill replaced the earlier");

    // Migration moves a generation between volumes in one step: the old
    // volume's chunks are garbage, and the dataset carries its home.
    let d = repo.dataset(&sname).unwrap().unwrap();
    assert_eq!((d.migrated_from.as_ref(), d.last_access), (None, d.current.created_at), "never read: last written");
    repo.touch_dataset(&sid).unwrap();
    assert!(repo.dataset(&sname).unwrap().unwrap().last_access > d.current.created_at);
    let garbage = repo.move_generation(&sid, 2, &v1, &v2, Some(&v1), &[], repo.deletion_seq().unwrap()).unwrap();
    let mut moved: Vec<ChunkId> = garbage
        .chunks
        .iter()
        .map(|(v, c)| {
            assert_eq!(v, &v1);
            *c
        })
        .collect();
    moved.sort();
    assert_eq!(moved, vec![p, r]);
    assert_eq!(garbage.manifests, vec![(v1.clone(), sid, 2)]);
    let d = repo.dataset(&sname).unwrap().unwrap();
    assert_eq!((d.current.volume.clone(), d.migrated_from.clone()), (v2.clone(), Some(v1.clone())));
    assert!(
        repo.move_generation(&sid, 2, &v1, &v2, None, &[], repo.deletion_seq().unwrap()).is_err(),
        "it is no longer on v1"
    );
    // A move's source objects are claimed at once: until the mover has
    // deleted (and forgotten) them, nothing may move them back there.
    assert!(matches!(
        repo.move_generation(&sid, 2, &v2, &v1, None, &[], repo.deletion_seq().unwrap()),
        Err(RepoError::Raced { .. })
    ));
    repo.forget_trash(&garbage).unwrap();
    repo.move_generation(&sid, 2, &v2, &v1, None, &[], repo.deletion_seq().unwrap()).unwrap();
    assert_eq!(repo.dataset(&sname).unwrap().unwrap().migrated_from, None);

    // Storage-management rules.
    let rule = HsmRule {
        name: "cold".into(),
        pattern: Pattern::new("SNAP.**").unwrap(),
        method: CopyMethod::Raw,
        backup_to: Some(v2.clone()),
        keep_last: 3,
        keep_daily: 0,
        keep_monthly: 12,
        keep_yearly: 0,
        migrate_after_days: Some(30),
        migrate_to: Some(v2.clone()),
        created_at: Timestamp::now(),
    };
    repo.insert_hsm_rule(&rule).unwrap();
    assert!(matches!(repo.insert_hsm_rule(&rule), Err(RepoError::Exists { .. })));
    let rules = repo.hsm_rules().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!((rules[0].keep_last, rules[0].keep_monthly, rules[0].migrate_after_days), (3, 12, Some(30)));
    assert_eq!((rules[0].method, rules[0].backup_to.clone()), (CopyMethod::Raw, Some(v2.clone())));
    assert!(repo.remove_hsm_rule("cold").unwrap());
    assert!(!repo.remove_hsm_rule("cold").unwrap());

    // The audit log: entries chained in order, several in one transaction
    // with key uses counted alongside.
    let link = |prev: &[u8; 32], r: &crate::AuditRow| {
        let mut h = *prev;
        h[0] ^= r.seq as u8;
        h[1] = h[1].wrapping_add(1);
        h
    };
    let entry = |o: &str| crate::AuditRow {
        seq: 99,
        at: Timestamp::now(),
        principal: "p".into(),
        action: "a".into(),
        object: o.into(),
        result: "ok".into(),
        hash: [0; 32],
        keyed: o == "two",
    };
    let first = repo.append_audit(&entry("one"), &link).unwrap();
    assert_eq!(first.seq, 1);
    let uses_before = repo.key(&k.label).unwrap().unwrap().use_count;
    let batch =
        repo.append_audit_batch(&[entry("two"), entry("three")], &link, &[k.label.clone(), k.label.clone()]).unwrap();
    assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(batch[0].hash, link(&first.hash, &batch[0]));
    assert_eq!(batch[1].hash, link(&batch[0].hash, &batch[1]));
    assert_eq!(repo.key(&k.label).unwrap().unwrap().use_count, uses_before + 2);
    let rows = repo.audit_rows(0).unwrap();
    assert_eq!(rows.iter().map(|r| r.object.as_str()).collect::<Vec<_>>(), ["one", "two", "three"]);
    assert_eq!(rows.iter().map(|r| r.keyed).collect::<Vec<_>>(), [false, true, false], "keyed is kept");
    let page = |after: u64, n: u32| repo.audit_rows_page(after, n).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!((page(0, 2), page(2, 2), page(3, 2)), (vec![1, 2], vec![3], vec![]), "pages, oldest first");

    // Custodian recipients: one per principal, never shared by two.
    for name in ["alice", "bob"] {
        repo.insert_principal(&PrincipalRecord {
            name: name.into(),
            roles: vec![Role::KeyCustodian],
            credential: "x".into(),
            disabled: false,
            created_at: Timestamp::from_second(1_700_000_000).unwrap(),
            data_grants: vec![],
            key_grants: vec![],
        })
        .unwrap();
    }
    let ck = |p: &str, b: u8| CustodianKey {
        principal: p.into(),
        public: [b; 32],
        registered_at: Timestamp::from_second(1_700_000_000 + b as i64).unwrap(),
    };
    repo.set_custodian_key(&ck("alice", 1)).unwrap();
    repo.set_custodian_key(&ck("bob", 2)).unwrap();
    assert!(
        matches!(repo.set_custodian_key(&ck("bob", 1)), Err(RepoError::Exists { kind: "custodian recipient", .. })),
        "bob may not register alice's recipient"
    );
    repo.set_custodian_key(&ck("alice", 3)).unwrap();
    let keys = repo.custodian_keys().unwrap();
    assert_eq!(
        keys.iter().map(|k| (k.principal.as_str(), k.public[0])).collect::<Vec<_>>(),
        [("alice", 3), ("bob", 2)],
        "alice replaced hers; bob's refused change left his"
    );
    names_belong_to_one_key(repo);
    read_cache(repo);
}

/// With the read cache a server turns on (`set_read_cache`), what the
/// repository itself commits to principals, grants and settings is read
/// back at once, by every backend (one that caches nothing included).
fn read_cache(repo: &dyn Repository) {
    repo.set_read_cache(std::time::Duration::from_secs(60));
    let clerk = PrincipalRecord {
        name: "cached-clerk".into(),
        roles: vec![Role::App],
        credential: "hash-of-cached-clerk".into(),
        disabled: false,
        created_at: Timestamp::from_second(1_700_000_000).unwrap(),
        data_grants: vec![],
        key_grants: vec![],
    };
    assert!(repo.principal("cached-clerk").unwrap().is_none());
    repo.insert_principal(&clerk).unwrap();
    assert_eq!(repo.principal("cached-clerk").unwrap().unwrap().roles, vec![Role::App]);
    repo.set_principal_roles("cached-clerk", &[Role::Auditor]).unwrap();
    assert_eq!(repo.principal("cached-clerk").unwrap().unwrap().roles, vec![Role::Auditor]);
    repo.add_grant("cached-clerk", "key", &Pattern::new("CACHED.**").unwrap()).unwrap();
    assert_eq!(repo.principal("cached-clerk").unwrap().unwrap().key_grants.len(), 1);
    repo.set_principal_credential("cached-clerk", "hash-of-a-new-one").unwrap();
    assert_eq!(repo.principal("cached-clerk").unwrap().unwrap().credential, "hash-of-a-new-one");
    repo.set_principal_disabled("cached-clerk", true).unwrap();
    assert!(repo.principal("cached-clerk").unwrap().unwrap().disabled);
    assert!(repo.remove_principal("cached-clerk").unwrap());
    assert!(repo.principal("cached-clerk").unwrap().is_none());
    assert_eq!(repo.setting("cached.setting").unwrap(), None);
    repo.set_setting("cached.setting", "1").unwrap();
    assert_eq!(repo.setting("cached.setting").unwrap().as_deref(), Some("1"));
    repo.set_setting("cached.setting", "2").unwrap();
    assert_eq!(repo.setting("cached.setting").unwrap().as_deref(), Some("2"));
    repo.set_read_cache(std::time::Duration::ZERO);
}

/// A name belongs to one key, checked in the writing transaction: a second
/// key (inserted, bulk-inserted or renamed) with a name another carries is
/// refused, and of writers racing with one name exactly one wins.
fn names_belong_to_one_key(repo: &dyn Repository) {
    let mut holder = key("DSET.PRIM.NAMES.key001");
    holder.attributes.names = vec!["lun-7".into()];
    repo.insert_key(&holder).unwrap();
    repo.update_key(&holder, &holder).expect("a key keeps its own name");
    let mut twin = key("DSET.PRIM.NAMES.key002");
    twin.attributes.names = vec!["other".into(), "lun-7".into()];
    match repo.insert_key(&twin) {
        Err(RepoError::NameTaken { name, label }) => {
            assert_eq!((name.as_str(), label.as_str()), ("lun-7", "DSET.PRIM.NAMES.key001"))
        }
        other => panic!("a taken name: {other:?}"),
    }
    assert!(matches!(
        repo.insert_keys(&[key("DSET.PRIM.NAMES.key003"), twin.clone()]),
        Err(RepoError::NameTaken { .. })
    ));
    assert!(repo.key(&KeyLabel::new("DSET.PRIM.NAMES.key003").unwrap()).unwrap().is_none(), "all or none");
    let plain = key("DSET.PRIM.NAMES.key004");
    repo.insert_key(&plain).unwrap();
    let mut taking = plain.clone();
    taking.attributes.names = vec!["lun-7".into()];
    assert!(matches!(repo.update_key(&taking, &plain), Err(RepoError::NameTaken { .. })));
    let racers: Vec<Result<(), RepoError>> = std::thread::scope(|s| {
        let run = |i: u32| {
            let mut k = key(&format!("DSET.PRIM.RACE.key{i:03}"));
            k.attributes.names = vec!["raced-name".into()];
            s.spawn(move || repo.insert_key(&k))
        };
        let all: Vec<_> = (1..=4).map(run).collect();
        all.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(racers.iter().filter(|r| r.is_ok()).count(), 1, "{racers:?}");
    assert!(racers.iter().filter(|r| r.is_err()).all(|r| matches!(r, Err(RepoError::NameTaken { .. }))), "{racers:?}");
}

/// A MAC for tests: keyed, 32 bytes, different for every input that
/// matters here. Not a real MAC (the engine's is HMAC-SHA-256 in the HSM).
pub struct TestRowAuth(pub u64);

impl crate::RowAuth for TestRowAuth {
    fn mac(&self, msg: &[u8]) -> std::result::Result<[u8; 32], String> {
        let mut out = [0u8; 32];
        for (i, o) in out.chunks_mut(8).enumerate() {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ self.0 ^ (i as u64) << 56;
            for b in msg {
                h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
            }
            o.copy_from_slice(&h.to_be_bytes());
        }
        Ok(out)
    }
}

/// The row authentication contract (ADR 0019), on a fresh repository.
/// `raw` runs SQL on the catalog the way a tool outside Custos would
/// (another connection, none of Custos's functions or triggers); `reopen`
/// opens the same catalog anew; `trigger` is the backend's SQL that plants
/// a trigger named `evil` on `settings`, and the SQL that removes it.
pub fn row_auth(
    repo: &dyn Repository,
    raw: &dyn Fn(&str),
    reopen: &dyn Fn() -> Result<Box<dyn Repository>, RepoError>,
    trigger: (&str, &str),
) {
    use std::sync::Arc;
    let at = Timestamp::from_second(1_700_000_000).unwrap();
    let person = |name: &str| PrincipalRecord {
        name: name.into(),
        roles: vec![Role::App],
        credential: format!("hash-of-{name}"),
        disabled: false,
        created_at: at,
        data_grants: vec![],
        key_grants: vec![],
    };
    // Rows from before the catalog was sealed.
    repo.set_setting("chunk.size", "1048576").unwrap();
    repo.insert_principal(&person("clerk")).unwrap();
    repo.add_grant("clerk", "data", &Pattern::new("PAY.**").unwrap()).unwrap();
    repo.insert_keys(&[key("K.ONE"), key("K.TWO")]).unwrap();
    let auth: Arc<dyn crate::RowAuth> = Arc::new(TestRowAuth(42));
    repo.set_row_auth(Some(auth.clone()));
    assert!(repo.seal_rows().unwrap() >= 5, "every row is sealed");
    let clean = repo.verify_rows().unwrap();
    assert!(clean.faults.is_empty(), "{:?}", clean.faults);
    // Rows written through the repository are sealed as they are written,
    // whatever statement wrote them.
    repo.set_setting("chunk.size", "2097152").unwrap();
    repo.insert_principal(&person("auditor")).unwrap();
    repo.set_principal_disabled("auditor", true).unwrap();
    repo.set_principal_roles("auditor", &[Role::Auditor, Role::KeyCustodian]).unwrap();
    assert_eq!(repo.principal("auditor").unwrap().unwrap().roles, vec![Role::Auditor, Role::KeyCustodian]);
    repo.set_principal_roles("auditor", &[Role::App]).unwrap();
    repo.set_principal_credential("auditor", "hash-of-a-new-credential").unwrap();
    repo.insert_principal(&person("leaver")).unwrap();
    repo.add_grant("leaver", "data", &Pattern::new("GONE.**").unwrap()).unwrap();
    assert!(repo.remove_principal("leaver").unwrap());
    assert!(!repo.remove_principal("leaver").unwrap(), "gone already");
    assert!(repo.principal("leaver").unwrap().is_none());
    repo.insert_principal(&person("leaver")).unwrap();
    assert!(repo.principal("leaver").unwrap().unwrap().data_grants.is_empty(), "its grants went with it");
    assert!(repo.remove_principal("leaver").unwrap());
    assert_eq!(repo.principal("auditor").unwrap().unwrap().credential, "hash-of-a-new-credential");
    // The last enabled security-admin stays one, whatever the change; two
    // admins disabling each other at once: exactly one of them succeeds.
    let admin = |name: &str| PrincipalRecord { roles: vec![Role::SecurityAdmin, Role::App], ..person(name) };
    for name in ["sa1", "sa2"] {
        repo.insert_principal(&admin(name)).unwrap();
    }
    let outcomes: Vec<Result<(), RepoError>> = std::thread::scope(|s| {
        let a = s.spawn(|| repo.set_principal_disabled("sa1", true));
        let b = s.spawn(|| repo.set_principal_disabled("sa2", true));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    assert_eq!(outcomes.iter().filter(|r| r.is_ok()).count(), 1, "{outcomes:?}");
    assert!(outcomes.iter().any(|r| matches!(r, Err(RepoError::LastAdmin { .. }))), "{outcomes:?}");
    let last = if repo.principal("sa1").unwrap().unwrap().disabled { "sa2" } else { "sa1" };
    assert!(matches!(repo.set_principal_roles(last, &[Role::App]), Err(RepoError::LastAdmin { .. })));
    assert!(matches!(repo.remove_principal(last), Err(RepoError::LastAdmin { .. })));
    assert!(matches!(repo.set_principal_disabled(last, true), Err(RepoError::LastAdmin { .. })));
    assert!(!repo.principal(last).unwrap().unwrap().disabled, "nothing changed");
    // With another enabled, each change goes through again.
    repo.set_principal_disabled(if last == "sa1" { "sa2" } else { "sa1" }, false).unwrap();
    repo.set_principal_roles(last, &[Role::App]).unwrap();
    for name in ["sa1", "sa2"] {
        if name != last {
            repo.set_principal_roles(name, &[Role::App]).unwrap_err();
        }
    }
    assert!(matches!(repo.set_principal_credential("nobody", "x"), Err(RepoError::NotFound { .. })));
    assert!(matches!(repo.set_principal_roles("nobody", &[Role::App]), Err(RepoError::NotFound { .. })));
    repo.record_key_use(&KeyLabel::new("K.ONE").unwrap()).unwrap();
    let id = repo
        .insert_request(&crate::RequestRow {
            id: 0,
            action: "key-destroy".into(),
            args: "[]".into(),
            requested_by: "clerk".into(),
            created_at: at,
            expires_at: at,
            state: "pending".into(),
            decided_by: None,
            decided_at: None,
        })
        .unwrap();
    assert!(repo.decide_request(id, "executed", "auditor").unwrap());
    let newer =
        repo.insert_request(&crate::RequestRow { state: "pending".into(), ..repo.requests().unwrap()[0].clone() });
    let newer = newer.unwrap();
    let rids = |v: Vec<crate::RequestRow>| v.iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(rids(repo.requests().unwrap()), [newer, id], "newest first");
    assert_eq!(rids(repo.requests_before(u64::MAX, 1).unwrap()), [newer]);
    assert_eq!(rids(repo.requests_before(newer, 5).unwrap()), [id]);
    assert!(repo.requests_before(id, 5).unwrap().is_empty());
    // Bulk inserts and re-encipherment too (a backend may seal those rows
    // before it writes them: the MAC must be the one a read expects).
    let three = KeyLabel::new("K.THREE").unwrap();
    repo.insert_keys(&[key("K.THREE")]).unwrap();
    repo.set_destroy_after(&three, Some(at)).unwrap();
    let k3 = repo.key(&three).unwrap().unwrap();
    let rewrap = Rewrap { label: three.clone(), from: k3.mkvp, to: Mkvp([3; 8]), wrapped: vec![5; 40] };
    assert_eq!(repo.rewrap_keys(&[rewrap]).unwrap(), 1);
    assert_eq!(repo.key(&three).unwrap().unwrap().mkvp, Mkvp([3; 8]));
    assert_eq!(repo.destroy_after(&three).unwrap(), Some(at));
    assert!(repo.verify_rows().unwrap().faults.is_empty());
    let page = repo.rewrap_page(&Mkvp([3; 8]), None, 10, &mut |_| Some((Mkvp([4; 8]), vec![6; 40]))).unwrap();
    assert_eq!((page.moved, page.last.as_ref()), (1, Some(&three)));
    assert_eq!(repo.key(&three).unwrap().unwrap().mkvp, Mkvp([4; 8]));
    assert_eq!(repo.destroy_after(&three).unwrap(), Some(at));
    assert!(repo.verify_rows().unwrap().faults.is_empty(), "a re-enciphered page is sealed");
    // Taken off the schedule once, only while still due at that time.
    assert!(!repo.unschedule_destroy(&three, Timestamp::from_second(1_000).unwrap()).unwrap());
    assert_eq!(repo.destroy_after(&three).unwrap(), Some(at));
    assert!(repo.unschedule_destroy(&three, at).unwrap());
    assert!(!repo.unschedule_destroy(&three, at).unwrap(), "a second taker finds it gone");
    assert_eq!(repo.destroy_after(&three).unwrap(), None);
    assert!(repo.verify_rows().unwrap().faults.is_empty());
    assert_eq!(repo.principal("clerk").unwrap().unwrap().data_grants.len(), 1);

    let named = |e: RepoError, table: &str, row: &str| match &e {
        RepoError::Tampered { table: t, row: r, .. } => {
            assert_eq!(t, table, "{e}");
            assert!(r.contains(row), "{e}");
            assert!(e.to_string().contains("catalog verify"), "{e}");
        }
        other => panic!("expected a tampered {table} row, got {other:?}"),
    };
    let faults = |expect: &[(&str, &str)]| {
        let got = repo.verify_rows().unwrap().faults;
        assert_eq!(got.len(), expect.len(), "{got:?}");
        for (t, r) in expect {
            assert!(got.iter().any(|f| f.table == *t && f.row.contains(r)), "{t} {r} not in {got:?}");
        }
    };
    // Each edit from outside is refused by name on read, and listed.
    raw("INSERT INTO grants (principal, kind, pattern, created_at) VALUES ('clerk', 'data', '**', 0)");
    named(repo.principal("clerk").unwrap_err(), "grants", "'**'");
    faults(&[("grants", "'**'")]);
    raw("DELETE FROM grants WHERE pattern = '**'");
    raw("UPDATE principals SET credential = 'attacker''s hash' WHERE name = 'auditor'");
    named(repo.principal("auditor").unwrap_err(), "principals", "'auditor'");
    // An update through the repository never re-seals a forged row.
    named(repo.set_principal_disabled("auditor", false).unwrap_err(), "principals", "'auditor'");
    faults(&[("principals", "'auditor'")]);
    raw("UPDATE requests SET state = 'pending'");
    raw("UPDATE settings SET value = '1' WHERE key = 'chunk.size'");
    named(repo.setting("chunk.size").unwrap_err(), "settings", "'chunk.size'");
    named(repo.requests().unwrap_err(), "requests", "id=1");
    raw("UPDATE keys SET wrapped = (SELECT wrapped FROM keys WHERE label = 'K.TWO'), kcv = 'FFFFFFFFFF' WHERE label = 'K.ONE'");
    named(repo.key(&KeyLabel::new("K.ONE").unwrap()).unwrap_err(), "keys", "'K.ONE'");
    faults(&[("principals", "'auditor'"), ("requests", "id=1"), ("settings", "'chunk.size'"), ("keys", "'K.ONE'")]);
    // A MAC copied from another row does not fit.
    raw("UPDATE keys SET mac = (SELECT mac FROM keys WHERE label = 'K.TWO') WHERE label = 'K.ONE'");
    named(repo.key(&KeyLabel::new("K.ONE").unwrap()).unwrap_err(), "keys", "'K.ONE'");
    // A drill that failed cannot be made to read as proven.
    let failed = custos_model::DrillRecord {
        dataset: "X.DATA".into(),
        threats: "site-loss".into(),
        at,
        survived: false,
        agrees: false,
        how: "nothing survived".into(),
        by: "clerk".into(),
    };
    repo.record_drills(std::slice::from_ref(&failed)).unwrap();
    assert_eq!(repo.drills().unwrap(), vec![failed]);
    raw("UPDATE drills SET survived = 1, agrees = 1");
    named(repo.drills().unwrap_err(), "drills", "X.DATA");

    // Without the key: nothing is checked, and the tables only a key holder
    // may change are refused; the deletion counter is not one of them.
    repo.set_row_auth(None);
    assert!(repo.key(&KeyLabel::new("K.TWO").unwrap()).unwrap().is_some());
    match repo.set_setting("dual.control", "all") {
        Err(e @ RepoError::NeedsKey { .. }) => {
            assert!(e.to_string().contains("settings") && e.to_string().contains("passphrase"), "{e}")
        }
        other => panic!("a keyless write of a setting must be refused: {other:?}"),
    }
    repo.set_setting("trash.deletions", "5").unwrap();
    repo.set_row_auth(Some(auth));
    assert_eq!(repo.setting("trash.deletions").unwrap().as_deref(), Some("5"));
    assert_eq!(repo.setting("dual.control").unwrap(), None, "the refused write changed nothing");

    // A trigger or view put into the catalog is refused when it is opened:
    // it would run inside Custos's connection.
    raw(trigger.0);
    match reopen() {
        Err(e @ RepoError::Tampered { .. }) => assert!(e.to_string().contains("trigger evil"), "{e}"),
        Err(other) => panic!("a foreign trigger must be refused as tampering, got {other}"),
        Ok(_) => panic!("a foreign trigger must be refused as tampering"),
    }
    raw(trigger.1);
    assert!(reopen().is_ok());

    // A rotation seals every row again under the next key, but never a
    // forged one: the first bad row stops it and nothing changes.
    let next: Arc<dyn crate::RowAuth> = Arc::new(TestRowAuth(43));
    named(repo.reseal_rows(next.clone()).unwrap_err(), "settings", "'chunk.size'");
    assert_eq!(repo.setting("trash.deletions").unwrap().as_deref(), Some("5"), "still under the old key");
    raw("DELETE FROM keys WHERE label = 'K.ONE'");
    raw("DELETE FROM principals WHERE name = 'auditor'");
    raw("DELETE FROM requests");
    raw("DELETE FROM settings WHERE key = 'chunk.size'");
    raw("DELETE FROM drills");
    assert!(repo.reseal_rows(next.clone()).unwrap() >= 4);
    named(repo.principal("clerk").unwrap_err(), "principals", "'clerk'");
    repo.set_row_auth(Some(next.clone()));
    let after = repo.verify_rows().unwrap();
    assert!(after.faults.is_empty() && after.rows >= 5, "{after:?}");
    assert_eq!(repo.principal("clerk").unwrap().unwrap().data_grants.len(), 1);
    assert_eq!(repo.setting("trash.deletions").unwrap().as_deref(), Some("5"), "unsealed rows stay unsealed");
    repo.set_setting("chunk.size", "65536").unwrap();
    assert!(repo.verify_rows().unwrap().faults.is_empty(), "new rows are sealed under the installed key");
    repo.set_row_auth(None);
    assert!(matches!(repo.reseal_rows(next).unwrap_err(), RepoError::NeedsKey { .. }), "a rotation needs the key");
}

//! Vaults built by hand the way administrators build them, not the way the
//! demo does, each with what an administrator can recover written down
//! here, by hand, threat by threat: the report and the drill must both
//! agree with it, cell by cell, for every single threat and every pair.
//!
//! Every vault has its directory (catalog and software HSM) at a site of
//! its own, V, with no vault backup; data at site A on `disk-a`; site B
//! holds `disk-b` and the tape `tape-b`. Unless a case adds them there is
//! no keystore backup and no escrow, so losing the master key, the
//! keystore, the catalog or the HSM loses everything: the hand-written
//! expectations say so case by case rather than assume it.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use custos_core::model::{DatasetName, KeyAction, KeyLabel, Medium, Pattern, Role, VolumeName};
use custos_core::{InitOptions, KdfParams, NewVolume, Open, Passphrase, PutOptions, ShareFile, Vault};
use custos_risk::drill::{drill, DrillOptions};
use custos_risk::model::Threat::{self, *};
use custos_risk::{build, report};

fn pass() -> Passphrase {
    Passphrase::from("hand built passphrase".to_string())
}

/// The threats that take the keys or the catalog: with no keystore backup,
/// escrow or vault backup, nothing survives them.
const VAULT: [Threat; 4] = [MasterKeyLoss, KeystoreLoss, CatalogLoss, HsmLoss];

/// One dataset's expectation: the threats it does not survive alone, and
/// the pairs it does not survive although it survives each alone.
struct Expect {
    dataset: &'static str,
    lost: Vec<Threat>,
    lost_pairs: Vec<(Threat, Threat)>,
}

impl Expect {
    fn new(dataset: &'static str, lost: &[Threat]) -> Self {
        Self { dataset, lost: lost.to_vec(), lost_pairs: Vec::new() }
    }
    fn and_pairs(mut self, pairs: &[(Threat, Threat)]) -> Self {
        self.lost_pairs = pairs.to_vec();
        self
    }
    /// Whether an administrator gets today's data back after `ts`.
    fn survives(&self, ts: &[Threat]) -> bool {
        let pair_lost =
            |a: Threat, b: Threat| self.lost_pairs.iter().any(|&(x, y)| (x, y) == (a, b) || (y, x) == (a, b));
        let single_lost = ts.iter().any(|t| self.lost.contains(t));
        let pair = matches!(ts, [a, b] if pair_lost(*a, *b));
        !(single_lost || pair)
    }
}

/// A vault as described at the top, with its volumes.
struct World {
    v: Vault<Open>,
    disk_a: VolumeName,
    disk_b: VolumeName,
    tape_b: VolumeName,
    shares: Vec<ShareFile>,
}

fn vol(v: &Vault<Open>, root: &Path, name: &str, site: &str, medium: Medium) -> VolumeName {
    let n = VolumeName::new(name).unwrap();
    let location = root.join(name).display().to_string();
    v.add_volume(&NewVolume { name: n.clone(), location, site: site.into(), medium }).unwrap();
    n
}

fn world(root: &Path) -> World {
    let v = Vault::init(
        &root.join("vault"),
        &pass(),
        &InitOptions { kdf: KdfParams::MINIMUM, site: "V".into(), ..Default::default() },
    )
    .unwrap();
    v.set_chunk_size(64 * 1024).unwrap();
    let disk_a = vol(&v, root, "disk-a", "A", Medium::Disk);
    let disk_b = vol(&v, root, "disk-b", "B", Medium::Disk);
    let tape_b = vol(&v, root, "tape-b", "B", Medium::Tape);
    World { v, disk_a, disk_b, tape_b, shares: Vec::new() }
}

fn ds(name: &str) -> DatasetName {
    DatasetName::new(name).unwrap()
}

/// Write `name` on `volume` (150 KB, three chunks); its key's label.
fn put(w: &World, name: &str, volume: &VolumeName) -> KeyLabel {
    let seed = name.bytes().fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
    let bytes: Vec<u8> = (0..150_000u32).map(|j| (j.wrapping_mul(2654435761) ^ seed) as u8 >> 1).collect();
    let opts = PutOptions { volume: Some(volume.clone()), ..Default::default() };
    w.v.put(&ds(name), &mut bytes.as_slice(), &opts).unwrap().key_label
}

fn logical(w: &World, name: &str, to: &VolumeName, key: Option<&KeyLabel>) -> KeyLabel {
    w.v.backup_logical(&ds(name), to, key).unwrap().unwrap().key_label
}

fn raw(w: &World, name: &str, to: &VolumeName) {
    w.v.backup_raw(&ds(name), to).unwrap().unwrap();
}

/// Check the report and the drill of `w` against `expect`, every single
/// threat and every pair; every disagreement is listed before failing.
fn check(root: &Path, w: World, expect: &[Expect]) {
    let World { v, shares, .. } = w;
    let r = report::report(build::checked_graph(&v, None).unwrap(), true, jiff::Timestamp::now());
    assert!(r.keys_checked);
    let mut wrong: Vec<String> = Vec::new();
    let mut sets: Vec<Vec<Threat>> = Threat::ALL.iter().map(|t| vec![*t]).collect();
    sets.extend(Threat::pairs().into_iter().map(|(a, b)| vec![a, b]));
    let names: BTreeSet<&str> = expect.iter().map(|e| e.dataset).collect();
    for e in expect {
        let d = r.rows().find(e.dataset).unwrap();
        let cells =
            d.single.iter().map(|(t, v)| (vec![*t], v)).chain(d.dual.iter().map(|((a, b), v)| (vec![*a, *b], v)));
        let mut n = 0;
        for (ts, v) in cells {
            n += 1;
            if v.survives() != e.survives(&ts) {
                wrong.push(format!("report {} {ts:?}: expected {}, got {}", e.dataset, e.survives(&ts), v.explain()));
            }
        }
        assert_eq!(n, sets.len());
    }
    // One dataset: drill it alone; several: drill the whole vault.
    let pattern = match names.iter().collect::<Vec<_>>().as_slice() {
        [one] => Some(Pattern::new(**one).unwrap()),
        _ => None,
    };
    let cells = drill(
        &v,
        &DrillOptions { pattern, sets: sets.clone(), scratch: root.join("scratch"), passphrase: pass(), shares },
    )
    .unwrap();
    for e in expect {
        let mine: Vec<_> = cells.iter().filter(|c| c.dataset == e.dataset).collect();
        assert_eq!(mine.len(), sets.len(), "{}", e.dataset);
        for c in mine {
            let want = e.survives(&c.threats);
            if c.proven != want || !c.agrees {
                wrong.push(format!(
                    "drill {} {:?}: expected {want}, proven {} (agrees {}, not drilled {:?}): {}",
                    e.dataset, c.threats, c.proven, c.agrees, c.not_drilled, c.how
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{} cells wrong:\n{}", wrong.len(), wrong.join("\n"));
}

fn lost_with(extra: &[Threat]) -> Vec<Threat> {
    let mut v = extra.to_vec();
    v.extend(VAULT);
    v
}

/// A logical copy at the same site, on another volume: it survives
/// everything but the site's loss (and the vault's keys).
#[test]
fn same_site_logical_copy() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    let disk_a2 = vol(&w.v, dir.path(), "disk-a2", "A", Medium::Disk);
    put(&w, "APP.DATA", &w.disk_a);
    logical(&w, "APP.DATA", &disk_a2, None);
    check(dir.path(), w, &[Expect::new("APP.DATA", &lost_with(&[SiteLoss]))]);
}

/// A logical copy on the dataset's own volume: a disk failure or an
/// attacker on that volume takes both.
#[test]
fn copy_on_the_primarys_volume() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    put(&w, "APP.DATA", &w.disk_a);
    logical(&w, "APP.DATA", &w.disk_a, None);
    check(dir.path(), w, &[Expect::new("APP.DATA", &lost_with(&[MaliciousCorruption, DiskFailure, SiteLoss]))]);
}

/// An offsite logical copy whose BACK key is archived: it saves the data
/// after `key restore`, so it counts.
#[test]
fn back_key_archived() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    put(&w, "APP.DATA", &w.disk_a);
    let back = logical(&w, "APP.DATA", &w.disk_b, None);
    w.v.key_action(&back, KeyAction::Deactivate, false).unwrap();
    w.v.key_action(&back, KeyAction::Archive, false).unwrap();
    check(dir.path(), w, &[Expect::new("APP.DATA", &VAULT)]);
}

/// An offsite logical copy whose BACK key is scheduled for destruction:
/// it saves the data after `key cancel-destroy`, before the key falls due.
#[test]
fn back_key_scheduled_for_destruction() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    put(&w, "APP.DATA", &w.disk_a);
    let back = logical(&w, "APP.DATA", &w.disk_b, None);
    w.v.key_action(&back, KeyAction::Deactivate, false).unwrap();
    w.v.schedule_destroy(&back, jiff::SignedDuration::from_hours(24 * 8), true).unwrap();
    check(dir.path(), w, &[Expect::new("APP.DATA", &VAULT)]);
}

/// The BACK key destroyed (crypto-erase): the logical copy is noise; only
/// the raw copy on tape, under the primary's key, still saves the data.
#[test]
fn back_key_destroyed() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    put(&w, "APP.DATA", &w.disk_a);
    let back = logical(&w, "APP.DATA", &w.disk_b, None);
    raw(&w, "APP.DATA", &w.tape_b);
    w.v.key_action(&back, KeyAction::Deactivate, false).unwrap();
    w.v.key_action(&back, KeyAction::Destroy, true).unwrap();
    check(dir.path(), w, &[Expect::new("APP.DATA", &lost_with(&[DataKeyLoss]))]);
}

/// A BACK key shared by three datasets, with a bit flipped in its record,
/// and a keystore backup at site B taken before: `key recover` repairs it,
/// so the copies count, and the keystore itself can be lost.
#[test]
fn shared_back_key_damaged_with_a_keystore_backup() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    let mut back = None;
    for name in ["APP.D0", "APP.D1", "APP.D2"] {
        put(&w, name, &w.disk_a);
        back = Some(logical(&w, name, &w.disk_b, back.as_ref()));
    }
    w.v.keystore_backup(&w.disk_b).unwrap();
    w.v.drill_corrupt_key(back.as_ref().unwrap()).unwrap();
    check(dir.path(), w, &[Expect::new("APP.D1", &[MasterKeyLoss, CatalogLoss, HsmLoss])]);
}

/// The paper's Example 2 for real: only a raw copy (under the primary's
/// key), and a bit flipped in that key's record. A keystore backup offsite
/// repairs it, so the dataset is recoverable today and survives what does
/// not take that backup with it.
#[test]
fn example_2_with_a_bit_flip() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    let key = put(&w, "PAY.DATA", &w.disk_a);
    raw(&w, "PAY.DATA", &w.disk_b);
    w.v.keystore_backup(&w.disk_b).unwrap();
    w.v.drill_corrupt_key(&key).unwrap();
    check(dir.path(), w, &[Expect::new("PAY.DATA", &[MasterKeyLoss, CatalogLoss, HsmLoss])]);
}

/// A raw copy offsite and a snapshot: the snapshot undoes a bad write, the
/// raw copy a lost disk or site; neither survives the key.
#[test]
fn raw_copy_plus_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    put(&w, "APP.DATA", &w.disk_a);
    raw(&w, "APP.DATA", &w.disk_b);
    w.v.snapshot_create(&ds("APP.DATA")).unwrap();
    check(dir.path(), w, &[Expect::new("APP.DATA", &lost_with(&[DataKeyLoss]))]);
}

/// A logical copy of an older generation (a recovery point, not today's
/// data) beside a raw copy of today's: key loss, which only the logical
/// copy could have survived, loses today's data.
#[test]
fn stale_logical_copy_beside_a_current_raw_copy() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    put(&w, "APP.DATA", &w.disk_a);
    logical(&w, "APP.DATA", &w.disk_b, None);
    w.v.put(&ds("APP.DATA"), &mut &[9u8; 120_000][..], &Default::default()).unwrap();
    raw(&w, "APP.DATA", &w.tape_b);
    check(dir.path(), w, &[Expect::new("APP.DATA", &lost_with(&[DataKeyLoss]))]);
}

/// A mirrored volume (A to B) holding the dataset and a logical copy of
/// it: the mirror saves it from a disk or site loss, the copy from key
/// loss; an attacker writing to the volume reaches the mirror too.
#[test]
fn mirror_plus_a_copy_on_the_mirrored_volume() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    let sync_a = vol(&w.v, dir.path(), "sync-a", "A", Medium::Disk);
    let pprc_b = vol(&w.v, dir.path(), "pprc-b", "B", Medium::Disk);
    w.v.mirror_add(&sync_a, &pprc_b).unwrap();
    put(&w, "APP.DATA", &sync_a);
    logical(&w, "APP.DATA", &sync_a, None);
    check(dir.path(), w, &[Expect::new("APP.DATA", &lost_with(&[MaliciousCorruption]))]);
}

/// The keystore backup on the data's own volume, and a raw copy offsite:
/// key loss alone is repaired from it, but not with the volume gone too.
#[test]
fn keystore_backup_on_the_datas_volume() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    put(&w, "APP.DATA", &w.disk_a);
    raw(&w, "APP.DATA", &w.disk_b);
    w.v.keystore_backup(&w.disk_a).unwrap();
    let with_volume = [MaliciousCorruption, DiskFailure, SiteLoss];
    let pairs: Vec<(Threat, Threat)> =
        with_volume.iter().flat_map(|&v| [(v, DataKeyLoss), (v, KeystoreLoss)]).collect();
    check(dir.path(), w, &[Expect::new("APP.DATA", &[MasterKeyLoss, CatalogLoss, HsmLoss]).and_pairs(&pairs)]);
}

/// Escrow two of three, with two custodians gone (disabled): the one share
/// left is below the threshold, so escrow saves nothing.
#[test]
fn escrow_with_fewer_than_a_threshold_of_shares() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = world(dir.path());
    let custodians: Vec<String> = ["alice", "bob", "carol"].iter().map(|s| s.to_string()).collect();
    let mut ids = Vec::new();
    for c in &custodians {
        w.v.user_add(c, &[Role::KeyCustodian], None).unwrap();
        let id = custos_core::CustodianIdentity::generate(c).unwrap();
        w.v.custodian_register(c, &id.recipient()).unwrap();
        ids.push(id);
    }
    w.v.escrow_init(&custodians, 2).unwrap();
    put(&w, "APP.DATA", &w.disk_a);
    raw(&w, "APP.DATA", &w.disk_b);
    let alice = custos_core::SealedShareFile(w.v.escrow_share("alice", None).unwrap());
    w.shares = vec![ids[0].open_share(&alice, "share").unwrap()];
    w.v.user_disable("bob").unwrap();
    w.v.user_disable("carol").unwrap();
    check(dir.path(), w, &[Expect::new("APP.DATA", &lost_with(&[DataKeyLoss]))]);
}

/// A keystore backup taken between master key changes: the key made under
/// the first master key is in it under that one, since retired, so it
/// cannot be restored from there; the key made under the second can.
#[test]
fn keystore_backup_spanning_a_master_key_change() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    put(&w, "OLDMK.DATA", &w.disk_a);
    raw(&w, "OLDMK.DATA", &w.disk_b);
    w.v.mk_load_new(custos_core::NewMasterKey::Generate, None).unwrap();
    w.v.mk_activate().unwrap();
    put(&w, "NEWMK.DATA", &w.disk_a);
    raw(&w, "NEWMK.DATA", &w.disk_b);
    let ksb = w.v.keystore_backup(&w.disk_b).unwrap();
    assert_eq!(ksb.mkvps.len(), 2);
    w.v.mk_reencipher(100, |_| {}).unwrap();
    w.v.mk_load_new(custos_core::NewMasterKey::Generate, None).unwrap();
    w.v.mk_activate().unwrap();
    check(
        dir.path(),
        w,
        &[
            Expect::new("OLDMK.DATA", &lost_with(&[DataKeyLoss])),
            Expect::new("NEWMK.DATA", &[MasterKeyLoss, CatalogLoss, HsmLoss]),
        ],
    );
}

/// A logical copy whose chunks rotted on its disk, found by `backup verify
/// --read-data`, beside a sound raw copy on tape: key loss, which only the
/// logical copy could have survived, loses the data.
#[test]
fn rotted_logical_copy_found_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    put(&w, "APP.DATA", &w.disk_a);
    logical(&w, "APP.DATA", &w.disk_b, None);
    raw(&w, "APP.DATA", &w.tape_b);
    common::rot_chunks(&dir.path().join("disk-b"));
    for b in w.v.backups(None).unwrap() {
        let _ = w.v.verify_backup(&b, true);
    }
    check(dir.path(), w, &[Expect::new("APP.DATA", &lost_with(&[DataKeyLoss]))]);
}

/// A dataset `hsm` migrated from disk to tape at site B, with a logical
/// copy on disk at B taken before: B's loss takes both.
#[test]
fn migrated_dataset_with_a_copy_at_the_same_site() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    put(&w, "ARC.DATA", &w.disk_a);
    logical(&w, "ARC.DATA", &w.disk_b, None);
    w.v.migrate(&ds("ARC.DATA"), &w.tape_b).unwrap();
    check(dir.path(), w, &[Expect::new("ARC.DATA", &lost_with(&[SiteLoss]))]);
}

/// A primary key past its expiry date: it still opens what it sealed, so
/// with an offsite logical copy nothing but the vault's keys is a loss.
#[test]
fn expired_primary_key() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    let key = KeyLabel::new("DSET.PRIM.OLD.key001").unwrap();
    w.v.create_key(&custos_core::NewKey {
        label: Some(key.clone()),
        app: None,
        purpose: custos_core::model::Purpose::Prim,
        activate: true,
        expires_at: Some(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(2)),
    })
    .unwrap();
    let opts = PutOptions { volume: Some(w.disk_a.clone()), key: Some(key.clone()), ..Default::default() };
    w.v.put(&ds("OLD.DATA"), &mut &[4u8; 150_000][..], &opts).unwrap();
    logical(&w, "OLD.DATA", &w.disk_b, None);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(w.v.key(&key).unwrap().expires_at.is_some_and(|t| t < jiff::Timestamp::now()));
    check(dir.path(), w, &[Expect::new("OLD.DATA", &VAULT)]);
}

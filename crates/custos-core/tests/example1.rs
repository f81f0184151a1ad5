//! The paper's Example 1, end to end: a rarely used dataset's key is deleted,
//! and the loss is found years later. Keystore backups are kept daily for 60
//! days plus monthly and yearly; the master key changes every year. Every
//! backup that still holds the key is wrapped under a master key no register
//! holds any more, so backups cannot bring it back, and say so; escrow can.

mod common;

use common::*;
use custos_core::model::{KeyAction, Pattern, VolumeName};
use custos_core::{Error, NewMasterKey, Recovered};

const DAYS_PER_YEAR: u32 = 360; // 12 months of 30 days keeps the calendar simple
const YEARS: u32 = 4;

/// Whether the backup taken on `day` is still kept on `today` under
/// "daily for 60 days, monthly for 12 months, yearly for 7 years".
fn retained(day: u32, today: u32) -> bool {
    let age = today - day;
    age < 60 || (day.is_multiple_of(30) && age < 360) || (day.is_multiple_of(DAYS_PER_YEAR) && age < 7 * DAYS_PER_YEAR)
}

#[test]
fn example_1_key_lost_years_ago_comes_back_through_escrow_only() {
    let t = vault();
    let shares = t.escrow(&["alice", "bob", "carol"], 2);

    let archive = data(3 * CS + 17, 2019);
    let rare = t.put("ARCHIVE.Y2019", &archive).key_label;
    t.put("PAYROLL.MASTER", b"busy dataset, year 0");
    let default = VolumeName::new("default").unwrap();
    let today = YEARS * DAYS_PER_YEAR - 1;
    let deleted_on = 100;

    let mut kept = Vec::new();
    let mut master_keys = vec![t.vault.mk_status().unwrap().registers[0].mkvp.clone()];
    for day in 0..=today {
        if day > 0 && day.is_multiple_of(DAYS_PER_YEAR) {
            // The yearly master key change, done by the book.
            t.vault.mk_load_new(NewMasterKey::Generate, None).unwrap();
            t.vault.mk_activate().unwrap();
            t.vault.mk_reencipher(1000, |_| {}).unwrap();
            master_keys.push(
                t.vault.mk_status().unwrap().registers.iter().find(|r| r.register == "CURRENT").unwrap().mkvp.clone(),
            );
            t.put("PAYROLL.MASTER", format!("busy dataset, year {}", day / DAYS_PER_YEAR).as_bytes());
        }
        if day == deleted_on {
            // Someone deletes the key of a dataset nobody has read in months.
            t.vault.key_action(&rare, KeyAction::Deactivate, false).unwrap();
            t.vault.key_action(&rare, KeyAction::Destroy, true).unwrap();
        }
        // Only the backups the retention policy still keeps today are
        // written; the others would have been pruned by now.
        if retained(day, today) {
            kept.push((day, t.vault.keystore_backup(&default).unwrap()));
        }
    }
    assert_eq!(master_keys.len(), YEARS as usize);
    // Today is day 1439: dailies 1380..=1439 (60), monthlies 1080..=1350 not
    // already daily (10), yearlies 0, 360, 720 (1080 is a monthly too): 73.
    assert_eq!(kept.len(), 60 + 10 + 3);

    // Years later: the dataset is needed again.
    let e = t.get("ARCHIVE.Y2019").unwrap_err();
    assert!(matches!(e, Error::KeyDestroyed { escrow: Some(_), .. }), "{e}");

    // Every kept backup fails: either it was taken after the deletion, or the
    // master key it depends on is gone. Those that hold the key say which MKVP.
    let only_rare = Pattern::new(rare.as_str()).unwrap();
    let mut named_mkvp = 0;
    for (day, b) in &kept {
        match t.vault.recover_keys(&only_rare, &b.id) {
            Err(Error::MasterKeyUnavailable { mkvp, hint, .. }) => {
                assert!(*day < deleted_on, "day {day}");
                assert_eq!(mkvp, master_keys[0], "the year-0 master key is the one needed");
                assert!(hint.contains("escrow copy under KBK."), "{hint}");
                named_mkvp += 1;
            }
            Err(Error::Invalid { why, .. }) => assert!(why.contains("no key in backup"), "day {day}: {why}"),
            other => panic!("day {day}: backup must not restore the key: {other:?}"),
        }
    }
    assert_eq!(named_mkvp, 1, "only the yearly backup of year 0 still holds the key");
    assert!(matches!(t.get("ARCHIVE.Y2019"), Err(Error::KeyDestroyed { .. })), "nothing changed");

    // One share is not enough; two custodians are.
    let e = t.vault.recover_from_escrow(&rare, &shares[1..2]).unwrap_err();
    assert!(e.to_string().contains("needs 2 distinct shares"), "{e}");
    // A share altered (or made up) under a custodian's name is not theirs.
    let mut forged = shares[2].clone_share();
    forged.share.y[0] ^= 1;
    let e = t.vault.recover_from_escrow(&rare, &[forged, shares[0].clone_share()]).unwrap_err();
    assert!(e.to_string().contains("is not the one sealed to carol"), "{e}");
    let r = t.vault.recover_from_escrow(&rare, &[shares[2].clone_share(), shares[0].clone_share()]).unwrap();
    assert!(matches!(r, Recovered::Restored { .. }));
    assert_eq!(t.get("ARCHIVE.Y2019").unwrap(), archive, "the data reads back byte for byte");
}

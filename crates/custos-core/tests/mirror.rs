mod common;

use common::*;
use custos_core::model::{Medium, VolumeName};
use custos_core::NewVolume;

fn count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("chunks")).unwrap().map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count()).sum()
}

#[test]
fn a_mirror_holds_every_acknowledged_write_after_the_primary_is_gone() {
    let t = vault();
    let default = VolumeName::new("default").unwrap();
    let sec = VolumeName::new("pprc").unwrap();
    let sec_dir = t.path.join("volumes/pprc");
    t.vault
        .add_volume(&NewVolume {
            name: sec.clone(),
            location: sec_dir.display().to_string(),
            site: "B".into(),
            medium: Medium::Disk,
        })
        .unwrap();
    let before = data(3 * CS + 5, 1);
    t.put("MIR.BEFORE", &before);
    let st = t.vault.mirror_add(&default, &sec).unwrap();
    assert_eq!(st.missing, Some(0));
    assert!(st.objects >= 5, "the existing chunks and manifest were copied: {}", st.objects);
    // Adding the same mirror again resumes it (after an interruption);
    // another secondary for a mirrored volume is refused.
    assert_eq!(t.vault.mirror_add(&default, &sec).unwrap().missing, Some(0));
    assert!(t.vault.mirror_add(&sec, &default).is_err(), "already mirrored");

    let mut written = vec![("MIR.BEFORE".to_string(), before)];
    for i in 0..5u64 {
        let name = format!("MIR.AFTER{i}");
        let bytes = data(2 * CS + i as usize, 10 + i);
        t.put(&name, &bytes);
        written.push((name, bytes));
    }
    // Deletions replicate, as in the real thing.
    t.put("MIR.GONE", &data(CS, 99));
    t.vault.remove_dataset(&ds("MIR.GONE")).unwrap();
    let primary_dir = t.path.join("volumes/default");
    assert_eq!(count(&primary_dir), count(&sec_dir), "both sides hold the same chunks");
    assert_eq!(t.vault.mirrors(true).unwrap()[0].missing, Some(0));

    // The primary volume is lost.
    std::fs::remove_dir_all(&primary_dir).unwrap();
    for (name, bytes) in &written {
        assert_eq!(&t.get(name).unwrap(), bytes, "{name} reads from the secondary");
    }
    let e = t.vault.put(&ds("MIR.NEW"), &mut &b"x"[..], &Default::default()).unwrap_err();
    assert!(e.to_string().contains("not reachable"), "no write is acknowledged on one side only: {e}");
}

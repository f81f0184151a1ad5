mod common;

use common::*;
use custos_core::{ChunkProblem, Error, PutOptions};
use custos_store::format::FormatError;

#[test]
fn round_trips_at_every_chunk_boundary() {
    let t = vault();
    for (i, len) in [0, 1, CS - 1, CS, CS + 1, 5 * CS + 12345, 8 * CS].into_iter().enumerate() {
        let name = format!("RT.SIZE{i}");
        let bytes = data(len, i as u64);
        let r = t.put(&name, &bytes);
        assert_eq!(r.size, len as u64);
        assert_eq!(r.chunks, len.div_ceil(CS) as u64, "len {len}");
        assert_eq!(t.get(&name).unwrap(), bytes, "len {len}");
    }
}

#[test]
fn ranges_across_chunk_borders() {
    let t = vault();
    let bytes = data(4 * CS + 100, 7);
    t.put("RANGE.DATA", &bytes);
    let n = bytes.len() as u64;
    let c = CS as u64;
    for (a, b) in [(0, 0), (0, 1), (c - 1, c + 1), (c, 2 * c), (c - 10, 3 * c + 10), (5, n), (n - 1, n), (n, n), (0, n)]
    {
        let mut out = Vec::new();
        let r = t.vault.get(&ds("RANGE.DATA"), &mut out, Some((a, b))).unwrap();
        assert_eq!(r.bytes, b - a);
        assert_eq!(out, &bytes[a as usize..b as usize], "range {a}..{b}");
    }
    for (a, b) in [(2, 1), (0, n + 1), (n + 1, n + 2)] {
        let e = t.vault.get(&ds("RANGE.DATA"), &mut Vec::new(), Some((a, b))).unwrap_err();
        assert!(matches!(e, Error::Range { .. }), "{e}");
        assert!(e.to_string().contains("RANGE.DATA"));
    }
}

#[test]
fn new_generation_shares_unchanged_chunks_and_drops_the_rest() {
    let t = vault();
    let mut bytes = data(6 * CS, 1);
    let r1 = t.put("GEN.DATA", &bytes);
    assert_eq!((r1.generation, r1.new_chunks), (1, 6));
    bytes[2 * CS + 5] ^= 0xFF; // change one chunk
    let r2 = t.put("GEN.DATA", &bytes);
    assert_eq!((r2.generation, r2.new_chunks, r2.chunks), (2, 1, 6));
    assert_eq!(t.get("GEN.DATA").unwrap(), bytes);
    assert_eq!(t.chunk_file_count(), 7, "the replaced chunk waits in the trash for readers that opened it");
    t.vault.gc(jiff::SignedDuration::from_secs(3600), false, true).unwrap();
    assert_eq!(t.chunk_file_count(), 7, "within the grace period it stays");
    t.vault.gc(jiff::SignedDuration::ZERO, false, true).unwrap();
    assert_eq!(t.chunk_file_count(), 6, "the replaced chunk was deleted, the shared ones kept");
    let r3 = t.put("GEN.DATA", &bytes[..CS + 1]);
    assert_eq!((r3.generation, r3.new_chunks), (3, 1), "the first chunk is shared, the short tail is new");
    assert_eq!(t.get("GEN.DATA").unwrap(), &bytes[..CS + 1]);
    t.vault.gc(jiff::SignedDuration::ZERO, false, true).unwrap();
    assert_eq!(t.chunk_file_count(), 2);
}

fn chunk_error(e: Error) -> (u64, ChunkProblem, String) {
    let msg = e.to_string();
    match e {
        Error::Chunk { index, problem, .. } => (index, problem, msg),
        other => panic!("expected a chunk error, got {other}"),
    }
}

fn setup_tamper() -> (T, Vec<std::path::PathBuf>) {
    let t = vault();
    t.put("TAMPER.VICTIM", &data(5 * CS + 77, 3));
    let paths = t.chunk_paths("TAMPER.VICTIM");
    assert_eq!(paths.len(), 6);
    (t, paths)
}

#[test]
fn fail_bit_flip_is_named() {
    let (t, p) = setup_tamper();
    let mut b = std::fs::read(&p[3]).unwrap();
    b[100] ^= 0x01;
    std::fs::write(&p[3], b).unwrap();
    let (index, problem, msg) = chunk_error(t.get("TAMPER.VICTIM").unwrap_err());
    assert_eq!(index, 3);
    assert!(matches!(problem, ChunkProblem::Format(FormatError::Authentication)));
    assert!(msg.contains("TAMPER.VICTIM") && msg.contains("chunk 3"), "{msg}");
}

#[test]
fn fail_two_chunks_swapped() {
    let (t, p) = setup_tamper();
    let (a, b) = (std::fs::read(&p[1]).unwrap(), std::fs::read(&p[2]).unwrap());
    std::fs::write(&p[1], &b).unwrap();
    std::fs::write(&p[2], &a).unwrap();
    let (index, problem, _) = chunk_error(t.get("TAMPER.VICTIM").unwrap_err());
    assert_eq!(index, 1);
    assert!(matches!(problem, ChunkProblem::Format(FormatError::Authentication)));
}

#[test]
fn fail_chunk_dropped() {
    let (t, p) = setup_tamper();
    std::fs::remove_file(&p[4]).unwrap();
    let (index, problem, msg) = chunk_error(t.get("TAMPER.VICTIM").unwrap_err());
    assert_eq!(index, 4);
    assert!(matches!(problem, ChunkProblem::Missing));
    assert!(msg.contains("is missing"), "{msg}");
}

#[test]
fn fail_chunk_repeated() {
    let (t, p) = setup_tamper();
    std::fs::copy(&p[0], &p[1]).unwrap();
    let (index, _, _) = chunk_error(t.get("TAMPER.VICTIM").unwrap_err());
    assert_eq!(index, 1);
}

#[test]
fn fail_tail_truncated() {
    let (t, p) = setup_tamper();
    let b = std::fs::read(&p[5]).unwrap();
    std::fs::write(&p[5], &b[..b.len() - 20]).unwrap();
    let (index, problem, _) = chunk_error(t.get("TAMPER.VICTIM").unwrap_err());
    assert_eq!(index, 5);
    assert!(matches!(problem, ChunkProblem::Format(FormatError::Authentication | FormatError::Short)));
    // Cut down to less than a header.
    std::fs::write(&p[5], &b[..10]).unwrap();
    let (_, problem, _) = chunk_error(t.get("TAMPER.VICTIM").unwrap_err());
    assert!(matches!(problem, ChunkProblem::Format(FormatError::Short)));
}

#[test]
fn fail_chunk_spliced_from_another_dataset() {
    let (t, p) = setup_tamper();
    // Same key, same position: only the dataset binding can tell them apart.
    let label = t.vault.dataset(&ds("TAMPER.VICTIM")).unwrap().current.key_label;
    let opts = PutOptions { key: Some(label), volume: None, fresh: false };
    t.vault.put(&ds("TAMPER.OTHER"), &mut &data(5 * CS + 77, 4)[..], &opts).unwrap();
    let other = t.chunk_paths("TAMPER.OTHER");
    std::fs::copy(&other[2], &p[2]).unwrap();
    let (index, problem, _) = chunk_error(t.get("TAMPER.VICTIM").unwrap_err());
    assert_eq!(index, 2);
    assert!(matches!(problem, ChunkProblem::Format(FormatError::Authentication)));
    assert_eq!(t.get("TAMPER.OTHER").unwrap(), data(5 * CS + 77, 4), "the other dataset is unharmed");
}

#[test]
fn fail_older_generation_manifest_replayed() {
    let t = vault();
    t.put("REPLAY.DATA", &data(3 * CS, 1));
    let old = std::fs::read(t.manifest_path("REPLAY.DATA")).unwrap();
    t.put("REPLAY.DATA", &data(3 * CS, 2));
    std::fs::write(t.manifest_path("REPLAY.DATA"), &old).unwrap();
    let e = t.get("REPLAY.DATA").unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Manifest { generation: 2, .. }), "{msg}");
    assert!(msg.contains("REPLAY.DATA") && msg.contains("older generation"), "{msg}");
}

#[test]
fn fail_manifest_altered_or_missing() {
    let t = vault();
    t.put("MAN.DATA", &data(CS, 1));
    let p = t.manifest_path("MAN.DATA");
    let mut b = std::fs::read(&p).unwrap();
    b[40] ^= 1;
    std::fs::write(&p, &b).unwrap();
    assert!(matches!(t.get("MAN.DATA").unwrap_err(), Error::Manifest { .. }));
    std::fs::remove_file(&p).unwrap();
    let e = t.get("MAN.DATA").unwrap_err();
    assert!(e.to_string().contains("is missing"), "{e}");
}

struct FailingReader {
    left: usize,
}

impl std::io::Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("disk read error (injected)"));
        }
        let n = buf.len().min(self.left);
        buf[..n].fill(0xAB);
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn fail_input_error_mid_write_changes_nothing() {
    let t = vault();
    let bytes = data(3 * CS, 9);
    t.put("SAFE.DATA", &bytes);
    let files = t.chunk_file_count();
    let e = t.vault.put(&ds("SAFE.DATA"), &mut FailingReader { left: 7 * CS + 3 }, &PutOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Input { .. }), "{e}");
    assert!(e.to_string().contains("nothing was stored"));
    assert_eq!(t.vault.dataset(&ds("SAFE.DATA")).unwrap().current.generation, 1);
    assert_eq!(t.get("SAFE.DATA").unwrap(), bytes);
    assert_eq!(t.chunk_file_count(), files, "chunks of the failed write were removed");
    // A new dataset whose write fails leaves neither dataset nor key behind.
    let keys = t.vault.keys().unwrap().len();
    assert!(t.vault.put(&ds("NEW.FAILS"), &mut FailingReader { left: 10 }, &PutOptions::default()).is_err());
    assert!(matches!(t.vault.dataset(&ds("NEW.FAILS")), Err(Error::DatasetNotFound { .. })));
    assert_eq!(t.vault.keys().unwrap().len(), keys, "the template key was not stored");
}

#[test]
fn fail_unreachable_volume() {
    let t = vault();
    t.put("VOL.DATA", &data(CS, 1));
    std::fs::remove_dir_all(t.path.join("volumes/default")).unwrap();
    let e = t.get("VOL.DATA").unwrap_err();
    assert!(e.to_string().contains("not reachable"), "{e}");
    let e = t.vault.put(&ds("VOL.OTHER"), &mut &b"x"[..], &PutOptions::default()).unwrap_err();
    assert!(e.to_string().contains("volume default"), "{e}");
}

#[test]
fn unknown_objects_are_named() {
    let t = vault();
    let e = t.get("NO.SUCH").unwrap_err();
    assert!(matches!(e, Error::DatasetNotFound { .. }) && e.to_string().contains("NO.SUCH"));
    let opts = PutOptions { key: Some("DSET.PRIM.X.key001".parse().unwrap()), volume: None, fresh: false };
    let e = t.vault.put(&ds("X.Y"), &mut &b"x"[..], &opts).unwrap_err();
    assert!(matches!(e, Error::KeyNotFound { .. }) && e.to_string().contains("DSET.PRIM.X.key001"), "{e}");
    let opts = PutOptions { key: None, volume: Some("nowhere".parse().unwrap()), fresh: false };
    let e = t.vault.put(&ds("X.Y"), &mut &b"x"[..], &opts).unwrap_err();
    assert!(matches!(e, Error::VolumeNotFound { .. }) && e.to_string().contains("nowhere"), "{e}");
    let e = t.vault.remove_policy("nopolicy").unwrap_err();
    assert!(matches!(e, Error::PolicyNotFound { .. }) && e.to_string().contains("nopolicy"), "{e}");
    t.vault.remove_policy("default").unwrap();
    let e = t.vault.put(&ds("X.Y"), &mut &b"x"[..], &PutOptions::default()).unwrap_err();
    assert!(matches!(e, Error::NoPolicy { .. }) && e.to_string().contains("policy add"), "{e}");
    assert!(t.vault.remove_dataset(&ds("NO.SUCH")).is_err());
}

#[test]
fn remove_dataset_deletes_its_objects() {
    let t = vault();
    t.put("RM.A", &data(3 * CS, 1));
    t.put("RM.B", &data(2 * CS, 2));
    assert_eq!(t.chunk_file_count(), 5);
    let mp = t.manifest_path("RM.A");
    t.vault.remove_dataset(&ds("RM.A")).unwrap();
    assert_eq!(t.chunk_file_count(), 2);
    assert!(!mp.exists());
    assert!(matches!(t.get("RM.A").unwrap_err(), Error::DatasetNotFound { .. }));
    assert_eq!(t.get("RM.B").unwrap(), data(2 * CS, 2));
}

#[test]
fn import_tree() {
    let t = vault();
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("sub/deeper")).unwrap();
    std::fs::write(src.path().join("a.txt"), b"alpha").unwrap();
    std::fs::write(src.path().join("sub/b.bin"), data(CS + 5, 1)).unwrap();
    std::fs::write(src.path().join("sub/deeper/c"), b"").unwrap();
    let (reports, skipped) = t.vault.import(src.path(), &ds("IMP"), false, false, |_| {}).unwrap();
    assert!(skipped.is_empty());
    let names: Vec<String> = reports.iter().map(|r| r.dataset.to_string()).collect();
    assert_eq!(names, ["IMP.a#2Etxt", "IMP.sub.b#2Ebin", "IMP.sub.deeper.c"]);
    assert_eq!(t.get("IMP.sub.b#2Ebin").unwrap(), data(CS + 5, 1));
    assert_eq!(t.get("IMP.a#2Etxt").unwrap(), b"alpha");
    // Importing again without --replace refuses before writing anything.
    let e = t.vault.import(src.path(), &ds("IMP"), false, false, |_| {}).unwrap_err();
    assert!(e.to_string().contains("3 datasets exist already") && e.to_string().contains("nothing was written"), "{e}");
    // Names map reversibly: a.txt and a_txt are two datasets.
    std::fs::write(src.path().join("a_txt"), b"x").unwrap();
    let (reports, _) = t.vault.import(src.path(), &ds("IMP2"), false, false, |_| {}).unwrap();
    assert_eq!(reports.len(), 4);
    assert_eq!(t.get("IMP2.a_txt").unwrap(), b"x");
    // A dataset an earlier Custos imported from a.txt (as IMP3.a_txt) is the
    // one a --replace import goes on writing.
    std::fs::remove_file(src.path().join("a_txt")).unwrap();
    t.put("IMP3.a_txt", b"imported by an earlier Custos");
    // Without --replace that dataset exists already, as it did before.
    let e = t.vault.import(src.path(), &ds("IMP3"), false, false, |_| {}).unwrap_err();
    assert!(e.to_string().contains("IMP3.a_txt (from"), "{e}");
    let (reports, _) = t.vault.import(src.path(), &ds("IMP3"), true, false, |_| {}).unwrap();
    let names: Vec<String> = reports.iter().map(|r| r.dataset.to_string()).collect();
    assert_eq!(names, ["IMP3.a_txt", "IMP3.sub.b#2Ebin", "IMP3.sub.deeper.c"]);
    assert_eq!(t.get("IMP3.a_txt").unwrap(), b"alpha");
    assert!(t.vault.datasets().unwrap().iter().all(|d| d.name.as_str() != "IMP3.a#2Etxt"));
}

/// A batch of small files is sealed by several workers at once: the
/// reports still come back in the files' order, and each dataset holds its
/// own file's bytes.
#[test]
fn an_import_of_many_small_files_reports_in_order_and_keeps_each_content() {
    let t = vault();
    let src = tempfile::tempdir().unwrap();
    let n = 300usize;
    for i in 0..n {
        // Sizes that differ a lot, so workers finish out of order.
        let len = if i % 7 == 0 { CS - 1 } else { 1 + i * 13 % 900 };
        std::fs::write(src.path().join(format!("f{i:04}")), data(len, i as u64)).unwrap();
    }
    let (reports, _) = t.vault.import(src.path(), &ds("MANY"), false, false, |_| {}).unwrap();
    let names: Vec<String> = reports.iter().map(|r| r.dataset.to_string()).collect();
    let want: Vec<String> = (0..n).map(|i| format!("MANY.f{i:04}")).collect();
    assert_eq!(names, want);
    for i in (0..n).step_by(7).chain([1, 2, 150, n - 1]) {
        let len = if i % 7 == 0 { CS - 1 } else { 1 + i * 13 % 900 };
        assert_eq!(t.get(&format!("MANY.f{i:04}")).unwrap(), data(len, i as u64), "MANY.f{i:04}");
    }
}

#[test]
fn template_policy_gives_each_dataset_its_own_key() {
    let t = vault();
    let a = t.put("PAYROLL.MASTER", b"a");
    let b = t.put("PAYROLL.HISTORY", b"b");
    let c = t.put("HR.STAFF", b"c");
    assert_eq!(a.key_label.as_str(), "DSET.PRIM.PAYROLL.key001");
    assert_eq!(b.key_label.as_str(), "DSET.PRIM.PAYROLL.key002");
    assert_eq!(c.key_label.as_str(), "DSET.PRIM.HR.key001");
    assert!(a.created_key);
    let again = t.put("PAYROLL.MASTER", b"a2");
    assert!(!again.created_key);
    assert_eq!(again.key_label, a.key_label, "a dataset keeps its key");
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(16))]
    #[test]
    fn any_size_any_range(len in 0usize..(3 * CS + 2), a in 0usize..(3 * CS + 2), b in 0usize..(3 * CS + 2)) {
        let t = vault();
        let bytes = data(len, len as u64);
        t.put("PROP.DATA", &bytes);
        let (a, b) = (a.min(len), b.min(len));
        let (a, b) = (a.min(b), a.max(b));
        let mut out = Vec::new();
        t.vault.get(&ds("PROP.DATA"), &mut out, Some((a as u64, b as u64))).unwrap();
        proptest::prop_assert_eq!(&out[..], &bytes[a..b]);
    }
}

#[test]
fn writing_the_same_content_again_commits_nothing() {
    let t = vault();
    let bytes = data(3 * CS + 1, 8);
    let r1 = t.put("SAME.DATA", &bytes);
    let files = t.chunk_file_count();
    let r2 = t.put("SAME.DATA", &bytes);
    assert!(r2.unchanged && !r1.unchanged);
    assert_eq!((r2.generation, r2.new_chunks), (1, 0));
    assert_eq!(t.chunk_file_count(), files);
    let mut changed = bytes.clone();
    changed[CS] ^= 1;
    let r3 = t.put("SAME.DATA", &changed);
    assert_eq!((r3.generation, r3.new_chunks, r3.unchanged), (2, 1, false));
    // Same content under another key is a real change of generation.
    let k = t
        .vault
        .create_key(&custos_core::NewKey {
            label: None,
            app: Some("SAME".into()),
            purpose: custos_core::model::Purpose::Prim,
            expires_at: None,
            activate: true,
        })
        .unwrap();
    let r4 = t
        .vault
        .put(&ds("SAME.DATA"), &mut &changed[..], &PutOptions { key: Some(k.label), volume: None, fresh: false })
        .unwrap();
    assert_eq!((r4.generation, r4.unchanged), (3, false));
    assert_eq!(t.get("SAME.DATA").unwrap(), changed);
}

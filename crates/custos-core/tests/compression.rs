//! Chunks are LZ4-compressed before sealing where that saves space
//! (setting `compression`, default lz4), and every path reads them back.
mod common;

use std::path::PathBuf;

use common::*;
use custos_core::model::KeyAction;
use custos_core::{Error, Vault};
use custos_store::format::{CHUNK_OVERHEAD, CHUNK_VERSION};

/// CSV-like text that LZ4 shrinks to well under half.
fn text(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = seed;
    while out.len() < len {
        out.extend_from_slice(format!("{i},employee{},dept{},{}\n", i % 97, i % 13, 30_000 + i % 7_000).as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

fn sizes(paths: &[PathBuf]) -> Vec<usize> {
    paths.iter().map(|p| std::fs::metadata(p).unwrap().len() as usize).collect()
}

fn backup_chunk_paths(t: &T, backup: u64) -> Vec<PathBuf> {
    let ids = t.vault.repository().backup_chunks(backup).unwrap();
    ids.iter()
        .map(|id| {
            let h = id.to_hex();
            t.path.join("volumes/offsite/chunks").join(&h[..2]).join(h)
        })
        .collect()
}

#[test]
fn compressible_chunks_are_stored_smaller_and_read_back() {
    let t = vault();
    assert!(t.vault.compression().unwrap(), "lz4 is the default");
    // Two text chunks, one random, a text tail: both codecs in one dataset.
    let mut bytes = text(2 * CS, 1);
    bytes.extend_from_slice(&data(CS, 2));
    bytes.extend_from_slice(&text(CS / 2 + 17, 3));
    let r = t.put("ZIP.MIXED", &bytes);
    let paths = t.chunk_paths("ZIP.MIXED");
    let s = sizes(&paths);
    assert_eq!(r.stored, s.iter().sum::<usize>() as u64, "the report counts the bytes on the volume");
    let tail = CS / 2 + 17;
    assert!(s[0] < CS * 3 / 5 && s[1] < CS * 3 / 5 && s[3] < tail * 3 / 5, "text chunks shrank: {s:?}");
    assert_eq!(s[2], CS + CHUNK_OVERHEAD, "the random chunk is stored as it is");
    let codecs: Vec<u8> = paths.iter().map(|p| std::fs::read(p).unwrap()[9]).collect();
    assert_eq!(codecs, [1, 1, 0, 1]);
    assert!(paths.iter().all(|p| std::fs::read(p).unwrap()[8] == CHUNK_VERSION));
    assert_eq!(t.get("ZIP.MIXED").unwrap(), bytes);
    // Ranges that start and end inside compressed chunks.
    for (a, b) in [(10, 20), (CS - 3, CS + 3), (CS + 5, 3 * CS + 9), (0, bytes.len())] {
        let mut out = Vec::new();
        t.vault.get(&ds("ZIP.MIXED"), &mut out, Some((a as u64, b as u64))).unwrap();
        assert_eq!(out, &bytes[a..b], "range {a}..{b}");
    }
    t.vault.verify(&ds("ZIP.MIXED")).unwrap();
}

#[test]
fn compression_none_stores_every_chunk_whole() {
    let t = vault();
    t.vault.set_compression("none").unwrap();
    let bytes = text(3 * CS, 4);
    let r = t.put("ZIP.OFF", &bytes);
    assert_eq!(sizes(&t.chunk_paths("ZIP.OFF")), vec![CS + CHUNK_OVERHEAD; 3]);
    assert_eq!(r.stored, 3 * (CS + CHUNK_OVERHEAD) as u64);
    assert_eq!(t.get("ZIP.OFF").unwrap(), bytes);
    let e = t.vault.set_compression("zstd").unwrap_err();
    assert!(e.to_string().contains("lz4") && e.to_string().contains("none"), "{e}");
    assert!(!t.vault.compression().unwrap(), "a refused value changes nothing");
}

#[test]
fn unchanged_compressed_chunks_are_shared_by_the_next_generation() {
    let t = vault();
    let mut bytes = text(4 * CS, 5);
    t.put("ZIP.GEN", &bytes);
    bytes[CS + 1] = b'#';
    let r = t.put("ZIP.GEN", &bytes);
    assert_eq!((r.generation, r.new_chunks), (2, 1));
    assert_eq!(r.stored, sizes(&t.chunk_paths("ZIP.GEN"))[1] as u64, "only the new chunk counts");
    assert_eq!(t.get("ZIP.GEN").unwrap(), bytes);
}

#[test]
fn copies_keep_chunks_compressed_and_restore() {
    let t = vault();
    let off = offsite(&t);
    let bytes = text(3 * CS + 100, 6);
    let primary = t.put("ZIP.PAY", &bytes).key_label;
    let primary_sizes = sizes(&t.chunk_paths("ZIP.PAY"));
    let raw = Vault::open(&t.path).unwrap().backup_raw(&ds("ZIP.PAY"), &off).unwrap().unwrap();
    assert_eq!(sizes(&backup_chunk_paths(&t, raw.id)), primary_sizes, "a raw copy moves the same bytes");
    let logical = t.vault.backup_logical(&ds("ZIP.PAY"), &off, None).unwrap().unwrap();
    let copy_paths = backup_chunk_paths(&t, logical.id);
    assert_eq!(sizes(&copy_paths), primary_sizes, "a logical copy re-seals the compressed body as it is");
    assert!(copy_paths.iter().all(|p| std::fs::read(p).unwrap()[9] == 1));
    t.vault.verify_backup(&raw, true).unwrap();
    t.vault.verify_backup(&logical, true).unwrap();

    // Damage inside a compressed body of the copy is found and named.
    let mut b = std::fs::read(&copy_paths[1]).unwrap();
    b[30] ^= 1;
    std::fs::write(&copy_paths[1], &b).unwrap();
    let e = t.vault.verify_backup(&logical, true).unwrap_err();
    assert!(matches!(e, Error::Chunk { index: 1, .. }), "{e}");
    b[30] ^= 1;
    std::fs::write(&copy_paths[1], &b).unwrap();

    // Raw restores while the key lives; after it is destroyed, only the logical copy does.
    t.vault.restore(&raw, Some(&ds("ZIP.RAW"))).unwrap();
    assert_eq!(t.get("ZIP.RAW").unwrap(), bytes);
    t.vault.key_action(&primary, KeyAction::Deactivate, false).unwrap();
    t.vault.key_action(&primary, KeyAction::Destroy, true).unwrap();
    assert!(matches!(t.vault.restore(&raw, None), Err(Error::RawCopyKeyGone { .. })));
    t.vault.restore(&logical, None).unwrap();
    assert_eq!(t.get("ZIP.PAY").unwrap(), bytes);
}

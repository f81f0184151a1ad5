//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz) and for the
//! tests that replay their corpus on stable Rust. Each takes any bytes, as
//! they could come from a volume, and must neither panic nor accept
//! something it cannot write back. Not an API: names and shapes change
//! with the targets.
//!
//! The key is a fixed test key, so a corpus entry sealed under it reaches
//! the decoders behind the authentication check. A second mode of each
//! sealed format seals the fuzzer's bytes first, as a writer holding the
//! key could, so the decoders behind the tag see arbitrary input too.

use custos_crypto::{DataKey, KEY_LEN};
use custos_model::{ChunkId, DatasetId};

use crate::format::{self, Codec, Manifest, CHUNK_OVERHEAD, HEADER_LEN, MAX_CHUNK_SIZE};

/// The key every fuzzed object is sealed under.
pub fn key() -> DataKey {
    DataKey::from_bytes([0x5a; KEY_LEN])
}
/// The dataset, chunk, index and generation fuzzed objects belong to.
pub const DATASET: DatasetId = DatasetId([0x11; 16]);
pub const CHUNK: ChunkId = ChunkId([0x22; 16]);
pub const INDEX: u64 = 3;
pub const GENERATION: u64 = 7;

/// A chunk object. The first byte picks the mode:
/// even — the rest is an object read from a volume (its first 4 bytes,
/// big-endian, the plaintext length the manifest expects); odd — the rest
/// is a body (its second byte the codec) that a key holder sealed.
pub fn chunk(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Some((want, rest)) = rest.split_first_chunk::<4>() else { return };
    let want = u32::from_be_bytes(*want) % (MAX_CHUNK_SIZE + 1);
    let k = key();
    let mut spare = vec![0u8; (want as usize).min(1 << 20)];
    if mode % 2 == 0 {
        let mut buf = rest.to_vec();
        if let Ok(o) = format::open_chunk(&k, &DATASET, &CHUNK, INDEX, want, &mut buf, &mut spare) {
            assert!(o.body_len <= buf.len() - CHUNK_OVERHEAD);
        }
        return;
    }
    let Some((&codec, body)) = rest.split_first() else { return };
    let codec = if codec % 2 == 0 { Codec::Stored } else { Codec::Lz4 };
    let mut buf = vec![0u8; CHUNK_OVERHEAD + body.len()];
    buf[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
    format::seal_chunk(&k, &DATASET, &CHUNK, INDEX, codec, &mut buf).expect("sealing never fails");
    match format::open_chunk(&k, &DATASET, &CHUNK, INDEX, want, &mut buf, &mut spare) {
        Ok(o) if codec == Codec::Stored => {
            assert_eq!(o.body_len, want as usize);
            assert_eq!(&buf[HEADER_LEN..HEADER_LEN + o.body_len], body, "a stored chunk opens to what was sealed");
        }
        Ok(o) => assert!(o.body_len < want as usize, "a compressed body is smaller than its plaintext"),
        Err(_) => {}
    }
}

/// A manifest. First byte even: a sealed manifest read from a volume; odd:
/// a plaintext copy's manifest. What opens must encode to what it came
/// from (the plain form byte for byte), so nothing is read that Custos
/// would not have written.
pub fn manifest(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let k = key();
    if mode % 2 == 0 {
        if let Ok(m) = Manifest::open(&k, &DATASET, GENERATION, rest) {
            let again = m.seal(&k).expect("sealing never fails");
            assert_eq!(Manifest::open(&k, &DATASET, GENERATION, &again).expect("reopens"), m);
            assert_eq!(again.len(), rest.len(), "the sealed form is the same size");
        }
    } else if let Ok(m) = Manifest::open_plain(&DATASET, GENERATION, rest) {
        assert_eq!(m.plain(), rest, "a plain manifest encodes to the bytes it came from");
    }
}

/// A volume label.
pub fn volume_label(data: &[u8]) {
    if let Some(crate::local::Label { version, owner }) = crate::local::parse_label(data) {
        assert!((1..=4).contains(&version));
        assert!(!owner.unwrap_or_default().contains('\n'));
    }
}

/// A pack object: the first 12 bytes are the pack's id, the rest the
/// pack. What parses encodes back to the same index, and every entry lies
/// inside the pack.
pub fn pack_index(data: &[u8]) {
    if data.len() < 12 {
        return;
    }
    let id: crate::pack::PackId = data[..12].try_into().expect("12 bytes");
    let pack = &data[12..];
    if let Ok(entries) = crate::pack::parse_pack(&id, pack) {
        let tail = crate::pack::encode_index(&entries);
        let bodies = pack.len() - tail.len();
        let again =
            crate::pack::parse_pack(&id, &[&pack[..bodies], &tail[..]].concat()).expect("what was read writes back");
        assert_eq!(again, entries);
        assert!(entries.chunks.iter().all(|e| e.offset + e.len as u64 <= bodies as u64));
        assert!(entries.manifests.iter().all(|e| e.offset + e.len as u64 <= bodies as u64));
    }
    let _ = crate::pack::parse_dead(data);
}

/// A keystore backup object. What parses encodes again to an object that
/// parses to as many keys.
pub fn keystore_backup(data: &[u8]) {
    use crate::keystore_backup as kb;
    if let Ok(keys) = kb::parse(data) {
        let again = kb::encode("fuzz", jiff::Timestamp::UNIX_EPOCH, &keys);
        assert_eq!(kb::parse(&again).expect("what was read writes back readable").len(), keys.len());
    }
}

/// A vault backup object. First byte even: the rest is an object from a
/// volume, opened under the fixed key; odd: the rest is split into an HSM
/// file and a catalog (its second byte says where), written as the engine
/// writes them and read back, which must give the same bytes.
pub fn vault_backup(data: &[u8]) {
    use crate::vault_backup as vb;
    let Some((&mode, rest)) = data.split_first() else { return };
    let k = key();
    if mode % 2 == 0 {
        if let Ok(p) = vb::parse(rest) {
            if let Ok(catalog) = vb::open_catalog(&p, &k) {
                assert_eq!(catalog.len() as u64, p.header.catalog_len);
            }
        }
        return;
    }
    let Some((&at, rest)) = rest.split_first() else { return };
    let (hsm, catalog) = rest.split_at((at as usize).min(rest.len()));
    let header = vault_backup_header(hsm, catalog.len());
    let bytes = vb::encode(&header, hsm, &k, catalog).expect("encoding never fails");
    let p = vb::parse(&bytes).expect("what was written parses");
    assert_eq!(p.hsm, hsm);
    assert_eq!(vb::open_catalog(&p, &k).expect("and opens"), catalog);
}

fn vault_backup_header(hsm: &[u8], catalog_len: usize) -> crate::vault_backup::Header {
    crate::vault_backup::Header {
        id: "20261205T000000.000000Z-00000000".into(),
        vault_id: "fuzz".into(),
        created_at: jiff::Timestamp::UNIX_EPOCH,
        audit_seq: 1,
        hsm: "soft".into(),
        hsm_len: hsm.len() as u64,
        hsm_sha256: hex::encode(crate::vault_backup::sha256(hsm)),
        mkvp: "00".repeat(8),
        kcv: "00".repeat(5),
        wrapped: String::new(),
        catalog_len: catalog_len as u64,
        pkcs11_module: None,
        pkcs11_token: None,
        registers: Vec::new(),
    }
}

/// An audit segment: its first line is the name it was listed under, the
/// rest its entries. A name that parses names itself again; an entry that
/// parses reads the same after it is written back.
pub fn audit_segment(data: &[u8]) {
    use crate::audit_segment as seg;
    let (name, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Some((first, last)) = std::str::from_utf8(name).ok().and_then(seg::parse_id) {
        assert!(first <= last);
        assert_eq!(seg::parse_id(&seg::segment_id(first, last)), Some((first, last)));
    }
    for l in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        if let Some(line) = seg::line(l) {
            let again = serde_json::to_vec(&line).expect("an entry serializes");
            assert!(seg::line(&again) == Some(line), "an entry reads back as written");
        }
    }
}

/// Well-formed inputs for each target, written with the real encoders:
/// the corpus's seeds (`(target, name, bytes)`).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use custos_crypto::Kcv;
    use custos_model::ChunkRef;
    let k = key();
    let mut out = Vec::new();
    // A stored chunk and a compressed one, as on a volume.
    let plain: Vec<u8> = b"payroll 2026-11, department 4, net totals\n".repeat(40);
    for (name, codec) in [("stored", Codec::Stored), ("lz4", Codec::Lz4)] {
        let mut buf = vec![0u8; CHUNK_OVERHEAD + format::compress_bound(plain.len())];
        let n = match codec {
            Codec::Stored => {
                buf[HEADER_LEN..HEADER_LEN + plain.len()].copy_from_slice(&plain);
                plain.len()
            }
            Codec::Lz4 => format::compress(&plain, &mut buf[HEADER_LEN..]).expect("text compresses"),
        };
        buf.truncate(CHUNK_OVERHEAD + n);
        format::seal_chunk(&k, &DATASET, &CHUNK, INDEX, codec, &mut buf).expect("seal");
        let mut seed = vec![0u8];
        seed.extend_from_slice(&(plain.len() as u32).to_be_bytes());
        seed.extend_from_slice(&buf);
        out.push(("chunk", format!("volume-{name}"), seed));
    }
    let mut lz = vec![0u8; format::compress_bound(plain.len())];
    let n = format::compress(&plain, &mut lz).expect("text compresses");
    let mut seed = vec![1u8];
    seed.extend_from_slice(&(plain.len() as u32).to_be_bytes());
    seed.push(1);
    seed.extend_from_slice(&lz[..n]);
    out.push(("chunk", "holder-lz4".into(), seed));

    let m = Manifest {
        dataset_id: DATASET,
        generation: GENERATION,
        created_at: jiff::Timestamp::from_second(1_790_000_000).expect("a time"),
        chunk_size: 1 << 16,
        size: (1 << 16) + 5,
        name: "PAY.MASTER".into(),
        key_label: "DSET.PRIM.PAY.key001".into(),
        key_kcv: Kcv([1, 2, 3, 4, 5]),
        chunks: vec![
            ChunkRef { id: ChunkId([1; 16]), len: 1 << 16, fingerprint: [9; 32] },
            ChunkRef { id: ChunkId([2; 16]), len: 5, fingerprint: [8; 32] },
        ],
    };
    let mut sealed = vec![0u8];
    sealed.extend_from_slice(&m.seal(&k).expect("seal"));
    out.push(("manifest", "sealed".into(), sealed));
    let mut plain_m = vec![1u8];
    plain_m.extend_from_slice(&m.plain());
    out.push(("manifest", "plain".into(), plain_m));

    let keys = vec![crate::keystore_backup::BackedUpKey {
        label: "DSET.PRIM.PAY.key001".into(),
        state: custos_model::KeyState::Active,
        purpose: custos_model::Purpose::Prim,
        app: "PAY".into(),
        mkvp: "0123456789abcdef".into(),
        kcv: "0102030405".into(),
        wrapped: "aa".repeat(40),
        created_at: jiff::Timestamp::from_second(1_790_000_000).expect("a time"),
        activated_at: Some(jiff::Timestamp::from_second(1_790_000_001).expect("a time")),
        expires_at: None,
        escrow_kbk: Some("KBK.1".into()),
        escrow: Some("bb".repeat(60)),
        attributes: custos_model::KeyAttributes { names: vec!["disk-7".into()], ..Default::default() },
    }];
    let t = jiff::Timestamp::from_second(1_790_000_000).expect("a time");
    out.push(("keystore_backup", "one-key".into(), crate::keystore_backup::encode("20261205T000000Z-01", t, &keys)));

    let hsm = b"CUSTOSHS software HSM file bytes".to_vec();
    let catalog = b"SQLite format 3\0 the catalog's bytes".repeat(20);
    let mut object = vec![0u8];
    object.extend(
        crate::vault_backup::encode(&vault_backup_header(&hsm, catalog.len()), &hsm, &k, &catalog).expect("encode"),
    );
    out.push(("vault_backup", "volume".into(), object));
    let mut holder = vec![1u8, hsm.len() as u8];
    holder.extend_from_slice(&hsm);
    holder.extend_from_slice(&catalog);
    out.push(("vault_backup", "holder".into(), holder));

    let mut segment = crate::audit_segment::segment_id(1, 2).into_bytes();
    segment.push(b'\n');
    for (seq, action) in [(1u64, "init"), (2, "ds put")] {
        let l = crate::audit_segment::Line {
            seq,
            at: t,
            principal: "admin".into(),
            action: action.into(),
            object: "PAY.MASTER".into(),
            result: "ok".into(),
            hash: "cd".repeat(32),
            keyed: true,
        };
        segment.extend(serde_json::to_vec(&l).expect("serializes"));
        segment.push(b'\n');
    }
    out.push(("audit_segment", "two-entries".into(), segment));

    let pid: crate::pack::PackId = [0x5a; 12];
    let entries = [
        crate::pack::Entry { id: crate::pack::chunk_in(&pid, 0), offset: 0, len: 40 },
        crate::pack::Entry { id: crate::pack::chunk_in(&pid, 1), offset: 40, len: 24 },
    ];
    let mut pk = pid.to_vec();
    pk.extend_from_slice(&[0x33; 64]);
    let mut with_manifests = pk.clone();
    pk.extend(crate::pack::encode_index(&crate::pack::Index { chunks: entries.to_vec(), manifests: Vec::new() }));
    out.push(("pack_index", "two-entries".into(), pk));
    // Version 2: the same chunks and two manifests after them.
    with_manifests.extend_from_slice(&[0x44; 30]);
    let m = |generation, number, offset| crate::pack::ManifestEntry {
        dataset: DATASET,
        generation,
        number,
        offset,
        len: 15,
    };
    with_manifests.extend(crate::pack::encode_index(&crate::pack::Index {
        chunks: entries.to_vec(),
        manifests: vec![m(GENERATION, 2, 64), m(GENERATION + 1, 3, 79)],
    }));
    out.push(("pack_index", "two-entries-two-manifests".into(), with_manifests));
    out.push(("volume_label", "v1".into(), b"custos-volume 1\n".to_vec()));
    out.push(("volume_label", "v2".into(), b"custos-volume 2\nvault 0123456789abcdef\nname default\n".to_vec()));
    out.push(("volume_label", "v3".into(), b"custos-volume 3\nvault 0123456789abcdef\nname default\n".to_vec()));
    out.push(("volume_label", "v4".into(), b"custos-volume 4\nvault 0123456789abcdef\nname default\n".to_vec()));
    out
}

/// Run `f` on every file of the corpus kept for `target` under
/// `fuzz/corpus/` and on the seeds; returns how many inputs ran. For tests.
pub fn replay(corpus: &std::path::Path, target: &str, seeds: &[(&str, String, Vec<u8>)], f: fn(&[u8])) -> usize {
    let mut n = 0;
    for (_, _, bytes) in seeds.iter().filter(|s| s.0 == target) {
        f(bytes);
        n += 1;
    }
    if let Ok(dir) = std::fs::read_dir(corpus.join(target)) {
        for e in dir.flatten() {
            if let Ok(bytes) = std::fs::read(e.path()) {
                f(&bytes);
                n += 1;
            }
        }
    }
    n
}

/// Write the seeds into `corpus/<target>/seed-<name>` (for
/// `CUSTOS_WRITE_FUZZ_SEEDS`; see `fuzz/README.md`).
pub fn write_seeds(corpus: &std::path::Path, seeds: &[(&str, String, Vec<u8>)]) -> std::io::Result<()> {
    for (target, name, bytes) in seeds {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The corpus kept in the repository, and the seeds, run through every
    /// target without a panic (the fuzzers' regression test, on stable).
    #[test]
    fn the_kept_corpus_runs_clean() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        let seeds = seeds();
        if std::env::var_os("CUSTOS_WRITE_FUZZ_SEEDS").is_some() {
            write_seeds(&corpus, &seeds).expect("write the seeds");
        }
        // Seeds are valid: each opens (the targets' assertions then hold).
        let k = key();
        for (t, name, bytes) in &seeds {
            match *t {
                "chunk" if bytes[0] == 0 => {
                    let want = u32::from_be_bytes(bytes[1..5].try_into().unwrap());
                    let mut buf = bytes[5..].to_vec();
                    let mut spare = vec![0u8; want as usize];
                    format::open_chunk(&k, &DATASET, &CHUNK, INDEX, want, &mut buf, &mut spare).expect(name);
                }
                "manifest" if bytes[0] == 0 => drop(Manifest::open(&k, &DATASET, GENERATION, &bytes[1..]).expect(name)),
                "manifest" => drop(Manifest::open_plain(&DATASET, GENERATION, &bytes[1..]).expect(name)),
                "volume_label" => assert!(crate::local::parse_label(bytes).is_some(), "{name}"),
                "pack_index" => {
                    let id: crate::pack::PackId = bytes[..12].try_into().unwrap();
                    assert_eq!(crate::pack::parse_pack(&id, &bytes[12..]).expect(name).chunks.len(), 2);
                }
                _ => {}
            }
        }
        assert!(crate::keystore_backup::parse(&seeds.iter().find(|s| s.0 == "keystore_backup").unwrap().2).is_ok());
        let vb = &seeds.iter().find(|s| s.0 == "vault_backup").unwrap().2[1..];
        crate::vault_backup::open_catalog(&crate::vault_backup::parse(vb).expect("parses"), &k).expect("opens");
        for (t, f) in [
            ("chunk", chunk as fn(&[u8])),
            ("manifest", manifest),
            ("volume_label", volume_label),
            ("pack_index", pack_index),
            ("keystore_backup", keystore_backup),
            ("vault_backup", vault_backup),
            ("audit_segment", audit_segment),
        ] {
            assert!(replay(&corpus, t, &seeds, f) > 0, "{t}");
        }
    }
}

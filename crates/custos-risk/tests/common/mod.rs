//! Helpers the risk tests share.

use std::path::Path;

/// Rot every chunk on the volume at `volume`, unknown to the catalog: one
/// bit flipped in the middle of each chunk file, and of each chunk in a
/// pack. Panics if there is none.
pub fn rot_chunks(volume: &Path) {
    let mut rotted = 0;
    for sub in std::fs::read_dir(volume.join("chunks")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let mut b = std::fs::read(&p).unwrap();
            let mid = b.len() / 2;
            b[mid] ^= 1;
            std::fs::write(&p, b).unwrap();
            rotted += 1;
        }
    }
    // Small chunks written in a batch sit in packs (ADR 0030), beside
    // their manifests (ADR 0035): a bit in the middle of each chunk there,
    // the manifests and the index left as they are.
    if let Ok(fans) = std::fs::read_dir(volume.join("packs")) {
        for sub in fans {
            for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
                let p = f.unwrap().path();
                if p.extension().is_some_and(|x| x == "dead") {
                    continue;
                }
                let mut b = std::fs::read(&p).unwrap();
                let id: custos_store::pack::PackId =
                    hex::decode(p.file_name().unwrap().to_str().unwrap()).unwrap().try_into().unwrap();
                for e in custos_store::pack::parse_pack(&id, &b).unwrap().chunks {
                    b[(e.offset + e.len as u64 / 2) as usize] ^= 1;
                }
                std::fs::write(&p, b).unwrap();
                rotted += 1;
            }
        }
    }
    assert!(rotted > 0, "no chunk on {}", volume.display());
}

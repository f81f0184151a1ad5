//! Custos's chunks through LZ4 (the codec of chunk format 2, as
//! `custos-store` calls it) and zstd at several levels: stored bytes under
//! Custos's rule (kept compressed only when that saves 1/16, with the 64 KiB
//! probe for chunks of 256 KiB and more), and single-core compression and
//! decompression speed. Every file under each directory argument is cut
//! into 1 MiB chunks as `ds put` cuts it.
//!
//! Usage: custos-codecs-bench DIR...

use std::time::Instant;

const CHUNK: usize = 1 << 20;
const PROBE: usize = 64 << 10;

#[derive(Clone, Copy)]
enum Codec {
    Lz4,
    Zstd(i32),
}

impl Codec {
    fn name(self) -> String {
        match self {
            Codec::Lz4 => "lz4".into(),
            Codec::Zstd(l) => format!("zstd {l}"),
        }
    }

    fn compress(self, plain: &[u8]) -> Vec<u8> {
        match self {
            Codec::Lz4 => lz4_flex::block::compress(plain),
            Codec::Zstd(l) => zstd::bulk::compress(plain, l).expect("zstd compresses"),
        }
    }

    fn decompress(self, packed: &[u8], len: usize) -> Vec<u8> {
        match self {
            Codec::Lz4 => lz4_flex::block::decompress(packed, len).expect("lz4 decompresses"),
            Codec::Zstd(_) => zstd::bulk::decompress(packed, len).expect("zstd decompresses"),
        }
    }

    /// What Custos would store for `plain`: compressed when that saves a
    /// sixteenth, else as it is; a large chunk whose first 64 KiB do not
    /// shrink so is not tried further.
    fn stored(self, plain: &[u8]) -> Option<Vec<u8>> {
        let saves = |n: usize, of: usize| n < of - of / 16;
        if plain.len() < 64 {
            return None;
        }
        if plain.len() >= 4 * PROBE && !saves(self.compress(&plain[..PROBE]).len(), PROBE) {
            return None;
        }
        Some(self.compress(plain)).filter(|c| saves(c.len(), plain.len()))
    }
}

fn chunks(dirs: &[String]) -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    let mut todo: Vec<std::path::PathBuf> = dirs.iter().map(Into::into).collect();
    while let Some(p) = todo.pop() {
        for e in std::fs::read_dir(&p).expect("a directory") {
            let e = e.expect("an entry");
            if e.file_type().expect("a type").is_dir() {
                todo.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).expect("a file");
        out.extend(bytes.chunks(CHUNK).map(<[u8]>::to_vec));
    }
    out
}

fn main() {
    let dirs: Vec<String> = std::env::args().skip(1).collect();
    let chunks = chunks(&dirs);
    let total: usize = chunks.iter().map(Vec::len).sum();
    println!("{} chunks, {} bytes", chunks.len(), total);
    for codec in [Codec::Lz4, Codec::Zstd(-1), Codec::Zstd(1), Codec::Zstd(3)] {
        let t = Instant::now();
        let stored: Vec<Option<Vec<u8>>> = chunks.iter().map(|c| codec.stored(c)).collect();
        let compress_s = t.elapsed().as_secs_f64();
        let bytes: usize = stored.iter().zip(&chunks).map(|(s, c)| s.as_ref().map_or(c.len(), Vec::len)).sum();
        let t = Instant::now();
        for (s, c) in stored.iter().zip(&chunks) {
            if let Some(s) = s {
                assert_eq!(codec.decompress(s, c.len()).len(), c.len());
            }
        }
        let decompress_s = t.elapsed().as_secs_f64();
        println!(
            "{}\t{}\t{:.3}\t{:.3}\t{:.3}",
            codec.name(),
            bytes,
            bytes as f64 / total as f64,
            total as f64 / compress_s / 1e6,
            total as f64 / decompress_s.max(1e-9) / 1e6
        );
    }
}

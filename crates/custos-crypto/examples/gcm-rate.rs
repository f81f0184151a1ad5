//! The machine's AES-256-GCM sealing rate through aws-lc-rs, per core and on
//! all cores, over 1 MiB buffers: the crypto ceiling `bench/put-get.sh`
//! compares `custos ds put`/`get` against.
use std::time::Instant;

use custos_crypto::{seal_in_place, DataKey, Nonce, TAG_LEN};

fn rate(threads: usize, bytes_per_thread: usize) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(move || {
                let key = DataKey::generate().unwrap();
                let mut buf = vec![7u8; (1 << 20) + TAG_LEN];
                for _ in 0..bytes_per_thread >> 20 {
                    seal_in_place(&key, Nonce::random().unwrap(), b"aad", &mut buf).unwrap();
                }
            });
        }
    });
    (threads * bytes_per_thread) as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let per = 4usize << 30;
    println!("aes256gcm_seal_gbps_1core {:.2}", rate(1, per));
    println!("aes256gcm_seal_gbps_{cores}cores {:.2}", rate(cores, per));
}

//! The TTLV decoder on any bytes: it never panics, and what it accepts
//! encodes back to exactly the bytes it read.
#![no_main]

use custos_kmip::ttlv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(item) = ttlv::decode(data, 1 << 20) {
        let again = ttlv::encode(&item);
        assert_eq!(&again[..], data, "a decoded message encodes to the bytes it came from");
    }
    if data.len() >= 8 {
        let _ = ttlv::header(data[..8].try_into().unwrap());
    }
});

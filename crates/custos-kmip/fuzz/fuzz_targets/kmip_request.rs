//! A request message read as the server reads it (header, batch items,
//! attributes, key material, cipher parameters) on any bytes: an answer
//! or a reason, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = custos_kmip::inspect(data, 1 << 20);
});

//! A sealed manifest and a plaintext copy's manifest: what opens encodes back to the bytes it came from.
//! The checks are in `custos_store::fuzzing::manifest`, which the corpus replay test also runs on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| custos_store::fuzzing::manifest(data));

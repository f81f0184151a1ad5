//! A chunk object from a volume, and a body a key holder sealed: opened, decompressed, never a panic.
//! The checks are in `custos_store::fuzzing::chunk`, which the corpus replay test also runs on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| custos_store::fuzzing::chunk(data));

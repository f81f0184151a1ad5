//! A keystore backup object: what parses writes back readable.
//! The checks are in `custos_store::fuzzing::keystore_backup`, which the corpus replay test also runs on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| custos_store::fuzzing::keystore_backup(data));

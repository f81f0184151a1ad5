//! A vault backup object from a volume, and one written from any HSM file and catalog: it reads back as written.
//! The checks are in `custos_store::fuzzing::vault_backup`, which the corpus replay test also runs on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| custos_store::fuzzing::vault_backup(data));

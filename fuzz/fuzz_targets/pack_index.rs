//! A pack object's index and trailer (ADR 0030), and a dead list.
//! The checks are in `custos_store::fuzzing::pack_index`, which the corpus replay test also runs on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| custos_store::fuzzing::pack_index(data));

//! The files custodians hold: key parts, escrow shares, sealed shares, custodian keys.
//! The checks are in `custos_hsm::fuzzing::custodian_file`, which the corpus replay test also runs on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| custos_hsm::fuzzing::custodian_file(data));

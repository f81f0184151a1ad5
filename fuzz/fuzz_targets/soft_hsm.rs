//! The software HSM's sealed state file, and a body a passphrase holder sealed.
//! The checks are in `custos_hsm::fuzzing::sealed_state`, which the corpus replay test also runs on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| custos_hsm::fuzzing::sealed_state(data));

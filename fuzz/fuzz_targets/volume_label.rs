//! A volume's CUSTOS-VOLUME label.
//! The checks are in `custos_store::fuzzing::volume_label`, which the corpus replay test also runs on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| custos_store::fuzzing::volume_label(data));

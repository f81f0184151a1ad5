//! An audit segment's name and lines, as audit verify --against reads them.
//! The checks are in `custos_store::fuzzing::audit_segment`, which the corpus replay test also runs on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| custos_store::fuzzing::audit_segment(data));

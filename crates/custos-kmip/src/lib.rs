//! KMIP for `custos serve` (issue 16, ADR 0024): a strict TTLV codec and
//! the KMIP operations carried out through the Operation boundary.
#![forbid(unsafe_code)]

pub mod service;
pub mod tags;
pub mod ttlv;

pub use service::{refusal, Kmip, Settings};

//! KMIP for `custos serve` (issue 16, ADR 0024): a strict TTLV codec, the
//! request reader, and the KMIP operations carried out through the
//! Operation boundary.
#![forbid(unsafe_code)]

pub mod message;
#[cfg(feature = "service")]
pub mod service;
pub mod tags;
pub mod ttlv;

pub use message::{inspect, refusal};
#[cfg(feature = "service")]
pub use service::{Kmip, Settings};

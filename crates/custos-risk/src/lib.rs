//! Risk and recoverability: which threats each dataset survives, singly and
//! in pairs, computed from the vault's real state ([`model`], [`report`]),
//! and proven by drills that apply each threat to a scratch clone and run
//! the real recovery ([`drill`]).
#![forbid(unsafe_code)]

pub mod build;
pub mod drill;
pub mod html;
pub mod model;
pub mod report;

pub use model::{Threat, Verdict};

pub type Result<T> = std::result::Result<T, RiskError>;

#[derive(Debug, thiserror::Error)]
pub enum RiskError {
    #[error(transparent)]
    Core(#[from] custos_core::Error),
    #[error("{0}")]
    Drill(String),
}

//! The operation boundary.
//!
//! Every Custos command is an [`Operation`]: a typed, serializable value.
//! Front ends (the CLI in embedded or client mode, the HTTP API, and the
//! KMIP and console front ends to come) build one and hand it to
//! [`Engine::execute`], which in one place refuses what the deployment may
//! not take, checks the rights table, turns a controlled operation into a
//! dual-control request (which stores the operation, never a command
//! line), writes the audit intent before acting and the outcome after, and
//! runs it. The result is a [`Reply`]: JSON for scripts, text for people,
//! and a failure when the result itself says something is wrong. Error
//! kinds map to exit codes and HTTP statuses in one place ([`Code`]).
#![forbid(unsafe_code)]

mod engine;
mod error;
mod operation;
pub mod render;
mod reply;
mod requests;
mod rights;
mod run;

pub use engine::{Caller, Engine, Io, Mode, Outcome, Unlocked};
pub use error::{core_code, Code, Error, Result};
pub use operation::{
    base64_decode, base64_encode, GrantOn, NewCredential, Operation, PolicyKey, Range, SecretText, Stored, Stream,
    STORED_VERSION,
};
pub use reply::{BulkLine, Destruction, Failure, Reply, Verified};
pub use requests::RequestView;

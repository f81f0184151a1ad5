//! How many bytes of data the engine has moved in this process: plaintext
//! sealed, opened or re-sealed, and sealed chunks copied raw. A front end
//! polls [`processed`] to draw progress; the engine never waits on it.

use std::sync::atomic::{AtomicU64, Ordering};

static PROCESSED: AtomicU64 = AtomicU64::new(0);

/// Bytes moved so far by this process.
pub fn processed() -> u64 {
    PROCESSED.load(Ordering::Relaxed)
}

pub(crate) fn add(n: u64) {
    PROCESSED.fetch_add(n, Ordering::Relaxed);
}

//! `C_Initialize` with the module's own initialisation string in
//! `pReserved` (`--pkcs11-init-args`): NSS's softoken, for one, finds its
//! database only through `configdir=…` there. cryptoki takes the pointer
//! only through an `unsafe` constructor, so the call lives here, beside
//! `kwp.rs`, the crate's other module with `unsafe` code.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::ptr::NonNull;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};

/// Initialise `ctx` with `args` as the module's reserved argument (a
/// NUL-terminated string, as the modules that read it expect).
pub(crate) fn initialize_with(ctx: &Pkcs11, args: &str) -> Result<(), String> {
    let text = CString::new(args).map_err(|_| "the initialisation arguments contain a NUL byte".to_string())?;
    let ptr = NonNull::new(text.as_ptr() as *mut std::ffi::c_void).ok_or("a null string")?;
    // SAFETY: `ptr` points at `text`, a NUL-terminated string that lives
    // until after `initialize` returns; a module reads it during
    // C_Initialize only (NSS copies what it needs), and cryptoki passes
    // the pointer through as CK_C_INITIALIZE_ARGS.pReserved unread.
    let init = unsafe { CInitializeArgs::new_with_reserved(CInitializeFlags::OS_LOCKING_OK, ptr) };
    let r = ctx.initialize(init).map_err(|e| e.to_string());
    drop(text);
    match r {
        Err(e) if e.contains("CryptokiAlreadyInitialized") => Ok(()),
        r => r,
    }
}

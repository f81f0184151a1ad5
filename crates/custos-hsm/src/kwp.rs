//! `CKM_AES_KEY_WRAP_KWP` (0x210B, PKCS#11 3.0: RFC 5649 key wrap with
//! padding) through the module's own function list.
//!
//! cryptoki 0.12 has no mechanism type for it and builds none for a value
//! it does not know, so these two calls go to the module directly: the
//! module is loaded a second time (the same library, already initialised
//! by cryptoki's context, so its sessions and objects are shared), and
//! `C_WrapKey` / `C_UnwrapKey` are called with cryptoki's own session and
//! object handles. Everything else stays with cryptoki. This is the one
//! place in the crate with `unsafe` code.
#![allow(unsafe_code)]

use std::path::Path;

use cryptoki::error::Rv;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::{CK_ATTRIBUTE, CK_FUNCTION_LIST, CK_MECHANISM, CK_MECHANISM_INFO, CK_OBJECT_HANDLE, CK_ULONG};

/// The mechanism's number.
pub(crate) const CKM_AES_KEY_WRAP_KWP: cryptoki_sys::CK_MECHANISM_TYPE = 0x210B;

/// The module's functions, kept loaded for as long as this lives.
pub(crate) struct Kwp {
    list: *const CK_FUNCTION_LIST,
    _lib: cryptoki_sys::Pkcs11,
}

// The function list is a table of plain function pointers the module
// keeps for as long as it is loaded (which `_lib` ensures); PKCS#11
// modules initialised with OS locking, as cryptoki's context is, may be
// called from any thread.
unsafe impl Send for Kwp {}
unsafe impl Sync for Kwp {}

fn failed(rv: cryptoki_sys::CK_RV) -> String {
    format!("{:?} ({rv:#x})", Rv::from(rv))
}

impl Kwp {
    /// Load `module` again and take its function list.
    pub(crate) fn load(module: &Path) -> Result<Self, String> {
        // SAFETY: loading a library runs its initialisers; this is the
        // module cryptoki has already loaded from the same path.
        let lib = unsafe { cryptoki_sys::Pkcs11::new(module) }.map_err(|e| e.to_string())?;
        let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: `list` is a valid place for the pointer the module returns.
        let rv = unsafe { lib.C_GetFunctionList(&mut list) };
        if rv != cryptoki_sys::CKR_OK || list.is_null() {
            return Err(format!("C_GetFunctionList: {}", failed(rv)));
        }
        Ok(Self { list, _lib: lib })
    }

    fn functions(&self) -> &CK_FUNCTION_LIST {
        // SAFETY: checked non-null at load; the module keeps the table for
        // as long as it is loaded.
        unsafe { &*self.list }
    }

    /// Whether the token in `slot` offers the mechanism for wrapping.
    pub(crate) fn offered(&self, slot: u64) -> bool {
        let Some(info) = self.functions().C_GetMechanismInfo else { return false };
        let mut i = CK_MECHANISM_INFO { ulMinKeySize: 0, ulMaxKeySize: 0, flags: 0 };
        // SAFETY: `i` is a valid place for the answer.
        let rv = unsafe { info(slot as CK_ULONG, CKM_AES_KEY_WRAP_KWP, &mut i) };
        rv == cryptoki_sys::CKR_OK && i.flags & cryptoki_sys::CKF_WRAP != 0 && i.flags & cryptoki_sys::CKF_UNWRAP != 0
    }

    /// Wrap `key` under `kek` in `s`.
    pub(crate) fn wrap(&self, s: &Session, kek: ObjectHandle, key: ObjectHandle) -> Result<Vec<u8>, String> {
        let f = self.functions().C_WrapKey.ok_or("the module has no C_WrapKey")?;
        let mut mech =
            CK_MECHANISM { mechanism: CKM_AES_KEY_WRAP_KWP, pParameter: std::ptr::null_mut(), ulParameterLen: 0 };
        // A wrapped 256-bit key is 40 bytes; room for any key up to 1 KiB.
        let mut out = vec![0u8; 1032];
        let mut len = out.len() as CK_ULONG;
        // SAFETY: the mechanism and the output buffer outlive the call, and
        // `len` says how long the buffer is.
        let rv = unsafe { f(s.handle(), &mut mech, kek.handle(), key.handle(), out.as_mut_ptr(), &mut len) };
        if rv != cryptoki_sys::CKR_OK {
            return Err(failed(rv));
        }
        out.truncate(len as usize);
        Ok(out)
    }

    /// Unwrap `wrapped` under `kek` in `s` into a new object made from
    /// `template`; its raw handle (find it by an attribute the template
    /// sets to use it with cryptoki).
    pub(crate) fn unwrap(
        &self,
        s: &Session,
        kek: ObjectHandle,
        wrapped: &[u8],
        template: &[Attribute],
    ) -> Result<CK_OBJECT_HANDLE, String> {
        let f = self.functions().C_UnwrapKey.ok_or("the module has no C_UnwrapKey")?;
        let mut mech =
            CK_MECHANISM { mechanism: CKM_AES_KEY_WRAP_KWP, pParameter: std::ptr::null_mut(), ulParameterLen: 0 };
        // The attributes point into `template`, which outlives the call.
        let mut attrs: Vec<CK_ATTRIBUTE> = template.iter().map(CK_ATTRIBUTE::from).collect();
        let mut wrapped = wrapped.to_vec();
        let mut h: CK_OBJECT_HANDLE = 0;
        // SAFETY: every pointer is to a buffer that outlives the call, with
        // its length given beside it.
        let rv = unsafe {
            f(
                s.handle(),
                &mut mech,
                kek.handle(),
                wrapped.as_mut_ptr(),
                wrapped.len() as CK_ULONG,
                attrs.as_mut_ptr(),
                attrs.len() as CK_ULONG,
                &mut h,
            )
        };
        if rv != cryptoki_sys::CKR_OK {
            return Err(failed(rv));
        }
        Ok(h)
    }
}

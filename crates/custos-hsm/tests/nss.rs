//! A third PKCS#11 implementation: NSS's softoken (Debian's libnss3, which
//! `.ci/run` installs). It finds its database only through the string
//! `C_Initialize` passes in `pReserved` (`--pkcs11-init-args`). Its
//! `CKM_AES_KEY_WRAP_PAD` passes Custos's RFC 5649 known-answer test (the
//! NSS in Debian 13; older ones gave RFC 3394 with PKCS#7 padding), but it
//! refuses private data objects, where Custos keeps its registers: Custos
//! reaches the token through the arguments, and then refuses it, saying
//! why, leaving nothing on it.
//! NSS is process-wide state, so everything runs in this one test.

use std::ffi::CString;
use std::ptr::NonNull;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use custos_hsm::{Pkcs11Config, Pkcs11Hsm};

const SOFTOKEN: &str = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so";
const TOKEN: &str = "NSS Certificate DB";

fn config(init_args: Option<String>) -> Pkcs11Config {
    Pkcs11Config {
        module: SOFTOKEN.into(),
        token: TOKEN.into(),
        pin: zeroize::Zeroizing::new("2468".into()),
        init_args,
    }
}

/// Objects labelled `custos-…` on the token, counted through NSS directly.
fn custos_objects(args: &str) -> usize {
    let (ctx, slot) = context(args);
    let s = ctx.open_ro_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::from("2468".to_string()))).unwrap();
    s.find_objects(&[])
        .unwrap()
        .into_iter()
        .filter(|h| {
            s.get_attributes(*h, &[cryptoki::object::AttributeType::Label])
                .unwrap_or_default()
                .into_iter()
                .any(|a| matches!(a, cryptoki::object::Attribute::Label(l) if l.starts_with(b"custos-")))
        })
        .count()
}

/// Give a new NSS database its user PIN, as `certutil -N` would.
fn set_pin(args: &str) {
    let (ctx, slot) = context(args);
    let s = ctx.open_rw_session(slot).unwrap();
    s.login(UserType::So, Some(&AuthPin::from(String::new()))).unwrap();
    s.init_pin(&AuthPin::from("2468".to_string())).unwrap();
}

/// NSS initialised with `args`, and its database's slot.
fn context(args: &str) -> (Pkcs11, cryptoki::slot::Slot) {
    let ctx = Pkcs11::new(SOFTOKEN).unwrap();
    let text = CString::new(args).unwrap();
    // SAFETY: a NUL-terminated string that outlives the call.
    let init = unsafe {
        CInitializeArgs::new_with_reserved(
            CInitializeFlags::OS_LOCKING_OK,
            NonNull::new(text.as_ptr() as *mut std::ffi::c_void).unwrap(),
        )
    };
    ctx.initialize(init).unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim() == TOKEN)
        .unwrap();
    (ctx, slot)
}

#[test]
fn nss_softoken_is_reached_through_its_initialisation_arguments_and_refused_for_its_data_objects() {
    assert!(std::path::Path::new(SOFTOKEN).exists(), "install libnss3 (Debian), or run .ci/run");
    let db = tempfile::tempdir().unwrap();
    let args = format!("configdir='sql:{}' certPrefix='' keyPrefix='' secmod='secmod.db' flags=", db.path().display());

    // Without its arguments NSS does not start, and the message says
    // where they go.
    match Pkcs11Hsm::create(&config(None), false) {
        Err(e) => assert!(e.to_string().contains("--pkcs11-init-args"), "{e}"),
        Ok(_) => panic!("NSS without its configdir must not open"),
    }

    set_pin(&args);
    // With them: initialised, the token found, logged in, the master key
    // made, and then refused where the registers are written; the master
    // key made is destroyed again.
    match Pkcs11Hsm::create(&config(Some(args.clone())), false) {
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("refuses the data objects") && e.contains("nothing was left on it"), "{e}");
        }
        Ok(_) => panic!("NSS refuses data objects: it cannot hold the registers"),
    }
    assert_eq!(custos_objects(&args), 0, "a refused token keeps nothing of Custos");
    // A wrong PIN through the same arguments is named as such.
    let wrong = Pkcs11Config { pin: zeroize::Zeroizing::new("1111".into()), ..config(Some(args)) };
    match Pkcs11Hsm::create(&wrong, false) {
        Err(e) => assert!(e.to_string().contains("wrong PIN"), "{e}"),
        Ok(_) => panic!("a wrong PIN must be refused"),
    }
}

//! A third PKCS#11 implementation: NSS's softoken (Debian's libnss3, which
//! `.ci/run` installs). It finds its database only through the string
//! `C_Initialize` passes in `pReserved` (`--pkcs11-init-args`). Its
//! `CKM_AES_KEY_WRAP_PAD` passes Custos's RFC 5649 known-answer test (the
//! NSS in Debian 13; older ones gave RFC 3394 with PKCS#7 padding), but it
//! refuses private data objects: asked to keep its records on the token,
//! Custos refuses it, saying why and leaving nothing on it; with the
//! records kept beside (in the catalog, MAC'd inside the token), it passes
//! the HSM conformance suite.
//! NSS is process-wide state, so everything runs in this one test.

use std::ffi::CString;
use std::ptr::NonNull;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use custos_hsm::{conformance, Hsm, Keep, MemoryStore, Pkcs11Config, Pkcs11Hsm, Register};

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
fn nss_softoken_is_reached_through_its_initialisation_arguments_and_keeps_its_records_beside() {
    assert_eq!(custos_testing::nss_softoken().to_str(), Some(SOFTOKEN));
    let db = custos_testing::NssDb::new("2468");
    let args = db.init_args();

    // Without its arguments NSS does not start, and the message says
    // where they go.
    match Pkcs11Hsm::create(&config(None), false, Keep::OnToken) {
        Err(e) => assert!(e.to_string().contains("--pkcs11-init-args"), "{e}"),
        Ok(_) => panic!("NSS without its configdir must not open"),
    }

    // With them: initialised, the token found, logged in, the master key
    // made, and then refused where the registers are written; the master
    // key made is destroyed again.
    match Pkcs11Hsm::create(&config(Some(args.clone())), false, Keep::OnToken) {
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("refuses the data objects") && e.contains("nothing was left on it"), "{e}");
        }
        Ok(_) => panic!("NSS refuses data objects: it cannot hold the registers"),
    }
    assert_eq!(custos_objects(&args), 0, "a refused token keeps nothing of Custos");
    // With the records beside: the whole suite, as on SoftHSM2 and Kryoptic.
    {
        let keep = Keep::OnTokenElseBeside(Box::new(MemoryStore::default()));
        let (hsm, fresh) = Pkcs11Hsm::create(&config(Some(args.clone())), false, keep).unwrap();
        assert!(fresh && hsm.records_beside());
        conformance::run(&hsm);
        assert!(hsm.registers().unwrap().iter().any(|r| r.register == Register::Current));
    }
    // Its registers were beside, in a store a second vault does not have:
    // the token's master keys still mark it as in use, and the refusal
    // leaves the token as it was.
    let before = custos_objects(&args);
    match Pkcs11Hsm::create(
        &config(Some(args.clone())),
        false,
        Keep::OnTokenElseBeside(Box::new(MemoryStore::default())),
    ) {
        Err(e) => assert!(e.to_string().contains("already holds") && e.to_string().contains("--pkcs11-adopt"), "{e}"),
        Ok(_) => panic!("a token in use must be refused, wherever its records are"),
    }
    assert_eq!(custos_objects(&args), before, "a refused init makes nothing on the token");
    {
        let keep = Keep::OnTokenElseBeside(Box::new(MemoryStore::default()));
        let (hsm, fresh) = Pkcs11Hsm::create(&config(Some(args.clone())), true, keep).unwrap();
        assert!(!fresh, "adopted: the old master keys are not this vault's to discard");
        conformance::run(&hsm);
    }
    // A wrong PIN through the same arguments is named as such.
    let wrong = Pkcs11Config { pin: zeroize::Zeroizing::new("1111".into()), ..config(Some(args)) };
    match Pkcs11Hsm::create(&wrong, false, Keep::OnToken) {
        Err(e) => assert!(e.to_string().contains("wrong PIN"), "{e}"),
        Ok(_) => panic!("a wrong PIN must be refused"),
    }
}

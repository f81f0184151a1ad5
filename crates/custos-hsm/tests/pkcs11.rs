//! The HSM conformance suite against a real PKCS#11 token (SoftHSM2).
//! `.ci/run` installs SoftHSM2; each run makes its own token directory.
//! SoftHSM2 is a process-wide library and dropping a context finalizes it,
//! so every check runs in this one test, one context at a time.

use std::path::PathBuf;

use custos_crypto::{unwrap_key, DataKey, Kcv, MasterKey};
use custos_hsm::{conformance, FileStore, Hsm, HsmError, Keep, Pkcs11Config, Pkcs11Hsm, Register};

fn config(token: &str, pin: &str) -> Pkcs11Config {
    Pkcs11Config {
        module: custos_testing::pkcs11_module(),
        token: token.into(),
        pin: zeroize::Zeroizing::new(pin.into()),
        init_args: None,
    }
}

#[test]
fn softhsm2_passes_the_hsm_conformance_suite() {
    let tokens = custos_testing::SoftHsmTokens::new(&["custos-a", "custos-b"], "1234", "5678");
    std::env::set_var("SOFTHSM2_CONF", tokens.conf());
    let tokens_conf_a = tokens.conf().to_path_buf();

    // The same suite the software HSM passes.
    let (current, wrapped) = {
        match Pkcs11Hsm::open(&config("custos-a", "1234"), Keep::OnToken) {
            Err(e) => assert!(e.to_string().contains("holds no Custos master keys"), "{e}"),
            Ok(_) => panic!("a token new to Custos is not a vault's token"),
        }
        let (hsm, fresh) = Pkcs11Hsm::create(&config("custos-a", "1234"), false, Keep::OnToken).unwrap();
        assert!(fresh);
        assert!(
            hsm.describe().contains("custos-a") && hsm.describe().contains("CKM_AES_KEY_WRAP_PAD"),
            "{}",
            hsm.describe()
        );
        conformance::run(&hsm);
        let cur = hsm.registers().unwrap().into_iter().find(|r| r.register == Register::Current).unwrap();
        let w = hsm.wrap_key(&DataKey::from_bytes([0x42; 32])).unwrap();
        (cur, w)
    };

    // Registers and keys persist on the token.
    {
        let hsm = Pkcs11Hsm::open(&config("custos-a", "1234"), Keep::OnToken).unwrap();
        let again = hsm.registers().unwrap().into_iter().find(|r| r.register == Register::Current).unwrap();
        assert_eq!(again.mkvp, current.mkvp);
        assert_eq!(hsm.unwrap_key(&wrapped.mkvp, &wrapped.bytes).unwrap(), DataKey::from_bytes([0x42; 32]));
    }

    // The token's KWP is RFC 5649, byte for byte: a master key loaded from
    // known parts wraps exactly as the software implementation does.
    {
        let hsm = Pkcs11Hsm::create(&config("custos-b", "1234"), false, Keep::OnToken).unwrap().0;
        let (p1, p2) = (MasterKey::from_bytes([0x0F; 32]), MasterKey::from_bytes([0xF0; 32]));
        let part = |c: &str, k: &MasterKey| custos_hsm::KeyPart {
            custodian: c.into(),
            part: MasterKey::from_bytes(*k.expose_secret()),
            kcv: Kcv::of_master(k),
        };
        hsm.load_new(custos_hsm::NewMasterKey::Parts(vec![part("a", &p1), part("b", &p2)]), None).unwrap();
        hsm.activate().unwrap();
        let dk = DataKey::from_bytes([0x77; 32]);
        let w = hsm.wrap_key(&dk).unwrap();
        assert_eq!(w.kcv, Kcv::of(&dk), "the token's CMAC KCV equals the software one");
        assert_eq!(unwrap_key(&MasterKey::from_bytes([0xFF; 32]), &w.bytes).unwrap(), dk);
    }

    // A second vault is refused the token of the first, unless it adopts
    // its master keys (and then gets the same ones, and a catalog key and
    // audit anchor of its own).
    match Pkcs11Hsm::create(&config("custos-a", "1234"), false, Keep::OnToken) {
        Err(e) => assert!(
            e.to_string().contains("already holds Custos master keys")
                && e.to_string().contains(&current.mkvp.to_string())
                && e.to_string().contains("--pkcs11-adopt"),
            "{e}"
        ),
        Ok(_) => panic!("a token in use must be refused"),
    }
    {
        let (hsm, fresh) = Pkcs11Hsm::create(&config("custos-a", "1234"), true, Keep::OnToken).unwrap();
        assert!(!fresh);
        let cur = hsm.registers().unwrap().into_iter().find(|r| r.register == Register::Current).unwrap();
        assert_eq!(cur.mkvp, current.mkvp);
        assert_eq!(hsm.anchor().unwrap(), None, "the previous vault's anchor is gone");
        assert_eq!(hsm.unwrap_key(&wrapped.mkvp, &wrapped.bytes).unwrap(), DataKey::from_bytes([0x42; 32]));
    }
    // What a failed init made is taken away again: the token is as new.
    {
        let tokens = custos_testing::SoftHsmTokens::new(&["custos-c"], "1234", "5678");
        std::env::set_var("SOFTHSM2_CONF", tokens.conf());
        let (hsm, fresh) = Pkcs11Hsm::create(&config("custos-c", "1234"), false, Keep::OnToken).unwrap();
        assert!(fresh);
        hsm.make_catalog_key().unwrap();
        hsm.discard();
        drop(hsm);
        assert!(Pkcs11Hsm::open(&config("custos-c", "1234"), Keep::OnToken).is_err(), "nothing of Custos is left");
        assert!(Pkcs11Hsm::create(&config("custos-c", "1234"), false, Keep::OnToken).unwrap().1);
        std::env::set_var("SOFTHSM2_CONF", tokens_conf_a.clone());
    }

    // Records kept beside the token (for tokens without data objects),
    // here in a file: the same suite passes, nothing is kept as a data
    // object on the token, and records altered in the store are refused.
    {
        let tokens = custos_testing::SoftHsmTokens::new(&["custos-d"], "1234", "5678");
        std::env::set_var("SOFTHSM2_CONF", tokens.conf());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("records");
        let beside = || Keep::Beside(Box::new(FileStore::new(&file)));
        let current = {
            let (hsm, fresh) = Pkcs11Hsm::create(&config("custos-d", "1234"), false, beside()).unwrap();
            assert!(fresh && hsm.records_beside());
            conformance::run(&hsm);
            hsm.registers().unwrap().into_iter().find(|r| r.register == Register::Current).unwrap()
        };
        match Pkcs11Hsm::open(&config("custos-d", "1234"), Keep::OnToken) {
            Err(e) => assert!(e.to_string().contains("holds no Custos master keys"), "{e}"),
            Ok(_) => panic!("the records are not on the token"),
        }
        {
            let hsm = Pkcs11Hsm::open(&config("custos-d", "1234"), beside()).unwrap();
            let again = hsm.registers().unwrap().into_iter().find(|r| r.register == Register::Current).unwrap();
            assert_eq!(again.mkvp, current.mkvp);
        }
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("custos-pkcs11-records v1\n") && text.contains("\nmac "), "{text}");
        let i = text.find(" custos-registers ").unwrap() + " custos-registers ".len();
        let mut altered = text.clone();
        let flip = if &text[i..i + 1] == "0" { "1" } else { "0" };
        altered.replace_range(i..i + 1, flip);
        std::fs::write(&file, altered).unwrap();
        match Pkcs11Hsm::open(&config("custos-d", "1234"), beside()) {
            Err(e) => assert!(e.to_string().contains("damaged or were altered"), "{e}"),
            Ok(_) => panic!("altered records were read"),
        }
        std::env::set_var("SOFTHSM2_CONF", &tokens_conf_a);
    }

    // Errors name what to fix.
    match Pkcs11Hsm::open(&config("custos-a", "9999"), Keep::OnToken) {
        Err(e @ HsmError::Pkcs11Config(_)) => assert!(e.to_string().contains("wrong PIN"), "{e}"),
        other => panic!("a wrong PIN must be refused clearly, got {:?}", other.err()),
    }
    match Pkcs11Hsm::open(&config("no-such-token", "1234"), Keep::OnToken) {
        Err(e) => assert!(e.to_string().contains("custos-a") && e.to_string().contains("no token labelled"), "{e}"),
        Ok(_) => panic!("an unknown token must be refused"),
    }
    let bad = Pkcs11Config { module: PathBuf::from("/nonexistent/libp11.so"), ..config("custos-a", "1234") };
    match Pkcs11Hsm::open(&bad, Keep::OnToken) {
        Err(e) => assert!(e.to_string().contains("module path"), "{e}"),
        Ok(_) => panic!("a missing module must be refused"),
    }
}

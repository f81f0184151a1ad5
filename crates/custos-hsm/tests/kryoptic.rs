//! The HSM conformance suite against a second PKCS#11 implementation:
//! Kryoptic (`.ci/run` builds it from crates.io), which offers
//! `CKM_AES_KEY_WRAP_KWP` and not `CKM_AES_KEY_WRAP_PAD`. Kryoptic reads
//! its configuration once per process, so everything runs in this test.

use custos_crypto::{unwrap_key, DataKey, Kcv, MasterKey};
use custos_hsm::{conformance, Hsm, Keep, NewMasterKey, Pkcs11Config, Pkcs11Hsm, Register};

fn config(pin: &str) -> Pkcs11Config {
    Pkcs11Config {
        module: custos_testing::kryoptic_module(),
        token: "custos-k".into(),
        pin: zeroize::Zeroizing::new(pin.into()),
        init_args: None,
    }
}

#[test]
fn kryoptic_passes_the_hsm_conformance_suite() {
    let _token = custos_testing::KryopticToken::new("custos-k", "1234", "5678");
    let (current, wrapped) = {
        let hsm = Pkcs11Hsm::create(&config("1234"), false, Keep::OnToken).unwrap().0;
        assert!(hsm.describe().contains("CKM_AES_KEY_WRAP_KWP"), "{}", hsm.describe());
        conformance::run(&hsm);
        let cur = hsm.registers().unwrap().into_iter().find(|r| r.register == Register::Current).unwrap();
        (cur, hsm.wrap_key(&DataKey::from_bytes([0x42; 32])).unwrap())
    };
    // Registers and keys persist on the token.
    let hsm = Pkcs11Hsm::open(&config("1234"), Keep::OnToken).unwrap();
    let again = hsm.registers().unwrap().into_iter().find(|r| r.register == Register::Current).unwrap();
    assert_eq!(again.mkvp, current.mkvp);
    assert_eq!(hsm.unwrap_key(&wrapped.mkvp, &wrapped.bytes).unwrap(), DataKey::from_bytes([0x42; 32]));
    // Its KWP is RFC 5649, byte for byte, as the software HSM's and SoftHSM2's.
    let (p1, p2) = (MasterKey::from_bytes([0x0F; 32]), MasterKey::from_bytes([0xF0; 32]));
    let part = |c: &str, k: &MasterKey| custos_hsm::KeyPart {
        custodian: c.into(),
        part: MasterKey::from_bytes(*k.expose_secret()),
        kcv: Kcv::of_master(k),
    };
    hsm.load_new(NewMasterKey::Parts(vec![part("a", &p1), part("b", &p2)]), None).unwrap();
    hsm.activate().unwrap();
    let dk = DataKey::from_bytes([0x77; 32]);
    let w = hsm.wrap_key(&dk).unwrap();
    assert_eq!(w.kcv, Kcv::of(&dk), "the token's CMAC KCV equals the software one");
    assert_eq!(unwrap_key(&MasterKey::from_bytes([0xFF; 32]), &w.bytes).unwrap(), dk);
    // A key wrapped under the old master key re-wraps to the new one.
    let moved = hsm.rewrap_key(&wrapped.mkvp, &wrapped.bytes).unwrap();
    assert_eq!(unwrap_key(&MasterKey::from_bytes([0xFF; 32]), &moved.bytes).unwrap(), DataKey::from_bytes([0x42; 32]));
}

//! KMIP (issue 16): PyKMIP's own client against `custos serve` over
//! mutually authenticated TLS, with principals mapped from certificates.

use super::*;
use crate::common::walk_files;

/// The Python with PyKMIP that `.ci/run` installs (or CUSTOS_PYKMIP_PYTHON).
fn pykmip_python() -> PathBuf {
    if let Some(p) = std::env::var_os("CUSTOS_PYKMIP_PYTHON") {
        return p.into();
    }
    let p = crate::common::ci_cache("pykmip/bin/python");
    assert!(
        p.exists(),
        "PyKMIP is not installed: run .ci/run (it makes {}) or set CUSTOS_PYKMIP_PYTHON to a Python that has it",
        p.display()
    );
    p
}

fn phase(port: u16, ca: &Path, certs: &serde_json::Value, state: &serde_json::Value, name: &str) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/server/kmip_client.py");
    let o = Command::new(pykmip_python())
        .arg(&script)
        .arg(name)
        .env("KMIP_PORT", port.to_string())
        .env("KMIP_CA", ca)
        .env("KMIP_CERTS", certs.to_string())
        .env("KMIP_STATE", state.to_string())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "PyKMIP phase {name} failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

const KADMIN: &str = "kadmin's credential, long enough";
const APPROVER: &str = "approver's credential, long enough";

#[test]
fn pykmip_manages_custos_keys_over_mutual_tls() {
    let e = Env::new();
    add(&e, "kadmin", "security-admin", KADMIN);
    add(&e, "approver", "security-admin", APPROVER);
    add(&e, "array1", "app", "array1's credential, long enough");
    add(&e, "array2", "app", "array2's credential, long enough");
    add(&e, "dbadmin", "security-admin", "dbadmin's credential, long enough");
    e.ok(&["user", "grant", "array1", "--key", "DSET.PRIM.KMIP.**"]);
    e.ok(&["config", "set", "dual-control", "key-destroy"]);
    let server_pki = Pki::new("custos test server CA");
    let client_pki = Pki::new("custos test device CA");
    let d = e.dir.path();
    let w = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p
    };
    let (cert, key, _) = server_pki.issue("custos", &["localhost"]);
    let (cert_p, key_p) = (w("server.pem", &cert), w("server.key", &key));
    let ca_p = w("ca.pem", &server_pki.ca_pem);
    let cca_p = w("device-ca.pem", &client_pki.ca_pem);
    let mut certs = serde_json::Map::new();
    for who in ["kadmin", "array1", "array2", "dbadmin"] {
        let (c, k, _) = client_pki.issue(&format!("{who}.devices.example"), &[]);
        certs.insert(who.into(), serde_json::json!([w(&format!("{who}.pem"), &c), w(&format!("{who}.key"), &k)]));
    }
    // The same name, signed by a CA the server does not trust.
    let (c, k, _) = Pki::new("someone else").issue("kadmin.devices.example", &[]);
    certs.insert("stranger".into(), serde_json::json!([w("stranger.pem", &c), w("stranger.key", &k)]));
    let certs = serde_json::Value::Object(certs);
    let port = free_port();
    let mut extra = format!(
        "[tls]\ncert = {cert_p:?}\nkey = {key_p:?}\n[kmip]\nlisten = \"127.0.0.1:{port}\"\nclient_ca = {cca_p:?}\nmax_message = 1048576\n"
    );
    for who in ["kadmin", "array1", "array2"] {
        extra.push_str(&format!("[[kmip.clients]]\ncn = \"{who}.devices.example\"\nprincipal = \"{who}\"\n"));
    }
    // A database's administrator: its keys go to an application of its own.
    extra.push_str("[[kmip.clients]]\ncn = \"dbadmin.devices.example\"\nprincipal = \"dbadmin\"\napp = \"DBKEYS\"\n");
    let s = Served::start_with(&e, &extra);
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "no KMIP listener: {}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }

    let one = phase(port, &ca_p, &certs, &serde_json::json!({}), "one");
    let uid = |k: &str| one["uids"][k].as_str().unwrap().to_string();
    let main = uid("main");
    assert!(main.starts_with("DSET.PRIM.KMIP.key"), "labelled by the naming standard: {one}");
    assert!(uid("db").starts_with("DSET.PRIM.DBKEYS.key"), "in its client's application: {one}");
    assert_eq!(one["db_names"], serde_json::json!(["orders-db"]), "{one}");
    let versions: Vec<&str> = one["versions"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(versions, ["2.0", "1.4", "1.3", "1.2", "1.1", "1.0"]);
    for op in ["CREATE", "GET", "LOCATE", "ACTIVATE", "REVOKE", "DESTROY", "GET_ATTRIBUTES", "QUERY"] {
        assert!(one["operations"].as_array().unwrap().iter().any(|o| o == op), "{op}: {}", one["operations"]);
    }
    let refused = |k: &str, reason: &str| {
        assert_eq!(one[k]["status"], "OPERATION_FAILED", "{k}: {}", one[k]);
        assert_eq!(one[k]["reason"], reason, "{k}: {}", one[k]);
        assert!(!one[k]["message"].as_str().unwrap_or("").is_empty(), "{k} says why: {}", one[k]);
    };
    refused("duplicate_name", "NON_UNIQUE_NAME_ATTRIBUTE");
    refused("bad_length", "INVALID_FIELD");
    refused("destroy_active", "WRONG_KEY_LIFECYCLE_STATE");
    assert_eq!(one["check_active"], main.as_str(), "{}", one["check_active"]);
    refused("check_retired", "WRONG_KEY_LIFECYCLE_STATE");
    refused("check_beyond_mask", "INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK");
    refused("unknown", "ITEM_NOT_FOUND");
    refused("not_an_identifier", "ITEM_NOT_FOUND");
    refused("unknown_get", "ITEM_NOT_FOUND");
    refused("ungranted_get", "PERMISSION_DENIED");
    refused("app_creates", "PERMISSION_DENIED");
    refused("truncated", "INVALID_MESSAGE");
    refused("oversize", "INVALID_MESSAGE");
    assert!(one["oversize"]["message"].as_str().unwrap().contains("limit of 1048576"), "{}", one["oversize"]);
    assert!(
        one["stranger"].get("error").is_some(),
        "a certificate from another CA gets no session: {}",
        one["stranger"]
    );
    assert_eq!(one["before_activate"], serde_json::json!(["PRE_ACTIVE"]));
    // KMIP 2.0 (attributes in an Attributes structure), and a 192-bit key.
    let v2 = &one["v2_attributes"];
    assert_eq!(v2["State"], serde_json::json!(["ACTIVE"]), "{v2}");
    assert_eq!(v2["Cryptographic Length"], serde_json::json!([192]), "{v2}");
    assert_eq!(v2["Name"], serde_json::json!(["v2-key"]), "{v2}");
    assert_eq!(one["v2_material_len"], 24);
    // 2.0's Set Attribute: adds, then replaces; refused for a Name (there
    // may be several) and for what the server sets.
    let v2_uid = one["v2_set"].as_str().unwrap();
    assert!(v2_uid.starts_with("DSET.PRIM.KMIP.key"), "{}", one["v2_set"]);
    assert_eq!(one["v2_set_twice"]["Contact Information"], serde_json::json!(["ops team"]), "{}", one["v2_set_twice"]);
    refused("v2_set_name", "MULTI_VALUED_ATTRIBUTE");
    refused("v2_set_length", "ATTRIBUTE_READ_ONLY");
    // Modify, Add and Delete in 2.0's form: a Name found by its Current
    // Attribute, renamed; one added; one deleted by value, the contact by
    // an Attribute Reference.
    assert_eq!(one["v2_modify"], v2_uid, "{}", one["v2_modify"]);
    refused("v2_modify_unknown", "ATTRIBUTE_NOT_FOUND");
    refused("v2_modify_no_current", "MISSING_DATA");
    assert_eq!(one["v2_add"], serde_json::json!({"status": 0, "uid": v2_uid}), "{}", one["v2_add"]);
    // A Current Attribute has no place in an Add: Invalid Field (7).
    assert_eq!(
        one["v2_add_with_current"],
        serde_json::json!({"status": 1, "reason": 7}),
        "{}",
        one["v2_add_with_current"]
    );
    assert_eq!(one["v2_names"], serde_json::json!(["v2-key-renamed", "v2-second"]), "{}", one["v2_names"]);
    assert_eq!(one["v2_after_delete"], serde_json::json!({"Name": ["v2-second"]}), "{}", one["v2_after_delete"]);
    // Operation Not Supported (5) in a 1.2 message.
    assert_eq!(one["set_in_1_2"], serde_json::json!({"status": 1, "reason": 5}), "{}", one["set_in_1_2"]);
    let a = &one["attributes"];
    assert_eq!(a["Name"], serde_json::json!(["array1-volume-key"]), "{a}");
    assert_eq!(a["State"], serde_json::json!(["ACTIVE"]), "{a}");
    assert_eq!(a["Cryptographic Algorithm"], serde_json::json!(["AES"]), "{a}");
    assert_eq!(a["Cryptographic Length"], serde_json::json!([256]), "{a}");
    assert_eq!(a["Cryptographic Usage Mask"], serde_json::json!([12]), "encrypt | decrypt: {a}");
    assert_eq!(a["Object Type"], serde_json::json!(["SYMMETRIC_KEY"]), "{a}");
    assert_eq!(a["Unique Identifier"], serde_json::json!([main]), "{a}");
    let some: Vec<&String> = one["some_attributes"].as_object().unwrap().keys().collect();
    assert_eq!(some, ["Cryptographic Length", "State"]);
    for n in ["Name", "State", "Unique Identifier", "Activation Date", "Initial Date"] {
        assert!(one["attribute_list"].as_array().unwrap().iter().any(|x| x == n), "{n}: {}", one["attribute_list"]);
    }
    assert_eq!(one["located_by_name"], serde_json::json!([main]));
    assert_eq!(one["retired_state"], serde_json::json!(["DEACTIVATED"]));
    assert_eq!(one["leaked_state"]["State"], serde_json::json!(["COMPROMISED"]));
    assert_eq!(one["leaked_state"]["Compromise Date"].as_array().unwrap().len(), 1);
    // (`doomed` is revoked only later.)
    let mut active = vec![main.clone(), uid("short"), uid("doomed")];
    active.sort();
    assert_eq!(one["located_active"], serde_json::json!(active));
    assert_eq!(one["located_compromised"], serde_json::json!([uid("leaked")]));
    assert_eq!(one["located_page"].as_array().unwrap().len(), 2);
    assert_eq!(one["destroy_doomed"]["status"], "OPERATION_PENDING", "{}", one["destroy_doomed"]);
    // Poll: pending (2) under the same correlation value for its
    // requester; Item Not Found (1) for another principal and for a value
    // this server never gave.
    let pending = &one["destroy_doomed2"];
    assert_eq!(pending["status"], 2, "{pending}");
    let correlation = pending["correlation"].as_str().unwrap().to_string();
    assert!(correlation.starts_with("request:"), "{pending}");
    assert_eq!(one["poll_pending"]["status"], 2, "{}", one["poll_pending"]);
    assert_eq!(one["poll_pending"]["correlation"], correlation.as_str(), "{}", one["poll_pending"]);
    assert_eq!(one["poll_by_another"], serde_json::json!({"status": 1, "reason": 1}), "{}", one["poll_by_another"]);
    assert_eq!(one["poll_unknown"], serde_json::json!({"status": 1, "reason": 1}), "{}", one["poll_unknown"]);
    assert_eq!(one["material"].as_str().unwrap().len(), 64, "256 bits");
    assert_eq!(one["length"], 256);
    assert_eq!(one["short_material"].as_str().unwrap().len(), 32, "128 bits");
    assert_eq!(one["short_length"], 128);
    assert_eq!(
        one["compromised_get"]["status"], "SUCCESS",
        "a compromised key still decrypts: {}",
        one["compromised_get"]
    );
    // Registered: a 128-bit key and a password, returned as they came.
    assert_eq!(one["imported_material"], "000102030405060708090a0b0c0d0e0f");
    assert_eq!(one["password"], "s3cret-passw0rd");
    assert_eq!(one["password_type"], "PASSWORD");
    assert_eq!(one["located_secrets"], serde_json::json!([uid("password")]), "by object type");
    refused("modify_missing", "ATTRIBUTE_NOT_FOUND");
    assert_eq!(one["imported_names"], serde_json::json!(["imported-128-renamed"]));
    let after = &one["imported_after_delete"];
    assert!(after.get("Name").is_none(), "the name was deleted: {after}");
    assert_eq!(after["Cryptographic Length"], serde_json::json!([128]));
    // AES-GCM for the device: round trip, additional data bound, a fresh
    // IV when none is given, other modes refused.
    assert_eq!(one["gcm_opened"], "journal block 42");
    refused("gcm_wrong_aad", "CRYPTOGRAPHIC_FAILURE");
    assert_eq!(one["fresh_iv"].as_str().unwrap().len(), 24, "{}", one["fresh_iv"]);
    refused("cbc", "UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS");
    refused("gcm_in_1_2", "FEATURE_NOT_SUPPORTED");
    // The same key through the HTTP API (the key service's AES-GCM): what
    // KMIP sealed opens there, and what it seals opens over KMIP (phase two).
    use base64::Engine as _;
    let b64 = |h: &str| base64::engine::general_purpose::STANDARD.encode(hex::decode(h).unwrap());
    let unb64 = |s: &serde_json::Value| base64::engine::general_purpose::STANDARD.decode(s.as_str().unwrap()).unwrap();
    let array1 = custos_server::basic("array1", b"array1's credential, long enough");
    let gcm = &one["gcm"];
    let body = serde_json::json!({
        "op": "key-gcm-decrypt", "label": main, "ciphertext": b64(gcm["data"].as_str().unwrap()),
        "iv": b64(gcm["iv"].as_str().unwrap()), "tag": b64(gcm["tag"].as_str().unwrap()),
        "aad": b64(&hex::encode("lun-7")),
    });
    let (st, opened) = http(&s.sock, "POST", "/v1/ops", &array1, &body.to_string());
    assert_eq!(st, 200, "{opened}");
    assert_eq!(unb64(&opened["result"]["data"]), b"journal block 42");
    let body = serde_json::json!({ "op": "key-gcm-encrypt", "label": main, "plaintext": b64(&hex::encode("sealed over http")) });
    let (st, sealed) = http(&s.sock, "POST", "/v1/ops", &array1, &body.to_string());
    assert_eq!(st, 200, "{sealed}");
    let r = &sealed["result"];
    let http_sealed = serde_json::json!({
        "data": hex::encode(unb64(&r["data"])), "iv": hex::encode(unb64(&r["iv"])), "tag": hex::encode(unb64(&r["tag"])),
    });

    // The keys are Custos keys: in `key ls`, with their state.
    let keys = s.ok("ops", OPS_CRED, &["--json", "key", "ls"]);
    let keys: serde_json::Value = serde_json::from_str(&keys).unwrap();
    let row = |l: &str| keys.as_array().unwrap().iter().find(|k| k["label"] == l).cloned().unwrap();
    assert_eq!(row(&main)["state"], "active");
    assert_eq!(row(&main)["attributes"]["names"], serde_json::json!(["array1-volume-key"]));
    assert_eq!(row(&uid("leaked"))["state"], "compromised");
    assert_eq!(row(&uid("leaked"))["attributes"]["revocation"]["reason"], "key-compromise");
    // Audited under the certificate's principal.
    let log: serde_json::Value =
        serde_json::from_str(&s.ok("ops", OPS_CRED, &["--json", "audit", "ls", "--principal", "kadmin"])).unwrap();
    let log = log.as_array().unwrap();
    assert!(log.iter().any(|r| r["action"] == "key create" && r["result"].as_str().unwrap().starts_with("ok")));
    assert!(log.iter().any(|r| r["action"] == "key revoke" && r["object"] == uid("leaked").as_str()));
    let log: serde_json::Value =
        serde_json::from_str(&s.ok("ops", OPS_CRED, &["--json", "audit", "ls", "--principal", "array1"])).unwrap();
    assert!(log.as_array().unwrap().iter().any(|r| r["action"] == "key export" && r["object"] == main.as_str()));
    let log: serde_json::Value =
        serde_json::from_str(&s.ok("ops", OPS_CRED, &["--json", "audit", "ls", "--principal", "array2"])).unwrap();
    assert!(log
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["action"] == "key export" && r["result"].as_str().unwrap().starts_with("refused")));

    // The destruction waits for a second principal.
    let reqs: serde_json::Value = serde_json::from_str(&s.ok("ops", OPS_CRED, &["--json", "request", "ls"])).unwrap();
    let destroys: Vec<_> = reqs.as_array().unwrap().iter().filter(|r| r["action"] == "key-destroy").collect();
    assert_eq!(destroys.len(), 2, "{reqs}");
    // The doomed keys' wrapped material, to look for in the catalog's files
    // once they are destroyed.
    let material: Vec<Vec<u8>> = ["doomed", "doomed2"]
        .iter()
        .map(|n| {
            let db = rusqlite::Connection::open_with_flags(
                e.vault.join("custos.db"),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            db.query_row("SELECT wrapped FROM keys WHERE label = ?1", [uid(n)], |r| r.get(0)).unwrap()
        })
        .collect();
    for req in destroys {
        assert_eq!(req["requested_by"], "kadmin");
        s.ok("approver", APPROVER, &["request", "approve", &req["id"].to_string()]);
    }
    // The answers did not wait for it, but the server's catalog takes the
    // material out of its write-ahead log within the erase lag (0.1 s).
    let t = Instant::now();
    let held = |m: &[u8]| {
        ["custos.db", "custos.db-wal"]
            .iter()
            .any(|f| std::fs::read(e.vault.join(f)).is_ok_and(|b| b.windows(m.len()).any(|w| w == m)))
    };
    for m in &material {
        assert!(m.len() >= 32, "wrapped material of {} bytes", m.len());
        while held(m) {
            assert!(t.elapsed() < Duration::from_secs(5), "a destroyed key's material is still in the catalog's files");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    // In a keystore backup, and through a master key change.
    s.ok("ops", OPS_CRED, &["keystore", "backup", "--to", "default"]);
    let mut in_backup = false;
    for f in walk_files(&e.vault) {
        if f.to_string_lossy().contains("keystore") {
            in_backup |=
                std::fs::read_to_string(&f).is_ok_and(|t| t.contains(&main) && t.contains("array1-volume-key"));
        }
    }
    assert!(in_backup, "the keystore backup holds the KMIP key and its name");
    s.ok("ops", OPS_CRED, &["mk", "load-new", "--generate"]);
    s.ok("ops", OPS_CRED, &["mk", "activate"]);
    s.ok("ops", OPS_CRED, &["mk", "reencipher"]);

    let (ready, go) = (d.join("phase-two-ready"), d.join("phase-two-go"));
    let state = serde_json::json!({
        "main": main, "doomed": uid("doomed"), "http_sealed": http_sealed, "ready": ready, "go": go,
        "doomed2_correlation": correlation,
    });
    let two = {
        let (port, ca_p, certs, state) = (port, ca_p.clone(), certs.clone(), state.clone());
        let child = std::thread::spawn(move || phase(port, &ca_p, &certs, &state, "two"));
        let t = Instant::now();
        while !ready.exists() {
            assert!(t.elapsed() < Duration::from_secs(30), "phase two never got going");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Disabled while its connection is open: the next message is refused.
        s.ok("ops", OPS_CRED, &["user", "disable", "array2"]);
        std::fs::write(&go, b"").unwrap();
        child.join().unwrap()
    };
    assert_eq!(two["array2_before"], 1, "{two}");
    assert_eq!(two["array2_after"]["reason"], "AUTHENTICATION_NOT_SUCCESSFUL", "{two}");
    assert_eq!(two["material"], one["material"], "the same key after the master key changed");
    assert_eq!(two["doomed_state"], serde_json::json!(["DESTROYED"]));
    assert_eq!(two["poll_done"], serde_json::json!({"status": 0, "uid": uid("doomed2")}), "{}", two["poll_done"]);
    assert_eq!(two["destroyed_get"]["status"], "OPERATION_FAILED", "{}", two["destroyed_get"]);
    assert_eq!(two["destroyed_get"]["reason"], "OBJECT_DESTROYED", "{}", two["destroyed_get"]);
    assert_eq!(two["http_opened"], "sealed over http");
    assert!(s.stop().is_some_and(|st| st.success()), "{}", s.log());
}

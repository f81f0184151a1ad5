//! The operation boundary: rights on every path to plaintext, audit intent
//! before acting, requests that store operations, escaped output. Each test
//! reproduces a finding of the review in issue 12 and failed on the code
//! before the boundary.

mod common;

use common::{data, Env, ADMIN_CRED};

const APP_CRED: &str = "application credential";

/// An app principal with grants on MINE.** and its keys only.
fn with_app(e: &Env) -> Env {
    e.cmd(&["user", "add", "app1", "--role", "app"]).env("CUSTOS_NEW_CREDENTIAL", APP_CRED).assert().success();
    e.ok(&["user", "grant", "app1", "--data", "MINE.**"]);
    e.ok(&["user", "grant", "app1", "--key", "DSET.PRIM.MINE.*"]);
    e.as_user("app1", APP_CRED)
}

#[test]
fn restore_and_snapshot_restore_need_read_rights_on_the_source() {
    let e = Env::new();
    let secret = data(20_000, 7);
    e.ok(&["ds", "put", "PAY.MASTER", Env::s(&e.file("p", &secret))]);
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&e.dir.path().join("offsite")), "--site", "B"]);
    e.ok(&["backup", "run", "PAY.MASTER", "--method", "raw", "--to", "offsite"]);
    let snap = e.json(&["snapshot", "create", "PAY.MASTER"])["id"].as_u64().unwrap().to_string();
    let app = with_app(&e);
    app.ok(&["ds", "put", "MINE.A", Env::s(&e.file("a", b"mine"))]);
    // Only the target's name used to be checked: a copy of PAY.MASTER came
    // out as MINE.STOLEN, readable by the app.
    let err = app.fails(&["restore", "PAY.MASTER", "--as", "MINE.STOLEN"], 8);
    assert!(err.contains("app1 may not do this") && err.contains("PAY.MASTER"), "{err}");
    let err = app.fails(&["snapshot", "restore", &snap, "--as", "MINE.STOLEN2"], 8);
    assert!(err.contains("PAY.MASTER"), "{err}");
    assert!(app.fails(&["ds", "get", "MINE.STOLEN"], 3).contains("no dataset"));
    // Overwriting another dataset with one's own backup: refused.
    let b = e.json(&["backup", "ls", "PAY.MASTER"])[0]["id"].as_u64().unwrap().to_string();
    let err = app.fails(&["restore", "MINE.A", "--backup", &b], 8);
    assert!(err.contains("PAY.MASTER"), "{err}");
    assert_eq!(e.run(&["ds", "get", "PAY.MASTER"]).stdout, secret);
}

#[test]
fn a_first_write_needs_the_grant_on_the_key_it_would_create() {
    let e = Env::new();
    e.cmd(&["user", "add", "app2", "--role", "app"]).env("CUSTOS_NEW_CREDENTIAL", APP_CRED).assert().success();
    e.ok(&["user", "grant", "app2", "--data", "OTHER.**"]);
    e.ok(&["user", "grant", "app2", "--key", "DSET.PRIM.MINE.*"]);
    let app = e.as_user("app2", APP_CRED);
    // The default policy makes DSET.PRIM.OTHER.key001, which the app has no grant on.
    let err = app.fails(&["ds", "put", "OTHER.X", Env::s(&e.file("x", b"x"))], 8);
    assert!(err.contains("no key grant") && err.contains("DSET.PRIM.OTHER.key001"), "{err}");
    assert!(e.json(&["key", "ls"]).as_array().unwrap().is_empty(), "no key was created");
    // With the key named explicitly, the same check.
    e.ok(&["key", "create", "DSET.PRIM.ELSE.key001", "--activate"]);
    let err = app.fails(&["ds", "put", "OTHER.Y", Env::s(&e.file("y", b"y")), "--key", "DSET.PRIM.ELSE.key001"], 8);
    assert!(err.contains("DSET.PRIM.ELSE.key001"), "{err}");
}

#[test]
fn a_closed_stdout_never_panics_and_the_audit_log_has_the_command() {
    let e = Env::new();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("custos"))
        .env_clear()
        .env("CUSTOS_VAULT", &e.vault)
        .env("CUSTOS_PASSPHRASE", common::PASS)
        .envs(e.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(["key", "create", "--app", "PIPE"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // `| true`: the reader is gone
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
    let log = e.json(&["audit", "ls", "--object", ""]);
    let rows: Vec<(&str, &str)> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "key create")
        .map(|r| (r["action"].as_str().unwrap(), r["result"].as_str().unwrap()))
        .collect();
    assert_eq!(rows, [("key create", "intent"), ("key create", "ok")]);
    assert_eq!(e.json(&["key", "ls", "DSET.PRIM.PIPE.*"]).as_array().unwrap().len(), 1);
}

#[test]
fn requests_store_operations_and_show_them_escaped() {
    let e = Env::new();
    e.ok(&["config", "set", "dual-control", "role-change"]);
    let admin = e.as_user("admin", ADMIN_CRED);
    // A token user added under dual control: the token goes to the
    // requester now, only its hash into the request.
    let made = e.json(&["user", "add", "robot", "--role", "app", "--token"]);
    let token = made["token"].as_str().unwrap().to_string();
    let id = made["id"].as_u64().unwrap().to_string();
    let db = rusqlite::Connection::open(e.vault.join("custos.db")).unwrap();
    let stored: String = db.query_row("SELECT args FROM requests WHERE id = ?1", [&id], |r| r.get(0)).unwrap();
    assert!(stored.starts_with("{\"v\":1,") && !stored.contains(&token), "{stored}");
    let show = e.ok(&["request", "show", &id]);
    assert!(show.contains("op           user-add") && show.contains("name         robot"), "{show}");
    // The approver runs exactly the stored operation; the token works.
    let approved = admin.ok(&["request", "approve", &id]);
    assert!(approved.contains("approved by admin"), "{approved}");
    e.as_user("robot", &token).cmd(&["ds", "ls"]).assert().success();
    // A request row edited to smuggle terminal escapes is shown escaped.
    let evil = r#"{"v":1,"operation":{"op":"user-grant","name":"x\u001b[2K\r--data MINE.REPORTS","on":"data","pattern":"**"}}"#;
    db.execute("UPDATE requests SET args = ?1, state = 'pending' WHERE id = ?2", rusqlite::params![evil, id]).unwrap();
    let show = e.ok(&["request", "show", &id]);
    assert!(!show.contains('\u{1b}') && !show.contains('\r'), "{show:?}");
    assert!(show.contains("\\u{1b}[2K\\r--data MINE.REPORTS") && show.contains("pattern      **"), "{show}");
    // Edited outside Custos, it is refused by whatever would act on it,
    // and named; taken out again, the rest goes on.
    let o = e.run(&["catalog", "verify"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("requests id={id}")));
    assert!(admin.fails(&["request", "approve", &id], 4).contains(&format!("catalog row requests id={id}")));
    db.execute("DELETE FROM requests WHERE id = ?1", [&id]).unwrap();
    // The requester withdraws; nobody else can.
    let id2 = e.json(&["user", "add", "robot2", "--role", "app", "--token"])["id"].as_u64().unwrap().to_string();
    assert!(admin.fails(&["request", "withdraw", &id2], 8).contains("only its requester"));
    e.ok(&["request", "withdraw", &id2]);
    assert_eq!(e.json(&["request", "show", &id2])["state"], "withdrawn");
    assert!(admin.fails(&["request", "approve", &id2], 1).contains("not pending"));
}

#[test]
fn failed_logins_are_audited_with_the_claimed_name_marked_and_escaped() {
    let e = Env::new();
    let o = e.as_user("mallory\u{1b}[31m", "wrong credential").run(&["ds", "ls"]);
    assert_eq!(o.status.code(), Some(6));
    let out = e.ok(&["audit", "ls"]);
    assert!(!out.contains('\u{1b}'), "{out:?}");
    assert!(out.contains("mallory\\u{1b}[31m (unverified)") && out.contains("login"), "{out}");
}

#[test]
fn escrow_init_and_purge_are_dual_controllable() {
    let e = Env::new();
    e.ok(&["config", "set", "dual-control", "escrow-change"]);
    e.cmd(&["user", "add", "cust2", "--role", "key-custodian"])
        .env("CUSTOS_NEW_CREDENTIAL", "second custodian")
        .assert()
        .success();
    e.ok(&["ds", "put", "ESC.A", Env::s(&e.file("a", b"escrowed"))]);
    e.custodian("a");
    e.custodian("b");
    let out = e.ok(&["escrow", "init", "--custodian", "a", "--custodian", "b", "--threshold", "2"]);
    assert!(out.contains("under dual control"), "{out}");
    assert!(e.json(&["escrow", "status"])["kbks"].as_array().unwrap().is_empty(), "no KBK before approval");
    let out = e.ok(&["escrow", "purge", "DSET.PRIM.ESC.key001"]);
    assert!(out.contains("under dual control"), "{out}");
}

//! The console (issue 17): Debian's Chromium, driven by playwright-core
//! (tests/console/e2e.mjs), against a server this test starts; then the
//! vault is asked, through the CLI, whether what the browser saw is true.

use super::*;

/// Where `.ci/run` installs playwright-core and axe-core (or
/// CUSTOS_CONSOLE_NODE_MODULES).
fn node_modules() -> PathBuf {
    if let Some(p) = std::env::var_os("CUSTOS_CONSOLE_NODE_MODULES") {
        return p.into();
    }
    let p = crate::common::ci_cache("console-node/node_modules");
    assert!(
        p.join("playwright-core").exists() && p.join("axe-core").exists(),
        "playwright-core and axe-core are not installed: run .ci/run (it makes {}) or set CUSTOS_CONSOLE_NODE_MODULES",
        p.display()
    );
    p
}

fn chromium() -> PathBuf {
    let p = std::env::var_os("CUSTOS_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into());
    assert!(p.exists(), "Chromium is not installed at {}: run .ci/run (it installs Debian's chromium)", p.display());
    p
}

const SADMIN: &str = "security admin's credential";
const APPROVER: &str = "approving admin's credential";

#[test]
fn the_console_requests_approves_and_shows_what_the_cli_shows() {
    let e = Env::new();
    // A small estate: two applications, one with an offsite logical copy.
    e.ok(&["ds", "put", "PAY.MASTER", Env::s(&e.file("pay", &data(200_000, 3)))]);
    e.ok(&["ds", "put", "PAY.LEDGER", Env::s(&e.file("ledger", &data(90_000, 4)))]);
    e.ok(&["ds", "put", "HR.PEOPLE", Env::s(&e.file("hr", &data(50_000, 5)))]);
    let offsite = e.vault.join("volumes").join("offsite");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&offsite), "--site", "B"]);
    e.ok(&["backup", "run", "PAY.MASTER", "--method", "logical", "--to", "offsite"]);
    // A drill the risk page shows beside the model ("proven on").
    e.ok(&["risk", "drill", "PAY.MASTER", "--threat", "disk-failure"]);
    e.ok(&["key", "create", "DSET.PRIM.OLD.key001"]);
    e.ok(&["key", "create", "DSET.PRIM.OLD.key002"]);
    add(&e, "sadmin", "security-admin", SADMIN);
    add(&e, "approver", "security-admin", APPROVER);
    add(&e, "aud", "auditor", AUD);
    add(&e, "stor", "storage-admin", STOR);
    e.ok(&["config", "set", "dual-control", "key-destroy"]);

    let pki = Pki::new("custos console test CA");
    let (cert, key, _) = pki.issue("custos", &["localhost"]);
    let d = e.dir.path();
    let w = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p
    };
    let (cert_p, key_p) = (w("server.pem", &cert), w("server.key", &key));
    let port = free_port();
    let s = Served::start_with(&e, &format!("tcp = \"127.0.0.1:{port}\"\n[tls]\ncert = {cert_p:?}\nkey = {key_p:?}\n"));
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "no TLS listener: {}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }

    // The suite's screenshots are its artifact: target/console-screenshots.
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/e2e.mjs");
    let users = serde_json::json!({
        "admin": ["sadmin", SADMIN],
        "approver": ["approver", APPROVER],
        "auditor": ["aud", AUD],
        "storage": ["stor", STOR],
    });
    let o = Command::new("node")
        .arg(&script)
        .env("BASE", format!("https://localhost:{port}"))
        .env("NODE_MODULES", node_modules())
        .env("CHROMIUM", chromium())
        .env("USERS", users.to_string())
        .env("KEY", "DSET.PRIM.OLD.key001")
        .env("KEY2", "DSET.PRIM.OLD.key002")
        .env("SHOTS", &shots)
        .output()
        .expect("node runs");
    assert!(
        o.status.success(),
        "the browser suite failed: {}\n{}\nserver log: {}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout),
        s.log()
    );
    let seen: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&o.stdout)));

    // The destruction the browser asked for and approved is scheduled, with
    // the deadline the page showed; the request the auditor forged an
    // approval of is still pending.
    let show: serde_json::Value =
        serde_json::from_str(&s.ok("aud", AUD, &["--json", "key", "show", "DSET.PRIM.OLD.key001"])).unwrap();
    let due = show["destroy_at"].as_str().unwrap_or_else(|| panic!("not scheduled: {show}"));
    assert_eq!(
        due.parse::<jiff::Timestamp>().unwrap(),
        seen["deadline"].as_str().unwrap().parse::<jiff::Timestamp>().unwrap(),
        "the page's deadline is the vault's"
    );
    let requests: serde_json::Value = serde_json::from_str(&s.ok("aud", AUD, &["--json", "request", "ls"])).unwrap();
    let state_of = |id: &str| {
        requests
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"].as_u64().map(|n| n.to_string()).as_deref() == Some(id))
            .map(|r| r["state"].as_str().unwrap().to_string())
    };
    assert_eq!(state_of(seen["requestId"].as_str().unwrap()).as_deref(), Some("executed"), "{requests}");
    assert_eq!(state_of(seen["pendingId"].as_str().unwrap()).as_deref(), Some("pending"), "{requests}");
    let audit = s.ok("aud", AUD, &["audit", "ls", "--principal", "aud"]);
    assert!(
        audit.lines().any(|l| l.contains("request approve") && !l.contains(" ok")),
        "the forged approval is audited as refused: {audit}"
    );

    // Table 2 on the page is `custos risk report --format json`, cell by cell.
    let report: serde_json::Value =
        serde_json::from_str(&s.ok("aud", AUD, &["risk", "report", "--format", "json"])).unwrap();
    let page = seen["table2"].as_array().unwrap();
    let mut compared = 0;
    for a in report["apps"].as_array().unwrap() {
        for cell in a["single"].as_array().unwrap() {
            let (threat, verdict) = (cell["threat"].as_str().unwrap(), cell["verdict"].as_str().unwrap());
            let shown = page
                .iter()
                .find(|c| c["subject"] == a["app"] && c["threat"] == threat)
                .unwrap_or_else(|| panic!("no cell for {} / {threat} on the page", a["app"]));
            assert_eq!(shown["verdict"], verdict, "{} / {threat}: page {shown}, CLI {cell}", a["app"]);
            compared += 1;
        }
    }
    assert_eq!(compared, page.len(), "the page has cells the report has not");
    assert!(compared >= 20, "two applications, ten threats: {compared}");
    let by_dataset = seen["byDataset"].as_array().unwrap();
    for d in report["datasets"].as_array().unwrap() {
        for cell in d["single"].as_array().unwrap() {
            let shown =
                by_dataset.iter().find(|c| c["subject"] == d["dataset"] && c["threat"] == cell["threat"]).unwrap();
            assert_eq!(shown["verdict"], cell["verdict"], "{} / {}", d["dataset"], cell["threat"]);
        }
    }

    // The drill run before the server started is beside its cell, and only there.
    let proven: Vec<_> = by_dataset.iter().filter(|c| !c["proof"].is_null()).collect();
    assert_eq!(proven.len(), 1, "{proven:?}");
    assert_eq!(
        (&proven[0]["subject"], &proven[0]["threat"], &proven[0]["proof"]),
        (&"PAY.MASTER".into(), &"disk-failure".into(), &"agrees".into())
    );
    let drills = report["drills"].as_array().expect("the JSON report carries the drills");
    assert!(
        drills.iter().any(|d| d["dataset"] == "PAY.MASTER" && d["threats"] == "disk-failure" && d["agrees"] == true),
        "{drills:?}"
    );

    // docs/ keeps the current Risk and Requests pages.
    if std::env::var_os("CUSTOS_UPDATE_SCREENSHOTS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
        std::fs::create_dir_all(&docs).unwrap();
        for page in ["risk", "requests"] {
            std::fs::copy(shots.join(format!("{page}.png")), docs.join(format!("console-{page}.png"))).unwrap();
        }
    }
}

/// Without a browser: every console answer carries its policy headers; a
/// request without a session is sent to login; sign-in is refused where the
/// cookie could not be Secure (the Unix socket); assets are the binary's.
#[test]
fn console_headers_redirects_and_refusals() {
    let e = Env::new();
    add(&e, "sadmin", "security-admin", SADMIN);
    let s = Served::start(&e);
    let raw = |method: &str, path: &str, headers: &str, body: &str| {
        use std::io::Read;
        let mut c = std::os::unix::net::UnixStream::connect(&s.sock).unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        c.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        let status: u16 = out[9..12].parse().unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        (status, head.to_ascii_lowercase(), body.to_string())
    };
    for path in ["/ui/risk", "/ui/keys", "/ui/requests", "/ui/audit", "/ui/health", "/ui/datasets", "/ui/keys/X"] {
        let (status, head, _) = raw("GET", path, "", "");
        assert_eq!(status, 303, "{path}: {head}");
        assert!(head.contains(&format!("location: /ui/login?next={}", path.to_ascii_lowercase())), "{path}: {head}");
        assert!(head.contains("content-security-policy: default-src 'none'"), "{path}: {head}");
        assert!(head.contains("x-frame-options: deny") && head.contains("x-content-type-options: nosniff"), "{head}");
    }
    let (status, head, body) = raw("GET", "/ui/login", "", "");
    assert_eq!(status, 200, "{head}");
    assert!(!body.contains("<script>") && !body.contains("style="), "no inline script or style: {body}");
    // A POST with no session goes to login and changes nothing.
    let (status, head, _) =
        raw("POST", "/ui/requests/1/approve", "content-type: application/x-www-form-urlencoded\r\n", "csrf=x");
    assert_eq!(status, 303, "{head}");
    assert!(head.contains("location: /ui/login"), "{head}");
    // Sign-in over the socket: refused, and says why.
    let form = format!("name=sadmin&credential={}&next=%2Fui%2Frisk", SADMIN.replace(' ', "+").replace('\'', "%27"));
    let (status, head, body) = raw("POST", "/ui/login", "content-type: application/x-www-form-urlencoded\r\n", &form);
    assert_eq!(status, 403, "{head}");
    assert!(body.contains("TLS only") && !head.contains("set-cookie"), "{head}{body}");
    // The assets, and nothing else under their path.
    let (status, head, body) = raw("GET", "/ui/assets/console.js", "", "");
    assert!(status == 200 && head.contains("content-type: text/javascript") && body.contains("data-confirm"), "{head}");
    let (status, _, _) = raw("GET", "/ui/assets/..%2Fcustos.db", "", "");
    assert_eq!(status, 404);
    let (status, _, _) = raw("GET", "/ui/assets/risk.css", "", "");
    assert_eq!(status, 200);
    let (status, head, body) = raw("GET", "/ui/no/such/page", "", "");
    assert!(status == 404 && head.contains("content-security-policy") && body.contains("No such page"), "{head}{body}");
}

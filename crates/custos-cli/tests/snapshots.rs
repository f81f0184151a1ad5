//! Snapshot tests of what every command prints: one story that runs every
//! command of the CLI (and some of its refusals) in order on a fresh vault
//! (all but `serve`, a daemon, and `demo`, a guided story with its own
//! test; `repo migrate` only as far as its refusal, PostgreSQL being the
//! PostgreSQL tests' part),
//! once for people (text) and once with `--json`, each pinned as a whole
//! under `tests/snapshots/`. What varies from run to run (times, random
//! ids, key check values, ciphertexts, temporary paths, durations) is
//! replaced by a placeholder first; everything else must match.
//!
//! A change to any command's output fails here until the snapshot is
//! updated on purpose: `INSTA_UPDATE=always cargo test -p custos-cli --test
//! snapshots`, then read the diff (`git diff crates/custos-cli/tests/snapshots`).
//! `docs/json.md` says what the JSON names mean.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// One run of the story, recording each command and what it printed.
struct Story {
    json: bool,
    root: PathBuf,
    log: String,
    /// Each command as run, with its standard output and error as printed.
    outputs: Vec<Printed>,
}

struct Printed {
    command: String,
    stdout: String,
    stderr: String,
    exit: i32,
}

impl Story {
    /// Run `args` as `who` (with extra environment, and standard input),
    /// record it, and return its standard output.
    fn run_with(&mut self, who: &Env, args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> String {
        let mut args = args.to_vec();
        if self.json {
            args.push("--json");
        }
        let mut c = who.cmd(&args);
        for (k, v) in env {
            c.env(k, v);
        }
        if let Some(input) = stdin {
            c.write_stdin(input.to_vec());
        }
        let o = c.output().unwrap();
        let user = who.env.iter().find(|(k, _)| k == "CUSTOS_USER").map(|(_, v)| v.as_str()).unwrap_or("-");
        let shown: Vec<String> = args
            .iter()
            .map(|a| if a.contains(' ') || a.contains('*') { format!("'{a}'") } else { a.to_string() })
            .collect();
        self.log.push_str(&format!("$ [{user}] custos {}\n", shown.join(" ")));
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        self.outputs.push(Printed {
            command: shown.join(" "),
            stdout: out.clone(),
            stderr: String::from_utf8_lossy(&o.stderr).to_string(),
            exit: o.status.code().unwrap_or(-1),
        });
        self.log.push_str(&out);
        if !out.is_empty() && !out.ends_with('\n') {
            self.log.push_str("[no newline at end]\n");
        }
        let err = String::from_utf8_lossy(&o.stderr);
        if !err.is_empty() {
            self.log.push_str("[stderr]\n");
            self.log.push_str(&err);
        }
        if !o.status.success() {
            self.log.push_str(&format!("[exit {}]\n", o.status.code().unwrap_or(-1)));
        }
        self.log.push('\n');
        out
    }

    fn run(&mut self, who: &Env, args: &[&str]) -> String {
        self.run_with(who, args, &[], None)
    }

    /// A section heading in the snapshot.
    fn part(&mut self, title: &str) {
        self.log.push_str(&format!("### {title}\n\n"));
    }

    fn path(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }
}

/// What is printed, with what varies from run to run replaced.
fn normalise(log: &str, root: &Path) -> String {
    let log = log.replace(&root.display().to_string(), "[DIR]");
    let subs: &[(&str, &str)] = &[
        // Names made of a time and random hex: keystore and vault backups.
        (r"\d{8}T\d{6}(\.\d+)?Z-[0-9a-f]{8}", "[BACKUP-ID]"),
        (r"KBK\.\d{8}T\d{6}Z\.[0-9a-f]{8}", "[KBK-ID]"),
        (r"custos-recipient-v1:[0-9a-f]+:[0-9a-f]+", "[RECIPIENT]"),
        // Times: RFC 3339 (JSON), the tables' form, and durations.
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", "[TIME]"),
        (r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "[TIME]"),
        (r"\b\d+(\.\d+)? ?(ms|µs)\b", "[DURATION]"),
        (r"\b\d+\.\d+ ?s\b", "[DURATION]"),
        (r"\b\d+(\.\d+)? ?[KMG]?i?B/s\b", "[RATE]"),
        // Hashes, ids and check values: hex of a length that varies only
        // with what was hashed.
        (r"\b[0-9a-f]{65,}\b", "[SEALED]"),
        (r"\b[0-9a-f]{64}\b", "[HASH]"),
        (r"\b[0-9a-f]{32}\b", "[ID]"),
        (r"\b[0-9a-fA-F]{16}\b", "[MKVP]"),
        (r"\b[0-9A-F]{10}\b", "[KCV]"),
        // A vault backup's size (its catalog holds times of varying length).
        (r"\b\d+ bytes, read back", "[N] bytes, read back"),
        (r"(\[BACKUP-ID\] +\S+ +\[TIME\] +\d+ +)\d+", "${1}[N]"),
        (r#"(?s)("audit_seq": \d+,[^{}]*?"size": )\d+"#, "${1}[N]"),
    ];
    let mut s = log;
    for (re, to) in subs {
        s = regex::Regex::new(re).unwrap().replace_all(&s, *to).to_string();
    }
    // Secrets and sealed data: base64 of 16 bytes or more (a run of its
    // alphabet with upper and lower case letters and a digit, `+`, `/` or
    // padding, which the names here never have all of). Padding counts:
    // one random 16-byte value in a hundred has no digit, `+` or `/` in
    // its 22 characters, and was left in the snapshot.
    let b64 = regex::Regex::new(r"[A-Za-z0-9+/_-]{22,}={0,2}").unwrap();
    s = b64
        .replace_all(&s, |c: &regex::Captures| {
            let t = &c[0];
            let mixed = t.bytes().any(|b| b.is_ascii_uppercase())
                && t.bytes().any(|b| b.is_ascii_lowercase())
                && t.bytes().any(|b| b.is_ascii_digit() || b == b'+' || b == b'/' || b == b'=');
            if mixed {
                "[BASE64]".to_string()
            } else {
                t.to_string()
            }
        })
        .to_string();
    // Tables are padded to their widest cell, which a placeholder may have
    // replaced: compare cells, not their padding (indentation is kept).
    let wide = regex::Regex::new(r"(\S) {2,}").unwrap();
    s.lines().map(|l| wide.replace_all(l.trim_end(), "$1  ").to_string()).collect::<Vec<_>>().join("\n") + "\n"
}

/// The story: every command, in an order in which each has something to
/// work on.
fn story(json: bool) -> (String, Vec<Printed>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let mut s = Story { json, root: root.clone(), log: String::new(), outputs: Vec::new() };
    let admin = Env::existing(root.join("vault"));
    let new_cred = |c: &'static str| [("CUSTOS_NEW_CREDENTIAL", c)];

    s.part("a vault and its settings");
    s.run(&admin, &["init", "--kdf-memory-mib", "19", "--kdf-iterations", "2", "--site", "A"]);
    s.run(&admin, &["config", "set", "chunk.size", "65536"]);
    s.run(&admin, &["config", "set", "key.destroy.min-wait", "0s"]);
    s.run(&admin, &["config", "set", "key.destroy.wait", "0s"]);
    s.run(&admin, &["config", "set", "dual-control", "none"]);
    s.run(&admin, &["config", "set", "chunk.size", "nothing"]);
    s.run(&admin, &["config", "ls"]);
    s.run(&admin, &["config", "get", "chunk.size"]);

    s.part("principals");
    let all = ["--role", "security-admin", "--role", "key-custodian", "--role", "storage-admin", "--role", "app"];
    s.run_with(
        &admin,
        &[&["user", "add", "ops"][..], &all, &["--role", "auditor"]].concat(),
        &new_cred(OPS_CRED),
        None,
    );
    s.run(&admin, &["user", "grant", "ops", "--data", "**"]);
    s.run(&admin, &["user", "grant", "ops", "--key", "**"]);
    let ops = admin.as_user("ops", OPS_CRED);
    s.run_with(&ops, &["user", "add", "sam", "--role", "security-admin"], &new_cred("sam's credential, long"), None);
    let sam = admin.as_user("sam", "sam's credential, long");
    s.run_with(&ops, &["user", "add", "app1", "--role", "app"], &new_cred("app1's credential, long"), None);
    s.run(&ops, &["user", "role", "app1", "--add", "auditor"]);
    s.run(&ops, &["user", "role", "app1", "--remove", "auditor"]);
    s.run(&ops, &["user", "grant", "app1", "--data", "APP1.**"]);
    s.run(&ops, &["user", "revoke", "app1", "--data", "APP1.**"]);
    s.run(&ops, &["user", "disable", "app1"]);
    s.run(&ops, &["user", "enable", "app1"]);
    s.run_with(&ops, &["user", "credential", "app1"], &new_cred("app1's second credential"), None);
    s.run(&ops, &["user", "ls"]);
    s.run(&ops, &["user", "grant", "nobody", "--data", "X.**"]);

    s.part("volumes and policies");
    s.run(&ops, &["volume", "add", "offsite", "--path", &s.path("offsite"), "--site", "B"]);
    s.run(&ops, &["volume", "add", "replica", "--path", &s.path("replica"), "--site", "B"]);
    s.run(&ops, &["volume", "add", "tape", "--path", &s.path("tape"), "--site", "C", "--medium", "tape"]);
    s.run(&ops, &["volume", "add", "spare", "--path", &s.path("spare"), "--site", "B"]);
    s.run(&ops, &["volume", "ls"]);
    s.run(&ops, &["volume", "rm", "spare"]);
    s.run(&ops, &["volume", "rm", "default"]);
    s.run(&ops, &["policy", "add", "pay", "--pattern", "PAY.**", "--volume", "default", "--template", "--app", "PAY"]);
    s.run(&ops, &["policy", "add", "spare", "--pattern", "SPARE.**", "--volume", "offsite", "--template"]);
    s.run(&ops, &["policy", "ls"]);
    s.run(&ops, &["policy", "rm", "spare"]);

    s.part("keys");
    s.run(&ops, &["key", "create", "--app", "KS", "--activate"]);
    s.run(&ops, &["key", "create", "--app", "KS", "--count", "2"]);
    s.run(&ops, &["key", "activate", "DSET.PRIM.KS.key002"]);
    s.run(&ops, &["key", "ls"]);
    s.run(&ops, &["key", "show", "DSET.PRIM.KS.key001"]);
    s.run(&ops, &["key", "show", "DSET.PRIM.KS.key999"]);
    let plain = b"aGVsbG8sIGtleSBzZXJ2aWNlIQ==\n";
    s.run_with(&ops, &["key", "encrypt", "DSET.PRIM.KS.key001", "--context", "app=ks"], &[], Some(plain));
    let ct = {
        let o = ops
            .cmd(&["key", "encrypt", "DSET.PRIM.KS.key001", "--context", "app=ks"])
            .write_stdin(plain.to_vec())
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap()
    };
    s.run_with(&ops, &["key", "decrypt", "--context", "app=ks"], &[], Some(ct.as_bytes()));
    s.run_with(&ops, &["key", "decrypt", "--context", "app=other"], &[], Some(ct.as_bytes()));
    s.run(&ops, &["key", "datakey", "DSET.PRIM.KS.key001", "--bytes", "16"]);
    s.run(&ops, &["key", "deactivate", "DSET.PRIM.KS.key003"]);
    s.run(&ops, &["key", "archive", "DSET.PRIM.KS.key003"]);
    s.run(&ops, &["key", "restore", "DSET.PRIM.KS.key003"]);
    s.run(&ops, &["key", "revoke", "DSET.PRIM.KS.key002", "--reason", "cessation-of-operation"]);
    s.run(&ops, &["key", "destroy", "DSET.PRIM.KS.key001"]);

    s.part("datasets");
    let payroll = s.root.join("payroll.csv");
    std::fs::write(&payroll, b"alice,4200\nbob,3900\n").unwrap();
    let big = s.root.join("big.bin");
    std::fs::write(&big, data(200_000, 7)).unwrap();
    let tree = s.root.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), b"first file\n").unwrap();
    std::fs::write(tree.join("sub/b c.txt"), b"second file\n").unwrap();
    std::os::unix::fs::symlink("a.txt", tree.join("link")).unwrap();
    s.run(&ops, &["ds", "put", "PAY.MASTER", Env::s(&payroll)]);
    s.run(&ops, &["ds", "put", "PAY.MASTER", Env::s(&payroll)]);
    s.run(&ops, &["ds", "put", "PAY.BIG", Env::s(&big)]);
    s.run(&ops, &["ds", "get", "PAY.MASTER"]);
    s.run(&ops, &["ds", "get", "PAY.MASTER", "-o", &s.path("out.csv")]);
    s.run(&ops, &["ds", "get", "PAY.MASTER", "--range", "0..5"]);
    s.run(&ops, &["ds", "get", "PAY.NOTHING"]);
    s.run(&ops, &["ds", "ls"]);
    s.run(&ops, &["ds", "ls", "ZZZ.**"]);
    s.run(&ops, &["ds", "info", "PAY.MASTER"]);
    s.run(&ops, &["ds", "verify", "PAY.BIG"]);
    s.run(&ops, &["ds", "import", Env::s(&tree), "--prefix", "PAY.TREE"]);
    s.run(&ops, &["ds", "import", Env::s(&tree), "--prefix", "PAY.TREE", "--skip-other"]);
    s.run(&ops, &["ds", "export", "PAY.TREE", &s.path("exported")]);
    s.run(&ops, &["ds", "rm", "PAY.TREE.a_txt"]);
    s.run(&ops, &["ds", "rm", "PAY.TREE.a#2Etxt"]);

    s.part("snapshots");
    s.run(&ops, &["snapshot", "create", "PAY.MASTER"]);
    s.run(&ops, &["snapshot", "ls"]);
    s.run(&ops, &["snapshot", "restore", "1"]);
    s.run(&ops, &["snapshot", "rm", "1"]);
    s.run(&ops, &["snapshot", "rm", "1"]);

    s.part("backups");
    s.run(&ops, &["backup", "run", "PAY.**", "--to", "offsite"]);
    s.run(&ops, &["backup", "run", "PAY.MASTER", "--method", "raw", "--to", "offsite"]);
    s.run(&ops, &["backup", "run", "ZZZ.**", "--to", "offsite"]);
    s.run(&ops, &["backup", "ls"]);
    s.run(&ops, &["backup", "show", "1"]);
    s.run(&ops, &["backup", "show", "99"]);
    s.run(&ops, &["backup", "verify", "--read-data"]);
    s.run(&ops, &["restore", "PAY.MASTER", "--as", "PAY.RESTORED"]);
    s.run(&ops, &["backup", "run", "PAY.MASTER", "--to", "offsite"]);
    s.run(&ops, &["backup", "prune", "PAY.MASTER", "--keep-last", "1", "--dry-run"]);
    s.run(&ops, &["backup", "prune", "PAY.MASTER", "--keep-last", "1"]);

    s.part("mirrors");
    s.run(&ops, &["mirror", "add", "offsite", "replica"]);
    s.run(&ops, &["mirror", "ls"]);
    s.run(&ops, &["mirror", "status"]);
    s.run(&ops, &["mirror", "rm", "offsite"]);

    s.part("storage management");
    let rule = ["hsm", "rule", "add", "nightly", "--pattern", "PAY.**", "--backup-to", "offsite", "--keep-last", "2"];
    s.run(&ops, &rule);
    s.run(&ops, &["hsm", "rule", "ls"]);
    s.run(&ops, &["hsm", "run"]);
    s.run(&ops, &["hsm", "migrate", "PAY.BIG", "--to", "tape"]);
    s.run(&ops, &["hsm", "recall", "PAY.BIG"]);
    s.run(&ops, &["hsm", "rule", "rm", "nightly"]);

    s.part("escrow, keystore and vault backups");
    let key = s.path("ops.key");
    s.run(&ops, &["escrow", "keygen", "--out", &key, "--kdf-memory-mib", "19", "--kdf-iterations", "2"]);
    s.run(&ops, &["escrow", "register", &key]);
    s.run_with(&ops, &["user", "add", "alice", "--role", "key-custodian"], &new_cred("alice's credential, long"), None);
    let alice = admin.as_user("alice", "alice's credential, long");
    let alice_key = s.path("alice.key");
    s.run(&alice, &["escrow", "keygen", "--out", &alice_key, "--kdf-memory-mib", "19", "--kdf-iterations", "2"]);
    s.run(&alice, &["escrow", "register", &alice_key]);
    s.run(&ops, &["escrow", "init", "--custodian", "ops", "--threshold", "1"]);
    s.run(&ops, &["escrow", "init", "--custodian", "ops", "--custodian", "alice", "--threshold", "2"]);
    let share = s.path("ops.sealed");
    let alice_share = s.path("alice.sealed");
    s.run(&ops, &["escrow", "share", "--out", &share]);
    s.run(&ops, &["escrow", "confirm", "--share", &share, "--key", &key]);
    s.run(&alice, &["escrow", "share", "--out", &alice_share]);
    s.run(&alice, &["escrow", "confirm", "--share", &alice_share, "--key", &alice_key]);
    s.run(&ops, &["escrow", "status"]);
    s.run(&ops, &["keystore", "backup", "--to", "offsite"]);
    s.run(&ops, &["keystore", "backups"]);
    s.run(&ops, &["vault", "backup", "--to", "offsite"]);
    s.run(&ops, &["vault", "backup", "--to", "offsite"]);
    s.run(&ops, &["vault", "backups"]);
    s.run(&ops, &["vault", "prune", "--keep-last", "1", "--dry-run"]);
    s.run(&ops, &["vault", "prune", "--keep-last", "1"]);
    s.run(&ops, &["key", "deactivate", "DSET.PRIM.PAY.key001"]);
    s.run(&ops, &["key", "destroy", "DSET.PRIM.PAY.key001", "--crypto-erase"]);
    let escrow = ["key", "recover", "DSET.PRIM.PAY.key001", "--escrow", "--share", &share, "--key", &key];
    s.run(&ops, &escrow);
    s.run(&ops, &[&escrow[..], &["--share", &alice_share, "--key", &alice_key]].concat());
    s.run(&ops, &["key", "deactivate", "DSET.PRIM.PAY.key001"]);
    s.run(&ops, &["key", "destroy", "DSET.PRIM.PAY.key001", "--crypto-erase"]);
    let ksb = ops.json(&["keystore", "backups"])[0]["id"].as_str().unwrap().to_string();
    s.run(&ops, &["key", "recover", "DSET.PRIM.PAY.key001", "--from", &ksb]);
    s.run(&ops, &["escrow", "purge", "DSET.PRIM.PAY.key001"]);
    s.run(&ops, &["key", "archive", "DSET.PRIM.KS.key002"]);
    s.run(&ops, &["key", "restore", "DSET.PRIM.KS.key002"]);
    s.run(&ops, &["key", "destroy", "DSET.PRIM.KS.key002", "--wait", "1h"]);
    s.run(&ops, &["key", "ls", "DSET.PRIM.KS.*"]);
    s.run(&ops, &["key", "show", "DSET.PRIM.KS.key002"]);
    s.run(&ops, &["key", "cancel-destroy", "DSET.PRIM.KS.key002"]);

    s.part("master keys");
    s.run(&ops, &["mk", "status"]);
    s.run(&ops, &["mk", "load-new", "--generate"]);
    s.run(&ops, &["mk", "clear-new"]);
    s.run(&ops, &["mk", "make-part", "--custodian", "ops", "--output", &s.path("part1")]);
    s.run(&ops, &["mk", "load-new", "--part", &s.path("part1")]);
    s.run(&ops, &["mk", "clear-new"]);
    s.run(&ops, &["mk", "load-new", "--generate"]);
    s.run(&ops, &["mk", "activate"]);
    s.run(&ops, &["mk", "reencipher"]);
    s.run(&ops, &["ds", "get", "PAY.MASTER"]);

    s.part("dual control");
    s.run(&ops, &["config", "set", "dual-control", "key-destroy"]);
    s.run(&ops, &["key", "destroy", "DSET.PRIM.KS.key003"]);
    s.run(&ops, &["request", "ls"]);
    s.run(&ops, &["request", "show", "1"]);
    s.run(&ops, &["request", "approve", "1"]);
    s.run(&sam, &["request", "deny", "1"]);
    s.run(&ops, &["key", "destroy", "DSET.PRIM.KS.key003"]);
    s.run(&ops, &["request", "withdraw", "2"]);
    s.run(&ops, &["key", "destroy", "DSET.PRIM.KS.key003"]);
    s.run(&sam, &["request", "approve", "3"]);
    s.run(&ops, &["request", "show", "42"]);

    s.part("audit, catalog, risk and checks");
    s.run(&ops, &["audit", "ls", "--limit", "3"]);
    s.run(&ops, &["audit", "verify"]);
    s.run(&ops, &["audit", "export", "--to", "offsite"]);
    s.run(&ops, &["audit", "verify", "--against", "offsite"]);
    s.run(&ops, &["audit", "accept-rollback"]);
    s.run(&ops, &["catalog", "verify"]);
    s.run(&ops, &["catalog", "rotate-key"]);
    s.run(&ops, &["risk", "report", "PAY.MASTER"]);
    s.run(&ops, &["risk", "report", "ZZZ.**"]);
    s.run(&ops, &["risk", "drill", "PAY.MASTER", "--threat", "data-key-loss", "--scratch", &s.path("scratch")]);
    s.run(&ops, &["monitor"]);
    s.run(&ops, &["fsck"]);
    s.run(&ops, &["gc", "--dry-run"]);
    s.run(&ops, &["gc", "--grace", "0s"]);
    s.run(&ops, &["repo", "migrate", "--to", "sqlite"]);

    s.part("taking things away");
    s.run(&ops, &["ds", "rm", "PAY.RESTORED"]);
    s.run(&ops, &["policy", "rm", "pay"]);
    s.run(&ops, &["user", "rm", "app1"]);

    s.part("a lost HSM rebuilt from escrow");
    std::fs::remove_file(root.join("vault").join("hsm.sealed")).unwrap();
    s.run(&ops, &["ds", "get", "PAY.MASTER"]);
    let rebuild = ["vault", "rebuild", "--share", &share, "--share", &alice_share, "--key", &key, "--key", &alice_key];
    s.run(&ops, &[&rebuild[..], &["--kdf-memory-mib", "19", "--kdf-iterations", "2"]].concat());
    s.run(&ops, &["ds", "get", "PAY.BIG", "-o", &s.path("big.out")]);

    s.part("a vault recovered on a fresh machine");
    let fresh = Env::existing(root.join("fresh"));
    s.run(&fresh, &["vault", "recover", "--from", &s.path("offsite")]);
    s.run(&fresh, &["ds", "ls"]);

    (normalise(&s.log, &root), s.outputs)
}

#[test]
fn every_command_prints_text_as_pinned() {
    insta::assert_snapshot!("text", story(false).0);
}

/// The JSON is pinned, and follows the vocabulary of docs/json.md: one
/// document on standard output (or none), errors as one object on
/// standard error, one name per concept with one shape everywhere.
#[test]
fn every_command_prints_json_as_pinned() {
    let (log, printed) = story(true);
    let mut seen = Vocabulary::default();
    for p in &printed {
        seen.check(p);
    }
    seen.finish();
    insta::assert_snapshot!("json", log);
}

/// The rules of docs/json.md, checked over everything the story prints.
#[derive(Default)]
struct Vocabulary {
    /// Each name, the JSON type it holds, and the first command it was seen in.
    types: std::collections::BTreeMap<String, (&'static str, String)>,
    broken: Vec<String>,
}

/// Names retired for the one name of their concept (docs/json.md).
const RETIRED: &[&str] = &[
    "at",
    "since",
    "bytes",
    "chunks",
    "new_chunks",
    "stored",
    "last_access",
    "destroy_after",
    "objects_deleted",
    "removed",
    "key",
    "keys",
    "entries",
    "checked",
    "rows",
    "objects",
    "error_message",
];

/// Names whose type differs by the object they name (documented).
const VARIES: &[&str] = &["id"];

impl Vocabulary {
    fn check(&mut self, p: &Printed) {
        let data_out = p.command.starts_with("ds get") && !p.command.contains(" -o ");
        if p.exit == 0 && !data_out && p.stdout.trim().is_empty() {
            self.broken.push(format!("{}: succeeded and printed nothing", p.command));
        }
        if p.stdout.trim().is_empty() || data_out {
            if data_out && p.stdout.contains('{') {
                self.broken.push(format!("{}: JSON after the data on standard output", p.command));
            }
        } else {
            match serde_json::from_str::<serde_json::Value>(&p.stdout) {
                Ok(v) => {
                    let settings = p.command.starts_with("config ");
                    self.walk(&v, &p.command, "", settings)
                }
                Err(e) => self.broken.push(format!("{}: standard output is not one JSON document ({e})", p.command)),
            }
        }
        if p.exit != 0 {
            let err: Option<serde_json::Value> = serde_json::from_str(p.stderr.trim()).ok();
            let ok = err.as_ref().is_some_and(|e| {
                p.stderr.trim().lines().count() == 1
                    && e["error"]["code"] == p.exit
                    && e["error"]["kind"].is_string()
                    && e["error"]["message"].is_string()
            });
            if !ok {
                self.broken
                    .push(format!("{}: a failure's standard error is not one error object: {}", p.command, p.stderr));
            }
        } else if !p.stderr.is_empty() && !data_out {
            self.broken.push(format!("{}: standard error on success: {}", p.command, p.stderr));
        }
    }

    fn walk(&mut self, v: &serde_json::Value, command: &str, path: &str, settings: bool) {
        use serde_json::Value;
        match v {
            Value::Array(a) => a.iter().for_each(|x| self.walk(x, command, path, settings)),
            Value::Object(o) => {
                for (k, x) in o {
                    let here = format!("{path}.{k}");
                    // Setting names and clients' own attributes are data.
                    let names_are_data = settings || path.ends_with(".custom");
                    if !names_are_data {
                        self.name(k, x, command, &here);
                    }
                    self.walk(x, command, &here, false);
                }
            }
            Value::String(t) => {
                let time = jiff::Timestamp::from_str(t).is_ok();
                if time && !path.ends_with("_at") {
                    self.broken.push(format!("{command}: {path} holds a time and does not end in _at"));
                }
            }
            _ => {}
        }
    }

    fn name(&mut self, k: &str, x: &serde_json::Value, command: &str, path: &str) {
        use serde_json::Value;
        let snake = k.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
            && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !snake {
            self.broken.push(format!("{command}: {path} is not snake_case"));
        }
        if RETIRED.contains(&k) {
            self.broken.push(format!("{command}: {path} is a retired name (docs/json.md)"));
        }
        let ty = match x {
            Value::Null => return,
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        if k.ends_with("_at") && !(ty == "string" && jiff::Timestamp::from_str(x.as_str().unwrap_or("")).is_ok()) {
            self.broken.push(format!("{command}: {path} ends in _at and is not an RFC 3339 time"));
        }
        if (k.ends_with("_count") || k == "size" || k.ends_with("_size")) && !x.is_u64() {
            self.broken.push(format!("{command}: {path} is a count or size and not a whole number"));
        }
        if VARIES.contains(&k) {
            return;
        }
        match self.types.get(k) {
            Some((t, first)) if *t != ty => {
                self.broken.push(format!("{command}: {path} is a {ty}, but a {t} in `{first}`"));
            }
            Some(_) => {}
            None => {
                self.types.insert(k.to_string(), (ty, command.to_string()));
            }
        }
    }

    fn finish(self) {
        assert!(self.broken.is_empty(), "the JSON breaks docs/json.md's rules:\n{}", self.broken.join("\n"));
    }
}

use std::str::FromStr as _;

//! Nothing is lost: concurrent writers, interrupted copies and housekeeping,
//! tried with real `custos` processes on real files — races between
//! processes started together, and kills injected at the syscalls where a
//! write becomes durable (strace's fault injection).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command as Process, Output, Stdio};

use common::*;

/// The words every message of a write that lost a race ends with.
const RETRY: &str = "run it again";

/// The syscalls where a write becomes durable or visible, and the catalog's writes.
const DURABLE: &str = "fsync,fdatasync,syncfs,rename,renameat2,link,unlink,pwrite64";

impl Env {
    /// `strace -f -qq STRACE_ARGS custos` on this vault, its arguments to
    /// be added.
    fn under_strace(&self, strace_args: &[&str]) -> Process {
        let mut p = Process::new("strace");
        p.args(["-f", "-qq"])
            .args(strace_args)
            .arg(assert_cmd::cargo::cargo_bin("custos"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CUSTOS_VAULT", &self.vault)
            .env("CUSTOS_PASSPHRASE", PASS)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        p
    }

    fn spawn(&self, args: &[&str]) -> Child {
        Process::new(assert_cmd::cargo::cargo_bin("custos"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CUSTOS_VAULT", &self.vault)
            .env("CUSTOS_PASSPHRASE", PASS)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Run `custos ARGS` under strace, SIGKILLing it at the `n`th of the
    /// syscalls that make writes durable or visible; true when it was killed
    /// (false once `n` is past the last such call and it ran to its end).
    fn killed_at(&self, args: &[&str], n: usize) -> bool {
        self.killed_at_call(args, DURABLE, n)
    }

    /// [`Env::killed_at`] counting only `calls`. strace counts each thread's
    /// calls on its own, so a kill in a worker's writes needs a list the
    /// main thread (the catalog's writes) does not exhaust first.
    fn killed_at_call(&self, args: &[&str], calls: &str, n: usize) -> bool {
        let trace = format!("trace={calls}");
        let inject = format!("inject={calls}:signal=KILL:when={n}");
        let o = self
            .under_strace(&["-o", "/dev/null", "-e", &trace, "-e", &inject])
            .args(["--threads", "1"])
            .args(args)
            .output()
            .expect("strace runs (apt-get install strace)");
        // strace exits with the tracee's status; a killed tracee shows as
        // the signal's number + 128, or as a signal.
        use std::os::unix::process::ExitStatusExt;
        o.status.signal() == Some(9) || o.status.code() == Some(128 + 9)
    }
}

fn wait(children: Vec<Child>) -> Vec<Output> {
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

/// Every process either succeeded or lost a race with the retryable message.
fn only_retryable_failures(outs: &[Output], what: &str) -> usize {
    let mut ok = 0;
    for o in outs {
        let err = String::from_utf8_lossy(&o.stderr);
        if o.status.success() {
            ok += 1;
        } else {
            assert!(err.contains(RETRY) && err.trim_end().lines().count() == 1, "{what}: {err}");
        }
    }
    ok
}

#[test]
fn concurrent_puts_of_one_dataset_keep_exactly_one_content() {
    let e = Env::new();
    e.ok(&["ds", "put", "CONC.ONE", Env::s(&e.file("first", &data(100_000, 0)))]);
    // Four rounds of each size in CI (each round up to 17 processes at
    // once); CUSTOS_RACE_ROUNDS=200 for a long hunt.
    let rounds: usize = std::env::var("CUSTOS_RACE_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    for n in [2usize, 4, 8] {
        for round in 0..rounds {
            // Contents of three chunks, sharing their first chunk, so writers
            // also race on reusing the previous generation's chunks.
            let contents: Vec<Vec<u8>> = (0..n)
                .map(|i| {
                    let mut c = data(65_536, 1);
                    c.extend(data(150_000, (n * 31 + round * 7 + i) as u8));
                    c
                })
                .collect();
            let files: Vec<PathBuf> = contents.iter().enumerate().map(|(i, c)| e.file(&format!("in{i}"), c)).collect();
            let mut children: Vec<Child> =
                files.iter().map(|f| e.spawn(&["ds", "put", "CONC.ONE", Env::s(f)])).collect();
            // New datasets of one application at the same time: each needs a
            // template key, and they race for its label.
            let fresh: Vec<String> = (0..n).map(|i| format!("CONC.N{n}R{round}I{i}")).collect();
            children.extend(fresh.iter().map(|d| e.spawn(&["ds", "put", d, Env::s(&files[0])])));
            // And a reader: the generation it opened stays readable while
            // writers replace it (what they release waits for gc).
            let read_to = e.dir.path().join("read");
            children.push(e.spawn(&["ds", "get", "CONC.ONE", "-o", Env::s(&read_to)]));
            let mut outs = wait(children);
            let read = outs.pop().unwrap();
            assert!(read.status.success(), "a reader among writers: {}", String::from_utf8_lossy(&read.stderr));
            let (puts, news) = outs.split_at(n);
            let won = only_retryable_failures(puts, "a racing put");
            assert!(won >= 1, "some writer of round {round} must win");
            for (o, d) in news.iter().zip(&fresh) {
                assert!(o.status.success(), "new dataset {d}: {}", String::from_utf8_lossy(&o.stderr));
            }
            let got = e.run(&["ds", "get", "CONC.ONE"]).stdout;
            let winners: Vec<&Vec<u8>> =
                contents.iter().zip(puts).filter(|(_, o)| o.status.success()).map(|(c, _)| c).collect();
            assert!(winners.contains(&&got), "n={n} round {round}: the dataset is none of the contents written");
            e.ok(&["ds", "verify", "CONC.ONE"]);
        }
    }
    for d in e.json(&["ds", "ls"]).as_array().unwrap() {
        e.ok(&["ds", "verify", d["name"].as_str().unwrap()]);
    }
    // Nothing the catalog needs is missing or damaged, and what the losers
    // left is only ever unreferenced (for gc).
    let f = e.run(&["fsck", "--read-data"]);
    assert!(f.status.success(), "{}", String::from_utf8_lossy(&f.stdout));
}

#[test]
fn concurrent_backups_to_one_volume_all_verify() {
    let e = Env::new();
    let off = e.dir.path().join("off");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B"]);
    let rounds: usize = std::env::var("CUSTOS_RACE_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    for round in 0..rounds {
        for (i, d) in ["BK.ONE", "BK.TWO"].iter().enumerate() {
            let mut c = data(65_536, 9);
            c.extend(data(100_000, (round * 2 + i) as u8));
            e.ok(&["ds", "put", d, Env::s(&e.file("in", &c))]);
        }
        let run = |m: &str| e.spawn(&["backup", "run", "BK.**", "--method", m, "--to", "offsite"]);
        let outs = wait(vec![run("logical"), run("logical"), run("raw"), run("raw")]);
        only_retryable_failures(&outs, "a racing backup");
        // Every listed backup reads back whole.
        all_backups_verify(&e, &format!("round {round}"));
    }
    // Every round's generation of each dataset has a raw and a logical copy.
    let backups = e.json(&["backup", "ls"]);
    for method in ["raw", "logical"] {
        let n = backups.as_array().unwrap().iter().filter(|b| b["method"] == method).count();
        assert!(n >= 2 * rounds, "{n} {method} backups for {rounds} rounds");
    }
    // The newest restores to the dataset's content.
    let last = e.run(&["ds", "get", "BK.ONE"]).stdout;
    e.ok(&["restore", "BK.ONE"]);
    assert_eq!(e.run(&["ds", "get", "BK.ONE"]).stdout, last);
}

/// Kill `args` at each durable step of a small run in turn, run it again
/// plainly, and check with `check` after every round; `prepare` makes
/// fresh work before each kill. Returns how many kills hit.
/// Two passes: kills at each durable step, then at each `write` (where a
/// chunk's body and tail are written apart).
fn kill_at_every_step(e: &Env, args: &[&str], prepare: impl FnMut(usize), check: impl Fn(usize)) -> usize {
    kill_at_steps(e, args, &[DURABLE, "write"], prepare, check)
}

/// [`kill_at_every_step`] with one pass per list of syscalls in `passes`.
fn kill_at_steps(
    e: &Env,
    args: &[&str],
    passes: &[&str],
    mut prepare: impl FnMut(usize),
    check: impl Fn(usize),
) -> usize {
    let mut hits = 0;
    for &calls in passes {
        let mut finished = false;
        for n in 1..400 {
            prepare(n);
            let killed = e.killed_at_call(args, calls, n);
            let again = e.run(args);
            assert!(
                again.status.success(),
                "{args:?} after a kill at {calls} {n}: {}",
                String::from_utf8_lossy(&again.stderr)
            );
            check(n);
            if !killed {
                finished = true;
                break;
            }
            hits += 1;
        }
        assert!(finished, "{args:?} never ran to its end under strace");
    }
    hits
}

fn all_backups_verify(e: &Env, when: &str) {
    let o = e.run(&["backup", "verify", "--read-data"]);
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{when}: {out}\n{}", what_the_catalog_says(e, &out));
}

/// For a failure that names objects "(id HEX)": what the catalog records
/// about each (who lists it, its trash row or tombstone, the deletion
/// count), so that a race that lost one can be traced from the CI log.
fn what_the_catalog_says(e: &Env, out: &str) -> String {
    let c = rusqlite::Connection::open(e.vault.join("custos.db")).unwrap();
    let mut said = String::new();
    let deletions: Option<String> =
        c.query_row("SELECT value FROM settings WHERE key = 'trash.deletions'", [], |r| r.get(0)).ok();
    said += &format!("deletion count: {deletions:?}\n");
    for id in out.split("(id ").skip(1).filter_map(|s| s.split(')').next()) {
        let Ok(bytes) = hex::decode(id) else { continue };
        let rows = |sql: &str| -> Vec<String> {
            let mut st = c.prepare(sql).unwrap();
            let n = st.column_count();
            st.query_map([&bytes], |r| {
                Ok((0..n).map(|i| format!("{:?}", r.get_ref(i).unwrap())).collect::<Vec<_>>().join(" "))
            })
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
        };
        said += &format!(
            "object {id}: trash {:?}; backups {:?}; generations {:?}\n",
            rows("SELECT * FROM trash WHERE object = ?1"),
            rows("SELECT b.id, b.method, b.volume, b.generation, b.created_at FROM backup_chunks c JOIN backups b ON b.id = c.backup_id WHERE c.chunk_id = ?1"),
            rows("SELECT g.generation, g.volume FROM generation_chunks c JOIN generations g ON g.dataset_id = c.dataset_id AND g.generation = c.generation WHERE c.chunk_id = ?1"),
        );
    }
    said
}

#[test]
fn killed_raw_backup_rerun_always_verifies() {
    let e = Env::new();
    let off = e.dir.path().join("off");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B"]);
    let content = std::cell::RefCell::new(Vec::new());
    let hits = kill_at_every_step(
        &e,
        &["backup", "run", "KR.**", "--method", "raw", "--to", "offsite"],
        |n| {
            // Incompressible, so each chunk is written in two parts (the
            // page-aligned body with direct I/O, then the tail): a kill
            // between them is what left short chunks behind.
            let c = noise(140_000, n as u64);
            e.ok(&["ds", "put", "KR.DATA", Env::s(&e.file("in", &c))]);
            *content.borrow_mut() = c;
        },
        |n| {
            all_backups_verify(&e, &format!("step {n}"));
            assert_eq!(e.run(&["ds", "get", "KR.DATA"]).stdout, *content.borrow(), "step {n}");
        },
    );
    assert!(hits >= 3, "the kills hit only {hits} steps");
    // Every backup listed restores its generation.
    let b = e.json(&["backup", "ls"]);
    assert!(b.as_array().unwrap().len() > hits / 2);
}

#[test]
fn killed_mirror_add_rerun_is_in_sync() {
    let e = Env::new();
    for i in 0..3 {
        e.ok(&["ds", "put", &format!("MI.D{i}"), Env::s(&e.file("in", &noise(140_000, i as u64)))]);
    }
    let sec = e.dir.path().join("sec");
    e.ok(&["volume", "add", "sec", "--path", Env::s(&sec), "--site", "B"]);
    kill_at_every_step(
        &e,
        &["mirror", "add", "default", "sec"],
        |_| {
            // An empty secondary again for every round.
            let _ = e.run(&["mirror", "rm", "default"]);
            for sub in ["chunks", "manifests"] {
                for f in walk_files(&sec.join(sub)) {
                    std::fs::remove_file(f).unwrap();
                }
            }
        },
        |n| {
            // Whatever the kill left, the rerun made every object whole there.
            let st = e.json(&["mirror", "status"]);
            assert_eq!(st[0]["missing_count"], 0, "step {n}: {st}");
            for f in walk_files(&sec.join("chunks")) {
                let name = f.file_name().unwrap().to_string_lossy().to_string();
                if name.ends_with(".tmp") {
                    continue; // a killed run's temp file: never read, removed by `custos gc`
                }
                let primary = e.vault.join("volumes/default/chunks").join(&name[..2]).join(&name);
                assert_eq!(std::fs::read(&f).unwrap(), std::fs::read(primary).unwrap(), "step {n}: {name}");
            }
        },
    );
    for i in 0..3 {
        e.ok(&["ds", "verify", &format!("MI.D{i}")]);
    }
}

#[test]
fn killed_migration_and_recall_rerun_always_read_back() {
    let e = Env::new();
    let tape = e.dir.path().join("tape");
    e.ok(&["volume", "add", "tape", "--path", Env::s(&tape), "--site", "B", "--medium", "tape"]);
    let content = noise(200_000, 3);
    e.ok(&["ds", "put", "MG.DATA", Env::s(&e.file("in", &content))]);
    for args in [&["hsm", "migrate", "MG.DATA", "--to", "tape"][..], &["hsm", "recall", "MG.DATA"][..]] {
        let migrate = args[1] == "migrate";
        let hits = kill_at_every_step(
            &e,
            args,
            |_| {
                // What a killed move had claimed for deletion but never
                // deleted blocks moving back until gc takes it over: the
                // operator's step after a crash.
                e.ok(&["gc", "--grace", "0s"]);
                // Start each round from the other side.
                let on_tape = e.json(&["ds", "info", "MG.DATA"])["current"]["volume"] == "tape";
                if migrate && on_tape {
                    e.ok(&["hsm", "recall", "MG.DATA"]);
                } else if !migrate && !on_tape {
                    e.ok(&["hsm", "migrate", "MG.DATA", "--to", "tape"]);
                }
            },
            |n| {
                let info = e.json(&["ds", "info", "MG.DATA"]);
                let want = if migrate { "tape" } else { "default" };
                assert_eq!(info["current"]["volume"], want, "{args:?} step {n}");
                e.ok(&["ds", "verify", "MG.DATA"]);
            },
        );
        assert!(hits >= 3, "{args:?}: the kills hit only {hits} steps");
    }
    assert_eq!(e.run(&["ds", "get", "MG.DATA"]).stdout, content);
}

#[test]
fn killed_due_destruction_never_bricks_the_vault() {
    let e = Env::new();
    e.ok(&["ds", "put", "OTHER.DATA", Env::s(&e.file("o", b"still readable"))]);
    let label = std::cell::RefCell::new(String::new());
    // Destruction writes only the catalog (no chunk is written), so the
    // durable steps are the ones to kill at.
    let hits = kill_at_steps(
        &e,
        &["ds", "verify", "OTHER.DATA"],
        &[DURABLE],
        |_| {
            // A key due for destruction before every round (the catalog's
            // rows are authenticated: the wait passes, it is not edited).
            let k = e.json(&["key", "create", "--app", "DOOM", "--activate"]);
            let l = k["label"].as_str().unwrap().to_string();
            e.ok(&["key", "deactivate", &l]);
            e.ok(&["key", "destroy", &l, "--wait", "1s"]);
            std::thread::sleep(std::time::Duration::from_millis(1100));
            *label.borrow_mut() = l;
        },
        |n| {
            // Every other command works, and the key ends destroyed.
            assert_eq!(e.run(&["ds", "get", "OTHER.DATA"]).stdout, b"still readable", "step {n}");
            e.ok(&["audit", "verify"]);
            let k = e.json(&["key", "show", &label.borrow()]);
            assert_eq!(k["state"], "destroyed", "step {n}: {k}");
        },
    );
    assert!(hits >= 2, "the kills hit only {hits} steps");
}

/// Every command that opens the vault carries out due destructions (every
/// server's request, too; one run without the HSM leaves it to the next):
/// started together after a deadline, they destroy each key once and audit
/// it once.
#[test]
fn a_due_destruction_is_carried_out_once_by_commands_started_together() {
    let e = Env::new();
    e.ok(&["ds", "put", "ONCE.DATA", Env::s(&e.file("o", b"read by all"))]);
    let labels: Vec<String> = (0..6)
        .map(|_| {
            let k = e.json(&["key", "create", "--app", "ONCE", "--activate"]);
            let l = k["label"].as_str().unwrap().to_string();
            e.ok(&["key", "deactivate", &l]);
            e.ok(&["key", "destroy", &l, "--wait", "2s"]);
            l
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let outs = wait((0..8).map(|_| e.spawn(&["ds", "get", "ONCE.DATA"])).collect());
    for o in &outs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let log = e.json(&["audit", "ls"]);
    for l in &labels {
        assert_eq!(e.json(&["key", "show", l])["state"], "destroyed", "{l}");
        let n = log
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["object"] == l.as_str() && x["action"] == "key destroy (waiting period over)")
            .count();
        assert_eq!(n, 1, "{l} destroyed {n} times: {log:#}");
    }
    e.ok(&["audit", "verify"]);
}

#[test]
fn restore_of_another_datasets_backup_is_refused() {
    let e = Env::new();
    let off = e.dir.path().join("off");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B"]);
    e.ok(&["ds", "put", "A.ONE", Env::s(&e.file("a", b"a one, old"))]);
    e.ok(&["ds", "put", "B.ONE", Env::s(&e.file("b", b"b one"))]);
    let b = e.json(&["backup", "run", "A.ONE", "--to", "offsite"]);
    let id = b[0]["id"].as_u64().unwrap().to_string();
    e.ok(&["ds", "put", "A.ONE", Env::s(&e.file("a2", b"a one, newest"))]);
    let err = e.fails(&["restore", "B.ONE", "--backup", &id], 1);
    assert!(err.contains("is a copy of A.ONE, not of B.ONE"), "{err}");
    assert_eq!(e.run(&["ds", "get", "A.ONE"]).stdout, b"a one, newest", "A.ONE keeps its newest generation");
    // With --as the content goes where it is told, and the message says whose it is.
    let out = e.ok(&["restore", "B.ONE", "--backup", &id, "--as", "B.ONE"]);
    assert!(out.contains("copy of A.ONE) as B.ONE"), "{out}");
    assert_eq!(e.run(&["ds", "get", "B.ONE"]).stdout, b"a one, old");
    assert_eq!(e.run(&["ds", "get", "A.ONE"]).stdout, b"a one, newest");
}

#[test]
fn restore_repairs_a_damaged_chunk_of_the_same_content() {
    let e = Env::new();
    let off = e.dir.path().join("off");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B"]);
    let content = data(200_000, 5);
    e.ok(&["ds", "put", "REP.DATA", Env::s(&e.file("in", &content))]);
    e.ok(&["backup", "run", "REP.DATA", "--to", "offsite"]);
    // Silent damage to a chunk of the current generation.
    let chunk = &e.chunk_paths("REP.DATA")[1];
    let mut bytes = std::fs::read(chunk).unwrap();
    bytes[100] ^= 1;
    std::fs::write(chunk, bytes).unwrap();
    e.fails(&["ds", "verify", "REP.DATA"], 4);
    // The backup holds the current content: restore writes fresh chunks, not
    // a new manifest over the damaged one.
    e.ok(&["restore", "REP.DATA"]);
    e.ok(&["ds", "verify", "REP.DATA"]);
    assert_eq!(e.run(&["ds", "get", "REP.DATA"]).stdout, content);
}

#[test]
fn a_catalog_that_is_not_one_is_refused_not_renewed() {
    let e = Env::new();
    let db = e.vault.join("custos.db");
    for (what, bytes) in [
        ("empty", Vec::new()),
        ("truncated", std::fs::read(&db).unwrap()[..1000].to_vec()),
        ("foreign", b"SQLite format 3\0 but then nonsense, not a Custos catalog at all".to_vec()),
    ] {
        let keep = std::fs::read(&db).unwrap();
        for side in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(e.vault.join(format!("custos.db{side}")));
        }
        std::fs::write(&db, &bytes).unwrap();
        for args in [&["ds", "ls"][..], &["user", "ls"][..]] {
            let o = e.run(args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(4), "{what} {args:?}: {err}");
            assert!(err.contains("not a Custos catalog") && err.contains("restore custos.db"), "{what}: {err}");
            assert!(!err.contains("writable"), "{what}: no advice about a full disk: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{what}: said once: {err}");
        }
        assert_eq!(std::fs::read(&db).unwrap(), bytes, "{what}: nothing was written to it");
        std::fs::write(&db, keep).unwrap();
    }
    e.ok(&["ds", "ls"]);
}

#[test]
fn out_of_range_arguments_are_usage_errors_not_crashes() {
    let e = Env::new();
    e.ok(&["ds", "put", "TINY.DATA", Env::s(&e.file("t", b"sixsix"))]);
    let k = e.json(&["key", "create", "--app", "BND", "--activate"]);
    let label = k["label"].as_str().unwrap();
    e.ok(&["key", "deactivate", label]);
    let before = e.state();
    for args in [
        &["key", "destroy", label, "--wait", "99999999999d"][..],
        &["key", "create", "--app", "BND", "--expires", "9999999999d"][..],
        &["--threads", "100000", "ds", "get", "TINY.DATA"][..],
        &["--threads", "0", "ds", "get", "TINY.DATA"][..],
    ] {
        let o = e.run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked") && err.contains("give"), "{args:?}: says what to give: {err}");
    }
    assert_eq!(e.state(), before, "nothing changed");
    assert!(e.ok(&["config", "get", "key.destroy.wait"]).contains('0'));
}

#[test]
fn get_onto_a_device_writes_to_it_and_onto_a_file_replaces_it() {
    let e = Env::new();
    e.ok(&["ds", "put", "DEV.DATA", Env::s(&e.file("d", &data(100_000, 2)))]);
    // A FIFO stands for any non-regular target (a device, a pipe): it is
    // written to, not replaced by a regular file.
    let fifo = e.dir.path().join("fifo");
    assert!(Process::new("mkfifo").arg(&fifo).status().unwrap().success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    e.ok(&["ds", "get", "DEV.DATA", "-o", Env::s(&fifo)]);
    use std::os::unix::fs::FileTypeExt;
    // Checked before joining the reader, which would wait for ever on a
    // FIFO that was renamed over.
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo(), "still a FIFO");
    assert_eq!(reader.join().unwrap(), data(100_000, 2));
    // A device node of the test's own (the null device's numbers), never
    // the system's /dev/null: a regression must not damage the machine.
    let null = e.dir.path().join("null");
    if Process::new("mknod").arg(&null).args(["c", "1", "3"]).status().is_ok_and(|s| s.success()) {
        e.ok(&["ds", "get", "DEV.DATA", "-o", Env::s(&null)]);
        assert!(std::fs::metadata(&null).unwrap().file_type().is_char_device(), "the device node is still one");
    } else {
        eprintln!("skipping the device node: mknod needs root");
    }
    let out = e.dir.path().join("out");
    std::fs::write(&out, b"old").unwrap();
    e.ok(&["ds", "get", "DEV.DATA", "-o", Env::s(&out)]);
    assert_eq!(std::fs::read(&out).unwrap(), data(100_000, 2));
}

#[test]
fn prune_keeps_the_newest_generation_when_the_clock_went_back() {
    // The catalog's backup times are what the clock said; a clock set back
    // makes the newer backup look older. Edit the times as a lying clock would.
    let e = Env::new();
    let off = e.dir.path().join("off");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B"]);
    e.ok(&["ds", "put", "CLK.DATA", Env::s(&e.file("1", b"generation one"))]);
    e.ok(&["backup", "run", "CLK.DATA", "--to", "offsite"]);
    e.ok(&["ds", "put", "CLK.DATA", Env::s(&e.file("2", b"generation two"))]);
    e.ok(&["backup", "run", "CLK.DATA", "--to", "offsite"]);
    {
        let c = rusqlite::Connection::open(e.vault.join("custos.db")).unwrap();
        c.execute("UPDATE backups SET created_at = created_at - 86400000000 * 365 WHERE source_generation = 2", [])
            .unwrap();
    }
    e.ok(&["backup", "prune", "--keep-last", "1"]);
    let left = e.json(&["backup", "ls"]);
    assert_eq!(left.as_array().unwrap().len(), 1);
    assert_eq!(left[0]["source_generation"], 2, "{left}");
}

#[test]
fn hsm_run_goes_past_a_leftover_on_tape_and_a_failing_dataset() {
    let e = Env::new();
    let tape = e.dir.path().join("tape");
    e.ok(&["volume", "add", "tape", "--path", Env::s(&tape), "--site", "B", "--medium", "tape"]);
    e.ok(&["hsm", "rule", "add", "all", "--pattern", "HR.**", "--backup-to", "tape", "--method", "raw"]);
    for d in ["HR.A", "HR.B", "HR.C"] {
        e.ok(&["ds", "put", d, Env::s(&e.file("x", d.as_bytes()))]);
    }
    // An interrupted earlier copy left HR.B's manifest on the write-once tape.
    let info = e.json(&["ds", "info", "HR.B"]);
    let id = info["id"].as_str().unwrap();
    let manifest_dir = tape.join("manifests").join(id);
    std::fs::create_dir_all(&manifest_dir).unwrap();
    let ds_id = custos_core::model::DatasetId::from_hex(id).unwrap();
    let src =
        custos_store::LocalVolume::open("default", &e.vault.join("volumes/default")).unwrap().manifest_path(&ds_id, 1);
    std::fs::copy(&src, manifest_dir.join(format!("{:016x}", 1))).unwrap();
    // And HR.A's chunk on the default volume is gone.
    std::fs::remove_file(&e.chunk_paths("HR.A")[0]).unwrap();
    let o = e.run(&["hsm", "run", "--without-keys"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success());
    assert!(out.contains("HR.A [all] failed"), "{out}");
    assert!(out.contains("HR.B [all] backup: made"), "the same leftover is reused: {out}");
    assert!(out.contains("HR.C [all] backup: made"), "later datasets are processed: {out}");
    all_backups_verify(&e, "after hsm run");
}

#[test]
fn fsck_names_what_is_missing_and_gc_removes_what_interrupted_writes_left() {
    let e = Env::new();
    e.ok(&["ds", "put", "GC.KEEP", Env::s(&e.file("k", &data(200_000, 1)))]);
    assert!(e.ok(&["fsck"]).contains("everything the catalog needs is there"));
    // A put killed half-way leaves chunks and temp files nothing records.
    let big = e.file("big", &noise(3_000_000, 7));
    let mut n = 40;
    while !e.killed_at(&["ds", "put", "GC.BIG", Env::s(&big)], n) {
        n /= 2;
        assert!(n > 0, "the put was never interrupted");
    }
    let before = e.json(&["fsck"]);
    let stray = before["volumes"][0]["unreferenced_count"].as_u64().unwrap()
        + before["volumes"][0]["temp_file_count"].as_u64().unwrap();
    assert!(stray > 0, "the killed put left objects: {before}");
    // Within the grace period nothing goes.
    let dry = e.json(&["gc", "--dry-run", "--grace", "0s"]);
    assert!(dry["orphan_count"].as_u64().unwrap() + dry["temp_file_count"].as_u64().unwrap() >= stray, "{dry}");
    let kept = e.json(&["gc"]);
    assert_eq!(kept["orphan_count"], 0, "younger than the default grace of 24h: {kept}");
    let done = e.json(&["gc", "--grace", "0s"]);
    assert!(done["orphan_count"].as_u64().unwrap() + done["temp_file_count"].as_u64().unwrap() >= stray, "{done}");
    let after = e.json(&["fsck"]);
    assert_eq!(after["volumes"][0]["unreferenced_count"], 0, "{after}");
    assert_eq!(after["volumes"][0]["temp_file_count"], 0, "{after}");
    assert_eq!(e.run(&["ds", "get", "GC.KEEP"]).stdout, data(200_000, 1), "gc took nothing needed");

    // A replaced generation waits in the trash, then goes.
    e.ok(&["ds", "put", "GC.KEEP", Env::s(&e.file("k2", &data(200_000, 2)))]);
    let f = e.json(&["fsck"]);
    assert!(f["volumes"][0]["in_trash_count"].as_u64().unwrap() >= 1, "{f}");
    let g = e.json(&["gc", "--grace", "0s"]);
    assert!(g["released_count"].as_u64().unwrap() >= 1, "{g}");

    // Missing, truncated and damaged chunks are named, and fsck exits 4.
    let chunks = e.chunk_paths("GC.KEEP");
    std::fs::remove_file(&chunks[0]).unwrap();
    std::fs::write(&chunks[1], b"short").unwrap();
    let mut b = std::fs::read(&chunks[2]).unwrap();
    b[60] ^= 1;
    std::fs::write(&chunks[2], b).unwrap();
    let o = e.run(&["fsck"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(4), "{out}");
    assert!(out.contains("MISSING chunk") && out.contains("truncated to 5 bytes"), "{out}");
    let o = e.run(&["fsck", "--read-data"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(4));
    assert!(out.contains("DAMAGED dataset GC.KEEP"), "{out}");
}

#[test]
fn ds_rm_on_an_unreachable_volume_says_so_and_gc_finishes_it() {
    let e = Env::new();
    let side = e.dir.path().join("side");
    e.ok(&["volume", "add", "side", "--path", Env::s(&side), "--site", "A"]);
    e.ok(&["ds", "put", "RM.ME", Env::s(&e.file("r", &data(150_000, 4))), "--volume", "side"]);
    let away = e.dir.path().join("away");
    std::fs::rename(&side, &away).unwrap();
    let o = e.run(&["ds", "rm", "RM.ME"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(7), "{err}");
    assert!(err.contains("could not be deleted") && err.contains("custos gc"), "{err}");
    assert_eq!(e.json(&["ds", "ls"]).as_array().unwrap().len(), 0, "the dataset is gone from the catalog");
    let f = e.run(&["fsck"]);
    assert_eq!(f.status.code(), Some(4), "an unreachable volume is reported");
    std::fs::rename(&away, &side).unwrap();
    let f = e.json(&["fsck"]);
    let side_check = f["volumes"].as_array().unwrap().iter().find(|v| v["volume"] == "side").unwrap().clone();
    assert!(side_check["in_trash_count"].as_u64().unwrap() >= 3, "{side_check}");
    // The failed deletion is taken up by the next gc at once.
    let g = e.json(&["gc"]);
    assert!(g["released_count"].as_u64().unwrap() >= 3, "{g}");
    assert_eq!(walk_files(&side.join("chunks")).len(), 0);
}

#[test]
fn a_copied_vault_directory_never_touches_the_originals_objects() {
    let e = Env::new();
    e.ok(&["ds", "put", "CP.ONE", Env::s(&e.file("1", &data(150_000, 1)))]);
    e.ok(&["ds", "put", "CP.TWO", Env::s(&e.file("2", &data(150_000, 2)))]);
    let copy = e.dir.path().join("vault-copy");
    assert!(Process::new("cp").arg("-a").arg(&e.vault).arg(&copy).status().unwrap().success());
    let c = e.at(copy.clone());
    let vols = c.json(&["volume", "ls"]);
    assert!(vols[0]["location"].as_str().unwrap().starts_with(Env::s(&copy)), "the copy uses its own volume: {vols}");
    c.ok(&["ds", "rm", "CP.ONE"]);
    c.ok(&["ds", "put", "CP.TWO", Env::s(&c.file("3", &data(150_000, 3)))]);
    c.ok(&["gc", "--grace", "0s"]);
    assert_eq!(c.run(&["ds", "get", "CP.TWO"]).stdout, data(150_000, 3));
    // The original has all it had.
    assert_eq!(e.run(&["ds", "get", "CP.ONE"]).stdout, data(150_000, 1));
    assert_eq!(e.run(&["ds", "get", "CP.TWO"]).stdout, data(150_000, 2));
    assert!(e.ok(&["fsck"]).contains("everything the catalog needs is there"));
}

#[test]
fn volumes_may_not_share_directories_or_belong_to_another_vault() {
    let e = Env::new();
    let default = e.vault.join("volumes").join("default");
    let off = e.dir.path().join("off");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B"]);
    let inside_off = off.join("deeper");
    let cases: Vec<(PathBuf, &str)> = vec![
        (default.clone(), "is volume default"),
        (e.vault.join("volumes"), "holds volume default"),
        (e.vault.clone(), "holds volume default"),
        (e.dir.path().to_path_buf(), "holds volume"),
        (e.vault.join("elsewhere"), "lies inside the vault directory"),
        (inside_off.clone(), "lies inside volume offsite"),
    ];
    for (path, says) in &cases {
        for medium in ["disk", "tape"] {
            let err = e.fails(&["volume", "add", "twin", "--path", Env::s(path), "--site", "C", "--medium", medium], 1);
            assert!(err.contains(says), "{} as {medium}: {err}", path.display());
        }
    }
    assert!(!inside_off.exists() && !e.vault.join("elsewhere").exists(), "a refused add leaves no directory");
    // A volume of another vault is refused by name.
    let other = Env::new();
    let theirs = other.dir.path().join("theirs");
    other.ok(&["volume", "add", "theirs", "--path", Env::s(&theirs), "--site", "B"]);
    let err = e.fails(&["volume", "add", "stolen", "--path", Env::s(&theirs), "--site", "B"], 7);
    assert!(err.contains("another vault"), "{err}");
}

#[test]
fn killed_escrow_rotation_leaves_every_key_a_working_escrow_copy() {
    let e = Env::new();
    for app in ["ESA", "ESB", "ESC"] {
        e.ok(&["key", "create", "--app", app, "--activate"]);
    }
    for c in ["ann", "bob", "cy"] {
        e.custodian(c);
    }
    let init = ["escrow", "init", "--threshold", "2", "--custodian", "ann", "--custodian", "bob", "--custodian", "cy"];
    e.ok(&init);
    // Every key with material is escrowed to a KBK whose three sealed
    // shares are all stored (the catalog is read directly: escrow copies
    // are not in JSON).
    let check = |when: &str| {
        let c = rusqlite::Connection::open(e.vault.join("custos.db")).unwrap();
        let mut st = c
            .prepare(
                "SELECT k.label, k.escrow_kbk, (SELECT COUNT(*) FROM escrow_shares s WHERE s.kbk = k.escrow_kbk)
                 FROM keys k WHERE k.wrapped IS NOT NULL",
            )
            .unwrap();
        let rows: Vec<(String, Option<String>, i64)> =
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
        for (label, kbk, shares) in rows {
            let kbk = kbk.unwrap_or_else(|| panic!("{when}: {label} has no escrow copy"));
            assert_eq!(shares, 3, "{when}: {label} is escrowed to {kbk}, whose shares are not all stored");
        }
        e.ok(&["ds", "ls"]);
        e.ok(&["escrow", "status"]);
    };
    check("first");
    let mut hits = 0;
    for n in 1..400 {
        let killed = e.killed_at(&init, n);
        check(&format!("after a kill at step {n}"));
        e.ok(&init);
        check(&format!("after the rerun of step {n}"));
        if !killed {
            break;
        }
        hits += 1;
    }
    assert!(hits >= 3, "the kills hit only {hits} steps");
}

/// `catalog rotate-key` killed at each durable step in turn: every time,
/// the catalog still verifies, the next command that opens the HSM finishes
/// a rotation that had begun (every row's MAC changes, under one new key),
/// and the old MACs are never accepted again.
#[test]
fn killed_catalog_key_rotation_resumes_and_the_catalog_verifies_throughout() {
    let e = Env::new();
    e.ok(&["key", "create", "--app", "ROT", "--activate"]);
    e.ok(&["ds", "put", "ROT.DATA", Env::s(&e.file("in", &data(70_000, 9)))]);
    let macs = || -> Vec<(String, Vec<u8>)> {
        let c = rusqlite::Connection::open(e.vault.join("custos.db")).unwrap();
        let mut st = c.prepare("SELECT 'principals ' || name, mac FROM principals WHERE name = 'admin' UNION ALL SELECT 'grants ' || principal || kind || pattern, mac FROM grants UNION ALL SELECT 'volumes ' || name, mac FROM volumes ORDER BY 1").unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    };
    let sound = |when: &str| {
        let v = e.json(&["catalog", "verify"]);
        assert!(v["faults"].as_array().unwrap().is_empty(), "{when}: {v}");
        assert_eq!(e.run(&["ds", "get", "ROT.DATA"]).stdout, data(70_000, 9), "{when}");
    };
    let rotate = ["catalog", "rotate-key"];
    let (mut hits, mut resumed) = (0, 0);
    for n in 1..400 {
        let before = macs();
        let killed = e.killed_at(&rotate, n);
        // The next command that opens the HSM finishes what was begun.
        sound(&format!("after a kill at step {n}"));
        let after = macs();
        let changed = before.iter().zip(&after).filter(|(b, a)| b.1 != a.1).count();
        assert!(
            changed == 0 || changed == after.len(),
            "step {n}: {changed} of {} rows moved to the new key",
            after.len()
        );
        if !killed {
            assert_eq!(changed, after.len(), "a rotation that ran to its end sealed every row anew");
            break;
        }
        hits += 1;
        resumed += usize::from(changed > 0);
        // The MACs from before the rotation no longer pass.
        if changed > 0 {
            let c = rusqlite::Connection::open(e.vault.join("custos.db")).unwrap();
            c.execute(
                "UPDATE principals SET mac = ?1 WHERE name = 'admin'",
                [&before.iter().find(|r| r.0 == "principals admin").unwrap().1],
            )
            .unwrap();
            drop(c);
            let o = e.run(&["catalog", "verify"]);
            assert_eq!(
                o.status.code(),
                Some(4),
                "an old MAC must not pass after the rotation: {}",
                String::from_utf8_lossy(&o.stdout)
            );
            let c = rusqlite::Connection::open(e.vault.join("custos.db")).unwrap();
            c.execute(
                "UPDATE principals SET mac = ?1 WHERE name = 'admin'",
                [&after.iter().find(|r| r.0 == "principals admin").unwrap().1],
            )
            .unwrap();
        }
    }
    assert!(hits >= 3, "the kills hit only {hits} steps");
    eprintln!("rotation: {hits} kills, {resumed} finished by the next command");
    assert!(resumed >= 1, "no kill left a rotation for the next command to finish");
    e.ok(&["audit", "verify"]);
}

/// Eight workers on one vault for a minute (CUSTOS_SOAK_SECS=3600 soaks), each
/// looping over puts, gets, backups, prunes, snapshots and key lifecycle:
/// nothing fails but retryable refusals, and afterwards every object
/// verifies and the audit log is intact.
#[test]
fn eight_mixed_workers_lose_nothing() {
    let e = Env::new();
    let off = e.dir.path().join("off");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B"]);
    let secs: u64 = std::env::var("CUSTOS_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let outcome = std::sync::Mutex::new((0usize, 0usize, Vec::<String>::new()));
    std::thread::scope(|s| {
        for w in 0..8usize {
            let (e, outcome) = (&e, &outcome);
            s.spawn(move || {
                let mine = format!("SOAK.W{w}");
                let mut last: Option<Vec<u8>> = None;
                let mut i = 0usize;
                while std::time::Instant::now() < deadline {
                    i += 1;
                    let content = data(70_000 + (i * 977 + w * 131) % 90_000, (w * 17 + i) as u8);
                    let file = e.dir.path().join(format!("w{w}"));
                    let read_to = e.dir.path().join(format!("r{w}"));
                    std::fs::write(&file, &content).unwrap();
                    let f = Env::s(&file);
                    // A label all workers race for, beside the sequence.
                    let label = "DSET.PRIM.SOAKK.key900";
                    let (args, wrote): (Vec<&str>, bool) = match (i + w) % 9 {
                        0 | 1 => (vec!["ds", "put", &mine, f], true),
                        2 => (vec!["ds", "put", "SOAK.SHARED", f], false),
                        3 => (vec!["ds", "get", "SOAK.SHARED", "-o", Env::s(&read_to)], false),
                        4 => (vec!["backup", "run", "SOAK.**", "--to", "offsite"], false),
                        5 => (vec!["backup", "run", "SOAK.**", "--method", "raw", "--to", "offsite"], false),
                        6 => (vec!["backup", "prune", "--keep-last", "2"], false),
                        7 => match i % 2 {
                            0 => (vec!["snapshot", "create", "SOAK.SHARED"], false),
                            _ => (vec!["gc", "--grace", "1s"], false),
                        },
                        _ => match i % 3 {
                            0 => (vec!["key", "create", "--app", "SOAKK", "--activate"], false),
                            1 => (vec!["key", "create", label], false),
                            _ => (vec!["key", "ls"], false),
                        },
                    };
                    let o = e.run(&args);
                    let err = String::from_utf8_lossy(&o.stderr).to_string();
                    let mut out = outcome.lock().unwrap();
                    out.0 += 1;
                    if o.status.success() {
                        if wrote {
                            last = Some(content);
                        }
                    } else if err.contains(RETRY) {
                        out.1 += 1;
                    } else if args.contains(&"SOAK.SHARED") && err.contains("no dataset named") {
                        // SOAK.SHARED before its first put.
                    } else if args[0] == "backup" && o.status.code() == Some(3) && err.contains("no dataset matches") {
                        // A backup before any worker's first put: said, exit 3.
                    } else if args[0] == "key" && err.contains("already exists") {
                        // The fixed label, once another worker made it.
                    } else {
                        out.2.push(format!("worker {w}: {args:?}: {err}"));
                    }
                }
                if let Some(c) = last {
                    assert_eq!(e.run(&["ds", "get", &mine]).stdout, c, "worker {w}'s dataset holds its last write");
                }
            });
        }
    });
    let (runs, retried, failures) = outcome.into_inner().unwrap();
    assert!(failures.is_empty(), "{} of {runs} commands failed for good:\n{}", failures.len(), failures.join("\n"));
    assert!(runs > 100, "only {runs} commands ran in {secs} s");
    eprintln!("{runs} commands, {retried} refused with the retryable message");
    all_backups_verify(&e, "after the soak");
    let f = e.run(&["fsck", "--read-data"]);
    assert!(f.status.success(), "{}{}", String::from_utf8_lossy(&f.stdout), String::from_utf8_lossy(&f.stderr));
    e.ok(&["audit", "verify"]);
}

/// The first commands that open a new vault's HSM, at once, each made an
/// audit key and the last stored won: the others' checkpoints then read as
/// forged. They now agree on the first one stored.
#[test]
fn first_commands_at_once_agree_on_the_audit_key() {
    for round in 0..3 {
        let e = Env::new();
        let f = e.file("in", b"first");
        let children: Vec<Child> =
            (0..6).map(|i| e.spawn(&["ds", "put", &format!("FIRST.R{round}D{i}"), Env::s(&f)])).collect();
        for o in wait(children) {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        let v = e.ok(&["audit", "verify"]);
        assert!(v.contains("intact"), "round {round}: {v}");
    }
}

/// What a traced command moved into place and what it made durable, in
/// the order strace saw them (`strace -y` names each descriptor's file).
#[derive(Debug, PartialEq)]
enum Seen {
    Placed { from: PathBuf, to: PathBuf },
    Synced(PathBuf),
    SyncedFilesystem,
}

/// The renames, links and syncs of one `strace -f -y` log.
fn durability_calls(log: &str) -> Vec<Seen> {
    let quoted = |rest: &str, n: usize| rest.split('"').nth(2 * n + 1).map(PathBuf::from);
    let mut seen = Vec::new();
    for line in log.lines() {
        // "PID call(args..." (an unfinished call's line has its arguments).
        let Some((_, call)) = line.split_once(' ') else { continue };
        let call = call.trim_start();
        if call.starts_with("syncfs(") {
            seen.push(Seen::SyncedFilesystem);
        } else if let Some(rest) = call.strip_prefix("fdatasync(").or_else(|| call.strip_prefix("fsync(")) {
            if let Some(path) = rest.split_once('<').and_then(|(_, r)| r.split_once('>')).map(|(p, _)| p) {
                // A file synced through its descriptor after its temp name
                // was removed (placed by a hard link).
                seen.push(Seen::Synced(path.trim_end_matches(" (deleted)").into()));
            }
        } else if ["renameat2(", "rename(", "linkat(", "link("].iter().any(|c| call.starts_with(c)) {
            if let (Some(from), Some(to)) = (quoted(call, 0), quoted(call, 1)) {
                seen.push(Seen::Placed { from, to });
            }
        }
    }
    seen
}

/// Commands that write objects make them durable before the catalog's
/// commit names them (ADR 0034): every chunk, pack and manifest moved into
/// a volume, and every exported file, is covered by a sync between its move
/// and the catalog's next sync (the commit) — a sync of the file itself
/// (under its temp name or its own) and of the directory it went into, or
/// a `syncfs`. A command that placed a few objects never syncs the whole
/// filesystem (another process's dirty pages are not waited for); one that
/// placed many syncs it once. An import of 1,100 small files (two batches,
/// each placing one pack that holds its chunks and manifests: ADR 0035), a
/// put of one dataset of twenty chunks (the tests' chunks are 64 KiB), an
/// export of three datasets and one of a thousand.
#[test]
fn writes_make_what_they_placed_durable_before_the_commit_and_few_never_sync_the_filesystem() {
    let e = Env::new();
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    for i in 0..1_100usize {
        let dir = tree.join(if i < 3 { "few".to_string() } else { format!("d{}", i % 3) });
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i:04}")), noise(30 + (i * 53) % 3_000, i as u64)).unwrap();
    }
    let big = src.path().join("big");
    std::fs::write(&big, noise(20 << 16, 7)).unwrap();
    let (few, many) = (src.path().join("few"), src.path().join("many"));
    let catalog = e.vault.join("custos.db");
    // Each command, and how many `syncfs` it makes.
    let commands: [(&[&str], usize); 4] = [
        (&["ds", "import", Env::s(&tree), "--prefix", "IMP"], 0),
        (&["ds", "put", "BIG.FILE", Env::s(&big)], 0),
        (&["ds", "export", "IMP.few", Env::s(&few)], 0),
        (&["ds", "export", "IMP", Env::s(&many)], 1),
    ];
    for (args, filesystem_syncs) in commands {
        let log = src.path().join("strace.log");
        let o = e
            .under_strace(&[
                "-y",
                "-o",
                Env::s(&log),
                "-e",
                "trace=rename,renameat2,link,linkat,fsync,fdatasync,syncfs",
            ])
            .args(args)
            .output()
            .expect("strace runs (apt-get install strace)");
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        let seen = durability_calls(&std::fs::read_to_string(&log).unwrap());
        let syncfs = seen.iter().filter(|s| **s == Seen::SyncedFilesystem).count();
        assert_eq!(syncfs, filesystem_syncs, "{args:?}: filesystem syncs");
        // The catalog's file and its write-ahead log.
        let catalog = catalog.to_string_lossy();
        let catalog_sync = |s: &Seen| matches!(s, Seen::Synced(p) if p.to_string_lossy().starts_with(&*catalog));
        let mut objects = 0;
        for (i, s) in seen.iter().enumerate() {
            let Seen::Placed { from, to: path } = s else { continue };
            let inside = [e.vault.join("volumes"), few.clone(), many.clone()].iter().any(|d| path.starts_with(d));
            let name = path.file_name().unwrap().to_string_lossy();
            if !inside || name.starts_with('.') {
                continue;
            }
            objects += 1;
            let after = &seen[i + 1..];
            let commit = after.iter().position(catalog_sync).unwrap_or(after.len());
            let before_commit = &after[..commit];
            if before_commit.contains(&Seen::SyncedFilesystem) {
                continue;
            }
            let synced = before_commit.contains(&Seen::Synced(path.clone()))
                || seen[..i + 1 + commit].contains(&Seen::Synced(from.clone()));
            assert!(synced, "{args:?}: {} was not synced before the commit", path.display());
            let dir = Seen::Synced(path.parent().unwrap().to_path_buf());
            assert!(
                before_commit.contains(&dir),
                "{args:?}: the directory of {} was not synced before the commit",
                path.display()
            );
        }
        assert!(objects >= 2, "{args:?} placed only {objects} objects: {seen:?}");
    }
    // What was written reads back.
    assert_eq!(std::fs::read(few.join("f0001")).unwrap(), noise(30 + 53, 1));
    assert_eq!(std::fs::read(many.join("d1").join("f0004")).unwrap(), noise(30 + 4 * 53, 4));
    assert_eq!(e.run(&["ds", "get", "BIG.FILE"]).stdout, noise(20 << 16, 7));
}

/// An import of thousands of small files goes in batches (one flush and one
/// commit each): killed anywhere — while chunks and manifests are stored,
/// at the flush, inside the catalog's commit — it leaves every dataset
/// absent or whole, and running it again (with `--replace`) finishes it.
#[test]
fn killed_import_of_thousands_of_files_leaves_each_dataset_absent_or_whole() {
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    let n = 1_100usize;
    let mut want = std::collections::HashMap::new();
    for i in 0..n {
        let dir = tree.join(format!("d{}", i / 500));
        std::fs::create_dir_all(&dir).unwrap();
        let body = noise(20 + (i * 37) % 900, i as u64);
        std::fs::write(dir.join(format!("f{i:04}")), &body).unwrap();
        want.insert(format!("IMP.d{}.f{i:04}", i / 500), body);
    }
    let import = ["ds", "import", Env::s(&tree), "--prefix", "IMP", "--replace"];
    // Two batches (1,024 files, then the rest), each written as one pack
    // that holds its chunks and manifests (ADR 0035). A thread of its own
    // seals them and moves each pack into place by a rename (its renames 1
    // and 2, the second while the first batch is committed); the main
    // thread flushes each pack with an `fdatasync` of it and an `fsync` of
    // its directories, then commits, the catalog syncing its write-ahead
    // log with `fdatasync` too (strace counts each thread's calls apart;
    // the main thread's `fdatasync` 1 and 2 and `fsync` 1 to 3 come as the
    // vault opens). Kills before the first pack is in place; with it in
    // place but not flushed (a pack of manifests nothing commits, which the
    // run again must read past); while its directories are synced; inside
    // the first batch's commit; at the second batch's pack, at its flush
    // (the first committed) and inside its commit.
    let kills = [
        ("renameat2", 1),
        ("fdatasync", 3),
        ("fsync", 5),
        ("fdatasync", 4),
        ("renameat2", 2),
        ("fdatasync", 5),
        ("fdatasync", 6),
    ];
    let mut hit = 0;
    for (call, at) in kills {
        let e = Env::new();
        let killed = e.killed_at_call(&import, call, at);
        hit += killed as usize;
        // Every dataset the catalog lists is whole: its size is the file's,
        // and every object it needs is there and authentic.
        let listed = e.json(&["ds", "ls", "IMP.**"]);
        let listed = listed.as_array().unwrap();
        for d in listed {
            let name = d["name"].as_str().unwrap();
            assert_eq!(d["current"]["size"].as_u64(), Some(want[name].len() as u64), "{name} after {call} {at}");
        }
        let f = e.run(&["fsck", "--read-data"]);
        assert!(f.status.success(), "after a kill at {call} {at}: {}", String::from_utf8_lossy(&f.stdout));
        for name in listed.iter().step_by(97).map(|d| d["name"].as_str().unwrap()) {
            assert_eq!(e.run(&["ds", "get", name]).stdout, want[name], "{name} after {call} {at}");
        }
        // Run again, it finishes the import, and what the kill left behind
        // is only what `gc` removes.
        e.ok(&import);
        assert_eq!(e.json(&["ds", "ls", "IMP.**"]).as_array().unwrap().len(), n, "after {call} {at}");
        e.ok(&["gc", "--grace", "0s"]);
        let f = e.json(&["fsck"]);
        assert_eq!(f["volumes"][0]["unreferenced_count"], 0, "after {call} {at}: {f}");
        assert_eq!(f["volumes"][0]["temp_file_count"], 0, "after {call} {at}: {f}");
        if !killed {
            eprintln!("the import ran to its end before {call} {at}");
        }
    }
    assert_eq!(hit, kills.len(), "every kill hit");
}

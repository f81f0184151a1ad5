//! End-to-end tests of the real `custos` binary: every command, every
//! error's message and exit code, and that a failed command changes nothing.

mod common;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use common::*;

#[test]
fn full_tour_with_json() {
    let e = Env::new();
    let vols = e.json(&["volume", "ls"]);
    assert_eq!(vols[0]["name"], "default");
    assert_eq!(vols[0]["site"], "A");
    let off = e.dir.path().join("off");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B", "--medium", "tape"]);
    assert_eq!(e.json(&["volume", "ls"])[1]["medium"], "tape");
    e.ok(&["policy", "add", "pay", "--pattern", "PAYROLL.**", "--volume", "offsite", "--template", "--app", "PAY"]);
    let pols = e.json(&["policy", "ls"]);
    assert_eq!(pols.as_array().unwrap().len(), 2);

    let bytes = data(200_000, 1);
    let f = e.file("in.bin", &bytes);
    let r = e.json(&["ds", "put", "PAYROLL.MASTER", Env::s(&f)]);
    assert_eq!(r["key_label"], "DSET.PRIM.PAY.key001");
    assert_eq!(r["volume"], "offsite");
    assert_eq!(r["chunk_count"], 4);
    // Standard input works too.
    e.cmd(&["ds", "put", "HR.STAFF"]).write_stdin(b"alpha\nbeta\n".to_vec()).assert().success();

    let out = e.dir.path().join("out.bin");
    e.ok(&["ds", "get", "PAYROLL.MASTER", "-o", Env::s(&out)]);
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    let o = e.run(&["ds", "get", "PAYROLL.MASTER", "--range", "65530..65546"]);
    assert_eq!(o.stdout, &bytes[65530..65546]);
    let o = e.run(&["ds", "get", "PAYROLL.MASTER", "--range", "199990.."]);
    assert_eq!(o.stdout, &bytes[199_990..]);
    assert_eq!(e.run(&["ds", "get", "HR.STAFF"]).stdout, b"alpha\nbeta\n");

    let ls = e.json(&["ds", "ls", "PAYROLL.**"]);
    assert_eq!(ls.as_array().unwrap().len(), 1);
    assert_eq!(ls[0]["current"]["size"], 200_000);
    let info = e.json(&["ds", "info", "PAYROLL.MASTER"]);
    assert_eq!(info["key_state"], "active");
    assert_eq!(info["volume_detail"]["site"], "B");
    assert!(e.ok(&["ds", "verify", "PAYROLL.MASTER"]).contains("every chunk opened"));

    let keys = e.json(&["key", "ls"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);
    let show = e.json(&["key", "show", "DSET.PRIM.PAY.key001"]);
    assert_eq!(show["datasets"][0], "PAYROLL.MASTER");
    assert!(show.get("wrapped").is_none(), "key material never reaches JSON");
    assert_eq!(show["kcv"].as_str().unwrap().len(), 10);
    let human = e.ok(&["key", "show", "DSET.PRIM.PAY.key001"]);
    assert!(human.contains("present (wrapped)"));

    e.ok(&["key", "create", "--app", "APP", "--expires", "90d"]);
    e.ok(&["key", "create", "DSET.BACK.APP.key005", "--purpose", "BACK", "--activate"]);
    assert_eq!(e.json(&["key", "show", "DSET.PRIM.APP.key001"])["state"], "pre-active");
    assert_eq!(e.json(&["key", "ls", "DSET.BACK.**"])[0]["state"], "active");

    e.ok(&["config", "set", "key.naming", "K.{app}.{purpose}.{NNNN}"]);
    assert_eq!(e.json(&["config", "get", "key.naming"])["key.naming"], "K.{app}.{purpose}.{NNNN}");
    e.ok(&["key", "create", "--app", "APP"]);
    assert_eq!(e.json(&["key", "ls", "K.**"])[0]["label"], "K.APP.PRIM.0001");

    let src = e.dir.path().join("tree");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/one.txt"), b"1").unwrap();
    std::fs::write(src.join("two"), b"22").unwrap();
    // What is not a regular file refuses the import, named, and nothing is
    // written; with --skip-other it is skipped and listed.
    std::os::unix::fs::symlink("/etc/hostname", src.join("link")).unwrap();
    let fifo = src.join("d/pipe");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let err = e.fails(&["ds", "import", Env::s(&src), "--prefix", "TREE"], 1);
    assert!(
        err.contains("2 entries are not regular files")
            && err.contains("link (a symbolic link)")
            && err.contains("pipe (a FIFO)")
            && err.contains("--skip-other"),
        "{err}"
    );
    let out = e.ok(&["ds", "import", Env::s(&src), "--prefix", "TREE", "--skip-other"]);
    assert!(out.contains("imported 2 files") && out.contains("skipped 2 entries that are not regular files"), "{out}");
    assert!(out.contains("skipped ") && out.contains("link (a symbolic link)"), "{out}");
    e.fails(&["ds", "info", "TREE.link"], 3);
    let imp = e.json(&["ds", "import", Env::s(&src), "--prefix", "TREE", "--skip-other", "--replace"]);
    assert_eq!(imp["imported"].as_array().unwrap().len(), 2, "{imp}");
    assert_eq!(imp["skipped"].as_array().unwrap().len(), 2, "{imp}");
    // Every problem at once, nothing written: a name too long for a
    // qualifier, and the existing datasets.
    let long = "l".repeat(70);
    std::fs::write(src.join(&long), b"a").unwrap();
    let err = e.fails(&["ds", "import", Env::s(&src), "--prefix", "TREE", "--skip-other"], 1);
    assert!(err.contains("1 paths make no valid dataset name") && err.contains("2 datasets exist already"), "{err}");
    std::fs::remove_file(src.join(&long)).unwrap();
    // Names map reversibly, so x.y and x_y are two datasets; but a dataset
    // an earlier Custos imported from x.y as TREE.x_y is the one --replace
    // goes on writing, and then x_y would need the same name.
    std::fs::write(src.join("x.y"), b"a").unwrap();
    std::fs::write(src.join("x_y"), b"b").unwrap();
    e.ok(&["ds", "put", "TREE.x_y", Env::s(&e.file("old", b"imported before"))]);
    let err = e.fails(&["ds", "import", Env::s(&src), "--prefix", "TREE", "--skip-other", "--replace"], 1);
    assert!(err.contains("1 names collide") && err.contains("would both become TREE.x_y"), "{err}");
    std::fs::remove_file(src.join("x_y")).unwrap();
    e.ok(&["ds", "import", Env::s(&src), "--prefix", "TREE", "--skip-other", "--replace"]);
    assert_eq!(e.run(&["ds", "get", "TREE.x_y"]).stdout, b"a");
    e.fails(&["ds", "info", "TREE.x#2Ey"], 3);
    for f in ["x.y", "link"] {
        std::fs::remove_file(src.join(f)).unwrap();
    }
    std::fs::remove_file(&fifo).unwrap();
    assert_eq!(e.run(&["ds", "get", "TREE.d.one#2Etxt"]).stdout, b"1");

    e.ok(&["ds", "rm", "TREE.two"]);
    e.fails(&["ds", "info", "TREE.two"], 3);
    e.ok(&["policy", "rm", "pay"]);
}

/// `ds export` writes a tree of datasets back as files, as `ds import`
/// named them, and refuses (writing nothing) what it cannot do whole.
/// Small datasets imported together share a pack (ADR 0030), manifests
/// and all (ADR 0035), and so do their logical copies: the data, a raw
/// copy made from the packs, `fsck` and `gc` all behave as with a file per
/// object; removing the datasets and collecting the garbage takes the
/// packs away whole.
/// Batches count every key's uses as single writes do: a key made for a
/// batch is recorded as used once in the batch's own commit (import and
/// logical copy), and a key that existed before is counted on top.
#[test]
fn batched_writes_count_each_keys_uses() {
    let e = Env::new();
    let src = e.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..5u64 {
        std::fs::write(src.join(format!("f{i}")), noise(300 + i as usize * 97, i)).unwrap();
    }
    let uses = |label: &str| {
        let k = e.json(&["key", "show", label]);
        assert!(k["last_used_at"].is_string(), "{label} has no last use: {k}");
        k["use_count"].as_u64().unwrap()
    };
    let primary =
        |i: u64| e.json(&["ds", "ls", &format!("KU.f{i}")])[0]["current"]["key_label"].as_str().unwrap().to_string();
    e.ok(&["ds", "import", Env::s(&src), "--prefix", "KU"]);
    let labels: Vec<String> = (0..5).map(primary).collect();
    for l in &labels {
        assert_eq!(uses(l), 1, "{l}: made by the import, used once");
    }
    let off = e.dir.path().join("off");
    e.ok(&["volume", "add", "off", "--path", Env::s(&off), "--site", "B"]);
    e.ok(&["backup", "run", "KU.**", "--to", "off"]);
    for l in &labels {
        assert_eq!(uses(l), 2, "{l}: read once for the logical copy");
    }
    for b in e.json(&["backup", "ls"]).as_array().unwrap() {
        let back = b["key_label"].as_str().unwrap();
        assert_eq!(uses(back), 1, "{back}: made by the copy, used once");
    }
    // A changed file is written under the key its dataset has.
    std::fs::write(src.join("f0"), b"changed").unwrap();
    e.ok(&["ds", "import", Env::s(&src), "--prefix", "KU", "--replace"]);
    assert_eq!(primary(0), labels[0]);
    assert_eq!(uses(&labels[0]), 3, "written again");
    assert_eq!(uses(&labels[1]), 2, "passed over unchanged");
}

#[test]
fn small_datasets_share_packs_that_gc_takes_back() {
    let e = Env::new();
    let src = e.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let bodies: Vec<Vec<u8>> = (0..30u64).map(|i| noise(500 + i as usize * 301, i)).collect();
    for (i, b) in bodies.iter().enumerate() {
        std::fs::write(src.join(format!("f{i:02}")), b).unwrap();
    }
    e.ok(&["ds", "import", Env::s(&src), "--prefix", "PK"]);
    let vol = e.vault.join("volumes/default");
    let packs = || walk_files(&vol.join("packs"));
    assert_eq!(packs().len(), 1, "one pack for the batch: {:?}", packs());
    assert_eq!(walk_files(&vol.join("chunks")).len(), 0, "no chunk file of its own");
    assert_eq!(walk_files(&vol.join("manifests")).len(), 0, "no manifest file of its own");
    for (i, b) in bodies.iter().enumerate() {
        assert_eq!(e.run(&["ds", "get", &format!("PK.f{i:02}")]).stdout, *b);
    }
    let off = e.dir.path().join("off");
    let tape = e.dir.path().join("tape");
    e.ok(&["volume", "add", "off", "--path", Env::s(&off), "--site", "B"]);
    e.ok(&["volume", "add", "tape", "--path", Env::s(&tape), "--site", "C", "--medium", "tape"]);
    e.ok(&["backup", "run", "PK.**", "--to", "off"]);
    assert_eq!(walk_files(&off.join("packs")).len(), 1, "the logical copies share a pack of their own");
    assert_eq!(walk_files(&off.join("manifests")).len(), 0, "their manifests are in it");
    e.ok(&["backup", "run", "PK.**", "--to", "tape", "--method", "raw"]);
    assert_eq!(walk_files(&tape.join("chunks")).len(), 30, "a raw copy takes the packed chunks one by one");
    assert_eq!(walk_files(&tape.join("manifests")).len(), 30, "and the manifests");
    for b in e.json(&["backup", "ls"]).as_array().unwrap() {
        e.ok(&["backup", "verify", &b["id"].to_string(), "--read-data"]);
    }
    e.ok(&["fsck", "--read-data"]);
    // Replacing one dataset leaves the rest of the pack as it was; the
    // replaced chunk is dead in it once collected.
    std::fs::write(src.join("f00"), b"new content").unwrap();
    e.ok(&["ds", "import", Env::s(&src), "--prefix", "PK", "--replace"]);
    e.ok(&["gc", "--grace", "0s"]);
    assert_eq!(e.run(&["ds", "get", "PK.f00"]).stdout, b"new content");
    assert_eq!(e.run(&["ds", "get", "PK.f01"]).stdout, bodies[1]);
    let dead: Vec<_> = packs().into_iter().filter(|p| p.extension().is_some_and(|x| x == "dead")).collect();
    assert_eq!(dead.len(), 1, "{:?}", packs());
    assert_eq!(std::fs::read(&dead[0]).unwrap().len(), 8, "two entries dead: the chunk and its manifest");
    // Gone: every dataset and copy removed, the garbage collected.
    for i in 0..30 {
        e.ok(&["ds", "rm", &format!("PK.f{i:02}")]);
    }
    e.ok(&["gc", "--grace", "0s"]);
    assert!(packs().is_empty(), "the packs went with their last chunks: {:?}", packs());
    // The copies outlive their datasets, in their pack.
    assert_eq!(walk_files(&off.join("packs")).len(), 1);
    let copy = &e.json(&["backup", "ls"])[0];
    assert_eq!(copy["method"], "logical");
    e.ok(&["backup", "verify", &copy["id"].to_string(), "--read-data"]);
}

/// `ds import --replace` passes over a file whose size, times, inode and
/// device are what the last import recorded while its dataset is still at
/// that import's generation (ADR 0036), and reads every other: one whose
/// content changed (same size, its modification time put back: the change
/// time moved), and one whose dataset another command wrote since. Proven
/// by a cache entry made to vouch for a file that did change: that file is
/// not read. A damaged cache only means every file is read.
#[test]
fn import_again_reads_only_what_changed_since() {
    use std::os::unix::fs::MetadataExt;
    let e = Env::new();
    let src = e.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..12u64 {
        std::fs::write(src.join(format!("f{i:02}")), noise(100 + i as usize * 50, i)).unwrap();
    }
    // Files changed within two seconds of an import are not recorded.
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    e.ok(&["ds", "import", Env::s(&src), "--prefix", "IC"]);
    let again = || {
        let r = e.json(&["ds", "import", Env::s(&src), "--prefix", "IC", "--replace"]);
        r["imported"].as_array().unwrap().iter().filter(|r| r["unchanged"] == false).count()
    };
    assert_eq!(again(), 0);
    // Same size, modification time put back: read, and written.
    let f = src.join("f03");
    let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
    std::fs::write(&f, noise(250, 99)).unwrap();
    std::fs::File::options().write(true).open(&f).unwrap().set_modified(mtime).unwrap();
    // Another command wrote a dataset since: its file is read again.
    e.ok(&["ds", "put", "IC.f04", Env::s(&e.file("other", b"written by put"))]);
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    assert_eq!(again(), 2);
    assert_eq!(e.run(&["ds", "get", "IC.f03"]).stdout, noise(250, 99));
    assert_eq!(e.run(&["ds", "get", "IC.f04"]).stdout, noise(300, 4));
    // The cache vouches for what it recorded: made to vouch for a changed
    // file, that file is passed over (the cache is a hint the vault
    // directory's owner keeps; docs/threat-model.md).
    let dir = e.vault.join("cache").join("import");
    let caches: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|d| d.path()).collect();
    assert_eq!(caches.len(), 1, "{caches:?}");
    let f = src.join("f05");
    std::fs::write(&f, noise(350, 55)).unwrap();
    let m = std::fs::metadata(&f).unwrap();
    let text = std::fs::read_to_string(&caches[0]).unwrap();
    let forged: String = text
        .lines()
        .map(|l| match l.split('\t').collect::<Vec<_>>().as_slice() {
            ["IC.f05", .., hash] => format!(
                "IC.f05\t{}\t{}\t{}\t{}\t{}\t{hash}\n",
                m.len(),
                m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
                m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
                m.ino(),
                m.dev()
            ),
            _ => format!("{l}\n"),
        })
        .collect();
    assert_ne!(forged, text);
    std::fs::write(&caches[0], &forged).unwrap();
    assert_eq!(again(), 0);
    assert_eq!(e.run(&["ds", "get", "IC.f05"]).stdout, noise(350, 5), "passed over");
    // A damaged cache: every file is read, the change found.
    std::fs::write(&caches[0], "not a cache").unwrap();
    assert_eq!(again(), 1);
    assert_eq!(e.run(&["ds", "get", "IC.f05"]).stdout, noise(350, 55));
}

#[test]
fn export_writes_back_what_import_took_in() {
    let e = Env::new();
    let src = e.dir.path().join("src");
    let mut files = Vec::new();
    for i in 0..40usize {
        let rel = format!("d{}/f{i:02}", i % 3);
        let body = noise(1 + i * 997 % 5_000, i as u64);
        std::fs::create_dir_all(src.join(format!("d{}", i % 3))).unwrap();
        std::fs::write(src.join(&rel), &body).unwrap();
        files.push((rel, body));
    }
    // Names no qualifier can hold come back as they were.
    for name in ["ünïcode.txt", "a b", "x#y", "dot.file", "-dash", "%", "x#2Ey"] {
        let body = name.as_bytes().repeat(3);
        std::fs::write(src.join(name), &body).unwrap();
        files.push((name.to_string(), body));
    }
    // One bigger than four chunks, read by every worker.
    e.ok(&["config", "set", "chunk.size", "65536"]);
    let big = noise(300_000, 99);
    std::fs::write(src.join("big"), &big).unwrap();
    files.push(("big".into(), big));
    // Two written with direct I/O (1 MiB and more) through one reused
    // staging buffer: the first passes the buffer's 8 MiB, the second is
    // shorter than what the buffer held, with an unaligned tail each.
    for (name, len) in [("huge", (9 << 20) + 123), ("large", (1 << 20) + 1)] {
        let body = noise(len, len as u64);
        std::fs::write(src.join(name), &body).unwrap();
        files.push((name.into(), body));
    }
    e.ok(&["ds", "import", Env::s(&src), "--prefix", "TREE"]);
    let out = e.dir.path().join("out");
    let made = e.json(&["ds", "export", "TREE", Env::s(&out)]);
    assert_eq!(made.as_array().unwrap().len(), files.len());
    for (rel, body) in &files {
        assert_eq!(std::fs::read(out.join(rel)).unwrap(), *body, "{rel}");
    }
    let left: Vec<_> = walk_files(&out).into_iter().filter(|p| p.to_string_lossy().contains("custos-export")).collect();
    assert!(left.is_empty(), "no temp files left: {left:?}");
    assert!(
        e.json(&["ds", "info", "TREE.d1.f01"])["last_used_at"] != e.json(&["ds", "info", "TREE.d1.f01"])["created_at"]
    );
    // Existing files are refused, all before any is written.
    std::fs::remove_file(out.join("d2/f02")).unwrap();
    std::fs::write(out.join("d0/f00"), b"mine").unwrap();
    let err = e.fails(&["ds", "export", "TREE", Env::s(&out)], 1);
    assert!(err.contains(": exists (dataset TREE.") && err.matches("pass --replace").count() == 1, "{err}");
    assert!(!out.join("d2/f02").exists(), "nothing was written");
    assert_eq!(std::fs::read(out.join("d0/f00")).unwrap(), b"mine");
    e.ok(&["ds", "export", "TREE", Env::s(&out), "--replace"]);
    assert_eq!(std::fs::read(out.join("d0/f00")).unwrap(), files[0].1);
    // One dataset's prefix alone, and a path needed as a file and a directory.
    let one = e.dir.path().join("one");
    e.ok(&["ds", "export", "TREE.d1.f04", Env::s(&one)]);
    assert_eq!(std::fs::read(one.join("f04")).unwrap(), files[4].1);
    e.ok(&["ds", "put", "TREE.d1", Env::s(&e.file("x", b"x"))]);
    let err = e.fails(&["ds", "export", "TREE", Env::s(&e.dir.path().join("clash"))], 1);
    assert!(err.contains("as a file and as a directory"), "{err}");
    assert!(!e.dir.path().join("clash").exists(), "nothing was made");
    // The dataset named by the prefix and one below it, both named f04.
    e.ok(&["ds", "put", "TREE.d1.f04.f04", Env::s(&e.file("y", b"y"))]);
    let err = e.fails(&["ds", "export", "TREE.d1.f04", Env::s(&e.dir.path().join("twice"))], 1);
    assert!(err.contains("TREE.d1.f04 and TREE.d1.f04.f04 would both be written to this file"), "{err}");
    assert!(!e.dir.path().join("twice").exists(), "nothing was made");
    let err = e.fails(&["ds", "export", "NOTHING", Env::s(&out)], 1);
    assert!(err.contains("no dataset is named NOTHING"), "{err}");
    // A name that would leave the export directory is refused, naming it.
    e.ok(&["ds", "put", "ESC.a.#2E#2E", Env::s(&e.file("up", b"up"))]);
    let err = e.fails(&["ds", "export", "ESC", Env::s(&e.dir.path().join("esc"))], 1);
    assert!(err.contains("dataset ESC.a.#2E#2E names no file"), "{err}");
    assert!(!e.dir.path().join("esc").exists() && !e.dir.path().join("a").exists(), "nothing was made");
}

#[test]
fn fail_wrong_or_missing_passphrase() {
    let e = Env::new();
    e.ok(&["ds", "put", "A.B", Env::s(&e.file("x", b"x"))]);
    let o = e.cmd(&["ds", "get", "A.B"]).env("CUSTOS_PASSPHRASE", "wrong").output().unwrap();
    assert_eq!(o.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong passphrase for the software HSM"));
    let o = e.cmd(&["ds", "get", "A.B"]).env_remove("CUSTOS_PASSPHRASE").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("set CUSTOS_PASSPHRASE, pass --passphrase-file"));
    let pf = e.file("pass.txt", format!("{PASS}\n").as_bytes());
    let o = e
        .cmd(&["ds", "get", "A.B", "--passphrase-file", Env::s(&pf)])
        .env_remove("CUSTOS_PASSPHRASE")
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(o.stdout, b"x");
    // Listing needs no passphrase at all.
    e.cmd(&["ds", "ls"]).env_remove("CUSTOS_PASSPHRASE").assert().success();
}

#[test]
fn fail_unknown_objects() {
    let e = Env::new();
    let f = e.file("x", b"x");
    assert!(e.fails(&["ds", "get", "NO.SUCH"], 3).contains("no dataset named NO.SUCH"));
    assert!(e.fails(&["key", "show", "DSET.PRIM.X.key001"], 3).contains("no key labelled DSET.PRIM.X.key001"));
    assert!(e.fails(&["ds", "put", "A.B", Env::s(&f), "--volume", "nowhere"], 3).contains("no volume named nowhere"));
    assert!(e
        .fails(&["ds", "put", "A.B", Env::s(&f), "--key", "DSET.PRIM.A.key009"], 3)
        .contains("DSET.PRIM.A.key009"));
    assert!(e.fails(&["policy", "rm", "nopolicy"], 3).contains("no policy named nopolicy"));
    assert!(e
        .fails(&["policy", "add", "p", "--pattern", "A.**", "--volume", "nowhere", "--template"], 3)
        .contains("nowhere"));
    let o = e.cmd(&["ds", "ls"]).env("CUSTOS_VAULT", e.dir.path().join("none")).output().unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("custos init"));
    assert!(e.fails(&["ds", "put", "bad..name", Env::s(&f)], 1).contains("invalid dataset name"));
    assert!(e.fails(&["ds", "get", "A.B", "--range", "x..y"], 2).contains("invalid range"));
    // A command missing what it needs is a usage error (2), as clap's own are.
    assert!(e.fails(&["policy", "add", "p", "--pattern", "A.**", "--volume", "default"], 2).contains("--template"));
    assert!(e.fails(&["user", "role", "ops"], 2).contains("give --add ROLE"));
    assert!(e.fails(&["risk", "drill", "A.**"], 2).contains("--threat NAME, or --all"));
    assert!(e.fails(&["config", "set", "chunk.size", "12"], 1).contains("64 KiB"));
    // Too large is out of range too, not "not a number".
    let err = e.fails(&["config", "set", "chunk.size", "10737418240"], 1);
    assert!(err.contains("64 MiB") && !err.contains("not \""), "{err}");
    assert!(e.fails(&["config", "set", "chunk.size", "lots"], 2).contains("65536 to 67108864"));
    // Each names what is wrong with what was given, not the vault.
    let err = e.fails(&["ds", "import", "/nonexistent/dir", "--prefix", "IMP"], 3);
    assert!(err.contains("the directory to import /nonexistent/dir") && !err.contains("vault directory"), "{err}");
    let file = e.file("not-a-dir", b"x");
    let err = e.fails(&["volume", "add", "vf", "--path", Env::s(&file), "--site", "B"], 1);
    assert!(err.contains("is a file, not a directory") && !err.contains("File exists"), "{err}");
    let err = e.fails(&["volume", "add", "vs", "--path", "s3://bucket/prefix", "--site", "B"], 2);
    assert!(err.contains("--url"), "{err}");
    assert!(!e.dir.path().join("s3:").exists() && !std::path::Path::new("s3:").exists(), "no directory named s3:");
    // A pattern that matches nothing is said, not silently done.
    let err = e.fails(&["backup", "run", "ZZZ.**", "--to", "default"], 3);
    assert!(err.contains("no dataset matches ZZZ.**") && err.contains("ds ls"), "{err}");
    assert_eq!(e.json(&["config", "get", "compression"])["compression"], "lz4");
    assert!(e.fails(&["config", "set", "compression", "gzip"], 1).contains("lz4"));
    assert_eq!(e.json(&["config", "get", "compression"])["compression"], "lz4", "unchanged by the refusal");
    let err = e.fails(&["config", "get", "chunk.sise"], 1);
    assert!(err.contains("chunk.size") && err.contains("compression") && err.contains("request.ttl"), "{err}");
}

#[test]
fn fail_key_state_and_destroyed_key() {
    let e = Env::new();
    let f = e.file("x", &data(150_000, 3));
    e.ok(&["key", "create", "--app", "APP"]);
    let err = e.fails(&["ds", "put", "APP.DATA", Env::s(&f), "--key", "DSET.PRIM.APP.key001"], 5);
    assert!(err.contains("pre-active") && err.contains("activate it first"), "{err}");
    e.ok(&["key", "activate", "DSET.PRIM.APP.key001"]);
    e.ok(&["ds", "put", "APP.DATA", Env::s(&f), "--key", "DSET.PRIM.APP.key001"]);
    let err = e.fails(&["key", "destroy", "DSET.PRIM.APP.key001"], 5);
    assert!(err.contains("deactivate it first"), "{err}");
    assert_eq!(err.matches("deactivate it first").count(), 1, "said once: {err}");
    e.ok(&["key", "deactivate", "DSET.PRIM.APP.key001"]);
    let err = e.fails(&["key", "destroy", "DSET.PRIM.APP.key001"], 5);
    assert!(err.contains("APP.DATA") && err.contains("--crypto-erase"), "{err}");
    e.ok(&["key", "archive", "DSET.PRIM.APP.key001"]);
    let err = e.fails(&["ds", "get", "APP.DATA"], 5);
    assert!(err.contains("archived") && err.contains("restore it first"), "{err}");
    e.ok(&["key", "restore", "DSET.PRIM.APP.key001"]);
    e.ok(&["key", "destroy", "DSET.PRIM.APP.key001", "--crypto-erase"]);
    let err = e.fails(&["ds", "get", "APP.DATA"], 5);
    assert!(err.contains("cryptographically erased") && err.contains("APP.DATA"), "{err}");
    assert!(e.ok(&["key", "show", "DSET.PRIM.APP.key001"]).contains("erased"));
    e.fails(&["key", "activate", "DSET.PRIM.APP.key001"], 5);
}

#[test]
fn fail_tampered_chunks_are_named() {
    let e = Env::new();
    let f = e.file("x", &data(300_000, 5));
    e.ok(&["ds", "put", "TAMPER.A", Env::s(&f)]);
    e.ok(&["ds", "put", "TAMPER.B", Env::s(&f)]);
    let a = e.chunk_paths("TAMPER.A");
    let b = e.chunk_paths("TAMPER.B");
    let orig = std::fs::read(&a[2]).unwrap();

    let mut flipped = orig.clone();
    flipped[500] ^= 0x10;
    std::fs::write(&a[2], &flipped).unwrap();
    let err = e.fails(&["ds", "get", "TAMPER.A"], 4);
    assert!(err.contains("chunk 2") && err.contains("TAMPER.A") && err.contains("failed authentication"), "{err}");
    assert!(err.contains("Restore the dataset from a backup copy"), "{err}");

    std::fs::copy(&b[2], &a[2]).unwrap();
    let err = e.fails(&["ds", "verify", "TAMPER.A"], 4);
    assert!(err.contains("chunk 2"), "foreign chunk: {err}");

    std::fs::remove_file(&a[2]).unwrap();
    let err = e.fails(&["ds", "get", "TAMPER.A"], 4);
    assert!(err.contains("chunk 2") && err.contains("is missing"), "{err}");

    std::fs::write(&a[2], &orig).unwrap();
    let (c1, c3) = (std::fs::read(&a[1]).unwrap(), std::fs::read(&a[3]).unwrap());
    std::fs::write(&a[1], &c3).unwrap();
    std::fs::write(&a[3], &c1).unwrap();
    let err = e.fails(&["ds", "get", "TAMPER.A"], 4);
    assert!(err.contains("chunk 1"), "swapped: {err}");
    std::fs::write(&a[1], &c1).unwrap();
    std::fs::write(&a[3], &c3).unwrap();
    e.ok(&["ds", "verify", "TAMPER.A"]);
}

#[test]
fn fail_get_to_existing_file_leaves_it_alone() {
    let e = Env::new();
    let f = e.file("x", &data(200_000, 6));
    e.ok(&["ds", "put", "OUT.A", Env::s(&f)]);
    let p = e.chunk_paths("OUT.A");
    std::fs::remove_file(&p[3]).unwrap();
    let target = e.file("precious.txt", b"keep me");
    e.fails(&["ds", "get", "OUT.A", "-o", Env::s(&target)], 4);
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    let leftovers: Vec<_> = std::fs::read_dir(e.dir.path())
        .unwrap()
        .filter(|d| d.as_ref().unwrap().file_name().to_string_lossy().starts_with(".custos-get-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary output was cleaned up");
}

#[test]
fn fail_unreachable_volume() {
    let e = Env::new();
    let v2 = e.dir.path().join("v2");
    e.ok(&["volume", "add", "v2", "--path", Env::s(&v2), "--site", "B"]);
    e.ok(&["ds", "put", "VOL.A", Env::s(&e.file("x", b"abc")), "--volume", "v2"]);
    std::fs::rename(&v2, e.dir.path().join("v2-moved")).unwrap();
    let err = e.fails(&["ds", "get", "VOL.A"], 7);
    assert!(err.contains("volume v2") && err.contains("not reachable"), "{err}");
    let err = e.fails(&["ds", "put", "VOL.B", Env::s(&e.file("y", b"abc")), "--volume", "v2"], 7);
    assert!(err.contains("volume v2"), "{err}");
}

/// Unmounts on drop, so a failing assertion does not leave a mount behind.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn fail_full_disk_leaves_nothing_behind() {
    let e = Env::new();
    let mnt = e.dir.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("mount(8) is needed for the full-disk test");
    if !st.success() && std::env::var_os("CUSTOS_SKIP_ROOT_TESTS").is_some() {
        eprintln!("skipping: cannot mount a tmpfs (not root) and CUSTOS_SKIP_ROOT_TESTS is set");
        return;
    }
    assert!(st.success(), "mounting a 1 MiB tmpfs needs root; set CUSTOS_SKIP_ROOT_TESTS=1 to skip");
    let _guard = Tmpfs(mnt.clone());
    let vol = mnt.join("vol");
    e.ok(&["volume", "add", "small", "--path", Env::s(&vol), "--site", "A"]);
    e.ok(&["ds", "put", "FULL.OLD", Env::s(&e.file("a", &data(100_000, 1))), "--volume", "small"]);
    let count = || walkdir_count(&vol.join("chunks"));
    let before = count();
    let err = e.fails(&["ds", "put", "FULL.NEW", Env::s(&e.file("b", &noise(3_000_000, 2))), "--volume", "small"], 7);
    assert!(err.contains("volume small is full") && err.contains("nothing was committed"), "{err}");
    assert_eq!(count(), before, "the chunks of the failed write were removed");
    let err = e.fails(&["ds", "put", "FULL.OLD", Env::s(&e.file("c", &noise(3_000_000, 3)))], 7);
    assert!(err.contains("is full"), "{err}");
    assert_eq!(e.run(&["ds", "get", "FULL.OLD"]).stdout, data(100_000, 1), "the old generation is intact");
}

fn walkdir_count(d: &Path) -> usize {
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() {
                walkdir_count(&p)
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn demo_runs_end_to_end() {
    let keep = tempfile::tempdir().unwrap();
    let o =
        Command::cargo_bin("custos").unwrap().env_clear().args(["demo", "--keep"]).arg(keep.path()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = String::from_utf8(o.stdout).unwrap();
    // The computed Table 2: block copies and the mirror do not survive key loss.
    let key_row = s.lines().find(|l| l.trim_start().starts_with("Key loss")).expect("a key-loss row");
    assert_eq!(key_row.matches("NO").count(), 3, "{key_row}");
    assert!(s.contains("0 contain the text"), "{s}");
    assert!(s.contains("all 50 agree with the model"), "{s}");
    // Losing site A loses the vault directory: no until a vault backup is at B.
    let site_row = s.lines().find(|l| l.trim_start().starts_with("Data centre loss")).expect("a site-loss row");
    assert_eq!(site_row.matches("NO").count(), 5, "{site_row}");
    assert!(s.contains("HR's data centre loss is now: once the vault is recovered from vault backup"), "{s}");
    // Example 2 with a flipped bit: the raw copy is refused, the logical
    // copy restores, `key recover` repairs the damaged record.
    assert!(s.contains("restoring HR's raw copy: the wrapped key does not unwrap"), "{s}");
    assert!(s.contains("PAY.MASTER restored from its logical copy"), "{s}");
    assert!(s.contains("`key recover` found the record damaged"), "{s}");
    // Example 1: proven by a drill, then done: the old keystore backup is
    // under a retired master key; escrow brings the key back.
    assert!(s.contains("A drill on a clone proves it first") && s.contains("from escrow"), "{s}");
    assert!(s.contains("[retired-master-key] ARC.Y2019"), "{s}");
    assert!(s.contains("which no register holds"), "{s}");
    assert!(s.contains("ARC.Y2019 reads back identical"), "{s}");
    let html = std::fs::read_to_string(keep.path().join("risk-report.html")).unwrap();
    assert!(
        html.starts_with("<!DOCTYPE html>")
            && html.contains("Data centre loss")
            && html.trim_end().ends_with("</html>")
    );
    // Every reason is printed, not only a tooltip; no "(1)" in the headers.
    assert!(html.contains("class=\"notes\"") && !html.contains(" title=\"") && !html.contains("(1)"), "{html}");
    // The colours are explained; each threat has one name in every table
    // (its title, never its code as visible text); the audit is a table,
    // not a text dump that runs off the page.
    assert!(html.contains("How to read the tables"), "no legend");
    assert!(html.matches(">Data centre loss<").count() >= 2 && !html.contains(">site-loss<"), "{html}");
    assert!(!html.contains("<pre") && html.contains("id=\"recoverability\""), "{html}");
}

#[test]
fn init_refuses_an_existing_vault() {
    let e = Env::new();
    let o = e.run(&["init", "--kdf-memory-mib", "19", "--kdf-iterations", "2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
}

/// Kill a real `ds put` at many points: the dataset must always read back as
/// exactly the old or the new contents, never anything in between.
#[test]
fn killed_writer_never_leaves_a_half_generation() {
    let e = Env::new();
    let old = data(2_000_000, 1);
    let new = data(24_000_000, 2);
    let old_f = e.file("old", &old);
    let new_f = e.file("new", &new);
    // How long a whole write takes here: the kills spread over twice that,
    // so about half land mid-write and half after the commit.
    let t0 = std::time::Instant::now();
    e.ok(&["ds", "put", "CRASH.X", Env::s(&new_f)]);
    let full = t0.elapsed().as_millis() as u64;
    e.ok(&["ds", "put", "CRASH.X", Env::s(&old_f)]);
    let mut saw = [0usize; 2];
    let kills = 20u64;
    for i in 0..kills {
        e.run_killed(
            &["--threads", "2", "ds", "put", "CRASH.X", Env::s(&new_f)],
            std::time::Duration::from_millis(2 * full * i / kills),
        );
        let got = e.run(&["ds", "get", "CRASH.X"]);
        assert!(got.status.success(), "after kill {i}: {}", String::from_utf8_lossy(&got.stderr));
        if got.stdout == old {
            saw[0] += 1;
        } else if got.stdout == new {
            saw[1] += 1;
            e.ok(&["ds", "put", "CRASH.X", Env::s(&old_f)]);
        } else {
            panic!("after kill {i}: the dataset is neither the old nor the new contents");
        }
        e.ok(&["ds", "verify", "CRASH.X"]);
    }
    eprintln!("write takes ~{full} ms; kills that left the old generation: {}, the new: {}", saw[0], saw[1]);
    assert!(saw[0] > 0 && saw[1] > 0, "the kills must land both before and after the commit: {saw:?}");
}

#[test]
fn master_key_change_from_custodian_parts() {
    let e = Env::new();
    e.ok(&["ds", "put", "MK.DATA", Env::s(&e.file("d", &data(150_000, 4)))]);
    let alice = e.dir.path().join("alice.part");
    let bob = e.dir.path().join("bob.part");
    e.ok(&["mk", "make-part", "--custodian", "alice", "-o", Env::s(&alice)]);
    e.ok(&["mk", "make-part", "--custodian", "bob", "-o", Env::s(&bob)]);
    assert!(e.run(&["mk", "make-part", "--custodian", "bob", "-o", Env::s(&bob)]).status.code() == Some(1));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&alice).unwrap().permissions().mode() & 0o777, 0o600);

    let err = e.fails(&["mk", "load-new", "--part", Env::s(&alice)], 1);
    assert!(err.contains("at least two distinct custodians"), "{err}");
    let err = e.fails(
        &["mk", "load-new", "--part", Env::s(&alice), "--part", Env::s(&bob), "--expect-mkvp", "0000000000000000"],
        1,
    );
    assert!(err.contains("not the expected 0000000000000000"), "{err}");
    // A part typed in wrong is caught by its check value.
    let mut text = std::fs::read_to_string(&bob).unwrap();
    let i = text.find("part: ").unwrap() + 6;
    let digit = if &text[i..i + 1] == "0" { "1" } else { "0" };
    text.replace_range(i..i + 1, digit);
    let typo = e.file("typo.part", text.as_bytes());
    let err = e.fails(&["mk", "load-new", "--part", Env::s(&alice), "--part", Env::s(&typo)], 1);
    assert!(err.contains("custodian bob does not match its check value"), "{err}");

    let loaded = e.json(&["mk", "load-new", "--part", Env::s(&alice), "--part", Env::s(&bob)]);
    let new = loaded["new_mkvp"].as_str().unwrap().to_string();
    let st = e.json(&["mk", "status"]);
    assert_eq!(st["registers"][0]["register"], "NEW");
    assert_eq!(st["registers"][0]["mkvp"], new.as_str());
    let st = e.json(&["mk", "activate"]);
    let cur = st["registers"].as_array().unwrap().iter().find(|r| r["register"] == "CURRENT").unwrap().clone();
    assert_eq!(cur["mkvp"], new.as_str());
    e.ok(&["mk", "load-new", "--generate"]);
    let err = e.fails(&["mk", "activate"], 5);
    assert!(err.contains("still wraps 1 keys") && err.contains("mk reencipher"), "{err}");
    assert_eq!(e.json(&["mk", "reencipher"])["moved_count"], 1);
    e.ok(&["mk", "activate"]);
    assert_eq!(e.run(&["ds", "get", "MK.DATA"]).stdout, data(150_000, 4));
    let err = e.fails(&["mk", "load-new"], 2);
    assert!(err.contains("--generate or --part"), "{err}");
}

/// Kill `mk reencipher` at many points: afterwards every key still unwraps
/// (under OLD or CURRENT), and a final run moves the rest.
#[test]
fn killed_reencipher_loses_no_key() {
    let e = Env::new();
    e.ok(&["key", "create", "--app", "MANY", "--count", "4000", "--activate"]);
    e.ok(&["ds", "put", "MANY.DATA", Env::s(&e.file("d", b"still here")), "--key", "DSET.PRIM.MANY.key001"]);
    e.ok(&["mk", "load-new", "--generate"]);
    e.ok(&["mk", "activate"]);
    // Measure a whole run on a copy of the vault, so the real one stays all under OLD.
    let copy = e.dir.path().join("copy");
    copy_dir(&e.vault, &copy);
    let t0 = std::time::Instant::now();
    let o = e.cmd(&["mk", "reencipher", "--batch", "50"]).env("CUSTOS_VAULT", &copy).output().unwrap();
    assert!(o.status.success());
    let full = t0.elapsed().as_millis() as u64;
    let kills = 12u64;
    let mut partial = 0;
    for i in 0..kills {
        e.run_killed(&["mk", "reencipher", "--batch", "50"], std::time::Duration::from_millis(full * i / kills));
        let v = custos_core::Vault::open(&e.vault)
            .unwrap()
            .unseal(&custos_core::Passphrase::from(PASS.to_string()))
            .unwrap();
        let st = v.mk_status().unwrap();
        let old = st.registers.iter().find(|r| r.register == "OLD").unwrap().keys;
        if old > 0 && old < 4000 {
            partial += 1;
        }
        for k in v.keys().unwrap() {
            let w = k.wrapped.as_ref().unwrap();
            let dk = v
                .hsm()
                .unwrap_key(&k.mkvp, &w.0)
                .unwrap_or_else(|err| panic!("after kill {i}, key {}: {err}", k.label));
            assert_eq!(custos_crypto::Kcv::of(&dk), k.kcv);
        }
    }
    assert!(partial > 0, "some kill must land in the middle of a run");
    e.ok(&["mk", "reencipher", "--batch", "50"]);
    let st = e.json(&["mk", "status"]);
    let regs = st["registers"].as_array().unwrap();
    let keys = |r: &str| regs.iter().find(|x| x["register"] == r).unwrap()["key_count"].as_u64().unwrap();
    assert_eq!((keys("CURRENT"), keys("OLD")), (4000, 0));
    assert_eq!(e.run(&["ds", "get", "MANY.DATA"]).stdout, b"still here");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

#[test]
fn keystore_backup_and_recover() {
    let e = Env::new();
    let bytes = data(100_000, 9);
    e.ok(&["ds", "put", "KSB.DATA", Env::s(&e.file("d", &bytes))]);
    let b = e.json(&["keystore", "backup", "--to", "default"]);
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["key_count"], 1);
    assert_eq!(e.json(&["keystore", "backups"])[0]["id"], id.as_str());
    e.ok(&["key", "deactivate", "DSET.PRIM.KSB.key001"]);
    e.ok(&["key", "destroy", "DSET.PRIM.KSB.key001", "--crypto-erase"]);
    e.fails(&["ds", "get", "KSB.DATA"], 5);
    let err = e.fails(&["key", "recover", "DSET.PRIM.KSB.key001", "--from", "nope"], 3);
    assert!(err.contains("keystore backups"), "{err}");
    let out = e.ok(&["key", "recover", "DSET.PRIM.KSB.key001", "--from", &id]);
    assert!(out.contains("recovered key DSET.PRIM.KSB.key001 (active)"), "the state the backup recorded: {out}");
    assert_eq!(e.run(&["ds", "get", "KSB.DATA"]).stdout, bytes);
    // After two master key changes the backup no longer helps, and says why.
    e.ok(&["key", "deactivate", "DSET.PRIM.KSB.key001"]);
    e.ok(&["key", "destroy", "DSET.PRIM.KSB.key001", "--crypto-erase"]);
    for _ in 0..2 {
        e.ok(&["mk", "load-new", "--generate"]);
        e.ok(&["mk", "activate"]);
    }
    let err = e.fails(&["key", "recover", "DSET.PRIM.KSB.key001", "--from", &id], 5);
    assert!(err.contains("which no register holds") && err.contains(b["mkvps"][0].as_str().unwrap()), "{err}");
    // The audit key moved along with both master key changes: its checkpoints still verify.
    assert!(e.ok(&["audit", "verify"]).contains("audit log intact"));
}

#[test]
fn escrow_recovers_a_destroyed_key_with_two_of_three_shares() {
    let e = Env::new();
    let custodians: Vec<(Env, PathBuf)> = ["alice", "bob", "carol"].iter().map(|n| e.custodian(n)).collect();
    // Nobody who has not registered a recipient can be named.
    let err = e.fails(&["escrow", "init", "--custodian", "alice", "--custodian", "dave", "--threshold", "2"], 1);
    assert!(err.contains("dave is not a user"), "{err}");
    let kbk = e.json(&[
        "escrow",
        "init",
        "--custodian",
        "alice",
        "--custodian",
        "bob",
        "--custodian",
        "carol",
        "--threshold",
        "2",
    ]);
    assert_eq!(kbk["threshold"], 2);
    // Each custodian fetches their own share, sealed to their own key, and
    // shows it opens; the status says who has.
    let mut sealed = Vec::new();
    for (c, key) in &custodians {
        let p = c.dir.path().join("mine.sealed");
        c.ok(&["escrow", "share", "--out", Env::s(&p)]);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("custos sealed escrow share v1\n") && !text.contains("\nshare: "), "{text}");
        sealed.push(p);
        if sealed.len() < 3 {
            assert!(c
                .ok(&["escrow", "confirm", "--share", Env::s(&sealed[sealed.len() - 1]), "--key", Env::s(key)])
                .contains("confirmed holding a share"));
        }
    }
    let st = e.ok(&["escrow", "status"]);
    assert!(st.contains("share of alice: confirmed") && st.contains("share of carol: NOT confirmed"), "{st}");
    // One custodian cannot fetch or confirm another's share.
    let (alice, alice_key) = (&custodians[0].0, &custodians[0].1);
    let err = alice.fails(&["escrow", "confirm", "--share", Env::s(&sealed[1]), "--key", Env::s(alice_key)], 1);
    assert!(err.contains("use the key of custodian bob"), "{err}");

    let bytes = data(120_000, 11);
    e.ok(&["ds", "put", "ESC.DATA", Env::s(&e.file("d", &bytes))]);
    let st = e.json(&["escrow", "status"]);
    assert_eq!((st["escrowed_count"].as_u64(), st["not_escrowed"].as_array().unwrap().len()), (Some(1), 0));
    // Keystore backups carry the escrow copies out of the catalog.
    let ksb = e.json(&["keystore", "backup", "--to", "default"])["id"].as_str().unwrap().to_string();
    let object = std::fs::read_to_string(e.vault.join(format!("volumes/default/keystore/{ksb}.ksb"))).unwrap();
    assert!(object.contains(&format!("\"escrow_kbk\":\"{}\"", kbk["id"].as_str().unwrap())), "{object}");
    e.ok(&["key", "deactivate", "DSET.PRIM.ESC.key001"]);
    let out = e.ok(&["key", "destroy", "DSET.PRIM.ESC.key001", "--crypto-erase"]);
    assert!(out.contains("an escrow copy remains"), "{out}");
    let err = e.fails(&["ds", "get", "ESC.DATA"], 5);
    assert!(err.contains("--escrow") && err.contains("2 of its 3 custodians (alice, bob, carol) together"), "{err}");
    let (a, c) = (Env::s(&sealed[0]), Env::s(&sealed[2]));
    let (ak, bk, ck) = (Env::s(&custodians[0].1), Env::s(&custodians[1].1), Env::s(&custodians[2].1));
    let recover = ["key", "recover", "DSET.PRIM.ESC.key001", "--escrow"];
    let err = e.fails(&[&recover[..], &["--share", a, "--key", ak]].concat(), 1);
    assert!(err.contains("needs 2 distinct shares"), "{err}");
    // A share no key given opens, and an altered sealed share, are refused.
    let err = e.fails(&[&recover[..], &["--share", a, "--share", c, "--key", ak, "--key", bk]].concat(), 1);
    assert!(err.contains("no --key given opens") && err.contains("carol"), "{err}");
    let mut text = std::fs::read_to_string(&sealed[2]).unwrap();
    let i = text.find("sealed: ").unwrap() + 20;
    let d = if &text[i..i + 1] == "a" { "b" } else { "a" };
    text.replace_range(i..i + 1, d);
    let altered = e.file("altered.sealed", text.as_bytes());
    let err =
        e.fails(&[&recover[..], &["--share", a, "--share", Env::s(&altered), "--key", ak, "--key", ck]].concat(), 1);
    assert!(err.contains("does not open: it was altered"), "{err}");
    let out = e.ok(&[&recover[..], &["--share", a, "--share", c, "--key", ak, "--key", ck]].concat());
    assert!(out.contains("recovered key DSET.PRIM.ESC.key001 (inactive)"), "{out}");
    assert_eq!(e.run(&["ds", "get", "ESC.DATA"]).stdout, bytes);
    // Purged, the escrow copy can no longer help.
    e.ok(&["escrow", "purge", "DSET.PRIM.ESC.key001"]);
    let err = e.fails(&[&recover[..], &["--share", a, "--share", c, "--key", ak, "--key", ck]].concat(), 1);
    assert!(err.contains("no escrow copy"), "{err}");
    // The keystore backup still holds it: a key recovered from that backup
    // comes back with its escrow copy.
    e.ok(&["key", "destroy", "DSET.PRIM.ESC.key001", "--crypto-erase"]);
    e.ok(&["key", "recover", "DSET.PRIM.ESC.key001", "--from", &ksb]);
    assert_eq!(e.json(&["escrow", "status"])["escrowed_count"].as_u64(), Some(1));
    assert_eq!(e.run(&["ds", "get", "ESC.DATA"]).stdout, bytes);
}

/// A token serves one vault: a failed `init` leaves nothing on it (nor a
/// directory), a second vault is refused the token of the first, and
/// `--pkcs11-adopt` takes its master keys over on purpose.
#[test]
fn a_token_holds_one_vault_and_a_failed_init_leaves_it_as_it_was() {
    let tokens = custos_testing::SoftHsmTokens::new(&["shared"], "2468", "1357");
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| {
        let mut e = Env::existing(dir.path().join(name));
        e.env.push(("SOFTHSM2_CONF".into(), tokens.conf().display().to_string()));
        e.env.push(("CUSTOS_PKCS11_PIN".into(), "2468".into()));
        e
    };
    let init = ["init", "--hsm", "pkcs11", "--pkcs11-token", "shared", "--site", "A"];
    // The default volume cannot be made (under a file): init fails after
    // the token was set up, and takes it all back.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let mut a = at("a");
    let bad_volume = file.join("vol").display().to_string();
    let o = a.run(&[&init[..], &["--volume", &bad_volume]].concat());
    assert!(!o.status.success(), "{o:?}");
    assert!(!dir.path().join("a").exists(), "a failed init leaves no directory");
    let made = a.json(&init);
    let mk_a = made["master_key_mkvp"][0].as_str().unwrap().to_string();
    a.ok(&["config", "set", "dual-control", "none"]);
    a.as_operator();
    // A second vault on the same token is refused, and changes nothing.
    let b = at("b");
    let o = b.run(&init);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("already holds Custos master keys") && err.contains(&mk_a) && err.contains("--pkcs11-adopt"),
        "{err}"
    );
    assert_said_once(&err);
    assert!(!dir.path().join("b").exists());
    a.ok(&["ds", "put", "A.DATA", Env::s(&a.file("d", b"still a's"))]);
    assert_eq!(a.run(&["ds", "get", "A.DATA"]).stdout, b"still a's");
    // Adopting takes the first vault's master keys over.
    let adopted = b.json(&[&init[..], &["--pkcs11-adopt"]].concat());
    assert_eq!(adopted["master_key_mkvp"][0].as_str(), Some(mk_a.as_str()), "{adopted}");
}

/// NSS's softoken stores no data objects: its records go to the catalog,
/// MAC'd inside the token; the same scenario passes, and the vault comes
/// back from a vault backup with the token (whose records were in the
/// lost catalog: the backup's header names the registers).
#[test]
fn vault_on_an_nss_softoken() {
    let e = Env::new_nss();
    let off = e.dir.path().join("offsite");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B"]);
    pkcs11_scenario(e.at(e.vault.clone()));
    e.ok(&["backup", "run", "TOKEN.**", "--to", "offsite"]);
    e.ok(&["vault", "backup", "--to", "offsite"]);
    let bytes = e.run(&["ds", "get", "TOKEN.DATA"]).stdout;
    assert_eq!(bytes.len(), 200_000);
    std::fs::remove_dir_all(&e.vault).unwrap();
    let r = e.at(e.dir.path().join("recovered"));
    let out = r.ok(&["vault", "recover", "--from", Env::s(&off), "--pkcs11", "--pkcs11-init-args", &e.nss_init_args()]);
    assert!(out.contains("recovered vault"), "{out}");
    r.ok(&["restore", "TOKEN.DATA"]);
    assert!(r.run(&["ds", "get", "TOKEN.DATA"]).stdout == bytes, "the recovered vault reads the data back");
    assert!(r.ok(&["audit", "verify"]).contains("audit log intact"));
    assert!(r.json(&["catalog", "verify"])["faults"].as_array().unwrap().is_empty());
}

#[test]
fn vault_on_a_pkcs11_token() {
    pkcs11_scenario(Env::new_pkcs11());
}

/// The same on Kryoptic, which has no CKM_AES_KEY_WRAP_PAD: Custos finds
/// CKM_AES_KEY_WRAP_KWP by its known-answer test and wraps with it.
#[test]
fn vault_on_a_kryoptic_token() {
    let e = Env::new_kryoptic();
    pkcs11_scenario(e);
}

fn pkcs11_scenario(e: Env) {
    assert!(!e.vault.join("hsm.sealed").exists(), "no software HSM file for a token vault");
    let bytes = data(200_000, 21);
    e.ok(&["ds", "put", "TOKEN.DATA", Env::s(&e.file("d", &bytes))]);
    assert_eq!(e.run(&["ds", "get", "TOKEN.DATA"]).stdout, bytes);
    assert_eq!(e.json(&["key", "ls"])[0]["label"], "DSET.PRIM.TOKEN.key001");
    e.ok(&["mk", "load-new", "--generate"]);
    e.ok(&["mk", "activate"]);
    assert_eq!(e.json(&["mk", "reencipher"])["moved_count"], 1);
    e.ok(&["mk", "load-new", "--generate"]);
    e.ok(&["mk", "activate"]);
    assert_eq!(e.run(&["ds", "get", "TOKEN.DATA"]).stdout, bytes, "readable after two master key changes");
    let o = e.cmd(&["ds", "get", "TOKEN.DATA"]).env("CUSTOS_PKCS11_PIN", "0000").output().unwrap();
    assert_eq!(o.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong PIN"));
    let o = e.cmd(&["ds", "get", "TOKEN.DATA"]).env_remove("CUSTOS_PKCS11_PIN").output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("CUSTOS_PKCS11_PIN"));
}

/// Drills on a vault whose master keys are on a PKCS#11 token (SoftHSM2):
/// the clones use the live token through a guard, so every cell is
/// drilled and agrees with the model, losing the token (master key or HSM
/// loss) is lost whatever the vault backups (they do not hold a token's
/// keys), and afterwards the live vault, its token and its audit log are
/// as they were.
#[test]
fn drills_on_a_pkcs11_vault_leave_the_token_alone() {
    let e = Env::new_pkcs11();
    let off = e.dir.path().join("offsite");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B"]);
    let (a, r) = (data(150_000, 41), data(90_000, 42));
    e.ok(&["ds", "put", "TOK.LOGICAL", Env::s(&e.file("a", &a))]);
    e.ok(&["ds", "put", "TOK.RAW", Env::s(&e.file("r", &r))]);
    e.ok(&["backup", "run", "TOK.LOGICAL", "--to", "offsite"]);
    e.ok(&["backup", "run", "TOK.RAW", "--method", "raw", "--to", "offsite"]);
    e.ok(&["keystore", "backup", "--to", "offsite"]);
    e.ok(&["vault", "backup", "--to", "offsite"]);
    let mk_before = e.json(&["mk", "status"]);
    let audit_before = e.json(&["audit", "ls"]).as_array().unwrap().len();
    let o = e.cmd(&["risk", "drill", "--all", "--dual", "--json"]).output().unwrap();
    let cells: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)));
    let cells = cells.as_array().unwrap();
    assert_eq!(cells.len(), 2 * 55, "every threat and pair for both datasets");
    let bad: Vec<_> = cells.iter().filter(|c| c["agrees"] != true).collect();
    assert!(bad.is_empty(), "{} cells: {bad:#?}", bad.len());
    assert_eq!(o.status.code(), Some(0));
    let cell = |ds: &str, t: &[&str]| {
        cells.iter().find(|c| c["dataset"] == ds && c["threats"] == serde_json::json!(t)).unwrap().clone()
    };
    for t in ["master-key-loss", "hsm-loss"] {
        let c = cell("TOK.LOGICAL", &[t]);
        assert!(c["proven"] == false && c["modeled"]["why"].as_str().unwrap().contains("PKCS#11 token"), "{c:#}");
    }
    assert_eq!(cell("TOK.LOGICAL", &["catalog-loss"])["proven"], true, "back from the vault backup, through the token");
    assert_eq!(cell("TOK.LOGICAL", &["data-key-loss"])["proven"], true);
    assert_eq!(cell("TOK.RAW", &["disk-failure", "data-key-loss"])["proven"], true, "the keystore backup");
    // The live vault: same master keys, its audit log intact (the clones'
    // entries never moved the token's anchor), its data readable.
    assert_eq!(e.json(&["mk", "status"]), mk_before);
    let verdict = e.ok(&["audit", "verify"]);
    assert!(verdict.contains("audit log intact"), "{verdict}");
    assert!(e.json(&["audit", "ls"]).as_array().unwrap().len() > audit_before);
    assert_eq!(e.run(&["ds", "get", "TOK.LOGICAL"]).stdout, a);
    assert_eq!(e.run(&["ds", "get", "TOK.RAW"]).stdout, r);
}

#[test]
fn backups_raw_without_a_passphrase_and_logical_that_outlives_the_key() {
    let e = Env::new();
    let off = e.dir.path().join("offsite");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B", "--medium", "tape"]);
    let bytes = data(300_000, 31);
    e.ok(&["ds", "put", "BK.DATA", Env::s(&e.file("d", &bytes))]);
    // No passphrase: a raw copy works, a logical one cannot.
    let raw = e
        .cmd(&["backup", "run", "BK.**", "--method", "raw", "--to", "offsite", "--json"])
        .env_remove("CUSTOS_PASSPHRASE")
        .output()
        .unwrap();
    assert!(raw.status.success(), "{}", String::from_utf8_lossy(&raw.stderr));
    let raw: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let raw_id = raw[0]["id"].as_u64().unwrap().to_string();
    let o = e.cmd(&["backup", "run", "--to", "offsite"]).env_remove("CUSTOS_PASSPHRASE").output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("passphrase"));
    let logical = e.json(&["backup", "run", "--to", "offsite"]);
    assert_eq!(logical[0]["key_label"], "DSET.BACK.BK.key001");
    assert!(e.ok(&["backup", "run", "--to", "offsite"]).contains("already has a logical copy"));
    let ls = e.json(&["backup", "ls"]);
    assert_eq!(ls.as_array().unwrap().len(), 2);
    assert!(e.ok(&["backup", "show", &raw_id]).contains("shares the primary's key"));

    e.ok(&["key", "deactivate", "DSET.PRIM.BK.key001"]);
    e.ok(&["key", "destroy", "DSET.PRIM.BK.key001", "--crypto-erase"]);
    let err = e.fails(&["restore", "BK.DATA", "--backup", &raw_id], 5);
    assert!(err.contains("raw copy") && err.contains("cannot outlive its key"), "{err}");
    let out = e.ok(&["restore", "BK.DATA"]);
    assert!(out.contains("logical copy") && out.contains("verified"), "{out}");
    assert_eq!(e.run(&["ds", "get", "BK.DATA"]).stdout, bytes);
    e.ok(&["restore", "BK.DATA", "--as", "BK.COPY"]);
    assert_eq!(e.run(&["ds", "get", "BK.COPY"]).stdout, bytes);
    // Choosing a copy by generation and by time.
    e.ok(&["restore", "BK.DATA", "--generation", "1", "--as", "BK.GEN1"]);
    assert_eq!(e.run(&["ds", "get", "BK.GEN1"]).stdout, bytes);
    assert!(e.fails(&["restore", "BK.DATA", "--generation", "9"], 1).contains("generation 9"));
    assert!(e.fails(&["restore", "BK.DATA", "--at", "2000-01-01"], 1).contains("made at or before"));
    e.ok(&["restore", "BK.DATA", "--at", "2999-01-01", "--as", "BK.LATER"]);
    assert!(e.fails(&["restore", "BK.DATA", "--at", "yesterday"], 2).contains("invalid time"));
    assert!(e.fails(&["restore", "NONE.SUCH"], 1).contains("no backup of NONE.SUCH"));
    // Retention: no rule is refused; keep-last 1 keeps the newest of each series.
    assert!(e.fails(&["backup", "prune"], 1).contains("--keep-last"));
    let dry = e.ok(&["backup", "prune", "--keep-last", "1", "--dry-run"]);
    assert!(dry.contains("2 of 2 backups kept (dry run)"), "{dry}");
    // The raw copy went with the primary's key, and verify says so.
    // Its key is gone, not its bytes: exit 5 (a key's state), not 4.
    let o = e.run(&["backup", "verify", "--read-data"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(5), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains(&format!("backup {raw_id} (raw of BK.DATA): UNREADABLE (its key)"))
            && out.contains("cannot outlive its key"),
        "{out}"
    );
    assert!(out.contains("(logical of BK.DATA): ok"), "{out}");
}

/// Kill `backup run` (logical, then raw) at spread-out points: no backup is
/// ever listed that is not complete, and every listed one verifies in full.
#[test]
fn killed_backup_never_lists_an_incomplete_copy() {
    let e = Env::new();
    let off = e.dir.path().join("offsite");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B"]);
    for i in 0..4u8 {
        e.ok(&["ds", "put", &format!("KILL.D{i}"), Env::s(&e.file(&format!("d{i}"), &data(3_000_000, i)))]);
    }
    for method in ["logical", "raw"] {
        // Time a whole run on a copy of the vault.
        let copy = e.dir.path().join(format!("copy-{method}"));
        copy_dir(&e.vault, &copy);
        let t0 = std::time::Instant::now();
        e.cmd(&["backup", "run", "--method", method, "--to", "offsite"]).env("CUSTOS_VAULT", &copy).assert().success();
        let full = t0.elapsed().as_millis() as u64;
        let kills = 8u64;
        let mut interrupted = 0;
        for i in 0..kills {
            if e.run_killed(
                &["--threads", "2", "backup", "run", "--method", method, "--to", "offsite"],
                std::time::Duration::from_millis(full * i / kills),
            ) {
                interrupted += 1;
            }
            e.ok(&["backup", "verify", "--read-data"]);
        }
        assert!(interrupted > 0, "{method}: some kill must interrupt a run");
        e.ok(&["backup", "run", "--method", method, "--to", "offsite"]);
        let n = e.json(&["backup", "ls"]).as_array().unwrap().iter().filter(|b| b["method"] == method).count();
        assert_eq!(n, 4, "{method}: one copy per dataset, none twice, none missing");
    }
    e.ok(&["backup", "verify", "--read-data"]);
}

#[test]
fn snapshots_through_the_cli() {
    let e = Env::new();
    let v1 = data(200_000, 41);
    e.ok(&["ds", "put", "SN.DATA", Env::s(&e.file("v1", &v1))]);
    let sn = e.cmd(&["snapshot", "create", "SN.DATA", "--json"]).env_remove("CUSTOS_PASSPHRASE").output().unwrap();
    assert!(sn.status.success(), "a snapshot needs no passphrase: {}", String::from_utf8_lossy(&sn.stderr));
    let sn: serde_json::Value = serde_json::from_slice(&sn.stdout).unwrap();
    let id = sn["id"].as_u64().unwrap().to_string();
    e.ok(&["ds", "put", "SN.DATA", Env::s(&e.file("v2", &data(200_000, 42)))]);
    assert_eq!(e.json(&["snapshot", "ls"])[0]["generation"], 1);
    assert!(e.ok(&["snapshot", "restore", &id, "--as", "SN.OLD"]).contains("verified"));
    assert_eq!(e.run(&["ds", "get", "SN.OLD"]).stdout, v1);
    e.ok(&["snapshot", "rm", &id]);
    assert!(e.fails(&["snapshot", "rm", &id], 3).contains("no snapshot"));
    // Any named thing that does not exist is "not found" (exit 3).
    assert!(e.fails(&["backup", "show", "424242"], 3).contains("no backup 424242: see `custos backup ls`"));
    assert!(e.fails(&["request", "show", "424242"], 3).contains("no request 424242"));
    let help = e.ok(&["--help"]).split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(help.contains("8 not allowed (roles, grants), 10 `monitor` raised an alert"), "{help}");
    assert!(e.fails(&["snapshot", "create", "NO.SUCH"], 3).contains("no dataset named NO.SUCH"));
}

#[test]
fn mirror_through_the_cli() {
    let e = Env::new();
    let sec = e.dir.path().join("pprc");
    e.ok(&["volume", "add", "pprc", "--path", Env::s(&sec), "--site", "B"]);
    let bytes = data(150_000, 51);
    e.ok(&["ds", "put", "MC.DATA", Env::s(&e.file("d", &bytes))]);
    let o = e.cmd(&["mirror", "add", "default", "pprc"]).env_remove("CUSTOS_PASSPHRASE").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(e.ok(&["mirror", "status"]).contains("in sync"));
    e.ok(&["ds", "put", "MC.MORE", Env::s(&e.file("m", &bytes))]);
    std::fs::remove_dir_all(e.vault.join("volumes/default")).unwrap();
    assert_eq!(e.run(&["ds", "get", "MC.MORE"]).stdout, bytes);
    assert_eq!(e.run(&["ds", "get", "MC.DATA"]).stdout, bytes);
    assert!(e.fails(&["mirror", "add", "pprc", "pprc"], 1).contains("cannot mirror itself"));
    e.ok(&["mirror", "rm", "default"]);
    assert!(e.fails(&["mirror", "rm", "default"], 3).contains("no mirror of volume default"));
}

/// The tape tier on a real S3-protocol server: raw and logical copies go to
/// `s3://`, verify reads them back, a tampered object is named, the logical
/// copy restores after the primary key is gone, and nothing is overwritten.
#[test]
fn tape_volume_on_s3() {
    let s3 = custos_testing::S3Server::start("custos-tapes");
    let mut e = Env::new();
    e.env.extend(s3.env().into_iter().filter(|(k, _)| *k != "AWS_ENDPOINT_URL").map(|(k, v)| (k.to_string(), v)));
    e.ok(&["config", "set", "s3.endpoint", &s3.endpoint()]);
    assert!(e.fails(&["config", "set", "s3.endpoint", "ftp://x"], 1).contains("not an http"));
    // Object storage is the tape tier: a disk there is refused.
    let err = e.fails(&["volume", "add", "bad", "--url", "s3://custos-tapes/x", "--site", "C", "--medium", "disk"], 2);
    assert!(err.contains("tape tier"), "{err}");
    e.ok(&["volume", "add", "vault-tape", "--url", "s3://custos-tapes/site-c", "--site", "C"]);
    let vols = e.json(&["volume", "ls"]);
    assert_eq!(vols[1]["location"], "s3://custos-tapes/site-c");
    assert_eq!(vols[1]["medium"], "tape");

    let bytes = data(400_000, 77);
    e.ok(&["ds", "put", "TAPE.DATA", Env::s(&e.file("d", &bytes))]);
    let raw = e.json(&["backup", "run", "TAPE.**", "--method", "raw", "--to", "vault-tape"]);
    let raw_id = raw[0]["id"].as_u64().unwrap().to_string();
    let logical = e.json(&["backup", "run", "TAPE.**", "--to", "vault-tape"]);
    let logical_id = logical[0]["id"].as_u64().unwrap().to_string();
    // 7 chunks of 64 KiB each for two copies, plus their manifests.
    assert_eq!(s3.count_objects("site-c/chunks/"), 14);
    assert_eq!(s3.count_objects("site-c/manifests/"), 2);
    assert!(e.ok(&["backup", "verify", "--read-data"]).contains("ok"));

    // An incremental after one chunk changes writes one new chunk per copy, never over an old one.
    let mut changed = bytes.clone();
    changed[10] ^= 1;
    e.ok(&["ds", "put", "TAPE.DATA", Env::s(&e.file("d2", &changed))]);
    e.ok(&["backup", "run", "TAPE.**", "--to", "vault-tape"]);
    assert_eq!(s3.count_objects("site-c/chunks/"), 15);

    // The primary key is destroyed: the logical tape copy restores, the raw one cannot.
    e.ok(&["key", "deactivate", "DSET.PRIM.TAPE.key001"]);
    e.ok(&["key", "destroy", "DSET.PRIM.TAPE.key001", "--crypto-erase"]);
    assert!(e.fails(&["restore", "TAPE.DATA", "--backup", &raw_id], 5).contains("cannot outlive its key"));
    e.ok(&["restore", "TAPE.DATA", "--backup", &logical_id, "--as", "TAPE.BACK"]);
    assert_eq!(e.run(&["ds", "get", "TAPE.BACK"]).stdout, bytes);
    e.ok(&["restore", "TAPE.DATA"]);
    assert_eq!(e.run(&["ds", "get", "TAPE.DATA"]).stdout, changed);

    // Tampering on the server is caught and named by backup and chunk.
    let keys = s3.keys("site-c/chunks/");
    assert_eq!(keys.len(), 15);
    for key in &keys {
        s3.put_raw(key, b"not a sealed chunk");
    }
    // Damage is exit 4 (integrity), as for a damaged dataset.
    let o = e.run(&["backup", "verify", "--read-data"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(4), "{out}");
    let line = out.lines().find(|l| l.starts_with(&format!("backup {logical_id} "))).unwrap_or_default();
    assert!(line.contains("DAMAGED") && keys.iter().any(|k| line.contains(k.rsplit('/').next().unwrap())), "{out}");

    // A server that is gone is reported with the volume's name.
    drop(s3);
    // Not "damaged": its bytes were never read. The raw copy's key is gone
    // for good, which the exit code says first (5).
    let o = e.run(&["backup", "verify"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(5), "{out}");
    assert!(
        out.lines()
            .filter(|l| l.contains("NOT CHECKED (unreachable)") && l.contains("volume vault-tape is not reachable"))
            .count()
            == 2,
        "{out}"
    );
    assert!(out.contains("(raw of TAPE.DATA): UNREADABLE (its key)"), "{out}");
    // Adding a volume where no server answers fails and adds nothing.
    let err = e.fails(&["volume", "add", "t2", "--url", "s3://custos-tapes/other", "--site", "C"], 7);
    assert!(err.contains("t2"), "{err}");
    assert_eq!(e.json(&["volume", "ls"]).as_array().unwrap().len(), 2);
}

/// A store that ignores conditional writes (s3rver) would make a tape
/// volume that is not write-once: `volume add` refuses it, saying why, and
/// adds nothing.
#[test]
fn a_tape_volume_is_refused_where_the_store_overwrites() {
    let s3 = custos_testing::S3rver::start("custos-tapes");
    let mut e = Env::new();
    e.env.extend(s3.env().into_iter().map(|(k, v)| (k.to_string(), v)));
    let err = e.fails(&["volume", "add", "t", "--url", "s3://custos-tapes/site-c", "--site", "C"], 1);
    assert!(err.contains("volume t") && err.contains("would not be write-once"), "{err}");
    assert_eq!(e.json(&["volume", "ls"]).as_array().unwrap().len(), 1);
}

/// `hsm run`: backs up what changed, prunes, migrates unused datasets to
/// tape; a second run does nothing; a read recalls a migrated dataset.
#[test]
fn hsm_run_prunes_the_series_that_changed_and_all_of_them_when_the_rules_change() {
    let e = Env::new();
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&e.dir.path().join("off")), "--site", "B"]);
    e.ok(&["hsm", "rule", "add", "all", "--pattern", "R.**", "--backup-to", "offsite", "--keep-last", "1"]);
    let put = |name: &str, n: u8| e.ok(&["ds", "put", name, Env::s(&e.file("f", &data(1_000, n)))]);
    let copies =
        |name: &str| e.json(&["backup", "ls"]).as_array().unwrap().iter().filter(|b| b["dataset"] == name).count();
    put("R.A", 1);
    put("R.B", 2);
    let out = e.ok(&["hsm", "run"]);
    assert!(out.contains("R.A [all] backup: made") && out.contains("R.B [all] backup: made"), "{out}");
    put("R.A", 3);
    let out = e.ok(&["hsm", "run"]);
    assert!(out.contains("R.A [all] backup: made") && out.contains("R.A [all] prune: deleted 1"), "{out}");
    assert!(!out.contains("R.B"), "nothing changed for R.B: {out}");
    // A copy made outside the run is pruned by the next run.
    put("R.B", 4);
    e.ok(&["backup", "run", "R.B", "--to", "offsite"]);
    assert_eq!(copies("R.B"), 2);
    let out = e.ok(&["hsm", "run"]);
    assert!(out.contains("R.B [all] prune: deleted 1") && !out.contains("R.A"), "{out}");
    assert!(e.ok(&["hsm", "run"]).contains("nothing to do"));
    // Under a more specific rule R.A keeps more copies; when that rule
    // goes, the next run prunes R.A's series though it gained no copy.
    e.ok(&["hsm", "rule", "add", "keep", "--pattern", "R.A", "--backup-to", "offsite", "--keep-last", "5"]);
    for n in [5, 6] {
        put("R.A", n);
        assert!(e.ok(&["hsm", "run"]).contains("R.A [keep] backup: made"));
    }
    assert_eq!(copies("R.A"), 3);
    e.ok(&["hsm", "rule", "rm", "keep"]);
    let dry = e.ok(&["hsm", "run", "--dry-run"]);
    assert!(dry.contains("R.A [all] prune: would delete 2"), "{dry}");
    assert_eq!(copies("R.A"), 3, "a dry run deletes nothing");
    let out = e.ok(&["hsm", "run"]);
    assert!(out.contains("R.A [all] prune: deleted 2") && !out.contains("R.B"), "{out}");
    assert_eq!((copies("R.A"), copies("R.B")), (1, 1));
    e.ok(&["backup", "verify", "--read-data"]);
}

#[test]
fn hsm_run_backs_up_migrates_and_recalls() {
    let e = Env::new();
    let (off, tape) = (e.dir.path().join("off"), e.dir.path().join("tape"));
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B"]);
    e.ok(&["volume", "add", "ml2", "--path", Env::s(&tape), "--site", "C", "--medium", "tape"]);
    let err = e.fails(
        &["hsm", "rule", "add", "x", "--pattern", "**", "--migrate-to", "offsite", "--migrate-after-days", "1"],
        1,
    );
    assert!(err.contains("tape volumes"), "{err}");
    assert!(e.fails(&["hsm", "rule", "add", "x", "--pattern", "**"], 1).contains("does nothing"));
    e.ok(&[
        "hsm",
        "rule",
        "add",
        "cold",
        "--pattern",
        "COLD.**",
        "--backup-to",
        "offsite",
        "--keep-last",
        "2",
        "--migrate-after-days",
        "0",
        "--migrate-to",
        "ml2",
    ]);
    e.ok(&[
        "hsm",
        "rule",
        "add",
        "hot",
        "--pattern",
        "HOT.**",
        "--backup-to",
        "offsite",
        "--method",
        "raw",
        "--migrate-after-days",
        "30",
        "--migrate-to",
        "ml2",
    ]);
    assert_eq!(e.json(&["hsm", "rule", "ls"]).as_array().unwrap().len(), 2);
    let cold = data(300_000, 5);
    e.ok(&["ds", "put", "COLD.ARCHIVE", Env::s(&e.file("c", &cold))]);
    e.ok(&["ds", "put", "HOT.LEDGER", Env::s(&e.file("h", &data(100_000, 6)))]);
    e.ok(&["ds", "put", "OTHER.DATA", Env::s(&e.file("o", &data(10, 7)))]);
    let default_chunks = |e: &Env| walkdir_count(&e.vault.join("volumes/default/chunks"));
    let before = default_chunks(&e);

    // Dry run: says what it would do, changes nothing.
    let dry = e.ok(&["hsm", "run", "--dry-run"]);
    assert!(dry.contains("COLD.ARCHIVE [cold] backup: would make a logical copy"), "{dry}");
    assert!(dry.contains("COLD.ARCHIVE [cold] migrate: would migrate"), "{dry}");
    assert!(dry.contains("HOT.LEDGER [hot] backup: would make a raw copy"), "{dry}");
    assert!(!dry.contains("OTHER.DATA") && !dry.contains("HOT.LEDGER [hot] migrate"), "{dry}");
    assert_eq!(e.json(&["backup", "ls"]).as_array().unwrap().len(), 0);

    // Without keys: the raw copy and the migration happen, the logical copy waits.
    let o = e.cmd(&["hsm", "run", "--without-keys"]).env_remove("CUSTOS_PASSPHRASE").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("COLD.ARCHIVE [cold] skip: a logical copy") && out.contains("needs the passphrase"), "{out}");
    assert!(out.contains("HOT.LEDGER [hot] backup: made a raw copy"), "{out}");
    assert!(out.contains("COLD.ARCHIVE [cold] migrate"), "{out}");
    // COLD.ARCHIVE's 5 chunks left the disk volume for the tape.
    assert_eq!(default_chunks(&e), before - 5);
    let info = e.ok(&["ds", "info", "COLD.ARCHIVE"]);
    assert!(info.contains("ml2 (site C, tape") && info.contains("migrated     from volume default"), "{info}");
    // Verifying reads the tape copy and neither recalls it nor counts as a use.
    e.ok(&["ds", "verify", "COLD.ARCHIVE"]);
    assert!(e.ok(&["ds", "info", "COLD.ARCHIVE"]).contains("migrated     from volume default"));

    // With the passphrase the logical copy is made from tape; then a run finds nothing to do.
    let out = e.ok(&["hsm", "run"]);
    assert!(out.contains("COLD.ARCHIVE [cold] backup: made a logical copy"), "{out}");
    assert!(e.ok(&["hsm", "run"]).contains("nothing to do"));
    assert_eq!(e.json(&["backup", "ls"]).as_array().unwrap().len(), 2);

    // A read recalls the dataset to its volume, transparently.
    assert_eq!(e.run(&["ds", "get", "COLD.ARCHIVE"]).stdout, cold);
    let info = e.ok(&["ds", "info", "COLD.ARCHIVE"]);
    assert!(info.contains("volume       default") && !info.contains("migrated "), "{info}");
    assert_eq!(default_chunks(&e), before);
    assert_eq!(walkdir_count(&tape.join("chunks")), 0, "the recall scratches the tape copy");

    // Each change is backed up once; keep-last 2 prunes the third oldest.
    for i in 0..3u8 {
        e.ok(&["ds", "put", "COLD.ARCHIVE", Env::s(&e.file("c2", &data(300_000, 50 + i)))]);
        let out = e.ok(&["hsm", "run"]);
        assert!(out.contains("backup: made a logical copy"), "{out}");
    }
    let copies = e.json(&["backup", "ls", "COLD.**"]);
    assert_eq!(copies.as_array().unwrap().len(), 2, "{copies}");
    assert!(e.ok(&["backup", "verify", "COLD.**", "--read-data"]).contains("ok"));
    e.ok(&["hsm", "rule", "rm", "cold"]);
    assert!(e.fails(&["hsm", "rule", "rm", "cold"], 3).contains("no hsm rule \"cold\""));
}

/// Progress goes to a terminal only: under a pseudo-terminal (`script`)
/// `ds put` draws a bar; with output piped, standard error stays empty. The
/// bar names what it works on, labels the time left and fits the line (no
/// wrapping), and its line is cleared before the command says what it did:
/// no last frame stays on screen.
#[test]
fn progress_bars_only_on_a_terminal() {
    let e = Env::new();
    let big = e.file("big", &data(48 << 20, 9));
    let o = e.run(&["ds", "put", "BIG.DATA", Env::s(&big)]);
    assert!(o.status.success());
    assert!(o.stderr.is_empty(), "piped: {}", String::from_utf8_lossy(&o.stderr));
    let bin = assert_cmd::cargo::cargo_bin("custos");
    let at_a_terminal = |args: &str| -> String {
        let o = std::process::Command::new("script")
            .args(["-qec", &format!("{} {args}", bin.display()), "/dev/null"])
            .env("CUSTOS_VAULT", &e.vault)
            .env("CUSTOS_PASSPHRASE", PASS)
            .envs(e.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("TERM", "xterm")
            .output()
            .expect("script(1) from util-linux runs");
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(o.status.success(), "{args}: {out}");
        out
    };
    let out = at_a_terminal(&format!("ds put BIG.COPY {}", Env::s(&big)));
    assert!(out.contains("put BIG.COPY [") && out.contains("MiB") && out.contains(" left"), "no bar drawn: {out:?}");
    assert!(!out.contains("\u{1b}[1A"), "a frame wrapped onto a second line: {out:?}");
    assert!(out.contains("stored BIG.COPY generation 1"), "{out}");
    let to = e.dir.path().join("out.bin");
    let get = at_a_terminal(&format!("ds get BIG.COPY -o {}", to.display()));
    assert_eq!(std::fs::read(&to).unwrap().len(), 48 << 20);
    let said = get.find("wrote ").unwrap_or_else(|| panic!("{get:?}"));
    let last_frame = get.rfind("get BIG.COPY").unwrap_or_else(|| panic!("no frame was drawn: {get:?}"));
    assert!(last_frame < said, "a frame after the message: {get:?}");
    assert!(get[last_frame..said].contains("\u{1b}[2K"), "the bar's line is cleared first: {get:?}");
}

/// `risk report` in each format, and `risk drill` failing when reality
/// disagrees with the model.
#[test]
fn risk_report_and_drill_through_the_cli() {
    let e = Env::new();
    let off = e.dir.path().join("off");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B"]);
    e.ok(&["ds", "put", "APP.ONE", Env::s(&e.file("a", &data(150_000, 3)))]);
    e.ok(&["ds", "put", "RAW.ONE", Env::s(&e.file("b", &data(150_000, 4)))]);
    e.ok(&["backup", "run", "APP.**", "--to", "offsite"]);
    e.ok(&["backup", "run", "RAW.**", "--method", "raw", "--to", "offsite"]);
    let t = e.ok(&["risk", "report"]);
    let key_row = t.lines().find(|l| l.starts_with("Key loss")).expect("key-loss row");
    assert!(key_row.contains("yes: backup 1") && key_row.contains("NO"), "{t}");
    assert!(t.contains("[shared-key] RAW.ONE"), "{t}");
    assert!(t.contains("Every key with material was checked in the HSM"), "{t}");
    assert!(e.fails(&["risk", "report", "ZZZ.**"], 3).contains("no dataset matches ZZZ.**"));
    // Looking ahead: a rule keeping one copy does not reach back 90 days.
    e.ok(&["hsm", "rule", "add", "short", "--pattern", "APP.**", "--backup-to", "offsite", "--keep-last", "1"]);
    let t = e.ok(&["risk", "report", "--horizon", "90d"]);
    assert!(t.contains("[retention-shorter-than-horizon] hsm rule short") && t.contains("Looked 90 days ahead"), "{t}");
    assert!(!e.ok(&["risk", "report"]).contains("retention-shorter"));
    assert_eq!(e.json(&["risk", "report", "--format", "json", "--horizon", "90d"])["horizon_days"], 90);
    for bad in ["-3d", "0s", "soon"] {
        assert!(e.fails(&["risk", "report", &format!("--horizon={bad}")], 2).contains("--horizon"), "{bad}");
    }
    let j = e.json(&["risk", "report", "--format", "json", "--dual"]);
    assert_eq!(j["datasets"][0]["dual"].as_array().unwrap().len(), 45);
    let md = e.ok(&["risk", "report", "--format", "markdown"]);
    assert!(md.starts_with("# Custos risk report") && md.contains("| Key loss |"), "{md}");
    let html = e.dir.path().join("r.html");
    e.cmd(&["risk", "report", "--format", "html", "-o", Env::s(&html)]).assert().success();
    assert!(std::fs::read_to_string(&html).unwrap().contains("<table class=\"risk\""));
    // Drill one threat: the model holds.
    let out = e.ok(&["risk", "drill", "--threat", "data-key-loss"]);
    assert!(out.contains("2 cells: 2 agree with the model, 0 disagree, 0 could not be drilled"), "{out}");
    assert!(e.fails(&["risk", "drill", "--threat", "meteor"], 2).contains("no threat"));
    assert!(e.fails(&["risk", "drill"], 2).contains("--all"));
    // Rot the logical copy behind the catalog's back: the drill now fails.
    // Its chunks are loose or in packs (ADR 0030): a bit every 512 bytes.
    let rotted: Vec<_> = walk_files(&off.join("chunks")).into_iter().chain(walk_files(&off.join("packs"))).collect();
    assert!(!rotted.is_empty());
    for f in rotted {
        let mut b = std::fs::read(&f).unwrap();
        for i in (30..b.len()).step_by(512) {
            b[i] ^= 1;
        }
        std::fs::write(&f, b).unwrap();
    }
    let o = e.run(&["risk", "drill", "--threat", "data-key-loss", "APP.**"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("DISAGREES") && String::from_utf8_lossy(&o.stderr).contains("analyzer is wrong"), "{out}");
}

/// The audit log records every command, and `audit verify` names the
/// entry that was edited, deleted or moved in the database file, and a
/// tail cut after a checkpoint.
#[test]
fn audit_log_is_tamper_evident() {
    let fresh = || {
        let e = Env::new();
        e.ok(&["ds", "put", "AUD.ONE", Env::s(&e.file("a", b"alpha"))]);
        e.ok(&["key", "ls"]);
        e.cmd(&["ds", "get", "NO.SUCH"]).assert().failure();
        e.ok(&["ds", "get", "AUD.ONE"]);
        e
    };
    let e = fresh();
    let rows = e.json(&["audit", "ls"]);
    let rows = rows.as_array().unwrap();
    let actions: Vec<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions[0], "init");
    let at = |a: &str| rows.iter().position(|r| r["action"] == a).unwrap();
    let put = at("ds put");
    // Each command: its intent before it acts, its outcome after.
    assert_eq!(
        &actions[put..put + 8],
        ["ds put", "ds put", "key ls", "key ls", "ds get", "ds get", "ds get", "ds get"],
        "{rows:?}"
    );
    let results: Vec<&str> = rows[put..put + 8].iter().map(|r| r["result"].as_str().unwrap()).collect();
    assert_eq!(&results[..5], ["intent", "ok", "intent", "ok", "intent"], "{rows:?}");
    assert!(results[5].starts_with("failed: no dataset named NO.SUCH"), "{rows:?}");
    assert_eq!(rows[put]["object"], "AUD.ONE");
    assert_eq!(rows[put]["principal"], "ops");
    assert_eq!(rows[0]["principal"], "admin");
    let seq = |i: usize| rows[i]["seq"].as_u64().unwrap();
    let (s_put, s_ls, s_fail) = (seq(put + 1), seq(put + 2), seq(put + 5));
    assert!(e.ok(&["audit", "verify"]).contains("audit log intact"));
    let by_object = e.json(&["audit", "ls", "--object", "AUD.ONE"]);
    assert_eq!(by_object.as_array().unwrap().len(), 4);
    // init; four settings, adding ops and its two grants, each intent and
    // outcome: the admin's fifteen.
    let admin = rows.iter().filter(|r| r["principal"] == "admin").count();
    assert_eq!(admin, 15, "{rows:?}");
    assert_eq!(e.json(&["audit", "ls", "--principal", "admin"]).as_array().unwrap().len(), admin);
    let jsonl = e.ok(&["audit", "export", "--jsonl"]);
    assert!(jsonl.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    // No secret reaches the log: neither the passphrase nor a credential.
    assert!(!jsonl.contains(PASS) && !jsonl.contains(OPS_CRED) && !jsonl.contains(ADMIN_CRED));

    let db = |e: &Env| rusqlite::Connection::open(e.vault.join("custos.db")).unwrap();
    // Edited.
    db(&e).execute("UPDATE audit_log SET principal = 'mallory' WHERE seq = ?1", [s_put]).unwrap();
    let err = e.fails(&["audit", "verify"], 4);
    assert!(err.contains(&format!("entry {s_put} (ds put AUD.ONE by mallory) was modified")), "{err}");
    // Deleted.
    let e = fresh();
    db(&e).execute("DELETE FROM audit_log WHERE seq = ?1", [s_ls]).unwrap();
    let err = e.fails(&["audit", "verify"], 4);
    assert!(err.contains(&format!("entry {s_ls} was deleted")), "{err}");
    // Reordered: two entries swap places.
    let e = fresh();
    let c = db(&e);
    c.execute("UPDATE audit_log SET seq = -1 WHERE seq = ?1", [s_put]).unwrap();
    c.execute("UPDATE audit_log SET seq = ?1 WHERE seq = ?2", [s_put, s_ls]).unwrap();
    c.execute("UPDATE audit_log SET seq = ?1 WHERE seq = -1", [s_ls]).unwrap();
    let err = e.fails(&["audit", "verify"], 4);
    assert!(err.contains(&format!("entry {s_put} (key ls")) && err.contains("modified or moved"), "{err}");
    // Rewritten: an entry edited and the whole chain recomputed as plain
    // SHA-256 links (keyed ones cannot be recomputed without the key); the
    // entry the HSM anchored no longer matches, so the HSM will not open.
    let e = fresh();
    db(&e).execute("UPDATE audit_log SET result = 'ok' WHERE seq = ?1", [s_fail]).unwrap();
    db(&e).execute("DELETE FROM audit_checkpoints", []).unwrap();
    rechain(&db(&e));
    let err = e.fails(&["audit", "verify"], 4);
    assert!(err.contains("is not the one its HSM recorded"), "{err}");
    // Edited without touching the chain: the keyed link names the entry.
    let e = fresh();
    db(&e).execute("UPDATE audit_log SET result = 'ok' WHERE seq = ?1", [s_fail]).unwrap();
    let err = e.fails(&["audit", "verify"], 4);
    assert!(err.contains(&format!("entry {s_fail} (ds get NO.SUCH by ops) was modified")), "{err}");
    // Truncated: the newest entries, and their checkpoints, are cut. The
    // HSM anchored the last entry the last command wrote.
    let e = fresh();
    e.ok(&["ds", "verify", "AUD.ONE"]);
    let n: i64 = db(&e).query_row("SELECT MAX(seq) FROM audit_log", [], |r| r.get(0)).unwrap();
    db(&e).execute("DELETE FROM audit_log WHERE seq >= ?1", [n - 1]).unwrap();
    db(&e).execute("DELETE FROM audit_checkpoints WHERE seq >= ?1", [n - 1]).unwrap();
    // (Run directly: `fails` lists the vault first, and those commands would
    // append.) `audit verify` opens the HSM before it records anything.
    let o = e.run(&["audit", "verify"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains(&format!("ends at entry {}, but the HSM recorded entry {n}", n - 2)), "{err}");
    // More entries appended after the cut, up past the anchor: the entry
    // there is not the one the HSM recorded.
    e.ok(&["key", "ls"]);
    let o = e.run(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not the one its HSM recorded"));
}

/// A catalog put back from a copy taken one or ten commands earlier is
/// refused when the HSM opens, naming the entry the catalog ends at and
/// the one the HSM recorded; a security-admin's `audit accept-rollback`
/// carries on with it, and the log then verifies. Commands that need no key
/// never open the HSM in embedded mode (a server opens it at start).
#[test]
fn a_rolled_back_catalog_is_refused_until_accepted() {
    for n in [1usize, 10] {
        let e = Env::new();
        let first = data(5_000, 1);
        e.ok(&["ds", "put", "RB.ONE", Env::s(&e.file("a", &first))]);
        e.cmd(&["user", "add", "clerk", "--role", "app"])
            .env("CUSTOS_NEW_CREDENTIAL", "a clerk's own credential")
            .assert()
            .success();
        let db = e.vault.join("custos.db");
        assert!(!e.vault.join("custos.db-wal").exists(), "a finished command leaves the catalog in one file");
        let copy = std::fs::read(&db).unwrap();
        let head = |e: &Env| {
            let c = rusqlite::Connection::open(e.vault.join("custos.db")).unwrap();
            c.query_row("SELECT MAX(seq) FROM audit_log", [], |r| r.get::<_, i64>(0)).unwrap()
        };
        let old_head = head(&e);
        for i in 0..n {
            e.ok(&["ds", "put", "RB.ONE", Env::s(&e.file("b", &data(5_000, 2 + i as u8)))]);
        }
        let new_head = head(&e);
        assert!(!e.vault.join("custos.db-wal").exists());
        std::fs::write(&db, &copy).unwrap();
        let o = e.run(&["ds", "get", "RB.ONE"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(4), "{n}: {err}");
        // It opened the HSM before it recorded anything.
        assert!(err.contains(&format!("ends at entry {old_head},")), "{n}: {err}");
        assert!(err.contains(&format!("the HSM recorded entry {new_head}")), "{n}: {err}");
        assert!(err.contains("audit accept-rollback"), "{err}");
        assert!(o.stdout.is_empty(), "nothing was read");
        // Not for an application to decide.
        e.as_user("clerk", "a clerk's own credential").fails(&["audit", "accept-rollback"], 8);
        let admin = e.as_user("admin", ADMIN_CRED);
        admin.ok(&["audit", "accept-rollback"]);
        assert_eq!(e.run(&["ds", "get", "RB.ONE"]).stdout, first, "the older catalog's content");
        let verdict = admin.ok(&["audit", "verify"]);
        assert!(verdict.contains("audit log intact"), "{verdict}");
        let rows = admin.json(&["audit", "ls"]);
        assert!(rows.as_array().unwrap().iter().any(|r| r["action"] == "audit accept-rollback" && r["result"] == "ok"));
    }
}

/// Disaster recovery: the whole site is lost (the vault directory with its
/// catalog, HSM file and default volume). On a fresh directory `vault
/// recover` from the offsite volume brings the vault back: every dataset
/// with an offsite copy restores byte for byte, its keys, history and
/// principals are there, and the audit log verifies; what was written after
/// the vault backup is, honestly, not.
#[test]
fn the_vault_survives_the_loss_of_its_site() {
    let e = Env::new();
    let off = e.dir.path().join("offsite");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B"]);
    let (a, b) = (data(150_000, 7), data(90_000, 9));
    e.ok(&["ds", "put", "DR.A", Env::s(&e.file("a", &a))]);
    e.ok(&["ds", "put", "DR.B", Env::s(&e.file("b", &b))]);
    e.ok(&["backup", "run", "DR.**", "--to", "offsite"]);
    e.ok(&["keystore", "backup", "--to", "offsite"]);
    let codes = |e: &Env| -> Vec<String> {
        let r = e.json(&["risk", "report"]);
        r["findings"].as_array().unwrap().iter().map(|f| f["code"].as_str().unwrap().to_string()).collect()
    };
    assert!(codes(&e).contains(&"no-vault-backup".to_string()), "the report says the vault itself is at risk");
    let out = e.ok(&["vault", "backup", "--to", "offsite"]);
    assert!(out.contains("read back and opened"), "{out}");
    assert!(!codes(&e).contains(&"no-vault-backup".to_string()), "and no longer once one is off site");
    assert_eq!(e.json(&["vault", "backups"]).as_array().unwrap().len(), 1);
    let backups = e.json(&["backup", "ls"]).as_array().unwrap().len();
    let keys = e.json(&["key", "ls"]).as_array().unwrap().len();
    // Nothing in it can be read without the passphrase.
    let sealed: Vec<u8> = walk_files(&off.join("vault")).iter().flat_map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!sealed.windows(6).any(|w| w == b"DR.A\0\0" || w == b"SQLite"), "the catalog is sealed");
    e.ok(&["ds", "put", "DR.LATE", Env::s(&e.file("l", b"after the vault backup"))]);
    // The site is lost.
    std::fs::remove_dir_all(&e.vault).unwrap();
    let r = e.at(e.dir.path().join("recovered"));
    let out = r.ok(&["vault", "recover", "--from", Env::s(&off)]);
    assert!(out.contains("recovered vault") && out.contains("volume default lived inside the lost vault"), "{out}");
    // A second recovery into the same directory is refused.
    let again = r.run(&["vault", "recover", "--from", Env::s(&off)]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(r.json(&["backup", "ls"]).as_array().unwrap().len(), backups, "the history is back");
    assert_eq!(r.json(&["key", "ls"]).as_array().unwrap().len(), keys, "and every key");
    r.ok(&["restore", "DR.A"]);
    r.ok(&["restore", "DR.B"]);
    assert_eq!(r.run(&["ds", "get", "DR.A"]).stdout, a);
    assert_eq!(r.run(&["ds", "get", "DR.B"]).stdout, b);
    let verdict = r.ok(&["audit", "verify"]);
    assert!(verdict.contains("audit log intact"), "{verdict}");
    let rows = r.json(&["audit", "ls"]);
    assert!(rows.as_array().unwrap().iter().any(|x| x["action"] == "vault recover"));
    let late = r.run(&["ds", "get", "DR.LATE"]);
    assert_eq!(late.status.code(), Some(3), "written after the vault backup: not in it");
    // A wrong passphrase opens nothing and leaves no vault behind.
    let wrong = e.at(e.dir.path().join("wrong"));
    let o = wrong
        .cmd(&["vault", "recover", "--from", Env::s(&off)])
        .env("CUSTOS_PASSPHRASE", "not the passphrase!")
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("wrong passphrase"), "{o:?}");
    assert!(!e.dir.path().join("wrong").exists(), "nothing half-recovered is left");
    // A changed byte anywhere in the backup is named, and nothing is made.
    let cvb = walk_files(&off.join("vault")).into_iter().find(|f| f.extension().is_some_and(|x| x == "cvb")).unwrap();
    let good = std::fs::read(&cvb).unwrap();
    for at in [20, good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        std::fs::write(&cvb, &bad).unwrap();
        let o = e.at(e.dir.path().join("damaged")).run(&["vault", "recover", "--from", Env::s(&off)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "byte {at}");
        assert!(
            err.contains("altered") || err.contains("damaged") || err.contains("wrong passphrase"),
            "byte {at}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(!e.dir.path().join("damaged").exists(), "byte {at}: nothing half-recovered is left");
    }
    std::fs::write(&cvb, &good).unwrap();
}

/// `key ls` and `ds ls` page: in name order, at most --limit, after
/// --after, with or without a pattern; together the pages are the whole
/// listing, once each. `audit ls`, `backup ls`, `snapshot ls` and
/// `request ls` page by number.
#[test]
fn key_ls_and_ds_ls_page_in_name_order() {
    let e = Env::new();
    e.ok(&["key", "create", "--app", "PAGE", "--count", "5", "--activate"]);
    let names = |args: &[&str], field: &str| -> Vec<String> {
        e.json(args).as_array().unwrap().iter().map(|k| k[field].as_str().unwrap().to_string()).collect()
    };
    let all = names(&["key", "ls", "*.*.PAGE.*"], "label");
    assert_eq!(all.len(), 5);
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut args = vec!["key", "ls", "*.*.PAGE.*", "--limit", "2"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let page = names(&args, "label");
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        paged.extend(page);
    }
    assert_eq!(paged, all, "the pages are the listing, in order, once each");
    let first = names(&["key", "ls", "--limit", "1"], "label");
    assert_eq!(first.len(), 1);
    for d in ["PG.A.ONE", "PG.A.TWO", "PG.B.ONE", "PH.A"] {
        e.ok(&["ds", "put", d, Env::s(&e.file("x", d.as_bytes()))]);
    }
    assert_eq!(names(&["ds", "ls", "PG.A.**", "--limit", "1"], "name"), ["PG.A.ONE"]);
    assert_eq!(names(&["ds", "ls", "PG.A.**", "--after", "PG.A.ONE"], "name"), ["PG.A.TWO"]);
    assert!(names(&["ds", "ls", "PG.A.**", "--after", "PG.A.TWO", "--limit", "5"], "name").is_empty());
    assert_eq!(names(&["ds", "ls", "PG.**", "--limit", "5"], "name"), ["PG.A.ONE", "PG.A.TWO", "PG.B.ONE"]);
    let o = e.run(&["ds", "ls", "--limit", "0"]);
    assert_eq!(o.status.code(), Some(2), "a page of nothing is a usage error");
    // The audit log pages by sequence number, filters included.
    let seqs = |args: &[&str]| -> Vec<u64> {
        e.json(args).as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect()
    };
    let all = seqs(&["audit", "ls", "--principal", "ops"]);
    assert!(all.len() > 6, "{all:?}");
    let first = seqs(&["audit", "ls", "--principal", "ops", "--limit", "3"]);
    assert_eq!(first, all[..3]);
    let next = seqs(&["audit", "ls", "--principal", "ops", "--limit", "3", "--after", &first[2].to_string()]);
    assert_eq!(next, all[3..6]);
    // Backups and snapshots page by id, a pattern applied within the page;
    // requests newest first, before an id.
    let off = e.dir.path().join("off");
    e.ok(&["volume", "add", "off", "--path", Env::s(&off), "--site", "B"]);
    e.ok(&["backup", "run", "PG.**", "--method", "raw", "--to", "off"]);
    e.ok(&["backup", "run", "PH.**", "--method", "raw", "--to", "off"]);
    e.ok(&["backup", "run", "PG.A.**", "--method", "logical", "--to", "off"]);
    let ids = |args: &[&str]| -> Vec<u64> {
        e.json(args).as_array().unwrap().iter().map(|r| r["id"].as_u64().unwrap()).collect()
    };
    let all = ids(&["backup", "ls", "PG.A.**"]);
    assert_eq!(all.len(), 4, "two raw and two logical copies of PG.A");
    let first = ids(&["backup", "ls", "PG.A.**", "--limit", "3"]);
    assert_eq!(first, all[..3]);
    assert_eq!(ids(&["backup", "ls", "PG.A.**", "--after", &first[2].to_string()]), all[3..]);
    assert!(ids(&["backup", "ls", "--after", &all[3].to_string()]).is_empty(), "nothing after the newest");
    for d in ["PG.A.ONE", "PH.A", "PG.B.ONE"] {
        e.ok(&["snapshot", "create", d]);
    }
    let snaps = ids(&["snapshot", "ls", "PG.**"]);
    assert_eq!(snaps.len(), 2);
    assert_eq!(ids(&["snapshot", "ls", "PG.**", "--limit", "1"]), snaps[..1]);
    assert_eq!(ids(&["snapshot", "ls", "PG.**", "--after", &snaps[0].to_string()]), snaps[1..]);
    e.ok(&["config", "set", "dual-control", "key-destroy"]);
    for k in &paged[..3] {
        e.ok(&["key", "deactivate", k]);
        e.ok(&["key", "destroy", k]);
    }
    let reqs = ids(&["request", "ls"]);
    assert!(reqs.len() == 3 && reqs.windows(2).all(|w| w[0] > w[1]), "newest first: {reqs:?}");
    assert_eq!(ids(&["request", "ls", "--limit", "2"]), reqs[..2]);
    assert_eq!(ids(&["request", "ls", "--before", &reqs[1].to_string()]), reqs[2..]);
    assert_eq!(e.json(&["request", "show", &reqs[2].to_string()])["id"], reqs[2]);
}

/// Retention for vault backups: per volume, the newest N stay (the newest
/// always), the rest go from the volume and from the catalog; a dry run
/// deletes nothing; and pruning never leaves the vault without its offsite
/// copy.
#[test]
fn vault_backups_are_pruned_per_volume_keeping_the_newest() {
    let e = Env::new();
    let (off, other) = (e.dir.path().join("offsite"), e.dir.path().join("other"));
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B"]);
    e.ok(&["volume", "add", "other", "--path", Env::s(&other), "--site", "C"]);
    for to in ["offsite", "offsite", "offsite", "other"] {
        e.ok(&["vault", "backup", "--to", to]);
    }
    let listed = |e: &Env| -> Vec<(String, String)> {
        let v = e.json(&["vault", "backups"]);
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| (b["id"].as_str().unwrap().into(), b["volume"].as_str().unwrap().into()))
            .collect()
    };
    let on = |dir: &Path| walk_files(&dir.join("vault")).len();
    let all = listed(&e);
    assert_eq!((all.len(), on(&off), on(&other)), (4, 3, 1));
    let o = e.run(&["vault", "prune"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--keep-last"), "{o:?}");
    let dry = e.ok(&["vault", "prune", "--keep-last", "1", "--dry-run"]);
    assert!(dry.contains("would delete vault backup") && dry.contains("2 of 4 vault backups kept (dry run"), "{dry}");
    assert_eq!((listed(&e).len(), on(&off)), (4, 3), "a dry run deletes nothing");
    let out = e.ok(&["vault", "prune", "--keep-last", "1"]);
    assert!(out.contains("2 of 4 vault backups kept"), "{out}");
    let left = listed(&e);
    assert_eq!(left, vec![all[2].clone(), all[3].clone()], "the newest on each volume stays");
    assert_eq!((on(&off), on(&other)), (1, 1), "the others are gone from the volume too");
    let r = e.json(&["risk", "report"]);
    assert!(!r["findings"].as_array().unwrap().iter().any(|f| f["code"] == "no-vault-backup"), "{r}");
    // What is left still brings the vault back.
    let rec = e.at(e.dir.path().join("recovered"));
    rec.ok(&["vault", "recover", "--from", Env::s(&off)]);
}

/// Disaster recovery of a vault whose keys are on a PKCS#11 token: the site
/// is lost but the token is not. The token's PIN opens the vault backup,
/// though the token moved on after it (more entries anchored, the catalog
/// key rotated): the recovered catalog verifies under the token's key as it
/// is now, the recovery says how far the token had got, and every dataset
/// with an offsite copy reads back.
#[test]
fn a_pkcs11_vault_comes_back_from_a_vault_backup_with_its_token() {
    let e = Env::new_pkcs11();
    let off = e.dir.path().join("offsite");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B"]);
    let a = data(120_000, 4);
    e.ok(&["ds", "put", "TOK.A", Env::s(&e.file("a", &a))]);
    e.ok(&["backup", "run", "TOK.**", "--to", "offsite"]);
    e.ok(&["vault", "backup", "--to", "offsite"]);
    e.ok(&["ds", "put", "TOK.LATE", Env::s(&e.file("l", b"after the vault backup"))]);
    e.ok(&["catalog", "rotate-key"]);
    std::fs::remove_dir_all(&e.vault).unwrap();
    let r = e.at(e.dir.path().join("recovered"));
    // Without --pkcs11 it says what is needed, and makes nothing.
    let o = r.run(&["vault", "recover", "--from", Env::s(&off)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--pkcs11") && err.contains("custos-cli"), "{err}");
    assert!(!e.dir.path().join("recovered").exists());
    let o = r
        .cmd(&["vault", "recover", "--from", Env::s(&off), "--pkcs11"])
        .env("CUSTOS_PKCS11_PIN", "0000")
        .output()
        .unwrap();
    assert!(!o.status.success(), "a wrong PIN opens nothing");
    assert!(!e.dir.path().join("recovered").exists(), "nothing half-recovered is left");
    let out = r.ok(&["vault", "recover", "--from", Env::s(&off), "--pkcs11"]);
    assert!(out.contains("recovered vault") && out.contains("the token had recorded audit entry"), "{out}");
    let v = r.json(&["catalog", "verify"]);
    assert!(v["faults"].as_array().unwrap().is_empty(), "{v}");
    r.ok(&["restore", "TOK.A"]);
    assert_eq!(r.run(&["ds", "get", "TOK.A"]).stdout, a);
    assert_eq!(r.run(&["ds", "get", "TOK.LATE"]).status.code(), Some(3), "written after the vault backup");
    let verdict = r.ok(&["audit", "verify"]);
    assert!(verdict.contains("audit log intact"), "{verdict}");
    // The recovered vault goes on: a new key, a new dataset.
    r.ok(&["ds", "put", "TOK.NEW", Env::s(&e.file("n", b"after the recovery"))]);
    assert_eq!(r.run(&["ds", "get", "TOK.NEW"]).stdout, b"after the recovery");
}

/// HSM loss without a vault backup: `hsm.sealed` alone is deleted; `vault
/// rebuild` with two of three custodians' shares makes a new HSM and every
/// escrowed dataset reads back; a key made before escrow existed is named
/// lost with its dataset; the audit log still verifies, saying how many
/// entries were keyed under the lost audit key.
#[test]
fn a_lost_hsm_is_rebuilt_from_escrow_shares() {
    let e = Env::new();
    let before = data(60_000, 3);
    e.ok(&["ds", "put", "OLD.DATA", Env::s(&e.file("o", &before))]);
    let custodians: Vec<(Env, PathBuf)> = ["alice", "bob", "carol"].iter().map(|n| e.custodian(n)).collect();
    let mut init = vec!["escrow", "init", "--threshold", "2"];
    for n in ["alice", "bob", "carol"] {
        init.extend(["--custodian", n]);
    }
    e.ok(&init);
    // A key whose escrow copy was purged is lost with the HSM.
    e.ok(&["escrow", "purge", "DSET.PRIM.OLD.key001"]);
    let mut sealed = Vec::new();
    for (c, _) in &custodians {
        let p = c.dir.path().join("mine.sealed");
        c.ok(&["escrow", "share", "--out", Env::s(&p)]);
        sealed.push(p);
    }
    let (a, b) = (data(120_000, 11), data(70_000, 12));
    e.ok(&["ds", "put", "ESC.A", Env::s(&e.file("a", &a))]);
    e.ok(&["ds", "put", "ESC.B", Env::s(&e.file("b", &b))]);
    std::fs::remove_file(e.vault.join("hsm.sealed")).unwrap();
    let err = e.run(&["ds", "get", "ESC.A"]);
    assert!(!err.status.success());
    // Shares that do not open the escrow make nothing.
    let one = e.run(&["vault", "rebuild", "--share", Env::s(&sealed[0]), "--key", Env::s(&custodians[0].1)]);
    assert!(!one.status.success(), "one share is below the threshold");
    assert!(
        String::from_utf8_lossy(&one.stderr).contains("distinct shares"),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    assert!(!e.vault.join("hsm.sealed").exists(), "no HSM was left behind");
    let out = e.ok(&[
        "vault",
        "rebuild",
        "--share",
        Env::s(&sealed[0]),
        "--key",
        Env::s(&custodians[0].1),
        "--share",
        Env::s(&sealed[2]),
        "--key",
        Env::s(&custodians[2].1),
        "--kdf-memory-mib",
        "19",
        "--kdf-iterations",
        "2",
    ]);
    assert!(out.contains("keys recovered from escrow"), "{out}");
    assert!(out.contains("DSET.PRIM.OLD.key001") && out.contains("OLD.DATA"), "made before escrow: {out}");
    assert_eq!(e.run(&["ds", "get", "ESC.A"]).stdout, a);
    assert_eq!(e.run(&["ds", "get", "ESC.B"]).stdout, b);
    let verdict = e.ok(&["audit", "verify"]);
    assert!(verdict.contains("audit log intact") && verdict.contains("lost with its HSM"), "{verdict}");
    // A second rebuild is refused while the HSM file exists.
    let again = e.run(&["vault", "rebuild", "--share", Env::s(&sealed[0]), "--key", Env::s(&custodians[0].1)]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("rebuild is for a vault whose HSM is lost"));
}

/// Recompute every hash as a forger with database access would: as plain
/// SHA-256 links, marked unkeyed (a keyed link needs the audit key).
fn rechain(c: &rusqlite::Connection) {
    use aws_lc_rs::digest;
    let rows: Vec<(i64, i64, String, String, String, String)> = c
        .prepare("SELECT seq, at, principal, action, object, result FROM audit_log ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let mut prev = [0u8; 32];
    for (seq, at, p, a, o, res) in rows {
        let mut d = digest::Context::new(&digest::SHA256);
        d.update(b"custos-audit-v1");
        d.update(&prev);
        d.update(&(seq as u64).to_be_bytes());
        d.update(&at.to_be_bytes());
        for f in [&p, &a, &o, &res] {
            d.update(&(f.len() as u32).to_be_bytes());
            d.update(f.as_bytes());
        }
        prev = d.finish().as_ref().try_into().unwrap();
        c.execute("UPDATE audit_log SET hash = ?1, keyed = 0 WHERE seq = ?2", rusqlite::params![&prev[..], seq])
            .unwrap();
    }
}

/// `key destroy` waits: the key is unusable at once, `cancel-destroy`
/// brings it back and it decrypts again; once the period is over, the first
/// command erases it and the data is gone. The policy's minimum holds.
#[test]
fn key_destruction_waits_and_can_be_cancelled() {
    let e = Env::new();
    let bytes = data(120_000, 12);
    e.ok(&["ds", "put", "DEL.DATA", Env::s(&e.file("d", &bytes))]);
    let k = "DSET.PRIM.DEL.key001";
    e.ok(&["key", "deactivate", k]);
    e.ok(&["config", "set", "key.destroy.min-wait", "2s"]);
    assert!(e
        .fails(&["key", "destroy", k, "--crypto-erase", "--wait", "1s"], 1)
        .contains("shorter than the policy's minimum"));
    assert!(e.fails(&["key", "destroy", k, "--wait", "1h"], 5).contains("DEL.DATA"), "still needed: --crypto-erase");
    let out = e.ok(&["key", "destroy", k, "--crypto-erase", "--wait", "1h"]);
    assert!(
        out.contains("will be destroyed at") && out.contains("cancel-destroy") && out.contains("DEL.DATA"),
        "{out}"
    );
    let err = e.fails(&["ds", "get", "DEL.DATA"], 5);
    assert!(err.contains("scheduled for destruction"), "{err}");
    // The schedule shows where keys are looked at, not only in the error.
    let show = e.ok(&["key", "show", k]);
    assert!(show.contains("destruction  scheduled") && show.contains("cancel-destroy"), "{show}");
    assert!(e.json(&["key", "show", k])["destroy_at"].is_string());
    let ls = e.json(&["key", "ls"]);
    let row = ls.as_array().unwrap().iter().find(|r| r["label"] == k).unwrap().clone();
    assert!(row["destroy_at"].is_string(), "{row}");
    assert!(e.ok(&["key", "ls"]).contains("inactive (destruction due "), "the state column says when");
    e.ok(&["key", "cancel-destroy", k]);
    assert!(e.json(&["key", "show", k]).get("destroy_after").is_none());
    assert!(e.fails(&["key", "cancel-destroy", k], 1).contains("not scheduled"));
    assert_eq!(e.run(&["ds", "get", "DEL.DATA"]).stdout, bytes, "a cancelled destruction leaves the key whole");
    // Now for real, with the shortest wait the policy allows.
    e.ok(&["key", "destroy", k, "--crypto-erase", "--wait", "2s"]);
    std::thread::sleep(std::time::Duration::from_millis(2200));
    // The next command that opens the HSM carries it out, then finds the
    // key destroyed.
    let o = e.run(&["ds", "get", "DEL.DATA"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(err.contains("destroyed"), "{err}");
    assert_eq!(e.json(&["key", "show", k])["state"], "destroyed");
    assert!(e.fails(&["key", "cancel-destroy", k], 1).contains("not scheduled"));
    let log = e.json(&["audit", "ls", "--object", k]);
    assert!(log.as_array().unwrap().iter().any(|r| r["action"] == "key destroy (waiting period over)"), "{log}");
}

/// Each role can do exactly what it should, end to end: every row runs a
/// real command as each role and expects it refused (exit 8) or not.
#[test]
fn roles_by_operations() {
    let e = Env::new();
    e.ok(&["ds", "put", "TBL.DATA", Env::s(&e.file("t", b"table data"))]);
    let roles = ["security-admin", "key-custodian", "storage-admin", "app", "auditor"];
    for r in roles {
        e.cmd(&["user", "add", r, "--role", r]).env("CUSTOS_NEW_CREDENTIAL", "role credential 123").assert().success();
    }
    e.ok(&["user", "grant", "app", "--data", "TBL.**"]);
    e.ok(&["user", "grant", "app", "--key", "DSET.PRIM.TBL.*"]);
    let put = e.file("n", b"new");
    //            command                                         sec    cust   stor   app    audit
    let table: Vec<(Vec<&str>, [bool; 5])> = vec![
        (vec!["key", "ls"], [true, true, true, true, true]),
        (vec!["key", "create", "--app", "TBL"], [true, false, false, false, false]),
        (vec!["key", "cancel-destroy", "NO.SUCH.KEY"], [true, false, false, false, false]),
        (vec!["config", "set", "chunk.size", "65536"], [true, false, false, false, false]),
        (vec!["user", "disable", "nobody"], [true, false, false, false, false]),
        (vec!["user", "enable", "nobody"], [true, false, false, false, false]),
        (vec!["mk", "status"], [false, true, false, false, false]),
        (vec!["escrow", "purge", "NO.SUCH.KEY"], [false, true, false, false, false]),
        (vec!["keystore", "backup", "--to", "default"], [true, true, false, false, false]),
        (vec!["hsm", "rule", "rm", "nope"], [false, false, true, false, false]),
        (vec!["snapshot", "create", "TBL.DATA"], [false, false, true, false, false]),
        (vec!["backup", "verify"], [false, false, true, false, false]),
        (vec!["ds", "get", "TBL.DATA"], [false, false, false, true, false]),
        (vec!["ds", "put", "TBL.NEW", Env::s(&put)], [false, false, false, true, false]),
        (vec!["audit", "ls"], [true, false, false, false, true]),
        (vec!["risk", "report"], [true, false, true, false, true]),
        (vec!["request", "deny", "999"], [true, true, false, false, false]),
    ];
    let mut wrong = Vec::new();
    for (args, allowed) in &table {
        for (i, r) in roles.iter().enumerate() {
            let o = e.as_user(r, "role credential 123").run(args);
            let refused = o.status.code() == Some(8);
            if refused == allowed[i] {
                wrong.push(format!("{r} {args:?}: refused={refused}: {}", String::from_utf8_lossy(&o.stderr)));
            }
            if refused {
                assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("{r} may not do this")));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Grants, not just roles: the app may not read outside them.
    e.ok(&["ds", "put", "OTHER.DATA", Env::s(&e.file("o", b"other"))]);
    let err = e.as_user("app", "role credential 123").fails(&["ds", "get", "OTHER.DATA"], 8);
    assert!(err.contains("no data grant that covers dataset OTHER.DATA"), "{err}");
    e.ok(&["user", "grant", "app", "--data", "OTHER.**"]);
    let err = e.as_user("app", "role credential 123").fails(&["ds", "get", "OTHER.DATA"], 8);
    assert!(
        err.contains("no key grant that covers key DSET.PRIM.OTHER.key001"),
        "data and key grants are separate: {err}"
    );
    // Authentication: wrong credential, unknown and disabled users, all one message.
    let denied = |who: &str, cred: &str| {
        let o = e.as_user(who, cred).run(&["key", "ls"]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(6), "{err}");
        assert!(err.contains(&format!("user {who} could not be authenticated")), "{err}");
        assert!(!err.contains(cred), "the credential is never echoed");
    };
    denied("app", "wrong credential!");
    denied("nobody", "role credential 123");
    e.ok(&["user", "disable", "auditor"]);
    denied("auditor", "role credential 123");
    // Enabled again: its roles and credential as they were.
    assert!(e.ok(&["user", "enable", "auditor"]).contains("user auditor is enabled"));
    e.as_user("auditor", "role credential 123").ok(&["audit", "ls"]);
    e.fails(&["user", "enable", "nobody-at-all"], 3);
    // Tokens for scripts: shown once, stored hashed.
    let tok = e.json(&["user", "add", "backup-bot", "--role", "storage-admin", "--token"]);
    let token = tok["token"].as_str().unwrap();
    assert!(token.starts_with("cst_"));
    e.as_user("backup-bot", token).ok(&["backup", "ls"]);
    let db = rusqlite::Connection::open(e.vault.join("custos.db")).unwrap();
    let stored: String =
        db.query_row("SELECT credential FROM principals WHERE name = 'backup-bot'", [], |r| r.get(0)).unwrap();
    assert!(stored.starts_with("token$") && !stored.contains(&token[4..]));
    let stored: String =
        db.query_row("SELECT credential FROM principals WHERE name = 'app'", [], |r| r.get(0)).unwrap();
    assert!(stored.starts_with("argon2id$") && !stored.contains("role credential"));
    // The last security-admin stays.
    let sa = e.as_user("security-admin", "role credential 123");
    sa.ok(&["user", "disable", "ops"]);
    sa.ok(&["user", "disable", "admin"]);
    let err = sa.fails(&["user", "disable", "security-admin"], 1);
    assert!(err.contains("last enabled security-admin"), "{err}");
}

/// The paper's separation of duties: a storage administrator copies and
/// snapshots a dataset whose key it may not use, and cannot read it.
#[test]
fn storage_admin_copies_what_it_cannot_read() {
    let e = Env::new();
    let off = e.dir.path().join("off");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B"]);
    let bytes = data(200_000, 21);
    e.ok(&["ds", "put", "PAY.MASTER", Env::s(&e.file("p", &bytes))]);
    e.cmd(&["user", "add", "stor", "--role", "storage-admin"])
        .env("CUSTOS_NEW_CREDENTIAL", "storage credential")
        .assert()
        .success();
    let st = e.as_user("stor", "storage credential");
    // No passphrase either: the storage tier never touches a key.
    let raw = st
        .cmd(&["backup", "run", "PAY.**", "--method", "raw", "--to", "offsite", "--json"])
        .env_remove("CUSTOS_PASSPHRASE")
        .output()
        .unwrap();
    assert!(raw.status.success(), "{}", String::from_utf8_lossy(&raw.stderr));
    let snap = st.cmd(&["snapshot", "create", "PAY.MASTER"]).env_remove("CUSTOS_PASSPHRASE").output().unwrap();
    assert!(snap.status.success(), "{}", String::from_utf8_lossy(&snap.stderr));
    let err = st.fails(&["ds", "get", "PAY.MASTER"], 8);
    assert!(err.contains("stor may not do this") && err.contains("DataRead"), "{err}");
    assert!(
        st.fails(&["backup", "run", "PAY.**", "--to", "offsite"], 8).contains("DataRead"),
        "a logical copy reads the data"
    );
    // Restoring reads the content of the copy: it is data access too.
    assert!(st.fails(&["restore", "PAY.MASTER"], 8).contains("DataRead"));
    // The copies it made are good: the data's owner restores from the raw copy.
    e.ok(&["ds", "rm", "PAY.MASTER"]);
    e.ok(&["restore", "PAY.MASTER"]);
    assert_eq!(e.run(&["ds", "get", "PAY.MASTER"]).stdout, bytes);
}

/// Dual control: a destroy becomes a request; its requester cannot approve
/// it, a principal without the right cannot either; a second authorized one
/// approves and it runs. Denied and expired requests do not run.
#[test]
fn dual_control_needs_a_second_principal() {
    let e = Env::new();
    let bytes = data(50_000, 33);
    e.ok(&["ds", "put", "DUAL.DATA", Env::s(&e.file("d", &bytes))]);
    e.ok(&["key", "deactivate", "DSET.PRIM.DUAL.key001"]);
    e.ok(&["config", "set", "dual-control", "key-destroy,role-change"]);
    e.cmd(&["user", "add", "stor", "--role", "storage-admin"])
        .env("CUSTOS_NEW_CREDENTIAL", "storage credential")
        .assert()
        .success();
    // Adding a user is a role change: it waits for a second security-admin (admin).
    let stor_req = e.json(&["user", "ls"]).as_array().unwrap().iter().any(|u| u["name"] == "stor");
    assert!(!stor_req, "the user is not added before approval");
    let admin = e.as_user("admin", ADMIN_CRED);
    let req = e.json(&["request", "ls"])[0].clone();
    assert_eq!(
        (req["action"].as_str(), req["state"].as_str(), req["requested_by"].as_str()),
        (Some("role-change"), Some("pending"), Some("ops"))
    );
    let id = req["id"].as_u64().unwrap().to_string();
    assert!(e.fails(&["request", "approve", &id], 8).contains("its own"), "nobody approves their own request");
    admin.cmd(&["request", "approve", &id]).env("CUSTOS_NEW_CREDENTIAL", "storage credential").assert().success();
    assert!(e.json(&["user", "ls"]).as_array().unwrap().iter().any(|u| u["name"] == "stor"));
    assert_eq!(e.json(&["request", "show", &id])["state"], "executed");

    // The destroy waits; the data is still there.
    let out = e.ok(&["key", "destroy", "DSET.PRIM.DUAL.key001", "--crypto-erase"]);
    assert!(out.contains("under dual control"), "{out}");
    assert_eq!(e.run(&["ds", "get", "DUAL.DATA"]).stdout, bytes);
    let id = e.json(&["request", "ls"])[0]["id"].as_u64().unwrap().to_string();
    // A principal who may not destroy keys may not approve it either.
    let err = e.as_user("stor", "storage credential").fails(&["request", "approve", &id], 8);
    assert!(err.contains("stor may not do this"), "{err}");
    admin.ok(&["request", "approve", &id]);
    assert_eq!(e.json(&["key", "show", "DSET.PRIM.DUAL.key001"])["state"], "destroyed");
    assert!(admin.fails(&["request", "approve", &id], 1).contains("not pending"));

    // Denied, and expired, requests never run.
    e.ok(&["ds", "put", "DUAL.TWO", Env::s(&e.file("t", b"two"))]);
    e.ok(&["key", "deactivate", "DSET.PRIM.DUAL.key002"]);
    e.ok(&["key", "destroy", "DSET.PRIM.DUAL.key002", "--crypto-erase"]);
    let id = e.json(&["request", "ls"])[0]["id"].as_u64().unwrap().to_string();
    admin.ok(&["request", "deny", &id]);
    assert!(admin.fails(&["request", "approve", &id], 1).contains("denied"));
    e.ok(&["config", "set", "request.ttl", "1s"]);
    e.ok(&["key", "destroy", "DSET.PRIM.DUAL.key002", "--crypto-erase"]);
    let id = e.json(&["request", "ls"])[0]["id"].as_u64().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert!(admin.fails(&["request", "approve", &id], 1).contains("expired"));
    assert_eq!(e.json(&["key", "show", "DSET.PRIM.DUAL.key002"])["state"], "inactive");
}

/// `monitor` raises what needs attention and exits 10; `--prometheus`
/// prints metrics in the text format.
#[test]
fn monitor_alerts_and_prometheus() {
    let e = Env::new();
    e.ok(&["ds", "put", "MON.DATA", Env::s(&e.file("m", b"monitored"))]);
    let o = e.run(&["monitor"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(10), "{out}");
    assert!(out.contains("[key-unprotected] DSET.PRIM.MON.key001"), "{out}");
    e.ok(&["keystore", "backup", "--to", "default"]);
    let exp = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 10)).strftime("%Y-%m-%d").to_string();
    e.ok(&["key", "create", "--app", "MON", "--expires", &exp, "--activate"]);
    e.ok(&["keystore", "backup", "--to", "default"]);
    e.ok(&["key", "deactivate", "DSET.PRIM.MON.key001"]);
    let o = e.run(&["monitor", "--expiring-days", "30"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("[key-expiring] DSET.PRIM.MON.key002"), "{out}");
    assert!(out.contains("[dataset-key-inactive] MON.DATA: its key DSET.PRIM.MON.key001 is inactive"), "{out}");
    assert!(!out.contains("key-unprotected"), "keystore backups cover them now: {out}");
    let o = e.run(&["monitor", "--expiring-days", "1", "--prometheus"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("# TYPE custos_keys gauge") && text.contains("custos_keys{state=\"inactive\"} 1"), "{text}");
    assert!(text.contains("custos_datasets_on_inactive_keys 1") && text.contains("custos_alerts 1"), "{text}");
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = l.rsplit_once(' ').unwrap();
        assert!(v.parse::<f64>().is_ok(), "{l}");
    }
    e.ok(&["key", "activate", "DSET.PRIM.MON.key001"]);
    assert!(e.ok(&["monitor", "--expiring-days", "1"]).contains("no alerts"));
    // A key revoked as compromised is an alert, and a risk finding that
    // names what is still sealed under it.
    e.ok(&["key", "revoke", "DSET.PRIM.MON.key001", "--reason", "key-compromise", "--message", "laptop stolen"]);
    let k = e.json(&["key", "show", "DSET.PRIM.MON.key001"]);
    assert_eq!(k["state"], "compromised", "{k}");
    assert_eq!(k["attributes"]["revocation"]["message"], "laptop stolen", "{k}");
    let o = e.run(&["monitor", "--expiring-days", "1"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("[key-compromised] DSET.PRIM.MON.key001"), "{out}");
    assert!(out.contains("its key DSET.PRIM.MON.key001 is compromised"), "{out}");
    let r = e.json(&["risk", "report"]);
    let f = r["findings"].as_array().unwrap().iter().find(|f| f["code"] == "compromised-key").cloned();
    let f = f.unwrap_or_else(|| panic!("no compromised-key finding: {r}"));
    assert_eq!(f["subject"], "DSET.PRIM.MON.key001");
    assert!(f["detail"].as_str().unwrap().contains("MON.DATA"), "{f}");
    assert!(
        !r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"] == "inactive-key-needed" && f["subject"] == "DSET.PRIM.MON.key001"),
        "one finding for it, not two: {r}"
    );
    // Its data still reads (decrypt), nothing new is sealed under it.
    assert_eq!(e.ok(&["ds", "get", "MON.DATA"]), "monitored");
    e.fails(&["ds", "put", "MON.DATA", Env::s(&e.file("m2", b"more"))], 5);
    e.fails(&["key", "activate", "DSET.PRIM.MON.key001"], 5);
}

/// Lifecycle actions on a label pattern: --dry-run changes nothing, the real
/// run changes each key that the action applies to and audits each.
#[test]
fn bulk_key_actions_on_a_pattern() {
    let e = Env::new();
    e.ok(&["key", "create", "--app", "BULK", "--count", "3", "--activate"]);
    e.ok(&["key", "create", "--app", "KEEP", "--activate"]);
    e.ok(&["key", "deactivate", "DSET.PRIM.BULK.key002"]);
    let dry = e.ok(&["key", "deactivate", "DSET.PRIM.BULK.*", "--dry-run"]);
    assert!(
        dry.contains("DSET.PRIM.BULK.key001: active → inactive (dry run)") && dry.contains("key002: skipped"),
        "{dry}"
    );
    assert_eq!(e.json(&["key", "show", "DSET.PRIM.BULK.key001"])["state"], "active");
    let out = e.ok(&["key", "deactivate", "DSET.PRIM.BULK.*"]);
    assert!(out.contains("2 keys changed, 1 skipped"), "{out}");
    for k in ["key001", "key002", "key003"] {
        assert_eq!(e.json(&["key", "show", &format!("DSET.PRIM.BULK.{k}")])["state"], "inactive");
    }
    assert_eq!(e.json(&["key", "show", "DSET.PRIM.KEEP.key001"])["state"], "active");
    let log = e.json(&["audit", "ls", "--object", "DSET.PRIM.BULK.key003"]);
    assert!(log.as_array().unwrap().iter().any(|r| r["action"] == "key deactivate (bulk DSET.PRIM.BULK.*)"), "{log}");
    assert!(e.fails(&["key", "archive", "NOPE.*"], 1).contains("no key matches"));
}

/// Rows that decide security, edited in `custos.db` directly (as a tool
/// with write access to the file and no passphrase would): each edit is
/// named by `catalog verify` (table and row, exit 4), and the command that
/// depends on the row is refused with the same name rather than acting on
/// it. What the catalog held before is put back between the cases.
#[test]
fn catalog_rows_edited_outside_custos_are_named_and_refused() {
    let e = Env::new();
    let k1 = e.json(&["ds", "put", "PAY.A", Env::s(&e.file("a", b"alpha"))])["key_label"].as_str().unwrap().to_string();
    let k2 = e.json(&["ds", "put", "PAY.B", Env::s(&e.file("b", b"bravo"))])["key_label"].as_str().unwrap().to_string();
    e.cmd(&["user", "add", "clerk", "--role", "app"])
        .env("CUSTOS_NEW_CREDENTIAL", "a clerk's credential")
        .assert()
        .success();
    e.ok(&["user", "grant", "clerk", "--data", "PAY.A"]);
    e.ok(&["user", "grant", "clerk", "--key", "DSET.PRIM.PAY.*"]);
    let clerk = e.as_user("clerk", "a clerk's credential");
    assert_eq!(clerk.run(&["ds", "get", "PAY.A"]).stdout, b"alpha");
    // A request, approved by a second admin and executed.
    let admin = e.as_user("admin", ADMIN_CRED);
    admin.ok(&["config", "set", "dual-control", "role-change"]);
    e.ok(&["user", "grant", "clerk", "--data", "PAY.C"]);
    let id = e.json(&["request", "ls"])[0]["id"].as_u64().unwrap().to_string();
    admin.ok(&["request", "approve", &id]);
    assert_eq!(e.json(&["request", "show", &id])["state"], "executed");
    let out = e.ok(&["catalog", "verify"]);
    assert!(out.contains("catalog intact"), "{out}");

    let db = e.vault.join("custos.db");
    assert!(!e.vault.join("custos.db-wal").exists());
    let hsm = e.vault.join("hsm.sealed");
    // Both files: the commands of one case move the HSM's audit anchor on,
    // and the catalog alone put back would be refused as rolled back.
    let clean = (std::fs::read(&db).unwrap(), std::fs::read(&hsm).unwrap());
    let put_back = || {
        std::fs::write(&db, &clean.0).unwrap();
        std::fs::write(&hsm, &clean.1).unwrap();
    };
    // A hash of a credential the editor knows, made for a clerk elsewhere.
    let other = Env::new();
    other
        .cmd(&["user", "add", "clerk", "--role", "app"])
        .env("CUSTOS_NEW_CREDENTIAL", "the editor's own")
        .assert()
        .success();
    let forged: String = rusqlite::Connection::open(other.vault.join("custos.db"))
        .unwrap()
        .query_row("SELECT credential FROM principals WHERE name = 'clerk'", [], |r| r.get(0))
        .unwrap();
    let cases: Vec<(&str, String, &str, String, Vec<&str>)> = vec![
        (
            "a grant inserted",
            "INSERT INTO grants (principal, kind, pattern, created_at) VALUES ('clerk', 'data', 'PAY.**', 0)".into(),
            "grants",
            "pattern='PAY.**'".into(),
            vec!["clerk", "ds", "get", "PAY.B"],
        ),
        (
            "a principal added",
            "INSERT INTO principals (name, role, credential, disabled, created_at) SELECT 'mallory', role, credential, 0, created_at FROM principals WHERE name = 'ops'".into(),
            "principals",
            "name='mallory'".into(),
            vec!["mallory", "ds", "get", "PAY.A"],
        ),
        (
            "a credential hash changed",
            format!("UPDATE principals SET credential = '{forged}' WHERE name = 'clerk'"),
            "principals",
            "name='clerk'".into(),
            vec!["clerk", "ds", "get", "PAY.A"],
        ),
        (
            "requested_by changed",
            "UPDATE requests SET requested_by = 'admin'".into(),
            "requests",
            format!("id={id}"),
            vec!["ops", "request", "approve", &id],
        ),
        (
            "an executed request reset to pending",
            "UPDATE requests SET state = 'pending', decided_by = NULL, decided_at = NULL".into(),
            "requests",
            format!("id={id}"),
            vec!["admin", "request", "approve", &id],
        ),
        (
            "a setting changed",
            "UPDATE settings SET value = 'none' WHERE key = 'dual-control'".into(),
            "settings",
            "key='dual-control'".into(),
            vec!["ops", "user", "grant", "clerk", "--data", "PAY.D"],
        ),
        (
            "a key's state changed",
            format!("UPDATE keys SET state = 'destroyed' WHERE label = '{k1}'"),
            "keys",
            format!("label='{k1}'"),
            vec!["ops", "ds", "get", "PAY.A"],
        ),
        (
            "two keys' wrapped material swapped",
            format!(
                "UPDATE keys SET wrapped = CASE label WHEN '{k1}' THEN (SELECT wrapped FROM keys WHERE label = '{k2}') ELSE (SELECT wrapped FROM keys WHERE label = '{k1}') END,
                 kcv = CASE label WHEN '{k1}' THEN (SELECT kcv FROM keys WHERE label = '{k2}') ELSE (SELECT kcv FROM keys WHERE label = '{k1}') END
                 WHERE label IN ('{k1}', '{k2}')"
            ),
            "keys",
            format!("label='{k1}'"),
            vec!["ops", "ds", "get", "PAY.A"],
        ),
    ];
    let creds = |who: &str| match who {
        "clerk" => "a clerk's credential",
        "admin" => ADMIN_CRED,
        _ => OPS_CRED,
    };
    for (i, (what, sql, table, row, cmd)) in cases.iter().enumerate() {
        put_back();
        rusqlite::Connection::open(&db).unwrap().execute_batch(sql).unwrap();
        let o = e.run(&["catalog", "verify"]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(4), "{what}: {out} {}", String::from_utf8_lossy(&o.stderr));
        assert!(out.contains(&format!("{table} ")) && out.contains(row.as_str()), "{what}: {out}");
        let cred = if i == 2 { "the editor's own" } else { creds(cmd[0]) };
        let actor = e.as_user(cmd[0], cred);
        let o = actor.run(&cmd[1..]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(4), "{what}: `{}` must be refused: {err}", cmd.join(" "));
        assert!(err.contains(&format!("catalog row {table} ")) && err.contains("catalog verify"), "{what}: {err}");
        assert!(o.stdout.is_empty(), "{what}: nothing was read");
    }
    // Put back, the catalog verifies again and serves as before.
    put_back();
    assert!(e.ok(&["catalog", "verify"]).contains("catalog intact"));
    assert_eq!(clerk.run(&["ds", "get", "PAY.A"]).stdout, b"alpha");
}

/// Asked to, `init` puts the default volume outside the vault directory
/// (another disk, another site): the data there outlives the directory.
#[test]
fn init_puts_the_default_volume_elsewhere_when_asked() {
    let e = Env::new();
    let elsewhere = e.dir.path().join("elsewhere");
    let r = e.at(e.dir.path().join("second"));
    let kdf = ["--kdf-memory-mib", "19", "--kdf-iterations", "2"];
    let o = r.run(&[&["init", "--volume", "relative/path"][..], &kdf].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("relative path"), "{err}");
    assert!(!r.vault.exists(), "nothing was made");
    let out = r.ok(&[&["init", "--volume", Env::s(&elsewhere), "--site", "B"][..], &kdf].concat());
    assert!(out.contains(&format!("volume default at {}", elsewhere.display())), "{out}");
    let vols = r.json(&["volume", "ls"]);
    assert_eq!((vols[0]["location"].as_str(), vols[0]["site"].as_str()), (elsewhere.to_str(), Some("B")));
    assert!(!r.vault.join("volumes/default").exists());
}

/// The audit log exported to a write-once volume stays a witness where the
/// HSM's anchor cannot: the catalog and the HSM file rolled back together
/// (or an entry edited) disagree with the segments already exported.
#[test]
fn the_audit_log_exported_to_tape_witnesses_a_rollback_of_both_files() {
    let e = Env::new();
    let tape = e.dir.path().join("tape");
    e.ok(&["volume", "add", "witness", "--path", Env::s(&tape), "--site", "B", "--medium", "tape"]);
    e.ok(&["ds", "put", "EXP.A", Env::s(&e.file("a", b"alpha"))]);
    let out = e.ok(&["audit", "export", "--to", "witness"]);
    assert!(out.contains("exported audit entries 1 to") && out.contains("read back"), "{out}");
    let second = e.json(&["audit", "export", "--to", "witness"]);
    let first_of_second = second["first_seq"].as_u64().unwrap();
    assert!(first_of_second > 1, "only what was not exported yet: {second}");
    let segments = walk_files(&tape.join("audit"));
    assert_eq!(segments.len(), 2, "{segments:?}");
    let out = e.ok(&["audit", "verify", "--against", "witness"]);
    assert!(out.contains("matches volume witness") && out.contains("in 2 segments"), "{out}");
    // Names on the volume are input too: one that claims every entry up to
    // the last number there is (which overflowed once) is named, not a
    // crash; one whose range runs backwards is not a segment at all.
    let huge = tape.join("audit/00000000000000000001-18446744073709551615.jsonl");
    let backwards = tape.join("audit/00000000000000000009-00000000000000000002.jsonl");
    std::fs::write(&huge, b"").unwrap();
    std::fs::write(&backwards, b"").unwrap();
    let o = e.run(&["audit", "verify", "--against", "witness"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(4), "{out}");
    assert!(
        out.contains("segment 00000000000000000001-18446744073709551615 holds 0 entries where its name says 1 to 18446744073709551615"),
        "{out}"
    );
    assert!(!out.contains("00000000000000000009-"), "{out}");
    std::fs::remove_file(&huge).unwrap();
    std::fs::remove_file(&backwards).unwrap();
    // Both files put back as they were: the anchor goes back with them.
    let (db, hsm) = (e.vault.join("custos.db"), e.vault.join("hsm.sealed"));
    let before = (std::fs::read(&db).unwrap(), std::fs::read(&hsm).unwrap());
    e.ok(&["ds", "put", "EXP.B", Env::s(&e.file("b", b"bravo"))]);
    let third = e.json(&["audit", "export", "--to", "witness"]);
    std::fs::write(&db, &before.0).unwrap();
    std::fs::write(&hsm, &before.1).unwrap();
    assert!(e.ok(&["audit", "verify"]).contains("audit log intact"), "the anchor alone cannot tell");
    let o = e.run(&["audit", "verify", "--against", "witness"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(4), "{out}");
    // The numbers the lost entries had were taken again by newer ones.
    assert!(out.contains("differs from its exported copy (exported: ds put EXP.B by ops, intent)"), "{out}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("disagrees with what was exported to volume witness"));
    assert!(third["last_seq"].as_u64().unwrap() > third["first_seq"].as_u64().unwrap());
    // An exported entry edited in the catalog is named too.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute("UPDATE audit_log SET principal = 'mallory' WHERE seq = 3", []).unwrap();
    let o = e.run(&["audit", "verify", "--against", "witness"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&o.stdout).contains("entry 3 differs from its exported copy"));
}

/// The ICSF way back from a lost HSM file: the master key's custodians
/// re-enter their parts into a new HSM, and the same master key (so every
/// key, the audit key and its checkpoints) is back without escrow. Parts of
/// another master key are refused and leave nothing behind.
#[test]
fn a_lost_hsm_comes_back_from_the_custodians_key_parts() {
    let e = Env::new();
    let part = |who: &str| {
        let p = e.dir.path().join(format!("{who}.part"));
        e.ok(&["mk", "make-part", "--custodian", who, "-o", Env::s(&p)]);
        p
    };
    let (alice, bob, carol) = (part("alice"), part("bob"), part("carol"));
    e.ok(&["mk", "load-new", "--part", Env::s(&alice), "--part", Env::s(&bob)]);
    e.ok(&["mk", "activate"]);
    e.ok(&["mk", "reencipher"]);
    let bytes = data(80_000, 17);
    e.ok(&["ds", "put", "PARTS.DATA", Env::s(&e.file("d", &bytes))]);
    let hsm = e.vault.join("hsm.sealed");
    std::fs::remove_file(&hsm).unwrap();
    // Parts of another master key: refused, nothing made.
    let o = e.run(&[
        "vault",
        "rebuild",
        "--part",
        Env::s(&alice),
        "--part",
        Env::s(&carol),
        "--kdf-memory-mib",
        "19",
        "--kdf-iterations",
        "2",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("not the expected"), "{err}");
    assert!(!hsm.exists(), "nothing was left behind");
    let out = e.ok(&[
        "vault",
        "rebuild",
        "--part",
        Env::s(&alice),
        "--part",
        Env::s(&bob),
        "--kdf-memory-mib",
        "19",
        "--kdf-iterations",
        "2",
    ]);
    assert!(out.contains("under the re-entered master key"), "{out}");
    assert_eq!(e.run(&["ds", "get", "PARTS.DATA"]).stdout, bytes);
    // The audit key came back with its master key: every link still checks.
    let v = e.ok(&["audit", "verify"]);
    assert!(v.contains("audit log intact") && !v.contains("audit key lost"), "{v}");
    assert!(e.ok(&["catalog", "verify"]).contains("catalog intact"));
    let log = e.json(&["audit", "ls", "--object", ""]);
    assert!(log
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["action"] == "vault rebuild" && r["result"].as_str().unwrap().contains("alice, bob")));
}

/// Roles change on an existing principal; a refusal for want of a role or
/// a grant says which command gives it; nobody is left roleless, and the
/// last enabled security-admin keeps that role.
#[test]
fn user_roles_change_and_refusals_say_how() {
    let e = Env::new();
    let f = e.file("clerk-data", b"clerk's data");
    e.cmd(&["user", "add", "clerk", "--role", "auditor"])
        .env("CUSTOS_NEW_CREDENTIAL", "clerk's credential, long")
        .assert()
        .success();
    let clerk = e.as_user("clerk", "clerk's credential, long");
    let err = clerk.fails(&["ds", "put", "CLERK.A", Env::s(&f)], 8);
    assert!(err.contains("which needs the role app") && err.contains("`custos user role clerk --add app`"), "{err}");
    let out = e.ok(&["user", "role", "clerk", "--add", "app", "--remove", "auditor"]);
    assert!(out.contains("user clerk has the roles app"), "{out}");
    let users = e.json(&["user", "ls"]);
    let clerk_row = users.as_array().unwrap().iter().find(|u| u["name"] == "clerk").unwrap().clone();
    assert_eq!(clerk_row["roles"], serde_json::json!(["app"]), "{clerk_row}");
    // Now the role is there and the grant is not: the advice follows.
    let err = clerk.fails(&["ds", "put", "CLERK.A", Env::s(&f)], 8);
    assert!(err.contains("`custos user grant clerk --data PATTERN`"), "{err}");
    e.ok(&["user", "grant", "clerk", "--data", "CLERK.**"]);
    e.ok(&["user", "grant", "clerk", "--key", "DSET.PRIM.CLERK.*"]);
    clerk.ok(&["ds", "put", "CLERK.A", Env::s(&f)]);
    // Refusals change nothing.
    assert!(e.fails(&["user", "role", "clerk", "--remove", "app"], 1).contains("no role left"));
    assert!(e.fails(&["user", "role", "clerk", "--remove", "auditor"], 1).contains("does not have the role auditor"));
    assert!(e
        .fails(&["user", "role", "clerk", "--add", "app", "--remove", "app"], 1)
        .contains("both added and removed"));
    assert!(e.fails(&["user", "role", "clerk"], 2).contains("--add ROLE"));
    e.fails(&["user", "role", "nobody", "--add", "app"], 3);
    // The clerk may not change roles, its own included.
    assert!(clerk.fails(&["user", "role", "clerk", "--add", "security-admin"], 8).contains("security-admin"));
    // The last enabled security-admin keeps the role.
    let admin = e.as_user("admin", ADMIN_CRED);
    admin.ok(&["user", "role", "ops", "--remove", "security-admin"]);
    admin.ok(&["user", "role", "admin", "--add", "auditor"]);
    let err = admin.fails(&["user", "role", "admin", "--remove", "security-admin"], 1);
    assert!(err.contains("last enabled security-admin"), "{err}");
    // Under dual control a role change waits for a second principal.
    admin.ok(&["user", "role", "ops", "--add", "security-admin"]);
    e.ok(&["config", "set", "dual-control", "role-change"]);
    let out = e.ok(&["user", "role", "clerk", "--add", "auditor"]);
    assert!(out.contains("under dual control"), "{out}");
    let users = e.json(&["user", "ls"]);
    assert_eq!(
        users.as_array().unwrap().iter().find(|u| u["name"] == "clerk").unwrap()["roles"],
        serde_json::json!(["app"])
    );
    let id = e.json(&["request", "ls"])[0]["id"].as_u64().unwrap().to_string();
    admin.ok(&["request", "approve", &id]);
    let users = e.json(&["user", "ls"]);
    assert_eq!(
        users.as_array().unwrap().iter().find(|u| u["name"] == "clerk").unwrap()["roles"],
        serde_json::json!(["app", "auditor"])
    );
}

/// A credential is rotated by its principal or by a security-admin; the
/// old one stops working at once; nobody else may change it; one's own
/// change needs no second principal even under role-change control.
#[test]
fn credentials_rotate_and_the_old_one_stops_working() {
    let e = Env::new();
    e.cmd(&["user", "add", "clerk", "--role", "auditor"])
        .env("CUSTOS_NEW_CREDENTIAL", "clerk's first credential")
        .assert()
        .success();
    let old = e.as_user("clerk", "clerk's first credential");
    old.ok(&["key", "ls"]);
    let out = e
        .cmd(&["user", "credential", "clerk"])
        .env("CUSTOS_NEW_CREDENTIAL", "clerk's second credential")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no longer works"));
    assert_eq!(old.run(&["key", "ls"]).status.code(), Some(6), "the old credential still works");
    let new = e.as_user("clerk", "clerk's second credential");
    new.ok(&["key", "ls"]);
    // Its own, under dual control for role changes: at once, no request.
    e.ok(&["config", "set", "dual-control", "role-change"]);
    let out = new
        .cmd(&["user", "credential", "clerk"])
        .env("CUSTOS_NEW_CREDENTIAL", "clerk's third credential")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(new.run(&["key", "ls"]).status.code(), Some(6), "the second credential still works");
    let third = e.as_user("clerk", "clerk's third credential");
    assert!(e.json(&["request", "ls"]).as_array().unwrap().is_empty(), "no request for one's own credential");
    // Another's: refused to the clerk, a request for the admin.
    let err = third
        .cmd(&["user", "credential", "ops"])
        .env("CUSTOS_NEW_CREDENTIAL", "stolen credential, long")
        .output()
        .unwrap();
    assert_eq!(err.status.code(), Some(8), "{}", String::from_utf8_lossy(&err.stderr));
    // A token, shown once, and it works.
    e.ok(&["config", "set", "dual-control", "none"]);
    let t = e.json(&["user", "credential", "clerk", "--token"]);
    let token = t["token"].as_str().unwrap_or_else(|| panic!("{t}"));
    e.as_user("clerk", token).ok(&["key", "ls"]);
    assert_eq!(third.run(&["key", "ls"]).status.code(), Some(6), "the third credential still works");
}

/// A principal is removed with its grants; the audit log keeps its name;
/// the last enabled security-admin and an escrow custodian stay.
#[test]
fn users_are_removed_with_their_grants() {
    let e = Env::new();
    e.cmd(&["user", "add", "leaver", "--role", "app"])
        .env("CUSTOS_NEW_CREDENTIAL", "leaver's credential")
        .assert()
        .success();
    e.ok(&["user", "grant", "leaver", "--data", "LEAVE.**"]);
    let leaver = e.as_user("leaver", "leaver's credential");
    leaver.ok(&["key", "ls"]);
    let out = e.ok(&["user", "rm", "leaver"]);
    assert!(out.contains("user leaver and its grants are removed"), "{out}");
    assert!(!e.json(&["user", "ls"]).as_array().unwrap().iter().any(|u| u["name"] == "leaver"));
    assert_eq!(leaver.run(&["key", "ls"]).status.code(), Some(6), "a removed principal cannot sign in");
    assert!(e.ok(&["audit", "ls", "--principal", "leaver"]).contains("key ls"), "the audit log keeps its name");
    e.fails(&["user", "rm", "leaver"], 3);
    // A name used again starts with no grants.
    e.cmd(&["user", "add", "leaver", "--role", "app"])
        .env("CUSTOS_NEW_CREDENTIAL", "a new leaver's cred")
        .assert()
        .success();
    let again = e.json(&["user", "ls"]);
    let row = again.as_array().unwrap().iter().find(|u| u["name"] == "leaver").unwrap().clone();
    assert_eq!(row["data_grants"], serde_json::json!([]), "{row}");
    // The last enabled security-admin stays.
    let admin = e.as_user("admin", ADMIN_CRED);
    admin.ok(&["user", "role", "ops", "--remove", "security-admin"]);
    assert!(admin.fails(&["user", "rm", "admin"], 1).contains("last enabled security-admin"));
    // An escrow custodian stays: its share is part of escrow.
    admin.ok(&["user", "role", "ops", "--add", "security-admin"]);
    let (_c, _) = e.custodian("carol");
    let err = e.fails(&["user", "rm", "carol"], 1);
    assert!(err.contains("escrow custodian") && err.contains("user disable carol"), "{err}");
}

/// `backup run --plaintext`: refused until the vault allows it, to tape
/// only, never with a BACK key or as a raw copy; made, it is in the audit
/// log as such, `backup show` and the risk report say it is not encrypted,
/// and `risk report --as-if-unencrypted` gives the paper's Table 1.
#[test]
fn plaintext_copies_to_tape_are_refused_until_allowed_and_reported_as_exposed() {
    let e = Env::new();
    let tape = e.dir.path().join("tape");
    e.ok(&["volume", "add", "vault-tape", "--path", Env::s(&tape), "--site", "B", "--medium", "tape"]);
    let disk = e.dir.path().join("disk");
    e.ok(&["volume", "add", "disk-b", "--path", Env::s(&disk), "--site", "B"]);
    let f = e.file("in.bin", &data(150_000, 7));
    e.ok(&["ds", "put", "PAY.MASTER", Env::s(&f)]);
    assert_eq!(e.json(&["config", "get", "backup.plaintext"])["backup.plaintext"], "refuse");

    let err = e.fails(&["backup", "run", "PAY.**", "--to", "vault-tape", "--plaintext"], 1);
    assert!(err.contains("config set backup.plaintext allow"), "{err}");
    assert!(e.fails(&["config", "set", "backup.plaintext", "sure"], 1).contains("allow"));
    e.ok(&["config", "set", "backup.plaintext", "allow"]);
    assert!(e.fails(&["backup", "run", "PAY.**", "--to", "disk-b", "--plaintext"], 1).contains("tape volumes only"));
    let err = e.fails(&["backup", "run", "PAY.**", "--to", "vault-tape", "--plaintext", "--method", "raw"], 2);
    assert!(err.contains("raw copy"), "{err}");
    let o = e.run(&["backup", "run", "PAY.**", "--to", "vault-tape", "--plaintext", "--key", "DSET.BACK.PAY.key001"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot be used with"));

    let made = e.json(&["backup", "run", "PAY.**", "--to", "vault-tape", "--plaintext"]);
    let b = &made[0];
    assert_eq!(b["method"], "plaintext", "{made}");
    let id = b["id"].as_u64().unwrap().to_string();
    let shown = e.ok(&["backup", "show", &id]);
    assert!(shown.contains("NOT ENCRYPTED") && shown.contains("key          none"), "{shown}");
    let rows = e.json(&["audit", "ls"]);
    assert!(
        rows.as_array().unwrap().iter().any(|r| r["action"] == "backup run --plaintext" && r["result"] == "ok"),
        "{rows}"
    );
    e.ok(&["backup", "verify", "--read-data"]);

    let r = e.json(&["risk", "report"]);
    assert_eq!(r["unencrypted_copy_count"], 1);
    assert!(r["findings"].as_array().unwrap().iter().any(|f| f["code"] == "plaintext-copy"), "{r}");
    let t1 = e.json(&["risk", "report", "--as-if-unencrypted"]);
    assert_eq!(t1["threats"].as_array().unwrap().len(), 5, "{t1}");
    assert_eq!(t1["as_if_unencrypted"], true);
    let text = e.ok(&["risk", "report", "--as-if-unencrypted"]);
    assert!(text.contains("Table 1"), "{text}");
}

/// `volume rm` forgets a volume nothing refers to, leaving its directory as
/// it is, and refuses one still in use, saying by what; a missing volume is
/// "not found" (exit 3).
#[test]
fn volume_rm_forgets_only_a_volume_nothing_uses() {
    let e = Env::new();
    let spare = e.dir.path().join("spare");
    e.ok(&["volume", "add", "spare", "--path", Env::s(&spare), "--site", "B"]);
    let out = e.ok(&["volume", "rm", "spare"]);
    assert!(out.contains("removed volume spare") && out.contains("left as it is"), "{out}");
    assert!(spare.join("CUSTOS-VOLUME").exists(), "the directory is left as it was");
    let names: Vec<String> =
        e.json(&["volume", "ls"]).as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap().into()).collect();
    assert_eq!(names, ["default"]);
    assert!(e.fails(&["volume", "rm", "spare"], 3).contains("spare"));

    let off = e.dir.path().join("off");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B", "--medium", "tape"]);
    let f = e.file("in.bin", &data(70_000, 3));
    e.ok(&["ds", "put", "PAY.MASTER", Env::s(&f)]);
    e.ok(&["backup", "run", "PAY.**", "--to", "offsite"]);
    let err = e.fails(&["volume", "rm", "offsite"], 1);
    assert!(err.contains("still used by 1 backup") && err.contains("custos backup prune"), "{err}");
    let err = e.fails(&["volume", "rm", "default"], 1);
    assert!(err.contains("1 dataset's generations") && err.contains("policy default"), "{err}");

    let other = e.dir.path().join("other");
    e.ok(&["volume", "add", "other", "--path", Env::s(&other), "--site", "C"]);
    let j = e.json(&["volume", "rm", "other"]);
    assert_eq!((j["op"].as_str(), j["volume"].as_str()), (Some("volume-rm"), Some("other")), "{j}");
    let rows = e.json(&["audit", "ls"]);
    assert!(rows.as_array().unwrap().iter().any(|r| r["action"] == "volume rm" && r["object"] == "other"));
}

/// An S3 tape volume without credentials says which variables to set,
/// once, not the instance metadata service's address or "mounted".
#[test]
fn an_s3_volume_without_credentials_names_the_variables() {
    let e = Env::new();
    let o = e
        .cmd(&["volume", "add", "t", "--url", "s3://tapes/x", "--site", "C"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        // Where the client looks for an instance role: nothing answers here.
        .env("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(7), "{err}");
    assert_eq!(err.matches("AWS_ACCESS_KEY_ID").count(), 1, "{err}");
    assert!(!err.contains("169.254") && !err.contains("mounted") && !err.contains("latest/api"), "{err}");
    assert_said_once(&err);
    assert_eq!(e.json(&["volume", "ls"]).as_array().unwrap().len(), 1, "nothing was added");
}

/// With `--json`, a failure is one JSON object on standard error (and
/// nothing on standard output): the exit code, its kind, the message, and
/// the command it points to, when it does.
#[test]
fn errors_are_json_with_json() {
    let e = Env::new();
    let json_err = |args: &[&str], code: i32| -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let o = e.run(&a);
        assert_eq!(o.status.code(), Some(code), "{a:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stdout.is_empty(), "{a:?} printed {}", String::from_utf8_lossy(&o.stdout));
        let err: serde_json::Value = serde_json::from_slice(&o.stderr)
            .unwrap_or_else(|x| panic!("{a:?}: not JSON ({x}): {}", String::from_utf8_lossy(&o.stderr)));
        assert_eq!(err["error"]["code"], code, "{err}");
        assert_said_once(err["error"]["message"].as_str().unwrap());
        err
    };
    let nf = json_err(&["ds", "info", "NO.SUCH"], 3);
    assert_eq!(nf["error"]["kind"], "not-found");
    assert_eq!(nf["error"]["message"], "no dataset named NO.SUCH: see `custos ds ls`");
    assert_eq!(nf["error"]["hint"], "see `custos ds ls`");
    let usage = json_err(&["config", "set", "chunk.size", "lots"], 2);
    assert_eq!(usage["error"]["kind"], "usage");
    let conflict = json_err(&["volume", "rm", "default"], 1);
    assert!(conflict["error"]["message"].as_str().unwrap().contains("still used by"), "{conflict}");
    assert!(conflict["error"]["hint"].as_str().unwrap().contains("custos ds rm"), "{conflict}");
    // Without --json, the same failure is one line of text.
    assert!(e.fails(&["ds", "info", "NO.SUCH"], 3).starts_with("custos: no dataset named NO.SUCH"));
}

/// With `--json`, a change prints what it did as an object: the
/// operation's name (as a request stores it), what it changed, and the
/// sentence the text form prints; never a bare message.
#[test]
fn changes_say_what_they_did_in_json() {
    let e = Env::new();
    let j = |args: &[&str]| e.json(args);
    e.ok(&["user", "add", "clerk", "--role", "app", "--token"]);
    let g = j(&["user", "grant", "clerk", "--data", "PAY.**"]);
    assert_eq!(
        (g["op"].as_str(), g["user"].as_str(), g["on"].as_str(), g["pattern"].as_str()),
        (Some("user-grant"), Some("clerk"), Some("data"), Some("PAY.**")),
        "{g}"
    );
    assert_eq!(g["message"], "granted clerk data PAY.**");
    let r = j(&["user", "role", "clerk", "--add", "auditor"]);
    assert_eq!(
        (r["op"].as_str(), r["roles"].clone()),
        (Some("user-role"), serde_json::json!(["app", "auditor"])),
        "{r}"
    );
    assert_eq!(j(&["user", "revoke", "clerk", "--data", "PAY.**"])["op"], "user-revoke");
    assert_eq!(j(&["user", "disable", "clerk"])["user"], "clerk");
    assert_eq!(j(&["user", "enable", "clerk"])["op"], "user-enable");
    assert_eq!(j(&["user", "rm", "clerk"])["op"], "user-remove");
    e.ok(&["policy", "add", "p", "--pattern", "X.**", "--volume", "default", "--template"]);
    let p = j(&["policy", "rm", "p"]);
    assert_eq!(
        (p["op"].as_str(), p["policy"].as_str(), p["message"].as_str()),
        (Some("policy-rm"), Some("p"), Some("removed policy p")),
        "{p}"
    );
    e.ok(&["ds", "put", "SN.A", Env::s(&e.file("a", b"a"))]);
    let id = e.json(&["snapshot", "create", "SN.A"])["id"].as_u64().unwrap();
    let sn = j(&["snapshot", "rm", &id.to_string()]);
    assert_eq!((sn["op"].as_str(), sn["snapshot"].as_u64()), (Some("snapshot-rm"), Some(id)), "{sn}");
    // Each op is the name of an operation, as the API's document lists them.
    let api = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")).unwrap();
    for op in [
        "user-grant",
        "user-role",
        "user-revoke",
        "user-disable",
        "user-enable",
        "user-remove",
        "policy-rm",
        "snapshot-rm",
    ] {
        assert!(api.contains(&format!("\"{op}\"")), "{op} is no operation");
    }
}

/// A reader that stops early (`custos key ls --json | head`) ends the
/// command quietly, as SIGPIPE would, instead of an error about a pipe.
#[test]
fn a_closed_output_pipe_ends_quietly() {
    let e = Env::new();
    e.ok(&["key", "create", "--app", "PIPE", "--count", "2000"]);
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("custos"))
        .env_clear()
        .env("CUSTOS_VAULT", &e.vault)
        .envs(e.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(["key", "ls", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(141), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `config set --help` names every setting `config ls` shows (a new
/// setting without a line in the help fails this).
#[test]
fn config_set_help_names_every_setting() {
    let e = Env::new();
    let help = e.ok(&["config", "set", "--help"]);
    let all = e.json(&["config", "ls"]);
    let keys: Vec<String> = match &all {
        serde_json::Value::Object(m) => m.keys().cloned().collect(),
        serde_json::Value::Array(a) => a.iter().filter_map(|s| s["key"].as_str().map(str::to_string)).collect(),
        other => panic!("{other}"),
    };
    assert!(keys.len() >= 11, "{all}");
    for k in keys {
        assert!(help.contains(&format!(" {k} ")), "{k} is not in: {help}");
    }
}

/// Vaults written by every past schema version open, read and migrate with
/// today's binary: each fixture (tests/fixtures/old-vaults, made by the
/// custos of that version with make.sh there; the oldest writes version 1
/// chunks) must give back its datasets byte for byte, verify, take new
/// writes and end at today's schema. A migration added without a fixture
/// of the version before it fails here.
#[test]
fn vaults_of_every_past_schema_open_read_and_migrate() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/old-vaults");
    // The vaults record their volumes' absolute paths, so each opens where
    // it was made; the directory is removed again at the end.
    let base = Path::new("/tmp/custos-old-vault-fixtures");
    // Removed however the test ends, a failed assertion included.
    struct Cleanup(&'static Path);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0);
        }
    }
    let _cleanup = Cleanup(base);
    let current = {
        let fresh = Env::new();
        let c = rusqlite::Connection::open(fresh.vault.join("custos.db")).unwrap();
        c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).unwrap()
    };
    let sha = |b: &[u8]| hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b));
    for n in 1..current {
        let archive = fixtures.join(format!("v{n}.tar.gz"));
        assert!(
            archive.exists(),
            "no fixture of schema version {n}: make one with {}",
            fixtures.join("make.sh").display()
        );
        let root = base.join(format!("v{n}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(base).unwrap();
        let st = std::process::Command::new("tar").arg("-xzf").arg(&archive).arg("-C").arg(base).status().unwrap();
        assert!(st.success(), "v{n}: tar");
        let notes = std::fs::read_to_string(root.join("fixture.txt")).unwrap();
        let did = |step: &str| notes.lines().any(|l| l == format!("{step} ok"));
        let want =
            |f: &str| notes.lines().find_map(|l| l.strip_prefix(&format!("sha256 {f} "))).map(str::to_string).unwrap();
        for step in ["init", "put-small", "put-big", "put-small2"] {
            assert!(did(step), "v{n}: the fixture's {step} failed when it was made:\n{notes}");
        }
        let mut e = Env::existing(root.join("vault"));
        if did("ops") {
            // From schema 10 on, an operator with every role does the work.
            e.env = vec![("CUSTOS_USER".into(), "ops".into()), ("CUSTOS_CREDENTIAL".into(), OPS_CRED.into())];
        }
        let got = e.run(&["ds", "get", "FIX.SMALL"]);
        assert!(got.status.success(), "v{n}: {}", String::from_utf8_lossy(&got.stderr));
        assert_eq!(sha(&got.stdout), want("small2"), "v{n}: FIX.SMALL's newest generation");
        assert_eq!(sha(&e.run(&["ds", "get", "FIX.BIG"]).stdout), want("big"), "v{n}: FIX.BIG");
        for ds in ["FIX.SMALL", "FIX.BIG"] {
            e.ok(&["ds", "verify", ds]);
        }
        if did("backup-logical") {
            let out = e.ok(&["backup", "verify", "--read-data"]);
            assert!(!out.contains("DAMAGED"), "v{n}: {out}");
        }
        e.ok(&["audit", "verify"]);
        e.ok(&["catalog", "verify"]);
        // It takes new writes, and they read back.
        let fresh = e.file("new", b"written after the migration");
        e.ok(&["ds", "put", "FIX.SMALL", Env::s(&fresh)]);
        assert_eq!(e.run(&["ds", "get", "FIX.SMALL"]).stdout, b"written after the migration", "v{n}");
        let c = rusqlite::Connection::open(root.join("vault/custos.db")).unwrap();
        assert_eq!(c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).unwrap(), current, "v{n}");
        drop(c);
        std::fs::remove_dir_all(&root).unwrap();
    }
}

/// The README's tour runs as written: its shell blocks, in order, in an
/// empty directory with this build's `custos` first on the PATH. Each
/// command must exit 0, or the code its `# → exit N` comment names.
#[test]
fn the_readme_tour_runs_as_written() {
    run_tour(false);
}

/// The same tour through a server: the vault is made embedded (its first
/// command), then `custos serve` alone holds the passphrase, and every
/// later command reaches it over its socket without one.
#[test]
fn the_readme_tour_runs_as_written_through_a_server() {
    run_tour(true);
}

fn run_tour(served: bool) {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let start = readme.find("<!-- tour:begin -->").expect("the README marks its tour");
    let end = readme.find("<!-- tour:end -->").expect("the README marks its tour's end");
    let first_line = readme[..start].lines().count() + 1;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let mut script = String::from("set -u\n");
    let mut commands = 0;
    let mut in_sh = false;
    for (i, line) in readme[start..end].lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = trimmed == "```sh";
            continue;
        }
        if !in_sh || trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        // Definitions and settings run as they are; commands are checked.
        if trimmed.starts_with("export ") || trimmed.starts_with("as() ") {
            script.push_str(line);
            script.push('\n');
            continue;
        }
        let want: i32 = line
            .split("# → exit ")
            .nth(1)
            .and_then(|c| c.split(|ch: char| !ch.is_ascii_digit()).next())
            .map_or(0, |c| c.parse().unwrap());
        commands += 1;
        script.push_str(&format!(
            "{line}\nrc=$?; if [ $rc -ne {want} ]; then echo \"README.md line {}: exit $rc, not {want}: {}\" >&2; exit 1; fi\n",
            first_line + i,
            trimmed.replace(['"', '$', '`', '\\'], "'")
        ));
        if served && commands == 1 {
            // The vault exists: hand it to a server, and forget the passphrase.
            std::fs::write(dir.path().join("hsm.passphrase"), "the tour HSM passphrase").unwrap();
            std::fs::write(
                dir.path().join("server.toml"),
                format!(
                    "vault = \"{d}/vault\"\nvolumes = [\"{d}\"]\ndrain_secs = 5\n[hsm]\nkind = \"soft\"\nsecret_file = \"{d}/hsm.passphrase\"\n[listen]\nunix = \"{d}/run/custos.sock\"\n"
                ),
            )
            .unwrap();
            script.push_str(&format!(
                "mkdir -p {d}/run\n\
                 custos serve --config {d}/server.toml 2>{d}/server.log & server=$!\n\
                 trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT\n\
                 for _ in $(seq 200); do [ -S {d}/run/custos.sock ] && break; sleep 0.05; done\n\
                 [ -S {d}/run/custos.sock ] || {{ echo 'the server did not start:' >&2; cat {d}/server.log >&2; exit 1; }}\n\
                 unset CUSTOS_PASSPHRASE\n\
                 export CUSTOS_SERVER=unix:{d}/run/custos.sock\n"
            ));
        }
    }
    assert!(commands > 40, "the tour has {commands} commands");
    let bin = assert_cmd::cargo::cargo_bin("custos");
    let path = format!("{}:{}", bin.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let o = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    assert!(
        o.status.success(),
        "{}\n--- its output:\n{}\n--- the server's log:\n{log}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("alice,4200"), "{out}");
    // Approvers see that a request adds a credential, never its hash
    // (which anyone who may list requests could attack offline).
    assert!(out.contains("(a new credential; its hash is not shown)") && !out.contains("argon2id$"), "{out}");
    assert!(!log.contains("panicked"), "{log}");
}

//! The audit journal under concurrency: appends from many threads share
//! group commits, and the chain stays whole and in order.

mod common;

#[test]
fn concurrent_appends_share_commits_and_keep_the_chain() {
    let t = common::vault();
    let v = &t.vault;
    let threads = 16;
    let each = 200;
    std::thread::scope(|s| {
        for i in 0..threads {
            s.spawn(move || {
                let mut last = 0;
                for n in 0..each {
                    let row = v.audit_append(&format!("p{i}"), "test", &n.to_string(), "ok").unwrap();
                    // Durable and in order for this thread: sequence numbers rise.
                    assert!(row.seq > last, "{} after {last}", row.seq);
                    last = row.seq;
                }
            });
        }
    });
    let rows = v.audit_entries(&Default::default()).unwrap();
    assert_eq!(rows.len(), threads * each, "every append is there exactly once");
    for i in 0..threads {
        let mine: Vec<String> =
            rows.iter().filter(|r| r.principal == format!("p{i}")).map(|r| r.object.clone()).collect();
        assert_eq!(mine, (0..each).map(|n| n.to_string()).collect::<Vec<_>>(), "thread {i}'s entries in its order");
    }
    v.audit_checkpoint().unwrap();
    let verdict = v.audit_verify().unwrap();
    assert_eq!(verdict.problem, None);
}

/// Entries queued with a callback (the server's key service) and entries
/// waited for share the journal: every callback gets its own durable row,
/// only once that row is in the catalog, and the chain stays whole.
#[test]
fn callbacks_fire_after_their_entries_are_durable() {
    let t = common::vault();
    let v = &t.vault;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        for i in 0..8 {
            let tx = tx.clone();
            s.spawn(move || {
                for n in 0..100 {
                    if n % 10 == 0 {
                        v.audit_append(&format!("w{i}"), "test", &n.to_string(), "ok").unwrap();
                    } else {
                        let tx = tx.clone();
                        v.audit_append_then(
                            &format!("c{i}"),
                            "test",
                            &n.to_string(),
                            "ok",
                            Box::new(move |r| tx.send(r).unwrap()),
                        );
                    }
                }
            });
        }
    });
    drop(tx);
    let got: Vec<_> = (0..8 * 90).map_while(|_| rx.recv_timeout(std::time::Duration::from_secs(30)).ok()).collect();
    assert_eq!(got.len(), 8 * 90, "every callback fired");
    let rows = v.audit_entries(&Default::default()).unwrap();
    for r in &got {
        let r = r.as_ref().expect("written");
        let stored = rows.iter().find(|x| x.seq == r.seq).expect("the row a callback got is stored");
        assert_eq!((stored.hash, &stored.principal, &stored.object), (r.hash, &r.principal, &r.object));
    }
    assert_eq!(rows.len(), 8 * 100);
    assert_eq!(v.audit_verify().unwrap().problem, None);
}

/// Intents (written ahead of an operation's catalog writes, not waited on
/// for the disk) and durable outcomes from many threads share batches: a
/// batch hands its intents out between its commit and its sync, and wakes
/// only the threads whose entries it wrote, plus the next batch's writer.
/// No thread is left waiting (a lost wake-up would hang: the test gives up
/// after a minute), and every thread's entries are in the chain in its own
/// order.
#[test]
fn intents_and_outcomes_from_many_threads_all_return_in_order() {
    let common::T { _dir, vault, .. } = common::vault();
    // Shared with threads that may outlive a failed test (a hang).
    let v: &'static _ = Box::leak(Box::new(vault));
    let threads = 12;
    let each = 150;
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..threads {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut last = 0;
            for n in 0..each {
                let intent = v.audit_append_written(&format!("p{i}"), "test", &format!("{n}"), "intent").unwrap();
                let outcome = v.audit_append(&format!("p{i}"), "test", &format!("{n}"), "ok").unwrap();
                assert!(last < intent.seq && intent.seq < outcome.seq, "{last} < {} < {}", intent.seq, outcome.seq);
                last = outcome.seq;
            }
            tx.send(i).unwrap();
        });
    }
    drop(tx);
    for _ in 0..threads {
        rx.recv_timeout(std::time::Duration::from_secs(60)).expect("a thread was left waiting for its entry");
    }
    let rows = v.audit_entries(&Default::default()).unwrap();
    assert_eq!(rows.len(), threads * each * 2, "every append is there exactly once");
    for i in 0..threads {
        let mine: Vec<(String, String)> = rows
            .iter()
            .filter(|r| r.principal == format!("p{i}"))
            .map(|r| (r.object.clone(), r.result.clone()))
            .collect();
        let want: Vec<(String, String)> =
            (0..each).flat_map(|n| [(n.to_string(), "intent".into()), (n.to_string(), "ok".into())]).collect();
        assert_eq!(mine, want, "thread {i}'s entries in its order");
    }
    assert_eq!(v.audit_verify().unwrap().problem, None);
}

/// Once threads contend, the journal's own thread writes the batches that
/// queue up behind a write. It holds the vault only while it writes: when
/// the last handle goes, the catalog closes at once (its log checkpointed
/// into custos.db and removed, as a command leaves it when it exits), not
/// whenever the thread next looks.
#[test]
fn the_journal_thread_lets_the_vault_close_when_its_last_handle_goes() {
    let t = common::vault();
    let wal = t.path.join("custos.db-wal");
    let v = &t.vault;
    std::thread::scope(|s| {
        for i in 0..8 {
            s.spawn(move || {
                for n in 0..100 {
                    v.audit_append(&format!("p{i}"), "test", &n.to_string(), "ok").unwrap();
                }
            });
        }
    });
    assert!(wal.exists(), "the catalog's log is in use while the vault is open");
    let common::T { _dir, path, vault } = t;
    drop(vault);
    assert!(!wal.exists(), "the catalog closed with the vault's last handle");
    let again = custos_core::Vault::open(&path).unwrap();
    assert_eq!(again.audit_entries(&Default::default()).unwrap().len(), 800);
}

/// A callback that panics (a bug in a front end) is caught where it runs,
/// on the journal's writer thread or on a thread that wrote the batch for
/// an entry of its own: neither stops, and threads that queue entries
/// behind it, and later callbacks, still get theirs.
#[test]
fn a_panicking_callback_does_not_stop_the_journal() {
    let common::T { _dir, vault, .. } = common::vault();
    let v: &'static _ = Box::leak(Box::new(vault));
    v.audit_append_then("cb", "test", "boom", "ok", Box::new(|_| panic!("a callback's bug (expected in this test)")));
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..8 {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for n in 0..100 {
                v.audit_append(&format!("p{i}"), "test", &n.to_string(), "ok").unwrap();
            }
            tx.send(()).unwrap();
        });
    }
    for _ in 0..8 {
        rx.recv_timeout(std::time::Duration::from_secs(60)).expect("a thread was left waiting for its entry");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    v.audit_append_then("cb", "test", "after", "ok", Box::new(move |r| tx.send(r).unwrap()));
    let r = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("a later callback fired");
    assert_eq!(r.unwrap().object, "after");
    assert_eq!(v.audit_entries(&Default::default()).unwrap().len(), 802);
}

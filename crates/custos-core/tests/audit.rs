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

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

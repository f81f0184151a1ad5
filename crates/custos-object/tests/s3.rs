//! The tape volume on a real S3-protocol server (moto) on localhost.

use custos_model::{ChunkId, DatasetId};
use custos_object::{Location, ObjectVolume, S3Options};
use custos_store::{ChunkBuf, StoreError, Volume};
use custos_testing::S3Server;

/// The tests here set the process's AWS variables, which S3 clients read:
/// one at a time.
static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn with_env<T>(s3: &S3Server, f: impl FnOnce() -> T) -> T {
    for (k, v) in s3.env() {
        std::env::set_var(k, v);
    }
    f()
}

#[test]
fn s3_tape_volume_conforms_is_write_once_and_fails_clearly() {
    let _one = ENV.lock().unwrap_or_else(|p| p.into_inner());
    let s3 = S3Server::start("tapes");
    with_env(&s3, || {
        let loc = Location::parse("s3://tapes/site-b/vault1").unwrap();
        let v = ObjectVolume::create("offsite", &loc, &S3Options::default()).unwrap();
        assert!(v.describe().contains("s3://tapes/site-b/vault1"));
        custos_store::conformance::run(&v);
        // moto refuses the second conditional write of the write-once
        // probe, which is deleted again.
        assert_eq!(s3.count_objects("site-b/vault1/write-once-probe"), 0);

        // Everything lands under the prefix.
        let id = ChunkId([0x42; 16]);
        v.put_chunk(&id, b"sealed").unwrap();
        assert_eq!(s3.count_objects("site-b/vault1/chunks/42/"), 1);
        assert_eq!(s3.count_objects("site-b/vault1/CUSTOS-VOLUME"), 1);

        // Write once: a second write of the same chunk or manifest is refused
        // by the server (If-None-Match), and the first stays.
        let err = v.put_chunk(&id, b"other").unwrap_err().to_string();
        assert!(err.contains("written once"), "{err}");
        let mut buf = ChunkBuf::new(16);
        let n = v.read_chunk(&id, &mut buf, 1 << 20).unwrap();
        assert_eq!(buf.slice(n), b"sealed");
        let ds = DatasetId([3; 16]);
        v.put_manifest(&ds, 1, b"gen1").unwrap();
        assert!(v.put_manifest(&ds, 1, b"gen1 again").is_err());
        assert_eq!(v.read_manifest(&ds, 1).unwrap(), b"gen1");

        // Re-opening finds the label; a prefix without one is not a volume.
        ObjectVolume::open("offsite", &loc, &S3Options::default()).unwrap();
        let other = Location::parse("s3://tapes/elsewhere").unwrap();
        assert!(matches!(ObjectVolume::open("x", &other, &S3Options::default()), Err(StoreError::NotAVolume { .. })));
        // A bucket that does not exist is reported, naming the location.
        let missing = Location::parse("s3://no-such-bucket/x").unwrap();
        let err = ObjectVolume::open("y", &missing, &S3Options::default()).err().expect("must fail").to_string();
        assert!(err.contains("no-such-bucket"), "{err}");
    });
}

#[test]
fn unreachable_endpoint_is_reported_as_unreachable_or_io() {
    // Nothing listens on port 9 of localhost: the error names the volume.
    let opts = S3Options { endpoint: Some("http://127.0.0.1:9".into()), region: Some("us-east-1".into()) };
    let _one = ENV.lock().unwrap_or_else(|p| p.into_inner());
    std::env::set_var("AWS_ACCESS_KEY_ID", "x");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "y");
    let loc = Location::parse("s3://tapes/p").unwrap();
    let err = ObjectVolume::open("gone", &loc, &opts).err().expect("must fail").to_string();
    assert!(err.contains("volume gone"), "{err}");
}

/// A store that answers 200 to a conditional write it should refuse, and
/// overwrites (s3rver), is no place for a tape volume: adding one there is
/// refused, saying why, and so is opening one labelled there before.
#[test]
fn a_store_that_ignores_conditional_writes_is_refused_for_tape() {
    use object_store::{
        aws::AmazonS3Builder, path::Path, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    };
    let _one = ENV.lock().unwrap_or_else(|p| p.into_inner());
    let s3 = custos_testing::S3rver::start("tapes");
    for (k, v) in s3.env() {
        std::env::set_var(k, v);
    }
    // First, that this server really overwrites: otherwise the test proves nothing.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = AmazonS3Builder::from_env()
        .with_bucket_name("tapes")
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .build()
        .unwrap();
    let key = Path::from("site-b/CUSTOS-VOLUME");
    let create = || PutOptions { mode: PutMode::Create, ..Default::default() };
    rt.block_on(store.put_opts(&key, PutPayload::from_static(b"custos-volume 1\n"), create())).unwrap();
    rt.block_on(store.put_opts(&Path::from("x"), PutPayload::from_static(b"one"), create())).unwrap();
    rt.block_on(store.put_opts(&Path::from("x"), PutPayload::from_static(b"two"), create()))
        .expect("s3rver lets a second If-None-Match write through");
    let got = rt.block_on(async { store.get(&Path::from("x")).await.unwrap().bytes().await.unwrap() });
    assert_eq!(&got[..], b"two", "and replaces the object");

    let loc = Location::parse("s3://tapes/site-a").unwrap();
    let err = ObjectVolume::create("offsite", &loc, &S3Options::default()).err().expect("must be refused");
    assert!(matches!(err, StoreError::NotWriteOnce { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("volume offsite") && text.contains("s3://tapes/site-a"), "{text}");
    assert!(text.contains("If-None-Match") && text.contains("not be write-once"), "{text}");
    // Nothing was labelled, and the probe is gone.
    let left: Vec<_> = rt.block_on(async {
        use futures_util::TryStreamExt;
        store.list(Some(&Path::from("site-a"))).try_collect::<Vec<_>>().await.unwrap()
    });
    assert!(left.is_empty(), "{left:?}");
    // A volume labelled there before (here, by hand) does not open either.
    let labelled = Location::parse("s3://tapes/site-b").unwrap();
    let err = ObjectVolume::open("old", &labelled, &S3Options::default()).err().expect("must be refused");
    assert!(matches!(err, StoreError::NotWriteOnce { .. }), "{err}");
}

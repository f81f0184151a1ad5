//! The tape volume on a real S3-protocol server (moto) on localhost.

use custos_model::{ChunkId, DatasetId};
use custos_object::{Location, ObjectVolume, S3Options};
use custos_store::{ChunkBuf, StoreError, Volume};
use custos_testing::S3Server;

fn with_env<T>(s3: &S3Server, f: impl FnOnce() -> T) -> T {
    for (k, v) in s3.env() {
        std::env::set_var(k, v);
    }
    f()
}

#[test]
fn s3_tape_volume_conforms_is_write_once_and_fails_clearly() {
    let s3 = S3Server::start("tapes");
    with_env(&s3, || {
        let loc = Location::parse("s3://tapes/site-b/vault1").unwrap();
        let v = ObjectVolume::create("offsite", &loc, &S3Options::default()).unwrap();
        assert!(v.describe().contains("s3://tapes/site-b/vault1"));
        custos_store::conformance::run(&v);

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
    std::env::set_var("AWS_ACCESS_KEY_ID", "x");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "y");
    let loc = Location::parse("s3://tapes/p").unwrap();
    let err = ObjectVolume::open("gone", &loc, &opts).err().expect("must fail").to_string();
    assert!(err.contains("volume gone"), "{err}");
}

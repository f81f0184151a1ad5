//! The fuzz corpus's seeds are real requests (PyKMIP's encodings, see
//! fuzz/seed.py): every one reads as the operation it is named for, and
//! every prefix of one is refused with a reason.

use custos_kmip::tags::*;

#[test]
fn pykmip_requests_read_as_their_operations() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/kmip_request");
    let want = [
        ("create", OP_CREATE),
        ("get", OP_GET),
        ("get_attributes", OP_GET_ATTRIBUTES),
        ("get_attribute_list", OP_GET_ATTRIBUTE_LIST),
        ("locate", OP_LOCATE),
        ("activate", OP_ACTIVATE),
        ("revoke", OP_REVOKE),
        ("destroy", OP_DESTROY),
        ("query", OP_QUERY),
        ("discover_versions", OP_DISCOVER_VERSIONS),
        ("encrypt", OP_ENCRYPT),
        ("decrypt", OP_DECRYPT),
        ("modify_attribute", OP_MODIFY_ATTRIBUTE),
        ("delete_attribute", OP_DELETE_ATTRIBUTE),
    ];
    for (name, op) in want {
        let bytes = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("seed {name}: {e}"));
        let (version, ops) = custos_kmip::inspect(&bytes, 1 << 20).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(version == (1, 2) || version == (1, 4), "{name}: {version:?}");
        assert_eq!(ops, [op], "{name}");
        for cut in [1, 8, bytes.len() / 2, bytes.len() - 1] {
            let e = custos_kmip::inspect(&bytes[..cut], 1 << 20).unwrap_err();
            assert!(!e.is_empty(), "{name} cut at {cut}");
        }
        let e = custos_kmip::inspect(&bytes, bytes.len() - 1).unwrap_err();
        assert!(e.contains("over this server's limit"), "{name}: {e}");
    }
}

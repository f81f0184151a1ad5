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

/// What the reader refuses in a request that decodes: a field it does
/// not know in the header, a batch count that disagrees, a second
/// header, a payload that is not a structure, another message type.
#[test]
fn the_reader_refuses_what_it_does_not_know() {
    use custos_kmip::ttlv::{decode, encode, Item, Value};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/kmip_request");
    let get = decode(&std::fs::read(dir.join("get")).unwrap(), 1 << 20).unwrap();
    let edit = |f: &dyn Fn(&mut Vec<Item>)| {
        let mut top = get.items().to_vec();
        f(&mut top);
        custos_kmip::inspect(&encode(&Item::structure(get.tag, top)), 1 << 20)
    };
    let header_with = |extra: Item| {
        move |top: &mut Vec<Item>| {
            let mut h = top[0].items().to_vec();
            h.push(extra.clone());
            top[0] = Item::structure(top[0].tag, h);
        }
    };
    let e = edit(&header_with(Item::new(0x420099, Value::Text("user".into())))).unwrap_err();
    assert!(e.contains("does not know") && e.contains("420099"), "{e}");
    let e = edit(&|top| top.push(top[1].clone())).unwrap_err();
    assert!(e.contains("batch count says 1 but the message holds 2"), "{e}");
    let e = edit(&|top| top.insert(0, top[0].clone())).unwrap_err();
    assert!(e.contains("appears twice"), "{e}");
    let e = edit(&|top| {
        let b: Vec<Item> = top[1]
            .items()
            .iter()
            .map(|i| if i.tag == REQUEST_PAYLOAD { Item::new(i.tag, Value::Integer(1)) } else { i.clone() })
            .collect();
        top[1] = Item::structure(BATCH_ITEM, b);
    })
    .unwrap_err();
    assert!(e.contains("payload must be a structure"), "{e}");
    let other = encode(&Item::structure(RESPONSE_MESSAGE, get.items().to_vec()));
    let e = custos_kmip::inspect(&other, 1 << 20).unwrap_err();
    assert!(e.contains("not a KMIP request message"), "{e}");
    assert!(custos_kmip::inspect(&encode(&get), 1 << 20).is_ok(), "the unedited request reads");
}

//! KMIP messages as Custos reads them: a request message and its batch
//! items, each field checked (a field this server does not know is
//! refused, a field given twice is refused), and the pieces of payloads
//! that need no key store (attributes, key material, cipher parameters).
//! Nothing here touches the engine, so the fuzz target runs all of it.

// Without the service, parts only it uses lie idle.
#![cfg_attr(not(feature = "service"), allow(dead_code))]

use jiff::Timestamp;
use zeroize::Zeroizing;

use crate::tags::*;
use crate::ttlv::{decode, encode, Item, Value};

const KEY_WRAPPING_DATA: u32 = 0x420046;

/// Why one batch item failed: KMIP's result reason and a message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) reason: u32,
    pub(crate) message: String,
}

pub(crate) type R<T> = Result<T, Failure>;

pub(crate) fn fail(reason: u32, message: impl Into<String>) -> Failure {
    Failure { reason, message: message.into() }
}

pub(crate) fn invalid(message: impl Into<String>) -> Failure {
    fail(REASON_INVALID_FIELD, message)
}

pub(crate) fn text(tag: u32, s: impl Into<String>) -> Item {
    Item::new(tag, Value::Text(s.into()))
}

pub(crate) fn enumeration(tag: u32, v: u32) -> Item {
    Item::new(tag, Value::Enumeration(v))
}

pub(crate) fn integer(tag: u32, v: i32) -> Item {
    Item::new(tag, Value::Integer(v))
}

pub(crate) fn date(tag: u32, t: Timestamp) -> Item {
    Item::new(tag, Value::DateTime(t.as_second()))
}

pub(crate) fn version_item(v: (i32, i32)) -> Item {
    Item::structure(PROTOCOL_VERSION, vec![integer(PROTOCOL_VERSION_MAJOR, v.0), integer(PROTOCOL_VERSION_MINOR, v.1)])
}

pub(crate) fn tag_name(tag: u32) -> String {
    format!("{tag:06X}")
}

/// The one child of `s` with `tag`, if any; two are refused.
pub(crate) fn one(s: &[Item], tag: u32) -> R<Option<&Item>> {
    let mut found = s.iter().filter(|i| i.tag == tag);
    let first = found.next();
    if found.next().is_some() {
        return Err(invalid(format!("field {} appears twice", tag_name(tag))));
    }
    Ok(first)
}

pub(crate) fn need<'a>(s: &'a [Item], tag: u32, what: &str) -> R<&'a Item> {
    one(s, tag)?.ok_or_else(|| fail(REASON_MISSING_DATA, format!("the request has no {what}")))
}

pub(crate) fn as_text<'a>(i: &'a Item, what: &str) -> R<&'a str> {
    match &i.value {
        Value::Text(t) => Ok(t),
        v => Err(invalid(format!("{what} is a {} where a text string belongs", v.type_name()))),
    }
}

pub(crate) fn as_int(i: &Item, what: &str) -> R<i32> {
    match i.value {
        Value::Integer(v) => Ok(v),
        ref v => Err(invalid(format!("{what} is a {} where an integer belongs", v.type_name()))),
    }
}

pub(crate) fn as_enum(i: &Item, what: &str) -> R<u32> {
    match i.value {
        Value::Enumeration(v) => Ok(v),
        ref v => Err(invalid(format!("{what} is a {} where an enumeration belongs", v.type_name()))),
    }
}

pub(crate) fn as_date(i: &Item, what: &str) -> R<Timestamp> {
    match i.value {
        Value::DateTime(v) => {
            Timestamp::from_second(v).map_err(|_| invalid(format!("{what} is outside the dates Custos keeps")))
        }
        ref v => Err(invalid(format!("{what} is a {} where a date-time belongs", v.type_name()))),
    }
}

/// Refuse any field of `s` not in `known`.
pub(crate) fn only(s: &[Item], known: &[u32], what: &str) -> R<()> {
    match s.iter().find(|i| !known.contains(&i.tag)) {
        Some(i) => Err(invalid(format!("{what} has a field this server does not know: {}", tag_name(i.tag)))),
        None => Ok(()),
    }
}

/// A parsed request message.
pub(crate) struct Request<'a> {
    pub(crate) version: (i32, i32),
    pub(crate) items: Vec<BatchItem<'a>>,
}

pub(crate) struct BatchItem<'a> {
    pub(crate) operation: u32,
    pub(crate) id: Option<&'a Item>,
    pub(crate) payload: &'a [Item],
}

pub(crate) fn parse_request(msg: &Item) -> R<Request<'_>> {
    let bad = |m: &str| fail(REASON_INVALID_MESSAGE, m.to_string());
    if msg.tag != REQUEST_MESSAGE || !matches!(msg.value, Value::Structure(_)) {
        return Err(bad("the message is not a KMIP request message"));
    }
    let top = msg.items();
    let header = need(top, REQUEST_HEADER, "request header")?;
    only(
        header.items(),
        &[
            PROTOCOL_VERSION,
            MAXIMUM_RESPONSE_SIZE,
            CLIENT_CORRELATION_VALUE,
            SERVER_CORRELATION_VALUE,
            ASYNCHRONOUS_INDICATOR,
            AUTHENTICATION,
            BATCH_ERROR_CONTINUATION_OPTION,
            BATCH_ORDER_OPTION,
            TIME_STAMP,
            BATCH_COUNT,
        ],
        "the request header",
    )
    .map_err(|f| bad(&f.message))?;
    let v = need(header.items(), PROTOCOL_VERSION, "protocol version")?;
    let major = as_int(need(v.items(), PROTOCOL_VERSION_MAJOR, "protocol version major")?, "protocol version major")?;
    let minor = as_int(need(v.items(), PROTOCOL_VERSION_MINOR, "protocol version minor")?, "protocol version minor")?;
    let count = as_int(need(header.items(), BATCH_COUNT, "batch count")?, "batch count")?;
    only(top, &[REQUEST_HEADER, BATCH_ITEM], "the request message").map_err(|f| bad(&f.message))?;
    let mut items = Vec::new();
    for b in top.iter().filter(|i| i.tag == BATCH_ITEM) {
        only(b.items(), &[OPERATION, UNIQUE_BATCH_ITEM_ID, REQUEST_PAYLOAD], "a batch item")
            .map_err(|f| bad(&f.message))?;
        let operation = as_enum(need(b.items(), OPERATION, "operation")?, "operation")?;
        let payload = need(b.items(), REQUEST_PAYLOAD, "request payload")?;
        if !matches!(payload.value, Value::Structure(_)) {
            return Err(bad("a request payload must be a structure"));
        }
        items.push(BatchItem { operation, id: one(b.items(), UNIQUE_BATCH_ITEM_ID)?, payload: payload.items() });
    }
    if items.is_empty() || count as usize != items.len() {
        return Err(bad(&format!("the batch count says {count} but the message holds {} batch items", items.len())));
    }
    Ok(Request { version: (major, minor), items })
}

/// The version a response uses: the client's when this server speaks it,
/// else the newest it speaks below the client's.
pub(crate) fn answer_version(asked: (i32, i32)) -> Option<(i32, i32)> {
    VERSIONS.iter().copied().find(|v| *v <= asked)
}

/// A response message.
pub(crate) fn response(version: (i32, i32), items: Vec<Item>) -> Zeroizing<Vec<u8>> {
    let header = Item::structure(
        RESPONSE_HEADER,
        vec![version_item(version), date(TIME_STAMP, Timestamp::now()), integer(BATCH_COUNT, items.len() as i32)],
    );
    let mut top = vec![header];
    top.extend(items);
    encode(&Item::structure(RESPONSE_MESSAGE, top))
}

pub(crate) fn failed_item(operation: Option<u32>, id: Option<&Item>, f: &Failure) -> Item {
    let mut v = Vec::new();
    if let Some(op) = operation {
        v.push(enumeration(OPERATION, op));
    }
    if let Some(id) = id {
        v.push(id.clone());
    }
    v.push(enumeration(RESULT_STATUS, STATUS_FAILED));
    v.push(enumeration(RESULT_REASON, f.reason));
    v.push(text(RESULT_MESSAGE, f.message.clone()));
    Item::structure(BATCH_ITEM, v)
}

/// An error response to a message that could not be read as a request:
/// one failed batch item, in the newest 1.x version (what every client
/// reads).
pub fn refusal(reason: u32, message: &str) -> Zeroizing<Vec<u8>> {
    response((1, 4), vec![failed_item(None, None, &fail(reason, message))])
}

/// The key material a Register request carries: (secret data type when
/// it is secret data, bytes).
pub(crate) fn registered(p: &[Item]) -> R<(Option<u32>, Zeroizing<Vec<u8>>)> {
    let object = as_enum(need(p, OBJECT_TYPE, "object type")?, "the object type")?;
    let (holder, secret) = match object {
        OBJECT_SYMMETRIC_KEY => (need(p, SYMMETRIC_KEY, "symmetric key")?, None),
        OBJECT_SECRET_DATA => {
            let s = need(p, SECRET_DATA, "secret data")?;
            let t = as_enum(need(s.items(), SECRET_DATA_TYPE, "secret data type")?, "the secret data type")?;
            (s, Some(t))
        }
        _ => return Err(fail(0x30, "Custos registers symmetric keys and secret data only")),
    };
    let block = need(holder.items(), KEY_BLOCK, "key block")?;
    let b = block.items();
    if one(b, KEY_WRAPPING_DATA)?.is_some() || one(b, KEY_COMPRESSION_TYPE)?.is_some() {
        return Err(fail(
            REASON_FEATURE_NOT_SUPPORTED,
            "register the key unwrapped and uncompressed, inside the TLS session",
        ));
    }
    let format = as_enum(need(b, KEY_FORMAT_TYPE, "key format type")?, "the key format type")?;
    let value = need(b, KEY_VALUE, "key value")?;
    let material = need(value.items(), KEY_MATERIAL, "key material")?;
    let bytes = match (format, &material.value) {
        (FORMAT_RAW | FORMAT_OPAQUE, Value::Bytes(v)) => v.clone(),
        (FORMAT_TRANSPARENT_SYMMETRIC, Value::Structure(s)) => match &need(s, KEY, "key")?.value {
            Value::Bytes(v) => v.clone(),
            _ => return Err(invalid("a transparent symmetric key's Key is a byte string")),
        },
        _ => {
            return Err(fail(
                REASON_KEY_FORMAT_TYPE_NOT_SUPPORTED,
                "key material comes as Raw, Opaque (secret data) or Transparent Symmetric Key",
            ))
        }
    };
    if secret.is_none() {
        if let Some(alg) = one(b, CRYPTOGRAPHIC_ALGORITHM)? {
            if as_enum(alg, "the algorithm")? != ALGORITHM_AES {
                return Err(invalid("Custos keeps AES keys only"));
            }
        }
        if let Some(len) = one(b, CRYPTOGRAPHIC_LENGTH)? {
            if as_int(len, "the length")? as usize != bytes.len() * 8 {
                return Err(invalid("the key block's Cryptographic Length is not the material's"));
            }
        }
    }
    Ok((secret, bytes))
}

/// The IV, additional data and mode a client's Encrypt or Decrypt asks for.
pub(crate) fn cipher_request(p: &[Item]) -> R<(Option<[u8; 12]>, Vec<u8>)> {
    if let Some(cp) = one(p, CRYPTOGRAPHIC_PARAMETERS)? {
        let c = cp.items();
        only(
            c,
            &[BLOCK_CIPHER_MODE, CRYPTOGRAPHIC_ALGORITHM, RANDOM_IV, IV_LENGTH, TAG_LENGTH, PADDING_METHOD],
            "the cryptographic parameters",
        )?;
        let mode = one(c, BLOCK_CIPHER_MODE)?.map(|m| as_enum(m, "the block cipher mode")).transpose()?;
        if mode.is_some_and(|m| m != MODE_GCM) {
            return Err(fail(0x3E, "Custos encrypts for clients with AES-GCM only: give Block Cipher Mode GCM"));
        }
        if let Some(a) = one(c, CRYPTOGRAPHIC_ALGORITHM)? {
            if as_enum(a, "the algorithm")? != ALGORITHM_AES {
                return Err(fail(0x3E, "the keys are AES keys"));
            }
        }
        if let Some(t) = one(c, TAG_LENGTH)? {
            if as_int(t, "the tag length")? != 16 {
                return Err(fail(0x3E, "AES-GCM tags are 16 bytes here"));
            }
        }
        if let Some(l) = one(c, IV_LENGTH)? {
            if as_int(l, "the IV length")? != 96 {
                return Err(fail(0x3E, "AES-GCM IVs are 96 bits here"));
            }
        }
    }
    if one(p, CORRELATION_VALUE)?.is_some() || one(p, INIT_INDICATOR)?.is_some() || one(p, FINAL_INDICATOR)?.is_some() {
        return Err(fail(REASON_FEATURE_NOT_SUPPORTED, "streaming encryption is not supported: send the data whole"));
    }
    let iv = match one(p, IV_COUNTER_NONCE)? {
        None => None,
        Some(i) => match &i.value {
            Value::Bytes(b) => {
                Some(b.as_slice().try_into().map_err(|_| fail(0x3E, "an AES-GCM IV is 12 bytes (96 bits) here"))?)
            }
            _ => return Err(invalid("the IV is a byte string")),
        },
    };
    let aad = match one(p, AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA)? {
        None => Vec::new(),
        Some(a) => match &a.value {
            Value::Bytes(b) => b.to_vec(),
            _ => return Err(invalid("the additional data is a byte string")),
        },
    };
    Ok((iv, aad))
}

/// AES-GCM's tag has a field of its own from KMIP 1.4 on.
pub(crate) fn gcm_version(version: (i32, i32)) -> R<()> {
    if version < (1, 4) {
        return Err(fail(
            REASON_FEATURE_NOT_SUPPORTED,
            format!(
                "Encrypt and Decrypt here are AES-GCM, whose tag KMIP {}.{} has no field for: use KMIP 1.4 or later",
                version.0, version.1
            ),
        ));
    }
    Ok(())
}

pub(crate) fn bytes_of<'a>(p: &'a [Item], tag: u32, what: &str) -> R<&'a [u8]> {
    match &need(p, tag, what)?.value {
        Value::Bytes(b) => Ok(b),
        v => Err(invalid(format!("the {what} is a {} where a byte string belongs", v.type_name()))),
    }
}

/// Attributes a request gives: from 1.x Attribute structures (`attrs`
/// holds them) or a 2.0 Attributes structure; as (name, value).
pub(crate) fn attributes_in(items: &[Item]) -> R<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for i in items {
        match i.tag {
            ATTRIBUTE => {
                only(i.items(), &[ATTRIBUTE_NAME, ATTRIBUTE_INDEX, ATTRIBUTE_VALUE], "an attribute")?;
                let name = as_text(need(i.items(), ATTRIBUTE_NAME, "attribute name")?, "an attribute's name")?;
                let value = need(i.items(), ATTRIBUTE_VALUE, "attribute value")?;
                out.push((name.to_string(), value.value.clone()));
            }
            ATTRIBUTES => {
                for a in i.items() {
                    let name = attribute_name(a.tag).ok_or_else(|| {
                        invalid(format!("attribute {} is not one this server keeps", tag_name(a.tag)))
                    })?;
                    out.push((name.to_string(), a.value.clone()));
                }
            }
            TEMPLATE_ATTRIBUTE => {
                if i.items().iter().any(|t| t.tag == NAME) {
                    return Err(fail(
                        REASON_FEATURE_NOT_SUPPORTED,
                        "named templates are not supported: give the attributes",
                    ));
                }
                out.extend(attributes_in(i.items())?);
            }
            _ => {}
        }
    }
    Ok(out)
}

pub(crate) fn name_of(v: &Value) -> R<String> {
    let Value::Structure(s) = v else { return Err(invalid("a Name is a structure of Name Value and Name Type")) };
    only(s, &[NAME_VALUE, NAME_TYPE], "a Name")?;
    Ok(as_text(need(s, NAME_VALUE, "name value")?, "a name's value")?.to_string())
}

pub(crate) fn value_item(v: &Value) -> Item {
    Item::new(ATTRIBUTE_VALUE, v.clone())
}

/// Read a request message as the server does, without carrying anything
/// out: what the fuzz target and the tests call. The version and each
/// batch item's operation, or why it was refused.
pub fn inspect(bytes: &[u8], max: usize) -> Result<((i32, i32), Vec<u32>), String> {
    let msg = decode(bytes, max).map_err(|e| e.to_string())?;
    let req = parse_request(&msg).map_err(|f| f.message)?;
    for b in &req.items {
        let p = b.payload;
        let r = match b.operation {
            OP_REGISTER => registered(p).map(|_| ()),
            OP_ENCRYPT | OP_DECRYPT => cipher_request(p).map(|_| ()),
            _ => attributes_in(p).map(|_| ()),
        };
        r.map_err(|f| f.message)?;
    }
    Ok((req.version, req.items.iter().map(|b| b.operation).collect()))
}

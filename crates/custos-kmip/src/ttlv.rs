//! TTLV, KMIP's encoding: a 3-byte tag, a 1-byte type, a 4-byte big-endian
//! length, and the value padded with zeros to a multiple of 8 bytes.
//!
//! The decoder is strict: it refuses a length that disagrees with the type,
//! a value running past its structure, non-zero padding, nesting deeper
//! than a bound, a message over a size bound, tags outside KMIP's two
//! ranges, text that is not UTF-8, booleans other than 0 and 1, and bytes
//! after the message. It never allocates more than the message it was
//! given. Byte strings are zeroized when dropped: they carry key material.

use zeroize::Zeroizing;

/// Deepest nesting a message may have (a request message is 3 deep before
/// its payload; attributes add 3 more).
pub const MAX_DEPTH: usize = 16;

/// A TTLV item: a tag and its value.
#[derive(Clone, PartialEq, Eq)]
pub struct Item {
    pub tag: u32,
    pub value: Value,
}

/// A TTLV value. Date-times are seconds since the Unix epoch (extended:
/// microseconds), as the wire has them.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    Structure(Vec<Item>),
    Integer(i32),
    LongInteger(i64),
    BigInteger(Vec<u8>),
    Enumeration(u32),
    Boolean(bool),
    Text(String),
    Bytes(Zeroizing<Vec<u8>>),
    DateTime(i64),
    Interval(u32),
    DateTimeExtended(i64),
}

impl Value {
    fn type_code(&self) -> u8 {
        match self {
            Value::Structure(_) => 0x01,
            Value::Integer(_) => 0x02,
            Value::LongInteger(_) => 0x03,
            Value::BigInteger(_) => 0x04,
            Value::Enumeration(_) => 0x05,
            Value::Boolean(_) => 0x06,
            Value::Text(_) => 0x07,
            Value::Bytes(_) => 0x08,
            Value::DateTime(_) => 0x09,
            Value::Interval(_) => 0x0A,
            Value::DateTimeExtended(_) => 0x0B,
        }
    }

    /// The type's name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Structure(_) => "structure",
            Value::Integer(_) => "integer",
            Value::LongInteger(_) => "long integer",
            Value::BigInteger(_) => "big integer",
            Value::Enumeration(_) => "enumeration",
            Value::Boolean(_) => "boolean",
            Value::Text(_) => "text string",
            Value::Bytes(_) => "byte string",
            Value::DateTime(_) => "date-time",
            Value::Interval(_) => "interval",
            Value::DateTimeExtended(_) => "date-time extended",
        }
    }
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:06X} {:?}", self.tag, self.value)
    }
}

impl std::fmt::Debug for Value {
    /// Byte strings show their length only: they may be key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Structure(items) => f.debug_list().entries(items).finish(),
            Value::Integer(v) => write!(f, "Integer({v})"),
            Value::LongInteger(v) => write!(f, "LongInteger({v})"),
            Value::BigInteger(v) => write!(f, "BigInteger({} bytes)", v.len()),
            Value::Enumeration(v) => write!(f, "Enumeration({v:#x})"),
            Value::Boolean(v) => write!(f, "Boolean({v})"),
            Value::Text(v) => write!(f, "Text({v:?})"),
            Value::Bytes(v) => write!(f, "Bytes([{} bytes])", v.len()),
            Value::DateTime(v) => write!(f, "DateTime({v})"),
            Value::Interval(v) => write!(f, "Interval({v})"),
            Value::DateTimeExtended(v) => write!(f, "DateTimeExtended({v})"),
        }
    }
}

impl Item {
    pub fn new(tag: u32, value: Value) -> Self {
        Self { tag, value }
    }

    pub fn structure(tag: u32, items: Vec<Item>) -> Self {
        Self { tag, value: Value::Structure(items) }
    }

    /// The items of a structure (none for any other type).
    pub fn items(&self) -> &[Item] {
        match &self.value {
            Value::Structure(v) => v,
            _ => &[],
        }
    }
}

/// Why a message could not be decoded. Each names the byte offset where
/// decoding stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the message ends at byte {at}, inside an item that needs {need} more bytes")]
    Truncated { at: usize, need: usize },
    #[error("the message is {len} bytes, over this server's limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("item at byte {at}: type {code:#04x} is not a KMIP type")]
    UnknownType { at: usize, code: u8 },
    #[error("item at byte {at}: tag {tag:06X} is outside KMIP's tag ranges (42xxxx, 54xxxx)")]
    BadTag { at: usize, tag: u32 },
    #[error("item at byte {at}: a {type_name} cannot be {len} bytes long")]
    BadLength { at: usize, type_name: &'static str, len: u32 },
    #[error("item at byte {at}: its padding is not zeros")]
    BadPadding { at: usize },
    #[error("item at byte {at}: structures nest deeper than {max}")]
    TooDeep { at: usize, max: usize },
    #[error("item at byte {at}: a boolean is 0 or 1, not {value}")]
    BadBoolean { at: usize, value: u64 },
    #[error("item at byte {at}: its text is not UTF-8")]
    BadText { at: usize },
    #[error("{extra} bytes follow the message")]
    Trailing { extra: usize },
}

fn padded(len: usize) -> usize {
    len.div_ceil(8) * 8
}

/// Decode exactly one item that spans all of `buf`.
pub fn decode(buf: &[u8], max_len: usize) -> Result<Item, DecodeError> {
    if buf.len() > max_len {
        return Err(DecodeError::TooLarge { len: buf.len(), max: max_len });
    }
    let (item, used) = decode_at(buf, 0, 0)?;
    if used != buf.len() {
        return Err(DecodeError::Trailing { extra: buf.len() - used });
    }
    Ok(item)
}

/// The header of the item at the start of `buf`: its tag, type and the
/// length of its value (without padding), checked as `decode` checks them.
pub fn header(buf: &[u8; 8]) -> Result<(u32, u8, u32), DecodeError> {
    let tag = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]);
    let code = buf[3];
    let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    check_tag(0, tag)?;
    check_len(0, code, len)?;
    Ok((tag, code, len))
}

fn check_tag(at: usize, tag: u32) -> Result<(), DecodeError> {
    match tag >> 16 {
        0x42 | 0x54 => Ok(()),
        _ => Err(DecodeError::BadTag { at, tag }),
    }
}

fn check_len(at: usize, code: u8, len: u32) -> Result<(), DecodeError> {
    let (ok, type_name) = match code {
        0x01 => (len % 8 == 0, "structure"),
        0x02 => (len == 4, "integer"),
        0x03 => (len == 8, "long integer"),
        0x04 => (len % 8 == 0 && len > 0, "big integer"),
        0x05 => (len == 4, "enumeration"),
        0x06 => (len == 8, "boolean"),
        0x07 | 0x08 => (true, if code == 0x07 { "text string" } else { "byte string" }),
        0x09 => (len == 8, "date-time"),
        0x0A => (len == 4, "interval"),
        0x0B => (len == 8, "date-time extended"),
        _ => return Err(DecodeError::UnknownType { at, code }),
    };
    if ok {
        Ok(())
    } else {
        Err(DecodeError::BadLength { at, type_name, len })
    }
}

fn decode_at(buf: &[u8], at: usize, depth: usize) -> Result<(Item, usize), DecodeError> {
    let rest = &buf[at..];
    if rest.len() < 8 {
        return Err(DecodeError::Truncated { at: buf.len(), need: 8 - rest.len() });
    }
    let head: &[u8; 8] = rest[..8].try_into().expect("8 bytes");
    let tag = u32::from_be_bytes([0, head[0], head[1], head[2]]);
    let code = head[3];
    let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    check_tag(at, tag)?;
    check_len(at, code, len)?;
    let len = len as usize;
    let total = padded(len);
    if rest.len() - 8 < total {
        return Err(DecodeError::Truncated { at: buf.len(), need: total - (rest.len() - 8) });
    }
    let body = &rest[8..8 + len];
    if rest[8 + len..8 + total].iter().any(|b| *b != 0) {
        return Err(DecodeError::BadPadding { at });
    }
    let be8 = |b: &[u8]| u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
    let be4 = |b: &[u8]| u32::from_be_bytes(b[..4].try_into().expect("4 bytes"));
    let value = match code {
        0x01 => {
            if depth + 1 > MAX_DEPTH {
                return Err(DecodeError::TooDeep { at, max: MAX_DEPTH });
            }
            let mut items = Vec::new();
            let end = at + 8 + len;
            let mut pos = at + 8;
            // The inner items are decoded against the structure's own
            // bytes, so none can run past it.
            let inner = &buf[..end];
            while pos < end {
                let (item, used) = decode_at(inner, pos, depth + 1)?;
                items.push(item);
                pos += used;
            }
            Value::Structure(items)
        }
        0x02 => Value::Integer(be4(body) as i32),
        0x03 => Value::LongInteger(be8(body) as i64),
        0x04 => Value::BigInteger(body.to_vec()),
        0x05 => Value::Enumeration(be4(body)),
        0x06 => match be8(body) {
            0 => Value::Boolean(false),
            1 => Value::Boolean(true),
            value => return Err(DecodeError::BadBoolean { at, value }),
        },
        0x07 => Value::Text(String::from_utf8(body.to_vec()).map_err(|_| DecodeError::BadText { at })?),
        0x08 => Value::Bytes(Zeroizing::new(body.to_vec())),
        0x09 => Value::DateTime(be8(body) as i64),
        0x0A => Value::Interval(be4(body)),
        0x0B => Value::DateTimeExtended(be8(body) as i64),
        _ => unreachable!("check_len refused other types"),
    };
    Ok((Item { tag, value }, 8 + total))
}

/// Encode an item. The buffer is zeroized when dropped (responses carry
/// key material).
pub fn encode(item: &Item) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(256));
    encode_into(item, &mut out);
    out
}

fn encode_into(item: &Item, out: &mut Vec<u8>) {
    out.extend_from_slice(&item.tag.to_be_bytes()[1..]);
    out.push(item.value.type_code());
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let start = out.len();
    match &item.value {
        Value::Structure(items) => {
            for i in items {
                encode_into(i, out);
            }
        }
        Value::Integer(v) => out.extend_from_slice(&v.to_be_bytes()),
        Value::LongInteger(v) | Value::DateTime(v) | Value::DateTimeExtended(v) => {
            out.extend_from_slice(&v.to_be_bytes())
        }
        Value::BigInteger(v) => out.extend_from_slice(v),
        Value::Enumeration(v) | Value::Interval(v) => out.extend_from_slice(&v.to_be_bytes()),
        Value::Boolean(v) => out.extend_from_slice(&u64::from(*v).to_be_bytes()),
        Value::Text(v) => out.extend_from_slice(v.as_bytes()),
        Value::Bytes(v) => out.extend_from_slice(v),
    }
    let len = out.len() - start;
    out[len_at..len_at + 4].copy_from_slice(&(len as u32).to_be_bytes());
    out.resize(start + padded(len), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace() && *c != '|').collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// The KMIP specification's own encoding examples (section 9.1.2).
    #[test]
    fn the_specifications_examples_decode_and_encode_alike() {
        let cases = [
            ("42002002|00000004|00000008 00000000", Value::Integer(8)),
            ("42002003|00000008|01B69B4BA5749200", Value::LongInteger(123456789000000000)),
            ("42002005|00000004|000000FF 00000000", Value::Enumeration(255)),
            ("42002006|00000008|0000000000000001", Value::Boolean(true)),
            ("42002007|0000000B|48656C6C6F20576F726C64 0000000000", Value::Text("Hello World".into())),
            ("42002008|00000003|010203 0000000000", Value::Bytes(Zeroizing::new(vec![1, 2, 3]))),
            ("42002009|00000008|0000000047DA67F8", Value::DateTime(0x47DA67F8)),
            ("4200200A|00000004|000D2F00 00000000", Value::Interval(864000)),
        ];
        for (wire, value) in cases {
            let bytes = hex(wire);
            let item = decode(&bytes, 1 << 20).unwrap();
            assert_eq!(item, Item::new(0x420020, value), "{wire}");
            assert_eq!(&encode(&item)[..], &bytes[..], "{wire}");
        }
        let s = hex("42002001|00000020|4200040500000004000254870000000042000502000000040000000000000000");
        let item = decode(&s, 1 << 20).unwrap();
        assert_eq!(item.items().len(), 2);
        assert_eq!(&encode(&item)[..], &s[..]);
    }

    #[test]
    fn every_kind_of_malformed_message_is_refused_with_its_reason() {
        let ok = hex("42002002|00000004|00000008 00000000");
        let max = 1 << 20;
        assert!(matches!(decode(&ok[..12], max), Err(DecodeError::Truncated { .. })));
        assert!(matches!(decode(&ok[..5], max), Err(DecodeError::Truncated { .. })));
        let mut trailing = ok.clone();
        trailing.extend_from_slice(&[0; 8]);
        assert_eq!(decode(&trailing, max), Err(DecodeError::Trailing { extra: 8 }));
        assert!(matches!(decode(&ok, 8), Err(DecodeError::TooLarge { len: 16, max: 8 })));
        let bad_len = hex("42002002|00000005|00000008 00000000");
        assert!(matches!(decode(&bad_len, max), Err(DecodeError::BadLength { .. })));
        let bad_type = hex("4200200C|00000004|00000008 00000000");
        assert!(matches!(decode(&bad_type, max), Err(DecodeError::UnknownType { code: 0x0C, .. })));
        let bad_tag = hex("43002002|00000004|00000008 00000000");
        assert!(matches!(decode(&bad_tag, max), Err(DecodeError::BadTag { .. })));
        let bad_pad = hex("42002002|00000004|00000008 00000001");
        assert!(matches!(decode(&bad_pad, max), Err(DecodeError::BadPadding { .. })));
        let bad_bool = hex("42002006|00000008|0000000000000002");
        assert!(matches!(decode(&bad_bool, max), Err(DecodeError::BadBoolean { value: 2, .. })));
        let bad_text = hex("42002007|00000002|FFFE000000000000");
        assert!(matches!(decode(&bad_text, max), Err(DecodeError::BadText { .. })));
        // A structure whose child claims more than the structure holds.
        let overrun = hex("42002001|00000010|42002002|00000010|0000000800000000");
        assert!(matches!(decode(&overrun, max), Err(DecodeError::BadLength { .. } | DecodeError::Truncated { .. })));
        let overrun = hex("42002001|00000010|42002008|00000010|0000000800000000 0000000000000000");
        assert!(matches!(decode(&overrun, max), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn nesting_deeper_than_the_bound_is_refused() {
        let mut item = Item::new(0x420020, Value::Integer(1));
        for _ in 0..MAX_DEPTH {
            item = Item::structure(0x420021, vec![item]);
        }
        assert!(decode(&encode(&item), 1 << 20).is_ok());
        let deeper = Item::structure(0x420021, vec![item]);
        assert!(matches!(decode(&encode(&deeper), 1 << 20), Err(DecodeError::TooDeep { .. })));
    }

    #[test]
    fn debug_never_shows_a_byte_strings_content() {
        let item = Item::new(0x420043, Value::Bytes(Zeroizing::new(b"secret-key-bytes".to_vec())));
        let shown = format!("{item:?}");
        assert!(!shown.contains("secret") && shown.contains("16 bytes"), "{shown}");
    }

    fn any_item() -> impl proptest::strategy::Strategy<Value = Item> {
        use proptest::prelude::*;
        let tag = prop_oneof![0x420000u32..0x420200, 0x540000u32..0x540010];
        let leaf = prop_oneof![
            any::<i32>().prop_map(Value::Integer),
            any::<i64>().prop_map(Value::LongInteger),
            any::<u32>().prop_map(Value::Enumeration),
            any::<bool>().prop_map(Value::Boolean),
            ".{0,20}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| Value::Bytes(Zeroizing::new(v))),
            any::<i64>().prop_map(Value::DateTime),
            proptest::collection::vec(any::<u8>(), 1..3).prop_map(|v| Value::BigInteger(v.repeat(8))),
        ];
        let leaf_item = (tag.clone(), leaf).prop_map(|(t, v)| Item::new(t, v));
        leaf_item.prop_recursive(4, 64, 8, move |inner| {
            (tag.clone(), proptest::collection::vec(inner, 0..8)).prop_map(|(t, v)| Item::structure(t, v))
        })
    }

    proptest::proptest! {
        #[test]
        fn what_is_encoded_decodes_to_itself(item in any_item()) {
            let bytes = encode(&item);
            proptest::prop_assert_eq!(decode(&bytes, 1 << 24).unwrap(), item);
        }

        #[test]
        fn no_input_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode(&bytes, 1 << 20);
        }
    }
}

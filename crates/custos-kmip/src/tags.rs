//! KMIP's numbers: tags, operations, enumerations (from the OASIS
//! specification, versions 1.0 to 2.0).

// Tags.
pub const ACTIVATION_DATE: u32 = 0x420001;
pub const ASYNCHRONOUS_CORRELATION_VALUE: u32 = 0x420006;
pub const ASYNCHRONOUS_INDICATOR: u32 = 0x420007;
pub const ATTRIBUTE: u32 = 0x420008;
pub const ATTRIBUTE_INDEX: u32 = 0x420009;
pub const ATTRIBUTE_NAME: u32 = 0x42000A;
pub const ATTRIBUTE_VALUE: u32 = 0x42000B;
pub const AUTHENTICATION: u32 = 0x42000C;
pub const BATCH_COUNT: u32 = 0x42000D;
pub const BATCH_ERROR_CONTINUATION_OPTION: u32 = 0x42000E;
pub const BATCH_ITEM: u32 = 0x42000F;
pub const BATCH_ORDER_OPTION: u32 = 0x420010;
pub const BLOCK_CIPHER_MODE: u32 = 0x420011;
pub const COMPROMISE_DATE: u32 = 0x420020;
pub const COMPROMISE_OCCURRENCE_DATE: u32 = 0x420021;
pub const CONTACT_INFORMATION: u32 = 0x420022;
pub const CRYPTOGRAPHIC_ALGORITHM: u32 = 0x420028;
pub const CRYPTOGRAPHIC_LENGTH: u32 = 0x42002A;
pub const CRYPTOGRAPHIC_PARAMETERS: u32 = 0x42002B;
pub const CRYPTOGRAPHIC_USAGE_MASK: u32 = 0x42002C;
pub const DEACTIVATION_DATE: u32 = 0x42002F;
pub const DESTROY_DATE: u32 = 0x420033;
pub const INITIAL_DATE: u32 = 0x420039;
pub const KEY: u32 = 0x42003F;
pub const KEY_BLOCK: u32 = 0x420040;
pub const KEY_COMPRESSION_TYPE: u32 = 0x420041;
pub const KEY_FORMAT_TYPE: u32 = 0x420042;
pub const KEY_MATERIAL: u32 = 0x420043;
pub const KEY_VALUE: u32 = 0x420045;
pub const KEY_WRAPPING_SPECIFICATION: u32 = 0x420047;
pub const LAST_CHANGE_DATE: u32 = 0x420048;
pub const MAXIMUM_ITEMS: u32 = 0x42004F;
pub const MAXIMUM_RESPONSE_SIZE: u32 = 0x420050;
pub const NAME: u32 = 0x420053;
pub const NAME_TYPE: u32 = 0x420054;
pub const NAME_VALUE: u32 = 0x420055;
pub const OBJECT_GROUP_MEMBER: u32 = 0x4200AC;
pub const OBJECT_TYPE: u32 = 0x420057;
pub const OFFSET_ITEMS: u32 = 0x4200D4;
pub const OPERATION: u32 = 0x42005C;
pub const OPERATION_POLICY_NAME: u32 = 0x42005D;
pub const PROTOCOL_VERSION: u32 = 0x420069;
pub const PROTOCOL_VERSION_MAJOR: u32 = 0x42006A;
pub const PROTOCOL_VERSION_MINOR: u32 = 0x42006B;
pub const QUERY_FUNCTION: u32 = 0x420074;
pub const REQUEST_HEADER: u32 = 0x420077;
pub const REQUEST_MESSAGE: u32 = 0x420078;
pub const REQUEST_PAYLOAD: u32 = 0x420079;
pub const RESPONSE_HEADER: u32 = 0x42007A;
pub const RESPONSE_MESSAGE: u32 = 0x42007B;
pub const RESPONSE_PAYLOAD: u32 = 0x42007C;
pub const RESULT_MESSAGE: u32 = 0x42007D;
pub const RESULT_REASON: u32 = 0x42007E;
pub const RESULT_STATUS: u32 = 0x42007F;
pub const REVOCATION_MESSAGE: u32 = 0x420080;
pub const REVOCATION_REASON: u32 = 0x420081;
pub const REVOCATION_REASON_CODE: u32 = 0x420082;
pub const SERVER_INFORMATION: u32 = 0x420088;
pub const STATE: u32 = 0x42008D;
pub const STORAGE_STATUS_MASK: u32 = 0x42008E;
pub const SYMMETRIC_KEY: u32 = 0x42008F;
pub const TEMPLATE_ATTRIBUTE: u32 = 0x420091;
pub const TIME_STAMP: u32 = 0x420092;
pub const UNIQUE_BATCH_ITEM_ID: u32 = 0x420093;
pub const UNIQUE_IDENTIFIER: u32 = 0x420094;
pub const VENDOR_IDENTIFICATION: u32 = 0x42009D;
pub const CLIENT_CORRELATION_VALUE: u32 = 0x420105;
pub const SERVER_CORRELATION_VALUE: u32 = 0x420106;
pub const ATTRIBUTES: u32 = 0x420125;
pub const ATTRIBUTE_REFERENCE: u32 = 0x42013B;
pub const CURRENT_ATTRIBUTE: u32 = 0x42013C;
pub const NEW_ATTRIBUTE: u32 = 0x42013D;
pub const LOCATED_ITEMS: u32 = 0x4200D5;
pub const SECRET_DATA: u32 = 0x420085;
pub const SECRET_DATA_TYPE: u32 = 0x420086;
pub const IV_COUNTER_NONCE: u32 = 0x42003D;
pub const PADDING_METHOD: u32 = 0x42005F;
pub const DATA: u32 = 0x4200C2;
pub const RANDOM_IV: u32 = 0x4200C5;
pub const IV_LENGTH: u32 = 0x4200CD;
pub const TAG_LENGTH: u32 = 0x4200CE;
pub const AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA: u32 = 0x4200FE;
pub const AUTHENTICATED_ENCRYPTION_TAG: u32 = 0x4200FF;
pub const CORRELATION_VALUE: u32 = 0x4200D6;
pub const INIT_INDICATOR: u32 = 0x4200D7;
pub const FINAL_INDICATOR: u32 = 0x4200D8;
pub const LEASE_TIME: u32 = 0x420049;
pub const USAGE_LIMITS_COUNT: u32 = 0x420096;

// Operations.
pub const OP_CREATE: u32 = 0x01;
pub const OP_REGISTER: u32 = 0x03;
pub const OP_LOCATE: u32 = 0x08;
pub const OP_CHECK: u32 = 0x09;
pub const OP_GET: u32 = 0x0A;
pub const OP_GET_ATTRIBUTES: u32 = 0x0B;
pub const OP_GET_ATTRIBUTE_LIST: u32 = 0x0C;
pub const OP_ADD_ATTRIBUTE: u32 = 0x0D;
pub const OP_MODIFY_ATTRIBUTE: u32 = 0x0E;
pub const OP_DELETE_ATTRIBUTE: u32 = 0x0F;
pub const OP_ACTIVATE: u32 = 0x12;
pub const OP_REVOKE: u32 = 0x13;
pub const OP_DESTROY: u32 = 0x14;
pub const OP_POLL: u32 = 0x15;
pub const OP_QUERY: u32 = 0x18;
pub const OP_DISCOVER_VERSIONS: u32 = 0x1E;
pub const OP_ENCRYPT: u32 = 0x1F;
pub const OP_DECRYPT: u32 = 0x20;
/// KMIP 2.0 on.
pub const OP_SET_ATTRIBUTE: u32 = 0x31;

// Result status.
pub const STATUS_SUCCESS: u32 = 0;
pub const STATUS_FAILED: u32 = 1;
pub const STATUS_PENDING: u32 = 2;

// Result reasons.
pub const REASON_ITEM_NOT_FOUND: u32 = 0x01;
pub const REASON_RESPONSE_TOO_LARGE: u32 = 0x02;
pub const REASON_AUTHENTICATION_NOT_SUCCESSFUL: u32 = 0x03;
pub const REASON_INVALID_MESSAGE: u32 = 0x04;
pub const REASON_OPERATION_NOT_SUPPORTED: u32 = 0x05;
pub const REASON_MISSING_DATA: u32 = 0x06;
pub const REASON_INVALID_FIELD: u32 = 0x07;
pub const REASON_FEATURE_NOT_SUPPORTED: u32 = 0x08;
pub const REASON_CRYPTOGRAPHIC_FAILURE: u32 = 0x0A;
pub const REASON_ILLEGAL_OPERATION: u32 = 0x0B;
pub const REASON_PERMISSION_DENIED: u32 = 0x0C;
pub const REASON_OBJECT_ARCHIVED: u32 = 0x0D;
pub const REASON_KEY_FORMAT_TYPE_NOT_SUPPORTED: u32 = 0x10;
pub const REASON_OBJECT_ALREADY_EXISTS: u32 = 0x18;
pub const REASON_MULTI_VALUED_ATTRIBUTE: u32 = 0x1E;
pub const REASON_ATTRIBUTE_NOT_FOUND: u32 = 0x21;
pub const REASON_ATTRIBUTE_SINGLE_VALUED: u32 = 0x23;
pub const REASON_GENERAL_FAILURE: u32 = 0x100;

// Object types.
pub const OBJECT_SYMMETRIC_KEY: u32 = 0x02;
pub const OBJECT_SECRET_DATA: u32 = 0x07;

// Key format types.
pub const FORMAT_RAW: u32 = 0x01;
pub const FORMAT_OPAQUE: u32 = 0x02;
pub const FORMAT_TRANSPARENT_SYMMETRIC: u32 = 0x07;

// Block cipher modes.
pub const MODE_GCM: u32 = 0x09;

// Algorithms.
pub const ALGORITHM_AES: u32 = 0x03;

// States.
pub const STATE_PRE_ACTIVE: u32 = 1;
pub const STATE_ACTIVE: u32 = 2;
pub const STATE_DEACTIVATED: u32 = 3;
pub const STATE_COMPROMISED: u32 = 4;
pub const STATE_DESTROYED: u32 = 5;
pub const STATE_DESTROYED_COMPROMISED: u32 = 6;

// Name types.
pub const NAME_TEXT: u32 = 1;

// Query functions.
pub const QUERY_OPERATIONS: u32 = 1;
pub const QUERY_OBJECTS: u32 = 2;
pub const QUERY_SERVER_INFORMATION: u32 = 3;

/// A KMIP 2.0 attribute's tag, by its 1.x name (the attributes Custos
/// keeps).
pub const ATTRIBUTE_TAGS: &[(&str, u32)] = &[
    ("Unique Identifier", UNIQUE_IDENTIFIER),
    ("Name", NAME),
    ("Object Type", OBJECT_TYPE),
    ("Cryptographic Algorithm", CRYPTOGRAPHIC_ALGORITHM),
    ("Cryptographic Length", CRYPTOGRAPHIC_LENGTH),
    ("Cryptographic Usage Mask", CRYPTOGRAPHIC_USAGE_MASK),
    ("State", STATE),
    ("Initial Date", INITIAL_DATE),
    ("Activation Date", ACTIVATION_DATE),
    ("Deactivation Date", DEACTIVATION_DATE),
    ("Destroy Date", DESTROY_DATE),
    ("Compromise Date", COMPROMISE_DATE),
    ("Compromise Occurrence Date", COMPROMISE_OCCURRENCE_DATE),
    ("Revocation Reason", REVOCATION_REASON),
    ("Contact Information", CONTACT_INFORMATION),
    ("Last Change Date", LAST_CHANGE_DATE),
    ("Operation Policy Name", OPERATION_POLICY_NAME),
];

pub fn attribute_tag(name: &str) -> Option<u32> {
    ATTRIBUTE_TAGS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

pub fn attribute_name(tag: u32) -> Option<&'static str> {
    ATTRIBUTE_TAGS.iter().find(|(_, t)| *t == tag).map(|(n, _)| *n)
}

/// Operations this server carries out.
pub const SUPPORTED_OPERATIONS: &[u32] = &[
    OP_CREATE,
    OP_CHECK,
    OP_REGISTER,
    OP_ENCRYPT,
    OP_DECRYPT,
    OP_LOCATE,
    OP_GET,
    OP_GET_ATTRIBUTES,
    OP_GET_ATTRIBUTE_LIST,
    OP_ADD_ATTRIBUTE,
    OP_MODIFY_ATTRIBUTE,
    OP_DELETE_ATTRIBUTE,
    OP_SET_ATTRIBUTE,
    OP_ACTIVATE,
    OP_REVOKE,
    OP_DESTROY,
    OP_POLL,
    OP_QUERY,
    OP_DISCOVER_VERSIONS,
];

/// Whether `op` is one of KMIP `version`'s operations (Set Attribute came
/// with 2.0).
pub fn operation_in(op: u32, version: (i32, i32)) -> bool {
    op != OP_SET_ATTRIBUTE || version.0 >= 2
}

/// Protocol versions this server speaks, newest first.
pub const VERSIONS: &[(i32, i32)] = &[(2, 0), (1, 4), (1, 3), (1, 2), (1, 1), (1, 0)];

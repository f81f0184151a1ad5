//! Validated names and dotted-name patterns.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    #[error("invalid {kind} {name:?}: {why}")]
    Invalid { kind: &'static str, name: String, why: &'static str },
}

fn qualifier_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$' | '#' | '@')
}

fn check_dotted(kind: &'static str, s: &str, max_total: usize, max_q: usize) -> Result<(), NameError> {
    let bad = |why| Err(NameError::Invalid { kind, name: s.to_string(), why });
    if s.is_empty() {
        return bad("it is empty");
    }
    if s.len() > max_total {
        return bad("it is too long");
    }
    for q in s.split('.') {
        if q.is_empty() {
            return bad("qualifiers between dots must not be empty");
        }
        if q.len() > max_q {
            return bad("a qualifier is longer than 64 characters");
        }
        if !q.chars().all(qualifier_char) {
            return bad("use letters, digits and _ - $ # @, with dots between qualifiers");
        }
    }
    Ok(())
}

/// A file name as a qualifier, reversibly (`ds import`, docs/format.md
/// "File names as qualifiers"): letters, digits and `_ - $ @` stay as they
/// are; every other byte, `#` included, becomes `#` and two upper-case hex
/// digits. `ünïcode.txt` → `#C3#BCn#C3#AFcode#2Etxt`.
pub fn file_qualifier(name: &[u8]) -> String {
    let mut q = String::with_capacity(name.len());
    for &b in name {
        let c = b as char;
        if b.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$' | '@') {
            q.push(c);
        } else {
            q.push_str(&format!("#{b:02X}"));
        }
    }
    q
}

/// The file name a qualifier stands for: [`file_qualifier`] undone. A `#`
/// not followed by two upper-case hex digits is kept as it is (a name
/// given by hand). `None` when the result could not be a single file name
/// in a directory: empty, `.`, `..`, or holding `/` or NUL.
pub fn qualifier_file(q: &str) -> Option<Vec<u8>> {
    let b = q.as_bytes();
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'#', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    let bad = out.is_empty() || out == b"." || out == b".." || out.iter().any(|&c| c == b'/' || c == 0);
    (!bad).then_some(out)
}

/// One qualifier of a dotted name, as a regular expression.
const QUALIFIER: &str = "[A-Za-z0-9_$#@-]{1,64}";

/// A string schema for a validated name.
fn name_schema(pattern: String, max: usize, description: &str) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": pattern,
        "minLength": 1,
        "maxLength": max,
        "description": description,
    })
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:expr, $check:expr, $pattern:expr, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                let check: fn(&str) -> Result<(), NameError> = $check;
                check(&s)?;
                Ok(Self(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                name_schema($pattern, $max, $kind)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }
        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
    };
}

name_type!(
    /// A dataset name: dotted qualifiers such as `PAYROLL.MASTER.Y2024`.
    DatasetName,
    "dataset name",
    |s| check_dotted("dataset name", s, 255, 64),
    format!("^{QUALIFIER}(\\.{QUALIFIER})*$"),
    255
);

name_type!(
    /// A key label such as `DSET.PRIM.PAYROLL.key001`.
    KeyLabel,
    "key label",
    |s| check_dotted("key label", s, 128, 64),
    format!("^{QUALIFIER}(\\.{QUALIFIER})*$"),
    128
);

name_type!(
    /// A volume name: one qualifier.
    VolumeName,
    "volume name",
    |s| {
        check_dotted("volume name", s, 64, 64)?;
        if s.contains('.') {
            return Err(NameError::Invalid { kind: "volume name", name: s.into(), why: "a volume name has no dots" });
        }
        Ok(())
    },
    format!("^{QUALIFIER}$"),
    64
);

impl DatasetName {
    /// The first qualifier (the "high-level qualifier"), which names the
    /// application by default.
    pub fn hlq(&self) -> &str {
        self.0.split('.').next().expect("validated non-empty")
    }
}

/// A pattern over dotted names. Per qualifier: `**` matches any number of
/// qualifiers (zero included), `*` any run of characters within one
/// qualifier, `%` exactly one character. `PAYROLL.**` matches `PAYROLL` and
/// everything below it; `*.MASTER` matches `A.MASTER` but not `A.B.MASTER`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pattern(String);

impl schemars::JsonSchema for Pattern {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Pattern".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let q = "([A-Za-z0-9_$#@%*-]{1,64})";
        name_schema(
            format!("^{q}(\\.{q})*$"),
            255,
            "a pattern over dotted names: ** any qualifiers, * any run within one, % one character",
        )
    }
}

impl Pattern {
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        let bad = |why| Err(NameError::Invalid { kind: "pattern", name: s.clone(), why });
        if s.is_empty() || s.len() > 255 {
            return bad("it must have 1 to 255 characters");
        }
        for q in s.split('.') {
            if q.is_empty() {
                return bad("qualifiers between dots must not be empty");
            }
            if q.contains("**") && q != "**" {
                return bad("`**` must be a whole qualifier, as in `PAYROLL.**`");
            }
            if !q.chars().all(|c| qualifier_char(c) || c == '*' || c == '%') {
                return bad("use letters, digits, _ - $ # @ and the wildcards * % **");
            }
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the pattern matches a whole dotted name.
    pub fn matches(&self, name: &str) -> bool {
        let pat: Vec<&str> = self.0.split('.').collect();
        let name: Vec<&str> = name.split('.').collect();
        match_qualifiers(&pat, &name)
    }

    /// What every matching name starts with: the characters before the
    /// first wildcard (`PAY.**` gives `PAY`, which `PAY` itself matches),
    /// so that a listing can start its ordered scan there.
    pub fn literal_prefix(&self) -> &str {
        let end = self.0.find(['*', '%']).unwrap_or(self.0.len());
        let lit = &self.0[..end];
        if self.0[end..].starts_with("**") {
            lit.strip_suffix('.').unwrap_or(lit)
        } else {
            lit
        }
    }

    /// How specific the pattern is: literal characters count most, so that
    /// `PAYROLL.MASTER` beats `PAYROLL.*` beats `PAYROLL.**` beats `**`.
    pub fn specificity(&self) -> usize {
        self.0.chars().filter(|c| !matches!(c, '*' | '%' | '.')).count() * 4
            + self.0.chars().filter(|&c| c == '%').count() * 2
            + self.0.split('.').filter(|q| *q != "**").count()
    }
}

fn match_qualifiers(pat: &[&str], name: &[&str]) -> bool {
    match pat.split_first() {
        None => name.is_empty(),
        Some((&"**", rest)) => (0..=name.len()).any(|skip| match_qualifiers(rest, &name[skip..])),
        Some((p, rest)) => match name.split_first() {
            Some((n, nrest)) => match_glob(p.as_bytes(), n.as_bytes()) && match_qualifiers(rest, nrest),
            None => false,
        },
    }
}

fn match_glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| match_glob(rest, &s[i..])),
        Some((b'%', rest)) => !s.is_empty() && match_glob(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && match_glob(rest, &s[1..]),
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl TryFrom<String> for Pattern {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::new(s)
    }
}
impl From<Pattern> for String {
    fn from(p: Pattern) -> String {
        p.0
    }
}
impl std::str::FromStr for Pattern {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_map_to_qualifiers_and_back() {
        for name in ["ünïcode.txt", "a b", "x#y", "under_score", "dot.file", "-dash", "#41", "%", "a\u{7f}b", "$@"] {
            let q = file_qualifier(name.as_bytes());
            assert!(q.chars().all(qualifier_char), "{q}");
            assert_eq!(qualifier_file(&q).as_deref(), Some(name.as_bytes()), "{name} → {q}");
        }
        assert_eq!(file_qualifier("ünïcode.txt".as_bytes()), "#C3#BCn#C3#AFcode#2Etxt");
        // Any byte, not only UTF-8.
        assert_eq!(qualifier_file(&file_qualifier(&[0xff, b'a', 0x80])).unwrap(), [0xff, b'a', 0x80]);
        // Names given by hand keep a # that escapes nothing.
        assert_eq!(qualifier_file("a#b").unwrap(), b"a#b");
        assert_eq!(qualifier_file("a#2e").unwrap(), b"a#2e");
        // Nothing that leaves its directory, or is not a name.
        for q in ["#2E", "#2E#2E", "a#2Fb", "#00", "#2F"] {
            assert_eq!(qualifier_file(q), None, "{q}");
        }
    }

    #[test]
    fn dataset_names() {
        for ok in ["A", "PAYROLL.MASTER.Y2024", "a-b.c_d.$#@", "X.Y"] {
            DatasetName::new(ok).unwrap();
        }
        for bad in ["", ".A", "A.", "A..B", "A B", "A/B", "Ä", &"A".repeat(65), &"A.".repeat(130)] {
            assert!(DatasetName::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(DatasetName::new("PAYROLL.X").unwrap().hlq(), "PAYROLL");
        assert!(VolumeName::new("a.b").is_err());
        assert!(VolumeName::new("vol_1").is_ok());
    }

    #[test]
    fn patterns() {
        let m = |p: &str, n: &str| Pattern::new(p).unwrap().matches(n);
        assert!(m("PAYROLL.**", "PAYROLL"));
        assert!(m("PAYROLL.**", "PAYROLL.A.B.C"));
        assert!(!m("PAYROLL.**", "PAYROLLX.A"));
        assert!(m("**", "ANY.THING"));
        assert!(m("*.MASTER", "A.MASTER"));
        assert!(!m("*.MASTER", "A.B.MASTER"));
        assert!(m("**.MASTER", "A.B.MASTER"));
        assert!(m("PAY*.Y20%%", "PAYROLL.Y2024"));
        assert!(!m("PAY*.Y20%%", "PAYROLL.Y202"));
        assert!(m("A.**.Z", "A.Z"));
        assert!(m("A.**.Z", "A.B.C.Z"));
        assert!(!m("A.**.Z", "A.B.C"));
        // Every name a pattern matches starts with its literal prefix.
        for (p, prefix, names) in [
            ("PAYROLL.**", "PAYROLL", &["PAYROLL", "PAYROLL.A"][..]),
            ("A.**.Z", "A", &["A.Z", "A.B.Z"]),
            ("PAY*.Y20%%", "PAY", &["PAYROLL.Y2024"]),
            ("*.MASTER", "", &["A.MASTER"]),
            ("A.B", "A.B", &["A.B"]),
            ("A.B%", "A.B", &["A.BC"]),
        ] {
            let pat = Pattern::new(p).unwrap();
            assert_eq!(pat.literal_prefix(), prefix, "{p}");
            for n in names {
                assert!(pat.matches(n) && n.starts_with(prefix), "{p} {n}");
            }
        }
        for bad in ["", "A..B", "A**.B", "A/B"] {
            assert!(Pattern::new(bad).is_err(), "{bad:?}");
        }
        let s = |p: &str| Pattern::new(p).unwrap().specificity();
        assert!(s("PAYROLL.MASTER") > s("PAYROLL.*"));
        assert!(s("PAYROLL.*") > s("PAYROLL.**"));
        assert!(s("PAYROLL.**") > s("**"));
    }
}

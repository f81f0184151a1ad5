//! Text for people: aligned tables, sizes, times, and untrusted text with
//! its control characters escaped (a name or a message never moves the
//! cursor or recolours a terminal).

use std::fmt::Write as _;

/// A simple left-aligned table.
pub struct Table {
    head: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(head: &[&'static str]) -> Self {
        Self { head: head.to_vec(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut w: Vec<usize> = self.head.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let mut o = String::new();
        let mut line = |cells: &[String]| {
            let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w[i])).collect();
            let _ = writeln!(o, "{}", s.join("  ").trim_end());
        };
        line(&self.head.iter().map(|h| h.to_string()).collect::<Vec<_>>());
        for r in &self.rows {
            line(r);
        }
        o
    }
}

/// Bytes for people: 1.5 MiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A copy's last check, for a table cell: when and how deep, or what it
/// found.
pub fn checked(c: Option<&custos_core::model::CopyCheck>) -> String {
    match c {
        None => "never".into(),
        Some(c) if c.problem.is_some() => format!("DAMAGED {}", when(Some(c.at))),
        Some(c) => format!("{} ({})", when(Some(c.at)), if c.read_data { "data" } else { "manifest" }),
    }
}

pub fn when(t: Option<jiff::Timestamp>) -> String {
    t.map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_else(|| "-".into())
}

/// `s` with every control character written as an escape (`\x1b`, `\n`),
/// and backslashes doubled, so what a terminal shows is what is stored.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            '\r' => o.push_str("\\r"),
            c if c.is_control()
                || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                let _ = write!(o, "\\u{{{:x}}}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_leaves_nothing_a_terminal_acts_on() {
        assert_eq!(escape("plain MINE.DATA"), "plain MINE.DATA");
        let evil = "x\u{1b}[2K\r--data MINE.REPORTS\u{7}\u{202e}";
        let e = escape(evil);
        assert!(!e.chars().any(|c| c.is_control()), "{e}");
        assert_eq!(e, "x\\u{1b}[2K\\r--data MINE.REPORTS\\u{7}\\u{202e}");
        assert_eq!(escape("a\\b"), "a\\\\b");
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["A", "BEE"]);
        t.row(vec!["long value".into(), "x".into()]);
        assert_eq!(t.render(), "A           BEE\nlong value  x\n");
    }
}

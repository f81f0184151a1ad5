//! Retention: which backups of a series to keep, the way backup tools do it:
//! the newest N, plus the newest backup of each of the last N days, months
//! and years that have one (UTC). The newest backup is always kept, so a
//! series can continue incrementally. "Newest" is decided by the source
//! generation, then the catalog's backup sequence — never by the clock, which
//! can go back; times only place a backup in its day, month or year.

use std::collections::HashSet;

use jiff::Timestamp;
use serde::Serialize;

/// Keep rules; every count 0 means "not this rule".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Retention {
    pub last: u32,
    pub daily: u32,
    pub monthly: u32,
    pub yearly: u32,
}

impl Retention {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The ids to keep among `items` (id, source generation, time), in any order.
    pub fn keep(&self, items: &[(u64, u64, Timestamp)]) -> HashSet<u64> {
        let mut sorted = items.to_vec();
        sorted.sort_by_key(|&(id, generation, _)| std::cmp::Reverse((generation, id)));
        let mut keep = HashSet::new();
        if let Some(first) = sorted.first() {
            keep.insert(first.0);
        }
        keep.extend(sorted.iter().take(self.last as usize).map(|(id, _, _)| *id));
        for (count, fmt) in [(self.daily, "%Y-%m-%d"), (self.monthly, "%Y-%m"), (self.yearly, "%Y")] {
            let mut seen: Vec<String> = Vec::new();
            for (id, _, t) in &sorted {
                let bucket = t.strftime(fmt).to_string();
                if !seen.contains(&bucket) {
                    if seen.len() == count as usize {
                        break;
                    }
                    seen.push(bucket);
                    keep.insert(*id);
                }
            }
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(n: i64, hour: i64) -> Timestamp {
        Timestamp::from_second(1_704_067_200 + n * 86_400 + hour * 3600).unwrap()
        // from 2024-01-01
    }

    #[test]
    fn keeps_the_newest_per_bucket() {
        // Two backups a day for 400 days: ids 0..800, newest last.
        let items: Vec<(u64, u64, Timestamp)> =
            (0..800).map(|i| (i as u64, i as u64, day(i / 2, 6 + 12 * (i % 2)))).collect();
        let k = Retention { daily: 3, ..Default::default() }.keep(&items);
        assert_eq!(k, HashSet::from([799, 797, 795]), "the newest of each of the last three days");
        let k = Retention { last: 2, ..Default::default() }.keep(&items);
        assert_eq!(k, HashSet::from([799, 798]));
        let k = Retention { monthly: 2, yearly: 2, ..Default::default() }.keep(&items);
        // Newest overall (day 399 = 2025-02-03), newest of 2025-01 (day 396 = 2025-01-31),
        // newest of 2024 (day 365 = 2024-12-31).
        assert_eq!(k, HashSet::from([799, 793, 731]));
        assert_eq!(Retention::default().keep(&items), HashSet::from([799]), "the newest always stays");
        assert!(Retention::default().keep(&[]).is_empty());
    }

    #[test]
    fn newest_is_by_generation_and_sequence_not_clock() {
        // The clock went back a year between the two backups.
        let items = [(1, 5, day(400, 0)), (2, 6, day(35, 0))];
        let k = Retention { last: 1, ..Default::default() }.keep(&items);
        assert_eq!(k, HashSet::from([2]), "the newer generation's backup stays");
        // Same generation twice: the later backup in the catalog's sequence.
        let items = [(7, 3, day(10, 0)), (8, 3, day(9, 0))];
        assert_eq!(Retention { last: 1, ..Default::default() }.keep(&items), HashSet::from([8]));
    }
}

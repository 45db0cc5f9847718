//! In-order offset storage for one partition.
//!
//! Messages of a partition finish out of order (different keys run concurrently), but the
//! committed offset must never pass a message that is not finished: a crash would skip it.
//! The offset that may be stored is the highest one below which everything received is
//! done.

use std::collections::BTreeSet;

#[derive(Debug, Clone, Default)]
pub struct PartitionOffsets {
    in_flight: BTreeSet<i64>,
    highest_received: Option<i64>,
    /// The last offset handed out for storing (or the one before the first received).
    stored: Option<i64>,
}

impl PartitionOffsets {
    pub fn received(&mut self, offset: i64) {
        if self.stored.is_none() {
            self.stored = Some(offset - 1);
        }
        self.in_flight.insert(offset);
        self.highest_received = Some(self.highest_received.map_or(offset, |h| h.max(offset)));
    }

    /// Marks `offset` finished. Returns the offset to store when the done watermark moved.
    pub fn completed(&mut self, offset: i64) -> Option<i64> {
        if !self.in_flight.remove(&offset) {
            return None;
        }
        let watermark = match self.in_flight.first() {
            Some(first_pending) => first_pending - 1,
            None => self.highest_received?,
        };
        match self.stored {
            Some(stored) if watermark <= stored => None,
            _ => {
                self.stored = Some(watermark);
                Some(watermark)
            }
        }
    }

    /// Messages received and not finished.
    pub fn pending(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_only_below_the_first_unfinished_message() {
        let mut p = PartitionOffsets::default();
        for o in 10..15 {
            p.received(o);
        }
        assert_eq!(p.completed(12), None, "10 and 11 still running");
        assert_eq!(p.completed(11), None, "10 still running");
        assert_eq!(p.completed(10), Some(12), "10..=12 done, 13 running");
        assert_eq!(p.completed(14), None, "13 still running");
        assert_eq!(p.completed(13), Some(14));
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn gaps_in_offsets_are_not_waited_for() {
        // Compaction and transaction markers leave gaps: 20, 23, 24.
        let mut p = PartitionOffsets::default();
        for o in [20, 23, 24] {
            p.received(o);
        }
        assert_eq!(p.completed(20), Some(22));
        assert_eq!(p.completed(24), None);
        assert_eq!(p.completed(23), Some(24));
    }

    #[test]
    fn unknown_and_repeated_completions_change_nothing() {
        let mut p = PartitionOffsets::default();
        p.received(5);
        p.received(6);
        assert_eq!(p.completed(99), None);
        assert_eq!(p.completed(5), Some(5));
        assert_eq!(p.completed(5), None);
        assert_eq!(p.pending(), 1);
    }
}

//! The planner's Redis layout. Per-contact keys carry a `{contact}` hash tag so that a
//! contact's keys live on one Redis Cluster slot.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `t:c:{C}` | string | contact C: `V<version, 16 digits>\|<segment>,<segment>\n<protobuf Contact>` (one key per contact; see [`crate::store`]) |
//! | `t:s:S` | sorted set, all scores 0 | segment S's members, walked in lexical order by fan-out |
//! | `t:sup` | hash | suppression: `e:HASH` / `p:HASH` (keyed hash of the address) → reason |
//! | `t:fq:{C}` | sorted set | C's planned messages (idempotency key → planned ms), for the frequency cap |
//! | `t:cmp:K` | hash | campaign K: `def` (protobuf `ScheduleBlast`), `state`, `cursor`, `requested_by` |
//! | `t:cmp:K:n` | hash | campaign K's counters: `planned`, `suppressed.REASON`, `dispatched`, ..., and from feedback `fb.sent`, `fb.delivered`, `fb.unique_opens`, ... |
//! | `t:cmp:K:r` | hash | contact → bit set of the outcomes already counted for K (expires) |
//! | `t:sb:{C}` | hash | C's soft bounces per channel |
//! | `t:cmp:K:addr` | set | address hashes already planned in K (two CRM records, one mailbox) |
//! | `t:cmp:K:lease` | string | which planner instance fans K out, with an expiry |
//! | `t:cmps:due` | sorted set | scheduled campaigns by start time (ms) |
//! | `t:cmps` | sorted set | every campaign by creation time (ms), for listing |
//! | `t:sched` | sorted set | planned jobs `K\x1fC` by earliest send time (ms): the durable schedule |
//! | `t:segs` | sorted set | segment ids (for listing) |

pub const SUPPRESSION: &str = "t:sup";
pub const DUE_CAMPAIGNS: &str = "t:cmps:due";
pub const CAMPAIGNS: &str = "t:cmps";
pub const SCHEDULE: &str = "t:sched";
pub const SEGMENTS: &str = "t:segs";

pub fn contact(id: &str) -> String {
    format!("t:c:{{{id}}}")
}

pub fn segment(id: &str) -> String {
    format!("t:s:{id}")
}

pub fn frequency(id: &str) -> String {
    format!("t:fq:{{{id}}}")
}

/// A contact's soft bounces per channel (`email`, `sms`).
pub fn soft_bounces(id: &str) -> String {
    format!("t:sb:{{{id}}}")
}

pub fn campaign(id: &str) -> String {
    format!("t:cmp:{id}")
}

pub fn campaign_counters(id: &str) -> String {
    format!("t:cmp:{id}:n")
}

pub fn campaign_addresses(id: &str) -> String {
    format!("t:cmp:{id}:addr")
}

pub fn campaign_lease(id: &str) -> String {
    format!("t:cmp:{id}:lease")
}

/// A member of the schedule: campaign and contact, joined by a unit separator (neither id
/// may contain it: ids are validated at the edge).
pub fn schedule_member(campaign: &str, contact: &str) -> String {
    format!("{campaign}\u{1f}{contact}")
}

pub fn split_schedule_member(member: &str) -> Option<(&str, &str)> {
    member.split_once('\u{1f}')
}

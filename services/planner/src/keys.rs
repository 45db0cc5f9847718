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
//! | `t:cmps:active` | set | campaigns created and not yet seen completed or cancelled: the progress gauge's list (pruned by [`crate::metrics::Refresher`]); `t:cmps:active:indexed` marks it filled from `t:cmps` once |
//! | `t:n:contacts` | string | number of contact records `t:c:{C}`, kept by the membership script and the erasure once [`crate::metrics::Refresher`] has counted them (one `SCAN`) |
//! | `t:sched` | sorted set | planned jobs `K\x1fC` by earliest send time (ms): the durable schedule |
//! | `t:segs` | sorted set | segment ids (for listing) |
//! | `t:seq:S` | hash | sequence S: `current` (version), `v<N>` (protobuf `SequenceDefinition`), `src.v<N>` (digest of the file or request it came from), `migrate_floor` (enrolments on an older version move to `current`), `retired` (reason), `created_ms` |
//! | `t:seq:S:n` | hash | S's funnel: `enrolled`, `at.K` (waiting for step K), `step.K.sent` / `.skipped` / `.suppressed` / `.expired`, `step.K.fb.<outcome>`, `completed`, `exited.<reason>` |
//! | `t:seq:S:r` | hash | `<contact>:e<n>:<K>` → bit set of the outcomes already counted for a step (expires) |
//! | `t:seqs` | sorted set | every sequence by creation time (ms) |
//! | `t:seqtrig` | hash | segment → comma-separated sequences it triggers (current versions) |
//! | `t:seqgoal` | hash | segment → comma-separated sequences it is a goal of (current versions) |
//! | `t:enr:{C}` | hash | C's enrolments: sequence → record (see [`crate::sequence::store::Enrolment`]) |
//! | `t:enrq:{C}` | hash | segment → ms: C entered a segment that triggers sequences and is not enrolled yet (see [`crate::store::apply_membership`]) |
//! | `t:seqsched` | sorted set | active enrolments `S\x1fC` by their next step's due time (ms) |

pub const SUPPRESSION: &str = "t:sup";
pub const DUE_CAMPAIGNS: &str = "t:cmps:due";
pub const CAMPAIGNS: &str = "t:cmps";
pub const ACTIVE_CAMPAIGNS: &str = "t:cmps:active";
pub const ACTIVE_CAMPAIGNS_INDEXED: &str = "t:cmps:active:indexed";
pub const CONTACT_COUNT: &str = "t:n:contacts";
/// `SCAN` pattern of every contact record.
pub const CONTACT_PATTERN: &str = "t:c:{*";
pub const SCHEDULE: &str = "t:sched";
pub const SEGMENTS: &str = "t:segs";
pub const SEQUENCES: &str = "t:seqs";
pub const SEQUENCE_TRIGGERS: &str = "t:seqtrig";
pub const SEQUENCE_GOALS: &str = "t:seqgoal";
pub const SEQUENCE_SCHEDULE: &str = "t:seqsched";

pub fn sequence(id: &str) -> String {
    format!("t:seq:{id}")
}

pub fn sequence_funnel(id: &str) -> String {
    format!("t:seq:{id}:n")
}

pub fn sequence_outcomes(id: &str) -> String {
    format!("t:seq:{id}:r")
}

pub fn pending_enrolments(contact: &str) -> String {
    format!("t:enrq:{{{contact}}}")
}

pub fn enrolments(contact: &str) -> String {
    format!("t:enr:{{{contact}}}")
}

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

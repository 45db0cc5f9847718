//! How a sequence step's message is named on the bus.
//!
//! A step's message has no campaign; it is named by a *step group*,
//! `seq~<sequence>~e<enrolment>~<step>`, which takes the campaign's place wherever a
//! message's origin must survive a round trip through a provider or a link: the
//! idempotency key (`<group>:<contact>:<channel>`, the same shape as a blast's
//! `<campaign>:<contact>:<channel>`), the tracker's signed tokens and the providers'
//! custom arguments. `~` cannot occur in an identifier (see `tocsin_contracts::validate`),
//! so a group is never mistaken for a campaign id.

use tocsin_contracts::v1;

use crate::eligibility::channel_name;

const PREFIX: &str = "seq~";

/// Which step of which enrolment a message belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRef {
    pub sequence_id: String,
    /// The contact's n-th enrolment in the sequence, from 1.
    pub enrolment: u32,
    /// From 1.
    pub step: u32,
}

impl StepRef {
    /// `seq~<sequence>~e<enrolment>~<step>`.
    pub fn group(&self) -> String {
        format!(
            "{PREFIX}{}~e{}~{}",
            self.sequence_id, self.enrolment, self.step
        )
    }

    /// The message's idempotency key: `<group>:<contact>:<channel>`.
    pub fn idempotency_key(&self, contact_id: &str, channel: v1::Channel) -> String {
        format!("{}:{contact_id}:{}", self.group(), channel_name(channel))
    }

    /// What `SendJob.enrolment_id`, `Origin.enrolment_id` and `Feedback.enrolment_id`
    /// carry: `e<n>` (unique with the sequence and contact ids beside it).
    pub fn enrolment_id(&self) -> String {
        enrolment_id(self.enrolment)
    }

    /// Reads a group back; `None` for anything else (a campaign id, say).
    pub fn parse_group(group: &str) -> Option<StepRef> {
        let rest = group.strip_prefix(PREFIX)?;
        let mut parts = rest.rsplitn(3, '~');
        let step = parts.next()?.parse().ok().filter(|&s| s > 0)?;
        let enrolment = parts
            .next()?
            .strip_prefix('e')?
            .parse()
            .ok()
            .filter(|&n| n > 0)?;
        let sequence_id = parts.next().filter(|s| !s.is_empty())?;
        Some(StepRef {
            sequence_id: sequence_id.to_owned(),
            enrolment,
            step,
        })
    }

    /// The step a job, origin or feedback names through its sequence fields.
    pub fn from_fields(sequence_id: &str, enrolment_id: &str, step: u32) -> Option<StepRef> {
        if sequence_id.is_empty() || step == 0 {
            return None;
        }
        let enrolment = enrolment_id.strip_prefix('e')?.parse().ok()?;
        Some(StepRef {
            sequence_id: sequence_id.to_owned(),
            enrolment,
            step,
        })
    }
}

/// `e<n>`.
pub fn enrolment_id(n: u32) -> String {
    format!("e{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_reads_back_and_keys_split_like_a_campaigns() {
        let step = StepRef {
            sequence_id: "welcome.2026".into(),
            enrolment: 3,
            step: 2,
        };
        assert_eq!(step.group(), "seq~welcome.2026~e3~2");
        assert_eq!(StepRef::parse_group(&step.group()), Some(step.clone()));
        let key = step.idempotency_key("c:42", v1::Channel::Sms);
        assert_eq!(key, "seq~welcome.2026~e3~2:c:42:sms");
        // The tracker's split: channel after the last colon, group up to the first.
        let (rest, channel) = key.rsplit_once(':').expect("channel");
        let (group, contact) = rest.split_once(':').expect("group");
        assert_eq!(
            (group, contact, channel),
            (step.group().as_str(), "c:42", "sms")
        );
        assert_eq!(StepRef::from_fields("welcome.2026", "e3", 2), Some(step));
    }

    #[test]
    fn campaign_ids_and_malformed_groups_are_not_steps() {
        for text in [
            "spring-blast",
            "seq~",
            "seq~s~e0~1",
            "seq~s~e1~0",
            "seq~~e1~1",
            "seq~s~1~1",
            "seq~s~e1~x",
        ] {
            assert_eq!(StepRef::parse_group(text), None, "{text}");
        }
        assert_eq!(StepRef::from_fields("", "e1", 1), None);
        assert_eq!(StepRef::from_fields("s", "e1", 0), None);
    }
}

//! What a sequence definition must satisfy, and the timing of its steps.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use tocsin_contracts::v1;

use crate::quiet_hours::{QuietHours, local_instant};

/// Steps per sequence: the "clicked step K" bits of an enrolment fit in one integer, and a
/// longer series is better split in two sequences.
pub const MAX_STEPS: usize = 30;

/// The longest wait a step may have.
pub const MAX_WAIT_DAYS: i64 = 366;

/// A definition refused, naming the field at fault (`steps[2].localMinute`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DefinitionError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> DefinitionError {
    DefinitionError {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks what the wire format cannot say: ids present, steps in range, conditions naming
/// earlier steps, quiet hours that open, a known time zone.
pub fn check(def: &v1::SequenceDefinition) -> Result<(), DefinitionError> {
    if def.name.trim().is_empty() {
        return Err(err("name", "is empty"));
    }
    if def.trigger_segment_id.is_empty() {
        return Err(err("trigger", "names no segment"));
    }
    if !def.time_zone.is_empty() && def.time_zone.parse::<Tz>().is_err() {
        return Err(err(
            "timeZone",
            format!("{:?} is not an IANA time zone", def.time_zone),
        ));
    }
    if def.steps.is_empty() {
        return Err(err("steps", "a sequence needs at least one step"));
    }
    if def.steps.len() > MAX_STEPS {
        return Err(err("steps", format!("at most {MAX_STEPS} steps")));
    }
    if let Some(exit) = &def.exit
        && exit.goal_segment_ids.contains(&def.trigger_segment_id)
    {
        return Err(err(
            "exit.goalSegments",
            "the trigger segment cannot also be a goal (every enrolment would exit at once)",
        ));
    }
    for (i, step) in def.steps.iter().enumerate() {
        let at = |f: &str| format!("steps[{i}].{f}");
        let channel = v1::Channel::try_from(step.channel).unwrap_or(v1::Channel::Unspecified);
        if channel == v1::Channel::Unspecified {
            return Err(err(at("channel"), "must be email or sms"));
        }
        if step.template_id.is_empty() {
            return Err(err(at("template"), "names no template"));
        }
        let wait = step.wait.as_ref().map_or(0, |d| d.seconds);
        if !(0..=MAX_WAIT_DAYS * 86_400).contains(&wait) {
            return Err(err(
                at("wait"),
                format!("must be between 0 and {MAX_WAIT_DAYS} days"),
            ));
        }
        if step.wait_until_local && step.local_minute >= 1440 {
            return Err(err(at("at"), "must be a time of day before 24:00"));
        }
        QuietHours::from_proto(step.quiet_hours.as_ref(), channel)
            .map_err(|e| err(at("quietHours"), e.to_string()))?;
        if channel == v1::Channel::Sms && !(1..=10).contains(&step.max_sms_parts) {
            return Err(err(at("maxSmsParts"), "must be between 1 and 10"));
        }
        for (j, condition) in step.skip_if.iter().enumerate() {
            let field = format!("steps[{i}].skipIf[{j}]");
            match &condition.condition {
                Some(v1::step_condition::Condition::ClickedStep(k)) => {
                    if *k == 0 || *k as usize > i {
                        return Err(err(
                            field,
                            format!("clickedStep {k} is not an earlier step (1 to {i})"),
                        ));
                    }
                }
                Some(
                    v1::step_condition::Condition::InSegment(s)
                    | v1::step_condition::Condition::NotInSegment(s),
                ) if s.is_empty() => return Err(err(field, "names no segment")),
                Some(_) => {}
                None => return Err(err(field, "is empty")),
            }
        }
    }
    Ok(())
}

/// When step `index` (0-based) of `def` comes due for someone in `zone`, counted from
/// `from` (the enrolment for the first step, the previous step's dispatch for the others):
/// after the step's wait, then at the next moment the local clock reads the step's time
/// of day when it names one.
pub fn due_after(step: &v1::SequenceStep, from: DateTime<Utc>, zone: Tz) -> DateTime<Utc> {
    let wait = step.wait.as_ref().map_or(0, |d| d.seconds.max(0));
    let after = from + Duration::seconds(wait);
    if !step.wait_until_local {
        return after;
    }
    let local_date = after.with_timezone(&zone).date_naive();
    (0..3)
        .map(|d| local_instant(zone, local_date + Duration::days(d), step.local_minute))
        .find(|&t| t >= after)
        .unwrap_or(after)
}

/// The step's quiet hours (its own, or its channel's default).
pub fn quiet_hours(step: &v1::SequenceStep) -> QuietHours {
    let channel = step_channel(step);
    QuietHours::from_proto(step.quiet_hours.as_ref(), channel)
        .unwrap_or_else(|_| QuietHours::default_for(channel))
}

pub fn step_channel(step: &v1::SequenceStep) -> v1::Channel {
    v1::Channel::try_from(step.channel).unwrap_or(v1::Channel::Unspecified)
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone};
    use chrono_tz::Europe::Paris;
    use chrono_tz::Pacific::Noumea;

    use super::*;

    fn local(tz: Tz, d: u32, h: u32, m: u32) -> DateTime<Utc> {
        tz.from_local_datetime(
            &NaiveDate::from_ymd_opt(2026, 12, d)
                .and_then(|x| x.and_hms_opt(h, m, 0))
                .expect("valid"),
        )
        .single()
        .expect("unambiguous")
        .with_timezone(&Utc)
    }

    fn step(wait_s: i64, at: Option<u32>) -> v1::SequenceStep {
        v1::SequenceStep {
            name: "s".into(),
            wait: Some(tocsin_contracts::Duration {
                seconds: wait_s,
                nanos: 0,
            }),
            wait_until_local: at.is_some(),
            local_minute: at.unwrap_or(0),
            channel: v1::Channel::Email.into(),
            template_id: "t".into(),
            template_version: 1,
            ..Default::default()
        }
    }

    #[test]
    fn a_wait_then_the_next_local_time_of_day() {
        // Enrolled Tuesday 1 December 23:10 in Paris; wait 2 days, then 10:00 local.
        let from = local(Paris, 1, 23, 10);
        assert_eq!(
            due_after(&step(2 * 86_400, Some(600)), from, Paris),
            local(Paris, 4, 10, 0)
        );
        // Same wait, but 10:00 has not passed on the day the wait ends: that day.
        let from = local(Paris, 1, 8, 0);
        assert_eq!(
            due_after(&step(2 * 86_400, Some(600)), from, Paris),
            local(Paris, 3, 10, 0)
        );
        // The contact's own zone: 10:00 in Nouméa.
        assert_eq!(
            due_after(&step(0, Some(600)), local(Noumea, 1, 11, 0), Noumea),
            local(Noumea, 2, 10, 0)
        );
        assert_eq!(
            due_after(&step(90, None), from, Paris),
            from + Duration::seconds(90)
        );
    }

    #[test]
    fn definitions_are_refused_with_the_field_at_fault() {
        let mut def = v1::SequenceDefinition {
            name: "welcome".into(),
            trigger_segment_id: "new".into(),
            steps: vec![step(0, None), step(86_400, None)],
            ..Default::default()
        };
        assert_eq!(check(&def), Ok(()));
        def.steps[1].skip_if.push(v1::StepCondition {
            condition: Some(v1::step_condition::Condition::ClickedStep(2)),
        });
        assert_eq!(
            check(&def).map_err(|e| e.field),
            Err("steps[1].skipIf[0]".into())
        );
        def.steps[1].skip_if[0].condition = Some(v1::step_condition::Condition::ClickedStep(1));
        assert_eq!(check(&def), Ok(()));
        def.steps[0].channel = v1::Channel::Sms.into();
        assert_eq!(
            check(&def).map_err(|e| e.field),
            Err("steps[0].maxSmsParts".into())
        );
        def.steps[0].max_sms_parts = 2;
        def.steps[0].local_minute = 1440;
        def.steps[0].wait_until_local = true;
        assert_eq!(check(&def).map_err(|e| e.field), Err("steps[0].at".into()));
        def.steps[0].wait_until_local = false;
        def.exit = Some(v1::SequenceExit {
            goal_segment_ids: vec!["new".into()],
            ..Default::default()
        });
        assert_eq!(
            check(&def).map_err(|e| e.field),
            Err("exit.goalSegments".into())
        );
    }
}

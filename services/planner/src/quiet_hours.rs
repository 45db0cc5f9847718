//! When a message may reach a person: sending windows per weekday, in the recipient's own
//! time zone, with French public holidays closed when the policy says so.
//!
//! The SMS default is the market's rule (no statute fixes it): Monday to Saturday,
//! 08:00-20:00 local time, no Sundays, no public holidays. E-mail has no default window.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use tocsin_contracts::v1;

use crate::holidays::is_french_public_holiday;

/// Why a campaign's quiet-hours policy is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "quietHours.windows[{index}]: isoWeekday must be 1 (Monday) to 7 (Sunday), not {value}"
    )]
    Weekday { index: usize, value: u32 },
    #[error(
        "quietHours.windows[{index}]: startMinute must be before endMinute, both within 0..=1440"
    )]
    Window { index: usize },
    #[error("quietHours: windows are required unless the policy is disabled")]
    NoWindow,
}

/// One campaign's sending windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuietHours {
    /// Allowed (start, end) minutes after local midnight, per ISO weekday (index 0 = Monday);
    /// `None` for no restriction at all.
    windows: Option<[Vec<(u32, u32)>; 7]>,
    skip_french_holidays: bool,
}

impl QuietHours {
    /// No restriction: e-mail's default.
    pub fn unrestricted() -> Self {
        QuietHours {
            windows: None,
            skip_french_holidays: false,
        }
    }

    /// Monday to Saturday 08:00-20:00, no Sundays, no French public holidays: SMS's default.
    pub fn sms_default() -> Self {
        let day = vec![(8 * 60, 20 * 60)];
        QuietHours {
            windows: Some([
                day.clone(),
                day.clone(),
                day.clone(),
                day.clone(),
                day.clone(),
                day,
                Vec::new(),
            ]),
            skip_french_holidays: true,
        }
    }

    /// The default for a channel, used when a campaign names no policy.
    pub fn default_for(channel: v1::Channel) -> Self {
        match channel {
            v1::Channel::Sms => Self::sms_default(),
            _ => Self::unrestricted(),
        }
    }

    /// Reads a campaign's policy; `None` means the channel's default.
    pub fn from_proto(
        policy: Option<&v1::QuietHours>,
        channel: v1::Channel,
    ) -> Result<Self, PolicyError> {
        let Some(policy) = policy else {
            return Ok(Self::default_for(channel));
        };
        if policy.disabled {
            return Ok(Self::unrestricted());
        }
        if policy.windows.is_empty() {
            return Err(PolicyError::NoWindow);
        }
        let mut windows: [Vec<(u32, u32)>; 7] = Default::default();
        for (index, w) in policy.windows.iter().enumerate() {
            if !(1..=7).contains(&w.iso_weekday) {
                return Err(PolicyError::Weekday {
                    index,
                    value: w.iso_weekday,
                });
            }
            if w.start_minute >= w.end_minute || w.end_minute > 1440 {
                return Err(PolicyError::Window { index });
            }
            windows[(w.iso_weekday - 1) as usize].push((w.start_minute, w.end_minute));
        }
        for day in &mut windows {
            day.sort_unstable();
        }
        Ok(QuietHours {
            windows: Some(windows),
            skip_french_holidays: policy.skip_french_public_holidays,
        })
    }

    pub fn to_proto(&self) -> v1::QuietHours {
        match &self.windows {
            None => v1::QuietHours {
                disabled: true,
                ..Default::default()
            },
            Some(days) => v1::QuietHours {
                disabled: false,
                windows: days
                    .iter()
                    .enumerate()
                    .flat_map(|(i, day)| {
                        day.iter().map(move |&(start, end)| v1::SendingWindow {
                            iso_weekday: i as u32 + 1,
                            start_minute: start,
                            end_minute: end,
                        })
                    })
                    .collect(),
                skip_french_public_holidays: self.skip_french_holidays,
            },
        }
    }

    /// The earliest instant at or after `at` when a message may reach someone living in
    /// `tz`. `None` if the policy never opens within the next 60 days (a policy with no
    /// window on any day).
    pub fn next_allowed(&self, at: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let Some(days) = &self.windows else {
            return Some(at);
        };
        let start_date = at.with_timezone(&tz).date_naive();
        for offset in 0..60 {
            let date = start_date + Duration::days(offset);
            if self.skip_french_holidays && is_french_public_holiday(date) {
                continue;
            }
            let weekday = date.weekday().num_days_from_monday() as usize;
            for &(start, end) in &days[weekday] {
                let open = local_instant(tz, date, start);
                let close = local_instant(tz, date, end);
                if at < close {
                    return Some(at.max(open));
                }
            }
        }
        None
    }
}

/// The UTC instant of `minutes` after midnight of `date` in `tz`. A local time that does
/// not exist (the hour skipped when clocks go forward) becomes the first instant after the
/// gap; an ambiguous one (the hour repeated when clocks go back) the earlier of the two.
pub(crate) fn local_instant(tz: Tz, date: NaiveDate, minutes: u32) -> DateTime<Utc> {
    let midnight = NaiveDateTime::new(date, NaiveTime::MIN);
    let local = midnight + Duration::minutes(i64::from(minutes));
    let mut probe = local;
    // Gaps are at most a few hours long anywhere in the tz database.
    for _ in 0..(24 * 4) {
        if let Some(instant) = tz.from_local_datetime(&probe).earliest() {
            return instant.with_timezone(&Utc);
        }
        probe += Duration::minutes(15);
    }
    Utc.from_utc_datetime(&local)
}

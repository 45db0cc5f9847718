//! Quiet hours with a controlled clock: every instant is given, nothing reads the time.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::America::Cayenne;
use chrono_tz::Europe::Paris;
use chrono_tz::Indian::Reunion;
use chrono_tz::Pacific::Noumea;
use chrono_tz::Tz;
use tocsin_contracts::v1;
use tocsin_planner::quiet_hours::{PolicyError, QuietHours};

/// A local wall-clock time in `tz`, as a UTC instant.
fn local(tz: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    tz.from_local_datetime(
        &NaiveDate::from_ymd_opt(y, mo, d)
            .and_then(|day| day.and_hms_opt(h, mi, 0))
            .expect("valid"),
    )
    .single()
    .expect("unambiguous")
    .with_timezone(&Utc)
}

fn sms() -> QuietHours {
    QuietHours::sms_default()
}

#[test]
fn saturday_1959_in_paris_goes_now() {
    // 2026-11-28 is a Saturday.
    let at = local(Paris, 2026, 11, 28, 19, 59);
    assert_eq!(sms().next_allowed(at, Paris), Some(at));
}

#[test]
fn saturday_2001_in_paris_waits_for_monday_8() {
    let at = local(Paris, 2026, 11, 28, 20, 1);
    assert_eq!(
        sms().next_allowed(at, Paris),
        Some(local(Paris, 2026, 11, 30, 8, 0))
    );
}

#[test]
fn sunday_waits_for_monday_and_early_morning_for_8() {
    let sunday_noon = local(Paris, 2026, 11, 29, 12, 0);
    assert_eq!(
        sms().next_allowed(sunday_noon, Paris),
        Some(local(Paris, 2026, 11, 30, 8, 0))
    );
    let tuesday_dawn = local(Paris, 2026, 12, 1, 5, 30);
    assert_eq!(
        sms().next_allowed(tuesday_dawn, Paris),
        Some(local(Paris, 2026, 12, 1, 8, 0))
    );
}

#[test]
fn bastille_day_waits_for_the_next_day() {
    // 14 July 2026 is a Tuesday.
    let at = local(Paris, 2026, 7, 14, 10, 0);
    assert_eq!(
        sms().next_allowed(at, Paris),
        Some(local(Paris, 2026, 7, 15, 8, 0))
    );
    // The evening before, after 20:00, also lands on the 15th.
    let eve = local(Paris, 2026, 7, 13, 20, 30);
    assert_eq!(
        sms().next_allowed(eve, Paris),
        Some(local(Paris, 2026, 7, 15, 8, 0))
    );
}

#[test]
fn easter_weekend_waits_until_tuesday() {
    // Saturday 4 April 2026 after 20:00: Sunday 5 (Easter) and Monday 6 (Easter Monday)
    // are closed.
    let at = local(Paris, 2026, 4, 4, 21, 0);
    assert_eq!(
        sms().next_allowed(at, Paris),
        Some(local(Paris, 2026, 4, 7, 8, 0))
    );
}

#[test]
fn recipients_are_reached_in_their_own_time_zone() {
    // One blast at 09:00 Paris time on Monday 30 November 2026 (08:00 UTC).
    let at = local(Paris, 2026, 11, 30, 9, 0);
    // Nouméa (UTC+11) is at 19:00: still open, goes now.
    assert_eq!(sms().next_allowed(at, Noumea), Some(at));
    // Réunion (UTC+4) is at 12:00: goes now.
    assert_eq!(sms().next_allowed(at, Reunion), Some(at));
    // Cayenne (UTC-3) is at 05:00: waits until 08:00 there, 12:00 Paris.
    assert_eq!(
        sms().next_allowed(at, Cayenne),
        Some(local(Cayenne, 2026, 11, 30, 8, 0))
    );
    assert_eq!(
        sms().next_allowed(at, Cayenne),
        Some(local(Paris, 2026, 11, 30, 12, 0))
    );
    // At 22:00 Paris (21:00 UTC) it is 08:00 the next day in Nouméa: open there, closed
    // in Paris.
    let evening = local(Paris, 2026, 11, 30, 22, 0);
    assert_eq!(sms().next_allowed(evening, Noumea), Some(evening));
    assert_eq!(
        sms().next_allowed(evening, Paris),
        Some(local(Paris, 2026, 12, 1, 8, 0))
    );
}

#[test]
fn dst_changes_keep_local_wall_clock_hours() {
    // Clocks go forward on Sunday 29 March 2026 in Paris: Saturday evening's message
    // leaves Monday 08:00 local, which is 06:00 UTC (summer time), not 07:00.
    let saturday = local(Paris, 2026, 3, 28, 21, 0);
    let monday = sms().next_allowed(saturday, Paris).expect("opens");
    assert_eq!(
        monday,
        Utc.with_ymd_and_hms(2026, 3, 30, 6, 0, 0)
            .single()
            .expect("utc")
    );
    // Clocks go back on Sunday 25 October 2026: Monday 08:00 local is 07:00 UTC.
    let saturday = local(Paris, 2026, 10, 24, 21, 0);
    let monday = sms().next_allowed(saturday, Paris).expect("opens");
    assert_eq!(
        monday,
        Utc.with_ymd_and_hms(2026, 10, 26, 7, 0, 0)
            .single()
            .expect("utc")
    );
}

#[test]
fn a_window_opening_in_the_skipped_hour_opens_after_the_gap() {
    // A policy open on Sundays from 02:30: on 29 March 2026 02:30 does not exist in Paris
    // (02:00 → 03:00), so the window opens at 03:00 local, 01:00 UTC.
    let policy = v1::QuietHours {
        disabled: false,
        windows: vec![v1::SendingWindow {
            iso_weekday: 7,
            start_minute: 150,
            end_minute: 600,
        }],
        skip_french_public_holidays: false,
    };
    let quiet = QuietHours::from_proto(Some(&policy), v1::Channel::Sms).expect("valid");
    let at = local(Paris, 2026, 3, 29, 0, 30);
    assert_eq!(
        quiet.next_allowed(at, Paris),
        Some(
            Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0)
                .single()
                .expect("utc")
        )
    );
}

#[test]
fn email_has_no_default_window_and_policies_are_validated() {
    let sunday_night = local(Paris, 2026, 11, 29, 3, 0);
    let email = QuietHours::from_proto(None, v1::Channel::Email).expect("default");
    assert_eq!(email.next_allowed(sunday_night, Paris), Some(sunday_night));

    let bad_day = v1::QuietHours {
        windows: vec![v1::SendingWindow {
            iso_weekday: 8,
            start_minute: 0,
            end_minute: 60,
        }],
        ..Default::default()
    };
    assert_eq!(
        QuietHours::from_proto(Some(&bad_day), v1::Channel::Sms),
        Err(PolicyError::Weekday { index: 0, value: 8 })
    );
    let backwards = v1::QuietHours {
        windows: vec![v1::SendingWindow {
            iso_weekday: 1,
            start_minute: 600,
            end_minute: 500,
        }],
        ..Default::default()
    };
    assert_eq!(
        QuietHours::from_proto(Some(&backwards), v1::Channel::Sms),
        Err(PolicyError::Window { index: 0 })
    );
    assert_eq!(
        QuietHours::from_proto(Some(&v1::QuietHours::default()), v1::Channel::Sms),
        Err(PolicyError::NoWindow)
    );
}

#[test]
fn the_sms_default_round_trips_through_the_contract() {
    let proto = QuietHours::sms_default().to_proto();
    assert_eq!(proto.windows.len(), 6);
    assert!(proto.skip_french_public_holidays);
    assert_eq!(
        QuietHours::from_proto(Some(&proto), v1::Channel::Sms),
        Ok(QuietHours::sms_default())
    );
}

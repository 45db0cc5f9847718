//! Synthetic French contacts, deterministic per seed.
//!
//! Contact `i` of a seed is computed from `(seed, i)` alone, with its own random generator:
//! the same seed gives the same people whatever the count, in any order, and generating
//! contact 2,999,999 costs what generating contact 0 does. Nothing is kept between two
//! contacts, so a run of millions holds only what is in flight.
//!
//! What is drawn, per contact:
//! - a first and a last name from [`data`]; the e-mail address is made from them, ASCII
//!   only, on a reserved domain, and ends with the contact's index, so two contacts of one
//!   run never share an address;
//! - a commune: overseas with probability [`OVERSEAS_SHARE`], then by population; its time
//!   zone is the contact's;
//! - a French mobile number (`+336…` / `+337…`), a bijection of the index: unique within a
//!   run of up to 200 million contacts;
//! - consents: e-mail missing for [`NO_EMAIL_CONSENT`], SMS missing for [`NO_SMS_CONSENT`],
//!   each with a source and a time; [`WITHDRAWN`] of contacts later withdrew both;
//! - attributes `commune`, `code_postal`, `section` (département and section number) and
//!   `adhesion` (the year they joined).

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tocsin_contracts::{Timestamp, v1};

use crate::data::{self, Commune};

/// Share of contacts living overseas (about 4 % of the French population does).
pub const OVERSEAS_SHARE: f64 = 0.05;
/// Share of contacts with no e-mail consent on record.
pub const NO_EMAIL_CONSENT: f64 = 0.05;
/// Share of contacts with no SMS consent on record.
pub const NO_SMS_CONSENT: f64 = 0.05;
/// Share of contacts who gave consent and later withdrew it (both channels).
pub const WITHDRAWN: f64 = 0.02;
/// Separates the opt-out draw from the contact's own random stream.
const OPT_OUT_STREAM: u64 = 0x6f70_745f_6f75_7421;

/// Consents are given between these instants (2023-01-01 and 2026-05-01, UTC), and
/// withdrawn at most six months later, so that the data does not depend on the day it is
/// generated.
const CONSENTS_FROM: i64 = 1_672_531_200;
const CONSENTS_UNTIL: i64 = 1_777_593_600;
/// The latest year of membership.
const LATEST_ADHESION: u32 = 2026;
const OLDEST_ADHESION: u32 = 1981;
/// Phone numbers: `+336` and `+337` followed by eight digits.
const MOBILE_NUMBERS: u128 = 200_000_000;
/// Coprime with [`MOBILE_NUMBERS`] (odd, not a multiple of 5), so that
/// `index × STRIDE + offset` visits every number once.
const MOBILE_STRIDE: u128 = 122_949_829;
/// RFC 5321's limit on the part of an address before the `@`.
const LOCAL_PART_MAX: usize = 64;
/// Longest `--email-tag`.
pub const EMAIL_TAG_MAX: usize = 24;

/// Why the generator cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptionsError {
    #[error(
        "--id-prefix {0:?}: use 1 to 100 letters, digits, '.', '_', ':' or '-' (contact ids travel in Redis keys)"
    )]
    IdPrefix(String),
    #[error("--segment {0:?}: use 1 to 128 letters, digits, '.', '_', ':' or '-'")]
    Segment(String),
    #[error(
        "--email-tag {0:?}: use 1 to {EMAIL_TAG_MAX} lower-case letters, digits, '.', '_' or '-'"
    )]
    EmailTag(String),
    #[error("--opted-out {0}: a share, from 0 to 1")]
    OptedOut(f64),
}

/// What makes one population of contacts.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// Contact ids are `<prefix>-<index, 7 digits>`.
    pub id_prefix: String,
    /// Added to every address as a sub-address (`camille.durand12+TAG@example.org`, RFC
    /// 5233), so that a test run can tell its own mail from an earlier run's.
    pub email_tag: Option<String>,
}

/// Generates contacts; cheap to share between tasks.
#[derive(Debug, Clone)]
pub struct Generator {
    options: Options,
    metropolitan: Weighted,
    overseas: Weighted,
}

impl Generator {
    pub fn new(options: Options) -> Result<Self, OptionsError> {
        if options.id_prefix.len() > 100 || !is_identifier(&options.id_prefix) {
            return Err(OptionsError::IdPrefix(options.id_prefix));
        }
        if let Some(tag) = &options.email_tag {
            let tag_ok = (1..=EMAIL_TAG_MAX).contains(&tag.len())
                && tag.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                });
            if !tag_ok {
                return Err(OptionsError::EmailTag(tag.clone()));
            }
        }
        Ok(Generator {
            options,
            metropolitan: Weighted::by_population(data::METROPOLITAN_COMMUNES),
            overseas: Weighted::by_population(data::OVERSEAS_COMMUNES),
        })
    }

    /// Whether contact `index` is on the opt-out list (it unsubscribed before this run),
    /// and for which channel: a `share` of the contacts, half e-mail, half SMS, drawn
    /// from the seed and the index alone (independent of the contact's other fields).
    pub fn opted_out(&self, index: u64, share: f64) -> Option<v1::Channel> {
        let draw = mix(self.options.seed ^ OPT_OUT_STREAM, index);
        let unit = (draw >> 11) as f64 / (1u64 << 53) as f64;
        if unit >= share {
            return None;
        }
        Some(if draw & 1 == 0 {
            v1::Channel::Email
        } else {
            v1::Channel::Sms
        })
    }

    /// Contact `index`, its snapshot dated `updated_at`.
    pub fn contact(&self, index: u64, updated_at: Timestamp) -> v1::Contact {
        let mut rng = StdRng::seed_from_u64(mix(self.options.seed, index));
        let first_name = pick(&mut rng, data::FIRST_NAMES);
        let last_name = pick(&mut rng, data::LAST_NAMES);
        let commune = if rng.random_bool(OVERSEAS_SHARE) {
            self.overseas.pick(&mut rng, data::OVERSEAS_COMMUNES)
        } else {
            self.metropolitan
                .pick(&mut rng, data::METROPOLITAN_COMMUNES)
        };
        let email = self.email(&mut rng, first_name, last_name, index);
        let phone_e164 = self.mobile(index);
        let consents = consents(&mut rng);
        let section = format!(
            "{}-{:02}",
            data::department(commune.postcode),
            rng.random_range(1..=12)
        );
        // Recent years are likelier: a party's members are mostly recent members.
        let seniority = rng.random::<f64>().powi(2) * f64::from(LATEST_ADHESION - OLDEST_ADHESION);
        let adhesion = LATEST_ADHESION - seniority as u32;
        v1::Contact {
            id: format!("{}-{index:07}", self.options.id_prefix),
            email,
            phone_e164,
            first_name: first_name.to_owned(),
            last_name: last_name.to_owned(),
            locale: "fr-FR".to_owned(),
            time_zone: commune.time_zone.to_owned(),
            attributes: [
                ("commune", commune.name.to_owned()),
                ("code_postal", commune.postcode.to_owned()),
                ("section", section),
                ("adhesion", adhesion.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            consents,
            updated_at: Some(updated_at),
        }
    }

    /// `first.last12@domain` and a few other shapes people choose, ASCII only.
    fn email(&self, rng: &mut StdRng, first: &str, last: &str, index: u64) -> String {
        let (first, last) = (ascii_fold(first), ascii_fold(last));
        let initial: String = first.chars().take(1).collect();
        let name = match rng.random_range(0..5) {
            0 => format!("{first}.{last}"),
            1 => format!("{initial}.{last}"),
            2 => format!("{first}{last}"),
            3 => format!("{last}.{first}"),
            _ => format!("{first}_{last}"),
        };
        let number = index.to_string();
        let tag = match &self.options.email_tag {
            Some(tag) => format!("+{tag}"),
            None => String::new(),
        };
        // The index keeps addresses unique, the tag marks the run: shorten the name only.
        let room = LOCAL_PART_MAX - number.len() - tag.len();
        let name: String = name.chars().take(room).collect();
        let name = name.trim_end_matches(['.', '_', '-']);
        let domain = pick(rng, data::EMAIL_DOMAINS);
        format!("{name}{number}{tag}@{domain}")
    }

    /// A French mobile number unique to `index` (for fewer than 200 million contacts).
    fn mobile(&self, index: u64) -> String {
        let offset = u128::from(mix(self.options.seed, u64::MAX)) % MOBILE_NUMBERS;
        let n = (u128::from(index) * MOBILE_STRIDE + offset) % MOBILE_NUMBERS;
        let (prefix, rest) = (6 + n / 100_000_000, n % 100_000_000);
        format!("+33{prefix}{rest:08}")
    }
}

/// What the contracts accept as an id (contact, segment): letters, digits, `._:-`, at
/// most 128 characters.
pub fn is_identifier(value: &str) -> bool {
    (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Draws communes in proportion to their population.
#[derive(Debug, Clone)]
struct Weighted {
    /// Running totals of the populations, in table order.
    cumulative: Vec<u64>,
}

impl Weighted {
    fn by_population(communes: &[Commune]) -> Self {
        let cumulative = communes
            .iter()
            .scan(0u64, |total, c| {
                *total += u64::from(c.population);
                Some(*total)
            })
            .collect();
        Weighted { cumulative }
    }

    fn pick(&self, rng: &mut StdRng, communes: &[Commune]) -> Commune {
        let total = self.cumulative.last().copied().unwrap_or(0);
        let x = rng.random_range(0..total.max(1));
        let i = self.cumulative.partition_point(|&c| c <= x);
        communes[i.min(communes.len().saturating_sub(1))]
    }
}

fn pick<'a>(rng: &mut StdRng, table: &[&'a str]) -> &'a str {
    table.choose(rng).copied().unwrap_or_default()
}

/// One 64-bit seed per contact (SplitMix64's finaliser over seed and index).
fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn consents(rng: &mut StdRng) -> Vec<v1::Consent> {
    let email = !rng.random_bool(NO_EMAIL_CONSENT);
    let sms = !rng.random_bool(NO_SMS_CONSENT);
    let withdrawn = rng.random_bool(WITHDRAWN);
    let mut consents = Vec::new();
    let mut latest = CONSENTS_FROM;
    for (granted, channel) in [(email, v1::Channel::Email), (sms, v1::Channel::Sms)] {
        if granted {
            let at = rng.random_range(CONSENTS_FROM..CONSENTS_UNTIL);
            latest = latest.max(at);
            consents.push(consent(
                channel,
                v1::ConsentStatus::Granted,
                pick(rng, data::CONSENT_SOURCES),
                at,
            ));
        }
    }
    if withdrawn {
        // Within six months of the last consent given.
        let at = latest + rng.random_range(3_600..180 * 86_400);
        let source = pick(rng, data::WITHDRAWAL_SOURCES);
        for channel in [v1::Channel::Email, v1::Channel::Sms] {
            consents.push(consent(channel, v1::ConsentStatus::Withdrawn, source, at));
        }
    }
    consents
}

fn consent(channel: v1::Channel, status: v1::ConsentStatus, source: &str, at: i64) -> v1::Consent {
    v1::Consent {
        channel: channel.into(),
        status: status.into(),
        source: source.to_owned(),
        recorded_at: Some(Timestamp {
            seconds: at,
            nanos: 0,
        }),
    }
}

/// Lower-case ASCII for an address: accents dropped, ligatures spelt out, spaces and
/// apostrophes removed, hyphens kept (`Le Gall` → `legall`, `N'Diaye` → `ndiaye`,
/// `Schœlcher` → `schoelcher`).
pub fn ascii_fold(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars().flat_map(char::to_lowercase) {
        match c {
            'a'..='z' | '0'..='9' | '-' => out.push(c),
            'à' | 'â' | 'ä' | 'á' | 'ã' => out.push('a'),
            'é' | 'è' | 'ê' | 'ë' => out.push('e'),
            'î' | 'ï' | 'í' => out.push('i'),
            'ô' | 'ö' | 'ó' | 'õ' => out.push('o'),
            'ù' | 'û' | 'ü' | 'ú' => out.push('u'),
            'ÿ' => out.push('y'),
            'ç' => out.push('c'),
            'ñ' => out.push('n'),
            'œ' => out.push_str("oe"),
            'æ' => out.push_str("ae"),
            _ => {}
        }
    }
    out
}

/// Whether a contact's latest consent record for a channel grants it (the planner's rule:
/// no record means no consent).
pub fn has_consent(contact: &v1::Contact, channel: v1::Channel) -> bool {
    contact
        .consents
        .iter()
        .filter(|c| c.channel == channel as i32)
        .max_by_key(|c| c.recorded_at.as_ref().map(|t| (t.seconds, t.nanos)))
        .is_some_and(|c| c.status == v1::ConsentStatus::Granted as i32)
}

/// What was generated, counted as the planner will see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    pub contacts: u64,
    /// Latest e-mail consent record grants it: these can be planned for an e-mail blast.
    pub email_consent: u64,
    /// Latest SMS consent record grants it.
    pub sms_consent: u64,
    /// Some channel's latest record is a withdrawal.
    pub withdrawn: u64,
    /// Living outside metropolitan France (another time zone).
    pub overseas: u64,
    /// On the opt-out list for e-mail while consenting to it: the planner suppresses
    /// these (`unsubscribed`) instead of planning them.
    pub email_opted_out: u64,
    /// The same for SMS.
    pub sms_opted_out: u64,
}

impl Tally {
    pub fn add(&mut self, contact: &v1::Contact) {
        self.contacts += 1;
        let email = has_consent(contact, v1::Channel::Email);
        let sms = has_consent(contact, v1::Channel::Sms);
        self.email_consent += u64::from(email);
        self.sms_consent += u64::from(sms);
        let withdrawn = contact
            .consents
            .iter()
            .any(|c| c.status == v1::ConsentStatus::Withdrawn as i32);
        self.withdrawn += u64::from(withdrawn);
        self.overseas += u64::from(contact.time_zone != "Europe/Paris");
    }

    /// Counts `contact`'s opt-out from `channel`, where it changes what the planner does.
    pub fn opted_out(&mut self, contact: &v1::Contact, channel: v1::Channel) {
        if !has_consent(contact, channel) {
            return;
        }
        match channel {
            v1::Channel::Sms => self.sms_opted_out += 1,
            _ => self.email_opted_out += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use tocsin_contracts::domain::{EmailAddress, PhoneNumber};

    use super::*;

    const AT: Timestamp = Timestamp {
        seconds: 1_795_000_000,
        nanos: 0,
    };

    fn generator(seed: u64, tag: Option<&str>) -> Generator {
        Generator::new(Options {
            seed,
            id_prefix: "test".into(),
            email_tag: tag.map(str::to_owned),
        })
        .expect("valid options")
    }

    #[test]
    fn the_opt_out_list_takes_its_share_half_per_channel_and_is_deterministic() {
        let g = generator(11, None);
        let n = 100_000u64;
        let draws: Vec<_> = (0..n).map(|i| g.opted_out(i, 0.03)).collect();
        let email = draws
            .iter()
            .filter(|d| **d == Some(v1::Channel::Email))
            .count() as f64;
        let sms = draws
            .iter()
            .filter(|d| **d == Some(v1::Channel::Sms))
            .count() as f64;
        assert!(
            ((email + sms) / n as f64 - 0.03).abs() < 0.003,
            "{email} + {sms}"
        );
        assert!(
            (email / (email + sms) - 0.5).abs() < 0.05,
            "{email} / {sms}"
        );
        assert_eq!(
            draws[..50],
            (0..50).map(|i| g.opted_out(i, 0.03)).collect::<Vec<_>>()
        );
        assert!((0..1000).all(|i| g.opted_out(i, 0.0).is_none()));
        assert!((0..1000).all(|i| g.opted_out(i, 1.0).is_some()));
        // The draw does not disturb the contact itself.
        let now = Timestamp {
            seconds: 1_800_000_000,
            nanos: 0,
        };
        assert_eq!(generator(11, None).contact(7, now), g.contact(7, now));
    }

    #[test]
    fn the_tally_counts_an_opt_out_only_where_there_was_consent() {
        let g = generator(5, None);
        let now = Timestamp {
            seconds: 1_800_000_000,
            nanos: 0,
        };
        let mut tally = Tally::default();
        let mut expected = 0;
        for i in 0..2000 {
            let contact = g.contact(i, now);
            expected += u64::from(has_consent(&contact, v1::Channel::Sms));
            tally.opted_out(&contact, v1::Channel::Sms);
        }
        assert_eq!(tally.sms_opted_out, expected);
        assert!(expected < 2000, "some contacts have no SMS consent");
        assert_eq!(tally.email_opted_out, 0);
    }

    fn contacts(g: &Generator, n: u64) -> Vec<v1::Contact> {
        (0..n).map(|i| g.contact(i, AT)).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_people_in_any_order() {
        let a = contacts(&generator(7, None), 500);
        let b = contacts(&generator(7, None), 500);
        assert_eq!(a, b);
        let g = generator(7, None);
        assert_eq!(g.contact(321, AT), a[321], "random access");
        let other = contacts(&generator(8, None), 500);
        let same = a.iter().zip(&other).filter(|(x, y)| x.email == y.email);
        assert_eq!(same.count(), 0, "another seed, other people");
    }

    #[test]
    fn addresses_are_valid_unique_and_on_reserved_domains() {
        let all = contacts(&generator(1, Some("run-42")), 20_000);
        let mut emails = HashSet::new();
        let mut phones = HashSet::new();
        for c in &all {
            let email = EmailAddress::parse(&c.email).expect("the contracts accept it");
            assert_eq!(email.expose(), c.email, "already normalised");
            let (local, domain) = c.email.split_once('@').expect("one @");
            assert!(local.len() <= LOCAL_PART_MAX, "{}", c.email);
            assert!(
                local
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-+".contains(&b)),
                "{}",
                c.email
            );
            assert!(
                !local.starts_with(['.', '-', '_']) && !local.contains(".."),
                "{}",
                c.email
            );
            assert!(local.ends_with("+run-42"), "{}", c.email);
            assert!(
                domain.ends_with(".test")
                    || domain.ends_with(".example")
                    || ["example.org", "example.com", "example.net"].contains(&domain),
                "{domain} is not reserved"
            );
            assert!(emails.insert(c.email.clone()), "{} twice", c.email);

            PhoneNumber::parse(&c.phone_e164).expect("E.164");
            assert_eq!(c.phone_e164.len(), 12, "{}", c.phone_e164);
            assert!(
                c.phone_e164.starts_with("+336") || c.phone_e164.starts_with("+337"),
                "{} is not a French mobile",
                c.phone_e164
            );
            assert!(
                phones.insert(c.phone_e164.clone()),
                "{} twice",
                c.phone_e164
            );
        }
        assert!(all.iter().any(|c| c.phone_e164.starts_with("+336")));
        assert!(all.iter().any(|c| c.phone_e164.starts_with("+337")));
    }

    #[test]
    fn long_names_and_tags_still_fit_an_address() {
        let g = Generator::new(Options {
            seed: 3,
            id_prefix: "p".into(),
            email_tag: Some("x".repeat(EMAIL_TAG_MAX)),
        })
        .expect("valid");
        let mut rng = StdRng::seed_from_u64(0);
        let email = g.email(&mut rng, "Jean-Christophe", "de Saint-Exupéry", 199_999_999);
        let (local, _) = email.split_once('@').expect("one @");
        assert!(local.len() <= LOCAL_PART_MAX, "{email}");
        assert!(local.contains("199999999+"), "{email}");
    }

    #[test]
    fn time_zones_are_iana_and_follow_the_commune() {
        let all = contacts(&generator(2, None), 20_000);
        let mut zones = HashSet::new();
        for c in &all {
            c.time_zone
                .parse::<chrono_tz::Tz>()
                .unwrap_or_else(|_| panic!("{} is not an IANA zone", c.time_zone));
            let postcode = &c.attributes["code_postal"];
            let overseas = postcode.starts_with("97") || postcode.starts_with("98");
            assert_eq!(overseas, c.time_zone != "Europe/Paris", "{postcode}");
            zones.insert(c.time_zone.clone());
        }
        for zone in [
            "Europe/Paris",
            "America/Cayenne",
            "America/Guadeloupe",
            "America/Martinique",
            "Indian/Reunion",
            "Pacific/Noumea",
            "Pacific/Tahiti",
        ] {
            assert!(zones.contains(zone), "no contact in {zone}");
        }
        let overseas = all.iter().filter(|c| c.time_zone != "Europe/Paris").count();
        let share = overseas as f64 / all.len() as f64;
        assert!(
            (share - OVERSEAS_SHARE).abs() < 0.01,
            "overseas share {share}"
        );
    }

    #[test]
    fn consent_proportions_are_within_tolerance() {
        let all = contacts(&generator(4, None), 20_000);
        let n = all.len() as f64;
        let share =
            |f: &dyn Fn(&v1::Contact) -> bool| all.iter().filter(|c| f(c)).count() as f64 / n;
        let granted_once = |c: &v1::Contact, ch: v1::Channel| {
            c.consents
                .iter()
                .any(|r| r.channel == ch as i32 && r.status == v1::ConsentStatus::Granted as i32)
        };
        let withdrawn = |c: &v1::Contact| {
            c.consents
                .iter()
                .any(|r| r.status == v1::ConsentStatus::Withdrawn as i32)
        };
        let close = |what: &str, got: f64, want: f64| {
            assert!((got - want).abs() < 0.006, "{what}: {got:.4}, want {want}");
        };
        close(
            "without e-mail consent",
            share(&|c| !granted_once(c, v1::Channel::Email)),
            NO_EMAIL_CONSENT,
        );
        close(
            "without SMS consent",
            share(&|c| !granted_once(c, v1::Channel::Sms)),
            NO_SMS_CONSENT,
        );
        close("withdrawn", share(&withdrawn), WITHDRAWN);
        // What the planner will accept: granted and not withdrawn since.
        close(
            "e-mail eligible",
            share(&|c| has_consent(c, v1::Channel::Email)),
            (1.0 - NO_EMAIL_CONSENT) * (1.0 - WITHDRAWN),
        );
        let mut tally = Tally::default();
        all.iter().for_each(|c| tally.add(c));
        assert_eq!(tally.contacts, 20_000);
        assert_eq!(
            tally.email_consent as usize,
            all.iter()
                .filter(|c| has_consent(c, v1::Channel::Email))
                .count()
        );
    }

    #[test]
    fn every_consent_has_a_source_and_a_time_and_withdrawals_come_last() {
        for c in contacts(&generator(5, None), 5_000) {
            for r in &c.consents {
                assert!(!r.source.is_empty());
                let at = r.recorded_at.as_ref().expect("a time").seconds;
                assert!((CONSENTS_FROM..AT.seconds).contains(&at), "{at}");
            }
            let last_grant = c
                .consents
                .iter()
                .filter(|r| r.status == v1::ConsentStatus::Granted as i32)
                .filter_map(|r| r.recorded_at.as_ref().map(|t| t.seconds))
                .max();
            for r in c
                .consents
                .iter()
                .filter(|r| r.status == v1::ConsentStatus::Withdrawn as i32)
            {
                let at = r.recorded_at.as_ref().map(|t| t.seconds);
                assert!(at > last_grant, "a withdrawal after every grant");
            }
        }
    }

    #[test]
    fn attributes_and_ids() {
        let g = generator(6, None);
        let c = g.contact(42, AT);
        assert_eq!(c.id, "test-0000042");
        assert_eq!(c.locale, "fr-FR");
        assert_eq!(c.updated_at, Some(AT));
        for key in ["commune", "code_postal", "section", "adhesion"] {
            assert!(c.attributes.contains_key(key), "{key}");
        }
        for c in contacts(&g, 2_000) {
            let year: u32 = c.attributes["adhesion"].parse().expect("a year");
            assert!((OLDEST_ADHESION..=LATEST_ADHESION).contains(&year));
            let section = &c.attributes["section"];
            let department = data::department(&c.attributes["code_postal"]);
            assert!(section.starts_with(&format!("{department}-")), "{section}");
        }
    }

    #[test]
    fn folding_keeps_only_address_characters() {
        assert_eq!(ascii_fold("Hélène"), "helene");
        assert_eq!(ascii_fold("Le Gall"), "legall");
        assert_eq!(ascii_fold("N'Diaye"), "ndiaye");
        assert_eq!(ascii_fold("Jean-Baptiste"), "jean-baptiste");
        assert_eq!(ascii_fold("Schœlcher"), "schoelcher");
        assert_eq!(ascii_fold("Gonçalves"), "goncalves");
    }

    #[test]
    fn options_are_checked() {
        let options = |prefix: &str, tag: Option<&str>| Options {
            seed: 0,
            id_prefix: prefix.into(),
            email_tag: tag.map(str::to_owned),
        };
        assert!(Generator::new(options("demo-fr.2026", Some("d-1"))).is_ok());
        assert!(is_identifier("demo-fr:2026_11.30"));
        assert!(!is_identifier("demo fr"));
        assert!(matches!(
            Generator::new(options("démo", None)),
            Err(OptionsError::IdPrefix(_))
        ));
        assert!(matches!(
            Generator::new(options("", None)),
            Err(OptionsError::IdPrefix(_))
        ));
        assert!(matches!(
            Generator::new(options("ok", Some("a@b"))),
            Err(OptionsError::EmailTag(_))
        ));
    }
}

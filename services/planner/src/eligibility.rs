//! Who receives a campaign's message. Per member, in this order, the first refusal wins:
//! on the suppression list; no consent for the channel; no usable address; frequency cap
//! reached; already planned for this campaign (two CRM records sharing one address).

use tocsin_contracts::domain::{EmailAddress, PhoneNumber};
use tocsin_contracts::v1;

use crate::store::AddressHasher;

/// Why a member gets no message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: v1::Reason,
    /// For a person reading the feedback: never contains the address itself.
    pub detail: String,
}

/// The address a message would go to, already validated, and its keyed hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub address_hash: String,
}

/// What is known of one member when deciding.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub contact: &'a v1::Contact,
    /// The suppression entry of the channel's address, if any.
    pub suppression: Option<&'a str>,
    /// Messages planned for the contact within the cap's window.
    pub recent_messages: u32,
    /// 0 disables the cap.
    pub frequency_cap: u32,
    /// The address hash is already planned in this campaign.
    pub already_planned: bool,
}

/// The channel's address hash of a contact, when the address is usable.
pub fn address_hash(
    hasher: &AddressHasher,
    contact: &v1::Contact,
    channel: v1::Channel,
) -> Result<String, Refusal> {
    match channel {
        v1::Channel::Email => EmailAddress::parse(&contact.email)
            .map(|e| hasher.email(&e))
            .map_err(|e| Refusal {
                reason: v1::Reason::InvalidAddress,
                detail: e.to_string(),
            }),
        v1::Channel::Sms => {
            let phone = PhoneNumber::parse(&contact.phone_e164).map_err(|e| Refusal {
                reason: v1::Reason::InvalidAddress,
                detail: e.to_string(),
            })?;
            if is_mobile(&phone) == Some(false) {
                return Err(Refusal {
                    reason: v1::Reason::InvalidAddress,
                    detail: "phone number is a landline: SMS cannot reach it".to_owned(),
                });
            }
            Ok(hasher.phone(&phone))
        }
        v1::Channel::Unspecified => Err(Refusal {
            reason: v1::Reason::InvalidAddress,
            detail: "no channel".to_owned(),
        }),
    }
}

/// Whether the latest consent record of the channel grants it.
pub fn has_consent(contact: &v1::Contact, channel: v1::Channel) -> bool {
    contact
        .consents
        .iter()
        .filter(|c| c.channel == channel as i32)
        .max_by_key(|c| c.recorded_at.as_ref().map(|t| (t.seconds, t.nanos)))
        .is_some_and(|c| c.status == v1::ConsentStatus::Granted as i32)
}

/// Decides one member. `address` is the result of [`address_hash`], computed beforehand
/// because the suppression lookup needs it.
pub fn decide(
    facts: Facts<'_>,
    channel: v1::Channel,
    address: &Result<String, Refusal>,
) -> Result<Recipient, Refusal> {
    if let Some(reason) = facts.suppression {
        return Err(Refusal {
            reason: suppression_reason(reason),
            detail: format!("address on the suppression list ({reason})"),
        });
    }
    if !has_consent(facts.contact, channel) {
        return Err(Refusal {
            reason: v1::Reason::NoConsent,
            detail: format!("no {} consent on record", channel_name(channel)),
        });
    }
    let address_hash = address.clone()?;
    if facts.frequency_cap > 0 && facts.recent_messages >= facts.frequency_cap {
        return Err(Refusal {
            reason: v1::Reason::FrequencyCap,
            detail: format!(
                "{} messages already planned within the cap's window",
                facts.recent_messages
            ),
        });
    }
    if facts.already_planned {
        return Err(Refusal {
            reason: v1::Reason::AlreadyPlanned,
            detail: "another contact with the same address is already planned".to_owned(),
        });
    }
    Ok(Recipient { address_hash })
}

fn suppression_reason(entry: &str) -> v1::Reason {
    match entry.split(':').next().unwrap_or_default() {
        "erased" => v1::Reason::Erased,
        "unsubscribed" => v1::Reason::Unsubscribed,
        "complained" => v1::Reason::Complained,
        "hard_bounced" => v1::Reason::HardBounced,
        "soft_bounced" => v1::Reason::RepeatedSoftBounces,
        _ => v1::Reason::SuppressionList,
    }
}

pub fn channel_name(channel: v1::Channel) -> &'static str {
    match channel {
        v1::Channel::Email => "email",
        v1::Channel::Sms => "sms",
        v1::Channel::Unspecified => "unspecified",
    }
}

/// Whether an E.164 number is a mobile, for the numbering plans Tocsin knows (France,
/// overseas France); `None` elsewhere, where the number is given the benefit of the doubt.
pub fn is_mobile(phone: &PhoneNumber) -> Option<bool> {
    let n = phone.expose();
    let rules: [(&str, &[&str]); 8] = [
        ("+33", &["6", "7"]),
        ("+262", &["692", "693", "639"]),
        ("+590", &["690", "691"]),
        ("+594", &["694"]),
        ("+596", &["696", "697"]),
        ("+687", &["7", "8", "9"]),
        ("+689", &["87", "88", "89"]),
        ("+508", &["55"]),
    ];
    rules.iter().find_map(|(country, mobiles)| {
        n.strip_prefix(country)
            .map(|national| mobiles.iter().any(|m| national.starts_with(m)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone(s: &str) -> PhoneNumber {
        PhoneNumber::parse(s).expect("valid")
    }

    #[test]
    fn french_mobiles_and_landlines() {
        assert_eq!(is_mobile(&phone("+33612345678")), Some(true));
        assert_eq!(is_mobile(&phone("+33712345678")), Some(true));
        assert_eq!(is_mobile(&phone("+33142345678")), Some(false));
        assert_eq!(is_mobile(&phone("+262692123456")), Some(true));
        assert_eq!(is_mobile(&phone("+262262123456")), Some(false));
        assert_eq!(is_mobile(&phone("+594694123456")), Some(true));
        assert_eq!(is_mobile(&phone("+687751234")), Some(true));
        assert_eq!(is_mobile(&phone("+14155550100")), None);
    }

    #[test]
    fn the_latest_consent_record_wins() {
        let at = |s| {
            Some(tocsin_contracts::Timestamp {
                seconds: s,
                nanos: 0,
            })
        };
        let consent = |status: v1::ConsentStatus, s| v1::Consent {
            channel: v1::Channel::Sms.into(),
            status: status.into(),
            source: "form".into(),
            recorded_at: at(s),
        };
        let mut contact = v1::Contact::default();
        assert!(
            !has_consent(&contact, v1::Channel::Sms),
            "never asked is no"
        );
        contact.consents = vec![consent(v1::ConsentStatus::Granted, 10)];
        assert!(has_consent(&contact, v1::Channel::Sms));
        assert!(!has_consent(&contact, v1::Channel::Email), "per channel");
        contact
            .consents
            .push(consent(v1::ConsentStatus::Withdrawn, 20));
        assert!(!has_consent(&contact, v1::Channel::Sms));
    }
}

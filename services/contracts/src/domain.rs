//! Personal data, validated once at the edge and never printed in full.
//!
//! `Debug` and `Display` of these types mask the value (`j•••@example.org`,
//! `+336•••••78`), so that a log line can never carry a raw address by accident. The raw
//! value is reachable only through `expose()`, a name that stands out in review.

use std::fmt;

/// Why a value is not a usable address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("e-mail address is empty")]
    EmptyEmail,
    #[error("e-mail address must have exactly one '@' with text on both sides")]
    EmailShape,
    #[error("e-mail address is longer than 254 characters")]
    EmailTooLong,
    #[error("e-mail domain must be a dotted host name")]
    EmailDomain,
    #[error("e-mail address contains whitespace or a control character")]
    EmailCharacters,
    #[error("phone number must be E.164: '+' then 8 to 15 digits, the first not 0")]
    PhoneNotE164,
}

/// An RFC 5321-deliverable addr-spec, lower-cased in its domain.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, AddressError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(AddressError::EmptyEmail);
        }
        if raw.len() > 254 {
            return Err(AddressError::EmailTooLong);
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AddressError::EmailCharacters);
        }
        let (local, domain) = raw.rsplit_once('@').ok_or(AddressError::EmailShape)?;
        if local.is_empty() || local.len() > 64 || local.contains('@') || domain.is_empty() {
            return Err(AddressError::EmailShape);
        }
        let labels_ok = domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
        if !domain.contains('.') || !labels_ok {
            return Err(AddressError::EmailDomain);
        }
        Ok(EmailAddress(format!("{local}@{}", domain.to_lowercase())))
    }

    /// The full address, for handing to a provider. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map(|(_, d)| d).unwrap_or_default()
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (local, domain) = self.0.rsplit_once('@').unwrap_or(("", &self.0));
        let first: String = local.chars().take(1).collect();
        write!(f, "{first}•••@{domain}")
    }
}

impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailAddress({self})")
    }
}

/// A phone number in E.164 form (`+33612345678`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Accepts E.164 with optional spaces, dots or dashes between digits (`+33 6 12 34 56
    /// 78`), which are removed.
    pub fn parse(raw: &str) -> Result<Self, AddressError> {
        let compact: String = raw
            .trim()
            .chars()
            .filter(|c| !matches!(c, ' ' | '.' | '-'))
            .collect();
        let digits = compact
            .strip_prefix('+')
            .ok_or(AddressError::PhoneNotE164)?;
        let valid = (8..=15).contains(&digits.len())
            && digits.chars().all(|c| c.is_ascii_digit())
            && !digits.starts_with('0');
        if !valid {
            return Err(AddressError::PhoneNotE164);
        }
        Ok(PhoneNumber(compact))
    }

    /// The full number, for handing to a provider. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        let head = &self.0[..n.min(5)];
        let tail = &self.0[n.saturating_sub(2)..];
        write!(f, "{head}•••••{tail}")
    }
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_validated_and_masked() {
        let email = EmailAddress::parse(" Jeanne.Martin@Exemple.FR ").expect("valid");
        assert_eq!(email.expose(), "Jeanne.Martin@exemple.fr");
        assert_eq!(email.to_string(), "J•••@exemple.fr");
        assert!(!format!("{email:?}").contains("Martin"));
        for bad in [
            "",
            "no-at",
            "@x.fr",
            "a@",
            "a b@x.fr",
            "a@localhost",
            "a@-x.fr",
            "a@x..fr",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn phones_must_be_e164_and_are_masked() {
        let phone = PhoneNumber::parse("+33 6 12 34 56 78").expect("valid");
        assert_eq!(phone.expose(), "+33612345678");
        assert_eq!(phone.to_string(), "+3361•••••78");
        for bad in ["0612345678", "+0612345678", "+33", "+33 6 12 ab 56 78", ""] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}

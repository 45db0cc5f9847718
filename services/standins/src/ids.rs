//! Message ids shaped like each provider's.

use rand::Rng;

/// Twilio's Message SID: `SM` and 32 hexadecimal digits.
pub fn twilio_sid() -> String {
    format!("SM{:032x}", rand::rng().random::<u128>())
}

/// SendGrid's `X-Message-Id`: 22 URL-safe base64 characters.
pub fn sendgrid_message_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    (0..22)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// Brevo's e-mail `messageId`: the Message-ID its relay gives the message,
/// `<YYYYMMDDhhmmss.NNNNNNNNNNNN@smtp-relay.mailin.fr>`.
pub fn brevo_email_message_id() -> String {
    let stamp = chrono::Utc::now().format("%Y%m%d%H%M%S");
    let serial: u64 = rand::rng().random_range(100_000_000_000..1_000_000_000_000);
    format!("<{stamp}.{serial}@smtp-relay.mailin.fr>")
}

/// Brevo's SMS `messageId`: a 16-digit number (below 2^53, so exact in any JSON reader).
pub fn brevo_sms_message_id() -> u64 {
    rand::rng().random_range(1_000_000_000_000_000..9_000_000_000_000_000)
}

/// The generic webhook stand-in's receipt id.
pub fn webhook_receipt_id() -> String {
    format!("wh_{:024x}", rand::rng().random::<u128>() >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_providers_shapes() {
        let sid = twilio_sid();
        assert_eq!(sid.len(), 34);
        assert!(sid.starts_with("SM"));
        assert!(sid[2..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(sendgrid_message_id().len(), 22);
        let brevo = brevo_email_message_id();
        assert!(brevo.starts_with('<') && brevo.ends_with("@smtp-relay.mailin.fr>"));
        let sms = brevo_sms_message_id();
        assert_eq!(sms.to_string().len(), 16);
        assert!(sms < (1 << 53));
        assert_eq!(webhook_receipt_id().len(), 27);
    }
}

//! What every message carries whatever its template says: RFC 8058 one-click unsubscribe
//! headers, a unique Message-ID, a footer naming the sender and where the data comes from
//! (CNIL) with a visible unsubscribe link; for SMS the sender's name and a STOP mention.

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::render::EmailParts;
use crate::tokens::{Claims, Purpose, Signer, TokenError};
use crate::tracking::Recipient;

/// A sender identity, from configuration (`[renderer.sender_profiles.NAME]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderProfile {
    /// `Parti Exemple <info@parti-exemple.fr>`
    pub from: String,
    #[serde(default)]
    pub reply_to: Option<String>,
    /// Right-hand side of Message-IDs: the sending domain.
    pub message_id_domain: String,
    /// The tracker's public base URL (`https://t.parti-exemple.fr`).
    pub tracker_base_url: String,
    /// Where a `mailto:` unsubscribe goes.
    pub unsubscribe_mailbox: String,
    /// Who sends, as the CNIL requires it named (party or candidate, address).
    pub legal_name: String,
    /// Where the data comes from, per locale ("Vous recevez ce message car ...").
    pub data_origin: BTreeMap<String, String>,
    /// The link text of the visible unsubscribe link, per locale.
    pub unsubscribe_text: BTreeMap<String, String>,
    /// Alphanumeric sender id or number shown on the handset, and named in the text.
    pub sms_sender: String,
    /// The opt-out mention appended to SMS (`STOP au 36111`).
    pub sms_stop: String,
}

impl SenderProfile {
    fn localized<'a>(map: &'a BTreeMap<String, String>, locale: &str) -> &'a str {
        let language = locale.split(['-', '_']).next().unwrap_or_default();
        map.get(locale)
            .or_else(|| map.get(language))
            .or_else(|| map.get("fr"))
            .or_else(|| map.values().next())
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// RFC 8058 requires exactly this value.
pub const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

/// An e-mail ready for a provider, compliance parts included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompliantEmail {
    pub parts: EmailParts,
    pub message_id: String,
    pub headers: Vec<(String, String)>,
    pub unsubscribe_url: String,
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The one-click unsubscribe URL of a recipient.
pub fn unsubscribe_url(
    profile: &SenderProfile,
    signer: &Signer,
    campaign_id: &str,
    contact_id: &str,
) -> Result<String, TokenError> {
    let token = signer.sign(&Claims {
        purpose: Purpose::Unsubscribe,
        campaign_id: campaign_id.to_owned(),
        contact_id: contact_id.to_owned(),
        channel: "email".to_owned(),
        url: String::new(),
    })?;
    Ok(format!(
        "{}/u/{token}",
        profile.tracker_base_url.trim_end_matches('/')
    ))
}

/// A Message-ID unique to one message and stable across its redeliveries: derived from the
/// job's idempotency key (one key per campaign, contact and channel), so a message rendered
/// twice after a crash keeps its id and a duplicate can be recognised downstream.
pub fn message_id(idempotency_key: &str, domain: &str) -> String {
    let digest = Sha256::digest(idempotency_key.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("<{hex}@{domain}>")
}

/// Adds the headers, the Message-ID and the footer to rendered parts.
pub fn email(
    parts: EmailParts,
    profile: &SenderProfile,
    signer: &Signer,
    who: Recipient<'_>,
    idempotency_key: &str,
    locale: &str,
) -> Result<CompliantEmail, TokenError> {
    let url = unsubscribe_url(profile, signer, who.campaign_id, who.contact_id)?;
    Ok(email_with_unsubscribe(
        parts,
        profile,
        url,
        idempotency_key,
        locale,
    ))
}

/// [`email`] with the recipient's [`unsubscribe_url`] already made (the renderer makes it
/// once per message: templates can show it too).
pub fn email_with_unsubscribe(
    parts: EmailParts,
    profile: &SenderProfile,
    url: String,
    idempotency_key: &str,
    locale: &str,
) -> CompliantEmail {
    let token = url.rsplit('/').next().unwrap_or_default();
    let headers = vec![
        (
            "List-Unsubscribe".to_owned(),
            format!(
                "<{url}>, <mailto:{}?subject=unsubscribe-{token}>",
                profile.unsubscribe_mailbox
            ),
        ),
        ("List-Unsubscribe-Post".to_owned(), ONE_CLICK.to_owned()),
    ];
    let origin = SenderProfile::localized(&profile.data_origin, locale);
    let link_text = SenderProfile::localized(&profile.unsubscribe_text, locale);
    let footer_html = format!(
        "<hr><p style=\"font-size:12px;color:#555\">{}<br>{}<br><a href=\"{}\">{}</a></p>",
        escape_html(&profile.legal_name),
        escape_html(origin),
        escape_html(&url),
        escape_html(link_text),
    );
    let footer_text = format!(
        "\n\n--\n{}\n{}\n{}: {url}\n",
        profile.legal_name, origin, link_text
    );
    let html = match parts.html.rfind("</body>") {
        Some(at) => format!("{}{footer_html}{}", &parts.html[..at], &parts.html[at..]),
        None => format!("{}{footer_html}", parts.html),
    };
    // Every e-mail gets a text part: the template's, or one derived from its HTML.
    let text = parts
        .text
        .unwrap_or_else(|| crate::text::from_html(&parts.html));
    let text = Some(format!("{text}{footer_text}"));
    CompliantEmail {
        parts: EmailParts {
            subject: parts.subject,
            html,
            text,
        },
        message_id: message_id(idempotency_key, &profile.message_id_domain),
        headers,
        unsubscribe_url: url,
    }
}

/// Names the sender at the start and the STOP mention at the end, unless the template
/// already did.
pub fn sms(body: &str, profile: &SenderProfile) -> String {
    let mut out = String::with_capacity(body.len() + 40);
    if !body.trim_start().starts_with(&profile.sms_sender) {
        out.push_str(&profile.sms_sender);
        out.push_str(": ");
    }
    out.push_str(body.trim_end());
    let has_stop = body
        .split(|c: char| !c.is_alphanumeric())
        .any(|word| word.eq_ignore_ascii_case("STOP"));
    if !has_stop {
        out.push(' ');
        out.push_str(&profile.sms_stop);
    }
    out
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn profile() -> SenderProfile {
        SenderProfile {
            from: "Parti Exemple <info@parti-exemple.fr>".into(),
            reply_to: None,
            message_id_domain: "parti-exemple.fr".into(),
            tracker_base_url: "https://t.parti-exemple.fr/".into(),
            unsubscribe_mailbox: "desinscription@parti-exemple.fr".into(),
            legal_name: "Parti Exemple, 12 rue de la Paix, 75002 Paris".into(),
            data_origin: BTreeMap::from([
                (
                    "fr".into(),
                    "Vous recevez ce message car vous avez signé notre pétition.".into(),
                ),
                (
                    "en".into(),
                    "You receive this because you signed our petition.".into(),
                ),
            ]),
            unsubscribe_text: BTreeMap::from([
                ("fr".into(), "Se désinscrire".into()),
                ("en".into(), "Unsubscribe".into()),
            ]),
            sms_sender: "PartiEx".into(),
            sms_stop: "STOP au 36111".into(),
        }
    }

    fn signer() -> Signer {
        Signer::new(SecretString::from("k"))
    }

    fn parts() -> EmailParts {
        EmailParts {
            subject: "Samedi".into(),
            html: "<html><body><p>Bonjour</p></body></html>".into(),
            text: Some("Bonjour".into()),
        }
    }

    fn who(contact_id: &str) -> Recipient<'_> {
        Recipient {
            campaign_id: "cmp-1",
            contact_id,
            channel: "email",
        }
    }

    #[test]
    fn rfc_8058_headers_and_a_unique_message_id() {
        let a = email(
            parts(),
            &profile(),
            &signer(),
            who("c-1"),
            "cmp-1:c-1:email",
            "fr",
        )
        .expect("compliant");
        let again = email(
            parts(),
            &profile(),
            &signer(),
            who("c-1"),
            "cmp-1:c-1:email",
            "fr",
        )
        .expect("compliant");
        let b = email(
            parts(),
            &profile(),
            &signer(),
            who("c-2"),
            "cmp-1:c-2:email",
            "fr",
        )
        .expect("compliant");
        let header = |name: &str| {
            a.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            header("List-Unsubscribe-Post").as_deref(),
            Some("List-Unsubscribe=One-Click")
        );
        let list = header("List-Unsubscribe").expect("header");
        assert!(list.starts_with("<https://t.parti-exemple.fr/u/"), "{list}");
        assert!(
            list.contains(">, <mailto:desinscription@parti-exemple.fr?subject=unsubscribe-"),
            "{list}"
        );
        let token = a.unsubscribe_url.rsplit('/').next().expect("token");
        let claims = signer().verify(token).expect("the link's token verifies");
        assert_eq!(
            (claims.purpose, claims.contact_id.as_str()),
            (Purpose::Unsubscribe, "c-1")
        );
        assert!(a.message_id.starts_with('<') && a.message_id.ends_with("@parti-exemple.fr>"));
        assert_eq!(a.message_id.len(), "<@parti-exemple.fr>".len() + 32);
        assert_ne!(a.message_id, b.message_id, "one id per message");
        assert_eq!(
            a.message_id, again.message_id,
            "a redelivered job keeps its id"
        );
    }

    #[test]
    fn the_footer_names_the_sender_the_data_origin_and_the_link() {
        let fr =
            email(parts(), &profile(), &signer(), who("c-1"), "k", "fr-FR").expect("compliant");
        let footer_at = fr.parts.html.find("<hr>").expect("footer");
        assert!(
            footer_at < fr.parts.html.find("</body>").expect("body end"),
            "inside the body"
        );
        assert!(fr.parts.html.contains("Parti Exemple, 12 rue de la Paix"));
        assert!(fr.parts.html.contains("vous avez signé notre pétition"));
        assert!(fr.parts.html.contains(&format!(
            "<a href=\"{}\">Se désinscrire</a>",
            fr.unsubscribe_url
        )));
        assert!(
            fr.parts
                .text
                .as_deref()
                .unwrap_or_default()
                .contains(&format!("Se désinscrire: {}", fr.unsubscribe_url))
        );
        let mut html_only = parts();
        html_only.text = None;
        let en = email(html_only, &profile(), &signer(), who("c-1"), "k", "en").expect("compliant");
        assert!(en.parts.html.contains("Unsubscribe</a>"));
        let text = en.parts.text.expect("derived from the HTML");
        assert!(text.starts_with("Bonjour\n\n--\nParti Exemple"), "{text}");
    }

    #[test]
    fn sms_get_the_sender_and_stop_once() {
        let p = profile();
        assert_eq!(
            sms("Rdv samedi 10h place Bellecour", &p),
            "PartiEx: Rdv samedi 10h place Bellecour STOP au 36111"
        );
        assert_eq!(
            sms("PartiEx: rdv samedi. Stop au 36111", &p),
            "PartiEx: rdv samedi. Stop au 36111"
        );
        // "STOPPER" is not the STOP mention.
        assert!(sms("Il faut stopper la réforme", &p).ends_with("STOP au 36111"));
    }
}

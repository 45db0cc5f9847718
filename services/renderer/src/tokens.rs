//! Signed tokens for the links a message carries: one-click unsubscribe, open pixel,
//! click redirect.
//!
//! The mail client's one-click POST carries no cookie and no login (RFC 8058), so the token
//! itself must say who is unsubscribing from what, and prove that Tocsin wrote it. A click
//! token carries its destination inside, so the tracker never redirects to a URL it did
//! not sign (no open redirect).
//!
//! Format: base64url (no padding) of `version | purpose | fields... | tag`, each field a
//! 2-byte big-endian length and its bytes, `tag` the first 16 bytes of
//! HMAC-SHA256(key, everything before it).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Unsubscribe,
    Open,
    Click,
}

impl Purpose {
    fn byte(self) -> u8 {
        match self {
            Purpose::Unsubscribe => b'u',
            Purpose::Open => b'o',
            Purpose::Click => b'c',
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'u' => Purpose::Unsubscribe,
            b'o' => Purpose::Open,
            b'c' => Purpose::Click,
            _ => return None,
        })
    }
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub purpose: Purpose,
    pub campaign_id: String,
    pub contact_id: String,
    /// `email` or `sms`.
    pub channel: String,
    /// The destination of a click; empty otherwise.
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not base64url")]
    Encoding,
    #[error("token is malformed")]
    Malformed,
    #[error("token signature does not verify")]
    Signature,
    #[error("a field is longer than 65535 bytes")]
    TooLong,
}

/// Signs and verifies tokens with one key (the tracker holds the same).
#[derive(Clone)]
pub struct Signer {
    key: SecretString,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer")
    }
}

impl Signer {
    pub fn new(key: SecretString) -> Self {
        Signer { key }
    }

    fn tag(&self, body: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.expose_secret().as_bytes())
            .expect("HMAC takes any key length");
        mac.update(body);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut body = vec![VERSION, claims.purpose.byte()];
        for field in [
            &claims.campaign_id,
            &claims.contact_id,
            &claims.channel,
            &claims.url,
        ] {
            let len = u16::try_from(field.len()).map_err(|_| TokenError::TooLong)?;
            body.extend_from_slice(&len.to_be_bytes());
            body.extend_from_slice(field.as_bytes());
        }
        let tag = self.tag(&body);
        body.extend_from_slice(&tag);
        Ok(URL_SAFE_NO_PAD.encode(body))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let raw = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| TokenError::Encoding)?;
        if raw.len() < 2 + 4 * 2 + TAG_LEN {
            return Err(TokenError::Malformed);
        }
        let (body, tag) = raw.split_at(raw.len() - TAG_LEN);
        if !bool::from(self.tag(body).ct_eq(tag)) {
            return Err(TokenError::Signature);
        }
        if body[0] != VERSION {
            return Err(TokenError::Malformed);
        }
        let purpose = Purpose::from_byte(body[1]).ok_or(TokenError::Malformed)?;
        let mut rest = &body[2..];
        let mut fields = Vec::with_capacity(4);
        for _ in 0..4 {
            if rest.len() < 2 {
                return Err(TokenError::Malformed);
            }
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            let value = rest.get(2..2 + len).ok_or(TokenError::Malformed)?;
            fields.push(String::from_utf8(value.to_vec()).map_err(|_| TokenError::Malformed)?);
            rest = &rest[2 + len..];
        }
        if !rest.is_empty() {
            return Err(TokenError::Malformed);
        }
        let url = fields.pop().unwrap_or_default();
        let channel = fields.pop().unwrap_or_default();
        let contact_id = fields.pop().unwrap_or_default();
        let campaign_id = fields.pop().unwrap_or_default();
        Ok(Claims {
            purpose,
            campaign_id,
            contact_id,
            channel,
            url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new(SecretString::from("test-key"))
    }

    fn click() -> Claims {
        Claims {
            purpose: Purpose::Click,
            campaign_id: "cmp-rentree".into(),
            contact_id: "c-000042".into(),
            channel: "email".into(),
            url: "https://parti-exemple.fr/agenda?id=12&utm_source=tocsin".into(),
        }
    }

    #[test]
    fn a_token_round_trips_and_is_url_safe() {
        let token = signer().sign(&click()).expect("sign");
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{token}"
        );
        assert_eq!(signer().verify(&token), Ok(click()));
    }

    #[test]
    fn any_changed_byte_fails_to_verify() {
        let token = signer().sign(&click()).expect("sign");
        let raw = URL_SAFE_NO_PAD.decode(&token).expect("decode");
        for i in 0..raw.len() {
            for flip in [0x01u8, 0x80] {
                let mut forged = raw.clone();
                forged[i] ^= flip;
                let forged = URL_SAFE_NO_PAD.encode(&forged);
                assert!(
                    signer().verify(&forged).is_err(),
                    "byte {i} ^ {flip:#x} still verifies"
                );
            }
        }
        // Truncated, extended, another key, garbage.
        assert!(signer().verify(&token[..token.len() - 2]).is_err());
        assert!(signer().verify(&format!("{token}AA")).is_err());
        assert_eq!(
            Signer::new(SecretString::from("other")).verify(&token),
            Err(TokenError::Signature)
        );
        assert_eq!(signer().verify("%%%"), Err(TokenError::Encoding));
    }

    #[test]
    fn the_purpose_is_part_of_what_is_signed() {
        let mut unsubscribe = click();
        unsubscribe.purpose = Purpose::Unsubscribe;
        unsubscribe.url.clear();
        let token = signer().sign(&unsubscribe).expect("sign");
        assert_eq!(
            signer().verify(&token).expect("verifies").purpose,
            Purpose::Unsubscribe
        );
    }
}

//! DKIM signing (RFC 6376, `relaxed/relaxed`; RFC 8463 for Ed25519) of a formatted
//! message, with `ring`.
//!
//! lettre signs too, but through the `rsa` crate, whose big-number arithmetic made RSA
//! signing a quarter of the whole machine's time in a 20,000-e-mail load test (`perf`,
//! `num_bigint_dig::monty`), and capped the sender well below the broker. `ring`'s RSA is
//! several times faster, and its Ed25519 too. The signatures are checked by an independent
//! verifier (dkimpy) in `tests/smtp_delivery.rs`, for both algorithms.
//!
//! What is signed: the headers of [`SIGNED_HEADERS`] present in the message (each name
//! once, its last occurrence, as RFC 6376 §5.4.2 has verifiers pick them), and the whole
//! body, both in relaxed canonicalization (§3.4.2, §3.4.4). The signature header goes on
//! top of the message, folded so that no line is long; the folding is part of what is
//! signed (relaxed canonicalization turns it into single spaces), except inside `b=`,
//! which verifiers strip whole.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use sha2::{Digest, Sha256};

use super::smtp::SIGNED_HEADERS;

/// A signing key, as configured.
enum Key {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// Signs messages for one domain and selector.
pub struct DkimSigner {
    domain: String,
    selector: String,
    key: Key,
    random: SystemRandom,
}

impl std::fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimSigner")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DkimKeyError {
    #[error("the RSA key is not PEM (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`)")]
    NotPem,
    #[error("the RSA key is refused: {0}")]
    Rsa(String),
    #[error("the Ed25519 key must be the base64 of its 32-byte secret")]
    Ed25519Encoding,
    #[error("the Ed25519 key is refused: {0}")]
    Ed25519(String),
    #[error("signing failed")]
    Signing,
}

impl DkimSigner {
    /// An RSA signer from a PEM key (PKCS#1 or PKCS#8).
    pub fn rsa(domain: &str, selector: &str, pem: &str) -> Result<Self, DkimKeyError> {
        let (label, der) = pem_body(pem).ok_or(DkimKeyError::NotPem)?;
        let key = match label.as_str() {
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
            _ => return Err(DkimKeyError::NotPem),
        }
        .map_err(|e| DkimKeyError::Rsa(e.to_string()))?;
        Ok(Self::with(domain, selector, Key::Rsa(key)))
    }

    /// An Ed25519 signer from the base64 of the key's 32-byte secret (its seed).
    pub fn ed25519(domain: &str, selector: &str, secret: &str) -> Result<Self, DkimKeyError> {
        let seed = STANDARD
            .decode(secret.trim())
            .map_err(|_| DkimKeyError::Ed25519Encoding)?;
        let key = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| DkimKeyError::Ed25519(e.to_string()))?;
        Ok(Self::with(domain, selector, Key::Ed25519(key)))
    }

    fn with(domain: &str, selector: &str, key: Key) -> Self {
        DkimSigner {
            domain: domain.to_owned(),
            selector: selector.to_owned(),
            key,
            random: SystemRandom::new(),
        }
    }

    /// `message` (CRLF line endings, headers then an empty line then the body) with a
    /// `DKIM-Signature` header on top, dated `now` (Unix seconds).
    pub fn sign(&self, message: &[u8], now: i64) -> Result<Vec<u8>, DkimKeyError> {
        let (headers, body) = split(message);
        let body_hash = STANDARD.encode(Sha256::digest(relaxed_body(body)));
        let fields = header_fields(headers);
        // Each name once, its last occurrence, in the order of SIGNED_HEADERS.
        let mut signed: Vec<&[u8]> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for name in SIGNED_HEADERS {
            if let Some(field) = fields
                .iter()
                .rev()
                .find(|f| field_name(f).eq_ignore_ascii_case(name.as_bytes()))
            {
                signed.push(field);
                names.push(name.to_ascii_lowercase());
            }
        }
        let algorithm = match self.key {
            Key::Rsa(_) => "rsa-sha256",
            Key::Ed25519(_) => "ed25519-sha256",
        };
        let value = format!(
            "v=1; a={algorithm}; c=relaxed/relaxed; d={}; s={}; t={now};\r\n\th={};\r\n\tbh={body_hash};\r\n\tb=",
            self.domain,
            self.selector,
            names.join(":"),
        );
        let mut data = Vec::with_capacity(1024);
        for field in &signed {
            relaxed_header(field, &mut data);
        }
        let own = format!("DKIM-Signature: {value}");
        relaxed_header(own.as_bytes(), &mut data);
        // The signature header itself is signed without its final CRLF (§3.7).
        data.truncate(data.len() - 2);
        let signature = match &self.key {
            Key::Rsa(key) => {
                let mut out = vec![0; key.public().modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &self.random, &data, &mut out)
                    .map_err(|_| DkimKeyError::Signing)?;
                out
            }
            // RFC 8463: Ed25519 signs the SHA-256 of the canonicalized data.
            Key::Ed25519(key) => key.sign(&Sha256::digest(&data)).as_ref().to_vec(),
        };
        let b = STANDARD.encode(signature);
        let mut out = Vec::with_capacity(message.len() + own.len() + b.len() + 16);
        out.extend_from_slice(own.as_bytes());
        for (i, chunk) in b.as_bytes().chunks(72).enumerate() {
            if i > 0 {
                out.extend_from_slice(b"\r\n\t");
            }
            out.extend_from_slice(chunk);
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(message);
        Ok(out)
    }
}

/// The label and the decoded bytes of a PEM block.
fn pem_body(pem: &str) -> Option<(String, Vec<u8>)> {
    let pem = pem.trim();
    let label = pem
        .strip_prefix("-----BEGIN ")?
        .split_once("-----")?
        .0
        .to_owned();
    let end = format!("-----END {label}-----");
    let inner = pem
        .split_once("-----\n")
        .or_else(|| pem.split_once("-----\r\n"))?
        .1
        .split_once(&end)?
        .0;
    let base64: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
    Some((label, STANDARD.decode(base64).ok()?))
}

/// The header block (with its last CRLF) and the body.
fn split(message: &[u8]) -> (&[u8], &[u8]) {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => (&message[..at + 2], &message[at + 4..]),
        None => (message, b""),
    }
}

/// Each header field, its continuation lines included, with its final CRLF.
fn header_fields(headers: &[u8]) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while at < headers.len() {
        let end = headers[at..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(headers.len(), |p| at + p + 2);
        let continues = end < headers.len() && matches!(headers[end], b' ' | b'\t');
        if !continues {
            fields.push(&headers[start..end]);
            start = end;
        }
        at = end;
    }
    fields
}

fn field_name(field: &[u8]) -> &[u8] {
    let colon = field.iter().position(|&b| b == b':').unwrap_or(field.len());
    field[..colon].trim_ascii_end()
}

/// RFC 6376 §3.4.2: name in lower case; value unfolded, runs of spaces and tabs as one
/// space, none at either end of the value; `name:value` CRLF.
fn relaxed_header(field: &[u8], out: &mut Vec<u8>) {
    let colon = field.iter().position(|&b| b == b':').unwrap_or(field.len());
    out.extend(field_name(field).iter().map(u8::to_ascii_lowercase));
    out.push(b':');
    let value = field.get(colon + 1..).unwrap_or_default();
    let mut pending_space = false;
    let mut wrote = false;
    for &b in value {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => pending_space = true,
            _ => {
                if pending_space && wrote {
                    out.push(b' ');
                }
                pending_space = false;
                wrote = true;
                out.push(b);
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// RFC 6376 §3.4.4: each line without trailing spaces or tabs and with inner runs of them
/// as one space; empty lines at the end removed; a non-empty body ends with CRLF.
fn relaxed_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut empty_lines = 0usize;
    let mut lines = body.split(|&b| b == b'\n').peekable();
    let mut canonical = Vec::with_capacity(128);
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // The piece after the last CRLF is not a line unless it has content.
        if lines.peek().is_none() && line.is_empty() {
            break;
        }
        canonical.clear();
        let mut pending_space = false;
        for &b in line {
            if b == b' ' || b == b'\t' {
                pending_space = true;
            } else {
                if pending_space {
                    canonical.push(b' ');
                }
                pending_space = false;
                canonical.push(b);
            }
        }
        if canonical.is_empty() {
            empty_lines += 1;
            continue;
        }
        for _ in 0..empty_lines {
            out.extend_from_slice(b"\r\n");
        }
        empty_lines = 0;
        out.extend_from_slice(&canonical);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ED25519, KeyPair, UnparsedPublicKey};

    /// The example of RFC 6376 §3.4.5.
    #[test]
    fn relaxed_canonicalization_as_in_the_rfc_example() {
        let mut out = Vec::new();
        for field in header_fields(b"A: X\r\nB : Y\t\r\n\tZ  \r\n") {
            relaxed_header(field, &mut out);
        }
        assert_eq!(out, b"a:X\r\nb:Y Z\r\n");
        assert_eq!(relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n"), b" C\r\nD E\r\n");
    }

    #[test]
    fn bodies_keep_inner_empty_lines_and_gain_a_final_crlf() {
        assert_eq!(relaxed_body(b""), b"");
        assert_eq!(relaxed_body(b"\r\n\r\n"), b"");
        assert_eq!(relaxed_body(b"a\r\n\r\nb"), b"a\r\n\r\nb\r\n");
        assert_eq!(relaxed_body(b"a  \t b \r\n"), b"a b\r\n");
    }

    #[test]
    fn pem_blocks_are_read_with_their_label() {
        let (label, der) = pem_body(
            "-----BEGIN RSA PRIVATE KEY-----\nAAEC\nAw==\n-----END RSA PRIVATE KEY-----\n",
        )
        .expect("pem");
        assert_eq!(label, "RSA PRIVATE KEY");
        assert_eq!(der, [0, 1, 2, 3]);
        assert!(pem_body("not a key").is_none());
    }

    /// Signs, then verifies as a verifier would: take the header as sent, empty its `b=`,
    /// canonicalize what `h=` names, check the body hash and the signature.
    #[test]
    fn an_ed25519_signature_verifies_and_covers_the_named_headers_and_the_body() {
        let seed = [7u8; 32];
        let signer =
            DkimSigner::ed25519("tocsin.localhost", "load", &STANDARD.encode(seed)).expect("key");
        let message = b"From: Tocsin <equipe@tocsin.localhost>\r\nTo: camille@example.org\r\nSubject: Meeting\r\n  en ligne\r\nDate: Fri, 04 Dec 2026 18:00:00 +0000\r\nMessage-ID: <a@tocsin.localhost>\r\nX-Other: not signed\r\n\r\nBonjour  Camille,\r\n\r\n.ligne\r\n\r\n";
        let signed = signer.sign(message, 1_796_400_000).expect("signed");
        let text = String::from_utf8(signed.clone()).expect("ascii");
        assert!(text.starts_with("DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=tocsin.localhost; s=load; t=1796400000;\r\n\th=from:to:subject:date:message-id;"));
        assert!(text.lines().all(|l| l.len() <= 100), "{text}");

        let (headers, body) = split(&signed);
        let fields = header_fields(headers);
        let own = fields[0];
        let own_text = std::str::from_utf8(own).expect("ascii");
        let b_at = own_text.find("\tb=").map(|i| i + 3).expect("b=");
        let signature = STANDARD
            .decode(own_text[b_at..].split_whitespace().collect::<String>())
            .expect("base64");
        let bh = own_text
            .split("bh=")
            .nth(1)
            .and_then(|v| v.split(';').next())
            .expect("bh");
        assert_eq!(bh, STANDARD.encode(Sha256::digest(relaxed_body(body))));
        let mut data = Vec::new();
        for name in ["from", "to", "subject", "date", "message-id"] {
            let field = fields
                .iter()
                .rev()
                .find(|f| field_name(f).eq_ignore_ascii_case(name.as_bytes()))
                .expect("signed header");
            relaxed_header(field, &mut data);
        }
        relaxed_header(&own[..b_at], &mut data);
        data.truncate(data.len() - 2);
        let key = Ed25519KeyPair::from_seed_unchecked(&seed).expect("key");
        let public = UnparsedPublicKey::new(&ED25519, key.public_key().as_ref().to_vec());
        public
            .verify(&Sha256::digest(&data), &signature)
            .expect("the signature verifies");
        // A changed body or a changed signed header no longer verifies.
        let mut tampered = data.clone();
        tampered[3] ^= 1;
        assert!(
            public
                .verify(&Sha256::digest(&tampered), &signature)
                .is_err()
        );
    }
}

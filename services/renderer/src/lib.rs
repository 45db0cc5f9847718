//! The renderer: turns each `SendJob` into a message a provider can take.
//!
//! # Layout
//! - [`compliance`]: RFC 8058 headers, Message-ID, the CNIL footer with a visible
//!   unsubscribe link; the SMS sender name and STOP mention.
//! - [`render`]: templates compiled once per version; contact data HTML-escaped in HTML
//!   parts; a missing field without fallback is an error naming it; `default`, `number`
//!   and `date` helpers in the contact's language and time zone.
//! - [`sms`]: GSM-7 or UCS-2 chosen by content, the exact number of parts (escape pairs and
//!   surrogate pairs never split), the optional normalisation that keeps French in GSM-7.
//!
//! - [`text`]: a readable text part from HTML, links kept, when a template gives none.
//! - [`tokens`]: signed tokens for unsubscribe, open and click links (HMAC-SHA256).
//!
//! Not written yet: open pixel and click rewriting, and the `tocsin.jobs` consumer that
//! puts it all together.

pub mod compliance;
pub mod render;
pub mod sms;
pub mod text;
pub mod tokens;

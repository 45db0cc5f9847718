//! The renderer: turns each `SendJob` into a message a provider can take.
//!
//! # Layout
//! - [`render`]: templates compiled once per version; contact data HTML-escaped in HTML
//!   parts; a missing field without fallback is an error naming it; `default`, `number`
//!   and `date` helpers in the contact's language and time zone.
//! - [`sms`]: GSM-7 or UCS-2 chosen by content, the exact number of parts (escape pairs and
//!   surrogate pairs never split), the optional normalisation that keeps French in GSM-7.
//!
//! Not written yet: the compliance parts (unsubscribe headers and links, footers, STOP
//! mention), the text part derived from HTML, and the `tocsin.jobs` consumer.

pub mod render;
pub mod sms;

//! The renderer: turns each `SendJob` into a message a provider can take.
//!
//! # Layout
//! - [`sms`]: GSM-7 or UCS-2 chosen by content, the exact number of parts (escape pairs and
//!   surrogate pairs never split), the optional normalisation that keeps French in GSM-7.
//!
//! The rendering service itself (templates, compliance parts, the `tocsin.jobs`
//! consumer) is not written yet.

pub mod sms;

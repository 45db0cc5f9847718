//! Message templates: what a campaign sends, versioned, checked when uploaded rather than
//! discovered broken at send time.
//!
//! # Layout
//! - [`model`]: a template version: channel, locale variants, their parts.
//! - [`validate`]: compiles every part; syntax errors with line, column and the text at
//!   fault; unknown helpers and partials refused; variables outside the contact schema
//!   reported (refused in strict mode).
//! - [`store`]: versions in Redis (`t:tpl:ID` hash: `latest`, `v1`, `v2`, ...; `t:tpls`
//!   lists the ids). A new upload is a new version; campaigns pin the version they were
//!   scheduled with. A delete is soft: the template leaves the list and has no latest
//!   version any more, but its versions stay for the jobs that pin them.

pub mod model;
pub mod store;
pub mod validate;

pub use model::{Channel, Content, TemplateDraft, TemplateVersion};

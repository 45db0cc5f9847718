//! Automated sequences: contacts entering a trigger segment are enrolled and receive a
//! series of steps, each after its wait, on the triggered lane.
//!
//! - [`ids`]: how a step's message is named (step groups, idempotency keys).
//! - [`definition`]: what a definition must satisfy; when a step comes due.
//! - [`store`]: versions (immutable) and enrolment records in Redis, every change of an
//!   enrolment one compare-and-set.
//! - [`flow`]: enrolment, exits, and the sequence dispatcher that runs due steps.

pub mod definition;
pub mod flow;
pub mod ids;
pub mod store;

pub use flow::{Book, Sequences};
pub use ids::StepRef;

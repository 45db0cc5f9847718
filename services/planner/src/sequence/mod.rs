//! Automated sequences: contacts entering a trigger segment are enrolled and receive a
//! series of steps, each after its wait, on the triggered lane.
//!
//! - [`ids`]: how a step's message is named (step groups, idempotency keys).

pub mod ids;

pub use ids::StepRef;

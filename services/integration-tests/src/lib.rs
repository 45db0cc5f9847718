//! Tests against the local stack (`deploy/local/stack.sh up`), and what they need.
//!
//! # Layout
//! - [`stack`]: where the stack is (`TOCSIN_TEST_BROKERS`, `TOCSIN_TEST_REDIS`), per-test
//!   topics and groups, producing inputs and reading outputs back.
//! - [`relay`]: a minimal service built like every Tocsin service (`run(config,
//!   shutdown)`, layered configuration, ops server, bus consumer): it turns each
//!   `SegmentEvent` into a `Feedback` and dead-letters what it cannot decode. The tests
//!   run it in-process, or as the `tocsin-relay` binary when they need to kill it.
//! - `tests/`: the bus (round trip, rebalance, at-least-once across SIGKILL, dead letters,
//!   broker restart) and the configuration layers.

pub mod mail;
pub mod relay;
pub mod stack;

//! What every test binary shares (`tests/api`, `tests/independence.rs`,
//! `tests/faults`, `tests/cluster`): one way to build a relay's environment,
//! one way to start the `hookrelay` binary, one way to read its metrics, one
//! way to ask the broker's `rabbitmqctl`, one way to wait for a condition and
//! one way to leave nothing behind.
//! Each binary includes it with `#[path]` and uses the part it needs.
#![allow(dead_code)]

pub(crate) mod binary;
pub(crate) mod cleanup;
pub(crate) mod env;
pub(crate) mod gate;
pub(crate) mod metrics;
pub(crate) mod rabbitmqctl;
pub(crate) mod wait;

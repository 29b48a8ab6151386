//! Integration tests against the real RabbitMQ at `AMQP_URL`
//! (default `amqp://guest:guest@127.0.0.1:5672/%2f`). Each test starts its own
//! relay on port 0 with its own exchange, so they run in parallel.

mod accounts;
mod admin;
mod audit;
mod binary;
mod broker;
#[path = "../common/mod.rs"]
mod common;
mod console;
mod consumer;
mod contract;
mod copies;
mod helpers;
mod history;
mod hostile;
mod inspect;
mod overflow;
mod providers;
mod quarantine;
mod replay;
mod spool;
mod topology;
mod traces;
mod webhook;

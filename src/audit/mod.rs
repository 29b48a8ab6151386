//! Proof, in production, that nothing the relay stored was lost.
//!
//! Every webhook a relay stores (published or spooled, quarantined bodies
//! included) carries `x-relay-id` and `x-relay-seq`: the relay's identity
//! and the next of its numbers ([`numbering`]). Every stored webhook reaches
//! the history stream, so `hookrelay audit` reads the history and accounts
//! for every number between a relay's first and last there ([`reckoning`]):
//! in the history; burned (taken by a request answered 503, and noted in
//! the history by the relay, [`notes`]); still in the spool; reserved by a
//! run and never handed out; in flight at a crash; or recent. Anything else
//! is a loss.
//!
//! What it proves: every webhook a relay stored reached the history. What
//! it cannot: that a consumer's queue got it (the history is fed by the same
//! fanout as the topic exchange, but a queue may drop or expire messages),
//! or anything about webhooks refused before they were stored.

mod keeper;
pub mod notes;
pub mod numbering;
pub mod reckoning;
pub mod scan;
pub mod tally;

pub(crate) use keeper::{Keeping, keep};

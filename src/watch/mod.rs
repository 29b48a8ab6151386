//! Looking without touching: the operator's read-only views of the relay's
//! messages, which never change where an event goes or take one from a
//! consumer.
//!
//! * [`tail`]: events as they go by (from the history's end, or a temporary
//!   queue on the entry exchange).
//! * [`inspect`]: what a queue holds, put back in place.
//! * [`render`]: how a message is shown (headers as JSON, the login name
//!   redacted).
//!
//! The history's own reader, which `events` and `tail` use, is
//! [`history`](crate::history).

pub mod inspect;
pub mod render;
pub mod tail;

//! Turning what sources read into API records.
//!
//! Owns the record schemas ([`schema`]), timestamps and time zones ([`time`]), the column map
//! ([`map`]) with its expressions ([`expr`]), a row's natural key ([`key`]), the rows left out
//! on purpose ([`skip`]) and the agent-state interval builder ([`intervals`]). Everything here
//! is pure: no I/O, no SQLite, no HTTP, so it is tested with plain unit tests.

pub mod expr;
pub mod intervals;
pub mod key;
pub mod map;
pub mod queue_log;
pub mod schema;
pub mod skip;
pub mod time;

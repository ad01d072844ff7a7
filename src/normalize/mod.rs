//! Turning what sources read into API records.
//!
//! Owns the record schemas ([`schema`]), timestamps and time zones ([`time`]) and the column
//! map ([`map`]). Everything here is pure: no I/O, no SQLite, no HTTP, so it is tested with plain
//! unit tests.

pub mod map;
pub mod schema;
pub mod time;

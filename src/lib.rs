//! injixo-sync: an on-premises connector that reads what a contact center's ACD produces and
//! delivers it to the injixo import API without losing or duplicating a record.
//!
//! The data flows one way:
//!
//! ```text
//! sources ──records──▶ normalize ──▶ outbox (SQLite) ──batches──▶ push ──HTTPS──▶ injixo
//! ```
//!
//! * [`config`] turns the TOML file into validated types once; nothing else parses it.
//! * [`sources`] read their input from a committed cursor and hand records *with* the cursor that
//!   follows them to the [`outbox`], which commits both in one SQLite transaction.
//! * [`normalize`] owns the API record shapes, field mapping and time handling.
//! * [`push`] owns every HTTP request to injixo: lanes, batching, retry, dead letters.
//! * [`app`] is the only place that spawns tasks; it wires the parts together and drains them
//!   on shutdown.
//!
//! [`run`] is the daemon's entry point; `main.rs` only parses the command line around it.

pub mod app;
pub mod check;
pub mod cli;
pub mod config;
pub mod counters;
pub mod demo;
pub mod encoding;
pub mod fake_api;
pub mod flow;
pub mod import;
pub mod init;
pub mod listen_auth;
pub mod logging;
pub mod metrics;
pub mod normalize;
pub mod outbox;
pub mod page;
pub mod parked;
pub mod preview;
pub mod push;
pub mod redact;
pub mod send_test;
pub mod server;
pub mod service;
pub mod sources;
pub mod stale;
pub mod status;
pub mod text;
pub mod tls;
pub mod types;
pub mod web;

pub use app::run;

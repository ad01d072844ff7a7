//! Delivery to the injixo API: the only module that speaks HTTP to it.
//!
//! * [`classify`]: the retry policy as pure functions (what an answer means, how long to wait).
//! * [`client`]: request building, authentication, proxy and CA settings.
//! * [`lane`]: the per-lane loop that turns pending outbox records into accepted batches.
//!
//! It knows the outbox's batch API and nothing about sources or files.

pub mod classify;
pub mod client;
pub mod lane;

pub use client::{ApiClient, ClientError};
pub use lane::{Handoffs, Lane, LaneSettings};

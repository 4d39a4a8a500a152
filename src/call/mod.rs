//! Calls: the lifecycle state machine, the per-call task, forwards, and the registry of live calls.
//!
//! Imports flow one way: `gateway` (composition root) builds [`shared::Shared`] and spawns a
//! [`task`] per call; the task uses `shared`, `state`, `transfer`, `inbox`, `executor`.

pub mod executor;
pub mod gateway;
pub mod inbox;
pub mod open_cdr;
pub mod ports;
pub mod registry;
pub mod shared;
pub mod state;
pub mod task;
pub mod transfer;

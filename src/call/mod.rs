//! Calls: the lifecycle state machine, the per-call task, and the registry of live calls.

pub mod cdr;
pub mod ports;
pub mod registry;
pub mod state;

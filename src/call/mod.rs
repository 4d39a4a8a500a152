//! Calls: the lifecycle state machine, the per-call task, forwards, and the registry of live calls.

pub mod cdr;
pub mod gateway;
pub mod ports;
pub mod registry;
pub mod session;
pub mod state;
pub mod transfer;

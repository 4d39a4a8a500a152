//! The WebSocket bridge: an external bot drives the call over one WebSocket per call
//! (docs/websocket-protocol.md). `protocol` is the wire format, `bridge` the IO-free state
//! machine, `client` the tokio shell that moves frames.

pub mod bridge;
pub mod client;
pub mod protocol;

pub use bridge::{BridgeConfig, BridgeCore, FailurePolicy, IoRequest};
pub use client::{ClientSettings, ConnEvent, WsBridge};
pub use protocol::Dialect;

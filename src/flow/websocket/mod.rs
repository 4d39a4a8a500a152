//! The WebSocket bridge: an external bot drives the call over one WebSocket per call
//! (docs/websocket-protocol.md). `protocol` is the wire format (native, and what both dialects
//! share), `twilio` Twilio's Media Streams messages and signature, `uplink` the caller's audio
//! as a continuous 20 ms frame stream, `bridge` the IO-free state machine, `client` the tokio
//! shell that moves frames.

pub mod bridge;
pub mod client;
pub mod protocol;
pub mod twilio;
pub mod uplink;

pub use bridge::{BridgeConfig, BridgeCore, FailurePolicy, IoRequest, TwilioConfig};
pub use client::{ClientSettings, ConnEvent, WsBridge};
pub use protocol::Dialect;

//! voxgate: a voice telephony gateway.
//!
//! The modules follow the path a call takes: `sip` (signalling facade over rsipstack),
//! `media` (RTP, codecs, DTMF, prompts, recording), `call` (per-call state and registry),
//! `flow` (the bot that drives the call), `integrations` (the IO of the flow's integration
//! steps, and the call transcript) and `api` (HTTP for operators).

pub mod api;
pub mod call;
pub mod config;
pub mod flow;
pub mod integrations;
pub mod kb;
pub mod media;
pub mod phone;
pub mod sip;
pub mod speech;
pub mod store;

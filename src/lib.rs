//! voxgate: a voice telephony gateway.
//!
//! The modules follow the path a call takes: `sip` (signalling facade over rsipstack),
//! `media` (RTP, codecs, DTMF, prompts, recording), `call` (per-call state and registry),
//! `flow` (the bot that drives the call) and `api` (HTTP for operators).

pub mod api;
pub mod call;
pub mod config;
pub mod flow;
pub mod media;
pub mod phone;
pub mod sip;
pub mod store;

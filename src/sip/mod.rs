//! SIP: the facade over rsipstack (`server`), a raw-bytes guard in front of it (`guard`,
//! `transport`), and the SIP bodies voxgate reads and writes (`sdp`, `sipfrag`, `dtmf_info`).

pub mod access;
pub mod dtmf_info;
pub mod guard;
pub mod inbound_auth;
pub mod register;
pub mod sdp;
pub mod server;
pub mod sipfrag;
pub mod tcp;
pub mod transport;

pub use server::{
    Admission, CallLeg, IncomingCall, InviteInfo, LegEnd, LegEvent, OutgoingInvite, Reservation,
    Responder, SipError, SipServer, SipServerConfig,
};

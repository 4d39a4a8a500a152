//! Media: codecs, RTP, DTMF, prompts and recording.

pub mod codec;
pub mod dtmf;
pub mod g711;
pub mod jitter;
pub mod packet;
pub mod playback;
pub mod prompts;
pub mod recorder;
pub mod rtcp;
pub mod rtp;
pub mod seq;
pub mod tts;

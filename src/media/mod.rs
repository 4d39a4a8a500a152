//! Media: codecs, RTP, DTMF, prompts and recording.

pub mod codec;

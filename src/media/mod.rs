//! Media: codecs, RTP, DTMF, prompts and recording, and the media plane that runs them.
//!
//! * [`plane`]: the media workers (a few OS threads, one 20 ms tick each for all their
//!   calls, batched socket IO) and the call task's [`plane::MediaHandle`].
//! * [`core`]: [`core::MediaCore`], one call's media as an IO-free state machine.
//! * [`rtp`] (with [`jitter`], [`seq`], [`rtcp`], [`dtmf`], [`packet`], [`playback`],
//!   [`g711`]): one leg's RTP session.
//! * [`recorder`]: the recording feed (run by the core) and the writer threads.
//! * [`prompts`], [`tts`]: audio to play.

pub mod codec;
pub mod core;
pub mod dtmf;
pub mod g711;
pub mod jitter;
pub mod packet;
pub mod plane;
pub mod playback;
pub mod prompts;
pub mod recorder;
pub mod rtcp;
pub mod rtp;
pub mod seq;
pub mod tts;

//! cargo-fuzz target; the body is `targets::rtp_session` (tests/fuzz/targets.rs), which `cargo test`
//! also replays over the committed corpus (tests/fuzz_corpus.rs).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../targets.rs"]
#[allow(dead_code)]
mod targets;

fuzz_target!(|data: &[u8]| targets::rtp_session(data));

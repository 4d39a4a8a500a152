//! Any datagram through the raw-bytes guard. Property: nothing panics, and a message the guard
//! passes on (possibly repaired) passes again unchanged — the repair is idempotent.
#![no_main]
use libfuzzer_sys::fuzz_target;
use voxgate::sip::guard::{inspect_datagram, Verdict};

fuzz_target!(|data: &[u8]| {
    if let Verdict::Pass(bytes) = inspect_datagram(data) {
        match inspect_datagram(&bytes) {
            Verdict::Pass(again) => assert_eq!(again.as_ref(), bytes.as_ref()),
            other => panic!("a passed message must pass again: {other:?}"),
        }
    }
});

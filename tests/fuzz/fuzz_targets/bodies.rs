//! The small SIP bodies and inputs voxgate reads: sipfrag, INFO DTMF, E.164 numbers, flow
//! expressions.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = voxgate::sip::sipfrag::SipFrag::parse_bytes(data);
    let _ = voxgate::sip::dtmf_info::parse_info_dtmf("application/dtmf-relay", data);
    let _ = voxgate::sip::dtmf_info::parse_info_dtmf("application/dtmf", data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = voxgate::phone::parse_e164(text, &voxgate::phone::ParseOptions { legacy_no_plus: true });
        if let Ok(expr) = voxgate::flow::expr::Expr::parse(text) {
            let vars = serde_json::Map::new();
            let _ = expr.eval(&vars);
        }
    }
});

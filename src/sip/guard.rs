//! A raw-bytes check in front of the SIP stack, for UDP datagrams.
//!
//! rsipstack silently drops requests whose method it does not know and messages it cannot
//! parse, and it loses the body of a UDP message without Content-Length. RFC 3261 wants a 501
//! for an unknown method (§8.2.1), a 400 for a malformed request that can still be answered
//! (§8.2.2 / RFC 4475), and says a UDP body runs to the end of the datagram (§18.3). This module
//! decides, without IO, what to do with one datagram.

use std::borrow::Cow;

/// Methods the stack understands. Anything else gets 501 (SIP methods are case-sensitive).
const KNOWN_METHODS: &[&str] = &[
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "INFO",
    "REFER",
    "NOTIFY",
    "UPDATE",
    "PRACK",
    "MESSAGE",
    "SUBSCRIBE",
    "PUBLISH",
    "REGISTER",
];

/// The methods voxgate answers; advertised in Allow.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REFER, NOTIFY, UPDATE";

/// What to do with a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Hand it to the stack (possibly repaired, e.g. a Content-Length added).
    Pass(Cow<'a, [u8]>),
    /// Answer it directly with these bytes, sent back to the datagram's source.
    Reply {
        response: Vec<u8>,
        why: &'static str,
    },
    /// Ignore it (not SIP, or too broken to answer).
    Drop { why: &'static str },
}

/// Inspects one UDP datagram.
pub fn inspect_datagram(data: &[u8]) -> Verdict<'_> {
    let Some(head_end) = head_end(data) else {
        // No end of headers: still try to answer a request if we can find the essentials.
        return reply_or_drop(data, 400, "Bad Request", "no end of headers");
    };
    let head = &data[..head_end];
    let Ok(head_text) = std::str::from_utf8(head) else {
        return reply_or_drop(data, 400, "Bad Request", "headers are not UTF-8");
    };
    let first_line = head_text.lines().next().unwrap_or("").trim_end();
    let is_response = first_line.starts_with("SIP/");
    if !is_response {
        let method = first_line.split(' ').next().unwrap_or("");
        if method.is_empty() || !first_line.ends_with("SIP/2.0") {
            if first_line.ends_with("SIP/7.0") || first_line.contains(" SIP/") {
                return reply_or_drop(data, 505, "Version Not Supported", "bad SIP version");
            }
            return reply_or_drop(data, 400, "Bad Request", "malformed request line");
        }
        if !KNOWN_METHODS.contains(&method) {
            return reply_or_drop(data, 501, "Not Implemented", "unknown method");
        }
    }
    if !is_response {
        if let Some((code, reason, why)) =
            semantic_check(first_line, head_text, data.len() - head_end)
        {
            return reply_or_drop_with(data, code, reason, why, extra_headers(code, head_text));
        }
    }
    // Repairs for valid messages the stack would drop (RFC 4475 wsinv, inv2543).
    let (data, head_end): (Cow<'_, [u8]>, usize) = match repair_head(head_text, is_response) {
        Some(new_head) => {
            let mut v = Vec::with_capacity(new_head.len() + data.len() - head_end);
            v.extend_from_slice(new_head.as_bytes());
            v.extend_from_slice(&data[head_end..]);
            (Cow::Owned(v), new_head.len())
        }
        None => (Cow::Borrowed(data), head_end),
    };
    let head = &data[..head_end];
    let head_text = std::str::from_utf8(head).unwrap_or_default();
    // RFC 3261 §18.3: on UDP a missing Content-Length means the body runs to the end.
    let repaired: Cow<'_, [u8]> = if header_value(head_text, &["content-length", "l"]).is_none() {
        let body_len = data.len() - head_end;
        let mut fixed = Vec::with_capacity(data.len() + 24);
        let insert_at = head_end - if head.ends_with(b"\r\n") { 2 } else { 1 };
        fixed.extend_from_slice(&data[..insert_at]);
        fixed.extend_from_slice(format!("Content-Length: {body_len}\r\n").as_bytes());
        fixed.extend_from_slice(&data[insert_at..]);
        Cow::Owned(fixed)
    } else {
        data
    };
    if rsipstack::sip::SipMessage::try_from(repaired.as_ref()).is_err() {
        if is_response {
            return Verdict::Drop {
                why: "unparseable response",
            };
        }
        return reply_or_drop(&repaired, 400, "Bad Request", "unparseable request");
    }
    Verdict::Pass(repaired)
}

/// Rewrites a message head the stack would mis-parse into an equivalent one, or `None` when it
/// is fine as it is:
/// - folded header lines (RFC 3261 §7.3.1: a CRLF followed by whitespace is one SP) are joined,
///   so `CSeq: 0009\r\n  INVITE` parses (RFC 4475 §3.1.1.1, wsinv);
/// - an RFC 2543 request without a From tag gets a tag derived from its Call-ID and From, so
///   the stack can key its transaction and every retransmission (and the ACK / CANCEL) maps to
///   the same one (RFC 4475 §3.4.1, inv2543; RFC 3261 §8.2.2.3 backward compatibility).
pub(crate) fn repair_head(head: &str, is_response: bool) -> Option<String> {
    let folded = head
        .split('\n')
        .skip(1)
        .take_while(|l| !l.trim_end_matches('\r').is_empty())
        .any(|l| l.starts_with([' ', '\t']));
    let mut lines: Vec<String> = Vec::new();
    if folded {
        for raw in head.split('\n') {
            let line = raw.trim_end_matches('\r');
            if line.starts_with([' ', '\t']) && lines.len() > 1 {
                if let Some(last) = lines.last_mut() {
                    if !last.is_empty() {
                        last.push(' ');
                        last.push_str(line.trim());
                        continue;
                    }
                }
            }
            lines.push(line.to_string());
        }
    } else {
        lines = head
            .split('\n')
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect();
    }
    // LWS around the separators of From / To / Via (`tag = x`, `SIP / 2.0 / UDP`) is legal
    // (RFC 3261 §25.1, SWS) but the stack's parsers refuse it.
    let mut spaced = false;
    for line in lines.iter_mut().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let n = name.trim().to_ascii_lowercase();
        if !matches!(n.as_str(), "from" | "f" | "to" | "t" | "via" | "v") {
            continue;
        }
        let tight = tighten_separators(value.trim(), n.starts_with('v'));
        if tight != value.trim() {
            *line = format!("{}: {tight}", name.trim());
            spaced = true;
        }
    }
    // `head` ends with the blank line: the split left two empty strings at the end.
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut tagged = false;
    // RFC 2543 INVITEs may lack Contact; the remote target is then the From URI (RFC 3261
    // §8.2.2.3 / §12.1.1 need one to build the dialog).
    if !is_response && lines[0].starts_with("INVITE ") {
        let has = |names: &[&str]| {
            lines.iter().skip(1).any(|l| {
                l.split_once(':')
                    .is_some_and(|(n, _)| names.contains(&n.trim().to_ascii_lowercase().as_str()))
            })
        };
        let rfc2543 = lines.iter().skip(1).any(|l| {
            l.split_once(':').is_some_and(|(n, v)| {
                matches!(n.trim().to_ascii_lowercase().as_str(), "via" | "v")
                    && !v.to_ascii_lowercase().contains("branch=z9hg4bk")
            })
        });
        if rfc2543 && !has(&["contact", "m"]) {
            let from_uri = lines.iter().skip(1).find_map(|l| {
                let (n, v) = l.split_once(':')?;
                matches!(n.trim().to_ascii_lowercase().as_str(), "from" | "f")
                    .then(|| super::server::uri_of(v.trim()))
            });
            // Only a URI that reads back as one Contact: no quote, angle bracket, comma or
            // space in it (fuzz findings: a From whose display name held a `<`, and a From URI
            // with a comma, made a Contact that failed the second pass).
            let clean = |u: &String| {
                u.starts_with("sip")
                    && !u
                        .contains(|c: char| c.is_whitespace() || matches!(c, '"' | '<' | '>' | ','))
            };
            if let Some(uri) = from_uri.filter(clean) {
                lines.push(format!("Contact: <{uri}>"));
                tagged = true;
            }
        }
    }
    if !is_response {
        let call_id = lines
            .iter()
            .skip(1)
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                matches!(n.trim().to_ascii_lowercase().as_str(), "call-id" | "i")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        for line in lines.iter_mut().skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if !matches!(name.trim().to_ascii_lowercase().as_str(), "from" | "f") {
                continue;
            }
            // A tag is added only to a well-formed value (an unclosed `<` hides where the
            // parameters start, and the stack refuses such a From anyway).
            if tag_param(value) != Some(false) {
                break;
            }
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            call_id.hash(&mut h);
            value.trim().hash(&mut h);
            let tag = format!("2543{:012x}", h.finish() & 0xffff_ffff_ffff);
            *line = format!("{}:{};tag={tag}", name, value.trim_end());
            tagged = true;
            break;
        }
    }
    if !folded && !tagged && !spaced {
        return None;
    }
    let mut out = lines.join("\r\n");
    out.push_str("\r\n\r\n");
    Some(out)
}

/// Removes whitespace around `;`, `=` and `,` (and, in Via, `/`) outside quotes and `<...>`,
/// and collapses other runs of whitespace to one space.
fn tighten_separators(value: &str, via: bool) -> String {
    let is_sep = |c: char| matches!(c, ';' | '=' | ',') || (via && c == '/');
    let mut out = String::with_capacity(value.len());
    let mut in_quotes = false;
    let mut in_angle = false;
    let mut escaped = false;
    let mut pending_space = false;
    for c in value.chars() {
        if in_quotes {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quotes = false;
            }
            continue;
        }
        if in_angle {
            out.push(c);
            if c == '>' {
                in_angle = false;
            }
            continue;
        }
        if c == ' ' || c == '\t' {
            pending_space = true;
            continue;
        }
        if is_sep(c) {
            pending_space = false;
            while out.ends_with(' ') {
                out.pop();
            }
            out.push(c);
            continue;
        }
        if pending_space && !out.is_empty() && !out.ends_with(is_sep) {
            out.push(' ');
        }
        pending_space = false;
        match c {
            '"' => in_quotes = true,
            '<' => in_angle = true,
            _ => {}
        }
        out.push(c);
    }
    out
}

/// Whether a From/To value carries a `tag` parameter (outside the `<...>` URI and quotes), or
/// `None` when a `<` or a quote is never closed: where the parameters start is then unknown
/// (any `<`, not only the first, counts, so a repair never tags a value it cannot read back).
fn tag_param(value: &str) -> Option<bool> {
    let mut in_quotes = false;
    let mut in_angle = false;
    let mut escaped = false;
    let mut params = String::new();
    // Only a `<` outside the quoted display name opens the URI (a fuzzer found a display
    // name holding `<`: the tag after the bare URI was never seen and added on every pass).
    let has_angle = super::server::angle_outside_quotes(value).is_some();
    let mut past_uri = !has_angle;
    for c in value.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '<' if !in_quotes => in_angle = true,
            '>' if !in_quotes => {
                in_angle = false;
                past_uri = true;
            }
            _ if past_uri && !in_quotes && !in_angle => params.push(c),
            _ => {}
        }
    }
    if in_angle || in_quotes {
        return None;
    }
    Some(params.split(';').skip(1).any(|p| {
        p.split('=')
            .next()
            .is_some_and(|n| n.trim().eq_ignore_ascii_case("tag"))
    }))
}

/// Checks a request the parser would accept but RFC 3261 / RFC 4475 say must be refused:
/// missing or repeated core headers, a CSeq that does not match the method, a bad
/// Content-Length, an unsupported URI scheme or extension, or a body type / Accept list that
/// rules out SDP. Returns (status, reason phrase, why).
fn semantic_check(
    first_line: &str,
    head: &str,
    body_len: usize,
) -> Option<(u16, &'static str, &'static str)> {
    let mut parts = first_line.split(' ');
    let method = parts.next().unwrap_or("");
    let uri = parts.next().unwrap_or("");
    if uri.is_empty() || uri.starts_with('<') {
        return Some((400, "Bad Request", "malformed Request-URI"));
    }
    let headers = unfolded_headers(head);
    for (name, value) in &headers {
        let n = name.to_ascii_lowercase();
        if matches!(n.as_str(), "via" | "v" | "contact" | "m")
            && value
                .split(',')
                .any(|part| part.trim().is_empty() || part.trim().starts_with(';'))
        {
            return Some((400, "Bad Request", "empty Via or Contact element"));
        }
        if matches!(n.as_str(), "from" | "f" | "to" | "t" | "contact" | "m")
            && unescaped_quotes(value) % 2 == 1
        {
            return Some((400, "Bad Request", "unbalanced quotes in a display name"));
        }
    }
    let count = |names: &[&str]| {
        headers
            .iter()
            .filter(|(n, _)| names.iter().any(|x| n.eq_ignore_ascii_case(x)))
            .count()
    };
    let value = |names: &[&str]| {
        headers
            .iter()
            .find(|(n, _)| names.iter().any(|x| n.eq_ignore_ascii_case(x)))
            .map(|(_, v)| v.as_str())
    };
    for names in [
        &["call-id", "i"][..],
        &["from", "f"],
        &["to", "t"],
        &["cseq"],
        &["via", "v"],
    ] {
        if count(names) == 0 {
            return Some((400, "Bad Request", "a mandatory header is missing"));
        }
    }
    for names in [
        &["call-id", "i"][..],
        &["from", "f"],
        &["to", "t"],
        &["cseq"],
        &["max-forwards"],
        &["content-length", "l"],
        &["content-type", "c"],
    ] {
        if count(names) > 1 {
            return Some((400, "Bad Request", "a single-valued header appears twice"));
        }
    }
    let cseq = value(&["cseq"]).unwrap_or("");
    let mut cseq_parts = cseq.split_whitespace();
    let number_ok = cseq_parts.next().is_some_and(|n| n.parse::<u32>().is_ok());
    if !number_ok {
        return Some((400, "Bad Request", "CSeq number is not a 32-bit integer"));
    }
    if cseq_parts.next() != Some(method) {
        return Some((400, "Bad Request", "CSeq method does not match the request"));
    }
    if let Some(cl) = value(&["content-length", "l"]) {
        match cl.trim().parse::<usize>() {
            Err(_) => return Some((400, "Bad Request", "Content-Length is not a number")),
            Ok(n) if n > body_len => {
                return Some((400, "Bad Request", "body shorter than Content-Length"))
            }
            Ok(_) => {}
        }
    }
    if method == "ACK" || method == "CANCEL" {
        return None;
    }
    let scheme = uri.split(':').next().unwrap_or("").to_ascii_lowercase();
    if !matches!(scheme.as_str(), "sip" | "sips" | "tel") {
        return Some((
            416,
            "Unsupported URI Scheme",
            "unsupported Request-URI scheme",
        ));
    }
    if value(&["require"]).is_some_and(|r| !r.trim().is_empty()) {
        return Some((420, "Bad Extension", "unsupported extension required"));
    }
    if method == "INVITE" {
        if let Some(ct) = value(&["content-type", "c"]) {
            if body_len > 0 && !ct.to_ascii_lowercase().starts_with("application/sdp") {
                return Some((415, "Unsupported Media Type", "INVITE body is not SDP"));
            }
        }
        if let Some(accept) = value(&["accept"]) {
            let a = accept.to_ascii_lowercase();
            if !a.contains("application/sdp") && !a.contains("*/*") && !a.contains("application/*")
            {
                return Some((406, "Not Acceptable", "Accept rules out application/sdp"));
            }
        }
    }
    None
}

fn unescaped_quotes(v: &str) -> usize {
    let mut n = 0;
    let mut escaped = false;
    for c in v.chars() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => n += 1,
            _ => escaped = false,
        }
    }
    n
}

/// Extra headers a refusal must carry (RFC 3261 §8.2.2.3, §8.2.3, §21.4.16).
fn extra_headers(code: u16, head: &str) -> Vec<(String, String)> {
    match code {
        415 => vec![("Accept".into(), "application/sdp".into())],
        420 => {
            let tags = header_value(head, &["require"]).unwrap_or("").to_string();
            vec![("Unsupported".into(), tags)]
        }
        _ => Vec::new(),
    }
}

fn reply_or_drop(data: &[u8], code: u16, reason: &str, why: &'static str) -> Verdict<'static> {
    reply_or_drop_with(data, code, reason, why, Vec::new())
}

/// Builds a stateless response when the request carries Via, From, To, Call-ID and CSeq;
/// otherwise there is nobody to answer and the datagram is dropped.
fn reply_or_drop_with(
    data: &[u8],
    code: u16,
    reason: &str,
    why: &'static str,
    extra: Vec<(String, String)>,
) -> Verdict<'static> {
    let text = String::from_utf8_lossy(data);
    if text.starts_with("SIP/") {
        return Verdict::Drop { why };
    }
    let mut vias = Vec::new();
    let mut from = None;
    let mut to = None;
    let mut call_id = None;
    let mut cseq = None;
    for (name, value) in unfolded_headers(&text) {
        match name.to_ascii_lowercase().as_str() {
            "via" | "v" => vias.push(value),
            "from" | "f" if from.is_none() => from = Some(value),
            "to" | "t" if to.is_none() => to = Some(value),
            "call-id" | "i" if call_id.is_none() => call_id = Some(value),
            "cseq" if cseq.is_none() => cseq = Some(value),
            _ => {}
        }
    }
    let (Some(from), Some(to), Some(call_id), Some(cseq)) = (from, to, call_id, cseq) else {
        return Verdict::Drop { why };
    };
    if vias.is_empty() || cseq.starts_with(char::is_whitespace) && cseq.trim().is_empty() {
        return Verdict::Drop { why };
    }
    // A request that is ACK gets no response (RFC 3261 §17.2.1).
    if cseq.split_whitespace().nth(1) == Some("ACK") {
        return Verdict::Drop { why };
    }
    let to = if to.to_ascii_lowercase().contains(";tag=") {
        to
    } else {
        format!("{to};tag=vg{:08x}", rand::random::<u32>())
    };
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for via in vias {
        out.push_str(&format!("Via: {via}\r\n"));
    }
    out.push_str(&format!(
        "From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\n"
    ));
    if code == 501 || code == 405 {
        out.push_str(&format!("Allow: {ALLOW}\r\n"));
    }
    for (n, v) in extra {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Warning: 399 voxgate \"{why}\"\r\nContent-Length: 0\r\n\r\n"
    ));
    Verdict::Reply {
        response: out.into_bytes(),
        why,
    }
}

/// Header lines of a message, with folded continuation lines joined (RFC 3261 §7.3.1).
fn unfolded_headers(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    // A continuation belongs to the line just above it, as in `repair_head`: when that line
    // is no header (no colon), the continuation goes with it, never with an earlier header
    // (a fuzzer found a Via whose value changed between the check and the repaired message).
    let mut attached = false;
    for line in text.split('\n').skip(1) {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut().filter(|_| attached) {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        attached = match line.split_once(':') {
            Some((name, value)) => {
                out.push((name.trim().to_string(), value.trim().to_string()));
                true
            }
            None => false,
        };
    }
    out
}

fn header_value<'a>(head: &'a str, names: &[&str]) -> Option<&'a str> {
    head.split('\n').skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        names
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
            .then(|| value.trim())
    })
}

/// Where the headers end: just after the first empty line, whatever mix of CRLF and bare LF
/// ends the lines around it (`\r\n\r\n`, `\n\n`, `\n\r\n`). Taking the first `\r\n\r\n`
/// instead would skip an earlier `\n\r\n`, and a repair that then writes CRLF line ends would
/// move the end of the headers (a fuzzer found it: the repair was not idempotent).
fn head_end(data: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = data.get(i..)?.iter().position(|&b| b == b'\n') {
        let lf = i + off;
        // A line of nothing but CRs is empty too: the repairs trim CRs from line ends, so
        // reading `\n\r\r\n` as a header line would end the headers elsewhere on a second
        // pass (a fuzzer found it).
        let crs = data
            .get(lf + 1..)?
            .iter()
            .take_while(|&&b| b == b'\r')
            .count();
        if data.get(lf + 1 + crs) == Some(&b'\n') {
            return Some(lf + 2 + crs);
        }
        i = lf + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &str = "OPTIONS sip:bot@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK1\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:bot@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn well_formed_request_passes_unchanged() {
        match inspect_datagram(OPTIONS.as_bytes()) {
            Verdict::Pass(Cow::Borrowed(b)) => assert_eq!(b, OPTIONS.as_bytes()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_method_gets_501_with_allow_and_copied_headers() {
        let msg = OPTIONS
            .replace("OPTIONS sip", "FOOBAR sip")
            .replace("1 OPTIONS", "1 FOOBAR");
        let Verdict::Reply { response, .. } = inspect_datagram(msg.as_bytes()) else {
            panic!()
        };
        let r = String::from_utf8(response).unwrap();
        assert!(r.starts_with("SIP/2.0 501 Not Implemented\r\n"), "{r}");
        assert!(r.contains("Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK1\r\n"));
        assert!(r.contains("Call-ID: c1\r\n") && r.contains("CSeq: 1 FOOBAR\r\n"));
        assert!(r.contains("To: <sip:bot@127.0.0.1>;tag=vg"));
        assert!(r.contains("Allow: INVITE"));
    }

    #[test]
    fn lowercase_method_is_unknown() {
        let msg = OPTIONS.replace("OPTIONS sip", "options sip");
        assert!(matches!(
            inspect_datagram(msg.as_bytes()),
            Verdict::Reply { .. }
        ));
    }

    #[test]
    fn garbage_is_dropped() {
        for g in [
            &b"hello world"[..],
            b"\x00\x01\x02\xff",
            b"",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(inspect_datagram(g), Verdict::Drop { .. }), "{g:?}");
        }
    }

    #[test]
    fn missing_content_length_is_added_for_udp() {
        let msg = "INFO sip:bot@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK2\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:bot@127.0.0.1>;tag=2\r\nCall-ID: c1\r\nCSeq: 2 INFO\r\nContent-Type: application/dtmf-relay\r\n\r\nSignal=5\r\nDuration=160\r\n";
        let Verdict::Pass(fixed) = inspect_datagram(msg.as_bytes()) else {
            panic!()
        };
        let text = String::from_utf8(fixed.into_owned()).unwrap();
        assert!(
            text.contains("Content-Length: 24\r\n\r\nSignal=5"),
            "{text}"
        );
        let parsed = rsipstack::sip::SipMessage::try_from(text.as_str()).unwrap();
        match parsed {
            rsipstack::sip::SipMessage::Request(r) => assert_eq!(r.body.len(), 24),
            _ => panic!(),
        }
    }

    #[test]
    fn responses_are_never_answered() {
        let r = "SIP/2.0 200 OK\r\nbroken";
        assert!(matches!(
            inspect_datagram(r.as_bytes()),
            Verdict::Drop { .. }
        ));
    }

    #[test]
    fn ack_is_never_answered() {
        let msg = OPTIONS
            .replace("OPTIONS sip", "ACK sip:x SIP/3.0 junk")
            .replace("1 OPTIONS", "1 ACK");
        assert!(matches!(
            inspect_datagram(msg.as_bytes()),
            Verdict::Drop { .. }
        ));
    }

    fn stack_accepts(bytes: &[u8]) -> Result<(), String> {
        use rsipstack::transaction::key::{TransactionKey, TransactionRole};
        let msg = rsipstack::sip::SipMessage::try_from(bytes).map_err(|e| e.to_string())?;
        let rsipstack::sip::SipMessage::Request(req) = msg else {
            return Err("not a request".into());
        };
        use rsipstack::sip::prelude::HeadersExt;
        req.cseq_header()
            .map_err(|e| e.to_string())?
            .seq()
            .map_err(|e| e.to_string())?;
        TransactionKey::from_request(&req, TransactionRole::Server).map_err(|e| e.to_string())?;
        Ok(())
    }

    #[test]
    fn rfc4475_wsinv_and_inv2543_are_repaired_into_messages_the_stack_takes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rfc4475");
        for name in ["wsinv.dat", "inv2543.dat"] {
            let raw = std::fs::read(dir.join(name)).unwrap();
            let Verdict::Pass(fixed) = inspect_datagram(&raw) else {
                panic!("{name}: not passed on")
            };
            stack_accepts(&fixed).unwrap_or_else(|e| panic!("{name}: {e}"));
            // Idempotent: the repaired message passes again unchanged.
            match inspect_datagram(&fixed) {
                Verdict::Pass(again) => assert_eq!(again.as_ref(), fixed.as_ref(), "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_headers_end_at_the_first_empty_line_whatever_the_line_ends() {
        assert_eq!(head_end(b"A\r\n\r\nbody"), Some(5));
        assert_eq!(head_end(b"A\n\nbody"), Some(3));
        assert_eq!(head_end(b"A\n\r\nbody\r\n\r\n"), Some(4));
        assert_eq!(head_end(b"A\r\nB\r\n"), None);
        assert_eq!(head_end(b"A\n\r"), None);
        // A bare-LF line before the empty line, and a missing Content-Length: repaired once,
        // the message passes again unchanged.
        let msg = b"INFO sip:bot@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK9\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:bot@127.0.0.1>;tag=2\r\nCall-ID: c9\r\nCSeq: 2 INFO\nContent-Type: text/plain\n\r\nx=1\r\n\r\ny\r\n";
        let Verdict::Pass(once) = inspect_datagram(msg) else {
            panic!("should pass")
        };
        let text = String::from_utf8_lossy(&once).into_owned();
        assert!(text.contains("Content-Length: 10\r\n"), "{text}");
        match inspect_datagram(&once) {
            Verdict::Pass(again) => assert_eq!(again.as_ref(), once.as_ref()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fuzz_regression_repairs_are_idempotent() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/sip_guard");
        for entry in std::fs::read_dir(dir).unwrap() {
            let raw = std::fs::read(entry.unwrap().path()).unwrap();
            if let Verdict::Pass(b) = inspect_datagram(&raw) {
                match inspect_datagram(&b) {
                    Verdict::Pass(again) => assert_eq!(again.as_ref(), b.as_ref()),
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn rfc2543_from_tag_is_stable_across_retransmissions_and_ack() {
        let inv = "INVITE sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1\r\nFrom: <sip:a@example.com>\r\nTo: <sip:b@example.com>\r\nCall-ID: x1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let ack = inv
            .replace("INVITE sip", "ACK sip")
            .replace("1 INVITE", "1 ACK");
        let tag = |m: &str| {
            let Verdict::Pass(b) = inspect_datagram(m.as_bytes()) else {
                panic!()
            };
            let t = String::from_utf8(b.into_owned()).unwrap();
            t.lines()
                .find(|l| l.starts_with("From:"))
                .unwrap()
                .to_string()
        };
        assert!(tag(inv).contains(";tag=2543"));
        assert_eq!(tag(inv), tag(inv));
        assert_eq!(tag(inv), tag(&ack));
        assert_eq!(tag_param("\"a;tag=x\" <sip:a@b;tag=y>"), Some(false));
        assert_eq!(tag_param("<sip:a@b> ; TAG = 1"), Some(true));
        assert_eq!(tag_param("sip:a@b;tag=1"), Some(true));
    }

    #[test]
    fn a_continuation_of_a_line_that_is_no_header_is_not_added_to_the_header_above() {
        let h = unfolded_headers(
            "INVITE x SIP/2.0\r\nVia: a,\r\nnot a header\r\n b\r\nTo: t\r\n c\r\n\r\n",
        );
        assert_eq!(
            h,
            vec![("Via".into(), "a,".into()), ("To".into(), "t c".into())]
        );
    }

    #[test]
    fn a_line_of_only_crs_ends_the_headers() {
        assert_eq!(head_end(b"A\n\r\r\r\nB"), Some(6));
        assert_eq!(head_end(b"A\r\n\r\nB"), Some(5));
        assert_eq!(head_end(b"A\r\nB\r\n"), None);
        let msg = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\nX-A: 1\n\r\r\r\nbody";
        if let Verdict::Pass(once) = inspect_datagram(msg) {
            match inspect_datagram(&once) {
                Verdict::Pass(again) => assert_eq!(again.as_ref(), once.as_ref()),
                other => panic!("a passed message must pass again: {other:?}"),
            }
        }
    }

    /// Found by a 10M-execution fuzz run: a From whose *second* `<` never closes hid its tag
    /// from the check, so every pass added one more tag (the repair was not idempotent).
    #[test]
    fn a_from_with_an_unclosed_second_angle_is_not_tagged_again() {
        assert_eq!(tag_param("<sip:a@b> <x; tag = 1"), None);
        assert_eq!(tag_param("\"unclosed <sip:a@b>"), None);
        assert_eq!(tag_param("<sip:a@b>"), Some(false));
        assert_eq!(tag_param("\"<x>\" sip:a@b;tag=1"), Some(true));
        assert_eq!(tag_param("\"<x>\" sip:a@b"), Some(false));
        let inv = "INVITE sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1\r\nFrom: <sip:a@example.com> <x; tag = 1\r\nTo: <sip:b@example.com>\r\nCall-ID: x2\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        if let Verdict::Pass(once) = inspect_datagram(inv.as_bytes()) {
            assert!(!String::from_utf8_lossy(&once).contains("tag=2543"));
            match inspect_datagram(&once) {
                Verdict::Pass(again) => assert_eq!(again.as_ref(), once.as_ref()),
                other => panic!("a passed message must pass again: {other:?}"),
            }
        }
    }
}

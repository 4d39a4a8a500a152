//! `offload`: the checks and the webhook around handing the caller to a human agent. The
//! transfer itself goes through the call's forward machinery (REFER / bridge / auto).
//!
//! - [`parse_target`]: an E.164 number (then `transfer.allow` / `deny` apply) or a `sip:` URI
//!   whose host must be in `transfer.allow_uris`.
//! - [`context_headers`]: the flow's headers (`X-...` or `User-to-User`) checked, plus
//!   `X-Voxgate-Call-Id`, for the REFER's Refer-To (as URI headers) or the bridged INVITE.
//! - [`OffloadNotifier`]: the POST of transcript + context to `[offload] webhook_url`, before
//!   the transfer, so the agent's desktop has them when the call rings. A failed POST is logged
//!   and the transfer goes ahead: the caller reaching an agent matters more.

use std::time::Duration;

use serde_json::{json, Value};

use super::webhook::Webhook;
use super::InitError;
use crate::config::OffloadConfig;

/// Headers an offload may carry (besides `X-Voxgate-Call-Id`).
pub const MAX_HEADERS: usize = 20;
/// Longest header value.
pub const MAX_VALUE: usize = 256;

/// Where an offload goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A number, still to be checked against `transfer.allow` by the forward machinery.
    Number(String),
    /// A SIP URI whose host is allowed.
    Uri {
        uri: String,
        host: String,
        port: Option<u16>,
    },
}

/// Why an offload target or its headers were refused (before any SIP is sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("`{0}` is not a sip: URI")]
    BadUri(String),
    #[error("host `{0}` is not in transfer.allow_uris")]
    HostNotAllowed(String),
    #[error("header `{0}`: {1}")]
    BadHeader(String, String),
}

impl OffloadError {
    /// The `TransferFailed` reason code.
    pub fn code(&self) -> &'static str {
        match self {
            OffloadError::BadUri(_) => "invalid_target",
            OffloadError::HostNotAllowed(_) => "denied",
            OffloadError::BadHeader(..) => "invalid_header",
        }
    }
}

/// Splits `to` into a number or an allowed SIP URI.
pub fn parse_target(to: &str, allow_uris: &[String]) -> Result<Target, OffloadError> {
    let to = to.trim();
    let lower = to.to_ascii_lowercase();
    if !(lower.starts_with("sip:") || lower.starts_with("sips:")) {
        return Ok(Target::Number(to.to_string()));
    }
    let bad = || OffloadError::BadUri(to.chars().take(120).collect());
    if to.len() > 256
        || to
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | ','))
    {
        return Err(bad());
    }
    let rest = &to[to.find(':').ok_or_else(bad)? + 1..];
    // Drop URI headers (`?a=b`, ours are added later) and parameters (`;transport=tcp`).
    let rest = rest.split('?').next().unwrap_or(rest);
    let addr = rest.split(';').next().unwrap_or(rest);
    let hostport = match addr.rsplit_once('@') {
        Some((user, hp)) if !user.is_empty() => hp,
        Some(_) => return Err(bad()),
        None => addr,
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse::<u16>().map_err(|_| bad())?),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        (h.to_string(), port)
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.parse::<u16>().map_err(|_| bad())?)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
    {
        return Err(bad());
    }
    let allowed = allow_uris.iter().any(|a| {
        let a = a.trim().trim_start_matches('[').trim_end_matches(']');
        a.eq_ignore_ascii_case(&host)
    });
    if !allowed {
        return Err(OffloadError::HostNotAllowed(host));
    }
    let uri = to.split('?').next().unwrap_or(to).to_string();
    Ok(Target::Uri { uri, host, port })
}

fn token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b'!' | b'%' | b'*' | b'+' | b'`' | b'\'' | b'~'
                )
        })
}

/// Checks the flow's headers and puts `X-Voxgate-Call-Id` first. Names must be `X-...` tokens
/// or `User-to-User`; values at most [`MAX_VALUE`] characters of printable text.
pub fn context_headers(
    call_id: &str,
    headers: &[(String, String)],
) -> Result<Vec<(String, String)>, OffloadError> {
    if headers.len() > MAX_HEADERS {
        return Err(OffloadError::BadHeader(
            "*".into(),
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    let mut out = vec![("X-Voxgate-Call-Id".to_string(), call_id.to_string())];
    for (name, value) in headers {
        let n = name.trim();
        let is_x = n.len() > 2 && n[..2].eq_ignore_ascii_case("x-");
        let is_uui = n.eq_ignore_ascii_case("user-to-user");
        if !token(n) || !(is_x || is_uui) || n.eq_ignore_ascii_case("x-voxgate-call-id") {
            return Err(OffloadError::BadHeader(
                n.chars().take(64).collect(),
                "only X-... headers and User-to-User may be set".into(),
            ));
        }
        if value.chars().count() > MAX_VALUE || value.chars().any(|c| c.is_control()) {
            return Err(OffloadError::BadHeader(
                n.to_string(),
                format!("the value must be printable text of at most {MAX_VALUE} characters"),
            ));
        }
        out.push((n.to_string(), value.clone()));
    }
    Ok(out)
}

/// The `?name=value&...` URI headers of a Refer-To (RFC 3261 §19.1.1; escaped).
pub fn uri_headers(headers: &[(String, String)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'-' | b'_'
                            | b'.'
                            | b'!'
                            | b'~'
                            | b'*'
                            | b'\''
                            | b'('
                            | b')'
                            | b'['
                            | b']'
                            | b'/'
                            | b':'
                            | b'+'
                            | b'$'
                    )
                {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    headers
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The webhook POSTed before an offload.
pub struct OffloadNotifier {
    hook: Option<Webhook>,
    timeout: Duration,
}

impl OffloadNotifier {
    pub fn new(cfg: &OffloadConfig) -> Result<OffloadNotifier, InitError> {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let hook = match &cfg.webhook_url {
            Some(url) => {
                Some(Webhook::new(url, cfg.secret.clone(), timeout).map_err(InitError::Config)?)
            }
            None => None,
        };
        Ok(OffloadNotifier { hook, timeout })
    }

    pub fn enabled(&self) -> bool {
        self.hook.is_some()
    }

    /// The body: `{"type": "offload", "call_id", "from", "to", "target", "context", "transcript"}`.
    pub fn body(
        call_id: &str,
        from: &str,
        to: &str,
        target: &str,
        context: &Value,
        transcript: &Value,
    ) -> Value {
        json!({
            "type": "offload",
            "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "call_id": call_id,
            "from": from,
            "to": to,
            "target": target,
            "context": context,
            "transcript": transcript,
        })
    }

    /// POSTs (one attempt, within `[offload] timeout_ms`). `Ok(false)` when not configured.
    pub async fn notify(&self, body: &Value) -> Result<bool, String> {
        let Some(hook) = &self.hook else {
            return Ok(false);
        };
        let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let delivery = format!("dlv_{:016x}", rand::random::<u64>());
        match tokio::time::timeout(self.timeout, hook.post("offload", &delivery, &bytes)).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) => Err(e.message),
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow() -> Vec<String> {
        vec!["127.0.0.1".into(), "pbx.example.com".into(), "::1".into()]
    }

    #[test]
    fn targets() {
        assert_eq!(
            parse_target(" +3225551212 ", &allow()).unwrap(),
            Target::Number("+3225551212".into())
        );
        assert_eq!(
            parse_target("sip:agents@127.0.0.1:5080", &allow()).unwrap(),
            Target::Uri {
                uri: "sip:agents@127.0.0.1:5080".into(),
                host: "127.0.0.1".into(),
                port: Some(5080)
            }
        );
        assert_eq!(
            parse_target("sip:queue@PBX.example.com;transport=tcp?X-A=1", &allow()).unwrap(),
            Target::Uri {
                uri: "sip:queue@PBX.example.com;transport=tcp".into(),
                host: "PBX.example.com".into(),
                port: None
            }
        );
        assert!(matches!(
            parse_target("sip:a@[::1]:5060", &allow()).unwrap(),
            Target::Uri {
                port: Some(5060),
                ..
            }
        ));
        assert_eq!(
            parse_target("sip:agents@10.0.0.5", &allow()),
            Err(OffloadError::HostNotAllowed("10.0.0.5".into()))
        );
        assert_eq!(
            parse_target("sip:agents@127.0.0.1", &[])
                .unwrap_err()
                .code(),
            "denied"
        );
        for bad in [
            "sip:",
            "sip:@127.0.0.1",
            "sip:a b@127.0.0.1",
            "sip:a@127.0.0.1:99999",
            "sip:a@127.0.0.1>;x",
            "sip:a@127.0.0.1\r\nVia: x",
            "sip:a@exa_mple.com",
        ] {
            assert!(parse_target(bad, &allow()).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers() {
        let h = context_headers(
            "abc@host",
            &[
                ("X-Customer".into(), "Ann O'Brien".into()),
                (
                    "User-to-User".into(),
                    "56a390f3d2b7310023a2;encoding=hex".into(),
                ),
            ],
        )
        .unwrap();
        assert_eq!(h[0], ("X-Voxgate-Call-Id".into(), "abc@host".into()));
        assert_eq!(h.len(), 3);
        for (n, v) in [
            ("Via", "x"),
            ("X-Voxgate-Call-Id", "spoof"),
            ("X-A\r\nB", "x"),
            ("X-A", "a\r\nVia: evil"),
            ("X-", "x"),
        ] {
            assert!(
                context_headers("c", &[(n.into(), v.into())]).is_err(),
                "{n}"
            );
        }
        assert!(context_headers("c", &[("X-Big".into(), "v".repeat(MAX_VALUE + 1))]).is_err());
        assert_eq!(
            uri_headers(&[
                ("X-Voxgate-Call-Id".into(), "a b@c".into()),
                ("X-N".into(), "1&2=3".into())
            ]),
            "X-Voxgate-Call-Id=a%20b%40c&X-N=1%262%3D3"
        );
    }
}

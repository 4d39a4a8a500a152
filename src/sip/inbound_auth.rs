//! Digest challenge of inbound INVITEs, per trunk (`challenge_inbound = true`): an INVITE
//! for a trunk (its Request-URI user is the trunk's `username`, the Contact user voxgate
//! registers, or it comes from the registrar's own address, IP and port) must carry digest
//! credentials for that trunk, or it is answered 401 with a fresh challenge. Wrong
//! credentials get 403.
//!
//! Nonces are stateless: `<unix seconds hex>.<HMAC-SHA256(secret, that)>`, valid for
//! [`NONCE_TTL_S`]; an expired nonce with otherwise right credentials gets a new challenge
//! with `stale=true` (RFC 2617 §3.2.1), so a client retries without asking its user.

use super::server::user_of;
use crate::config::TrunkConfig;
use hmac::{Hmac, Mac};
use rsipstack::dialog::authenticate::verify_digest;
use rsipstack::sip::headers::auth::{Algorithm, Scheme};
use rsipstack::sip::typed::Authorization;
use rsipstack::sip::Method;
use sha2::Sha256;
use std::net::SocketAddr;

/// How long a nonce stays valid.
pub const NONCE_TTL_S: u64 = 300;
/// The realm of our challenges.
pub const REALM: &str = "voxgate";

/// Decides, before anything else, whether an INVITE may go on. Only strings cross this
/// seam, so the SIP server stays free of trunk details.
pub trait InviteAuth: Send + Sync + std::fmt::Debug {
    /// `None` lets the INVITE through; `Some((status, headers))` answers it instead.
    fn check(
        &self,
        request_uri: &str,
        authorization: Option<&str>,
        source: Option<SocketAddr>,
    ) -> Option<(u16, Vec<(String, String)>)>;
}

struct Guarded {
    name: String,
    user: String,
    auth_user: String,
    password: String,
    /// The registrar's address when it is a literal IP (calls from it are the trunk's).
    registrar: Option<SocketAddr>,
}

/// The trunks whose inbound INVITEs are challenged.
pub struct TrunkChallenge {
    secret: [u8; 32],
    trunks: Vec<Guarded>,
}

impl std::fmt::Debug for TrunkChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrunkChallenge")
            .field(
                "trunks",
                &self.trunks.iter().map(|t| &t.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Verdict of [`TrunkChallenge::verdict`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not for a challenged trunk, or authenticated.
    Pass,
    /// 401 with this `WWW-Authenticate` value.
    Challenge(String),
    /// 403: credentials present but wrong.
    Forbidden,
}

impl TrunkChallenge {
    /// `None` when no trunk asks for inbound challenges. Passwords must resolve (the config
    /// was validated).
    pub fn from_config(trunks: &[TrunkConfig]) -> Option<TrunkChallenge> {
        let guarded: Vec<Guarded> = trunks
            .iter()
            .filter(|t| t.challenge_inbound)
            .filter_map(|t| {
                let password = t.resolve_password().ok()?;
                let registrar = crate::config::parse_registrar_addr(&t.registrar);
                Some(Guarded {
                    name: t.name.clone(),
                    user: t.username.clone(),
                    auth_user: t
                        .auth_username
                        .clone()
                        .filter(|u| !u.is_empty())
                        .unwrap_or_else(|| t.username.clone()),
                    password,
                    registrar,
                })
            })
            .collect();
        if guarded.is_empty() {
            return None;
        }
        let mut secret = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut secret);
        Some(TrunkChallenge {
            secret,
            trunks: guarded,
        })
    }

    fn mac(&self, stamp: &str) -> String {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.secret) {
            Ok(m) => m,
            // HMAC takes keys of any length; this arm cannot be reached.
            Err(_) => return String::new(),
        };
        mac.update(stamp.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    fn nonce(&self, now_s: u64) -> String {
        let stamp = format!("{now_s:x}");
        format!("{stamp}.{}", self.mac(&stamp))
    }

    /// `Some(fresh)` when the nonce is one of ours; `fresh` false once it is too old.
    fn nonce_state(&self, nonce: &str, now_s: u64) -> Option<bool> {
        let (stamp, mac) = nonce.split_once('.')?;
        let expected = self.mac(stamp);
        if expected.is_empty() || !constant_time_eq(expected.as_bytes(), mac.as_bytes()) {
            return None;
        }
        let issued = u64::from_str_radix(stamp, 16).ok()?;
        Some(issued <= now_s && now_s - issued <= NONCE_TTL_S)
    }

    fn challenge(&self, now_s: u64, stale: bool) -> String {
        format!(
            "Digest realm=\"{REALM}\", nonce=\"{}\", algorithm=MD5, qop=\"auth\"{}",
            self.nonce(now_s),
            if stale { ", stale=true" } else { "" }
        )
    }

    /// The decision for one INVITE at `now_s` (unix seconds).
    pub fn verdict(
        &self,
        request_uri: &str,
        authorization: Option<&str>,
        source: Option<SocketAddr>,
        now_s: u64,
    ) -> (Verdict, Option<&str>) {
        let user = user_of(request_uri);
        let Some(trunk) = self
            .trunks
            .iter()
            .find(|t| t.user == user || (t.registrar.is_some() && t.registrar == source))
        else {
            return (Verdict::Pass, None);
        };
        let name = Some(trunk.name.as_str());
        let Some(raw) = authorization else {
            return (Verdict::Challenge(self.challenge(now_s, false)), name);
        };
        let Ok(auth) = Authorization::parse(raw) else {
            return (Verdict::Challenge(self.challenge(now_s, false)), name);
        };
        let md5 = matches!(auth.algorithm, None | Some(Algorithm::Md5));
        if auth.scheme != Scheme::Digest || !md5 || auth.realm != REALM {
            return (Verdict::Challenge(self.challenge(now_s, false)), name);
        }
        let Some(fresh) = self.nonce_state(&auth.nonce, now_s) else {
            return (Verdict::Challenge(self.challenge(now_s, false)), name);
        };
        let right = auth.username == trunk.auth_user
            && verify_digest(&auth, &trunk.password, &Method::Invite, raw);
        match (right, fresh) {
            (true, true) => (Verdict::Pass, name),
            (true, false) => (Verdict::Challenge(self.challenge(now_s, true)), name),
            (false, _) => (Verdict::Forbidden, name),
        }
    }
}

impl InviteAuth for TrunkChallenge {
    fn check(
        &self,
        request_uri: &str,
        authorization: Option<&str>,
        source: Option<SocketAddr>,
    ) -> Option<(u16, Vec<(String, String)>)> {
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (verdict, trunk) = self.verdict(request_uri, authorization, source, now_s);
        let trunk = trunk.unwrap_or("").to_string();
        let (result, reply) = match verdict {
            Verdict::Pass if trunk.is_empty() => return None,
            Verdict::Pass => ("accepted", None),
            Verdict::Challenge(h) => (
                "challenged",
                Some((401, vec![("WWW-Authenticate".to_string(), h)])),
            ),
            Verdict::Forbidden => ("rejected", Some((403, Vec::new()))),
        };
        metrics::counter!("voxgate_invite_auth_total", "trunk" => trunk.clone(), "result" => result)
            .increment(1);
        tracing::info!(%trunk, result, "inbound INVITE digest check");
        reply
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsipstack::dialog::authenticate::compute_digest;
    use rsipstack::sip::headers::auth::AuthQop;

    fn challenge() -> TrunkChallenge {
        let (c, _) = crate::config::Config::from_toml(
            "[[trunks]]\nname = \"pbx\"\nregistrar = \"sip:10.0.0.5:5060\"\nusername = \"vg\"\npassword = \"pw\"\nchallenge_inbound = true\n\
             [[trunks]]\nname = \"open\"\nregistrar = \"sip:10.0.0.6:5060\"\nusername = \"other\"\npassword = \"x\"\n",
            "t.toml",
        )
        .unwrap();
        TrunkChallenge::from_config(&c.trunks).unwrap()
    }

    fn nonce_of(h: &str) -> String {
        h.split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_string()
    }

    fn authorization(user: &str, password: &str, nonce: &str, uri: &str) -> String {
        let qop = AuthQop::Auth {
            cnonce: "abc".into(),
            nc: 1,
        };
        let response = compute_digest(
            user,
            password,
            REALM,
            nonce,
            &Method::Invite,
            uri,
            Algorithm::Md5,
            Some(&qop),
        );
        format!(
            "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"abc\""
        )
    }

    #[test]
    fn no_trunk_asks_no_challenge() {
        let (c, _) = crate::config::Config::from_toml("", "t.toml").unwrap();
        assert!(TrunkChallenge::from_config(&c.trunks).is_none());
    }

    #[test]
    fn other_invites_pass_untouched() {
        let c = challenge();
        let (v, t) = c.verdict("sip:bot@127.0.0.1", None, None, 1000);
        assert_eq!((v, t), (Verdict::Pass, None));
        // The unguarded trunk's user is not challenged either.
        let (v, _) = c.verdict("sip:other@127.0.0.1", None, None, 1000);
        assert_eq!(v, Verdict::Pass);
    }

    #[test]
    fn challenge_then_right_credentials_pass() {
        let c = challenge();
        let uri = "sip:vg@127.0.0.1:5060";
        let (v, t) = c.verdict(uri, None, None, 1000);
        assert_eq!(t, Some("pbx"));
        let Verdict::Challenge(h) = v else {
            panic!("{v:?}")
        };
        assert!(
            h.contains("realm=\"voxgate\"") && h.contains("qop=\"auth\""),
            "{h}"
        );
        let nonce = nonce_of(&h);
        let auth = authorization("vg", "pw", &nonce, uri);
        assert_eq!(c.verdict(uri, Some(&auth), None, 1010).0, Verdict::Pass);
        // The registrar's address is matched too, whatever the Request-URI user; the same IP
        // on another port is someone else.
        let (v, _) = c.verdict("sip:bot@x", None, "10.0.0.5:5060".parse().ok(), 1000);
        assert!(matches!(v, Verdict::Challenge(_)));
        let (v, _) = c.verdict("sip:bot@x", None, "10.0.0.5:5062".parse().ok(), 1000);
        assert_eq!(v, Verdict::Pass);
    }

    #[test]
    fn wrong_password_is_forbidden_and_forged_nonce_rechallenged() {
        let c = challenge();
        let uri = "sip:vg@127.0.0.1:5060";
        let nonce = c.nonce(1000);
        let auth = authorization("vg", "nope", &nonce, uri);
        assert_eq!(
            c.verdict(uri, Some(&auth), None, 1001).0,
            Verdict::Forbidden
        );
        let auth = authorization("intruder", "pw", &nonce, uri);
        assert_eq!(
            c.verdict(uri, Some(&auth), None, 1001).0,
            Verdict::Forbidden
        );
        let forged = authorization("vg", "pw", "3e8.00000000000000000000000000000000", uri);
        assert!(matches!(
            c.verdict(uri, Some(&forged), None, 1001).0,
            Verdict::Challenge(_)
        ));
        assert!(matches!(
            c.verdict(uri, Some("Basic Zm9vOmJhcg=="), None, 1001).0,
            Verdict::Challenge(_)
        ));
    }

    #[test]
    fn expired_nonce_gets_a_stale_challenge() {
        let c = challenge();
        let uri = "sip:vg@127.0.0.1:5060";
        let nonce = c.nonce(1000);
        let auth = authorization("vg", "pw", &nonce, uri);
        let (v, _) = c.verdict(uri, Some(&auth), None, 1000 + NONCE_TTL_S + 1);
        let Verdict::Challenge(h) = v else {
            panic!("{v:?}")
        };
        assert!(h.contains("stale=true"), "{h}");
    }
}

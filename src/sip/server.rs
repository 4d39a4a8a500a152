//! The facade over rsipstack: one listening endpoint (UDP + TCP on the same address), the
//! dialog layer, and a translation of the stack's dialog states into [`LegEvent`]s. No
//! rsipstack type crosses this module's public API.

use super::access::{AccessConfig, AccessControl, Decision, LogLimiter, Unconfirmed};
use super::guard::ALLOW;
use super::tcp::TcpLimits;
use super::transport::GuardedUdp;
use rsipstack::dialog::dialog::{DialogState, TerminatedReason, TransactionHandle};
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::dialog::DialogId;
use rsipstack::sip::{Header, Method, StatusCode};
use rsipstack::transaction::endpoint::EndpointOption;
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transport::udp::UdpConnection;
use rsipstack::transport::TransportLayer;
use rsipstack::EndpointBuilder;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

/// Errors at the SIP boundary.
#[derive(Debug, thiserror::Error)]
pub enum SipError {
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("SIP stack error: {0}")]
    Stack(String),
    #[error("the dialog is gone")]
    DialogGone,
}

impl From<rsipstack::Error> for SipError {
    fn from(e: rsipstack::Error) -> Self {
        SipError::Stack(e.to_string())
    }
}

/// Listener settings.
#[derive(Debug, Clone)]
pub struct SipServerConfig {
    pub listen: SocketAddr,
    /// Advertised in Contact instead of the listen address (NAT).
    pub external_ip: Option<IpAddr>,
    pub t1: Duration,
    pub user_agent: String,
    /// Access control and TCP limits.
    pub limits: SipLimits,
    /// Digest challenge of inbound INVITEs (trunks with `challenge_inbound`); see
    /// `sip/inbound_auth.rs`.
    pub invite_auth: Option<Arc<dyn super::inbound_auth::InviteAuth>>,
}

/// Who may call and how much (docs/security.md): access control for new INVITEs and the
/// limits of the TCP listener.
#[derive(Debug, Clone, Default)]
pub struct SipLimits {
    pub access: AccessConfig,
    pub tcp: TcpLimits,
}

impl SipLimits {
    /// The `[sip]` access and limit keys.
    pub fn from_config(
        config: &crate::config::SipConfig,
        validated: &crate::config::Validated,
    ) -> SipLimits {
        SipLimits {
            access: AccessConfig {
                trusted: validated.trusted.clone(),
                rate_per_source: config.invite_rate_per_source,
                burst_per_source: config.invite_burst_per_source,
                max_unconfirmed_per_source: config.max_unconfirmed_per_source,
                max_unconfirmed: config.max_unconfirmed,
                scanner_user_agents: config.scanner_user_agents.clone(),
            },
            tcp: TcpLimits {
                header_timeout: Duration::from_secs(config.tcp_header_timeout_s),
                idle_timeout: Duration::from_secs(config.tcp_idle_timeout_s),
                max_per_source: config.tcp_max_connections_per_source,
                max_total: config.tcp_max_connections,
            },
        }
    }
}

/// Decides whether a new INVITE may become a call: reserves its slot at once (so INVITEs that
/// arrive together cannot all pass a check the first of them has not yet filled), or returns
/// the refusal (status, Retry-After seconds): over capacity, or shutting down.
pub trait Admission: Send + Sync {
    fn admit(&self) -> Result<Reservation, (u16, u32)>;
    /// True once the node is draining (graceful shutdown): OPTIONS are answered 503 so a load
    /// balancer in front (Kamailio's dispatcher) stops sending new calls at once.
    fn draining(&self) -> bool {
        false
    }
}

/// A reserved call slot, held for the whole call; released when dropped.
pub struct Reservation(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Reservation {
    pub fn new(release: impl FnOnce() + Send + Sync + 'static) -> Reservation {
        Reservation(Some(Box::new(release)))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(release) = self.0.take() {
            release();
        }
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reservation")
    }
}

/// The INVITE as the rest of voxgate sees it.
#[derive(Debug, Clone, Default)]
pub struct InviteInfo {
    pub call_id: String,
    pub from_uri: String,
    pub from_user: String,
    pub to_uri: String,
    pub to_user: String,
    pub request_uri: String,
    /// Lower-case header name -> value (first occurrence), for the flow's session.start.
    pub headers: BTreeMap<String, String>,
    /// The SDP offer, if the INVITE carried one.
    pub sdp: Option<String>,
    pub source: Option<SocketAddr>,
    pub transport: &'static str,
}

/// A new call: its leg, what the INVITE said, and the stream of what happens to it next.
pub struct IncomingCall {
    pub leg: CallLeg,
    pub info: InviteInfo,
    pub events: mpsc::UnboundedReceiver<LegEvent>,
    /// The call's slot under `max_calls`; keep it until the call ends.
    pub slot: Reservation,
}

/// Why a leg ended, as far as SIP is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegEnd {
    /// The remote side sent BYE.
    RemoteBye,
    /// The caller cancelled before answer.
    Cancelled,
    /// We sent BYE (or rejected).
    LocalHangup,
    /// No ACK for our 2xx (Timer H / 64*T1), or another transaction timeout.
    Timeout,
    Other(String),
}

/// Something that happened on an established or establishing leg.
#[derive(Debug)]
pub enum LegEvent {
    /// The ACK for our 2xx arrived; `sdp` is its body when the INVITE had no offer.
    Confirmed { ack_sdp: Option<String> },
    /// INFO inside the dialog (DTMF relay). Must be answered.
    Info {
        content_type: String,
        body: Vec<u8>,
        reply: Responder,
    },
    /// re-INVITE or UPDATE (hold, unhold, new media address). Must be answered.
    Offer {
        sdp: Option<String>,
        reply: Responder,
    },
    /// NOTIFY inside the dialog (REFER progress). Must be answered.
    Notify {
        event: String,
        content_type: String,
        body: Vec<u8>,
        reply: Responder,
    },
    /// A provisional response on a leg we called (180/183, with early-media SDP if any).
    Progress { status: u16, sdp: Option<String> },
    /// 200 OK on a leg we called (already ACKed by the stack).
    Answered { sdp: Option<String> },
    /// A final failure on a leg we called (0: it could not be sent or timed out locally).
    Rejected { status: u16 },
    /// The dialog is over.
    Terminated(LegEnd),
}

/// An INVITE voxgate sends (the bridged leg of a forward).
#[derive(Debug, Clone)]
pub struct OutgoingInvite {
    /// Request-URI and To, e.g. `sip:+3225551212@127.0.0.1:5080`.
    pub target: String,
    /// From URI.
    pub from: String,
    pub from_display: Option<String>,
    pub sdp: String,
    /// Extra headers (Diversion, ...).
    pub headers: Vec<(String, String)>,
    /// Digest credentials for 401/407 challenges: (username, password).
    pub credential: Option<(String, String)>,
}

/// Answers one in-dialog request. Dropping it unanswered makes the stack send 501.
#[derive(Debug)]
pub struct Responder {
    inner: ResponderInner,
}

/// A response for a request voxgate answers itself, and who to tell once it is sent.
type DirectReply = (
    u16,
    Vec<(String, String)>,
    Option<Vec<u8>>,
    tokio::sync::oneshot::Sender<()>,
);

/// How long `respond` waits for a direct response to leave (it normally takes microseconds).
const DIRECT_SEND_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug)]
enum ResponderInner {
    /// A request the stack handed to the dialog.
    Stack(TransactionHandle),
    /// A request voxgate answers itself (INFO: before the ACK the stack ignores it, and
    /// after it the stack answers asynchronously, so a REFER could overtake the 200).
    Direct(Mutex<Option<tokio::sync::oneshot::Sender<DirectReply>>>),
}

impl Responder {
    /// Sends a final (or provisional) response with extra headers and an optional body. For
    /// INFO, returns once the response is on the wire, so what the caller does next (a REFER)
    /// goes out after it (responses in the order the requests came).
    pub async fn respond(
        &self,
        status: u16,
        headers: Vec<(String, String)>,
        body: Option<Vec<u8>>,
    ) -> Result<(), SipError> {
        match &self.inner {
            ResponderInner::Stack(handle) => {
                let headers: Vec<Header> = headers
                    .into_iter()
                    .map(|(n, v)| Header::Other(n, v))
                    .collect();
                handle
                    .respond(StatusCode::from(status), Some(headers), body)
                    .await
                    .map_err(|e| SipError::Stack(e.to_string()))
            }
            ResponderInner::Direct(slot) => {
                let tx = slot
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .ok_or_else(|| SipError::Stack("already answered".into()))?;
                let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
                tx.send((status, headers, body, sent_tx))
                    .map_err(|_| SipError::Stack("the transaction is gone".into()))?;
                match tokio::time::timeout(DIRECT_SEND_WAIT, sent_rx).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(SipError::Stack("the response could not be sent".into())),
                    Err(_) => Err(SipError::Stack("the response is still not sent".into())),
                }
            }
        }
    }

    fn stack(handle: TransactionHandle) -> Responder {
        Responder {
            inner: ResponderInner::Stack(handle),
        }
    }
}

/// One SIP dialog that voxgate is party to (the caller's, for now).
#[derive(Clone)]
pub struct CallLeg {
    dialog: InviteDialog,
}

impl CallLeg {
    /// 180 Ringing.
    pub fn ring(&self) -> Result<(), SipError> {
        Ok(self.dialog.ringing(None, None)?)
    }

    /// 200 OK with our SDP (answer, or offer when the INVITE had none).
    pub fn answer(&self, sdp: &str) -> Result<(), SipError> {
        let headers = vec![
            Header::ContentType("application/sdp".into()),
            Header::Other("Allow".into(), ALLOW.into()),
            Header::Other("Supported".into(), "replaces, norefersub".into()),
        ];
        Ok(self
            .dialog
            .accept(Some(headers), Some(sdp.as_bytes().to_vec()))?)
    }

    /// A final non-2xx response to the INVITE.
    pub fn reject(&self, status: u16, reason: Option<String>) -> Result<(), SipError> {
        Ok(self.dialog.reject(Some(StatusCode::from(status)), reason)?)
    }

    /// BYE (confirmed dialog) — waits for the BYE transaction to finish.
    pub async fn bye(&self) -> Result<(), SipError> {
        Ok(self.dialog.bye().await?)
    }

    /// REFER inside the dialog. Returns the final status of the REFER transaction.
    pub async fn refer(&self, refer_to: &str, referred_by: &str) -> Result<u16, SipError> {
        let headers = vec![
            Header::Other("Refer-To".into(), refer_to.into()),
            Header::Other("Referred-By".into(), referred_by.into()),
        ];
        let resp = self
            .dialog
            .request(Method::Refer, Some(headers), None)
            .await?;
        Ok(resp.map(|r| u16::from(r.status_code)).unwrap_or(408))
    }

    /// re-INVITE with a new SDP (used when the media changes under us, e.g. a bridge).
    pub async fn reinvite(&self, sdp: &str) -> Result<u16, SipError> {
        let headers = vec![Header::ContentType("application/sdp".into())];
        let resp = self
            .dialog
            .reinvite(Some(headers), Some(sdp.as_bytes().to_vec()))
            .await?;
        Ok(resp.map(|r| u16::from(r.status_code)).unwrap_or(408))
    }

    /// CANCEL an outgoing INVITE that has not been answered.
    pub async fn cancel(&self) -> Result<(), SipError> {
        Ok(self.dialog.cancel().await?)
    }

    pub fn call_id(&self) -> String {
        self.dialog.id().call_id.clone()
    }

    /// Our own URI as it appears in the dialog (used for Referred-By).
    pub fn local_uri(&self) -> String {
        self.dialog
            .initial_request()
            .headers
            .iter()
            .find_map(|h| match h {
                Header::To(to) => Some(uri_of(to.value())),
                _ => None,
            })
            .unwrap_or_default()
    }
}

/// The running SIP side of the gateway.
pub struct SipServer {
    token: CancellationToken,
    dialog_layer: Arc<DialogLayer>,
    local_addr: SocketAddr,
    contact_host: SocketAddr,
}

/// The event streams of the calls voxgate answered, by dialog id, for in-dialog requests
/// that arrive before the ACK (the stack ignores them in that state).
type LegSenders = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<LegEvent>>>>;

impl SipServer {
    /// Binds UDP and TCP on `config.listen`, starts the stack and returns the stream of new
    /// calls. Requests that are not new calls are answered here.
    pub async fn start(
        config: SipServerConfig,
        admission: Arc<dyn Admission>,
    ) -> Result<(Arc<SipServer>, mpsc::Receiver<IncomingCall>), SipError> {
        let token = CancellationToken::new();
        let bind_err = |reason: String| SipError::Bind {
            addr: config.listen,
            reason,
        };
        let udp = tokio::net::UdpSocket::bind(config.listen)
            .await
            .map_err(|e| bind_err(format!("UDP: {e}")))?;
        let local_addr = udp.local_addr().map_err(|e| bind_err(e.to_string()))?;
        let tcp_addr = local_addr;
        let external = config
            .external_ip
            .map(|ip| SocketAddr::new(ip, local_addr.port()));

        let transport_layer = TransportLayer::new(token.clone());
        let udp_conn = UdpConnection::from_socket(
            Arc::new(GuardedUdp::new(udp)),
            external,
            Some(token.child_token()),
        )
        .await?;
        transport_layer.add_transport(udp_conn.into());
        // voxgate reads TCP itself (deadlines, caps): see `tcp`.
        let tcp_listener = super::tcp::bind(tcp_addr).map_err(|e| bind_err(format!("TCP: {e}")))?;
        let limits = config.limits.clone();

        let option = EndpointOption {
            t1: config.t1,
            t1x64: config.t1 * 64,
            ..Default::default()
        };
        let endpoint = EndpointBuilder::new()
            .with_cancel_token(token.clone())
            .with_transport_layer(transport_layer)
            .with_user_agent(&config.user_agent)
            .with_option(option)
            .with_allows(vec![
                Method::Invite,
                Method::Ack,
                Method::Cancel,
                Method::Bye,
                Method::Options,
                Method::Info,
                Method::Refer,
                Method::Notify,
                Method::Update,
            ])
            .build();
        let incoming = endpoint.incoming_transactions()?;
        tokio::spawn(super::tcp::serve(
            tcp_listener,
            endpoint.inner.clone(),
            limits.tcp.clone(),
            token.child_token(),
        ));
        let dialog_layer = Arc::new(DialogLayer::new(endpoint.inner.clone()));
        let endpoint = Arc::new(endpoint);
        {
            let endpoint = endpoint.clone();
            tokio::spawn(async move { endpoint.serve().await });
        }
        let contact_host = external.unwrap_or(local_addr);
        let (calls_tx, calls_rx) = mpsc::channel(256);
        let server = Arc::new(SipServer {
            token: token.clone(),
            dialog_layer: dialog_layer.clone(),
            local_addr,
            contact_host,
        });
        match &limits.access.trusted {
            None => warn!(
                "[sip] trusted is not set: INVITEs from any source address are accepted; \
                 list your trunk's networks there (docs/security.md)"
            ),
            Some(nets) => info!(
                trusted = %nets.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","),
                "INVITEs accepted only from trusted networks"
            ),
        }
        tokio::spawn(
            dispatch(
                Dispatch {
                    dialog_layer,
                    admission,
                    access: AccessControl::new(limits.access.clone()),
                    refusal_log: LogLimiter::default(),
                    calls: calls_tx,
                    contact_host,
                    legs: LegSenders::default(),
                    t1: config.t1,
                },
                incoming,
                token,
                config.invite_auth.clone(),
            )
            .instrument(info_span!("sip")),
        );
        info!(%local_addr, "SIP listening on UDP and TCP");
        Ok((server, calls_rx))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sends an INVITE and returns the leg plus its events: `Progress`*, then `Answered` or
    /// `Rejected`, then (if answered) the usual in-dialog events and `Terminated`.
    pub fn invite(
        &self,
        req: OutgoingInvite,
    ) -> Result<(CallLeg, mpsc::UnboundedReceiver<LegEvent>), SipError> {
        let uri = |s: &str| {
            rsipstack::sip::Uri::try_from(s)
                .map_err(|e| SipError::Stack(format!("bad URI `{s}`: {e}")))
        };
        let callee = uri(&req.target)?;
        let caller = uri(&req.from)?;
        let contact = uri(&format!("sip:voxgate@{}", self.contact_host))?;
        let headers: Vec<Header> = req
            .headers
            .into_iter()
            .map(|(n, v)| Header::Other(n, v))
            .collect();
        let opt = rsipstack::dialog::invitation::InviteOption {
            caller_display_name: req.from_display,
            caller,
            callee,
            contact,
            content_type: Some("application/sdp".into()),
            offer: Some(req.sdp.into_bytes()),
            headers: Some(headers),
            // Our own Call-ID (not the SIP library's default domain).
            call_id: Some(format!(
                "{:016x}{:016x}@{}",
                rand::random::<u64>(),
                rand::random::<u64>(),
                self.contact_host.ip()
            )),
            credential: req.credential.map(|(username, password)| {
                rsipstack::dialog::authenticate::Credential {
                    username,
                    password,
                    ..Default::default()
                }
            }),
            ..Default::default()
        };
        let (state_tx, state_rx) = self.dialog_layer.new_dialog_state_channel();
        let (dialog, outcome) = self.dialog_layer.do_invite_async(opt, state_tx)?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let span = info_span!("leg", call_id = %dialog.id().call_id);
        {
            let events_tx = events_tx.clone();
            tokio::spawn(
                async move {
                    let event = match outcome.await {
                        Ok(Ok((_, Some(resp)))) => {
                            let status = u16::from(resp.status_code.clone());
                            info!(status, "outgoing INVITE final response");
                            if (200..300).contains(&status) {
                                LegEvent::Answered {
                                    sdp: (!resp.body.is_empty())
                                        .then(|| String::from_utf8_lossy(&resp.body).into_owned()),
                                }
                            } else {
                                LegEvent::Rejected { status }
                            }
                        }
                        Ok(Ok((_, None))) => LegEvent::Rejected { status: 408 },
                        Ok(Err(e)) => {
                            warn!(error = %e, "outgoing INVITE failed");
                            LegEvent::Rejected { status: 0 }
                        }
                        Err(e) => {
                            warn!(error = %e, "outgoing INVITE task failed");
                            LegEvent::Rejected { status: 0 }
                        }
                    };
                    events_tx.send(event).ok();
                }
                .instrument(span.clone()),
            );
        }
        tokio::spawn(
            translate_states(
                dialog.clone(),
                self.dialog_layer.clone(),
                state_rx,
                events_tx,
                None,
            )
            .instrument(span),
        );
        Ok((CallLeg { dialog }, events_rx))
    }

    pub fn active_dialogs(&self) -> usize {
        self.dialog_layer.len()
    }

    /// Stops the stack (sockets close; transactions end).
    pub fn shutdown(&self) {
        self.token.cancel();
    }
}

/// What the dispatcher of new server transactions needs.
struct Dispatch {
    dialog_layer: Arc<DialogLayer>,
    admission: Arc<dyn Admission>,
    access: AccessControl,
    refusal_log: LogLimiter,
    calls: mpsc::Sender<IncomingCall>,
    contact_host: SocketAddr,
    legs: LegSenders,
    /// T1: how long an INVITE transaction may outlive its dialog (below).
    t1: Duration,
}

/// Routes every new server transaction.
async fn dispatch(
    d: Dispatch,
    mut incoming: rsipstack::transaction::TransactionReceiver,
    token: CancellationToken,
    invite_auth: Option<Arc<dyn super::inbound_auth::InviteAuth>>,
) {
    loop {
        let mut tx = tokio::select! {
            _ = token.cancelled() => return,
            tx = incoming.recv() => match tx { Some(tx) => tx, None => return },
        };
        let has_to_tag = tx.original.headers.iter().any(
            |h| matches!(h, Header::To(to) if to.value().to_ascii_lowercase().contains(";tag=")),
        );
        let method = tx.original.method;
        if has_to_tag {
            in_dialog(&d, tx);
            continue;
        }
        let source = source_of(&tx);
        let user_agent = header_value(&tx.original.headers, "user-agent").unwrap_or_default();
        match method {
            Method::Invite => {
                let unconfirmed = match d.access.check_invite(
                    source.map(|s| s.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0])),
                    &user_agent,
                    Instant::now(),
                ) {
                    Decision::Admit(u) => u,
                    Decision::Refuse {
                        status,
                        retry_after,
                        reason,
                    } => {
                        d.refused(&tx, source, status, reason);
                        tokio::spawn(async move {
                            let headers = retry_after
                                .map(|s| vec![Header::Other("Retry-After".into(), s.to_string())])
                                .unwrap_or_default();
                            tx.reply_with(StatusCode::from(status), headers, None)
                                .await
                                .ok();
                        });
                        continue;
                    }
                    Decision::Ignore { reason } => {
                        d.refused(&tx, source, 0, reason);
                        continue;
                    }
                };
                if let Some((status, headers)) = invite_auth
                    .as_ref()
                    .and_then(|a| inbound_check(a.as_ref(), &tx))
                {
                    info!(call_id = %call_id_of(&tx), status, "INVITE challenged (trunk digest auth)");
                    tokio::spawn(async move {
                        let headers = headers
                            .into_iter()
                            .map(|(n, v)| Header::Other(n, v))
                            .collect();
                        tx.reply_with(StatusCode::from(status), headers, None)
                            .await
                            .ok();
                    });
                    continue;
                }
                let slot = match d.admission.admit() {
                    Ok(slot) => slot,
                    Err((status, retry_after)) => {
                        info!(call_id = %call_id_of(&tx), status, "INVITE refused");
                        tokio::spawn(async move {
                            let headers =
                                vec![Header::Other("Retry-After".into(), retry_after.to_string())];
                            tx.reply_with(StatusCode::from(status), headers, None)
                                .await
                                .ok();
                        });
                        continue;
                    }
                };
                if let Err(e) = new_call(&d, tx, source, unconfirmed, slot).await {
                    warn!(error = %e, "could not set up a call for an INVITE");
                }
            }
            Method::Options => {
                if d.access.is_scanner(&user_agent) {
                    d.refused(&tx, source, 0, "scanner");
                    continue;
                }
                let status = if d.admission.draining() {
                    StatusCode::ServiceUnavailable
                } else {
                    StatusCode::OK
                };
                tokio::spawn(async move {
                    let headers = vec![
                        Header::Other("Allow".into(), ALLOW.into()),
                        Header::Other("Accept".into(), "application/sdp".into()),
                        Header::Other("Supported".into(), "replaces, norefersub".into()),
                    ];
                    tx.reply_with(status, headers, None).await.ok();
                });
            }
            Method::Ack => {}
            Method::Bye | Method::Info | Method::Notify | Method::Update | Method::PRack => {
                tokio::spawn(async move {
                    tx.reply(StatusCode::CallTransactionDoesNotExist).await.ok();
                });
            }
            _ => {
                // REGISTER, SUBSCRIBE, MESSAGE, PUBLISH, REFER outside a dialog: not ours.
                tokio::spawn(async move {
                    let headers = vec![Header::Other("Allow".into(), ALLOW.into())];
                    tx.reply_with(StatusCode::MethodNotAllowed, headers, None)
                        .await
                        .ok();
                });
            }
        }
    }
}

impl Dispatch {
    /// Counts a refused (or ignored, `status` 0) request; logs at most once a minute per source.
    fn refused(&self, tx: &Transaction, source: Option<SocketAddr>, status: u16, why: &str) {
        metrics::counter!("voxgate_sip_refused_total", "reason" => why.to_string()).increment(1);
        let ip = source.map(|s| s.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
        if let Some(suppressed) =
            self.refusal_log
                .allow(ip, Instant::now(), Duration::from_secs(60))
        {
            warn!(
                source = ?source,
                method = %tx.original.method,
                call_id = %call_id_of(tx),
                status,
                reason = why,
                suppressed,
                "SIP request refused"
            );
        }
    }
}

/// A request with a To tag: to its dialog, or 481.
fn in_dialog(d: &Dispatch, mut tx: Transaction) {
    let method = tx.original.method;
    match d.dialog_layer.match_dialog(&tx) {
        Some(rsipstack::dialog::dialog::Dialog::Invite(mut dialog)) => {
            // The stack ignores requests other than ACK/BYE/PRACK while it waits for the ACK
            // of its 2xx; an INFO there (a digit typed right after answer) must still be
            // answered and acted on (RFC 6086 §4.2).
            // After the ACK, INFO is taken here too: the stack's answer is asynchronous and
            // a REFER triggered by the digit could leave before it.
            let waiting_ack = matches!(dialog.state(), DialogState::WaitAck(..));
            if method == Method::Info {
                let sender = d
                    .legs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&dialog.id().to_string())
                    .cloned();
                if let Some(events) = sender {
                    info_to_call(tx, events, waiting_ack);
                    return;
                }
            }
            tokio::spawn(async move {
                if let Err(e) = dialog.handle(&mut tx).await {
                    debug!(error = %e, "in-dialog request ended with an error");
                }
            });
        }
        _ => {
            if method != Method::Ack {
                info!(%method, call_id = %call_id_of(&tx), "481: no such dialog");
                tokio::spawn(async move {
                    tx.reply(StatusCode::CallTransactionDoesNotExist).await.ok();
                });
            }
        }
    }
}

/// Hands an INFO to the call, and answers it with what the call says (501 when the call drops
/// the responder); the call learns when the answer has been sent.
fn info_to_call(mut tx: Transaction, events: mpsc::UnboundedSender<LegEvent>, before_ack: bool) {
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel::<DirectReply>();
    let req = &tx.original;
    let event = LegEvent::Info {
        content_type: header_value(&req.headers, "content-type").unwrap_or_default(),
        body: req.body.clone(),
        reply: Responder {
            inner: ResponderInner::Direct(Mutex::new(Some(reply_tx))),
        },
    };
    if before_ack {
        info!(call_id = %call_id_of(&tx), "INFO before the ACK: handed to the call");
    }
    if events.send(event).is_err() {
        tokio::spawn(async move {
            tx.reply(StatusCode::CallTransactionDoesNotExist).await.ok();
        });
        return;
    }
    tokio::spawn(async move {
        let (status, headers, body, sent) = match reply_rx.await {
            Ok((status, headers, body, sent)) => (status, headers, body, Some(sent)),
            Err(_) => (501, Vec::new(), None, None),
        };
        let headers: Vec<Header> = headers
            .into_iter()
            .map(|(n, v)| Header::Other(n, v))
            .collect();
        let result = tx.reply_with(StatusCode::from(status), headers, body).await;
        if let Err(e) = &result {
            debug!(error = %e, "INFO response not sent");
        }
        if let (Some(sent), Ok(())) = (sent, result) {
            sent.send(()).ok();
        }
    });
}

/// Where a request really came from: the connection's peer for TCP, the top Via as the stack
/// rewrote it (`received` / `rport`, RFC 3261 §18.2.1, RFC 3581) for UDP.
fn source_of(tx: &Transaction) -> Option<SocketAddr> {
    use rsipstack::sip::prelude::HeadersExt;
    use rsipstack::sip::ToTypedHeader;
    if let Some(rsipstack::transport::SipConnection::Channel(c)) = &tx.connection {
        return c.get_remote_addr().and_then(|a| a.get_socketaddr().ok());
    }
    let via = tx.original.via_header().ok()?.typed().ok()?;
    let ip = match via.received() {
        Some(Ok(ip)) => ip,
        _ => match &via.uri.host_with_port.host {
            rsipstack::sip::Host::IpAddr(ip) => *ip,
            rsipstack::sip::Host::Domain(_) => return None,
        },
    };
    let port = via
        .rport()
        .flatten()
        .or_else(|| via.uri.host_with_port.port.map(|p| p.value().to_owned()))
        .unwrap_or(5060);
    Some(SocketAddr::new(ip, port))
}

async fn new_call(
    d: &Dispatch,
    mut tx: Transaction,
    source: Option<SocketAddr>,
    unconfirmed: Unconfirmed,
    slot: Reservation,
) -> Result<(), SipError> {
    let transport_name = match tx.connection.as_ref() {
        Some(rsipstack::transport::SipConnection::Channel(c))
            if c.get_addr().r#type == Some(rsipstack::sip::Transport::Tcp) =>
        {
            "tcp"
        }
        Some(c) => match c.transport() {
            rsipstack::sip::Transport::Tcp => "tcp",
            rsipstack::sip::Transport::Tls => "tls",
            _ => "udp",
        },
        None => "udp",
    };
    let contact_host = d.contact_host;
    let contact_text = if transport_name == "udp" {
        format!("sip:voxgate@{contact_host}")
    } else {
        format!("sip:voxgate@{contact_host};transport={transport_name}")
    };
    let contact = rsipstack::sip::Uri::try_from(contact_text.as_str())
        .map_err(|e| SipError::Stack(e.to_string()))?;
    let mut info = invite_info(&tx, transport_name);
    if info.source.is_none() {
        info.source = source;
    }
    let (state_tx, state_rx) = d.dialog_layer.new_dialog_state_channel();
    let mut dialog =
        match d
            .dialog_layer
            .get_or_create_server_invite(&tx, state_tx, None, Some(contact))
        {
            Ok(dialog) => dialog,
            Err(e) => {
                // An INVITE we cannot make a dialog of is still answered (RFC 3261 §8.2).
                let reason = e.to_string();
                tokio::spawn(async move {
                    let headers = vec![Header::Other(
                        "Warning".into(),
                        format!("399 voxgate \"{}\"", reason.replace('"', "'")),
                    )];
                    tx.reply_with(StatusCode::BadRequest, headers, None)
                        .await
                        .ok();
                });
                return Err(SipError::Stack(e.to_string()));
            }
        };
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let span = info_span!("call", call_id = %info.call_id);
    let dialog_over = CancellationToken::new();
    let early = EarlyRequests {
        key: dialog.id().to_string(),
        legs: d.legs.clone(),
        unconfirmed: Some(unconfirmed),
        dialog_over: dialog_over.clone(),
    };
    d.legs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(early.key.clone(), events_tx.clone());
    tokio::spawn(
        translate_states(
            dialog.clone(),
            d.dialog_layer.clone(),
            state_rx,
            events_tx,
            Some(early),
        )
        .instrument(span.clone()),
    );
    // The INVITE transaction: 100 Trying, then waits for our final response, ACK or CANCEL.
    let leg = CallLeg {
        dialog: dialog.clone(),
    };
    // If our 2xx never left (the send failed), the stack has no timer running for it and
    // would wait forever; once the dialog is over (the call's own ACK deadline sent a BYE),
    // the transaction gets 64*T1 more for whatever it still sends (the stack's BYE after a
    // missing ACK), then is dropped.
    let grace = d.t1 * 64 + Duration::from_secs(4);
    tokio::spawn(
        async move {
            let over = async {
                dialog_over.cancelled().await;
                tokio::time::sleep(grace).await;
            };
            tokio::select! {
                r = dialog.handle(&mut tx) => if let Err(e) = r {
                    debug!(error = %e, "INVITE transaction ended with an error");
                },
                _ = over => debug!("INVITE transaction dropped: the dialog ended long ago"),
            }
        }
        .instrument(span),
    );
    let call = IncomingCall {
        leg,
        info,
        events: events_rx,
        slot,
    };
    d.calls
        .send(call)
        .await
        .map_err(|_| SipError::Stack("call handler is gone".into()))
}

/// A call voxgate answered: its place in the unconfirmed-call budget (until the ACK) and its
/// entry in the table of in-dialog request routes voxgate answers itself (INFO), until the
/// dialog ends.
struct EarlyRequests {
    key: String,
    legs: LegSenders,
    unconfirmed: Option<Unconfirmed>,
    /// Cancelled when the dialog is over: the INVITE transaction's task may then end.
    dialog_over: CancellationToken,
}

impl EarlyRequests {
    fn confirmed(&mut self) {
        if let Some(u) = self.unconfirmed.take() {
            u.confirm();
        }
    }
}

impl Drop for EarlyRequests {
    fn drop(&mut self) {
        self.confirmed();
        self.dialog_over.cancel();
        self.legs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// Turns the stack's dialog states into [`LegEvent`]s, logging every SIP state change.
async fn translate_states(
    dialog: InviteDialog,
    dialog_layer: Arc<DialogLayer>,
    mut states: rsipstack::dialog::dialog::DialogStateReceiver,
    events: mpsc::UnboundedSender<LegEvent>,
    mut early: Option<EarlyRequests>,
) {
    let mut confirmed = false;
    let mut dialog_id: Option<DialogId> = None;
    while let Some(state) = states.recv().await {
        info!(state = %state_name(&state), "SIP dialog state");
        let event = match state {
            DialogState::Confirmed(id, _) => {
                dialog_id = Some(id);
                if confirmed {
                    continue;
                }
                confirmed = true;
                if let Some(e) = early.as_mut() {
                    e.confirmed();
                }
                if dialog.role() == rsipstack::transaction::key::TransactionRole::Client {
                    // The outcome task reports Answered with the 200's SDP.
                    continue;
                }
                let ack_sdp = dialog
                    .last_remote_ack()
                    .filter(|ack| !ack.body.is_empty())
                    .map(|ack| String::from_utf8_lossy(&ack.body).into_owned());
                LegEvent::Confirmed { ack_sdp }
            }
            DialogState::Info(_, req, handle) => LegEvent::Info {
                content_type: header_value(&req.headers, "content-type").unwrap_or_default(),
                body: req.body.clone(),
                reply: Responder::stack(handle),
            },
            DialogState::Updated(_, req, handle) => LegEvent::Offer {
                sdp: (!req.body.is_empty())
                    .then(|| String::from_utf8_lossy(&req.body).into_owned()),
                reply: Responder::stack(handle),
            },
            DialogState::Notify(_, req, handle) => LegEvent::Notify {
                event: header_value(&req.headers, "event").unwrap_or_default(),
                content_type: header_value(&req.headers, "content-type").unwrap_or_default(),
                body: req.body.clone(),
                reply: Responder::stack(handle),
            },
            DialogState::Options(_, _, handle) => {
                let headers = vec![
                    Header::Other("Allow".into(), ALLOW.into()),
                    Header::Other("Accept".into(), "application/sdp".into()),
                ];
                handle
                    .respond(StatusCode::OK, Some(headers), None)
                    .await
                    .ok();
                continue;
            }
            DialogState::Refer(_, _, handle) | DialogState::Message(_, _, handle) => {
                // voxgate does not take transfers or messages from the caller.
                handle.reply(StatusCode::Decline).await.ok();
                continue;
            }
            DialogState::Publish(_, _, handle) => {
                handle.reply(StatusCode::MethodNotAllowed).await.ok();
                continue;
            }
            DialogState::Terminated(id, reason) => {
                dialog_layer.remove_dialog(&id);
                // rsipstack names who sent the BYE by role: in a dialog we answered (server)
                // the remote party is the UAC, in one we started (client: the bridged leg)
                // the remote party is the UAS.
                let client = dialog.role() == rsipstack::transaction::key::TransactionRole::Client;
                let end = match reason {
                    TerminatedReason::UacBye if client => LegEnd::LocalHangup,
                    TerminatedReason::UasBye if client => LegEnd::RemoteBye,
                    TerminatedReason::UacBye => LegEnd::RemoteBye,
                    TerminatedReason::UacCancel => LegEnd::Cancelled,
                    TerminatedReason::UasBye | TerminatedReason::UasDecline => LegEnd::LocalHangup,
                    TerminatedReason::Timeout => LegEnd::Timeout,
                    other => LegEnd::Other(format!("{other:?}")),
                };
                events.send(LegEvent::Terminated(end)).ok();
                return;
            }
            DialogState::Calling(id) | DialogState::Trying(id) => {
                dialog_id = Some(id);
                continue;
            }
            DialogState::Early(_, resp)
                if dialog.role() == rsipstack::transaction::key::TransactionRole::Client =>
            {
                LegEvent::Progress {
                    status: u16::from(resp.status_code.clone()),
                    sdp: (!resp.body.is_empty())
                        .then(|| String::from_utf8_lossy(&resp.body).into_owned()),
                }
            }
            DialogState::Early(..) | DialogState::WaitAck(..) => continue,
        };
        if events.send(event).is_err() {
            break;
        }
    }
    if let Some(id) = dialog_id {
        dialog_layer.remove_dialog(&id);
    }
}

fn state_name(state: &DialogState) -> &'static str {
    match state {
        DialogState::Calling(_) => "calling",
        DialogState::Trying(_) => "trying",
        DialogState::Early(..) => "early",
        DialogState::WaitAck(..) => "wait-ack",
        DialogState::Confirmed(..) => "confirmed",
        DialogState::Updated(..) => "offer-received",
        DialogState::Publish(..) => "publish-received",
        DialogState::Notify(..) => "notify-received",
        DialogState::Refer(..) => "refer-received",
        DialogState::Message(..) => "message-received",
        DialogState::Info(..) => "info-received",
        DialogState::Options(..) => "options-received",
        DialogState::Terminated(..) => "terminated",
    }
}

fn header_value(headers: &rsipstack::sip::Headers, name: &str) -> Option<String> {
    headers.iter().find_map(|h| {
        let text = h.to_string();
        let (n, v) = text.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn call_id_of(tx: &Transaction) -> String {
    header_value(&tx.original.headers, "call-id").unwrap_or_default()
}

/// Where the first `<` outside a quoted display name is (`"a <b>" <sip:x@y>`: the second).
pub(crate) fn angle_outside_quotes(value: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
        } else if in_quotes && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quotes = !in_quotes;
        } else if c == '<' && !in_quotes {
            return Some(i);
        }
    }
    None
}

/// The URI inside a name-addr ("Bob" <sip:b@x>;tag=1 -> sip:b@x).
pub fn uri_of(value: &str) -> String {
    if let Some(a) = angle_outside_quotes(value) {
        if let Some(len) = value[a + 1..].find('>') {
            return value[a + 1..a + 1 + len].to_string();
        }
    }
    value.split(';').next().unwrap_or("").trim().to_string()
}

/// The user part of a SIP or tel URI ("sip:+32@x" -> "+32", "tel:+32;x" -> "+32").
pub fn user_of(uri: &str) -> String {
    let rest = uri
        .strip_prefix("sips:")
        .or_else(|| uri.strip_prefix("sip:"))
        .or_else(|| uri.strip_prefix("tel:"))
        .unwrap_or(uri);
    let end = rest.find(['@', ';', '?']).unwrap_or(rest.len());
    if rest[end..].starts_with('@') || uri.starts_with("tel:") {
        rest[..end].to_string()
    } else {
        String::new()
    }
}

fn invite_info(tx: &Transaction, transport: &'static str) -> InviteInfo {
    let req = &tx.original;
    let mut headers = BTreeMap::new();
    for h in req.headers.iter() {
        let text = h.to_string();
        if let Some((n, v)) = text.split_once(':') {
            headers
                .entry(n.trim().to_ascii_lowercase())
                .or_insert_with(|| v.trim().to_string());
        }
    }
    let from_uri = headers.get("from").map(|v| uri_of(v)).unwrap_or_default();
    let to_uri = headers.get("to").map(|v| uri_of(v)).unwrap_or_default();
    let sdp = (!req.body.is_empty()).then(|| String::from_utf8_lossy(&req.body).into_owned());
    InviteInfo {
        call_id: headers.get("call-id").cloned().unwrap_or_default(),
        from_user: user_of(&from_uri),
        to_user: user_of(&to_uri),
        from_uri,
        to_uri,
        request_uri: req.uri.to_string(),
        headers,
        sdp,
        source: tx
            .connection
            .as_ref()
            .and_then(|c| c.get_remote_addr().and_then(|a| a.get_socketaddr().ok())),
        transport,
    }
}

// --- hooks for trunks (sip/register.rs, sip/inbound_auth.rs) ----------------------------------

/// The stack's endpoint, for requests outside any dialog (REGISTER).
pub(super) type EndpointRef = rsipstack::transaction::endpoint::EndpointInnerRef;

impl SipServer {
    pub(super) fn endpoint(&self) -> EndpointRef {
        self.dialog_layer.endpoint.clone()
    }

    /// The address voxgate puts in its Contact (external_ip when behind NAT).
    pub(super) fn contact_host(&self) -> SocketAddr {
        self.contact_host
    }
}

fn inbound_check(
    auth: &dyn super::inbound_auth::InviteAuth,
    tx: &Transaction,
) -> Option<(u16, Vec<(String, String)>)> {
    let source = tx
        .connection
        .as_ref()
        .and_then(|c| c.get_remote_addr().and_then(|a| a.get_socketaddr().ok()));
    let authorization = header_value(&tx.original.headers, "authorization");
    auth.check(
        &tx.original.uri.to_string(),
        authorization.as_deref(),
        source,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_and_user_extraction() {
        assert_eq!(
            uri_of("\"SIPp caller\" <sip:sipp@127.0.0.1:5061>;tag=1"),
            "sip:sipp@127.0.0.1:5061"
        );
        assert_eq!(uri_of("sip:a@b;tag=1"), "sip:a@b");
        assert_eq!(
            uri_of(r#""J <sip:g \\\"" <sip:j@example.com>;tag=1"#),
            "sip:j@example.com",
            "a `<` inside the quoted display name is not the URI's"
        );
        assert_eq!(
            user_of("sip:+3225551212@127.0.0.1:5080;user=phone"),
            "+3225551212"
        );
        assert_eq!(user_of("tel:+3225551212;phone-context=x"), "+3225551212");
        assert_eq!(user_of("sip:127.0.0.1:5060"), "");
    }
}

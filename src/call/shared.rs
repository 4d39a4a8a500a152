//! What every call shares: configuration, the registry, prompt/TTS/recorder services, the
//! store (CDRs, events, recording metadata), the forward policy and the SIP stack. Built once by the gateway (the
//! composition root) and handed to each call task; it depends on neither.

use super::executor::RequestExecutor;
use super::ports::PortAllocator;
use super::registry::Registry;
use crate::config::{Config, Validated};
use crate::flow::FlowDefinition;
use crate::media::plane::MediaPlane;
use crate::media::prompts::PromptCache;
use crate::media::recorder::Recorder;
use crate::media::tts::Tts;
use crate::phone::DestinationPolicy;
use crate::sip::SipServer;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock, RwLock};

/// What every call shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub validated: Arc<Validated>,
    pub registry: Arc<Registry>,
    pub(super) flow: RwLock<Arc<FlowDefinition>>,
    pub prompts: Arc<PromptCache>,
    pub tts: Arc<Tts>,
    pub recorder: Recorder,
    pub ports: PortAllocator,
    /// The media workers every call's RTP runs on.
    pub media: MediaPlane,
    /// CDRs, events, transcripts and recording metadata: the embedded files or the shared
    /// PostgreSQL (`[store] url`). `submit` never blocks.
    pub store: Arc<dyn crate::store::Store>,
    /// CDRs of calls in progress, on disk so a crash still leaves a CDR (`open_cdr`).
    pub open_cdrs: super::open_cdr::OpenCdrs,
    /// The address written into SDP (external_ip when behind NAT).
    pub advertised_ip: IpAddr,
    /// Where forwards may go (`transfer.allow` / `transfer.deny`).
    pub policy: DestinationPolicy,
    /// Runs integration steps (`FlowAction::Request`); `None` answers them `not_configured`.
    pub requests: Option<Arc<dyn RequestExecutor>>,
    /// Recognisers for `FlowAction::Listen`, or why there are none (engine off, library or
    /// model not installed): every listen then fails over at once with that error.
    pub speech: Arc<crate::speech::SpeechSlot>,
    /// The knowledge base (`[knowledge_base] dir`), reloaded on SIGHUP.
    pub kb: Option<crate::kb::KbHandle>,
    /// The integration executors: the call's transcript store, `recording.ready` events,
    /// the offload webhook. `None` in builds/tests that do not start them.
    pub integrations: Option<crate::integrations::Integrations>,
    pub(super) sip: OnceLock<Arc<SipServer>>,
}

impl Shared {
    /// The SIP stack, once it is up.
    pub fn sip(&self) -> Option<Arc<SipServer>> {
        self.sip.get().cloned()
    }

    /// The flow new calls start with; calls keep the version they started with.
    pub fn flow(&self) -> Arc<FlowDefinition> {
        self.flow.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

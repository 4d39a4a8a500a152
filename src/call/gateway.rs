//! The running gateway, and its composition root: builds the [`Shared`] services, starts
//! HTTP and SIP, spawns a call task per INVITE, reloads the flow and drains on shutdown
//! (CONTRACT §1).

use super::ports::PortAllocator;
use super::registry::{Control, Registry};
use super::shared::Shared;
use crate::config::{Config, Validated};
use crate::flow::FlowDefinition;
use crate::media::plane::MediaPlane;
use crate::media::prompts::PromptCache;
use crate::media::recorder::{ChannelMode, Recorder, RecorderConfig};
use crate::media::tts::Tts;
use crate::phone::DestinationPolicy;
use crate::sip::{SipServer, SipServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// At shutdown, how long BYEs sent after the grace period still get to be answered (Timer E
/// retransmits at 0.5, 1, 2, 4 s: four copies within this).
const BYE_WAIT: Duration = Duration::from_secs(8);
/// RFC 3261 Timer F (64*T1): a BYE transaction never runs longer.
const TIMER_F: Duration = Duration::from_secs(32);

/// Start-up failures, each with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("flow: {0}")]
    Flow(String),
    #[error("recordings dir {dir}: {reason}")]
    Recordings { dir: String, reason: String },
    #[error("SIP: {0}")]
    Sip(#[from] crate::sip::SipError),
    #[error("HTTP: cannot listen on {addr}: {reason}")]
    Http { addr: SocketAddr, reason: String },
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("speech: {0}")]
    Speech(String),
    #[error("{0}")]
    Integrations(String),
    #[error("{0}")]
    Store(String),
    #[error("media workers: {0}")]
    Media(std::io::Error),
    #[error("{0}")]
    Trunk(#[from] crate::sip::register::TrunkError),
}

/// The flow new calls start with. With `flow.websocket_url` set the bot is external and no
/// flow file is read: calls get an empty stand-in whose only use is resolving the prompt names
/// the bot plays, under `prompts/` next to the flow file's directory (`sip-config/prompts` by
/// default), as with the demo flow.
fn load_flow(config: &Config) -> Result<Arc<FlowDefinition>, String> {
    if config.flow.websocket_url.is_none() {
        return FlowDefinition::load(&config.flow.file).map_err(|e| e.to_string());
    }
    // Its `on_error` keeps the loader from warning that the (never run) flow has none.
    const EXTERNAL: &str = "name: external\nstart: bot\non_error: bot\nprompts_dir: ../prompts\n\
                            dialogs:\n  bot:\n    - hangup\n";
    FlowDefinition::from_str(EXTERNAL, &config.flow.file).map_err(|e| e.to_string())
}

/// Logs what loading the recognisers gave (once per load).
fn log_speech(result: &Result<crate::speech::SpeechPool, crate::speech::SpeechError>) {
    // Speech that cannot start is not fatal: the gateway runs, and each `listen` fails over
    // (keys, else on_error with error.detail_code) with the reason logged here once.
    match result {
        Ok(pool) => info!(
            engine = pool.engine(),
            recognisers = pool.size(),
            "speech recognition ready"
        ),
        Err(crate::speech::SpeechError::Off) => {
            info!("speech recognition is off; listen steps fail over to keys / on_error")
        }
        Err(e) => warn!(
            code = e.code(),
            "{e}; the gateway runs without it and listen steps fail over to keys / on_error \
             (error.detail_code = {})",
            e.code()
        ),
    }
}

/// Loads the recognisers when the flow has a `listen` step (otherwise they load when a
/// reloaded flow first has one) and indexes the knowledge base, off the async workers.
async fn start_speech_and_kb(
    config: &Config,
    flow: &FlowDefinition,
) -> Result<(Arc<crate::speech::SpeechSlot>, Option<crate::kb::KbHandle>), StartError> {
    let speech = Arc::new(crate::speech::SpeechSlot::new(config.speech.clone()));
    let listens = flow.uses(crate::flow::definition::StepKind::Listen);
    let kb_dir = config.knowledge_base.dir.clone();
    let slot = speech.clone();
    let kb = tokio::task::spawn_blocking(move || {
        if listens {
            log_speech(slot.load());
        }
        crate::kb::load_dir(&kb_dir)
    })
    .await
    .map_err(|e| StartError::Speech(format!("start-up task failed: {e}")))?;
    if !listens {
        info!(
            "speech recognition not loaded: no step of the flow listens (it loads when a \
             reloaded flow has a listen step)"
        );
    }
    let kb = match kb {
        Ok(report) => {
            for (path, why) in &report.skipped {
                warn!(file = %path.display(), reason = %why, "knowledge base: file skipped");
            }
            info!(
                dir = %config.knowledge_base.dir.display(),
                documents = report.kb.documents(),
                passages = report.kb.passages(),
                "knowledge base indexed"
            );
            Some(crate::kb::KbHandle::new(
                config.knowledge_base.dir.clone(),
                report.kb,
            ))
        }
        Err(e) => {
            warn!(error = %e, "knowledge base not loaded; knowledge_base steps will fail over");
            None
        }
    };
    Ok((speech, kb))
}

pub struct Gateway {
    shared: Arc<Shared>,
    sip: Arc<SipServer>,
    config_path: PathBuf,
    trunks: Arc<crate::sip::register::Trunks>,
}

impl Gateway {
    pub async fn start(
        config: Arc<Config>,
        validated: Arc<Validated>,
        config_path: PathBuf,
    ) -> Result<Gateway, StartError> {
        let flow = load_flow(&config).map_err(StartError::Flow)?;
        let trunks = crate::sip::register::Trunks::new(&config.trunks)?;
        let rec_dir = config.recordings.dir.clone();
        match crate::media::recorder::recover_dir(&rec_dir) {
            Ok(report) => info!(?report, dir = %rec_dir.display(), "recordings checked"),
            Err(e) => {
                warn!(dir = %rec_dir.display(), error = %e, "recordings dir could not be scanned; recordings may fail")
            }
        }
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(
                    crate::media::plane::TICK_LATENESS.to_string(),
                ),
                &crate::media::plane::TICK_LATENESS_BUCKETS,
            )
            .map_err(|e| StartError::Metrics(e.to_string()))?
            .install_recorder()
            .map_err(|e| StartError::Metrics(e.to_string()))?;
        // After recovery, so recovered recordings are offered to the store in their final state.
        let store = crate::store::open(&config)
            .await
            .map_err(StartError::Store)?;
        // The numbering-plan database loads lazily; load it now, not inside the first forward.
        if let Err(e) = tokio::task::spawn_blocking(crate::phone::warm_up).await {
            warn!(error = %e, "numbering plan warm-up failed");
        }
        // Calls an earlier process lost (kill -9, crash): complete their CDRs before serving.
        crate::call::open_cdr::recover(config.data_dir.clone(), store.clone()).await;
        let open_cdrs = crate::call::open_cdr::OpenCdrs::start(crate::call::open_cdr::journal(
            &config.data_dir,
        ));
        let mut rec_config = RecorderConfig::new(rec_dir.clone());
        if config.recordings.channels == "mixed" {
            rec_config.channels = ChannelMode::Mixed;
        }
        rec_config.node = config.node.name.clone();
        {
            let store = store.clone();
            rec_config.sink = Some(crate::media::recorder::RecordingSink(Arc::new(
                move |s: &crate::media::recorder::Sidecar| {
                    store.submit(crate::store::Record::Recording(Box::new(s.clone())))
                },
            )));
        }
        let prompts = Arc::new(PromptCache::new());
        prompts.watch();
        let tts = Arc::new(
            Tts::new(config.tts.voice.clone(), config.tts.fallback_wav.clone())
                .with_binary(config.tts.binary.clone())
                .with_prompt_cache(prompts.clone()),
        );
        let (speech, kb) = start_speech_and_kb(&config, &flow).await?;
        let registry = Registry::new(config.sip.max_calls);
        let listen_ip = validated.sip_listen.ip();
        let integrations = {
            let store = store.clone();
            crate::integrations::Integrations::start(
                &config,
                Arc::new(move |v| store.submit(crate::store::Record::Event(v))),
            )
            .map_err(|e| StartError::Integrations(e.to_string()))?
        };
        // The knowledge_base step is answered from the KB; every other request goes on to the
        // integrations.
        let integration_requests: Arc<dyn crate::call::executor::RequestExecutor> =
            Arc::new(integrations.clone());
        let requests: Arc<dyn crate::call::executor::RequestExecutor> = match kb.clone() {
            Some(kb) => Arc::new(
                crate::kb::KbExecutor::new(kb, Some(integration_requests))
                    .with_transcripts(integrations.transcripts.clone()),
            ),
            None => integration_requests,
        };
        let shared = Arc::new(Shared {
            registry: registry.clone(),
            flow: std::sync::RwLock::new(flow),
            prompts,
            tts,
            recorder: Recorder::new(rec_config),
            ports: PortAllocator::new(listen_ip, validated.rtp_ports.0, validated.rtp_ports.1),
            media: MediaPlane::start(config.media.workers, config.media.realtime)
                .map_err(StartError::Media)?,
            store: store.clone(),
            open_cdrs,
            advertised_ip: validated.external_ip.unwrap_or(listen_ip),
            policy: DestinationPolicy::new(
                config.transfer.allow.clone(),
                config.transfer.deny.clone(),
            )
            .map_err(|e| StartError::Flow(format!("transfer policy: {e}")))?,
            requests: Some(requests),
            speech,
            kb,
            integrations: Some(integrations.clone()),
            sip: std::sync::OnceLock::new(),
            config: config.clone(),
            validated: validated.clone(),
        });

        // HTTP first: operators can watch /healthz while SIP comes up.
        let api_state = crate::api::ApiState {
            token: config.http.token.clone(),
            recordings_dir: rec_dir.clone(),
            calls: registry.clone(),
            store: store.clone(),
            metrics: crate::api::ApiState::prometheus(metrics),
            trunks: trunks.clone(),
            sessions: Arc::new(crate::api::console::Sessions::new()),
        };
        let listener = tokio::net::TcpListener::bind(validated.http_listen)
            .await
            .map_err(|e| StartError::Http {
                addr: validated.http_listen,
                reason: e.to_string(),
            })?;
        let app =
            crate::api::router(api_state).layer(axum::Extension(crate::api::IntegrationsApi {
                tables: integrations.tables.clone(),
                transcripts: integrations.transcripts.clone(),
            }));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!(error = %e, "HTTP server stopped");
            }
        });
        info!(addr = %validated.http_listen, "HTTP API listening");

        let (sip, mut calls) = SipServer::start(
            SipServerConfig {
                listen: validated.sip_listen,
                external_ip: validated.external_ip,
                t1: Duration::from_millis(config.sip.t1_ms),
                user_agent: config.sip.user_agent.clone(),
                limits: crate::sip::server::SipLimits::from_config(&config.sip, &validated),
                invite_auth: crate::sip::inbound_auth::TrunkChallenge::from_config(&config.trunks)
                    .map(|c| Arc::new(c) as Arc<dyn crate::sip::inbound_auth::InviteAuth>),
            },
            registry.clone(),
        )
        .await?;
        shared.sip.set(sip.clone()).ok();
        trunks.start(&sip);
        {
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Some(call) = calls.recv().await {
                    let shared = shared.clone();
                    tokio::spawn(super::task::run(shared, call));
                }
            });
        }
        if let Some(days) = config.recordings.retention_days {
            let dir = rec_dir.clone();
            tokio::spawn(async move {
                loop {
                    let d = dir.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        crate::media::recorder::sweep_retention(
                            &d,
                            Duration::from_secs(days * 86_400),
                            chrono::Utc::now(),
                        )
                    })
                    .await;
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            });
        }
        match &config.flow.websocket_url {
            Some(url) => info!(websocket_url = %url, "voxgate ready (external bot)"),
            None => info!(flow = %config.flow.file.display(), "voxgate ready"),
        }
        Ok(Gateway {
            shared,
            sip,
            config_path,
            trunks,
        })
    }

    /// Reloads the flow file (SIGHUP). Running calls keep the version they started with.
    pub fn reload_flow(&self) -> Result<String, String> {
        if self.shared.config.flow.websocket_url.is_some() {
            return Err(
                "flow.websocket_url is set: the bot is external, there is no flow file to reload"
                    .into(),
            );
        }
        let path = self.shared.config.flow.file.clone();
        let def = FlowDefinition::load(&path).map_err(|e| e.to_string())?;
        if def.uses(crate::flow::definition::StepKind::Listen) && self.shared.speech.claim() {
            // The first flow with a `listen`: load the recognisers off the async workers. Until
            // they are ready, a listen fails over as `unavailable`.
            info!("the reloaded flow listens: loading speech recognition");
            let slot = self.shared.speech.clone();
            tokio::task::spawn_blocking(move || log_speech(slot.load()));
        }
        *self.shared.flow.write().unwrap_or_else(|p| p.into_inner()) = def;
        let _ = &self.config_path;
        Ok(path.display().to_string())
    }

    /// Re-indexes the knowledge base (SIGHUP) on a blocking thread; calls keep answering from
    /// the old index until the new one is swapped in.
    pub async fn reload_kb(&self) -> Result<String, String> {
        let Some(kb) = self.shared.kb.clone() else {
            return Err("no knowledge base is loaded".into());
        };
        let report = tokio::task::spawn_blocking(move || kb.reload())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        for (path, why) in &report.skipped {
            warn!(file = %path.display(), reason = %why, "knowledge base: file skipped");
        }
        Ok(format!(
            "{} documents, {} passages",
            report.kb.documents(),
            report.kb.passages()
        ))
    }

    pub fn sip_addr(&self) -> SocketAddr {
        self.sip.local_addr()
    }

    /// CONTRACT §1: refuse new INVITEs with 503, give calls `grace` to finish, end the rest,
    /// finalize every recording, then return.
    pub async fn shutdown(&self, grace: Duration) {
        let registry = &self.shared.registry;
        let grace_end = tokio::time::Instant::now() + grace;
        registry.begin_shutdown();
        // De-register from the trunks at once (they stop sending calls) while calls drain.
        let trunks = self.trunks.clone();
        let unregistered = tokio::spawn(async move { trunks.shutdown().await });
        info!(
            calls = registry.len(),
            grace_s = grace.as_secs(),
            "draining calls"
        );
        if tokio::time::timeout(grace, registry.wait_empty())
            .await
            .is_err()
        {
            info!(
                calls = registry.len(),
                "grace period over: ending the remaining calls"
            );
            registry.control_all(Control::Hangup);
            if tokio::time::timeout(Duration::from_secs(5), registry.wait_empty())
                .await
                .is_err()
            {
                warn!(calls = registry.len(), "some calls did not end in time");
            }
        }
        // The BYEs just sent are retransmitted (Timer E) until answered: wait for them until
        // the grace period ends, and at least BYE_WAIT (a few retransmissions) when the grace
        // period is already over; never past Timer F.
        let bye_end = grace_end
            .max(tokio::time::Instant::now() + BYE_WAIT)
            .min(tokio::time::Instant::now() + TIMER_F);
        if registry.hangups_in_flight() > 0 {
            info!(
                byes = registry.hangups_in_flight(),
                "waiting for BYEs to be answered"
            );
            if tokio::time::timeout_at(bye_end, registry.wait_hangups())
                .await
                .is_err()
            {
                warn!(
                    byes = registry.hangups_in_flight(),
                    "BYEs still unanswered at exit"
                );
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), self.shared.recorder.finalized())
            .await
            .is_err()
        {
            warn!(
                pending = self.shared.recorder.pending(),
                "some recordings were still finalizing at exit"
            );
        }
        let store = &self.shared.store;
        if !store.flush(Duration::from_secs(10)).await {
            warn!(
                status = ?store.status(),
                "records still waiting for the database at exit; they stay spooled for the next start"
            );
        }
        unregistered.await.ok();
        self.sip.shutdown();
    }
}

//! voxgate: answer SIP calls and hand them to a flow engine.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};
use voxgate::call::gateway::Gateway;
use voxgate::config::{Config, DEFAULT_CONFIG_PATH};

#[derive(Parser, Debug)]
#[command(
    name = "voxgate",
    version,
    about = "Voice telephony gateway: SIP trunks to bots"
)]
struct Args {
    /// Config file (TOML).
    #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

/// jemalloc, not glibc malloc: after a burst of calls glibc kept freed memory in fragmented
/// arenas, even with two arenas and a `malloc_trim` every 10 s (three batches of 4,000 calls:
/// 86.6, 98.2, 100.1 MiB after each); jemalloc's background threads return it (66.3, 71.3,
/// 71.6 MiB in the same conditions). docs/performance.md has the runs. The
/// `system-allocator` feature keeps glibc malloc, for heap profilers (heaptrack) that only
/// see malloc.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read by jemalloc itself at its first allocation (the crate builds it
/// with the `_rjem_` symbol prefix): purging threads on, freed pages returned after about 1 s.
/// A plain pointer to a NUL-terminated static string, which is what `const char *malloc_conf`
/// expects; nothing writes to it.
#[cfg(not(feature = "system-allocator"))]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &u8 = &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0];

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rsipstack=warn")),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("voxgate: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => {
            info!("voxgate stopped");
        }
        Err(e) => {
            error!("{e:#}");
            eprintln!("voxgate: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Publishes jemalloc's view of the heap every 5 s as gauges on `/metrics`
/// (docs/metrics.md, "Process"): what the program holds (`allocated`), the pages that holds
/// (`active`: the difference is fragmentation) and what the allocator keeps in RAM
/// (`resident`, which includes freed pages not yet returned and its own metadata). RSS
/// alone cannot tell a leak from memory the allocator has not returned yet; these can.
/// Reading them is a few `mallctl` calls, no IO.
#[cfg(not(feature = "system-allocator"))]
async fn publish_heap_stats() {
    use tikv_jemalloc_ctl::{epoch, stats};
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        // The statistics are a snapshot refreshed by advancing the epoch.
        if epoch::advance().is_err() {
            continue;
        }
        for (name, value) in [
            ("voxgate_heap_allocated_bytes", stats::allocated::read()),
            ("voxgate_heap_active_bytes", stats::active::read()),
            ("voxgate_heap_resident_bytes", stats::resident::read()),
        ] {
            if let Ok(v) = value {
                metrics::gauge!(name).set(v as f64);
            }
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (config, validated) = Config::load(&args.config)?;
    let grace = Duration::from_secs(config.shutdown_grace_s);
    let gateway = Gateway::start(Arc::new(config), Arc::new(validated), args.config.clone())
        .await
        .context("start-up failed")?;
    #[cfg(not(feature = "system-allocator"))]
    tokio::spawn(publish_heap_stats());

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => {
                match gateway.reload_flow() {
                    Ok(name) => info!(flow = %name, "SIGHUP: flow reloaded; running calls keep their version"),
                    Err(e) => warn!("SIGHUP: flow reload failed, keeping the old flow: {e}"),
                }
                match gateway.reload_kb().await {
                    Ok(what) => info!(%what, "SIGHUP: knowledge base re-indexed"),
                    Err(e) => warn!("SIGHUP: knowledge base not re-indexed, keeping the old one: {e}"),
                }
            }
        }
    }
    gateway.shutdown(grace).await;
    Ok(())
}

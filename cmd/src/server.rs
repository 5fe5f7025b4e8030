//! `shoal server`: opens the store and serves until SIGTERM/SIGINT, then shuts down cleanly,
//! flushing the store. The API server, control loops and embedded agent join here as their
//! issues land.

use anyhow::{Context, Result};
use shoal_store::{RaftStore, RaftStoreConfig, Store};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::ServerArgs;
use crate::config;

pub async fn run(args: ServerArgs) -> Result<()> {
    let _token = config::read_token(&args.common.token, &args.common.token_file)?;
    let store_dir = args.common.data_dir.join("server").join("store");
    let mut store_config = RaftStoreConfig::new(&store_dir);
    let advertise = args.advertise_address.unwrap_or(args.bind_address);
    store_config.advertise = format!("{advertise}:{}", args.https_listen_port + 1);

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let store = RaftStore::open(store_config)
        .await
        .with_context(|| format!("opening the store in {}", store_dir.display()))?;
    let revision = store.current_revision().await?;
    tracing::info!(
        data_dir = %args.common.data_dir.display(),
        revision,
        agent = !args.disable_agent,
        "shoal server ready (store open; API server and agent come with later releases)"
    );

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
    }
    store.shutdown().await.context("flushing the store")?;
    tracing::info!("store flushed; bye");
    Ok(())
}

//! Process signals: SIGINT and SIGTERM stop the service gracefully; SIGHUP is logged and ignored.

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    // SIGHUP would otherwise end the process without committing offsets. There is nothing to reload:
    // fences and promotions follow the store by themselves, and settings are read once at start.
    let hangup = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut signal) => loop {
                signal.recv().await;
                tracing::info!(
                    "SIGHUP ignored: fences and promotions follow the store within database.poll_interval_ms; \
                     restart to apply changed settings"
                );
            },
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = interrupt => {}
        () = terminate => {}
        () = hangup => {}
    }
}

//! Shutdown: one cancellation token per process, cancelled by SIGINT or SIGTERM.
//!
//! Long-lived loops select on the token; a second signal exits at once, for the
//! operator who does not want to wait for a drain.

use tokio_util::sync::CancellationToken;

/// A token cancelled by the first SIGINT/SIGTERM; the second one exits with 130.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        signal().await;
        tracing::info!("shutdown requested; draining (signal again to exit now)");
        t.cancel();
        signal().await;
        tracing::warn!("second signal; exiting without drain");
        std::process::exit(130);
    });
    token
}

async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

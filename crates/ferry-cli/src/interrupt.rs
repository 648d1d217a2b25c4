//! Ctrl-C and SIGTERM: cancel the work cleanly instead of dying mid-write.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT or SIGTERM: commands then finish quickly and cleanly
/// (the sender deletes its transaction, receivers drop their partial files). A second signal
/// exits at once with 130, for the impatient.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("interrupted: cancelling");
        t.cancel();
        wait_for_signal().await;
        eprintln!("ferry: error: interrupted twice: exiting without cleaning up");
        std::process::exit(130);
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    match term {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

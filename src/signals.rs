//! Stop signals: SIGINT and SIGTERM stop `serve` and `sync`; SIGHUP stops `sync`
//! and is ignored by `serve` (docs/operations.md#sighup).

use tokio_util::sync::CancellationToken;

/// What SIGHUP means (docs/operations.md#sighup): `serve` logs and ignores it (a closed
/// SSH session, logrotate or `systemctl reload` must not stop the agent); `sync`
/// stops on it as on SIGTERM, so a run whose terminal went away is compensated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hangup {
    Ignore,
    Stop,
}

/// Cancels `stop` on SIGINT or SIGTERM (and SIGHUP with `Hangup::Stop`). The
/// handlers are installed before this returns, so no signal kills the process
/// by its default action afterwards.
pub(crate) fn stop_on_signals(stop: CancellationToken, hangup: Hangup) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (term, hup) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(hup)) => (term, hup),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot install the signal handlers");
                return;
            }
        };
        let (mut term, mut hup) = (term, hup);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                    _ = hup.recv() => {
                        if hangup == Hangup::Stop {
                            break;
                        }
                        tracing::info!("SIGHUP received: ignored (serve re-reads CSV_FILE at every run; restart it to apply changed settings)");
                    }
                }
            }
            tracing::info!("stop signal received: no new runs");
            stop.cancel();
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = (tokio::signal::ctrl_c().await, hangup);
        tracing::info!("stop signal received: no new runs");
        stop.cancel();
    });
}

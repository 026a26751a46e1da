//! The runner: the only place `serve` starts syncs. Triggers send a `Trigger`
//! here; the runner runs one sync at a time, and whatever arrives during a run is
//! coalesced into at most one follow-up run. On stop no new run starts, and a run
//! in flight gets `SHUTDOWN_TIMEOUT` to finish before it is cancelled (and
//! compensated by the pipeline).

use crate::domain::LoadId;
use crate::domain::Trigger;
use crate::pipeline::{run_sync, Summary, SyncContext, SyncRequest};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// Where triggers send their requests. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct RunRequests(mpsc::UnboundedSender<Trigger>);

impl RunRequests {
    /// Requests and their receiving end, without a runner (tests).
    #[cfg(test)]
    pub(crate) fn channel() -> (Self, mpsc::UnboundedReceiver<Trigger>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    pub fn send(&self, trigger: Trigger) {
        if self.0.send(trigger).is_err() {
            tracing::debug!(
                trigger = trigger.as_str(),
                "runner stopped; request dropped"
            );
        }
    }
}

pub struct Runner {
    ctx: SyncContext,
    file: PathBuf,
    shutdown_timeout: Duration,
    requests: mpsc::UnboundedReceiver<Trigger>,
    /// One permit: at most one history prune at a time.
    pruning: Arc<Semaphore>,
}

impl Runner {
    pub fn new(ctx: SyncContext, file: PathBuf) -> (Self, RunRequests) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shutdown_timeout = ctx.settings.shutdown_timeout;
        let runner = Self {
            ctx,
            file,
            shutdown_timeout,
            requests: rx,
            pruning: Arc::new(Semaphore::new(1)),
        };
        (runner, RunRequests(tx))
    }

    /// Runs until `stop` is cancelled; returns once no run is in flight.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut pending: Option<Trigger> = None;
        loop {
            let trigger = match pending.take() {
                Some(trigger) => trigger,
                None => tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    next = self.requests.recv() => match next {
                        Some(trigger) => trigger,
                        None => return,
                    },
                },
            };
            if stop.is_cancelled() {
                return;
            }
            self.run_one(trigger, &stop).await;
            self.prune_in_background();
            // Everything that arrived meanwhile becomes one follow-up run.
            let mut coalesced = 0;
            while let Ok(next) = self.requests.try_recv() {
                pending.get_or_insert(next);
                coalesced += 1;
            }
            if coalesced > 1 {
                tracing::info!(
                    coalesced,
                    "triggers during the run coalesced into one follow-up run"
                );
            }
        }
    }

    /// Keeps the run history within its bound (README, "Run history") on a task of
    /// its own, so the next run never waits for it.
    fn prune_in_background(&self) {
        let Ok(permit) = self.pruning.clone().try_acquire_owned() else {
            return;
        };
        let (db, bound) = (self.ctx.db.clone(), self.ctx.settings.history);
        tokio::spawn(async move {
            crate::history::prune_or_warn(&db, bound).await;
            drop(permit);
        });
    }

    async fn run_one(&self, trigger: Trigger, stop: &CancellationToken) -> Summary {
        let request = SyncRequest {
            file: self.file.clone(),
            trigger,
            force: false,
            dry_run: false,
            allow_mass_delete: false,
            allow_file_change: self.ctx.settings.allow_file_change,
        };
        let cancel = CancellationToken::new();
        let load_id = LoadId::new();
        let run = run_sync(&self.ctx, &request, load_id, cancel.clone());
        tokio::pin!(run);
        tokio::select! {
            summary = &mut run => return summary,
            _ = stop.cancelled() => {}
        }
        tracing::info!(timeout = ?self.shutdown_timeout, %load_id, "stopping: waiting for the run in flight");
        match tokio::time::timeout(self.shutdown_timeout, &mut run).await {
            Ok(summary) => summary,
            Err(_) => {
                tracing::warn!(%load_id, "shutdown timeout reached: cancelling the run");
                cancel.cancel();
                run.await
            }
        }
    }
}

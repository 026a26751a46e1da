//! The runner: the only place `serve` starts syncs. Triggers send a `Trigger`
//! here; the runner runs one sync at a time, and whatever arrives during a run is
//! coalesced into at most one follow-up run. On stop no new run starts, and a run
//! in flight gets `SHUTDOWN_TIMEOUT` to finish before it is cancelled (and
//! compensated by the pipeline). See docs/ARCHITECTURE.md#triggers-and-the-runner.
//! A run that failed for a transient reason is retried with bounded exponential
//! back-off (`RETRY_MAX_ATTEMPTS`, `RETRY_BACKOFF`: docs/sync.md#refusals-and-approvals);
//! triggers arriving meanwhile are coalesced as during a run.
//!
//! The runner is generic over what runs a sync ([`RunSync`]): `serve` gives it
//! [`PipelineSync`], the unit tests a function.

use crate::config::RetryPolicy;
use crate::domain::{LoadId, Trigger};
use crate::pipeline::{run_sync, SyncContext, SyncRequest};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// Where triggers send their requests. Cheap to clone; never blocks.
#[derive(Clone)]
pub(crate) struct RunRequests(mpsc::UnboundedSender<Trigger>);

impl RunRequests {
    /// Requests and their receiving end, without a runner (tests).
    #[cfg(test)]
    pub(crate) fn channel() -> (Self, mpsc::UnboundedReceiver<Trigger>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    pub(crate) fn send(&self, trigger: Trigger) {
        if self.0.send(trigger).is_err() {
            tracing::debug!(
                trigger = trigger.as_str(),
                "runner stopped; request dropped"
            );
        }
    }
}

/// How a run ended, as far as the runner cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunEnd {
    /// Synced, skipped, refused, or failed for good: wait for the next trigger.
    Done,
    /// Failed for a reason that may pass (the database restarting, a
    /// concurrent writer): worth a retry.
    Transient,
}

/// Runs one sync for `trigger`; it stops early (and compensates) once `cancel` is
/// cancelled.
pub(crate) trait RunSync {
    fn run_sync(
        &self,
        trigger: Trigger,
        load_id: LoadId,
        cancel: CancellationToken,
    ) -> impl Future<Output = RunEnd>;
}

impl<F, Fut> RunSync for F
where
    F: Fn(Trigger, LoadId, CancellationToken) -> Fut,
    Fut: Future<Output = RunEnd>,
{
    fn run_sync(
        &self,
        trigger: Trigger,
        load_id: LoadId,
        cancel: CancellationToken,
    ) -> impl Future<Output = RunEnd> {
        self(trigger, load_id, cancel)
    }
}

/// The pipeline's sync of `file`, then a prune of old runs in the background.
pub(crate) struct PipelineSync {
    ctx: SyncContext,
    file: PathBuf,
    /// One permit: at most one prune of old runs at a time.
    pruning: Arc<Semaphore>,
}

impl PipelineSync {
    pub(crate) fn new(ctx: SyncContext, file: PathBuf) -> Self {
        Self {
            ctx,
            file,
            pruning: Arc::new(Semaphore::new(1)),
        }
    }

    /// Keeps the runs within their retention (docs/sync.md#runs-and-their-retention) on a task of
    /// its own, so the next run never waits for it.
    fn prune_in_background(&self) {
        let Ok(permit) = self.pruning.clone().try_acquire_owned() else {
            return;
        };
        let (db, bound) = (self.ctx.db.clone(), self.ctx.settings.retention.runs);
        tokio::spawn(async move {
            crate::runs::prune_or_warn(&db, bound).await;
            drop(permit);
        });
    }
}

impl RunSync for PipelineSync {
    async fn run_sync(
        &self,
        trigger: Trigger,
        load_id: LoadId,
        cancel: CancellationToken,
    ) -> RunEnd {
        let request = SyncRequest {
            file: self.file.clone(),
            trigger,
            force: false,
            dry_run: false,
            allow_mass_delete: false,
            allow_mass_update: false,
            allow_file_change: self.ctx.settings.guard.allow_file_change,
        };
        let summary = run_sync(&self.ctx, &request, load_id, cancel).await;
        self.prune_in_background();
        if summary.transient {
            RunEnd::Transient
        } else {
            RunEnd::Done
        }
    }
}

/// A configured mirror's sync (docs/mirrors.md#runs); its run records are
/// pruned by the run itself.
pub(crate) struct MirrorSync {
    ctx: SyncContext,
    spec: crate::mirror::MirrorSpec,
}

impl MirrorSync {
    pub(crate) fn new(ctx: SyncContext, spec: crate::mirror::MirrorSpec) -> Self {
        Self { ctx, spec }
    }
}

impl RunSync for MirrorSync {
    async fn run_sync(
        &self,
        trigger: Trigger,
        load_id: LoadId,
        cancel: CancellationToken,
    ) -> RunEnd {
        let request = crate::pipeline::mirror::MirrorRequest {
            trigger,
            force: false,
            dry_run: false,
            allow_mass_delete: false,
            allow_mass_update: false,
        };
        let summary = crate::pipeline::mirror::run_mirror_sync(
            &self.ctx, &self.spec, &request, load_id, cancel,
        )
        .await;
        if summary.transient {
            RunEnd::Transient
        } else {
            RunEnd::Done
        }
    }
}

/// A sync that first takes one of the agent's `MAX_PARALLEL_MIRRORS` slots
/// (docs/mirrors.md#runs): mirrors wait for a slot, never for each other's locks.
pub(crate) struct Slotted<S> {
    sync: S,
    slots: Arc<Semaphore>,
}

impl<S> Slotted<S> {
    pub(crate) fn new(sync: S, slots: Arc<Semaphore>) -> Self {
        Self { sync, slots }
    }
}

impl<S: RunSync> RunSync for Slotted<S> {
    async fn run_sync(
        &self,
        trigger: Trigger,
        load_id: LoadId,
        cancel: CancellationToken,
    ) -> RunEnd {
        let slot = tokio::select! {
            slot = self.slots.acquire() => slot,
            _ = cancel.cancelled() => return RunEnd::Done,
        };
        let end = self.sync.run_sync(trigger, load_id, cancel).await;
        drop(slot);
        end
    }
}

pub(crate) struct Runner<S> {
    sync: S,
    shutdown_timeout: Duration,
    retry: RetryPolicy,
    requests: mpsc::UnboundedReceiver<Trigger>,
}

impl<S: RunSync> Runner<S> {
    pub(crate) fn new(
        sync: S,
        shutdown_timeout: Duration,
        retry: RetryPolicy,
    ) -> (Self, RunRequests) {
        let (tx, rx) = mpsc::unbounded_channel();
        let runner = Self {
            sync,
            shutdown_timeout,
            retry,
            requests: rx,
        };
        (runner, RunRequests(tx))
    }

    /// Runs until `stop` is cancelled; returns once no run is in flight.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
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
            if !self.run_with_retries(trigger, &stop).await {
                return;
            }
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

    /// One run, and its retries while it fails for a transient reason, waiting
    /// `RetryPolicy::delay` before each; a trigger during the wait runs at once
    /// (as a retry). `false` when stopped (or the triggers gone) while waiting.
    async fn run_with_retries(&mut self, mut trigger: Trigger, stop: &CancellationToken) -> bool {
        let mut attempt = 0;
        loop {
            if self.run_one(trigger, stop).await == RunEnd::Done || stop.is_cancelled() {
                return true;
            }
            if attempt >= self.retry.max_attempts {
                if attempt > 0 {
                    tracing::warn!(
                        retries = attempt,
                        "retries exhausted (RETRY_MAX_ATTEMPTS); the next trigger tries again"
                    );
                }
                return true;
            }
            attempt += 1;
            let delay = self.retry.delay(attempt);
            tracing::warn!(
                attempt,
                of = self.retry.max_attempts,
                in_s = delay.as_secs_f64(),
                trigger = trigger.as_str(),
                "the run failed for a transient reason; retrying"
            );
            tokio::select! {
                biased;
                _ = stop.cancelled() => return false,
                next = self.requests.recv() => match next {
                    Some(next) => trigger = next,
                    None => return false,
                },
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn run_one(&self, trigger: Trigger, stop: &CancellationToken) -> RunEnd {
        let cancel = CancellationToken::new();
        let load_id = LoadId::new();
        let run = self.sync.run_sync(trigger, load_id, cancel.clone());
        tokio::pin!(run);
        tokio::select! {
            end = &mut run => return end,
            _ = stop.cancelled() => {}
        }
        tracing::info!(timeout = ?self.shutdown_timeout, %load_id, "stopping: waiting for the run in flight");
        match tokio::time::timeout(self.shutdown_timeout, &mut run).await {
            Ok(end) => end,
            Err(_) => {
                tracing::warn!(%load_id, "shutdown timeout reached: cancelling the run");
                cancel.cancel();
                run.await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::time::Instant;

    const RUN: Duration = Duration::from_secs(10);
    const TIMEOUT: Duration = Duration::from_secs(30);
    const NO_RETRY: RetryPolicy = RetryPolicy {
        max_attempts: 0,
        backoff: Duration::from_secs(1),
    };

    /// What a fake sync saw: its trigger, and whether it was cancelled.
    type Log = Arc<Mutex<Vec<(Trigger, bool)>>>;

    /// A sync that takes `RUN` (or until cancelled) and logs itself.
    fn fake(log: Log, run: Duration) -> impl RunSync {
        move |trigger, _load_id, cancel: CancellationToken| {
            let log = log.clone();
            async move {
                let cancelled = tokio::select! {
                    _ = tokio::time::sleep(run) => false,
                    _ = cancel.cancelled() => true,
                };
                log.lock().unwrap().push((trigger, cancelled));
                RunEnd::Done
            }
        }
    }

    fn runs(log: &Log) -> Vec<(Trigger, bool)> {
        log.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn triggers_during_a_run_coalesce_into_one_follow_up_run() {
        let log = Log::default();
        let (runner, requests) = Runner::new(fake(log.clone(), RUN), TIMEOUT, NO_RETRY);
        let stop = CancellationToken::new();
        let driver = async {
            requests.send(Trigger::Start);
            tokio::time::sleep(RUN / 2).await;
            for trigger in [Trigger::Cron, Trigger::Watch, Trigger::Watch] {
                requests.send(trigger);
            }
            tokio::time::sleep(RUN * 4).await;
            stop.cancel();
        };
        tokio::join!(runner.run(stop.clone()), driver);
        assert_eq!(
            runs(&log),
            [(Trigger::Start, false), (Trigger::Cron, false)],
            "one run, then one follow-up for the three triggers during it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_in_flight_at_stop_finishes_within_the_shutdown_timeout() {
        let log = Log::default();
        let (runner, requests) = Runner::new(fake(log.clone(), RUN), TIMEOUT, NO_RETRY);
        let stop = CancellationToken::new();
        let driver = async {
            requests.send(Trigger::Start);
            tokio::time::sleep(RUN / 2).await;
            requests.send(Trigger::Cron);
            stop.cancel();
        };
        tokio::join!(runner.run(stop.clone()), driver);
        assert_eq!(
            runs(&log),
            [(Trigger::Start, false)],
            "finished, not cancelled; no new run after stop"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_outlasting_the_shutdown_timeout_is_cancelled() {
        let log = Log::default();
        let (runner, requests) = Runner::new(fake(log.clone(), RUN * 100), TIMEOUT, NO_RETRY);
        let stop = CancellationToken::new();
        let stopped = Arc::new(Mutex::new(None));
        let driver = async {
            requests.send(Trigger::Start);
            tokio::time::sleep(RUN).await;
            *stopped.lock().unwrap() = Some(Instant::now());
            stop.cancel();
        };
        tokio::join!(runner.run(stop.clone()), driver);
        let stopped = stopped.lock().unwrap().expect("stopped");
        assert_eq!(stopped.elapsed(), TIMEOUT, "cancelled at the timeout");
        assert_eq!(runs(&log), [(Trigger::Start, true)]);
    }

    /// A sync that fails transiently `failures` times, then succeeds; logs when
    /// each attempt started.
    fn flaky(starts: Arc<Mutex<Vec<Instant>>>, failures: usize) -> impl RunSync {
        move |_trigger, _load_id, _cancel| {
            let starts = starts.clone();
            async move {
                let mut starts = starts.lock().unwrap();
                starts.push(Instant::now());
                if starts.len() <= failures {
                    RunEnd::Transient
                } else {
                    RunEnd::Done
                }
            }
        }
    }

    const RETRY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        backoff: Duration::from_secs(5),
    };

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_retried_with_exponential_back_off() {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let (runner, requests) = Runner::new(flaky(starts.clone(), 2), TIMEOUT, RETRY);
        let stop = CancellationToken::new();
        let begin = Instant::now();
        let driver = async {
            requests.send(Trigger::Cron);
            tokio::time::sleep(Duration::from_secs(600)).await;
            stop.cancel();
        };
        tokio::join!(runner.run(stop.clone()), driver);
        let at: Vec<u64> = starts
            .lock()
            .unwrap()
            .iter()
            .map(|t| (*t - begin).as_secs())
            .collect();
        assert_eq!(
            at,
            [0, 5, 15],
            "two retries, after 5 s then 10 s; the third attempt succeeded"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded() {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let (runner, requests) = Runner::new(flaky(starts.clone(), 100), TIMEOUT, RETRY);
        let stop = CancellationToken::new();
        let driver = async {
            requests.send(Trigger::Cron);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            stop.cancel();
        };
        tokio::join!(runner.run(stop.clone()), driver);
        assert_eq!(
            starts.lock().unwrap().len(),
            4,
            "one run and RETRY_MAX_ATTEMPTS=3 retries"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_the_back_off_ends_the_runner_at_once() {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let (runner, requests) = Runner::new(flaky(starts.clone(), 100), TIMEOUT, RETRY);
        let stop = CancellationToken::new();
        let begin = Instant::now();
        let driver = async {
            requests.send(Trigger::Cron);
            tokio::time::sleep(Duration::from_secs(2)).await;
            stop.cancel();
        };
        tokio::join!(runner.run(stop.clone()), driver);
        assert_eq!(
            begin.elapsed(),
            Duration::from_secs(2),
            "no wait for the back-off"
        );
        assert_eq!(starts.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trigger_during_the_back_off_runs_at_once() {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let (runner, requests) = Runner::new(flaky(starts.clone(), 1), TIMEOUT, RETRY);
        let stop = CancellationToken::new();
        let begin = Instant::now();
        let driver = async {
            requests.send(Trigger::Start);
            tokio::time::sleep(Duration::from_secs(2)).await;
            requests.send(Trigger::Watch);
            tokio::time::sleep(Duration::from_secs(60)).await;
            stop.cancel();
        };
        tokio::join!(runner.run(stop.clone()), driver);
        let at: Vec<u64> = starts
            .lock()
            .unwrap()
            .iter()
            .map(|t| (*t - begin).as_secs())
            .collect();
        assert_eq!(
            at,
            [0, 2],
            "the watch trigger was the retry; no run after it succeeded"
        );
    }

    #[test]
    fn the_back_off_doubles_up_to_its_cap() {
        let d = |n| RETRY.delay(n).as_secs();
        assert_eq!((d(1), d(2), d(3), d(4)), (5, 10, 20, 40));
        assert_eq!(RETRY.delay(40), RetryPolicy::MAX_DELAY);
    }
}

//! Fires the cron schedule: a tokio loop over `Schedule::next_after`, sleeping
//! toward each activation in steps of at most 30 s and re-reading the wall clock,
//! so a suspended machine or a clock step does not make it fire late by hours.
//! (tokio-cron-scheduler cannot honour robfig's syntax and DST rules; see
//! docs/operations.md#why-not-tokio-cron-scheduler.)

use crate::domain::Trigger;
use crate::runner::RunRequests;
use chrono::Utc;
use robfig_cron::Schedule;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const MAX_NAP: Duration = Duration::from_secs(30);

pub(crate) async fn run(schedule: Schedule, requests: RunRequests, stop: CancellationToken) {
    loop {
        let Some(next) = schedule.next_after(Utc::now()) else {
            tracing::warn!(schedule = %schedule, "the cron schedule never fires");
            return;
        };
        tracing::debug!(next = %next.with_timezone(&schedule.zone()).to_rfc3339(), "next cron activation");
        loop {
            let remaining = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            if remaining.is_zero() {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(remaining.min(MAX_NAP)) => {}
            }
        }
        tracing::info!(schedule = %schedule, "cron fired");
        requests.send(Trigger::Cron);
    }
}

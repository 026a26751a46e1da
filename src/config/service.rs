//! The settings of the agent's service: the HTTP listener (`HTTP_ADDR`), how long
//! shutting down may take, the retries of a run that failed for a transient
//! reason (docs/sync.md#refusals-and-approvals), and how many mirrors sync at
//! once (docs/mirrors.md#runs).

use super::parse::{duration_or, int_or};
use super::sources::Raw;
use super::{invalid, var, ConfigError};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceSettings {
    /// `None` is `HTTP_ADDR=off`.
    pub http_addr: Option<SocketAddr>,
    pub shutdown_timeout: Duration,
    /// `serve`'s retries of a run that failed for a transient reason.
    pub retry: RetryPolicy,
    /// How many mirrors sync at once (`MAX_PARALLEL_MIRRORS`, ≥ 1;
    /// docs/mirrors.md#runs): `sync` of every mirror and `serve`'s triggers.
    pub max_parallel_mirrors: usize,
}

impl ServiceSettings {
    pub(super) fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        Ok(Self {
            http_addr: http_addr(raw)?,
            shutdown_timeout: duration_or(raw, var::SHUTDOWN_TIMEOUT, Duration::from_secs(30))?,
            retry: RetryPolicy {
                max_attempts: int_or(raw, var::RETRY_MAX_ATTEMPTS, 0, 5)?,
                backoff: duration_or(raw, var::RETRY_BACKOFF, Duration::from_secs(5))?,
            },
            max_parallel_mirrors: int_or(raw, var::MAX_PARALLEL_MIRRORS, 1, 2)?,
        })
    }
}

/// Bounded exponential back-off of `serve`'s retries after a transient failure
/// (docs/sync.md#refusals-and-approvals): `max_attempts` retries (0: none), the
/// first after `backoff`, each next one after twice the wait before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Duration,
}

impl RetryPolicy {
    /// No single wait is longer than this, whatever the attempt.
    pub const MAX_DELAY: Duration = Duration::from_secs(3600);

    /// The wait before retry `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        self.backoff.saturating_mul(factor).min(Self::MAX_DELAY)
    }
}

fn http_addr(raw: &Raw) -> Result<Option<SocketAddr>, ConfigError> {
    match raw.get(var::HTTP_ADDR).map(str::trim) {
        None => Ok(Some(SocketAddr::from(([127, 0, 0, 1], 9188)))),
        Some(v) if v.eq_ignore_ascii_case("off") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            invalid(
                var::HTTP_ADDR,
                v,
                "expected IP:port such as 0.0.0.0:9188 or 127.0.0.1:9188 (an IP address, not a host name), or off",
            )
        }),
    }
}

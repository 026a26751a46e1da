//! Triggers: what starts a run. `cron` (robfig/cron v3 schedules) and `watch`
//! (file changes) only send requests to the runner.

pub mod cron;

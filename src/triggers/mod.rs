//! Triggers: what starts a run. Each only sends a request to the runner.
//! `cron` parses and evaluates robfig/cron v3 schedules, `ticker` fires them,
//! `watch` notices a changed CSV file.

pub mod cron;
pub mod ticker;
pub mod watch;

//! Triggers: what starts a run. Each only sends a request to the runner.
//! `ticker` fires the cron schedule (parsed and evaluated by the workspace crate
//! `robfig-cron`), `watch` notices a changed CSV file.

pub(crate) mod ticker;
pub(crate) mod watch;

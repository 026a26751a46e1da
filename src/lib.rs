//! followers-etl: keeps `public.followers` an exact, safe mirror of a CSV file.
//!
//! trigger (`triggers`, `agent`) → read → validate → stage → merge/purge saga →
//! record (`pipeline`, `history`). `main.rs` only parses the command line, loads the
//! settings and dispatches to `cli`.

pub mod agent;
pub mod cli;
pub mod convert;
// lints fixed by the read/config split (issue 19)
#[allow(
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_possible_truncation,
    clippy::too_many_lines,
    unreachable_pub
)]
pub mod config;
pub mod db;
pub mod domain;
pub mod errors;
pub mod exit;
pub mod history;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod rejects;
pub mod runner;
pub mod signals;
pub mod status;
pub mod telemetry;
pub mod triggers;

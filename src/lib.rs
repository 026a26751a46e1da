//! followers-etl: keeps `public.followers` an exact, safe mirror of a CSV file.
//!
//! trigger (`triggers`, `agent`) → read → validate → stage → merge/purge saga →
//! record (`pipeline`, `runs`). `main.rs` only parses the command line, loads the
//! settings and dispatches to `cli`.

pub mod agent;
pub mod cli;
pub mod config;
pub mod convert;
pub mod db;
pub mod domain;
pub mod errors;
pub mod exit;
pub mod http;
pub mod metrics;
pub mod mirror;
pub mod pipeline;
pub mod rejects;
pub mod runner;
pub mod runs;
pub mod signals;
pub mod status;
pub mod telemetry;
pub mod triggers;

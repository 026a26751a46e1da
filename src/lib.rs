//! followers-etl: keeps `public.followers` (and each configured mirror's table) an exact, safe
//! mirror of a CSV file.
//!
//! trigger (`triggers`, `agent`) → read → validate → stage → merge/purge saga →
//! record (`pipeline`, `runs`). `main.rs` only parses the command line, loads the
//! settings and dispatches to `cli`.

pub(crate) mod agent;
pub mod cli;
pub mod config;
pub(crate) mod convert;
pub mod db;
pub mod domain;
pub(crate) mod errors;
pub mod exit;
pub(crate) mod http;
pub(crate) mod metrics;
pub mod mirror;
pub mod pipeline;
pub(crate) mod rejects;
pub(crate) mod runner;
pub(crate) mod runs;
pub(crate) mod signals;
pub(crate) mod status;
pub mod storage;
pub mod telemetry;
pub(crate) mod triggers;

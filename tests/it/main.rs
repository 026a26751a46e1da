//! Integration tests: the real binary against the real PostgreSQL, each test in
//! its own freshly created (and afterwards dropped) database.

mod commands;
mod connection;
mod exports;
mod helpers;
mod line_endings;
mod messages;
mod operations;
mod operator;
mod serve;
mod stability;
mod sync;
mod takeover;

//! Integration tests: the real binary against the real PostgreSQL, each test in
//! its own freshly created (and afterwards dropped) database; the database
//! faults use a private server (`private_pg.rs`).

mod commands;
mod concurrency;
mod connection;
mod crash;
mod db_faults;
mod documentation;
mod drift;
mod dry_run;
mod exports;
mod faults;
mod file_rules;
mod guard;
mod helpers;
mod journal;
mod line_endings;
mod messages;
mod mirror_cli;
mod mirror_glob;
mod mirror_run;
mod mirror_store;
mod mirror_values;
mod mirrors_config;
mod mirrors_sync;
mod operations;
mod operator;
mod private_pg;
mod serve;
mod settle;
mod shapes;
mod stability;
mod sync;
mod takeover;

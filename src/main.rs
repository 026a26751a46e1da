//! The `followers-etl` binary: parse the command line, load and validate the
//! settings (exit 2 when invalid), start telemetry, dispatch.

use clap::Parser;
use followers_etl::cli::{self, Cli};
use followers_etl::config::Settings;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.overrides()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("followers-etl: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    followers_etl::telemetry::init(&settings);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("followers-etl: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(cli::run(cli, settings))
}

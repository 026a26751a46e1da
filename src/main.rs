//! The `followers-etl` binary: parse the command line, load and validate the
//! settings (exit 2 when invalid), start telemetry, dispatch.

use clap::Parser;
use followers_etl::cli::{self, Cli};
use followers_etl::config::{self, Settings};
use followers_etl::exit;
use followers_etl::telemetry::{self, report};
use std::process::ExitCode;
use std::time::Duration;
use tracing::Level;

/// How long the exit waits for blocking threads still running after the command
/// finished (a read stuck in `open()` or `read()` on a hung mount never returns).
const BLOCKING_THREADS_GRACE: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            telemetry::init_early(None);
            if !e.use_stderr() || !telemetry::is_json() {
                e.exit();
            }
            report(Level::ERROR, e.render().to_string().trim_end());
            return exit::usage();
        }
    };
    let settings = match Settings::load(&cli.overrides()) {
        Ok(settings) => settings,
        Err(e) => {
            let format = cli.log_format.clone().or_else(config::early_log_format);
            telemetry::init_early(format.as_deref());
            report(Level::ERROR, &format!("configuration error: {e}"));
            return exit::usage();
        }
    };
    telemetry::init(&settings);
    let ignored = settings.database.url.ignored_keywords();
    if !ignored.is_empty() {
        tracing::warn!(
            keywords = %ignored.join(", "),
            "the connection string sets libpq keywords the driver does not implement: ignored"
        );
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            report(
                Level::ERROR,
                &format!("cannot start the async runtime: {e}"),
            );
            return exit::failure();
        }
    };
    let code = runtime.block_on(cli::run(cli, settings));
    // Dropping the runtime would wait for every blocking thread; a cancelled run
    // has already been compensated, so a thread stuck in a read is abandoned.
    runtime.shutdown_timeout(BLOCKING_THREADS_GRACE);
    code
}

//! `serve`: TEMPORARY until the triggers land.
use crate::config::Settings;
use std::process::ExitCode;
use std::sync::Arc;

pub async fn serve(_settings: Arc<Settings>) -> ExitCode {
    eprintln!("serve: not yet");
    ExitCode::from(1)
}

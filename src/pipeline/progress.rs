//! Progress of a run: every 10 seconds a log line with the current stage, rows
//! staged and rows/s, and, for `sync` on a terminal, a progress bar over the
//! bytes read.

use crate::domain::LoadId;
use crate::domain::Stage;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressStyle {
    /// Log lines only (the agent, or `sync` without a terminal).
    Log,
    /// Log lines and a progress bar on stderr.
    Bar,
}

struct State {
    stage: Mutex<&'static str>,
    staged: Arc<AtomicU64>,
    bytes: AtomicU64,
}

/// A handle to the run's progress; the reporter stops when the last clone drops.
#[derive(Clone)]
pub(crate) struct Progress {
    state: Arc<State>,
    _reporter: Arc<Reporter>,
}

struct Reporter {
    task: tokio::task::JoinHandle<()>,
    bar: Option<indicatif::ProgressBar>,
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress {
    pub(crate) fn stage(&self, now: Stage) {
        if let Ok(mut stage) = self.state.stage.lock() {
            *stage = now.as_str();
        }
    }

    /// The counter the COPY workers add staged rows to.
    pub(crate) fn staged_counter(&self) -> Arc<AtomicU64> {
        self.state.staged.clone()
    }

    /// The reader has consumed the file up to byte `offset`.
    pub(crate) fn read_up_to(&self, offset: u64) {
        self.state.bytes.store(offset, Ordering::Relaxed);
    }
}

pub(crate) fn start(style: ProgressStyle, load_id: LoadId, file: &Path) -> Progress {
    let total_bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let state = Arc::new(State {
        stage: Mutex::new("start"),
        staged: Arc::new(AtomicU64::new(0)),
        bytes: AtomicU64::new(0),
    });
    let bar = (style == ProgressStyle::Bar).then(|| {
        let bar = indicatif::ProgressBar::new(total_bytes);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let (ticker_state, ticker_bar) = (state.clone(), bar.clone());
    let task = tokio::spawn(async move {
        let started = Instant::now();
        let mut last_log = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let rows = ticker_state.staged.load(Ordering::Relaxed);
            let stage = ticker_state.stage.lock().map(|s| *s).unwrap_or("?");
            if let Some(bar) = &ticker_bar {
                bar.set_position(ticker_state.bytes.load(Ordering::Relaxed));
                bar.set_message(format!("{stage}: {rows} rows staged"));
            }
            if last_log.elapsed() >= LOG_EVERY {
                last_log = Instant::now();
                let rate =
                    crate::convert::approx(rows) / started.elapsed().as_secs_f64().max(0.001);
                tracing::info!(%load_id, stage, rows_staged = rows, rows_per_s = rate.round(), elapsed_s = started.elapsed().as_secs(), "run in progress");
            }
        }
    });
    Progress {
        state,
        _reporter: Arc::new(Reporter { task, bar }),
    }
}

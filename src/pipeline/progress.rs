//! Progress of a long run: a log line with rows staged and rows/s every 10 seconds,
//! and, for `sync` on a terminal, a progress bar over the bytes read.

use crate::domain::LoadId;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressStyle {
    /// Log lines only (the agent, or `sync` without a terminal).
    Log,
    /// Log lines and a progress bar on stderr.
    Bar,
}

pub struct Progress {
    task: tokio::task::JoinHandle<()>,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub fn finish(self) {
        self.task.abort();
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

pub fn start(
    style: ProgressStyle,
    load_id: LoadId,
    staged: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    total_bytes: u64,
) -> Progress {
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
    let ticker_bar = bar.clone();
    let task = tokio::spawn(async move {
        let started = Instant::now();
        let mut last_log = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let rows = staged.load(Ordering::Relaxed);
            if let Some(bar) = &ticker_bar {
                bar.set_position(bytes.load(Ordering::Relaxed));
                bar.set_message(format!("{rows} rows staged"));
            }
            if last_log.elapsed() >= LOG_EVERY {
                last_log = Instant::now();
                let rate = rows as f64 / started.elapsed().as_secs_f64().max(0.001);
                tracing::info!(%load_id, rows, rows_per_s = rate.round(), "staging progress");
            }
        }
    });
    Progress { task, bar }
}

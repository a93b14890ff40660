//! Progress: one indicatif bar per scenario, advanced by elapsed time from a ticker thread.
//!
//! Bars are hidden when stdout is not a terminal (CI, redirected runs, tests); the text lines
//! of the suite still go to stderr.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a bar is redrawn.
const TICK: Duration = Duration::from_millis(200);

/// A bar that fills over `expected` time; finished (and cleared) on drop.
#[derive(Debug)]
pub struct ScenarioProgress {
    bar: ProgressBar,
    done: Arc<AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl ScenarioProgress {
    /// Starts a bar labelled `label` expected to take `expected`.
    pub fn start(label: &str, expected: Duration) -> ScenarioProgress {
        let total_ms = expected.as_millis().max(1) as u64;
        let bar = ProgressBar::with_draw_target(Some(total_ms), draw_target());
        if let Ok(style) =
            ProgressStyle::with_template("{prefix:>24} [{bar:32}] {elapsed:>4} / {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_string());
        bar.set_message(format!("{:.0} s", expected.as_secs_f64()));
        let done = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (bar, done) = (bar.clone(), done.clone());
            let started = Instant::now();
            std::thread::Builder::new()
                .name("bench-progress".to_string())
                .spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        bar.set_position((started.elapsed().as_millis() as u64).min(total_ms));
                        std::thread::sleep(TICK);
                    }
                })
                .ok()
        };
        ScenarioProgress { bar, done, ticker }
    }
}

impl Drop for ScenarioProgress {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
        self.bar.finish_and_clear();
    }
}

fn draw_target() -> ProgressDrawTarget {
    if std::io::stdout().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

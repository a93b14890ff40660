//! Unavailability windows: a partition is expected to acknowledge produces whenever a
//! majority of the nodes is unimpaired (at most one node killed, paused, damaged or still
//! catching up). A stretch longer than `WINDOW_MAX` of such time without any
//! acknowledgement of that partition is an anomaly.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::writers::Progress;

/// Longest tolerated time without an acknowledgement while a majority is healthy.
pub const WINDOW_MAX: Duration = Duration::from_secs(5);
const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// A partition without acknowledgements for `length` from `start_ms` (since writers began).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub partition: u32,
    pub start_ms: u64,
    pub length: Duration,
}

#[derive(Debug)]
pub struct Monitor {
    handle: JoinHandle<Vec<Window>>,
    stop: Arc<AtomicBool>,
}

impl Monitor {
    pub fn start(progress: Arc<Progress>, impaired: Arc<Mutex<BTreeSet<u32>>>) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = thread::Builder::new()
            .name("nemesis-availability".to_string())
            .spawn(move || watch(&progress, &impaired, &stop2))
            .expect("spawn the availability monitor");
        Monitor { handle, stop }
    }

    /// Stops watching; returns every window longer than `WINDOW_MAX`.
    pub fn stop(self) -> Vec<Window> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("availability monitor")
    }
}

fn watch(progress: &Progress, impaired: &Mutex<BTreeSet<u32>>, stop: &AtomicBool) -> Vec<Window> {
    let partitions = progress.last_ack_ms.len();
    let mut windows = Vec::new();
    // Per partition: the start of the current stretch without acks while a majority is up.
    let mut open: Vec<Option<u64>> = vec![None; partitions];
    let mut majority_since: Option<u64> = Some(0);
    let close = |windows: &mut Vec<Window>, partition: usize, start: u64, end: u64| {
        let length = Duration::from_millis(end.saturating_sub(start));
        if length > WINDOW_MAX {
            windows.push(Window { partition: partition as u32, start_ms: start, length });
        }
    };
    while !stop.load(Ordering::Relaxed) {
        thread::sleep(SAMPLE_INTERVAL);
        let now = progress.now_ms();
        let majority_up = impaired.lock().unwrap().len() <= 1;
        match (majority_up, majority_since) {
            (true, None) => majority_since = Some(now),
            (false, Some(_)) => majority_since = None,
            _ => {}
        }
        for (p, stretch) in open.iter_mut().enumerate() {
            let last_ack = progress.last_ack_ms[p].load(Ordering::Relaxed);
            match (majority_since, *stretch) {
                (Some(since), None) => *stretch = Some(last_ack.max(since)),
                (Some(_), Some(start)) if last_ack > start => {
                    close(&mut windows, p, start, last_ack);
                    *stretch = Some(last_ack);
                }
                (None, Some(start)) => {
                    close(&mut windows, p, start, now);
                    *stretch = None;
                }
                _ => {}
            }
        }
    }
    let now = progress.now_ms();
    for (p, stretch) in open.iter().enumerate() {
        if let Some(start) = stretch {
            close(&mut windows, p, *start, now);
        }
    }
    windows
}

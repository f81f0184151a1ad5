//! Progress bars on long operations, drawn on standard error only when
//! standard output is a terminal and `--json` is off, so scripts and pipes
//! see nothing extra. The engine counts bytes moved
//! ([`custos_core::progress`]); a small thread turns the count into a bar.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::Cli;

pub struct Bar {
    pb: ProgressBar,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

/// A bar for `label`, sized `total` bytes when known (a spinner otherwise);
/// `None` when output is not a terminal or is JSON.
pub fn start(cli: &Cli, label: &str, total: Option<u64>) -> Option<Bar> {
    if cli.json || !std::io::stdout().is_terminal() || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = match total {
        Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template(
                "{msg:>12} [{bar:32}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{msg:>12} {spinner} {binary_bytes} {binary_bytes_per_sec}")
                .expect("valid template"),
        ),
    };
    pb.set_message(label.to_string());
    let stop = Arc::new(AtomicBool::new(false));
    let base = custos_core::progress::processed();
    let ticker = {
        let (pb, stop) = (pb.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                pb.set_position(custos_core::progress::processed().saturating_sub(base));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    Some(Bar { pb, stop, ticker: Some(ticker) })
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        self.pb.finish_and_clear();
    }
}

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

/// The bar's look: what it works on, then, with a known total, a bar as
/// wide as the terminal leaves room for (so the line never wraps), bytes of
/// the total, the rate and a labelled time left; a spinner otherwise.
pub fn style(total_known: bool) -> ProgressStyle {
    if total_known {
        ProgressStyle::with_template(
            "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}, {eta} left",
        )
        .expect("valid template")
        .progress_chars("=> ")
    } else {
        ProgressStyle::with_template("{msg} {spinner} {binary_bytes} {binary_bytes_per_sec}").expect("valid template")
    }
}

/// A bar for `label` (the command and what it works on), sized `total`
/// bytes when known (a spinner otherwise); `None` when output is not a
/// terminal or is JSON. Dropped, it clears its line.
pub fn start(cli: &Cli, label: &str, total: Option<u64>) -> Option<Bar> {
    if cli.json || !std::io::stdout().is_terminal() || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr()).with_style(style(total.is_some()));
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

//! Prometheus metrics of the operations served: counts, errors, latency
//! histograms and bytes, by operation.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

#[derive(Default)]
struct Series {
    count: u64,
    errors: u64,
    seconds: f64,
    buckets: [u64; BUCKETS.len()],
}

#[derive(Default)]
pub struct Metrics {
    ops: Mutex<BTreeMap<&'static str, Series>>,
    bytes_in: std::sync::atomic::AtomicU64,
    bytes_out: std::sync::atomic::AtomicU64,
    logins_failed: std::sync::atomic::AtomicU64,
}

impl Metrics {
    pub fn record(&self, action: &'static str, took: Duration, ok: bool) {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let s = ops.entry(action).or_default();
        let secs = took.as_secs_f64();
        s.count += 1;
        s.errors += u64::from(!ok);
        s.seconds += secs;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                s.buckets[i] += 1;
            }
        }
    }

    pub fn bytes(&self, inbound: u64, outbound: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.bytes_in.fetch_add(inbound, Relaxed);
        self.bytes_out.fetch_add(outbound, Relaxed);
    }

    pub fn login_failed(&self) {
        self.logins_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The Prometheus text exposition format.
    pub fn text(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let mut o = String::new();
        let ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        o.push_str(
            "# HELP custos_operations_total Operations served, by operation.\n# TYPE custos_operations_total counter\n",
        );
        for (a, s) in ops.iter() {
            let _ = writeln!(o, "custos_operations_total{{operation=\"{a}\"}} {}", s.count);
        }
        o.push_str("# HELP custos_operation_errors_total Operations that ended in an error.\n# TYPE custos_operation_errors_total counter\n");
        for (a, s) in ops.iter() {
            let _ = writeln!(o, "custos_operation_errors_total{{operation=\"{a}\"}} {}", s.errors);
        }
        o.push_str(
            "# HELP custos_operation_seconds Time to serve an operation.\n# TYPE custos_operation_seconds histogram\n",
        );
        for (a, s) in ops.iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(o, "custos_operation_seconds_bucket{{operation=\"{a}\",le=\"{b}\"}} {}", s.buckets[i]);
            }
            let _ = writeln!(o, "custos_operation_seconds_bucket{{operation=\"{a}\",le=\"+Inf\"}} {}", s.count);
            let _ = writeln!(o, "custos_operation_seconds_sum{{operation=\"{a}\"}} {}", s.seconds);
            let _ = writeln!(o, "custos_operation_seconds_count{{operation=\"{a}\"}} {}", s.count);
        }
        let _ = writeln!(
            o,
            "# HELP custos_bytes_total Dataset bytes received and sent.\n# TYPE custos_bytes_total counter"
        );
        let _ = writeln!(o, "custos_bytes_total{{direction=\"in\"}} {}", self.bytes_in.load(Relaxed));
        let _ = writeln!(o, "custos_bytes_total{{direction=\"out\"}} {}", self.bytes_out.load(Relaxed));
        let _ = writeln!(
            o,
            "# HELP custos_logins_failed_total Failed authentications.\n# TYPE custos_logins_failed_total counter"
        );
        let _ = writeln!(o, "custos_logins_failed_total {}", self.logins_failed.load(Relaxed));
        o
    }
}

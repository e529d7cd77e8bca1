//! A fixed-bucket latency histogram, rendered in Prometheus text format.
//! A plain value type with no dependencies in the crate, so the runtime and
//! telemetry can both hold one.

use std::fmt::Write;
use std::time::Duration;

/// Bucket upper bounds in seconds, from 50 µs (one plugin call) to 10 s.
const BOUNDS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// A fixed-bucket latency histogram.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Histogram {
    counts: [u64; BOUNDS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        self.record_n(d, 1);
    }

    /// Records `n` observations of `d` (e.g. every event of a batch).
    pub fn record_n(&mut self, d: Duration, n: u64) {
        let s = d.as_secs_f64();
        let i = BOUNDS.iter().position(|&b| s <= b).unwrap_or(BOUNDS.len());
        self.counts[i] += n;
        self.sum += s * n as f64;
        self.count += n;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds `other`'s observations (several instances of one plugin).
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), in seconds.
    pub fn quantile(&self, q: f64) -> f64 {
        let target = (self.count as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target.max(1) {
                return BOUNDS.get(i).copied().unwrap_or(f64::INFINITY);
            }
        }
        f64::NAN
    }

    /// Writes the histogram in Prometheus text format (the caller writes HELP/TYPE).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in BOUNDS.iter().enumerate() {
            cumulative += self.counts[i];
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

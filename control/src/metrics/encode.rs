//! The Prometheus text exposition format, version 0.0.4: `# HELP` and `# TYPE` lines,
//! then the family's samples, label values escaped, histograms as cumulative `_bucket`
//! series with `le`, `_sum` and `_count`.
//!
//! Why not a crate's encoder: `prometheus-client` writes only OpenMetrics, whose counter
//! families are named without `_total` (`# TYPE croupier_http_requests counter` over
//! `croupier_http_requests_total` samples), which `promtool check metrics` reads as
//! samples without help; and its metric types, like the `prometheus` crate's, are shared
//! atomics behind a family map, not a shard's own cells. Encoding summed cells through
//! either means building its metric objects on every scrape. The format itself is a page
//! of rules (docs/metrics.md).

use std::fmt::Write;

use super::histogram::Buckets;

/// The content type of [`Encoder`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Writes one exposition. Families must be written whole, one after the other, each
/// name once (the callers own that order).
#[derive(Debug, Default)]
pub struct Encoder {
    out: String,
}

impl Encoder {
    /// An empty exposition.
    pub fn new() -> Encoder {
        Encoder { out: String::with_capacity(16 * 1024) }
    }

    /// Starts the family `name`: its help and type.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        let _ = write!(self.out, "\n# TYPE {name} {}\n", kind.name());
    }

    fn series(&mut self, name: &str, suffix: &str, labels: &[(&str, &str)], le: Option<&str>) {
        self.out.push_str(name);
        self.out.push_str(suffix);
        let all = labels.iter().copied().chain(le.map(|v| ("le", v)));
        let mut first = true;
        for (k, v) in all {
            self.out.push(if first { '{' } else { ',' });
            first = false;
            self.out.push_str(k);
            self.out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        if !first {
            self.out.push('}');
        }
        self.out.push(' ');
    }

    /// One sample with an integer value.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.series(name, "", labels, None);
        let _ = writeln!(self.out, "{value}");
    }

    /// One sample with a float value.
    pub fn sample_f64(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.series(name, "", labels, None);
        push_f64(&mut self.out, value);
        self.out.push('\n');
    }

    /// One histogram series: `counts` are the observations per bucket (not cumulative;
    /// one per bound, then `+Inf`), `sum` is in the buckets' integer unit.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], buckets: &Buckets, counts: &[u64], sum: u64) {
        let mut cumulative = 0u64;
        let mut le = String::new();
        for (i, count) in counts.iter().enumerate() {
            cumulative = cumulative.saturating_add(*count);
            le.clear();
            match buckets.bounds.get(i) {
                Some(b) => push_f64(&mut le, *b),
                None => le.push_str("+Inf"),
            }
            self.series(name, "_bucket", labels, Some(&le));
            let _ = writeln!(self.out, "{cumulative}");
        }
        self.series(name, "_sum", labels, None);
        push_f64(&mut self.out, sum as f64 / buckets.per_unit);
        self.out.push('\n');
        self.series(name, "_count", labels, None);
        let _ = writeln!(self.out, "{cumulative}");
    }

    /// The exposition.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A float as Prometheus reads it (`+Inf`, `-Inf`, `NaN`; shortest round-trip digits).
fn push_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::super::histogram::Buckets;
    use super::*;

    #[test]
    fn families_samples_and_escapes() {
        let mut e = Encoder::new();
        e.family("x_total", Kind::Counter, "What \\ it counts\nsecond line.");
        e.sample("x_total", &[("a", "q\"uo\\te\n"), ("b", "2")], 7);
        e.sample("x_total", &[], 0);
        e.family("y", Kind::Gauge, "A gauge.");
        e.sample_f64("y", &[], 0.25);
        e.sample_f64("y", &[("k", "v")], f64::INFINITY);
        assert_eq!(
            e.finish(),
            "# HELP x_total What \\\\ it counts\\nsecond line.\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"uo\\\\te\\n\",b=\"2\"} 7\nx_total 0\n\
             # HELP y A gauge.\n# TYPE y gauge\ny 0.25\ny{k=\"v\"} +Inf\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_with_sum_in_base_units() {
        const B: Buckets = Buckets { bounds: &[0.5, 1.0], ticks: &[500, 1000], per_unit: 1e3 };
        let mut e = Encoder::new();
        e.family("d_seconds", Kind::Histogram, "D.");
        e.histogram("d_seconds", &[("t", "a")], &B, &[2, 0, 1], 2500);
        assert_eq!(
            e.finish(),
            "# HELP d_seconds D.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{t=\"a\",le=\"0.5\"} 2\nd_seconds_bucket{t=\"a\",le=\"1\"} 2\n\
             d_seconds_bucket{t=\"a\",le=\"+Inf\"} 3\nd_seconds_sum{t=\"a\"} 2.5\nd_seconds_count{t=\"a\"} 3\n"
        );
    }
}

//! The report of every bench: printing it as it goes (rows on stdout, progress on stderr), its
//! target lines, and the number formats of its figures.

use std::fmt::Write as _;
use std::time::Duration;

use super::scenarios::Run;

/// Prints and clears `out`, flushing so that rows appear as their scenarios finish.
pub(super) fn emit(out: &mut String) {
    out_lossy!("{out}");
    out.clear();
}

pub(super) fn progress(message: &str) {
    eprintln!("onceq bench: {message}");
}

/// One line of a report's targets: `met` or `MISSED`, then what the target says.
pub(super) fn target_line(out: &mut String, met: bool, what: std::fmt::Arguments<'_>) {
    let _ = writeln!(out, "  {:<6} {what}", if met { "met" } else { "MISSED" });
}

/// The target line of a throughput: `<what> ≥ <target> jobs/s: <rate>`.
pub(super) fn rate_target(out: &mut String, what: &str, rate: f64, target: f64) {
    target_line(out, rate >= target, format_args!("{what} ≥ {} jobs/s: {}", thousands(target), thousands(rate)));
}

/// `1234567.8` → `1,234,568`.
pub(super) fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", value.max(0.0));
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    grouped
}

/// A latency in milliseconds, three decimals.
pub(super) fn millis(latency: Option<Duration>) -> String {
    latency.map_or_else(|| "-".into(), |d| format!("{:.3}", d.as_secs_f64() * 1000.0))
}

/// The p50 and p99 of a run whose calls are all of one kind; `-` when it has several kinds,
/// which [`row_details`] lists on lines of their own.
pub(super) fn one_kind_latencies(run: &Run) -> (String, String) {
    match run.calls.as_slice() {
        [only] => (millis(only.percentile(0.50)), millis(only.percentile(0.99))),
        _ => ("-".into(), "-".into()),
    }
}

/// The lines below a row whose scenario column is `width` wide: each round's ratio (when there
/// were several rounds) and each kind of call's p50 and p99 (when there were several kinds).
pub(super) fn row_details(out: &mut String, width: usize, ratios: &[f64], run: &Run) {
    if ratios.len() > 1 {
        let each: Vec<String> = ratios.iter().map(|r| format!("{:.0}%", 100.0 * r)).collect();
        let _ = writeln!(out, "{:<width$} ratio of each round: {}", "", each.join(" "));
    }
    if run.calls.len() > 1 {
        for calls in &run.calls {
            let _ = writeln!(
                out,
                "{:<width$} {:>9} {:>10} {:>9} {:>9}",
                format!("  {} calls ({})", calls.kind, thousands(calls.latencies.len() as f64)),
                "",
                "",
                millis(calls.percentile(0.50)),
                millis(calls.percentile(0.99)),
            );
        }
    }
}

/// The limiter-cost target line, in both benches: the limiter itself is cheap.
pub(super) fn limited_target(out: &mut String, ratio: f64) {
    target_line(
        out,
        ratio >= 0.90,
        format_args!("rate-limited lease+ack (a limit that never binds) ≥ 90% of unlimited: {:.0}%", 100.0 * ratio),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(f64::NAN), "-");
    }
}

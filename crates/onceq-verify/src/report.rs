//! How `onceq verify` shows its [`Report`]s: a table of figure × mode for people, JSON for
//! machines.
//!
//! The table has one row per [`Figure`] and one column per report (headed by its mode), then a
//! `total` column: the sum of each count over the reports, and for `drain_ms` the longest drain.
//! A count that breaks its mode's promise is marked `!`. Under the table comes one line per
//! report: `PASS <mode>` when it kept its promise, else one `FAIL <mode>: <broken promise>` line
//! per violation.
//!
//! A pipeline run (`--pipeline`) has its own table: one row per [`Stage`], its figures as columns
//! ([`render_pipeline_table`]), and its own JSON ([`render_pipeline_json`]).

use std::fmt::Write as _;

use serde::Serialize;

use crate::checker::{Figure, Report};
use crate::pipeline::{Stage, StageReport};

/// The marker after a count that breaks its mode's promise.
const BROKEN_MARK: char = '!';

/// True when every report kept its mode's promise (what `onceq verify`'s exit status says).
pub fn promises_kept(reports: &[Report]) -> bool {
    reports.iter().all(Report::promise_kept)
}

/// Renders the reports as a table of figure × mode with totals, then a PASS/FAIL line per mode.
pub fn render_table(reports: &[Report]) -> String {
    let mut header = vec!["figure".to_owned()];
    header.extend(reports.iter().map(|report| report.mode.as_str().to_owned()));
    header.push("total".to_owned());

    let mut rows = vec![header];
    for figure in Figure::ALL {
        let mut row = vec![figure.name().to_owned()];
        for report in reports {
            row.push(cell(figure, report));
        }
        row.push(total(figure, reports));
        rows.push(row);
    }

    let mut out = aligned(&rows);
    let _ = writeln!(out, "{BROKEN_MARK} breaks the mode's promise");
    out.push('\n');
    for report in reports {
        let mode = report.mode.as_str();
        if report.violations.is_empty() {
            let _ = writeln!(out, "PASS {mode}");
        }
        for violation in &report.violations {
            let _ = writeln!(out, "FAIL {mode}: {violation}");
        }
    }
    out
}

/// One report's cell for `figure`: the count, marked when it breaks the promise (a space keeps
/// the digits aligned otherwise); `drain_ms` or `-` when no fault was injected.
fn cell(figure: Figure, report: &Report) -> String {
    match figure.count(report) {
        Some(count) => {
            let mark = if figure.breaks_promise(report) { BROKEN_MARK } else { ' ' };
            format!("{count}{mark}")
        }
        None => match report.drain_ms {
            Some(drain_ms) => format!("{drain_ms} "),
            None => "- ".to_owned(),
        },
    }
}

/// The `total` cell: the sum of the counts, or the longest drain.
fn total(figure: Figure, reports: &[Report]) -> String {
    if figure.count_is_duration() {
        return match reports.iter().filter_map(|report| report.drain_ms).max() {
            Some(drain_ms) => format!("{drain_ms} "),
            None => "- ".to_owned(),
        };
    }
    let sum: u64 = reports.iter().filter_map(|report| figure.count(report)).fold(0u64, u64::saturating_add);
    format!("{sum} ")
}

impl Figure {
    /// True for the figure that is a duration, not a count.
    fn count_is_duration(self) -> bool {
        self == Figure::DrainMs
    }
}

/// The JSON document `onceq verify --json` prints.
#[derive(Debug, Serialize)]
struct JsonOutput<'a> {
    /// Whether every report kept its mode's promise.
    promises_kept: bool,
    /// The reports, in run order.
    reports: &'a [Report],
}

/// Renders the reports as pretty JSON: `{"promises_kept": bool, "reports": [Report, ...]}`, each
/// report with every figure under its field name and its `violations`.
pub fn render_json(reports: &[Report]) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&JsonOutput { promises_kept: promises_kept(reports), reports })
}

// ---------------------------------------------------------------------------------------------
// Pipeline mode

/// True when every stage kept its promise (what `onceq verify --pipeline`'s exit status says).
pub fn stages_kept(reports: &[StageReport]) -> bool {
    reports.iter().all(StageReport::promise_kept)
}

/// Renders a pipeline run's stages as one table, a row per stage, then a PASS/FAIL line per
/// stage and what the enqueue-then-ack row's duplicates mean.
pub fn render_pipeline_table(reports: &[StageReport]) -> String {
    let header = [
        "stage",
        "inputs",
        "settled",
        "dead",
        "lost",
        "outputs missing",
        "outputs duplicated",
        "output redeliveries",
        "unexpected",
        "commits replayed",
        "drain_ms",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for report in reports {
        let committed = report.stage == Stage::Committed;
        let count = |n: u64, forbidden: bool| {
            let mark = if forbidden && n > 0 { BROKEN_MARK } else { ' ' };
            format!("{n}{mark}")
        };
        rows.push(vec![
            report.stage.name().to_owned(),
            count(report.inputs, false),
            count(report.settled, false),
            count(report.dead, false),
            count(report.lost, true),
            count(report.outputs_missing, true),
            count(report.outputs_duplicated, committed),
            count(report.output_redeliveries, false),
            count(report.unexpected, true),
            count(report.commits_replayed, false),
            report.drain_ms.map_or_else(|| "- ".to_owned(), |ms| format!("{ms} ")),
        ]);
    }
    let mut out = aligned(&rows);
    let _ = writeln!(out, "{BROKEN_MARK} breaks the stage's promise");
    let _ = writeln!(
        out,
        "enqueue-then-ack's duplicated outputs are the expected contrast (its ack is a step apart from its \
         enqueues), not a failure; committed must show 0 missing and 0 duplicated"
    );
    out.push('\n');
    for report in reports {
        let stage = report.stage.name();
        if report.violations.is_empty() {
            let _ = writeln!(out, "PASS {stage}");
        }
        for violation in &report.violations {
            let _ = writeln!(out, "FAIL {stage}: {violation}");
        }
    }
    out
}

/// The JSON document `onceq verify --pipeline --json` prints.
#[derive(Debug, Serialize)]
struct PipelineJson<'a> {
    /// Whether every stage kept its promise.
    promises_kept: bool,
    /// The stages, committed first.
    stages: &'a [StageReport],
}

/// Renders a pipeline run's stages as pretty JSON: `{"promises_kept": bool, "stages":
/// [StageReport, ...]}`.
pub fn render_pipeline_json(reports: &[StageReport]) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&PipelineJson { promises_kept: stages_kept(reports), stages: reports })
}

/// `rows` as a table: the first column left-aligned, the others right-aligned, each as wide as
/// its widest cell, two spaces apart.
fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> =
        (0..columns).map(|column| rows.iter().map(|row| row[column].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (column, text) in row.iter().enumerate() {
            if column == 0 {
                let _ = write!(line, "{text:<width$}", width = widths[0]);
            } else {
                let _ = write!(line, "  {text:>width$}", width = widths[column]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

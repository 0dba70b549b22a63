//! Aligned columns for `--output table`, and the short forms of values that fit in a column.

use onceq_core::api::format_time;
use onceq_core::{Backoff, Headers, Jitter, Timestamp};

/// Most characters of a payload or error text shown in a table cell; the JSON output has it all.
pub const CELL_CHARS_MAX: usize = 60;

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: flush left.
    Left,
    /// Numbers: flush right, so digits line up.
    Right,
}

/// Rows of cells under a header, printed in aligned columns two spaces apart.
#[derive(Debug, Clone)]
pub struct Table {
    /// The column titles and alignments.
    columns: Vec<(&'static str, Align)>,
    /// Each row has one cell per column.
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table { columns: columns.to_vec(), rows: Vec::new() }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.columns.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, header first, every line ending in a newline, no trailing spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.columns.iter().map(|(title, _)| title.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.columns.iter().map(|(title, _)| (*title).to_owned()).collect();
        let mut out = String::new();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, ((cell, width), (_, align))) in cells.iter().zip(&widths).zip(&self.columns).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = width.saturating_sub(cell.chars().count());
                match align {
                    Align::Left => {
                        line.push_str(cell);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Most characters of an ordering key shown in a table cell.
pub const KEY_CHARS_MAX: usize = 32;

/// An ordering key for a table cell, `-` for none.
pub fn ordering_key(key: Option<&str>) -> String {
    key.map_or_else(|| "-".into(), |key| one_line(key, KEY_CHARS_MAX))
}

/// A queue's ordering in words: `none`, or `per_key` with its partitions and whether a dead
/// job blocks its key.
pub fn ordering(config: &onceq_core::QueueConfig) -> String {
    match config.ordering {
        onceq_core::Ordering::None => "none".into(),
        onceq_core::Ordering::PerKey if config.dead_blocks_key => {
            format!("per_key, {} partitions, dead blocks key", config.partitions)
        }
        onceq_core::Ordering::PerKey => format!("per_key, {} partitions", config.partitions),
    }
}

/// Name / value lines (a record rather than a list), names aligned.
pub fn record(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(name, _)| name.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for (name, value) in fields {
        let line = format!("{name:<width$}  {value}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// An age in milliseconds, short and readable: `850ms`, `12.3s`, `4m05s`, `2h03m`, `3d04h`.
pub fn age(ms: u64) -> String {
    const SECOND: u64 = 1000;
    const MINUTE: u64 = 60 * SECOND;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    match ms {
        ms if ms < SECOND => format!("{ms}ms"),
        ms if ms < MINUTE => format!("{:.1}s", ms as f64 / SECOND as f64),
        ms if ms < HOUR => format!("{}m{:02}s", ms / MINUTE, (ms % MINUTE) / SECOND),
        ms if ms < DAY => format!("{}h{:02}m", ms / HOUR, (ms % HOUR) / MINUTE),
        ms => format!("{}d{:02}h", ms / DAY, (ms % DAY) / HOUR),
    }
}

/// An optional age; `-` when there is none.
pub fn age_or_dash(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".to_owned(), age)
}

/// A time as the API writes it (RFC 3339 UTC, milliseconds).
pub fn time(at: Timestamp) -> String {
    format_time(at)
}

/// `yes` or `no`.
pub fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// A payload as one line of text: its UTF-8 with control characters as spaces, cut at `max`
/// characters (marked `…`); a payload that is not UTF-8 shows its size.
pub fn payload(bytes: &[u8], max: usize) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => one_line(text, max),
        Err(_) => format!("<{} bytes, not UTF-8>", bytes.len()),
    }
}

/// `text` on one line (control characters as spaces), cut at `max` characters (marked `…`).
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max.saturating_mul(4)));
    for (count, c) in text.chars().enumerate() {
        if count == max {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// Headers as `name=value` pairs, comma-separated; `-` when there are none.
pub fn headers(headers: &Headers) -> String {
    if headers.is_empty() {
        return "-".to_owned();
    }
    headers.iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join(", ")
}

/// A retry policy in one line: `1000ms × 2, at most 600000ms, full jitter`.
pub fn backoff(backoff: &Backoff) -> String {
    let jitter = match backoff.jitter {
        Jitter::Full => "full",
        Jitter::Equal => "equal",
        Jitter::None => "no",
    };
    format!("{}ms × {}, at most {}ms, {jitter} jitter", backoff.initial_ms, backoff.multiplier, backoff.max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_left_for_text_and_right_for_numbers() {
        let mut table = Table::new(&[("QUEUE", Align::Left), ("READY", Align::Right), ("PAUSED", Align::Left)]);
        table.row(vec!["emails".into(), "3".into(), "no".into()]);
        table.row(vec!["billing.invoices".into(), "12345".into(), "yes".into()]);
        table.row(vec!["short".into()]);
        assert_eq!(
            table.render(),
            "QUEUE             READY  PAUSED\n\
             emails                3  no\n\
             billing.invoices  12345  yes\n\
             short\n"
        );
    }

    #[test]
    fn an_empty_table_is_its_header() {
        let table = Table::new(&[("ID", Align::Right), ("ERROR", Align::Left)]);
        assert_eq!(table.render(), "ID  ERROR\n");
    }

    #[test]
    fn records_align_their_names() {
        let text = record(&[("name", "emails".into()), ("max_attempts", "5".into()), ("empty", String::new())]);
        assert_eq!(text, "name          emails\nmax_attempts  5\nempty\n");
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(age(0), "0ms");
        assert_eq!(age(850), "850ms");
        assert_eq!(age(12_340), "12.3s");
        assert_eq!(age(245_000), "4m05s");
        assert_eq!(age(2 * 3_600_000 + 3 * 60_000 + 59_000), "2h03m");
        assert_eq!(age(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
        assert_eq!(age_or_dash(None), "-");
    }

    #[test]
    fn payloads_fit_on_one_line() {
        assert_eq!(payload(br#"{"to":"ada"}"#, 60), r#"{"to":"ada"}"#);
        assert_eq!(payload(b"{\n  \"a\": 1\n}", 60), "{   \"a\": 1 }");
        assert_eq!(payload("ééééé".as_bytes(), 3), "ééé…");
        assert_eq!(payload(&[0xff, 0x00], 60), "<2 bytes, not UTF-8>");
    }

    #[test]
    fn headers_and_backoff_read_as_one_line() {
        let mut h = Headers::new();
        assert_eq!(headers(&h), "-");
        h.insert("b".into(), "2".into());
        h.insert("a".into(), "1".into());
        assert_eq!(headers(&h), "a=1, b=2");
        assert_eq!(backoff(&Backoff::default()), "1000ms × 2, at most 600000ms, full jitter");
    }
}

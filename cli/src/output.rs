//! Where results go, for people or for machines: [`Output`] writes either
//! aligned text or one JSON object per line to stdout, and progress (people
//! only) to stderr. Also the names of statuses and gRPC codes as printed.

use std::fmt::Write as _;
use std::io::Write as _;

use tether_sdk::FieldStatus;

/// The output mode chosen by `--json`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    json: bool,
}

impl Output {
    /// Text for people (`json` false) or JSON lines for machines.
    pub(crate) fn new(json: bool) -> Self {
        Output { json }
    }

    /// Whether results are JSON lines.
    pub(crate) fn is_json(self) -> bool {
        self.json
    }

    /// Writes one result: `json()` as one line in JSON mode, else `human()`
    /// (text that ends without a newline; one is added).
    pub(crate) fn emit(
        self,
        json: impl FnOnce() -> serde_json::Value,
        human: impl FnOnce() -> String,
    ) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        match self.json {
            true => writeln!(stdout, "{}", json())?,
            false => writeln!(stdout, "{}", human())?,
        }
        stdout.flush()
    }

    /// A progress line on stderr, for people only (nothing in JSON mode).
    pub(crate) fn progress(self, line: &str) {
        if !self.json {
            eprintln!("{line}");
        }
    }
}

/// Columns of text, left-aligned, two spaces apart.
#[derive(Debug, Default)]
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with a header row.
    pub(crate) fn new(header: &[&str]) -> Self {
        Table { rows: vec![header.iter().map(|h| h.to_string()).collect()] }
    }

    /// Adds a row.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether only the header is there.
    pub(crate) fn is_empty(&self) -> bool {
        self.rows.len() <= 1
    }

    /// The table, each line indented by `indent`, without a final newline.
    pub(crate) fn render(&self, indent: &str) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for (i, row) in self.rows.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let mut line = String::from(indent);
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
                }
            }
            out.push_str(line.trim_end());
        }
        out
    }
}

/// A field status as printed: `APPLIED`, or `#n` for a number this CLI's
/// contract does not know.
pub(crate) fn status_name(status: i32) -> String {
    match FieldStatus::try_from(status) {
        Ok(s) => s.as_str_name().trim_start_matches("FIELD_STATUS_").to_string(),
        Err(_) => format!("#{status}"),
    }
}

/// Whether a field that ended in `status` did not take effect (the write
/// failed for it): REJECTED, FAILED, EXPIRED or CANCELLED.
pub(crate) fn is_failure(status: FieldStatus) -> bool {
    matches!(status, FieldStatus::Rejected | FieldStatus::Failed | FieldStatus::Expired | FieldStatus::Cancelled)
}

/// A gRPC code's canonical name, e.g. `DEADLINE_EXCEEDED`.
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Prints an error on stderr: `error: CODE: message` for people, or
/// `{"error": {"code": …, "message": …}}` in JSON mode.
pub(crate) fn print_error(output: Output, code: Option<&str>, message: &str) {
    if output.is_json() {
        eprintln!("{}", serde_json::json!({ "error": { "code": code, "message": message } }));
    } else {
        match code {
            Some(code) => eprintln!("error: {code}: {message}"),
            None => eprintln!("error: {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["PATH", "STATUS", "REASON"]);
        table.row(vec!["windows.front_left".into(), "APPLIED".into(), String::new()]);
        table.row(vec!["doors.lock".into(), "REJECTED".into(), "not_parked".into()]);
        assert_eq!(
            table.render("  "),
            "  PATH                STATUS    REASON\n  windows.front_left  APPLIED\n  doors.lock          REJECTED  not_parked"
        );
        assert!(Table::new(&["A"]).is_empty());
    }

    #[test]
    fn names() {
        assert_eq!(status_name(FieldStatus::Delivered as i32), "DELIVERED");
        assert_eq!(status_name(42), "#42");
        assert_eq!(code_name(tonic::Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert!(is_failure(FieldStatus::Expired) && !is_failure(FieldStatus::Superseded));
    }
}

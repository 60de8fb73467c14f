//! `keyward protect` and `keyward unprotect`: whole CSV or JSON-lines files, column by column, streamed through
//! the API in batches of up to 1000 values, so memory stays flat whatever the file's size. The output is
//! written under a temporary name and put in place only when every row succeeded: a bad row is reported by its
//! line and leaves no output behind.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;
use std::time::Instant;

use keyward_api::{BatchItem, ProtectItem, UnprotectItem};
use keyward_client::Client;

use crate::files::{Access, Staged};

/// Values sent in one call.
const BATCH: usize = 1000;

/// The columns to protect: `NAME:TYPE,...`.
pub fn columns(spec: &str) -> Result<Vec<(String, String)>, String> {
    let cols: Vec<(String, String)> = spec
        .split(',')
        .map(|c| {
            c.split_once(':')
                .map(|(n, t)| (n.trim().to_string(), t.trim().to_string()))
                .filter(|(n, t)| !n.is_empty() && !t.is_empty())
                .ok_or_else(|| format!("--columns takes NAME:TYPE,...; {c:?} is not one"))
        })
        .collect::<Result<_, _>>()?;
    if cols.is_empty() {
        return Err("--columns names no column".into());
    }
    Ok(cols)
}

/// Which way values go.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Values in, ciphertext, mask and blind index out.
    Protect,
    /// Ciphertexts in, values out (the mask and index columns are dropped).
    Unprotect,
}

/// A record of either format: its fields by column name, in order.
struct Row {
    line: u64,
    fields: Vec<(String, String)>,
}

/// Progress on a terminal: rows, values per second, and for a file its share read and the time left.
struct Progress {
    on: bool,
    start: Instant,
    total_bytes: Option<u64>,
    values: u64,
    rows: u64,
}

impl Progress {
    fn new(total_bytes: Option<u64>) -> Progress {
        Progress {
            on: std::io::stderr().is_terminal(),
            start: Instant::now(),
            total_bytes,
            values: 0,
            rows: 0,
        }
    }

    fn update(&mut self, rows: u64, values: u64, bytes_read: u64) {
        self.rows += rows;
        self.values += values;
        if !self.on {
            return;
        }
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let rate = self.values as f64 / secs;
        let tail = match self.total_bytes.filter(|t| *t > 0) {
            Some(total) => {
                let share = (bytes_read as f64 / total as f64).min(1.0);
                let left = if share > 0.0 {
                    secs / share - secs
                } else {
                    0.0
                };
                format!(" {:>3.0}%, about {:.0} s left", share * 100.0, left)
            }
            None => String::new(),
        };
        eprint!("\r{} rows, {:.0} values/s{tail}   ", self.rows, rate);
    }

    fn finish(&self) {
        if self.on {
            eprintln!();
        }
    }
}

/// Runs a whole file through `protect` or `unprotect`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    c: &Client,
    key: &str,
    direction: Direction,
    cols: &[(String, String)],
    input: Option<&Path>,
    out: &Path,
    jsonl: bool,
    context: Option<keyward_api::Context>,
    mode: Option<&str>,
) -> Result<u64, String> {
    let total = input
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len());
    let reader: Box<dyn Read> = match input {
        Some(p) => Box::new(
            std::fs::File::open(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
        ),
        None => Box::new(std::io::stdin()),
    };
    // Plaintext comes out of unprotect: the owner's only, as decrypt writes it.
    let access = match direction {
        Direction::Protect => Access::Ordinary,
        Direction::Unprotect => Access::Private,
    };
    let mut staged = Staged::create(out, access)?;
    let mut progress = Progress::new(total);
    let per_row = cols.len();
    let rows_per_batch = (BATCH / per_row).max(1);
    let mut source = Source::new(reader, jsonl)?;
    let mut header_written = false;
    let fpe = mode == Some("fpe");
    loop {
        let (rows, bytes_read) = source.next_rows(rows_per_batch)?;
        if rows.is_empty() {
            break;
        }
        if !header_written && !jsonl {
            let names = source.header().ok_or("the CSV file has no header row")?;
            for (col, _) in cols {
                if !names.iter().any(|n| n == col) {
                    return Err(format!("the CSV header has no column {col:?}"));
                }
            }
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(out_header(names, cols, direction, fpe))
                .map_err(|e| e.to_string())?;
            staged.write_all(&w.into_inner().map_err(|e| e.to_string())?)?;
            header_written = true;
        }
        let done = transform(c, key, direction, cols, &rows, context.as_ref(), mode).await?;
        staged.write_all(&encode(&done, jsonl)?)?;
        progress.update(rows.len() as u64, (rows.len() * per_row) as u64, bytes_read);
    }
    if !header_written && !jsonl {
        // An empty CSV (only its header, or nothing): the header alone.
        if let Some(names) = source.header() {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(out_header(names, cols, direction, fpe))
                .map_err(|e| e.to_string())?;
            staged.write_all(&w.into_inner().map_err(|e| e.to_string())?)?;
        }
    }
    progress.finish();
    staged.commit()?;
    Ok(progress.rows)
}

/// The columns protect adds beside each protected one: its mask, its blind index, and in mode fpe the key
/// version (a format-preserved value has no room to name it).
const DERIVED: [&str; 3] = ["_masked", "_bidx", "_kv"];

/// Whether `name` is a column protect added for one of `cols`.
fn is_derived(name: &str, cols: &[(String, String)]) -> bool {
    cols.iter().any(|(c, _)| {
        name.strip_prefix(c.as_str())
            .is_some_and(|rest| DERIVED.contains(&rest))
    })
}

fn out_header(
    names: &[String],
    cols: &[(String, String)],
    direction: Direction,
    fpe: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for n in names {
        match direction {
            Direction::Protect => {
                out.push(n.clone());
                if cols.iter().any(|(c, _)| c == n) {
                    out.push(format!("{n}_masked"));
                    out.push(format!("{n}_bidx"));
                    if fpe {
                        out.push(format!("{n}_kv"));
                    }
                }
            }
            Direction::Unprotect => {
                if !is_derived(n, cols) {
                    out.push(n.clone());
                }
            }
        }
    }
    out
}

/// Sends the rows' values in one call and builds the output rows, or names the first row that failed.
async fn transform(
    c: &Client,
    key: &str,
    direction: Direction,
    cols: &[(String, String)],
    rows: &[Row],
    context: Option<&keyward_api::Context>,
    mode: Option<&str>,
) -> Result<Vec<Row>, String> {
    let fpe = mode == Some("fpe");
    let value_of = |row: &Row, col: &str| -> Result<String, String> {
        row.fields
            .iter()
            .find(|(n, _)| n == col)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("line {}: no column {col:?}", row.line))
    };
    let mut answers = Vec::with_capacity(rows.len() * cols.len());
    match direction {
        Direction::Protect => {
            let mut items = Vec::with_capacity(rows.len() * cols.len());
            for row in rows {
                for (col, t) in cols {
                    items.push(ProtectItem {
                        value: value_of(row, col)?,
                        field_type: t.clone(),
                        mode: mode.map(str::to_string),
                        context: context.cloned(),
                        mask: None,
                        tweak: None,
                    });
                }
            }
            let r = c.protect(key, items).await.map_err(|e| e.to_string())?;
            for item in r.items {
                answers.push(match item {
                    BatchItem::Ok(p) => {
                        let mut a = vec![p.ciphertext, p.masked, p.blind_index];
                        if fpe {
                            a.push(p.version.to_string());
                        }
                        Ok(a)
                    }
                    BatchItem::Err(e) => Err(format!("{}: {}", e.error.code, e.error.message)),
                });
            }
        }
        Direction::Unprotect => {
            let mut items = Vec::with_capacity(rows.len() * cols.len());
            for row in rows {
                for (col, t) in cols {
                    let version = match value_of(row, &format!("{col}_kv")) {
                        Ok(v) if fpe => Some(v.parse::<u32>().map_err(|_| {
                            format!("line {}: column {col:?}_kv is not a key version", row.line)
                        })?),
                        _ => None,
                    };
                    items.push(UnprotectItem {
                        ciphertext: value_of(row, col)?,
                        field_type: t.clone(),
                        mode: mode.map(str::to_string),
                        context: context.cloned(),
                        tweak: None,
                        version,
                    });
                }
            }
            let r = c.unprotect(key, items).await.map_err(|e| e.to_string())?;
            for item in r.items {
                answers.push(match item {
                    BatchItem::Ok(u) => Ok(vec![u.value]),
                    BatchItem::Err(e) => Err(format!("{}: {}", e.error.code, e.error.message)),
                });
            }
        }
    }
    let mut answers = answers.into_iter();
    rows.iter()
        .map(|row| {
            let mut results = std::collections::HashMap::new();
            for (col, _) in cols {
                let a = answers
                    .next()
                    .ok_or_else(|| format!("line {}: no answer", row.line))?;
                let a = a.map_err(|e| format!("line {}: column {col:?}: {e}", row.line))?;
                results.insert(col.as_str(), a);
            }
            let mut fields = Vec::new();
            for (name, value) in &row.fields {
                match (direction, results.remove(name.as_str())) {
                    (Direction::Protect, Some(a)) => {
                        let mut a = a.into_iter();
                        fields.push((name.clone(), a.next().unwrap_or_default()));
                        for (suffix, value) in DERIVED.iter().zip(a) {
                            fields.push((format!("{name}{suffix}"), value));
                        }
                    }
                    (Direction::Unprotect, Some(mut a)) => {
                        fields.push((name.clone(), a.pop().unwrap_or_default()));
                    }
                    (Direction::Unprotect, None) if is_derived(name, cols) => {}
                    (_, None) => fields.push((name.clone(), value.clone())),
                }
            }
            Ok(Row {
                line: row.line,
                fields,
            })
        })
        .collect()
}

fn encode(rows: &[Row], jsonl: bool) -> Result<Vec<u8>, String> {
    if jsonl {
        let mut out = Vec::new();
        for row in rows {
            let obj: serde_json::Map<String, serde_json::Value> = row
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            serde_json::to_writer(&mut out, &obj).map_err(|e| e.to_string())?;
            out.push(b'\n');
        }
        return Ok(out);
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    for row in rows {
        w.write_record(row.fields.iter().map(|(_, v)| v))
            .map_err(|e| e.to_string())?;
    }
    w.into_inner().map_err(|e| e.to_string())
}

/// Rows from a CSV file with a header, or from JSON lines (objects whose values are strings).
enum Source {
    Csv {
        reader: csv::Reader<Box<dyn Read>>,
        header: Vec<String>,
    },
    Jsonl {
        lines: std::io::Lines<std::io::BufReader<Box<dyn Read>>>,
        line: u64,
        bytes: u64,
    },
}

impl Source {
    fn new(reader: Box<dyn Read>, jsonl: bool) -> Result<Source, String> {
        if jsonl {
            return Ok(Source::Jsonl {
                lines: std::io::BufReader::new(reader).lines(),
                line: 0,
                bytes: 0,
            });
        }
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(reader);
        let header = reader
            .headers()
            .map_err(|e| format!("the CSV header: {e}"))?
            .iter()
            .map(str::to_string)
            .collect();
        Ok(Source::Csv { reader, header })
    }

    fn header(&self) -> Option<&[String]> {
        match self {
            Source::Csv { header, .. } if !header.is_empty() => Some(header),
            _ => None,
        }
    }

    /// Up to `n` rows, and how many bytes of the input are read so far.
    fn next_rows(&mut self, n: usize) -> Result<(Vec<Row>, u64), String> {
        let mut rows = Vec::with_capacity(n);
        match self {
            Source::Csv { reader, header } => {
                let mut record = csv::StringRecord::new();
                while rows.len() < n {
                    let more = reader
                        .read_record(&mut record)
                        .map_err(|e| format!("CSV: {e}"))?;
                    if !more {
                        break;
                    }
                    let line = record.position().map_or(0, |p| p.line());
                    if record.len() != header.len() {
                        return Err(format!(
                            "line {line}: {} fields where the header has {}",
                            record.len(),
                            header.len()
                        ));
                    }
                    rows.push(Row {
                        line,
                        fields: header
                            .iter()
                            .cloned()
                            .zip(record.iter().map(str::to_string))
                            .collect(),
                    });
                }
                Ok((rows, reader.position().byte()))
            }
            Source::Jsonl { lines, line, bytes } => {
                while rows.len() < n {
                    let Some(text) = lines.next() else { break };
                    let text = text.map_err(|e| format!("cannot read the input: {e}"))?;
                    *line += 1;
                    *bytes += text.len() as u64 + 1;
                    if text.trim().is_empty() {
                        continue;
                    }
                    let obj: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_str(&text)
                            .map_err(|_| format!("line {line}: not a JSON object"))?;
                    let fields = obj
                        .into_iter()
                        .map(|(k, v)| match v {
                            serde_json::Value::String(s) => Ok((k, s)),
                            other => Ok((k, other.to_string())),
                        })
                        .collect::<Result<_, String>>()?;
                    rows.push(Row {
                        line: *line,
                        fields,
                    });
                }
                Ok((rows, *bytes))
            }
        }
    }
}

/// Prints how many rows went through, for scripts that check.
pub fn report(rows: u64, out: &Path) {
    let _ = writeln!(
        std::io::stderr(),
        "{rows} rows written to {}",
        out.display()
    );
}

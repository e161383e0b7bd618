//! `geopromo match`: points in (CSV `id,lat,lon` or NDJSON), one NDJSON line of matches out per point, in
//! input order. Input is read in blocks; each block is split into chunks that are parsed, matched and
//! formatted on all cores, then written in order.

use std::io::{self, BufRead, Read, Write};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Deserialize;

use crate::geofence::{FenceIndex, FenceMatch, GeoPoint, Strategy};

/// Bytes read per block: large enough to keep both cores busy, small enough to stream.
const BLOCK_BYTES: usize = 4 << 20;
/// Lines per parallel chunk.
const CHUNK_LINES: usize = 4096;

/// Input format, detected from the first non-blank line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointFormat {
    /// CSV with a header naming at least `id`, `lat` and `lon`; other columns are ignored.
    Csv { id: usize, lat: usize, lon: usize },
    /// One JSON object per line with `id`, `lat` and `lon`; other fields are ignored.
    Ndjson,
}

/// A row that could not be used, with its 1-based line number.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    pub line: u64,
    pub reason: String,
}

/// What a batch run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchSummary {
    pub points: u64,
    pub points_matched: u64,
    pub bad_rows: Vec<BadRow>,
    pub elapsed: Duration,
}

/// Why a batch could not run at all (bad rows are not this: they are reported and skipped).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("reading points: {0}")]
    Read(#[source] io::Error),
    #[error("writing matches: {0}")]
    Write(#[source] io::Error),
    #[error("CSV header {header:?} lacks column {missing:?} (need id, lat, lon)")]
    MissingColumn {
        header: String,
        missing: &'static str,
    },
}

impl PointFormat {
    /// Detects the format from the first non-blank line; for CSV that line is the header.
    fn detect(first_line: &str) -> Result<Self, BatchError> {
        let trimmed = first_line.trim_start_matches('\u{feff}').trim();
        if trimmed.starts_with('{') {
            return Ok(Self::Ndjson);
        }
        let columns: Vec<String> = split_csv(trimmed)
            .into_iter()
            .map(|c| c.trim().to_ascii_lowercase())
            .collect();
        let find = |name: &'static str| {
            columns
                .iter()
                .position(|c| c == name)
                .ok_or_else(|| BatchError::MissingColumn {
                    header: trimmed.to_string(),
                    missing: name,
                })
        };
        Ok(Self::Csv {
            id: find("id")?,
            lat: find("lat")?,
            lon: find("lon")?,
        })
    }
}

/// Splits one CSV record (RFC 4180 quoting, one record per line).
fn split_csv(line: &str) -> Vec<std::borrow::Cow<'_, str>> {
    if !line.contains('"') {
        return line.split(',').map(std::borrow::Cow::Borrowed).collect();
    }
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::borrow::Cow::Owned(std::mem::take(&mut field))),
            (c, _) => field.push(c),
        }
    }
    fields.push(std::borrow::Cow::Owned(field));
    fields
}

#[derive(Deserialize)]
struct NdjsonPoint {
    id: serde_json::Value,
    lat: f64,
    lon: f64,
}

/// A parsed row: the id already rendered as JSON, and the position.
struct Row {
    id_json: String,
    point: GeoPoint,
}

fn parse_coordinate(field: &str, name: &str) -> Result<f64, String> {
    field
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("{name} {:?} is not a number", field.trim()))
}

fn parse_row(line: &str, format: &PointFormat) -> Result<Row, String> {
    match format {
        PointFormat::Csv { id, lat, lon } => {
            let fields = split_csv(line);
            let get = |i: usize, name: &str| {
                fields.get(i).map(|f| f.as_ref()).ok_or_else(|| {
                    format!(
                        "missing column {name} ({} fields, need {})",
                        fields.len(),
                        i + 1
                    )
                })
            };
            let id = get(*id, "id")?.trim();
            if id.is_empty() {
                return Err("empty id".into());
            }
            let lat = parse_coordinate(get(*lat, "lat")?, "lat")?;
            let lon = parse_coordinate(get(*lon, "lon")?, "lon")?;
            let point = GeoPoint::new(lat, lon).map_err(|e| e.to_string())?;
            let id_json = serde_json::to_string(id).map_err(|e| e.to_string())?;
            Ok(Row { id_json, point })
        }
        PointFormat::Ndjson => {
            let p: NdjsonPoint =
                serde_json::from_str(line).map_err(|e| format!("invalid JSON point: {e}"))?;
            if !(p.id.is_string() || p.id.is_number()) {
                return Err(format!("id must be a string or a number, found {}", p.id));
            }
            let point = GeoPoint::new(p.lat, p.lon).map_err(|e| e.to_string())?;
            Ok(Row {
                id_json: p.id.to_string(),
                point,
            })
        }
    }
}

/// Per-fence JSON fragments (`{"fence":"id","name":"name",`), escaped once per index rather than per match.
pub struct MatchWriter<'a> {
    index: &'a FenceIndex,
    strategy: Strategy,
    prefixes: Vec<String>,
}

impl<'a> MatchWriter<'a> {
    #[must_use]
    pub fn new(index: &'a FenceIndex, strategy: Strategy) -> Self {
        let prefixes = index
            .fences()
            .iter()
            .map(|f| {
                format!(
                    "{{\"fence\":{},\"name\":{},",
                    serde_json::Value::from(f.id.as_str()),
                    serde_json::Value::from(f.name.as_str())
                )
            })
            .collect();
        Self {
            index,
            strategy,
            prefixes,
        }
    }

    /// Appends one output line for a point.
    pub fn write_line(&self, out: &mut Vec<u8>, id_json: &str, matches: &[FenceMatch]) {
        out.extend_from_slice(b"{\"id\":");
        out.extend_from_slice(id_json.as_bytes());
        out.extend_from_slice(b",\"matches\":[");
        for (i, m) in matches.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(self.prefixes[m.fence as usize].as_bytes());
            if m.inside {
                out.extend_from_slice(b"\"inside\":true,\"distance_m\":0}");
            } else {
                let decimetres = (m.distance_m * 10.0).round() / 10.0;
                let _ = write!(out, "\"inside\":false,\"distance_m\":{decimetres}}}");
            }
        }
        out.extend_from_slice(b"]}\n");
    }

    /// Matches one point through the configured strategy.
    pub fn match_point(&self, point: GeoPoint, out: &mut Vec<FenceMatch>) {
        self.index.match_with(self.strategy, point, out);
    }
}

struct ChunkResult {
    output: Vec<u8>,
    bad: Vec<BadRow>,
    points: u64,
    matched: u64,
}

fn process_chunk(
    writer: &MatchWriter<'_>,
    lines: &[(u64, &str)],
    format: &PointFormat,
) -> ChunkResult {
    let mut result = ChunkResult {
        output: Vec::with_capacity(lines.len() * 48),
        bad: Vec::new(),
        points: 0,
        matched: 0,
    };
    let mut matches = Vec::new();
    for &(line_no, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        match parse_row(line, format) {
            Ok(row) => {
                writer.match_point(row.point, &mut matches);
                result.points += 1;
                result.matched += u64::from(!matches.is_empty());
                writer.write_line(&mut result.output, &row.id_json, &matches);
            }
            Err(reason) => result.bad.push(BadRow {
                line: line_no,
                reason,
            }),
        }
    }
    result
}

/// Runs a whole batch: reads `input` to its end and writes one line per good row to `output`.
pub fn run_batch(
    index: &FenceIndex,
    strategy: Strategy,
    input: impl Read,
    mut output: impl Write,
) -> Result<BatchSummary, BatchError> {
    let started = Instant::now();
    let writer = MatchWriter::new(index, strategy);
    let mut reader = io::BufReader::with_capacity(1 << 16, input);
    let mut summary = BatchSummary::default();
    let mut format: Option<PointFormat> = None;
    let mut line_no: u64 = 0;
    let mut carry: Vec<u8> = Vec::new();
    let mut block: Vec<u8> = Vec::with_capacity(BLOCK_BYTES + (1 << 16));
    loop {
        block.clear();
        block.append(&mut carry);
        let mut eof = false;
        while block.len() < BLOCK_BYTES {
            let buf = reader.fill_buf().map_err(BatchError::Read)?;
            if buf.is_empty() {
                eof = true;
                break;
            }
            let n = buf.len();
            block.extend_from_slice(buf);
            reader.consume(n);
        }
        if !eof {
            // Keep the partial last line for the next block.
            let cut = block.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            carry.extend_from_slice(&block[cut..]);
            block.truncate(cut);
        }
        let text = String::from_utf8_lossy(&block);
        let mut lines: Vec<(u64, &str)> = Vec::new();
        for raw in text.split_terminator('\n') {
            line_no += 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if format.is_none() {
                if line.trim().is_empty() {
                    continue;
                }
                let detected = PointFormat::detect(line)?;
                let is_header = matches!(detected, PointFormat::Csv { .. });
                format = Some(detected);
                if is_header {
                    continue;
                }
            }
            lines.push((line_no, line));
        }
        if let Some(format) = &format {
            let results: Vec<ChunkResult> = lines
                .par_chunks(CHUNK_LINES)
                .map(|chunk| process_chunk(&writer, chunk, format))
                .collect();
            for r in results {
                output.write_all(&r.output).map_err(BatchError::Write)?;
                summary.points += r.points;
                summary.points_matched += r.matched;
                summary.bad_rows.extend(r.bad);
            }
        }
        if eof && carry.is_empty() {
            break;
        }
    }
    output.flush().map_err(BatchError::Write)?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_header_columns_are_found_in_any_order() {
        assert_eq!(
            PointFormat::detect("lon,name,LAT,id").unwrap(),
            PointFormat::Csv {
                id: 3,
                lat: 2,
                lon: 0
            }
        );
        let err = PointFormat::detect("id,latitude,lon").unwrap_err();
        assert!(err.to_string().contains("lacks column \"lat\""), "{err}");
        assert_eq!(
            PointFormat::detect("{\"id\":1}").unwrap(),
            PointFormat::Ndjson
        );
    }

    #[test]
    fn quoted_csv_fields_keep_commas_and_quotes() {
        let f = split_csv(r#""a,b",1,"say ""hi""""#);
        assert_eq!(f, vec!["a,b", "1", r#"say "hi""#]);
    }

    #[test]
    fn row_errors_say_what_is_wrong() {
        let csv = PointFormat::Csv {
            id: 0,
            lat: 1,
            lon: 2,
        };
        assert_eq!(
            parse_row("p1,abc,3", &csv).err().unwrap(),
            "lat \"abc\" is not a number"
        );
        assert_eq!(
            parse_row("p1,91,3", &csv).err().unwrap(),
            "latitude 91 is outside [-90, 90]"
        );
        assert!(parse_row("p1,1", &csv)
            .err()
            .unwrap()
            .starts_with("missing column lon"));
        assert!(parse_row("{\"id\":1,\"lat\":\"x\"}", &PointFormat::Ndjson)
            .err()
            .unwrap()
            .starts_with("invalid JSON point"));
        assert!(
            parse_row("{\"id\":[1],\"lat\":1,\"lon\":1}", &PointFormat::Ndjson)
                .err()
                .unwrap()
                .starts_with("id must be")
        );
    }
}

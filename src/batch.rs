//! `geopromo match`: points in (CSV with a header, NDJSON points or GeoJSON `Point` features, one per line
//! or as one FeatureCollection), one NDJSON line of matches out per point, in input order. Input is read in blocks; each block is split into chunks that are parsed, matched and
//! formatted on all cores, then written in order.

use std::io::{self, BufRead, Read, Write};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::geofence::{FenceIndex, FenceMatch, GeoPoint, Strategy};

/// Bytes read per block: large enough to keep both cores busy, small enough to stream.
const BLOCK_BYTES: usize = 4 << 20;
/// Lines per parallel chunk.
const CHUNK_LINES: usize = 4096;

/// Column names people give latitudes and longitudes (matched case-insensitively).
const LAT_NAMES: &[&str] = &["lat", "latitude"];
const LON_NAMES: &[&str] = &["lon", "lng", "long", "longitude"];
const ID_NAMES: &[&str] = &["id"];

/// Which CSV columns (or JSON keys) hold the id and the position. `None` means: the usual names
/// (`id`; `lat`/`latitude`; `lon`/`lng`/`long`/`longitude`). Without an id column, a point's id is its
/// line number (its position for GeoJSON features), so the output still lines up with the input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnNames {
    pub id: Option<String>,
    pub lat: Option<String>,
    pub lon: Option<String>,
}

impl ColumnNames {
    fn names<'a>(given: &'a Option<String>, usual: &'a [&'a str]) -> Vec<&'a str> {
        match given {
            Some(name) => vec![name.as_str()],
            None => usual.to_vec(),
        }
    }

    fn lat(&self) -> Vec<&str> {
        Self::names(&self.lat, LAT_NAMES)
    }

    fn lon(&self) -> Vec<&str> {
        Self::names(&self.lon, LON_NAMES)
    }

    fn id(&self) -> Vec<&str> {
        Self::names(&self.id, ID_NAMES)
    }
}

/// Input format, detected from the first non-blank line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointFormat {
    /// CSV with a header naming the latitude and longitude columns (and usually an id); other columns
    /// are ignored.
    Csv {
        id: Option<usize>,
        lat: usize,
        lon: usize,
    },
    /// One JSON object per line: a point with id and position keys, or a GeoJSON `Point` Feature.
    Ndjson,
    /// One JSON document: a GeoJSON FeatureCollection (or a single Feature) of `Point` features.
    GeoJson,
}

/// Where a row sits in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowAt {
    /// 1-based line number (CSV, NDJSON).
    Line(u64),
    /// 0-based position in a FeatureCollection.
    Feature(usize),
}

impl std::fmt::Display for RowAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Line(line) => write!(f, "line {line}"),
            Self::Feature(index) => write!(f, "feature {index}"),
        }
    }
}

/// A row that could not be used, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    pub at: RowAt,
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
    #[error("CSV header {header:?} has no {what} column (looked for {looked_for}; name it with --{flag})")]
    MissingColumn {
        header: String,
        what: &'static str,
        looked_for: String,
        flag: &'static str,
    },
    #[error("the input is not valid GeoJSON: {0}")]
    GeoJson(String),
}

impl PointFormat {
    /// Detects the format from the first non-blank line; for CSV that line is the header.
    fn detect(first_line: &str, names: &ColumnNames) -> Result<Self, BatchError> {
        let trimmed = first_line.trim_start_matches(['\u{feff}', '\u{1e}']).trim();
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            // A whole object on the first line is NDJSON, unless it is itself a FeatureCollection; an
            // object that goes on past the line is one multi-line document.
            return Ok(match serde_json::from_str::<serde_json::Value>(trimmed) {
                Ok(value) if value["type"] == "FeatureCollection" => Self::GeoJson,
                Ok(_) => Self::Ndjson,
                Err(_) => Self::GeoJson,
            });
        }
        let columns: Vec<String> = split_csv(trimmed)
            .into_iter()
            .map(|c| c.trim().trim_matches('"').to_ascii_lowercase())
            .collect();
        let find = |wanted: Vec<&str>| {
            wanted.iter().find_map(|name| {
                let name = name.to_ascii_lowercase();
                columns.iter().position(|c| *c == name)
            })
        };
        let missing =
            |what: &'static str, flag: &'static str, wanted: Vec<&str>| BatchError::MissingColumn {
                header: trimmed.to_string(),
                what,
                looked_for: wanted.join(", "),
                flag,
            };
        let id = match (find(names.id()), &names.id) {
            (Some(i), _) => Some(i),
            (None, None) => None,
            (None, Some(_)) => return Err(missing("id", "id-col", names.id())),
        };
        Ok(Self::Csv {
            id,
            lat: find(names.lat()).ok_or_else(|| missing("latitude", "lat-col", names.lat()))?,
            lon: find(names.lon()).ok_or_else(|| missing("longitude", "lon-col", names.lon()))?,
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

/// An id given as a JSON string or number, rendered as JSON.
fn id_json(id: &serde_json::Value) -> Result<String, String> {
    if id.is_string() || id.is_number() {
        Ok(id.to_string())
    } else {
        Err(format!("id must be a string or a number, found {id}"))
    }
}

fn json_number(
    object: &serde_json::Map<String, serde_json::Value>,
    keys: &[&str],
) -> Result<f64, String> {
    let (key, value) = keys
        .iter()
        .find_map(|k| object.get(*k).map(|v| (*k, v)))
        .ok_or_else(|| format!("no {} key", keys.join("/")))?;
    value
        .as_f64()
        .ok_or_else(|| format!("{key} must be a number, found {value}"))
}

/// A GeoJSON `Point` Feature: id from `Feature.id` or the id property, else `fallback_id`.
fn parse_feature(
    feature: &serde_json::Value,
    names: &ColumnNames,
    fallback_id: u64,
) -> Result<Row, String> {
    if feature["type"] != "Feature" {
        return Err(format!(
            "expected a GeoJSON Feature, found type {}",
            feature["type"]
        ));
    }
    let geometry = &feature["geometry"];
    if geometry["type"] != "Point" {
        return Err(format!(
            "geometry must be a Point, found {}",
            match &geometry["type"] {
                serde_json::Value::Null => "none".to_string(),
                other => other.to_string(),
            }
        ));
    }
    let coordinates = geometry["coordinates"]
        .as_array()
        .filter(|c| c.len() >= 2)
        .ok_or("Point coordinates must be [lon, lat]")?;
    let (Some(lon), Some(lat)) = (coordinates[0].as_f64(), coordinates[1].as_f64()) else {
        return Err("Point coordinates must be numbers [lon, lat]".into());
    };
    let properties = &feature["properties"];
    let id = match (
        &feature["id"],
        names.id().iter().find_map(|k| properties.get(*k)),
    ) {
        (serde_json::Value::Null, None) => fallback_id.to_string(),
        (serde_json::Value::Null, Some(id)) | (id, _) => id_json(id)?,
    };
    let point = GeoPoint::new(lat, lon).map_err(|e| e.to_string())?;
    Ok(Row { id_json: id, point })
}

fn parse_row(
    line: &str,
    line_no: u64,
    format: &PointFormat,
    names: &ColumnNames,
) -> Result<Row, String> {
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
            let id_json = match id {
                Some(id) => {
                    let id = get(*id, "id")?.trim();
                    if id.is_empty() {
                        return Err("empty id".into());
                    }
                    serde_json::to_string(id).map_err(|e| e.to_string())?
                }
                None => line_no.to_string(),
            };
            let lat = parse_coordinate(get(*lat, "lat")?, "lat")?;
            let lon = parse_coordinate(get(*lon, "lon")?, "lon")?;
            let point = GeoPoint::new(lat, lon).map_err(|e| e.to_string())?;
            Ok(Row { id_json, point })
        }
        PointFormat::Ndjson | PointFormat::GeoJson => {
            let line = line.trim_start_matches('\u{1e}');
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|e| format!("invalid JSON point: {e}"))?;
            if value["type"] == "Feature" {
                return parse_feature(&value, names, line_no);
            }
            let object = value
                .as_object()
                .ok_or_else(|| format!("expected a JSON object, found {value}"))?;
            let id_json = match names.id().iter().find_map(|k| object.get(*k)) {
                Some(id) => id_json(id)?,
                None if names.id.is_some() => {
                    return Err(format!("no {} key", names.id().join("/")))
                }
                None => line_no.to_string(),
            };
            let lat = json_number(object, &names.lat())?;
            let lon = json_number(object, &names.lon())?;
            let point = GeoPoint::new(lat, lon).map_err(|e| e.to_string())?;
            Ok(Row { id_json, point })
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
                    serde_json::Value::from(&*f.id),
                    serde_json::Value::from(&*f.name)
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
    names: &ColumnNames,
) -> ChunkResult {
    let mut result = ChunkResult::with_capacity(lines.len());
    let mut matches = Vec::new();
    for &(line_no, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let row = parse_row(line, line_no, format, names);
        result.add(writer, &mut matches, row, RowAt::Line(line_no));
    }
    result
}

impl ChunkResult {
    fn with_capacity(rows: usize) -> Self {
        Self {
            output: Vec::with_capacity(rows * 48),
            bad: Vec::new(),
            points: 0,
            matched: 0,
        }
    }

    fn add(
        &mut self,
        writer: &MatchWriter<'_>,
        matches: &mut Vec<FenceMatch>,
        row: Result<Row, String>,
        at: RowAt,
    ) {
        match row {
            Ok(row) => {
                writer.match_point(row.point, matches);
                self.points += 1;
                self.matched += u64::from(!matches.is_empty());
                writer.write_line(&mut self.output, &row.id_json, matches);
            }
            Err(reason) => self.bad.push(BadRow { at, reason }),
        }
    }
}

/// A FeatureCollection (or a single Feature) read whole: its features matched on all cores.
fn process_document(
    writer: &MatchWriter<'_>,
    text: &[u8],
    names: &ColumnNames,
) -> Result<Vec<ChunkResult>, BatchError> {
    let text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text);
    let document: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| BatchError::GeoJson(e.to_string()))?;
    let features = match document["type"].as_str() {
        Some("FeatureCollection") => document["features"]
            .as_array()
            .ok_or_else(|| {
                BatchError::GeoJson("FeatureCollection without a features array".into())
            })?
            .as_slice(),
        Some("Feature") => std::slice::from_ref(&document),
        _ => {
            return Err(BatchError::GeoJson(format!(
                "expected a FeatureCollection or a Feature, found type {}",
                document["type"]
            )))
        }
    };
    Ok(features
        .par_chunks(CHUNK_LINES)
        .enumerate()
        .map(|(chunk, features)| {
            let mut result = ChunkResult::with_capacity(features.len());
            let mut matches = Vec::new();
            for (i, feature) in features.iter().enumerate() {
                let index = chunk * CHUNK_LINES + i;
                let row = parse_feature(feature, names, index as u64);
                result.add(writer, &mut matches, row, RowAt::Feature(index));
            }
            result
        })
        .collect())
}

/// Runs a whole batch: reads `input` to its end and writes one line per good row to `output`.
pub fn run_batch(
    index: &FenceIndex,
    strategy: Strategy,
    names: &ColumnNames,
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
                let detected = PointFormat::detect(line, names)?;
                let is_header = matches!(detected, PointFormat::Csv { .. });
                let is_document = detected == PointFormat::GeoJson;
                format = Some(detected);
                if is_document {
                    break;
                }
                if is_header {
                    continue;
                }
            }
            lines.push((line_no, line));
        }
        if format == Some(PointFormat::GeoJson) {
            // The first line opened a multi-line document: read it whole from the block's start.
            drop(text);
            block.append(&mut carry);
            reader.read_to_end(&mut block).map_err(BatchError::Read)?;
            let results = process_document(&writer, &block, names)?;
            summary.add(results, &mut output)?;
            break;
        }
        if let Some(format) = &format {
            let results: Vec<ChunkResult> = lines
                .par_chunks(CHUNK_LINES)
                .map(|chunk| process_chunk(&writer, chunk, format, names))
                .collect();
            summary.add(results, &mut output)?;
        }
        if eof && carry.is_empty() {
            break;
        }
    }
    output.flush().map_err(BatchError::Write)?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

impl BatchSummary {
    fn add(
        &mut self,
        results: Vec<ChunkResult>,
        output: &mut impl Write,
    ) -> Result<(), BatchError> {
        for r in results {
            output.write_all(&r.output).map_err(BatchError::Write)?;
            self.points += r.points;
            self.points_matched += r.matched;
            self.bad_rows.extend(r.bad);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usual() -> ColumnNames {
        ColumnNames::default()
    }

    #[test]
    fn csv_header_columns_are_found_in_any_order_under_the_names_people_use() {
        assert_eq!(
            PointFormat::detect("lon,name,LAT,id", &usual()).unwrap(),
            PointFormat::Csv {
                id: Some(3),
                lat: 2,
                lon: 0
            }
        );
        assert_eq!(
            PointFormat::detect("Latitude,Longitude", &usual()).unwrap(),
            PointFormat::Csv {
                id: None,
                lat: 0,
                lon: 1
            }
        );
        assert_eq!(
            PointFormat::detect("user,lng,lat", &usual()).unwrap(),
            PointFormat::Csv {
                id: None,
                lat: 2,
                lon: 1
            }
        );
        let err = PointFormat::detect("id,y,lon", &usual()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CSV header \"id,y,lon\" has no latitude column (looked for lat, latitude; name it with --lat-col)"
        );
        assert_eq!(
            PointFormat::detect("{\"id\":1}", &usual()).unwrap(),
            PointFormat::Ndjson
        );
        assert_eq!(
            PointFormat::detect("{\"type\": \"FeatureCollection\",", &usual()).unwrap(),
            PointFormat::GeoJson
        );
    }

    #[test]
    fn named_columns_replace_the_usual_names() {
        let names = ColumnNames {
            id: Some("user".into()),
            lat: Some("Y".into()),
            lon: Some("x".into()),
        };
        assert_eq!(
            PointFormat::detect("x,user,y,lat", &names).unwrap(),
            PointFormat::Csv {
                id: Some(1),
                lat: 2,
                lon: 0
            }
        );
        let err = PointFormat::detect("x,y", &names).unwrap_err();
        assert!(
            err.to_string().contains("no id column (looked for user"),
            "{err}"
        );
        let row = parse_row(
            "{\"user\":\"u\",\"Y\":1,\"x\":2}",
            1,
            &PointFormat::Ndjson,
            &names,
        )
        .unwrap();
        assert_eq!(row.id_json, "\"u\"");
        assert_eq!((row.point.lat(), row.point.lon()), (1.0, 2.0));
    }

    #[test]
    fn quoted_csv_fields_keep_commas_and_quotes() {
        let f = split_csv(r#""a,b",1,"say ""hi""""#);
        assert_eq!(f, vec!["a,b", "1", r#"say "hi""#]);
    }

    #[test]
    fn a_point_without_an_id_is_named_by_its_line() {
        let csv = PointFormat::Csv {
            id: None,
            lat: 0,
            lon: 1,
        };
        assert_eq!(parse_row("1,2", 17, &csv, &usual()).unwrap().id_json, "17");
        let json = parse_row(
            "{\"latitude\":1,\"lng\":2}",
            4,
            &PointFormat::Ndjson,
            &usual(),
        )
        .unwrap();
        assert_eq!(json.id_json, "4");
    }

    #[test]
    fn geojson_point_features_are_points() {
        let line = r#"{"type":"Feature","id":"f1","properties":{},"geometry":{"type":"Point","coordinates":[106.8,-6.2]}}"#;
        let row = parse_row(line, 1, &PointFormat::Ndjson, &usual()).unwrap();
        assert_eq!(row.id_json, "\"f1\"");
        assert_eq!((row.point.lat(), row.point.lon()), (-6.2, 106.8));
        let by_property = r#"{"type":"Feature","properties":{"id":9},"geometry":{"type":"Point","coordinates":[1,2]}}"#;
        assert_eq!(
            parse_row(by_property, 1, &PointFormat::Ndjson, &usual())
                .unwrap()
                .id_json,
            "9"
        );
        let polygon =
            r#"{"type":"Feature","properties":{},"geometry":{"type":"Polygon","coordinates":[]}}"#;
        assert_eq!(
            parse_row(polygon, 1, &PointFormat::Ndjson, &usual())
                .err()
                .unwrap(),
            "geometry must be a Point, found \"Polygon\""
        );
        let swapped = r#"{"type":"Feature","properties":{},"geometry":{"type":"Point","coordinates":[1,200]}}"#;
        assert_eq!(
            parse_row(swapped, 1, &PointFormat::Ndjson, &usual())
                .err()
                .unwrap(),
            "latitude 200 is outside [-90, 90]"
        );
    }

    #[test]
    fn row_errors_say_what_is_wrong() {
        let csv = PointFormat::Csv {
            id: Some(0),
            lat: 1,
            lon: 2,
        };
        assert_eq!(
            parse_row("p1,abc,3", 1, &csv, &usual()).err().unwrap(),
            "lat \"abc\" is not a number"
        );
        assert_eq!(
            parse_row("p1,91,3", 1, &csv, &usual()).err().unwrap(),
            "latitude 91 is outside [-90, 90]"
        );
        assert!(parse_row("p1,1", 1, &csv, &usual())
            .err()
            .unwrap()
            .starts_with("missing column lon"));
        assert!(
            parse_row("{\"id\":1,\"lat\":\"x\"", 1, &PointFormat::Ndjson, &usual())
                .err()
                .unwrap()
                .starts_with("invalid JSON point")
        );
        assert_eq!(
            parse_row(
                "{\"id\":1,\"lat\":\"x\",\"lon\":1}",
                1,
                &PointFormat::Ndjson,
                &usual()
            )
            .err()
            .unwrap(),
            "lat must be a number, found \"x\""
        );
        assert!(parse_row(
            "{\"id\":[1],\"lat\":1,\"lon\":1}",
            1,
            &PointFormat::Ndjson,
            &usual()
        )
        .err()
        .unwrap()
        .starts_with("id must be"));
    }
}

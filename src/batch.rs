//! `geopromo match`: points in (CSV with a header, NDJSON points or GeoJSON `Point` features, one per line
//! or as one FeatureCollection), one NDJSON line of matches out per point, in input order.
//!
//! Three stages overlap: the calling thread reads block N+1 and writes the output of block N−1 while a
//! worker has block N parsed, matched and formatted on all cores: parsed and formatted in chunks split at
//! line ends (each told its first line number by a parallel newline count), matched in segments of the
//! whole block, one per core, each in spatial order, so that neighbouring points share what their lookups
//! bring into cache. The common CSV row (no quotes) is parsed in place and its id escaped straight into
//! the output; anything else takes the general path, which words the errors.

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::geofence::prefetch::{prefetch, prefetch_run};
use crate::geofence::{FenceIndex, FenceMatch, GeoPoint, SpatialOrder, Strategy};

/// Bytes read per block: large enough to keep both cores busy, small enough to stream.
const BLOCK_BYTES: usize = 4 << 20;
/// Bytes per parallel chunk (cut at a line end).
const CHUNK_BYTES: usize = 128 << 10;
/// GeoJSON features per parallel chunk.
const CHUNK_LINES: usize = 4096;
/// Points per parallel matching run: a block's points go to the cores in runs of this many, in spatial
/// order.
const MATCH_RUN: usize = 4096;
/// Rows ahead of the one being written whose matches are asked into cache (see [`BlockMatches`]).
const FORMAT_LOOKAHEAD: usize = 8;

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

/// A point's id as it goes into the output.
#[derive(Debug, Clone, Copy)]
pub enum RowId<'a> {
    /// Already JSON (a string with its quotes, or a number).
    Json(&'a str),
    /// Text to write as a JSON string.
    Text(&'a str),
    /// No id given: the point's line number.
    Line(u64),
}

impl RowId<'_> {
    fn write_json(self, out: &mut Vec<u8>) {
        match self {
            Self::Json(json) => out.extend_from_slice(json.as_bytes()),
            Self::Text(text) => crate::text::write_json_string(out, text),
            Self::Line(line) => write_u64(out, line),
        }
    }
}

fn write_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Metres rounded to the decimetre, written as `f64`'s `Display` writes that rounded value ("12" or
/// "12.3"), through integers: float formatting was a visible share of the batch profile.
fn write_decimetres(out: &mut Vec<u8>, metres: f64) {
    let decimetres = (metres * 10.0).round();
    if (0.0..1e15).contains(&decimetres) {
        let decimetres = decimetres as u64;
        write_u64(out, decimetres / 10);
        if decimetres % 10 != 0 {
            out.push(b'.');
            out.push(b'0' + (decimetres % 10) as u8);
        }
    } else {
        let _ = write!(out, "{}", decimetres / 10.0);
    }
}

/// The common CSV row, parsed in place: no quotes, every wanted field present and valid. `None` sends
/// the row to the general path ([`parse_row`]), which also words what is wrong with it.
fn fast_csv_row(
    line: &str,
    id: Option<usize>,
    lat: usize,
    lon: usize,
) -> Option<(Option<&str>, GeoPoint)> {
    if line.as_bytes().contains(&b'"') {
        return None;
    }
    let last = lat.max(lon).max(id.unwrap_or(0));
    let (mut id_field, mut lat_field, mut lon_field) = (None, None, None);
    for (i, field) in line.split(',').enumerate().take(last + 1) {
        if Some(i) == id {
            id_field = Some(field.trim());
        }
        if i == lat {
            lat_field = Some(field);
        }
        if i == lon {
            lon_field = Some(field);
        }
    }
    let parse = |field: Option<&str>| field?.trim().parse::<f64>().ok();
    let point = GeoPoint::new(parse(lat_field)?, parse(lon_field)?).ok()?;
    match (id, id_field) {
        (None, _) => Some((None, point)),
        (Some(_), Some(id)) if !id.is_empty() => Some((Some(id), point)),
        _ => None,
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
    pub fn write_line(&self, out: &mut Vec<u8>, id: RowId<'_>, matches: &[FenceMatch]) {
        out.extend_from_slice(b"{\"id\":");
        id.write_json(out);
        out.extend_from_slice(b",\"matches\":[");
        for (i, m) in matches.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(self.prefixes[m.fence as usize].as_bytes());
            if m.inside {
                out.extend_from_slice(b"\"inside\":true,\"distance_m\":0}");
            } else {
                out.extend_from_slice(b"\"inside\":false,\"distance_m\":");
                write_decimetres(out, m.distance_m);
                out.push(b'}');
            }
        }
        out.extend_from_slice(b"]}\n");
    }

    /// Matches a block's points (`scratch.points`) on all cores: one segment of the block per core,
    /// each taken in spatial order ([`SpatialOrder`]) so that neighbouring points share the cache lines
    /// their lookups read (see docs/performance.md, "Geofence engine"), in runs of [`MATCH_RUN`] points.
    /// A segment is ordered and matched whole on one core: no step waits on another core.
    fn match_block<'s>(&self, scratch: &'s mut BlockScratch) -> BlockMatches<'s> {
        let BlockScratch { points, segments } = scratch;
        let count = rayon::current_num_threads().clamp(1, points.len().div_ceil(MATCH_RUN).max(1));
        let length = points.len().div_ceil(count).max(1);
        if segments.len() < count {
            segments.resize_with(count, Segment::default);
        }
        segments[..count]
            .par_iter_mut()
            .zip(points.par_chunks(length))
            .for_each(|(segment, points)| self.match_segment(segment, points));
        BlockMatches {
            length,
            segments: &segments[..count],
        }
    }

    fn match_segment(&self, segment: &mut Segment, points: &[GeoPoint]) {
        let Segment { order, rank, runs } = segment;
        // Every lookup path reads less memory in this order; each point's answer does not depend on it.
        let order = order.sort(points);
        let count = order.len().div_ceil(MATCH_RUN);
        if runs.len() < count {
            runs.resize_with(count, Run::default);
        }
        for (run, indices) in runs.iter_mut().zip(order.chunks(MATCH_RUN)) {
            run.points.clear();
            run.points
                .extend(indices.iter().map(|&i| points[i as usize]));
            self.match_points(&run.points, &mut run.out, &mut run.ends);
        }
        rank.clear();
        rank.resize(points.len(), 0);
        for (position, &point) in order.iter().enumerate() {
            rank[point as usize] = position as u32;
        }
    }

    /// Matches many points through the configured strategy: point `i`'s matches are
    /// `out[ends[i - 1]..ends[i]]`. The raster matches them as a batch ([`FenceIndex::match_batch`]).
    pub fn match_points(
        &self,
        points: &[GeoPoint],
        out: &mut Vec<FenceMatch>,
        ends: &mut Vec<usize>,
    ) {
        if self.strategy == Strategy::Raster {
            self.index.match_batch(points, out, ends);
            return;
        }
        out.clear();
        ends.clear();
        let mut one = Vec::new();
        for &point in points {
            self.index.match_with(self.strategy, point, &mut one);
            out.extend_from_slice(&one);
            ends.push(out.len());
        }
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

/// A point's id until its line is written.
enum PendingId<'a> {
    Text(&'a str),
    Line(u64),
    Json(String),
}

/// Buffers one block's matching leaves for the next: a job allocates (and faults in) them once.
#[derive(Default)]
struct BlockScratch {
    /// The block's points, in input order.
    points: Vec<GeoPoint>,
    segments: Vec<Segment>,
}

/// A stretch of a block's points, matched on one core in spatial order.
#[derive(Default)]
struct Segment {
    order: SpatialOrder,
    /// Point `i` of the segment was matched `rank[i]`-th, in run `rank[i] / MATCH_RUN`.
    rank: Vec<u32>,
    runs: Vec<Run>,
}

/// One run of points matched together, and their matches: point `k`'s are `out[ends[k - 1]..ends[k]]`.
#[derive(Default)]
struct Run {
    points: Vec<GeoPoint>,
    out: Vec<FenceMatch>,
    ends: Vec<usize>,
}

/// The matches of a block's points: point `i` (in input order) is point `i % length` of segment
/// `i / length`.
struct BlockMatches<'a> {
    length: usize,
    segments: &'a [Segment],
}

impl BlockMatches<'_> {
    /// The matches of point `i` (in input order).
    fn of(&self, i: usize) -> &[FenceMatch] {
        let (out, ends, k) = self.place(i).expect("a point of the block");
        let from = if k == 0 { 0 } else { ends[k - 1] };
        &out[from..ends[k]]
    }

    /// Where point `i`'s matches are: its run's matches and ends, and its place in the run.
    fn place(&self, i: usize) -> Option<(&[FenceMatch], &[usize], usize)> {
        let segment = self.segments.get(i / self.length)?;
        let rank = *segment.rank.get(i % self.length)? as usize;
        let run = &segment.runs[rank / MATCH_RUN];
        Some((&run.out, &run.ends, rank % MATCH_RUN))
    }

    /// Read in input order, the matches are scattered over the runs: a reader a few points ahead asks
    /// for point `i`'s end offsets first ...
    fn prefetch_ends(&self, i: usize) {
        if let Some((_, ends, k)) = self.place(i) {
            prefetch_run(ends.as_ptr().wrapping_add(k.saturating_sub(1)), 2);
        }
    }

    /// ... and, once they are in, for its matches.
    fn prefetch_matches(&self, i: usize) {
        if let Some((out, ends, k)) = self.place(i) {
            let from = if k == 0 { 0 } else { ends[k - 1] };
            prefetch(out.as_ptr().wrapping_add(from));
        }
    }
}

/// The rows of one chunk, parsed: each good row's id and point, in input order, and the bad rows.
struct ParsedChunk<'a> {
    ids: Vec<PendingId<'a>>,
    points: Vec<GeoPoint>,
    bad: Vec<BadRow>,
}

/// Parses the lines of one chunk; `first_line` is the line number of its first.
fn parse_chunk<'a>(
    text: &'a str,
    first_line: u64,
    format: &PointFormat,
    names: &ColumnNames,
) -> ParsedChunk<'a> {
    let rows = text.len() / 24 + 1;
    let mut parsed = ParsedChunk {
        ids: Vec::with_capacity(rows),
        points: Vec::with_capacity(rows),
        bad: Vec::new(),
    };
    for (line_no, raw) in (first_line..).zip(text.split_terminator('\n')) {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            continue;
        }
        if let PointFormat::Csv { id, lat, lon } = *format {
            if let Some((id, point)) = fast_csv_row(line, id, lat, lon) {
                parsed
                    .ids
                    .push(id.map_or(PendingId::Line(line_no), PendingId::Text));
                parsed.points.push(point);
                continue;
            }
        }
        match parse_row(line, line_no, format, names) {
            Ok(row) => {
                parsed.ids.push(PendingId::Json(row.id_json));
                parsed.points.push(row.point);
            }
            Err(reason) => parsed.bad.push(BadRow {
                at: RowAt::Line(line_no),
                reason,
            }),
        }
    }
    parsed
}

/// Writes the output lines of one parsed chunk, whose first point is point `first` of the block.
fn format_chunk(
    writer: &MatchWriter<'_>,
    parsed: ParsedChunk<'_>,
    matches: &BlockMatches<'_>,
    first: usize,
) -> ChunkResult {
    let mut result = ChunkResult::with_capacity(parsed.ids.len());
    result.bad = parsed.bad;
    for (i, id) in (first..).zip(&parsed.ids) {
        matches.prefetch_ends(i + 2 * FORMAT_LOOKAHEAD);
        matches.prefetch_matches(i + FORMAT_LOOKAHEAD);
        let id = match id {
            PendingId::Text(text) => RowId::Text(text),
            PendingId::Line(line) => RowId::Line(*line),
            PendingId::Json(json) => RowId::Json(json),
        };
        let found = matches.of(i);
        result.points += 1;
        result.matched += u64::from(!found.is_empty());
        writer.write_line(&mut result.output, id, found);
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
            Ok(row) => self.add_point(writer, matches, RowId::Json(&row.id_json), row.point),
            Err(reason) => self.bad.push(BadRow { at, reason }),
        }
    }

    fn add_point(
        &mut self,
        writer: &MatchWriter<'_>,
        matches: &mut Vec<FenceMatch>,
        id: RowId<'_>,
        point: GeoPoint,
    ) {
        writer.match_point(point, matches);
        self.points += 1;
        self.matched += u64::from(!matches.is_empty());
        writer.write_line(&mut self.output, id, matches);
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
    let mut blocks = BlockReader::new(input);
    let mut summary = BatchSummary::default();
    // The format comes from the first non-blank line; the points start after a CSV header, or at it.
    let mut lines_before = 0u64;
    let (format, first, start) = loop {
        let Some(block) = blocks.next_block()? else {
            summary.elapsed = started.elapsed();
            return Ok(summary);
        };
        match first_content_line(&block) {
            None => lines_before += count_lines(&block),
            Some(found) => {
                let text = String::from_utf8_lossy(&block[found.start..found.end]);
                let format = PointFormat::detect(&text, names)?;
                lines_before += found.lines_before;
                break (format, block, found);
            }
        }
    };
    if format == PointFormat::GeoJson {
        // The first line opened one multi-line document: read it whole.
        let mut document = first;
        document.drain(..start.start);
        blocks.read_rest(&mut document)?;
        let results = process_document(&writer, &document, names)?;
        summary.add(results, &mut output)?;
    } else {
        let (skip, first_line) = match format {
            PointFormat::Csv { .. } => (start.next, lines_before + 2),
            _ => (start.start, lines_before + 1),
        };
        pipeline(
            &writer,
            &format,
            names,
            &mut blocks,
            (first, skip, first_line),
            |results| summary.add(results, &mut output),
        )?;
    }
    output.flush().map_err(BatchError::Write)?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Reads blocks on this thread, processes each on a worker (which fans out to all cores) and hands the
/// results to `write` in input order, with at most two blocks in flight behind the one being read.
fn pipeline<R: Read>(
    writer: &MatchWriter<'_>,
    format: &PointFormat,
    names: &ColumnNames,
    blocks: &mut BlockReader<R>,
    (first, skip, first_line): (Vec<u8>, usize, u64),
    mut write: impl FnMut(Vec<ChunkResult>) -> Result<(), BatchError>,
) -> Result<(), BatchError> {
    let (block_tx, block_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(1);
    let (result_tx, result_rx) = mpsc::channel::<Vec<ChunkResult>>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut line = first_line;
            let mut scratch = BlockScratch::default();
            for (block, skip) in block_rx {
                let (results, lines) =
                    process_block(writer, &mut scratch, &block[skip..], line, format, names);
                line += lines;
                if result_tx.send(results).is_err() {
                    break;
                }
            }
        });
        let mut in_flight = 0usize;
        let mut next = Some((first, skip));
        while let Some(block) = next {
            // A send fails only when the worker is gone, and then the results below tell why.
            if block_tx.send(block).is_err() {
                break;
            }
            in_flight += 1;
            next = blocks.next_block()?.map(|block| (block, 0));
            if in_flight >= 2 {
                in_flight -= 1;
                write(result_rx.recv().map_err(|_| worker_gone())?)?;
            }
        }
        drop(block_tx);
        for _ in 0..in_flight {
            write(result_rx.recv().map_err(|_| worker_gone())?)?;
        }
        Ok(())
    })
}

fn worker_gone() -> BatchError {
    BatchError::Read(io::Error::other("the matching worker stopped"))
}

/// Splits a block into chunks at line ends, counts their lines in parallel (so each knows its first
/// line number), parses them in parallel, matches all the block's points together
/// ([`MatchWriter::match_block`]), and formats the chunks in parallel. Returns the results in order
/// and the number of lines in the block.
fn process_block(
    writer: &MatchWriter<'_>,
    scratch: &mut BlockScratch,
    block: &[u8],
    first_line: u64,
    format: &PointFormat,
    names: &ColumnNames,
) -> (Vec<ChunkResult>, u64) {
    let mut chunks = Vec::with_capacity(block.len() / CHUNK_BYTES + 1);
    let mut rest = block;
    while !rest.is_empty() {
        let cut = if rest.len() <= CHUNK_BYTES {
            rest.len()
        } else {
            rest[CHUNK_BYTES..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| CHUNK_BYTES + i + 1)
        };
        let (chunk, tail) = rest.split_at(cut);
        chunks.push(chunk);
        rest = tail;
    }
    // Chunks end at line ends, so no character is split between two of them.
    let texts: Vec<Cow<'_, str>> = chunks
        .par_iter()
        .map(|chunk| String::from_utf8_lossy(chunk))
        .collect();
    let lines: Vec<u64> = chunks.par_iter().map(|chunk| count_lines(chunk)).collect();
    let mut starts = Vec::with_capacity(chunks.len());
    let mut line = first_line;
    for n in lines {
        starts.push(line);
        line += n;
    }
    let parsed: Vec<ParsedChunk<'_>> = texts
        .par_iter()
        .zip(starts)
        .map(|(text, start)| parse_chunk(text, start, format, names))
        .collect();
    scratch.points.clear();
    let mut firsts = Vec::with_capacity(parsed.len());
    for chunk in &parsed {
        firsts.push(scratch.points.len());
        scratch.points.extend_from_slice(&chunk.points);
    }
    let matches = writer.match_block(scratch);
    let results = parsed
        .into_par_iter()
        .zip(firsts)
        .map(|(chunk, first)| format_chunk(writer, chunk, &matches, first))
        .collect();
    (results, line - first_line)
}

fn count_lines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Where the first non-blank line of a block is.
struct FirstLine {
    /// Its first byte, and the end of its text (without the line end).
    start: usize,
    end: usize,
    /// The first byte after its line end.
    next: usize,
    /// Lines before it in the block.
    lines_before: u64,
}

fn first_content_line(block: &[u8]) -> Option<FirstLine> {
    let mut start = 0;
    let mut lines_before = 0;
    while start < block.len() {
        let (end, next) = match block[start..].iter().position(|&b| b == b'\n') {
            Some(i) => (start + i, start + i + 1),
            None => (block.len(), block.len()),
        };
        if !String::from_utf8_lossy(&block[start..end])
            .trim()
            .is_empty()
        {
            return Some(FirstLine {
                start,
                end,
                next,
                lines_before,
            });
        }
        lines_before += 1;
        start = next;
    }
    None
}

/// Reads the input in blocks of whole lines.
struct BlockReader<R> {
    reader: R,
    carry: Vec<u8>,
    eof: bool,
}

impl<R: Read> BlockReader<R> {
    fn new(reader: R) -> Self {
        Self {
            reader,
            carry: Vec::new(),
            eof: false,
        }
    }

    /// The next block: about [`BLOCK_BYTES`] ending at a line end (longer when one line is longer), or
    /// whatever is left at the end of the input.
    fn next_block(&mut self) -> Result<Option<Vec<u8>>, BatchError> {
        let mut block = Vec::with_capacity(BLOCK_BYTES + (64 << 10));
        block.append(&mut self.carry);
        let mut want = BLOCK_BYTES;
        let mut searched = 0;
        loop {
            while !self.eof && block.len() < want {
                let limit = (want - block.len()) as u64;
                let read = (&mut self.reader)
                    .take(limit)
                    .read_to_end(&mut block)
                    .map_err(BatchError::Read)?;
                self.eof = read == 0;
            }
            if self.eof {
                break;
            }
            match block[searched..].iter().rposition(|&b| b == b'\n') {
                Some(i) => {
                    let cut = searched + i + 1;
                    self.carry.extend_from_slice(&block[cut..]);
                    block.truncate(cut);
                    break;
                }
                None => {
                    // One line longer than a block: read on until it ends.
                    searched = block.len();
                    want += BLOCK_BYTES;
                }
            }
        }
        Ok((!block.is_empty()).then_some(block))
    }

    /// Appends everything left, the carried partial line first.
    fn read_rest(&mut self, into: &mut Vec<u8>) -> Result<(), BatchError> {
        into.append(&mut self.carry);
        self.reader.read_to_end(into).map_err(BatchError::Read)?;
        Ok(())
    }
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

    fn city_fences() -> Vec<crate::geofence::Fence> {
        let bytes = include_bytes!("../geodata/cities.geojson");
        crate::geofence::parse_fences(bytes, &crate::geofence::ParseOptions::default())
            .unwrap()
            .fences
    }

    fn cities() -> FenceIndex {
        FenceIndex::build(&city_fences(), crate::geofence::IndexOptions::default())
    }

    fn run(input: &[u8]) -> (BatchSummary, Vec<serde_json::Value>) {
        let mut out = Vec::new();
        let summary = run_batch(&cities(), Strategy::Raster, &usual(), input, &mut out).unwrap();
        let lines = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        (summary, lines)
    }

    #[test]
    fn input_over_many_blocks_keeps_order_and_line_numbers() {
        // Blank lines before the header count; about 3 blocks of points; one bad row near the end.
        let mut input = b"\n\nlat,lon\n".to_vec();
        let rows = 3 * BLOCK_BYTES / 12;
        for i in 0..rows {
            let lat = if i % 2 == 0 { "-6.2000" } else { "-50.000" };
            input.extend_from_slice(format!("{lat},106.8\n").as_bytes());
        }
        input.extend_from_slice(b"x,1\n-6.2,106.8");
        let (summary, lines) = run(&input);
        assert_eq!(summary.points, rows as u64 + 1);
        assert_eq!(lines.len(), rows + 1);
        // The first point is on line 4; points are named by their line and come out in input order.
        assert_eq!(lines[0]["id"], 4);
        assert_eq!(lines[0]["matches"][0]["fence"], "jakarta");
        assert_eq!(lines[1]["matches"], serde_json::json!([]));
        assert_eq!(lines[rows - 1]["id"], rows as u64 + 3);
        assert_eq!(lines[rows]["id"], rows as u64 + 5);
        assert_eq!(
            summary.bad_rows,
            vec![BadRow {
                at: RowAt::Line(rows as u64 + 4),
                reason: "lat \"x\" is not a number".into()
            }]
        );
    }

    #[test]
    fn points_matched_in_spatial_order_come_out_in_input_order_with_their_own_matches() {
        // Points near every city's boundary and spread over the world, shuffled: a block of several
        // segments and runs, each reordered. Every output line must be its own row's, with what
        // one-by-one matching finds.
        let index = cities();
        let mut points =
            crate::geofence::sample::near_boundary_points(&city_fences(), 60_000, 2_000.0, 9);
        points.extend(crate::geofence::sample::uniform_points(
            (-60.0, -180.0, 70.0, 180.0),
            40_000,
            9,
        ));
        let mut rng = crate::geofence::sample::SampleRng::new(3);
        for i in (1..points.len()).rev() {
            points.swap(i, (rng.range(0.0, (i + 1) as f64) as usize).min(i));
        }
        let mut input = b"id,lat,lon\n".to_vec();
        for (i, p) in points.iter().enumerate() {
            input.extend_from_slice(format!("p{i},{},{}\n", p.lat(), p.lon()).as_bytes());
        }
        let (summary, lines) = run(&input);
        assert_eq!(summary.points, points.len() as u64);
        let mut expected = Vec::new();
        let mut matched = 0;
        for (i, (line, &point)) in lines.iter().zip(&points).enumerate() {
            assert_eq!(line["id"], format!("p{i}"));
            index.match_point(point, &mut expected);
            let fences: Vec<&str> = line["matches"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["fence"].as_str().unwrap())
                .collect();
            let want: Vec<&str> = expected.iter().map(|m| &*index.fence(m.fence).id).collect();
            assert_eq!(fences, want, "row {i} at {point}");
            matched += usize::from(!want.is_empty());
        }
        assert!(
            matched > 30_000,
            "the sample is near fences: {matched} matched"
        );
    }

    #[test]
    fn a_line_longer_than_a_block_is_read_whole() {
        let long_id = "a".repeat(BLOCK_BYTES + 10);
        let input = format!("id,lat,lon\n{long_id},-6.2,106.8\nshort,-6.2,106.8\n");
        let (summary, lines) = run(input.as_bytes());
        assert_eq!(summary.points, 2);
        assert_eq!(lines[0]["id"], long_id.as_str());
        assert_eq!(lines[1]["id"], "short");
    }

    #[test]
    fn ids_that_need_escaping_are_escaped() {
        let (_, lines) =
            run("id,lat,lon\ntab\there,-6.2,106.8\nback\\slash,-6.2,106.8\n".as_bytes());
        assert_eq!(lines[0]["id"], "tab\there");
        assert_eq!(lines[1]["id"], "back\\slash");
    }

    #[test]
    fn distances_are_written_as_display_writes_the_rounded_value() {
        for metres in [
            0.0,
            0.04,
            0.05,
            0.96,
            1.0,
            12.34,
            818.149,
            999.95,
            123_456.789,
            1e16,
        ] {
            let mut out = Vec::new();
            write_decimetres(&mut out, metres);
            let expected = ((metres * 10.0_f64).round() / 10.0).to_string();
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{metres}");
        }
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

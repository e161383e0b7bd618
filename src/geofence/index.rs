//! The immutable fence index: which fences a point is inside or within tolerance of, and how far.
//!
//! Three ways to the same answer, each cross-checked against the others in the tests:
//! - [`FenceIndex::match_point`], the default: a lon/lat raster cover ([`super::raster`]). The point's cell
//!   names the fences the cell lies wholly inside (answered without geometry) and the parts near whose
//!   boundary it lies (answered exactly by [`PreparedPart`]).
//! - [`FenceIndex::match_point_h3`], when built with [`IndexOptions::h3_resolution`]: the same cover in H3
//!   cells. Point → cell at the fine resolution → its coarse ancestor says at which levels keys exist below it
//!   → at most one hit, because keys are disjoint (no key is an ancestor of another).
//! - [`FenceIndex::match_point_rtree`]: candidates from an R-tree of tolerance-grown part bounds, exact tests
//!   for each; [`FenceIndex::match_point_brute_force`] tests every part.

use std::time::{Duration, Instant};

use h3o::{CellIndex, LatLng, Resolution};
use rayon::prelude::*;
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::RTree;
use rustc_hash::{FxHashMap, FxHashSet};

use super::cover::{cover_part, insert_ancestors, PartCover};
use super::fence::Fence;
use super::metric::{degrees_spanned, LocalMetric};
use super::part::PreparedPart;
use super::point::GeoPoint;
use super::prefetch::prefetch_run;
use super::raster::{rasterize_part, CellLookup, PartRaster, Raster, RasterGrid};

/// A point this close to a boundary (metres) counts as on it, and boundaries belong to their fence.
pub const ON_BOUNDARY_M: f64 = 0.001;

/// How the index is built.
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct IndexOptions {
    /// Raster cells per degree (both axes). Finer means fewer points need exact work, and more memory.
    pub cells_per_degree: u32,
    /// Also build the H3 cover at this finest resolution (for [`FenceIndex::match_point_h3`]).
    pub h3_resolution: Option<Resolution>,
    /// Resolutions between the H3 coarse level (first lookup) and the fine one.
    pub h3_levels: u8,
    /// Matches reach this much further than each fence's tolerance (the promotion rules' exit
    /// hysteresis): [`FenceInfo::tolerance_m`] stays the fence's own, so callers compare against it.
    pub extra_reach_m: f64,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            cells_per_degree: 64,
            h3_resolution: None,
            h3_levels: 4,
            extra_reach_m: 0.0,
        }
    }
}

impl IndexOptions {
    pub fn cells_per_degree(mut self, cells: u32) -> Self {
        self.cells_per_degree = cells.clamp(1, 1024);
        self
    }

    pub fn h3_resolution(mut self, res: Option<Resolution>) -> Self {
        self.h3_resolution = res;
        self
    }

    /// Negative or non-finite values count as 0.
    pub fn extra_reach_m(mut self, metres: f64) -> Self {
        self.extra_reach_m = if metres.is_finite() {
            metres.max(0.0)
        } else {
            0.0
        };
        self
    }

    fn h3_coarse_resolution(self, fine: Resolution) -> Resolution {
        Resolution::try_from(u8::from(fine).saturating_sub(self.h3_levels))
            .unwrap_or(Resolution::Zero)
    }
}

/// Which lookup path answers a query; all give the same matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The lon/lat raster cover: the fastest here.
    #[default]
    Raster,
    /// The H3 cover (needs [`IndexOptions::h3_resolution`]; falls back to the R-tree without it).
    H3,
    /// R-tree candidates and exact tests only.
    RTree,
}

/// What results refer to: a fence's identity, name and tolerance.
#[derive(Debug, Clone, PartialEq)]
pub struct FenceInfo {
    pub id: std::sync::Arc<str>,
    pub name: std::sync::Arc<str>,
    /// The fence's own tolerance; the index reaches [`IndexOptions::extra_reach_m`] further.
    pub tolerance_m: f64,
    pub vertex_count: usize,
}

/// One fence a point matched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FenceMatch {
    /// Position of the fence in [`FenceIndex::fences`].
    pub fence: u32,
    pub inside: bool,
    /// 0 when inside; otherwise metres to the nearest boundary point.
    pub distance_m: f64,
}

/// Sizes and timings of a built index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexStats {
    pub fences: usize,
    pub parts: usize,
    pub vertices: usize,
    /// Cells held in dense blocks (uniform tiles and blocks hold none).
    pub raster_cells: usize,
    pub raster_dense_blocks: usize,
    pub distinct_entries: usize,
    /// H3 table keys per resolution, when the H3 cover was built.
    pub h3_cells_per_resolution: Vec<(u8, usize)>,
    pub approx_heap_bytes: usize,
    pub build_time: Duration,
}

/// What one raster cell (or H3 key) holds, borrowed from the [`EntryTable`].
#[derive(Debug, Clone, Copy)]
struct CellEntry<'a> {
    /// Fences the whole cell is inside (sorted).
    inside: &'a [u32],
    /// Parts whose boundary band meets the cell, of fences not already in `inside` (sorted).
    boundary: &'a [u32],
}

/// The distinct cell entries laid out in one array, each named by where it starts: `[inside count,
/// boundary count, inside..., boundary...]`. A cell's value leads straight to its lists, on the cache line
/// or two a batch prefetches, instead of to a record pointing at two more allocations.
#[derive(Debug)]
struct EntryTable {
    words: Vec<u32>,
    count: usize,
}

/// Ids of an entry a batch prefetches with its counts (the rest, rare, are read when needed).
const WARM_ENTRY_IDS: usize = 14;

/// Where the empty entry (nothing near) starts.
const EMPTY_ENTRY: u32 = 0;

impl EntryTable {
    fn new() -> Self {
        Self {
            words: vec![0, 0],
            count: 1,
        }
    }

    fn push(&mut self, inside: &[u32], boundary: &[u32]) -> u32 {
        let at = self.words.len();
        // The raster keeps its top bit for itself; 2^31 words would take 8 GiB of entries.
        assert!(
            at + 2 + inside.len() + boundary.len() < 1 << 31,
            "cell entries exceed 2^31 words"
        );
        self.words.push(inside.len() as u32);
        self.words.push(boundary.len() as u32);
        self.words.extend_from_slice(inside);
        self.words.extend_from_slice(boundary);
        self.count += 1;
        at as u32
    }

    fn get(&self, at: u32) -> CellEntry<'_> {
        let at = at as usize;
        let (inside, boundary) = (self.words[at] as usize, self.words[at + 1] as usize);
        let (inside, boundary) = self.words[at + 2..at + 2 + inside + boundary].split_at(inside);
        CellEntry { inside, boundary }
    }

    /// Asks for entry `at` with its first [`WARM_ENTRY_IDS`] ids: all of most entries, in one step.
    fn prefetch(&self, at: u32) {
        prefetch_run(
            self.words.as_ptr().wrapping_add(at as usize),
            2 + WARM_ENTRY_IDS,
        );
    }

    fn heap_bytes(&self) -> usize {
        self.words.capacity() * 4
    }
}

type PartBox = GeomWithData<Rectangle<[f64; 2]>, u32>;

/// The built, immutable index. Share it behind [`super::SharedIndex`] to swap in a new one while readers match.
#[derive(Debug)]
pub struct FenceIndex {
    fences: Vec<FenceInfo>,
    /// How far from its boundary each fence matches: tolerance + [`IndexOptions::extra_reach_m`].
    reach_m: Vec<f64>,
    parts: Vec<PreparedPart>,
    /// Entry [`EMPTY_ENTRY`] is empty: nothing near.
    entries: EntryTable,
    raster: Raster,
    h3: Option<H3Table>,
    rtree: RTree<PartBox>,
    stats: IndexStats,
}

#[derive(Debug)]
struct H3Table {
    fine: Resolution,
    coarse: Resolution,
    /// Coarse cell → bit set of the resolutions at which table keys exist below it.
    levels_below: FxHashMap<CellIndex, u16>,
    table: FxHashMap<CellIndex, u32>,
}

/// Points per group in [`FenceIndex::match_batch`]: enough independent loads to keep the memory system
/// busy, few enough for the group's lookups to stay in registers and L1.
const BATCH_GROUP: usize = 16;

/// Parts near one point whose searches are warmed together (a point near county lines has 2–4).
const POINT_WARM_PAIRS: usize = 8;

/// Deduplicates cell entries: most cells share one of a few thousand combinations. Keyed by the entry
/// flattened into one slice (`[inside count, inside..., boundary...]`) so that lookups borrow instead of
/// allocating: the raster interns every cell of its dense blocks.
struct Interner<'a> {
    parts: &'a [PreparedPart],
    entries: EntryTable,
    ids: FxHashMap<Box<[u32]>, u32>,
    key: Vec<u32>,
}

impl<'a> Interner<'a> {
    fn new(parts: &'a [PreparedPart]) -> Self {
        let mut ids = FxHashMap::default();
        ids.insert(vec![0u32].into_boxed_slice(), EMPTY_ENTRY);
        Self {
            parts,
            entries: EntryTable::new(),
            ids,
            key: Vec::new(),
        }
    }

    /// `inside` and `boundary` sorted and deduplicated; boundary parts of fences in `inside` are dropped.
    fn intern(&mut self, inside: &[u32], boundary: &[u32]) -> u32 {
        let parts = self.parts;
        self.key.clear();
        self.key.push(inside.len() as u32);
        self.key.extend_from_slice(inside);
        self.key.extend(
            boundary
                .iter()
                .copied()
                .filter(|&p| inside.binary_search(&parts[p as usize].fence).is_err()),
        );
        if let Some(&id) = self.ids.get(self.key.as_slice()) {
            return id;
        }
        let id = self.entries.push(inside, &self.key[1 + inside.len()..]);
        self.ids.insert(self.key.as_slice().into(), id);
        id
    }

    fn intern_unsorted(&mut self, mut inside: Vec<u32>, mut boundary: Vec<u32>) -> u32 {
        inside.sort_unstable();
        inside.dedup();
        boundary.sort_unstable();
        boundary.dedup();
        self.intern(&inside, &boundary)
    }
}

impl FenceIndex {
    /// Builds the index on all cores (rayon).
    #[must_use]
    pub fn build(fences: &[Fence], options: IndexOptions) -> Self {
        let started = Instant::now();
        let infos: Vec<FenceInfo> = fences
            .iter()
            .map(|f| FenceInfo {
                id: f.id.as_str().into(),
                name: f.name.as_str().into(),
                tolerance_m: f.tolerance_m,
                vertex_count: f.vertex_count(),
            })
            .collect();
        let reach: Vec<f64> = fences
            .iter()
            .map(|f| f.tolerance_m + options.extra_reach_m)
            .collect();
        let owners: Vec<(u32, Shape<'_>)> = fences
            .iter()
            .enumerate()
            .flat_map(|(i, f)| {
                f.polygons
                    .iter()
                    .map(move |p| (i as u32, Shape::Polygon(p)))
                    .chain(f.circle.map(|c| (i as u32, Shape::Circle(c))))
            })
            .collect();
        let parts: Vec<PreparedPart> = owners
            .par_iter()
            .map(|&(fence, shape)| {
                let reach = reach[fence as usize].max(ON_BOUNDARY_M);
                match shape {
                    Shape::Polygon(polygon) => PreparedPart::new(fence, polygon, reach),
                    Shape::Circle(circle) => PreparedPart::circle(fence, circle, reach),
                }
            })
            .collect();
        let rtree = build_rtree(&parts, &reach);
        let mut interner = Interner::new(&parts);

        let grid = RasterGrid {
            cells_per_degree: options.cells_per_degree,
        };
        assert!(
            (parts.len() as u64) < grid.max_ids(),
            "{} parts exceed what a raster of {} cells per degree can name",
            parts.len(),
            grid.cells_per_degree
        );
        let rasters: Vec<PartRaster> = parts
            .par_iter()
            .enumerate()
            .map(|(i, part)| rasterize_part(grid, part, i as u32, reach[part.fence as usize]))
            .collect();
        let mut cells = Vec::with_capacity(rasters.iter().map(|r| r.cells.len()).sum());
        let mut blocks = Vec::with_capacity(rasters.iter().map(|r| r.blocks.len()).sum());
        for raster in rasters {
            cells.extend(raster.cells);
            blocks.extend(raster.blocks);
        }
        let raster = Raster::build(grid, cells, blocks, |inside, boundary| {
            interner.intern(inside, boundary)
        });

        let h3 = options.h3_resolution.map(|fine| {
            let coarse = options.h3_coarse_resolution(fine);
            let covers: Vec<PartCover> = parts
                .par_iter()
                .map(|part| cover_part(part, reach[part.fence as usize], fine, coarse))
                .collect();
            build_h3_table(&mut interner, covers, fine, coarse)
        });
        let entries = interner.entries;

        let mut per_res: FxHashMap<u8, usize> = FxHashMap::default();
        for cell in h3.iter().flat_map(|t| t.table.keys()) {
            *per_res.entry(u8::from(cell.resolution())).or_default() += 1;
        }
        let mut h3_cells_per_resolution: Vec<_> = per_res.into_iter().collect();
        h3_cells_per_resolution.sort_unstable();
        let approx_heap_bytes = parts.iter().map(PreparedPart::heap_bytes).sum::<usize>()
            + raster.heap_bytes()
            + h3.as_ref().map_or(0, |t| {
                t.table.capacity() * 16 + t.levels_below.capacity() * 12
            })
            + entries.heap_bytes();
        let stats = IndexStats {
            fences: infos.len(),
            parts: parts.len(),
            vertices: infos.iter().map(|f| f.vertex_count).sum(),
            raster_cells: raster.cell_count(),
            raster_dense_blocks: raster.dense_blocks(),
            distinct_entries: entries.count,
            h3_cells_per_resolution,
            approx_heap_bytes,
            build_time: started.elapsed(),
        };
        Self {
            fences: infos,
            reach_m: reach,
            parts,
            entries,
            raster,
            h3,
            rtree,
            stats,
        }
    }

    #[must_use]
    pub fn fences(&self) -> &[FenceInfo] {
        &self.fences
    }

    #[must_use]
    pub fn fence(&self, index: u32) -> &FenceInfo {
        &self.fences[index as usize]
    }

    #[must_use]
    pub fn stats(&self) -> &IndexStats {
        &self.stats
    }

    /// Every fence `point` is inside or within tolerance of, ordered by fence position; `out` is cleared first
    /// so one buffer can serve a whole stream without allocating.
    pub fn match_point(&self, point: GeoPoint, out: &mut Vec<FenceMatch>) {
        out.clear();
        self.collect_raster(point, out, 0);
    }

    /// The matches of many points, each exactly as [`Self::match_point`] gives it: appended to `out`, point
    /// `i`'s in `out[ends[i - 1]..ends[i]]` (from 0 for the first). Faster than one by one on points spread
    /// wide, whose raster lookups miss the cache: the lookups of a group of points go one array level at a
    /// time across the group, so their misses overlap instead of following each other.
    pub fn match_batch(
        &self,
        points: &[GeoPoint],
        out: &mut Vec<FenceMatch>,
        ends: &mut Vec<usize>,
    ) {
        out.clear();
        ends.clear();
        for group in points.chunks(BATCH_GROUP) {
            self.match_group(group, out, ends);
        }
    }

    /// [`Self::match_batch`] for at most [`BATCH_GROUP`] points: each step of the lookups runs across
    /// the whole group before the next, so that the points' cache misses overlap.
    fn match_group(&self, group: &[GeoPoint], out: &mut Vec<FenceMatch>, ends: &mut Vec<usize>) {
        debug_assert!(group.len() <= BATCH_GROUP);
        let mut lookups = [CellLookup::default(); BATCH_GROUP];
        let lookups = &mut lookups[..group.len()];
        for (lookup, point) in lookups.iter_mut().zip(group) {
            *lookup = self.raster.lookup_tile(point.lat(), point.lon());
        }
        for _level in 0..2 {
            for lookup in lookups.iter() {
                self.raster.prefetch_descent(lookup);
            }
            for lookup in lookups.iter_mut() {
                self.raster.descend(lookup);
            }
        }
        // The group's entries, then the searches of all its (point, part) pairs warmed together.
        for lookup in lookups.iter() {
            self.entries.prefetch(lookup.value);
        }
        self.warm_searches::<{ 4 * BATCH_GROUP }>(lookups.iter().zip(group).flat_map(
            |(lookup, &point)| {
                let boundary = self.entries.get(lookup.value).boundary;
                boundary.iter().map(move |&part| (part, point))
            },
        ));
        for (lookup, &point) in lookups.iter().zip(group) {
            if lookup.value != EMPTY_ENTRY {
                let start = out.len();
                self.resolve_entry(self.entries.get(lookup.value), point, out, 0);
                if out.len() - start > 1 {
                    out[start..].sort_unstable_by_key(|m| m.fence);
                }
            }
            ends.push(out.len());
        }
    }

    /// Brings what the searches of these (part, point) pairs read first into cache together: one step
    /// across all pairs at a time, each step reading what the last one prefetched and prefetching what
    /// the next one reads, so that the pairs' cache misses overlap instead of following each other.
    /// At most `PAIRS` pairs get past the first step (the rest are searched cold): the buffer is sized
    /// by the caller because zeroing one sized for a batch was 4% of a single point's match.
    fn warm_searches<const PAIRS: usize>(
        &self,
        pairs: impl Iterator<Item = (u32, GeoPoint)> + Clone,
    ) {
        for (part, _) in pairs.clone() {
            self.parts[part as usize].warm_part();
        }
        let mut warmed = [(0u32, 0u32); PAIRS];
        let mut warming = 0;
        for (part, point) in pairs {
            let prepared = &self.parts[part as usize];
            let lon = prepared.local_lon(point.lon());
            if let (Some(bucket), Some(slot)) = (
                prepared.warm_grid_cell(point.lat(), lon),
                warmed.get_mut(warming),
            ) {
                *slot = (part, bucket);
                warming += 1;
            }
        }
        let mut chains = 0;
        for index in 0..warming {
            let (part, bucket) = warmed[index];
            if let Some(entry) = self.parts[part as usize].warm_grid_entries(bucket) {
                warmed[chains] = (part, entry);
                chains += 1;
            }
        }
        for &(part, entry) in &warmed[..chains] {
            self.parts[part as usize].warm_chain(entry);
        }
    }

    /// Appends the matches of `point` through `strategy` to `out`, with fence positions shifted by
    /// `offset` and sorted among themselves: lets a layered index put an overlay's matches after its base's.
    pub(crate) fn collect(
        &self,
        strategy: Strategy,
        point: GeoPoint,
        out: &mut Vec<FenceMatch>,
        offset: u32,
    ) {
        match strategy {
            Strategy::Raster => self.collect_raster(point, out, offset),
            Strategy::H3 => {
                if self.collect_h3(point, out, offset).is_none() {
                    self.collect_rtree(point, out, offset);
                }
            }
            Strategy::RTree => self.collect_rtree(point, out, offset),
        }
    }

    /// Appends what [`Self::match_point_brute_force`] finds, shifted by `offset`.
    pub(crate) fn collect_brute_force(
        &self,
        point: GeoPoint,
        out: &mut Vec<FenceMatch>,
        offset: u32,
    ) {
        let start = out.len();
        let mut metric = None;
        for part in 0..self.parts.len() as u32 {
            self.resolve_part(
                Containment::CrossingCount,
                part,
                point,
                &mut metric,
                out,
                start,
                offset,
            );
        }
        out[start..].sort_unstable_by_key(|m| m.fence);
    }

    fn collect_raster(&self, point: GeoPoint, out: &mut Vec<FenceMatch>, offset: u32) {
        let entry = self.raster.entry_at(point.lat(), point.lon());
        if entry == EMPTY_ENTRY {
            return;
        }
        let entry = self.entries.get(entry);
        // Near a boundary shared by several parts (two counties' common line, a coast and its islands)
        // their searches are independent: warmed together, their cache misses overlap (+15–19% one
        // point at a time near county lines); a single part has nothing to overlap with.
        if entry.boundary.len() > 1 {
            self.warm_searches::<POINT_WARM_PAIRS>(
                entry.boundary.iter().map(|&part| (part, point)),
            );
        }
        let start = out.len();
        self.resolve_entry(entry, point, out, offset);
        if out.len() - start > 1 {
            out[start..].sort_unstable_by_key(|m| m.fence);
        }
    }

    /// Same answer as [`Self::match_point`] through the H3 cover; `None` when the index was built without one.
    pub fn match_point_h3(&self, point: GeoPoint, out: &mut Vec<FenceMatch>) -> Option<()> {
        out.clear();
        self.collect_h3(point, out, 0)
    }

    fn collect_h3(&self, point: GeoPoint, out: &mut Vec<FenceMatch>, offset: u32) -> Option<()> {
        let h3 = self.h3.as_ref()?;
        let start = out.len();
        let ll = LatLng::new(point.lat(), point.lon()).ok()?;
        let cell = ll.to_cell(h3.fine);
        let mask = cell
            .parent(h3.coarse)
            .and_then(|c| h3.levels_below.get(&c))
            .copied();
        let mut levels = mask.unwrap_or(0);
        while levels != 0 {
            let level = levels.trailing_zeros() as u8;
            levels &= levels - 1;
            let key = Resolution::try_from(level)
                .ok()
                .and_then(|r| cell.parent(r));
            if let Some(&entry) = key.and_then(|k| h3.table.get(&k)) {
                self.resolve_entry(self.entries.get(entry), point, out, offset);
                break;
            }
        }
        if out.len() - start > 1 {
            out[start..].sort_unstable_by_key(|m| m.fence);
        }
        Some(())
    }

    /// The H3 cover of one fence as (cell, wholly inside?) pairs, when the index was built with one: lets
    /// clients pre-filter locally or join with their own H3-keyed data.
    #[must_use]
    pub fn h3_cover(&self, fence: u32) -> Option<Vec<(CellIndex, bool)>> {
        let h3 = self.h3.as_ref()?;
        let mut cells: Vec<(CellIndex, bool)> = h3
            .table
            .iter()
            .filter_map(|(&cell, &entry)| {
                let e = self.entries.get(entry);
                if e.inside.contains(&fence) {
                    Some((cell, true))
                } else if e
                    .boundary
                    .iter()
                    .any(|&p| self.parts[p as usize].fence == fence)
                {
                    Some((cell, false))
                } else {
                    None
                }
            })
            .collect();
        cells.sort_unstable();
        Some(cells)
    }

    /// Matches through the chosen lookup path.
    pub fn match_with(&self, strategy: Strategy, point: GeoPoint, out: &mut Vec<FenceMatch>) {
        out.clear();
        self.collect(strategy, point, out, 0);
    }

    /// Convenience form of [`Self::match_point`] that allocates.
    #[must_use]
    pub fn matches(&self, point: GeoPoint) -> Vec<FenceMatch> {
        let mut out = Vec::new();
        self.match_point(point, &mut out);
        out
    }

    /// Same answer as [`Self::match_point`], with candidates from the R-tree and exact tests for each.
    pub fn match_point_rtree(&self, point: GeoPoint, out: &mut Vec<FenceMatch>) {
        out.clear();
        self.collect_rtree(point, out, 0);
    }

    fn collect_rtree(&self, point: GeoPoint, out: &mut Vec<FenceMatch>, offset: u32) {
        let start = out.len();
        let mut metric = None;
        for candidate in self.rtree.locate_all_at_point(&[point.lon(), point.lat()]) {
            self.resolve_part(
                Containment::NearestEdgeSide,
                candidate.data,
                point,
                &mut metric,
                out,
                start,
                offset,
            );
        }
        out[start..].sort_unstable_by_key(|m| m.fence);
    }

    /// Same answer as [`Self::match_point`], testing every part: the reference for tests.
    pub fn match_point_brute_force(&self, point: GeoPoint, out: &mut Vec<FenceMatch>) {
        out.clear();
        self.collect_brute_force(point, out, 0);
    }

    fn resolve_entry(
        &self,
        entry: CellEntry<'_>,
        point: GeoPoint,
        out: &mut Vec<FenceMatch>,
        offset: u32,
    ) {
        let start = out.len();
        let mut metric = None;
        out.extend(entry.inside.iter().map(|&fence| FenceMatch {
            fence: fence + offset,
            inside: true,
            distance_m: 0.0,
        }));
        for &part in entry.boundary.iter() {
            self.resolve_part(
                Containment::NearestEdgeSide,
                part,
                point,
                &mut metric,
                out,
                start,
                offset,
            );
        }
    }

    /// Exact test of one part; merges into `out[start..]` (a fence matches by its nearest part).
    /// `metric` is the point's local metric, computed by the first part that needs it.
    #[allow(clippy::too_many_arguments)]
    fn resolve_part(
        &self,
        containment: Containment,
        part_index: u32,
        point: GeoPoint,
        metric: &mut Option<LocalMetric>,
        out: &mut Vec<FenceMatch>,
        start: usize,
        offset: u32,
    ) {
        let part = &self.parts[part_index as usize];
        let fence = part.fence + offset;
        let existing = out[start..]
            .iter()
            .position(|m| m.fence == fence)
            .map(|i| i + start);
        if existing.is_some_and(|i| out[i].inside) {
            return;
        }
        let lon = part.local_lon(point.lon());
        let reach = self.reach_m[part.fence as usize];
        let limit = reach.max(ON_BOUNDARY_M);
        let found = match containment {
            Containment::NearestEdgeSide => {
                let metric = metric.get_or_insert_with(|| LocalMetric::at_latitude(point.lat()));
                part.locate_within_at(point.lat(), lon, limit, metric)
            }
            Containment::CrossingCount => {
                if part.contains(point.lat(), lon) {
                    Some(0.0)
                } else {
                    let metric =
                        metric.get_or_insert_with(|| LocalMetric::at_latitude(point.lat()));
                    part.boundary_distance_within_at(point.lat(), lon, limit, metric)
                }
            }
        }
        .map(|d| if d <= ON_BOUNDARY_M { 0.0 } else { d })
        .filter(|&d| d <= reach);
        let Some(distance_m) = found else { return };
        let candidate = FenceMatch {
            fence,
            inside: distance_m == 0.0,
            distance_m,
        };
        match existing {
            Some(i) if out[i].distance_m <= distance_m => {}
            Some(i) => out[i] = candidate,
            None => out.push(candidate),
        }
    }
}

/// How an exact test tells inside from outside. Both give the same answers; the brute-force reference
/// keeps the crossing count so that the tests compare the two.
#[derive(Clone, Copy)]
enum Containment {
    /// The side of the nearest edge when one is within the tolerance, else the crossing count.
    NearestEdgeSide,
    /// Even-odd crossing count along the point's parallel, then a distance search when outside.
    CrossingCount,
}

/// What one part of a fence is made from.
#[derive(Clone, Copy)]
enum Shape<'a> {
    Polygon(&'a super::fence::Polygon),
    Circle(super::fence::Circle),
}

fn build_rtree(parts: &[PreparedPart], reach_m: &[f64]) -> RTree<PartBox> {
    let mut boxes = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let b = part.bounds;
        let reach =
            reach_m[part.fence as usize].max(ON_BOUNDARY_M) * 1.01 + 1.0 + part.cover_margin_m();
        let (dlat, dlon) = degrees_spanned(reach, b.min_lat, b.max_lat);
        let (lo, hi) = (
            [b.min_lon - dlon, b.min_lat - dlat],
            [b.max_lon + dlon, b.max_lat + dlat],
        );
        // A box grown across the antimeridian is also inserted shifted by 360°, so that queries stay in
        // [-180, 180] and still find it.
        for shift in [0.0, 360.0, -360.0] {
            let (slo, shi) = (lo[0] + shift, hi[0] + shift);
            if shift == 0.0 || (shi >= -180.0 && slo <= 180.0) {
                boxes.push(GeomWithData::new(
                    Rectangle::from_corners([slo, lo[1]], [shi, hi[1]]),
                    i as u32,
                ));
            }
        }
    }
    RTree::bulk_load(boxes)
}

/// Merges per-part H3 covers into one table whose keys are disjoint: a key that has another key below it is
/// split into its children, each inheriting its statuses, coarse levels first.
fn build_h3_table(
    interner: &mut Interner<'_>,
    covers: Vec<PartCover>,
    fine: Resolution,
    coarse: Resolution,
) -> H3Table {
    #[derive(Default, Clone)]
    struct Statuses {
        inside: Vec<u32>,
        boundary: Vec<u32>,
    }
    let mut cells: FxHashMap<CellIndex, Statuses> = FxHashMap::default();
    for (part, cover) in covers.into_iter().enumerate() {
        let fence = interner.parts[part].fence;
        for cell in cover.inside {
            cells.entry(cell).or_default().inside.push(fence);
        }
        for cell in cover.boundary {
            cells.entry(cell).or_default().boundary.push(part as u32);
        }
    }
    let mut has_keys_below: FxHashSet<CellIndex> = FxHashSet::default();
    for &cell in cells.keys() {
        insert_ancestors(cell, coarse, &mut has_keys_below);
    }
    for level in Resolution::range(coarse, fine) {
        let Some(next) = level.succ() else { break };
        let to_split: Vec<CellIndex> = cells
            .keys()
            .filter(|c| c.resolution() == level && has_keys_below.contains(c))
            .copied()
            .collect();
        for cell in to_split {
            let Some(statuses) = cells.remove(&cell) else {
                continue;
            };
            for child in cell.children(next) {
                let target = cells.entry(child).or_default();
                target.inside.extend_from_slice(&statuses.inside);
                target.boundary.extend_from_slice(&statuses.boundary);
            }
        }
    }
    let mut table = FxHashMap::default();
    table.reserve(cells.len());
    let mut levels_below: FxHashMap<CellIndex, u16> = FxHashMap::default();
    for (cell, s) in cells {
        table.insert(cell, interner.intern_unsorted(s.inside, s.boundary));
        if let Some(root) = cell.parent(coarse) {
            *levels_below.entry(root).or_default() |= 1 << u8::from(cell.resolution());
        }
    }
    H3Table {
        fine,
        coarse,
        levels_below,
        table,
    }
}

//! One polygon of a fence, prepared for exact work: point-in-polygon through latitude slabs and
//! nearest-boundary distance through a grid of edge chains grown by the tolerance. A circle is a part too: its
//! ring (a fine polygon, widened by the chords' gap) builds the covers, and exact answers come from the
//! geodesic distance to the centre.
//!
//! All coordinates stay in the part's own lon/lat frame. A query point is first moved by ±360° to the side of
//! the antimeridian the part lies on ([`PreparedPart::local_lon`]); parts never span more than 180° of
//! longitude (validation), so that shift is unambiguous.

use super::fence::{Circle, Polygon};
use super::metric::{degrees_spanned, distance_m, wrap_lon_delta, LocalMetric};
use super::prefetch::prefetch_run;

/// Margin on approximate (local-metric) distances before the exact evaluation decides: the local metric is
/// within 1% of the ellipsoidal one inside a 100 km radius below 85° latitude.
const APPROX_SLACK: f64 = 1.02;

/// Axis-aligned bounds in degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub min_lon: f64,
    pub min_lat: f64,
    pub max_lon: f64,
    pub max_lat: f64,
}

/// Compressed lists of edge ids per bucket (CSR layout: one allocation, cache-friendly scans).
#[derive(Debug, Clone, Default)]
struct Buckets {
    offsets: Vec<u32>,
    items: Vec<u32>,
}

impl Buckets {
    fn build(count: usize, mut assign: impl FnMut(&mut dyn FnMut(usize, u32))) -> Self {
        let mut counts = vec![0u32; count + 1];
        assign(&mut |bucket, _| counts[bucket + 1] += 1);
        for i in 0..count {
            counts[i + 1] += counts[i];
        }
        let mut fill = counts.clone();
        let mut items = vec![0u32; counts[count] as usize];
        assign(&mut |bucket, edge| {
            items[fill[bucket] as usize] = edge;
            fill[bucket] += 1;
        });
        Self {
            offsets: counts,
            items,
        }
    }

    fn get(&self, bucket: usize) -> &[u32] {
        &self.items[self.offsets[bucket] as usize..self.offsets[bucket + 1] as usize]
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// Consecutive edges of one ring, those starting at vertices `first..first + len`, and their bounds, in
/// degrees.
#[derive(Debug, Clone, Copy)]
struct Chain {
    min_lon: f64,
    min_lat: f64,
    max_lon: f64,
    max_lat: f64,
    first: u32,
    len: u32,
}

impl Chain {
    /// This chain with one more edge (`edge`, a chain of one) and the box grown to hold it.
    fn extended_by(&self, edge: &Chain) -> Chain {
        Chain {
            min_lon: self.min_lon.min(edge.min_lon),
            max_lon: self.max_lon.max(edge.max_lon),
            min_lat: self.min_lat.min(edge.min_lat),
            max_lat: self.max_lat.max(edge.max_lat),
            first: self.first,
            len: self.len + 1,
        }
    }
}

/// Applied to the cell-centre distance bounds before they are stored as `f32` (which rounds to nearest),
/// so a stored bound never exceeds the true one.
const KEY_SHRINK: f64 = 0.999_99;

/// Smallest distance-grid cell, as a share of the tolerance box: smaller cells hold fewer chains and put
/// a query nearer its cell's centre (so the sorted search stops sooner), at the cost of more entries.
const CELL_OF_REACH: f64 = 0.25;

/// Chains nearest a cell's centre whose edges are measured to bound the cell's nearest-edge distance
/// from above (see [`PreparedPart::fill_grid_cells`]).
const PRUNE_PROBES: usize = 4;

/// Grid entries of a cell prefetched for a batch's search (two cache lines): about what a search walks.
const WARM_ENTRIES: usize = 8;

/// Mean entries per occupied cell above which the grid is laid out again with cells half as wide.
const DENSE_CELL_ENTRIES: usize = 32;

/// Set in a grid offset when its cell's centre is inside the part; the rest of the offset is the index.
const CENTRE_INSIDE: u32 = 1 << 31;

/// Share of a search's limit within which a point with no edge inside the limit takes its cell centre's
/// side; under 1 for the `f64` rounding of the distances compared.
const CENTRE_REACH_SHARE: f64 = 0.99;

/// At most this many edges per chain…
const CHAIN_EDGES: usize = 16;
/// …and no wider than this share of the tolerance, so that a chain's box stays a tight bound.
const CHAIN_EXTENT_OF_REACH: f64 = 0.25;

/// A polygon (exterior + holes) ready for point-in-polygon and distance queries.
///
/// Laid out (`repr(C)`, on a cache line) with the fields a distance search reads first, up to `circle`:
/// a batch prefetches those four lines only ([`PreparedPart::warm_part`]), not all seven.
#[derive(Debug, Clone)]
#[repr(C, align(64))]
pub struct PreparedPart {
    center_lon: f64,
    grid_lon0: f64,
    grid_lat0: f64,
    grid_inv_w: f64,
    grid_inv_h: f64,
    grid_nx: usize,
    grid_ny: usize,
    /// Index of the owning fence in the fence set.
    pub fence: u32,
    grid_frame: BoxFrame,
    /// Cell `i`'s entries are `grid_entries[offset(i)..offset(i + 1)]`: the chains within reach of the
    /// cell, nearest to its centre first, each with its box inline so that a search reads one contiguous
    /// run per cell. The top bit of `grid_offsets[i]` ([`CENTRE_INSIDE`]) says whether cell `i`'s centre
    /// is inside the part: a search that finds no edge near the point answers point-in-polygon from it,
    /// on the cache line it has read anyway (see [`PreparedPart::nearest_edge_within`]).
    grid_offsets: Vec<u32>,
    grid_entries: Vec<GridEntry>,
    /// Closed rings, concatenated.
    vertices: Vec<[f64; 2]>,
    /// Index in `vertices` where each ring starts, and `vertices.len()` last.
    ring_starts: Vec<u32>,
    /// Set for a circle: exact answers come from it, the polygon above only approximates it for covers.
    circle: Option<Circle>,
    /// `bounds` rounded outwards to `f32` (west, south, east, north): small enough for the first cache
    /// lines, so that a point-in-polygon test of a point outside the part's box (most tests of a
    /// candidate part whose band merely touches the point's raster cell) reads nothing else.
    coarse_bounds: [f32; 4],
    // The fields above are what a search reads first; those below, point-in-polygon and the builders.
    /// Edge `e` runs from `vertices[e]` to `vertices[e + 1]`.
    edges: Vec<u32>,
    /// Per vertex index `e` of an edge start: d(lon)/d(lat) along edge `e` (0 for a parallel), so that
    /// point-in-polygon multiplies instead of dividing.
    slopes: Vec<f64>,
    pub bounds: Bounds,
    slab_lat0: f64,
    slab_inv_height: f64,
    slabs: Buckets,
    /// The tolerance (metres) the grid was grown by; distance queries may not look further.
    reach_m: f64,
    /// How much further than the tolerance covers must reach so that every point within the tolerance of
    /// the true boundary is in their band (0 for polygons; the ring's gap for circles).
    cover_margin_m: f64,
}

/// Bytes at the start of a [`PreparedPart`] that a distance search reads first.
const HOT_PART_BYTES: usize = std::mem::offset_of!(PreparedPart, edges);
const _: () = assert!(HOT_PART_BYTES <= 4 * 64);

/// Segments of the ring a circle's covers are built from: the gap to the true circle stays under
/// 1e-4 of the radius (10 m at the largest radius), which the covers' margin absorbs.
const CIRCLE_SEGMENTS: usize = 256;

impl PreparedPart {
    /// Prepares `polygon` for queries up to `reach_m` metres from its boundary.
    #[must_use]
    pub fn new(fence: u32, polygon: &Polygon, reach_m: f64) -> Self {
        let mut vertices = Vec::with_capacity(polygon.vertex_count() + polygon.rings.len());
        let mut edges = Vec::with_capacity(polygon.vertex_count());
        let mut ring_starts = Vec::with_capacity(polygon.rings.len() + 1);
        for (index, ring) in polygon.rings.iter().enumerate() {
            let start = vertices.len() as u32;
            ring_starts.push(start);
            // The polygon's interior on the left of every edge: exteriors counter-clockwise, holes
            // clockwise (validation has refused holes outside the exterior and crossing rings), so that
            // the side of the nearest edge tells inside from outside.
            let counterclockwise = ring_signed_area2(ring) > 0.0;
            if counterclockwise == (index == 0) {
                vertices.extend_from_slice(ring);
            } else {
                vertices.extend(ring.iter().rev());
            }
            edges.extend(start..start + ring.len() as u32 - 1);
        }
        ring_starts.push(vertices.len() as u32);
        let mut bounds = Bounds {
            min_lon: f64::INFINITY,
            min_lat: f64::INFINITY,
            max_lon: f64::NEG_INFINITY,
            max_lat: f64::NEG_INFINITY,
        };
        for &[lon, lat] in &vertices {
            bounds.min_lon = bounds.min_lon.min(lon);
            bounds.max_lon = bounds.max_lon.max(lon);
            bounds.min_lat = bounds.min_lat.min(lat);
            bounds.max_lat = bounds.max_lat.max(lat);
        }
        let slopes = (0..vertices.len())
            .map(|i| match vertices.get(i + 1) {
                Some(b) if b[1] != vertices[i][1] => {
                    (b[0] - vertices[i][0]) / (b[1] - vertices[i][1])
                }
                _ => 0.0,
            })
            .collect();
        let mut part = Self {
            fence,
            vertices,
            edges,
            ring_starts,
            slopes,
            bounds,
            center_lon: 0.5 * (bounds.min_lon + bounds.max_lon),
            slab_lat0: bounds.min_lat,
            slab_inv_height: 0.0,
            slabs: Buckets::default(),
            reach_m,
            grid_lon0: 0.0,
            grid_lat0: 0.0,
            grid_inv_w: 0.0,
            grid_inv_h: 0.0,
            grid_nx: 1,
            grid_ny: 1,
            grid_frame: BoxFrame::default(),
            grid_offsets: vec![0, 0],
            grid_entries: Vec::new(),
            circle: None,
            coarse_bounds: outward_f32(bounds),
            cover_margin_m: 0.0,
        };
        part.build_slabs();
        part.build_grid();
        part
    }

    /// Prepares a circle for queries up to `reach_m` metres from its boundary.
    #[must_use]
    pub fn circle(fence: u32, circle: Circle, reach_m: f64) -> Self {
        let ring = Polygon {
            rings: vec![circle.ring(CIRCLE_SEGMENTS)],
        };
        let margin = circle.ring_gap_m(CIRCLE_SEGMENTS);
        let mut part = Self::new(fence, &ring, reach_m + margin);
        part.reach_m = reach_m;
        part.circle = Some(circle);
        part.cover_margin_m = margin;
        part
    }

    /// Extra reach covers need beyond the tolerance (see the field).
    #[must_use]
    pub fn cover_margin_m(&self) -> f64 {
        self.cover_margin_m
    }

    #[must_use]
    pub fn edge_count(&self) -> usize {
        self.edges.len()
    }

    /// Iterates over the edges as ((lon, lat), (lon, lat)) pairs.
    pub fn edge_segments(&self) -> impl Iterator<Item = ([f64; 2], [f64; 2])> + '_ {
        self.edges
            .iter()
            .map(|&e| (self.vertices[e as usize], self.vertices[e as usize + 1]))
    }

    /// Bytes held by this part's vertices and indexes (for capacity reports).
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.vertices.len() * 24
            + (self.edges.len() + self.ring_starts.len()) * 4
            + (self.slabs.len() + self.slabs.offsets.len() + self.grid_offsets.len()) * 4
            + self.grid_entries.len() * std::mem::size_of::<GridEntry>()
    }

    fn segment(&self, edge: u32) -> ([f64; 2], [f64; 2]) {
        (
            self.vertices[edge as usize],
            self.vertices[edge as usize + 1],
        )
    }

    fn build_slabs(&mut self) {
        let height = self.bounds.max_lat - self.bounds.min_lat;
        let count = if height > 0.0 {
            (self.edges.len() / 4).clamp(1, 1 << 16)
        } else {
            1
        };
        self.slab_inv_height = if height > 0.0 {
            count as f64 / height
        } else {
            0.0
        };
        let (lat0, inv, edges, vertices) = (
            self.slab_lat0,
            self.slab_inv_height,
            &self.edges,
            &self.vertices,
        );
        let slab_of = |lat: f64| (((lat - lat0) * inv) as usize).min(count - 1);
        self.slabs = Buckets::build(count, |put| {
            for &e in edges {
                let (a, b) = (vertices[e as usize], vertices[e as usize + 1]);
                for s in slab_of(a[1].min(b[1]))..=slab_of(a[1].max(b[1])) {
                    put(s, e);
                }
            }
        });
    }

    /// Cuts each ring into chains of consecutive edges, no longer than [`CHAIN_EDGES`] and no wider than
    /// a quarter of the tolerance (in either axis) unless a single edge is.
    fn build_chains(&self, dlon: f64, dlat: f64) -> Vec<Chain> {
        let (max_w, max_h) = (dlon * CHAIN_EXTENT_OF_REACH, dlat * CHAIN_EXTENT_OF_REACH);
        let mut chains = Vec::with_capacity(self.edges.len() / 4 + 1);
        let mut current: Option<Chain> = None;
        for &e in &self.edges {
            let (a, c) = self.segment(e);
            let edge = Chain {
                min_lon: a[0].min(c[0]),
                max_lon: a[0].max(c[0]),
                min_lat: a[1].min(c[1]),
                max_lat: a[1].max(c[1]),
                first: e,
                len: 1,
            };
            let grown = current
                // The edge continues the chain when it starts where the chain's last edge ends (the
                // next ring starts one vertex later, past the closing one).
                .filter(|chain| chain.first + chain.len == e)
                .map(|chain| chain.extended_by(&edge))
                .filter(|chain| {
                    chain.len as usize <= CHAIN_EDGES
                        && chain.max_lon - chain.min_lon <= max_w
                        && chain.max_lat - chain.min_lat <= max_h
                });
            current = Some(match grown {
                Some(chain) => chain,
                None => {
                    chains.extend(current);
                    edge
                }
            });
        }
        chains.extend(current);
        chains
    }

    fn build_grid(&mut self) {
        let b = self.bounds;
        let (dlat, dlon) = degrees_spanned(self.reach_m * APPROX_SLACK + 1.0, b.min_lat, b.max_lat);
        let chains = self.build_chains(dlon, dlat);
        let width = b.max_lon - b.min_lon + 2.0 * dlon;
        let height = b.max_lat - b.min_lat + 2.0 * dlat;
        // About two chains per cell, but cells no smaller than a share of the tolerance box so a chain
        // lands in few cells.
        let ideal = (width * height / (2.0 * chains.len() as f64)).sqrt();
        let mut cell = [
            ideal.max(dlon * CELL_OF_REACH).max(width / 2048.0),
            ideal.max(dlat * CELL_OF_REACH).max(height / 2048.0),
        ];
        self.lay_out_grid(&chains, [dlon, dlat], cell);
        // Where the boundary is dense within the tolerance (a jagged coast, many parallel edges), a cell
        // keeps many chains after pruning and a search walks many of them before its bound stops it: a
        // finer grid, once, puts queries nearer their cell's centre.
        let occupied = self.grid_offsets.windows(2).filter(|w| w[0] < w[1]).count();
        if self.grid_entries.len() > DENSE_CELL_ENTRIES * occupied.max(1) {
            cell = [
                (0.5 * cell[0]).max(width / 4096.0),
                (0.5 * cell[1]).max(height / 4096.0),
            ];
            self.lay_out_grid(&chains, [dlon, dlat], cell);
        }
        self.mark_inside_cells();
    }

    /// Sets [`CENTRE_INSIDE`] on the offsets of the cells whose centre is inside, a row at a time from
    /// the crossings of the row's centre parallel (the arithmetic of [`Self::contains`], so both agree).
    fn mark_inside_cells(&mut self) {
        let Some(&total) = self.grid_offsets.last() else {
            return;
        };
        // Offsets that reach the flag's bit cannot carry it (2^31 entries would take 32 GiB: never met).
        if total >= CENTRE_INSIDE {
            return;
        }
        let [cell_w, cell_h] = self.grid_frame.cell;
        let mut crossings = Vec::new();
        for y in 0..self.grid_ny {
            let centre_lat = self.grid_lat0 + (y as f64 + 0.5) * cell_h;
            self.crossings(centre_lat, &mut crossings);
            if crossings.is_empty() {
                continue;
            }
            crossings.sort_unstable_by(f64::total_cmp);
            let mut west_of = 0;
            for x in 0..self.grid_nx {
                let centre_lon = self.grid_lon0 + (x as f64 + 0.5) * cell_w;
                // `contains` counts the crossings east of the point (`lon < crossing`).
                west_of += crossings[west_of..].partition_point(|&c| c <= centre_lon);
                if (crossings.len() - west_of) % 2 == 1 {
                    self.grid_offsets[y * self.grid_nx + x] |= CENTRE_INSIDE;
                }
            }
        }
    }

    /// Where cell `bucket`'s grid entries start, and whether its centre is inside.
    fn grid_offset(&self, bucket: usize) -> (usize, bool) {
        let offset = self.grid_offsets[bucket];
        (
            (offset & !CENTRE_INSIDE) as usize,
            offset & CENTRE_INSIDE != 0,
        )
    }

    /// Builds the distance grid with cells of `cell` degrees (lon, lat) over the bounds grown by `reach`
    /// degrees (lon, lat).
    fn lay_out_grid(&mut self, chains: &[Chain], reach: [f64; 2], cell: [f64; 2]) {
        let b = self.bounds;
        let [dlon, dlat] = reach;
        let (lon0, lat0) = (b.min_lon - dlon, b.min_lat - dlat);
        let width = b.max_lon - b.min_lon + 2.0 * dlon;
        let height = b.max_lat - b.min_lat + 2.0 * dlat;
        let nx = ((width / cell[0]).ceil() as usize).max(1);
        let ny = ((height / cell[1]).ceil() as usize).max(1);
        let (inv_w, inv_h) = (nx as f64 / width, ny as f64 / height);
        let cell = |v: f64, origin: f64, inv: f64, n: usize| {
            (((v - origin) * inv).max(0.0) as usize).min(n - 1)
        };
        let grid = Buckets::build(nx * ny, |put| {
            for (i, chain) in chains.iter().enumerate() {
                let x0 = cell(chain.min_lon - dlon, lon0, inv_w, nx);
                let x1 = cell(chain.max_lon + dlon, lon0, inv_w, nx);
                let y0 = cell(chain.min_lat - dlat, lat0, inv_h, ny);
                let y1 = cell(chain.max_lat + dlat, lat0, inv_h, ny);
                for y in y0..=y1 {
                    for x in x0..=x1 {
                        put(y * nx + x, i as u32);
                    }
                }
            }
        });
        (
            self.grid_lon0,
            self.grid_lat0,
            self.grid_inv_w,
            self.grid_inv_h,
        ) = (lon0, lat0, inv_w, inv_h);
        (self.grid_nx, self.grid_ny) = (nx, ny);
        self.grid_frame = BoxFrame::new([width / nx as f64, height / ny as f64], reach);
        self.fill_grid_cells(grid, chains);
    }

    /// Lays out each cell's chains (`grid`: chain ids per cell) as [`GridEntry`]s ordered by a lower
    /// bound on their distance from the cell's centre. The bound uses the smallest metres-per-degree found
    /// in the cell's row (longitude: its poleward edge; latitude: its equatorward edge), so it never
    /// exceeds the distance a query measures with the metric at its own latitude inside that row.
    fn fill_grid_cells(&mut self, grid: Buckets, chains: &[Chain]) {
        let (nx, ny) = (self.grid_nx, self.grid_ny);
        let frame = self.grid_frame;
        let [cell_w, cell_h] = frame.cell;
        let mut entries = Vec::with_capacity(grid.len());
        let mut offsets = Vec::with_capacity(nx * ny + 1);
        offsets.push(0);
        for y in 0..ny {
            let south = self.grid_lat0 + y as f64 * cell_h;
            let north = south + cell_h;
            let poleward = south.abs().max(north.abs());
            let equatorward = if south <= 0.0 && north >= 0.0 {
                0.0
            } else {
                south.abs().min(north.abs())
            };
            let kx = LocalMetric::at_latitude(poleward.min(90.0))
                .m_per_deg_lon
                .max(0.0);
            let ky = LocalMetric::at_latitude(equatorward).m_per_deg_lat;
            // The largest metres-per-degree in the row: distances measured with them are at least what
            // a query anywhere in the row measures.
            let (kx_max, ky_max) = (
                LocalMetric::at_latitude(equatorward.min(90.0)).m_per_deg_lon,
                LocalMetric::at_latitude(poleward.min(90.0)).m_per_deg_lat,
            );
            let half_diagonal = (0.5 * cell_w * kx_max).hypot(0.5 * cell_h * ky_max);
            let center_lat = south + 0.5 * cell_h;
            for x in 0..nx {
                let first = entries.len();
                let west = self.grid_lon0 + x as f64 * cell_w;
                let center_lon = west + 0.5 * cell_w;
                entries.extend(grid.get(y * nx + x).iter().map(|&c| {
                    let chain = &chains[c as usize];
                    let gx = (chain.min_lon - center_lon)
                        .max(center_lon - chain.max_lon)
                        .max(0.0)
                        * kx;
                    let gy = (chain.min_lat - center_lat)
                        .max(center_lat - chain.max_lat)
                        .max(0.0)
                        * ky;
                    let (min_x, max_x) = frame.quantize(0, west, chain.min_lon, chain.max_lon);
                    let (min_y, max_y) = frame.quantize(1, south, chain.min_lat, chain.max_lat);
                    GridEntry {
                        // Shrunk first, so that rounding to f32 keeps it a lower bound.
                        key: ((gx * gx + gy * gy).sqrt() * KEY_SHRINK) as f32,
                        frame_box: [min_x, min_y, max_x, max_y],
                        chain: chain.first << CHAIN_LEN_BITS | (chain.len - 1),
                    }
                }));
                entries[first..].sort_unstable_by(|a, b| a.key.total_cmp(&b.key));
                // Chains that cannot be the nearest for any point of the cell are dropped: the nearest
                // of the first few chains to the centre bounds every point's nearest edge from above, and
                // a chain's key less the half diagonal bounds its distance from below.
                let nearest_above = entries[first..]
                    .iter()
                    .take(PRUNE_PROBES)
                    .map(|entry| {
                        self.chain_distance_m(entry, [center_lon, center_lat], [kx_max, ky_max])
                    })
                    .fold(f64::INFINITY, f64::min)
                    + half_diagonal;
                let kept = entries[first..]
                    .partition_point(|entry| f64::from(entry.key) - half_diagonal <= nearest_above);
                entries.truncate(first + kept);
                offsets.push(entries.len() as u32);
            }
        }
        self.grid_offsets = offsets;
        self.grid_entries = entries;
    }

    /// Distance from `point` (lon, lat) to the nearest edge of an entry's chain, with `k` metres per
    /// degree (lon, lat).
    fn chain_distance_m(&self, entry: &GridEntry, point: [f64; 2], k: [f64; 2]) -> f64 {
        let first = entry.first_vertex();
        (first..first + entry.len())
            .map(|e| self.project(e, point, k).distance2.sqrt())
            .fold(f64::INFINITY, f64::min)
    }

    /// The point of edge `edge` nearest to `point` (lon, lat), with `k` metres per degree (lon, lat).
    fn project(&self, edge: u32, point: [f64; 2], k: [f64; 2]) -> Projection {
        let (a, c) = self.segment(edge);
        let (ax, ay) = ((a[0] - point[0]) * k[0], (a[1] - point[1]) * k[1]);
        let (dx, dy) = ((c[0] - a[0]) * k[0], (c[1] - a[1]) * k[1]);
        let len2 = dx * dx + dy * dy;
        let t = if len2 > 0.0 {
            (-(ax * dx + ay * dy) / len2).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let (qx, qy) = (ax + t * dx, ay + t * dy);
        Projection {
            t,
            distance2: qx * qx + qy * qy,
            // The cross product (c - a) × (point - a), with the point at the origin of these coordinates.
            side: dy * ax - dx * ay,
        }
    }

    /// The query longitude moved to this part's side of the antimeridian.
    #[must_use]
    pub fn local_lon(&self, lon: f64) -> f64 {
        self.center_lon + wrap_lon_delta(lon - self.center_lon)
    }

    /// Even-odd point-in-polygon (holes excluded). `lon` must come from [`Self::local_lon`].
    #[must_use]
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        if let Some(circle) = &self.circle {
            return circle.classify(lat, lon, 0.0).0;
        }
        let [west, south, east, north] = self.coarse_bounds.map(f64::from);
        if lat < south || lat > north || lon < west || lon > east {
            return false;
        }
        let b = &self.bounds;
        if lat < b.min_lat || lat > b.max_lat || lon < b.min_lon || lon > b.max_lon {
            return false;
        }
        // Branch-free: whether an edge crosses the parallel east of the point is as likely as not, and a
        // mispredicted branch per edge costs more than the arithmetic.
        let mut east = 0u32;
        for &e in self.slab_edges(lat) {
            let e = e as usize;
            let (a, b_lat) = (self.vertices[e], self.vertices[e + 1][1]);
            let crosses = (a[1] > lat) != (b_lat > lat);
            let x = a[0] + (lat - a[1]) * self.slopes[e];
            east += u32::from(crosses & (lon < x));
        }
        east % 2 == 1
    }

    /// Warming a part for a batch of points, in steps that each read what the previous step's
    /// prefetches brought in and prefetch what the next step reads, so that a batch runs one step across
    /// all its (point, part) pairs before the next and their cache misses overlap instead of following
    /// each other. Step 0: the part's own fields.
    pub fn warm_part(&self) {
        prefetch_run(std::ptr::from_ref(self).cast::<u8>(), HOT_PART_BYTES);
    }

    /// Step 1 (reads the part's fields): the distance-grid bucket of the point, whose offsets are
    /// prefetched; `None` for a circle, or outside the grid.
    #[must_use]
    pub fn warm_grid_cell(&self, lat: f64, lon: f64) -> Option<u32> {
        if self.circle.is_some() {
            return None;
        }
        let (bucket, _) = self.grid_cell(lat, lon)?;
        prefetch_run(self.grid_offsets.as_ptr().wrapping_add(bucket), 2);
        Some(bucket as u32)
    }

    /// Step 2 (reads a bucket's offsets from step 1): the bucket's first grid entry, whose line and the
    /// next are prefetched (about the entries a search walks); `None` when the bucket is empty.
    #[must_use]
    pub fn warm_grid_entries(&self, bucket: u32) -> Option<u32> {
        let bucket = bucket as usize;
        let ((first, _), (end, _)) = (self.grid_offset(bucket), self.grid_offset(bucket + 1));
        let walked = (end - first).min(WARM_ENTRIES);
        prefetch_run(self.grid_entries.as_ptr().wrapping_add(first), walked);
        (first < end).then_some(first as u32)
    }

    /// Step 3 (reads an entry from step 2): prefetches the vertices of its chain, and the ring starts a
    /// vertex answer looks up.
    pub fn warm_chain(&self, entry: u32) {
        let entry = &self.grid_entries[entry as usize];
        prefetch_run(
            self.vertices
                .as_ptr()
                .wrapping_add(entry.first_vertex() as usize),
            entry.len() as usize + 1,
        );
        prefetch_run(self.ring_starts.as_ptr(), self.ring_starts.len().min(16));
    }

    /// The grid bucket holding the point and the point's position in that cell from its low corner, in
    /// degrees (lon, lat).
    fn grid_cell(&self, lat: f64, lon: f64) -> Option<(usize, [f64; 2])> {
        let fx = (lon - self.grid_lon0) * self.grid_inv_w;
        let fy = (lat - self.grid_lat0) * self.grid_inv_h;
        if !(fx >= 0.0 && fy >= 0.0 && fx < self.grid_nx as f64 && fy < self.grid_ny as f64) {
            return None;
        }
        let (x, y) = (fx as usize, fy as usize);
        let cell = self.grid_frame.cell;
        let within = [(fx - x as f64) * cell[0], (fy - y as f64) * cell[1]];
        Some((y * self.grid_nx + x, within))
    }

    /// Longitudes where the boundary crosses the parallel at `lat` (unsorted), for scanline fills.
    pub fn crossings(&self, lat: f64, out: &mut Vec<f64>) {
        out.clear();
        let b = &self.bounds;
        if lat < b.min_lat || lat > b.max_lat {
            return;
        }
        out.extend(self.slab_crossings(lat));
    }

    /// The edges of the slab holding `lat`, which must be within the bounds.
    fn slab_edges(&self, lat: f64) -> &[u32] {
        let slab_count = self.slabs.offsets.len() - 1;
        let slab = (((lat - self.slab_lat0) * self.slab_inv_height) as usize).min(slab_count - 1);
        self.slabs.get(slab)
    }

    /// Crossings of the parallel at `lat` by the edges of its slab (the same arithmetic as
    /// [`Self::contains`]); `lat` must be within the bounds.
    fn slab_crossings(&self, lat: f64) -> impl Iterator<Item = f64> + '_ {
        self.slab_edges(lat).iter().filter_map(move |&e| {
            let e = e as usize;
            let (a, b_lat) = (self.vertices[e], self.vertices[e + 1][1]);
            ((a[1] > lat) != (b_lat > lat)).then(|| a[0] + (lat - a[1]) * self.slopes[e])
        })
    }

    /// Distance in metres from the point to the nearest boundary point, if it is at most `limit_m`
    /// (which must not exceed the reach the part was prepared with). `lon` must come from [`Self::local_lon`].
    #[must_use]
    pub fn boundary_distance_within(&self, lat: f64, lon: f64, limit_m: f64) -> Option<f64> {
        self.boundary_distance_within_at(lat, lon, limit_m, &LocalMetric::at_latitude(lat))
    }

    /// As [`Self::boundary_distance_within`], with the metric at the point's latitude already computed
    /// (once per point, not once per part it is tested against).
    #[must_use]
    pub fn boundary_distance_within_at(
        &self,
        lat: f64,
        lon: f64,
        limit_m: f64,
        metric: &LocalMetric,
    ) -> Option<f64> {
        debug_assert!(limit_m <= self.reach_m + 1e-9);
        if let Some(circle) = &self.circle {
            // Distance to the boundary from outside; from inside, `contains` has answered already, but
            // the contract of this method is the boundary distance either way.
            return match circle.classify(lat, lon, limit_m) {
                (false, found) => found,
                (true, _) => {
                    let (d, _) = circle.boundary_distance(lat, lon);
                    (d <= limit_m).then_some(d)
                }
            };
        }
        let Search::Nearest(nearest) = self.nearest_edge_within(lat, lon, limit_m, metric) else {
            return None;
        };
        let d = self.exact_distance_m(lat, lon, &nearest);
        (d <= limit_m).then_some(d)
    }

    /// 0 when the point is inside, its distance to the boundary (metres) when it is outside within
    /// `limit_m`, `None` otherwise: the answer of [`Self::contains`] and then
    /// [`Self::boundary_distance_within_at`], from one search when an edge lies within the limit.
    ///
    /// The nearest boundary point `p` found, no boundary comes nearer to the point `q` than `p`, so the
    /// segment `q`–`p` crosses none, and `q` is on the side of `p`'s edge it lies on; with the interior
    /// on every edge's left (see [`Self::new`]) that side answers point-in-polygon. When `p` is a vertex,
    /// the direction from it to `q` falls in the interior sector between its two edges or not (see
    /// [`Self::inside_at_vertex`]). Where neither applies (no edge within the limit, a ring's first
    /// vertex, `q` on an edge's line) the crossing count of [`Self::contains`] decides.
    #[must_use]
    pub fn locate_within_at(
        &self,
        lat: f64,
        lon: f64,
        limit_m: f64,
        metric: &LocalMetric,
    ) -> Option<f64> {
        debug_assert!(limit_m <= self.reach_m + 1e-9);
        if self.circle.is_some() {
            return if self.contains(lat, lon) {
                Some(0.0)
            } else {
                self.boundary_distance_within_at(lat, lon, limit_m, metric)
            };
        }
        let nearest = match self.nearest_edge_within(lat, lon, limit_m, metric) {
            Search::Nearest(nearest) => nearest,
            Search::Clear {
                inside: Some(inside),
            } => return inside.then_some(0.0),
            Search::Clear { inside: None } => return self.contains(lat, lon).then_some(0.0),
        };
        let on_edge = nearest.t > 0.0 && nearest.t < 1.0;
        let inside = if !on_edge {
            self.inside_at_vertex(lat, lon, metric, &nearest)
        } else if nearest.side != 0.0 {
            Some(nearest.side > 0.0)
        } else {
            None
        }
        .unwrap_or_else(|| self.contains(lat, lon));
        if inside {
            return Some(0.0);
        }
        let d = self.exact_distance_m(lat, lon, &nearest);
        (d <= limit_m).then_some(d)
    }

    /// Whether the point, whose nearest boundary point is a vertex `v`, is inside: the direction from `v`
    /// to the point lies in the interior sector between `v`'s incoming and outgoing edges: left of both
    /// where the ring turns left at `v`, left of either where it turns right (interior on the left of
    /// every edge). Exact as long as no other edge passes through `v`, which validation guarantees (it
    /// refuses touching and crossing rings). `None` when undecided: `v` starts its ring (the edge into it
    /// is elsewhere in the arrays), the edges are collinear, or the point is on either edge's line.
    fn inside_at_vertex(
        &self,
        lat: f64,
        lon: f64,
        metric: &LocalMetric,
        nearest: &NearestEdge,
    ) -> Option<bool> {
        let v = if nearest.t == 0.0 {
            nearest.edge
        } else {
            nearest.edge + 1
        };
        // `v - 1 .. v + 1` must all be in `v`'s ring: `v` neither starts a ring nor closes one.
        if v == 0
            || self.ring_starts.binary_search(&v).is_ok()
            || self.ring_starts.binary_search(&(v + 1)).is_ok()
        {
            return None;
        }
        let (kx, ky) = (metric.m_per_deg_lon, metric.m_per_deg_lat);
        let local = |p: [f64; 2]| ((p[0] - lon) * kx, (p[1] - lat) * ky);
        let (u, v, w) = (
            local(self.vertices[v as usize - 1]),
            local(self.vertices[v as usize]),
            local(self.vertices[v as usize + 1]),
        );
        // Cross products with the point at the origin: (b - a) × (0 - a).
        let left_of = |a: (f64, f64), b: (f64, f64)| (b.1 - a.1) * a.0 - (b.0 - a.0) * a.1;
        let (into, out_of) = (left_of(u, v), left_of(v, w));
        let turn = (v.0 - u.0) * (w.1 - v.1) - (v.1 - u.1) * (w.0 - v.0);
        if into == 0.0 || out_of == 0.0 || turn == 0.0 {
            return None;
        }
        Some(if turn > 0.0 {
            into > 0.0 && out_of > 0.0
        } else {
            into > 0.0 || out_of > 0.0
        })
    }

    /// Ellipsoidal distance from the point to the nearest boundary point found.
    fn exact_distance_m(&self, lat: f64, lon: f64, nearest: &NearestEdge) -> f64 {
        let (a, c) = self.segment(nearest.edge);
        let t = nearest.t;
        let q = [a[0] + t * (c[0] - a[0]), a[1] + t * (c[1] - a[1])];
        distance_m(lat, lon, q[1], q[0])
    }

    /// The nearest edge within about `limit_m` of the point (in the point's local metric), if any.
    fn nearest_edge_within(
        &self,
        lat: f64,
        lon: f64,
        limit_m: f64,
        metric: &LocalMetric,
    ) -> Search {
        let Some((bucket, within)) = self.grid_cell(lat, lon) else {
            return Search::Clear { inside: None };
        };
        let frame = &self.grid_frame;
        let offset = [
            within[0] - 0.5 * frame.cell[0],
            within[1] - 0.5 * frame.cell[1],
        ];
        let (kx, ky) = (metric.m_per_deg_lon, metric.m_per_deg_lat);
        // Chains come nearest-to-the-cell-centre first with a lower bound on that distance; the point is
        // `from_centre` metres from the centre, so once a chain's bound minus that reaches the best
        // distance found, neither it nor any later chain can be nearer (triangle inequality).
        let from_centre = ((offset[0] * kx).powi(2) + (offset[1] * ky).powi(2)).sqrt();
        // Nothing beyond the limit is wanted: start from it, so chains whose box lies beyond are skipped
        // without measuring an edge, and each edge found nearer tightens the bound for the rest.
        let approx_limit = limit_m * APPROX_SLACK + 1.0;
        let mut best = (approx_limit * approx_limit, u32::MAX, 0.0f64);
        let mut best_m = approx_limit;
        let mut side = 0.0;
        // The point in its cell's frame, and metres per frame unit.
        let (x, y) = (frame.margin[0] + within[0], frame.margin[1] + within[1]);
        // In `f32`: the box test is most of a search's work. The point's rounding (under 0.004 of a
        // unit) is inside the boxes' slack, and the metres per unit are shrunk by more than the
        // products' rounding, so the test's distance stays below the true one.
        let (fx, fy) = ((x * frame.scale[0]) as f32, (y * frame.scale[1]) as f32);
        let (unit_x, unit_y) = (
            (kx / frame.scale[0] * F32_SHRINK) as f32,
            (ky / frame.scale[1] * F32_SHRINK) as f32,
        );
        let ((first, centre_inside), (end, _)) =
            (self.grid_offset(bucket), self.grid_offset(bucket + 1));
        for entry in &self.grid_entries[first..end] {
            if f64::from(entry.key) - from_centre >= best_m {
                break;
            }
            let [min_x, min_y, max_x, max_y] = entry.frame_box.map(f32::from);
            let gx = (min_x - fx).max(fx - max_x).max(0.0) * unit_x;
            let gy = (min_y - fy).max(fy - max_y).max(0.0) * unit_y;
            if f64::from(gx * gx + gy * gy) >= best.0 {
                continue;
            }
            let before = best.0;
            // A chain's edges are consecutive edges of one ring, so they start at consecutive vertices.
            let first = entry.first_vertex();
            for e in first..first + entry.len() {
                let projection = self.project(e, [lon, lat], [kx, ky]);
                if projection.distance2 < best.0 {
                    best = (projection.distance2, e, projection.t);
                    side = projection.side;
                }
            }
            if best.0 < before {
                best_m = best.0.sqrt();
            }
        }
        let (_, edge, t) = best;
        if edge != u32::MAX {
            return Search::Nearest(NearestEdge { edge, t, side });
        }
        // No edge is within `approx_limit` of the point (in its metric, in which edges and the segment
        // to the cell's centre are straight), so none crosses that segment when it is shorter: the point
        // is on the centre's side of the boundary. In a cell without entries no boundary comes near any
        // of its points, so the whole cell is on one side.
        let centre_on_same_side = first == end || from_centre < CENTRE_REACH_SHARE * approx_limit;
        Search::Clear {
            inside: centre_on_same_side.then_some(centre_inside),
        }
    }
}

/// `bounds` as `f32`, each side rounded outwards, so that a point outside them is outside `bounds`.
fn outward_f32(bounds: Bounds) -> [f32; 4] {
    // `as` rounds to nearest; one step further out wherever that rounded inwards (`f32::next_down` is
    // newer than the supported Rust version).
    fn step_down(r: f32) -> f32 {
        if r > 0.0 {
            f32::from_bits(r.to_bits() - 1)
        } else if r == 0.0 {
            -f32::from_bits(1)
        } else {
            f32::from_bits(r.to_bits() + 1)
        }
    }
    let down = |v: f64| {
        let r = v as f32;
        if f64::from(r) > v {
            step_down(r)
        } else {
            r
        }
    };
    let up = |v: f64| -down(-v);
    [
        down(bounds.min_lon),
        down(bounds.min_lat),
        up(bounds.max_lon),
        up(bounds.max_lat),
    ]
}

/// One chain in one distance-grid cell, in 16 bytes (four to a cache line): a lower bound (metres) on its
/// distance from the cell's centre (entries of a cell ascend by it, so a search stops at the first that
/// cannot beat what it has found), its box in the cell's [`BoxFrame`] (rounded outwards), and its edges:
/// those starting at vertices `first_vertex()..first_vertex() + len()`.
#[derive(Debug, Clone, Copy)]
struct GridEntry {
    key: f32,
    /// min x, min y, max x, max y in the cell's frame.
    frame_box: [u16; 4],
    /// The first vertex shifted left by [`CHAIN_LEN_BITS`], with `len - 1` in the low bits.
    chain: u32,
}

/// Applied to the metres per frame unit of a search's `f32` box test (see [`PreparedPart::nearest_edge_within`]).
const F32_SHRINK: f64 = 1.0 - 1e-6;

/// Bits of [`GridEntry::chain`] that hold a chain's edge count less one.
const CHAIN_LEN_BITS: u32 = 4;
const _: () = assert!(CHAIN_EDGES <= 1 << CHAIN_LEN_BITS);

/// Vertices a part may have: its grid entries address them with the bits [`CHAIN_LEN_BITS`] leave.
pub const MAX_PART_VERTICES: usize = 1 << (32 - CHAIN_LEN_BITS);

impl GridEntry {
    fn first_vertex(&self) -> u32 {
        self.chain >> CHAIN_LEN_BITS
    }

    fn len(&self) -> u32 {
        (self.chain & ((1 << CHAIN_LEN_BITS) - 1)) + 1
    }
}

/// A grid cell's frame for its entries' boxes: the cell grown by the search reach on every side, spanned
/// by 0..=65535 in each axis. A chain in a cell lies at least partly inside that frame (it is within
/// reach of the cell), and clamping the rest of its box to the frame changes no distance from a point in
/// the cell: on each axis the clamped side is beyond the point either way.
#[derive(Debug, Clone, Copy, Default)]
struct BoxFrame {
    /// The cell's size in degrees (lon, lat).
    cell: [f64; 2],
    /// Frame units per degree (lon, lat).
    scale: [f64; 2],
    /// How far the frame reaches beyond its cell, in degrees (lon, lat).
    margin: [f64; 2],
}

impl BoxFrame {
    const UNITS: f64 = 65535.0;
    /// Allowance for rounding in the conversions, in frame units: boxes grow by it, so no distance
    /// computed from them exceeds the true one.
    const SLACK: f64 = 0.02;

    fn new(cell: [f64; 2], margin: [f64; 2]) -> Self {
        Self {
            cell,
            scale: [
                Self::UNITS / (cell[0] + 2.0 * margin[0]),
                Self::UNITS / (cell[1] + 2.0 * margin[1]),
            ],
            margin,
        }
    }

    /// `value` (degrees on `axis`) in the frame of the cell whose low edge is `cell_low`.
    fn units(&self, axis: usize, cell_low: f64, value: f64) -> f64 {
        (value - (cell_low - self.margin[axis])) * self.scale[axis]
    }

    /// The box `[min, max]` (degrees on `axis`) in the frame, rounded outwards and clamped to it.
    fn quantize(&self, axis: usize, cell_low: f64, min: f64, max: f64) -> (u16, u16) {
        let low = (self.units(axis, cell_low, min) - Self::SLACK).floor();
        let high = (self.units(axis, cell_low, max) + Self::SLACK).ceil();
        (
            low.clamp(0.0, Self::UNITS) as u16,
            high.clamp(0.0, Self::UNITS) as u16,
        )
    }
}

/// Where the nearest point of an edge lies: `t` along it, `distance2` (squared metres) from the query
/// point, and `side` positive when the query point lies on the edge's left.
struct Projection {
    t: f64,
    distance2: f64,
    side: f64,
}

/// What a nearest-edge search found.
enum Search {
    Nearest(NearestEdge),
    /// No edge within the limit; `inside` is the point-in-polygon answer when the search could tell it.
    Clear {
        inside: Option<bool>,
    },
}

/// The nearest edge a search found: the nearest point is at `t` along it, and `side` is positive when
/// the query point lies on the edge's left.
struct NearestEdge {
    edge: u32,
    t: f64,
    side: f64,
}

/// Twice the signed area of a closed ring (positive when counter-clockwise in lon/lat).
fn ring_signed_area2(ring: &[[f64; 2]]) -> f64 {
    // Relative to the first vertex, so that a small ring far from (0, 0) keeps its precision.
    let Some(&[x0, y0]) = ring.first() else {
        return 0.0;
    };
    ring.windows(2)
        .map(|w| (w[0][0] - x0) * (w[1][1] - y0) - (w[1][0] - x0) * (w[0][1] - y0))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boxes_round_outwards_and_clamp_to_the_frame() {
        let frame = BoxFrame::new([0.01, 0.02], [0.005, 0.004]);
        // A box inside the frame of the cell whose low corner is (-122.33, 37.01): the stored box holds it.
        for (axis, low, min, max) in [
            (0, -122.33, -122.332_1, -122.321_7),
            (1, 37.01, 37.006_5, 37.030_1),
        ] {
            let (q_min, q_max) = frame.quantize(axis, low, min, max);
            let back = |q: u16| f64::from(q) / frame.scale[axis] + low - frame.margin[axis];
            assert!(back(q_min) <= min && back(q_max) >= max, "axis {axis}");
            // Within a unit and the slack of the true box.
            assert!(min - back(q_min) < 1.01 / frame.scale[axis], "axis {axis}");
            assert!(back(q_max) - max < 1.01 / frame.scale[axis], "axis {axis}");
        }
        // Sides beyond the frame are clamped to its edges.
        assert_eq!(frame.quantize(0, 10.0, 9.0, 11.0), (0, 65535));
        assert_eq!(
            GridEntry {
                key: 0.0,
                frame_box: [0; 4],
                chain: 77 << CHAIN_LEN_BITS | 15
            }
            .first_vertex(),
            77
        );
    }

    #[test]
    fn coarse_bounds_never_cut_into_the_bounds() {
        let mut v = 0.123_456_789_012_345_f64;
        for _ in 0..10_000 {
            // A spread of values with every kind of f32 rounding, both signs.
            v = (v * 7.919 + 0.317).fract();
            let (lon, lat) = (v * 360.0 - 180.0, v * 170.0 - 85.0);
            let bounds = Bounds {
                min_lon: lon,
                min_lat: lat,
                max_lon: lon,
                max_lat: lat,
            };
            let [west, south, east, north] = outward_f32(bounds).map(f64::from);
            assert!(west <= lon && east >= lon, "{lon}: {west}..{east}");
            assert!(south <= lat && north >= lat, "{lat}: {south}..{north}");
            // Outwards by at most one f32 step.
            assert!(east - west <= 2.0 * f64::from(f32::EPSILON) * lon.abs().max(1.0));
        }
    }

    fn square_with_hole() -> Polygon {
        Polygon {
            rings: vec![
                vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]],
                vec![[0.4, 0.4], [0.6, 0.4], [0.6, 0.6], [0.4, 0.6], [0.4, 0.4]],
            ],
        }
    }

    #[test]
    fn holes_are_outside() {
        let part = PreparedPart::new(0, &square_with_hole(), 1000.0);
        assert!(part.contains(0.2, 0.2));
        assert!(!part.contains(0.5, 0.5));
        assert!(!part.contains(1.5, 0.5));
    }

    #[test]
    fn distance_to_the_hole_edge_is_measured_from_inside_the_hole() {
        let part = PreparedPart::new(0, &square_with_hole(), 2000.0);
        // 0.005° of latitude north of the hole's southern edge at the equator: ~553 m.
        let d = part.boundary_distance_within(0.405, 0.5, 2000.0).unwrap();
        assert!((d - 552.9).abs() < 1.0, "{d}");
        assert_eq!(part.boundary_distance_within(0.5, 0.5, 500.0), None);
    }

    #[test]
    fn far_points_are_not_within_reach() {
        let part = PreparedPart::new(0, &square_with_hole(), 1000.0);
        assert_eq!(part.boundary_distance_within(3.0, 3.0, 1000.0), None);
        let d = part.boundary_distance_within(0.5, 1.005, 1000.0).unwrap();
        assert!((d - 556.6).abs() < 1.0, "{d}");
    }

    #[test]
    fn antimeridian_shift_brings_the_point_next_to_the_part() {
        let east = Polygon {
            rings: vec![vec![
                [179.0, 51.0],
                [180.0, 51.0],
                [180.0, 52.0],
                [179.0, 52.0],
                [179.0, 51.0],
            ]],
        };
        let part = PreparedPart::new(0, &east, 1000.0);
        let lon = part.local_lon(-179.995);
        assert!((lon - 180.005).abs() < 1e-9);
        let d = part.boundary_distance_within(51.5, lon, 1000.0).unwrap();
        assert!((d - 348.0).abs() < 2.0, "{d}");
    }

    /// A comb-like boundary (the benchmark's 10k-vertex polygon: vertices jittered radially by up to a kilometre, about 10 m apart) keeps many
    /// chains within reach of every cell: the grid is laid out again finer, cells are pruned, and the
    /// search still finds exactly the nearest edge a scan of every edge finds.
    #[test]
    fn dense_boundaries_get_a_finer_pruned_grid_and_the_same_nearest_edge() {
        use crate::geofence::sample::{wobbly_polygon, SampleRng};
        let polygon = wobbly_polygon(-6.2, 106.8, 20_000.0, 10_000, 3);
        let part = PreparedPart::new(0, &polygon, 1000.0);
        let (dlat, dlon) = degrees_spanned(1000.0 * APPROX_SLACK + 1.0, -6.4, -6.0);
        // The first layout never goes below a share of the tolerance box; only the finer one does.
        assert!(
            1.0 / part.grid_inv_w < CELL_OF_REACH * dlon,
            "cells of {} degrees",
            1.0 / part.grid_inv_w
        );
        assert!(1.0 / part.grid_inv_h < CELL_OF_REACH * dlat);
        let mut rng = SampleRng::new(11);
        let ring = &polygon.rings[0];
        let mut compared = 0;
        for _ in 0..2_000 {
            let a = ring[rng.below(ring.len() - 1)];
            let (lat, lon) = (
                a[1] + rng.range(-0.012, 0.012),
                a[0] + rng.range(-0.012, 0.012),
            );
            let metric = LocalMetric::at_latitude(lat);
            let (kx, ky) = (metric.m_per_deg_lon, metric.m_per_deg_lat);
            let brute = (0..part.vertices.len() as u32 - 1)
                .map(|e| part.project(e, [lon, lat], [kx, ky]).distance2.sqrt())
                .fold(f64::INFINITY, f64::min);
            let found = match part.nearest_edge_within(lat, lon, 1000.0, &metric) {
                Search::Nearest(n) => {
                    let (a, c) = part.segment(n.edge);
                    let q = [a[0] + n.t * (c[0] - a[0]), a[1] + n.t * (c[1] - a[1])];
                    Some(((q[0] - lon) * kx).hypot((q[1] - lat) * ky))
                }
                Search::Clear { .. } => None,
            };
            if brute <= 1000.0 {
                let found = found.expect("an edge within reach");
                assert!(
                    (found - brute).abs() <= 1e-9 * brute.max(1.0),
                    "{found} vs {brute}"
                );
                compared += 1;
            }
        }
        assert!(compared > 1_000, "{compared}");
    }

    /// A search that finds no edge near the point answers point-in-polygon from its cell's centre; that
    /// answer is the crossing count's wherever it is given, holes included, and it is given for most
    /// such points near a boundary as dense as a real one (else the flags would be dead weight).
    #[test]
    fn a_clear_search_answers_inside_as_the_crossing_count_does() {
        use crate::geofence::sample::{wobbly_polygon, SampleRng};
        let mut polygon = wobbly_polygon(-6.2, 106.8, 20_000.0, 2_000, 3);
        let (lat, lon) = (-6.2, 106.8);
        polygon.rings.push(vec![
            [lon - 0.02, lat - 0.02],
            [lon - 0.02, lat + 0.02],
            [lon + 0.02, lat + 0.02],
            [lon + 0.02, lat - 0.02],
            [lon - 0.02, lat - 0.02],
        ]);
        let part = PreparedPart::new(0, &polygon, 1000.0);
        let b = part.bounds;
        let mut rng = SampleRng::new(5);
        let (mut answered, mut inside_answers, mut clear) = (0, 0, 0);
        for _ in 0..20_000 {
            let lat = rng.range(b.min_lat - 0.05, b.max_lat + 0.05);
            let lon = rng.range(b.min_lon - 0.05, b.max_lon + 0.05);
            let metric = LocalMetric::at_latitude(lat);
            if let Search::Clear { inside } = part.nearest_edge_within(lat, lon, 1000.0, &metric) {
                clear += 1;
                if let Some(inside) = inside {
                    assert_eq!(inside, part.contains(lat, lon), "at {lat}, {lon}");
                    answered += 1;
                    inside_answers += usize::from(inside);
                }
            }
        }
        assert!(answered * 2 > clear, "{answered} of {clear}");
        assert!(inside_answers > 1_000, "{inside_answers}");
    }
}

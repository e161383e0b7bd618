//! The planar cover: a global lon/lat raster of 1° tiles, each split into blocks of k×k cells (k = 8 at
//! the default 64 cells per degree). Every cell knows the fences it lies wholly inside and the parts whose
//! boundary band (the boundary grown by the tolerance) meets it. A point finds its cell with two
//! multiplications and at most three array reads; only points in band cells need geometry.
//!
//! Three levels so that memory and build time follow the boundary, not the area: a tile whose blocks all
//! say the same (deep inside one country, open sea) is one number; a block whose cells all say the same is
//! one number; only blocks the band or an edge passes through hold k×k cells. Building never enumerates
//! the cells of uniform blocks: each part reports its band cells, the blocks it covers wholly, and the
//! cells of the blocks it covers in part (measured on Natural Earth's countries at 5 km: the previous
//! cell-by-cell build made 65 M cell records, 12.3 s and 2.2 GB).
//!
//! This is the same idea as the H3 cover ([`super::cover`]), addressed without trigonometry: h3o's
//! `LatLng::to_cell` measured 550 ns per point on the reference machine, more than the whole per-point budget
//! at 3 M points/s, while a raster lookup is a few nanoseconds plus a cache miss.

use super::metric::degrees_spanned;
use super::part::PreparedPart;
use super::prefetch::prefetch;

/// Tile and block values with this bit are dense (an index into the next level); otherwise the value is
/// the entry of every cell below (0: no fence near).
const DENSE_BIT: u32 = 1 << 31;

const TILES_X: usize = 360;
const TILES_Y: usize = 180;

/// Raster geometry: how many cells per degree along each axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RasterGrid {
    pub cells_per_degree: u32,
}

impl RasterGrid {
    fn n(self) -> i64 {
        i64::from(self.cells_per_degree)
    }

    fn width(self) -> i64 {
        TILES_X as i64 * self.n()
    }

    fn height(self) -> i64 {
        TILES_Y as i64 * self.n()
    }

    /// log2 of the block side in cells: 8 cells when the tile divides into them, else 4, 2 or 1.
    fn block_shift(self) -> u32 {
        [3, 2, 1, 0]
            .into_iter()
            .find(|&shift| self.n() % (1 << shift) == 0)
            .unwrap_or(0)
    }

    fn blocks_wide(self) -> i64 {
        self.width() >> self.block_shift()
    }

    /// Global block id of a cell's block, wrapping columns around the antimeridian.
    fn block_id(self, gx: i64, gy: i64) -> u64 {
        let shift = self.block_shift();
        ((gy >> shift) * self.blocks_wide() + (gx.rem_euclid(self.width()) >> shift)) as u64
    }

    /// Sort key of a cell: its block id, then its place in the block, so a block's cells are contiguous.
    fn cell_key(self, gx: i64, gy: i64) -> u64 {
        let shift = self.block_shift();
        let k = 1i64 << shift;
        let within = ((gy & (k - 1)) << shift) | (gx.rem_euclid(self.width()) & (k - 1));
        (self.block_id(gx, gy) << 6) | within as u64
    }

    /// Bits left for the status in a packed cell record (the cell key takes the rest of 64).
    fn status_bits(self) -> u32 {
        let blocks = (self.blocks_wide() * (self.height() >> self.block_shift())) as u64;
        let key_bits = 64 - blocks.leading_zeros() + 6;
        64 - key_bits
    }

    /// One cell's status packed into a `u64` that sorts by cell key: half the memory of a (key, status)
    /// pair, which matters at world scale (millions of band cells). The status is a part (on its band)
    /// or, with the top status bit, a fence (inside it).
    fn record(self, key: u64, inside: bool, id: u32) -> u64 {
        let bits = self.status_bits();
        debug_assert!(u64::from(id) < 1 << (bits - 1));
        (key << bits) | (u64::from(inside) << (bits - 1)) | u64::from(id)
    }

    /// (key, inside, id) of a packed record; `bits` is [`Self::status_bits`], computed once by the caller
    /// (this runs for every record of a build).
    fn unpack(record: u64, bits: u32) -> (u64, bool, u32) {
        let id_mask = (1u64 << (bits - 1)) - 1;
        (
            record >> bits,
            (record >> (bits - 1)) & 1 == 1,
            (record & id_mask) as u32,
        )
    }

    /// Most parts (or fences) a raster can name: the status bits of a record, less the inside flag.
    pub(crate) fn max_ids(self) -> u64 {
        1 << (self.status_bits() - 1)
    }

    fn x_of(self, lon: f64) -> f64 {
        (lon + 180.0) * self.n() as f64
    }

    fn y_of(self, lat: f64) -> f64 {
        (lat + 90.0) * self.n() as f64
    }
}

/// What one part contributes to the raster: packed cell records ([`RasterGrid::record`]) for its band
/// cells (the part) and for the inside cells of blocks it covers only in part (the fence, inside); and
/// block records (block id, inside?, id) for the blocks wholly inside it, off its band (the fence), and
/// for the blocks wholly in its band (the part): at large tolerances most of the band is whole blocks.
#[derive(Debug, Default)]
pub(crate) struct PartRaster {
    pub cells: Vec<u64>,
    pub blocks: Vec<(u64, bool, u32)>,
}

/// Rasterizes one part: band cells for `part_id`, inside cells and blocks for its fence.
pub(crate) fn rasterize_part(
    grid: RasterGrid,
    part: &PreparedPart,
    part_id: u32,
    tolerance_m: f64,
) -> PartRaster {
    let b = part.bounds;
    // The band also holds points on the boundary itself (and within the on-boundary epsilon).
    let reach_m = tolerance_m * 1.01 + 0.01 + part.cover_margin_m();
    let (dlat0, _) = degrees_spanned(reach_m, b.min_lat, b.max_lat);
    let (dlat, dlon) = degrees_spanned(reach_m, b.min_lat - dlat0, b.max_lat + dlat0);
    let n = grid.n() as f64;
    let (rx, ry) = (dlon * n + 0.25, dlat * n + 0.25);
    let x0 = (grid.x_of(b.min_lon) - rx).floor() as i64 - 1;
    let y0 = ((grid.y_of(b.min_lat) - ry).floor() as i64 - 1).max(0);
    let x1 = (grid.x_of(b.max_lon) + rx).floor() as i64 + 1;
    let y1 = ((grid.y_of(b.max_lat) + ry).floor() as i64 + 1).min(grid.height() - 1);
    let (w, h) = ((x1 - x0 + 1) as usize, (y1 - y0 + 1) as usize);
    let mut band = vec![false; w * h];

    // Each edge marks, row by row, the cells within (rx, ry) of it: a point in row gy within reach of the
    // edge is within reach of an edge point whose y lies in [gy - ry, gy + 1 + ry], and those edge points
    // span an x interval that, grown by rx, holds the point. Work follows the band's area, so a larger
    // tolerance costs in proportion, not in its square.
    for (a, c) in part.edge_segments() {
        let (ax, ay, cx, cy) = (
            grid.x_of(a[0]),
            grid.y_of(a[1]),
            grid.x_of(c[0]),
            grid.y_of(c[1]),
        );
        let row_lo = ((ay.min(cy) - ry).floor() as i64).max(y0);
        let row_hi = ((ay.max(cy) + ry).floor() as i64).min(y1);
        for gy in row_lo..=row_hi {
            let (t0, t1) = if cy == ay {
                (0.0, 1.0)
            } else {
                let ta = (gy as f64 - ry - ay) / (cy - ay);
                let tb = (gy as f64 + 1.0 + ry - ay) / (cy - ay);
                (ta.min(tb).max(0.0), ta.max(tb).min(1.0))
            };
            if t0 > t1 {
                continue;
            }
            let (xs, xe) = (ax + t0 * (cx - ax), ax + t1 * (cx - ax));
            let lx0 = ((xs.min(xe) - rx).floor() as i64).max(x0);
            let lx1 = ((xs.max(xe) + rx).floor() as i64).min(x1);
            let row = (gy - y0) as usize * w;
            band[row + (lx0 - x0) as usize..=row + (lx1 - x0) as usize].fill(true);
        }
    }

    let shift = grid.block_shift();
    let k = 1i64 << shift;
    let (bx0, by0) = (x0 >> shift, y0 >> shift);
    let bw = ((x1 >> shift) - bx0 + 1) as usize;
    let bh = ((y1 >> shift) - by0 + 1) as usize;
    // Inside cells (off the band) per local block; a block with all k×k is wholly inside.
    let mut counts = vec![0u16; bw * bh];
    let mut spans: Vec<(i64, i64, i64)> = Vec::new();
    let mut out = PartRaster::default();
    let mut crossings = Vec::new();
    // Band cells, by block: a block wholly in the band is one record.
    for by in by0..by0 + bh as i64 {
        for bx in bx0..bx0 + bw as i64 {
            let cells_of = |f: &mut dyn FnMut(i64, i64)| {
                for gy in (by << shift).max(y0)..=((by << shift) + k - 1).min(y1) {
                    for gx in (bx << shift).max(x0)..=((bx << shift) + k - 1).min(x1) {
                        if band[(gy - y0) as usize * w + (gx - x0) as usize] {
                            f(gx, gy);
                        }
                    }
                }
            };
            let mut on_band = 0;
            cells_of(&mut |_, _| on_band += 1);
            if on_band == k * k {
                out.blocks
                    .push((grid.block_id(bx << shift, by << shift), false, part_id));
            } else if on_band > 0 {
                cells_of(&mut |gx, gy| {
                    out.cells
                        .push(grid.record(grid.cell_key(gx, gy), false, part_id));
                });
            }
        }
    }
    for gy in y0..=y1 {
        let row = (gy - y0) as usize * w;
        // Cells off the band do not touch the boundary, so their centre decides: inside when an odd number of
        // crossings of the centre's parallel lie west of it.
        let lat = (gy as f64 + 0.5) / n - 90.0;
        part.crossings(lat, &mut crossings);
        crossings.sort_unstable_by(f64::total_cmp);
        let block_row = ((gy >> shift) - by0) as usize * bw;
        for pair in crossings.chunks_exact(2) {
            let first = ((grid.x_of(pair[0]) - 0.5).ceil() as i64).max(x0);
            let last = ((grid.x_of(pair[1]) - 0.5).ceil() as i64 - 1).min(x1);
            if first > last {
                continue;
            }
            spans.push((gy, first, last));
            for bx in (first >> shift)..=(last >> shift) {
                let (lo, hi) = ((bx << shift).max(first), ((bx << shift) + k - 1).min(last));
                let inside = band[row + (lo - x0) as usize..=row + (hi - x0) as usize]
                    .iter()
                    .filter(|&&on_band| !on_band)
                    .count();
                counts[block_row + (bx - bx0) as usize] += inside as u16;
            }
        }
    }
    let whole = (k * k) as u16;
    for (i, &count) in counts.iter().enumerate() {
        if count == whole {
            let (bx, by) = (bx0 + (i % bw) as i64, by0 + (i / bw) as i64);
            out.blocks
                .push((grid.block_id(bx << shift, by << shift), true, part.fence));
        }
    }
    for (gy, first, last) in spans {
        let row = (gy - y0) as usize * w;
        let block_row = ((gy >> shift) - by0) as usize * bw;
        for bx in (first >> shift)..=(last >> shift) {
            if counts[block_row + (bx - bx0) as usize] == whole {
                continue;
            }
            let (lo, hi) = ((bx << shift).max(first), ((bx << shift) + k - 1).min(last));
            for gx in lo..=hi {
                if !band[row + (gx - x0) as usize] {
                    out.cells
                        .push(grid.record(grid.cell_key(gx, gy), true, part.fence));
                }
            }
        }
    }
    out
}

/// A cell lookup taken one array at a time (tile, block, cell), so that a batch of points can have the
/// loads of many in flight at once instead of waiting out each point's chain of three misses in turn.
/// `value` is an entry once no dense bit is left in it (cells never carry one).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CellLookup {
    cx: u32,
    cy: u32,
    pub(crate) value: u32,
    /// `value` is a tile's (the next step reads a block), not a block's (the next reads a cell).
    in_tile: bool,
}

/// The built raster: tile → entry (uniform tile) or block array; block → entry (uniform block) or cell
/// array.
#[derive(Debug)]
pub(crate) struct Raster {
    inv_step: f64,
    n: usize,
    /// log2 of the block side.
    shift: u32,
    /// Blocks per tile side.
    m: usize,
    tiles: Vec<u32>,
    /// m×m values per dense tile.
    blocks: Vec<u32>,
    /// k×k entries per dense block.
    cells: Vec<u32>,
    /// Blocks that hold cells.
    dense_blocks: usize,
}

impl Raster {
    /// Builds from the parts' contributions. `intern` turns one cell's (inside fences, boundary parts),
    /// both sorted and deduplicated, into an entry id (0 for nothing).
    pub(crate) fn build(
        grid: RasterGrid,
        mut cells: Vec<u64>,
        mut blocks: Vec<(u64, bool, u32)>,
        mut intern: impl FnMut(&[u32], &[u32]) -> u32,
    ) -> Self {
        use rayon::slice::ParallelSliceMut as _;
        cells.par_sort_unstable();
        blocks.par_sort_unstable();
        let n = grid.cells_per_degree as usize;
        let shift = grid.block_shift();
        let k = 1usize << shift;
        let m = n >> shift;
        let blocks_wide = grid.blocks_wide() as u64;
        let status_bits = grid.status_bits();
        let mut raster = Self {
            inv_step: n as f64,
            n,
            shift,
            m,
            tiles: vec![0u32; TILES_X * TILES_Y],
            blocks: Vec::new(),
            cells: Vec::new(),
            dense_blocks: 0,
        };
        let mut per_cell: Vec<(Vec<u32>, Vec<u32>)> = vec![(Vec::new(), Vec::new()); k * k];
        let mut whole_inside: Vec<u32> = Vec::new();
        let mut whole_band: Vec<u32> = Vec::new();
        let mut block_entries: Vec<u32> = Vec::with_capacity(k * k);
        let (mut ci, mut bi) = (0, 0);
        loop {
            let next_cell_block = cells
                .get(ci)
                .map(|&c| RasterGrid::unpack(c, status_bits).0 >> 6);
            let next_block = blocks.get(bi).map(|b| b.0);
            let block = match (next_cell_block, next_block) {
                (None, None) => break,
                (Some(a), None) | (None, Some(a)) => a,
                (Some(a), Some(b)) => a.min(b),
            };
            whole_inside.clear();
            whole_band.clear();
            while let Some(&(_, inside, id)) = blocks.get(bi).filter(|b| b.0 == block) {
                match inside {
                    true => whole_inside.push(id),
                    false => whole_band.push(id),
                }
                bi += 1;
            }
            whole_inside.sort_unstable();
            whole_inside.dedup();
            whole_band.sort_unstable();
            whole_band.dedup();
            let value = if next_cell_block == Some(block) {
                for (inside, boundary) in &mut per_cell {
                    inside.clone_from(&whole_inside);
                    boundary.clone_from(&whole_band);
                }
                while let Some(&record) = cells.get(ci) {
                    let (key, is_inside, id) = RasterGrid::unpack(record, status_bits);
                    if key >> 6 != block {
                        break;
                    }
                    let (inside, boundary) = &mut per_cell[(key & 63) as usize];
                    if is_inside {
                        inside.push(id);
                    } else {
                        boundary.push(id);
                    }
                    ci += 1;
                }
                block_entries.clear();
                for (inside, boundary) in &mut per_cell {
                    inside.sort_unstable();
                    inside.dedup();
                    boundary.sort_unstable();
                    boundary.dedup();
                    block_entries.push(intern(inside, boundary));
                }
                if block_entries.iter().all(|&e| e == block_entries[0]) {
                    block_entries[0]
                } else {
                    let at = raster.cells.len() >> (2 * shift);
                    raster.cells.extend_from_slice(&block_entries);
                    raster.dense_blocks += 1;
                    DENSE_BIT | at as u32
                }
            } else {
                intern(&whole_inside, &whole_band)
            };
            if value == 0 {
                continue;
            }
            let (bx, by) = (
                (block % blocks_wide) as usize,
                (block / blocks_wide) as usize,
            );
            let tile = (by / m) * TILES_X + bx / m;
            if raster.tiles[tile] & DENSE_BIT == 0 {
                raster.tiles[tile] = DENSE_BIT | (raster.blocks.len() / (m * m)) as u32;
                raster.blocks.resize(raster.blocks.len() + m * m, 0);
            }
            let at = (raster.tiles[tile] & !DENSE_BIT) as usize * m * m;
            raster.blocks[at + (by % m) * m + bx % m] = value;
        }
        // A tile whose blocks all share one entry (typically deep inside one fence) needs no block array.
        let mut kept: Vec<u32> = Vec::new();
        for tile in &mut raster.tiles {
            if *tile & DENSE_BIT != 0 {
                let at = (*tile & !DENSE_BIT) as usize * m * m;
                let blocks = &raster.blocks[at..at + m * m];
                if blocks[0] & DENSE_BIT == 0 && blocks.iter().all(|&v| v == blocks[0]) {
                    *tile = blocks[0];
                } else {
                    *tile = DENSE_BIT | (kept.len() / (m * m)) as u32;
                    kept.extend_from_slice(blocks);
                }
            }
        }
        raster.blocks = kept;
        raster.blocks.shrink_to_fit();
        raster.cells.shrink_to_fit();
        raster
    }

    /// The entry of the cell holding (lat, lon); 0 when no fence is near.
    #[inline]
    pub(crate) fn entry_at(&self, lat: f64, lon: f64) -> u32 {
        let mut lookup = self.lookup_tile(lat, lon);
        self.descend(&mut lookup);
        self.descend(&mut lookup);
        lookup.value
    }

    /// The first step of a lookup: the point's tile. [`Self::descend`] twice finishes it.
    #[inline]
    pub(crate) fn lookup_tile(&self, lat: f64, lon: f64) -> CellLookup {
        let n = self.n;
        let gx = (((lon + 180.0) * self.inv_step) as usize).min(TILES_X * n - 1);
        let gy = (((lat + 90.0) * self.inv_step) as usize).min(TILES_Y * n - 1);
        let (tx, cx) = (gx / n, gx % n);
        let (ty, cy) = (gy / n, gy % n);
        CellLookup {
            cx: cx as u32,
            cy: cy as u32,
            value: self.tiles[ty * TILES_X + tx],
            in_tile: true,
        }
    }

    /// One level down, when the value found so far is a dense tile or block: one load.
    #[inline]
    pub(crate) fn descend(&self, lookup: &mut CellLookup) {
        if let Some((level, index)) = self.descent(lookup) {
            lookup.value = level[index];
            lookup.in_tile = false;
        }
    }

    /// Prefetches what [`Self::descend`] will read for `lookup` (see `match_batch`).
    #[inline]
    pub(crate) fn prefetch_descent(&self, lookup: &CellLookup) {
        if let Some((level, index)) = self.descent(lookup) {
            prefetch(level.as_ptr().wrapping_add(index));
        }
    }

    /// The array and position the next level of `lookup` is read from, if its value is not final.
    #[inline]
    fn descent(&self, lookup: &CellLookup) -> Option<(&[u32], usize)> {
        let value = lookup.value;
        if value & DENSE_BIT == 0 {
            return None;
        }
        let (cx, cy) = (lookup.cx as usize, lookup.cy as usize);
        let shift = self.shift;
        Some(if lookup.in_tile {
            (
                &self.blocks,
                (value & !DENSE_BIT) as usize * self.m * self.m
                    + (cy >> shift) * self.m
                    + (cx >> shift),
            )
        } else {
            let mask = (1 << shift) - 1;
            (
                &self.cells,
                (((value & !DENSE_BIT) as usize) << (2 * shift))
                    + ((cy & mask) << shift)
                    + (cx & mask),
            )
        })
    }

    pub(crate) fn dense_blocks(&self) -> usize {
        self.dense_blocks
    }

    /// Cells held in dense blocks.
    pub(crate) fn cell_count(&self) -> usize {
        self.cells.len()
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        (self.tiles.len() + self.blocks.len() + self.cells.len()) * 4
    }
}

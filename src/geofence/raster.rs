//! The planar cover: a global lon/lat raster of 1° tiles, each split into n×n cells. Every cell knows the
//! fences it lies wholly inside and the parts whose boundary band (the boundary grown by the tolerance) meets
//! it. A point finds its cell with two multiplications and at most two array reads; only points in band
//! cells need geometry.
//!
//! This is the same idea as the H3 cover ([`super::cover`]), addressed without trigonometry: h3o's
//! `LatLng::to_cell` measured 550 ns per point on the reference machine, more than the whole per-point budget
//! at 3 M points/s, while a raster lookup is a few nanoseconds plus a cache miss.

use super::metric::degrees_spanned;
use super::part::PreparedPart;

/// Marks a (cell, status) pair: statuses with this bit name a fence the cell is wholly inside; without it, a
/// part whose boundary band meets the cell.
pub(crate) const INSIDE_BIT: u32 = 1 << 31;

/// Tiles whose value has this bit are dense (index into `dense`); otherwise the value is the entry of every
/// cell of the tile (0: no fence near).
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

    /// Global cell id of a (column, row), wrapping columns around the antimeridian.
    pub fn cell_id(self, gx: i64, gy: i64) -> u64 {
        (gy * self.width() + gx.rem_euclid(self.width())) as u64
    }

    /// The (column, row) of a cell id.
    pub fn cell_xy(self, id: u64) -> (i64, i64) {
        let id = id as i64;
        (id % self.width(), id / self.width())
    }

    fn x_of(self, lon: f64) -> f64 {
        (lon + 180.0) * self.n() as f64
    }

    fn y_of(self, lat: f64) -> f64 {
        (lat + 90.0) * self.n() as f64
    }
}

/// Computes the (cell id, status) pairs of one part: band cells for `part_id`, inside cells for its fence.
pub(crate) fn rasterize_part(
    grid: RasterGrid,
    part: &PreparedPart,
    part_id: u32,
    tolerance_m: f64,
) -> Vec<(u64, u32)> {
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

    // Sweep each edge in steps of at most half a cell; every point within the tolerance of the edge is then
    // within (rx, ry) cells of a step, rx and ry including the quarter cell between steps.
    for (a, c) in part.edge_segments() {
        let (ax, ay, cx, cy) = (
            grid.x_of(a[0]),
            grid.y_of(a[1]),
            grid.x_of(c[0]),
            grid.y_of(c[1]),
        );
        let steps = ((cx - ax).abs().max((cy - ay).abs()) * 2.0).ceil().max(1.0) as usize;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let (sx, sy) = (ax + t * (cx - ax), ay + t * (cy - ay));
            let (lx0, lx1) = ((sx - rx).floor() as i64, (sx + rx).floor() as i64);
            let (ly0, ly1) = (
                ((sy - ry).floor() as i64).max(y0),
                ((sy + ry).floor() as i64).min(y1),
            );
            for gy in ly0..=ly1 {
                let row = (gy - y0) as usize * w;
                for gx in lx0..=lx1 {
                    band[row + (gx - x0) as usize] = true;
                }
            }
        }
    }

    let mut out = Vec::new();
    let mut crossings = Vec::new();
    for gy in y0..=y1 {
        let row = (gy - y0) as usize * w;
        for gx in x0..=x1 {
            if band[row + (gx - x0) as usize] {
                out.push((grid.cell_id(gx, gy), part_id));
            }
        }
        // Cells off the band do not touch the boundary, so their centre decides: inside when an odd number of
        // crossings of the centre's parallel lie west of it.
        let lat = (gy as f64 + 0.5) / n - 90.0;
        part.crossings(lat, &mut crossings);
        crossings.sort_unstable_by(f64::total_cmp);
        for pair in crossings.chunks_exact(2) {
            let first = ((grid.x_of(pair[0]) - 0.5).ceil() as i64).max(x0);
            let last = ((grid.x_of(pair[1]) - 0.5).ceil() as i64 - 1).min(x1);
            for gx in first..=last {
                if !band[row + (gx - x0) as usize] {
                    out.push((grid.cell_id(gx, gy), part.fence | INSIDE_BIT));
                }
            }
        }
    }
    out
}

/// The built raster: tile → entry (uniform tile) or dense cell array.
#[derive(Debug)]
pub(crate) struct Raster {
    inv_step: f64,
    n: usize,
    tiles: Vec<u32>,
    dense: Vec<Box<[u32]>>,
}

impl Raster {
    /// Builds from sorted (cell id, entry) pairs; cells absent are entry 0 (nothing near).
    pub(crate) fn from_cells(grid: RasterGrid, cells: impl Iterator<Item = (u64, u32)>) -> Self {
        let n = grid.cells_per_degree as usize;
        let mut tiles = vec![0u32; TILES_X * TILES_Y];
        let mut dense: Vec<Box<[u32]>> = Vec::new();
        for (id, entry) in cells {
            let (gx, gy) = grid.cell_xy(id);
            let (gx, gy) = (gx as usize, gy as usize);
            let tile = (gy / n) * TILES_X + gx / n;
            if tiles[tile] & DENSE_BIT == 0 {
                tiles[tile] = DENSE_BIT | dense.len() as u32;
                dense.push(vec![0u32; n * n].into_boxed_slice());
            }
            dense[(tiles[tile] & !DENSE_BIT) as usize][(gy % n) * n + gx % n] = entry;
        }
        // A tile whose cells all share one entry (typically deep inside one fence) needs no cell array.
        let mut kept: Vec<Box<[u32]>> = Vec::new();
        for tile in &mut tiles {
            if *tile & DENSE_BIT != 0 {
                let cells = std::mem::take(&mut dense[(*tile & !DENSE_BIT) as usize]);
                if cells.iter().all(|&e| e == cells[0]) {
                    *tile = cells[0];
                } else {
                    *tile = DENSE_BIT | kept.len() as u32;
                    kept.push(cells);
                }
            }
        }
        Self {
            inv_step: n as f64,
            n,
            tiles,
            dense: kept,
        }
    }

    /// The entry of the cell holding (lat, lon); 0 when no fence is near.
    #[inline]
    pub(crate) fn entry_at(&self, lat: f64, lon: f64) -> u32 {
        let n = self.n;
        let gx = (((lon + 180.0) * self.inv_step) as usize).min(TILES_X * n - 1);
        let gy = (((lat + 90.0) * self.inv_step) as usize).min(TILES_Y * n - 1);
        let tile = self.tiles[(gy / n) * TILES_X + gx / n];
        if tile & DENSE_BIT == 0 {
            tile
        } else {
            self.dense[(tile & !DENSE_BIT) as usize][(gy % n) * n + gx % n]
        }
    }

    pub(crate) fn dense_tiles(&self) -> usize {
        self.dense.len()
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.tiles.len() * 4 + self.dense.len() * self.n * self.n * 4
    }
}

//! H3 cover of one prepared part: which cells need exact work (they meet the boundary or its tolerance band)
//! and which lie wholly inside, as coarse as possible.
//!
//! Cells are defined by the H3 hierarchy as it is used at lookup time: a coarse cell stands for the fine cells
//! whose parent it is. A coarse cell none of whose descendants meets the band is on one side of the boundary
//! throughout, so its centroid decides for all of it.

use h3o::{CellIndex, LatLng, Resolution};
use rustc_hash::FxHashSet;

use super::metric::{degrees_spanned, distance_m, wrap_lon_delta};
use super::part::PreparedPart;

/// The cells of one part, by role.
#[derive(Debug, Default)]
pub(crate) struct PartCover {
    /// Cells (at the part's boundary resolution) where points need the exact test.
    pub boundary: Vec<CellIndex>,
    /// Cells (any resolution from the coarse one down) wholly inside the part.
    pub inside: Vec<CellIndex>,
}

/// Grid-disk radius beyond which a part's boundary cells are taken one resolution coarser: keeps the number
/// of boundary cells per edge sample bounded when the tolerance is large compared with the cells.
const MAX_DISK_RADIUS: u32 = 3;

fn cell_of(lat: f64, lon: f64, res: Resolution) -> Option<CellIndex> {
    LatLng::new(lat, wrap_lon_delta(lon))
        .ok()
        .map(|ll| ll.to_cell(res))
}

/// Hexagon edge length (metres) of the cell at a position: H3 cells vary by about 2x over the globe.
fn local_edge_m(lat: f64, lon: f64, res: Resolution) -> f64 {
    cell_of(lat, lon, res)
        .map(|c| (2.0 * c.area_m2() / (3.0 * 3f64.sqrt())).sqrt())
        .unwrap_or_else(|| res.edge_length_m())
}

/// Smallest and largest local edge length over the part's bounds (corners and centre).
fn edge_range(part: &PreparedPart, res: Resolution) -> (f64, f64) {
    let b = part.bounds;
    let probes = [
        (b.min_lat, b.min_lon),
        (b.min_lat, b.max_lon),
        (b.max_lat, b.min_lon),
        (b.max_lat, b.max_lon),
        (0.5 * (b.min_lat + b.max_lat), 0.5 * (b.min_lon + b.max_lon)),
    ];
    probes
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), &(lat, lon)| {
            let e = local_edge_m(lat, lon, res);
            (lo.min(e), hi.max(e))
        })
}

/// Grid-disk radius such that every cell within `reach_m` of any point of an edge sampled every `spacing_m`
/// is in the disk around some sample's cell. A k-disk of hexagons with edge e covers a circle of radius
/// 1.5·k·e around its centre; a sample may sit up to e from its cell's centre. Margins absorb the variation of
/// cell size between the probes.
fn disk_radius(reach_m: f64, spacing_m: f64, e_min: f64, e_max: f64) -> u32 {
    let needed = reach_m + 0.5 * spacing_m + 1.15 * e_max;
    (needed / (1.5 * 0.85 * e_min)).ceil().max(1.0) as u32
}

/// Inserts every strict ancestor of `cell` down to (and including) resolution `coarse`. Stops at the first one
/// already present: its own ancestors were inserted with it.
pub(crate) fn insert_ancestors(
    cell: CellIndex,
    coarse: Resolution,
    set: &mut FxHashSet<CellIndex>,
) {
    let mut level = cell.resolution();
    while let Some(up) = level.pred().filter(|l| *l >= coarse) {
        if let Some(parent) = cell.parent(up) {
            if !set.insert(parent) {
                break;
            }
        }
        level = up;
    }
}

/// Computes the cover of `part` for matches within `tolerance_m` of it.
pub(crate) fn cover_part(
    part: &PreparedPart,
    tolerance_m: f64,
    fine: Resolution,
    coarse: Resolution,
) -> PartCover {
    // Exact work must also catch points on the boundary itself (and within the on-boundary epsilon).
    let reach_m = tolerance_m + 0.01 + part.cover_margin_m();
    let mut res = fine;
    let (mut e_min, mut e_max) = edge_range(part, res);
    while disk_radius(reach_m, 0.5 * e_min, e_min, e_max) > MAX_DISK_RADIUS && res > coarse {
        res = res.pred().unwrap_or(res);
        (e_min, e_max) = edge_range(part, res);
    }
    let spacing_m = 0.5 * e_min;
    let k = disk_radius(reach_m, spacing_m, e_min, e_max);

    let mut samples: FxHashSet<CellIndex> = FxHashSet::default();
    for (a, c) in part.edge_segments() {
        let steps = (distance_m(a[1], a[0], c[1], c[0]) / spacing_m)
            .ceil()
            .max(1.0) as usize;
        let mut last = None;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let (lon, lat) = (a[0] + t * (c[0] - a[0]), a[1] + t * (c[1] - a[1]));
            if let Some(cell) = cell_of(lat, lon, res) {
                if last != Some(cell) {
                    samples.insert(cell);
                    last = Some(cell);
                }
            }
        }
    }
    let mut boundary: FxHashSet<CellIndex> = FxHashSet::default();
    for cell in &samples {
        boundary.extend(cell.grid_disk::<Vec<_>>(k));
    }

    // Every coarser cell that has a boundary cell below it is "mixed" and gets split during classification.
    let mut mixed: FxHashSet<CellIndex> = FxHashSet::default();
    let mut roots: FxHashSet<CellIndex> = FxHashSet::default();
    for &cell in &boundary {
        insert_ancestors(cell, coarse, &mut mixed);
        roots.extend(cell.parent(coarse));
    }
    // Coarse cells wholly inside have no boundary cell below them: find them by sampling the bounds more
    // finely than the smallest coarse cell.
    let b = part.bounds;
    let coarse_edge = edge_range(part, coarse).0;
    let (step_lat, step_lon) = degrees_spanned(coarse_edge / 3.0, b.min_lat, b.max_lat);
    let mut lat = b.min_lat;
    while lat <= b.max_lat + step_lat {
        let mut lon = b.min_lon;
        while lon <= b.max_lon + step_lon {
            roots.extend(cell_of(lat.min(b.max_lat), lon.min(b.max_lon), coarse));
            lon += step_lon;
        }
        lat += step_lat;
    }

    let mut cover = PartCover {
        boundary: boundary.iter().copied().collect(),
        inside: Vec::new(),
    };
    let mut stack: Vec<CellIndex> = roots.into_iter().collect();
    while let Some(cell) = stack.pop() {
        let level = cell.resolution();
        if level == res {
            if boundary.contains(&cell) {
                continue;
            }
        } else if mixed.contains(&cell) {
            if let Some(next) = level.succ() {
                stack.extend(cell.children(next));
            }
            continue;
        }
        let centre = LatLng::from(cell);
        if part.contains(centre.lat(), part.local_lon(centre.lng())) {
            cover.inside.push(cell);
        }
    }
    cover
}

//! A spatial order for a batch of points: matched in that order, points near one another follow each
//! other and reuse the raster tiles, parts, grid cells and vertices the previous ones brought into cache.
//! Matching a large batch of points spread over a region misses the cache on almost every lookup;
//! in this order most of those lines are already there (see docs/performance.md, "Geofence engine").

use super::point::GeoPoint;

/// Bits per axis of the order's key: cells of 360° / 2¹⁶ by 180° / 2¹⁶ (about 600 m by 300 m), finer than
/// the raster's cells and about the size of a distance-grid cell at a 1 km tolerance.
const AXIS_BITS: u32 = 16;

/// The indices of `points` in the Z-order (Morton order) of their cells; points in one cell keep their
/// input order. Linear time: a two-pass radix sort of the 32-bit keys.
#[must_use]
pub fn spatial_order(points: &[GeoPoint]) -> Vec<u32> {
    let mut order = SpatialOrder::default();
    order.sort(points);
    order.sorted
}

/// [`spatial_order`] with its buffers kept from one batch to the next: a job that orders batch after
/// batch allocates (and faults in) its memory once.
#[derive(Debug, Default)]
pub struct SpatialOrder {
    keys: Vec<u32>,
    counts: Vec<u32>,
    half_sorted: Vec<u32>,
    sorted: Vec<u32>,
}

impl SpatialOrder {
    /// The indices of `points` in spatial order (see [`spatial_order`]).
    pub fn sort(&mut self, points: &[GeoPoint]) -> &[u32] {
        assert!(
            u32::try_from(points.len()).is_ok(),
            "a batch indexes its points with u32"
        );
        self.keys.clear();
        self.keys.extend(points.iter().map(|&p| z_order(p)));
        // Least significant half first, from the input order; each pass is stable, so the second keeps
        // the first's order within equal high halves.
        let keys = &self.keys;
        radix_pass(
            0..points.len() as u32,
            |i| keys[i as usize] & 0xFFFF,
            &mut self.counts,
            &mut self.half_sorted,
        );
        radix_pass(
            self.half_sorted.iter().copied(),
            |i| keys[i as usize] >> 16,
            &mut self.counts,
            &mut self.sorted,
        );
        &self.sorted
    }
}

/// `indices` stably sorted by a 16-bit digit into `sorted`.
fn radix_pass(
    indices: impl Iterator<Item = u32> + Clone,
    digit: impl Fn(u32) -> u32,
    starts: &mut Vec<u32>,
    sorted: &mut Vec<u32>,
) {
    starts.clear();
    starts.resize(1 << 16, 0);
    let mut len = 0;
    for i in indices.clone() {
        starts[digit(i) as usize] += 1;
        len += 1;
    }
    let mut next = 0;
    for count in starts.iter_mut() {
        let n = *count;
        *count = next;
        next += n;
    }
    sorted.clear();
    sorted.resize(len, 0);
    for i in indices {
        let slot = &mut starts[digit(i) as usize];
        sorted[*slot as usize] = i;
        *slot += 1;
    }
}

/// The Morton code of the point's cell: the bits of its column and row, interleaved (column first).
fn z_order(point: GeoPoint) -> u32 {
    let cells = f64::from(1u32 << AXIS_BITS);
    let last = (1u32 << AXIS_BITS) - 1;
    // In range by construction; `min` keeps 180° and 90° in the last cell.
    let column = (((point.lon() + 180.0) / 360.0 * cells) as u32).min(last);
    let row = (((point.lat() + 90.0) / 180.0 * cells) as u32).min(last);
    spread_bits(column) | spread_bits(row) << 1
}

/// The low 16 bits of `v` moved to the even positions (bit `i` to bit `2i`).
fn spread_bits(v: u32) -> u32 {
    let mut v = v & 0xFFFF;
    v = (v | v << 8) & 0x00FF_00FF;
    v = (v | v << 4) & 0x0F0F_0F0F;
    v = (v | v << 2) & 0x3333_3333;
    (v | v << 1) & 0x5555_5555
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geofence::sample::uniform_points;

    fn point(lat: f64, lon: f64) -> GeoPoint {
        GeoPoint::new(lat, lon).unwrap()
    }

    #[test]
    fn spread_bits_moves_bit_i_to_bit_2i() {
        assert_eq!(spread_bits(0b1011), 0b100_0101);
        assert_eq!(spread_bits(0xFFFF), 0x5555_5555);
    }

    #[test]
    fn z_order_covers_the_globe_column_bit_first() {
        assert_eq!(z_order(point(-90.0, -180.0)), 0);
        assert_eq!(z_order(point(90.0, 180.0)), u32::MAX);
        let step = 360.0 / f64::from(1u32 << AXIS_BITS);
        // One cell east sets bit 0; one cell north (half as many degrees) bit 1.
        assert_eq!(z_order(point(-90.0, -180.0 + 1.5 * step)), 1);
        assert_eq!(z_order(point(-90.0 + 0.75 * step, -180.0)), 2);
    }

    #[test]
    fn the_order_is_a_permutation_sorted_by_key_and_stable_within_a_cell() {
        let mut points = uniform_points((24.4, -125.0, 49.4, -66.9), 5_000, 3);
        // Ties: the same cell several times, far apart in the input.
        points.extend(std::iter::repeat_n(point(40.0, -100.0), 3));
        points.insert(17, point(40.0, -100.0));
        let order = spatial_order(&points);
        let mut seen = vec![false; points.len()];
        for &i in &order {
            assert!(!std::mem::replace(&mut seen[i as usize], true), "{i} twice");
        }
        assert!(seen.iter().all(|&s| s));
        for pair in order.windows(2) {
            let (a, b) = (pair[0] as usize, pair[1] as usize);
            let (ka, kb) = (z_order(points[a]), z_order(points[b]));
            assert!(
                ka < kb || (ka == kb && a < b),
                "{a} ({ka}) before {b} ({kb})"
            );
        }
    }

    #[test]
    fn an_empty_batch_has_an_empty_order() {
        assert!(spatial_order(&[]).is_empty());
    }

    #[test]
    fn reused_buffers_order_each_batch_afresh() {
        let first = uniform_points((24.4, -125.0, 49.4, -66.9), 3_000, 4);
        let second = uniform_points((-10.0, 100.0, 10.0, 120.0), 700, 5);
        let mut order = SpatialOrder::default();
        order.sort(&first);
        assert_eq!(order.sort(&second), spatial_order(&second).as_slice());
        assert_eq!(order.sort(&first), spatial_order(&first).as_slice());
    }
}

//! Geometric validity of rings and polygons in lon/lat.

use super::fence::{CoordPath, FenceProblem};
use super::metric::MAX_FENCE_LATITUDE;

/// Intersections reported per polygon at most: enough to locate the problem, bounded on pathological input.
const MAX_REPORTED_INTERSECTIONS: usize = 5;

/// Below this many square degrees an exterior ring is treated as enclosing nothing (about 1e-5 m²).
const ZERO_AREA_DEG2: f64 = 1e-15;

/// Checks one ring's positions and returns it without consecutive duplicate positions, still closed.
///
/// A ring with an edge longer than 180° of longitude crosses the antimeridian (RFC 7946 asks for such
/// rings to be split; real data often is not): its longitudes are continued past ±180° from its first
/// position, which keeps it one piece for the matcher, and a repair is reported. A ring whose
/// longitudes do not come back to where they started goes round the globe, i.e. encloses a pole.
pub(crate) fn check_ring(
    positions: &[[f64; 2]],
    at: CoordPath,
    problems: &mut Vec<FenceProblem>,
    repairs: &mut Vec<String>,
) -> Option<Vec<[f64; 2]>> {
    let before = problems.len();
    for (i, &[lon, lat]) in positions.iter().enumerate() {
        let at = CoordPath {
            position: Some(i),
            ..at
        };
        if !lon.is_finite() || !lat.is_finite() {
            problems.push(FenceProblem::CoordinateNotFinite { at, lon, lat });
        } else if !(-180.0..=180.0).contains(&lon) || !(-90.0..=90.0).contains(&lat) {
            problems.push(FenceProblem::CoordinateOutOfRange { at, lon, lat });
        } else if lat.abs() > MAX_FENCE_LATITUDE {
            problems.push(FenceProblem::BeyondSupportedLatitude {
                at,
                lat,
                max: MAX_FENCE_LATITUDE,
            });
        }
        if problems.len() - before >= MAX_REPORTED_INTERSECTIONS {
            return None;
        }
    }
    if problems.len() > before {
        return None;
    }
    if positions.len() < 4 {
        problems.push(FenceProblem::RingTooFewPositions {
            at,
            count: positions.len(),
        });
        return None;
    }
    let (first, last) = (positions[0], positions[positions.len() - 1]);
    if first != last {
        problems.push(FenceProblem::RingNotClosed { at, first, last });
        return None;
    }
    let mut ring: Vec<[f64; 2]> = Vec::with_capacity(positions.len());
    for &p in positions {
        if ring.last() != Some(&p) {
            ring.push(p);
        }
    }
    let Some(first_jump) = ring
        .windows(2)
        .position(|w| (w[1][0] - w[0][0]).abs() > 180.0)
    else {
        return Some(ring);
    };
    let mut unwrapped: Vec<[f64; 2]> = Vec::with_capacity(ring.len());
    let mut shift = 0.0;
    for (i, &[lon, lat]) in ring.iter().enumerate() {
        if i > 0 {
            let step = lon + shift - unwrapped[unwrapped.len() - 1][0];
            if step > 180.0 {
                shift -= 360.0;
            } else if step < -180.0 {
                shift += 360.0;
            }
        }
        let p = [lon + shift, lat];
        if unwrapped.last() != Some(&p) {
            unwrapped.push(p);
        }
    }
    if shift != 0.0 {
        problems.push(FenceProblem::EdgeSpansAntimeridian {
            at: CoordPath {
                position: Some(first_jump),
                ..at
            },
            span: (ring[first_jump + 1][0] - ring[first_jump][0]).abs(),
        });
        return None;
    }
    repairs.push(format!(
        "{at} crosses the antimeridian (edge {first_jump} spans {:.1}° of longitude): kept as one piece, \
         longitudes continued past ±180°",
        (ring[first_jump + 1][0] - ring[first_jump][0]).abs()
    ));
    Some(unwrapped)
}

/// Moves a hole by 360° of longitude when it was written on the other side of the antimeridian from its
/// exterior ring (each ring is unwrapped from its own first position).
pub(crate) fn align_to_shell(shell: &[[f64; 2]], hole: &mut [[f64; 2]]) {
    let centre = |ring: &[[f64; 2]]| {
        let (lo, hi) = ring
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                (lo.min(p[0]), hi.max(p[0]))
            });
        0.5 * (lo + hi)
    };
    let offset = centre(hole) - centre(shell);
    let shift = if offset > 180.0 {
        -360.0
    } else if offset < -180.0 {
        360.0
    } else {
        return;
    };
    for p in hole {
        p[0] += shift;
    }
}

/// A closed ring with fewer than three distinct positions or all of them on one line: collapsed to a line or
/// a point. Measured by the unsigned area of the triangle fan from the first vertex, so that a bow tie, whose
/// lobes cancel in the signed area, is not taken for collapsed (it is reported as self-intersecting instead).
pub(crate) fn is_degenerate(ring: &[[f64; 2]]) -> bool {
    if ring.len() < 4 {
        return true;
    }
    let fan: f64 = ring[1..]
        .windows(2)
        .map(|w| orient(ring[0], w[0], w[1]).abs())
        .sum();
    fan * 0.5 < ZERO_AREA_DEG2
}

/// Even-odd point in ring test in the lon/lat plane (edges are straight there, per RFC 7946).
pub(crate) fn point_in_ring(p: [f64; 2], ring: &[[f64; 2]]) -> bool {
    ring.windows(2)
        .filter_map(|w| crossing_lon(w[0], w[1], p[1]))
        .filter(|&x| p[0] < x)
        .count()
        % 2
        == 1
}

/// The longitude where edge a→b crosses the parallel at `lat`, if it does. Half-open in latitude, so a
/// vertex exactly on the parallel is counted once by the two edges that meet there.
#[inline]
pub(crate) fn crossing_lon(a: [f64; 2], b: [f64; 2], lat: f64) -> Option<f64> {
    ((a[1] > lat) != (b[1] > lat)).then(|| a[0] + (lat - a[1]) * (b[0] - a[0]) / (b[1] - a[1]))
}

/// Checks a polygon's rings against themselves and each other: self-intersections, crossing rings,
/// holes outside the exterior.
pub(crate) fn check_polygon_topology(
    polygon: usize,
    rings: &[Vec<[f64; 2]>],
    problems: &mut Vec<FenceProblem>,
) {
    let before = problems.len();
    for (ring_a, ring_b, [lon, lat]) in find_intersections(rings) {
        if ring_a == ring_b {
            problems.push(FenceProblem::SelfIntersection {
                at: CoordPath {
                    polygon,
                    ring: ring_a,
                    position: None,
                },
                lon,
                lat,
            });
        } else {
            problems.push(FenceProblem::RingsCross {
                polygon,
                ring_a,
                ring_b,
                lon,
                lat,
            });
        }
    }
    if problems.len() > before {
        return;
    }
    for (ring, hole) in rings.iter().enumerate().skip(1) {
        let probe = hole
            .iter()
            .copied()
            .find(|v| !rings[0].contains(v))
            .unwrap_or(hole[0]);
        if !point_in_ring(probe, &rings[0]) {
            problems.push(FenceProblem::HoleOutsideShell { polygon, ring });
        }
    }
}

#[derive(Clone, Copy)]
struct Edge {
    ring: usize,
    index: usize,
    ring_edges: usize,
    a: [f64; 2],
    b: [f64; 2],
    min_x: f64,
    max_x: f64,
}

impl Edge {
    fn adjacent(&self, other: &Edge) -> bool {
        if self.ring != other.ring {
            return false;
        }
        let (i, j) = (self.index.min(other.index), self.index.max(other.index));
        j - i == 1 || (i == 0 && j == self.ring_edges - 1)
    }
}

/// Sweep over edges sorted by their western end; pairs are tested only when their longitude ranges overlap.
/// Returns (ring, ring, point) for each intersection found, a few per polygon at most.
fn find_intersections(rings: &[Vec<[f64; 2]>]) -> Vec<(usize, usize, [f64; 2])> {
    let mut edges: Vec<Edge> = Vec::new();
    for (ring, r) in rings.iter().enumerate() {
        let ring_edges = r.len() - 1;
        for (index, w) in r.windows(2).enumerate() {
            edges.push(Edge {
                ring,
                index,
                ring_edges,
                a: w[0],
                b: w[1],
                min_x: w[0][0].min(w[1][0]),
                max_x: w[0][0].max(w[1][0]),
            });
        }
    }
    edges.sort_unstable_by(|x, y| x.min_x.total_cmp(&y.min_x));
    let mut found = Vec::new();
    for (k, e) in edges.iter().enumerate() {
        for f in &edges[k + 1..] {
            if f.min_x > e.max_x {
                break;
            }
            if e.a[1].max(e.b[1]) < f.a[1].min(f.b[1]) || f.a[1].max(f.b[1]) < e.a[1].min(e.b[1]) {
                continue;
            }
            let hit = if e.adjacent(f) {
                spike(e, f)
            } else if e.ring == f.ring {
                segment_contact(e.a, e.b, f.a, f.b)
            } else {
                proper_crossing(e.a, e.b, f.a, f.b)
            };
            if let Some(p) = hit {
                let key = (e.ring.min(f.ring), e.ring.max(f.ring), p);
                if found.contains(&key) {
                    continue;
                }
                found.push(key);
                if found.len() >= MAX_REPORTED_INTERSECTIONS {
                    return found;
                }
            }
        }
    }
    found
}

fn orient(a: [f64; 2], b: [f64; 2], c: [f64; 2]) -> f64 {
    (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
}

fn within_box(a: [f64; 2], b: [f64; 2], p: [f64; 2]) -> bool {
    p[0] >= a[0].min(b[0])
        && p[0] <= a[0].max(b[0])
        && p[1] >= a[1].min(b[1])
        && p[1] <= a[1].max(b[1])
}

fn proper_crossing(p1: [f64; 2], p2: [f64; 2], q1: [f64; 2], q2: [f64; 2]) -> Option<[f64; 2]> {
    let d1 = orient(q1, q2, p1);
    let d2 = orient(q1, q2, p2);
    let d3 = orient(p1, p2, q1);
    let d4 = orient(p1, p2, q2);
    if d1 * d2 < 0.0 && d3 * d4 < 0.0 {
        let t = d1 / (d1 - d2);
        return Some([p1[0] + t * (p2[0] - p1[0]), p1[1] + t * (p2[1] - p1[1])]);
    }
    None
}

/// Any contact between two segments: a crossing, a touch or a collinear overlap.
fn segment_contact(p1: [f64; 2], p2: [f64; 2], q1: [f64; 2], q2: [f64; 2]) -> Option<[f64; 2]> {
    if let Some(p) = proper_crossing(p1, p2, q1, q2) {
        return Some(p);
    }
    let on = |a, b, p| orient(a, b, p) == 0.0 && within_box(a, b, p);
    [(q1, q2, p1), (q1, q2, p2), (p1, p2, q1), (p1, p2, q2)]
        .into_iter()
        .find(|&(a, b, p)| on(a, b, p))
        .map(|(_, _, p)| p)
}

/// Two consecutive edges that fold back onto each other (a zero-width spike).
fn spike(e: &Edge, f: &Edge) -> Option<[f64; 2]> {
    let (shared, from, to) = if e.b == f.a {
        (e.b, e.a, f.b)
    } else if f.b == e.a {
        (e.a, f.a, e.b)
    } else {
        return None;
    };
    let d1 = [shared[0] - from[0], shared[1] - from[1]];
    let d2 = [to[0] - shared[0], to[1] - shared[1]];
    let collinear = orient(from, shared, to) == 0.0;
    (collinear && d1[0] * d2[0] + d1[1] * d2[1] < 0.0).then_some(shared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square() -> Vec<[f64; 2]> {
        vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]
    }

    #[test]
    fn simple_square_has_no_intersections() {
        assert!(find_intersections(&[square()]).is_empty());
    }

    #[test]
    fn bow_tie_intersects_itself_in_the_middle() {
        let bow = vec![[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]];
        let hits = find_intersections(&[bow]);
        assert_eq!(hits, vec![(0, 0, [0.5, 0.5])]);
    }

    #[test]
    fn ring_touching_itself_at_a_vertex_is_reported() {
        let figure8 = vec![
            [0.0, 0.0],
            [2.0, 0.0],
            [1.0, 1.0],
            [2.0, 2.0],
            [0.0, 2.0],
            [1.0, 1.0],
            [0.0, 0.0],
        ];
        assert!(!find_intersections(&[figure8]).is_empty());
    }

    #[test]
    fn spike_is_reported() {
        let spiky = vec![
            [0.0, 0.0],
            [2.0, 0.0],
            [3.0, 0.0],
            [2.0, 0.0],
            [2.0, 2.0],
            [0.0, 0.0],
        ];
        assert!(!find_intersections(&[spiky]).is_empty());
    }

    #[test]
    fn hole_crossing_shell_is_reported_as_rings_crossing() {
        let hole = vec![[0.5, 0.5], [1.5, 0.5], [1.5, 0.7], [0.5, 0.7], [0.5, 0.5]];
        let hits = find_intersections(&[square(), hole]);
        assert!(hits.iter().all(|h| (h.0, h.1) == (0, 1)) && !hits.is_empty());
    }

    #[test]
    fn degenerate_rings_are_detected() {
        assert!(is_degenerate(&[
            [0.0, 0.0],
            [1.0, 1.0],
            [2.0, 2.0],
            [0.0, 0.0]
        ]));
        assert!(!is_degenerate(&square()));
        let bow = vec![[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]];
        assert!(!is_degenerate(&bow));
    }
}

//! Fences that reach the poles: clipped to the supported latitudes (±[`MAX_FENCE_LATITUDE`]) before
//! validation, with a repair report, instead of refused.
//!
//! Why clip rather than accept: fence edges are straight in lon/lat (RFC 7946) and distances use a
//! local metric around each point. Both are fine up to 85° (the accuracy tests hold 0.13% there) and
//! both break down at a pole, where one point has every longitude and a "straight" edge along a
//! parallel is a circle round the pole. No promotion needs the 0.4% of the Earth beyond 85° (the
//! Antarctic plateau, the Arctic Ocean); Natural Earth's Antarctica is the case that occurs: its ring
//! runs round the pole (it goes once round the globe in longitude) and is closed along −89.999°.
//!
//! What happens: a ring that goes round the globe is closed through its pole (the region it bounds on
//! the pole's side), rings that lie wholly beyond the limit (the polar cap strips such files carry)
//! are dropped, and each polygon is clipped to the supported band, which can split it into several.
//! Points beyond ±85° never match such a fence. Holes that cross the limit are still refused.

use super::metric::MAX_FENCE_LATITUDE;

type Ring = Vec<[f64; 2]>;

/// Longitude step of the vertices put along the clip latitude: edges must stay under 180°.
const STEP_DEG: f64 = 10.0;

/// Clips polygons (rings as parsed, closed) that reach beyond ±85°; others pass unchanged. Rings with
/// non-finite, out-of-range or too few positions are left for validation to report.
pub(crate) fn clip_to_supported_latitudes(
    polygons: Vec<Vec<Ring>>,
    repairs: &mut Vec<String>,
) -> Vec<Vec<Ring>> {
    let mut out = Vec::with_capacity(polygons.len());
    for (p, rings) in polygons.into_iter().enumerate() {
        let rings: Vec<Ring> = rings
            .into_iter()
            .enumerate()
            .map(|(r, ring)| go_round_along_parallels(ring, p, r, repairs))
            .collect();
        let well_formed = rings.iter().all(|r| {
            r.len() >= 4
                && r.first() == r.last()
                && r.iter().all(|&[lon, lat]| {
                    lon.is_finite() && lat.is_finite() && lon.abs() <= 180.0 && lat.abs() <= 90.0
                })
        });
        let beyond = |r: &Ring| r.iter().any(|&[_, lat]| lat.abs() > MAX_FENCE_LATITUDE);
        let wholly_beyond = |r: &Ring| r.iter().all(|&[_, lat]| lat.abs() > MAX_FENCE_LATITUDE);
        let polar = well_formed
            && !rings.is_empty()
            && rings.iter().any(|r| beyond(r) || turns(r) != 0)
            // A polygon wholly beyond the limit has nothing to keep: validation refuses it, saying why.
            && !rings.iter().all(wholly_beyond);
        if !polar {
            out.push(rings);
            continue;
        }
        // The exterior: a ring round a pole wins (in such files ring 0 may be the polar cap strip).
        let exterior_at = rings
            .iter()
            .position(|r| turns(r) != 0 && !wholly_beyond(r))
            .filter(|&i| i == 0 || wholly_beyond(&rings[0]))
            .unwrap_or(0);
        let mut exterior = rings[exterior_at].clone();
        if turns(&exterior) != 0 {
            exterior = close_through_pole(&exterior);
            repairs.push(format!(
                "polygon {p} ring {exterior_at} goes round the {} pole: closed through it",
                if mean_latitude(&exterior) < 0.0 {
                    "south"
                } else {
                    "north"
                }
            ));
        }
        let mut holes = Vec::new();
        for (r, ring) in rings.into_iter().enumerate() {
            if r == exterior_at {
                continue;
            }
            if wholly_beyond(&ring) {
                repairs.push(format!(
                    "polygon {p} ring {r} lies wholly beyond ±{MAX_FENCE_LATITUDE}°: dropped"
                ));
            } else {
                holes.push(ring);
            }
        }
        let mut pieces = vec![exterior];
        for limit in [-MAX_FENCE_LATITUDE, MAX_FENCE_LATITUDE] {
            pieces = pieces
                .into_iter()
                .flat_map(|piece| clip(&piece, limit))
                .collect();
        }
        repairs.push(format!(
            "polygon {p} clipped to latitudes within ±{MAX_FENCE_LATITUDE}° ({} piece{}): points beyond never match it",
            pieces.len(),
            if pieces.len() == 1 { "" } else { "s" }
        ));
        for (i, piece) in pieces.into_iter().enumerate() {
            let mut polygon = vec![wrap_ring(piece)];
            // Holes go with the first piece; validation refuses one that lies outside it.
            if i == 0 {
                polygon.append(&mut holes);
            }
            out.push(polygon);
        }
    }
    out
}

/// A ring whose every vertex lies on the antimeridian, as a lon/lat envelope round the globe has them
/// (`[-180, -90, 180, -60]` written as a polygon, what bbox-to-polygon tools give for a polar cap or a
/// band of latitudes). Read the shortest way, as every other edge is (a jump over 180° crosses the
/// antimeridian), its edges from -180° to 180° are points and the ring encloses nothing; straight in
/// lon/lat (RFC 7946) they run the whole way round along their parallel, which is what the writer
/// meant. Those edges are given vertices every [`STEP_DEG`], which both readings agree on, and each
/// is reported. Rings with any other vertex keep the shortest-way reading: Natural Earth's Fiji steps
/// from 180° to -180° at one latitude to cross the line, and means exactly that.
fn go_round_along_parallels(ring: Ring, p: usize, r: usize, repairs: &mut Vec<String>) -> Ring {
    let round = |a: [f64; 2], b: [f64; 2]| a[1] == b[1] && a[0].abs() == 180.0 && b[0] == -a[0];
    if !ring.iter().all(|v| v[0].abs() == 180.0) || !ring.windows(2).any(|e| round(e[0], e[1])) {
        return ring;
    }
    let mut out = Vec::with_capacity(ring.len() + 72);
    for (e, edge) in ring.windows(2).enumerate() {
        let (a, b) = (edge[0], edge[1]);
        out.push(a);
        if round(a, b) {
            out.extend(along_parallel(a[0], b[0], a[1]));
            repairs.push(format!(
                "polygon {p} ring {r} edge {e} runs from {}° to {}° longitude along {}°: read as going \
                 round the globe along that parallel (a straight edge in lon/lat)",
                a[0], b[0], a[1]
            ));
        }
    }
    out.extend(ring.last().copied());
    out
}

/// The vertices strictly between longitudes `from` and `to` on the parallel `lat`, evenly spaced at most
/// [`STEP_DEG`] apart, so that no edge along it spans more than 180°.
fn along_parallel(from: f64, to: f64, lat: f64) -> impl Iterator<Item = [f64; 2]> {
    let steps = ((to - from).abs() / STEP_DEG).ceil() as usize;
    (1..steps).map(move |s| [from + (to - from) * s as f64 / steps as f64, lat])
}

fn wrap_delta(delta: f64) -> f64 {
    super::metric::wrap_lon_delta(delta)
}

/// How many times a ring goes round the globe in longitude (0 for an ordinary ring).
fn turns(ring: &Ring) -> i64 {
    let total: f64 = ring.windows(2).map(|e| wrap_delta(e[1][0] - e[0][0])).sum();
    (total / 360.0).round() as i64
}

fn mean_latitude(ring: &Ring) -> f64 {
    ring.iter().map(|p| p[1]).sum::<f64>() / ring.len().max(1) as f64
}

/// A ring that goes once round the globe, unwrapped from its westernmost vertex and closed along its
/// pole's latitude: the region between it and the pole, as an ordinary ring in lon/lat.
fn close_through_pole(ring: &Ring) -> Ring {
    let open = &ring[..ring.len() - 1];
    let start = open
        .iter()
        .enumerate()
        .min_by(|a, b| a.1[0].total_cmp(&b.1[0]))
        .map_or(0, |(i, _)| i);
    // Whole turns are added to each longitude, not summed deltas: the ring must end exactly 360° from
    // where it started, or wrapping it back would put a vertex on the wrong side of the antimeridian.
    let mut unwrapped: Ring = Vec::with_capacity(open.len() + 4);
    let mut shift = 0.0;
    for k in 0..=open.len() {
        let [lon, lat] = open[(start + k) % open.len()];
        if let Some(&[previous, _]) = unwrapped.last() {
            let step = lon + shift - previous;
            if step > 180.0 {
                shift -= 360.0;
            } else if step < -180.0 {
                shift += 360.0;
            }
        }
        unwrapped.push([lon + shift, lat]);
    }
    let pole = if mean_latitude(ring) < 0.0 {
        -90.0
    } else {
        90.0
    };
    let (first, last) = (unwrapped[0], unwrapped[unwrapped.len() - 1]);
    unwrapped.push([last[0], pole]);
    unwrapped.push([first[0], pole]);
    unwrapped.push(first);
    unwrapped
}

/// The parts of a simple closed ring on the equator's side of `limit` (a latitude), each a closed ring.
/// The ring's crossings of the limit, sorted along it, pair up into the stretches of the limit that lie
/// inside; the kept chains of the ring are joined along those stretches.
fn clip(ring: &Ring, limit: f64) -> Vec<Ring> {
    let keep = |lat: f64| {
        if limit < 0.0 {
            lat >= limit
        } else {
            lat <= limit
        }
    };
    let open = &ring[..ring.len() - 1];
    let Some(outside) = open.iter().position(|p| !keep(p[1])) else {
        return vec![ring.clone()];
    };
    // Chains of kept positions, each from an entry point on the limit to an exit point on it.
    let mut chains: Vec<Ring> = Vec::new();
    let mut current: Option<Ring> = None;
    for k in 0..open.len() {
        let a = open[(outside + k) % open.len()];
        let b = open[(outside + k + 1) % open.len()];
        let crossing = || {
            let t = (limit - a[1]) / (b[1] - a[1]);
            [a[0] + t * wrap_delta(b[0] - a[0]), limit]
        };
        match (keep(a[1]), keep(b[1])) {
            (false, true) => {
                let mut chain = vec![if b[1] == limit { b } else { crossing() }];
                if chain[0] != b {
                    chain.push(b);
                }
                current = Some(chain);
            }
            (true, true) => {
                if let Some(chain) = current.as_mut() {
                    chain.push(b);
                }
            }
            (true, false) => {
                if let Some(mut chain) = current.take() {
                    if a[1] != limit {
                        chain.push(crossing());
                    }
                    // A chain that only touches the limit encloses nothing.
                    if chain.len() >= 2 {
                        chains.push(chain);
                    }
                }
            }
            (false, false) => {}
        }
    }
    if chains.is_empty() {
        return Vec::new();
    }
    // Each chain's exit joins, along the limit, the entry next to it in the sorted order of crossings.
    let mut ends: Vec<(f64, usize, bool)> = Vec::with_capacity(chains.len() * 2);
    for (i, chain) in chains.iter().enumerate() {
        ends.push((chain[0][0], i, true));
        ends.push((chain[chain.len() - 1][0], i, false));
    }
    ends.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut next_chain = vec![usize::MAX; chains.len()];
    for pair in ends.chunks(2) {
        if let [(_, i, i_entry), (_, j, j_entry)] = *pair {
            match (i_entry, j_entry) {
                (false, true) => next_chain[i] = j,
                (true, false) => next_chain[j] = i,
                _ => {}
            }
        }
    }
    let mut used = vec![false; chains.len()];
    let mut pieces = Vec::new();
    for first in 0..chains.len() {
        if used[first] {
            continue;
        }
        let mut piece: Ring = Vec::new();
        let mut at = first;
        while at != usize::MAX && !used[at] {
            used[at] = true;
            piece.extend_from_slice(&chains[at]);
            let next = next_chain[at];
            if next == usize::MAX {
                break;
            }
            let (from, to) = (piece[piece.len() - 1][0], chains[next][0][0]);
            piece.extend(along_parallel(from, to, limit));
            at = next;
        }
        piece.push(piece[0]);
        if piece.len() >= 4 {
            pieces.push(piece);
        }
    }
    pieces
}

/// Longitudes back into [-180, 180] (validation continues them past ±180 again where a ring needs it).
fn wrap_ring(ring: Ring) -> Ring {
    ring.into_iter()
        .map(|[lon, lat]| [wrap_delta(lon), lat])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ordinary_ring_is_untouched() {
        let square = vec![vec![vec![
            [0.0, 0.0],
            [1.0, 0.0],
            [1.0, 1.0],
            [0.0, 1.0],
            [0.0, 0.0],
        ]]];
        let mut repairs = Vec::new();
        assert_eq!(
            clip_to_supported_latitudes(square.clone(), &mut repairs),
            square
        );
        assert!(repairs.is_empty());
    }

    #[test]
    fn only_a_ring_wholly_on_the_antimeridian_is_read_round_the_globe() {
        // An island written Natural Earth's way, stepping from 180° to -180° at one latitude to cross
        // the line: kept for the shortest-way reading (validation continues its longitudes).
        let island = vec![
            [179.5, -16.0],
            [180.0, -16.0],
            [-180.0, -16.0],
            [-179.5, -16.5],
            [-180.0, -17.0],
            [180.0, -17.0],
            [179.5, -16.0],
        ];
        let mut repairs = Vec::new();
        assert_eq!(
            go_round_along_parallels(island.clone(), 0, 0, &mut repairs),
            island
        );
        assert!(repairs.is_empty());
        // An envelope of latitudes 10°–20°N: both parallels get a vertex every 10°.
        let band = vec![
            [-180.0, 10.0],
            [180.0, 10.0],
            [180.0, 20.0],
            [-180.0, 20.0],
            [-180.0, 10.0],
        ];
        let read = go_round_along_parallels(band, 3, 1, &mut repairs);
        assert_eq!(read.len(), 2 * 36 + 3);
        assert!(read
            .windows(2)
            .all(|e| (e[1][0] - e[0][0]).abs() <= STEP_DEG));
        assert_eq!(repairs.len(), 2);
        assert!(repairs[0].starts_with("polygon 3 ring 1 edge 0 runs from -180° to 180°"));
    }

    #[test]
    fn a_ring_crossing_the_limit_twice_is_split_in_two() {
        // A "U" whose two arms reach beyond 85°N: clipped at 85° it is one piece (the arms are joined
        // below the limit); an upside-down U, whose base is beyond the limit, falls into two arms.
        let arms = vec![
            [0.0, 80.0],
            [10.0, 80.0],
            [10.0, 89.0],
            [8.0, 89.0],
            [8.0, 82.0],
            [2.0, 82.0],
            [2.0, 89.0],
            [0.0, 89.0],
            [0.0, 80.0],
        ];
        assert_eq!(clip(&arms, 85.0).len(), 1);
        let hanging = vec![
            [0.0, 80.0],
            [2.0, 80.0],
            [2.0, 87.0],
            [8.0, 87.0],
            [8.0, 80.0],
            [10.0, 80.0],
            [10.0, 89.0],
            [0.0, 89.0],
            [0.0, 80.0],
        ];
        let pieces = clip(&hanging, 85.0);
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        for piece in &pieces {
            assert!(piece.iter().all(|p| p[1] <= 85.0));
            assert_eq!(piece.first(), piece.last());
        }
    }

    #[test]
    fn a_ring_round_the_south_pole_is_closed_through_it_and_clipped() {
        // A coast at 70°S all round the globe, dipping to 86°S between 10°E and 20°E, written the way
        // Natural Earth writes Antarctica: a cap strip at -89.999 as ring 0, the coast as ring 1.
        let mut coast: Ring = (0..36)
            .map(|i| {
                let lon = -180.0 + 10.0 * f64::from(i);
                [
                    lon,
                    if lon == 10.0 || lon == 20.0 {
                        -86.0
                    } else {
                        -70.0
                    },
                ]
            })
            .collect();
        coast.push([-180.0, -70.0]);
        let mut cap: Ring = (0..=36)
            .map(|i| [180.0 - 10.0 * f64::from(i), -89.999])
            .collect();
        cap[36] = cap[0];
        let mut repairs = Vec::new();
        let out = clip_to_supported_latitudes(vec![vec![cap, coast]], &mut repairs);
        // The dip below 85°S cuts the band between the coast and 85°S in two.
        assert_eq!(out.len(), 2, "{out:?}");
        for polygon in &out {
            let ring = &polygon[0];
            assert!(ring.iter().all(|p| p[1] >= -85.0 && p[0].abs() <= 180.0));
            assert!(
                ring.windows(2).all(|e| (e[1][0] - e[0][0]).abs() < 180.0),
                "{ring:?}"
            );
        }
        let west: f64 = out
            .iter()
            .map(|p| p[0].iter().map(|q| q[0]).fold(f64::INFINITY, f64::min))
            .fold(f64::INFINITY, f64::min);
        assert_eq!(west, -180.0);
        assert!(
            repairs.iter().any(|r| r.contains("south pole")),
            "{repairs:?}"
        );
        assert!(
            repairs.iter().any(|r| r.contains("wholly beyond")),
            "{repairs:?}"
        );
        assert!(repairs.iter().any(|r| r.contains("clipped")), "{repairs:?}");
    }
}

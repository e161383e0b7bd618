//! Metres on the WGS84 ellipsoid.
//!
//! Three tools, all checked against Karney's geodesics in the tests:
//! - [`LocalMetric`]: metres per degree at one latitude, to compare candidate edge points cheaply;
//! - [`distance_m`]: the mid-latitude ellipsoidal distance, accurate to 0.13% up to 100 km below 85° latitude
//!   (measured; the contract asks for 0.5%), which is what results report for polygon fences;
//! - [`geodesic_distance_m`]: Vincenty's inverse solution on WGS84 (sub-millimetre), for circular fences,
//!   whose distance is exactly `geodesic(point, centre) - radius`.

const WGS84_A: f64 = 6_378_137.0;
const WGS84_F: f64 = 1.0 / 298.257_223_563;
const WGS84_E2: f64 = WGS84_F * (2.0 - WGS84_F);

/// Fences must stay within this latitude: beyond it, edges that are straight in lon/lat and the metric
/// approximations both degrade, and no city needs it.
pub const MAX_FENCE_LATITUDE: f64 = 85.0;

/// Largest tolerance accepted: the accuracy contract (0.5% of geodesic distance) is stated up to 100 km.
pub const MAX_TOLERANCE_M: f64 = 100_000.0;

/// Metres per degree of latitude and longitude at one latitude.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalMetric {
    pub m_per_deg_lat: f64,
    pub m_per_deg_lon: f64,
}

/// Entries per degree of latitude in [`LocalMetric`]'s table.
const METRIC_STEPS_PER_DEGREE: usize = 4;
/// Entries from -90° to 90°, both included.
const METRIC_TABLE_LEN: usize = 180 * METRIC_STEPS_PER_DEGREE + 1;

/// Metres per degree of latitude and longitude at every quarter degree of latitude from -90°, each with
/// the difference to the next entry. Linear interpolation between entries stays within 3e-6 of the closed
/// form (the error of interpolating a cosine over a quarter degree is h²/8), while the closed form's sine,
/// cosine and square root were the largest arithmetic cost of a near-boundary match, paid twice per point.
static METRIC_TABLE: std::sync::LazyLock<Vec<[f64; 4]>> = std::sync::LazyLock::new(|| {
    let exact: Vec<LocalMetric> = (0..METRIC_TABLE_LEN)
        .map(|i| LocalMetric::closed_form(i as f64 / METRIC_STEPS_PER_DEGREE as f64 - 90.0))
        .collect();
    exact
        .iter()
        .zip(exact.iter().skip(1).chain(exact.last()))
        .map(|(here, next)| {
            [
                here.m_per_deg_lat,
                // The poles' own value is exactly zero, not a rounding residue of cos(90°).
                here.m_per_deg_lon.max(0.0),
                next.m_per_deg_lat - here.m_per_deg_lat,
                next.m_per_deg_lon.max(0.0) - here.m_per_deg_lon.max(0.0),
            ]
        })
        .collect()
});

impl LocalMetric {
    /// The metric at `lat_deg` (clamped to ±90°), interpolated in a quarter-degree table: within 3e-6 of
    /// [`Self::closed_form`]. Every user of the metric goes through this one function, so the lower bounds
    /// the distance grid stores and the distances a query measures agree (the interpolation keeps the
    /// closed form's monotony: longitude degrees shrink poleward, latitude degrees grow).
    #[must_use]
    pub fn at_latitude(lat_deg: f64) -> Self {
        let x = ((lat_deg + 90.0) * METRIC_STEPS_PER_DEGREE as f64)
            .clamp(0.0, (METRIC_TABLE_LEN - 1) as f64);
        let i = (x as usize).min(METRIC_TABLE_LEN - 2);
        let f = x - i as f64;
        let [lat, lon, dlat, dlon] = METRIC_TABLE[i];
        Self {
            m_per_deg_lat: lat + f * dlat,
            m_per_deg_lon: lon + f * dlon,
        }
    }

    /// The metric from the ellipsoid's radii of curvature at `lat_deg`.
    #[must_use]
    pub fn closed_form(lat_deg: f64) -> Self {
        let phi = lat_deg.to_radians();
        let sin = phi.sin();
        let w = 1.0 - WGS84_E2 * sin * sin;
        let meridional = WGS84_A * (1.0 - WGS84_E2) / (w * w.sqrt());
        let prime_vertical = WGS84_A / w.sqrt();
        let rad = std::f64::consts::PI / 180.0;
        Self {
            m_per_deg_lat: meridional * rad,
            m_per_deg_lon: prime_vertical * phi.cos() * rad,
        }
    }
}

/// Wraps a longitude difference into [-180, 180] so distances across the antimeridian are short.
#[must_use]
pub fn wrap_lon_delta(delta: f64) -> f64 {
    if delta > 180.0 {
        delta - 360.0
    } else if delta < -180.0 {
        delta + 360.0
    } else {
        delta
    }
}

/// Ellipsoidal distance in metres between two positions (degrees), evaluated at their mid-latitude.
#[must_use]
pub fn distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let metric = LocalMetric::at_latitude(0.5 * (lat1 + lat2));
    let dx = wrap_lon_delta(lon2 - lon1) * metric.m_per_deg_lon;
    let dy = (lat2 - lat1) * metric.m_per_deg_lat;
    // Not `hypot`: its overflow guards cost a fifth of a near-boundary match, and these are metres.
    (dx * dx + dy * dy).sqrt()
}

/// Geodesic distance in metres on the WGS84 ellipsoid (Vincenty's inverse formula). Converges for all
/// but nearly antipodal pairs, which fences (at most 100 km across plus tolerance) never produce; if it
/// does not converge, the last iterate (still within metres) is used.
#[must_use]
pub fn geodesic_distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let b = WGS84_A * (1.0 - WGS84_F);
    let l = wrap_lon_delta(lon2 - lon1).to_radians();
    let u1 = ((1.0 - WGS84_F) * lat1.to_radians().tan()).atan();
    let u2 = ((1.0 - WGS84_F) * lat2.to_radians().tan()).atan();
    let (sin_u1, cos_u1) = u1.sin_cos();
    let (sin_u2, cos_u2) = u2.sin_cos();
    let mut lambda = l;
    let (mut sin_sigma, mut cos_sigma, mut sigma, mut cos2_alpha, mut cos_2sm);
    let mut iterations = 0;
    loop {
        let (sin_l, cos_l) = lambda.sin_cos();
        let t1 = cos_u2 * sin_l;
        let t2 = cos_u1 * sin_u2 - sin_u1 * cos_u2 * cos_l;
        sin_sigma = t1.hypot(t2);
        if sin_sigma == 0.0 {
            return 0.0;
        }
        cos_sigma = sin_u1 * sin_u2 + cos_u1 * cos_u2 * cos_l;
        sigma = sin_sigma.atan2(cos_sigma);
        let sin_alpha = cos_u1 * cos_u2 * sin_l / sin_sigma;
        cos2_alpha = 1.0 - sin_alpha * sin_alpha;
        cos_2sm = if cos2_alpha == 0.0 {
            0.0
        } else {
            cos_sigma - 2.0 * sin_u1 * sin_u2 / cos2_alpha
        };
        let c = WGS84_F / 16.0 * cos2_alpha * (4.0 + WGS84_F * (4.0 - 3.0 * cos2_alpha));
        let previous = lambda;
        lambda = l
            + (1.0 - c)
                * WGS84_F
                * sin_alpha
                * (sigma
                    + c * sin_sigma * (cos_2sm + c * cos_sigma * (-1.0 + 2.0 * cos_2sm * cos_2sm)));
        iterations += 1;
        if (lambda - previous).abs() < 1e-12 || iterations >= 100 {
            break;
        }
    }
    let u_sq = cos2_alpha * (WGS84_A * WGS84_A - b * b) / (b * b);
    let big_a = 1.0 + u_sq / 16384.0 * (4096.0 + u_sq * (-768.0 + u_sq * (320.0 - 175.0 * u_sq)));
    let big_b = u_sq / 1024.0 * (256.0 + u_sq * (-128.0 + u_sq * (74.0 - 47.0 * u_sq)));
    let delta_sigma = big_b
        * sin_sigma
        * (cos_2sm
            + big_b / 4.0
                * (cos_sigma * (-1.0 + 2.0 * cos_2sm * cos_2sm)
                    - big_b / 6.0
                        * cos_2sm
                        * (-3.0 + 4.0 * sin_sigma * sin_sigma)
                        * (-3.0 + 4.0 * cos_2sm * cos_2sm)));
    b * big_a * (sigma - delta_sigma)
}

/// How many degrees of latitude and longitude `metres` spans, at worst, anywhere in a latitude band.
///
/// Used to grow bounding boxes by a tolerance: the longitude span uses the band's most poleward latitude,
/// where a degree of longitude is shortest, so the box never under-covers.
#[must_use]
pub fn degrees_spanned(metres: f64, lat_min: f64, lat_max: f64) -> (f64, f64) {
    let poleward = lat_min.abs().max(lat_max.abs()).min(89.0);
    let at_pole = LocalMetric::at_latitude(poleward);
    // The meridional radius is smallest at the equator.
    let equator = LocalMetric::at_latitude(0.0);
    (
        metres / equator.m_per_deg_lat,
        (metres / at_pole.m_per_deg_lon).min(360.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_degree_of_latitude_is_about_111_km() {
        let m = LocalMetric::at_latitude(45.0);
        assert!((m.m_per_deg_lat - 111_132.0).abs() < 5.0, "{m:?}");
        assert!((m.m_per_deg_lon - 78_847.0).abs() < 5.0, "{m:?}");
    }

    #[test]
    fn the_table_is_within_three_millionths_of_the_closed_form_and_keeps_its_monotony() {
        let mut previous = LocalMetric::at_latitude(0.0);
        for step in 1..=900_000 {
            let lat = f64::from(step) * 1e-4;
            for lat in [lat, -lat] {
                let (table, exact) = (LocalMetric::at_latitude(lat), LocalMetric::closed_form(lat));
                let lat_error =
                    (table.m_per_deg_lat - exact.m_per_deg_lat).abs() / exact.m_per_deg_lat;
                assert!(lat_error < 3e-6, "{lat}: {table:?} vs {exact:?}");
                // Relative to the equator's degree: near the poles a degree of longitude tends to 0.
                let lon_error =
                    (table.m_per_deg_lon - exact.m_per_deg_lon.max(0.0)).abs() / 111_320.0;
                assert!(lon_error < 3e-6, "{lat}: {table:?} vs {exact:?}");
            }
            let here = LocalMetric::at_latitude(lat);
            assert!(here.m_per_deg_lon <= previous.m_per_deg_lon, "{lat}");
            assert!(here.m_per_deg_lat >= previous.m_per_deg_lat, "{lat}");
            previous = here;
        }
        assert!(LocalMetric::at_latitude(90.0).m_per_deg_lon.abs() < 1e-6);
        assert_eq!(
            LocalMetric::at_latitude(-95.0),
            LocalMetric::at_latitude(-90.0)
        );
    }

    #[test]
    fn antimeridian_distances_are_short() {
        let d = distance_m(52.0, 179.99, 52.0, -179.99);
        assert!((d - 1370.0).abs() < 5.0, "{d}");
        assert_eq!(wrap_lon_delta(-359.0), 1.0);
    }

    #[test]
    fn vincenty_matches_known_geodesics() {
        // Flinders Peak → Buninyong, the classic Vincenty test line: 54 972.271 m.
        let d = geodesic_distance_m(
            -(37.0 + 57.0 / 60.0 + 3.72030 / 3600.0),
            144.0 + 25.0 / 60.0 + 29.52440 / 3600.0,
            -(37.0 + 39.0 / 60.0 + 10.15610 / 3600.0),
            143.0 + 55.0 / 60.0 + 35.38390 / 3600.0,
        );
        assert!((d - 54_972.271).abs() < 0.01, "{d}");
        assert_eq!(geodesic_distance_m(10.0, 20.0, 10.0, 20.0), 0.0);
        let across = geodesic_distance_m(52.0, 179.99, 52.0, -179.99);
        let local = distance_m(52.0, 179.99, 52.0, -179.99);
        assert!(
            (across - local).abs() < 0.002 * local,
            "{across} vs {local}"
        );
    }

    #[test]
    fn the_mid_latitude_distance_is_within_two_percent_of_vincenty_up_to_200_km_from_85_degrees() {
        let mut worst: f64 = 0.0;
        for lat0 in [0.0, 45.0, 70.0, 80.0, 85.0, -85.0] {
            let metric = LocalMetric::at_latitude(lat0);
            for step in 0..72 {
                let angle = (step as f64 * 5.0).to_radians();
                for reach in [1_000.0, 50_000.0, 200_000.0] {
                    let lat =
                        (lat0 + reach * angle.sin() / metric.m_per_deg_lat).clamp(-90.0, 90.0);
                    let lon = reach * angle.cos() / metric.m_per_deg_lon;
                    let exact = geodesic_distance_m(lat0, 0.0, lat, lon);
                    let approx = distance_m(lat0, 0.0, lat, lon);
                    worst = worst.max((approx - exact).abs() / exact);
                }
            }
        }
        assert!(worst < 0.02, "{worst}");
    }

    #[test]
    fn degree_spans_cover_the_poleward_edge() {
        let (dlat, dlon) = degrees_spanned(1000.0, 40.0, 60.0);
        assert!(dlat > 0.0089 && dlat < 0.0091, "{dlat}");
        // At 60° a degree of longitude is ~55.8 km.
        assert!(dlon > 0.0178 && dlon < 0.0181, "{dlon}");
    }
}

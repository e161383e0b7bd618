//! A validated WGS84 position.

use std::fmt;

/// Why a latitude/longitude pair is not a usable position.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum PointError {
    #[error("latitude {0} is not a finite number")]
    LatitudeNotFinite(f64),
    #[error("longitude {0} is not a finite number")]
    LongitudeNotFinite(f64),
    #[error("latitude {0} is outside [-90, 90]")]
    LatitudeOutOfRange(f64),
    #[error("longitude {0} is outside [-180, 180]")]
    LongitudeOutOfRange(f64),
}

/// A WGS84 position in degrees; constructing one proves both coordinates are finite and in range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoPoint {
    lat: f64,
    lon: f64,
}

impl GeoPoint {
    /// Parses a position, rejecting NaN, infinities and out-of-range values.
    pub fn new(lat: f64, lon: f64) -> Result<Self, PointError> {
        if !lat.is_finite() {
            return Err(PointError::LatitudeNotFinite(lat));
        }
        if !lon.is_finite() {
            return Err(PointError::LongitudeNotFinite(lon));
        }
        if !(-90.0..=90.0).contains(&lat) {
            return Err(PointError::LatitudeOutOfRange(lat));
        }
        if !(-180.0..=180.0).contains(&lon) {
            return Err(PointError::LongitudeOutOfRange(lon));
        }
        Ok(Self { lat, lon })
    }

    #[must_use]
    pub fn lat(self) -> f64 {
        self.lat
    }

    #[must_use]
    pub fn lon(self) -> f64 {
        self.lon
    }
}

impl fmt::Display for GeoPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.lat, self.lon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_every_kind_of_bad_coordinate() {
        assert_eq!(
            GeoPoint::new(f64::NAN, 0.0).unwrap_err().to_string(),
            "latitude NaN is not a finite number"
        );
        assert!(matches!(
            GeoPoint::new(0.0, f64::INFINITY),
            Err(PointError::LongitudeNotFinite(_))
        ));
        assert_eq!(
            GeoPoint::new(90.5, 0.0),
            Err(PointError::LatitudeOutOfRange(90.5))
        );
        assert_eq!(
            GeoPoint::new(0.0, -180.01),
            Err(PointError::LongitudeOutOfRange(-180.01))
        );
        let p = GeoPoint::new(-6.2, 106.8).unwrap();
        assert_eq!((p.lat(), p.lon()), (-6.2, 106.8));
    }
}

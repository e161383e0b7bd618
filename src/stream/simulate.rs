//! Realistic GPS traffic for the input topic: users walking and driving in and around the fences (cities),
//! with GPS accuracy noise, the occasional useless fix and the occasional broken event.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::config::KafkaSettings;
use crate::geofence::metric::LocalMetric;
use crate::geofence::sample::SampleRng;
use crate::geofence::Fence;
use crate::promo::timestamp::now_ms;
use crate::stream::client::{client_config, KafkaClient};
use crate::stream::error::StreamError;
use crate::stream::output::send_with_backpressure;

/// Seconds of simulated movement between two fixes of one user.
const FIX_INTERVAL_S: f64 = 10.0;
/// How far around a city users roam, in degrees of margin around its bounding box.
const ROAM_MARGIN_DEG: f64 = 0.05;

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulateOptions {
    /// Events per second; 0 means as fast as the producer goes.
    pub rate: f64,
    pub users: usize,
    /// Stop after this many events (`None`: run until stopped or `duration` passes).
    pub events: Option<u64>,
    pub duration: Option<Duration>,
    /// Share of events that are deliberately broken (malformed JSON, impossible coordinates, ...).
    pub bad_ratio: f64,
    pub seed: u64,
}

impl Default for SimulateOptions {
    fn default() -> Self {
        Self {
            rate: 1000.0,
            users: 1000,
            events: None,
            duration: None,
            bad_ratio: 0.001,
            seed: 7,
        }
    }
}

/// Totals of one simulation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SimulateReport {
    pub produced: u64,
    pub bad: u64,
    pub elapsed: Duration,
}

impl SimulateReport {
    #[must_use]
    pub fn rate(&self) -> f64 {
        self.produced as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, Clone)]
struct SimUser {
    id: String,
    lat: f64,
    lon: f64,
    /// Metres per second.
    speed: f64,
    /// Radians, 0 = north.
    heading: f64,
    home: usize,
    sequence: u64,
}

/// The traffic generator, independent of Kafka so that tests and benchmarks can use its events directly.
#[derive(Debug)]
pub struct TrafficModel {
    rng: SampleRng,
    users: Vec<SimUser>,
    /// (min_lat, min_lon, max_lat, max_lon) of each home area, margin included.
    areas: Vec<(f64, f64, f64, f64)>,
    next_user: usize,
    bad_ratio: f64,
}

impl TrafficModel {
    /// `fences` are the areas users live around; at least one is needed.
    #[must_use]
    pub fn new(fences: &[Fence], users: usize, bad_ratio: f64, seed: u64) -> Self {
        let mut rng = SampleRng::new(seed);
        let mut areas: Vec<(f64, f64, f64, f64)> = fences
            .iter()
            .map(|fence| {
                let mut b = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
                for ring in fence.outlines() {
                    for [lon, lat] in ring {
                        b = (b.0.min(lat), b.1.min(lon), b.2.max(lat), b.3.max(lon));
                    }
                }
                (
                    b.0 - ROAM_MARGIN_DEG,
                    b.1 - ROAM_MARGIN_DEG,
                    b.2 + ROAM_MARGIN_DEG,
                    b.3 + ROAM_MARGIN_DEG,
                )
            })
            .collect();
        if areas.is_empty() {
            areas.push((-6.4, 106.6, -6.0, 107.0));
        }
        let users = (0..users.max(1))
            .map(|i| {
                let home = rng.below(areas.len());
                let area = areas[home];
                let driving = rng.unit() < 0.4;
                SimUser {
                    id: format!("user-{i:07}"),
                    lat: rng.range(area.0, area.2),
                    lon: rng.range(area.1, area.3),
                    speed: if driving {
                        rng.range(6.0, 16.0)
                    } else {
                        rng.range(0.8, 1.8)
                    },
                    heading: rng.range(0.0, std::f64::consts::TAU),
                    home,
                    sequence: 0,
                }
            })
            .collect();
        Self {
            rng,
            users,
            areas,
            next_user: 0,
            bad_ratio,
        }
    }

    /// Writes the next event (JSON) into `out` and returns its key (the user id) and whether it is bad.
    pub fn next_event(&mut self, ts_ms: i64, out: &mut Vec<u8>) -> (&str, bool) {
        out.clear();
        let index = self.next_user;
        self.next_user = (self.next_user + 1) % self.users.len();
        let rng = &mut self.rng;
        let user = &mut self.users[index];
        let area = self.areas[user.home];
        // Move: mostly straight, sometimes turning, always back towards home when outside the roaming area.
        if rng.unit() < 0.1 {
            user.heading += rng.range(-1.2, 1.2);
        }
        let metric = LocalMetric::at_latitude(user.lat);
        let step = user.speed * FIX_INTERVAL_S;
        user.lat += step * user.heading.cos() / metric.m_per_deg_lat;
        user.lon += step * user.heading.sin() / metric.m_per_deg_lon;
        if user.lat < area.0 || user.lat > area.2 || user.lon < area.1 || user.lon > area.3 {
            let centre = ((area.0 + area.2) / 2.0, (area.1 + area.3) / 2.0);
            user.heading = (centre.1 - user.lon).atan2(centre.0 - user.lat);
            user.lat = user.lat.clamp(area.0, area.2);
            user.lon = user.lon.clamp(area.1, area.3);
        }
        user.sequence += 1;
        // GPS noise: most fixes are good to 3–25 m; 2% are poor (150–800 m) and must not change state.
        let accuracy = if rng.unit() < 0.02 {
            rng.range(150.0, 800.0)
        } else {
            rng.range(3.0, 25.0)
        };
        let noise = accuracy / 2.0;
        let lat = user.lat + rng.range(-noise, noise) / metric.m_per_deg_lat;
        let lon = user.lon + rng.range(-noise, noise) / metric.m_per_deg_lon;
        let bad = rng.unit() < self.bad_ratio;
        if bad {
            // Writing into a Vec cannot fail.
            let _ = match rng.below(4) {
                0 => write!(
                    out,
                    "{{\"user_id\":\"{}\",\"lat\":{lat:.6},\"lon\":",
                    user.id
                ),
                1 => write!(
                    out,
                    "{{\"user_id\":\"{}\",\"lat\":{},\"lon\":{lon:.6},\"ts\":{ts_ms}}}",
                    user.id,
                    lat + 200.0
                ),
                2 => write!(
                    out,
                    "{{\"user_id\":\"{}\",\"lat\":\"NaN\",\"lon\":{lon:.6},\"ts\":{ts_ms}}}",
                    user.id
                ),
                _ => write!(
                    out,
                    "{{\"user_id\":\"{}\",\"lat\":{lat:.6},\"lon\":{lon:.6}}}",
                    user.id
                ),
            };
        } else {
            // Byte by byte rather than through `write!`: the formatting machinery was most of what is
            // left of the simulator's cost once the numbers are fixed-point.
            let mut digits = itoa::Buffer::new();
            out.extend_from_slice(b"{\"user_id\":\"");
            out.extend_from_slice(user.id.as_bytes());
            out.extend_from_slice(b"\",\"lat\":");
            write_fixed::<6>(out, lat);
            out.extend_from_slice(b",\"lon\":");
            write_fixed::<6>(out, lon);
            out.extend_from_slice(b",\"ts\":");
            out.extend_from_slice(digits.format(ts_ms).as_bytes());
            out.extend_from_slice(b",\"accuracy_m\":");
            write_fixed::<1>(out, accuracy);
            out.extend_from_slice(b",\"event_id\":\"");
            out.extend_from_slice(user.id.as_bytes());
            out.push(b'-');
            out.extend_from_slice(digits.format(user.sequence).as_bytes());
            out.extend_from_slice(b"\"}");
        }
        (&self.users[index].id, bad)
    }
}

/// Writes `value` with `DECIMALS` digits after the point, as `{:.N}` writes it but rounded once in
/// binary instead of through the exact float-to-decimal conversion, which was the simulator's largest
/// cost (a last digit may differ on a tie; for simulated positions that is noise below the noise).
fn write_fixed<const DECIMALS: u32>(out: &mut Vec<u8>, value: f64) {
    let scale = 10u64.pow(DECIMALS);
    let scaled = (value * scale as f64).round();
    // Beyond 2^53 units the binary rounding is no longer exact: let the exact conversion do it.
    if !scaled.is_finite() || scaled.abs() >= 9.0e15 {
        let _ = write!(out, "{:.*}", DECIMALS as usize, value);
        return;
    }
    if scaled < 0.0 {
        out.push(b'-');
    }
    let units = scaled.abs() as u64;
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(units / scale).as_bytes());
    out.push(b'.');
    let fraction = digits.format(units % scale).as_bytes();
    out.extend(std::iter::repeat_n(
        b'0',
        DECIMALS as usize - fraction.len(),
    ));
    out.extend_from_slice(fraction);
}

/// Produces simulated traffic to `settings.input_topic` until `options` or `stop` says to end.
/// `progress` is called about once a second.
pub fn run_simulation(
    settings: &KafkaSettings,
    brokers: &str,
    fences: &[Fence],
    options: &SimulateOptions,
    stop: &AtomicBool,
    mut progress: impl FnMut(&SimulateReport),
) -> Result<SimulateReport, StreamError> {
    let mut config = client_config(settings, brokers, KafkaClient::Producer);
    for (key, value) in [
        ("linger.ms", "5"),
        ("batch.num.messages", "10000"),
        ("queue.buffering.max.messages", "500000"),
    ] {
        if config.get(key).is_none() {
            config.set(key, value);
        }
    }
    let producer: BaseProducer = config.create().map_err(StreamError::Client)?;
    let mut model = TrafficModel::new(fences, options.users, options.bad_ratio, options.seed);
    let mut payload = Vec::with_capacity(256);
    let started = Instant::now();
    let mut report = SimulateReport::default();
    let mut last_progress = Instant::now();
    let mut now = now_ms();
    loop {
        if stop.load(Ordering::Relaxed)
            || options.events.is_some_and(|n| report.produced >= n)
            || options.duration.is_some_and(|d| started.elapsed() >= d)
        {
            break;
        }
        if report.produced % 256 == 0 {
            now = now_ms();
            producer.poll(Duration::ZERO);
            if options.rate > 0.0 {
                let due = Duration::from_secs_f64(report.produced as f64 / options.rate);
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(ahead);
                }
            }
            if last_progress.elapsed() >= Duration::from_secs(1) {
                report.elapsed = started.elapsed();
                progress(&report);
                last_progress = Instant::now();
            }
        }
        let (key, bad) = model.next_event(now, &mut payload);
        let record = BaseRecord::to(&settings.input_topic)
            .key(key)
            .payload(&payload[..]);
        send_with_backpressure(&producer, record)
            .map_err(|source| StreamError::kafka("producing simulated events", source))?;
        report.produced += 1;
        report.bad += u64::from(bad);
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(|source| StreamError::kafka("flushing simulated events", source))?;
    report.elapsed = started.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promo::decode_gps_event;

    fn fixed<const DECIMALS: u32>(value: f64) -> String {
        let mut out = Vec::new();
        write_fixed::<DECIMALS>(&mut out, value);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fixed_decimals_write_what_the_exact_conversion_writes() {
        let mut rng = SampleRng::new(7);
        for _ in 0..100_000 {
            let value = rng.range(-180.0, 180.0);
            assert_eq!(fixed::<6>(value), format!("{value:.6}"));
            let accuracy = rng.range(0.0, 800.0);
            assert_eq!(fixed::<1>(accuracy), format!("{accuracy:.1}"));
        }
        for (value, text) in [(-0.5e-6, "-0.000001"), (-0.4e-6, "0.000000"), (1e300, "")] {
            let written = fixed::<6>(value);
            if text.is_empty() {
                assert_eq!(written, format!("{value:.6}"));
            } else {
                assert_eq!(written, text);
            }
        }
    }

    #[test]
    fn events_are_valid_except_the_deliberately_bad_ones() {
        let fence = Fence {
            id: "city".into(),
            name: "City".into(),
            tolerance_m: 1000.0,
            polygons: vec![crate::geofence::sample::wobbly_polygon(
                -6.2, 106.8, 10_000.0, 40, 1,
            )],
            circle: None,
        };
        let mut model = TrafficModel::new(&[fence], 50, 0.05, 3);
        let mut payload = Vec::new();
        let (mut bad, mut good) = (0, 0);
        for _ in 0..5000 {
            let (key, is_bad) = model.next_event(1_763_798_400_000, &mut payload);
            let key = key.to_owned();
            let decoded = decode_gps_event(Some(key.as_bytes()), &payload, 4096);
            assert_eq!(
                decoded.is_err(),
                is_bad,
                "{}",
                String::from_utf8_lossy(&payload)
            );
            if is_bad {
                bad += 1;
            } else {
                good += 1;
            }
        }
        assert!((150..400).contains(&bad), "{bad} bad of 5000");
        assert!(good > 4500);
    }
}

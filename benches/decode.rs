//! Decoding input events: `decode_gps_event` on the simulator's payloads (numeric `ts`, as the pipeline
//! benchmark sends them) and on payloads with an RFC 3339 `ts`, as many mobile SDKs send them; and the
//! other per-record codec on the processor's path, encoding a user's state for the changelog (against
//! serde_json writing the same bytes).
//! Run: `cargo bench --bench decode`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use geopromo::geofence::{parse_fences, ParseOptions};
use geopromo::promo::decode_gps_event;
use geopromo::stream::simulate::TrafficModel;

/// How the payloads write their values.
#[derive(Clone, Copy, PartialEq)]
enum Form {
    /// As the simulator does: numeric `ts`, six decimals.
    Simulated,
    /// `ts` as RFC 3339, as many mobile SDKs send it.
    Rfc3339,
    /// Positions with every digit of the double (16 to 17), as JavaScript's, Swift's and Kotlin's
    /// serializers write a GPS fix.
    FullPrecision,
}

/// 4,096 (key, payload) pairs from the traffic model over the bundled cities.
fn payloads(form: Form) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/geodata/cities.geojson"
    ))
    .unwrap();
    let fences = parse_fences(&bytes, &ParseOptions::default())
        .unwrap()
        .fences;
    let mut model = TrafficModel::new(&fences, 1000, 0.0, 1);
    let now = 1_764_000_000_000i64;
    (0..4096)
        .map(|i| {
            let mut payload = Vec::new();
            let (key, _) = model.next_event(now + i, &mut payload);
            let key = key.to_owned();
            if form == Form::Rfc3339 {
                let text = String::from_utf8(payload).unwrap();
                let ts = geopromo::promo::timestamp::format_rfc3339_ms(now + i);
                payload = text
                    .replace(&format!("\"ts\":{}", now + i), &format!("\"ts\":\"{ts}\""))
                    .into_bytes();
            }
            if form == Form::FullPrecision {
                let mut event: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                for (field, jitter) in [("lat", 1.234_567e-9), ("lon", -7.654_321e-9)] {
                    let value = event[field].as_f64().unwrap() + jitter * (1 + i % 7) as f64;
                    event[field] = serde_json::json!(value);
                }
                payload = serde_json::to_vec(&event).unwrap();
            }
            (key, payload)
        })
        .collect()
}

mod decode_gps_event {
    use super::*;

    pub fn simulated(c: &mut Criterion) {
        let mut group = c.benchmark_group("decode_gps_event");
        for (name, form) in [
            ("epoch_ms", Form::Simulated),
            ("rfc3339", Form::Rfc3339),
            ("full_precision", Form::FullPrecision),
        ] {
            let inputs = payloads(form);
            group.throughput(Throughput::Elements(inputs.len() as u64));
            group.bench_function(name, |b| {
                b.iter(|| {
                    let mut decoded = 0usize;
                    for (key, payload) in &inputs {
                        let event =
                            decode_gps_event(Some(key.as_bytes()), black_box(payload), 4096)
                                .unwrap();
                        decoded += event.user_id.len();
                    }
                    decoded
                })
            });
        }
        group.finish();
    }
}

mod encode_state {
    use super::*;
    use geopromo::promo::{EpochMs, PromotionStanding, UserState};
    use geopromo::stream::changelog::{encode_state, STATE_RECORD_VERSION};

    #[derive(serde::Serialize)]
    struct StateRecordOut<'a> {
        v: u32,
        input_offset: i64,
        state: &'a UserState,
    }

    /// 4,096 states as a checkpoint writes them: most users with no standing, some with one or two.
    fn states() -> Vec<UserState> {
        (0..4096i64)
            .map(|i| UserState {
                last_ts: EpochMs::from_millis(1_764_000_000_000 + i),
                standings: (0..[0, 0, 0, 1, 1, 2][i as usize % 6])
                    .map(|k| PromotionStanding {
                        promotion_id: format!("promo-{k}").into(),
                        fence_id: format!("city-{}", i % 40).into(),
                        eligible: k == 0,
                        last_enter: EpochMs::from_millis(1_763_999_000_000 + i),
                    })
                    .collect(),
            })
            .collect()
    }

    pub fn changelog(c: &mut Criterion) {
        let states = states();
        let mut group = c.benchmark_group("encode_state");
        group.throughput(Throughput::Elements(states.len() as u64));
        let mut buffer = Vec::with_capacity(512);
        group.bench_function("geopromo", |b| {
            b.iter(|| {
                let mut bytes = 0;
                for (offset, state) in states.iter().enumerate() {
                    buffer.clear();
                    encode_state(&mut buffer, offset as i64, black_box(state));
                    bytes += buffer.len();
                }
                bytes
            })
        });
        group.bench_function("serde_json", |b| {
            b.iter(|| {
                let mut bytes = 0;
                for (offset, state) in states.iter().enumerate() {
                    buffer.clear();
                    let record = StateRecordOut {
                        v: STATE_RECORD_VERSION,
                        input_offset: offset as i64,
                        state: black_box(state),
                    };
                    serde_json::to_writer(&mut buffer, &record).unwrap();
                    bytes += buffer.len();
                }
                bytes
            })
        });
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode_gps_event::simulated, encode_state::changelog
}
criterion_main!(benches);

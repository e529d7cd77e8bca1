//! Cost of the plugin boundary: per-event time of an enricher, an aggregator
//! and an alerter call at batch sizes 1, 64 and 1024, beside the same plugin
//! logic compiled natively; and loading a component cold vs from the cache.
//!
//! Run with `make bench` (or `cargo bench -p nexuspipe --bench plugins`).

#[path = "../tests/support/mod.rs"]
mod support;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nexuspipe::runtime::{Event, Limits, Metadata, Plugin, PluginOutput, Property, Runtime, Value};
use nexuspipe_sdk as sdk;
use std::cell::Cell;

const BATCHES: [usize; 3] = [1, 64, 1024];
const TYPES: [&str; 4] = ["page_view", "click", "login_failed", "add_to_cart"];

/// A realistic event: 5 strings (id, type, user, session, url) and 3 typed properties.
fn host_event(i: usize, ts: i64) -> Event {
    Event {
        id: format!("01890a5d-ac96-774b-bcce-b302099a{i:04}"),
        event_type: TYPES[i % TYPES.len()].into(),
        timestamp: ts,
        user_id: Some(format!("user-{}", i % 500)),
        session_id: Some(format!("sess-{}", i % 200)),
        properties: vec![
            Property {
                key: "path".into(),
                value: Value::Str(format!("/products/{}", i % 50)),
            },
            Property {
                key: "amount".into(),
                value: Value::Float(12.5),
            },
            Property {
                key: "qty".into(),
                value: Value::Int(2),
            },
        ],
        metadata: Metadata {
            ip_address: Some(format!("10.0.{}.{}", i % 7, i % 250)),
            user_agent: None,
            platform: None,
            url: Some(format!(
                "https://shop.example/products/{}?utm_source=x",
                i % 50
            )),
            referrer: None,
        },
    }
}

fn sdk_event(e: &Event) -> sdk::Event {
    let mut s = sdk::Event::new(e.event_type.clone(), e.timestamp).with_id(e.id.clone());
    s.user_id = e.user_id.clone();
    s.session_id = e.session_id.clone();
    s.metadata.ip_address = e.metadata.ip_address.clone();
    s.metadata.url = e.metadata.url.clone();
    s = s
        .with_property("path", format!("/products/{}", e.timestamp / 50 % 50))
        .with_property("amount", 12.5)
        .with_property("qty", 2i64);
    s
}

/// A batch whose timestamps move on every iteration, so windows keep closing.
fn batch(n: usize, clock: &Cell<i64>) -> Vec<Event> {
    let start = clock.get();
    clock.set(start + n as i64 * 50);
    (0..n)
        .map(|i| host_event(i, start + i as i64 * 50))
        .collect()
}

fn load(rt: &Runtime, krate: &str) -> Plugin {
    support::load_plugin(rt, krate, "", Limits::default())
}

fn bench_calls(c: &mut Criterion) {
    let rt = Runtime::new(None).unwrap();
    for (krate, world) in [
        ("enrich-geo", "enricher"),
        ("funnel", "aggregator"),
        ("alerts", "alerter"),
    ] {
        let mut group = c.benchmark_group(format!("{world}/{krate}"));
        for &n in &BATCHES {
            group.throughput(Throughput::Elements(n as u64));
            let mut plugin = load(&rt, krate);
            let clock = Cell::new(0i64);
            group.bench_with_input(BenchmarkId::new("wasm", n), &n, |b, &n| {
                b.iter_batched(
                    || batch(n, &clock),
                    |mut events| {
                        let mut out = PluginOutput::default();
                        let wm = events.last().map_or(0, |e| e.timestamp - 5_000);
                        plugin.process(&mut events, wm, &mut out);
                        (events, out)
                    },
                    BatchSize::SmallInput,
                )
            });
            let clock = Cell::new(0i64);
            group.bench_with_input(BenchmarkId::new("native", n), &n, |b, &n| {
                native_bench(b, krate, n, &clock)
            });
        }
        group.finish();
    }
}

/// The same plugin logic, linked natively and driven like the host drives it
/// (interest filtering; for enrichers, applying the changes).
fn native_bench(b: &mut criterion::Bencher<'_>, krate: &str, n: usize, clock: &Cell<i64>) {
    use sdk::{Aggregator, Alerter, Enricher};
    let settings = sdk::HostSettings {
        allowed_lateness: 0,
        downstream_properties: None,
    };
    let setup = || batch(n, clock).iter().map(sdk_event).collect::<Vec<_>>();
    match krate {
        "enrich-geo" => {
            let (mut p, _) = enrich_geo::EnrichGeo::init("", &settings).unwrap();
            b.iter_batched(
                setup,
                |events| {
                    let changes = p.process(events.clone());
                    sdk::Change::apply(changes, events)
                },
                BatchSize::SmallInput,
            )
        }
        "funnel" => {
            let (mut p, _) = funnel::Funnel::init("", &settings).unwrap();
            b.iter_batched(
                setup,
                |events| {
                    let wm = events.last().map_or(0, |e| e.timestamp - 5_000);
                    p.process(events, wm)
                },
                BatchSize::SmallInput,
            )
        }
        _ => {
            let (mut p, interest) = alerts::Alerts::init("", &settings).unwrap();
            b.iter_batched(
                setup,
                |events| {
                    let wm = events.last().map_or(0, |e| e.timestamp - 5_000);
                    let wanted: Vec<sdk::Event> = events
                        .into_iter()
                        .filter(|e| interest.wants(&e.event_type))
                        .collect();
                    p.process(wanted, wm)
                },
                BatchSize::SmallInput,
            )
        }
    }
}

fn bench_load(c: &mut Criterion) {
    let bytes = std::fs::read(support::guest("funnel")).unwrap();
    let mut group = c.benchmark_group("load/funnel");
    group.sample_size(10);
    group.bench_function("cold", |b| {
        let rt = Runtime::new(None).unwrap();
        b.iter(|| rt.load(&bytes).unwrap())
    });
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(Some(dir.path().to_path_buf())).unwrap();
    rt.load(&bytes).unwrap();
    group.bench_function("cached", |b| b.iter(|| rt.load(&bytes).unwrap()));
    group.finish();
}

criterion_group!(benches, bench_calls, bench_load);
criterion_main!(benches);

//! The in-memory sink behind `/v1/agent/metrics`: Consul's JSON shape, aggregated over
//! ten-second intervals aligned on the wall clock.
//!
//! Each series keeps its two newest intervals; an answer holds the last finished
//! interval (the current one while the sink is younger than one interval), so a new
//! series shows within ten seconds. Counters and samples are summarised per interval
//! (count, sum, min, max, mean, standard deviation, rate per second); gauges report their
//! last value. At most [`MAX_SERIES`] series are kept: past that, new ones are not
//! recorded here (the Prometheus side still has them).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::Key;
use serde::Serialize;

/// Length of one aggregation interval (Consul: 10 s).
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Series kept at most.
pub const MAX_SERIES: usize = 4096;

/// Which kind of series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Sample,
}

/// Count, sum, extremes and squares of what one interval recorded.
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    count: u64,
    sum: f64,
    sum_sq: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn add(&mut self, v: f64) {
        if self.count == 0 {
            self.min = v;
            self.max = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.count += 1;
        self.sum += v;
        self.sum_sq += v * v;
    }
}

/// One series: its interval windows (counters, samples) or its value (gauges).
#[derive(Debug)]
pub(super) struct Series {
    key: Key,
    kind: Kind,
    /// `(interval number, stats)`, the slot chosen by the interval's parity.
    windows: Mutex<[(u64, Stats); 2]>,
    /// A gauge's value as `f64` bits; `u64::MAX` until first set.
    gauge: AtomicU64,
}

const UNSET: u64 = u64::MAX;

impl Series {
    fn new(key: Key, kind: Kind) -> Series {
        Series {
            key,
            kind,
            windows: Mutex::new([(u64::MAX, Stats::default()); 2]),
            gauge: AtomicU64::new(UNSET),
        }
    }

    fn record(&self, v: f64) {
        let now = interval_now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut windows[(now % 2) as usize];
        if slot.0 != now {
            *slot = (now, Stats::default());
        }
        slot.1.add(v);
    }

    fn stats(&self, interval: u64) -> Option<Stats> {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let (n, stats) = windows[(interval % 2) as usize];
        (n == interval && stats.count > 0).then_some(stats)
    }

    fn gauge_value(&self) -> Option<f64> {
        let bits = self.gauge.load(Ordering::Relaxed);
        (bits != UNSET).then(|| f64::from_bits(bits))
    }

    fn gauge_update(&self, f: impl Fn(f64) -> f64) {
        let _ = self
            .gauge
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let old = if bits == UNSET {
                    0.0
                } else {
                    f64::from_bits(bits)
                };
                Some(f(old).to_bits())
            });
    }
}

impl metrics::CounterFn for Series {
    fn increment(&self, value: u64) {
        self.record(value as f64);
    }

    fn absolute(&self, _value: u64) {
        // A counter set from an outside total has no per-interval increments to
        // summarise; only the Prometheus side shows it.
    }
}

impl metrics::GaugeFn for Series {
    fn increment(&self, value: f64) {
        self.gauge_update(|old| old + value);
    }

    fn decrement(&self, value: f64) {
        self.gauge_update(|old| old - value);
    }

    fn set(&self, value: f64) {
        self.gauge.store(value.to_bits(), Ordering::Relaxed);
    }
}

impl metrics::HistogramFn for Series {
    fn record(&self, value: f64) {
        Series::record(self, value);
    }
}

/// The interval number (seconds since the epoch / 10) events are recorded in: read
/// from a clock kept by [`tick`] (every few seconds, and before each answer), so that
/// recording an event reads no clock. An event just after a boundary may count in the
/// interval before it, by up to the time between two ticks.
static CURRENT: AtomicU64 = AtomicU64::new(0);

fn interval_now() -> u64 {
    match CURRENT.load(Ordering::Relaxed) {
        0 => tick(),
        n => n,
    }
}

/// Moves the recording clock to now; returns the current interval number.
pub(super) fn tick() -> u64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let n = secs / INTERVAL.as_secs();
    CURRENT.store(n, Ordering::Relaxed);
    n
}

/// The sink: every series by key.
#[derive(Debug)]
pub(super) struct Inmem {
    series: RwLock<HashMap<Key, Arc<Series>>>,
    /// The interval the sink was created in.
    first: u64,
}

impl Inmem {
    pub(super) fn new() -> Inmem {
        Inmem {
            series: RwLock::new(HashMap::new()),
            first: interval_now(),
        }
    }

    fn get(&self, key: &Key, kind: Kind) -> Option<Arc<Series>> {
        if let Some(s) = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return (s.kind == kind).then(|| s.clone());
        }
        let mut all = self.series.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = all.get(key) {
            return (s.kind == kind).then(|| s.clone());
        }
        if all.len() >= MAX_SERIES {
            return None;
        }
        let s = Arc::new(Series::new(key.clone(), kind));
        all.insert(key.clone(), s.clone());
        Some(s)
    }

    pub(super) fn counter(&self, key: &Key) -> Option<Arc<Series>> {
        self.get(key, Kind::Counter)
    }

    pub(super) fn gauge(&self, key: &Key) -> Option<Arc<Series>> {
        self.get(key, Kind::Gauge)
    }

    pub(super) fn sample(&self, key: &Key) -> Option<Arc<Series>> {
        self.get(key, Kind::Sample)
    }

    /// The last finished interval (the current one while there is only one) in Consul's
    /// JSON shape.
    pub(super) fn summary(&self) -> Summary {
        let now = tick();
        let interval = if now > self.first { now - 1 } else { now };
        let mut summary = Summary {
            timestamp: go_time(interval * INTERVAL.as_secs()),
            gauges: Vec::new(),
            points: Vec::new(),
            counters: Vec::new(),
            samples: Vec::new(),
        };
        let all = self.series.read().unwrap_or_else(|p| p.into_inner());
        for s in all.values() {
            let name = s.key.name().to_string();
            let labels = s
                .key
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            match s.kind {
                Kind::Gauge => {
                    if let Some(value) = s.gauge_value() {
                        summary.gauges.push(GaugeValue {
                            name,
                            value,
                            labels,
                        });
                    }
                }
                Kind::Counter | Kind::Sample => {
                    let Some(stats) = s.stats(interval) else {
                        continue;
                    };
                    let value = SampledValue::from_stats(name, labels, stats);
                    if s.kind == Kind::Counter {
                        summary.counters.push(value);
                    } else {
                        summary.samples.push(value);
                    }
                }
            }
        }
        summary.gauges.sort_by(|a, b| a.name.cmp(&b.name));
        summary.counters.sort_by(|a, b| a.name.cmp(&b.name));
        summary.samples.sort_by(|a, b| a.name.cmp(&b.name));
        summary
    }
}

/// `secs` since the epoch as Go prints a UTC time (`2024-05-01 10:20:30 +0000 UTC`).
fn go_time(secs: u64) -> String {
    let text = catalog::clock::rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
    // `2024-05-01T10:20:30Z` → `2024-05-01 10:20:30 +0000 UTC`
    let body = text.trim_end_matches('Z').replacen('T', " ", 1);
    format!("{body} +0000 UTC")
}

/// `GET /v1/agent/metrics`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Summary {
    /// Start of the interval shown.
    pub timestamp: String,
    /// Gauges, by name.
    pub gauges: Vec<GaugeValue>,
    /// Points (none are recorded; kept for the shape).
    pub points: Vec<serde_json::Value>,
    /// Counters, by name.
    pub counters: Vec<SampledValue>,
    /// Samples and timers (milliseconds), by name.
    pub samples: Vec<SampledValue>,
}

/// A gauge in the JSON answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GaugeValue {
    /// Dotted name.
    pub name: String,
    /// Last value set.
    pub value: f64,
    /// Labels.
    pub labels: HashMap<String, String>,
}

/// A counter or sample summarised over the interval.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SampledValue {
    /// Dotted name.
    pub name: String,
    /// How many times it was recorded.
    pub count: u64,
    /// Sum per second.
    pub rate: f64,
    /// Sum of the values.
    pub sum: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Mean value.
    pub mean: f64,
    /// Sample standard deviation (0 for one value).
    pub stddev: f64,
    /// Labels.
    pub labels: HashMap<String, String>,
}

impl SampledValue {
    fn from_stats(name: String, labels: HashMap<String, String>, s: Stats) -> SampledValue {
        let n = s.count as f64;
        let mean = s.sum / n;
        let stddev = if s.count > 1 {
            ((s.sum_sq - s.sum * s.sum / n) / (n - 1.0)).max(0.0).sqrt()
        } else {
            0.0
        };
        SampledValue {
            name,
            count: s.count,
            rate: s.sum / INTERVAL.as_secs_f64(),
            sum: s.sum,
            min: s.min,
            max: s.max,
            mean,
            stddev,
            labels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::{CounterFn, GaugeFn, HistogramFn};

    #[test]
    fn an_interval_is_summarised_as_consul_does() {
        let sink = Inmem::new();
        let c = sink.counter(&Key::from_name("consul.raft.apply")).unwrap();
        CounterFn::increment(&*c, 1);
        CounterFn::increment(&*c, 3);
        let g = sink
            .gauge(&Key::from_parts(
                "consul.gateway.rtt",
                vec![metrics::Label::new("datacenter", "dc2")],
            ))
            .unwrap();
        GaugeFn::set(&*g, 12.5);
        GaugeFn::increment(&*g, 1.0);
        let t = sink
            .sample(&Key::from_name("consul.dns.domain_query"))
            .unwrap();
        HistogramFn::record(&*t, 2.0);
        let summary = sink.summary();
        // Recorded in the current interval: shown while it is the only one; if the
        // interval rolled over during the test the counters are simply absent.
        if let Some(apply) = summary.counters.first() {
            assert_eq!(apply.name, "consul.raft.apply");
            assert_eq!(
                (apply.count, apply.sum, apply.min, apply.max),
                (2, 4.0, 1.0, 3.0)
            );
            assert!((apply.stddev - 2f64.sqrt()).abs() < 1e-9);
            assert!((apply.rate - 0.4).abs() < 1e-9);
        }
        assert_eq!(summary.gauges.len(), 1);
        assert_eq!(summary.gauges[0].value, 13.5);
        assert_eq!(summary.gauges[0].labels["datacenter"], "dc2");
        let json = serde_json::to_value(&summary).unwrap();
        for field in ["Timestamp", "Gauges", "Points", "Counters", "Samples"] {
            assert!(json.get(field).is_some(), "{field} missing: {json}");
        }
        assert!(json["Timestamp"].as_str().unwrap().ends_with(" +0000 UTC"));
    }

    #[test]
    fn a_name_keeps_its_kind_and_the_sink_is_bounded() {
        let sink = Inmem::new();
        let key = Key::from_name("x");
        assert!(sink.counter(&key).is_some());
        assert!(sink.gauge(&key).is_none(), "one name, one kind");
        for i in 0..MAX_SERIES + 10 {
            let _ = sink.counter(&Key::from_name(format!("n{i}")));
        }
        assert!(sink.counter(&Key::from_name("late")).is_none());
        assert_eq!(go_time(1_714_558_830), "2024-05-01 10:20:30 +0000 UTC");
    }
}

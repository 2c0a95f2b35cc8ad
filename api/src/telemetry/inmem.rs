//! The in-memory sink behind `/v1/agent/metrics` (Consul's JSON shape, aggregated over
//! ten-second intervals aligned on the wall clock), which also keeps the timers and
//! samples Prometheus's answer shows as summaries.
//!
//! Each series keeps its two newest intervals; an answer holds the last finished
//! interval (the current one while the sink is younger than one interval), so a new
//! series shows within ten seconds. Counters and samples are summarised per interval
//! (count, sum, min, max, mean, standard deviation, rate per second); gauges report their
//! last value. At most [`MAX_SERIES`] series are kept: past that, new ones are not
//! recorded here (counters and gauges still reach Prometheus; timers do not).
//!
//! Counters and samples are recorded by every thread that serves a request (one DNS
//! thread per core, the runtime's workers), often into the same series. So that those
//! threads do not fight over one cache line, a series is split into [`shards`] shards,
//! each on its own cache line behind its own lock; a thread always records into the same
//! shard (threads take shards in the order they first record), and readers merge the
//! shards. A sample's shard also counts its values in log-linear buckets (eight per
//! power of two, so a quantile is within 4.5 % of the true value), from which the
//! Prometheus summary's quantiles come.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::Key;
use serde::Serialize;

/// Length of one aggregation interval (Consul: 10 s).
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Series kept at most.
pub const MAX_SERIES: usize = 4096;
/// The quantiles of a Prometheus summary.
pub const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

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

    fn merge(&mut self, other: &Stats) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// Sub-buckets per power of two, as bits.
const SUB_BITS: u32 = 3;
/// The smallest value with its own bucket: 2^-10 ms, about a microsecond.
const MIN_EXP: i32 = -10;
/// Values from 2^17 ms (131 s) up share the last bucket.
const MAX_EXP: i32 = 17;
/// Buckets: one below the range, the range, one above.
const BUCKETS: usize = (((MAX_EXP - MIN_EXP) as usize) << SUB_BITS) + 2;

/// The bucket `v` counts in: its power of two and the next [`SUB_BITS`] bits of its
/// mantissa. Negative values, NaN and values below the range go to bucket 0.
fn bucket(v: f64) -> usize {
    if v.is_nan() || v < f64::powi(2.0, MIN_EXP) {
        return 0;
    }
    let bits = v.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32 - 1023;
    if exp >= MAX_EXP {
        return BUCKETS - 1;
    }
    let sub = ((bits >> (52 - SUB_BITS)) & ((1 << SUB_BITS) - 1)) as usize;
    1 + (((exp - MIN_EXP) as usize) << SUB_BITS) + sub
}

/// The value a bucket stands for: the middle of its range (0 below the range, infinity
/// above it; the caller clamps to the interval's minimum and maximum).
fn bucket_value(i: usize) -> f64 {
    if i == 0 {
        return 0.0;
    }
    if i >= BUCKETS - 1 {
        return f64::INFINITY;
    }
    let j = i - 1;
    let base = f64::powi(2.0, (j >> SUB_BITS) as i32 + MIN_EXP);
    let step = base / f64::from(1u32 << SUB_BITS);
    base + step * ((j & ((1 << SUB_BITS) - 1)) as f64 + 0.5)
}

/// What one shard saw in one interval.
#[derive(Debug, Clone)]
struct Window {
    interval: u64,
    stats: Stats,
    /// Samples only, allocated with the window's first value.
    buckets: Option<Box<[u32; BUCKETS]>>,
}

impl Window {
    const EMPTY: Window = Window {
        interval: u64::MAX,
        stats: Stats {
            count: 0,
            sum: 0.0,
            sum_sq: 0.0,
            min: 0.0,
            max: 0.0,
        },
        buckets: None,
    };
}

/// One shard of a series: its two newest intervals (the slot chosen by the interval's
/// parity), and the count and sum since the series began (Prometheus's `_count` and
/// `_sum`).
#[derive(Debug)]
struct ShardState {
    windows: [Window; 2],
    total_count: u64,
    total_sum: f64,
}

/// A shard on a cache line of its own.
#[derive(Debug)]
#[repr(align(128))]
struct Shard(Mutex<ShardState>);

/// How many shards a series has: twice the cores, from 2 to 16.
pub(super) fn shards() -> usize {
    static SHARDS: LazyLock<usize> = LazyLock::new(|| {
        std::thread::available_parallelism()
            .map_or(2, |n| n.get() * 2)
            .clamp(2, 16)
    });
    *SHARDS
}

/// This thread's shard number (before the modulo): taken on its first record.
fn my_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    MINE.with(|mine| {
        if mine.get() == usize::MAX {
            mine.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        mine.get()
    })
}

/// One series: its sharded interval windows (counters, samples) or its value (gauges).
#[derive(Debug)]
pub(super) struct Series {
    key: Key,
    kind: Kind,
    /// Empty for gauges.
    shards: Box<[Shard]>,
    /// A gauge's value as `f64` bits; `u64::MAX` until first set.
    gauge: AtomicU64,
}

const UNSET: u64 = u64::MAX;

/// What the shards of a sample saw over some intervals, merged.
struct Merged {
    stats: Stats,
    buckets: Box<[u32; BUCKETS]>,
    total_count: u64,
    total_sum: f64,
}

impl Merged {
    /// The `q` quantile, from the buckets, within the values' extremes.
    fn quantile(&self, q: f64) -> f64 {
        if self.stats.count == 0 {
            return f64::NAN;
        }
        let rank = ((q * self.stats.count as f64).ceil() as u64).max(1);
        if rank >= self.stats.count {
            return self.stats.max;
        }
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return bucket_value(i).clamp(self.stats.min, self.stats.max);
            }
        }
        self.stats.max
    }
}

impl Series {
    fn new(key: Key, kind: Kind) -> Series {
        let shards = if kind == Kind::Gauge { 0 } else { shards() };
        Series {
            key,
            kind,
            shards: (0..shards)
                .map(|_| {
                    Shard(Mutex::new(ShardState {
                        windows: [Window::EMPTY, Window::EMPTY],
                        total_count: 0,
                        total_sum: 0.0,
                    }))
                })
                .collect(),
            gauge: AtomicU64::new(UNSET),
        }
    }

    fn record(&self, v: f64) {
        let Some(shard) = self.shards.get(my_shard() % self.shards.len().max(1)) else {
            return;
        };
        let now = interval_now();
        let mut state = shard.0.lock().unwrap_or_else(|p| p.into_inner());
        state.total_count += 1;
        state.total_sum += v;
        let window = &mut state.windows[(now % 2) as usize];
        if window.interval != now {
            window.interval = now;
            window.stats = Stats::default();
            if let Some(b) = &mut window.buckets {
                b.fill(0);
            }
        }
        window.stats.add(v);
        if self.kind == Kind::Sample {
            let buckets = window.buckets.get_or_insert_with(|| Box::new([0; BUCKETS]));
            let i = bucket(v);
            buckets[i] = buckets[i].saturating_add(1);
        }
    }

    /// Every shard's windows of `intervals`, merged.
    fn merged(&self, intervals: &[u64]) -> Merged {
        let mut merged = Merged {
            stats: Stats::default(),
            buckets: Box::new([0; BUCKETS]),
            total_count: 0,
            total_sum: 0.0,
        };
        for shard in &self.shards {
            let state = shard.0.lock().unwrap_or_else(|p| p.into_inner());
            merged.total_count += state.total_count;
            merged.total_sum += state.total_sum;
            for window in &state.windows {
                if !intervals.contains(&window.interval) {
                    continue;
                }
                merged.stats.merge(&window.stats);
                if let Some(b) = &window.buckets {
                    for (m, n) in merged.buckets.iter_mut().zip(b.iter()) {
                        *m = m.saturating_add(*n);
                    }
                }
            }
        }
        merged
    }

    fn stats(&self, interval: u64) -> Option<Stats> {
        let stats = self.merged(&[interval]).stats;
        (stats.count > 0).then_some(stats)
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
    /// Help texts of samples, by name (Prometheus's `# HELP` lines).
    help: RwLock<HashMap<String, String>>,
}

impl Inmem {
    pub(super) fn new() -> Inmem {
        Inmem {
            series: RwLock::new(HashMap::new()),
            first: interval_now(),
            help: RwLock::new(HashMap::new()),
        }
    }

    /// Keeps the help text of the sample `name`.
    pub(super) fn describe(&self, name: &str, help: &str) {
        self.help
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), help.to_string());
    }

    /// The samples as Prometheus summaries, appended to `out`: the quantiles over the
    /// current interval and the one before it (ten to twenty seconds), `_sum` and
    /// `_count` since the series began. Families by name, label sets in order.
    pub(super) fn render_prometheus(&self, out: &mut String) {
        let now = interval_now();
        let intervals = [now, now.saturating_sub(1)];
        let mut rows: Vec<(String, String, Merged)> = {
            let all = self.series.read().unwrap_or_else(|p| p.into_inner());
            all.values()
                .filter(|s| s.kind == Kind::Sample)
                .map(|s| {
                    let name = prometheus_name(s.key.name());
                    let labels = s
                        .key
                        .labels()
                        .map(|l| {
                            format!(
                                "{}=\"{}\"",
                                prometheus_label_key(l.key()),
                                escape_label_value(l.value())
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(",");
                    (name, labels, s.merged(&intervals))
                })
                .collect()
        };
        rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let help = self.help.read().unwrap_or_else(|p| p.into_inner());
        let help: HashMap<String, &str> = help
            .iter()
            .map(|(k, v)| (prometheus_name(k), v.as_str()))
            .collect();
        let mut family = None;
        for (name, labels, merged) in &rows {
            if family != Some(name) {
                if family.is_some() {
                    out.push('\n');
                }
                family = Some(name);
                if let Some(text) = help.get(name) {
                    let _ = writeln!(out, "# HELP {name} {}", escape_help(text));
                }
                let _ = writeln!(out, "# TYPE {name} summary");
            }
            let sep = if labels.is_empty() { "" } else { "," };
            for q in QUANTILES {
                let _ = writeln!(
                    out,
                    "{name}{{{labels}{sep}quantile=\"{q}\"}} {}",
                    prometheus_value(merged.quantile(q))
                );
            }
            let braces = |l: &str| {
                if l.is_empty() {
                    String::new()
                } else {
                    format!("{{{l}}}")
                }
            };
            let _ = writeln!(
                out,
                "{name}_sum{} {}",
                braces(labels),
                prometheus_value(merged.total_sum)
            );
            let _ = writeln!(out, "{name}_count{} {}", braces(labels), merged.total_count);
        }
        if family.is_some() {
            out.push('\n');
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

/// A metric name as Prometheus allows it: `[a-zA-Z_:][a-zA-Z0-9_:]*`, anything else
/// replaced by `_` (`consul.prepared-query.apply` → `consul_prepared_query_apply`).
fn prometheus_name(name: &str) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            let ok =
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit());
            if ok { c } else { '_' }
        })
        .collect()
}

/// A label name as Prometheus allows it: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn prometheus_label_key(key: &str) -> String {
    key.chars()
        .enumerate()
        .map(|(i, c)| {
            let ok = c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit());
            if ok { c } else { '_' }
        })
        .collect()
}

/// A label value with `\`, `"` and line feeds escaped.
fn escape_label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A help text with `\` and line feeds escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as the text format writes it (`NaN`, `+Inf`).
fn prometheus_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
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

    #[test]
    fn buckets_cover_the_range_in_order_and_quantiles_are_close() {
        assert_eq!(bucket(-1.0), 0);
        assert_eq!(bucket(f64::NAN), 0);
        assert_eq!(bucket(1e-6), 0);
        assert_eq!(bucket(1e9), BUCKETS - 1);
        assert_eq!(bucket(f64::INFINITY), BUCKETS - 1);
        let mut last = 0;
        let mut v = 0.001;
        while v < 100_000.0 {
            let b = bucket(v);
            assert!(b >= last, "{v}");
            let mid = bucket_value(b);
            assert!(
                (mid - v).abs() / v < 0.07,
                "{v} in bucket {b} stands as {mid}"
            );
            last = b;
            v *= 1.01;
        }
        // 1..=1000 ms, one of each: the quantiles are within a bucket's half width.
        let s = Series::new(Key::from_name("t"), Kind::Sample);
        for i in 1..=1000 {
            s.record(f64::from(i));
        }
        let now = interval_now();
        let m = s.merged(&[now, now - 1]);
        assert_eq!(m.stats.count, 1000);
        assert_eq!(m.total_count, 1000);
        assert_eq!(m.total_sum, 500_500.0);
        for (q, want) in [(0.5, 500.0), (0.9, 900.0), (0.99, 990.0)] {
            let got = m.quantile(q);
            assert!((got - want).abs() / want < 0.05, "q{q}: {got}");
        }
        assert_eq!(m.quantile(1.0), 1000.0, "clamped to the maximum");
        let one = Series::new(Key::from_name("one"), Kind::Sample);
        one.record(0.3);
        let m = one.merged(&[now, now - 1]);
        assert_eq!(m.quantile(0.5), 0.3, "one value is exact");
    }

    #[test]
    fn threads_record_into_their_own_shards_and_readers_see_all() {
        let s = Arc::new(Series::new(Key::from_name("t"), Kind::Sample));
        std::thread::scope(|scope| {
            for t in 0..8 {
                let s = s.clone();
                scope.spawn(move || {
                    for i in 0..1000 {
                        s.record(f64::from(t * 1000 + i));
                    }
                });
            }
        });
        let now = interval_now();
        let m = s.merged(&[now, now - 1]);
        assert_eq!(m.total_count, 8000);
        assert_eq!(m.total_sum, (0..8000).map(f64::from).sum::<f64>());
        assert_eq!((m.stats.min, m.stats.max), (0.0, 7999.0));
        let used = s
            .shards
            .iter()
            .filter(|sh| sh.0.lock().unwrap().total_count > 0)
            .count();
        assert!(used >= 2.min(shards()), "{used} shards used");
    }

    #[test]
    fn samples_render_as_prometheus_summaries() {
        let sink = Inmem::new();
        sink.describe("consul.dns.domain_query", "Time to answer \\ a query.");
        let a = sink
            .sample(&Key::from_parts(
                "consul.dns.domain_query",
                vec![metrics::Label::new("node", "a\"b")],
            ))
            .unwrap();
        HistogramFn::record(&*a, 2.0);
        HistogramFn::record(&*a, 4.0);
        let _idle = sink
            .sample(&Key::from_name("consul.prepared-query.apply"))
            .unwrap();
        let _counter = sink.counter(&Key::from_name("consul.raft.apply")).unwrap();
        let mut text = String::new();
        sink.render_prometheus(&mut text);
        let want = "\
# HELP consul_dns_domain_query Time to answer \\\\ a query.
# TYPE consul_dns_domain_query summary
consul_dns_domain_query{node=\"a\\\"b\",quantile=\"0.5\"} 2.125
consul_dns_domain_query{node=\"a\\\"b\",quantile=\"0.9\"} 4
consul_dns_domain_query{node=\"a\\\"b\",quantile=\"0.99\"} 4
consul_dns_domain_query_sum{node=\"a\\\"b\"} 6
consul_dns_domain_query_count{node=\"a\\\"b\"} 2

# TYPE consul_prepared_query_apply summary
consul_prepared_query_apply{quantile=\"0.5\"} NaN
consul_prepared_query_apply{quantile=\"0.9\"} NaN
consul_prepared_query_apply{quantile=\"0.99\"} NaN
consul_prepared_query_apply_sum 0
consul_prepared_query_apply_count 0

";
        assert_eq!(text, want);
    }
}

//! What a run measured: two latency histograms, outcome counts, a per-second series.
//!
//! Latency is recorded twice, as wrk2 does: *corrected* from the moment the request was scheduled
//! to be sent (so time spent waiting behind a stalled server counts, which is what a user would
//! feel), and *uncorrected* from the moment it was actually sent (the server's service time as a
//! closed-loop tool reports it). The difference between the two is coordinated omission.
//!
//! Memory stays constant whatever the run length: the histograms have fixed buckets (HdrHistogram,
//! 3 significant digits, 1 us to 1 hour), and each finished second keeps only a summary row.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency tracked, in microseconds (one hour); longer values are clamped.
const MAX_MICROS: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy HdrHistogram's rules (low >= 1, high >= 2 * low,
    // 3 significant digits), so construction cannot fail.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("constant histogram bounds are valid")
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx or 3xx.
    Ok,
    /// 4xx: the server refused it.
    Client4xx,
    /// 5xx: the server failed.
    Server5xx,
    /// Could not connect: certainly not processed.
    Connect,
    /// The connection broke after sending: unknown whether the server acted on it.
    Unknown,
    /// No answer within the timeout: unknown whether the server acted on it.
    Timeout,
}

impl Outcome {
    /// From a status code.
    pub fn from_status(status: u16) -> Self {
        match status {
            200..=399 => Outcome::Ok,
            400..=499 => Outcome::Client4xx,
            _ => Outcome::Server5xx,
        }
    }
}

/// Counts of a run. Always `scheduled = sent + dropped`, and `sent = ok + failed + unknown`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    /// Requests the schedule called for (after warm-up).
    pub scheduled: u64,
    /// Requests actually sent.
    pub sent: u64,
    /// Answered 2xx/3xx.
    pub ok: u64,
    /// Answered 4xx/5xx, or never sent because the connection could not be opened.
    pub failed: u64,
    /// Sent, but no answer: the connection broke or the timeout passed.
    pub unknown: u64,
    /// Scheduled, but not sent before the run ended (the load generator fell too far behind).
    pub dropped: u64,
    /// Of `failed`: 4xx answers.
    pub failed_4xx: u64,
    /// Of `failed`: 5xx answers.
    pub failed_5xx: u64,
    /// Of `failed`: connections that could not be opened.
    pub failed_connect: u64,
    /// Of `unknown`: requests that timed out.
    pub timed_out: u64,
    /// Sends that left more than 1 ms after their scheduled time.
    pub behind_schedule: u64,
}

/// Outcomes of one kind of operation.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpCounts {
    /// 2xx/3xx.
    pub ok: u64,
    /// 4xx, 5xx, or no connection.
    pub failed: u64,
    /// No answer (timeout, broken connection).
    pub unknown: u64,
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    /// Seconds since measurement started.
    pub t: u64,
    /// Successful responses completed in this second.
    pub ok: u64,
    /// Failed or unknown outcomes completed in this second.
    pub errors: u64,
    /// Corrected latency percentiles of this second's completions (ms).
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// See `p50_ms`.
    pub max_ms: f64,
    /// Responses with `x-cache: hit` in this second.
    pub cache_hits: u64,
    /// Responses with `x-cache: miss`.
    pub cache_misses: u64,
    /// Responses with `x-cache: bypass` (the cache skipped: failing, or not holding that query).
    pub cache_bypasses: u64,
}

/// `x-cache` counts of the second being collected.
#[derive(Debug, Default, Clone, Copy)]
struct CacheSecond {
    hits: u64,
    misses: u64,
    bypasses: u64,
}

/// Collects one run's measurements.
pub struct Recorder {
    corrected: Histogram<u64>,
    uncorrected: Histogram<u64>,
    send_lag: Histogram<u64>,
    /// Counts so far.
    pub counts: Counts,
    current: Histogram<u64>,
    current_t: u64,
    current_ok: u64,
    current_errors: u64,
    current_cache: CacheSecond,
    seconds: Vec<Second>,
    /// `x-cache` header values seen on successful responses.
    pub cache_hits: u64,
    /// See `cache_hits`.
    pub cache_misses: u64,
    /// An edge PoP's `x-cache` values (upper case: HIT, MISS, STALE, UPDATING, REVALIDATED,
    /// PASS), counted apart from the app cache's lower-case ones.
    pub edge: std::collections::BTreeMap<String, u64>,
    operations: std::collections::BTreeMap<&'static str, OpCounts>,
    /// Corrected latency of each operation's successful requests, and of a write's by how many
    /// shards it spanned (`favorite, 2 shards`; see [`Recorder::record_latency`]).
    latency: std::collections::BTreeMap<String, Histogram<u64>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            corrected: histogram(),
            uncorrected: histogram(),
            send_lag: histogram(),
            counts: Counts::default(),
            current: histogram(),
            current_t: 0,
            current_ok: 0,
            current_errors: 0,
            current_cache: CacheSecond::default(),
            seconds: Vec::new(),
            cache_hits: 0,
            cache_misses: 0,
            edge: Default::default(),
            operations: std::collections::BTreeMap::new(),
            latency: std::collections::BTreeMap::new(),
        }
    }
}

fn micros(d: std::time::Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_MICROS)
}

impl Recorder {
    /// Records one sent request's outcome. `t` is the completion time in whole seconds since
    /// measurement began; `corrected` runs from the scheduled time, `uncorrected` from the send.
    pub fn record(
        &mut self,
        t: u64,
        operation: &'static str,
        outcome: Outcome,
        corrected: std::time::Duration,
        uncorrected: std::time::Duration,
    ) {
        self.roll_to(t);
        self.counts.sent += 1;
        let per_op = self.operations.entry(operation).or_default();
        match outcome {
            Outcome::Ok => per_op.ok += 1,
            Outcome::Unknown | Outcome::Timeout => per_op.unknown += 1,
            _ => per_op.failed += 1,
        }
        match outcome {
            Outcome::Ok => self.counts.ok += 1,
            Outcome::Client4xx => {
                self.counts.failed += 1;
                self.counts.failed_4xx += 1;
            }
            Outcome::Server5xx => {
                self.counts.failed += 1;
                self.counts.failed_5xx += 1;
            }
            Outcome::Connect => {
                self.counts.failed += 1;
                self.counts.failed_connect += 1;
            }
            Outcome::Unknown => self.counts.unknown += 1,
            Outcome::Timeout => {
                self.counts.unknown += 1;
                self.counts.timed_out += 1;
            }
        }
        if outcome == Outcome::Ok {
            self.current_ok += 1;
        } else {
            self.current_errors += 1;
        }
        let c = micros(corrected);
        let _ = self.corrected.record(c);
        let _ = self.uncorrected.record(micros(uncorrected));
        let _ = self.current.record(c);
    }

    /// Records a successful request's corrected latency under its operation, and, when the
    /// answer said how many shards the write spanned (`x-shards`), under `<operation>, <n>
    /// shard(s)` as well: the price of a two-phase commit against a local one, same load.
    pub fn record_latency(
        &mut self,
        operation: &'static str,
        shards: Option<u8>,
        corrected: std::time::Duration,
    ) {
        let c = micros(corrected);
        let _ = self
            .latency
            .entry(operation.to_owned())
            .or_insert_with(histogram)
            .record(c);
        if let Some(n) = shards {
            let key = format!("{operation}, {n} shard{}", if n == 1 { "" } else { "s" });
            let _ = self.latency.entry(key).or_insert_with(histogram).record(c);
        }
    }

    /// Counts a successful response's `x-cache` header (in the totals and in its second; call
    /// after [`Recorder::record`] for the same response).
    pub fn record_cache(&mut self, header: Option<&str>) {
        match header {
            Some("hit") => {
                self.cache_hits += 1;
                self.current_cache.hits += 1;
            }
            Some("miss") => {
                self.cache_misses += 1;
                self.current_cache.misses += 1;
            }
            Some("bypass") => self.current_cache.bypasses += 1,
            _ => {}
        }
    }

    /// Counts a successful response's edge `x-cache` value (stage 6 on). Only the short
    /// upper-case words an edge sends are kept, so a stray header cannot grow the map.
    pub fn record_edge(&mut self, header: Option<&str>) {
        if let Some(edge) =
            header.filter(|e| e.len() <= 16 && e.bytes().all(|b| b.is_ascii_uppercase()))
        {
            *self.edge.entry(edge.to_owned()).or_default() += 1;
        }
    }

    /// Records how late a send left compared with its schedule.
    pub fn record_send_lag(&mut self, lag: std::time::Duration) {
        if lag > std::time::Duration::from_millis(1) {
            self.counts.behind_schedule += 1;
        }
        let _ = self.send_lag.record(micros(lag));
    }

    fn roll_to(&mut self, t: u64) {
        while t > self.current_t {
            self.seconds.push(Second {
                t: self.current_t,
                ok: self.current_ok,
                errors: self.current_errors,
                p50_ms: ms(self.current.value_at_quantile(0.5)),
                p99_ms: ms(self.current.value_at_quantile(0.99)),
                max_ms: ms(self.current.max()),
                cache_hits: self.current_cache.hits,
                cache_misses: self.current_cache.misses,
                cache_bypasses: self.current_cache.bypasses,
            });
            self.current_cache = CacheSecond::default();
            self.current.reset();
            self.current_ok = 0;
            self.current_errors = 0;
            self.current_t += 1;
        }
    }

    /// Closes the series at `seconds` and returns the summary.
    pub fn finish(mut self, seconds: u64) -> Summary {
        self.roll_to(seconds);
        Summary {
            corrected: percentiles(&self.corrected),
            uncorrected: percentiles(&self.uncorrected),
            send_lag: percentiles(&self.send_lag),
            curve: curve(&self.corrected),
            counts: self.counts,
            seconds: self.seconds,
            cache_hits: self.cache_hits,
            cache_misses: self.cache_misses,
            edge: self.edge,
            operations: self
                .operations
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            operation_latency: self
                .latency
                .iter()
                .map(|(k, h)| {
                    (
                        k.clone(),
                        OpLatency {
                            n: h.len(),
                            p50_ms: ms(h.value_at_quantile(0.50)),
                            p99_ms: ms(h.value_at_quantile(0.99)),
                        },
                    )
                })
                .collect(),
        }
    }
}

/// Latency of one operation's successful requests (corrected, from the scheduled send).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct OpLatency {
    /// Requests.
    pub n: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

/// A finished run's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Latency from scheduled send time.
    pub corrected: Percentiles,
    /// Latency from actual send time.
    pub uncorrected: Percentiles,
    /// How late sends left compared with their schedule.
    pub send_lag: Percentiles,
    /// The corrected latency distribution as (percentile, ms) points, for the HDR chart.
    pub curve: Vec<(f64, f64)>,
    /// Counts.
    pub counts: Counts,
    /// Per-second series.
    pub seconds: Vec<Second>,
    /// `x-cache: hit` responses.
    pub cache_hits: u64,
    /// `x-cache: miss` responses.
    pub cache_misses: u64,
    /// An edge PoP's `x-cache` values, counted.
    pub edge: std::collections::BTreeMap<String, u64>,
    /// Outcomes per operation kind (`read_article`, `fetch_media`, ...).
    pub operations: std::collections::BTreeMap<String, OpCounts>,
    /// Latency per operation kind, and per shards spanned (see [`Recorder::record_latency`]).
    pub operation_latency: std::collections::BTreeMap<String, OpLatency>,
}

fn ms(micros: u64) -> f64 {
    (micros as f64 / 1000.0 * 1000.0).round() / 1000.0
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        p50: ms(h.value_at_quantile(0.5)),
        p90: ms(h.value_at_quantile(0.9)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
        mean: (h.mean() / 1000.0 * 1000.0).round() / 1000.0,
    }
}

/// Points of the percentile curve: 0 to 99.999 on a log scale of 1/(1-p), as HDR plots do.
fn curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points = Vec::new();
    let mut p: f64 = 0.0;
    while p < 0.99999 {
        points.push(((p * 100_000.0).round() / 1000.0, ms(h.value_at_quantile(p))));
        // Ten points per decade of 1/(1-p).
        p = 1.0 - (1.0 - p) / 10f64.powf(0.1);
    }
    points.push((100.0, ms(h.max())));
    points
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_add_up_and_seconds_roll() {
        let mut r = Recorder::default();
        r.record(
            0,
            "test",
            Outcome::Ok,
            Duration::from_millis(5),
            Duration::from_millis(1),
        );
        r.record(
            0,
            "test",
            Outcome::Server5xx,
            Duration::from_millis(7),
            Duration::from_millis(2),
        );
        r.record(
            2,
            "test",
            Outcome::Timeout,
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let s = r.finish(3);
        assert_eq!(s.counts.sent, 3);
        assert_eq!(s.counts.ok + s.counts.failed + s.counts.unknown, 3);
        assert_eq!(s.counts.timed_out, 1);
        assert_eq!(s.seconds.len(), 3);
        assert_eq!(s.seconds[0].ok, 1);
        assert_eq!(s.seconds[0].errors, 1);
        assert_eq!(s.seconds[1].ok + s.seconds[1].errors, 0);
        assert!(s.corrected.max >= 999.0);
        assert_eq!(s.curve.last().map(|p| p.0), Some(100.0));
    }
}

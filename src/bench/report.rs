//! The figures of a run, as a readable table or one JSON object.

use std::io::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::connect::ServerKind;

/// Every figure of a load run. Field names are the `--json` output's, so they are kept stable.
#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub mode: &'static str,
    pub url: String,
    /// `wschat` (JSON mode) or `relay` (anything else, `wschat serve --raw` included).
    pub server: &'static str,
    pub receivers: usize,
    pub publishers: usize,
    pub rooms: usize,
    /// Messages per second asked for, all publishers together; `null` for max.
    pub rate: Option<f64>,
    /// Length of each message's text, in bytes.
    pub size: usize,
    pub duration_s: f64,
    pub source_addresses: usize,
    pub connect_s: f64,
    /// How long the publishers really sent.
    pub sending_s: f64,
    pub messages_sent: u64,
    pub messages_per_s: f64,
    pub expected_deliveries: u64,
    /// First receipts of expected messages.
    pub deliveries: u64,
    /// `deliveries / expected_deliveries`.
    pub delivery_ratio: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Tokens that reached a receiver outside the publisher's room, or named no sent message.
    pub unexpected: u64,
    /// Frames without a token (notices, welcomes).
    pub other_frames: u64,
    /// Deliveries per second from the first send to the last receipt.
    pub deliveries_per_s: f64,
    pub latency_ms: Latencies,
    /// How far a publisher fell behind its schedule, at worst (fixed rates).
    pub max_send_lag_ms: f64,
    /// Receivers whose connection ended before the run did.
    pub receivers_closed: u64,
    pub publisher_errors: u64,
    /// The first of those endings or errors.
    pub first_error: Option<String>,
    /// Stopped early by Ctrl-C or SIGTERM.
    pub interrupted: bool,
    /// The messages per second the server allows one connection (`x-wschat-limits`), when it
    /// says; 0: no limit.
    pub server_rate_limit: Option<f64>,
    /// The burst it allows before that rate applies.
    pub server_burst: Option<u32>,
    /// Whether the publishers were asked for more than the server's rate limit allows them.
    pub rate_limited: bool,
}

/// End-to-end latency, send to receipt, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latencies {
    pub samples: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// The distribution as `[ms, fraction]` pairs, `fraction` being the share of deliveries at
    /// or below `ms`: enough points (at most [`CDF_MAX_POINTS`]) to draw it smoothly both at
    /// the median and in the tail, the last one `[max, 1.0]`. Empty when nothing was delivered.
    pub cdf: Vec<[f64; 2]>,
}

impl Latencies {
    /// From a histogram of microseconds.
    pub fn from_micros(histogram: &Histogram<u64>) -> Latencies {
        let ms = |micros: u64| micros as f64 / 1000.0;
        let at = |q: f64| ms(histogram.value_at_quantile(q));
        Latencies {
            samples: histogram.len(),
            mean: histogram.mean() / 1000.0,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: ms(histogram.max()),
            cdf: cdf(histogram),
        }
    }
}

/// Deepest tail step of the CDF: quantiles go to 1 - 10^-(CDF_TAIL_TIERS + 1), e.g. 0.999999.
const CDF_TAIL_TIERS: u32 = 4;

/// At most this many points in a CDF: the percentiles, nine per tail tier, and the maximum.
pub const CDF_MAX_POINTS: usize = 100 + 9 * CDF_TAIL_TIERS as usize + 1;

/// The quantiles a CDF is sampled at, ascending: 0.00 to 0.99 in steps of 0.01 (the body),
/// then 0.991..0.999, 0.9991..0.9999 and so on (each tier a tenth of the one before, so the
/// tail is as well drawn as the median on a scale of nines). The maximum is added apart.
fn cdf_quantiles() -> impl Iterator<Item = f64> {
    let body = (0..100).map(|i| f64::from(i) / 100.0);
    let tail = (1..=CDF_TAIL_TIERS).flat_map(|tier| {
        // Tier 1 is (990 + j) / 1000, tier 2 (9990 + j) / 10000, ...: exact integers divided
        // once, so no step accumulates rounding.
        let scale = 10u32.pow(tier + 2);
        (1..=9).map(move |j| f64::from(scale - 10 + j) / f64::from(scale))
    });
    body.chain(tail)
}

/// The distribution of a histogram of microseconds as `[ms, fraction]` pairs: for each of
/// [`cdf_quantiles`], the highest value of the bucket that quantile falls in and the share of
/// samples in that bucket or below it (the real share, not the quantile asked for), each value
/// once; then `[max, 1.0]`. Non-decreasing in both, since buckets are taken in order.
fn cdf(histogram: &Histogram<u64>) -> Vec<[f64; 2]> {
    let total = histogram.len();
    if total == 0 {
        return Vec::new();
    }
    let max = histogram.max();
    let mut points: Vec<[f64; 2]> = Vec::with_capacity(CDF_MAX_POINTS);
    let mut last_value = None;
    for q in cdf_quantiles() {
        let value = histogram.highest_equivalent(histogram.value_at_quantile(q));
        if value >= max {
            break;
        }
        if last_value != Some(value) {
            let below = histogram.count_between(0, value);
            points.push([value as f64 / 1000.0, below as f64 / total as f64]);
            last_value = Some(value);
        }
    }
    points.push([max as f64 / 1000.0, 1.0]);
    points
}

/// The figures of an `--idle` run.
#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub mode: &'static str,
    pub url: String,
    pub server: Option<&'static str>,
    pub requested: usize,
    pub opened: usize,
    pub open_at_end: usize,
    pub source_addresses: usize,
    pub connect_s: f64,
    pub held_s: f64,
    pub interrupted: bool,
}

pub fn server_name(kind: ServerKind) -> &'static str {
    match kind {
        ServerKind::Wschat => "wschat",
        ServerKind::Relay => "relay",
    }
}

/// Prints a report as one JSON object on a line.
pub fn print_json(report: &impl Serialize) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, report)?;
    writeln!(out)?;
    out.flush()
}

/// Prints a load run's table.
pub fn print_table(r: &LoadReport) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(table(r).as_bytes())?;
    out.flush()
}

fn table(r: &LoadReport) -> String {
    let plural = |n: usize, one: &str, many: &str| {
        format!("{} {}", group(n as u64), if n == 1 { one } else { many })
    };
    let server = match r.server {
        "wschat" => "wschat server, JSON mode",
        _ => "relay",
    };
    let rate = match r.rate {
        Some(rate) => format!("{} msgs/s", decimal(rate)),
        None => "max rate".to_owned(),
    };
    let mut lines = vec![
        format!("wschat bench: {} ({server})", r.url),
        format!(
            "  connections   {}, {}, {} (connected in {:.2} s{})",
            plural(r.receivers, "receiver", "receivers"),
            plural(r.publishers, "publisher", "publishers"),
            plural(r.rooms, "room", "rooms"),
            r.connect_s,
            if r.source_addresses > 1 {
                format!(", from {} source addresses", r.source_addresses)
            } else {
                String::new()
            }
        ),
        format!(
            "  load          {rate}, {}-byte messages, for {:.1} s{}",
            r.size,
            r.duration_s,
            if (r.sending_s - r.duration_s).abs() > 0.05 * r.duration_s.max(0.1) {
                format!(" (asked); the publishers sent for {:.1} s", r.sending_s)
            } else {
                String::new()
            }
        ),
        format!(
            "  sent          {} messages ({}/s)",
            group(r.messages_sent),
            decimal(r.messages_per_s)
        ),
        format!(
            "  delivered     {} of {} ({:.3}%)",
            group(r.deliveries),
            group(r.expected_deliveries),
            r.delivery_ratio * 100.0
        ),
        format!(
            "                lost {}, duplicated {}, out of order {}",
            group(r.lost),
            group(r.duplicated),
            group(r.out_of_order)
        ),
        format!(
            "  throughput    {} deliveries/s",
            group(r.deliveries_per_s.round() as u64)
        ),
        format!(
            "  latency (ms)  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            r.latency_ms.p50,
            r.latency_ms.p90,
            r.latency_ms.p99,
            r.latency_ms.p999,
            r.latency_ms.max
        ),
    ];
    if r.unexpected > 0 {
        lines.push(format!(
            "  unexpected    {} tokens outside their room (does the server honour ?room=?)",
            group(r.unexpected)
        ));
    }
    if r.rate.is_some() && r.max_send_lag_ms >= 10.0 {
        lines.push(format!(
            "  behind        publishers fell up to {:.1} ms behind the rate",
            r.max_send_lag_ms
        ));
    }
    if r.receivers_closed > 0 || r.publisher_errors > 0 {
        lines.push(format!(
            "  closed early  {} receivers, {} publishers{}",
            group(r.receivers_closed),
            group(r.publisher_errors),
            r.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        ));
    }
    if r.rate_limited {
        lines.push(format!(
            "  rate limit    the server allows each connection {} msgs/s (burst {}), so these\n                \
             figures measure that limit: lift it with 'wschat serve --rate 0'",
            decimal(r.server_rate_limit.unwrap_or_default()),
            r.server_burst.unwrap_or_default()
        ));
    }
    if r.interrupted {
        lines.push("  interrupted   the figures cover the run until Ctrl-C".to_owned());
    }
    lines.push(String::new());
    lines.join("\n")
}

/// `1234567` as `1,234,567`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate: grouped when large, one decimal when small.
fn decimal(x: f64) -> String {
    if x >= 100.0 || x.fract() == 0.0 {
        group(x.round() as u64)
    } else {
        format!("{x:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(decimal(0.5), "0.5");
        assert_eq!(decimal(200.0), "200");
        assert_eq!(decimal(1234.56), "1,235");
    }

    #[test]
    fn latencies_come_from_microseconds() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let l = Latencies::from_micros(&h);
        assert_eq!(l.samples, 1000);
        assert!((l.p50 - 0.5).abs() < 0.01, "{}", l.p50);
        assert!((l.max - 1.0).abs() < 0.01, "{}", l.max);
    }

    fn histogram(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in values {
            h.record(v).unwrap();
        }
        h
    }

    /// The properties every CDF must have: bounded, non-decreasing in both, `[max, 1.0]` last.
    fn assert_well_formed(cdf: &[[f64; 2]], max_ms: f64) {
        assert!(!cdf.is_empty());
        assert!(cdf.len() <= CDF_MAX_POINTS, "{} points", cdf.len());
        for pair in cdf.windows(2) {
            assert!(pair[0][0] < pair[1][0], "ms not increasing: {pair:?}");
            assert!(pair[0][1] <= pair[1][1], "fraction decreasing: {pair:?}");
        }
        for [ms, fraction] in cdf {
            assert!(
                *ms >= 0.0 && (0.0..=1.0).contains(fraction),
                "{ms} {fraction}"
            );
        }
        assert_eq!(cdf.last(), Some(&[max_ms, 1.0]));
    }

    #[test]
    fn an_empty_histogram_has_an_empty_cdf() {
        let l = Latencies::from_micros(&histogram([]));
        assert!(l.cdf.is_empty());
    }

    #[test]
    fn one_sample_is_one_point() {
        let l = Latencies::from_micros(&histogram([1234]));
        assert_eq!(l.cdf, vec![[l.max, 1.0]]);
    }

    #[test]
    fn a_uniform_cdf_follows_the_diagonal() {
        // 1..=100,000 µs: the share at or below x ms is about x / 100.
        let l = Latencies::from_micros(&histogram(1..=100_000));
        assert_well_formed(&l.cdf, l.max);
        for [ms, fraction] in &l.cdf {
            assert!((fraction - ms / 100.0).abs() < 0.002, "{ms} {fraction}");
        }
        // The body in hundredths, and the tail down to the histogram's resolution (buckets of
        // 64 µs near 100 ms hold 64 samples each here, so the deepest tiers share buckets).
        assert!(l.cdf.len() > 105, "{} points", l.cdf.len());
        assert!(
            l.cdf.iter().any(|p| p[1] > 0.999 && p[1] < 1.0),
            "{:?}",
            l.cdf
        );
    }

    #[test]
    fn a_long_tail_is_drawn_and_the_median_too() {
        // 99.9% at about 1 ms, the rest spread up to 500 ms.
        let body = (0..99_900).map(|i| 900 + i % 200);
        let tail = (0..100).map(|i| 5_000 + i * 5_000);
        let l = Latencies::from_micros(&histogram(body.chain(tail)));
        assert_well_formed(&l.cdf, l.max);
        let beyond_10ms = l.cdf.iter().filter(|p| p[0] > 10.0).count();
        assert!(beyond_10ms >= 10, "{:?}", l.cdf);
        let near_median = l.cdf.iter().filter(|p| (0.4..0.6).contains(&p[1])).count();
        assert!(near_median >= 10, "{:?}", l.cdf);
    }

    #[test]
    fn the_cdf_is_part_of_the_json_latencies() {
        let l = Latencies::from_micros(&histogram([1000, 2000]));
        let json = serde_json::to_value(&l).unwrap();
        assert_eq!(json["cdf"], serde_json::json!([[1.0, 0.5], [2.0, 1.0]]));
        assert_eq!(json["p50"], 1.0);
    }
}

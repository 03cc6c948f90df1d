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
        }
    }
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
}

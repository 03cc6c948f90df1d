//! Counters for `GET /metrics`, in the Prometheus text format. Plain atomics: updating one is a
//! single relaxed add, cheap enough for the broadcast path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::Kept;

#[derive(Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub connections_open: AtomicU64,
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Chat messages sent to clients (one per recipient).
    pub deliveries: AtomicU64,
    /// Of those, written straight to an idle client's socket by the fan-out.
    pub deliveries_written: AtomicU64,
    pub acks: AtomicU64,
    pub replies: AtomicU64,
    pub slow_disconnects: AtomicU64,
    pub rate_limited: AtomicU64,
    pub rate_limit_disconnects: AtomicU64,
    pub oversize_disconnects: AtomicU64,
    pub invalid_utf8_disconnects: AtomicU64,
    pub dead_peer_disconnects: AtomicU64,
    pub auth_failures: AtomicU64,
    pub origin_rejections: AtomicU64,
    pub capacity_rejections: AtomicU64,
    pub write_failures: AtomicU64,
    /// Messages refused because history could not be stored.
    pub unavailable: AtomicU64,
    pub too_large: AtomicU64,
}

/// Gauges read at scrape time from elsewhere.
pub struct Snapshot {
    pub rooms: usize,
    pub members: usize,
    pub history: Kept,
    pub draining: bool,
    pub storage_failing: bool,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    /// Renders every metric in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::with_capacity(4096);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters: [(&str, &str, u64); 20] = [
            (
                "connections_total",
                "WebSocket connections accepted",
                get(&self.connections_total),
            ),
            (
                "messages_received_total",
                "Frames received from clients",
                get(&self.messages_in),
            ),
            (
                "bytes_received_total",
                "Payload bytes received from clients",
                get(&self.bytes_in),
            ),
            (
                "deliveries_total",
                "Chat messages sent to clients, one per recipient",
                get(&self.deliveries),
            ),
            (
                "deliveries_written_through_total",
                "Of those, written straight to an idle client's socket (the rest were queued for its connection)",
                get(&self.deliveries_written),
            ),
            (
                "acks_total",
                "Messages acknowledged to their sender",
                get(&self.acks),
            ),
            (
                "replies_total",
                "Answers sent to one client: errors, rooms and who lists",
                get(&self.replies),
            ),
            (
                "slow_consumer_disconnects_total",
                "Clients closed with 4008 for reading too slowly",
                get(&self.slow_disconnects),
            ),
            (
                "rate_limited_total",
                "Messages delayed by the per-connection rate limit",
                get(&self.rate_limited),
            ),
            (
                "rate_limit_disconnects_total",
                "Clients closed with 4029 for flooding",
                get(&self.rate_limit_disconnects),
            ),
            (
                "oversize_disconnects_total",
                "Clients closed with 1009 for an oversize message",
                get(&self.oversize_disconnects),
            ),
            (
                "invalid_utf8_disconnects_total",
                "Clients closed with 1007 for invalid UTF-8",
                get(&self.invalid_utf8_disconnects),
            ),
            (
                "dead_peer_disconnects_total",
                "Clients dropped for not answering pings",
                get(&self.dead_peer_disconnects),
            ),
            (
                "auth_failures_total",
                "Handshakes refused for a missing or wrong token",
                get(&self.auth_failures),
            ),
            (
                "origin_rejections_total",
                "Handshakes refused for a foreign Origin",
                get(&self.origin_rejections),
            ),
            (
                "capacity_rejections_total",
                "Connections refused by --max-clients or --max-per-ip",
                get(&self.capacity_rejections),
            ),
            (
                "write_failures_total",
                "Connections ended because a frame could not be written to them",
                get(&self.write_failures),
            ),
            (
                "unavailable_total",
                "Chat messages refused, not sent, because history could not be stored",
                get(&self.unavailable),
            ),
            (
                "too_large_total",
                "Chat messages refused for being larger than --max-message-bytes once encoded",
                get(&self.too_large),
            ),
            (
                "connections_open",
                "Open WebSocket connections",
                get(&self.connections_open),
            ),
        ];
        // Read at scrape time from the hub and the store.
        let scraped = [
            ("rooms", "Rooms with members", snapshot.rooms as u64),
            (
                "members",
                "Members in rooms, quiet senders included",
                snapshot.members as u64,
            ),
            (
                "history_messages",
                "Messages held in the in-memory history window",
                snapshot.history.messages as u64,
            ),
            (
                "history_bytes",
                "Bytes of messages held in the in-memory history window (bounded by --keep-bytes)",
                snapshot.history.bytes as u64,
            ),
            (
                "history_evicted_total",
                "Messages dropped from the in-memory history to stay within --keep-bytes",
                snapshot.history.evicted,
            ),
            (
                "history_unstored_total",
                "Messages that could not be stored (full disk, writer behind) and were not acknowledged",
                snapshot.history.unstored,
            ),
            (
                "history_failing",
                "1 while history cannot be stored and messages are refused",
                u64::from(snapshot.storage_failing),
            ),
            (
                "draining",
                "1 while the server is draining (--drain-delay) or shutting down",
                u64::from(snapshot.draining),
            ),
        ];
        for (name, help, value) in counters.into_iter().chain(scraped) {
            write_metric(&mut out, name, help, value);
        }
        out
    }
}

/// One metric: a counter when its name ends in `_total`, a gauge otherwise.
pub fn write_metric(out: &mut String, name: &str, help: &str, value: u64) {
    let kind = if name.ends_with("_total") {
        "counter"
    } else {
        "gauge"
    };
    let _ = writeln!(
        out,
        "# HELP wschat_{name} {help}.\n# TYPE wschat_{name} {kind}\nwschat_{name} {value}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::inc(&m.connections_total);
        Metrics::add(&m.deliveries, 41);
        let text = m.render(&Snapshot {
            rooms: 2,
            members: 3,
            history: Kept {
                messages: 7,
                bytes: 1400,
                evicted: 2,
                unstored: 0,
            },
            draining: false,
            storage_failing: false,
        });
        assert!(
            text.contains("# TYPE wschat_connections_total counter\nwschat_connections_total 1\n")
        );
        assert!(text.contains("wschat_deliveries_total 41\n"));
        assert!(text.contains("# TYPE wschat_rooms gauge\nwschat_rooms 2\n"));
        assert!(text.contains("wschat_history_bytes 1400\n"));
        assert!(text.contains(
            "# TYPE wschat_history_evicted_total counter\nwschat_history_evicted_total 2\n"
        ));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.split_once(' ').unwrap();
            assert!(name.starts_with("wschat_"), "{line}");
            value.parse::<u64>().unwrap();
        }
    }
}

//! When a fan-out writes straight through to idle sockets, and when it queues.
//!
//! Writing a frame straight to an idle member's socket is the quickest way to deliver it: one
//! write, no task woken. It is also one write per frame, where a connection whose frames come
//! faster than its task is scheduled gets them all in one write. At the bench's maximum rate
//! (1,000 receivers), writing every frame straight through delivered a tenth of what queueing
//! does. And a fan-out runs under the hub's lock: one that writes to a large room (some
//! microseconds per loopback write) would stall every other room meanwhile, where queued
//! frames are written by each member's task, on every worker, in turn with other work.
//!
//! So the hub asks before each fan-out, and decides again every [`WINDOW`]:
//!
//! - **Writing straight through**, it times its fan-outs. Once they took more than
//!   [`BUSY_SHARE`] of the last window, they are about to fall behind: the next window queues.
//! - **Queueing**, it estimates what writing straight through would take (deliveries × the
//!   cost of one write, as last measured) and writes straight through again once that falls
//!   under [`CALM_SHARE`] of the window (lower, so a load near the limit does not flip the
//!   decision every window).
//! - **A fan-out to more than [`MAX_FAN_OUT`] members always queues.**

use std::time::{Duration, Instant};

/// How often the decision is taken again: short, so an overload is noticed within a tenth of
/// a second; the busy mark below is high enough that an ordinary load's bursts (several
/// publishers, each on its own schedule) do not reach it.
pub const WINDOW: Duration = Duration::from_millis(100);
/// Share of the time spent writing straight through past which the next window queues: the
/// fan-outs ran back to back, so they were not keeping up.
pub const BUSY_SHARE: f64 = 0.97;
/// Share of the time writing straight through would take under which it starts again.
pub const CALM_SHARE: f64 = 0.8;
/// The most members a fan-out writes straight through to.
pub const MAX_FAN_OUT: usize = 2048;

/// What one write straight through is taken to cost before any was measured.
const FIRST_GUESS_NS: u64 = 3_000;
/// Fan-outs with fewer writes than this are not timed: too short to measure well.
const MIN_TIMED: usize = 16;

/// The hub's running decision (see the module's documentation).
#[derive(Debug)]
pub struct WriteThrough {
    window_start: Instant,
    /// Time spent in fan-outs that wrote straight through, this window, in ns.
    busy_ns: u64,
    /// Deliveries planned this window.
    deliveries: u64,
    /// Whether fan-outs write straight through in this window.
    through: bool,
    /// What one write straight through costs, in ns (a moving average).
    cost_ns: u64,
}

impl Default for WriteThrough {
    fn default() -> Self {
        WriteThrough::new(Instant::now())
    }
}

impl WriteThrough {
    pub fn new(now: Instant) -> WriteThrough {
        WriteThrough {
            window_start: now,
            busy_ns: 0,
            deliveries: 0,
            through: true,
            cost_ns: FIRST_GUESS_NS,
        }
    }

    /// Whether a fan-out to `recipients` members, starting `now`, writes straight through.
    pub fn plan(&mut self, recipients: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= WINDOW {
            let window = elapsed.as_nanos() as f64;
            self.through = if self.through {
                (self.busy_ns as f64) < window * BUSY_SHARE
            } else {
                (self.deliveries.saturating_mul(self.cost_ns) as f64) < window * CALM_SHARE
            };
            self.window_start = now;
            self.busy_ns = 0;
            self.deliveries = 0;
        }
        self.deliveries = self.deliveries.saturating_add(recipients as u64);
        self.through && recipients <= MAX_FAN_OUT
    }

    /// A fan-out that wrote `written` frames straight through took `took`.
    pub fn measured(&mut self, written: usize, took: Duration) {
        let took_ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns = self.busy_ns.saturating_add(took_ns);
        if written < MIN_TIMED {
            return;
        }
        // A fan-out preempted halfway says little of what a write costs: one sample moves the
        // average at most to twice what it was.
        let each = (took_ns / written as u64).min(self.cost_ns * 2);
        self.cost_ns = ((self.cost_ns * 7 + each) / 8).max(1);
    }

    /// What one write straight through is taken to cost now.
    pub fn cost(&self) -> Duration {
        Duration::from_nanos(self.cost_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plans and times `count` fan-outs to 1,000 members, `every` apart, each taking `took`;
    /// returns whether the last one wrote straight through, and the time after it.
    fn run(
        through: &mut WriteThrough,
        mut at: Instant,
        count: usize,
        every: Duration,
        took: Duration,
    ) -> (bool, Instant) {
        let mut last = false;
        for _ in 0..count {
            last = through.plan(1000, at);
            if last {
                through.measured(1000, took);
            }
            at += every;
        }
        (last, at)
    }

    #[test]
    fn an_idle_server_writes_through_and_a_busy_one_queues_until_it_calms_down() {
        let start = Instant::now();
        let mut through = WriteThrough::new(start);
        let ms = Duration::from_millis;
        // A 3 ms fan-out every 10 ms: a third of the time.
        let (last, at) = run(&mut through, start, 30, ms(10), ms(3));
        assert!(last);
        assert_eq!(through.cost(), Duration::from_micros(3));
        // Back to back: the next window queues, and stays queued while as busy.
        let (_, at) = run(&mut through, at, 100, ms(3), ms(3));
        let (last, at) = run(&mut through, at, 100, ms(3), ms(3));
        assert!(!last);
        // 90% of the time: under the busy mark, over the calm one: still queued.
        let (last, at) = run(&mut through, at, 200, Duration::from_micros(3333), ms(3));
        assert!(!last);
        // Quiet again: the window after a calm one writes straight through.
        let (last, _) = run(&mut through, at, 60, ms(10), ms(3));
        assert!(last);
    }

    #[test]
    fn a_large_fan_out_queues() {
        let now = Instant::now();
        let mut through = WriteThrough::new(now);
        assert!(through.plan(MAX_FAN_OUT, now));
        assert!(!through.plan(MAX_FAN_OUT + 1, now));
    }

    #[test]
    fn one_slow_fan_out_does_not_make_writes_look_dear() {
        let mut through = WriteThrough::new(Instant::now());
        through.measured(3, Duration::from_secs(1));
        assert_eq!(through.cost(), Duration::from_nanos(FIRST_GUESS_NS));
        through.measured(1000, Duration::from_secs(1));
        assert_eq!(through.cost(), Duration::from_nanos(FIRST_GUESS_NS * 9 / 8));
    }
}

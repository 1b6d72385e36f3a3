//! A limit on log lines the guest can cause. A hostile guest can make a device log
//! on every request it sends; each such line goes through a [`GuestLogLimit`]: at
//! most [`LINES_PER_INTERVAL`] lines per [`INTERVAL`], then silence, and the first
//! line of a later interval says how many were suppressed.

use std::time::{Duration, Instant};

/// Lines a device may log per interval on the guest's behalf.
pub const LINES_PER_INTERVAL: u32 = 10;
/// The interval.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Counts guest-triggered log lines of one device.
#[derive(Debug)]
pub struct GuestLogLimit {
    per_interval: u32,
    interval: Duration,
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl Default for GuestLogLimit {
    fn default() -> Self {
        Self::new(LINES_PER_INTERVAL, INTERVAL)
    }
}

impl GuestLogLimit {
    /// At most `per_interval` lines per `interval`.
    pub fn new(per_interval: u32, interval: Duration) -> Self {
        GuestLogLimit {
            per_interval,
            interval,
            window_start: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged at `now`: `Some(k)` to log it, where `k` lines
    /// were suppressed before it (the caller says so first when `k > 0`); `None` to
    /// drop it.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.interval);
        if expired {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged >= self.per_interval {
            self.suppressed += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Lines suppressed since the last one logged.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

/// Logs a warning the guest caused, through `limit` (a `&mut GuestLogLimit`).
#[macro_export]
macro_rules! guest_warn {
    ($limit:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limit.allow(::std::time::Instant::now()) {
            if suppressed > 0 {
                ::tracing::warn!(suppressed, "guest-triggered messages suppressed");
            }
            ::tracing::warn!($($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_beyond_the_limit_are_counted_then_reported() {
        let t0 = Instant::now();
        let mut limit = GuestLogLimit::new(3, Duration::from_secs(10));
        for _ in 0..3 {
            assert_eq!(limit.allow(t0), Some(0));
        }
        for i in 1..=100_000u64 {
            assert_eq!(limit.allow(t0 + Duration::from_secs(9)), None);
            assert_eq!(limit.suppressed(), i);
        }
        // The next interval: the first line reports the suppressed ones, once.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(limit.allow(t1), Some(100_000));
        assert_eq!(limit.allow(t1), Some(0));
        assert_eq!(limit.suppressed(), 0);
    }
}

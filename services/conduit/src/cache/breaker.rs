//! A circuit breaker around the cache host.
//!
//! When Redis fails (refuses connections, or stops answering within the operation timeout), every
//! request that still tried it would wait out that timeout before falling back to the database.
//! After [`Breaker::failures_to_open`] failures in a row the breaker *opens*: for
//! [`Breaker::open_for`] nobody tries Redis at all and requests go straight to the database
//! (`x-cache: bypass`). Then exactly one request is let through as a *probe*; if it succeeds the
//! breaker closes and the cache is used again, if not it opens for another period.
//!
//! ```text
//!   closed --N failures--> open --period over--> probing --ok--> closed
//!                            ^                      |
//!                            +--------fail----------+
//! ```

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// What the breaker lets a caller do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Use the cache.
    Use,
    /// This caller is the probe: check the cache host (and repair what it missed) first.
    Probe,
    /// Leave the cache alone: it failed recently.
    Skip,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    Probing,
}

/// Counts failures and decides who may use the cache host.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    /// Consecutive failures that open the breaker.
    pub failures_to_open: u32,
    /// How long it stays open before a probe.
    pub open_for: Duration,
}

impl Breaker {
    /// A breaker that starts *open and due for a probe*: the first request connects to Redis.
    pub fn new(failures_to_open: u32, open_for: Duration) -> Self {
        Self {
            state: Mutex::new(State::Open {
                until: Instant::now(),
            }),
            failures_to_open: failures_to_open.max(1),
            open_for,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value; a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the caller may use the cache now; at most one caller at a time gets [`Admit::Probe`].
    pub fn admit(&self) -> Admit {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Admit::Use,
            State::Open { until } if Instant::now() >= until => {
                *state = State::Probing;
                Admit::Probe
            }
            State::Open { .. } | State::Probing => Admit::Skip,
        }
    }

    /// A cache operation (or the probe) succeeded.
    pub fn succeeded(&self) {
        let mut state = self.lock();
        if !matches!(*state, State::Open { .. }) {
            *state = State::Closed { failures: 0 };
        }
    }

    /// A cache operation failed; returns true if this failure opened the breaker.
    pub fn failed(&self) -> bool {
        let mut state = self.lock();
        match *state {
            State::Closed { failures } if failures + 1 < self.failures_to_open => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Closed { .. } | State::Probing => {
                self.open(&mut state);
                true
            }
            State::Open { .. } => false,
        }
    }

    /// Opens at once, whatever the count (an invalidation was lost: no hit may be served until
    /// the probe has repaired it).
    pub fn trip(&self) {
        let mut state = self.lock();
        if !matches!(*state, State::Open { .. }) {
            self.open(&mut state);
        }
    }

    fn open(&self, state: &mut State) {
        *state = State::Open {
            until: Instant::now() + self.open_for,
        };
    }

    /// Whether the breaker is open (or probing): for the metrics gauge.
    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_with_one_probe_then_closes_on_success() {
        let breaker = Breaker::new(3, Duration::from_secs(60));
        assert_eq!(breaker.admit(), Admit::Probe);
        assert_eq!(breaker.admit(), Admit::Skip, "only one probe at a time");
        breaker.succeeded();
        assert_eq!(breaker.admit(), Admit::Use);
        assert!(!breaker.is_open());
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let breaker = Breaker::new(3, Duration::from_secs(60));
        breaker.admit();
        breaker.succeeded();
        assert!(!breaker.failed());
        assert!(!breaker.failed());
        breaker.succeeded(); // a success in between resets the count
        assert!(!breaker.failed());
        assert!(!breaker.failed());
        assert!(breaker.failed(), "the third failure in a row opens it");
        assert_eq!(breaker.admit(), Admit::Skip);
        assert!(breaker.is_open());
    }

    #[test]
    fn a_failed_probe_opens_it_again_and_a_later_probe_closes_it() {
        let breaker = Breaker::new(1, Duration::from_millis(20));
        assert_eq!(breaker.admit(), Admit::Probe);
        assert!(breaker.failed());
        assert_eq!(breaker.admit(), Admit::Skip);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(breaker.admit(), Admit::Probe);
        breaker.succeeded();
        assert_eq!(breaker.admit(), Admit::Use);
    }

    #[test]
    fn trip_opens_at_once() {
        let breaker = Breaker::new(100, Duration::from_secs(60));
        breaker.admit();
        breaker.succeeded();
        breaker.trip();
        assert_eq!(breaker.admit(), Admit::Skip);
    }
}

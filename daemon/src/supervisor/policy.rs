//! Restart policy, as in Erlang/OTP: restart a crashed worker with growing backoff, but give up
//! on a node that crashed more than `max_restarts` times within `window` (a crash loop that
//! restarting will not fix). Pure: it is fed exit times and answers what to do.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    pub max_restarts: usize,
    pub window: Duration,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    recent: VecDeque<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Restart { after: Duration },
    GiveUp,
}

impl Default for RestartPolicy {
    /// 5 crashes in 60 s mark a node failed; backoff 100 ms doubling to 5 s.
    fn default() -> Self {
        RestartPolicy::new(5, Duration::from_secs(60), Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl RestartPolicy {
    pub fn new(max_restarts: usize, window: Duration, base_backoff: Duration, max_backoff: Duration) -> Self {
        RestartPolicy { max_restarts, window, base_backoff, max_backoff, recent: VecDeque::new() }
    }

    /// A worker exited (crashed, was killed, or was found hung) at `now`.
    pub fn on_exit(&mut self, now: Instant) -> Decision {
        while self.recent.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if self.recent.len() > self.max_restarts {
            return Decision::GiveUp;
        }
        let doublings = (self.recent.len() - 1).min(16) as u32;
        Decision::Restart { after: (self.base_backoff * 2u32.pow(doublings)).min(self.max_backoff) }
    }

    /// An operator asked for another try (`chctl node restart`).
    pub fn reset(&mut self) {
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_then_gives_up_on_a_crash_loop() {
        let mut p = RestartPolicy::default();
        let t0 = Instant::now();
        let delays: Vec<Decision> = (0..6).map(|i| p.on_exit(t0 + Duration::from_secs(i))).collect();
        let ms = |d| Decision::Restart { after: Duration::from_millis(d) };
        assert_eq!(delays, vec![ms(100), ms(200), ms(400), ms(800), ms(1600), Decision::GiveUp]);
        p.reset();
        assert_eq!(p.on_exit(t0 + Duration::from_secs(7)), ms(100));
    }

    #[test]
    fn crashes_spread_over_time_never_give_up() {
        let mut p = RestartPolicy::default();
        let t0 = Instant::now();
        for i in 0..100 {
            // One crash every 20 s: at most 3 inside any 60 s window.
            let d = p.on_exit(t0 + Duration::from_secs(20 * i));
            assert!(matches!(d, Decision::Restart { after } if after <= Duration::from_millis(400)), "{d:?}");
        }
    }

    #[test]
    fn backoff_is_capped() {
        let mut p =
            RestartPolicy::new(100, Duration::from_secs(60), Duration::from_millis(100), Duration::from_secs(5));
        let t0 = Instant::now();
        let last = (0..50).map(|_| p.on_exit(t0)).last().unwrap();
        assert_eq!(last, Decision::Restart { after: Duration::from_secs(5) });
    }
}

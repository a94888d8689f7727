//! Restart policy, as in Erlang/OTP: restart a crashed worker with growing backoff, but give up
//! on a node that crashed more than `max_restarts` times within `window` (a crash loop that
//! restarting will not fix). Pure: it is fed exit times and answers what to do.
//!
//! A worker *killed* (SIGKILL: by chd because it hung, by the kernel's OOM killer, by a person
//! or a fault injector) did not crash: it is restarted with the same growing backoff, but kills
//! never make the policy give up. Restarting is what heals them (a slow disk, a node killed
//! again and again by correlated faults), and giving up would need a person. Torture runs
//! failed on this: a node killed six times in 16 s by the nemesis was marked failed and stayed
//! so.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    pub max_restarts: usize,
    pub window: Duration,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Exits within `window`: when, and whether it was a crash (not a kill).
    recent: VecDeque<(Instant, bool)>,
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

    /// A worker exited at `now`: it crashed (`crashed`), or was killed.
    pub fn on_exit(&mut self, now: Instant, crashed: bool) -> Decision {
        while self.recent.front().is_some_and(|(t, _)| now.duration_since(*t) >= self.window) {
            self.recent.pop_front();
        }
        self.recent.push_back((now, crashed));
        if self.recent.iter().filter(|(_, crashed)| *crashed).count() > self.max_restarts {
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
        let delays: Vec<Decision> = (0..6).map(|i| p.on_exit(t0 + Duration::from_secs(i), true)).collect();
        let ms = |d| Decision::Restart { after: Duration::from_millis(d) };
        assert_eq!(delays, vec![ms(100), ms(200), ms(400), ms(800), ms(1600), Decision::GiveUp]);
        p.reset();
        assert_eq!(p.on_exit(t0 + Duration::from_secs(7), true), ms(100));
    }

    #[test]
    fn kills_back_off_but_never_give_up_and_do_not_count_as_crashes() {
        let mut p = RestartPolicy::default();
        let t0 = Instant::now();
        let ms = |d| Decision::Restart { after: Duration::from_millis(d) };
        let kills: Vec<Decision> = (0..8).map(|i| p.on_exit(t0 + Duration::from_secs(i), false)).collect();
        assert_eq!(kills[..4], [ms(100), ms(200), ms(400), ms(800)]);
        assert_eq!(kills[7], ms(5000), "kills back off like crashes");
        // Five crashes among the kills are still allowed; the sixth is a crash loop.
        for i in 8..13 {
            assert!(matches!(p.on_exit(t0 + Duration::from_secs(i), true), Decision::Restart { .. }));
        }
        assert_eq!(p.on_exit(t0 + Duration::from_secs(13), true), Decision::GiveUp);
    }

    #[test]
    fn crashes_spread_over_time_never_give_up() {
        let mut p = RestartPolicy::default();
        let t0 = Instant::now();
        for i in 0..100 {
            // One crash every 20 s: at most 3 inside any 60 s window.
            let d = p.on_exit(t0 + Duration::from_secs(20 * i), true);
            assert!(matches!(d, Decision::Restart { after } if after <= Duration::from_millis(400)), "{d:?}");
        }
    }

    #[test]
    fn backoff_is_capped() {
        let mut p =
            RestartPolicy::new(100, Duration::from_secs(60), Duration::from_millis(100), Duration::from_secs(5));
        let t0 = Instant::now();
        let last = (0..50).map(|_| p.on_exit(t0, true)).last().unwrap();
        assert_eq!(last, Decision::Restart { after: Duration::from_secs(5) });
    }
}

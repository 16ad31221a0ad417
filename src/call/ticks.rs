//! One 20 ms frame clock per call thread: every call on the thread starts its schedule on
//! the thread's grid (`epoch + n × 20 ms`), and one timer wakes all of them, in the same
//! order every tick.
//!
//! With a timer per call, the calls' deadlines fall all over the 20 ms and the thread parks
//! and wakes for nearly every one of them: at 100 speaking calls on this project's 2-core
//! build machine that was 9 % of the daemon's CPU. On one grid, a thread wakes once a frame
//! for all its calls. The order matters as much: a call woken first on one tick and last on
//! the next would see its packets' spacing swing by the whole burst (tokio's timer wheel
//! gives no order within a millisecond), so the calls are woken in the order they
//! subscribed, and each call's packets keep an even 20 ms spacing.
//!
//! A deadline between ticks (a caller's key press whose end never came, a bot's grace
//! period) is served by the first tick at or after it: at most one frame late.

use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The grid's spacing: one frame.
pub const TICK: Duration = Duration::from_millis(20);

/// A call thread's frame clock. [`FrameTicks::run`] is its timer, on the thread's runtime.
#[derive(Debug, Clone)]
pub struct FrameTicks {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Tick `n` is at `epoch + n × TICK`.
    epoch: Instant,
    state: Mutex<State>,
    /// Wakes the timer when its first subscriber arrives.
    subscribed: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// The last tick fired.
    fired: u64,
    /// One slot per subscription, in the order they were taken (a freed slot is reused).
    slots: Vec<Slot>,
    /// Subscriptions held.
    subscribers: usize,
}

#[derive(Debug)]
enum Slot {
    Free,
    Idle,
    Waiting(Waker),
}

/// A call's place on its thread's frame clock; dropping it gives the place back.
#[derive(Debug)]
pub struct TickSubscription {
    shared: Arc<Shared>,
    slot: usize,
}

impl FrameTicks {
    /// A clock whose grid starts at `epoch`.
    pub fn new(epoch: Instant) -> Self {
        FrameTicks {
            shared: Arc::new(Shared {
                epoch,
                state: Mutex::new(State::default()),
                subscribed: Notify::new(),
            }),
        }
    }

    /// A place on the clock, woken after those taken before it.
    pub fn subscribe(&self) -> TickSubscription {
        let mut state = self.shared.lock();
        let slot = match state.slots.iter().position(|s| matches!(s, Slot::Free)) {
            Some(free) => {
                state.slots[free] = Slot::Idle;
                free
            }
            None => {
                state.slots.push(Slot::Idle);
                state.slots.len() - 1
            }
        };
        state.subscribers += 1;
        drop(state);
        self.shared.subscribed.notify_one();
        TickSubscription {
            shared: Arc::clone(&self.shared),
            slot,
        }
    }

    /// The timer: fires every tick while anyone is subscribed, waking the waiting
    /// subscribers in slot order. Runs until dropped. Ticks missed while the thread was busy
    /// fire once, late (the waiters' deadlines have passed; the playout decides what a late
    /// frame means).
    pub async fn run(self) {
        loop {
            let idle = self.shared.lock().subscribers == 0;
            if idle {
                self.shared.subscribed.notified().await;
                continue;
            }
            let next = {
                let state = self.shared.lock();
                let due = self.shared.instant(state.fired + 1);
                let now = Instant::now();
                if due >= now {
                    state.fired + 1
                } else {
                    // Idle or stalled: the next tick from now, not a burst of the missed ones.
                    self.shared.tick_at_or_after(now)
                }
            };
            tokio::time::sleep_until(self.shared.instant(next)).await;
            let woken: Vec<Waker> = {
                let mut state = self.shared.lock();
                state.fired = next;
                state
                    .slots
                    .iter_mut()
                    .filter_map(|slot| match std::mem::replace(slot, Slot::Idle) {
                        Slot::Waiting(waker) => Some(waker),
                        other => {
                            *slot = other;
                            None
                        }
                    })
                    .collect()
            };
            woken.into_iter().for_each(Waker::wake);
        }
    }
}

impl TickSubscription {
    /// The first tick at or after `now`: where a call's frame schedule starts, so that every
    /// frame deadline of the call is a tick.
    pub fn grid_start(&self, now: Instant) -> Instant {
        self.shared.instant(self.shared.tick_at_or_after(now))
    }

    /// Resolves once the tick at or after `deadline` has fired. Dropped before then, it
    /// leaves no waker behind (a stale one would wake the call every tick for nothing).
    pub async fn until(&self, deadline: Instant) {
        let tick = self.shared.tick_at_or_after(deadline);
        let _unregister = Unregister(self);
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if state.fired >= tick {
                return Poll::Ready(());
            }
            state.slots[self.slot] = Slot::Waiting(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }
}

/// Takes a pending [`TickSubscription::until`]'s waker back out of its slot.
struct Unregister<'a>(&'a TickSubscription);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        let mut state = self.0.shared.lock();
        if let Slot::Waiting(_) = state.slots[self.0.slot] {
            state.slots[self.0.slot] = Slot::Idle;
        }
    }
}

impl Drop for TickSubscription {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.slots[self.slot] = Slot::Free;
        state.subscribers -= 1;
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a counter and wakers: still consistent after a panic elsewhere.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn instant(&self, tick: u64) -> Instant {
        self.epoch + TICK * u32::try_from(tick).unwrap_or(u32::MAX)
    }

    fn tick_at_or_after(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch).as_nanos();
        since.div_ceil(TICK.as_nanos()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    #[tokio::test(start_paused = true)]
    async fn subscribers_wake_on_the_tick_at_or_after_their_deadline_in_subscription_order() {
        let epoch = Instant::now();
        let ticks = FrameTicks::new(epoch);
        tokio::spawn(ticks.clone().run());
        let order = Arc::new(StdMutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for call in 0..5usize {
            let sub = ticks.subscribe();
            let order = Arc::clone(&order);
            tasks.push(tokio::spawn(async move {
                let start = sub.grid_start(Instant::now() + Duration::from_millis(3));
                assert_eq!(start, epoch + TICK);
                for n in 0..100u32 {
                    sub.until(start + TICK * n).await;
                    assert_eq!(Instant::now(), start + TICK * n, "call {call} frame {n}");
                    order.lock().unwrap().push((n, call));
                }
            }));
        }
        for task in tasks.into_iter().rev() {
            task.await.unwrap();
        }
        let order = order.lock().unwrap();
        let expected: Vec<(u32, usize)> = (0..100)
            .flat_map(|n| (0..5).map(move |call| (n, call)))
            .collect();
        assert_eq!(*order, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_between_ticks_is_served_by_the_next_tick() {
        let epoch = Instant::now();
        let ticks = FrameTicks::new(epoch);
        tokio::spawn(ticks.clone().run());
        let sub = ticks.subscribe();
        sub.until(epoch + Duration::from_millis(45)).await;
        assert_eq!(Instant::now(), epoch + TICK * 3);
        // A deadline already past resolves at once.
        sub.until(epoch + Duration::from_millis(1)).await;
        assert_eq!(Instant::now(), epoch + TICK * 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_clock_serves_a_new_subscriber_on_the_grid_and_reuses_freed_slots() {
        let epoch = Instant::now();
        let ticks = FrameTicks::new(epoch);
        tokio::spawn(ticks.clone().run());
        tokio::time::sleep(Duration::from_secs(10)).await;
        let sub = ticks.subscribe();
        let start = sub.grid_start(Instant::now());
        sub.until(start + TICK).await;
        assert_eq!(Instant::now(), start + TICK);
        drop(sub);
        // Slots are reused, and the new subscriber still wakes.
        let again = ticks.subscribe();
        assert_eq!(again.slot, 0);
        again.until(Instant::now() + TICK).await;
    }
}

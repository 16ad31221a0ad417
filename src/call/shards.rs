//! Call shards: a few threads, each with its own single-threaded tokio runtime, and every
//! call lives whole on one of them: its driver, its peer connection's driver and UDP
//! socket, its LMNT session and its bot's socket writes. A frame's path (LMNT chunk ->
//! driver -> peer connection -> socket, caller packet -> driver -> bot) then never crosses
//! threads. On the shared work-stealing runtime those hand-offs were what ran out first
//! under load: 100 calls saturated this project's 2-core build machine at 1.35 % of a core
//! each and ran 20 ms late at p99; on call threads they took 1.2 % and ran 6-8 ms late, and
//! with each thread's calls on one frame clock ([`super::ticks`]) 0.94-0.98 % and 3.4-3.9 ms.
//!
//! Each shard's frame clock is offset from the previous one's by a frame divided by the
//! number of shards, so the threads' bursts of frames take turns on the CPUs instead of
//! contending for them at the same instant (on one common grid, 100 calls ran 6 ms late at
//! p99; spread, under 4 ms).
//!
//! A call is placed on the shard with the fewest calls when it is created and stays there.
//! Each shard beats a heartbeat; [`Shards::stalled`] tells the watchdog when one has stopped
//! (a call's code blocking its thread), so systemd restarts a daemon whose calls froze.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::ticks::{FrameTicks, TickSubscription, TICK};

/// How often each shard proves it is running.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// A shard whose heartbeat is older than this is stalled: ten beats missed, far beyond
/// any lateness a call tolerates (the playout skips frames past 100 ms).
const STALL_AFTER: Duration = Duration::from_secs(5);

/// The call threads. Dropping this stops them (calls still on them are dropped).
#[derive(Debug)]
pub struct Shards {
    shards: Vec<Arc<Shard>>,
    /// When the heartbeats count from.
    epoch: Instant,
    stop: CancellationToken,
}

#[derive(Debug)]
struct Shard {
    handle: Handle,
    /// The thread's frame clock, shared by its calls.
    ticks: FrameTicks,
    /// Calls placed here and not yet ended.
    calls: AtomicUsize,
    /// Milliseconds since [`Shards::epoch`] of the last heartbeat.
    heartbeat_ms: AtomicU64,
}

/// One call's place on a shard: spawn its tasks on [`ShardLease::handle`]. The shard counts
/// the call until the lease is dropped.
#[derive(Debug)]
pub struct ShardLease {
    shard: Arc<Shard>,
}

impl Shards {
    /// Starts `count` call threads (at least one), named `lmnt-call-N`.
    pub fn start(count: usize) -> std::io::Result<Shards> {
        let epoch = Instant::now();
        let stop = CancellationToken::new();
        let shards = (0..count.max(1))
            .map(|index| start_shard(index, count.max(1), epoch, stop.clone()))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Shards {
            shards,
            epoch,
            stop,
        })
    }

    /// A place for a new call: the shard with the fewest calls.
    pub fn lease(&self) -> ShardLease {
        let shard = self
            .shards
            .iter()
            .min_by_key(|shard| shard.calls.load(Ordering::Relaxed))
            .expect("Shards::start makes at least one");
        shard.calls.fetch_add(1, Ordering::Relaxed);
        ShardLease {
            shard: Arc::clone(shard),
        }
    }

    /// The calls on each shard, in shard order.
    #[cfg(test)]
    fn calls_per_shard(&self) -> Vec<usize> {
        self.shards
            .iter()
            .map(|shard| shard.calls.load(Ordering::Relaxed))
            .collect()
    }

    /// Whether some shard has not beaten its heartbeat for [`STALL_AFTER`] at `now`.
    pub fn stalled(&self, now: Instant) -> bool {
        let now_ms = millis_since(self.epoch, now);
        self.shards.iter().any(|shard| {
            let beat = shard.heartbeat_ms.load(Ordering::Relaxed);
            now_ms.saturating_sub(beat) > STALL_AFTER.as_millis() as u64
        })
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ShardLease {
    /// The shard's runtime: a task spawned on it, and everything that task spawns with
    /// `tokio::spawn`, runs on the shard's thread.
    pub fn handle(&self) -> Handle {
        self.shard.handle.clone()
    }

    /// A place on the shard's frame clock, for the call's frame deadlines.
    pub fn subscribe_ticks(&self) -> TickSubscription {
        self.shard.ticks.subscribe()
    }
}

impl Drop for ShardLease {
    fn drop(&mut self) {
        self.shard.calls.fetch_sub(1, Ordering::Relaxed);
    }
}

fn start_shard(
    index: usize,
    count: usize,
    epoch: Instant,
    stop: CancellationToken,
) -> std::io::Result<Arc<Shard>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The shards' grids are spread over the frame, so their bursts take turns on the CPUs.
    let phase = TICK * index as u32 / count as u32;
    let ticks = FrameTicks::new(tokio::time::Instant::from_std(epoch + phase));
    let shard = Arc::new(Shard {
        handle: runtime.handle().clone(),
        ticks: ticks.clone(),
        calls: AtomicUsize::new(0),
        heartbeat_ms: AtomicU64::new(millis_since(epoch, Instant::now())),
    });
    let beating = Arc::clone(&shard);
    std::thread::Builder::new()
        .name(format!("lmnt-call-{index}"))
        .spawn(move || {
            runtime.block_on(async move {
                tokio::spawn(ticks.run());
                let mut beat = tokio::time::interval(HEARTBEAT_INTERVAL);
                beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = beat.tick() => beating
                            .heartbeat_ms
                            .store(millis_since(epoch, Instant::now()), Ordering::Relaxed),
                    }
                }
            });
        })?;
    Ok(shard)
}

fn millis_since(epoch: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(epoch).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_go_to_the_least_loaded_shard_and_leave_it_when_the_lease_drops() {
        let shards = Shards::start(2).unwrap();
        let a = shards.lease();
        let b = shards.lease();
        assert_eq!(shards.calls_per_shard(), vec![1, 1]);
        drop(a);
        let c = shards.lease();
        assert_eq!(shards.calls_per_shard(), vec![1, 1]);
        drop((b, c));
        assert_eq!(shards.calls_per_shard(), vec![0, 0]);
    }

    #[tokio::test]
    async fn a_leased_task_and_what_it_spawns_run_on_the_shards_thread() {
        let shards = Shards::start(1).unwrap();
        let lease = shards.lease();
        let names = lease
            .handle()
            .spawn(async {
                let outer = std::thread::current().name().map(str::to_owned);
                let inner =
                    tokio::spawn(async { std::thread::current().name().map(str::to_owned) })
                        .await
                        .unwrap();
                (outer, inner)
            })
            .await
            .unwrap();
        let expected = Some("lmnt-call-0".to_owned());
        assert_eq!(names, (expected.clone(), expected));
    }

    #[tokio::test]
    async fn a_shard_whose_heartbeat_is_older_than_the_limit_is_stalled() {
        let shards = Shards::start(1).unwrap();
        let now = Instant::now();
        assert!(!shards.stalled(now));
        assert!(shards.stalled(now + STALL_AFTER + HEARTBEAT_INTERVAL * 2));
    }
}

//! Numbers on every request, per mount: the count and latency of each FUSE operation and
//! where it was answered from (memory, the cache, the server), the mount's requests to its
//! server and their latency, what it fetched, and fetches in flight. Recording is a clock
//! read and a few relaxed atomic adds into lock-free histograms, so it costs nothing
//! measurable next to a FUSE round trip; reading them (`mega-fuse stats`) takes a snapshot.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use histogram::AtomicHistogram;

/// Relative error of a latency: 2^-5, about 3%.
const GROUPING_POWER: u8 = 5;
/// Latencies up to 2^36 ns (about 69 s) are told apart; longer ones count as that.
const MAX_VALUE_POWER: u8 = 36;
const MAX_NANOS: u64 = (1 << MAX_VALUE_POWER) - 1;

/// The FUSE operations a mount answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Getattr,
    Readlink,
    Open,
    Read,
    Release,
    Readdir,
    Readdirplus,
    Statfs,
    Access,
    /// Anything that would change the tree (refused on a read-only mount).
    Write,
}

impl Op {
    pub const ALL: [Op; 11] = [
        Op::Lookup,
        Op::Getattr,
        Op::Readlink,
        Op::Open,
        Op::Read,
        Op::Release,
        Op::Readdir,
        Op::Readdirplus,
        Op::Statfs,
        Op::Access,
        Op::Write,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Readlink => "readlink",
            Op::Open => "open",
            Op::Read => "read",
            Op::Release => "release",
            Op::Readdir => "readdir",
            Op::Readdirplus => "readdirplus",
            Op::Statfs => "statfs",
            Op::Access => "access",
            Op::Write => "write",
        }
    }
}

/// Where a request was answered from: the farthest it had to go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// What the mount had loaded.
    Memory,
    /// The cache on disk.
    Cache,
    /// The server (or a local repository).
    Server,
}

tokio::task_local! {
    static TASK_TIER: Cell<Tier>;
}

thread_local! {
    static THREAD_TIER: Cell<Tier> = const { Cell::new(Tier::Memory) };
}

/// Notes that the request being answered (on this task, or this thread) went as far as
/// `tier`.
pub fn reached(tier: Tier) {
    let raise = |cell: &Cell<Tier>| cell.set(cell.get().max(tier));
    if TASK_TIER.try_with(raise).is_err() {
        THREAD_TIER.with(raise);
    }
}

/// Runs `work` (a request answered on a task) and tells how far it went.
pub async fn tracked<F: Future>(work: F) -> (F::Output, Tier) {
    TASK_TIER
        .scope(Cell::new(Tier::Memory), async {
            let output = work.await;
            (output, TASK_TIER.with(Cell::get))
        })
        .await
}

/// Runs `work` (a request answered on this thread) and tells how far it went.
pub fn tracked_here<T>(work: impl FnOnce() -> T) -> (T, Tier) {
    THREAD_TIER.with(|t| t.set(Tier::Memory));
    let output = work();
    (output, THREAD_TIER.with(Cell::get))
}

/// Latencies, in nanoseconds.
pub struct Latencies(AtomicHistogram);

impl Default for Latencies {
    fn default() -> Self {
        // Constant, valid parameters: the crate refuses only a grouping power at or above
        // the max value power, or a max value power above 64.
        Latencies(
            AtomicHistogram::new(GROUPING_POWER, MAX_VALUE_POWER)
                .unwrap_or_else(|_| unreachable!("valid histogram parameters")),
        )
    }
}

/// Percentiles of some latencies (upper bounds of their buckets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latencies {
    pub fn record(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos())
            .unwrap_or(u64::MAX)
            .min(MAX_NANOS);
        // In range by construction; a histogram error would only lose one sample.
        let _ = self.0.increment(nanos);
    }

    pub fn percentiles(&self) -> Percentiles {
        let snapshot = self.0.load();
        let mut buckets = [None, None, None, None];
        let wanted = [0.5, 0.9, 0.99, 1.0];
        if snapshot
            .quantile_buckets_into(&wanted, &mut buckets)
            .is_err()
        {
            return Percentiles::default();
        }
        let at = |i: usize| {
            Duration::from_nanos(
                buckets[i]
                    .as_ref()
                    .map_or(0, |b: &histogram::Bucket| b.end()),
            )
        };
        Percentiles {
            count: snapshot.as_slice().iter().sum(),
            p50: at(0),
            p90: at(1),
            p99: at(2),
            max: at(3),
        }
    }
}

/// One operation's numbers.
#[derive(Default)]
pub struct OpMetrics {
    pub latency: Latencies,
    pub errors: AtomicU64,
    /// Answers by where they came from, in [`Tier`] order.
    pub answered: [AtomicU64; 3],
}

/// A mount's requests to its server (or reads of its local repository).
#[derive(Default)]
pub struct ServerMetrics {
    pub latency: Latencies,
    pub errors: AtomicU64,
}

impl ServerMetrics {
    /// Times one request to the server (to its whole answer where that is read whole, to its
    /// headers where it streams); its result says whether it failed.
    pub async fn request<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
    {
        let started = Instant::now();
        let result = work.await;
        self.latency.record(started.elapsed());
        if result.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

/// Every number of one mount.
pub struct MountMetrics {
    ops: [OpMetrics; Op::ALL.len()],
    server: Arc<ServerMetrics>,
    pub fetched_objects: AtomicU64,
    pub fetched_bytes: AtomicU64,
    /// Objects found in the cache instead of fetched.
    pub cache_hits: AtomicU64,
    pub fetches_in_flight: AtomicI64,
    /// When the mount was made (Unix seconds).
    pub since: i64,
}

impl Default for MountMetrics {
    fn default() -> Self {
        MountMetrics {
            ops: Default::default(),
            server: Arc::default(),
            fetched_objects: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            fetches_in_flight: AtomicI64::new(0),
            since: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        }
    }
}

impl MountMetrics {
    /// The part the mount's source records into.
    pub fn server(&self) -> Arc<ServerMetrics> {
        Arc::clone(&self.server)
    }

    pub fn op(&self, op: Op) -> &OpMetrics {
        // Op::ALL lists every variant in declaration order.
        &self.ops[op as usize]
    }

    /// Records one answered request of `op`.
    pub fn answered(&self, op: Op, took: Duration, tier: Tier, failed: bool) {
        let metrics = self.op(op);
        metrics.latency.record(took);
        metrics.answered[tier as usize].fetch_add(1, Ordering::Relaxed);
        if failed {
            metrics.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a fetch in flight while `work` runs (and stops counting it if it is dropped
    /// unfinished: a prefetch whose client went away).
    pub async fn in_flight<F: Future>(&self, work: F) -> F::Output {
        struct Flying<'a>(&'a AtomicI64);
        impl Drop for Flying<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.fetches_in_flight.fetch_add(1, Ordering::Relaxed);
        let _flying = Flying(&self.fetches_in_flight);
        work.await
    }

    pub fn fetched(&self, bytes: u64) {
        self.fetched_objects.fetch_add(1, Ordering::Relaxed);
        self.fetched_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
        reached(Tier::Cache);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_order_and_bound_what_was_recorded() {
        let latencies = Latencies::default();
        assert_eq!(latencies.percentiles(), Percentiles::default());
        for micros in 1..=100 {
            latencies.record(Duration::from_micros(micros));
        }
        latencies.record(Duration::from_secs(3600));
        let p = latencies.percentiles();
        assert_eq!(p.count, 101);
        let near = |d: Duration, micros: u64| {
            let want = micros as f64 * 1000.0;
            (d.as_nanos() as f64 - want).abs() / want < 0.04
        };
        assert!(near(p.p50, 51), "{p:?}");
        assert!(near(p.p90, 91), "{p:?}");
        assert!(p.p50 <= p.p90 && p.p90 <= p.p99 && p.p99 <= p.max, "{p:?}");
        assert!(
            p.max >= Duration::from_secs(60),
            "an hour counts as the top: {p:?}"
        );
    }

    #[tokio::test]
    async fn requests_say_how_far_they_went() {
        let (_, tier) = tracked(async {}).await;
        assert_eq!(tier, Tier::Memory);
        let (_, tier) = tracked(async {
            reached(Tier::Server);
            reached(Tier::Cache);
        })
        .await;
        assert_eq!(tier, Tier::Server, "the farthest counts");
        let ((), tier) = tracked_here(|| reached(Tier::Cache));
        assert_eq!(tier, Tier::Cache);
        let ((), tier) = tracked_here(|| {});
        assert_eq!(tier, Tier::Memory, "each request starts afresh");
        let metrics = MountMetrics::default();
        metrics.answered(Op::Read, Duration::from_micros(5), Tier::Cache, false);
        metrics.answered(Op::Read, Duration::from_micros(5), Tier::Server, true);
        let read = metrics.op(Op::Read);
        assert_eq!(read.latency.percentiles().count, 2);
        assert_eq!(read.errors.load(Ordering::Relaxed), 1);
        assert_eq!(
            read.answered[Tier::Server as usize].load(Ordering::Relaxed),
            1
        );
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "Op::ALL is in declaration order");
        }
    }

    #[tokio::test]
    async fn a_fetch_dropped_unfinished_is_no_longer_in_flight() {
        let metrics = std::sync::Arc::new(MountMetrics::default());
        let held = {
            let metrics = metrics.clone();
            tokio::spawn(async move { metrics.in_flight(std::future::pending::<()>()).await })
        };
        while metrics.fetches_in_flight.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        held.abort();
        let _ = held.await;
        assert_eq!(metrics.fetches_in_flight.load(Ordering::Relaxed), 0);
    }
}

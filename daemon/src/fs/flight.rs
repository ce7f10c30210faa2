//! Single-flight: concurrent requests for the same work share one run of it. The work runs
//! as its own task, so it completes (and fills the cache) even if every waiter gives up.
//!
//! With a wait limit, the waiting has one deadline per run, shared by every request that
//! waits on it, and a process whose request just failed on a key after a long wait gets the
//! same failure at once for its next request on it (a quick failure costs nothing to meet
//! again): a program's read is several requests (lookup, getattr,
//! open, read), each of which would otherwise wait the whole limit again on the same stuck
//! fetch. Anyone else (another process, trying again by hand) waits anew. Only requests
//! answered for a process have the limit; the daemon's own work (a prefetch, a look-ahead,
//! a mount) waits until the run ends, and a run it started long before gives the first
//! request that joins it a whole window.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use tracing::Instrument;

use super::error::FsError;

/// A run in progress, and whether its work has finished (a finished run whose waiters all gave
/// up is never polled again, so its future alone cannot tell).
struct Flight<T: Clone> {
    result: Shared<BoxFuture<'static, Result<T, FsError>>>,
    done: Arc<AtomicBool>,
    /// Until when the requests waiting on it wait (with a wait limit): set by the first.
    window_ends: Arc<Mutex<Option<Instant>>>,
}

/// A key's last failure, and the processes it was handed to.
struct Failure {
    at: Instant,
    error: FsError,
    askers: Vec<u32>,
}

tokio::task_local! {
    /// The process a request (a task) is answered for.
    static ASKER: u32;
}

/// Runs `work` (a request answered on a task) for process `pid`.
pub async fn asked_by<F: Future>(pid: u32, work: F) -> F::Output {
    ASKER.scope(pid, work).await
}

impl<T: Clone> Clone for Flight<T> {
    fn clone(&self) -> Self {
        Flight {
            result: self.result.clone(),
            done: self.done.clone(),
            window_ends: self.window_ends.clone(),
        }
    }
}

/// How long after a failure a process's next request on the same key fails at once: long
/// enough for the rest of one read's requests.
const RIGHT_AFTER: Duration = Duration::from_secs(2);

/// Runs of work by key, each giving every waiter a `T` (cheap to clone: `()`, an `Arc`).
pub struct Flights<K, T: Clone = ()> {
    running: Mutex<HashMap<K, Flight<T>>>,
    /// How long the waiters of one run wait in all; None: until it ends.
    wait_limit: Option<Duration>,
    /// Recent failures by key (with a wait limit).
    failures: Mutex<HashMap<K, Failure>>,
}

impl<K, T> Flights<K, T>
where
    K: Hash + Eq + Clone + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    #[cfg(test)]
    pub fn new() -> Self {
        Flights::with_wait_limit(None)
    }

    pub fn with_wait_limit(wait_limit: Option<Duration>) -> Self {
        Flights {
            running: Mutex::new(HashMap::new()),
            wait_limit,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `work` for `key` unless a run for `key` is already under way, and waits for
    /// whichever run it joined. The work runs in the current span.
    pub async fn run<F>(&self, key: K, work: F) -> Result<T, FsError>
    where
        F: Future<Output = Result<T, FsError>> + Send + 'static,
    {
        let asker = self.wait_limit.and(ASKER.try_with(|pid| *pid).ok());
        let asked = Instant::now();
        if let Some(error) = asker.and_then(|pid| self.recent_failure(&key, pid)) {
            return Err(error);
        }
        let flight = {
            let mut running = self.lock();
            // A finished flight whose waiters all gave up is stale: start afresh.
            match running
                .get(&key)
                .filter(|f| !f.done.load(Ordering::Acquire))
            {
                Some(flight) => flight.clone(),
                None => {
                    let done = Arc::new(AtomicBool::new(false));
                    let finished = done.clone();
                    let task = tokio::spawn(
                        async move {
                            let result = work.await;
                            finished.store(true, Ordering::Release);
                            result
                        }
                        .instrument(tracing::Span::current()),
                    );
                    let result = async move {
                        task.await
                            .unwrap_or_else(|e| Err(FsError::Internal(format!("fetch task: {e}"))))
                    }
                    .boxed()
                    .shared();
                    let flight = Flight {
                        result,
                        done,
                        window_ends: Arc::new(Mutex::new(None)),
                    };
                    running.insert(key.clone(), flight.clone());
                    flight
                }
            }
        };
        let result = match self.wait_limit.filter(|_| asker.is_some()) {
            None => flight.result.clone().await,
            Some(limit) => {
                let ends = window_for(&flight.window_ends, limit);
                let waited = tokio::time::timeout_at(ends.into(), flight.result.clone()).await;
                match waited {
                    Ok(result) => result,
                    // The work goes on (it fills the cache); this request is answered.
                    Err(_) => {
                        let error = FsError::Timeout(limit);
                        if let Some(pid) = asker {
                            self.remember_failure(&key, pid, &error);
                        }
                        return Err(error);
                    }
                }
            }
        };
        let long_wait = self
            .wait_limit
            .is_some_and(|limit| asked.elapsed() >= limit / 2);
        if let (Err(error), Some(pid), true) = (&result, asker, long_wait) {
            self.remember_failure(&key, pid, error);
        }
        let mut running = self.lock();
        if running
            .get(&key)
            .is_some_and(|f| f.result.ptr_eq(&flight.result))
        {
            running.remove(&key);
        }
        result
    }

    /// The failure `pid` was handed for `key` just before, if any.
    fn recent_failure(&self, key: &K, pid: u32) -> Option<FsError> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let failure = failures.get(key)?;
        (failure.at.elapsed() < RIGHT_AFTER && failure.askers.contains(&pid))
            .then(|| failure.error.clone())
    }

    fn remember_failure(&self, key: &K, pid: u32, error: &FsError) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        failures.retain(|_, f| now < f.at + RIGHT_AFTER);
        let failure = failures.entry(key.clone()).or_insert_with(|| Failure {
            at: now,
            error: error.clone(),
            askers: Vec::new(),
        });
        if !failure.askers.contains(&pid) {
            failure.askers.push(pid);
        }
    }

    /// Whether a run for `key` is under way.
    pub fn is_running(&self, key: &K) -> bool {
        self.lock()
            .get(key)
            .is_some_and(|f| !f.done.load(Ordering::Acquire))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Flight<T>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Until when a request waits on a run: the run's deadline while it holds, else (the first
/// request, or the run outlived the last window and this is not a request that just failed
/// on it) a new one.
fn window_for(window_ends: &Mutex<Option<Instant>>, limit: Duration) -> Instant {
    let mut ends = window_ends.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    match *ends {
        Some(at) if now < at => at,
        _ => *ends.insert(now + limit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn concurrent_runs_share_one() {
        let flights = Arc::new(Flights::<_, ()>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, wait) = tokio::sync::watch::channel(false);
        let mut waiters = Vec::new();
        for _ in 0..4 {
            let flights = flights.clone();
            let runs = runs.clone();
            let mut wait = wait.clone();
            waiters.push(tokio::spawn(async move {
                flights
                    .run("key", async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        let _ = wait.wait_for(|go| *go).await;
                        Ok(())
                    })
                    .await
            }));
        }
        // Let every waiter join before the work may finish.
        while flights.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        release.send(true).expect("release");
        for w in waiters {
            w.await.expect("join").expect("run");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(flights.lock().is_empty());
    }

    #[tokio::test]
    async fn an_abandoned_failure_is_not_handed_to_the_next_caller() {
        let flights = Flights::<_, ()>::new();
        let abandoned = tokio::time::timeout(
            std::time::Duration::from_millis(10),
            flights.run(7, async {
                tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                Err(FsError::NotFound)
            }),
        )
        .await;
        assert!(abandoned.is_err(), "the caller gave up");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        flights.run(7, async { Ok(()) }).await.expect("a fresh run");
    }

    #[tokio::test]
    async fn every_waiter_of_a_run_shares_one_deadline() {
        let limit = Duration::from_millis(200);
        let flights = Arc::new(Flights::<_, ()>::with_wait_limit(Some(limit)));
        let stuck = || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        };
        let started = Instant::now();
        let first = asked_by(42, flights.run(1, stuck())).await;
        assert!(matches!(first, Err(FsError::Timeout(_))), "{first:?}");
        assert!(started.elapsed() < limit * 2, "{:?}", started.elapsed());
        // The same process's next request, right after: at once.
        let again = Instant::now();
        assert!(asked_by(42, flights.run(1, stuck())).await.is_err());
        assert!(again.elapsed() < limit / 2, "{:?}", again.elapsed());
        // Another process (trying again by hand, say) waits anew.
        let other = Instant::now();
        assert!(asked_by(43, flights.run(1, stuck())).await.is_err());
        assert!(other.elapsed() >= limit, "{:?}", other.elapsed());
        // A waiter joining midway waits only what is left of the window.
        let flights2 = flights.clone();
        let early = tokio::spawn(async move { asked_by(1, flights2.run(2, stuck())).await });
        tokio::time::sleep(limit / 2).await;
        let joined = Instant::now();
        assert!(asked_by(2, flights.run(2, stuck())).await.is_err());
        assert!(joined.elapsed() < limit * 3 / 4, "{:?}", joined.elapsed());
        assert!(early.await.expect("join").is_err());
        // The daemon's own work waits until the run ends; a request joining a run that work
        // started long before still has a whole window.
        let flights3 = flights.clone();
        let background = tokio::spawn(async move {
            flights3
                .run(4, async {
                    tokio::time::sleep(Duration::from_millis(1000)).await;
                    Ok(())
                })
                .await
        });
        tokio::time::sleep(limit * 3 / 2).await;
        let late = Instant::now();
        assert!(asked_by(5, flights.run(4, stuck())).await.is_err());
        assert!(late.elapsed() >= limit * 9 / 10, "{:?}", late.elapsed());
        background
            .await
            .expect("join")
            .expect("background work waits to the end");
        // Work that finishes in time is answered as ever.
        asked_by(6, flights.run(3, async { Ok(()) }))
            .await
            .expect("in time");
    }

    #[tokio::test]
    async fn a_later_run_starts_afresh() {
        let flights = Flights::<_, ()>::new();
        flights
            .run(1, async { Err(FsError::NotFound) })
            .await
            .unwrap_err();
        flights.run(1, async { Ok(()) }).await.expect("second run");
    }
}

//! Single-flight: concurrent requests for the same work share one run of it. The work runs
//! as its own task, so it completes (and fills the cache) even if every waiter gives up.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;

use futures::future::{BoxFuture, FutureExt, Shared};
use tracing::Instrument;

use super::error::FsError;

/// A run in progress, and whether its work has finished (a finished run whose waiters all gave
/// up is never polled again, so its future alone cannot tell).
struct Flight<T: Clone> {
    result: Shared<BoxFuture<'static, Result<T, FsError>>>,
    done: Arc<AtomicBool>,
}

impl<T: Clone> Clone for Flight<T> {
    fn clone(&self) -> Self {
        Flight {
            result: self.result.clone(),
            done: self.done.clone(),
        }
    }
}

/// Runs of work by key, each giving every waiter a `T` (cheap to clone: `()`, an `Arc`).
pub struct Flights<K, T: Clone = ()> {
    running: Mutex<HashMap<K, Flight<T>>>,
}

impl<K, T> Flights<K, T>
where
    K: Hash + Eq + Clone + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    pub fn new() -> Self {
        Flights {
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `work` for `key` unless a run for `key` is already under way, and waits for
    /// whichever run it joined. The work runs in the current span.
    pub async fn run<F>(&self, key: K, work: F) -> Result<T, FsError>
    where
        F: Future<Output = Result<T, FsError>> + Send + 'static,
    {
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
                    let flight = Flight { result, done };
                    running.insert(key.clone(), flight.clone());
                    flight
                }
            }
        };
        let result = flight.result.clone().await;
        let mut running = self.lock();
        if running
            .get(&key)
            .is_some_and(|f| f.result.ptr_eq(&flight.result))
        {
            running.remove(&key);
        }
        result
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
    async fn a_later_run_starts_afresh() {
        let flights = Flights::<_, ()>::new();
        flights
            .run(1, async { Err(FsError::NotFound) })
            .await
            .unwrap_err();
        flights.run(1, async { Ok(()) }).await.expect("second run");
    }
}

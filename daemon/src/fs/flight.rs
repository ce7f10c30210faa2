//! Single-flight: concurrent requests for the same work share one run of it. The work runs
//! as its own task, so it completes (and fills the cache) even if every waiter gives up.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;

use futures::future::{BoxFuture, FutureExt, Shared};

use super::error::FsError;

type Flight = Shared<BoxFuture<'static, Result<(), FsError>>>;

pub struct Flights<K> {
    running: Mutex<HashMap<K, Flight>>,
}

impl<K: Hash + Eq + Clone + Send + 'static> Flights<K> {
    pub fn new() -> Self {
        Flights {
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `work` for `key` unless a run for `key` is already under way, and waits for
    /// whichever run it joined.
    pub async fn run<F>(&self, key: K, work: F) -> Result<(), FsError>
    where
        F: Future<Output = Result<(), FsError>> + Send + 'static,
    {
        let flight = {
            let mut running = self.lock();
            match running.get(&key) {
                Some(flight) => flight.clone(),
                None => {
                    let task = tokio::spawn(work);
                    let flight = async move {
                        task.await
                            .unwrap_or_else(|e| Err(FsError::Internal(format!("fetch task: {e}"))))
                    }
                    .boxed()
                    .shared();
                    running.insert(key.clone(), flight.clone());
                    flight
                }
            }
        };
        let result = flight.clone().await;
        let mut running = self.lock();
        if running.get(&key).is_some_and(|f| f.ptr_eq(&flight)) {
            running.remove(&key);
        }
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Flight>> {
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
        let flights = Arc::new(Flights::new());
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
    async fn a_later_run_starts_afresh() {
        let flights = Flights::new();
        flights
            .run(1, async { Err(FsError::NotFound) })
            .await
            .unwrap_err();
        flights.run(1, async { Ok(()) }).await.expect("second run");
    }
}

//! Serving an axum app on a thread of its own, for test servers used from plain (non-async)
//! tests. Dropping the handle stops the server.

use std::time::Duration;

use axum::serve::ListenerExt;
use axum::Router;

pub struct Background {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Serves `app` on `listener` (already bound, non-blocking) until dropped.
    pub fn serve(
        name: &str,
        listener: std::net::TcpListener,
        app: Router,
    ) -> std::io::Result<Background> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    // As web servers do (nginx, Apache): without it, an answer written in
                    // pieces (git http-backend's, streamed) waits on the client's delayed
                    // ACK, about 40 ms an answer on loopback.
                    let listener = listener.tap_io(|stream| {
                        let _ = stream.set_nodelay(true);
                    });
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                });
                // Connections still open (a stalled client) must not keep the thread alive.
                runtime.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(Background {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Blocks until the server ends (for binaries that serve until killed).
    pub fn wait(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

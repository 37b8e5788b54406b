//! The accept loop: HTTP/1 connections served by hyper with two protections `axum::serve`
//! lacks. A client that does not finish its request head within `header_read_timeout` is
//! disconnected (a slow-loris client cannot hold a connection open for free; the same clock
//! closes keep-alive connections left idle that long). At most `max_connections` are open at
//! once: beyond it the loop stops accepting, so new connections wait in the operating system's
//! listen queue until one closes, rather than being refused.

use crate::metrics::Metrics;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io::ErrorKind;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Time a connection has to send a complete request head (from when it opens, or from
    /// its previous response when kept alive).
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets every
/// open connection finish the request it is on, and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closing_seen) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Take a slot before accepting, so that at the limit nothing more is accepted.
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // the semaphore is never closed
            },
        };
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    pause_after_accept_error(&err).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let mut closing_seen = closing_seen.clone();
        let metrics = metrics.clone();
        metrics.open_connections.fetch_add(1, Ordering::Relaxed);
        connections.spawn(async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = closing_seen.changed() => {
                    // Finish the request in flight (if any), answer it with
                    // `Connection: close`, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = result {
                tracing::debug!("connection closed: {err}");
            }
            metrics.open_connections.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    while connections.join_next().await.is_some() {}
}

/// Errors that concern one connection (it was reset before we took it) need no pause; the
/// others (out of file descriptors, mostly) would fail again at once, so wait before retrying.
async fn pause_after_accept_error(err: &std::io::Error) {
    let one_connection = matches!(
        err.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    );
    if !one_connection {
        tracing::error!("accepting a connection failed: {err}; retrying in 1 s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

//! The OpenAI Images API over HTTP for an unCLIP pipeline folder, so that existing OpenAI
//! clients work against a local model unchanged.
//!
//! - `POST /v1/images/generations` (JSON), `POST /v1/images/variations` and
//!   `POST /v1/images/edits` (multipart), with OpenAI's request, response and error shapes;
//!   `response_format` `b64_json` or `url` (served at `/v1/files/{id}.png` for
//!   [`ServerConfig::url_ttl`], one hour by default).
//! - `GET /v1/models`, `GET /healthz`, `GET /metrics` (Prometheus), `GET /` (a web page).
//! - Model work runs on one dedicated thread fed by a bounded queue (429 + Retry-After when
//!   full); concurrent requests are merged into shared batches; requests whose client left
//!   are skipped; shutdown drains what was accepted.
//! - Connections: a client must finish its request head within `header_read_timeout`, and at
//!   most `max_connections` are served at once (more wait to be accepted).

pub mod api;
mod auth;
mod connections;
pub mod engine;
mod error;
mod files;
pub mod metrics;
mod routes;
mod worker;

pub use auth::ApiKeys;
pub use engine::Engine;
pub use error::{ApiError, ServerError};
pub use worker::BatchPolicy;

use api::ModelInfo;
use connections::ConnectionLimits;
use files::ImageStore;
use metrics::Metrics;
use routes::AppState;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use unclip::diffusion::Sampler;
use unclip::pipeline::GenerateOptions;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub model_dir: PathBuf,
    /// Steps and guidance for every request.
    pub options: GenerateOptions,
    /// Empty: no key needed.
    pub api_keys: ApiKeys,
    pub batch: BatchPolicy,
    /// Requests waiting for the model beyond the one running; more are answered 429.
    pub max_queue: usize,
    /// A request that takes longer (reading, queueing, generating) is answered 408.
    pub request_timeout: Duration,
    /// How long an image URL works.
    pub url_ttl: Duration,
    /// Memory for images kept for URLs; the oldest go first when it is full.
    pub max_stored_bytes: usize,
    /// Connections served at once; further ones wait in the listen queue until one closes.
    pub max_connections: usize,
    /// A connection that has not sent a complete request head this long after opening (or
    /// after its previous response) is closed: slow-loris clients and idle keep-alives.
    pub header_read_timeout: Duration,
    /// Times each inpainting step is redone so the repainted region matches its surroundings
    /// (RePaint's resampling, as `unclip edit --resample`; 1: none).
    pub edit_resamples: usize,
}

impl ServerConfig {
    pub fn new(model_dir: impl Into<PathBuf>) -> Self {
        Self {
            model_dir: model_dir.into(),
            options: GenerateOptions::default(),
            api_keys: ApiKeys::default(),
            batch: BatchPolicy {
                max_batch: 8,
                batch_wait: Duration::from_millis(5),
            },
            max_queue: 64,
            request_timeout: Duration::from_secs(300),
            url_ttl: Duration::from_secs(3600),
            max_stored_bytes: 256 * 1024 * 1024,
            max_connections: 256,
            header_read_timeout: Duration::from_secs(30),
            edit_resamples: 3,
        }
    }
}

/// A server answering on a listener, until [`RunningServer::shutdown`].
pub struct RunningServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// Stops accepting connections, lets in-flight requests finish, stops the worker.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task
            .await
            .map_err(|e| ServerError::Config(format!("the server task failed: {e}")))?
    }
}

/// Loads the model and starts serving on `listener` in a background task.
pub async fn start(
    config: ServerConfig,
    listener: TcpListener,
) -> Result<RunningServer, ServerError> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let addr = listener.local_addr().map_err(|cause| ServerError::Bind {
        addr: "the listener".into(),
        cause,
    })?;
    let served = prepare(config, addr)?;
    let task = tokio::spawn(served.run(listener, async move {
        let _ = stopped.await;
    }));
    Ok(RunningServer {
        addr,
        stop: Some(stop),
        task,
    })
}

/// `unclip serve`: listens on `addr` until SIGTERM or Ctrl-C, then drains and returns.
pub fn serve_blocking(config: ServerConfig, addr: &str) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|cause| ServerError::Io {
            path: "tokio runtime".into(),
            cause,
        })?;
    runtime.block_on(async {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|cause| ServerError::Bind {
                addr: addr.to_string(),
                cause,
            })?;
        let local = listener.local_addr().map_err(|cause| ServerError::Bind {
            addr: addr.to_string(),
            cause,
        })?;
        let served = prepare(config, local)?;
        eprintln!("unclip serve: listening on http://{local} (Ctrl-C or SIGTERM to stop)");
        served.run(listener, shutdown_signal()).await
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("unclip serve: shutting down, finishing requests in flight");
}

struct Prepared {
    router: axum::Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    worker: std::thread::JoinHandle<()>,
}

/// Most connections `max_connections` may allow (the semaphore's permits are bounded, and a
/// process runs out of file descriptors long before).
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;

fn prepare(config: ServerConfig, addr: SocketAddr) -> Result<Prepared, ServerError> {
    if config.batch.max_batch == 0 || config.max_queue == 0 {
        return Err(ServerError::Config(format!(
            "max batch {} and max queue {} must both be at least 1",
            config.batch.max_batch, config.max_queue
        )));
    }
    if !(1..=MAX_CONNECTIONS_LIMIT).contains(&config.max_connections) {
        return Err(ServerError::Config(format!(
            "max connections {}; allowed: 1..={MAX_CONNECTIONS_LIMIT}",
            config.max_connections
        )));
    }
    if config.header_read_timeout.is_zero() {
        return Err(ServerError::Config(
            "the header read timeout is zero; allowed: any positive duration".into(),
        ));
    }
    if !(1..=20).contains(&config.edit_resamples) {
        return Err(ServerError::Config(format!(
            "edit resamples {}; allowed: 1..=20 (1: no resampling)",
            config.edit_resamples
        )));
    }
    // The schedulers take 2..=1000 steps; a bad value would otherwise fail every request.
    let steps = &config.options;
    for (name, value) in [
        ("prior steps", steps.prior_steps),
        ("decoder steps", steps.decoder_steps),
        ("super-res steps", steps.super_res_steps),
    ] {
        if !(2..=1000).contains(&value) {
            return Err(ServerError::Config(format!(
                "{name} = {value}; allowed: 2..=1000"
            )));
        }
    }
    if config.edit_resamples > 1 && config.options.sampler == Sampler::DpmSolverPlusPlus {
        return Err(ServerError::Config(
            "edits redo sampling steps, which the multistep DPM-Solver++ cannot; allowed: ddpm or ddim, or edit resamples = 1".into(),
        ));
    }
    let engine = Engine::load(
        &config.model_dir,
        config.options.clone(),
        config.edit_resamples,
    )?;
    if !engine.can_generate() && !engine.can_vary() {
        return Err(ServerError::Config(format!(
            "{}: the pipeline has neither prior/ (text to image) nor image_encoder/ (variations)",
            config.model_dir.display()
        )));
    }
    let model = Arc::new(ModelInfo {
        name: engine.name().to_string(),
        size: engine.size_label(),
    });
    let (can_generate, can_vary, can_edit) =
        (engine.can_generate(), engine.can_vary(), engine.can_edit());
    let metrics = Arc::new(Metrics::default());
    let limits = ConnectionLimits {
        max_connections: config.max_connections,
        header_read_timeout: config.header_read_timeout,
    };
    let (worker, thread) = worker::spawn(engine, config.batch, config.max_queue, metrics.clone())
        .map_err(|cause| ServerError::Io {
        path: "model worker thread".into(),
        cause,
    })?;
    let state = AppState {
        worker,
        store: Arc::new(ImageStore::new(config.url_ttl, config.max_stored_bytes)),
        metrics: metrics.clone(),
        keys: config.api_keys,
        model,
        can_generate,
        can_vary,
        can_edit,
        base_url: Arc::new(format!("http://{addr}")),
    };
    Ok(Prepared {
        router: routes::router(state, config.request_timeout),
        limits,
        metrics,
        worker: thread,
    })
}

impl Prepared {
    async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        connections::serve(listener, self.router, self.limits, self.metrics, shutdown).await;
        // Every connection has closed and the router (and with it every queue sender) is gone:
        // the worker finishes what was queued and ends. Wait for it, but not forever.
        let worker = self.worker;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !worker.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

//! The HTTP surface: routes, handlers and the layers around them (keys, limits, timeouts,
//! metrics, OpenAI-shaped errors for everything that fails).

use crate::api::{
    self, ImageParams, ModelInfo, ResponseFormat, EDIT_FIELDS, MAX_IMAGE_BYTES, MAX_PROMPT_CHARS,
    VARIATION_FIELDS,
};
use crate::auth::{self, ApiKeys};
use crate::error::ApiError;
use crate::files::ImageStore;
use crate::metrics::{self, Metrics};
use crate::worker::{Job, SubmitError, Task, WorkerHandle};
use axum::body::Bytes;
use axum::extract::multipart::{Field, MultipartRejection};
use axum::extract::{DefaultBodyLimit, FromRef, Multipart, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self as mw, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

/// JSON bodies are a prompt and a few short fields.
pub const JSON_BODY_LIMIT: usize = 64 * 1024;
/// A 4 MB image plus the form's other fields and multipart framing.
pub const FORM_BODY_LIMIT: usize = MAX_IMAGE_BYTES + 64 * 1024;
/// An edit carries two images (the picture and its mask).
pub const EDIT_BODY_LIMIT: usize = 2 * MAX_IMAGE_BYTES + 64 * 1024;
/// Text form fields (n, size, ...) are a few bytes.
const FORM_FIELD_LIMIT: usize = 1024;
/// A prompt of the most characters, each as long as UTF-8 makes one.
const PROMPT_FIELD_LIMIT: usize = 4 * MAX_PROMPT_CHARS;
/// Form fields that carry files.
const FILE_FIELDS: &[&str] = &["image", "mask"];

#[derive(Clone)]
pub struct AppState {
    pub worker: WorkerHandle,
    pub store: Arc<ImageStore>,
    pub metrics: Arc<Metrics>,
    pub keys: ApiKeys,
    pub model: Arc<ModelInfo>,
    pub can_generate: bool,
    pub can_vary: bool,
    pub can_edit: bool,
    /// Where image URLs point when the request has no usable Host header.
    pub base_url: Arc<String>,
}

impl FromRef<AppState> for ApiKeys {
    fn from_ref(state: &AppState) -> Self {
        state.keys.clone()
    }
}

impl FromRef<AppState> for Arc<Metrics> {
    fn from_ref(state: &AppState) -> Self {
        state.metrics.clone()
    }
}

pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let api = Router::new()
        .route(
            "/v1/images/generations",
            post(generations).layer(DefaultBodyLimit::max(JSON_BODY_LIMIT)),
        )
        .route(
            "/v1/images/variations",
            post(variations).layer(DefaultBodyLimit::max(FORM_BODY_LIMIT)),
        )
        .route(
            "/v1/images/edits",
            post(edits).layer(DefaultBodyLimit::max(EDIT_BODY_LIMIT)),
        )
        .route("/v1/models", get(models))
        .route_layer(mw::from_fn_with_state(state.clone(), auth::require_key));
    Router::new()
        .merge(api)
        // Unauthenticated, as OpenAI's image URLs are: the 128-bit id is the secret.
        .route("/v1/files/{name}", get(file))
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(CatchPanicLayer::new())
        .layer(mw::from_fn(openai_errors))
        .layer(mw::from_fn_with_state(state.clone(), metrics::record))
        .with_state(state)
}

/// Rewrites every error that did not come from our handlers (unknown route, wrong method,
/// body too large, timeout, panic) into OpenAI's error JSON.
async fn openai_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let mut shaped = ApiError::from_status(status, &String::from_utf8_lossy(&text)).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(value) = parts.headers.get(&name) {
            shaped.headers_mut().insert(name, value.clone());
        }
    }
    shaped
}

async fn not_found() -> ApiError {
    ApiError::from_status(StatusCode::NOT_FOUND, "")
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

fn wrong_media_type(expected: &str, got: &str) -> ApiError {
    let got = if got.is_empty() { "none" } else { got };
    ApiError::request(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("Content-Type must be {expected} (got {got})"),
    )
}

async fn generations(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let media = media_type(&headers);
    if media != "application/json" {
        return Err(wrong_media_type("application/json", &media));
    }
    let request = api::parse_generation(&body, &state.model)?;
    if !state.can_generate {
        return Err(ApiError::request(
            StatusCode::BAD_REQUEST,
            "this model has no prior/ and cannot generate from text; it serves /v1/images/variations only",
        ));
    }
    let task = Task::Generate {
        prompt: request.prompt,
    };
    run(&state, &headers, task, request.params).await
}

/// The multipart form of a request, after its media type is checked.
fn multipart(
    headers: &HeaderMap,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Multipart, ApiError> {
    let media = media_type(headers);
    if media != "multipart/form-data" {
        return Err(wrong_media_type("multipart/form-data", &media));
    }
    form.map_err(|e| {
        ApiError::request(
            StatusCode::BAD_REQUEST,
            format!("malformed multipart request: {}", e.body_text()),
        )
    })
}

async fn variations(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut form = read_form(multipart(&headers, form)?, VARIATION_FIELDS).await?;
    let image = form.files.remove("image");
    let fields = form.fields;
    let params = api::parse_variation_fields(&fields, &state.model)?;
    let Some(image) = image else {
        return Err(ApiError::invalid(
            "image",
            "`image` is required (a square PNG under 4 MB)",
        ));
    };
    if !state.can_vary {
        return Err(ApiError::request(
            StatusCode::BAD_REQUEST,
            "this model has no image_encoder/ and cannot make variations",
        ));
    }
    // Decoding a large PNG takes a while: keep it off the async workers.
    // The permit goes with the decode: a client that leaves does not end the decode.
    let decoding = decode_permit().await?;
    let image = tokio::task::spawn_blocking(move || {
        let _decoding = decoding;
        api::decode_upload(&image)
    })
    .await
    .map_err(|_| ApiError::internal("the image decoder failed"))??;
    let task = Task::Vary {
        image: Arc::new(image),
    };
    run(&state, &headers, task, params).await
}

async fn edits(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut form = read_form(multipart(&headers, form)?, EDIT_FIELDS).await?;
    let request = api::parse_edit_fields(&form.fields, &state.model)?;
    let Some(image) = form.files.remove("image") else {
        return Err(ApiError::invalid(
            "image",
            "`image` is required (a square PNG under 4 MB; alpha 0 marks where to repaint unless a `mask` is given)",
        ));
    };
    if !state.can_edit {
        return Err(ApiError::request(
            StatusCode::BAD_REQUEST,
            "this model has no prior/ and cannot paint from text; edits need a text-to-image pipeline",
        ));
    }
    let mask = form.files.remove("mask");
    let decoding = decode_permit().await?;
    let images = tokio::task::spawn_blocking(move || {
        let _decoding = decoding;
        api::decode_edit_uploads(&image, mask.as_deref())
    })
    .await
    .map_err(|_| ApiError::internal("the image decoder failed"))??;
    let task = Task::Edit {
        image: images.image,
        mask: images.mask,
        prompt: request.prompt,
    };
    run(&state, &headers, task, request.params).await
}

/// A multipart form as read: file fields' bytes and text fields.
struct Form {
    files: HashMap<String, Vec<u8>>,
    fields: Map<String, Value>,
}

/// Reads a form whose field names must be among `allowed` ([`FILE_FIELDS`] are files, each
/// up to 4 MB; the rest short text).
async fn read_form(mut form: Multipart, allowed: &[&str]) -> Result<Form, ApiError> {
    let mut files = HashMap::new();
    let mut fields = Map::new();
    let malformed = |e: axum::extract::multipart::MultipartError| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::from_status(status, "")
        } else {
            ApiError::request(
                StatusCode::BAD_REQUEST,
                format!("unreadable multipart body: {}", e.body_text()),
            )
        }
    };
    while let Some(field) = form.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_string();
        api::check_form_field(&name, allowed)?;
        if FILE_FIELDS.contains(&name.as_str()) {
            let bytes = read_capped(field, MAX_IMAGE_BYTES, &name).await?;
            files.insert(name, bytes);
        } else {
            let cap = if name == "prompt" {
                PROMPT_FIELD_LIMIT
            } else {
                FORM_FIELD_LIMIT
            };
            let bytes = read_capped(field, cap, &name).await?;
            let text = String::from_utf8(bytes).map_err(|_| {
                ApiError::invalid(name.clone(), format!("`{name}` is not UTF-8 text"))
            })?;
            fields.insert(name, Value::String(text));
        }
    }
    Ok(Form { files, fields })
}

async fn read_capped(mut field: Field<'_>, cap: usize, name: &str) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        let what = if FILE_FIELDS.contains(&name) {
            "4 MB".to_string()
        } else if name == "prompt" {
            format!("{MAX_PROMPT_CHARS} characters")
        } else {
            format!("{cap} bytes")
        };
        // 400 naming the field (OpenAI's answer to an image over 4 MB) whichever limit is met
        // first, this field's or the whole body's: the two race on how the upload arrives,
        // and a client should see one answer for one file.
        ApiError::invalid(
            name.to_string(),
            format!("`{name}` is larger than the maximum of {what}"),
        )
    };
    let mut bytes = Vec::new();
    loop {
        let chunk = field.chunk().await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::request(
                    e.status(),
                    format!("unreadable multipart body: {}", e.body_text()),
                )
            }
        })?;
        let Some(chunk) = chunk else {
            return Ok(bytes);
        };
        if bytes.len() + chunk.len() > cap {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
}

/// Queues the job, waits for the worker and answers in the requested format. If the client
/// disconnects, this future is dropped with its receiver, and the worker skips the job.
async fn run(
    state: &AppState,
    headers: &HeaderMap,
    task: Task,
    params: ImageParams,
) -> Result<Response, ApiError> {
    let (reply, answer) = oneshot::channel();
    let job = Job {
        task,
        n: params.n,
        reply,
    };
    state.worker.submit(job).map_err(|err| match err {
        SubmitError::Full(seconds) => ApiError::overloaded(seconds),
        SubmitError::Stopped => ApiError::unavailable("the server is shutting down"),
    })?;
    let pngs = answer
        .await
        .map_err(|_| ApiError::internal("the model worker stopped before answering"))?
        .map_err(|message| ApiError::internal(format!("image generation failed: {message}")))?;
    let base = base_url(headers, &state.base_url);
    let data: Vec<Value> = pngs
        .into_iter()
        .map(|png| match params.format {
            ResponseFormat::B64Json => {
                json!({ "b64_json": base64::engine::general_purpose::STANDARD.encode(&png) })
            }
            ResponseFormat::Url => {
                let id = state.store.insert(Bytes::from(png));
                json!({ "url": format!("{base}/v1/files/{id}.png") })
            }
        })
        .collect();
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(Json(json!({ "created": created, "data": data })).into_response())
}

/// `http://HOST` from the request's Host header when it is a plain host[:port], so that URLs
/// work from wherever the client reached us; the listen address otherwise.
fn base_url(headers: &HeaderMap, fallback: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
    match host {
        Some(host) => format!("http://{host}"),
        None => fallback.to_string(),
    }
}

async fn file(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    let id = name.strip_suffix(".png").unwrap_or(&name);
    match state.store.get(id) {
        Some(png) => {
            let max_age = format!("private, max-age={}", state.store.ttl().as_secs());
            let mut response = (StatusCode::OK, png).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
            if let Ok(value) = HeaderValue::from_str(&max_age) {
                headers.insert(header::CACHE_CONTROL, value);
            }
            response
        }
        None => ApiError::request(
            StatusCode::NOT_FOUND,
            format!(
                "no such image; image URLs expire {} seconds after they are made",
                state.store.ttl().as_secs()
            ),
        )
        .into_response(),
    }
}

async fn models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model.name,
            "object": "model",
            "created": 0,
            "owned_by": "unclip",
            "sizes": [state.model.size],
            "generations": state.can_generate,
            "variations": state.can_vary,
            "edits": state.can_edit,
        }]
    }))
}

async fn healthz(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "model": state.model.name,
        "queue_depth": state.metrics.queue_depth.load(std::sync::atomic::Ordering::Relaxed),
    }))
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

/// Uploads decoded at once. A decode of a 4096 px, 16-bit PNG needs about 128 MB for a moment;
/// without a bound, a burst of small uploads multiplies that by the number of connections.
const CONCURRENT_DECODES: usize = 2;

static DECODES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONCURRENT_DECODES);

async fn decode_permit() -> Result<tokio::sync::SemaphorePermit<'static>, ApiError> {
    DECODES
        .acquire()
        .await
        .map_err(|_| ApiError::internal("the image decoder is shut down"))
}

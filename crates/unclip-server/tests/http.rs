//! The server on loopback (an ephemeral port) with the tiny random-weight pipeline and few
//! steps, driven over real HTTP: every endpoint and every error path.

#![cfg(unix)]

use reqwest::multipart::{Form, Part};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use unclip::pipeline::GenerateOptions;
use unclip_server::{ApiKeys, BatchPolicy, RunningServer, ServerConfig};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/oracle/fixtures")
}

/// The tiny text-to-image pipeline plus the variation pipeline's image encoder, in one folder
/// (the committed fixtures hold them apart).
fn full_model() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("unclip-serve-model-{}", std::process::id()));
    let model = dir.join("unclip_tiny_full");
    if model.join("model_index.json").exists() {
        return model;
    }
    let staging = dir.join(format!("staging-{:?}", std::thread::current().id()));
    std::fs::create_dir_all(&staging).unwrap();
    let tiny = fixtures().join("unclip_tiny");
    for entry in std::fs::read_dir(&tiny).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path(), staging.join(entry.file_name())).unwrap();
    }
    for part in ["image_encoder", "feature_extractor"] {
        let target = fixtures().join("unclip_tiny_variation").join(part);
        std::os::unix::fs::symlink(target, staging.join(part)).unwrap();
    }
    // Another test may have finished first; either folder is the same.
    let _ = std::fs::rename(&staging, &model);
    let _ = std::fs::remove_dir_all(&staging);
    model
}

fn config() -> ServerConfig {
    ServerConfig {
        options: GenerateOptions {
            prior_steps: 2,
            decoder_steps: 2,
            super_res_steps: 2,
            ..GenerateOptions::default()
        },
        ..ServerConfig::new(full_model())
    }
}

async fn start(config: ServerConfig) -> (RunningServer, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = unclip_server::start(config, listener).await.unwrap();
    let base = format!("http://{}", server.addr);
    (server, base)
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 90]));
    unclip_server::engine::encode_png(&image).unwrap()
}

/// An RGBA PNG whose alpha is 0 inside `hole` (x0, y0, x1, y1, exclusive ends) and 255
/// elsewhere; the colours are a gradient so that kept pixels can be compared.
fn rgba_png(width: u32, height: u32, hole: Option<(u32, u32, u32, u32)>) -> Vec<u8> {
    let image = image::RgbaImage::from_fn(width, height, |x, y| {
        let inside =
            hole.is_some_and(|(x0, y0, x1, y1)| (x0..x1).contains(&x) && (y0..y1).contains(&y));
        image::Rgba([
            (x * 7) as u8,
            (y * 7) as u8,
            120,
            if inside { 0 } else { 255 },
        ])
    });
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

fn png_part(bytes: Vec<u8>) -> Part {
    Part::bytes(bytes)
        .file_name("image.png")
        .mime_str("image/png")
        .unwrap()
}

/// Asserts OpenAI's error shape and returns the error object.
async fn error_of(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE].clone();
    assert!(content_type
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = response.json().await.unwrap();
    let error = body["error"].clone();
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{body}"
    );
    error
}

fn decode_png(bytes: &[u8]) -> image::DynamicImage {
    image::load_from_memory_with_format(bytes, image::ImageFormat::Png).unwrap()
}

fn b64(item: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(item["b64_json"].as_str().unwrap())
        .unwrap()
}

#[tokio::test]
async fn generations_and_variations_in_both_formats() {
    let (server, base) = start(config()).await;
    let client = Client::new();
    let url = format!("{base}/v1/images/generations");

    let response = client
        .post(&url)
        .json(&json!({"prompt": "a red circle", "n": 2, "size": "32x32", "response_format": "b64_json"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let first = b64(&data[0]);
    let image = decode_png(&first);
    assert_eq!((image.width(), image.height()), (32, 32));

    // url (the default format): a link on this server that serves the PNG.
    let body: Value = client
        .post(&url)
        .json(&json!({"prompt": "a blue square"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let link = body["data"][0]["url"].as_str().unwrap();
    assert!(link.starts_with(&format!("{base}/v1/files/")), "{link}");
    let file = client.get(link).send().await.unwrap();
    assert_eq!(file.status(), 200);
    assert_eq!(file.headers()[reqwest::header::CONTENT_TYPE], "image/png");
    assert_eq!(decode_png(&file.bytes().await.unwrap()).width(), 32);
    let missing = client
        .get(format!(
            "{base}/v1/files/0123456789abcdef0123456789abcdef.png"
        ))
        .send()
        .await
        .unwrap();
    let error = error_of(missing, StatusCode::NOT_FOUND).await;
    assert!(error["message"].as_str().unwrap().contains("expire"));

    // Variations of the generated image, as the openai client sends them.
    let form = Form::new()
        .part(
            "image",
            Part::bytes(first)
                .file_name("image.png")
                .mime_str("image/png")
                .unwrap(),
        )
        .text("n", "3")
        .text("size", "32x32")
        .text("response_format", "b64_json");
    let response = client
        .post(format!("{base}/v1/images/variations"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for item in data {
        assert_eq!(decode_png(&b64(item)).height(), 32);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn models_health_metrics_and_page() {
    let (server, base) = start(config()).await;
    let client = Client::new();
    let models: Value = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "unclip_tiny_full");
    assert_eq!(models["data"][0]["sizes"][0], "32x32");
    let health: Value = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let page = client.get(&base).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("/v1/images/generations"));

    let generated = client
        .post(format!("{base}/v1/images/generations"))
        .json(&json!({"prompt": "x", "n": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(generated.status(), 200);
    let _ = client.get(format!("{base}/nowhere")).send().await.unwrap();
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert!(metrics.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.text().await.unwrap();
    for line in [
        "unclip_http_requests_total{route=\"/v1/models\",status=\"200\"} 1",
        "unclip_http_requests_total{route=\"/v1/images/generations\",status=\"200\"} 1",
        "unclip_http_requests_total{route=\"unmatched\",status=\"404\"} 1",
        "unclip_images_generated_total 3",
        "unclip_queue_depth 0",
        "unclip_batch_images_count 1",
        "unclip_http_request_duration_seconds_count{route=\"/healthz\"} 1",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
    // At least the connection that asked for the metrics is open.
    assert!(metric(&text, "unclip_open_connections") >= 1.0, "{text}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_generation_requests_get_openai_errors() {
    let (server, base) = start(config()).await;
    let client = Client::new();
    let url = format!("{base}/v1/images/generations");
    let cases = [
        (json!({}), "prompt"),
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": "x".repeat(1001)}), "prompt"),
        (json!({"prompt": "x", "n": 0}), "n"),
        (json!({"prompt": "x", "n": 11}), "n"),
        (json!({"prompt": "x", "size": "256x256"}), "size"),
        (
            json!({"prompt": "x", "response_format": "jpeg"}),
            "response_format",
        ),
        (json!({"prompt": "x", "model": "dall-e-3"}), "model"),
        (json!({"prompt": "x", "quality": "hd"}), "quality"),
    ];
    for (body, param) in cases {
        let response = client.post(&url).json(&body).send().await.unwrap();
        let error = error_of(response, StatusCode::BAD_REQUEST).await;
        assert_eq!(error["param"], param, "{body}: {error}");
        assert_eq!(error["type"], "invalid_request_error");
    }
    let size = error_of(
        client
            .post(&url)
            .json(&json!({"prompt": "x", "size": "1024x1024"}))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(
        size["message"].as_str().unwrap().contains("allowed: 32x32"),
        "{size}"
    );

    let broken = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"prompt\":")
        .send()
        .await
        .unwrap();
    error_of(broken, StatusCode::BAD_REQUEST).await;
    let untyped = client
        .post(&url)
        .body(r#"{"prompt":"x"}"#)
        .send()
        .await
        .unwrap();
    error_of(untyped, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let form = client
        .post(&url)
        .form(&[("prompt", "x")])
        .send()
        .await
        .unwrap();
    error_of(form, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let huge = client
        .post(&url)
        .header("content-type", "application/json")
        .body(format!(r#"{{"prompt":"{}"}}"#, "x".repeat(100_000)))
        .send()
        .await
        .unwrap();
    error_of(huge, StatusCode::PAYLOAD_TOO_LARGE).await;
    let wrong_method = client.get(&url).send().await.unwrap();
    error_of(wrong_method, StatusCode::METHOD_NOT_ALLOWED).await;
    let unknown = client
        .post(format!("{base}/v1/images/inpaintings"))
        .send()
        .await
        .unwrap();
    error_of(unknown, StatusCode::NOT_FOUND).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_variation_requests_get_openai_errors() {
    let (server, base) = start(config()).await;
    let client = Client::new();
    let url = format!("{base}/v1/images/variations");
    let image = |bytes: Vec<u8>| {
        Part::bytes(bytes)
            .file_name("image.png")
            .mime_str("image/png")
            .unwrap()
    };
    let cases: Vec<(Form, &str, &str)> = vec![
        (Form::new().text("n", "1"), "image", "required"),
        (
            Form::new().part("image", image(b"GIF89a....".to_vec())),
            "image",
            "PNG",
        ),
        (
            Form::new().part("image", image(png(16, 8))),
            "image",
            "square",
        ),
        (
            Form::new().part("image", image(png(8, 8))).text("n", "0"),
            "n",
            "1 to 10",
        ),
        (
            Form::new().part("image", image(png(8, 8))).text("n", "ten"),
            "n",
            "1 to 10",
        ),
        (
            Form::new()
                .part("image", image(png(8, 8)))
                .text("size", "512x512"),
            "size",
            "32x32",
        ),
        (
            Form::new()
                .part("image", image(png(8, 8)))
                .text("response_format", "gif"),
            "response_format",
            "b64_json",
        ),
        (
            Form::new()
                .part("image", image(png(8, 8)))
                .text("mask", "x"),
            "mask",
            "unrecognized",
        ),
        (
            Form::new().part("image", image(vec![7u8; 4 * 1024 * 1024 + 1])),
            "image",
            "4 MB",
        ),
    ];
    for (form, param, words) in cases {
        let response = client.post(&url).multipart(form).send().await.unwrap();
        let error = error_of(response, StatusCode::BAD_REQUEST).await;
        assert_eq!(error["param"], param, "{error}");
        assert!(
            error["message"].as_str().unwrap().contains(words),
            "{error}"
        );
    }
    let json = client
        .post(&url)
        .json(&json!({"image": "x"}))
        .send()
        .await
        .unwrap();
    error_of(json, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let no_boundary = client
        .post(&url)
        .header("content-type", "multipart/form-data")
        .body("x")
        .send()
        .await
        .unwrap();
    error_of(no_boundary, StatusCode::BAD_REQUEST).await;
    // Past the body limit too, the answer is the one for an image over 4 MB (above), every time.
    for _ in 0..5 {
        let too_big = Form::new().part("image", image(vec![0u8; 6 * 1024 * 1024]));
        let response = client.post(&url).multipart(too_big).send().await.unwrap();
        let error = error_of(response, StatusCode::BAD_REQUEST).await;
        assert_eq!(error["param"], "image", "{error}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn api_keys_are_required_when_configured() {
    let (server, base) = start(ServerConfig {
        api_keys: ApiKeys::new(vec!["sk-test-one".into(), "sk-test-two".into()]),
        ..config()
    })
    .await;
    let client = Client::new();
    let models = format!("{base}/v1/models");
    let none = client.get(&models).send().await.unwrap();
    let error = error_of(none, StatusCode::UNAUTHORIZED).await;
    assert_eq!(error["code"], "invalid_api_key");
    let wrong = client
        .get(&models)
        .bearer_auth("sk-test-on")
        .send()
        .await
        .unwrap();
    error_of(wrong, StatusCode::UNAUTHORIZED).await;
    let basic = client
        .get(&models)
        .basic_auth("sk-test-one", None::<&str>)
        .send()
        .await
        .unwrap();
    error_of(basic, StatusCode::UNAUTHORIZED).await;
    let generation = client
        .post(format!("{base}/v1/images/generations"))
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    error_of(generation, StatusCode::UNAUTHORIZED).await;
    let variation = client
        .post(format!("{base}/v1/images/variations"))
        .multipart(Form::new().text("n", "1"))
        .send()
        .await
        .unwrap();
    error_of(variation, StatusCode::UNAUTHORIZED).await;
    let edit = client
        .post(format!("{base}/v1/images/edits"))
        .multipart(Form::new().text("prompt", "x"))
        .send()
        .await
        .unwrap();
    error_of(edit, StatusCode::UNAUTHORIZED).await;
    for key in ["sk-test-one", "sk-test-two"] {
        let ok = client.get(&models).bearer_auth(key).send().await.unwrap();
        assert_eq!(ok.status(), 200);
    }
    // Health, metrics and the page stay open (the page asks for the key itself).
    for path in ["/healthz", "/metrics", "/"] {
        assert_eq!(
            client
                .get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    server.shutdown().await.unwrap();
}

fn slow_config() -> ServerConfig {
    ServerConfig {
        options: GenerateOptions {
            prior_steps: 10,
            decoder_steps: 10,
            super_res_steps: 4,
            ..GenerateOptions::default()
        },
        ..config()
    }
}

async fn generate(client: Client, base: String, n: usize) -> reqwest::Response {
    client
        .post(format!("{base}/v1/images/generations"))
        .json(&json!({"prompt": "a queue", "n": n, "response_format": "b64_json"}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let (server, base) = start(ServerConfig {
        max_queue: 1,
        batch: BatchPolicy {
            max_batch: 1,
            batch_wait: Duration::ZERO,
        },
        ..config()
    })
    .await;
    let client = Client::new();
    let requests: Vec<_> = (0..12)
        .map(|_| generate(client.clone(), base.clone(), 4))
        .collect();
    let responses = futures_join_all(requests).await;
    let mut ok = 0;
    let mut limited = 0;
    for response in responses {
        match response.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let seconds: u64 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&seconds));
                let error = error_of(response, StatusCode::TOO_MANY_REQUESTS).await;
                assert_eq!(error["code"], "rate_limit_exceeded");
                limited += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok >= 1 && limited >= 1, "ok {ok}, limited {limited}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_requests_share_batches() {
    let (server, base) = start(ServerConfig {
        batch: BatchPolicy {
            max_batch: 8,
            batch_wait: Duration::from_millis(300),
        },
        ..config()
    })
    .await;
    let client = Client::new();
    let responses = futures_join_all(
        (0..4)
            .map(|_| generate(client.clone(), base.clone(), 2))
            .collect(),
    )
    .await;
    for response in responses {
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["data"].as_array().unwrap().len(), 2);
    }
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("unclip_images_generated_total 8"), "{text}");
    // 4 requests of 2 images: fewer than 4 passes means some were merged.
    let batches = metric(&text, "unclip_batch_images_count");
    assert!(
        batches < 4.0,
        "{batches} batches for 4 concurrent requests\n{text}"
    );
    server.shutdown().await.unwrap();
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test]
async fn a_disconnected_client_costs_no_compute() {
    let (server, base) = start(ServerConfig {
        batch: BatchPolicy {
            max_batch: 1,
            batch_wait: Duration::ZERO,
        },
        ..slow_config()
    })
    .await;
    let client = Client::new();
    let busy = tokio::spawn({
        let (client, base) = (client.clone(), base.clone());
        async move { generate(client, base, 10).await.status() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let impatient = Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let gone = impatient
        .post(format!("{base}/v1/images/generations"))
        .json(&json!({"prompt": "never mind", "n": 10}))
        .send()
        .await;
    assert!(gone.is_err(), "the impatient request should have timed out");
    assert_eq!(busy.await.unwrap(), 200);
    // The worker meets the abandoned job once the busy one is done.
    let mut text = String::new();
    for _ in 0..100 {
        text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metric(&text, "unclip_jobs_skipped_total") >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&text, "unclip_jobs_skipped_total"), 1.0, "{text}");
    assert_eq!(
        metric(&text, "unclip_images_generated_total"),
        10.0,
        "{text}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight() {
    let (server, base) = start(slow_config()).await;
    let client = Client::new();
    let in_flight = tokio::spawn({
        let (client, base) = (client.clone(), base.clone());
        async move {
            let response = generate(client, base, 4).await;
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body["data"].as_array().map_or(0, Vec::len))
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.shutdown().await.unwrap();
    assert_eq!(in_flight.await.unwrap(), (StatusCode::OK, 4));
    assert!(client.get(format!("{base}/healthz")).send().await.is_err());
}

#[tokio::test]
async fn slow_requests_time_out_with_408() {
    let (server, base) = start(ServerConfig {
        request_timeout: Duration::from_millis(50),
        ..slow_config()
    })
    .await;
    let response = generate(Client::new(), base, 10).await;
    let error = error_of(response, StatusCode::REQUEST_TIMEOUT).await;
    assert!(error["message"].as_str().unwrap().contains("timeout"));
    server.shutdown().await.unwrap();
}

/// Fuzz-style: random bytes under random media types to every route never get a 5xx, and the
/// server still answers afterwards.
#[tokio::test]
async fn random_requests_never_get_a_5xx() {
    use rand::{Rng, SeedableRng};
    let (server, base) = start(config()).await;
    let client = Client::new();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let routes = [
        "/v1/images/generations",
        "/v1/images/variations",
        "/v1/images/edits",
        "/v1/models",
        "/v1/files/x",
        "/",
    ];
    let types = [
        "application/json",
        "multipart/form-data; boundary=XYZ",
        "multipart/form-data",
        "text/plain",
        "application/json; charset=utf-8",
    ];
    let seeds: Vec<Vec<u8>> = vec![
        br#"{"prompt":"a red circle","n":1,"response_format":"b64_json"}"#.to_vec(),
        b"--XYZ\r\nContent-Disposition: form-data; name=\"n\"\r\n\r\n1\r\n--XYZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n".iter().chain(png(8, 8).iter()).chain(b"\r\n--XYZ--\r\n".iter()).copied().collect(),
        b"--XYZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na red circle\r\n--XYZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n".iter().chain(rgba_png(8, 8, Some((2, 2, 6, 6))).iter()).chain(b"\r\n--XYZ\r\nContent-Disposition: form-data; name=\"mask\"; filename=\"m.png\"\r\nContent-Type: image/png\r\n\r\n".iter()).chain(rgba_png(8, 8, Some((0, 0, 3, 3))).iter()).chain(b"\r\n--XYZ--\r\n".iter()).copied().collect(),
    ];
    for i in 0..150 {
        let mut body = seeds[i % seeds.len()].clone();
        for _ in 0..rng.random_range(0..6) {
            let at = rng.random_range(0..body.len());
            match rng.random_range(0..3) {
                0 => body[at] = rng.random(),
                1 => body.insert(at, rng.random()),
                _ => body.truncate(at.max(1)),
            }
        }
        let route = routes[rng.random_range(0..routes.len())];
        let media = types[rng.random_range(0..types.len())];
        let response = client
            .post(format!("{base}{route}"))
            .header("content-type", media)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(
            !response.status().is_server_error(),
            "{route} {media}: {}",
            response.status()
        );
    }
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.shutdown().await.unwrap();
}

/// Runs the futures concurrently on this task (no extra dependency for join_all).
async fn futures_join_all<F: std::future::Future<Output = reqwest::Response> + Send + 'static>(
    futures: Vec<F>,
) -> Vec<reqwest::Response> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

/// The centre of a 32x32 picture: the region the edit tests repaint.
const HOLE: (u32, u32, u32, u32) = (8, 8, 24, 24);

#[tokio::test]
async fn edits_repaint_with_a_mask_or_the_image_alpha() {
    let (server, base) = start(config()).await;
    let client = Client::new();
    let url = format!("{base}/v1/images/edits");

    // No mask: the image's own transparent centre is repainted.
    let form = Form::new()
        .part("image", png_part(rgba_png(32, 32, Some(HOLE))))
        .text("prompt", "a red circle")
        .text("n", "2")
        .text("size", "32x32")
        .text("response_format", "b64_json")
        .text("user", "tester")
        .text("model", "dall-e-2");
    let response = client.post(&url).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let original = image::RgbaImage::from_fn(32, 32, |x, y| {
        image::Rgba([(x * 7) as u8, (y * 7) as u8, 120, 255])
    });
    for item in data {
        let edited = decode_png(&b64(item)).to_rgb8();
        assert_eq!(edited.dimensions(), (32, 32));
        // A corner far from the hole is the uploaded picture, up to 8-bit rounding.
        for (x, y) in [(0, 0), (31, 0), (0, 31), (31, 31), (3, 16)] {
            let (got, want) = (edited.get_pixel(x, y), original.get_pixel(x, y));
            for c in 0..3 {
                assert!(
                    got[c].abs_diff(want[c]) <= 1,
                    "kept pixel ({x}, {y}) changed: {got:?} vs {want:?}"
                );
            }
        }
    }

    // An opaque image and a mask, answered with a URL (the default format).
    let form = Form::new()
        .part("image", png_part(rgba_png(32, 32, None)))
        .part("mask", png_part(rgba_png(32, 32, Some(HOLE))))
        .text("prompt", "a blue square");
    let body: Value = client
        .post(&url)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{body}");
    let link = data[0]["url"].as_str().unwrap();
    let file = client.get(link).send().await.unwrap();
    assert_eq!(file.status(), 200);
    assert_eq!(decode_png(&file.bytes().await.unwrap()).width(), 32);

    // A larger upload is painted at the model's size.
    let form = Form::new()
        .part("image", png_part(rgba_png(64, 64, Some((0, 0, 64, 20)))))
        .text("prompt", "a green triangle")
        .text("response_format", "b64_json");
    let body: Value = client
        .post(&url)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let edited = decode_png(&b64(&body["data"][0]));
    assert_eq!((edited.width(), edited.height()), (32, 32));

    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("unclip_http_requests_total{route=\"/v1/images/edits\",status=\"200\"} 3"),
        "{text}"
    );
    assert_eq!(metric(&text, "unclip_images_generated_total"), 4.0);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_edit_requests_get_openai_errors() {
    let (server, base) = start(config()).await;
    let client = Client::new();
    let url = format!("{base}/v1/images/edits");
    let holed = || png_part(rgba_png(32, 32, Some(HOLE)));
    let with = |form: Form| form.part("image", holed());
    let cases: Vec<(Form, &str, &str)> = vec![
        (Form::new().text("prompt", "x"), "image", "required"),
        (with(Form::new()), "prompt", "required"),
        (with(Form::new().text("prompt", " ")), "prompt", "empty"),
        (
            with(Form::new().text("prompt", "x".repeat(1001))),
            "prompt",
            "1001 characters",
        ),
        (
            with(Form::new().text("prompt", "é".repeat(2001))),
            "prompt",
            "1000 characters",
        ),
        (
            with(Form::new().text("prompt", "x").text("n", "0")),
            "n",
            "1 to 10",
        ),
        (
            with(Form::new().text("prompt", "x").text("n", "11")),
            "n",
            "1 to 10",
        ),
        (
            with(Form::new().text("prompt", "x").text("size", "256x256")),
            "size",
            "allowed: 32x32",
        ),
        (
            with(
                Form::new()
                    .text("prompt", "x")
                    .text("response_format", "png"),
            ),
            "response_format",
            "url, b64_json",
        ),
        (
            with(Form::new().text("prompt", "x").text("model", "dall-e-3")),
            "model",
            "dall-e-2",
        ),
        (
            with(Form::new().text("prompt", "x").text("quality", "hd")),
            "quality",
            "allowed: standard",
        ),
        (
            Form::new()
                .part("image", png_part(b"GIF89a....".to_vec()))
                .text("prompt", "x"),
            "image",
            "PNG",
        ),
        (
            Form::new()
                .part("image", png_part(rgba_png(32, 16, Some(HOLE))))
                .text("prompt", "x"),
            "image",
            "square",
        ),
        (
            Form::new()
                .part("image", png_part(vec![7u8; 4 * 1024 * 1024 + 1]))
                .text("prompt", "x"),
            "image",
            "4 MB",
        ),
        // Nothing marks where to paint.
        (
            Form::new()
                .part("image", png_part(png(32, 32)))
                .text("prompt", "x"),
            "image",
            "no alpha channel",
        ),
        (
            Form::new()
                .part("image", png_part(rgba_png(32, 32, None)))
                .text("prompt", "x"),
            "image",
            "nothing to repaint",
        ),
        (
            with(Form::new().text("prompt", "x")).part("mask", png_part(rgba_png(32, 32, None))),
            "mask",
            "nothing to repaint",
        ),
        (
            with(Form::new().text("prompt", "x")).part("mask", png_part(png(32, 32))),
            "mask",
            "no alpha channel",
        ),
        // The mask must match the image.
        (
            with(Form::new().text("prompt", "x"))
                .part("mask", png_part(rgba_png(16, 16, Some(HOLE)))),
            "mask",
            "same size",
        ),
        (
            with(Form::new().text("prompt", "x"))
                .part("mask", png_part(rgba_png(32, 20, Some(HOLE)))),
            "mask",
            "square",
        ),
        (
            with(Form::new().text("prompt", "x")).part(
                "mask",
                png_part(rgba_png(32, 32, Some(HOLE))[..30].to_vec()),
            ),
            "mask",
            "readable PNG",
        ),
        (
            with(Form::new().text("prompt", "x"))
                .part("mask", png_part(vec![7u8; 4 * 1024 * 1024 + 1])),
            "mask",
            "4 MB",
        ),
    ];
    for (form, param, words) in cases {
        let response = client.post(&url).multipart(form).send().await.unwrap();
        let error = error_of(response, StatusCode::BAD_REQUEST).await;
        assert_eq!(error["param"], param, "{error}");
        assert_eq!(error["type"], "invalid_request_error");
        assert!(
            error["message"].as_str().unwrap().contains(words),
            "`{words}` not in {error}"
        );
    }
    let json = client
        .post(&url)
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    error_of(json, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let no_boundary = client
        .post(&url)
        .header("content-type", "multipart/form-data")
        .body("x")
        .send()
        .await
        .unwrap();
    error_of(no_boundary, StatusCode::BAD_REQUEST).await;
    // Two images of 4 MB fit the body limit; more does not: the field being read is named.
    let too_big = Form::new()
        .part("image", png_part(vec![0u8; 4 * 1024 * 1024]))
        .part("mask", png_part(vec![0u8; 4 * 1024 * 1024]))
        .part("user", png_part(vec![0u8; 200 * 1024]));
    let response = client.post(&url).multipart(too_big).send().await.unwrap();
    let error = error_of(response, StatusCode::BAD_REQUEST).await;
    assert!(
        error["param"] == "mask" || error["param"] == "user",
        "{error}"
    );
    let wrong_method = client.get(&url).send().await.unwrap();
    error_of(wrong_method, StatusCode::METHOD_NOT_ALLOWED).await;
    server.shutdown().await.unwrap();
}

/// A model without prior/ (the variations fixture) cannot paint from text: generations and
/// edits are clear 400s.
#[tokio::test]
async fn edits_need_a_prior() {
    let (server, base) = start(ServerConfig {
        options: config().options,
        ..ServerConfig::new(fixtures().join("unclip_tiny_variation"))
    })
    .await;
    let client = Client::new();
    let models: Value = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["edits"], false);
    assert_eq!(models["data"][0]["variations"], true);
    let form = Form::new()
        .part("image", png_part(rgba_png(32, 32, Some(HOLE))))
        .text("prompt", "a red circle");
    let response = client
        .post(format!("{base}/v1/images/edits"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let error = error_of(response, StatusCode::BAD_REQUEST).await;
    assert!(
        error["message"].as_str().unwrap().contains("prior/"),
        "{error}"
    );
    let response = client
        .post(format!("{base}/v1/images/generations"))
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    let error = error_of(response, StatusCode::BAD_REQUEST).await;
    assert!(
        error["message"].as_str().unwrap().contains("prior/"),
        "{error}"
    );
    server.shutdown().await.unwrap();
}

async fn edit(client: Client, base: String, n: usize) -> reqwest::Response {
    let form = Form::new()
        .part("image", png_part(rgba_png(32, 32, Some(HOLE))))
        .text("prompt", "a queue")
        .text("n", n.to_string())
        .text("response_format", "b64_json");
    client
        .post(format!("{base}/v1/images/edits"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// Edits share the bounded queue with the other routes: past it they get 429 too.
#[tokio::test]
async fn edits_queue_with_generations_and_get_429_when_full() {
    let (server, base) = start(ServerConfig {
        max_queue: 1,
        batch: BatchPolicy {
            max_batch: 1,
            batch_wait: Duration::ZERO,
        },
        ..config()
    })
    .await;
    let client = Client::new();
    let mut requests = Vec::new();
    for _ in 0..6 {
        requests.push(tokio::spawn(edit(client.clone(), base.clone(), 4)));
        requests.push(tokio::spawn(generate(client.clone(), base.clone(), 4)));
    }
    let mut edits = (0, 0);
    for (i, request) in requests.into_iter().enumerate() {
        let response = request.await.unwrap();
        let is_edit = i % 2 == 0;
        match response.status() {
            StatusCode::OK => {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["data"].as_array().unwrap().len(), 4);
                if is_edit {
                    edits.0 += 1;
                }
            }
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(response.headers().contains_key("retry-after"));
                let error = error_of(response, StatusCode::TOO_MANY_REQUESTS).await;
                assert_eq!(error["code"], "rate_limit_exceeded");
                if is_edit {
                    edits.1 += 1;
                }
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(edits.1 >= 1, "no edit was refused: {edits:?}");
    // The queue drains: an edit sent alone now succeeds.
    assert_eq!(edit(client, base, 1).await.status(), 200);
    server.shutdown().await.unwrap();
}

// Raw sockets for the connection tests, with tokio's readiness calls (the io-util extension
// traits are not among the features this workspace builds tokio with).

async fn send_raw(stream: &tokio::net::TcpStream, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        stream.writable().await.unwrap();
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("writing to the server: {e}"),
        }
    }
}

/// One read: Ok(0) when the peer closed.
async fn read_raw(stream: &tokio::net::TcpStream, buffer: &mut [u8]) -> std::io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buffer) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => return other,
        }
    }
}

/// Reads until the server closes the connection (or `limit` passes); what was read and
/// whether it closed.
async fn read_until_closed(stream: &tokio::net::TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, read_raw(stream, &mut buffer)).await {
            Err(_) => return (received, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (received, true),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    let (server, base) = start(ServerConfig {
        header_read_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let started = std::time::Instant::now();
    let slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    send_raw(&slow, b"GET /healthz HTT").await;
    let (answer, closed) = read_until_closed(&slow, Duration::from_secs(10)).await;
    let waited = started.elapsed();
    assert!(closed, "still open after {waited:?}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "closed after {waited:?}; the timeout is 300 ms"
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // A client that does send its request is served as before.
    let health = Client::new()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let (server, _base) = start(ServerConfig {
        max_connections: 2,
        ..config()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // The kernel completes the third handshake, but the server does not take the connection.
    let third = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    send_raw(
        &third,
        b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (answer, closed) = read_until_closed(&third, Duration::from_millis(700)).await;
    assert!(
        answer.is_empty() && !closed,
        "answered at the limit: {}",
        String::from_utf8_lossy(&answer)
    );
    drop(held.pop());
    let (answer, closed) = read_until_closed(&third, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(closed && answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.shutdown().await.unwrap();
}

/// A half-sent request does not hold shutdown up for longer than the header timeout.
#[tokio::test]
async fn shutdown_is_not_held_up_by_a_half_sent_request() {
    let (server, _base) = start(ServerConfig {
        header_read_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    send_raw(
        &slow,
        b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopped = tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await;
    assert!(
        matches!(stopped, Ok(Ok(()))),
        "shutdown did not finish within 10 s"
    );
    let (_, closed) = read_until_closed(&slow, Duration::from_secs(1)).await;
    assert!(closed);
}

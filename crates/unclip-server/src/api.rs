//! The OpenAI Images API's request fields, checked before any work is queued: every bad value
//! is a 400 that names the field (`param`) and what is allowed. Pure functions of the request
//! bytes, so that they can be fuzzed without a server.

use crate::engine::InputImage;
use crate::error::ApiError;
use axum::http::StatusCode;
use serde_json::{Map, Value};

pub const MAX_PROMPT_CHARS: usize = 1000;
pub const MAX_N: usize = 10;
pub const MAX_IMAGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest side of an uploaded image; also bounds the memory its decoding takes.
pub const MAX_IMAGE_SIDE: u32 = 4096;
/// Names that OpenAI clients send and that this server reads (or accepts and ignores: `user`).
const GENERATION_FIELDS: &[&str] = &["prompt", "n", "size", "response_format", "user", "model"];
pub const VARIATION_FIELDS: &[&str] = &["image", "n", "size", "response_format", "user", "model"];
/// The model name OpenAI clients default to; accepted as another name for the served model.
const OPENAI_MODEL: &str = "dall-e-2";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    Url,
    B64Json,
}

/// What the served model is, for checking `model` and `size`.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub size: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageParams {
    pub n: usize,
    pub format: ResponseFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationRequest {
    pub prompt: String,
    pub params: ImageParams,
}

/// A `POST /v1/images/generations` body (the media type is checked by the caller).
pub fn parse_generation(body: &[u8], model: &ModelInfo) -> Result<GenerationRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::request(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(fields) = value else {
        return Err(ApiError::request(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object with at least `prompt`",
        ));
    };
    reject_unknown(fields.keys().map(String::as_str), GENERATION_FIELDS)?;
    let prompt = match fields.get("prompt") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("prompt", "`prompt` is required"));
        }
        Some(Value::String(prompt)) => prompt.clone(),
        Some(_) => return Err(ApiError::invalid("prompt", "`prompt` must be a string")),
    };
    check_prompt(&prompt)?;
    let text = |name: &'static str| -> Result<Option<String>, ApiError> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::invalid(
                name,
                format!("`{name}` must be a string"),
            )),
        }
    };
    let n = match fields.get("n") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(ApiError::invalid("n", n_message("not a number"))),
    };
    text("user")?;
    let params = common(
        n.as_deref(),
        text("size")?.as_deref(),
        text("response_format")?.as_deref(),
        text("model")?.as_deref(),
        model,
    )?;
    Ok(GenerationRequest { prompt, params })
}

/// The text fields of a `POST /v1/images/variations` form (the image is checked separately).
pub fn parse_variation_fields(
    fields: &Map<String, Value>,
    model: &ModelInfo,
) -> Result<ImageParams, ApiError> {
    let text = |name: &str| fields.get(name).and_then(Value::as_str);
    common(
        text("n"),
        text("size"),
        text("response_format"),
        text("model"),
        model,
    )
}

fn reject_unknown<'a>(
    names: impl Iterator<Item = &'a str>,
    allowed: &[&str],
) -> Result<(), ApiError> {
    for name in names {
        if !allowed.contains(&name) {
            return Err(ApiError::invalid(
                name,
                format!(
                    "unrecognized request argument `{}`; allowed: {}",
                    truncate(name, 64),
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Form field names, checked as they arrive so that an unknown field stops the upload early.
pub fn check_variation_field(name: &str) -> Result<(), ApiError> {
    reject_unknown(std::iter::once(name), VARIATION_FIELDS)
}

fn truncate(s: &str, chars: usize) -> String {
    match s.char_indices().nth(chars) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

pub fn check_prompt(prompt: &str) -> Result<(), ApiError> {
    if prompt.trim().is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` must not be empty"));
    }
    let chars = prompt.chars().count();
    if chars > MAX_PROMPT_CHARS {
        return Err(ApiError::invalid(
            "prompt",
            format!("`prompt` has {chars} characters; the maximum is {MAX_PROMPT_CHARS}"),
        ));
    }
    Ok(())
}

fn n_message(got: &str) -> String {
    format!("`n` must be an integer from 1 to {MAX_N} (got {got})")
}

fn common(
    n: Option<&str>,
    size: Option<&str>,
    format: Option<&str>,
    requested_model: Option<&str>,
    model: &ModelInfo,
) -> Result<ImageParams, ApiError> {
    let n = match n {
        None => 1,
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_N).contains(&n) => n,
            _ => return Err(ApiError::invalid("n", n_message(&truncate(text, 32)))),
        },
    };
    if let Some(size) = size {
        if size != model.size {
            return Err(ApiError::invalid(
                "size",
                format!(
                    "size `{}` is not one this model produces; allowed: {}",
                    truncate(size, 32),
                    model.size
                ),
            ));
        }
    }
    let format = match format {
        None | Some("url") => ResponseFormat::Url,
        Some("b64_json") => ResponseFormat::B64Json,
        Some(other) => {
            return Err(ApiError::invalid(
                "response_format",
                format!(
                    "response_format `{}` is not supported; allowed: url, b64_json",
                    truncate(other, 32)
                ),
            ))
        }
    };
    if let Some(name) = requested_model {
        if name != model.name && name != OPENAI_MODEL {
            return Err(ApiError::invalid(
                "model",
                format!(
                    "model `{}` is not served here; allowed: {}, {OPENAI_MODEL}",
                    truncate(name, 64),
                    model.name
                ),
            ));
        }
    }
    Ok(ImageParams { n, format })
}

/// An uploaded image: a square PNG of at most 4 MB and 4096 pixels a side. The size in the
/// header is checked before any pixel is decoded, so a small file that claims a huge
/// picture (a decompression bomb) is refused without allocating it.
pub fn decode_upload(bytes: &[u8]) -> Result<InputImage, ApiError> {
    let bad = |message: String| ApiError::invalid("image", message);
    if bytes.is_empty() {
        return Err(bad("`image` is empty".into()));
    }
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(bad(format!(
            "`image` is {} bytes; the maximum is 4 MB ({MAX_IMAGE_BYTES} bytes)",
            bytes.len()
        )));
    }
    const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !bytes.starts_with(PNG_SIGNATURE) {
        return Err(bad("`image` must be a PNG file".into()));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(256 * 1024 * 1024);
    let mut reader =
        image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Png);
    reader.limits(limits);
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| bad(format!("`image` is not a readable PNG: {e}")))?;
    if width == 0 || height == 0 || width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(bad(format!(
            "`image` is {width}x{height}; allowed: 1 to {MAX_IMAGE_SIDE} pixels a side"
        )));
    }
    if width != height {
        return Err(bad(format!(
            "`image` is {width}x{height}; it must be square"
        )));
    }
    let (rgb, width, height) = unclip::clip::decode_rgb8(bytes)
        .map_err(|e| bad(format!("`image` is not a readable PNG: {e}")))?;
    Ok(InputImage { rgb, width, height })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelInfo {
        ModelInfo {
            name: "unclip_tiny".into(),
            size: "32x32".into(),
        }
    }

    #[test]
    fn a_full_generation_request_parses() {
        let body = br#"{"prompt":"a red circle","n":3,"size":"32x32","response_format":"b64_json","user":"u","model":"dall-e-2"}"#;
        let request = parse_generation(body, &model()).unwrap();
        assert_eq!(request.prompt, "a red circle");
        assert_eq!(request.params.n, 3);
        assert_eq!(request.params.format, ResponseFormat::B64Json);
    }

    #[test]
    fn bad_fields_are_named() {
        let cases: &[(&[u8], &str, &str)] = &[
            (br#"{"n":1}"#, "prompt", "required"),
            (br#"{"prompt":""}"#, "prompt", "empty"),
            (br#"{"prompt":5}"#, "prompt", "string"),
            (br#"{"prompt":"x","n":0}"#, "n", "1 to 10"),
            (br#"{"prompt":"x","n":11}"#, "n", "1 to 10"),
            (br#"{"prompt":"x","n":2.5}"#, "n", "1 to 10"),
            (br#"{"prompt":"x","n":"2"}"#, "n", "1 to 10"),
            (
                br#"{"prompt":"x","size":"1024x1024"}"#,
                "size",
                "allowed: 32x32",
            ),
            (
                br#"{"prompt":"x","response_format":"png"}"#,
                "response_format",
                "url, b64_json",
            ),
            (
                br#"{"prompt":"x","model":"dall-e-3"}"#,
                "model",
                "unclip_tiny",
            ),
            (
                br#"{"prompt":"x","style":"vivid"}"#,
                "style",
                "unrecognized",
            ),
        ];
        for (body, param, words) in cases {
            let err = parse_generation(body, &model()).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert_eq!(err.param.as_deref(), Some(*param), "{}", err.message);
            assert!(err.message.contains(words), "{}", err.message);
        }
        let long = format!(r#"{{"prompt":"{}"}}"#, "é".repeat(1001));
        let err = parse_generation(long.as_bytes(), &model()).unwrap_err();
        assert!(err.message.contains("1001 characters"), "{}", err.message);
        let ok = format!(r#"{{"prompt":"{}"}}"#, "é".repeat(1000));
        assert!(parse_generation(ok.as_bytes(), &model()).is_ok());
    }

    #[test]
    fn non_objects_and_broken_json_are_400() {
        for body in [&b"[]"[..], b"null", b"{", b"", b"\xff\xfe"] {
            let err = parse_generation(body, &model()).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
        }
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_pixel(width, height, image::Rgb([200, 10, 10]));
        crate::engine::encode_png(&image).unwrap()
    }

    #[test]
    fn uploads_must_be_square_pngs() {
        let ok = decode_upload(&png(8, 8)).unwrap();
        assert_eq!((ok.width, ok.height, ok.rgb.len()), (8, 8, 192));
        assert!(decode_upload(&png(8, 9))
            .unwrap_err()
            .message
            .contains("square"));
        assert!(decode_upload(b"GIF89a")
            .unwrap_err()
            .message
            .contains("PNG"));
        assert!(decode_upload(&[]).unwrap_err().message.contains("empty"));
        let mut cut = png(8, 8);
        cut.truncate(cut.len() - 20);
        assert!(decode_upload(&cut).is_err());
    }

    #[test]
    fn a_png_claiming_a_huge_size_is_refused_before_decoding() {
        // Rewrite a real PNG's IHDR to claim 100000x100000 pixels (and fix its CRC).
        let mut bytes = png(8, 8);
        bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode_upload(&bytes).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("image"));
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in data {
            crc ^= byte as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// Fuzz-style: random and mutated bodies never panic, and every failure is a 4xx.
    #[test]
    fn random_bodies_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let seeds: &[&[u8]] = &[
            br#"{"prompt":"a red circle","n":2,"size":"32x32","response_format":"url"}"#,
            br#"{"prompt":"\u00e9\ud83d\ude00","n":1e400}"#,
        ];
        let image = png(16, 16);
        for i in 0..4000 {
            let mut body: Vec<u8> = if i % 2 == 0 {
                seeds[i % seeds.len()].to_vec()
            } else {
                image.clone()
            };
            for _ in 0..rng.random_range(1..8) {
                let at = rng.random_range(0..body.len().max(1));
                match rng.random_range(0..3) {
                    0 if !body.is_empty() => body[at] = rng.random(),
                    1 => body.insert(at.min(body.len()), rng.random()),
                    _ => body.truncate(at),
                }
            }
            if let Err(err) = parse_generation(&body, &model()) {
                assert!(err.status.is_client_error());
            }
            if let Err(err) = decode_upload(&body) {
                assert!(err.status.is_client_error());
            }
        }
    }
}

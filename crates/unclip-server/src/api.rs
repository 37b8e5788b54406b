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
const GENERATION_FIELDS: &[&str] = &[
    "prompt",
    "n",
    "size",
    "response_format",
    "user",
    "model",
    "quality",
];
pub const VARIATION_FIELDS: &[&str] = &["image", "n", "size", "response_format", "user", "model"];
pub const EDIT_FIELDS: &[&str] = &[
    "image",
    "mask",
    "quality",
    "prompt",
    "n",
    "size",
    "response_format",
    "user",
    "model",
];
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

/// The text fields of an edits form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditFields {
    pub prompt: String,
    pub params: ImageParams,
}

/// An edit's decoded uploads, checked against each other: the mask (if any) has the image's
/// size, and whichever gives the alpha has at least one fully transparent pixel.
#[derive(Debug, Clone)]
pub struct EditImages {
    pub image: image::RgbaImage,
    pub mask: Option<image::RgbaImage>,
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
    check_quality(text("quality")?.as_deref())?;
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

/// The text fields of a `POST /v1/images/edits` form: `prompt` is required.
pub fn parse_edit_fields(
    fields: &Map<String, Value>,
    model: &ModelInfo,
) -> Result<EditFields, ApiError> {
    let text = |name: &str| fields.get(name).and_then(Value::as_str);
    let Some(prompt) = text("prompt") else {
        return Err(ApiError::invalid(
            "prompt",
            "`prompt` is required: what to paint in the masked region",
        ));
    };
    check_prompt(prompt)?;
    check_quality(text("quality"))?;
    let params = common(
        text("n"),
        text("size"),
        text("response_format"),
        text("model"),
        model,
    )?;
    Ok(EditFields {
        prompt: prompt.to_string(),
        params,
    })
}

/// OpenAI's `quality` for DALL-E 2 models: only `standard` (its default) exists; `hd` is
/// DALL-E 3's, and this server does not pretend to draw it.
fn check_quality(quality: Option<&str>) -> Result<(), ApiError> {
    match quality {
        None | Some("standard") => Ok(()),
        Some(other) => Err(ApiError::invalid(
            "quality",
            format!("`quality` {other:?} is not offered by this model; allowed: standard"),
        )),
    }
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

/// A form field name, checked as it arrives so that an unknown field stops the upload early.
pub fn check_form_field(name: &str, allowed: &[&str]) -> Result<(), ApiError> {
    reject_unknown(std::iter::once(name), allowed)
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

/// Limits on decoding an upload: no side over [`MAX_IMAGE_SIDE`], and a bounded allocation.
fn png_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(256 * 1024 * 1024);
    limits
}

fn png_reader(bytes: &[u8]) -> image::ImageReader<std::io::Cursor<&[u8]>> {
    let mut reader =
        image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Png);
    reader.limits(png_limits());
    reader
}

/// Checks the upload in form field `param` is a square PNG of at most 4 MB and 4096 pixels a
/// side, from its header alone: a small file that claims a huge picture (a decompression
/// bomb) is refused before any pixel is decoded. Returns its side.
fn check_png(bytes: &[u8], param: &'static str) -> Result<u32, ApiError> {
    let bad = |message: String| ApiError::invalid(param, message);
    if bytes.is_empty() {
        return Err(bad(format!("`{param}` is empty")));
    }
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(bad(format!(
            "`{param}` is {} bytes; the maximum is 4 MB ({MAX_IMAGE_BYTES} bytes)",
            bytes.len()
        )));
    }
    const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !bytes.starts_with(PNG_SIGNATURE) {
        return Err(bad(format!("`{param}` must be a PNG file")));
    }
    // The header alone, without the decoding limits, so that a picture too large is named
    // with its size below rather than as the decoder's "exceeds limit".
    let (width, height) =
        image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Png)
            .into_dimensions()
            .map_err(|e| bad(format!("`{param}` is not a readable PNG: {e}")))?;
    if width == 0 || height == 0 || width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(bad(format!(
            "`{param}` is {width}x{height}; allowed: 1 to {MAX_IMAGE_SIDE} pixels a side"
        )));
    }
    if width != height {
        return Err(bad(format!(
            "`{param}` is {width}x{height}; it must be square"
        )));
    }
    Ok(width)
}

/// The largest side an upload is kept at while it waits in the queue. Every model reads far
/// less (CLIP 224 px, the decoder 64 px), and a 130 KB PNG can hold a 4096 px picture: kept at
/// full size, 64 of them in the queue would hold gigabytes.
pub const MAX_KEPT_SIDE: u32 = 1024;

/// A variations upload: a square PNG (see [`check_png`]), as RGB, at most [`MAX_KEPT_SIDE`].
pub fn decode_upload(bytes: &[u8]) -> Result<InputImage, ApiError> {
    check_png(bytes, "image")?;
    let (rgb, width, height) = unclip::clip::decode_rgb8(bytes)
        .map_err(|e| ApiError::invalid("image", format!("`image` is not a readable PNG: {e}")))?;
    if width <= MAX_KEPT_SIDE as usize {
        return Ok(InputImage { rgb, width, height });
    }
    let full = image::RgbImage::from_raw(width as u32, height as u32, rgb)
        .ok_or_else(|| ApiError::internal("the decoded image has the wrong length"))?;
    let kept = image::imageops::resize(
        &full,
        MAX_KEPT_SIDE,
        MAX_KEPT_SIDE,
        image::imageops::FilterType::Triangle,
    );
    Ok(InputImage {
        rgb: kept.into_raw(),
        width: MAX_KEPT_SIDE as usize,
        height: MAX_KEPT_SIDE as usize,
    })
}

/// A square PNG upload with its alpha channel, and whether the file has one.
fn decode_rgba(bytes: &[u8], param: &'static str) -> Result<(image::RgbaImage, bool), ApiError> {
    check_png(bytes, param)?;
    let decoded = png_reader(bytes)
        .decode()
        .map_err(|e| ApiError::invalid(param, format!("`{param}` is not a readable PNG: {e}")))?;
    let has_alpha = decoded.color().has_alpha();
    Ok((decoded.to_rgba8(), has_alpha))
}

/// `picture` at most [`MAX_KEPT_SIDE`] a side: each kept pixel the mean color of the square it
/// stands for, and alpha 0 if any pixel of it was, so no part of the region to repaint (a
/// thin stroke included) is lost.
fn shrink_keeping_holes(picture: image::RgbaImage) -> image::RgbaImage {
    let side = picture.width();
    if side <= MAX_KEPT_SIDE {
        return picture;
    }
    let bounds = |i: u32| {
        (
            i * side / MAX_KEPT_SIDE,
            ((i + 1) * side / MAX_KEPT_SIDE).max(i * side / MAX_KEPT_SIDE + 1),
        )
    };
    image::RgbaImage::from_fn(MAX_KEPT_SIDE, MAX_KEPT_SIDE, |x, y| {
        let ((x0, x1), (y0, y1)) = (bounds(x), bounds(y));
        let (mut sum, mut alpha, mut n) = ([0u64; 3], 255u8, 0u64);
        for sy in y0..y1 {
            for sx in x0..x1 {
                let p = picture.get_pixel(sx, sy);
                for c in 0..3 {
                    sum[c] += p[c] as u64;
                }
                alpha = alpha.min(p[3]);
                n += 1;
            }
        }
        let mean = |c: usize| ((sum[c] + n / 2) / n) as u8;
        image::Rgba([mean(0), mean(1), mean(2), alpha])
    })
}

/// The uploads of an edit, read as OpenAI's edits API reads them: the region to repaint is
/// where the mask's alpha is 0, or, without a mask, where the image's own alpha is 0. Every
/// way this can leave nothing to repaint is a 400 naming the field at fault.
pub fn decode_edit_uploads(image: &[u8], mask: Option<&[u8]>) -> Result<EditImages, ApiError> {
    let (image, image_has_alpha) = decode_rgba(image, "image")?;
    let transparent = |picture: &image::RgbaImage| picture.pixels().any(|p| p[3] == 0);
    let Some(mask) = mask else {
        if !image_has_alpha {
            return Err(ApiError::invalid(
                "image",
                "`image` has no alpha channel and no `mask` was given, so nothing marks where to \
                 paint; allowed: a `mask` PNG whose alpha is 0 where to repaint, or an image \
                 with transparency (alpha 0 where to repaint)",
            ));
        }
        if !transparent(&image) {
            return Err(ApiError::invalid(
                "image",
                "`image` has no fully transparent pixel and no `mask` was given, so there is \
                 nothing to repaint; allowed: alpha 0 where to repaint, or a `mask`",
            ));
        }
        return Ok(EditImages {
            image: shrink_keeping_holes(image),
            mask: None,
        });
    };
    let (mask, mask_has_alpha) = decode_rgba(mask, "mask")?;
    if mask.dimensions() != image.dimensions() {
        return Err(ApiError::invalid(
            "mask",
            format!(
                "`mask` is {}x{} but `image` is {}x{}; they must be the same size",
                mask.width(),
                mask.height(),
                image.width(),
                image.height()
            ),
        ));
    }
    if !mask_has_alpha {
        return Err(ApiError::invalid(
            "mask",
            "`mask` has no alpha channel; allowed: a PNG with transparency whose alpha is 0 \
             where to repaint",
        ));
    }
    if !transparent(&mask) {
        return Err(ApiError::invalid(
            "mask",
            "`mask` has no fully transparent pixel, so there is nothing to repaint; allowed: a \
             mask whose alpha is 0 where to repaint",
        ));
    }
    // Checked at full size above; kept smaller while queued.
    Ok(EditImages {
        image: shrink_keeping_holes(image),
        mask: Some(shrink_keeping_holes(mask)),
    })
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
            (
                br#"{"prompt":"x","quality":"hd"}"#,
                "quality",
                "allowed: standard",
            ),
        ];
        for (body, param, words) in cases {
            let err = parse_generation(body, &model()).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert_eq!(err.param.as_deref(), Some(*param), "{}", err.message);
            assert!(err.message.contains(words), "{}", err.message);
        }
        // DALL-E 2's one quality, as OpenAI's clients may send it.
        assert!(parse_generation(br#"{"prompt":"x","quality":"standard"}"#, &model()).is_ok());
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

    fn fields(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect()
    }

    #[test]
    fn edit_fields_need_a_prompt_and_share_the_other_checks() {
        let ok = parse_edit_fields(
            &fields(&[
                ("prompt", "a hat"),
                ("n", "3"),
                ("response_format", "b64_json"),
            ]),
            &model(),
        )
        .unwrap();
        assert_eq!(ok.prompt, "a hat");
        assert_eq!(ok.params.n, 3);
        assert_eq!(ok.params.format, ResponseFormat::B64Json);
        for (pairs, param, words) in [
            (&[("n", "2")][..], "prompt", "required"),
            (&[("prompt", "  ")][..], "prompt", "empty"),
            (&[("prompt", "x"), ("n", "11")][..], "n", "1 to 10"),
            (&[("prompt", "x"), ("size", "64x64")][..], "size", "32x32"),
        ] {
            let err = parse_edit_fields(&fields(pairs), &model()).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{}", err.message);
            assert!(err.message.contains(words), "{}", err.message);
        }
        assert!(check_form_field("mask", EDIT_FIELDS).is_ok());
        let err = check_form_field("mask", VARIATION_FIELDS).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("mask"));
    }

    /// An RGBA PNG, alpha 0 in the top-left `hole` x `hole` pixels.
    fn rgba_png(side: u32, hole: u32) -> Vec<u8> {
        let image = image::RgbaImage::from_fn(side, side, |x, y| {
            let alpha = if x < hole && y < hole { 0 } else { 255 };
            image::Rgba([10, 20, 30, alpha])
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

    #[test]
    fn edit_uploads_must_mark_something_to_repaint() {
        let own_alpha = decode_edit_uploads(&rgba_png(8, 2), None).unwrap();
        assert!(own_alpha.mask.is_none());
        assert_eq!(own_alpha.image.dimensions(), (8, 8));
        assert_eq!(own_alpha.image.get_pixel(0, 0)[3], 0);
        let masked = decode_edit_uploads(&png(8, 8), Some(&rgba_png(8, 3))).unwrap();
        assert_eq!(masked.mask.unwrap().get_pixel(2, 2)[3], 0);
        assert_eq!(masked.image.get_pixel(0, 0)[3], 255);

        // (image, mask, the field blamed, words of the message)
        type Case = (Vec<u8>, Option<Vec<u8>>, &'static str, &'static str);
        let cases: [Case; 6] = [
            (png(8, 8), None, "image", "no alpha channel"),
            (rgba_png(8, 0), None, "image", "nothing to repaint"),
            (
                png(8, 8),
                Some(rgba_png(8, 0)),
                "mask",
                "nothing to repaint",
            ),
            (png(8, 8), Some(png(8, 8)), "mask", "no alpha channel"),
            (png(8, 8), Some(rgba_png(4, 2)), "mask", "same size"),
            (png(8, 8), Some(b"GIF89a".to_vec()), "mask", "PNG"),
        ];
        for (image, mask, param, words) in cases {
            let err = decode_edit_uploads(&image, mask.as_deref()).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert_eq!(err.param.as_deref(), Some(param), "{}", err.message);
            assert!(err.message.contains(words), "{}", err.message);
        }
    }

    #[test]
    fn a_mask_claiming_a_huge_size_is_refused_before_decoding() {
        let mut bomb = rgba_png(8, 2);
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode_edit_uploads(&rgba_png(8, 2), Some(&bomb)).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("mask"), "{}", err.message);
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

    /// A PNG whose header claims `side` x `side` (the pixels are those of a 1 x 1 picture).
    fn claimed_size_png(side: u32) -> Vec<u8> {
        let mut bytes = png(1, 1);
        // IHDR's fields start at byte 16 (signature 8, length 4, type 4); its CRC follows them.
        bytes[16..20].copy_from_slice(&side.to_be_bytes());
        bytes[20..24].copy_from_slice(&side.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    #[test]
    fn a_picture_too_large_is_named_with_its_size() {
        let err = decode_upload(&claimed_size_png(20_000)).unwrap_err();
        assert!(
            err.message.contains("20000x20000") && err.message.contains("4096"),
            "{}",
            err.message
        );
    }

    #[test]
    fn large_uploads_wait_in_the_queue_at_the_kept_size() {
        let side = 2 * MAX_KEPT_SIDE;
        let kept = decode_upload(&png(side, side)).unwrap();
        assert_eq!((kept.width, kept.height), (1024, 1024));
        assert_eq!(kept.rgb.len(), 1024 * 1024 * 3);
        assert_eq!(&kept.rgb[..3], &[200, 10, 10]);
        // An edit's repaint region (alpha 0) keeps its place and stays exactly transparent.
        let edit = decode_edit_uploads(&rgba_png(side, side / 2), None).unwrap();
        assert_eq!(edit.image.dimensions(), (1024, 1024));
        assert_eq!(edit.image.get_pixel(511, 511)[3], 0);
        assert_eq!(edit.image.get_pixel(512, 512)[3], 255);
        assert_eq!(&edit.image.get_pixel(700, 700).0[..3], &[10, 20, 30]);
        // A one-pixel hole is not lost in the shrinking.
        let edit = decode_edit_uploads(&rgba_png(side, 1), None).unwrap();
        assert_eq!(edit.image.get_pixel(0, 0)[3], 0);
        // Sizes are compared as uploaded, not as kept.
        let err =
            decode_edit_uploads(&rgba_png(side, 4), Some(&rgba_png(side / 2, 4))).unwrap_err();
        assert!(err.message.contains("2048x2048"), "{}", err.message);
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
        let holed = rgba_png(16, 4);
        for i in 0..4000 {
            let mut body: Vec<u8> = match i % 4 {
                0 | 2 => seeds[(i / 4) % seeds.len()].to_vec(),
                1 => image.clone(),
                _ => holed.clone(),
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
            if let Err(err) = decode_edit_uploads(&holed, Some(&body)) {
                assert!(err.status.is_client_error());
            }
        }
    }
}

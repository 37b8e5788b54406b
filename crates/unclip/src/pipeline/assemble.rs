//! One pipeline folder from separately trained parts, in diffusers' unCLIP layout (so that
//! `generate`, `vary` and diffusers read it): the CLIP model becomes `text_encoder/` +
//! `tokenizer/` and `image_encoder/` + `feature_extractor/`; the stage folders written by the
//! trainers contribute `prior/`, `decoder/` + `text_proj/` (+ `decoder_text_encoder/` when the
//! decoder has its own) and `super_res_first/last/`. The CLIP may also come from a pipeline
//! folder (a built-in model, or an earlier `assemble`), whose four CLIP parts are copied as they
//! are, so that a newly trained decoder can be put into an existing model.

use crate::checkpoint::{replace_dir, write_atomic};
use crate::clip::{load_clip_tensors, save_clip, ClipLayout, ClipModel, PROCESSOR_FILE};
use crate::error::{Error, Result};
use crate::pipeline::{
    GenerateOptions, Ranker, UnclipPipeline, DECODER_TEXT_ENCODER, RANKER, SAMPLING_DEFAULTS_FILE,
};
use crate::tokenizer::TOKENIZER_FILES;
use candle_core::Device;
use std::path::{Path, PathBuf};

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    for entry in std::fs::read_dir(src).map_err(|e| Error::io(src, e))? {
        let path = entry.map_err(|e| Error::io(src, e))?.path();
        let target = dst.join(path.file_name().unwrap_or_default());
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else {
            std::fs::copy(&path, &target).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

fn require(dir: &Path, part: &str, what: &str) -> Result<()> {
    if dir.join(part).is_dir() {
        Ok(())
    } else {
        Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: format!("no `{part}/` folder: is this the output of `unclip train {what}`?"),
        })
    }
}

pub struct PipelineParts<'a> {
    pub clip: &'a Path,
    pub prior: Option<&'a Path>,
    pub decoder: &'a Path,
    pub upsampler: Option<&'a Path>,
    /// A `sampling.json` to ship with the pipeline (the sampling settings its weights want);
    /// without one, `generate` samples the folder with Karlo's defaults.
    pub sampling: Option<&'a Path>,
    /// A CLIP for ranking image candidates (`ranker/`): a CLIPModel folder, or a pipeline
    /// folder whose `ranker/` is copied.
    pub ranker: Option<&'a Path>,
}

/// The CLIP parts of a pipeline folder, in the order `model_index.json` lists them.
const CLIP_PARTS: [&str; 4] = [
    "text_encoder",
    "tokenizer",
    "image_encoder",
    "feature_extractor",
];

fn is_pipeline_folder(dir: &Path) -> bool {
    !dir.join("config.json").is_file() && dir.join("model_index.json").is_file()
}

/// Copies a pipeline folder's CLIP parts into `tmp`.
fn copy_pipeline_clip(dir: &Path, tmp: &Path) -> Result<()> {
    for part in CLIP_PARTS {
        if dir.join(part).is_dir() {
            copy_tree(&dir.join(part), &tmp.join(part))?;
        }
    }
    Ok(())
}

fn require_clip_part(dir: &Path, part: &str) -> Result<()> {
    if dir.join(part).is_dir() {
        Ok(())
    } else {
        Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: format!(
                "a pipeline folder given as the CLIP needs `{part}/` (text_encoder, tokenizer and image_encoder)"
            ),
        })
    }
}

/// `out` may be new, empty, or a pipeline folder (which is replaced whole); anything else there is
/// the user's and is not deleted.
fn check_output_folder(out: &Path) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    let refuse = |what: &str| {
        Err(Error::InvalidInput(format!(
            "--out {} {what}; allowed: a new folder, an empty one, or a pipeline folder to replace",
            out.display()
        )))
    };
    if !out.is_dir() {
        return refuse("is a file");
    }
    let empty = std::fs::read_dir(out)
        .map_err(|e| Error::io(out, e))?
        .next()
        .is_none();
    if !empty && !out.join("model_index.json").is_file() {
        return refuse("holds files but no model_index.json, so it is not a pipeline folder");
    }
    Ok(())
}

pub fn assemble(parts: &PipelineParts, out: &Path) -> Result<()> {
    check_output_folder(out)?;
    let clip_from_pipeline = is_pipeline_folder(parts.clip);
    if clip_from_pipeline {
        // Fail before anything is written.
        for part in ["text_encoder", "image_encoder", "tokenizer"] {
            require_clip_part(parts.clip, part)?;
        }
        for tower in ["text_encoder", "image_encoder"] {
            ClipModel::load(&parts.clip.join(tower), &Device::Cpu)?;
        }
    }
    check_stage_folders(parts)?;
    if let Some(ranker) = parts.ranker {
        Ranker::load(&ranker_source(ranker)?, &Device::Cpu)?;
    }
    if let Some(sampling) = parts.sampling {
        if !sampling.is_file() {
            return Err(Error::InvalidInput(format!(
                "sampling file {}: no such file; allowed: a sampling.json such as models/shapes/sampling.json",
                sampling.display()
            )));
        }
        GenerateOptions::with_sampling_file(sampling)?;
    }
    replace_dir(out, |tmp| {
        if clip_from_pipeline {
            copy_pipeline_clip(parts.clip, tmp)?;
        } else {
            write_clip_parts(parts.clip, tmp)?;
        }
        if let Some(sampling) = parts.sampling {
            let target = tmp.join(SAMPLING_DEFAULTS_FILE);
            std::fs::copy(sampling, &target).map_err(|e| Error::io(sampling, e))?;
        }
        write_stage_parts(parts, tmp)?;
        if let Some(ranker) = parts.ranker {
            write_ranker(&ranker_source(ranker)?, &tmp.join(RANKER))?;
        }
        // Each part loads on its own; whether their widths agree shows only together, and a
        // pipeline folder that `generate` refuses is no use to write.
        UnclipPipeline::load(tmp, &Device::Cpu).map_err(|e| {
            // Named by the folder the user asked for, not the staging one.
            let message = e
                .to_string()
                .replace(&tmp.display().to_string(), &out.display().to_string());
            Error::InvalidInput(format!("the parts do not fit together: {message}"))
        })?;
        Ok(())
    })
}

fn check_stage_folders(parts: &PipelineParts) -> Result<()> {
    if let Some(p) = parts.prior {
        require(p, "prior", "prior")?;
    }
    require(parts.decoder, "decoder", "decoder")?;
    require(parts.decoder, "text_proj", "decoder")?;
    if let Some(u) = parts.upsampler {
        require(u, "super_res_first", "upsampler")?;
    }
    Ok(())
}

/// A CLIPModel folder's towers re-saved in the pipeline's two layouts, with its tokenizer and
/// image processor files.
fn write_clip_parts(clip_dir: &Path, tmp: &Path) -> Result<()> {
    let device = Device::Cpu;
    let clip = ClipModel::load(clip_dir, &device)?;
    if !clip.has_text() || !clip.has_vision() {
        return Err(Error::Checkpoint {
            path: clip_dir.to_path_buf(),
            message: "assemble needs a full CLIPModel folder (both towers) or a pipeline folder"
                .into(),
        });
    }
    let tensors = load_clip_tensors(clip_dir, &device)?;
    save_clip(
        &tmp.join("text_encoder"),
        clip.config(),
        &tensors,
        ClipLayout::Text,
    )?;
    save_clip(
        &tmp.join("image_encoder"),
        clip.config(),
        &tensors,
        ClipLayout::Vision,
    )?;
    let tokenizer = tmp.join("tokenizer");
    std::fs::create_dir_all(&tokenizer).map_err(|e| Error::io(&tokenizer, e))?;
    for name in TOKENIZER_FILES {
        let src = clip_dir.join(name);
        if src.is_file() {
            std::fs::copy(&src, tokenizer.join(name)).map_err(|e| Error::io(&src, e))?;
        }
    }
    let features = tmp.join("feature_extractor");
    std::fs::create_dir_all(&features).map_err(|e| Error::io(&features, e))?;
    let processor = clip_dir.join(PROCESSOR_FILE);
    if processor.is_file() {
        std::fs::copy(&processor, features.join(PROCESSOR_FILE))
            .map_err(|e| Error::io(&processor, e))?;
    }
    Ok(())
}

/// The CLIPModel folder a `--ranker` names: itself, or a pipeline folder's `ranker/`.
fn ranker_source(dir: &Path) -> Result<PathBuf> {
    if !is_pipeline_folder(dir) {
        return Ok(dir.to_path_buf());
    }
    let inside = dir.join(RANKER);
    if inside.is_dir() {
        Ok(inside)
    } else {
        Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: format!(
                "a pipeline folder given as the ranker needs `{RANKER}/`; allowed: a CLIPModel \
                 folder (the output of `unclip train clip`) or a pipeline folder with `{RANKER}/`"
            ),
        })
    }
}

/// The ranking CLIP's weights, tokenizer and image processor, without a training run's
/// checkpoints and logs. Left out of model_index.json, as `decoder_text_encoder/` is.
fn write_ranker(clip_dir: &Path, out: &Path) -> Result<()> {
    let clip = ClipModel::load(clip_dir, &Device::Cpu)?;
    let tensors = load_clip_tensors(clip_dir, &Device::Cpu)?;
    save_clip(out, clip.config(), &tensors, ClipLayout::Full)?;
    for name in TOKENIZER_FILES.iter().chain([&PROCESSOR_FILE]) {
        let src = clip_dir.join(name);
        if src.is_file() {
            std::fs::copy(&src, out.join(name)).map_err(|e| Error::io(&src, e))?;
        }
    }
    Ok(())
}

/// The trained stages' folders, and `model_index.json`.
fn write_stage_parts(parts: &PipelineParts, tmp: &Path) -> Result<()> {
    let mut components = vec![
        (
            "text_encoder",
            r#"["transformers", "CLIPTextModelWithProjection"]"#,
        ),
        ("tokenizer", r#"["transformers", "CLIPTokenizer"]"#),
        (
            "image_encoder",
            r#"["transformers", "CLIPVisionModelWithProjection"]"#,
        ),
        (
            "feature_extractor",
            r#"["transformers", "CLIPImageProcessor"]"#,
        ),
        ("text_proj", r#"["unclip", "UnCLIPTextProjModel"]"#),
        ("decoder", r#"["diffusers", "UNet2DConditionModel"]"#),
        ("decoder_scheduler", r#"["diffusers", "UnCLIPScheduler"]"#),
    ];
    for part in ["decoder", "text_proj", "decoder_scheduler"] {
        copy_tree(&parts.decoder.join(part), &tmp.join(part))?;
    }
    // Left out of model_index.json: diffusers would try to load it as a pipeline part.
    let own_text = parts.decoder.join(DECODER_TEXT_ENCODER);
    if own_text.is_dir() {
        copy_tree(&own_text, &tmp.join(DECODER_TEXT_ENCODER))?;
    }
    if let Some(prior) = parts.prior {
        for part in ["prior", "prior_scheduler"] {
            copy_tree(&prior.join(part), &tmp.join(part))?;
        }
        components.push(("prior", r#"["diffusers", "PriorTransformer"]"#));
        components.push(("prior_scheduler", r#"["diffusers", "UnCLIPScheduler"]"#));
    }
    if let Some(up) = parts.upsampler {
        for part in ["super_res_first", "super_res_last", "super_res_scheduler"] {
            copy_tree(&up.join(part), &tmp.join(part))?;
        }
        components.push(("super_res_first", r#"["diffusers", "UNet2DModel"]"#));
        components.push(("super_res_last", r#"["diffusers", "UNet2DModel"]"#));
        components.push(("super_res_scheduler", r#"["diffusers", "UnCLIPScheduler"]"#));
    }
    let class = if parts.prior.is_some() {
        "UnCLIPPipeline"
    } else {
        "UnCLIPImageVariationPipeline"
    };
    let mut index =
        format!("{{\n  \"_class_name\": \"{class}\",\n  \"_diffusers_version\": \"0.42.1\"");
    for (name, value) in components {
        index.push_str(&format!(",\n  \"{name}\": {value}"));
    }
    index.push_str("\n}\n");
    write_atomic(&tmp.join("model_index.json"), index.as_bytes())
}

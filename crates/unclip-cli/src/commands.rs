//! One function per command: call the library, format its answer.

use crate::cli::{ClassifyArgs, Cli, Command, ConvertArgs, EmbedArgs, TokenizerArgs, TrainCommand};
use crate::out_folder::require_new_or_empty;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use unclip::clip::{load_clip_tensors, save_clip, ClipConfig, ClipLayout, ClipModel, WEIGHTS_FILE};
use unclip::data::DataSource;
use unclip::pipeline::ClipEmbedder;
use unclip::tokenizer::{ClipTokenizer, TOKENIZER_FILES};

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        // The server enters the compute pool per batch on its model thread; a bench sets its
        // thread count before the pool is made.
        Command::Serve(args) => crate::serve_cmd::serve(args),
        Command::Bench(command) => crate::bench::run(command),
        command => unclip::compute_pool::install(|| run_on_pool(command)),
    }
}

fn run_on_pool(command: Command) -> Result<()> {
    match command {
        Command::Generate(args) => crate::generate::generate(args),
        Command::Vary(args) => crate::generate::vary(args),
        Command::Invert(args) => crate::edit_cmd::invert(args),
        Command::Interpolate(args) => crate::edit_cmd::interpolate(args),
        Command::Textdiff(args) => crate::edit_cmd::textdiff(args),
        Command::Edit(args) => crate::edit_cmd::edit(args),
        Command::Embed(args) => embed(args),
        Command::Classify(args) => classify(args),
        Command::Train(TrainCommand::Clip(args)) => crate::train_cmd::clip_command(args),
        Command::Train(TrainCommand::Prior(args)) => crate::train_cmd::prior(args),
        Command::Train(TrainCommand::Decoder(args)) => crate::train_cmd::decoder(args),
        Command::Train(TrainCommand::Upsampler(args)) => crate::train_cmd::upsampler(args),
        Command::Assemble(args) => crate::train_cmd::assemble_command(args),
        Command::EmbedDataset(args) => crate::train_cmd::embed_dataset(args),
        Command::Tokenizer(args) => tokenizer(args),
        Command::Convert(args) => convert(args),
        Command::Data(command) => crate::data_cmd::run(command),
        Command::Eval(command) => crate::eval_cmd::run(command),
        Command::Serve(_) | Command::Bench(_) => unreachable!("run() dispatches these itself"),
    }
}

fn embed(args: EmbedArgs) -> Result<()> {
    if args.texts.is_empty() && args.images.is_empty() {
        bail!("nothing to embed: pass --text and/or --image");
    }
    let embedder = ClipEmbedder::load(&args.model, &Device::Cpu)?;
    let out = embedder.embed(&args.texts, &args.images)?;
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    for (text, e) in args.texts.iter().zip(&out.text_embeds) {
        println!("text  {:?}: {} dims, [{}]", text, e.len(), preview(e));
    }
    for (image, e) in args.images.iter().zip(&out.image_embeds) {
        println!(
            "image {}: {} dims, [{}]",
            image.display(),
            e.len(),
            preview(e)
        );
    }
    if !out.text_embeds.is_empty() && !out.image_embeds.is_empty() {
        println!("cosine similarity (rows: texts, columns: images)");
        for t in &out.text_embeds {
            let row: Vec<String> = out
                .image_embeds
                .iter()
                .map(|i| format!("{:+.4}", t.iter().zip(i).map(|(a, b)| a * b).sum::<f32>()))
                .collect();
            println!("  {}", row.join("  "));
        }
    }
    Ok(())
}

fn preview(values: &[f32]) -> String {
    let head: Vec<String> = values.iter().take(4).map(|v| format!("{v:+.4}")).collect();
    format!("{}, ...", head.join(", "))
}

fn classify(args: ClassifyArgs) -> Result<()> {
    let embedder = ClipEmbedder::load(&args.model, &Device::Cpu)?;
    let probs = embedder.classify(&args.image, &args.labels)?;
    let mut ranked: Vec<(&String, f32)> = args.labels.iter().zip(probs).collect();
    if args.json {
        let map: serde_json::Map<String, serde_json::Value> = ranked
            .iter()
            .map(|(l, p)| ((*l).clone(), serde_json::json!(p)))
            .collect();
        println!("{}", serde_json::Value::Object(map));
        return Ok(());
    }
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (label, p) in ranked {
        println!("{p:.4}  {label}");
    }
    Ok(())
}

fn tokenizer(args: TokenizerArgs) -> Result<()> {
    let spec = args.captions.to_string_lossy();
    if !args.captions.exists() && !spec.contains('{') {
        bail!(
            "--captions {spec} does not exist; allowed: a text file with one caption per line, \
             or data as `train` reads it (an image folder, a .tar shard, a folder or pattern of \
             shards)"
        );
    }
    let is_text_file = args.captions.is_file()
        && args
            .captions
            .extension()
            .is_none_or(|e| !e.eq_ignore_ascii_case("tar"));
    let captions: Vec<String> = if !is_text_file {
        // A data set in any form training reads: a folder, shards, a shard pattern.
        let source = DataSource::open(&spec)?;
        unclip::data::captions(&source)?
    } else {
        std::fs::read_to_string(&args.captions)
            .with_context(|| format!("reading {}", args.captions.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    if captions.is_empty() {
        bail!("{} holds no captions", args.captions.display());
    }
    require_new_or_empty("--out", &args.out)?;
    let tok = ClipTokenizer::train(captions.iter(), args.vocab_size, args.context_length)?;
    tok.save(&args.out)?;
    eprintln!(
        "trained a {}-token vocabulary on {} captions; written to {}",
        tok.vocab_size(),
        captions.len(),
        args.out.display()
    );
    Ok(())
}

/// The floating-point dtype a safetensors file stores its weights in (f32 if it holds none).
fn stored_float_dtype(path: &std::path::Path) -> Result<DType> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(tensors
        .values()
        .map(|t| t.dtype())
        .find(|d| d.is_float())
        .unwrap_or(DType::F32))
}

fn convert(args: ConvertArgs) -> Result<()> {
    let layout = ClipLayout::parse(&args.layout)?;
    if let (Ok(model), Ok(out)) = (args.model.canonicalize(), args.out.canonicalize()) {
        if model == out {
            bail!(
                "--out {} is the --model folder itself; converting in place would overwrite the \
                 files being read; allowed: a different folder",
                args.out.display()
            );
        }
    }
    require_new_or_empty("--out", &args.out)?;
    // A pipeline folder (a built-in model's name included) holds each tower in a folder of its
    // own, with the tokenizer and image processor beside them.
    let pipeline = args.model.join("model_index.json").is_file();
    let (towers, tokenizer, processor) = if pipeline {
        let tower = match layout {
            ClipLayout::Text => "text_encoder",
            ClipLayout::Vision => "image_encoder",
            ClipLayout::Full => bail!(
                "{} is a pipeline folder: it stores no logit_scale (CLIP's temperature), so it \
                 cannot become a full CLIPModel; allowed: --layout text or vision",
                args.model.display()
            ),
        };
        (
            args.model.join(tower),
            args.model.join("tokenizer"),
            args.model.join("feature_extractor"),
        )
    } else {
        (args.model.clone(), args.model.clone(), args.model.clone())
    };
    let model = ClipModel::load(&towers, &Device::Cpu)?;
    let config: ClipConfig = model.config().clone();
    let wanted_text = matches!(layout, ClipLayout::Full | ClipLayout::Text);
    let wanted_vision = matches!(layout, ClipLayout::Full | ClipLayout::Vision);
    if (wanted_text && !model.has_text()) || (wanted_vision && !model.has_vision()) {
        bail!(
            "{} does not hold the towers a {} layout needs",
            args.model.display(),
            args.layout
        );
    }
    // Written in the dtype the source stores, so an f16 model stays f16 (and half the size).
    let stored = stored_float_dtype(&towers.join(WEIGHTS_FILE))?;
    let tensors = load_clip_tensors(&towers, &Device::Cpu)?
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(stored)?)))
        .collect::<Result<Vec<_>>>()?;
    save_clip(&args.out, &config, &tensors, layout)?;
    let extras = TOKENIZER_FILES
        .into_iter()
        .map(|name| (&tokenizer, name))
        .chain([(&processor, "preprocessor_config.json")]);
    for (dir, name) in extras {
        let src = dir.join(name);
        if src.is_file() {
            std::fs::copy(&src, args.out.join(name))
                .with_context(|| format!("copying {}", src.display()))?;
        }
    }
    eprintln!("wrote {} ({:?} layout)", args.out.display(), layout);
    Ok(())
}

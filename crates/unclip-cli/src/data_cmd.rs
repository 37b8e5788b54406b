//! `unclip data ...`: dataset builders.

use crate::out_folder::require_new_or_empty;
use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Instant;
use unclip::checkpoint::write_atomic;
use unclip::data::emoji::{
    build_emoji_dataset, train_pattern, EmojiOptions, EmojiStyle, EmojiSummary,
};
use unclip::data::shapes::holdout::DEFAULT_HOLDOUT;
use unclip::data::shapes::{
    read_prompt_file, write_prompt_renders, write_shapes_dataset_excluding, Form, Holdout,
    ShapesSummary,
};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Render a shapes-world dataset (PNG + caption .txt + scene-graph .json per image).
    Shapes(ShapesArgs),
    /// Write a list of held-out shapes prompts (ones `data shapes` with the same --holdout
    /// never draws), for `unclip eval shapes --prompts`.
    ShapesEvalPrompts(ShapesEvalPromptsArgs),
    /// Build captioned emoji WebDataset shards (train + held-out val) from the pinned npm
    /// packages emoji-datasource-twitter/-google@16.0.0 and emojibase-data@17.0.0 (needs npm).
    Emoji(EmojiArgs),
}

#[derive(Args)]
pub struct EmojiArgs {
    /// Output folder for train-NNNNNN.tar, val-NNNNNN.tar, ATTRIBUTION and README.md.
    #[arg(long)]
    pub out: PathBuf,
    /// Share of emoji held out for validation (chosen by a hash of the emoji, so an emoji's
    /// skin tones and art styles share a split).
    #[arg(long, default_value_t = 0.05)]
    pub val_fraction: f64,
    /// Art styles to include.
    #[arg(long, value_enum, default_value_t = StyleArg::Both)]
    pub style: StyleArg,
    /// Records per shard.
    #[arg(long, default_value_t = 1000)]
    pub shard_size: usize,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum StyleArg {
    /// Twemoji (CC-BY 4.0).
    Twitter,
    /// Noto Emoji (Apache-2.0).
    Google,
    Both,
}

impl StyleArg {
    fn styles(self) -> Vec<EmojiStyle> {
        match self {
            Self::Twitter => vec![EmojiStyle::Twitter],
            Self::Google => vec![EmojiStyle::Google],
            Self::Both => vec![EmojiStyle::Twitter, EmojiStyle::Google],
        }
    }
}

#[derive(Args)]
pub struct ShapesArgs {
    /// Number of images; with --prompts, the number of images of each prompt.
    #[arg(long)]
    pub n: usize,
    /// Output folder: a new or empty one (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompt forms to sample, uniformly, separated by commas.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "single,counting,pair,relation",
        conflicts_with = "prompts"
    )]
    pub forms: Vec<Form>,
    /// Render these prompts (one per line; blank lines and # comments skipped) instead of
    /// sampling them.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Share of the grammar's prompts never drawn, chosen by a hash of the prompt so that
    /// `data shapes-eval-prompts` lists exactly those (0: draw every prompt).
    #[arg(long, default_value_t = DEFAULT_HOLDOUT, conflicts_with = "prompts")]
    pub holdout: f64,
}

#[derive(Args)]
pub struct ShapesEvalPromptsArgs {
    /// Output prompt file.
    #[arg(long)]
    pub out: PathBuf,
    /// The held-out share, as given to `data shapes --holdout`.
    #[arg(long, default_value_t = DEFAULT_HOLDOUT)]
    pub holdout: f64,
    /// Prompts of each form at most (forms with fewer held-out prompts give all they have).
    #[arg(long, default_value_t = 25)]
    pub per_form: usize,
    /// Picks which held-out prompts are listed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Shapes(args) => shapes(args),
        DataCommand::ShapesEvalPrompts(args) => shapes_eval_prompts(args),
        DataCommand::Emoji(args) => emoji(args),
    }
}

fn emoji(args: EmojiArgs) -> Result<()> {
    let start = Instant::now();
    let mut opts = EmojiOptions::new(&args.out);
    opts.val_fraction = args.val_fraction;
    opts.styles = args.style.styles();
    opts.shard_size = args.shard_size;
    let summary = build_emoji_dataset(&opts)?;
    println!(
        "{}",
        describe_emoji(&summary, start.elapsed().as_secs_f64())
    );
    Ok(())
}

fn describe_emoji(s: &EmojiSummary, seconds: f64) -> String {
    let styles: Vec<String> = s
        .per_style
        .iter()
        .map(|(style, n)| format!("{} {n}", style.name()))
        .collect();
    let mut line = format!(
        "wrote {} train + {} val emoji ({}) to {} in {} + {} shards, {:.1} MB, in {seconds:.1}s",
        s.train,
        s.val,
        styles.join(", "),
        s.out.display(),
        s.train_shards.len(),
        s.val_shards.len(),
        s.bytes as f64 / 1e6
    );
    if s.missing_images > 0 {
        line.push_str(&format!(
            "; {} listed emoji had no image and were left out",
            s.missing_images
        ));
    }
    line.push_str(&format!(
        "\ntrain with --data '{}' (the folder also holds the val shards)",
        train_pattern(&s.out, s.train_shards.len())
    ));
    line
}

fn shapes(args: ShapesArgs) -> Result<()> {
    let start = Instant::now();
    require_new_or_empty("--out", &args.out)?;
    let summary = match &args.prompts {
        Some(file) => {
            let prompts = read_prompt_file(file)?;
            write_prompt_renders(&args.out, &prompts, args.n, args.seed)?
        }
        None => {
            let holdout = Holdout::new(args.holdout)?;
            write_shapes_dataset_excluding(&args.out, args.n, args.seed, &args.forms, &holdout)?
        }
    };
    println!("{}", describe(&summary, start.elapsed().as_secs_f64()));
    if args.prompts.is_none() && args.holdout > 0.0 {
        println!(
            "held out {:.0}% of the prompts; list them with `unclip data shapes-eval-prompts --holdout {}`",
            args.holdout * 100.0,
            args.holdout
        );
    }
    Ok(())
}

fn describe(summary: &ShapesSummary, seconds: f64) -> String {
    let forms: Vec<String> = summary
        .per_form
        .iter()
        .map(|(form, count)| format!("{form} {count}"))
        .collect();
    format!(
        "wrote {} shapes images to {} in {seconds:.1}s (seed {}; {})",
        summary.images,
        summary.out.display(),
        summary.seed,
        forms.join(", ")
    )
}

fn shapes_eval_prompts(args: ShapesEvalPromptsArgs) -> Result<()> {
    if args.per_form == 0 {
        anyhow::bail!("--per-form 0 would list no prompts; allowed: 1 or more");
    }
    let holdout = Holdout::new(args.holdout)?;
    let prompts = holdout.evaluation_prompts(args.per_form, args.seed)?;
    let mut text = format!(
        "# Shapes-world prompts held out from training (`unclip data shapes --holdout {}`), \
         {} per form at most.\n# Written by: unclip data shapes-eval-prompts --holdout {} \
         --per-form {} --seed {}\n",
        args.holdout, args.per_form, args.holdout, args.per_form, args.seed
    );
    for p in &prompts {
        text.push_str(&format!("{p}\n"));
    }
    write_atomic(&args.out, text.as_bytes())?;
    let counts: Vec<String> = Form::ALL
        .iter()
        .map(|f| format!("{f} {}", prompts.iter().filter(|p| p.form() == *f).count()))
        .collect();
    println!(
        "wrote {} held-out prompts to {} ({})",
        prompts.len(),
        args.out.display(),
        counts.join(", ")
    );
    Ok(())
}

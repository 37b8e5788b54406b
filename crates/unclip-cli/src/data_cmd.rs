//! `unclip data ...`: dataset builders.

use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Instant;
use unclip::data::shapes::{
    read_prompt_file, write_prompt_renders, write_shapes_dataset, Form, ShapesSummary,
};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Render a shapes-world dataset (PNG + caption .txt + scene-graph .json per image).
    Shapes(ShapesArgs),
}

#[derive(Args)]
pub struct ShapesArgs {
    /// Number of images; with --prompts, the number of images of each prompt.
    #[arg(long)]
    pub n: usize,
    /// Output folder (created if missing; items with the same index are overwritten).
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
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Shapes(args) => shapes(args),
    }
}

fn shapes(args: ShapesArgs) -> Result<()> {
    let start = Instant::now();
    let summary = match &args.prompts {
        Some(file) => {
            let prompts = read_prompt_file(file)?;
            write_prompt_renders(&args.out, &prompts, args.n, args.seed)?
        }
        None => write_shapes_dataset(&args.out, args.n, args.seed, &args.forms)?,
    };
    println!("{}", describe(&summary, start.elapsed().as_secs_f64()));
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

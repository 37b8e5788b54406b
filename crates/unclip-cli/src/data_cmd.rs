//! `unclip data ...`: dataset builders.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum DataCommand {}

pub fn run(command: DataCommand) -> anyhow::Result<()> {
    match command {}
}

//! `bcae`: the bcae-rs command-line tool.
use clap::{Parser, Subcommand};

/// Compress TPC wedges with Bicephalous Convolutional Autoencoders: generate data, train,
/// evaluate, quantize to int8, compress and decompress.
#[derive(Parser)]
#[command(name = "bcae", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {}
}

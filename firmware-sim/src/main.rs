//! `firmware-sim`: parity simulations and throughput of the firmware encoder.
use clap::{Parser, Subcommand};

/// Run the firmware encoder over simulated peripherals and check it against candle.
#[derive(Parser)]
#[command(name = "firmware-sim", version, about, long_about = None)]
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

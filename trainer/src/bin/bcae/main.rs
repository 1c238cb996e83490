//! `bcae`: the bcae-rs command-line tool.
use clap::{Parser, Subcommand};

mod cli;

/// Compress TPC wedges with Bicephalous Convolutional Autoencoders: generate data, train,
/// evaluate, quantize to int8, compress and decompress.
#[derive(Parser)]
#[command(name = "bcae", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a synthetic TPC data set (physics simulation) in the reference layout.
    Synth(cli::data::SynthArgs),
    /// Print the data-spec statistics of data sets side by side (and check synthetic ones).
    Stats(cli::data::StatsArgs),
    /// Draw one wedge into a PNG.
    Show(cli::data::ShowArgs),
    /// Rate-distortion table and plot: the sparse codec, zstd and BCAE models on the same wedges.
    Compare(cli::compare::CompareArgs),
    /// Train a BCAE (bcae-2d, bcae-ht, bcae++) into a run directory; --resume continues exactly.
    Train(cli::train::TrainArgs),
    /// Evaluate runs on whole wedges (MAE, PSNR, precision, recall, ratio; f32 / f16 / bf16).
    Eval(cli::train::EvalArgs),
    /// Compress wedges into a .bcae stream (int8 BCAE codes, or --codec sparse[:QUALITY]).
    Compress(cli::stream::CompressArgs),
    /// Decompress a .bcae stream into uint16 .npy wedges (int8 codes: with a run's float decoders).
    Decompress(cli::stream::DecompressArgs),
    /// Show a .bcae stream's header, frames, CRC status and ratio on disk.
    Inspect(cli::stream::InspectArgs),
    /// Plot a run's per-epoch log (losses, test MAE, precision / recall) into a PNG.
    PlotLog(cli::train::PlotLogArgs),
    /// int8 post-training quantization into a .bcae.postcard weights file for encoder-nostd.
    Quantize(cli::quantize::QuantizeArgs),
    /// Import PyTorch state_dicts of the reference models (bcae-2d, bcae-ht, bcae++, bcae-v1) into a run.
    ImportTorch(cli::import::ImportTorchArgs),
    /// Time training steps and inference of the float models (the PyTorch comparison's rows).
    Bench(cli::bench::BenchArgs),
    /// Decode the original BCAE's released codes (or re-encode its samples) against its published metrics.
    DecodeCode(cli::decode_code::DecodeCodeArgs),
}

fn main() -> std::process::ExitCode {
    trainer::terminal::exit_quietly_on_closed_pipe();
    trainer::device::keep_freed_memory_for_reuse();
    trainer::device::park_idle_candle_workers();
    let cli = Cli::parse();
    let result = trainer::device::run_on_compute_pool(|| run(cli));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            trainer::terminal::report_error(&e);
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Synth(args) => cli::data::run_synth(args),
        Command::Stats(args) => cli::data::run_stats(args),
        Command::Show(args) => cli::data::run_show(args),
        Command::Compare(args) => cli::compare::run_compare(args),
        Command::Train(args) => cli::train::run_train(args),
        Command::Eval(args) => cli::train::run_eval(args),
        Command::Compress(args) => cli::stream::run_compress(args),
        Command::Decompress(args) => cli::stream::run_decompress(args),
        Command::Inspect(args) => cli::stream::run_inspect(args),
        Command::PlotLog(args) => cli::train::run_plot_log(args),
        Command::Quantize(args) => cli::quantize::run_quantize(args),
        Command::ImportTorch(args) => cli::import::run_import_torch(args),
        Command::Bench(args) => cli::bench::run_bench(args),
        Command::DecodeCode(args) => cli::decode_code::run_decode_code(args),
    }
}

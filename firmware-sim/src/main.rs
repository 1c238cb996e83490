//! `firmware-sim`: parity simulations, throughput, and the encoder on an emulated Cortex-M4F.
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use firmware_sim::bench::{self, BenchOptions};
use firmware_sim::parity::{self, ParityOptions};
use firmware_sim::peripherals::FaultRates;
use firmware_sim::qemu::{self, QemuOptions};
use firmware_sim::sim::CodecChoice;
use firmware_sim::source::WedgeSource;

mod demo;

/// Run the board's firmware path (the `encoder-nostd` firmware loop over simulated embedded-hal
/// peripherals) and prove its codes identical to the candle path; measure throughput; run the
/// encoder on an emulated Cortex-M4F.
#[derive(Parser)]
#[command(name = "firmware-sim", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole system on the shipped weights: synthetic events (or --data) through the firmware
    /// loop, bit-exact parity with candle, a .bcae stream, float decoding, Table-1 metrics, a picture.
    Demo(demo::DemoArgs),
    /// Every wedge through the firmware loop and the candle integer path; compare every code byte.
    Parity(ParityArgs),
    /// Throughput table: no_std int8 encoder (1 thread, all threads), sparse codec, candle paths.
    Bench(BenchArgs),
    /// Build the Cortex-M4F image, run it on qemu-system-arm (mps2-an386), compare code CRCs.
    Qemu(QemuArgs),
    /// Write int8 weights of a RANDOM (untrained) model: for testing this harness without a
    /// trained model; its codes are meaningless (use `bcae quantize` for real weights).
    RandomWeights(RandomWeightsArgs),
}

#[derive(Args, Debug)]
struct RandomWeightsArgs {
    /// bcae-ht, bcae++ or bcae-2d (m=4, d=3, 32 channels).
    #[arg(long, default_value = "bcae-ht")]
    model: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

fn random_weights_cmd(args: RandomWeightsArgs) -> anyhow::Result<ExitCode> {
    use encoder_nostd::weights::owned::OwnedModel;
    let model = match args.model.to_ascii_lowercase().as_str() {
        "bcae-ht" => OwnedModel::random_ht(args.seed, [2, 4, 4, 8], 8),
        "bcae++" => OwnedModel::random_ht(args.seed, [8, 16, 32, 32], 8),
        "bcae-2d" => OwnedModel::random_2d(args.seed, 4, 3, 32),
        other => bail!("unknown model '{other}': use bcae-ht, bcae++ or bcae-2d"),
    };
    let bytes = model.to_bytes().context("serializing the random model")?;
    std::fs::write(&args.out, &bytes).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} ({} bytes): random {} weights, for testing only",
        args.out.display(),
        bytes.len(),
        args.model
    );
    Ok(ExitCode::SUCCESS)
}

/// Where wedges come from.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct SourceArgs {
    /// A folder of .npy wedges, a reference data root, or one .npy file.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// N synthetic wedges (events 0, 1, ... of the physics generator).
    #[arg(long, value_name = "N", value_parser = trainer::terminal::numbers::at_least_one)]
    synth: Option<usize>,
}

impl SourceArgs {
    fn open(&self, seed: u64) -> anyhow::Result<WedgeSource> {
        match (&self.data, self.synth) {
            (Some(dir), _) => Ok(WedgeSource::files(dir)?),
            (None, Some(n)) => Ok(WedgeSource::synth(seed, n)),
            (None, None) => bail!("give --data DIR or --synth N"),
        }
    }
}

#[derive(Args, Debug)]
struct ParityArgs {
    /// int8 weights (`bcae quantize` output). Not needed for `--codec sparse`.
    #[arg(long, value_name = "W.bcae.postcard", required_if_eq("codec", "bcae"))]
    weights: Option<PathBuf>,
    #[command(flatten)]
    source: SourceArgs,
    /// Seed of the synthetic wedges.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// What the board encodes with: int8 (alias bcae), sparse (lossless), sparse:QUALITY (e.g. sparse:0.05) or
    /// sparse@RATIO (fixed rate: every payload raw/RATIO bytes, e.g. sparse@62.25).
    #[arg(long, default_value = "bcae", value_parser = CodecChoice::parse)]
    codec: CodecChoice,
    /// Wedges per candle batch.
    #[arg(long, default_value_t = 4, value_parser = trainer::terminal::numbers::at_least_one)]
    batch: usize,
    /// Run the streaming firmware (249 slice frames in per wedge, code slices out as they
    /// complete) instead of the whole-wedge loop; BCAE only.
    #[arg(long)]
    stream: bool,
    /// Inject faults: probability per byte of a dropped byte on the front-end link.
    #[arg(long, default_value_t = 0.0, value_parser = trainer::terminal::numbers::fraction)]
    drop_byte: f64,
    /// Inject faults: probability per byte of a flipped bit (both links).
    #[arg(long, default_value_t = 0.0, value_parser = trainer::terminal::numbers::fraction)]
    flip_bit: f64,
    /// Inject faults: probability per byte of a link error on the front-end read holding it.
    #[arg(long, default_value_t = 0.0, value_parser = trainer::terminal::numbers::fraction)]
    fail_read: f64,
    /// Inject faults: probability per sent frame of a link error.
    #[arg(long, default_value_t = 0.0, value_parser = trainer::terminal::numbers::fraction)]
    fail_send: f64,
    /// Device of the candle reference.
    #[arg(long, value_enum)]
    device: Option<trainer::device::DeviceChoice>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// int8 weights (`bcae quantize` output).
    #[arg(long, value_name = "W.bcae.postcard")]
    weights: PathBuf,
    /// A float run directory (runs/NAME) for the candle f32 / f16 rows.
    #[arg(long, value_name = "runs/NAME")]
    run: Option<PathBuf>,
    /// Distinct synthetic wedges to cycle through.
    #[arg(long, default_value_t = 4, value_parser = trainer::terminal::numbers::at_least_one)]
    wedges: usize,
    /// Minimum measuring time per row, seconds.
    #[arg(long, default_value_t = 3.0, value_parser = trainer::terminal::numbers::positive_f64)]
    seconds: f64,
    /// Batch size of the candle rows (and of the PyTorch row).
    #[arg(long, default_value_t = 4, value_parser = trainer::terminal::numbers::at_least_one)]
    batch: usize,
    /// A Python with PyTorch for a PyTorch fp32 row (scripts/bench-vs-torch.sh makes one).
    #[arg(long, value_name = "PYTHON", requires = "torch_ref")]
    torch_python: Option<PathBuf>,
    /// The NeuralCompression_v2 checkout whose encoder the PyTorch row times.
    #[arg(long, value_name = "DIR", requires = "torch_python")]
    torch_ref: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct QemuArgs {
    /// int8 weights (`bcae quantize` output).
    #[arg(long, value_name = "W.bcae.postcard")]
    weights: PathBuf,
    /// Wedges to embed in the image (each about 100-200 kB as a sparse payload; 4 MiB code memory).
    #[arg(long, default_value_t = 2, value_parser = trainer::terminal::numbers::at_least_one)]
    wedges: usize,
    /// Take the wedges from .npy files instead of the synthetic generator.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Seed of the synthetic wedges.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The image crate.
    #[arg(long, value_name = "DIR")]
    image_dir: Option<PathBuf>,
    /// Where inputs and the image's own target dir go.
    #[arg(long, value_name = "DIR", default_value = "target/cortex-m-image")]
    build_dir: PathBuf,
    /// The emulator binary.
    #[arg(long, default_value = "qemu-system-arm")]
    qemu: String,
    /// Emulation time limit, seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Device of the candle reference.
    #[arg(long, value_enum)]
    device: Option<trainer::device::DeviceChoice>,
    /// Show the build's and the board's full output.
    #[arg(long)]
    verbose: bool,
    /// Run the streaming encoder with the board's RAM cut to 256 KiB (statics + stack), and
    /// report its peak RAM; BCAE only (no sparse payload).
    #[arg(long)]
    stream: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn device(choice: Option<trainer::device::DeviceChoice>) -> anyhow::Result<candle_core::Device> {
    Ok(match choice {
        Some(c) => trainer::device::open(c)?,
        None => trainer::device::best(),
    })
}

fn parity_cmd(args: ParityArgs) -> anyhow::Result<ExitCode> {
    let weights = match (&args.weights, args.codec) {
        (Some(path), _) => firmware_sim::read_weights(path)?,
        (None, CodecChoice::Int8) => bail!(
            "--codec bcae (the default) needs --weights W.bcae.postcard: the shipped \
             weights/bcae-ht.bcae.postcard, or one from `bcae quantize`; or use --codec sparse"
        ),
        (None, CodecChoice::Sparse(_) | CodecChoice::SparseFixed(_)) => vec![],
    };
    let mut source = args.source.open(args.seed)?;
    let device = device(args.device)?;
    let faults = FaultRates {
        drop_byte: args.drop_byte,
        flip_bit: args.flip_bit,
        fail_read: args.fail_read,
        fail_send: args.fail_send,
        seed: args.seed,
    };
    let opts = ParityOptions {
        batch: args.batch,
        faults,
        progress: !args.json && std::io::stderr().is_terminal(),
        streaming: args.stream,
    };
    let report = parity::run(&weights, args.codec, &mut source, &device, opts)
        .context("parity run failed")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    if report.passed(!faults.is_none()) {
        if !args.json {
            println!("PARITY OK");
        }
        Ok(ExitCode::SUCCESS)
    } else {
        let clean =
            report.mismatches == 0 && report.pin_violations == 0 && report.decode_failures == 0;
        if report.wedges_compared == 0 {
            eprintln!(
                "PARITY NOT SHOWN: no wedge was compared ({} unreadable input(s))",
                report.unreadable.len()
            );
        } else if clean && !report.unreadable.is_empty() {
            eprintln!(
                "PARITY INCOMPLETE: {} input(s) could not be read (see above); the {} wedges read matched byte for byte",
                report.unreadable.len(),
                report.wedges_compared
            );
        } else {
            eprintln!("PARITY FAILED: {} mismatching bytes in {} wedges, {} pin violations, {} decode failures, {} unreadable input(s)", report.mismatches, report.mismatched_wedges, report.pin_violations, report.decode_failures, report.unreadable.len());
        }
        Ok(ExitCode::FAILURE)
    }
}

fn bench_cmd(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let weights = firmware_sim::read_weights(&args.weights)?;
    let opts = BenchOptions {
        wedges: args.wedges,
        min_seconds: args.seconds,
        batch: args.batch,
        run: args.run,
        torch: args
            .torch_python
            .zip(args.torch_ref)
            .map(|(python, reference)| bench::TorchOptions { python, reference }),
        ..Default::default()
    };
    let report = bench::run(&weights, &opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(ExitCode::SUCCESS)
}

fn qemu_cmd(args: QemuArgs) -> anyhow::Result<ExitCode> {
    let mut source = match &args.data {
        Some(dir) => WedgeSource::files(dir)?,
        None => WedgeSource::synth(args.seed, args.wedges),
    };
    let device = device(args.device)?;
    let opts = QemuOptions {
        weights: args.weights,
        wedges: args.wedges,
        image_dir: args.image_dir.unwrap_or_else(qemu::default_image_dir),
        build_dir: args.build_dir,
        qemu: args.qemu,
        timeout: Duration::from_secs(args.timeout),
        verbose: args.verbose,
        stream: args.stream,
    };
    if !args.json {
        eprintln!("building the Cortex-M4F image and running it on {} (this takes a few minutes the first time)...", opts.qemu);
    }
    let report = qemu::run(&opts, &mut source, &device)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if args.verbose || !report.all_match {
            println!("board output:\n{}", report.board_output);
        }
        print!("{}", report.text());
    }
    Ok(if report.all_match {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn demo_cmd(args: demo::DemoArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let report = demo::run(args)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if !report.skipped.is_empty() {
        bail!(
            "{} input wedge(s) could not be read and were left out of the demo: {}",
            report.skipped.len(),
            report.skipped.join("; ")
        );
    }
    Ok(if report.bit_exact {
        ExitCode::SUCCESS
    } else {
        eprintln!("PARITY FAILED: the firmware's codes differ from the candle path's (see above)");
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    trainer::terminal::exit_quietly_on_closed_pipe();
    trainer::device::park_idle_candle_workers();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo_cmd(args),
        Command::Parity(args) => parity_cmd(args),
        Command::Bench(args) => bench_cmd(args),
        Command::Qemu(args) => qemu_cmd(args),
        Command::RandomWeights(args) => random_weights_cmd(args),
    };
    result.unwrap_or_else(|e| {
        trainer::terminal::report_error(&e);
        ExitCode::FAILURE
    })
}

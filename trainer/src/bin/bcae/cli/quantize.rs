//! `bcae quantize`: int8 post-training quantization into a `.bcae.postcard` weights file.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use candle_nn::VarBuilder;
use indicatif::ProgressBar;
use serde::Serialize;

use trainer::checkpoint;
use trainer::data::{Dataset, Split, Wedge};
use trainer::device::{self, DeviceChoice};
use trainer::quantize::{self, AccuracyReport, Calibration, FloatEncoder, LayerBound};
use trainer::quantized::QuantizedEncoder;

/// Quantize a trained BCAE-HT or BCAE-2D encoder to int8 (the weights file `encoder-nostd`
/// runs on a board), check it bit for bit against the board's encoder, and report its accuracy
/// against the float model.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    bcae quantize --run runs/ht --calib data/synth --out weights/ht.bcae.postcard\n  \
    bcae quantize --run runs/2d --calib data/synth --wedges 64 --percentile 100 --json --out weights/2d.bcae.postcard\n\n\
Range estimator: per activation tensor, the (100-p, p) percentiles over the calibration wedges\n\
(default p = 99.99; 100 = min/max). Wedges are ~90 % empty, so min/max spends the 256 levels\n\
on a handful of voxels on dense tracks; the percentile clips about 1e-4 of the values.")]
pub struct QuantizeArgs {
    /// Run directory of a trained bcae-ht or bcae-2d model (config.json + model.safetensors).
    #[arg(long)]
    pub run: PathBuf,
    /// Calibration data: its training split (or every wedge of a plain folder).
    #[arg(long)]
    pub calib: PathBuf,
    /// Calibration wedges.
    #[arg(long, default_value_t = 64, value_parser = trainer::terminal::numbers::at_least_one)]
    pub wedges: usize,
    /// Evaluation data (default: the --calib root's test split).
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Evaluation wedges (0 skips the accuracy report).
    #[arg(long, default_value_t = 8)]
    pub eval_wedges: usize,
    /// Synthetic wedges encoded by both the no_std encoder and the candle integer path and
    /// compared bit for bit (0 skips the check).
    #[arg(long, default_value_t = 8)]
    pub check_wedges: usize,
    /// Seed of the synthetic check wedges.
    #[arg(long, default_value_t = 0)]
    pub check_seed: u64,
    /// Range estimator percentile p in (50, 100]; 100 = min/max.
    #[arg(long, default_value_t = 99.99, value_parser = percentile)]
    pub percentile: f64,
    /// Output weights file.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    #[arg(long, default_value_t = 4, value_parser = trainer::terminal::numbers::at_least_one)]
    pub batch_size: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Encoding speed measured during the bit-exact check.
#[derive(Debug, Serialize)]
pub struct Speed {
    pub board_wedges_per_s: f64,
    pub board_gmac_per_s: f64,
    pub candle_int_wedges_per_s: f64,
}

/// What `bcae quantize` measured.
#[derive(Debug, Serialize)]
pub struct QuantizeReport {
    pub weights: PathBuf,
    pub bytes: usize,
    pub model: String,
    pub code_shape: [usize; 4],
    pub code_scale: f32,
    pub code_zero_point: i8,
    pub scratch_bytes: usize,
    pub macs_per_wedge: u64,
    pub percentile: f64,
    pub calibration_wedges: usize,
    pub layers: Vec<LayerBound>,
    pub board_check_wedges: usize,
    pub board_check_bytes: usize,
    /// Timings of the check (this build, this machine, one thread for encoder-nostd).
    pub speed: Speed,
    pub accuracy: Option<AccuracyReport>,
    /// (int8 MAE - float f16-code MAE) / float MAE, in percent.
    pub mae_loss_percent: Option<f64>,
}

/// `--percentile`: a finite number in (50, 100].
fn percentile(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(p) if p.is_finite() && p > 50.0 && p <= 100.0 => Ok(p),
        _ => Err(format!(
            "'{s}' must be a number above 50 and at most 100 (100 = min/max)"
        )),
    }
}

fn bar(len: usize, what: &str) -> ProgressBar {
    trainer::terminal::progress_bar(len as u64, what)
}

fn open_data(root: &Path, split: Split, n: usize) -> Result<Dataset> {
    let mut ds = crate::cli::train::open_split(root, split)
        .with_context(|| format!("opening data {}", root.display()))?;
    ds.truncate(n);
    Ok(ds)
}

fn load(ds: &Dataset, range: std::ops::Range<usize>) -> Result<Vec<Wedge>> {
    range
        .map(|i| {
            ds.load(i)
                .with_context(|| format!("reading wedge {i} of {}", ds.root().display()))
        })
        .collect()
}

pub fn run_quantize(args: QuantizeArgs) -> Result<()> {
    if args.out.exists() && !args.force {
        bail!(
            "{} exists; pass --force to replace it (or choose another --out)",
            args.out.display()
        );
    }
    if args.out.starts_with(&args.run) {
        bail!(
            "--out {} is inside the run folder {}: write the int8 weights beside it, e.g. {}.bcae.postcard",
            args.out.display(),
            args.run.display(),
            args.run.display()
        );
    }
    let device = device::open(args.device)?;
    let (cfg, varmap) = checkpoint::load_run(&args.run, &device)
        .with_context(|| format!("loading run {}", args.run.display()))?;
    let tensors = checkpoint::varmap_tensors(&varmap);
    let float = FloatEncoder::from_tensors(&cfg, &tensors)?;
    let source = quantize::source_of(&args.run, &args.run.join("model.safetensors"))
        .with_context(|| format!("fingerprinting {}", args.run.display()))?;

    // Calibration.
    let calib_set = open_data(&args.calib, Split::Train, args.wedges)?;
    let total = calib_set.len();
    let progress = bar(total, "calibrate");
    let started = Instant::now();
    let mut calib = Calibration::default();
    for start in (0..total).step_by(args.batch_size.max(1)) {
        let wedges = load(
            &calib_set,
            start..(start + args.batch_size.max(1)).min(total),
        )?;
        let x = trainer::data::batch_tensor(&wedges, &device)?;
        calib.observe(&float, &x, total)?;
        progress.inc(wedges.len() as u64);
    }
    progress.finish_and_clear();
    let calib_secs = started.elapsed().as_secs_f64();

    let model = quantize::quantize(&float, &calib, args.percentile, &source)?;
    let bytes = model.to_bytes().context("serializing the int8 model")?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    checkpoint::write_atomic(&args.out, &bytes)
        .with_context(|| format!("writing {}", args.out.display()))?;

    let int8 = QuantizedEncoder::from_bytes(&bytes, &device)?;
    let board = encoder_nostd::encoder::Encoder::parse(&bytes)?;
    let eval_root = args.eval.clone().unwrap_or_else(|| args.calib.clone());

    // Board (encoder-nostd) against the candle integer path, bit for bit, on synthetic wedges
    // (always available, whatever --calib holds), in batches so memory stays flat.
    let mut checked = (0usize, 0usize);
    let (mut board_secs, mut candle_secs) = (0f64, 0f64);
    if args.check_wedges > 0 {
        let wedges = trainer::data::synth::generate_wedges(args.check_seed, args.check_wedges);
        let progress = bar(wedges.len(), "bit-exact check");
        let mut scratch = vec![0i8; board.scratch_len()];
        let mut code = vec![0i8; board.code_len()];
        for (b, chunk) in wedges.chunks(args.batch_size.max(1)).enumerate() {
            let t = Instant::now();
            let candle_codes = int8.encode_wedges(chunk)?;
            candle_secs += t.elapsed().as_secs_f64();
            for (j, (w, expected)) in chunk.iter().zip(&candle_codes).enumerate() {
                let i = b * args.batch_size.max(1) + j;
                let t = Instant::now();
                board
                    .encode(&w.adc, &mut scratch, &mut code)
                    .with_context(|| format!("encoder-nostd on check wedge {i}"))?;
                board_secs += t.elapsed().as_secs_f64();
                if let Some(pos) = code.iter().zip(expected).position(|(a, b)| a != b) {
                    bail!(
                        "int8 self-check failed: synthetic wedge {i} (seed {}), code index {pos}: \
                         encoder-nostd {} vs candle {} (please report this as a bug)",
                        args.check_seed,
                        code[pos],
                        expected[pos]
                    );
                }
                checked = (checked.0 + 1, checked.1 + code.len());
                progress.inc(1);
            }
        }
        progress.finish_and_clear();
    }
    let per_s = |secs: f64| {
        if secs > 0.0 {
            checked.0 as f64 / secs
        } else {
            0.0
        }
    };
    let speed = Speed {
        board_wedges_per_s: per_s(board_secs),
        board_gmac_per_s: per_s(board_secs) * board.macs_per_wedge() as f64 / 1e9,
        candle_int_wedges_per_s: per_s(candle_secs),
    };

    // Accuracy: float model with an f16 code vs int8 encoder + float decoders.
    let accuracy = if args.eval_wedges > 0 {
        let ds = open_data(&eval_root, Split::Test, args.eval_wedges)?;
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let net = trainer::models::build(&cfg, vb)?;
        let progress = bar(ds.len(), "evaluate");
        let mut all = vec![];
        for start in (0..ds.len()).step_by(args.batch_size.max(1)) {
            all.extend(load(
                &ds,
                start..(start + args.batch_size.max(1)).min(ds.len()),
            )?);
        }
        let report =
            quantize::evaluate(net.as_ref(), &int8, &all, args.batch_size, &device, |n| {
                progress.inc(n as u64)
            })?;
        progress.finish_and_clear();
        Some(report)
    } else {
        None
    };
    let mae_loss_percent = accuracy
        .as_ref()
        .map(|a| 100.0 * (a.int8_code.mae - a.float_f16_code.mae) / a.float_f16_code.mae);
    let shape = int8.code_shape();
    let report = QuantizeReport {
        weights: args.out.clone(),
        bytes: bytes.len(),
        model: cfg.label(),
        code_shape: [shape.c, shape.d, shape.h, shape.w],
        code_scale: int8.code_scale(),
        code_zero_point: int8.code_zero_point(),
        scratch_bytes: board.scratch_len(),
        macs_per_wedge: board.macs_per_wedge(),
        percentile: args.percentile,
        calibration_wedges: calib.wedges,
        layers: quantize::layer_bounds(&bytes)?,
        board_check_wedges: checked.0,
        board_check_bytes: checked.1,
        speed,
        accuracy,
        mae_loss_percent,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print_report(&report, calib_secs);
    Ok(())
}

fn print_report(r: &QuantizeReport, calib_secs: f64) {
    println!(
        "wrote {} ({} bytes): {} int8 encoder",
        r.weights.display(),
        r.bytes,
        r.model
    );
    println!(
        "calibration: {} wedges in {:.1} s, range estimator: {}",
        r.calibration_wedges,
        calib_secs,
        if r.percentile >= 100.0 {
            "min/max".to_string()
        } else {
            format!("percentile {}", r.percentile)
        }
    );
    println!(
        "code {:?} (c, d, h, w), scale {:.6}, zero point {}; board scratch {} bytes; {:.3} GMAC per wedge",
        r.code_shape,
        r.code_scale,
        r.code_zero_point,
        r.scratch_bytes,
        r.macs_per_wedge as f64 / 1e9
    );
    let worst = r.layers.iter().max_by_key(|l| l.worst_case_sum);
    if let Some(w) = worst {
        println!(
            "f32 exactness: largest layer {} sums {} terms, worst case {} < 2^24 = 16777216 (all {} layers pass)",
            w.layer,
            w.terms,
            w.worst_case_sum,
            r.layers.len()
        );
    }
    if r.board_check_wedges > 0 {
        println!(
            "bit-exact: encoder-nostd == candle integer path on {} synthetic wedges ({} code bytes)",
            r.board_check_wedges, r.board_check_bytes
        );
        println!(
            "speed (this build): encoder-nostd {:.2} wedges/s = {:.2} GMAC/s (1 thread); candle integer path {:.2} wedges/s",
            r.speed.board_wedges_per_s, r.speed.board_gmac_per_s, r.speed.candle_int_wedges_per_s
        );
    }
    if let Some(a) = &r.accuracy {
        println!(
            "\naccuracy on {} wedges (log2(ADC+1) domain, z cropped to 249):",
            a.wedges
        );
        let [tp_mae, tp_corr, below, top] = trainer::metrics::VALUE_HEADERS;
        println!(
            "{:<34} {:>8} {:>10} {:>10} {:>10} {tp_mae:>8} {tp_corr:>7} {below:>7} {top:>11} {:>8}",
            "mode", "MAE", "PSNR(dB)", "precision", "recall", "ratio"
        );
        for (name, m, ratio) in [
            ("float encoder, f16 code", &a.float_f16_code, a.ratio_f16),
            ("int8 encoder, int8 code", &a.int8_code, a.ratio_int8),
        ] {
            let [tp_mae, tp_corr, below, top] = m.value_cells();
            println!(
                "{:<34} {:>8.4} {:>10.2} {:>10.4} {:>10.4} {:>8} {:>7} {:>7} {:>11} {:>8.3}",
                name, m.mae, m.psnr_db, m.precision, m.recall, tp_mae, tp_corr, below, top, ratio
            );
        }
        print!("{}", trainer::metrics::VALUE_COLUMNS_NOTE);
        if let Some(why) = a.int8_code.value_collapse() {
            println!("COLLAPSED: {why}");
        }
        println!(
            "code error: mean |float - dequantized int8| = {:.4} (mean |code| {:.4})",
            a.code_mae, a.code_mean_abs
        );
        if let Some(loss) = r.mae_loss_percent {
            println!(
                "int8 MAE vs float: {loss:+.2} %{}",
                if loss > 5.0 {
                    "  (more than 5 %: consider decoder fine-tuning on int8 codes)"
                } else {
                    ""
                }
            );
        }
        println!("(ratio: the int8 code is 8-bit, so it counts 2x the paper's 16-bit code ratio)");
    }
}

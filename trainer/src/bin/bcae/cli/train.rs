//! `bcae train`, `bcae eval`, `bcae plot-log`, and the reconstruction mode of `bcae show --run`.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use plotters::prelude::*;

use trainer::checkpoint::{self, TrainSettings};
use trainer::data::{read_wedge, DataError, Dataset, Split, Wedge, Z_BINS};
use trainer::device::{self, DeviceChoice};
use trainer::eval::{self, EvalModel, EvalReport, Precision};
use trainer::loss::RegressionMask;
use trainer::metrics::{fmt_metric, fmt_percent};
use trainer::models::ModelConfig;
use trainer::train::{median_hit_log2, RunOptions, Trainer};

/// Train a BCAE on wedge data (CPU by default; CUDA with a `--features cuda` build).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    bcae train --model bcae-ht --data data/synth --out runs/ht --crop 64x64 --epochs 20 --batches-per-epoch 50\n  \
    bcae train --model bcae-2d --m 3 --n 3 --d 3 --data data/synth --out runs/2d --crop 64x64\n  \
    bcae train --out runs/ht --resume --epochs 40")]
pub struct TrainArgs {
    /// Model: bcae-2d, bcae-ht, bcae++, or bcae-v1 (the original BCAE; whole wedges, no --crop).
    #[arg(long, default_value = "bcae-2d")]
    pub model: String,
    /// BCAE-2D encoder blocks.
    #[arg(long, default_value_t = 4)]
    pub m: usize,
    /// BCAE-2D decoder blocks per head.
    #[arg(long, default_value_t = 8)]
    pub n: usize,
    /// BCAE-2D down-sampling blocks (code (32, 192/2^d, 256/2^d)).
    #[arg(long, default_value_t = 3)]
    pub d: usize,
    /// Data root (train.txt / test.txt, as `bcae synth` writes). Needed for a new run; on
    /// --resume the run's own data path is used unless given.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run directory (config.json, model.safetensors, state.json, log.csv).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// Total epochs (default 200; on --resume, extends or shortens the run).
    #[arg(long, value_parser = trainer::terminal::numbers::at_least_one)]
    pub epochs: Option<usize>,
    /// Batches per epoch (default: the whole training split).
    #[arg(long, value_parser = trainer::terminal::numbers::at_least_one)]
    pub batches_per_epoch: Option<usize>,
    #[arg(long, default_value_t = 4, value_parser = trainer::terminal::numbers::at_least_one)]
    pub batch_size: usize,
    /// Train on random AxZ crops (azimuth x z, multiples of 8 for BCAE-2D with d=3, of 16 for
    /// the 3D models); evaluation always uses whole wedges.
    #[arg(long, value_parser = parse_crop)]
    pub crop: Option<(usize, usize)>,
    /// Initial learning rate.
    #[arg(long, default_value_t = 1e-3, value_parser = trainer::terminal::numbers::positive_f64)]
    pub lr: f64,
    /// Epochs at the initial learning rate (default: 50 for BCAE-2D, 100 for the 3D models).
    #[arg(long)]
    pub warmup_epochs: Option<usize>,
    /// Then x0.95 every this many epochs (default: 10 for BCAE-2D, 20 for the 3D models).
    #[arg(long, value_parser = trainer::terminal::numbers::at_least_one)]
    pub decay_every: Option<usize>,
    /// Seed of the initialisation, data order and crops.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Whole test wedges evaluated after every epoch (0: none).
    #[arg(long, default_value_t = 8)]
    pub eval_wedges: usize,
    /// Continue the run in --out exactly where its last checkpoint left it.
    #[arg(long)]
    pub resume: bool,
    /// Consecutive NaN roll-backs tolerated before giving up.
    #[arg(long, default_value_t = 3)]
    pub max_rollbacks: usize,
    /// Where the regression head starts: `median` sets its output bias so that it starts at the
    /// median log2(ADC+1) of the training data's hits (first 8 wedges); `reference` keeps
    /// PyTorch's default initialisation (as the reference code; its head starts near ADC 511);
    /// or a log2(ADC+1) value.
    #[arg(long, default_value = "median", value_parser = parse_reg_init)]
    pub reg_init: RegInit,
    /// Voxels the regression loss counts: `truth` (every true hit; the default, since with the
    /// paper's mask the head collapses to its floor early in training, issue 15) or `prediction`
    /// (the paper's loss: the predicted hits).
    #[arg(long, value_enum, default_value_t = trainer::train::DEFAULT_REG_MASK)]
    pub reg_mask: RegressionMask,
}

/// `--reg-init`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RegInit {
    Median,
    Reference,
    Value(f64),
}

fn parse_reg_init(s: &str) -> std::result::Result<RegInit, String> {
    match s {
        "median" => Ok(RegInit::Median),
        "reference" => Ok(RegInit::Reference),
        v => v
            .parse::<f64>()
            .ok()
            .filter(|x| *x > trainer::loss::TRANSFORM_OFFSET && x.is_finite())
            .map(RegInit::Value)
            .ok_or_else(|| {
                format!(
                    "--reg-init {s}: expected median, reference, or a log2(ADC+1) value above {}",
                    trainer::loss::TRANSFORM_OFFSET
                )
            }),
    }
}

fn parse_crop(s: &str) -> std::result::Result<(usize, usize), String> {
    let (a, z) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("--crop {s}: expected AZIMUTHxZ, e.g. 64x64"))?;
    let a = a
        .trim()
        .parse()
        .map_err(|_| format!("--crop {s}: {a} is not a number"))?;
    let z = z
        .trim()
        .parse()
        .map_err(|_| format!("--crop {s}: {z} is not a number"))?;
    Ok((a, z))
}

fn model_config(name: &str, m: usize, n: usize, d: usize) -> Result<ModelConfig> {
    let cfg = ModelConfig::from_name(name)?;
    Ok(match cfg {
        ModelConfig::Bcae2d { .. } => ModelConfig::bcae_2d(m, n, d)?,
        other => other,
    })
}

/// Open a split, falling back to every wedge of a plain folder / single file (with a note).
pub(crate) fn open_split(root: &Path, split: Split) -> Result<Dataset> {
    match Dataset::open(root, split) {
        Ok(ds) => Ok(ds),
        Err(DataError::MissingListFile { .. }) => {
            eprintln!(
                "note: {} has no train.txt/test.txt; using all of its wedges for the {split:?} split",
                root.display()
            );
            Ok(Dataset::open(root, Split::All)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// The test split for per-epoch validation: None (with a note) when there is none to use.
fn open_validation_split(data: &Path, eval_wedges: usize) -> Result<Option<Dataset>> {
    if eval_wedges == 0 {
        return Ok(None);
    }
    match open_split(data, Split::Test) {
        Ok(ds) => Ok(Some(ds)),
        Err(e)
            if matches!(
                e.downcast_ref::<DataError>(),
                Some(DataError::EmptySplit { .. })
            ) =>
        {
            eprintln!(
                "note: {} has no test wedges (test.txt is empty), so no validation runs after each \
                 epoch; generate 2 or more events (`bcae synth --events 2`) to hold one out",
                data.display()
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Remove what a new run wrote into `dir` before its first epoch completed (and `dir` itself
/// when it was created here and is left empty), so the corrected command can simply be re-run.
fn remove_unstarted_run(dir: &Path, created_dir: bool) {
    for f in [
        checkpoint::CONFIG_FILE,
        checkpoint::MODEL_FILE,
        checkpoint::OPTIMIZER_FILE,
        checkpoint::STATE_FILE,
        checkpoint::LOG_FILE,
    ] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    if created_dir {
        let _ = std::fs::remove_dir(dir);
    }
}

pub fn run_train(args: TrainArgs) -> Result<()> {
    let device = device::open(args.device)?;
    let mut new_run_dir = None;
    let (mut trainer, train, test) = if args.resume {
        let mut t = Trainer::resume(&args.out, &device)
            .with_context(|| format!("resuming {}", args.out.display()))?;
        if let Some(e) = args.epochs {
            t.set_epochs(e)?;
        }
        eprintln!(
            "resuming {} ({}) after epoch {} of {}, step {}, coefficient {:.2}",
            args.out.display(),
            t.model_config.label(),
            t.epoch,
            t.settings.epochs,
            t.step,
            t.coefficient.value
        );
        let data = args.data.clone().unwrap_or_else(|| t.settings.data.clone());
        let train = open_split(&data, Split::Train)?;
        let test = open_validation_split(&data, t.settings.eval_wedges)?;
        (t, train, test)
    } else {
        let cfg = model_config(&args.model, args.m, args.n, args.d)?;
        let data = args
            .data
            .clone()
            .context("--data DIR is required for a new run")?;
        // The data is opened before the run folder exists: a typo in --data must not leave a
        // half-made run behind that blocks the corrected command.
        let train = open_split(&data, Split::Train)?;
        let test = open_validation_split(&data, args.eval_wedges)?;
        let mut s = TrainSettings::paper_defaults(&cfg, data);
        if let Some(e) = args.epochs {
            s.epochs = e;
        }
        s.batches_per_epoch = args.batches_per_epoch;
        s.batch_size = args.batch_size;
        s.crop = args.crop;
        s.lr = args.lr;
        s.warmup_epochs = args.warmup_epochs.unwrap_or(s.warmup_epochs);
        s.decay_every = args.decay_every.unwrap_or(s.decay_every);
        s.seed = args.seed;
        s.eval_wedges = args.eval_wedges;
        s.reg_mask = args.reg_mask;
        s.reg_init_log2 = match args.reg_init {
            RegInit::Reference => None,
            RegInit::Value(v) => Some(v),
            RegInit::Median => {
                let train = open_split(&s.data, Split::Train)?;
                let wedges = (0..train.len().min(8))
                    .map(|i| train.load(i))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .with_context(|| format!("reading {}", s.data.display()))?;
                let median = median_hit_log2(&wedges)
                    .context("--reg-init median: the first 8 training wedges hold no hit; give --reg-init VALUE")?;
                eprintln!(
                    "regression head starts at the training hits' median log2(ADC+1) = {median:.3} (ADC {})",
                    trainer::data::log_to_adc(median as f32)
                );
                Some(median)
            }
        };
        let created_dir = !args.out.exists();
        let t = Trainer::create(&args.out, cfg, s, &device)?;
        new_run_dir = Some(created_dir);
        eprintln!(
            "training {} ({} encoder + {} decoder parameters) into {}",
            cfg.label(),
            trainer::models::encoder_param_count(&cfg),
            trainer::models::decoder_param_count(&cfg),
            args.out.display()
        );
        (t, train, test)
    };
    let s = &trainer.settings;
    eprintln!(
        "regression head: {}; regression loss over the {}",
        s.reg_init_log2
            .map_or("reference initialisation".to_string(), |v| format!(
                "starts at log2(ADC+1) = {v:.3}"
            )),
        match s.reg_mask {
            RegressionMask::Prediction => "predicted hits (the paper's loss)",
            RegressionMask::Truth => "true hits (not the paper's loss)",
        }
    );
    eprintln!(
        "{} training wedges, batch {}, {} batches/epoch, crop {}, lr {:.1e} held {} epochs then x{} every {}",
        train.len(),
        s.batch_size,
        trainer.batches_per_epoch(train.len()),
        s.crop.map_or("none (whole wedges)".to_string(), |(a, z)| format!("{a}x{z}")),
        s.lr,
        s.warmup_epochs,
        s.decay_factor,
        s.decay_every
    );
    let opts = RunOptions {
        progress: true,
        max_rollbacks: args.max_rollbacks,
        stop_after: None,
    };
    if let Err(e) = trainer.run(&train, test.as_ref(), &opts) {
        let e = anyhow::Error::from(e);
        return Err(match new_run_dir {
            Some(created_dir) if trainer.epoch == 0 => {
                remove_unstarted_run(&args.out, created_dir);
                e.context(format!(
                    "training stopped before its first epoch completed; {} was removed, so the \
                     corrected command can be run again",
                    args.out.display()
                ))
            }
            _ => e.context(format!(
                "training stopped after epoch {}; fix the cause and continue with `bcae train --out {} --resume`",
                trainer.epoch,
                args.out.display()
            )),
        });
    }
    if let Some(last) = trainer.log.last() {
        let test = if last.val_mae.is_finite() {
            format!("test MAE {:.4}", last.val_mae)
        } else {
            "no test evaluation".to_string()
        };
        eprintln!(
            "done: {} epochs, {} steps; last epoch loss {:.4}, {test}, TP value MAE {} (train {}), hits below ADC 64 {} (train {}), {:.2} wedges/s; run in {}",
            trainer.epoch,
            trainer.step,
            last.loss,
            fmt_metric(last.val_tp_mae, 4),
            fmt_metric(last.train_tp_mae, 4),
            fmt_percent(last.val_below_threshold),
            fmt_percent(last.train_below_threshold),
            last.wedges_per_s,
            args.out.display()
        );
    }
    Ok(())
}

/// Evaluate runs on whole wedges: MAE, MSE, PSNR, precision, recall, occupancy, compression
/// ratio, encoder parameters and throughput; a Table-1 style table over all runs.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    bcae eval --run runs/ht --run runs/2d --data data/synth --max-wedges 16\n  \
    bcae eval --run runs/ht --data data/synth --precision f32,f16 --json\n  \
    bcae eval --run weights/bcae-ht --weights weights/bcae-ht.bcae.postcard --data data/synth")]
pub struct EvalArgs {
    /// Run directories (repeat for a table across runs).
    #[arg(long = "run", required_unless_present = "stream")]
    pub runs: Vec<PathBuf>,
    /// Data root, plain folder of .npy wedges, or one .npy file (with --stream: the originals,
    /// also spelled --truth).
    #[arg(long, visible_alias = "truth")]
    pub data: PathBuf,
    /// Score a .bcae stream (decoded as `bcae decompress` would) against the originals in
    /// --truth DIR; int8 streams need the --run their weights came from.
    #[arg(long)]
    pub stream: Option<PathBuf>,
    /// With --stream: decode even if the run does not match the stream's weights fingerprint.
    #[arg(long, requires = "stream")]
    pub force: bool,
    /// Which split of a data root: train, test or all.
    #[arg(long, default_value = "test")]
    pub split: Split,
    /// Precisions to evaluate (comma-separated): f32; f16 = encoder and code in f16, decoders
    /// in f32 (the paper's Table 2); bf16 likewise.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![Precision::F32])]
    pub precision: Vec<Precision>,
    /// int8 encoder weights (from `bcae quantize`; repeatable): each adds an `int8` row, the
    /// board's path (encoder-nostd encodes, the code is dequantized, the float decoders of the
    /// --run it was quantized from decode).
    #[arg(long = "weights", conflicts_with = "stream")]
    pub weights: Vec<PathBuf>,
    /// Print JSON (per-wedge and mean metrics) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Evaluate at most this many wedges.
    #[arg(long, value_parser = trainer::terminal::numbers::at_least_one)]
    pub max_wedges: Option<usize>,
    /// Also print every wedge's metrics.
    #[arg(long)]
    pub per_wedge: bool,
    #[arg(long, default_value_t = 4, value_parser = trainer::terminal::numbers::at_least_one)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
}

/// `bcae eval --stream S --truth DIR [--run R]`: TRAIN's `bcae eval` arguments, forwarded.
fn run_eval_stream_args(stream: &Path, args: &EvalArgs) -> Result<()> {
    use trainer::eval::Precision;
    if args.runs.len() > 1 {
        bail!("eval --stream decodes with one run; pass a single --run");
    }
    let precision = match args.precision.as_slice() {
        [Precision::F32] => trainer::decode::DecoderPrecision::F32,
        [Precision::F16] => trainer::decode::DecoderPrecision::F16,
        _ => {
            bail!("eval --stream decodes in one precision: pass --precision f32 or --precision f16")
        }
    };
    if args.max_wedges.is_some() {
        eprintln!("note: --max-wedges is ignored with --stream (every frame is scored)");
    }
    crate::cli::stream::run_eval_stream(trainer::decode::StreamEvalOptions {
        stream,
        truth: &args.data,
        run: args.runs.first().map(PathBuf::as_path),
        device: args.device,
        precision,
        force: args.force,
        batch_size: args.batch_size,
        json: args.json,
        per_wedge: args.per_wedge,
    })
}

pub fn run_eval(args: EvalArgs) -> Result<()> {
    if let Some(stream) = &args.stream {
        return run_eval_stream_args(stream, &args);
    }
    let device = device::open(args.device)?;
    let mut data = open_split(&args.data, args.split)?;
    if let Some(m) = args.max_wedges {
        data.truncate(m);
    }
    let unreadable = trainer::terminal::drop_unreadable(&mut data);
    if data.is_empty() {
        bail!(
            "none of the wedges of {} could be read (see the errors above)",
            args.data.display()
        );
    }
    let n = data.len();
    // Each --weights belongs to the --run it was quantized from: found before any work starts.
    let mut int8_rows: Vec<(&PathBuf, &PathBuf)> = Vec::new();
    for w in &args.weights {
        let run = args
            .runs
            .iter()
            .find(|run| EvalModel::load_int8(run, w, &Device::Cpu).is_ok())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--weights {}: no --run holds the checkpoint these weights were quantized from \
                     (or they do not parse); pass that run with --run",
                    w.display()
                )
            })?;
        int8_rows.push((run, w));
    }
    let mut jobs: Vec<(&PathBuf, Precision, Option<&PathBuf>)> = Vec::new();
    for run in &args.runs {
        jobs.extend(args.precision.iter().map(|&p| (run, p, None)));
        jobs.extend(
            int8_rows
                .iter()
                .filter(|(r, _)| *r == run)
                .map(|&(r, w)| (r, Precision::Int8, Some(w))),
        );
    }
    let mut reports: Vec<EvalReport> = Vec::new();
    let mut failures = Vec::new();
    for (run, precision, weights) in jobs {
        let bar = trainer::terminal::progress_bar(
            n as u64,
            &format!("{} {}", run.display(), precision.name()),
        );
        let model = match weights {
            Some(w) => EvalModel::load_int8(run, w, &device),
            None => EvalModel::load(run, &device, precision),
        };
        let result = model
            .and_then(|model| {
                eval::evaluate(&model, &data, args.max_wedges, args.batch_size, Some(&bar))
            })
            .with_context(|| format!("evaluating {} in {}", run.display(), precision.name()));
        bar.finish_and_clear();
        match result {
            Ok(mut report) => {
                report.run = run.display().to_string();
                reports.push(report);
            }
            // Keep going: one unsupported precision should not hide the other rows.
            Err(e) => {
                eprintln!("{}", trainer::terminal::error_text(&e));
                failures.push(format!("{} {}", run.display(), precision.name()));
            }
        }
    }
    if reports.is_empty() {
        bail!("no evaluation succeeded ({})", failures.join(", "));
    }
    let unreadable_error = || {
        anyhow::anyhow!(
            "{} wedge(s) could not be read and are not in the scores (see the errors above)",
            unreadable.len()
        )
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        if !failures.is_empty() {
            bail!(
                "{} evaluations failed (see the errors above): {}",
                failures.len(),
                failures.join(", ")
            );
        }
        if !unreadable.is_empty() {
            return Err(unreadable_error());
        }
        return Ok(());
    }
    if args.per_wedge {
        for r in &reports {
            println!("{} ({}):", r.run, r.precision.name());
            let [h_tp_mae, h_tp_corr, h_below, _] = trainer::metrics::VALUE_HEADERS;
            println!(
                "  {:<60} {:>8} {:>8} {:>8} {:>9} {:>7} {h_tp_mae:>8} {h_tp_corr:>7} {h_below:>7} {:>7}",
                "wedge", "MAE", "MSE", "PSNR dB", "precision", "recall", "occ"
            );
            for w in &r.wedges {
                let m = &w.metrics;
                let [tp_mae, tp_corr, below, _] = m.value_cells();
                println!(
                    "  {:<60} {:>8.4} {:>8.4} {:>8.2} {:>9.4} {:>7.4} {:>8} {:>7} {:>7} {:>7.4}",
                    w.path.display(),
                    m.mae,
                    m.mse,
                    m.psnr_db,
                    m.precision,
                    m.recall,
                    tp_mae,
                    tp_corr,
                    below,
                    m.occupancy
                );
            }
            // The original BCAE: also its authors' own per-wedge metrics, as their CSV defines them.
            if r.wedges.iter().any(|w| w.published_v1.is_some()) {
                println!("  as the original BCAE's sample_metric_results.csv defines them:");
                println!(
                    "  {:<60} {:>12} {:>10} {:>10}",
                    "wedge", "mse [ADC^2]", "log_mae", "psnr [B]"
                );
                for w in &r.wedges {
                    if let Some(v) = &w.published_v1 {
                        println!(
                            "  {:<60} {:>12.5} {:>10.7} {:>10.6}",
                            w.path.display(),
                            v.mse,
                            v.log_mae,
                            v.psnr_bels
                        );
                    }
                }
            }
        }
        println!();
    }
    println!(
        "{} wedges of {} ({:?} split), device {}",
        n,
        args.data.display(),
        args.split,
        reports[0].device
    );
    print!("{}", eval::table(&reports));
    if !failures.is_empty() {
        bail!(
            "{} of {} evaluations failed (see the errors above): {}",
            failures.len(),
            failures.len() + reports.len(),
            failures.join(", ")
        );
    }
    if !unreadable.is_empty() {
        return Err(unreadable_error());
    }
    Ok(())
}

/// Plot a run's log.csv: losses and test metrics per epoch.
#[derive(Debug, clap::Args)]
pub struct PlotLogArgs {
    /// Run directory.
    pub run: PathBuf,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run_plot_log(args: PlotLogArgs) -> Result<()> {
    let rows = checkpoint::read_log(&args.run)?;
    if rows.is_empty() {
        bail!(
            "{}: log.csv has no epochs yet; train at least one epoch first",
            args.run.display()
        );
    }
    plot_log(&args.out, &rows, &args.run.display().to_string())?;
    println!("{} epochs plotted to {}", rows.len(), args.out.display());
    Ok(())
}

type Series<'a> = (&'a str, Vec<(f64, f64)>, RGBColor);

fn plot_log(path: &Path, rows: &[checkpoint::EpochLog], title: &str) -> Result<()> {
    let root = BitMapBackend::new(path, (1500, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(36);
    top.titled(title, ("sans-serif", 22))?;
    let panels = body.split_evenly((1, 3));
    let pts = |f: &dyn Fn(&checkpoint::EpochLog) -> f64| -> Vec<(f64, f64)> {
        rows.iter()
            .map(|r| (r.epoch as f64, f(r)))
            .filter(|(_, y)| y.is_finite() && *y > 0.0)
            .collect()
    };
    let groups: Vec<(&str, bool, Vec<Series>)> = vec![
        (
            "regression loss / MAE",
            true,
            vec![
                ("train L_reg", pts(&|r| r.reg_loss), BLUE),
                ("test MAE", pts(&|r| r.val_mae), RED),
            ],
        ),
        (
            "segmentation (focal) loss",
            true,
            vec![
                ("train L_seg", pts(&|r| r.seg_loss), BLUE),
                ("c * L_seg", pts(&|r| r.coefficient * r.seg_loss), GREEN),
            ],
        ),
        (
            "precision / recall",
            false,
            vec![
                ("train precision", pts(&|r| r.train_precision), BLUE),
                ("train recall", pts(&|r| r.train_recall), CYAN),
                ("test precision", pts(&|r| r.val_precision), RED),
                ("test recall", pts(&|r| r.val_recall), MAGENTA),
            ],
        ),
    ];
    let x_max = rows.iter().map(|r| r.epoch).max().unwrap_or(1).max(2) as f64;
    for (area, (caption, log_y, series)) in panels.iter().zip(groups) {
        let ys: Vec<f64> = series
            .iter()
            .flat_map(|s| s.1.iter().map(|p| p.1))
            .collect();
        if ys.is_empty() {
            continue;
        }
        let (lo, hi) = ys
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &y| (a.min(y), b.max(y)));
        let x_range = 1f64..x_max;
        if log_y {
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(60)
                .build_cartesian_2d(x_range, (lo * 0.8..hi * 1.25).log_scale())?;
            // Short tick labels: a log axis's ticks (0.7000000001 ...) otherwise overflow the panel.
            chart
                .configure_mesh()
                .x_desc("epoch")
                .y_label_formatter(&|v| format!("{v:.2e}"))
                .draw()?;
            for (name, data, color) in series {
                chart
                    .draw_series(LineSeries::new(data, color.stroke_width(2)))?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            }
            trainer::plot::legend(&mut chart, SeriesLabelPosition::MiddleRight)?;
        } else {
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(60)
                .build_cartesian_2d(x_range, (lo - 0.05).max(0.0)..(hi + 0.05).min(1.0))?;
            chart.configure_mesh().x_desc("epoch").draw()?;
            for (name, data, color) in series {
                chart
                    .draw_series(LineSeries::new(data, color.stroke_width(2)))?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            }
            trainer::plot::legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        }
    }
    root.present()?;
    Ok(())
}

/// `bcae show WEDGE --run R --out recon.png`: input, reconstruction and difference panels of
/// one wedge (the paper's Figure 5), summed over the 16 layers in the log2(ADC+1) domain, plus
/// the wedge's metrics in the title.
pub fn show_reconstruction(
    run: &Path,
    wedge_path: &Path,
    out: &Path,
    device: DeviceChoice,
) -> Result<()> {
    let device: Device = device::open(device)?;
    let wedge: Wedge =
        read_wedge(wedge_path).with_context(|| format!("reading {}", wedge_path.display()))?;
    let model = EvalModel::load(run, &device, Precision::F32)
        .with_context(|| format!("loading {}", run.display()))?;
    let x = model.input(std::slice::from_ref(&wedge))?;
    let recon = model.decode_log2(&model.encode(&x)?)?;
    let truth: Vec<f32> = x.narrow(3, 0, Z_BINS)?.flatten_all()?.to_vec1()?;
    let recon: Vec<f32> = recon.flatten_all()?.to_vec1()?;
    let metrics = trainer::metrics::score_log2(&truth, &recon);
    let title = format!(
        "{} by {} ({}): MAE {:.4}, PSNR {:.2} dB, precision {:.3}, recall {:.3}, TP value MAE {}, <ADC64 {}",
        wedge_path.file_name().map_or_else(
            || wedge_path.display().to_string(),
            |n| n.to_string_lossy().into_owned()
        ),
        model.config.label(),
        run.display(),
        metrics.mae,
        metrics.psnr_db,
        metrics.precision,
        metrics.recall,
        fmt_metric(metrics.tp_mae, 3),
        fmt_percent(metrics.below_threshold_share)
    );
    trainer::plot::draw_reconstruction(out, &title, &truth, &recon)?;
    println!("{title}\ndrawn to {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_argument_parses() {
        assert_eq!(parse_crop("64x128").unwrap(), (64, 128));
        assert_eq!(parse_crop("32X32").unwrap(), (32, 32));
        assert!(parse_crop("64").is_err());
        assert!(parse_crop("ax8").is_err());
    }

    #[test]
    fn plot_log_writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<checkpoint::EpochLog> = (1..=4)
            .map(|e| checkpoint::EpochLog {
                epoch: e,
                step: 10 * e as u64,
                lr: 1e-3,
                loss: 2.0 / e as f64,
                seg_loss: 0.01 / e as f64,
                reg_loss: 1.0 / e as f64,
                coefficient: 50.0,
                train_precision: 0.5 + 0.1 * e as f64,
                train_recall: 0.4 + 0.1 * e as f64,
                val_mae: 1.2 / e as f64,
                val_mse: 3.0,
                val_psnr_db: 10.0,
                val_precision: 0.6,
                val_recall: 0.5,
                wedges_per_s: 2.0,
                seconds: 5.0,
                train_tp_mae: 0.5,
                train_below_threshold: 0.01,
                val_tp_mae: 0.6,
                val_tp_correlation: 0.5,
                val_below_threshold: 0.02,
                val_mode_share: 0.03,
            })
            .collect();
        let png = dir.path().join("loss.png");
        plot_log(&png, &rows, "test").unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
    }
}

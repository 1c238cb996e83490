//! `bcae compare`: arguments, the wedges read, and the two tables printed; the measuring is
//! [`trainer::compare`].

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use encoder_nostd::sparse::Quality;
use rayon::prelude::*;

use trainer::compare::{draw_rate_distortion, fixed_rate, measure, Comparison, Settings};
use trainer::data::{Dataset, Split, Wedge};
use trainer::device::DeviceChoice;
use trainer::metrics::value_collapse;

/// Compare the sparse codec, zstd and BCAE models on the same wedges: one table, optional JSON and
/// a rate-distortion plot.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Wedges: a data root (train.txt / test.txt), a folder of .npy files, or one .npy wedge.
    #[arg(long)]
    pub data: PathBuf,
    /// Which split of a data root to use: train, test or all.
    #[arg(long, default_value = "all")]
    pub split: Split,
    /// Use at most this many wedges.
    #[arg(long, value_parser = trainer::terminal::numbers::at_least_one)]
    pub limit: Option<usize>,
    /// Sparse codec log2 steps to sweep (`lossless` is always included).
    #[arg(long, value_delimiter = ',', default_values_t = vec![
        "0.015625".to_string(), "0.03125".to_string(), "0.0625".to_string(), "0.125".to_string(),
        "0.25".to_string(), "0.375".to_string(), "0.5".to_string(), "1".to_string()])]
    pub qualities: Vec<String>,
    /// Target ratios: for each, the sparse step is searched to reach it (mean payload), for a
    /// comparison at the BCAE's own ratio (31.125 = f16 code, 62.25 = int8 code).
    #[arg(long, value_delimiter = ',', default_values_t = vec![31.125, 62.25], value_parser = trainer::terminal::numbers::positive_f64)]
    pub ratios: Vec<f64>,
    /// zstd level for the raw-array baseline (1 to 22).
    #[arg(long, default_value_t = 19, value_parser = clap::value_parser!(i32).range(1..=22))]
    pub zstd_level: i32,
    /// Skip the zstd rows (they take about a second per wedge at level 19).
    #[arg(long)]
    pub no_zstd: bool,
    /// BCAE run directories (runs/NAME: config.json + model.safetensors).
    #[arg(long = "run")]
    pub runs: Vec<PathBuf>,
    /// int8 encoder weights (.bcae.postcard) exported by `bcae quantize`, decoded by the `--run`
    /// whose checkpoint they were quantized from (matched by the weights' fingerprint).
    #[arg(long = "weights")]
    pub weights: Vec<PathBuf>,
    /// Device for the BCAE models' float encoders and decoders.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// Wedges per batch for the BCAE models.
    #[arg(long, default_value_t = 2, value_parser = trainer::terminal::numbers::at_least_one)]
    pub batch_size: usize,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Draw the rate-distortion plot (MAE, precision and recall against ratio) into this PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Guaranteed ratios: every codec with a per-wedge budget of raw/RATIO bytes (fixed-rate
    /// sparse, the BCAE codes that fit, SZ3 and ZFP with a per-wedge bound search when built with
    /// `--features baselines`, zstd as the lossless reference), e.g. 31.125,62.25,124.5.
    #[arg(long, value_delimiter = ',')]
    pub fixed_ratio: Vec<f64>,
    /// Draw MAE and recall against the guaranteed ratio (worst wedge marked) into this PNG.
    #[arg(long)]
    pub fixed_plot: Option<PathBuf>,
}

pub fn run_compare(args: CompareArgs) -> Result<()> {
    let mut ds = Dataset::open(&args.data, args.split)
        .with_context(|| format!("opening {}", args.data.display()))?;
    if let Some(limit) = args.limit {
        ds.truncate(limit);
    }
    if ds.is_empty() {
        bail!(
            "{}: no wedges found (give a data root, a folder of .npy files or one .npy)",
            args.data.display()
        );
    }
    let mut qualities = vec![Quality::LOSSLESS];
    for q in &args.qualities {
        let quality = Quality::parse(q).map_err(|e| anyhow::anyhow!("--qualities: '{q}': {e}"))?;
        if !qualities.contains(&quality) {
            qualities.push(quality);
        }
    }
    if let Some(bad) = args.ratios.iter().find(|r| !(r.is_finite() && **r > 1.0)) {
        bail!("--ratios: {bad} is not a compression ratio above 1");
    }
    if let Some(bad) = args
        .fixed_ratio
        .iter()
        .find(|r| !(r.is_finite() && **r > 1.0))
    {
        bail!("--fixed-ratio: {bad} is not a compression ratio above 1");
    }
    let notes = Vec::new();
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if !args.weights.is_empty() && args.runs.is_empty() {
        bail!("--weights needs the --run it was quantized from: the int8 code is decoded by that run's float decoders");
    }

    let load_bar = trainer::terminal::progress_bar(ds.len() as u64, "reading");
    let wedges = (0..ds.len())
        .into_par_iter()
        .map(|i| {
            let w = ds
                .load(i)
                .with_context(|| format!("reading {}", ds.paths()[i].display()));
            load_bar.inc(1);
            w
        })
        .collect::<Result<Vec<Wedge>>>()?;
    load_bar.finish_and_clear();

    let comparison = measure(
        &wedges,
        &Settings {
            data: args.data.display().to_string(),
            qualities,
            ratios: args.ratios.clone(),
            zstd_level: (!args.no_zstd).then_some(args.zstd_level),
            runs: args.runs.clone(),
            weights: args.weights.clone(),
            device: args.device,
            batch_size: args.batch_size,
            fixed_ratios: args.fixed_ratio.clone(),
        },
        notes,
    )?;
    if let Some(path) = &args.plot {
        draw_rate_distortion(path, &comparison)
            .with_context(|| format!("drawing {}", path.display()))?;
    }
    if let Some(path) = &args.fixed_plot {
        fixed_rate::draw(path, &comparison)
            .with_context(|| format!("drawing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&comparison)?);
    } else {
        print_table(&comparison);
        print_fixed_table(&comparison);
        for path in args.plot.iter().chain(&args.fixed_plot) {
            println!("plot: {}", path.display());
        }
    }
    Ok(())
}

fn print_table(c: &Comparison) {
    println!(
        "{} wedges from {}; raw = {} bytes per wedge (16 bits per voxel).",
        c.wedges, c.data, c.raw_bytes_per_wedge
    );
    println!(
        "ratio = raw / mean payload (every byte a decoder needs); worst = raw / largest payload."
    );
    println!("MAE in log2(ADC+1) of the decoded ADC values (cut to 0 below 64) over all voxels; precision/recall of hits.");
    println!("<ADC64: the decoder's hits below the zero-suppression threshold, cut before scoring (a BCAE's hits at its output transform's floor);");
    println!("TP MAE / TP corr: log2 values on the true positives; top value: the largest share of hits at one ADC value.");
    println!("enc/s: sparse, zstd and int8 encoders on one core; float BCAE encoders in candle (all threads).");
    println!();
    let header = [
        "codec",
        "setting",
        "size",
        "bytes",
        "ratio",
        "worst",
        "MAE",
        "precision",
        "recall",
    ]
    .into_iter()
    .chain(trainer::metrics::VALUE_HEADERS)
    .chain(["enc/s", "exact"])
    .collect::<Vec<_>>();
    let cells: Vec<Vec<String>> = c
        .rows
        .iter()
        .map(|r| {
            let mut row = vec![
                r.codec.clone(),
                r.setting.clone(),
                r.size.to_string(),
                format!("{:.0}", r.mean_bytes),
                format!("{:.2}", r.ratio),
                format!("{:.2}", r.worst_ratio),
                format!("{:.5}", r.metrics.mae),
                format!("{:.4}", r.metrics.precision),
                format!("{:.4}", r.metrics.recall),
            ];
            row.extend(r.metrics.value_cells());
            row.extend([
                format!("{:.1}", r.encode_per_s),
                if r.exact { "yes" } else { "no" }.to_string(),
            ]);
            row
        })
        .collect();
    // Text columns left-aligned, numbers right-aligned.
    let table = trainer::table::align(&header, &cells, &[0, 1, 2]);
    println!("{}", table.header);
    for row in &table.rows {
        println!("{row}");
    }
    for note in &c.notes {
        println!("note: {note}");
    }
    for r in &c.rows {
        if let Some(why) = value_collapse(
            r.metrics.below_threshold_share,
            r.metrics.mode_share,
            r.metrics.mode_adc,
        ) {
            println!("COLLAPSED {} ({}): {why}", r.codec, r.setting);
        }
    }
}

fn fmt(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "-".into()
    }
}

/// The guaranteed-ratio table, after the mean-ratio one.
fn print_fixed_table(c: &Comparison) {
    if c.fixed_rate.is_empty() {
        return;
    }
    println!();
    println!(
        "At a guaranteed ratio: every wedge within floor(raw / ratio) bytes (fixed-rate frames padded to it)."
    );
    println!(
        "MAE mean / worst wedge; precision and recall pooled over hits, recall of the worst wedge;"
    );
    println!(
        "values on true-positive hits: TP MAE (log2), TP correlation, the largest share of hits at one ADC value;"
    );
    println!(
        "'-': the codec does not hold this ratio on every wedge (fits = wedges within budget)."
    );
    println!();
    let header = [
        "ratio",
        "budget",
        "codec",
        "setting",
        "fits",
        "MAE",
        "MAE worst",
        "precision",
        "recall",
        "recall worst",
        "TP MAE",
        "TP corr",
        "top value",
        "used ratio",
    ];
    let cells: Vec<Vec<String>> = c
        .fixed_rate
        .iter()
        .map(|r| {
            let m = r.metrics.as_ref();
            vec![
                format!("{}", r.ratio),
                r.budget.to_string(),
                r.codec.clone(),
                r.setting.clone(),
                format!("{}/{}", r.fits, r.wedges),
                fmt(m.map_or(f64::NAN, |m| m.mae), 5),
                fmt(if m.is_some() { r.worst_mae } else { f64::NAN }, 5),
                fmt(m.map_or(f64::NAN, |m| m.precision), 4),
                fmt(m.map_or(f64::NAN, |m| m.recall), 4),
                fmt(
                    if m.is_some() {
                        r.worst_recall
                    } else {
                        f64::NAN
                    },
                    4,
                ),
                fmt(m.map_or(f64::NAN, |m| m.tp_mae), 4),
                fmt(m.map_or(f64::NAN, |m| m.tp_correlation), 3),
                m.map_or("-".into(), |m| format!("{:.1} %", 100.0 * m.mode_share)),
                fmt(r.payload_ratio, 2),
            ]
        })
        .collect();
    let table = trainer::table::align(&header, &cells, &[2, 3]);
    println!("{}", table.header);
    for row in &table.rows {
        println!("{row}");
    }
}

//! `bcae decode-code`: decode the original BCAE's released codes (or re-encode its sample
//! wedges the authors' way) and compare with the per-wedge metrics they published.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::DType;
use candle_nn::VarBuilder;
use serde::Serialize;

use trainer::checkpoint;
use trainer::data::{read_wedge, write_wedge, Wedge, ADC_MAX};
use trainer::device::{self, DeviceChoice};
use trainer::models::bcae_v1::{self, published_metrics, read_code_npz, BcaeV1, V1Metrics};
use trainer::models::ModelConfig;

/// Decode released original-BCAE codes (compressed_j.npz) with an imported bcae-v1 run and
/// compare with the authors' published per-wedge metrics.
#[derive(clap::Args, Debug)]
#[command(after_long_help = "\
Metrics are the authors' (sample_metric_results.csv), over all 764,928 voxels of a wedge:
  mse     = mean((x - x_hat)^2) in raw ADC
  log_mae = mean |log2(x+1) - log2(x_hat+1)|
  psnr    = log10(1023^2 / mse), in bels (no factor 10)
with x_hat = (64 + 6 exp(r)) * (c > 0.5) from the two decoder heads (c, r).

Examples:
  bcae import-torch --model bcae-v1 --state-dict encoder_2000.pt --state-dict decoder_2000.pt --out runs/bcae-v1-released
  bcae decode-code --run runs/bcae-v1-released --release ../shared/data/bcae-v1
  bcae decode-code --run runs/bcae-v1-released --release ../shared/data/bcae-v1 --encode
  bcae decode-code --run runs/bcae-v1-released --code compressed_3.npz --truth sample_3.npy --out recon/")]
pub struct DecodeCodeArgs {
    /// Run directory of a bcae-v1 model (e.g. made by `bcae import-torch --model bcae-v1`).
    #[arg(long)]
    pub run: PathBuf,
    /// A released code, float16 (8, 12, 15, 16) under key `data` (repeat for several).
    #[arg(long)]
    pub code: Vec<PathBuf>,
    /// The original wedge of each --code (sample_j.npy), in the same order.
    #[arg(long)]
    pub truth: Vec<PathBuf>,
    /// The released folder: every compressed_j.npz with its sample_j.npy, compared with
    /// sample_metric_results.csv.
    #[arg(long)]
    pub release: Option<PathBuf>,
    /// The published metrics CSV (default: sample_metric_results.csv of --release or beside
    /// the first --code). Wedge j is taken from the number in the file name.
    #[arg(long)]
    pub published: Option<PathBuf>,
    /// Encode each truth wedge with the run's encoder (code rounded to float16, as the authors
    /// did) and decode that, instead of decoding the released codes.
    #[arg(long)]
    pub encode: bool,
    /// Segmentation threshold h in (c > h).
    #[arg(long, default_value_t = 0.5, value_parser = trainer::terminal::numbers::fraction)]
    pub threshold: f64,
    /// Write each reconstruction (ADC rounded to integers, uint16 (192, 249, 16)) into this
    /// folder as recon_j.npy.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
}

/// One wedge's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct DecodedWedge {
    pub wedge: String,
    pub j: Option<usize>,
    pub metrics: Option<V1Metrics>,
    pub published: Option<V1Metrics>,
    /// |ours - published| / |published| per metric.
    pub relative_difference: Option<V1Metrics>,
    /// Fraction of voxels the reconstruction marks non-zero.
    pub reconstructed_occupancy: f64,
}

#[derive(Debug, Serialize)]
struct Summary<'a> {
    model: String,
    mode: &'a str,
    wedges: &'a [DecodedWedge],
    max_relative_difference: Option<f64>,
}

/// The number j in `compressed_j.npz` / `sample_j.npy`.
fn index_in_name(path: &Path) -> Option<usize> {
    let stem = path.file_stem()?.to_str()?;
    stem.rsplit('_').next()?.parse().ok()
}

fn release_files(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut js: Vec<usize> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "npz")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("compressed_"))
        })
        .filter_map(|p| index_in_name(&p))
        .collect();
    js.sort_unstable();
    if js.is_empty() {
        bail!(
            "{}: no compressed_j.npz files; pass the released bcae-v1 folder",
            dir.display()
        );
    }
    let codes = js
        .iter()
        .map(|j| dir.join(format!("compressed_{j}.npz")))
        .collect();
    let truths = js
        .iter()
        .map(|j| dir.join(format!("sample_{j}.npy")))
        .collect();
    Ok((codes, truths))
}

fn relative(ours: &V1Metrics, published: &V1Metrics) -> V1Metrics {
    let r = |a: f64, b: f64| (a - b).abs() / b.abs();
    V1Metrics {
        mse: r(ours.mse, published.mse),
        log_mae: r(ours.log_mae, published.log_mae),
        psnr_bels: r(ours.psnr_bels, published.psnr_bels),
    }
}

fn adc_wedge(x_hat: &[f32]) -> Wedge {
    Wedge {
        adc: x_hat
            .iter()
            .map(|&v| v.round().clamp(0.0, ADC_MAX as f32) as u16)
            .collect(),
    }
}

pub fn run_decode_code(args: DecodeCodeArgs) -> Result<()> {
    let device = device::open(args.device)?;
    let (config, varmap) = checkpoint::load_run(&args.run, &device)?;
    if config != ModelConfig::BcaeV1 {
        bail!(
            "{} holds a {} model; decode-code decodes the original BCAE's codes and needs a bcae-v1 run \
             (bcae import-torch --model bcae-v1 ...)",
            args.run.display(),
            config.label()
        );
    }
    let model = BcaeV1::new(VarBuilder::from_varmap(&varmap, DType::F32, &device))?;

    let (mut codes, mut truths) = (args.code.clone(), args.truth.clone());
    if let Some(dir) = &args.release {
        let (c, t) = release_files(dir)?;
        codes.extend(c);
        truths.extend(t);
    }
    if args.encode {
        if truths.is_empty() {
            bail!(
                "--encode needs the wedges to encode: pass --truth sample_j.npy or --release DIR"
            );
        }
    } else if codes.is_empty() {
        bail!("nothing to decode: pass --code compressed_j.npz (with --truth sample_j.npy) or --release DIR");
    } else if !truths.is_empty() && truths.len() != codes.len() {
        bail!("{} --code files but {} --truth files: pass one truth wedge per code, in the same order", codes.len(), truths.len());
    }
    let published_path = args.published.clone().or_else(|| {
        let dir = args.release.clone().or_else(|| {
            codes
                .first()
                .or(truths.first())
                .and_then(|p| p.parent().map(Path::to_path_buf))
        })?;
        let p = dir.join("sample_metric_results.csv");
        p.exists().then_some(p)
    });
    let published = match &published_path {
        Some(p) => bcae_v1::read_published_csv(p)?,
        None => Vec::new(),
    };
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    }

    let count = if args.encode {
        truths.len()
    } else {
        codes.len()
    };
    let bar = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(count as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} wedges {elapsed} {msg}")
            .expect("valid progress template"),
    );
    let mut results = Vec::with_capacity(count);
    for i in 0..count {
        let truth = match truths.get(i) {
            Some(p) => Some(
                read_wedge(p)
                    .with_context(|| format!("reading the truth wedge {}", p.display()))?,
            ),
            None => None,
        };
        let (name, x_hat) = if args.encode {
            let wedge = truth
                .as_ref()
                .expect("--encode has a truth wedge per entry");
            let (_, rec) = model.compress_and_reconstruct(
                std::slice::from_ref(wedge),
                &device,
                args.threshold,
            )?;
            (
                truths[i].clone(),
                rec.into_iter().next().expect("one wedge in, one out"),
            )
        } else {
            let code = read_code_npz(&codes[i], &device)?;
            if code.dim(0)? != 1 {
                bail!(
                    "{}: holds {} codes; decode-code takes one code per file",
                    codes[i].display(),
                    code.dim(0)?
                );
            }
            let rec = model.decode_to_adc(&code, args.threshold)?;
            (
                codes[i].clone(),
                rec.into_iter().next().expect("one code in, one wedge out"),
            )
        };
        let j = index_in_name(&name);
        let metrics = truth.as_ref().map(|t| published_metrics(t, &x_hat));
        let reference = j.and_then(|j| published.iter().find(|(k, _)| *k == j).map(|(_, m)| *m));
        let relative_difference = match (&metrics, &reference) {
            (Some(m), Some(p)) => Some(relative(m, p)),
            _ => None,
        };
        let occupancy = x_hat.iter().filter(|&&v| v > 0.0).count() as f64 / x_hat.len() as f64;
        if let Some(out) = &args.out {
            let path = out.join(format!(
                "recon_{}.npy",
                j.map_or(i.to_string(), |j| j.to_string())
            ));
            write_wedge(&path, &adc_wedge(&x_hat))?;
        }
        results.push(DecodedWedge {
            wedge: name.display().to_string(),
            j,
            metrics,
            published: reference,
            relative_difference,
            reconstructed_occupancy: occupancy,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();

    let max_rel = results
        .iter()
        .filter_map(|r| r.relative_difference)
        .flat_map(|d| [d.mse, d.log_mae, d.psnr_bels])
        .fold(None, |acc: Option<f64>, v| {
            Some(acc.map_or(v, |a| a.max(v)))
        });
    let mode = if args.encode {
        "pipeline: sample_j.npy -> encoder -> f16 code -> decoders"
    } else {
        "released codes -> decoders"
    };
    if args.json {
        let summary = Summary {
            model: config.label(),
            mode,
            wedges: &results,
            max_relative_difference: max_rel,
        };
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!(
        "{} ({}), threshold {}: {mode}",
        config.label(),
        args.run.display(),
        args.threshold
    );
    if results.iter().all(|r| r.metrics.is_none()) {
        println!(
            "{:>3} {:>12}  (no --truth wedges: metrics need them)",
            "j", "occupancy"
        );
        for r in &results {
            println!(
                "{:>3} {:>12.5}  {}",
                r.j.map_or("-".into(), |j| j.to_string()),
                r.reconstructed_occupancy,
                r.wedge
            );
        }
        return Ok(());
    }
    println!(
        "{:>3} | {:>11} {:>11} {:>9} | {:>10} {:>10} {:>9} | {:>9} {:>9} {:>9}",
        "j",
        "mse",
        "published",
        "rel.diff",
        "log_mae",
        "published",
        "rel.diff",
        "psnr [B]",
        "published",
        "rel.diff"
    );
    let cell = |v: Option<f64>, prec: usize, w: usize| {
        v.map_or(format!("{:>w$}", "-"), |v| format!("{v:>w$.prec$}"))
    };
    let pct = |v: Option<f64>| v.map_or(format!("{:>9}", "-"), |v| format!("{:>8.4}%", 100.0 * v));
    for r in &results {
        let m = r.metrics.expect("truth given");
        let p = r.published;
        let d = r.relative_difference;
        println!(
            "{:>3} | {:>11.5} {} {} | {:>10.7} {} {} | {:>9.6} {} {}",
            r.j.map_or("-".into(), |j| j.to_string()),
            m.mse,
            cell(p.map(|p| p.mse), 5, 11),
            pct(d.map(|d| d.mse)),
            m.log_mae,
            cell(p.map(|p| p.log_mae), 7, 10),
            pct(d.map(|d| d.log_mae)),
            m.psnr_bels,
            cell(p.map(|p| p.psnr_bels), 6, 9),
            pct(d.map(|d| d.psnr_bels)),
        );
    }
    match max_rel {
        Some(v) => println!(
            "largest relative difference from the published values: {:.4} %",
            100.0 * v
        ),
        None => println!("(no published values found for these wedges; pass --published CSV)"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wedge_numbers_come_from_file_names() {
        assert_eq!(index_in_name(Path::new("a/compressed_7.npz")), Some(7));
        assert_eq!(index_in_name(Path::new("sample_12.npy")), Some(12));
        assert_eq!(index_in_name(Path::new("wedge.npy")), None);
    }

    #[test]
    fn reconstructions_round_to_adc() {
        let w = adc_wedge(&vec![70.4; trainer::data::WEDGE_VOXELS]);
        assert!(w.adc.iter().all(|&v| v == 70));
        let w = adc_wedge(&vec![5000.0; trainer::data::WEDGE_VOXELS]);
        assert!(w.adc.iter().all(|&v| v == ADC_MAX));
    }
}
